"""Benchmark suite: the sparse normalisers (sparsemax, 1.5-entmax, α-entmax by bisection).

For each shape, ``forward`` (``f(x)``) and ``value_and_grad`` (of ``sum(f(x) * c)`` for a fixed
random ``c``, with respect to ``x``) of seven functions, all timed interleaved in one
:func:`jsoftmax.bench._timing.compare` call:

* ``jsoftmax.sparsemax(method="newton")`` and ``(method="sort")``;
* ``jsoftmax.entmax15(method="newton")`` and ``(method="sort")``;
* ``jsoftmax.entmax(x, jnp.array(1.5))``: an array ``alpha`` always bisects;
* the baselines: optax's simplex projection, ``jax.vmap`` of
  ``optax.projections.projection_simplex`` (which projects one flat vector) over the rows
  (in float32 for a bfloat16 input), and ``jsoftmax.softmax``.

Rows: each sparsemax variant against optax (the same function computed another way), then every
sparse variant against ``jsoftmax.softmax`` (what sparsity costs over the dense normaliser).
Every sparse row also says how far its output (``forward``) or gradient (``value_and_grad``) is
from a reference computed on the same inputs: ``max_abs_diff`` against ``max_abs_diff_vs``
(optax for sparsemax; the sort closed form for 1.5-entmax, and Newton for the sort row).

Repetitions. One call takes from milliseconds (Newton, softmax) to seconds (the sorts at
256×32768 on 2 CPU cores), and the seven functions are interleaved, so each takes the same
number of calls: a fixed 30 would make the suite run for over 10 minutes there. Unless ``reps``
is given, each (shape, operation) gets as many interleaved rounds as fit in ``BUDGET_S`` seconds
(the round's time is that of the agreement check, one jitted call of all the sparse functions),
at least ``MIN_REPS`` and at most ``MAX_REPS``; every row records its ``reps``. A full run on 2
CPU cores takes about 3 minutes without the PyTorch rows.

Where PyTorch and the ``entmax`` package import (in this interpreter, or in the Python named by
``$JSOFTMAX_TORCH_PYTHON``), ``entmax.sparsemax``, ``entmax.entmax15`` and
``entmax.entmax_bisect`` run the same shapes in float32 in a subprocess, after the JAX
measurements, with ``torch.set_num_threads`` set to the CPU count this process may use (XLA's
CPU thread pool size), each on the same rule of repetitions (``TORCH_BUDGET_S`` a function,
after ``TORCH_WARMUP_S`` seconds of warm-up calls); each is reported against the matching
jsoftmax variant's time. They add about 2.5 minutes on 2 CPU cores (``entmax_bisect`` takes
seconds a call at 256×32768).
Without PyTorch or ``entmax``, a row says why.

Run ``python -m jsoftmax.bench.sparse [--quick]``; it prints one JSON row per figure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from functools import partial

import jax
import jax.numpy as jnp
import optax

import jsoftmax
from jsoftmax.bench._timing import (
    Measurement,
    compare,
    comparison_row,
    skipped_row,
    torch_cpu_mismatch,
)
from jsoftmax.bench.core import _normals, _weighted_sum_grad

__all__ = ["run"]

SUITE = "sparse"
SHAPES = [(4096, 1024), (256, 32768), (8, 262144)]
QUICK_SHAPES = [(64, 128), (8, 1024)]
#: Repetitions: rounds fitted to ``BUDGET_S`` seconds of timed calls a (shape, operation),
#: between ``MIN_REPS`` and ``MAX_REPS``, after ``WARMUP`` rounds (one where a round takes over
#: a second); PyTorch warms up for ``TORCH_WARMUP_S`` seconds, at least one call (its first few
#: dozen calls at small shapes are many times slower). See the module's docstring.
BUDGET_S, TORCH_BUDGET_S, TORCH_WARMUP_S = 15.0, 3.0, 0.5
MIN_REPS, MAX_REPS, WARMUP = 3, 30, 3


def _optax_sparsemax(x: jax.Array) -> jax.Array:
    """optax's Euclidean projection onto the simplex, one row at a time.

    A bfloat16 ``x`` is projected in float32 (as jsoftmax computes it) and cast back: optax's
    JVP rule fails for bfloat16 (its output is float32 while the tangent is bfloat16).
    """
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float32 stays as it is
    return jax.vmap(optax.projections.projection_simplex)(x32).astype(x.dtype)


def _entmax_bisect(x: jax.Array) -> jax.Array:
    return jsoftmax.entmax(x, jnp.array(1.5, jnp.float32))  # an array alpha: bisection


#: The functions measured: name → (function, the reference its output is checked against).
VARIANTS = {
    "sparsemax newton": (partial(jsoftmax.sparsemax, method="newton"), "optax"),
    "sparsemax sort": (partial(jsoftmax.sparsemax, method="sort"), "optax"),
    "entmax15 newton": (partial(jsoftmax.entmax15, method="newton"), "entmax15 sort"),
    "entmax15 sort": (partial(jsoftmax.entmax15, method="sort"), "entmax15 newton"),
    "entmax bisection alpha=1.5": (_entmax_bisect, "entmax15 sort"),
}
BASELINES = {"optax": _optax_sparsemax, "softmax": jsoftmax.softmax}
LABELS = {
    "optax": "optax projection_simplex (vmap over rows)",
    "softmax": "jsoftmax.softmax",
}
#: The PyTorch ``entmax`` function each jsoftmax variant is compared with.
TORCH = {
    "sparsemax newton": "sparsemax",
    "entmax15 newton": "entmax15",
    "entmax bisection alpha=1.5": "entmax_bisect",
}


def functions(what: str) -> dict:
    """The variants and baselines for ``what`` (``"forward"`` or ``"value_and_grad"``)."""
    fns = {name: fn for name, (fn, _) in VARIANTS.items()} | BASELINES
    if what == "forward":
        return fns
    return {name: _weighted_sum_grad(fn) for name, fn in fns.items()}


def max_abs_diffs(what: str, args) -> tuple[dict[str, float], float]:
    """Each variant's largest difference from its reference on ``args`` (outputs for
    ``forward``, gradients for ``value_and_grad``), and the seconds the one jitted call that
    computes them all took (compile time excluded): about one round of the timed functions."""
    fns = functions(what)

    def diffs(*args):
        out = {name: fn(*args) for name, fn in fns.items() if name != "softmax"}
        if what != "forward":
            out = {name: grad for name, (_, grad) in out.items()}
        f32 = {name: o.astype(jnp.float32) for name, o in out.items()}
        return {name: jnp.max(jnp.abs(f32[name] - f32[ref])) for name, (_, ref) in VARIANTS.items()}

    args = jax.device_put(tuple(args))
    compiled = jax.jit(diffs).lower(*args).compile()
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    seconds = time.perf_counter() - t0
    return {name: float(d) for name, d in jax.device_get(out).items()}, seconds


def fitted_reps(round_s: float, budget_s: float = BUDGET_S) -> int:
    """Rounds of ``round_s`` seconds that fit in ``budget_s``, within [MIN_REPS, MAX_REPS]."""
    return max(MIN_REPS, min(MAX_REPS, int(budget_s / max(round_s, 1e-9))))


def _cpu_threads() -> int:
    """The CPUs this process may run on: the size of XLA's CPU thread pool."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run(
    quick: bool = False,
    dtype: str = "float32",
    reps: int | None = None,
    *,
    shapes: list[tuple[int, int]] | None = None,
    torch: bool = True,
) -> list[dict]:
    """The suite's rows; ``quick`` uses tiny shapes, ``shapes`` overrides either list.

    ``reps`` fixes the timed calls of each function; without it they are fitted to
    ``BUDGET_S`` (see the module's docstring). ``torch=False`` leaves out the PyTorch rows.
    """
    shapes = shapes or (QUICK_SHAPES if quick else SHAPES)
    rows, torch_against = [], {}
    for shape in shapes:
        x, c = _normals(shape, dtype)
        for what, args in [("forward", (x,)), ("value_and_grad", (x, c))]:
            diffs, round_s = max_abs_diffs(what, args)
            n = reps or fitted_reps(round_s)
            warmup = WARMUP if round_s < 1.0 else 1
            res = compare(functions(what), args, reps=n, warmup=warmup)
            for base in BASELINES:
                for name, (_, ref) in VARIANTS.items():
                    if base == "optax" and ref != "optax":
                        continue  # optax has sparsemax only
                    rows.append(
                        comparison_row(
                            SUITE,
                            f"{name} {what}",
                            list(shape),
                            dtype,
                            res[name],
                            res[base],
                            LABELS[base],
                            max_abs_diff=diffs[name],
                            max_abs_diff_vs=ref,
                        )
                    )
            torch_against.update({(tuple(shape), name, what): res[name] for name in TORCH})
    if torch:
        rows += torch_rows(shapes, dtype, reps, torch_against)
    return rows


# Runs in the PyTorch interpreter (which need not have jax): each entmax function at each shape,
# forward (no autograd) and forward + backward of sum(p * c); after warmup seconds of calls, a
# fixed number of timed calls, or (reps 0) as many as fit in the budget at the last warm-up
# call's time, within [min, max]. Prints one JSON object.
_TORCH_SCRIPT = textwrap.dedent(
    """
    import json, statistics, sys, time
    import torch
    import entmax
    shapes, names, reps, warmup, budget, lo, hi, threads = json.loads(sys.argv[1])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out = []
    for shape in shapes:
        x = torch.randn(*shape)
        c = torch.randn(*shape)
        for name in names:
            fn = getattr(entmax, name)
            def forward():
                with torch.no_grad():
                    fn(x, dim=-1)
            def backward():
                xr = x.detach().requires_grad_(True)
                (fn(xr, dim=-1) * c).sum().backward()
            for what, step in [("forward", forward), ("value_and_grad", backward)]:
                start = time.perf_counter()
                while True:  # warm-up: at least one call, and warmup seconds
                    t0 = time.perf_counter()
                    step()
                    last = time.perf_counter() - t0
                    if t0 + last - start >= warmup:
                        break
                n = reps or max(lo, min(hi, int(budget / max(last, 1e-9))))
                times = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - t0)
                out.append({"shape": shape, "name": name, "what": what,
                            "median_s": statistics.median(times), "reps": n})
    print(json.dumps({"rows": out, "torch": torch.__version__,
                      "entmax": getattr(entmax, "__version__", "?"),
                      "threads": torch.get_num_threads()}))
    """
)


def _torch_python() -> str | None:
    if all(importlib.util.find_spec(m) is not None for m in ("torch", "entmax")):
        return sys.executable
    cand = os.environ.get("JSOFTMAX_TORCH_PYTHON")
    return cand if cand and os.path.exists(cand) else None


def torch_rows(shapes, dtype: str, reps: int | None, against: dict) -> list[dict]:
    """PyTorch ``entmax`` against the jsoftmax times in ``against``, or a row saying why not.

    ``against`` maps ``(shape, variant, what)`` to the jsoftmax :class:`Measurement`; ``reps``
    fixes the timed calls (``None``: fitted to ``TORCH_BUDGET_S``).
    """
    where = (SUITE, "every PyTorch entmax row", "", dtype)
    if dtype != "float32":
        return [skipped_row(*where, f"the PyTorch entmax rows are float32 only, not {dtype}")]
    if reason := torch_cpu_mismatch():
        return [skipped_row(*where, reason)]
    python = _torch_python()
    if python is None:
        reason = "torch or entmax not installed (here or at $JSOFTMAX_TORCH_PYTHON)"
        return [skipped_row(*where, reason)]
    spec = [
        [list(s) for s in shapes],
        list(TORCH.values()),
        reps or 0,
        TORCH_WARMUP_S,
        TORCH_BUDGET_S,
        MIN_REPS,
        MAX_REPS,
        _cpu_threads(),
    ]
    proc = subprocess.run(
        [python, "-c", _TORCH_SCRIPT, json.dumps(spec)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        print(f"torch entmax benchmark failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return [skipped_row(*where, f"torch entmax run failed: {last}")]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    variant = {v: k for k, v in TORCH.items()}
    rows = []
    for r in out["rows"]:
        name, what, shape = variant[r["name"]], r["what"], tuple(r["shape"])
        base = Measurement("torch", r["median_s"], None, None, r["reps"])
        label = f"torch entmax.{r['name']} ({out['threads']} threads, run after jsoftmax)"
        ours = against[(shape, name, what)]
        rows.append(
            comparison_row(
                SUITE,
                f"{name} {what}",
                list(shape),
                dtype,
                ours,
                base,
                label,
                baseline_reps=r["reps"],
                torch_version=out["torch"],
                entmax_version=out["entmax"],
            )
        )
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv[1:]):
        print(json.dumps(row))
