"""Benchmark: chunked ``linear_cross_entropy`` against the naive ``x @ w`` + cross-entropy.

Three parts, all for ``jax.value_and_grad`` of the mean loss with respect to ``x`` and ``w``:

1. time and compiled temp memory (``memory_analysis().temp_size_in_bytes``) of the chunked
   function and of the naive one (logits materialised, ``optax`` cross-entropy on them), timed
   interleaved in one process with :func:`jsoftmax.bench._timing.compare`;
2. temp memory against the vocabulary size ``V`` for both (compiled only, never run, so the
   large naive programs cost no memory);
3. where PyTorch is available (in this interpreter, or in the Python named by
   ``$JSOFTMAX_TORCH_PYTHON``), ``torch.nn.functional.linear_cross_entropy`` forward + backward with
   its chunked path (``options=LinearCrossEntropyOptions()``), in a subprocess on the same
   inputs' shapes, reported against the jsoftmax time from part 1.

Run ``python -m jsoftmax.bench.linear_xent [--quick]``; it prints one JSON row per figure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jsoftmax._linear_xent import linear_cross_entropy
from jsoftmax.bench._timing import compare, compile_and_memory

__all__ = ["run"]

SUITE = "linear_cross_entropy"

FULL = {"n": 8192, "d": 1024, "v": 65536, "reps": 2, "warmup": 1}
QUICK = {"n": 256, "d": 64, "v": 2048, "reps": 5, "warmup": 1}
CURVE_FULL = [4096 * 2**k for k in range(7)]  # 4096 … 262144
CURVE_QUICK = [1024, 4096]


def _inputs(n: int, d: int, v: int, dtype=jnp.float32):
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, d), dtype)
    w = (jax.random.normal(kw, (d, v), dtype) / np.sqrt(d)).astype(dtype)
    y = jax.random.randint(ky, (n,), 0, v)
    return x, w, y


def _chunked(x, w, y):
    return jax.value_and_grad(linear_cross_entropy, argnums=(0, 1))(x, w, y)


def _naive_loss(x, w, y):
    return optax.softmax_cross_entropy_with_integer_labels(x @ w, y).mean()


def _naive(x, w, y):
    return jax.value_and_grad(_naive_loss, argnums=(0, 1))(x, w, y)


def _shape(n, d, v):
    return f"N={n} D={d} V={v}"


def _abstract(n, d, v):
    f32 = jnp.float32
    return (
        jax.ShapeDtypeStruct((n, d), f32),
        jax.ShapeDtypeStruct((d, v), f32),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )


def _timing_row(cfg) -> tuple[dict, float]:
    n, d, v = cfg["n"], cfg["d"], cfg["v"]
    args = _inputs(n, d, v)
    res = compare(
        {"jsoftmax": _chunked, "naive": _naive}, args, reps=cfg["reps"], warmup=cfg["warmup"]
    )
    js, nv = res["jsoftmax"], res["naive"]
    row = {
        "suite": SUITE,
        "op": "value_and_grad(x, w) mean loss",
        "shape": _shape(n, d, v),
        "dtype": "float32",
        "jsoftmax_ms": js.median_s * 1e3,
        "baseline": "naive jax (x @ w, optax cross-entropy)",
        "baseline_ms": nv.median_s * 1e3,
        "ratio": js.median_s / nv.median_s,
        "jsoftmax_temp_bytes": js.temp_bytes,
        "baseline_temp_bytes": nv.temp_bytes,
        "temp_ratio": js.temp_bytes / max(nv.temp_bytes, 1),
        "reps": js.reps,
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
    }
    return row, js.median_s


def _memory_rows(n: int, d: int, vs: list[int]) -> list[dict]:
    rows = []
    for v in vs:
        args = _abstract(n, d, v)
        _, _, js_temp = compile_and_memory(_chunked, *args)
        _, _, nv_temp = compile_and_memory(_naive, *args)
        rows.append(
            {
                "suite": SUITE,
                "op": "temp memory of value_and_grad(x, w) (compiled, not run)",
                "shape": _shape(n, d, v),
                "dtype": "float32",
                "jsoftmax_ms": None,
                "baseline": "naive jax (x @ w, optax cross-entropy)",
                "baseline_ms": None,
                "ratio": None,
                "jsoftmax_temp_bytes": js_temp,
                "baseline_temp_bytes": nv_temp,
                "temp_ratio": js_temp / max(nv_temp, 1),
                "device": jax.devices()[0].device_kind,
                "jax": jax.__version__,
            }
        )
    return rows


# Runs in the PyTorch interpreter (which need not have jax): forward + backward of the mean
# loss with the chunked path, interleaved with the reference path only when asked (it needs
# N·V memory). Prints one JSON object.
_TORCH_SCRIPT = textwrap.dedent(
    """
    import json, statistics, sys, time
    import torch
    import torch.nn.functional as F
    n, d, v, reps, warmup = (int(a) for a in sys.argv[1:6])
    torch.manual_seed(0)
    x = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) / d ** 0.5).requires_grad_(True)  # torch's weight is [V, D]
    y = torch.randint(0, v, (n,))
    opts = torch.nn.LinearCrossEntropyOptions()
    def step():
        x.grad = None
        w.grad = None
        loss = F.linear_cross_entropy(x, w, y, options=opts)
        loss.backward()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"median_s": statistics.median(times), "reps": reps,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))
    """
)


def _torch_python() -> str | None:
    if importlib.util.find_spec("torch") is not None:
        return sys.executable
    cand = os.environ.get("JSOFTMAX_TORCH_PYTHON")
    return cand if cand and os.path.exists(cand) else None


def _torch_row(cfg, jsoftmax_s: float) -> dict | None:
    python = _torch_python()
    if python is None:
        return None
    n, d, v = cfg["n"], cfg["d"], cfg["v"]
    argv = [python, "-c", _TORCH_SCRIPT, *map(str, (n, d, v, cfg["reps"], cfg["warmup"]))]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"torch benchmark failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "suite": SUITE,
        "op": "forward+backward (x, w) mean loss",
        "shape": _shape(n, d, v),
        "dtype": "float32",
        "jsoftmax_ms": jsoftmax_s * 1e3,
        "baseline": f"torch {out['torch']} F.linear_cross_entropy chunked "
        f"({out['threads']} threads, run after jsoftmax)",
        "baseline_ms": out["median_s"] * 1e3,
        "ratio": jsoftmax_s / out["median_s"],
        "jsoftmax_temp_bytes": None,
        "baseline_temp_bytes": None,
        "reps": out["reps"],
    }


def run(quick: bool = False) -> list[dict]:
    """Run the suite; ``quick`` uses tiny shapes (seconds) instead of the full ones."""
    cfg = QUICK if quick else FULL
    rows = []
    timing, js_s = _timing_row(cfg)
    rows.append(timing)
    torch_row = _torch_row(cfg, js_s)
    if torch_row is not None:
        rows.append(torch_row)
    rows.extend(_memory_rows(cfg["n"], cfg["d"], CURVE_QUICK if quick else CURVE_FULL))
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv[1:]):
        print(json.dumps(r))
