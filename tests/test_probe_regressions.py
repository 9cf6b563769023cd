"""Regression tests for the wrong numbers an adversarial probe found (one test per finding).

Each test names the probe's item and fails on the code before its fix. The sweeps that look
for more of the same kind live in tests/test_loss_sweep.py (losses against a float64
reference) and tests/test_gradient_ulps.py (gradients at large magnitude, in ulps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsoftmax


# 1. logsumexp's backward formed exp(x − lse) with lse rounded to the input's precision.
@pytest.mark.parametrize("fn", [jsoftmax.logsumexp, jsoftmax.fwd.logsumexp], ids=["vjp", "fwd"])
@pytest.mark.parametrize("scale", [1e4, 3e7, 3e38])
def test_1_logsumexp_gradient_at_large_magnitude_float32(fn, scale):
    g = jax.grad(fn)(jnp.array([scale, scale], jnp.float32))
    np.testing.assert_array_equal(np.asarray(g), [0.5, 0.5])
    g = jax.grad(fn)(jnp.array([scale, scale - 1.0, -scale], jnp.float32))
    want = np.exp(np.array([0.0, -1.0, -np.inf]) - np.log1p(np.exp(-1.0)))
    if scale > 1e7:  # scale − 1 rounds to scale there
        want = np.array([0.5, 0.5, 0.0])
    np.testing.assert_allclose(np.asarray(g), want, rtol=4 * np.finfo(np.float32).eps)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("fn", [jsoftmax.logsumexp, jsoftmax.fwd.logsumexp], ids=["vjp", "fwd"])
def test_1_logsumexp_gradient_at_large_magnitude_float64(fn):
    g = jax.grad(fn)(jnp.array([1e17, 1e17], jnp.float64))
    np.testing.assert_array_equal(np.asarray(g), [0.5, 0.5])


# 2. linear_cross_entropy's backward formed p = exp(z − lse) from the rounded lse.
@pytest.mark.parametrize("chunk_size", [None, (1, 2)])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_2_linear_cross_entropy_gradient_at_large_magnitude(chunk_size, label_smoothing):
    x = jnp.ones((1, 1))
    w = jnp.array([[3e7, 3e7, 0.0]])
    y = jnp.array([2])
    opts = {"label_smoothing": label_smoothing}
    got = jax.value_and_grad(
        lambda w: jsoftmax.linear_cross_entropy(x, w, y, chunk_size=chunk_size, **opts)
    )(w)
    want = jax.value_and_grad(lambda w: jsoftmax.cross_entropy(x @ w, y, **opts))(w)
    eps = label_smoothing
    # ∂ℓ/∂z = softmax − t with softmax = (½, ½, 0) and t = (1 − ε)·onehot(2) + ε/3
    np.testing.assert_allclose(
        np.asarray(got[1]), [[0.5 - eps / 3, 0.5 - eps / 3, -(1 - eps) - eps / 3]], atol=1e-6
    )
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), atol=1e-6)
    # the value: (1 − ε)(lse − z_2) + ε (lse − z̄) with lse = 3e7 + log 2, in float32
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-7)


# 3. fwd.logsumexp gave a NaN gradient on an all −inf slice; the docstring says zero.
def test_3_fwd_logsumexp_all_neg_inf_slice_has_zero_gradient():
    x = jnp.array([[-jnp.inf, -jnp.inf], [0.0, 1.0]])
    for fn in (jsoftmax.logsumexp, jsoftmax.fwd.logsumexp):
        g = np.asarray(jax.grad(lambda x, fn=fn: jnp.sum(fn(x)))(x))
        np.testing.assert_array_equal(g[0], [0.0, 0.0])
        np.testing.assert_allclose(g[1], np.asarray(jax.nn.softmax(x[1])), rtol=1e-6)
    hess = jax.hessian(jsoftmax.fwd.logsumexp)(x[0])
    np.testing.assert_array_equal(np.asarray(hess), np.zeros((2, 2)))
    # a NaN entry still gives NaN (the mask uses isneginf, not x > -inf)
    assert np.isnan(np.asarray(jax.grad(jsoftmax.fwd.logsumexp)(jnp.array([jnp.nan, 1.0])))).all()


# 4. A class mask with a size-1 class axis counted the live classes on the unbroadcast mask.
@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (1, 4), (2, 4)], ids=str)
def test_4_broadcast_class_mask_with_label_smoothing(shape):
    z = jnp.array([[2.0, 0.5, -1.0, 0.3], [0.1, -0.2, 1.5, 0.0]])
    y = jnp.array([0, 2])
    where = jnp.ones(shape, bool)
    for labels in (y, jax.nn.one_hot(y, 4)):
        got = jax.value_and_grad(
            lambda z, labels=labels: jsoftmax.cross_entropy(
                z, labels, where=where, label_smoothing=0.2
            )
        )(z)
        want = jax.value_and_grad(
            lambda z, labels=labels: jsoftmax.cross_entropy(z, labels, label_smoothing=0.2)
        )(z)
        np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), atol=1e-7)
    np.testing.assert_allclose(
        float(
            jsoftmax.cross_entropy(z[:1], y[:1], where=jnp.ones((1, 1), bool), label_smoothing=0.2)
        ),
        0.6854187,
        rtol=1e-6,
    )


# 5. Probability labels with every class of an example masked gave a NaN loss.
@pytest.mark.parametrize("fn", ["cross_entropy", "softmax_cross_entropy"])
def test_5_probability_labels_fully_masked_example_contributes_nothing(fn):
    z = jnp.array([[2.0, 0.5, -1.0, 0.3], [0.1, -0.2, 1.5, 0.0]])
    q = jnp.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    where = jnp.array([[False] * 4, [True] * 4])
    if fn == "cross_entropy":
        loss = lambda z, q: jsoftmax.cross_entropy(z, q, where=where, reduction="none")  # noqa: E731
    else:
        loss = lambda z, q: jsoftmax.softmax_cross_entropy(z, q, where=where)  # noqa: E731
    out = np.asarray(loss(z, q))
    assert out[0] == 0.0
    np.testing.assert_allclose(out[1], float(jsoftmax.softmax_cross_entropy(z[1], q[1])), rtol=1e-6)
    dz, dq = jax.grad(lambda z, q: jnp.sum(loss(z, q)), (0, 1))(z, q)
    np.testing.assert_array_equal(np.asarray(dz)[0], 0.0)
    np.testing.assert_array_equal(np.asarray(dq)[0], 0.0)
    assert np.isfinite(np.asarray(dz)).all() and np.isfinite(np.asarray(dq)).all()
    # and the mean leaves the fully masked example out of the count
    mean = jsoftmax.cross_entropy(z, q, where=where)
    np.testing.assert_allclose(float(mean), out[1], rtol=1e-6)


# 6. Tuple class axes with a mask that broadcasts crashed with a raw broadcasting error.
@pytest.mark.parametrize("shape", [(2, 1, 4), (1, 3, 1), (2, 3, 1), (1, 1, 1), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_6_tuple_axes_with_broadcast_mask(shape, smoothing):
    z = jax.random.normal(jax.random.key(0), (2, 3, 4))
    y = jnp.array([0, 5])
    # mask the first class column where the mask has a full last axis, so some classes leave
    where = jnp.ones(shape, bool).at[..., 0].set(shape[-1] == 1)
    full = jnp.broadcast_to(where, z.shape)
    got = jax.value_and_grad(
        lambda z: jsoftmax.cross_entropy(z, y, axis=(1, 2), where=where, label_smoothing=smoothing)
    )(z)
    want = jax.value_and_grad(
        lambda z: jsoftmax.cross_entropy(
            z.reshape(2, 12), y, where=full.reshape(2, 12), label_smoothing=smoothing
        )
    )(z)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(got[1]).reshape(2, 12), np.asarray(want[1]).reshape(2, 12), atol=1e-6
    )


# 7. Narrow label dtypes wrapped: the class count was cast to the label dtype.
NARROW = [(jnp.int8, 200), (jnp.uint8, 300), (jnp.int16, 40_000), (jnp.uint16, 70_000)]


@pytest.mark.parametrize(("dtype", "n_classes"), NARROW, ids=lambda v: getattr(v, "__name__", v))
def test_7_narrow_label_dtypes_do_not_wrap(dtype, n_classes):
    top = int(jnp.iinfo(dtype).max)
    y = jnp.array([min(top, n_classes - 1), 3, 0], dtype)
    y32 = y.astype(jnp.int32)
    z = jax.random.normal(jax.random.key(0), (3, n_classes))
    x, w = z[:, :4], jax.random.normal(jax.random.key(1), (4, n_classes))
    cases = [
        lambda z, y: jsoftmax.cross_entropy(z, y, label_smoothing=0.1),
        lambda z, y: jsoftmax.cross_entropy(z, y, ignore_index=3),
        lambda z, y: jsoftmax.nll_loss(jax.nn.log_softmax(z), y),
        lambda z, y: jnp.sum(jsoftmax.softmax_cross_entropy_with_integer_labels(z, y)),
        lambda z, y: jsoftmax.linear_cross_entropy(x, w + z[0, 0], y, label_smoothing=0.1),
    ]
    for loss in cases:
        got = jax.value_and_grad(loss)(z, y)
        want = jax.value_and_grad(loss)(z, y32)
        assert np.isfinite(float(got[0]))
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
        jitted = jax.jit(jax.value_and_grad(loss))(z, y)
        np.testing.assert_allclose(float(jitted[0]), float(want[0]), rtol=1e-6)


def test_7_narrow_label_dtype_out_of_range_is_still_nan_under_jit():
    # uint8 labels with 10 classes: 200 is out of range (not wrapped into range)
    z = jnp.zeros((2, 10))
    y = jnp.array([200, 1], jnp.uint8)
    with pytest.raises(ValueError, match="got 200 at position"):
        jsoftmax.cross_entropy(z, y)
    assert np.isnan(float(jax.jit(jsoftmax.cross_entropy)(z, y)))


def test_7_ignore_index_is_compared_in_a_wide_dtype():
    # ignore_index=-100 with uint8 labels would wrap to 156 in the label dtype
    z = jax.random.normal(jax.random.key(0), (2, 200))
    y = jnp.array([156, 1], jnp.uint8)
    got = jsoftmax.cross_entropy(z, y, ignore_index=-100, reduction="none")
    want = jsoftmax.cross_entropy(z, y.astype(jnp.int32), reduction="none")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.raises(ValueError, match="ignore_index must fit in int32"):
        jsoftmax.cross_entropy(z, y, ignore_index=2**40)


# 9. Lesser findings.
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_9_z_loss_must_be_finite(value):
    z, y = jnp.zeros((2, 3)), jnp.array([0, 1])
    with pytest.raises(ValueError, match="z_loss must be finite"):
        jsoftmax.cross_entropy(z, y, z_loss=value)
    with pytest.raises(ValueError, match="z_loss must be finite"):
        jsoftmax.linear_cross_entropy(jnp.ones((2, 2)), jnp.ones((2, 3)), y, z_loss=value)


def test_9_class_weights_summing_to_zero_divide_by_zero_as_in_pytorch():
    z = jnp.array([[2.0, 0.5, -1.0], [0.1, -0.2, 1.5]])
    y = jnp.array([0, 1])
    # ω = (1, −1): the weighted mean's denominator is 0 while the losses are not
    got = float(jsoftmax.cross_entropy(z, y, weight=jnp.array([1.0, -1.0, 0.0])))
    assert np.isinf(got) or np.isnan(got)
    # every example of weight 0 and no smoothing mass: nothing contributes, the mean is 0
    w0 = jnp.array([0.0, 0.0, 1.0])
    loss, grad = jax.value_and_grad(lambda z: jsoftmax.cross_entropy(z, y, weight=w0))(z)
    assert float(loss) == 0.0 and not np.asarray(grad).any()
    # with smoothing, those examples do contribute (ε/C of class 2) over a zero denominator
    assert not np.isfinite(float(jsoftmax.cross_entropy(z, y, weight=w0, label_smoothing=0.1)))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: jsoftmax.cross_entropy([[1.0, 2.0]], jnp.array([0])), "logits"),
        (lambda: jsoftmax.softmax([[1.0, 2.0]]), "x"),
        (lambda: jsoftmax.logsumexp([1.0, 2.0]), "x"),
        (lambda: jsoftmax.linear_cross_entropy([[1.0]], jnp.ones((1, 2)), jnp.array([0])), "x"),
        (
            lambda: jsoftmax.cross_entropy(jnp.zeros((1, 2)), jnp.array([0]), weight=[1, 2]),
            "weight",
        ),
    ],
    ids=["cross_entropy", "softmax", "logsumexp", "linear_cross_entropy", "weight"],
)
def test_9_python_lists_raise_an_error_naming_the_argument(call, name):
    with pytest.raises(TypeError, match=rf": {name} must be an array .* got list"):
        call()
