"""linear_cross_entropy on GPU (issue 22): the block kernel against XLA's blocks and the naive loss.

``value_and_grad`` of the mean loss with respect to ``x`` and ``w`` at ``N`` tokens, ``D``
features and each ``V``, per dtype, four programs timed in the same run (medians after a
warm-up, timed interleaved by ``jsoftmax.bench._timing.compare``; compiled temp memory from
``memory_analysis()``):

* ``naive``: ``x @ w`` materialised, then optax's cross-entropy;
* ``xla``: ``jsoftmax.linear_cross_entropy`` on its default path (XLA forms each block);
* ``mosaic_gpu``: the same with ``implementation="mosaic_gpu"`` under strict mode, so a shape
  the kernel cannot serve (classes not a multiple of 128) is reported with the reason, never
  timed as XLA; rows of logits beyond its shared-memory budget run split in pieces (the row's
  ``mosaic_gpu pieces``);
* ``matmuls``: the three plain full-size matmuls (``x @ w``, ``dz @ wᵀ``, ``xᵀ @ dz``), the
  floor any of them can reach.

Usage: python benchmarks/linear_xent_gpu_bench.py OUT.json [--n 8192] [--d 1024]
       [--vocab 32768,65536] [--dtypes float32,bfloat16] [--reps 10] [--interpret]
       (interpret: CPU, tiny shapes, to test the script)
"""

import argparse
import json

import jax
import jax.numpy as jnp
import optax

import jsoftmax
from jsoftmax._dispatch import use_implementation
from jsoftmax._impl import mosaic_gpu
from jsoftmax.bench._timing import compare


def _programs(y):
    def loss(impl):
        return lambda x, w: jsoftmax.linear_cross_entropy(x, w, y, implementation=impl)

    def naive(x, w):
        z = jnp.dot(x, w, preferred_element_type=jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

    def matmuls(x, w):
        z = jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)
        return z @ w.T, x.T @ z

    grad = lambda f: jax.value_and_grad(f, argnums=(0, 1))  # noqa: E731
    return {
        "naive": grad(naive),
        "xla": grad(loss("xla")),
        "mosaic_gpu": grad(loss("mosaic_gpu")),
        "matmuls": matmuls,
    }


def run(n, d, vocab, dtypes, reps):
    """One row per ``(dtype, V)``, yielded as soon as it is measured."""
    for dtype in dtypes:
        for v in vocab:
            kx, kw, ky = jax.random.split(jax.random.key(0), 3)
            x = jax.random.normal(kx, (n, d), jnp.float32).astype(dtype)
            w = (jax.random.normal(kw, (d, v), jnp.float32) / d**0.5).astype(dtype)
            y = jax.random.randint(ky, (n,), 0, v)
            row = {"program": "value_and_grad(x, w) mean", "dtype": dtype, "N": n, "D": d, "V": v}
            if v % mosaic_gpu.LANES == 0:  # the float32 logits rows of a block, in pieces
                row["mosaic_gpu pieces"] = mosaic_gpu.pieces(v, 4, 1)
            served = {}
            for name, f in _programs(y).items():
                try:
                    jax.eval_shape(f, x, w)  # the implementation is chosen when traced
                except ValueError as err:  # strict mode: the kernel cannot serve this shape
                    row[f"{name} error"] = str(err)
                    continue
                served[name] = f
            # the project's timing: compiled once, interleaved medians, temp memory
            for name, m in compare(served, (x, w), reps=reps, warmup=1).items():
                row[f"{name} seconds"] = m.median_s
                row[f"{name} temp MiB"] = m.temp_bytes / 2**20
            naive = row.get("naive seconds")
            for name in ("xla", "mosaic_gpu", "matmuls"):
                if naive and f"{name} seconds" in row:
                    row[f"{name} / naive"] = row[f"{name} seconds"] / naive
            if "xla seconds" in row and "mosaic_gpu seconds" in row:
                row["mosaic_gpu / xla"] = row["mosaic_gpu seconds"] / row["xla seconds"]
            print(json.dumps(row), flush=True)
            yield row


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--vocab", default="32768,65536")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--interpret", action="store_true")
    a = p.parse_args(argv)
    rows = []
    with mosaic_gpu.interpret(a.interpret), use_implementation("mosaic_gpu", strict=True):
        vocab = [int(v) for v in a.vocab.split(",")]
        for row in run(a.n, a.d, vocab, a.dtypes.split(","), a.reps):
            rows.append(row)
            with open(a.out, "w") as f:  # after every row: a run cut short keeps its rows
                json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
