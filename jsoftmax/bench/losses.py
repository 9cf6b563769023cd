"""Benchmark suite: ``jsoftmax.cross_entropy`` against optax's integer-label cross-entropy.

Times ``jit(grad(mean loss))`` (and ``jit(value_and_grad(mean loss))``) with respect to the
logits, interleaved with ``optax.softmax_cross_entropy_with_integer_labels(...).mean()`` in the
same process, and reports compiled temp memory of both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import jsoftmax
from jsoftmax.bench._timing import compare_row

SHAPES = [(4096, 1024), (256, 32768), (1024, 32000)]
QUICK_SHAPES = [(64, 128), (8, 1024)]


def _ours(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jsoftmax.cross_entropy(logits, labels)


def _optax(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


OPS = {
    "grad(mean loss)": jax.grad,
    "value_and_grad(mean loss)": jax.value_and_grad,
}


def run(quick: bool = False, dtype: str = "float32", reps: int = 30) -> list[dict]:
    """One row per (operation, shape): median ms of each side, their ratio and temp bytes."""
    rows = []
    for shape in QUICK_SHAPES if quick else SHAPES:
        k1, k2 = jax.random.split(jax.random.key(0))
        logits = jax.random.normal(k1, shape, jnp.float32).astype(dtype)
        labels = jax.random.randint(k2, shape[:-1], 0, shape[-1])
        for op, transform in OPS.items():
            where = ("cross_entropy", op, list(shape), dtype)
            ours, theirs = transform(_ours), transform(_optax)
            rows.append(compare_row(*where, ours, theirs, "optax", (logits, labels), reps=reps))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
