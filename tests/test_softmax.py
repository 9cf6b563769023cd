"""softmax, log_softmax, logsumexp: values, analytic gradients, masks, edge inputs, transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals
from jax.test_util import check_grads

import jsoftmax
from jsoftmax import fwd

FNS = {
    "softmax": (jsoftmax.softmax, jax.nn.softmax),
    "log_softmax": (jsoftmax.log_softmax, jax.nn.log_softmax),
    "logsumexp": (jsoftmax.logsumexp, jax.nn.logsumexp),
}
NAMES = list(FNS)
AXES = [-1, 0, 1, (0, 2), (-1, -2), None]


def ref64(name, x, axis=-1, where=None):
    """float64 NumPy reference, written independently of the library."""
    x = np.asarray(x, np.float64)
    if where is not None:
        x = np.where(np.broadcast_to(where, x.shape), x, -np.inf)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    s = np.sum(e, axis=axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "softmax":
            return np.where(s == 0, 0.0, e / s)
        if name == "log_softmax":
            return np.where(s == 0, -np.inf, x - m - np.log(s))
        return np.squeeze(np.log(s) + m, axis=axis)


def naive(name, x, axis=-1):
    """Plain-autodiff reference: the textbook formulas, no custom rule."""
    m = jax.lax.stop_gradient(jnp.max(x, axis, keepdims=True))
    lse = jnp.log(jnp.sum(jnp.exp(x - m), axis, keepdims=True)) + m
    if name == "softmax":
        return jnp.exp(x - lse)
    if name == "log_softmax":
        return x - lse
    return jnp.squeeze(lse, axis)


def ulps(got, want, dtype):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    both = np.isfinite(want)
    assert np.array_equal(np.isfinite(got), both), "finite/non-finite pattern differs"
    assert np.array_equal(got[~both], want[~both])
    spacing = np.spacing(np.abs(want[both]).astype(dtype)).astype(np.float64)
    spacing = np.maximum(spacing, np.finfo(dtype).tiny)
    return float(np.max(np.abs(got[both] - want[both]) / spacing, initial=0.0))


def rand(shape, seed=0, scale=3.0, dtype=jnp.float32):
    return (scale * jax.random.normal(jax.random.key(seed), shape)).astype(dtype)


# ------------------------------------------------------------------------------- values


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("axis", AXES, ids=str)
def test_matches_jax_nn(name, axis):
    ours, theirs = FNS[name]
    x = rand((3, 4, 5))
    np.testing.assert_allclose(ours(x, axis), theirs(x, axis), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("axis", [-1, (0, 2)], ids=str)
def test_where_matches_jax_nn(name, axis):
    ours, theirs = FNS[name]
    x = rand((3, 4, 5))
    where = jax.random.bernoulli(jax.random.key(1), 0.7, (3, 4, 5)).at[:, :, 0].set(True)
    want = theirs(x, axis, where=where)
    np.testing.assert_allclose(ours(x, axis, where=where), want, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("base", [0.0, 1e4, -1e4, 3e30])
def test_huge_inputs_match_float64_in_ulps(name, base):
    """Values near ±1e4 (or 3e30) with O(1) spreads: shifting by the max is exact here, so the
    float32 result must be the float64 answer to a few ulps."""
    ours, _ = FNS[name]
    # integer multiples of a quantum that base ± 4096 quanta represents exactly
    q = 2.0**-8 if base == 0 else float(np.spacing(np.float32(abs(base))))
    k = jax.random.randint(jax.random.key(2), (16, 33), -2048, 2048)
    x = jnp.float32(base) + jnp.float32(q) * k.astype(jnp.float32)
    got, want = ours(x), ref64(name, x)
    if name == "log_softmax":
        # z − log Σ: each term is good to an ulp of its own size, so measure in ulps of 1 + |out|
        scale = np.spacing(np.float32(1.0) + np.abs(want).astype(np.float32))
        assert float(np.max(np.abs(np.asarray(got, np.float64) - want) / scale)) <= 4
    else:
        assert ulps(got, want, np.float32) <= 4


@pytest.mark.parametrize("name", NAMES)
def test_plus_minus_1e4_in_one_slice(name):
    ours, _ = FNS[name]
    x = jnp.array([[1e4, -1e4, 0.0, 1e4 - 2.0], [-1e4, -1e4, -1e4, -1e4]], jnp.float32)
    got, want = np.asarray(ours(x), np.float64), ref64(name, x)
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(np.float32).eps, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_scales_within_the_inherent_float32_error(name):
    """Inputs of very different magnitudes: rounding x − max in float32 is an error no float32
    algorithm avoids (relative |x − max|·eps in exp); beyond that we add at most a few ulps."""
    ours, theirs = FNS[name]
    x = rand((16, 33), seed=2, scale=1.0) * jnp.logspace(-3, 2, 33)[None, :]
    got, want = np.asarray(ours(x), np.float64), ref64(name, x)
    x64_ = np.asarray(x, np.float64)
    z = np.abs(x64_ - np.max(x64_, -1, keepdims=True))
    p = ref64("softmax", x)
    mean_z = np.sum(p * z, -1, keepdims=True)  # how far the rounding of z moves the normaliser
    eps = float(np.finfo(np.float32).eps)
    if name == "softmax":
        bound = np.abs(want) * (4 + z + mean_z) * eps
    elif name == "log_softmax":
        bound = (4 + np.abs(want) + z + mean_z) * eps
    else:
        bound = (4 * np.abs(want) + mean_z[..., 0]) * eps
    bound = bound + np.finfo(np.float32).tiny  # XLA flushes float32 subnormals to zero
    assert bool(np.all(np.abs(got - want) <= bound))
    np.testing.assert_allclose(got, theirs(x, -1), rtol=4e-6, atol=1e-30)


@pytest.mark.parametrize("name", NAMES)
def test_float64(name, x64):
    ours, _ = FNS[name]
    x = rand((6, 7), dtype=jnp.float64)
    out = ours(x)
    assert out.dtype == jnp.float64
    assert ulps(out, ref64(name, x), np.float64) <= 4


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_computed_in_float32(name, dtype):
    ours, _ = FNS[name]
    x = rand((8, 64), dtype=dtype)
    out = ours(x)
    assert out.dtype == dtype
    # exactly the float32 computation rounded once to the half dtype
    np.testing.assert_array_equal(out, ours(x.astype(jnp.float32)).astype(dtype))
    g = jax.grad(lambda x: jnp.sum(ours(x).astype(jnp.float32) ** 2))(x)
    assert g.dtype == dtype and bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_and_bool_inputs_raise(name, dtype):
    ours, _ = FNS[name]
    with pytest.raises(TypeError, match=r"x must have a floating-point dtype.*got (int32|bool)"):
        ours(jnp.ones(3, dtype))


def test_softmax_sums_to_one_and_is_positive():
    y = jsoftmax.softmax(rand((50, 40), scale=20.0), (0, 1))
    assert bool(jnp.all(y >= 0))
    np.testing.assert_allclose(jnp.sum(y), 1.0, rtol=1e-6)


# ---------------------------------------------------------------------- edges and masks


def test_neg_inf_entries_get_zero_probability_and_zero_gradient():
    x = jnp.array([[0.5, -jnp.inf, 1.5, -jnp.inf]])
    w = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    y = jsoftmax.softmax(x)
    assert y[0, 1] == 0 and y[0, 3] == 0
    for loss in (lambda x: jnp.sum(jsoftmax.softmax(x) * w), lambda x: jsoftmax.logsumexp(x)[0]):
        g = jax.grad(loss)(x)
        assert g[0, 1] == 0 and g[0, 3] == 0 and bool(jnp.all(jnp.isfinite(g)))
    lp = jsoftmax.log_softmax(x)
    assert bool(jnp.isneginf(lp[0, 1]))
    g = jax.grad(lambda x: jnp.sum(jnp.where(jnp.isfinite(lp), jsoftmax.log_softmax(x), 0.0)))(x)
    assert g[0, 1] == 0 and g[0, 3] == 0 and bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("bad", [jnp.inf, jnp.nan])
@pytest.mark.parametrize("name", NAMES)
def test_inf_or_nan_poisons_only_its_own_slice(name, bad):
    ours, _ = FNS[name]
    x = rand((3, 5)).at[1, 2].set(bad)
    out = ours(x)
    clean = ours(x.at[1].set(0.0))
    np.testing.assert_array_equal(out[0], clean[0])
    np.testing.assert_array_equal(out[2], clean[2])
    if name == "logsumexp" and bad == jnp.inf:
        assert out[1] == jnp.inf
    else:
        assert bool(jnp.all(jnp.isnan(out[1])))


@pytest.mark.parametrize("how", ["where", "where_and_neginf"])
def test_fully_masked_slice(how):
    x = rand((3, 4))
    where = jnp.ones((3, 4), bool).at[1].set(False)
    if how == "where_and_neginf":
        # the remedy the docstrings give for slices that are entirely -inf
        x = x.at[1].set(-jnp.inf)
        where = x > -jnp.inf
    np.testing.assert_array_equal(jsoftmax.softmax(x, where=where)[1], jnp.zeros(4))
    assert bool(jnp.all(jnp.isneginf(jsoftmax.log_softmax(x, where=where)[1])))
    assert bool(jnp.isneginf(jsoftmax.logsumexp(x, where=where)[1]))
    ct = rand((3, 4), seed=5)
    losses = {
        "softmax": lambda x: jnp.sum(jsoftmax.softmax(x, where=where) * ct),
        "log_softmax": lambda x: jnp.sum(
            jnp.where(jnp.arange(3)[:, None] == 1, 0.0, jsoftmax.log_softmax(x, where=where))
        ),
        "log_softmax_ct": lambda x: jnp.sum(
            jnp.where(where, jsoftmax.log_softmax(x, where=where), 0.0) * ct
        ),
        "logsumexp": lambda x: jnp.sum(
            jnp.where(jnp.arange(3) == 1, 0.0, jsoftmax.logsumexp(x, where=where))
        ),
    }
    for name, loss in losses.items():
        g = jax.grad(loss)(x)
        np.testing.assert_array_equal(g[1], jnp.zeros(4), err_msg=name)
        assert bool(jnp.all(jnp.isfinite(g))), name


def test_unmasked_all_neginf_slice_is_nan_like_jax_nn():
    x = rand((3, 4)).at[1].set(-jnp.inf)
    for name in ["softmax", "log_softmax"]:
        ours, theirs = FNS[name]
        assert bool(jnp.all(jnp.isnan(ours(x)[1])))
        np.testing.assert_array_equal(ours(x)[jnp.array([0, 2])], theirs(x)[jnp.array([0, 2])])
        assert bool(jnp.all(jnp.isnan(theirs(x)[1])))
    # logsumexp has a well-defined answer there, -inf, with a zero gradient
    assert bool(jnp.isneginf(jsoftmax.logsumexp(x)[1]))
    g = jax.grad(lambda x: jnp.sum(jnp.where(jnp.arange(3) == 1, 0.0, jsoftmax.logsumexp(x))))(x)
    assert bool(jnp.all(g[1] == 0))


def test_log_softmax_gradient_at_neginf_input_is_exact(x64):
    # out_i = x_i − lse(x): ∂out_i/∂x_i = 1 − s_i = 1 at x_i = -inf, as autodiff of jax.nn says
    x = jnp.array([0.5, -jnp.inf, 1.5])
    ct = jnp.array([0.3, 0.7, -0.2])
    _, vjp = jax.vjp(jsoftmax.log_softmax, x)
    _, vjp_nn = jax.vjp(jax.nn.log_softmax, x)
    np.testing.assert_allclose(vjp(ct)[0], vjp_nn(ct)[0], rtol=1e-12)
    assert vjp(ct)[0][1] == 0.7


def test_masked_entries_values():
    x = rand((2, 5))
    where = jnp.array([[True, False, True, True, False], [True] * 5])
    assert jsoftmax.softmax(x, where=where)[0, 1] == 0
    assert bool(jnp.isneginf(jsoftmax.log_softmax(x, where=where)[0, 4]))
    np.testing.assert_allclose(
        jsoftmax.logsumexp(x, where=where)[0], jsoftmax.logsumexp(x[0, jnp.array([0, 2, 3])])
    )
    # a broadcastable mask (one per column) behaves like its broadcast
    col = jnp.array([True, False, True, True, True])
    np.testing.assert_array_equal(
        jsoftmax.softmax(x, where=col), jsoftmax.softmax(x, where=jnp.broadcast_to(col, x.shape))
    )


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch(name):
    ours, theirs = FNS[name]
    x = jnp.zeros((0, 4))
    out = jax.jit(ours)(x)
    want = theirs(x, axis=-1)
    assert out.dtype == want.dtype == x.dtype
    np.testing.assert_array_equal(out, want)  # the same (empty) value: shape [0, 4] or [0]

    def loss(f):
        return jax.jit(jax.value_and_grad(lambda x: jnp.sum(f(x, axis=-1))))

    value, grad = loss(ours)(x)
    assert float(value) == 0.0  # a sum over no rows, not nan
    assert grad.shape == x.shape and grad.dtype == x.dtype  # a gradient, of no elements
    np.testing.assert_array_equal(grad, loss(theirs)(x)[1])


# ------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("axis", [-1, 0, (0, 2)], ids=str)
@pytest.mark.parametrize("masked", [False, True])
def test_check_grads_order2(name, axis, masked, x64):
    ours, _ = FNS[name]
    x = rand((3, 4, 5), dtype=jnp.float64)
    where = None
    if masked:
        where = jax.random.bernoulli(jax.random.key(3), 0.7, (3, 4, 5)).at[0, 0].set(True)
        where = where.at[:, :, 0].set(True).at[0, :, :].set(True)
    check_grads(lambda x: ours(x, axis, where=where), (x,), order=2, modes=["rev"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("axis", [-1, 1, (0, 1)], ids=str)
def test_custom_gradient_equals_autodiff_of_reference(name, axis, x64):
    ours, _ = FNS[name]
    x = rand((4, 6, 3), dtype=jnp.float64)
    out_shape = jax.eval_shape(lambda x: ours(x, axis), x).shape
    ct = rand(out_shape, seed=7, dtype=jnp.float64)
    _, vjp_ours = jax.vjp(lambda x: ours(x, axis), x)
    _, vjp_ref = jax.vjp(lambda x: naive(name, x, axis), x)
    np.testing.assert_allclose(vjp_ours(ct)[0], vjp_ref(ct)[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("jac_fn", ["softmax", "log_softmax"])
def test_vjp_equals_vT_J(jac_fn, x64):
    fn = getattr(jsoftmax, jac_fn)
    jac = getattr(jsoftmax, f"{jac_fn}_jacobian")
    x = rand((5, 7), dtype=jnp.float64)
    v = rand((5, 7), seed=9, dtype=jnp.float64)
    _, vjp = jax.vjp(fn, x)
    np.testing.assert_allclose(vjp(v)[0], jnp.einsum("bi,bij->bj", v, jac(x)), rtol=1e-12)


def test_logsumexp_gradient_is_softmax():
    x = rand((4, 9))
    np.testing.assert_allclose(
        jax.grad(lambda x: jnp.sum(jsoftmax.logsumexp(x)))(x), jsoftmax.softmax(x), rtol=1e-6
    )


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_rule_saves_only_the_output(name):
    """A refactor that starts saving the input (or anything else) must fail here."""
    ours, _ = FNS[name]
    x = rand((8, 16))
    y, vjp = jax.vjp(ours, x)
    residuals = jax.tree_util.tree_leaves(vjp)
    assert len(residuals) == 1
    np.testing.assert_array_equal(residuals[0], y)
    # with a mask, log_softmax also keeps the (unbroadcast) boolean mask, softmax does not
    where = jnp.arange(16)[None, :] < 12
    y, vjp = jax.vjp(lambda x: ours(x, where=where), x)
    residuals = jax.tree_util.tree_leaves(vjp)
    floats = [r for r in residuals if r.dtype != jnp.bool_]
    assert len(floats) == 1
    np.testing.assert_array_equal(floats[0], y)
    assert [r.shape for r in residuals if r.dtype == jnp.bool_] == (
        [(1, 16)] if name == "log_softmax" else []
    )


def test_logsumexp_saves_the_input_and_two_numbers_per_slice(capsys):
    # the input itself (no copy) and, per slice, the shift and the log-sum: kept apart so the
    # backward never forms exp(x − lse) from a rounded lse (tests/test_gradient_ulps.py)
    x = rand((8, 16))
    print_saved_residuals(jsoftmax.logsumexp, x)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("f32[8,16] from the argument"), lines
    assert "f32[8,1] output of stop_gradient" in lines[1] and "(max_shifted)" in lines[1], lines
    assert "f32[8,1] output of log" in lines[2], lines


# ------------------------------------------------------------------------------ transforms


@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_and_grad_compositions(name):
    ours, _ = FNS[name]
    x = rand((4, 5, 6))

    def loss(x):
        return jnp.sum(jnp.sin(ours(x)))

    np.testing.assert_allclose(jax.jit(ours)(x), ours(x), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(ours)(x), jnp.stack([ours(xi) for xi in x]), rtol=1e-6)
    g = jax.grad(loss)(x)
    # vmap-of-grad is per-example grad; grad-of-vmap is grad of the summed batch: both equal g
    np.testing.assert_allclose(jax.vmap(jax.grad(loss))(x), g, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        jax.grad(lambda x: jnp.sum(jax.vmap(loss)(x)))(x), g, rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(x), g, rtol=1e-5, atol=1e-7)
    # grad-of-grad (Hessian diagonal-ish quantity) agrees with the plain reference
    hvp = jax.grad(lambda x: jnp.sum(jax.grad(loss)(x) ** 2))(x)
    hvp_ref = jax.grad(
        lambda x: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.sin(naive(name, x))))(x) ** 2)
    )(x)
    np.testing.assert_allclose(hvp, hvp_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_scan_and_checkpoint(name):
    ours, _ = FNS[name]
    xs = rand((3, 4, 5))

    def body(carry, x):
        return carry + jnp.sum(ours(x) ** 2), None

    def loss_scan(xs):
        return jax.lax.scan(body, 0.0, xs)[0]

    def loss_loop(xs):
        return sum(jnp.sum(ours(x) ** 2) for x in xs)

    np.testing.assert_allclose(jax.grad(loss_scan)(xs), jax.grad(loss_loop)(xs), rtol=1e-5)
    remat = jax.checkpoint(lambda x: jnp.sum(ours(x) ** 2))
    np.testing.assert_allclose(
        jax.grad(remat)(xs), jax.grad(lambda x: jnp.sum(ours(x) ** 2))(xs), rtol=1e-6
    )


@pytest.mark.parametrize("name", NAMES)
def test_sharded_input_keeps_values(name):
    ours, _ = FNS[name]
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    x = rand((2 * jax.device_count(), 8))
    xs = jax.device_put(x, sharding)
    np.testing.assert_allclose(jax.jit(ours)(xs), ours(x), rtol=1e-6)
    g = jax.jit(jax.grad(lambda x: jnp.sum(ours(x) ** 2)))(xs)
    np.testing.assert_allclose(g, jax.grad(lambda x: jnp.sum(ours(x) ** 2))(x), rtol=1e-6)


# ----------------------------------------------------------------------- forward mode twins


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("masked", [False, True])
def test_fwd_twins_match_values_and_support_forward_mode(name, masked, x64):
    ours = FNS[name][0]
    twin = getattr(fwd, name)
    x = rand((3, 5), dtype=jnp.float64)
    where = jnp.array([True, True, False, True, True]) if masked else None
    np.testing.assert_array_equal(twin(x, where=where), ours(x, where=where))
    check_grads(lambda x: twin(x, where=where), (x,), order=2, modes=["fwd", "rev"])
    # the custom_vjp version rejects forward mode on itself; the twin exists for exactly this
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jacfwd(lambda x: ours(x, where=where))(x)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jacfwd(jax.jacfwd(lambda x: ours(x, where=where)))(x)

    # forward-over-reverse of the custom_vjp version works and agrees with the twin
    def loss(fn):
        def f(x):
            out = fn(x, where=where)
            live = jnp.ones(out.shape, bool) if where is None or out.ndim < 2 else where
            return jnp.sum(jnp.where(live, jnp.sin(out), 0.0))  # masked log-probs are -inf

        return f

    hess_ours = jax.jit(jax.hessian(loss(ours)))(x)
    hess_twin = jax.jit(jax.jacfwd(jax.jacfwd(loss(twin))))(x)
    np.testing.assert_allclose(hess_ours, hess_twin, rtol=1e-10, atol=1e-12)


def test_hessian_of_twin_loss_equals_reverse_over_reverse_of_custom_vjp(x64):
    z = rand((6,), dtype=jnp.float64)
    t = jax.nn.softmax(rand((6,), seed=4, dtype=jnp.float64))

    def loss_fwd(z):
        return -jnp.sum(t * fwd.log_softmax(z)) + fwd.logsumexp(z) ** 2

    def loss_vjp(z):
        return -jnp.sum(t * jsoftmax.log_softmax(z)) + jsoftmax.logsumexp(z) ** 2

    h = jax.jit(jax.hessian(loss_fwd))(z)
    h_rev = jax.jit(jax.jacrev(jax.jacrev(loss_vjp)))(z)
    np.testing.assert_allclose(h, h_rev, rtol=1e-12, atol=1e-14)
    # Hessian-vector product as jvp-of-grad
    v = rand((6,), seed=8, dtype=jnp.float64)
    _, hv = jax.jit(lambda z, v: jax.jvp(jax.grad(loss_fwd), (z,), (v,)))(z, v)
    np.testing.assert_allclose(hv, h @ v, rtol=1e-12, atol=1e-14)


def test_jacfwd_of_twin_equals_dense_jacobian(x64):
    x = rand((4, 5), dtype=jnp.float64)
    for name in ["softmax", "log_softmax"]:
        jac = jax.jit(jax.vmap(jax.jacfwd(getattr(fwd, name))))(x)
        np.testing.assert_allclose(jac, getattr(jsoftmax, f"{name}_jacobian")(x), rtol=1e-12)


# ------------------------------------------------------------------------------ jacobians


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_jacobians_match_jacrev(axis, x64):
    x = rand((3, 4, 5), dtype=jnp.float64)
    for name in ["softmax", "log_softmax"]:
        dense = getattr(jsoftmax, f"{name}_jacobian")(x, axis)
        xm = jnp.moveaxis(x, axis, -1)
        want = jax.jit(jax.vmap(jax.vmap(jax.jacrev(getattr(jax.nn, name)))))(xm)
        assert dense.shape == (*xm.shape, xm.shape[-1])
        np.testing.assert_allclose(dense, want, rtol=1e-12, atol=1e-15)
    j = jsoftmax.softmax_jacobian(x, axis)
    np.testing.assert_allclose(jnp.sum(j, -1), 0.0, atol=1e-15)
    np.testing.assert_allclose(jnp.sum(j, -2), 0.0, atol=1e-15)


def test_jacobian_rejects_tuple_axis():
    with pytest.raises(TypeError, match="single int"):
        jsoftmax.softmax_jacobian(jnp.ones((2, 3)), (0, 1))


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("name", NAMES)
def test_bad_options_raise_with_values(name):
    ours, _ = FNS[name]
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"axis=2 is out of range for an array of rank 2"):
        ours(x, 2)
    with pytest.raises(ValueError, match="repeats"):
        ours(x, (1, -1))
    with pytest.raises(TypeError, match="axis must be an int"):
        ours(x, 1.0)
    with pytest.raises(ValueError, match=r"where of shape \(4,\) is not broadcastable"):
        ours(x, where=jnp.ones(4, bool))
    with pytest.raises(TypeError, match="where must be a boolean mask; got dtype float32"):
        ours(x, where=jnp.ones((2, 3)))
    with pytest.raises(TypeError):
        ours(x, -1, None)  # where is keyword-only


def test_logsumexp_keepdims():
    x = rand((2, 3, 4))
    assert jsoftmax.logsumexp(x, (0, 2), keepdims=True).shape == (1, 3, 1)
    assert jsoftmax.logsumexp(x, (0, 2)).shape == (3,)
    with pytest.raises(TypeError, match="keepdims must be a bool"):
        jsoftmax.logsumexp(x, keepdims=1)
