"""The notebooks run end to end, on CPU with small settings, and match their jupytext twins.

Each ``notebooks/NN_name.ipynb`` is paired with ``notebooks/NN_name.py`` (jupytext
``py:percent``). The ``.py`` file is the one to edit; regenerate and execute the committed
notebook (real settings, whatever device JAX finds) with::

    python tests/test_notebooks.py            # every notebook
    python tests/test_notebooks.py 03 04      # those whose name starts with 03 or 04

The tests execute each notebook in a fresh ``python3`` kernel (this interpreter) with
``JSOFTMAX_NB_SMALL=1``, which every notebook reads to shrink its workload, and
``JAX_PLATFORMS=cpu`` and ``JAX_NUMPY_RANK_PROMOTION=raise``, with a per-cell timeout and
XLA's CPU backend optimisation level at 0 (compiling dominates these small runs).

Every notebook opens the same way: a title, a "Setup" note (where jsoftmax is installed from,
the ``train`` extra where the notebook needs it, how to run on a GPU or TPU), a cell that
installs jsoftmax from the project source only where it cannot be imported, and a cell that
imports and prints ``jax.devices()``. The committed outputs name no path of the machine that
ran them, and every link points to a file in this repository.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
TWINS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 300
KERNEL = "python3"
# An absolute path of some machine in an output: a home, temporary or working folder, an
# installed package (site-packages), a system folder, or a Windows drive.
ABSOLUTE_PATH = re.compile(
    r"(/work/|/home/|/Users/|/tmp/|/var/|/private/|/root/|/usr/|/opt/|/mnt/|site-packages"
    r"|dist-packages|\b[A-Za-z]:\\)"
)
# A markdown link or image: [text](target) or ![alt](target)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?[^)]*\)")


def execute(nb: nbformat.NotebookNode, *, cwd: Path, small: bool) -> None:
    """Run every cell of ``nb`` in place in a fresh kernel; raises on the first cell error.

    ``small``: the test settings (tiny workloads, CPU, strict rank promotion); otherwise the
    notebooks' real settings on whatever device JAX finds.
    """
    env = dict(os.environ)
    env.pop("JSOFTMAX_NB_SMALL", None)
    if small:
        env["JSOFTMAX_NB_SMALL"] = "1"
        env["JAX_PLATFORMS"] = "cpu"
        # as strict as the rest of the suite (conftest.py): implicit rank promotion is an error
        env["JAX_NUMPY_RANK_PROMOTION"] = "raise"
        # XLA:CPU's LLVM passes dominate these tiny programs' run time; the level changes
        # machine-code optimisation only, not what is computed
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL,
        record_timing=False,  # no timestamps in the committed files
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute(env=env)


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_every_notebook_has_a_twin():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"
    assert [p.stem for p in NOTEBOOKS] == [p.stem for p in TWINS]


def test_kernel_is_this_interpreter():
    # jupyter_client replaces a kernelspec's bare "python" with sys.executable; a kernelspec
    # pointing at another interpreter would run the notebooks without this jsoftmax
    cmd = KernelManager(kernel_name=KERNEL).format_kernel_cmd()
    assert os.path.realpath(cmd[0]) == os.path.realpath(sys.executable), cmd


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_twin(path: Path):
    nb = jupytext.read(path)
    twin = jupytext.read(path.with_suffix(".py"))
    assert _cells(nb) == _cells(twin), (
        f"{path.name} and its .py twin differ: edit the .py and run "
        f"`python tests/test_notebooks.py {path.stem[:2]}`"
    )
    assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert twin.metadata["jupytext"]["formats"] == "ipynb,py:percent"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_executed(path: Path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "not executed"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} was committed with an error: {errors[0].ename}"


def _extra(nb: nbformat.NotebookNode) -> str | None:
    """The extra the notebook needs: ``examples`` (Equinox), ``train`` or none."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    if re.search(r"^\s*(import|from) equinox\b", code, re.MULTILINE):
        return "examples"
    pattern = r"^\s*(import|from) (matplotlib|sklearn|tqdm|jsoftmax\.train)\b"
    return "train" if re.search(pattern, code, re.MULTILINE) else None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_first_cells(path: Path):
    nb = jupytext.read(path)
    title, setup, install, devices = nb.cells[:4]
    assert title.cell_type == "markdown" and title.source.startswith("# ")
    assert setup.cell_type == "markdown" and setup.source.startswith("## Setup")
    # where jsoftmax comes from (not PyPI: a checkout or a wheel), and running on an accelerator
    for words in ("checkout", "wheel", "GPU", "TPU", "jax[cuda12]"):
        assert words in setup.source, f"the Setup note does not mention {words!r}"
    extra = _extra(nb)
    if extra is not None:
        assert f"`[{extra}]`" in setup.source, f"the Setup note does not mention [{extra}]"
    assert install.cell_type == "code"
    assert re.match(r"try:\n    import jsoftmax\nexcept ImportError:", install.source)
    assert devices.cell_type == "code" and "print(jax.devices())" in devices.source
    # the device is whatever JAX finds: nothing pins a platform
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert not re.search(r"jax\.devices\(\s*['\"]|JAX_PLATFORMS|jax_platforms", code)


@pytest.mark.parametrize("path", TWINS, ids=lambda p: p.stem)
def test_install_cell_installs_only_where_jsoftmax_is_missing(path: Path, monkeypatch):
    import jsoftmax

    nb = jupytext.read(path)
    install = next(c for c in nb.cells if c.cell_type == "code")
    calls = []

    def fake_run(cmd, **kwargs):  # "installs" jsoftmax: importable again from now on
        calls.append(cmd)
        monkeypatch.setitem(sys.modules, "jsoftmax", jsoftmax)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    code = compile(install.source, f"{path.name}: the install cell", "exec")
    exec(code, {})  # jsoftmax importable: nothing is installed
    assert calls == []

    monkeypatch.setitem(sys.modules, "jsoftmax", None)  # `import jsoftmax` raises ImportError
    namespace = {}
    exec(code, namespace)
    assert len(calls) == 1 and namespace["jsoftmax"] is jsoftmax
    cmd = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"], cmd
    spec = cmd[-1]
    extra = _extra(nb)
    assert spec == (f"..[{extra}]" if extra else ".."), spec
    # ".." seen from the notebook's folder (the kernel's working directory) is this checkout
    source = (NOTEBOOK_DIR / spec.split("[")[0]).resolve()
    assert (source / "pyproject.toml").is_file() and (source / "jsoftmax").is_dir()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_links_point_to_files_that_exist(path: Path):
    nb = jupytext.read(path)
    text = "\n".join(c.source for c in nb.cells)
    assert "colab" not in text.lower(), "a link or mention of Colab (no such notebook there)"
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for target in LINK.findall(cell.source):
            # no web links: nothing here can check that they exist (there is no network)
            assert not re.match(r"[a-z][a-z0-9+.-]*:", target), f"external link {target!r}"
            if target.startswith("#"):
                continue
            local = NOTEBOOK_DIR / target.split("#")[0]
            assert local.exists(), f"{path.name} links to {target!r}, which does not exist"


def _output_text(output: nbformat.NotebookNode) -> str:
    """An output's text: streams, results, errors; not images (base64 can spell anything)."""
    parts = [output.get("text", ""), output.get("evalue", ""), *output.get("traceback", [])]
    for mime, value in output.get("data", {}).items():
        if not mime.startswith("image/"):
            parts.append(value if isinstance(value, str) else json.dumps(value))
    return "\n".join(parts)


@pytest.mark.parametrize(
    "text, absolute",
    [
        ("f32[256,1000] output of div from /work/main/jsoftmax/_softmax.py:107:8", True),
        ("/root/.venv/lib/python3.11/site-packages/jsoftmax/_loss.py", True),
        ("/tmp/ipykernel_1234/2385.py", True),
        ("saved to C:\\Users\\me\\runs", True),
        ("f32[256,1000] output of div from jsoftmax/_softmax.py (_softmax_impl)", False),
        ("max |s / S - 1| = 2.4e-08, [CpuDevice(id=0)], 3/4 passed, loss: 0.25", False),
    ],
)
def test_absolute_path_pattern(text: str, absolute: bool):
    assert bool(ABSOLUTE_PATH.search(text)) == absolute


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_name_no_absolute_path(path: Path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            found = ABSOLUTE_PATH.search(_output_text(output))
            assert not found, (
                f"{path.name}, cell {i}: an output names an absolute path ({found[0]!r}); "
                "print paths relative to the package, then re-run "
                f"`python tests/test_notebooks.py {path.stem[:2]}`"
            )


@pytest.mark.parametrize("path", TWINS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path):
    nb = jupytext.read(path)
    execute(nb, cwd=NOTEBOOK_DIR, small=True)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "CpuDevice" in text  # the device cell ran, on the CPU the test asked for


def main(argv: list[str]) -> int:
    """Regenerate and execute (real settings, default device) the notebooks named in argv."""
    chosen = [p for p in TWINS if not argv or any(p.stem.startswith(a) for a in argv)]
    for twin in chosen:
        print(f"executing {twin.name} ...", flush=True)
        nb = jupytext.read(twin)
        execute(nb, cwd=NOTEBOOK_DIR, small=False)
        jupytext.write(nb, twin.with_suffix(".ipynb"), fmt="ipynb")
        print(f"wrote {twin.with_suffix('.ipynb').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
