"""The benchmark harness runs end to end and writes well-formed results (no timing asserted)."""

import json

import jax
import jax.numpy as jnp
import pytest

from jsoftmax.bench import __main__ as bench
from jsoftmax.bench._timing import compare


def test_compare_measures_every_function_interleaved():
    calls = []

    def f(x):
        return x * 2.0

    def g(x):
        return jnp.sin(x)

    res = compare({"f": f, "g": g}, (jnp.ones((8, 8)),), reps=5)
    calls.extend(res)
    assert sorted(calls) == ["f", "g"]
    for m in res.values():
        assert m.reps >= 5 and m.median_s > 0 and m.compile_s > 0 and m.temp_bytes >= 0


def test_quick_run_writes_json_markdown_and_chart(tmp_path, capsys):
    assert bench.main(["--quick", "--suites", "core,bandwidth", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results-cpu-float32-quick.json").read_text())
    assert data["environment"]["jax"] == jax.__version__
    rows = data["rows"]
    core = [r for r in rows if r["suite"] == "core"]
    assert {r["op"] for r in core} == {
        "softmax forward",
        "softmax value_and_grad",
        "log_softmax forward",
        "log_softmax value_and_grad",
    }
    for r in core:
        assert r["ratio"] == pytest.approx(r["jsoftmax_ms"] / r["baseline_ms"])
        assert r["baseline"] == "jax.nn"
    assert all(0 < r["fraction_of_copy"] for r in rows if r["suite"] == "bandwidth")
    md = (tmp_path / "results-cpu-float32-quick.md").read_text()
    assert md.count("| core |") == len(core)
    assert (tmp_path / "results-cpu-float32-quick.png").stat().st_size > 1000


def test_unknown_suite_is_rejected(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--suites", "nope", "--out", str(tmp_path)])
