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
"""

from __future__ import annotations

import os
import re
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
COLAB = "https://colab.research.google.com/github/jsoftmax/jsoftmax/blob/main/notebooks/"


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_first_cells(path: Path):
    nb = jupytext.read(path)
    intro, setup = nb.cells[0], nb.cells[1]
    assert intro.cell_type == "markdown" and f"{COLAB}{path.name}" in intro.source
    assert setup.cell_type == "code"
    assert re.search(r"^# !pip install .*jsoftmax", setup.source, re.MULTILINE)
    # only commented: py:percent's "# !pip" is a live magic, the twin must say "# # !pip"
    assert not re.search(r"^\s*[!%]", setup.source, re.MULTILINE), "the install line is live"
    assert "print(jax.devices())" in setup.source


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
