"""Gradient accuracy at large magnitude, in ulps against a float64 reference.

For every function with a custom derivative rule (the ``custom_vjp`` ones and the ``fwd.*``
``custom_jvp`` twins, and the fused losses), rows of scores are drawn close together around a
large base (up to 3e7 in float32 and 1e16 in float64), where any rule that forms
``exp(x − lse)`` from a rounded ``lse`` loses ``|x|·eps`` of relative accuracy: 0.49989 instead
of 0.5 at 1e4, 1.0 at 3e7. The bound allows only what every algorithm pays: a few ulps, plus
the rounding of ``x − max`` (``|x − max|·eps`` inside ``exp``), as in
tests/test_softmax_properties.py for the values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

import jsoftmax

N, C = 3, 5
BASES = {np.float32: [0.0, 1e4, -1e4, 1e7, 3e7, -3e7, 1e30], np.float64: [1e4, 1e16, -1e16]}


def _rows(rng: np.random.Generator, base: float, dtype) -> np.ndarray:
    """Scores within a few units of ``base`` (then rounded to ``dtype``), ties included."""
    off = rng.integers(-6, 7, (N, C)).astype(np.float64) * rng.choice([0.25, 1.0, 3.0])
    off[0, 1] = off[0, 0]  # a tie with the row maximum's neighbour
    return (base + off).astype(dtype)


def _reference(x: np.ndarray):
    """float64 softmax, |x − max| and the softmax-weighted mean of it, per row."""
    x = x.astype(np.float64)
    m = np.max(x, -1, keepdims=True)
    z = x - m  # exact in float64 for float32 inputs; a few ulps of |x| for float64 ones
    e = np.exp(z)
    p = e / np.sum(e, -1, keepdims=True)
    zabs = np.abs(z)
    return p, zabs, np.sum(p * zabs, -1, keepdims=True)


def _ulps(got, want, p, zabs, mean_z, dtype) -> float:
    """``max |got − want|`` in units of the unavoidable rounding error (≤ 1 passes)."""
    eps = float(np.finfo(dtype).eps)
    scale = np.maximum(np.abs(want), p)
    bound = scale * (8 + zabs + mean_z) * eps + float(np.finfo(dtype).tiny)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want) / bound))


# One-hot cotangents and labels: each gradient below then has a closed float64 form.
Y = np.array([0, 2, 4])
ONEHOT = np.eye(C)[Y]


def _sum_of(fn):
    return lambda x: jnp.sum(fn(x))


def _picked(fn):
    """``Σ_n fn(x)_{n y_n}``: a one-hot cotangent."""
    return lambda x: jnp.vdot(fn(x), jnp.asarray(ONEHOT, x.dtype))


def _linear_xent_dw(x):
    # x_tok = 1 and w = a row of scores, so the logits are the scores exactly and dw is their
    # gradient; one token per call keeps one row per call, with blocks of 2 classes
    ones = jnp.ones((1, 1), x.dtype)
    rows = [
        jax.grad(
            lambda w, n=n: jsoftmax.linear_cross_entropy(
                ones, w, jnp.asarray(Y[n : n + 1]), chunk_size=(1, 2), reduction="sum"
            )
        )(x[n : n + 1])
        for n in range(N)
    ]
    return jnp.concatenate(rows)


# name → (gradient function, the closed form it must equal); each compiled once per dtype
GRADIENTS = {
    "logsumexp": (jax.grad(_sum_of(jsoftmax.logsumexp)), "p"),
    "fwd.logsumexp": (jax.grad(_sum_of(jsoftmax.fwd.logsumexp)), "p"),
    # d/dx Σ_n s_{n y_n} = p_y (onehot − p)
    "softmax": (jax.grad(_picked(jsoftmax.softmax)), "softmax"),
    "fwd.softmax": (jax.grad(_picked(jsoftmax.fwd.softmax)), "softmax"),
    # d/dx Σ_n log s_{n y_n} = onehot − p
    "log_softmax": (jax.grad(_picked(jsoftmax.log_softmax)), "onehot-p"),
    "fwd.log_softmax": (jax.grad(_picked(jsoftmax.fwd.log_softmax)), "onehot-p"),
    "cross_entropy": (
        jax.grad(lambda x: jsoftmax.cross_entropy(x, jnp.asarray(Y), reduction="sum")),
        "p-onehot",
    ),
    "cross_entropy(probs)": (
        jax.grad(
            lambda x: jsoftmax.cross_entropy(x, jnp.asarray(ONEHOT, x.dtype), reduction="sum")
        ),
        "p-onehot",
    ),
    "softmax_cross_entropy_with_integer_labels": (
        jax.grad(
            _sum_of(lambda x: jsoftmax.softmax_cross_entropy_with_integer_labels(x, jnp.asarray(Y)))
        ),
        "p-onehot",
    ),
    "linear_cross_entropy": (_linear_xent_dw, "p-onehot"),
}
GRADIENTS = {name: (jax.jit(fn), kind) for name, (fn, kind) in GRADIENTS.items()}


def _closed_form(kind: str, p: np.ndarray) -> np.ndarray:
    return {
        "p": p,
        "softmax": np.sum(p * ONEHOT, -1, keepdims=True) * (ONEHOT - p),
        "onehot-p": ONEHOT - p,
        "p-onehot": p - ONEHOT,
    }[kind]


def _check(x: np.ndarray, dtype) -> dict[str, float]:
    p, zabs, mean_z = _reference(x)
    worst = {}
    for name, (grad, kind) in GRADIENTS.items():
        got = grad(jnp.asarray(x))
        assert got.dtype == dtype, name
        err = _ulps(got, _closed_form(kind, p), p, zabs, mean_z, dtype)
        worst[name] = err
        assert err <= 1.0, f"{name}: gradient off by {err:.3g}× the rounding bound at {x}"
    return worst


CASES = [
    pytest.param(dtype, base, seed, id=f"{np.dtype(dtype).name}-{base:g}-{seed}")
    for dtype, bases in BASES.items()
    for base in bases
    for seed in range(2)
]


@pytest.mark.parametrize(("dtype", "base", "seed"), CASES)
def test_gradients_at_large_magnitude_in_ulps(dtype, base, seed):
    with jax.enable_x64(dtype == np.float64):
        _check(_rows(np.random.default_rng(seed), base, dtype), dtype)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.one_of(
        st.sampled_from([1e4, 1e7, 3e7, 1e20, 3e38]),
        st.floats(-3e7, 3e7, width=32, allow_subnormal=False),
    ),
    seed=st.integers(0, 2**16),
)
def test_gradients_at_large_magnitude_float32_property(base, seed):
    x = _rows(np.random.default_rng(seed), base, np.float32)
    if not np.isfinite(x).all():
        return  # base + offset overflowed float32: not this test's subject
    worst = _check(x, np.float32)
    target(max(worst.values()), label="worst gradient error / bound")
