"""Edge shapes and edge α for the sparse normalisers and their Fenchel–Young losses.

Regression tests for issue 19: item 2 (a non-finite array ``alpha`` gave a finite answer),
item 3 (``method="sort"`` crashed on an empty batch) and item 4 (``jax.hessian`` of the
Fenchel–Young losses with probability labels raised).
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


# ------------------------------------------------------------------ non-finite α (item 2)

BAD_ALPHA = [np.inf, -np.inf, np.nan, 1.0, 0.5, -2.0]


@pytest.mark.parametrize("alpha", BAD_ALPHA)
@pytest.mark.parametrize("twin", [jsoftmax.entmax, fwd.entmax])
def test_array_alpha_that_is_not_finite_or_not_above_one_is_nan(alpha, twin):
    # issue 19 item 2: alpha = inf gave the uniform distribution, not the documented NaN
    x = rand((2, 5))
    a = jnp.array([alpha, 1.5])[:, None]
    p = twin(x, a)
    assert np.isnan(p[0]).all()
    np.testing.assert_allclose(p[1], jsoftmax.entmax15(x[1]), rtol=1e-5, atol=1e-6)
    gx, ga = jax.grad(lambda x, a: jnp.sum(jsoftmax.entmax(x, a) * x), (0, 1))(x, a)
    assert np.isnan(gx[0]).all() and np.isnan(ga[0]).all()
    assert np.isfinite(gx[1]).all() and np.isfinite(ga[1]).all()


@pytest.mark.parametrize("alpha", BAD_ALPHA)
@pytest.mark.parametrize("labels", ["int", "prob"])
def test_entmax_loss_with_a_bad_array_alpha_is_nan(alpha, labels):
    # issue 19 item 2: entmax_loss(..., jnp.asarray(jnp.inf)) was finite
    z = rand((2, 5))
    y = jnp.array([1, 3]) if labels == "int" else jax.nn.softmax(rand((2, 5), 1))
    a = jnp.array([alpha, 1.5])
    per = jsoftmax.entmax_loss(z, y, a, reduction="none")
    assert np.isnan(per[0]) and np.isfinite(per[1])
    assert np.isnan(jsoftmax.entmax_loss(z, y, jnp.asarray(alpha)))
    gz, ga = jax.grad(lambda z, a: jsoftmax.entmax_loss(z, y, a, reduction="sum"), (0, 1))(z, a)
    assert np.isnan(gz[0]).all() and np.isnan(ga[0])


# ------------------------------------------------------------------ second order (item 4)


def _loss(name):
    if name == "sparsemax_loss":
        return jsoftmax.sparsemax_loss
    alpha = {"entmax_loss": 1.5, "entmax_loss_1.3": 1.3, "entmax_loss_1": 1.0}[name]
    return lambda z, y: jsoftmax.entmax_loss(z, y, alpha, n_iter=200)


def _reference_loss(name, z, t):
    """The Fenchel–Young loss in plain JAX: Ω*(z) by the normaliser's own value (its
    derivative p* by Danskin), so autodiff of it is the reference for second derivatives."""
    alpha = {"sparsemax_loss": 2.0, "entmax_loss": 1.5, "entmax_loss_1.3": 1.3}.get(name, 1.0)
    p = jsoftmax.fwd.entmax(z, alpha, n_iter=200)
    t = jax.nn.one_hot(t, z.shape[-1], dtype=z.dtype) if t.dtype.kind == "i" else t

    def omega(p):
        if alpha == 1.0:
            return jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0), -1)
        return (jnp.sum(jnp.where(p > 0, jnp.where(p > 0, p, 1) ** alpha, 0), -1) - 1) / (
            alpha * (alpha - 1)
        )

    return jnp.mean(jnp.sum(p * z, -1) - omega(p) - jnp.sum(t * z, -1) + omega(t))


LOSSES = ["sparsemax_loss", "entmax_loss", "entmax_loss_1.3", "entmax_loss_1"]


@pytest.mark.parametrize("labels", ["int", "prob"])
@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("how", ["hessian", "jacfwd_of_grad"])
def test_second_derivatives_of_the_losses_in_the_logits(name, labels, how, x64):
    # issue 19 item 4: with probability labels jax.hessian raised (a custom_vjp rule called
    # its own custom_vjp function, which jax.hessian's outer forward pass then met)
    z = rand((2, 5)).astype(jnp.float64)
    y = jnp.array([1, 3]) if labels == "int" else jax.nn.softmax(rand((2, 5), 1), -1)
    f = _loss(name)
    d2 = jax.hessian if how == "hessian" else lambda f: jax.jacfwd(jax.grad(f))
    got = d2(lambda z: f(z, y))(z)
    # the Hessian in the logits is the normaliser's Jacobian (per example, / batch for the mean)
    want = jax.hessian(lambda z: _reference_loss(name, z, y))(z)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", LOSSES)
def test_hessian_in_logits_and_probability_labels_together(name, x64):
    z = rand((2, 5)).astype(jnp.float64)
    t = jax.nn.softmax(rand((2, 5), 1), -1)
    f = _loss(name)
    got = jax.hessian(f, argnums=(0, 1))(z, t)
    want = jax.hessian(lambda z, t: _reference_loss(name, z, t), argnums=(0, 1))(z, t)
    for g_row, w_row in zip(got, want, strict=True):
        for g, w in zip(g_row, w_row, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-9)
