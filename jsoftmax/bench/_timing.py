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
    """One compiled function measured: median seconds per call, compile seconds, temp bytes."""

    name: str
    median_s: float
    compile_s: float
    temp_bytes: int
    reps: int


def compile_and_memory(fn: Callable, *args) -> tuple[Callable, float, int]:
    """AOT-compile ``jax.jit(fn)`` for ``args``; return (compiled, compile seconds, temp bytes)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    temp = int(getattr(mem, "temp_size_in_bytes", 0)) if mem is not None else 0
    return compiled, compile_s, temp


def compare(
    fns: dict[str, Callable],
    args: Sequence,
    *,
    reps: int = 30,
    warmup: int = 3,
    min_time_s: float = 0.0,
) -> dict[str, Measurement]:
    """Time several functions of the same ``args`` interleaved; medians of ``reps`` calls each.

    ``args`` are ``device_put`` once. If ``min_time_s`` is set, repetitions continue (still
    interleaved) until each function has run for at least that long in total.
    """
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
            jax.block_until_ready(c(*args))
            times[name].append(time.perf_counter() - t0)
        done = all(len(t) >= reps for t in times.values())
        if done and all(sum(t) >= min_time_s for t in times.values()):
            break
    return {
        name: Measurement(name, float(np.median(times[name])), cs, temp, len(times[name]))
        for name, (_, cs, temp) in compiled.items()
    }


def comparison_row(
    suite: str, op: str, shape, dtype: str, ours: Measurement, base: Measurement, baseline: str
) -> dict:
    """The result row every suite reports for one jsoftmax-vs-baseline comparison."""
    return {
        "suite": suite,
        "op": op,
        "shape": shape,
        "dtype": dtype,
        "jsoftmax_ms": ours.median_s * 1e3,
        "baseline": baseline,
        "baseline_ms": base.median_s * 1e3,
        "ratio": ours.median_s / base.median_s,
        "jsoftmax_temp_bytes": ours.temp_bytes,
        "baseline_temp_bytes": base.temp_bytes,
        "compile_s": {"jsoftmax": ours.compile_s, "baseline": base.compile_s},
        "reps": ours.reps,
    }
