"""The gradient-check tool must pass on our functions and catch a wrong rule."""

from functools import partial

import jax
import jax.numpy as jnp
import pytest

from jsoftmax import _gradcheck


@jax.custom_vjp
def _wrong_softmax(x):
    return jax.nn.softmax(x)


def _wrong_fwd(x):
    y = jax.nn.softmax(x)
    return y, y


def _wrong_bwd(y, g):
    # the sign error of the well-known write-up: −(g − ⟨g, s⟩) s instead of +
    return (-y * (g - jnp.sum(g * y, -1, keepdims=True)),)


_wrong_softmax.defvjp(_wrong_fwd, _wrong_bwd)


@jax.custom_vjp
def _frozen_softmax(x):
    return jax.nn.softmax(x)


def _frozen_bwd(y, g):
    # right first derivative, but the residual's own dependence on x is cut off, so every
    # second derivative through this rule is wrong
    y = jax.lax.stop_gradient(y)
    return (y * (g - jnp.sum(g * y, -1, keepdims=True)),)


_frozen_softmax.defvjp(_wrong_fwd, _frozen_bwd)


@pytest.mark.parametrize(("order", "wrong"), [(1, _wrong_softmax), (2, _frozen_softmax)])
def test_directional_error_flags_a_wrong_rule(order, wrong):
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (3, 5), jnp.float64)
        bad = _gradcheck.directional_error(wrong, (x,), order, jax.random.key(1))
        good = _gradcheck.directional_error(
            partial(jax.nn.softmax, axis=-1), (x,), order, jax.random.key(1)
        )
    assert bad > 1e-2
    assert good < 1e-8


def test_cli_table_for_a_subset(capsys):
    assert _gradcheck.main(["--only", "logsumexp"]) == 0
    out = capsys.readouterr().out
    assert "logsumexp(where=)" in out and "fwd.logsumexp" in out
    assert "FAIL" not in out and "6 passed, 0 failed" in out


def test_cli_unknown_filter(capsys):
    assert _gradcheck.main(["--only", "no-such-function"]) == 2
