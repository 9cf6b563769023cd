"""Benchmark suite: softmax and log_softmax against ``jax.nn`` (and PyTorch where installed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jsoftmax
from jsoftmax.bench._timing import (
    compare,
    compare_row,
    result_row,
    skipped_row,
    torch_cpu_mismatch,
)

SHAPES = [(4096, 1024), (256, 32768), (32, 262144)]
QUICK_SHAPES = [(64, 128), (8, 1024)]
OPS = {
    "softmax": (jsoftmax.softmax, jax.nn.softmax),
    "log_softmax": (jsoftmax.log_softmax, jax.nn.log_softmax),
}


def _weighted_sum_grad(fn):
    """``value_and_grad(lambda x: sum(f(x) * w))``: a loss that exercises forward and backward."""
    return jax.value_and_grad(lambda x, w: jnp.sum(fn(x) * w))


def _vjp(fn):
    """Forward then backward with a given cotangent: reads x, writes y; reads y, g, writes dx."""

    def f(x, g):
        _, pullback = jax.vjp(fn, x)
        return pullback(g)[0]

    return f


def _normals(shape, dtype: str, n: int = 2) -> list[jax.Array]:
    """``n`` standard-normal arrays of ``shape`` (drawn in float32, then cast to ``dtype``)."""
    keys = jax.random.split(jax.random.key(0), n)
    return [jax.random.normal(k, shape, jnp.float32).astype(dtype) for k in keys]


def run(quick: bool = False, dtype: str = "float32", reps: int = 30) -> list[dict]:
    """Time forward and forward+backward of softmax/log_softmax against ``jax.nn``."""
    rows = []
    shapes = QUICK_SHAPES if quick else SHAPES
    for shape in shapes:
        x, w = _normals(shape, dtype)
        for op, (ours, base) in OPS.items():
            for what, f, g, args in [
                ("forward", ours, base, (x,)),
                ("value_and_grad", _weighted_sum_grad(ours), _weighted_sum_grad(base), (x, w)),
            ]:
                where = ("core", f"{op} {what}", list(shape), dtype)
                rows.append(compare_row(*where, f, g, "jax.nn", args, reps=reps))
    return rows


def bandwidth(quick: bool = False, dtype: str = "float32", reps: int = 30) -> list[dict]:
    """Achieved bandwidth of softmax forward and forward+backward vs the measured copy rate.

    Bytes moved: forward reads x and writes y (2 arrays); forward+backward additionally reads y
    and g and writes dx (5 arrays in all). The copy rate is ``2 · size`` bytes over the median
    time of ``x + 1`` (one read, one write), measured in the same run. It depends on the array
    size (a small array stays in cache), so every row says the size and whether the run was
    ``quick`` in ``copy_measured_on``: compare copy rates only between rows that agree on it.
    """
    shape = (256, 4096) if quick else (4096, 32768)
    x, g = _normals(shape, dtype)
    nbytes = x.size * x.dtype.itemsize
    copy = compare({"copy": lambda x: x + jnp.ones((), x.dtype)}, (x,), reps=reps)["copy"]
    copy_bw = 2 * nbytes / copy.median_s
    run_kind = "quick run" if quick else "full run"
    size = f"{'×'.join(map(str, shape))} {dtype} ({nbytes / 2**20:g} MiB)"
    rows = []
    for name, fn, arrays, args in [
        ("softmax forward", jsoftmax.softmax, 2, (x,)),
        ("softmax forward+backward", _vjp(jsoftmax.softmax), 5, (x, g)),
        ("jax.nn.softmax forward", jax.nn.softmax, 2, (x,)),
        ("jax.nn.softmax forward+backward", _vjp(jax.nn.softmax), 5, (x, g)),
    ]:
        m = compare({name: fn}, args, reps=reps)[name]
        bw = arrays * nbytes / m.median_s
        rows.append(
            result_row(
                "bandwidth",
                name,
                list(shape),
                dtype,
                ms=m.median_s * 1e3,
                bytes=arrays * nbytes,
                gb_per_s=bw / 1e9,
                copy_gb_per_s=copy_bw / 1e9,
                fraction_of_copy=bw / copy_bw,
                copy_measured_on=f"x + 1 on {size}, {run_kind}",
            )
        )
    return rows


def _torch_row(op: str, shape, step, reps: int) -> dict:
    """Median milliseconds of ``step()`` (eager PyTorch, synchronous on the CPU) after warm-up."""
    import time

    import numpy as np
    import torch

    for _ in range(3):
        step()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return result_row(
        "torch",
        op,
        list(shape),
        "float32",
        torch_ms=float(np.median(ts)) * 1e3,
        torch_version=torch.__version__,
    )


def run_torch(quick: bool = False, reps: int = 30) -> list[dict]:
    """The same operations in PyTorch on the CPU, if it is installed (an optional column).

    Without PyTorch the suite returns one row saying so (``skipped: "torch not installed"``),
    and likewise when JAX runs on an accelerator (``_timing.torch_cpu_mismatch``).
    """
    if reason := torch_cpu_mismatch():
        return [skipped_row("torch", "every PyTorch row", "", "float32", reason)]
    try:
        import torch
    except ImportError:
        return [skipped_row("torch", "every PyTorch row", "", "float32", "torch not installed")]
    from jsoftmax.bench.losses import QUICK_SHAPES as CE_QUICK
    from jsoftmax.bench.losses import SHAPES as CE_SHAPES

    torch.manual_seed(0)
    rows = []
    for shape in QUICK_SHAPES if quick else SHAPES:
        x = torch.randn(shape)
        w = torch.randn(shape)
        for op, fn in [("softmax", torch.softmax), ("log_softmax", torch.log_softmax)]:
            for what in ("forward", "value_and_grad"):

                def step(fn=fn, what=what, x=x, w=w):
                    if what == "forward":
                        with torch.no_grad():
                            return fn(x, -1)
                    xr = x.detach().requires_grad_(True)
                    (fn(xr, -1) * w).sum().backward()
                    return xr.grad

                rows.append(_torch_row(f"{op} {what}", shape, step, reps))
    for shape in CE_QUICK if quick else CE_SHAPES:
        logits = torch.randn(shape)
        labels = torch.randint(0, shape[-1], shape[:-1])

        def ce_step(logits=logits, labels=labels):
            z = logits.detach().requires_grad_(True)
            torch.nn.functional.cross_entropy(z, labels).backward()
            return z.grad

        rows.append(_torch_row("cross_entropy grad(mean loss)", shape, ce_step, reps))
    return rows
