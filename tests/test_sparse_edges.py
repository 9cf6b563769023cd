"""Edge shapes and edge α for the sparse normalisers and their Fenchel–Young losses.

Regression tests for issue 19 item 3 (``method="sort"`` crashed on an empty batch).
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsoftmax
from jsoftmax import fwd

METHODS = ["auto", "newton", "sort"]
# every normaliser with a method, in both rule kinds
WITH_METHOD = {
    "sparsemax": jsoftmax.sparsemax,
    "entmax15": jsoftmax.entmax15,
    "fwd.sparsemax": fwd.sparsemax,
    "fwd.entmax15": fwd.entmax15,
}
# every α-entmax path: the exact functions, a Python α that bisects, an array α
ENTMAX = {
    "entmax_1.3": lambda x, axis=-1: jsoftmax.entmax(x, 1.3, axis),
    "entmax_3": lambda x, axis=-1: jsoftmax.entmax(x, 3.0, axis),
    "entmax_array": lambda x, axis=-1: jsoftmax.entmax(x, jnp.asarray(1.7, x.dtype), axis),
    "fwd.entmax_1.3": lambda x, axis=-1: fwd.entmax(x, 1.3, axis),
    "fwd.entmax_array": lambda x, axis=-1: fwd.entmax(x, jnp.asarray(1.7, x.dtype), axis),
}
ALL = {
    **{f"{k}_{m}": partial(f, method=m) for k, f in WITH_METHOD.items() for m in METHODS},
    **ENTMAX,
}


def rand(shape, seed=0):
    return 2.0 * jax.random.normal(jax.random.key(seed), shape)


# ------------------------------------------------------------------ empty batches (item 3)


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("shape,axis", [((0, 5), -1), ((5, 0, 3), 0), ((0, 4, 3), (1, 2))])
def test_empty_batch_gives_an_empty_result_for_every_method(name, shape, axis):
    # issue 19 item 3: method="sort" raised ZeroDivisionError (a reshape to -1 of 0 elements)
    f = ALL[name]
    x = jnp.zeros(shape)
    for g in (f, jax.jit(f, static_argnums=1)):
        p = g(x, axis)
        assert p.shape == shape and p.dtype == x.dtype
    grad = jax.grad(lambda x: jnp.sum(f(x, axis) * 2.0))(x)
    assert grad.shape == shape


@pytest.mark.parametrize("name", list(ALL))
def test_size_one_class_axis_is_probability_one_with_zero_gradient(name):
    f = ALL[name]
    x = rand((3, 1))
    np.testing.assert_array_equal(f(x), np.ones((3, 1), np.float32))
    g = jax.grad(lambda x: jnp.sum(f(x) * jnp.arange(3.0)[:, None]))(x)
    np.testing.assert_array_equal(g, np.zeros((3, 1), np.float32))


@pytest.mark.parametrize("name", list(ALL))
def test_size_one_batch_equals_the_row_alone(name):
    f = ALL[name]
    x = rand((1, 7))
    np.testing.assert_allclose(f(x)[0], f(x[0]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("loss", ["sparsemax_loss", "entmax_loss"])
@pytest.mark.parametrize("labels", ["int", "prob"])
def test_losses_on_an_empty_batch(loss, labels):
    f = getattr(jsoftmax, loss)
    z = jnp.zeros((0, 5))
    y = jnp.zeros((0,), jnp.int32) if labels == "int" else jnp.zeros((0, 5))
    assert f(z, y, reduction="none").shape == (0,)
    assert f(z, y) == 0  # nothing contributes: the mean is 0
    assert jax.grad(f)(z, y).shape == (0, 5)
