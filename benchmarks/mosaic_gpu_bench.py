"""Fraction of copy bandwidth of the Mosaic GPU kernels against "xla", jax.nn and optax (issue 21).

Each row times one program at [rows, cols] and reports ``bytes / time`` over a copy's (``-x``,
one read and one write) in the same run: the forward moves 2 arrays (x in, y out), the
forward+backward 5 (x; y, g in, dx out), cross-entropy's value_and_grad 3 (z twice, dz). All of
a row's programs (and, in the first row of a shape, the copy) are timed interleaved by
``jsoftmax.bench._timing.compare`` (compiled once, medians, several calls per sample on an
accelerator). The kernels run in strict
mode (``use_implementation("mosaic_gpu", strict=True)``): a shape they cannot serve is
reported as such, never timed as XLA. ``mosaic_gpu split`` is the same kernels with a staging
budget of half a row (``staging_budget``: 2 pieces a row in the forward passes, 4 in the
backward ones, which stage two arrays), at widths whose rows fit shared memory whole in the
forward pass: it measures what the split layout of long rows costs against whole rows.
``kernels`` counts the fusions and custom calls of the compiled program's entry computation.

Usage: python benchmarks/mosaic_gpu_bench.py OUT.json [--rows 4096] [--cols 1024,8192,...]
       [--dtypes float32,bfloat16] [--reps 20] [--interpret] (interpret: CPU, tiny shapes, to
       test the script; tests/test_mosaic_gpu.py runs it)
"""

import argparse
import json
import re

import jax
import jax.numpy as jnp
import optax

import jsoftmax
from jsoftmax._dispatch import use_implementation
from jsoftmax._impl import mosaic_gpu
from jsoftmax.bench._timing import compare


def _kernels(fn, *args):
    text = jax.jit(fn).lower(*args).compile().as_text()
    entry = text[text.index("ENTRY") :]
    return len(re.findall(r"= \S+ (?:fusion|custom-call)\(", entry))


def _split(f, budget):
    """``f`` traced with at most ``budget`` bytes of staged rows (the split layout)."""

    def traced_split(*args):
        with mosaic_gpu.staging_budget(budget):
            return f(*args)

    return traced_split


def _programs(y):
    def fb(f):
        return jax.grad(lambda x, g: jnp.sum(f(x) * g))

    return {
        "softmax forward": (
            2,
            {
                "mosaic_gpu": lambda x: jsoftmax.softmax(x, implementation="mosaic_gpu"),
                "xla": lambda x: jsoftmax.softmax(x, implementation="xla"),
                "jax.nn": jax.nn.softmax,
            },
        ),
        "log_softmax forward": (
            2,
            {
                "mosaic_gpu": lambda x: jsoftmax.log_softmax(x, implementation="mosaic_gpu"),
                "xla": lambda x: jsoftmax.log_softmax(x, implementation="xla"),
                "jax.nn": jax.nn.log_softmax,
            },
        ),
        "softmax forward+backward": (
            5,
            {
                "mosaic_gpu": fb(lambda x: jsoftmax.softmax(x, implementation="mosaic_gpu")),
                "xla": fb(lambda x: jsoftmax.softmax(x, implementation="xla")),
                "jax.nn": fb(jax.nn.softmax),
            },
        ),
        "log_softmax forward+backward": (
            5,
            {
                "mosaic_gpu": fb(lambda x: jsoftmax.log_softmax(x, implementation="mosaic_gpu")),
                "xla": fb(lambda x: jsoftmax.log_softmax(x, implementation="xla")),
                "jax.nn": fb(jax.nn.log_softmax),
            },
        ),
        "cross_entropy value_and_grad": (
            3,
            {
                "mosaic_gpu": jax.value_and_grad(
                    lambda z, g: jsoftmax.cross_entropy(z, y, implementation="mosaic_gpu")
                ),
                "xla": jax.value_and_grad(
                    lambda z, g: jsoftmax.cross_entropy(z, y, implementation="xla")
                ),
                "optax": jax.value_and_grad(
                    lambda z, g: optax.softmax_cross_entropy_with_integer_labels(z, y).mean()
                ),
            },
        ),
    }


def run(rows, cols_list, dtypes, reps):
    """One row per ``(dtype, cols, program)``, yielded as soon as it is measured."""
    for dtype in dtypes:
        for cols in cols_list:
            x = jax.random.normal(jax.random.key(0), (rows, cols), jnp.float32).astype(dtype)
            y = jnp.arange(rows) % cols
            row_bytes = cols * jnp.dtype(dtype).itemsize
            t_copy = None  # timed with the first program of this shape, in the same run
            for prog, (arrays, impls) in _programs(y).items():
                row = {"program": prog, "dtype": dtype, "rows": rows, "cols": cols}
                if row_bytes <= mosaic_gpu.SMEM_BUDGET:  # forward rows whole: time split too
                    half = max(row_bytes // 2, 2 * mosaic_gpu.LANES * 4)
                    impls = {**impls, "mosaic_gpu split": _split(impls["mosaic_gpu"], half)}
                args = (x,) if "forward" in prog and "backward" not in prog else (x, x)
                served = {"copy": lambda x, *_: -x} if t_copy is None else {}
                for name, f in impls.items():
                    try:
                        jax.eval_shape(f, *args)  # the implementation is chosen when traced
                    except ValueError as err:  # strict mode: the kernels cannot serve it
                        row[f"{name} error"] = str(err)
                        continue
                    served[name] = f
                    row[f"{name} kernels"] = _kernels(f, *args)
                times = {k: m.median_s for k, m in compare(served, args, reps=reps).items()}
                t_copy = times.pop("copy", t_copy)
                row["copy seconds"] = t_copy
                for name, t in times.items():
                    # bytes over time, against a copy's 2 arrays in the same run
                    row[f"{name} copy fraction"] = arrays / 2 * t_copy / t
                    row[f"{name} seconds"] = t
                if "mosaic_gpu" in times:
                    for other in times.keys() - {"mosaic_gpu"}:
                        row[f"speedup over {other}"] = times[other] / times["mosaic_gpu"]
                print(json.dumps(row), flush=True)
                yield row


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", default="1024,8192,32768,131072")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--interpret", action="store_true")
    a = p.parse_args(argv)
    rows_out = []
    with mosaic_gpu.interpret(a.interpret), use_implementation("mosaic_gpu", strict=True):
        cols = [int(c) for c in a.cols.split(",")]
        for row in run(a.rows, cols, a.dtypes.split(","), a.reps):
            rows_out.append(row)
            with open(a.out, "w") as f:  # after every row: a run cut short keeps its rows
                json.dump(rows_out, f, indent=1)
    return rows_out


if __name__ == "__main__":
    main()
