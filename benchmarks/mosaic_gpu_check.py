"""The Mosaic GPU kernels' numbers on the device itself, against ``implementation="xla"``.

Interpret mode (the CI's 3.13 leg) simulates the kernels on CPU; this checks what the GPU
compiles and runs, before any benchmark spends device time on them. Each case runs one
program on both implementations in strict mode (a kernel that cannot serve it raises, never
falls back) and compares outputs and gradients: float32 within ``RTOL``/``ATOL`` of XLA's,
half precision within its rounding, NaN and infinities where XLA has them. The cases cover
whole rows (several per block, one per block), split rows (pieces of a row in two kernels),
ragged row counts, edge rows (offsets of 1e4 and 3e7, ``-inf`` entries, a row with no finite
entry), every cross-entropy option the kernels take, out-of-range labels (NaN), and
``linear_cross_entropy``'s block kernel at whole and split widths.

Prints one JSON line per case and exits 1 if any case disagrees or fails to run.

Usage: python benchmarks/mosaic_gpu_check.py OUT.json [--scale 1.0] [--dtypes float32,bfloat16]
       [--interpret]
       (--scale shrinks the shapes; --interpret with a small scale tests the script on CPU)
"""

import argparse
import json
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import jsoftmax
from jsoftmax._dispatch import use_implementation
from jsoftmax._impl import mosaic_gpu

RTOL, ATOL = 2e-5, 2e-6  # float32: round-off of sums taken in another order
HALF = {"rtol": 2e-2, "atol": 2e-2}  # bfloat16/float16: within their rounding


def _normal(shape, dtype, seed=0, scale=3.0):
    return (scale * jax.random.normal(jax.random.key(seed), shape, jnp.float32)).astype(dtype)


def _edges(x):
    """Edge rows in the first five rows of ``x`` (float32 or wider before the cast)."""
    x = np.array(x, np.float32)
    x[0] += 1e4
    x[1] += 3e7
    x[2, ::3] = -np.inf
    x[3, : x.shape[1] // 2] = -np.inf  # the first half (a whole piece when split) -inf
    x[4] = -np.inf
    return x


def _softmax_cases(scale, dtypes):
    cols = [int(c * scale) // 128 * 128 or 128 for c in (1024, 32768, 131072)]
    for name in ("softmax", "log_softmax", "logsumexp"):
        f = getattr(jsoftmax, name)
        for dtype in dtypes:
            for c in cols:
                rows = 37 if c <= 1024 else 6  # 37: the last block overlaps the one before

                def program(impl, f=f):
                    def vjp(x, ct):
                        out, pull = jax.vjp(lambda z: f(z, implementation=impl), x)
                        return out, pull(ct)[0]

                    return vjp

                def args(dtype=dtype, c=c, rows=rows, name=name):
                    x = jnp.asarray(_edges(_normal((rows, c), jnp.float32)), dtype)
                    out_shape = (rows,) if name == "logsumexp" else (rows, c)
                    return x, _normal(out_shape, dtype, seed=1)

                yield f"{name} vjp {dtype} [{rows}, {c}]", program, args, dtype


XENT_OPTIONS = [
    {},
    {"label_smoothing": 0.1, "z_loss": 1e-3},
    {"ignore_index": 3, "reduction": "sum"},
    {"reduction": "none"},
]


def _xent_cases(scale, dtypes):
    for c in [int(c * scale) // 128 * 128 or 128 for c in (1024, 131072)]:
        for options in XENT_OPTIONS:
            # half precision with the default options only: the options' arithmetic is float32
            for dtype in dtypes if not options else dtypes[:1]:
                rows = 37 if c <= 1024 else 6

                def program(impl, options=options):
                    def vg(z, y):
                        def loss(z):
                            out = jsoftmax.cross_entropy(z, y, implementation=impl, **options)
                            return jnp.sum(out), out

                        return jax.value_and_grad(loss, has_aux=True)(z)

                    return vg

                def args(dtype=dtype, c=c, rows=rows):
                    z = jnp.asarray(_edges(_normal((rows, c), jnp.float32)), dtype)
                    # labels in the first and last classes and the middle; 2 * c is out of range
                    y = (jnp.arange(rows) * 7919) % c
                    y = y.at[0].set(0).at[1].set(c - 1).at[5].set(c // 2).at[rows - 1].set(2 * c)
                    return z, y

                yield f"cross_entropy {options} {dtype} [{rows}, {c}]", program, args, dtype


def _linear_cases(scale, dtypes):
    n, d = max(int(4096 * scale), 40), max(int(256 * scale) // 16 * 16, 16)
    for v in [int(v * scale) // 128 * 128 or 128 for v in (8192, 65536)]:
        for options in ({}, {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 30.0}):
            for dtype in dtypes if not options else dtypes[:1]:

                def program(impl, options=options):
                    def vg(x, w, y):
                        def loss(x, w):
                            return jsoftmax.linear_cross_entropy(
                                x, w, y, implementation=impl, **options
                            )

                        return jax.value_and_grad(loss, (0, 1))(x, w)

                    return vg

                def args(dtype=dtype, v=v):
                    kx, kw, ky = jax.random.split(jax.random.key(2), 3)
                    x = jax.random.normal(kx, (n, d), jnp.float32).astype(dtype)
                    w = (2 * jax.random.normal(kw, (d, v), jnp.float32) / d**0.5).astype(dtype)
                    return x, w, jax.random.randint(ky, (n,), 0, v)

                yield (
                    f"linear_cross_entropy {options} {dtype} N={n} D={d} V={v}",
                    program,
                    args,
                    dtype,
                )


def _compare(got, want, dtype):
    """The largest disagreement in units of the tolerance, or a message where NaN/inf
    placement differs or XLA's result has no finite entry to compare (a vacuous case)."""
    worst, finite = 0.0, 0
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g.dtype != w.dtype or g.shape != w.shape:
            return f"shape/dtype {g.shape} vs {w.shape}"
        if not np.array_equal(np.isnan(g), np.isnan(w)):
            return f"NaN at {int((np.isnan(g) != np.isnan(w)).sum())} entries where XLA differs"
        fin = np.isfinite(w)
        if not np.array_equal(g[~fin & ~np.isnan(w)], w[~fin & ~np.isnan(w)]):
            return "infinities differ from XLA's"
        tol = {"rtol": RTOL, "atol": ATOL} if dtype == "float32" else HALF
        bound = tol["atol"] + tol["rtol"] * np.abs(w[fin])
        excess = np.abs(g[fin] - w[fin]) / bound
        worst = max(worst, float(excess.max(initial=0.0)))
        finite += int(fin.sum())
    return worst if finite else "no finite entry in XLA's result: nothing compared"


def run(scale, dtypes):
    rows, failed = [], 0
    for case, program, args, dtype in (
        *_softmax_cases(scale, dtypes),
        *_xent_cases(scale, dtypes),
        *_linear_cases(scale, dtypes),
    ):
        row = {"case": case}
        try:
            a = args()
            with use_implementation("mosaic_gpu", strict=True):
                got = jax.jit(program("mosaic_gpu"))(*a)
            want = jax.jit(program("xla"))(*a)
            result = _compare(got, want, dtype)
        except Exception as err:  # a kernel that does not compile or run on this device
            result = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            row["traceback"] = traceback.format_exc()[-2000:]
        if isinstance(result, float):
            row["worst error / tolerance"] = result
            row["ok"] = result <= 1.0
        else:
            row["error"], row["ok"] = result, False
        failed += not row["ok"]
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
        rows.append(row)
    return rows, failed


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--interpret", action="store_true")
    a = p.parse_args(argv)
    print(jax.devices(), flush=True)
    with mosaic_gpu.interpret(a.interpret):
        rows, failed = run(a.scale, a.dtypes.split(","))
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"{len(rows) - failed} of {len(rows)} cases agree with XLA", flush=True)
    return rows, failed


if __name__ == "__main__":
    sys.exit(1 if main()[1] else 0)
