"""The benchmark harness runs end to end and writes well-formed results (no timing asserted)."""

import ast
import json
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsoftmax.bench import __main__ as bench
from jsoftmax.bench import _timing, linear_xent, train_step
from jsoftmax.bench._timing import Measurement, compare, comparison_row, result_row, skipped_row

ROOT = Path(__file__).resolve().parents[1]


def test_compare_measures_every_function():
    res = compare({"f": lambda x: x * 2.0, "g": jnp.sin}, (jnp.ones((8, 8)),), reps=5)
    assert sorted(res) == ["f", "g"]
    for m in res.values():
        assert m.reps >= 5 and m.median_s > 0 and m.compile_s > 0 and m.temp_bytes >= 0


def test_compare_times_the_candidates_interleaved(monkeypatch):
    calls = []

    def compile_and_memory(fn, *args):  # instead of compiling: a callable that logs its calls
        def compiled(*args):
            calls.append(fn.__name__)
            return fn(*args)

        return compiled, 0.0, 0

    def a(x):
        return x

    def b(x):
        return x

    def c(x):
        return x

    monkeypatch.setattr(_timing, "compile_and_memory", compile_and_memory)
    res = compare({"a": a, "b": b, "c": c}, (np.ones(3),), reps=4, warmup=2)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, each function on its own
    assert calls[6:] == ["a", "b", "c"] * 4  # timed: a, b, c, a, b, c, ...
    assert {m.reps for m in res.values()} == {4}


def test_every_row_has_the_fields_of_result_row():
    ours = Measurement("jsoftmax", 0.002, 1.0, 10, 5)
    base = Measurement("base", 0.004, 1.0, 20, 5)
    rows = [
        result_row("s", "op", [2, 3], "float32", ms=1.0),
        comparison_row("s", "op", [2, 3], "float32", ours, base, "base", extra=1),
        skipped_row("s", "op", "", "float32", "why"),
    ]
    for row in rows:
        assert list(row)[:4] == ["suite", "op", "shape", "dtype"]
    assert rows[1]["ratio"] == pytest.approx(0.5) and rows[1]["extra"] == 1
    assert rows[2]["skipped"] == "why"
    only_compiled = Measurement("jsoftmax", None, 1.0, 10, 0)
    row = comparison_row("s", "op", [2], "float32", only_compiled, base, "base")
    assert row["ratio"] is None and row["jsoftmax_ms"] is None


def _private_uses(source: str) -> list[str]:
    """Private names ``source`` imports from jsoftmax (not its bench) or reads as attributes."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom | ast.Import):
            base = f"{node.module}." if isinstance(node, ast.ImportFrom) and node.module else ""
            for alias in node.names:
                name = base + alias.name
                parts = name.split(".")
                if parts[0] == "jsoftmax" and parts[:2] != ["jsoftmax", "bench"]:
                    found += [name] if any(p.startswith("_") for p in parts) else []
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if not node.attr.startswith("__") and isinstance(node.value, ast.Name):
                found += [f"{node.value.id}.{node.attr}"] if node.value.id != "self" else []
    return found


def test_benchmarks_use_public_jsoftmax_names_only():
    old = "from jsoftmax._linear_xent import f\nfrom jsoftmax import train\ntrain._impl\n"
    assert _private_uses(old) == ["jsoftmax._linear_xent.f", "train._impl"]
    for path in (ROOT / "jsoftmax" / "bench").glob("*.py"):
        assert _private_uses(path.read_text()) == [], path.name


def test_quick_run_writes_json_markdown_and_chart(tmp_path, capsys):
    assert bench.main(["--quick", "--suites", "core,bandwidth", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results-cpu-float32-quick.json").read_text())
    assert data["environment"]["jax"] == jax.__version__ and data["quick"] is True
    rows = data["rows"]
    core_rows = [r for r in rows if r["suite"] == "core"]
    assert {r["op"] for r in core_rows} == {
        "softmax forward",
        "softmax value_and_grad",
        "log_softmax forward",
        "log_softmax value_and_grad",
    }
    for r in core_rows:
        assert r["ratio"] == pytest.approx(r["jsoftmax_ms"] / r["baseline_ms"])
        assert r["baseline"] == "jax.nn"
    bandwidth = [r for r in rows if r["suite"] == "bandwidth"]
    assert all(0 < r["fraction_of_copy"] for r in bandwidth)
    # a quick run's copy rate (a 4 MiB array, in cache) must not pass for a full run's
    assert {r["copy_measured_on"] for r in bandwidth} == {
        "x + 1 on 256×4096 float32 (4 MiB), quick run"
    }
    md = (tmp_path / "results-cpu-float32-quick.md").read_text()
    assert md.count("| core |") == len(core_rows) and "Quick run" in md
    assert "4 MiB), quick run |" in md
    assert (tmp_path / "results-cpu-float32-quick.png").stat().st_size > 1000


def _rows():
    """One row of each kind, as the suites build them (no timing)."""
    m = Measurement("m", 0.001, 0.5, 2**20, 3)
    return [
        comparison_row("core", "softmax forward", [4, 8], "float32", m, m, "jax.nn"),
        result_row(
            "bandwidth",
            "softmax forward",
            [4, 8],
            "float32",
            ms=1.0,
            bytes=256,
            gb_per_s=1.0,
            copy_gb_per_s=2.0,
            fraction_of_copy=0.5,
            copy_measured_on="x + 1 on 4×8 float32 (0.0001 MiB), quick run",
        ),
        result_row("torch", "softmax forward", [4, 8], "float32", torch_ms=1.0, torch_version="2"),
        skipped_row("torch", "every PyTorch row", "", "float32", "torch not installed"),
    ]


@pytest.fixture
def canned_suite(monkeypatch):
    """The ``core`` suite returns :func:`_rows` without measuring anything."""
    monkeypatch.setitem(bench.SUITES, "core", lambda quick, dtype: _rows())


def test_default_output_is_not_the_committed_results(canned_suite, tmp_path, monkeypatch):
    # the files BENCHMARKS.md links to are the committed results
    linked = set(re.findall(r"\b(benchmarks/[\w./-]+\.\w+)", (ROOT / "BENCHMARKS.md").read_text()))
    assert linked and all((ROOT / p).exists() for p in linked)
    default = ROOT / bench.DEFAULT_OUT
    assert bench.DEFAULT_OUT == Path("runs/bench")
    assert not any(default in (ROOT / p).parents for p in linked)
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--suites", "core"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "bench").iterdir()) == [
        "results-cpu-float32.json",
        "results-cpu-float32.md",
        "results-cpu-float32.png",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]  # nothing in ./benchmarks


def test_console_table_has_headers_with_units(canned_suite, tmp_path, capsys):
    assert bench.main(["--suites", "core", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    headers = [ln for ln in out.splitlines() if ln.startswith("suite ")]
    assert len(headers) == 4  # one a kind of row: comparison, bandwidth, torch, skipped
    assert "jsoftmax (ms)" in headers[0] and "baseline temp (MiB)" in headers[0]
    assert "achieved (GB/s)" in headers[1] and "copy (GB/s)" in headers[1]
    assert "torch (ms)" in headers[2] and "skipped because" in headers[3]
    md = (tmp_path / "results-cpu-float32.md").read_text()
    assert md.count("| suite | operation | shape | dtype |") == 4


def test_skipped_pytorch_rows_say_why(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    monkeypatch.delenv("JSOFTMAX_TORCH_PYTHON", raising=False)
    assert bench.main(["--quick", "--suites", "torch", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "skipped because" in out and "torch not installed" in out
    assert "torch not installed" in (tmp_path / "results-cpu-float32-quick.md").read_text()
    measured = Measurement("jsoftmax", 0.001, 0.5, 0, 2)
    row = linear_xent._torch_row(linear_xent.QUICK, measured)
    assert row["suite"] == "linear_cross_entropy" and "torch not installed" in row["skipped"]


def test_chart_has_a_colour_key_and_says_quick(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at it
    assert bench.chart(_rows(), tmp_path / "c.png", quick=True)
    (ax,) = figures[0].axes
    (legend,) = figures[0].legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert any("faster" in t for t in labels) and any("slower" in t for t in labels)
    assert "quick run" in ax.get_title()
    assert not bench.chart(_rows()[1:], tmp_path / "none.png")  # no ratio rows: no chart
    assert not (tmp_path / "none.png").exists()


def test_optax_step_is_the_public_step_but_for_the_loss():
    steps, state, batch, _ = train_step.setup(16)
    # the step of make_train_step donates its state: give each step its own copy
    ours = steps["jsoftmax"](jax.tree.map(jnp.copy, state), batch)
    theirs = jax.jit(steps["optax"])(state, batch)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_unknown_suite_is_rejected(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--suites", "nope", "--out", str(tmp_path)])


def test_sparse_suite_quick_run(monkeypatch, tmp_path):
    from jsoftmax.bench import sparse

    monkeypatch.setattr(sparse, "QUICK_SHAPES", [(16, 64)])  # one tiny shape: seconds
    monkeypatch.setattr(sparse, "TORCH_WARMUP_S", 0.05)
    assert bench.main(["--quick", "--suites", "sparse", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results-cpu-float32-quick.json").read_text())["rows"]
    assert {r["suite"] for r in rows} == {"sparse"}
    timed = [r for r in rows if "skipped" not in r]
    by_baseline: dict[str, set] = {}
    for r in timed:
        by_baseline.setdefault(r["baseline"].split(" (")[0], set()).add(r["op"])
        assert r["shape"] == [16, 64] and r["dtype"] == "float32"
        assert r["jsoftmax_ms"] > 0 and r["baseline_ms"] > 0 and r["reps"] >= 3
        assert r["ratio"] == pytest.approx(r["jsoftmax_ms"] / r["baseline_ms"])
        assert 1e-3 < r["ratio"] < 1e4
    ops = [f"{v} {w}" for v in sparse.VARIANTS for w in ("forward", "value_and_grad")]
    assert by_baseline["optax projection_simplex"] == {o for o in ops if "sparsemax" in o}
    assert by_baseline["jsoftmax.softmax"] == set(ops)
    for r in timed:
        if r["baseline"].startswith(("optax", "jsoftmax")):  # compiled: temp memory measured
            assert r["jsoftmax_temp_bytes"] >= 0 and r["baseline_temp_bytes"] >= 0
            assert r["compile_s"]["jsoftmax"] > 0 and r["compile_s"]["baseline"] > 0
            # sparsemax against optax's projection; 1.5-entmax's three ways against each other
            assert r["max_abs_diff"] <= 1e-5, (r["op"], r["max_abs_diff_vs"])
    torch_rows = [r for r in timed if r["baseline"].startswith("torch")]
    skipped = [r for r in rows if "skipped" in r]
    if skipped:  # PyTorch or entmax missing here: one row saying why
        assert len(skipped) == 1 and "not installed" in skipped[0]["skipped"]
    else:
        assert {r["op"] for r in torch_rows} == {
            f"{v} {w}" for v in sparse.TORCH for w in ("forward", "value_and_grad")
        }
    md = (tmp_path / "results-cpu-float32-quick.md").read_text()
    assert md.count("| sparse |") == len(rows)


def test_sparse_suite_agrees_with_optax_and_says_why_torch_is_skipped(monkeypatch):
    from jsoftmax.bench import sparse

    # the harness's functions, outside it: jsoftmax's sparsemax is optax's projection
    x = jax.random.normal(jax.random.key(1), (8, 48))
    fns = sparse.functions("forward")
    want = fns["optax"](x)
    for name in ("sparsemax newton", "sparsemax sort"):
        np.testing.assert_allclose(fns[name](x), want, rtol=1e-5, atol=1e-5)
    assert sparse.fitted_reps(1e-6) == sparse.MAX_REPS
    assert sparse.fitted_reps(1e3) == sparse.MIN_REPS
    monkeypatch.setitem(sys.modules, "entmax", None)  # `import entmax` raises ImportError
    monkeypatch.delenv("JSOFTMAX_TORCH_PYTHON", raising=False)
    (row,) = sparse.torch_rows([(4, 8)], "float32", 3, {})
    assert row["suite"] == "sparse" and "not installed" in row["skipped"]
    (row,) = sparse.torch_rows([(4, 8)], "bfloat16", 3, {})
    assert "float32 only" in row["skipped"]


def test_compare_on_an_accelerator_times_several_calls_per_sample(monkeypatch):
    calls = []

    def compile_and_memory(fn, *args):
        def compiled(*args):
            calls.append(1)
            return fn(*args)

        return compiled, 0.0, 0

    monkeypatch.setattr(_timing, "compile_and_memory", compile_and_memory)
    monkeypatch.setattr(_timing.jax, "default_backend", lambda: "gpu")
    res = compare({"f": lambda x: x}, (np.ones(3),), reps=3, warmup=1)
    assert res["f"].calls_per_sample == _timing.ACCELERATOR_CALLS
    assert len(calls) == 1 + 3 * _timing.ACCELERATOR_CALLS
    assert _timing.torch_cpu_mismatch() == "PyTorch rows run on the CPU; JAX ran on gpu"
    monkeypatch.setattr(_timing.jax, "default_backend", lambda: "cpu")
    assert _timing.calls_per_sample() == 1 and _timing.torch_cpu_mismatch() is None


def test_fusion_suite_counts_entry_kernels_and_loop_bodies():
    from jsoftmax.bench import fusion

    def loop(x):
        return jax.lax.fori_loop(0, 3, lambda i, c: jnp.sin(c) @ c, x)

    text = jax.jit(loop).lower(jnp.ones((4, 4))).compile().as_text()
    (label,) = [k for k in fusion.entry_kernels(text) if k.startswith("while[")]
    assert "dot" in label or "custom-call" in label or "fusion" in label
    with pytest.raises(ValueError, match="no ENTRY computation"):
        fusion.entry_kernels("HloModule m\n")
    rows = fusion.run(quick=True)
    assert {r["op"] for r in rows} >= {
        "softmax value_and_grad",
        "cross_entropy value_and_grad(mean loss)",
    }
    for r in rows:
        assert r["jsoftmax_kernels"] == len(r["jsoftmax_list"]) > 0
        assert r["baseline_kernels"] == len(r["baseline_list"]) > 0
    assert "kernels (jsoftmax; baseline)" in bench.text_table(rows)


def test_alternated_processes_say_why_when_skipped(monkeypatch):
    monkeypatch.setattr(linear_xent, "_torch_python", lambda: None)
    (row,) = linear_xent.alternate(quick=True)
    assert "torch not installed" in row["skipped"] and "alternated" in row["op"]
    monkeypatch.setattr(_timing.jax, "default_backend", lambda: "gpu")
    (row,) = linear_xent.alternate(quick=True)
    assert "PyTorch rows run on the CPU" in row["skipped"]


@pytest.mark.skipif(linear_xent._torch_python() is None, reason="needs PyTorch (an oracle only)")
def test_alternated_processes_report_time_and_peak_memory_of_both():
    (row,) = linear_xent.alternate(quick=True, rounds=1)
    assert "skipped" not in row, row
    assert row["ratio"] == pytest.approx(row["jsoftmax_ms"] / row["baseline_ms"])
    assert row["jsoftmax_rss_growth_mib"] >= 0 and row["torch_rss_growth_mib"] >= 0
    assert "threads" in row["baseline"] and row["round"] == 1


# jsoftmax.bench.linear_xent.accumulation — "time at one [size] against the naive loss's
# ``grad`` of a scan" and "compiled temp memory at several sizes", "with the automatic path
# choice and with each path forced"
def test_accumulation_suite_times_every_pattern_and_path_and_measures_their_memory():
    rows = linear_xent.accumulation(quick=True)
    timed = [r for r in rows if "jsoftmax_ms" in r]
    memory = [r for r in rows if "temp_mib" in r]
    assert len(timed) == 9 and len(memory) == 9 * len(linear_xent.ACCUMULATION_QUICK)
    for r in timed:
        assert r["ratio"] == pytest.approx(r["jsoftmax_ms"] / r["baseline_ms"])
        assert "grad of a scan" in r["baseline"]
    # the automatic grad of a scan is the recompute path's program, and the forced
    # gradients-in-forward path holds a dw a step: its memory grows by one dw per extra step
    # between the two sizes, the automatic one's does not
    (few, _, _, _), (many, _, d, v) = linear_xent.ACCUMULATION_QUICK
    dw_mib = d * v * 4 / 2**20

    def temp_at(steps):
        shape = {r["op"]: r["temp_mib"] for r in memory if r["shape"].startswith(f"T={steps} ")}
        return [
            shape[f"gradient accumulation: grad of scan, {path} (compiled, not run)"]
            for path in (
                "automatic (default)",
                "gradients_in_forward=True",
                "gradients_in_forward=False",
            )
        ]

    (auto_few, forced_few, _), (auto, forced, off) = temp_at(few), temp_at(many)
    assert auto == off
    assert forced - forced_few >= 0.99 * (many - few) * dw_mib
    assert auto - auto_few < 0.1 * dw_mib
    assert "linear_xent_accumulation" in bench.SUITES


# benchmarks/gpu.sh — "named sections, each with its own time limit"; "unknown section" exits 2
def test_gpu_script_runs_named_sections_and_refuses_unknown_ones(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parent.parent
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def gpu_sh(*sections):
        cmd = ["bash", "benchmarks/gpu.sh", str(tmp_path), *sections]
        return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)

    bad = gpu_sh("hlo", "bogus=5")
    assert bad.returncode == 2 and "unknown section: bogus" in bad.stderr
    assert not (tmp_path / "hlo.txt").exists()  # checked before anything runs
    ran = gpu_sh("hlo=240")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "== hlo (limit 240 s)" in ran.stdout
    text = (tmp_path / "hlo.txt").read_text()
    assert "==== jsoftmax.softmax value_and_grad" in text and "==== jax.nn.softmax" in text
