"""Timing and memory primitives shared by every benchmark suite.

Rules followed everywhere: inputs are placed on the device first, each function is compiled
once (compile time reported separately), every call is synchronised with
``block_until_ready()``, and the functions being compared are timed *interleaved* in one
process (A, B, A, B, ...) so that drift on a shared machine hits both sides alike. Reported
figures are medians.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import numpy as np


@dataclass(frozen=True)
class Measurement:
    """One function measured: median seconds per call, compile seconds, temp bytes, calls.

    A figure that was not measured is ``None``: the time of a function only compiled (see
    :func:`memory_only`), the compile time and temp memory of one run outside XLA (PyTorch).
    """

    name: str
    median_s: float | None
    compile_s: float | None
    temp_bytes: int | None
    reps: int
    calls_per_sample: int = 1


#: Back-to-back calls in one timed sample on an accelerator (see :func:`calls_per_sample`).
ACCELERATOR_CALLS = 10


def calls_per_sample() -> int:
    """Back-to-back calls in one timed sample: 1 on the CPU, ``ACCELERATOR_CALLS`` elsewhere.

    On the CPU a call runs to completion before it returns, so one call is one sample. On a GPU
    or TPU a call only enqueues work: a kernel of microseconds would be timed as Python's
    dispatch and one synchronisation. There each sample enqueues ``ACCELERATOR_CALLS`` calls,
    synchronises once on the last, and is divided by the count.
    """
    return 1 if jax.default_backend() == "cpu" else ACCELERATOR_CALLS


def compile_and_memory(fn: Callable, *args) -> tuple[Callable, float, int]:
    """AOT-compile ``jax.jit(fn)`` for ``args``; return (compiled, compile seconds, temp bytes)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    temp = int(getattr(mem, "temp_size_in_bytes", 0)) if mem is not None else 0
    return compiled, compile_s, temp


def memory_only(name: str, fn: Callable, *args) -> Measurement:
    """Compile ``fn`` for ``args`` (arrays or ``jax.ShapeDtypeStruct``), never run it."""
    _, compile_s, temp = compile_and_memory(fn, *args)
    return Measurement(name, None, compile_s, temp, 0)


def compare(
    fns: dict[str, Callable],
    args: Sequence,
    *,
    reps: int = 30,
    warmup: int = 3,
    min_time_s: float = 0.0,
    calls: int | None = None,
) -> dict[str, Measurement]:
    """Time several functions of the same ``args`` interleaved; medians of ``reps`` samples each.

    ``args`` are ``device_put`` once. If ``min_time_s`` is set, repetitions continue (still
    interleaved) until each function has run for at least that long in total. A sample is the
    mean time of ``calls`` back-to-back calls synchronised once (default
    :func:`calls_per_sample`: 1 on the CPU).
    """
    calls = calls or calls_per_sample()
    args = jax.device_put(tuple(args))
    compiled = {}
    for name, fn in fns.items():
        compiled[name] = compile_and_memory(fn, *args)
    for c, _, _ in compiled.values():
        for _ in range(warmup):
            jax.block_until_ready(c(*args))
    times: dict[str, list[float]] = {name: [] for name in fns}
    while True:
        for name, (c, _, _) in compiled.items():
            t0 = time.perf_counter()
            for _ in range(calls - 1):
                c(*args)  # enqueued; the stream runs them in order before the last one
            jax.block_until_ready(c(*args))
            times[name].append((time.perf_counter() - t0) / calls)
        done = all(len(t) >= reps for t in times.values())
        if done and all(sum(t) * calls >= min_time_s for t in times.values()):
            break
    return {
        name: Measurement(name, float(np.median(times[name])), cs, temp, len(times[name]), calls)
        for name, (_, cs, temp) in compiled.items()
    }


def result_row(suite: str, op: str, shape, dtype: str, **figures) -> dict:
    """A benchmark result row; every suite builds all of its rows with this function.

    ``suite``, ``op`` (what was measured), ``shape`` and ``dtype`` say where the figures were
    taken; ``figures`` are the measured values and their labels.
    """
    return {"suite": suite, "op": op, "shape": shape, "dtype": dtype, **figures}


def comparison_row(
    suite: str,
    op: str,
    shape,
    dtype: str,
    ours: Measurement,
    base: Measurement,
    baseline: str,
    **extra,
) -> dict:
    """The row of one jsoftmax-vs-baseline comparison: times, their ratio and temp memory.

    ``ratio`` is jsoftmax time / baseline time (``None`` where either was only compiled).
    """

    def ms(m: Measurement) -> float | None:
        return None if m.median_s is None else m.median_s * 1e3

    timed = ours.median_s is not None and base.median_s is not None
    return result_row(
        suite,
        op,
        shape,
        dtype,
        jsoftmax_ms=ms(ours),
        baseline=baseline,
        baseline_ms=ms(base),
        ratio=ours.median_s / base.median_s if timed else None,
        jsoftmax_temp_bytes=ours.temp_bytes,
        baseline_temp_bytes=base.temp_bytes,
        compile_s={"jsoftmax": ours.compile_s, "baseline": base.compile_s},
        reps=ours.reps,
        calls_per_sample=ours.calls_per_sample,
        **extra,
    )


def compare_row(
    suite: str,
    op: str,
    shape,
    dtype: str,
    ours: Callable,
    base: Callable,
    baseline: str,
    args: Sequence,
    *,
    reps: int = 30,
) -> dict:
    """Time ``ours`` and ``base`` of ``args`` interleaved (:func:`compare`); their comparison."""
    res = compare({"jsoftmax": ours, "baseline": base}, args, reps=reps)
    return comparison_row(suite, op, shape, dtype, res["jsoftmax"], res["baseline"], baseline)


def torch_cpu_mismatch() -> str | None:
    """Why the PyTorch rows (which run on the CPU) are skipped, or ``None`` when JAX is on it too.

    A PyTorch CPU time beside a JAX GPU time compares two machines, not two implementations.
    """
    backend = jax.default_backend()
    return None if backend == "cpu" else f"PyTorch rows run on the CPU; JAX ran on {backend}"


def skipped_row(suite: str, op: str, shape, dtype: str, reason: str) -> dict:
    """The row of a measurement that was not taken, saying why (``"torch not installed"``)."""
    return result_row(suite, op, shape, dtype, skipped=reason)
