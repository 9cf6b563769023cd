"""The sparse normalisers and their losses under ``jax.debug_nans`` and ``jax.debug_infs``.

Regression tests for issue 19 item 10: on finite inputs these raised ``FloatingPointError``
(false alarms) because of infinite or NaN constants in selects (``where(isposinf(m), nan, τ)``,
a NaN-filled loop placeholder, the NaN poison of out-of-range labels, ``max``'s ``-inf`` start,
``entr``'s ``-inf`` branch). Every function, values and gradients, eagerly, jitted and under
``jax.disable_jit``, must run without a report, and still report where the result really is NaN.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsoftmax
from jsoftmax import fwd

X = 2.0 * jax.random.normal(jax.random.key(0), (3, 6))
Y = jnp.array([0, 2, 5])
T = jax.nn.softmax(jax.random.normal(jax.random.key(1), (3, 6)))
A = jnp.array([1.3, 1.7, 2.5])[:, None]

FUNCTIONS = {
    "sparsemax": lambda x: jsoftmax.sparsemax(x),
    "sparsemax_sort": lambda x: jsoftmax.sparsemax(x, method="sort"),
    "entmax15": lambda x: jsoftmax.entmax15(x),
    "entmax15_sort": lambda x: jsoftmax.entmax15(x, method="sort"),
    "entmax_1.3": lambda x: jsoftmax.entmax(x, 1.3),
    "entmax_1.25": lambda x: jsoftmax.entmax(x, 1.25),  # an integer power
    "entmax_3": lambda x: jsoftmax.entmax(x, 3.0),
    "entmax_near_1": lambda x: jsoftmax.entmax(x, 1.00000001),
    "entmax_array": lambda x: jsoftmax.entmax(x, A),
    "fwd.sparsemax": lambda x: fwd.sparsemax(x),
    "fwd.entmax15": lambda x: fwd.entmax15(x),
    "fwd.entmax_array": lambda x: fwd.entmax(x, A),
    "sparsemax_loss_int": lambda x: jsoftmax.sparsemax_loss(x, Y),
    "sparsemax_loss_prob": lambda x: jsoftmax.sparsemax_loss(x, T),
    "entmax_loss_int": lambda x: jsoftmax.entmax_loss(x, Y),
    "entmax_loss_prob": lambda x: jsoftmax.entmax_loss(x, T),
    "entmax_loss_1.3_int": lambda x: jsoftmax.entmax_loss(x, Y, 1.3),
    "entmax_loss_1_prob": lambda x: jsoftmax.entmax_loss(x, T, 1.0),
    "entmax_loss_array_prob": lambda x: jsoftmax.entmax_loss(x, T, A[:, 0]),
}
FLAGS = {"debug_nans": jax.debug_nans, "debug_infs": jax.debug_infs}


def _scalar(f):
    def g(x):
        out = f(x)  # once: eagerly, every call of f runs the whole normaliser
        return jnp.sum(out * jnp.arange(1.0, 1.0 + out.size).reshape(out.shape))

    return g


@functools.cache
def _reference(name):
    """The value and gradient of ``FUNCTIONS[name]`` without the flags (jitted), once each."""
    f = FUNCTIONS[name]
    return jax.jit(f)(X), jax.jit(jax.grad(_scalar(f)))(X)


def _run(f, mode):
    if mode == "jit":
        return jax.block_until_ready(jax.jit(f)(X))
    if mode == "disable_jit":
        with jax.disable_jit():
            return f(X)
    return jax.block_until_ready(f(X))


@pytest.mark.parametrize("mode", ["eager", "jit", "disable_jit"])
@pytest.mark.parametrize("flag", list(FLAGS))
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_no_false_alarm_on_finite_inputs(name, flag, mode):
    f = FUNCTIONS[name]
    with FLAGS[flag](True):
        value = _run(f, mode)
        grad = _run(jax.grad(_scalar(f)), mode)
    # the same numbers as without the flag
    want, want_grad = _reference(name)
    np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax_1.3", "entmax_array"])
def test_debug_nans_still_reports_a_real_nan(name):
    # the flag is not silenced: a +inf score makes its slice NaN, and that is reported
    f = FUNCTIONS[name]
    x = X.at[1, 2].set(jnp.inf)
    with jax.debug_nans(True), pytest.raises(FloatingPointError):
        jax.block_until_ready(jax.jit(f)(x))
