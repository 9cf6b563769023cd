"""Benchmark: chunked ``linear_cross_entropy`` against the naive ``x @ w`` + cross-entropy.

Five parts, the first four for ``jax.value_and_grad`` of the mean loss with respect to ``x``
and ``w``:

1. time and compiled temp memory (``memory_analysis().temp_size_in_bytes``) of the chunked
   function and of the naive one (logits materialised, ``optax`` cross-entropy on them), timed
   interleaved in one process with :func:`jsoftmax.bench._timing.compare`;
2. temp memory against the vocabulary size ``V`` for both (compiled only, never run, so the
   large naive programs cost no memory);
3. where PyTorch is available (in this interpreter, or in the Python named by
   ``$JSOFTMAX_TORCH_PYTHON``), ``torch.nn.functional.linear_cross_entropy`` forward + backward with
   its chunked path (``options=LinearCrossEntropyOptions()``), in a subprocess on the same
   inputs' shapes, reported against the jsoftmax time from part 1; without PyTorch, a row
   that says why it was skipped.
4. :func:`alternate` (suite ``linear_xent_processes``): jsoftmax and PyTorch's chunked path
   each in a fresh process, alternated (jsoftmax, PyTorch, jsoftmax, PyTorch, ...), with the
   same thread count, so neither side runs after the other has warmed or loaded the machine;
   each process reports its median time and its peak RSS growth over the warm-up and timed
   calls (the peak ``VmHWM`` reset after the inputs, and for jsoftmax the compilation; Linux).
5. gradient accumulation over ``T`` micro-batches: ``grad`` of a ``lax.scan``, the same with
   the step under ``jax.checkpoint``, and ``value_and_grad`` in the scan body
   (:func:`accumulation_patterns`), with the automatic path choice and with each path forced:
   compiled temp memory at several sizes, and time at one against the naive loss's ``grad``
   of a scan.

Run ``python -m jsoftmax.bench.linear_xent [--quick] [--alternate | --accumulation]``; it prints
one JSON row per figure. Items 1–3 are :func:`run`, item 4 :func:`alternate`, item 5
:func:`accumulation`.
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

from jsoftmax import linear_cross_entropy
from jsoftmax.bench._timing import (
    Measurement,
    compare,
    comparison_row,
    memory_only,
    result_row,
    skipped_row,
    torch_cpu_mismatch,
)

__all__ = ["run"]

SUITE = "linear_cross_entropy"

FULL = {"n": 8192, "d": 1024, "v": 65536, "reps": 2, "warmup": 1}
QUICK = {"n": 256, "d": 64, "v": 2048, "reps": 5, "warmup": 1}
CURVE_FULL = [4096 * 2**k for k in range(7)]  # 4096 … 262144
CURVE_QUICK = [1024, 4096]
#: Token blocks of the gradients-in-forward path timed against the naive version on an
#: accelerator (on 2 CPU cores each call takes ~20 s; the CPU sweep is recorded in
#: ``jsoftmax._linear_xent``), and in a quick run anywhere.
SWEEP_FULL = [256, 512, 1024, 2048, 4096]
SWEEP_QUICK = [32, 64]


def _inputs(n: int, d: int, v: int, dtype=jnp.float32):
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, d), dtype)
    w = (jax.random.normal(kw, (d, v), dtype) / np.sqrt(d)).astype(dtype)
    y = jax.random.randint(ky, (n,), 0, v)
    return x, w, y


def _chunked(x, w, y):
    # reduction "mean": the gradients are formed in the forward rule (three matmuls)
    return jax.value_and_grad(linear_cross_entropy, argnums=(0, 1))(x, w, y)


def _recompute_loss(x, w, y):
    return linear_cross_entropy(x, w, y, gradients_in_forward=False)


def _recompute(x, w, y):
    # the low-memory path that forms every block of logits twice (four matmuls)
    return jax.value_and_grad(_recompute_loss, argnums=(0, 1))(x, w, y)


def _three_matmuls(x, w, y):
    """The matmul reference: x @ w, dz @ wᵀ and xᵀ @ dz at full size (dz stands in as z)."""
    z = x @ w
    return z @ w.T, x.T @ z


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


BASELINE = "naive jax (x @ w, optax cross-entropy)"


def _versus_naive(op: str, n: int, d: int, v: int, js: Measurement, nv: Measurement) -> dict:
    """A jsoftmax-vs-naive row, with the temp memory ratio, the device and the jax version."""
    return comparison_row(
        SUITE,
        op,
        _shape(n, d, v),
        "float32",
        js,
        nv,
        BASELINE,
        temp_ratio=js.temp_bytes / max(nv.temp_bytes, 1),
        device=jax.devices()[0].device_kind,
        jax=jax.__version__,
    )


def _timing_row(cfg) -> tuple[list[dict], Measurement]:
    n, d, v = cfg["n"], cfg["d"], cfg["v"]
    args = _inputs(n, d, v)
    fns = {
        "jsoftmax": _chunked,
        "recompute": _recompute,
        "naive": _naive,
        "three matmuls": _three_matmuls,
    }
    res = compare(fns, args, reps=cfg["reps"], warmup=cfg["warmup"])
    js, nv = res["jsoftmax"], res["naive"]
    op = "value_and_grad(x, w) mean loss"
    rows = [
        _versus_naive(op, n, d, v, js, nv),
        _versus_naive(f"{op}, gradients_in_forward=False", n, d, v, res["recompute"], nv),
        comparison_row(
            SUITE,
            op,
            _shape(n, d, v),
            "float32",
            js,
            res["three matmuls"],
            "three full-size matmuls (x @ w, dz @ wT, xT @ dz)",
            device=jax.devices()[0].device_kind,
            jax=jax.__version__,
        ),
    ]
    return rows, js


def _sweep_rows(cfg, blocks: list[int]) -> list[dict]:
    """``value_and_grad`` with each token block ``tn`` (``chunk_size=(tn, None)``) vs naive."""
    n, d, v = cfg["n"], cfg["d"], cfg["v"]

    def block(tn):
        def f(x, w, y):
            loss = lambda x, w, y: linear_cross_entropy(x, w, y, chunk_size=(tn, None))  # noqa: E731
            return jax.value_and_grad(loss, argnums=(0, 1))(x, w, y)

        return f

    fns = {"naive": _naive, **{f"tn={tn}": block(tn) for tn in blocks}}
    res = compare(fns, _inputs(n, d, v), reps=cfg["reps"], warmup=cfg["warmup"])
    op = "value_and_grad(x, w) mean loss, token block"
    return [_versus_naive(f"{op} {tn}", n, d, v, res[f"tn={tn}"], res["naive"]) for tn in blocks]


def _memory_rows(n: int, d: int, vs: list[int]) -> list[dict]:
    op = "temp memory of value_and_grad(x, w) (compiled, not run)"
    rows = []
    for v in vs:
        naive = memory_only("naive", _naive, *_abstract(n, d, v))
        for label, fn in [("", _chunked), (", gradients_in_forward=False", _recompute)]:
            js = memory_only("jsoftmax", fn, *_abstract(n, d, v))
            rows.append(_versus_naive(op + label, n, d, v, js, naive))
    return rows


#: Gradient accumulation over ``steps`` micro-batches (compiled only): ``(steps, n, d, v)``.
ACCUMULATION_FULL = [(8, 512, 256, 8192), (16, 512, 256, 8192), (8, 256, 512, 16384)]
ACCUMULATION_QUICK = [(4, 64, 64, 2048), (8, 64, 64, 2048)]


#: Timed gradient accumulation: ``(steps, n, d, v)`` and repetitions.
ACCUMULATION_TIMED_FULL = {"size": (8, 512, 256, 8192), "reps": 15, "warmup": 2}
ACCUMULATION_TIMED_QUICK = {"size": (4, 64, 64, 2048), "reps": 3, "warmup": 1}

_ACCUMULATION_PATHS = [
    (None, "automatic (default)"),
    (True, "gradients_in_forward=True"),
    (False, "gradients_in_forward=False"),
]


def accumulation_patterns(gradients_in_forward: bool | None = None) -> dict:
    """Ways to take ``dw`` of a loss summed over micro-batches ``xs [T, n, D]``, ``ys [T, n]``.

    Each maps ``(w, xs, ys)`` to the summed loss and ``dw``:

    * ``"grad of scan"``: ``jax.grad`` of a ``lax.scan`` whose body adds each step's loss;
    * ``"grad of scan, checkpointed step"``: the same with ``jax.checkpoint`` around the step;
    * ``"value_and_grad in the scan body"``: each step's gradient added to the carry.
    """

    def step(w, x, y):
        return linear_cross_entropy(x, w, y, gradients_in_forward=gradients_in_forward)

    def summed(step):
        def loss(w, xs, ys):
            body = lambda total, xy: (total + step(w, *xy), None)  # noqa: E731
            return jax.lax.scan(body, jnp.zeros((), jnp.float32), (xs, ys))[0]

        return jax.value_and_grad(loss)

    def in_body(w, xs, ys):
        def body(carry, xy):
            loss, dw = jax.value_and_grad(step)(w, *xy)
            return (carry[0] + loss, carry[1] + dw), None

        return jax.lax.scan(body, (jnp.zeros((), jnp.float32), jnp.zeros_like(w)), (xs, ys))[0]

    return {
        "grad of scan": summed(step),
        "grad of scan, checkpointed step": summed(jax.checkpoint(step)),
        "value_and_grad in the scan body": in_body,
    }


def accumulation_memory(fn, steps: int, n: int, d: int, v: int) -> tuple[int, int]:
    """``(temp bytes, argument bytes)`` of ``fn`` compiled for float32 micro-batches."""
    f32 = jnp.float32
    args = (
        jax.ShapeDtypeStruct((d, v), f32),
        jax.ShapeDtypeStruct((steps, n, d), f32),
        jax.ShapeDtypeStruct((steps, n), jnp.int32),
    )
    mem = jax.jit(fn).lower(*args).compile().memory_analysis()
    return int(mem.temp_size_in_bytes), int(mem.argument_size_in_bytes)


def _naive_accumulation(w, xs, ys):
    """``grad`` of a scan of the naive loss: the baseline of the timed accumulation rows."""

    def loss(w, xs, ys):
        body = lambda total, xy: (total + _naive_loss(xy[0], w, xy[1]), None)  # noqa: E731
        return jax.lax.scan(body, jnp.zeros((), jnp.float32), (xs, ys))[0]

    return jax.value_and_grad(loss)(w, xs, ys)


def _accumulation_timing_rows(cfg) -> list[dict]:
    """Time of each accumulation pattern on each path, against the naive ``grad`` of a scan."""
    steps, n, d, v = cfg["size"]
    kx, kw, ky = jax.random.split(jax.random.key(1), 3)
    xs = jax.random.normal(kx, (steps, n, d), jnp.float32)
    w = jax.random.normal(kw, (d, v), jnp.float32) / np.sqrt(d)
    ys = jax.random.randint(ky, (steps, n), 0, v)
    fns = {"naive": _naive_accumulation}
    for gif, path in _ACCUMULATION_PATHS:
        for name, fn in accumulation_patterns(gif).items():
            fns[f"{name}, {path}"] = fn
    res = compare(fns, (w, xs, ys), reps=cfg["reps"], warmup=cfg["warmup"])
    shape = f"T={steps} n={n} D={d} V={v}"
    return [
        comparison_row(
            SUITE,
            f"gradient accumulation: {name}",
            shape,
            "float32",
            m,
            res["naive"],
            "naive jax, grad of a scan (x @ w, optax cross-entropy)",
            temp_ratio=m.temp_bytes / max(res["naive"].temp_bytes, 1),
            device=jax.devices()[0].device_kind,
            jax=jax.__version__,
        )
        for name, m in res.items()
        if name != "naive"
    ]


def _accumulation_rows(sizes) -> list[dict]:
    """Compiled temp memory of each accumulation pattern on both paths, in MiB and in dw's."""
    rows = []
    for steps, n, d, v in sizes:
        dw_bytes = d * v * 4
        for gif, path in _ACCUMULATION_PATHS:
            for name, fn in accumulation_patterns(gif).items():
                temp, arg = accumulation_memory(fn, steps, n, d, v)
                rows.append(
                    result_row(
                        SUITE,
                        f"gradient accumulation: {name}, {path} (compiled, not run)",
                        f"T={steps} n={n} D={d} V={v}",
                        "float32",
                        temp_mib=temp / 2**20,
                        argument_mib=arg / 2**20,
                        temp_in_dw=temp / dw_bytes,
                        device=jax.devices()[0].device_kind,
                        jax=jax.__version__,
                    )
                )
    return rows


# Peak memory of the timed calls alone: the kernel's high-water mark is reset (writing 5 to
# /proc/self/clear_refs) after the inputs and the compilation, and the growth is the new peak
# (VmHWM) over the resident size then (VmRSS); None where /proc has neither (not Linux).
# ru_maxrss cannot be reset: it would hide a run whose peak stays under the compiler's.
_RSS = textwrap.dedent(
    """
    def rss_kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = rss_kib("VmRSS")
    except OSError:
        base = None
    """
)
_RSS_GROWTH = 'None if base is None else rss_kib("VmHWM") - base'

# Runs in the PyTorch interpreter (which need not have jax): forward + backward of the mean
# loss with the chunked path, on as many threads as the last argument says (0: PyTorch's
# default). Prints one JSON object.
_TORCH_SCRIPT = (
    textwrap.dedent(
        """
    import json, statistics, sys, time
    import torch
    import torch.nn.functional as F
    n, d, v, reps, warmup, threads = (int(a) for a in sys.argv[1:7])
    if threads:
        torch.set_num_threads(threads)
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
    """
    )
    + _RSS
    + textwrap.dedent(
        f"""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({{"median_s": statistics.median(times), "reps": reps,
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "rss_growth_kib": {_RSS_GROWTH}}}))
    """
    )
)

# The jsoftmax side of the alternated comparison, in a fresh process: one JSON object.
_ALTERNATE_JAX = (
    textwrap.dedent(
        """
    import json, statistics, sys, time
    import jax
    from jsoftmax.bench.linear_xent import _chunked, _inputs
    n, d, v, reps, warmup = (int(a) for a in sys.argv[1:6])
    args = jax.block_until_ready(_inputs(n, d, v))
    step = jax.jit(_chunked).lower(*args).compile()
    """
    )
    + _RSS
    + textwrap.dedent(
        f"""
    for _ in range(warmup):
        jax.block_until_ready(step(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(step(*args))
        times.append(time.perf_counter() - t0)
    print(json.dumps({{"median_s": statistics.median(times), "rss_growth_kib": {_RSS_GROWTH}}}))
    """
    )
)


def _torch_python() -> str | None:
    if importlib.util.find_spec("torch") is not None:
        return sys.executable
    cand = os.environ.get("JSOFTMAX_TORCH_PYTHON")
    return cand if cand and os.path.exists(cand) else None


def _one_process(argv: list[str], env: dict | None = None) -> dict:
    """Run a benchmark script; its last stdout line as JSON, or RuntimeError with its error."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        print(f"benchmark subprocess failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        raise RuntimeError((proc.stderr.strip().splitlines() or ["no message"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _torch_row(cfg, js: Measurement) -> dict:
    """PyTorch's chunked loss against the jsoftmax time ``js``, or a row saying why not."""
    n, d, v = cfg["n"], cfg["d"], cfg["v"]
    op = "forward+backward (x, w) mean loss"
    if reason := torch_cpu_mismatch():
        return skipped_row(SUITE, op, _shape(n, d, v), "float32", reason)
    python = _torch_python()
    if python is None:
        reason = "torch not installed (here or at $JSOFTMAX_TORCH_PYTHON)"
        return skipped_row(SUITE, op, _shape(n, d, v), "float32", reason)
    sizes = map(str, (n, d, v, cfg["reps"], cfg["warmup"], 0))
    try:
        out = _one_process([python, "-c", _TORCH_SCRIPT, *sizes])
    except RuntimeError as err:
        return skipped_row(SUITE, op, _shape(n, d, v), "float32", f"torch run failed: {err}")
    torch = Measurement("torch", out["median_s"], None, None, out["reps"])
    baseline = (
        f"torch {out['torch']} F.linear_cross_entropy chunked "
        f"({out['threads']} threads, run after jsoftmax)"
    )
    return comparison_row(SUITE, op, _shape(n, d, v), "float32", js, torch, baseline)


def alternate(quick: bool = False, rounds: int | None = None) -> list[dict]:
    """jsoftmax vs PyTorch's chunked loss in alternated fresh processes, one row per round.

    Both sides get the thread count of this machine's CPUs available to this process (XLA's
    CPU backend uses them all; PyTorch is told with ``torch.set_num_threads``). CPU only; the
    peak RSS growth is read from Linux's ``/proc`` (``None`` elsewhere).
    """
    cfg = QUICK if quick else FULL
    n, d, v = cfg["n"], cfg["d"], cfg["v"]
    op = "forward+backward (x, w) mean loss, alternated processes"
    where = (SUITE, op, _shape(n, d, v), "float32")
    if reason := torch_cpu_mismatch():
        return [skipped_row(*where, reason)]
    python = _torch_python()
    if python is None:
        return [skipped_row(*where, "torch not installed (here or at $JSOFTMAX_TORCH_PYTHON)")]
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    sizes = [str(a) for a in (n, d, v, cfg["reps"], cfg["warmup"])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    rows = []
    for k in range(rounds or (1 if quick else 2)):
        try:
            js = _one_process([sys.executable, "-c", _ALTERNATE_JAX, *sizes], env)
            pt = _one_process([python, "-c", _TORCH_SCRIPT, *sizes, str(threads)], env)
        except RuntimeError as err:
            return [*rows, skipped_row(*where, f"run failed: {err}")]
        js_mib, pt_mib = (
            None if r["rss_growth_kib"] is None else r["rss_growth_kib"] / 1024 for r in (js, pt)
        )
        label = f"torch {pt['torch']} F.linear_cross_entropy chunked ({pt['threads']} threads)"
        if js_mib is not None and pt_mib is not None:
            label += f"; peak RSS growth {js_mib:.0f} MiB vs {pt_mib:.0f} MiB"
        rows.append(
            comparison_row(
                *where,
                Measurement("jsoftmax", js["median_s"], None, None, cfg["reps"]),
                Measurement("torch", pt["median_s"], None, None, cfg["reps"]),
                label,
                round=k + 1,
                jsoftmax_rss_growth_mib=js_mib,
                torch_rss_growth_mib=pt_mib,
            )
        )
    return rows


def run(quick: bool = False) -> list[dict]:
    """Run the suite; ``quick`` uses tiny shapes (seconds) instead of the full ones."""
    cfg = QUICK if quick else FULL
    timing, js = _timing_row(cfg)
    if quick or jax.default_backend() != "cpu":
        timing += _sweep_rows(cfg, SWEEP_QUICK if quick else SWEEP_FULL)
    memory = _memory_rows(cfg["n"], cfg["d"], CURVE_QUICK if quick else CURVE_FULL)
    # the PyTorch row last: where it is skipped, the others stay in one table
    return [*timing, *memory, _torch_row(cfg, js)]


def accumulation(quick: bool = False) -> list[dict]:
    """Gradient accumulation (item 5 of the module docstring): timed rows, then memory rows.

    A suite of its own (``jsoftmax bench --suites linear_xent_accumulation``) so that it runs
    in minutes, apart from the full-size timing of :func:`run`.
    """
    timed = ACCUMULATION_TIMED_QUICK if quick else ACCUMULATION_TIMED_FULL
    sizes = ACCUMULATION_QUICK if quick else ACCUMULATION_FULL
    return [*_accumulation_timing_rows(timed), *_accumulation_rows(sizes)]


if __name__ == "__main__":
    flags = sys.argv[1:]
    suite = (
        alternate if "--alternate" in flags else accumulation if "--accumulation" in flags else run
    )
    for r in suite(quick="--quick" in sys.argv[1:]):
        print(json.dumps(r))
