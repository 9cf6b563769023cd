"""The opt-in checked-labels mode: out-of-range integer labels raise under jit, vmap and grad."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsoftmax

C = 5
X = jnp.ones((3, 2))
W = jnp.ones((2, C))


def _losses():
    mesh = jax.make_mesh((1,), ("vocab",))
    return {
        "cross_entropy": lambda z, y: jsoftmax.cross_entropy(z, y, ignore_index=-100),
        "nll_loss": lambda z, y: jsoftmax.nll_loss(jax.nn.log_softmax(z), y, ignore_index=-100),
        "softmax_cross_entropy_with_integer_labels": lambda z, y: jnp.sum(
            jsoftmax.softmax_cross_entropy_with_integer_labels(z, y)
        ),
        "linear_cross_entropy": lambda z, y: jsoftmax.linear_cross_entropy(
            X, W + z[0, 0], y, ignore_index=-100
        ),
        "vocab_parallel_cross_entropy": lambda z, y: jsoftmax.vocab_parallel_cross_entropy(
            z, y, mesh=mesh, axis_name="vocab", ignore_index=-100
        ),
        "vocab_parallel_linear_cross_entropy": lambda z, y: (
            jsoftmax.vocab_parallel_linear_cross_entropy(
                X, W + z[0, 0], y, mesh=mesh, axis_name="vocab", ignore_index=-100
            )
        ),
    }


NAMES = list(_losses())
Z = jax.random.normal(jax.random.key(0), (3, C))
BAD = jnp.array([0, 7, 1], jnp.int8)  # a narrow dtype too: 7 is out of range, not wrapped


@pytest.fixture
def checks_on():
    with jsoftmax.label_checks():
        yield


@pytest.mark.usefixtures("checks_on")
@pytest.mark.parametrize("transform", ["jit", "grad", "vmap"])
@pytest.mark.parametrize("name", NAMES)
def test_checked_mode_raises_naming_function_label_and_position(name, transform):
    loss = _losses()[name]
    if transform == "jit":
        call = functools.partial(jax.jit(loss), Z, BAD)
        where = "position (1,)"
    elif transform == "grad":
        call = functools.partial(jax.jit(jax.grad(loss)), Z, BAD)
        where = "position (1,)"
    else:
        batched = jax.jit(jax.vmap(loss, in_axes=(None, 0)))
        call = functools.partial(batched, Z, jnp.stack([BAD.at[1].set(2), BAD]))
        where = "position (1,)"  # the position within one example of the batch
    fn = "softmax_cross_entropy_with_integer_labels" if "integer" in name else name
    if name == "nll_loss":
        fn = "nll_loss"
    pattern = rf"{fn}: labels must be class indices .*got 7 at {re.escape(where)}"
    with pytest.raises(Exception, match=pattern):
        jax.block_until_ready(call())


@pytest.mark.usefixtures("checks_on")
@pytest.mark.parametrize("name", NAMES)
def test_checked_mode_passes_valid_and_ignored_labels_unchanged(name):
    loss = _losses()[name]
    y = jnp.array([0, 4, -100 if name != "softmax_cross_entropy_with_integer_labels" else 2])
    got = jax.jit(jax.value_and_grad(loss))(Z, y)
    jsoftmax.set_label_checks(False)  # clears the caches: traced anew without checks
    want = jax.jit(jax.value_and_grad(loss))(Z, y)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", NAMES)
def test_checked_mode_off_adds_nothing_and_gives_nan(name):
    loss = _losses()[name]
    assert "callback" not in str(jax.make_jaxpr(loss)(Z, BAD))
    assert np.isnan(float(jax.jit(loss)(Z, BAD)))
    # switching the mode on retraces even the same function object
    with jsoftmax.label_checks():
        assert "callback" in str(jax.make_jaxpr(loss)(Z, BAD))
    assert "callback" not in str(jax.make_jaxpr(loss)(Z, BAD))


def test_label_checks_context_restores_the_previous_mode():
    assert jsoftmax.set_label_checks(True) is False
    with jsoftmax.label_checks(False):
        assert jsoftmax.set_label_checks(False) is False
    assert jsoftmax.set_label_checks(False) is True
    with pytest.raises(TypeError, match="enabled must be a bool; got 1"):
        jsoftmax.set_label_checks(1)
