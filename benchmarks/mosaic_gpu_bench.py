"""Fraction of copy bandwidth of the Mosaic GPU kernels against "xla", jax.nn and optax (issue 21).

Each row times one program at [rows, cols] and reports ``bytes / time`` over a copy's (``-x``,
one read and one write) in the same run: the forward moves 2 arrays (x in, y out), the
forward+backward 5 (x; y, g in, dx out), cross-entropy's value_and_grad 3 (z twice, dz). The
kernels run in strict mode (``use_implementation("mosaic_gpu", strict=True)``): a shape they
cannot serve is reported as such, never timed as XLA. ``kernels`` counts the fusions and custom
calls of the compiled program's entry computation.

Usage: python benchmarks/mosaic_gpu_bench.py OUT.json [--rows 4096] [--cols 1024,8192,...]
       [--dtypes float32,bfloat16] [--interpret] (interpret: CPU, tiny shapes, to test the script)
"""

import argparse
import json
import re
import time

import jax
import jax.numpy as jnp
import optax

import jsoftmax
from jsoftmax._dispatch import use_implementation


def _time(fn, *args, reps):
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _kernels(fn, *args):
    text = fn.lower(*args).compile().as_text()
    entry = text[text.index("ENTRY") :]
    return len(re.findall(r"= \S+ (?:fusion|custom-call)\(", entry))


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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", default="1024,8192,32768,131072")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--interpret", action="store_true")
    a = p.parse_args()
    rows_out = []
    if a.interpret:
        from jax.experimental.pallas import mosaic_gpu as plgpu

        ctx = plgpu.force_gpu_interpret_mode()
    else:
        ctx = use_implementation("xla")  # a no-op context
    with ctx, use_implementation("mosaic_gpu", strict=True):
        for dtype in a.dtypes.split(","):
            for cols in map(int, a.cols.split(",")):
                x = jax.random.normal(jax.random.key(0), (a.rows, cols), jnp.float32)
                x = x.astype(dtype)
                y = jnp.arange(a.rows) % cols
                copy = jax.jit(lambda x: -x)
                t_copy = _time(copy, x, reps=a.reps)
                for prog, (arrays, impls) in _programs(y).items():
                    row = {"program": prog, "dtype": dtype, "rows": a.rows, "cols": cols}
                    times = {}
                    for name, f in impls.items():
                        fn = jax.jit(f)
                        args = (x,) if "forward" in prog and "backward" not in prog else (x, x)
                        try:
                            times[name] = _time(fn, *args, reps=a.reps)
                            row[f"{name} kernels"] = _kernels(fn, *args)
                        except ValueError as err:  # strict mode: the kernels cannot serve it
                            row[f"{name} error"] = str(err)
                            continue
                        # bytes over time, against a copy's 2 arrays in the same run
                        row[f"{name} copy fraction"] = arrays / 2 * t_copy / times[name]
                        row[f"{name} seconds"] = times[name]
                    if "mosaic_gpu" in times:
                        for other in times.keys() - {"mosaic_gpu"}:
                            row[f"speedup over {other}"] = times[other] / times["mosaic_gpu"]
                    print(json.dumps(row), flush=True)
                    rows_out.append(row)
                    with open(a.out, "w") as f:
                        json.dump(rows_out, f, indent=1)


if __name__ == "__main__":
    main()
