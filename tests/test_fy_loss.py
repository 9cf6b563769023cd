"""sparsemax_loss and entmax_loss: Fenchel–Young values, p − t gradients, options, edge inputs."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jsoftmax


def _load(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ORACLE = _load("entmax_oracle")
_ref = _load("_sparse_reference")

ALPHAS = [1.0, 1.3, 1.5, 2.0, 2.5]


def loss_fn(alpha):
    if alpha == 2.0:
        return jsoftmax.sparsemax_loss
    return lambda z, y, **kw: jsoftmax.entmax_loss(z, y, alpha, n_iter=200, **kw)


def rand(shape, seed=0, scale=2.0, dtype=jnp.float32):
    return (scale * jax.random.normal(jax.random.key(seed), shape)).astype(dtype)


def ref_p(alpha, z):
    """α-entmax of each row in float64 (softmax at α = 1)."""
    z = np.asarray(z, np.float64)
    if alpha == 1.0:
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    return _ref.ref64(alpha, z)


def omega(alpha, p):
    """The negative Tsallis entropy Ω_α (Σ p log p at α = 1), float64."""
    p = np.asarray(p, np.float64)
    if alpha == 1.0:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1)
    return (np.sum(p**alpha, -1) - 1) / (alpha * (alpha - 1))


def ref_loss(alpha, z, t):
    """L = ⟨z, p⟩ − Ω(p) − ⟨z, t⟩ + Ω(t) per row, float64, straight from the definition."""
    z = np.asarray(z, np.float64)
    p = ref_p(alpha, z)
    return np.sum(z * p, -1) - omega(alpha, p) - np.sum(z * t, -1) + omega(alpha, t)


# ------------------------------------------------------------------------------- values


@pytest.mark.parametrize("alpha", ALPHAS)
def test_integer_label_values_match_the_definition(alpha, x64):
    z = rand((8, 6), dtype=jnp.float64)
    y = jnp.array([0, 1, 2, 3, 4, 5, 0, 1])
    t = np.eye(6)[np.asarray(y)]
    got = loss_fn(alpha)(z, y, reduction="none")
    np.testing.assert_allclose(got, ref_loss(alpha, z, t), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_probability_label_values_match_the_definition(alpha, x64):
    z = rand((8, 6), dtype=jnp.float64)
    t = np.array(jax.nn.softmax(rand((8, 6), seed=2, scale=3.0, dtype=jnp.float64)))
    t[0] = [0, 0, 1, 0, 0, 0]
    t[1] = [0.5, 0, 0, 0.5, 0, 0]
    got = loss_fn(alpha)(z, jnp.asarray(t), reduction="none")
    np.testing.assert_allclose(got, ref_loss(alpha, z, t), rtol=1e-9, atol=1e-12)


def test_losses_and_gradients_match_recorded_entmax_package_literals(x64):
    x = jnp.asarray(ORACLE.X, jnp.float64)
    y = jnp.asarray(ORACLE.LABELS)
    rec = ORACLE.ENTMAX_ORACLE
    cases = [("sparsemax_loss", jsoftmax.sparsemax_loss)]
    cases.append(("entmax15_loss", lambda z, y, **kw: jsoftmax.entmax_loss(z, y, 1.5, **kw)))
    for a in ORACLE.ALPHAS:
        f = lambda z, y, a=a, **kw: jsoftmax.entmax_loss(z, y, a, n_iter=100, **kw)  # noqa: E731
        cases.append((f"entmax_loss_{a}", f))
    for name, f in cases:
        np.testing.assert_allclose(f(x, y, reduction="none"), rec[name], atol=1e-12)
        grad = jax.grad(lambda x: f(x, y, reduction="sum"))(x)  # noqa: B023
        np.testing.assert_allclose(grad, rec[name + "_grad"], atol=1e-12)


def test_sparsemax_loss_matches_optax_multiclass_sparsemax_loss():
    z = rand((16, 7))
    y = jnp.arange(16) % 7
    want = optax.losses.multiclass_sparsemax_loss(z, y)
    np.testing.assert_allclose(jsoftmax.sparsemax_loss(z, y, reduction="none"), want, atol=2e-6)
    g_ours = jax.grad(lambda z: jsoftmax.sparsemax_loss(z, y, reduction="sum"))(z)
    g_optax = jax.grad(lambda z: optax.losses.multiclass_sparsemax_loss(z, y).sum())(z)
    np.testing.assert_allclose(g_ours, g_optax, atol=2e-6)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_values_match_the_entmax_package_live(alpha):
    entmax = pytest.importorskip("entmax")
    torch = pytest.importorskip("torch")
    z = rand((6, 9))
    y = jnp.arange(6) % 9
    zt = torch.tensor(np.asarray(z, np.float64))
    yt = torch.tensor(np.asarray(y))
    if alpha == 1.5:
        want = entmax.Entmax15Loss(reduction="none")(zt, yt)
    elif alpha == 2.0:
        want = entmax.SparsemaxLoss(reduction="none")(zt, yt)
    else:
        want = entmax.EntmaxBisectLoss(alpha, n_iter=100, reduction="none")(zt, yt)
    got = loss_fn(alpha)(z, y, reduction="none")
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_loss_is_nonnegative_and_zero_exactly_when_the_prediction_is_the_target(alpha):
    z = rand((16, 8), scale=3.0)
    y = jnp.arange(16) % 8
    assert np.all(np.asarray(loss_fn(alpha)(z, y, reduction="none")) >= -1e-6)
    p = jsoftmax.entmax(z, alpha, n_iter=200)
    np.testing.assert_allclose(loss_fn(alpha)(z, p, reduction="none"), 0, atol=2e-6)


def test_entmax_loss_at_alpha_one_is_cross_entropy_for_integer_labels():
    z = rand((10, 5))
    y = jnp.array([0, 1, 2, 3, 4, 0, 1, 2, -100, 4])
    w = jnp.array([1.0, 2.0, 0.5, 1.0, 3.0])
    where = jnp.arange(10) != 3
    kw = dict(weight=w, ignore_index=-100, where=where)
    for reduction in ["mean", "sum", "none"]:
        ours = lambda z: jsoftmax.entmax_loss(z, y, 1.0, reduction=reduction, **kw)  # noqa: E731, B023
        ce = lambda z: jsoftmax.cross_entropy(z, y, reduction=reduction, **kw)  # noqa: E731, B023
        np.testing.assert_allclose(ours(z), ce(z), rtol=1e-6, atol=1e-7)
        g1 = jax.grad(lambda z: jnp.sum(ours(z)))(z)  # noqa: B023
        g2 = jax.grad(lambda z: jnp.sum(ce(z)))(z)  # noqa: B023
        np.testing.assert_allclose(g1, g2, atol=1e-6)


def test_entmax_loss_at_python_alpha_two_is_sparsemax_loss_and_array_two_agrees(x64):
    z = rand((6, 7), dtype=jnp.float64)
    y = jnp.arange(6)
    want = jsoftmax.sparsemax_loss(z, y, reduction="none")
    np.testing.assert_array_equal(jsoftmax.entmax_loss(z, y, 2.0, reduction="none"), want)
    np.testing.assert_allclose(
        jsoftmax.entmax_loss(z, y, jnp.array(2.0), reduction="none", n_iter=200), want, atol=1e-12
    )


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("labels", ["int", "prob"])
def test_gradient_is_p_minus_target_scaled_by_weight_and_mean(alpha, labels, x64):
    z = rand((6, 5), dtype=jnp.float64)
    y = jnp.array([0, 1, 2, 3, 4, 2])
    w = jnp.array([1.0, 2.0, 0.5, 1.0, 3.0])
    t = jax.nn.one_hot(y, 5, dtype=jnp.float64)
    lab = y if labels == "int" else t
    g = jax.grad(lambda z: loss_fn(alpha)(z, lab, weight=w))(z)
    p = jsoftmax.entmax(z, alpha, n_iter=200)
    omega_n = w[y]
    want = omega_n[:, None] * (p - t) / omega_n.sum()
    np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12)


def _smooth(alpha, count=3, seed=0):
    """Score rows with no entry within 0.05 of the threshold (finite differences stay smooth)."""
    if alpha == 1.0:
        return rand((count, 6), seed=seed, dtype=jnp.float64)  # softmax has no threshold
    return jnp.asarray(_ref.smooth_points(alpha, n=6, count=count, seed=seed))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_check_grads_reverse_order_two_integer_labels(alpha, x64):
    z = _smooth(alpha)
    y = jnp.array([0, 3, 5])
    check_grads(lambda z: loss_fn(alpha)(z, y), (z,), order=2, modes=["rev"])


@pytest.mark.parametrize("alpha", ALPHAS)
def test_check_grads_probability_labels_both_arguments(alpha, x64):
    z = _smooth(alpha, seed=1)
    # targets well inside the simplex: at α = 1, ∂L/∂t = log t + 1 − z is steep near t = 0
    t = jax.nn.softmax(rand((3, 6), seed=7, scale=0.5, dtype=jnp.float64))
    check_grads(lambda z, t: loss_fn(alpha)(z, t), (z, t), order=1, modes=["rev"])
    check_grads(lambda z: loss_fn(alpha)(z, t), (z,), order=2, modes=["rev"])


@pytest.mark.parametrize("alpha", [1.0, 1.3, 1.5, 2.0])
def test_label_gradient_is_grad_omega_of_target_minus_logits_even_at_zero_targets(alpha, x64):
    z = rand((4, 5), dtype=jnp.float64)
    t = jax.nn.softmax(rand((4, 5), seed=3, dtype=jnp.float64)).at[:, 1].set(0.0)
    t = t / t.sum(-1, keepdims=True)
    got = jax.grad(lambda t: loss_fn(alpha)(z, t, reduction="sum"))(t)
    with np.errstate(divide="ignore"):
        # ∇Ω_α(t) = t^(α−1)/(α−1), log t + 1 at α = 1 (−inf at a zero target)
        grad_omega = np.log(t) + 1 if alpha == 1.0 else t ** (alpha - 1) / (alpha - 1)
    np.testing.assert_allclose(got, grad_omega - z, rtol=1e-10)


def test_label_gradient_at_a_zero_target_with_a_neg_inf_logit_is_inf_not_zero():
    z = jnp.array([[1.0, -jnp.inf, 0.0]])
    t = jnp.array([[0.5, 0.0, 0.5]])
    assert np.isfinite(jsoftmax.sparsemax_loss(z, t))
    g = jax.grad(lambda t: jsoftmax.sparsemax_loss(z, t))(t)
    assert np.isposinf(g[0, 1]) and np.all(np.isfinite(g[0, jnp.array([0, 2])]))
    # a masked class is not a target at all: its label gradient is 0
    gm = jax.grad(lambda t: jsoftmax.sparsemax_loss(z, t, where=z > -jnp.inf))(t)
    assert gm[0, 1] == 0


def test_entmax_loss_alpha_gradient_matches_finite_differences(x64):
    z = rand((5, 6), dtype=jnp.float64)
    y = jnp.array([0, 1, 2, 3, 4])
    t = jax.nn.softmax(rand((5, 6), seed=3, dtype=jnp.float64))
    a = jnp.array([1.2, 1.4, 1.7, 2.2, 3.0])
    for lab in (y, t):
        f = lambda a: jsoftmax.entmax_loss(z, lab, a, reduction="sum", n_iter=200)  # noqa: E731, B023
        check_grads(f, (a,), order=1, modes=["rev"], eps=1e-5)


def test_target_that_does_not_sum_to_one_is_still_the_fenchel_young_loss_of_the_logits(x64):
    z = rand((3, 5), dtype=jnp.float64) + 40.0
    t = jnp.array([[0.2, 0.2, 0.2, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0], [0.0] * 5])
    got = jsoftmax.sparsemax_loss(z, t, reduction="none")
    np.testing.assert_allclose(got, ref_loss(2.0, z, np.asarray(t)), rtol=1e-10)
    check_grads(lambda z, t: jsoftmax.sparsemax_loss(z, t), (z, t), order=1, modes=["rev"])


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_hessian_forward_over_reverse_is_the_normaliser_jacobian(alpha, x64):
    z = _smooth(alpha, count=1)[0]
    h = jax.hessian(lambda z: loss_fn(alpha)(z[None], jnp.array([2])))(z)
    jac = jsoftmax.entmax_jacobian(z, alpha) if alpha != 2.0 else jsoftmax.sparsemax_jacobian(z)
    np.testing.assert_allclose(h, jac, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------------ options


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_one_hot_probability_labels_equal_integer_labels_with_class_weights(alpha):
    z = rand((6, 5))
    y = jnp.array([0, 1, 2, 3, 4, 2])
    w = jnp.array([1.0, 2.0, 0.5, 1.0, 3.0])
    t = jax.nn.one_hot(y, 5)
    for red in ["mean", "sum", "none"]:
        a = loss_fn(alpha)(z, y, weight=w, reduction=red)
        b = loss_fn(alpha)(z, t, weight=w, reduction=red)
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_ignore_index_and_example_mask_contribute_nothing(alpha):
    z = rand((5, 4))
    y = jnp.array([0, -100, 2, 3, 1])
    where = jnp.array([True, True, True, False, True])
    f = loss_fn(alpha)
    got = f(z, y, ignore_index=-100, where=where, reduction="none")
    np.testing.assert_array_equal(got[jnp.array([1, 3])], 0)
    keep = jnp.array([0, 2, 4])
    np.testing.assert_allclose(
        f(z, y, ignore_index=-100, where=where), f(z[keep], y[keep]), rtol=1e-6
    )
    g = jax.grad(lambda z: f(z, y, ignore_index=-100, where=where))(z)
    np.testing.assert_array_equal(g[jnp.array([1, 3])], 0)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_class_mask_leaves_the_normaliser_and_the_target(alpha):
    z = rand((4, 6))
    y = jnp.array([0, 1, 2, 5])
    mask = jnp.array([True, True, True, False, True, True])
    f = loss_fn(alpha)
    got = f(z, y, where=jnp.broadcast_to(mask, z.shape), reduction="none")
    live = jnp.array([0, 1, 2, 4, 5])
    want = f(z[:, live], jnp.array([0, 1, 2, 4]), reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # a [1, C] mask broadcasts the same way
    np.testing.assert_allclose(f(z, y, where=mask[None], reduction="none"), got, rtol=1e-6)
    g = jax.grad(lambda z: f(z, y, where=mask[None]))(z)
    np.testing.assert_array_equal(g[:, 3], 0)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_every_example_masked_mean_is_zero_with_zero_gradient(alpha):
    z = rand((3, 4))
    y = jnp.array([0, 1, 2])
    f = loss_fn(alpha)
    for where in (jnp.zeros(3, bool), jnp.zeros((3, 4), bool)):
        assert f(z, y, where=where) == 0
        np.testing.assert_array_equal(jax.grad(lambda z: f(z, y, where=where))(z), 0)  # noqa: B023


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_out_of_range_label_raises_when_concrete_and_is_nan_under_jit(alpha):
    z = rand((3, 4))
    f = loss_fn(alpha)
    with pytest.raises(ValueError, match="labels"):
        f(z, jnp.array([0, 4, 1]))
    bad = jax.jit(lambda z, y: f(z, y, reduction="none"))(z, jnp.array([0, 4, -1]))
    assert np.isfinite(bad[0]) and np.all(np.isnan(bad[1:]))
    g = jax.jit(jax.grad(lambda z, y: f(z, y)))(z, jnp.array([0, 4, 1]))
    assert np.all(np.isnan(g[1]))


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.uint8, jnp.int16, jnp.int64])
def test_narrow_and_wide_integer_label_dtypes(dtype):
    z = rand((3, 300))
    y = {jnp.int8: jnp.array([0, 100, 127]), jnp.uint8: jnp.array([0, 200, 255])}.get(
        dtype, jnp.array([0, 250, 299])
    )
    want = jsoftmax.sparsemax_loss(z, y.astype(jnp.int32), reduction="none")
    with jax.enable_x64(dtype == jnp.int64):
        got = jsoftmax.sparsemax_loss(z, y.astype(dtype), reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_ignore_index_with_uint8_labels_does_not_wrap():
    z = rand((3, 4))
    y = jnp.array([0, 1, 2], jnp.uint8)
    np.testing.assert_allclose(
        jsoftmax.sparsemax_loss(z, y, ignore_index=-100), jsoftmax.sparsemax_loss(z, y)
    )


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_tuple_class_axes_flatten_in_the_order_given(alpha):
    z = rand((2, 3, 4))
    y = jnp.array([5, 11])
    got = loss_fn(alpha)(z, y, axis=(1, 2), reduction="none")
    want = loss_fn(alpha)(z.reshape(2, 12), y, reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-6)
    got_t = loss_fn(alpha)(jnp.swapaxes(z, 1, 2), y, axis=(2, 1), reduction="none")
    np.testing.assert_allclose(got_t, want, rtol=1e-6)


# -------------------------------------------------------------------------- edge inputs


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_neg_inf_logit_off_label_is_fine_and_at_label_gives_inf(alpha):
    z = rand((2, 5)).at[:, 3].set(-jnp.inf)
    f = loss_fn(alpha)
    ok = f(z, jnp.array([0, 1]), reduction="none")
    assert np.all(np.isfinite(ok))
    g = jax.grad(lambda z: f(z, jnp.array([0, 1])))(z)
    assert np.all(np.isfinite(g)) and np.all(g[:, 3] == 0)
    assert np.all(np.isposinf(f(z, jnp.array([3, 3]), reduction="none")))


@pytest.mark.parametrize("alpha", [1.5, 2.0])
@pytest.mark.parametrize("bad", [jnp.inf, jnp.nan], ids=["inf", "nan"])
def test_inf_or_nan_logit_makes_that_example_nan(alpha, bad):
    z = rand((3, 4)).at[1, 2].set(bad)
    got = loss_fn(alpha)(z, jnp.array([0, 1, 2]), reduction="none")
    assert np.isnan(got[1]) and np.all(np.isfinite(got[jnp.array([0, 2])]))


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
@pytest.mark.parametrize("base", [1e4, 3e7])
def test_huge_logits_cost_nothing(alpha, base):
    d = jnp.array([[0.0, -2.0, -4.0, 2.0], [4.0, 0.0, -2.0, 2.0]])  # multiples of ulp(3e7) = 2
    y = jnp.array([1, 3])
    f = loss_fn(alpha)
    np.testing.assert_allclose(
        f(d + base, y, reduction="none"), f(d, y, reduction="none"), atol=1e-6
    )
    np.testing.assert_allclose(
        jax.grad(lambda z: f(z, y))(d + base), jax.grad(lambda z: f(z, y))(d), atol=1e-6
    )


@pytest.mark.parametrize("alpha", [1.5, 2.0])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_logits_give_a_float32_loss_and_gradient_in_their_dtype(alpha, dtype):
    z = rand((4, 6)).astype(dtype)
    y = jnp.array([0, 1, 2, 3])
    got = loss_fn(alpha)(z, y)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, loss_fn(alpha)(z.astype(jnp.float32), y), rtol=1e-6)
    assert jax.grad(lambda z: loss_fn(alpha)(z, y))(z).dtype == dtype


def test_bad_options_raise_naming_the_argument():
    z = rand((3, 4))
    y = jnp.array([0, 1, 2])
    with pytest.raises(ValueError, match="reduction"):
        jsoftmax.sparsemax_loss(z, y, reduction="avg")
    with pytest.raises(ValueError, match="alpha"):
        jsoftmax.entmax_loss(z, y, 0.9)
    with pytest.raises(ValueError, match="n_iter"):
        jsoftmax.entmax_loss(z, y, 1.3, n_iter=-1)
    with pytest.raises(ValueError, match="ignore_index"):
        jsoftmax.sparsemax_loss(z, jax.nn.one_hot(y, 4), ignore_index=0)
    with pytest.raises(ValueError, match="weight"):
        jsoftmax.sparsemax_loss(z, y, weight=jnp.ones(3))
    with pytest.raises(TypeError, match="labels"):
        jsoftmax.entmax_loss(z, y.astype(bool))
    with pytest.raises(ValueError, match="alpha"):
        jsoftmax.entmax_loss(z, y, jnp.ones((2,)))


def test_array_alpha_not_above_one_gives_nan_for_its_examples():
    z = rand((3, 4))
    got = jsoftmax.entmax_loss(
        z, jnp.array([0, 1, 2]), jnp.array([1.5, 1.0, 2.0]), reduction="none"
    )
    assert np.isnan(got[1]) and np.all(np.isfinite(got[jnp.array([0, 2])]))


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_jit_vmap_compositions(alpha):
    z = rand((3, 4, 5))
    y = jnp.array([[0, 1, 2, 3]] * 3)
    f = lambda z, y: loss_fn(alpha)(z, y, reduction="sum")  # noqa: E731
    want = jnp.stack([f(z[i], y[i]) for i in range(3)])
    np.testing.assert_allclose(jax.vmap(f)(z, y), want, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(z, y), want, rtol=1e-6)
    g = jax.vmap(jax.grad(f))(z, y)
    np.testing.assert_allclose(
        jax.jit(jax.grad(lambda z: jax.vmap(f)(z, y).sum()))(z), g, atol=1e-6
    )


def test_alpha_array_must_broadcast_to_the_examples_and_the_error_says_so():
    z = rand((4, 5))
    with pytest.raises(ValueError, match=r"broadcastable to \(4,\).*got shape \(3,\)"):
        jsoftmax.entmax_loss(z, jnp.arange(4), jnp.ones(3))
    np.testing.assert_allclose(
        jsoftmax.entmax_loss(z, jnp.arange(4), jnp.full(4, 1.3), reduction="none"),
        jsoftmax.entmax_loss(z, jnp.arange(4), 1.3, reduction="none"),
        rtol=1e-6,
    )


def test_integer_label_on_a_masked_class_scores_its_logit_and_can_be_negative():
    z = jnp.array([[2.0, 1.0, 0.5]])
    where = jnp.array([[False, True, True]])
    got = jsoftmax.sparsemax_loss(z, jnp.array([0]), where=where, reduction="none")
    p = jsoftmax.sparsemax(z, where=where)
    want = jnp.sum(p * z) - 0.5 * jnp.sum(p**2) - z[0, 0] + 0.5
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] < 0
    # probability mass on the masked class is dropped from the target instead: t' = 0, so
    # L = ⟨z, p⟩ − (½‖p‖² − ½) − ⟨z, t'⟩ + (½‖t'‖² − ½)
    t = jnp.array([[1.0, 0.0, 0.0]])
    dropped = jsoftmax.sparsemax_loss(z, t, where=where, reduction="none")
    np.testing.assert_allclose(dropped, jnp.sum(p * z) - 0.5 * jnp.sum(p**2), rtol=1e-6)


def test_class_weights_with_probability_labels_weigh_each_example_by_its_expected_weight():
    z = rand((3, 4))
    t = jax.nn.softmax(rand((3, 4), seed=5))
    w = jnp.array([1.0, 2.0, 0.5, 3.0])
    per = jsoftmax.sparsemax_loss(z, t, reduction="none")
    omega = t @ w
    np.testing.assert_allclose(
        jsoftmax.sparsemax_loss(z, t, weight=w, reduction="none"), omega * per, rtol=1e-6
    )
    np.testing.assert_allclose(
        jsoftmax.sparsemax_loss(z, t, weight=w), jnp.sum(omega * per) / jnp.sum(omega), rtol=1e-6
    )
