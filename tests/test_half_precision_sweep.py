"""Mixed precision: every dense and sparse function's gradient in float16/bfloat16, with loss
scaling (issue 19, "make the suite find their kind").

The float16 bug of issue 19 (item 1) was a gradient rounded to half precision *before* the
cotangent scaled it: with loss scaling (``grad(65536 · loss)``) small entries became 0, and a
large sum divided afterwards overflowed. Here each function's gradient, for half-precision
inputs, under cotangents of 1, 65536 (loss scaling) and 1/N after a sum over N rows, is
compared entry by entry with the float64 gradient of the same function at the same (upcast)
inputs: within a few units of the half-precision rounding of the true entry, plus the
smallest normal number (entries below it are subnormal and keep fewer digits). A gradient
rounded before scaling fails that bound wherever an entry was flushed to 0 or to ±inf.
(The linear losses have their own sweep in tests/test_linear_xent_precision.py.)

The functions are the losses, whose result is float32, so the cotangent reaches the rule
unrounded, and logsumexp, whose gradient ``g · softmax(x)`` has no cancellation. softmax,
log_softmax, sparsemax and entmax15 return the input's half-precision dtype and save that output
for their rule (as ``jax.nn`` does): their gradient carries the output's and the cotangent's
rounding, ``u · s · (|g| + |⟨g, s⟩|)``, which cancels in ``g − ⟨g, s⟩``, so an entry-by-entry
bound does not apply to them; their half-precision paths are tested in tests/test_softmax.py and
tests/test_sparse.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsoftmax

N, C = 64, 24


def _inputs():
    kz, ky, kq = jax.random.split(jax.random.key(0), 3)
    z = jax.random.normal(kz, (N, C), jnp.float32) * 3
    z = z.at[0, :].set(z[0, :] - 12.0).at[0, 1].set(4.0)  # a row with tiny probabilities
    y = jax.random.randint(ky, (N,), 0, C)
    q = jax.nn.softmax(jax.random.normal(kq, (N, C)))
    return z, y, q


# name -> (f(z, y, q) with a scalar "mean-like" result, the same with reduction "sum")
FUNCTIONS = {
    # its result is half precision, but a cotangent of 1/N (N a power of 2) is exact in it
    "logsumexp": lambda z, y, q: jnp.mean(jsoftmax.logsumexp(z).astype(jnp.float32)),
    "cross_entropy": lambda z, y, q: jsoftmax.cross_entropy(z, y),
    "cross_entropy_options": lambda z, y, q: jsoftmax.cross_entropy(
        z, y, label_smoothing=0.1, z_loss=1e-3
    ),
    "cross_entropy_probs": lambda z, y, q: jsoftmax.cross_entropy(z, q.astype(z.dtype)),
    "softmax_cross_entropy_with_integer_labels": lambda z, y, q: jnp.mean(
        jsoftmax.softmax_cross_entropy_with_integer_labels(z, y).astype(jnp.float32)
    ),
    "sparsemax_loss": lambda z, y, q: jsoftmax.sparsemax_loss(z, y),
    "entmax_loss": lambda z, y, q: jsoftmax.entmax_loss(z, y),
}


SCALES = {"unit": 1.0, "loss_scaling": 65536.0}


def _check(got, want, dtype):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    info = jnp.finfo(dtype)
    u = float(info.eps) / 2  # unit roundoff
    tiny = float(info.smallest_normal)
    bound = 4 * u * np.abs(want) + tiny
    bad = ~(np.abs(got - want) <= bound)
    assert not bad.any(), (
        f"{bad.sum()} entries off: e.g. got {got[bad][:3]} for {want[bad][:3]} "
        f"(bound {bound[bad][:3]})"
    )


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_half_precision_gradient_with_loss_scaling_matches_float64(name, dtype, scale):
    z, y, q = _inputs()
    f, s = FUNCTIONS[name], SCALES[scale]
    zh, qh = z.astype(dtype), q.astype(dtype)  # the reference sees the same rounded inputs
    got = jax.jit(jax.grad(lambda z: s * f(z, y, qh)))(zh)
    assert got.dtype == dtype
    with jax.enable_x64(True):
        want = jax.grad(lambda z: s * f(z, y, qh.astype(jnp.float64)))(zh.astype(jnp.float64))
    _check(got, want, dtype)


SUMMED = {
    "cross_entropy": lambda z, y: jsoftmax.cross_entropy(z, y, reduction="sum"),
    "cross_entropy_weight": lambda z, y: jsoftmax.cross_entropy(
        z, y, reduction="sum", weight=jnp.linspace(0.5, 2.0, C), label_smoothing=0.1
    ),
    "sparsemax_loss": lambda z, y: jsoftmax.sparsemax_loss(z, y, reduction="sum"),
}


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(SUMMED))
def test_half_precision_large_sum_then_divided(name, dtype):
    # "sum" over many rows, then / N: the gradient is (p − t) / N; rounding it before the 1/N
    # (or forming N · something in half precision) would overflow or lose it
    n = 4096
    z = jax.random.normal(jax.random.key(1), (n, C)) * 3
    y = jax.random.randint(jax.random.key(2), (n,), 0, C)
    f = SUMMED[name]
    zh = z.astype(dtype)
    got = jax.jit(jax.grad(lambda z: f(z, y) / n))(zh)
    with jax.enable_x64(True):
        want = jax.grad(lambda z: f(z, y) / n)(zh.astype(jnp.float64))
    _check(got, want, dtype)
