"""``jax.debug_nans`` / ``jax.debug_infs`` stay quiet on finite inputs (issue 19, item 10).

Users turn the flags on to find their own NaNs and infinities; a library that trips them on
finite inputs makes them useless. The causes were inf/NaN *constants* (``jnp.isposinf``
compares with one, ``jnp.where(bad, nan, v)`` broadcasts one, an initial ``-inf`` of a max)
and products such as ``0 · (−inf)`` formed and then selected away: under ``jit`` the flags
check only a program's outputs, but run op by op (eagerly, or under ``jax.disable_jit``) they
check every operation.

Every function here runs on finite, unmasked inputs in three modes (``jit``, eager, and
``disable_jit``) under each flag, value and gradient. Masked calls (``where=``) fill the
masked entries with ``-inf`` by design; they are checked under ``jit`` and under
``debug_nans`` in every mode.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsoftmax

Z = jax.random.normal(jax.random.key(0), (4, 6)) * 3
Y = jnp.array([0, 1, 5, 2])
Q = jax.nn.softmax(jax.random.normal(jax.random.key(1), (4, 6)))
MASK = (Z > -2).at[:, 0].set(True)
W = jnp.arange(1.0, 7.0)
X, WL = Z[:, :3], jax.random.normal(jax.random.key(2), (3, 6))

UNMASKED = {
    "softmax": lambda z: jnp.sum(jsoftmax.softmax(z) * Z),
    "log_softmax": lambda z: jnp.sum(jsoftmax.log_softmax(z) * Z),
    "logsumexp": lambda z: jnp.sum(jsoftmax.logsumexp(z)),
    "logsumexp_keepdims_all": lambda z: jnp.sum(jsoftmax.logsumexp(z, None, keepdims=True)),
    "fwd.softmax": lambda z: jnp.sum(jsoftmax.fwd.softmax(z) * Z),
    "fwd.log_softmax": lambda z: jnp.sum(jsoftmax.fwd.log_softmax(z) * Z),
    "fwd.logsumexp": lambda z: jnp.sum(jsoftmax.fwd.logsumexp(z)),
    "softmax_jacobian": lambda z: jnp.sum(jsoftmax.softmax_jacobian(z)[..., 0]),
    "cross_entropy": lambda z: jsoftmax.cross_entropy(z, Y),
    "cross_entropy_smoothing": lambda z: jsoftmax.cross_entropy(z, Y, label_smoothing=0.1),
    "cross_entropy_options": lambda z: jsoftmax.cross_entropy(
        z, Y, weight=W, ignore_index=1, label_smoothing=0.1, z_loss=1e-3
    ),
    "cross_entropy_none": lambda z: jnp.sum(
        jsoftmax.cross_entropy(z, Y, reduction="none", ignore_index=5) * jnp.arange(4.0)
    ),
    "cross_entropy_probs": lambda z: jsoftmax.cross_entropy(z, Q, label_smoothing=0.1),
    "cross_entropy_f16": lambda z: jsoftmax.cross_entropy(z.astype(jnp.float16), Y),
    "nll_loss": lambda z: jsoftmax.nll_loss(z, Y, weight=W, ignore_index=2),
    "softmax_cross_entropy": lambda z: jnp.sum(jsoftmax.softmax_cross_entropy(z, Q)),
    "softmax_cross_entropy_with_integer_labels": lambda z: jnp.sum(
        jsoftmax.softmax_cross_entropy_with_integer_labels(z, Y)
    ),
}

MASKED = {
    "softmax_where": lambda z: jnp.sum(jsoftmax.softmax(z, where=MASK) * Z),
    "logsumexp_where": lambda z: jnp.sum(jsoftmax.logsumexp(z, where=MASK)),
    "cross_entropy_class_mask": lambda z: jsoftmax.cross_entropy(
        z, Y, where=MASK, label_smoothing=0.1
    ),
    "cross_entropy_probs_mask": lambda z: jsoftmax.cross_entropy(z, Q, where=MASK),
    "softmax_cross_entropy_where": lambda z: jnp.sum(
        jsoftmax.softmax_cross_entropy(z, Q, where=MASK)
    ),
}


def _run(f, flag, mode):
    g = jax.value_and_grad(f)
    ctx = jax.disable_jit() if mode == "disable_jit" else contextlib.nullcontext()
    with getattr(jax, f"debug_{flag}")(True), ctx:
        value, grad = (jax.jit(g) if mode == "jit" else g)(Z)
        jax.block_until_ready(grad)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("mode", ["jit", "eager", "disable_jit"])
@pytest.mark.parametrize("flag", ["nans", "infs"])
@pytest.mark.parametrize("name", list(UNMASKED))
def test_finite_inputs_trip_no_debug_flag(name, flag, mode):
    _run(UNMASKED[name], flag, mode)


@pytest.mark.parametrize(
    ("flag", "mode"),
    [("nans", "jit"), ("nans", "eager"), ("nans", "disable_jit"), ("infs", "jit")],
)
@pytest.mark.parametrize("name", list(MASKED))
def test_masked_inputs_trip_no_debug_flag_where_documented(name, flag, mode):
    _run(MASKED[name], flag, mode)


def test_a_real_nan_is_still_reported():
    # the flags still do their job: a NaN logit makes the loss NaN and is reported
    z = Z.at[0, 0].set(jnp.nan)
    with jax.debug_nans(True), pytest.raises(FloatingPointError):
        jax.jit(jsoftmax.cross_entropy)(z, Y).block_until_ready()


def test_out_of_range_label_poisons_value_and_gradient_only_where_bad():
    # the NaN of an out-of-range label (under jit) multiplies its own row only; the gradient of
    # a loss differentiated by autodiff through the engine is NaN there too (issue 19, item 9)
    from jsoftmax._xent_engine import poison

    bad = jnp.array([False, True, False])
    v = jnp.array([1.5, 2.0, jnp.inf])
    (out,) = poison(bad, v)
    np.testing.assert_array_equal(np.isnan(np.asarray(out)), [False, True, False])
    assert float(out[0]) == 1.5 and float(out[2]) == jnp.inf
    grad = jax.grad(lambda v: jnp.sum(poison(bad, v)[0]))(jnp.array([1.5, 2.0, 3.0]))
    np.testing.assert_array_equal(np.isnan(np.asarray(grad)), [False, True, False])
