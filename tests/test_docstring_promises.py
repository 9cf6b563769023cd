"""Every promise in a public docstring's Notes (and its Args/Returns) has a test that names it.

Each test is preceded by a comment quoting the function(s) and the first words of the promise it
checks, so that every Notes bullet can be mapped to its test (and back). The vocab-parallel
losses are covered by the multi-device subprocess tests in ``test_sharded.py``.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jsoftmax
from jsoftmax import fwd

INF, NAN = float("inf"), float("nan")

SOFTMAX = {"softmax": jsoftmax.softmax, "fwd.softmax": fwd.softmax}
LOG_SOFTMAX = {"log_softmax": jsoftmax.log_softmax, "fwd.log_softmax": fwd.log_softmax}
LOGSUMEXP = {"logsumexp": jsoftmax.logsumexp, "fwd.logsumexp": fwd.logsumexp}
ALL_SIX = {**SOFTMAX, **LOG_SOFTMAX, **LOGSUMEXP}
FWD_TWINS = (fwd.softmax, fwd.log_softmax, fwd.logsumexp)
JACOBIANS = {
    "softmax_jacobian": jsoftmax.softmax_jacobian,
    "log_softmax_jacobian": jsoftmax.log_softmax_jacobian,
}
HALF = pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
MODE = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])


def fns(table):
    """Parametrise a test over the functions of ``table``, with their names as ids."""
    return pytest.mark.parametrize("fn", list(table.values()), ids=list(table))


def a(x, dtype=np.float32):
    return jnp.asarray(np.asarray(x, dtype))


def value_and_grads(fn, x, g, **kw):
    """``fn(x)`` and ``gᵀJ`` by reverse mode and, for the ``fwd`` twins, also by forward mode.

    Computed under one ``jit``; the value is also checked against an eager call.
    """
    f = partial(fn, **kw)

    @jax.jit
    def run(x, g):
        y, pull = jax.vjp(f, x)
        grads = {"reverse": pull(g)[0]}
        if fn in FWD_TWINS:
            grads["forward"] = jnp.tensordot(g, jax.jacfwd(f)(x), axes=g.ndim)
        return y, grads

    y, grads = run(x, g)
    np.testing.assert_array_equal(f(x), y)  # eager and jit agree (NaN matching NaN)
    return np.asarray(y), {k: np.asarray(v) for k, v in grads.items()}


def np_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - np.max(x, axis, keepdims=True))
    return e / np.sum(e, axis, keepdims=True)


def np_lse(x, axis=-1):
    x = np.asarray(x, np.float64)
    m = np.max(x, axis, keepdims=True)
    return np.squeeze(m + np.log(np.sum(np.exp(x - m), axis, keepdims=True)), axis)


def np_targets(n_classes, labels, weight=None, smoothing=0.0):
    """PyTorch's target rows ``t`` and mean weights ``ω`` (float64), from the docstring."""
    labels = np.asarray(labels)
    w = np.ones(n_classes) if weight is None else np.asarray(weight, np.float64)
    if np.issubdtype(labels.dtype, np.integer):
        t = (1 - smoothing) * np.eye(n_classes)[labels] * w[labels][:, None]
        return t + smoothing / n_classes * w[None, :], w[labels]
    t = w[None, :] * ((1 - smoothing) * labels.astype(np.float64) + smoothing / n_classes)
    return t, np.ones(len(labels))


def np_ce(logits, t, z_loss=0.0, omega=None):
    """``L_n = Σ_c t_nc (ℓ_n − z_nc) + ζ ω_n ℓ_n²`` in float64 (0 · ∞ = 0); and ``ℓ``."""
    z = np.asarray(logits, np.float64)
    lse = np_lse(z)
    with np.errstate(invalid="ignore"):
        loss = np.sum(np.where(t == 0, 0.0, t * (lse[:, None] - z)), -1)
    if z_loss:
        loss = loss + z_loss * omega * lse**2
    return loss, lse


class _Jitted:
    """``jitted.NAME(*arrays, **options)`` is ``jsoftmax.NAME`` compiled as one program.

    Used wherever a promise does not depend on the arguments being concrete: op-by-op dispatch
    compiles every primitive on its own, which costs several times more than one jit.
    """

    def __getattr__(self, name):
        fn = getattr(jsoftmax, name)
        return lambda *arrays, **options: jax.jit(partial(fn, **options))(*arrays)


jitted = _Jitted()


def jgrad(f, argnums=0):
    """``jax.grad`` compiled as one program (op-by-op dispatch compiles every op on its own)."""
    return jax.jit(jax.grad(f, argnums))


def ce_grad(fn, logits, labels, **kw):
    """Gradient of the summed per-example losses with respect to the logits (one jit)."""
    return np.asarray(jgrad(lambda z: jnp.sum(fn(z, labels, **kw)))(logits))


LOGITS = a([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])


# ============================================================================================
# softmax, log_softmax, logsumexp and their jsoftmax.fwd twins
# ============================================================================================


# softmax, fwd.softmax — "``-inf`` entries get probability 0 and a zero gradient."
@fns(SOFTMAX)
def test_softmax_neg_inf_entry_has_probability_zero_and_zero_gradient(fn):
    x = a([[1.0, -INF, 2.0], [-INF, 0.5, 0.0]])
    g = a([[1.0, 2.0, 3.0], [4.0, -1.0, 5.0]])
    y, grads = value_and_grads(fn, x, g)
    neg = np.isneginf(np.asarray(x))
    assert np.all(y[neg] == 0)
    np.testing.assert_allclose(y, np_softmax(x), rtol=1e-6)
    for mode, dx in grads.items():
        assert np.all(dx[neg] == 0), mode
        assert np.all(np.isfinite(dx)), mode


# softmax, fwd.softmax — "Masked entries are 0 with a zero gradient; ..."
@fns(SOFTMAX)
def test_softmax_masked_entry_is_zero_with_zero_gradient(fn):
    x = a([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    where = jnp.array([[True, False, True], [False, True, True]])
    g = a([[1.0, 2.0, 3.0], [4.0, -1.0, 5.0]])
    y, grads = value_and_grads(fn, x, g, where=where)
    off = ~np.asarray(where)
    assert np.all(y[off] == 0)
    np.testing.assert_allclose(y, np_softmax(np.where(off, -np.inf, x)), rtol=1e-6)
    for mode, dx in grads.items():
        assert np.all(dx[off] == 0), mode
        assert np.all(np.isfinite(dx)), mode


# softmax, fwd.softmax — "... a fully masked slice is all 0 with a zero gradient."
@fns(SOFTMAX)
def test_softmax_fully_masked_slice_is_all_zero_with_zero_gradient(fn):
    x = a([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    where = jnp.array([[True, True, False], [False, False, False]])
    g = a([[1.0, 2.0, 3.0], [4.0, -1.0, 5.0]])
    y, grads = value_and_grads(fn, x, g, where=where)
    assert np.all(y[1] == 0)
    np.testing.assert_allclose(y[0], [*np_softmax(x[0, :2]), 0.0], rtol=1e-6)
    for mode, dx in grads.items():
        assert np.all(dx[1] == 0), mode
        assert np.all(np.isfinite(dx)), mode


# softmax, fwd.softmax — "An unmasked slice whose entries are all ``-inf`` is ``NaN``, as in
# ``jax.nn`` ... Mask such slices (``where=x > -jnp.inf``) to get zeros."
@fns(SOFTMAX)
def test_softmax_unmasked_all_neg_inf_slice_is_nan_and_masking_it_gives_zeros(fn):
    x = a([[-INF, -INF, -INF], [1.0, 2.0, 3.0]])
    y = np.asarray(fn(x))
    assert np.all(np.isnan(y[0]))
    assert np.all(np.isnan(np.asarray(jax.nn.softmax(x))[0]))  # "as in jax.nn"
    np.testing.assert_allclose(y[1], np_softmax(x[1]), rtol=1e-6)
    masked = np.asarray(fn(x, where=x > -jnp.inf))
    assert np.all(masked[0] == 0)
    np.testing.assert_array_equal(masked[1], y[1])


# softmax, log_softmax (and fwd twins) — "A ``+inf`` or ``NaN`` entry makes its own slice
# ``NaN``; other slices are unaffected."
@pytest.mark.parametrize("bad", [INF, NAN], ids=["+inf", "nan"])
@fns({**SOFTMAX, **LOG_SOFTMAX})
def test_inf_or_nan_entry_makes_its_own_slice_nan_other_slices_unaffected(fn, bad):
    clean = a([[0.5, 1.0, -2.0], [1.0, 2.0, 3.0], [-1.0, 0.0, 0.25]])
    y = np.asarray(fn(clean.at[0, 1].set(bad)))
    assert np.all(np.isnan(y[0]))
    np.testing.assert_array_equal(y[1:], np.asarray(fn(clean))[1:])
    # the slices run along axis 0 as well
    y0 = np.asarray(fn(clean.at[1, 2].set(bad), 0))
    assert np.all(np.isnan(y0[:, 2]))
    np.testing.assert_array_equal(y0[:, :2], np.asarray(fn(clean, 0))[:, :2])


# softmax, log_softmax, logsumexp (and fwd twins) — "float16/bfloat16 inputs are computed in
# float32 and returned in the input dtype."
@HALF
@fns(ALL_SIX)
def test_half_precision_input_is_computed_in_float32_and_returned_in_input_dtype(fn, dtype):
    x = jnp.array([[0.1, 7.3, -3.2, 7.25], [1000.0, 1001.0, 999.5, 998.0]], dtype)
    y = fn(x)
    assert y.dtype == dtype
    want = fn(x.astype(jnp.float32)).astype(dtype)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want, np.float32))


# softmax, log_softmax, logsumexp (and fwd twins) — "Integer and boolean inputs raise
# ``TypeError``" (softmax: "rather than being silently promoted").
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_], ids=["int32", "uint8", "bool"])
@fns(ALL_SIX)
def test_integer_and_boolean_inputs_raise_type_error(fn, dtype):
    with pytest.raises(TypeError, match="floating-point"):
        fn(jnp.ones((2, 3), dtype))
    with pytest.raises(TypeError, match="floating-point"):
        jax.jit(fn)(jnp.ones((2, 3), dtype))


# softmax, fwd.softmax (Returns) — "An array of ``x``'s shape and dtype whose slices along
# ``axis`` sum to one" (summary: "positive outputs that sum to one").
@pytest.mark.parametrize("axis", [-1, 0, (0, 2), None], ids=["-1", "0", "(0,2)", "None"])
@fns(SOFTMAX)
def test_softmax_returns_x_shape_and_dtype_positive_slices_summing_to_one(fn, axis):
    x = a(np.linspace(-3.0, 3.0, 24).reshape(2, 3, 4))
    y = fn(x, axis)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.all(np.asarray(y) > 0)
    np.testing.assert_allclose(np.sum(np.asarray(y, np.float64), axis), 1.0, rtol=1e-6)


# log_softmax, fwd.log_softmax (Returns) — "An array of ``x``'s shape and dtype:
# log-probabilities along ``axis``."
@pytest.mark.parametrize("axis", [-1, 0, (0, 2), None], ids=["-1", "0", "(0,2)", "None"])
@fns(LOG_SOFTMAX)
def test_log_softmax_returns_x_shape_and_dtype_log_probabilities(fn, axis):
    x = a(np.linspace(-3.0, 3.0, 24).reshape(2, 3, 4))
    y = fn(x, axis)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_allclose(np.sum(np.exp(np.asarray(y, np.float64)), axis), 1.0, rtol=1e-6)


# logsumexp, fwd.logsumexp (Returns) — "``x``'s shape without ``axis`` (or with size-1 axes if
# ``keepdims``), in ``x``'s dtype."
@pytest.mark.parametrize(
    "axis, shape, kept",
    [
        (-1, (2, 3), (2, 3, 1)),
        (0, (3, 4), (1, 3, 4)),
        ((0, 2), (3,), (1, 3, 1)),
        (None, (), (1, 1, 1)),
    ],
    ids=["-1", "0", "(0,2)", "None"],
)
@fns(LOGSUMEXP)
def test_logsumexp_returns_x_shape_without_axis_or_size_one_axes_if_keepdims(fn, axis, shape, kept):
    x = a(np.linspace(-3.0, 3.0, 24).reshape(2, 3, 4))
    y = fn(x, axis)
    assert y.shape == shape and y.dtype == x.dtype
    np.testing.assert_allclose(y, np_lse(np.asarray(x), axis), rtol=1e-6)
    assert fn(x, axis, keepdims=True).shape == kept


# softmax, log_softmax, logsumexp (and fwd twins) (Returns) — "... in ``x``'s dtype": float64
# stays float64.
@fns(ALL_SIX)
def test_float64_input_is_returned_in_float64(fn, x64):
    x = jnp.array([[1.0, 2.0, 3.0]], jnp.float64)
    assert fn(x).dtype == jnp.float64


# softmax, log_softmax, logsumexp (and fwd twins) (Args) — "where: optional boolean mask
# broadcastable to ``x``; ``False`` entries are left out."
@fns(ALL_SIX)
def test_where_mask_broadcastable_to_x_leaves_false_entries_out(fn):
    x = a([[1.0, 2.0, 3.0, 0.5], [0.0, -1.0, 2.0, 4.0]])
    small = jnp.array([[True, False, True, True]])  # [1, n], broadcast over the rows
    full = jnp.broadcast_to(small, x.shape)
    np.testing.assert_array_equal(fn(x, where=small), fn(x, where=full))
    kept = jnp.asarray(np.asarray(x)[:, [0, 2, 3]])
    got = np.asarray(fn(x, where=small))
    if got.shape == x.shape:  # softmax / log_softmax: compare the kept entries
        got = got[:, [0, 2, 3]]
    np.testing.assert_allclose(got, fn(kept), rtol=1e-6)
    with pytest.raises(TypeError, match="boolean"):
        fn(x, where=jnp.ones(x.shape, jnp.int32))


# softmax (description) — "The gradient is the analytic vector-Jacobian product
# s ⊙ (g − ⟨g, s⟩)"; log_softmax — "x̄ = g − s Σ_j g_j"; logsumexp — "x̄ = g softmax(x)"
# (and the fwd twins, whose JVPs JAX transposes into the same VJPs).
@fns(ALL_SIX)
def test_gradient_is_the_analytic_vjp_of_the_docstring(fn, x64):
    x = jnp.array([[0.3, -1.2, 2.0, 0.7], [1.5, 0.0, -0.4, 3.1]], jnp.float64)
    s = np_softmax(x)
    if fn in (jsoftmax.logsumexp, fwd.logsumexp):
        g = jnp.array([0.7, -1.3], jnp.float64)
        want = np.asarray(g)[:, None] * s
    else:
        g = jnp.array([[1.0, -2.0, 0.5, 3.0], [0.25, 1.0, -1.0, 2.0]], jnp.float64)
        gn = np.asarray(g)
        if fn in (jsoftmax.softmax, fwd.softmax):
            want = s * (gn - np.sum(gn * s, -1, keepdims=True))
        else:
            want = gn - s * np.sum(gn, -1, keepdims=True)
    for mode, dx in value_and_grads(fn, x, g)[1].items():
        np.testing.assert_allclose(dx, want, rtol=1e-12, atol=1e-14, err_msg=mode)


# softmax, log_softmax — "The rule saves only the output."
@fns({"softmax": jsoftmax.softmax, "log_softmax": jsoftmax.log_softmax})
def test_softmax_and_log_softmax_rule_saves_only_the_output(fn):
    x = a(np.linspace(-2.0, 2.0, 12).reshape(3, 4))
    y, pull = jax.vjp(fn, x)
    residuals = jax.tree_util.tree_leaves(pull)
    assert len(residuals) == 1
    np.testing.assert_array_equal(residuals[0], y)


# fwd.softmax — "Reverse mode comes from JAX transposing the JVP, so it saves what partial
# evaluation keeps (the output)."
def test_fwd_softmax_reverse_mode_saves_what_partial_evaluation_keeps_the_output():
    x = a(np.linspace(-2.0, 2.0, 12).reshape(3, 4))
    y, pull = jax.vjp(fwd.softmax, x)
    residuals = jax.tree_util.tree_leaves(pull)
    assert len(residuals) == 1
    np.testing.assert_array_equal(residuals[0], y)


# logsumexp — "recomputed in the backward pass ... from the saved input and the two per-slice
# numbers"
def test_logsumexp_rule_saves_the_input_and_two_numbers_per_slice():
    x = a(np.linspace(-2.0, 2.0, 12).reshape(3, 4))
    _, pull = jax.vjp(jsoftmax.logsumexp, x)
    residuals = jax.tree_util.tree_leaves(pull)
    big = [r for r in residuals if r.shape == x.shape]
    assert len(big) == 1
    np.testing.assert_array_equal(big[0], x)
    assert sorted(r.shape for r in residuals if r.shape != x.shape) == [(3, 1), (3, 1)]


# logsumexp — "... so it stays accurate to a few ulps even where |x| is huge."
@pytest.mark.parametrize("base", [1e4, -1e4, 3e7], ids=["1e4", "-1e4", "3e7"])
def test_logsumexp_gradient_stays_accurate_to_a_few_ulps_where_abs_x_is_huge(base):
    d = np.array([0.0, -2.0, 2.0, 0.0])  # exactly representable offsets at every base
    x = a(base + d)
    assert np.array_equal(np.asarray(x, np.float64), base + d)
    dx = np.asarray(jgrad(jsoftmax.logsumexp)(x), np.float64)
    want = np_softmax(d)
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(dx - want) / ulp) <= 4


# log_softmax, fwd.log_softmax — "Masked entries give ``-inf``; they are constants: their
# cotangent is ignored and their gradient is 0."
@fns(LOG_SOFTMAX)
def test_log_softmax_masked_entry_is_neg_inf_constant_cotangent_ignored_zero_gradient(fn):
    x = a([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    where = jnp.array([[True, False, True], [False, True, True]])
    off = ~np.asarray(where)
    g = a([[1.0, 2.0, 3.0], [4.0, -1.0, 5.0]])
    y, grads = value_and_grads(fn, x, g, where=where)
    assert np.all(np.isneginf(y[off]))
    ref = np.where(off, -np.inf, x)
    np.testing.assert_allclose(y[~off], (ref - np_lse(ref)[:, None])[~off], rtol=1e-6)
    _, grads_other = value_and_grads(fn, x, jnp.where(where, g, 100.0), where=where)
    for mode, dx in grads.items():
        assert np.all(dx[off] == 0), mode
        assert np.all(np.isfinite(dx)), mode
        np.testing.assert_array_equal(dx, grads_other[mode], err_msg=mode)  # cotangent ignored


# log_softmax, fwd.log_softmax — "... A fully masked slice is all ``-inf`` with a zero
# gradient."
@fns(LOG_SOFTMAX)
def test_log_softmax_fully_masked_slice_is_all_neg_inf_with_zero_gradient(fn):
    x = a([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    where = jnp.array([[True, True, False], [False, False, False]])
    g = a([[1.0, 2.0, 3.0], [4.0, -1.0, 5.0]])
    y, grads = value_and_grads(fn, x, g, where=where)
    assert np.all(np.isneginf(y[1]))
    for mode, dx in grads.items():
        assert np.all(dx[1] == 0), mode
        assert np.all(np.isfinite(dx)), mode


# log_softmax, fwd.log_softmax — "A ``-inf`` input gives ``-inf`` with its exact derivative:
# the gradient of entry ``i`` is ``g_i − s_i Σg = g_i`` since ``s_i = 0``."
@fns(LOG_SOFTMAX)
def test_log_softmax_neg_inf_input_gives_neg_inf_with_exact_derivative_g_i(fn):
    x = a([[1.0, -INF, 2.0], [-INF, 0.5, 0.0]])
    g = a([[1.0, 2.0, 3.0], [4.0, -1.0, 5.0]])
    y, grads = value_and_grads(fn, x, g)
    neg = np.isneginf(np.asarray(x))
    assert np.all(np.isneginf(y[neg]))
    s = np_softmax(x)
    want = np.asarray(g) - s * np.sum(np.asarray(g), -1, keepdims=True)
    for mode, dx in grads.items():
        np.testing.assert_array_equal(dx[neg], np.asarray(g)[neg], err_msg=mode)
        np.testing.assert_allclose(dx, want, rtol=1e-6, err_msg=mode)


# log_softmax, fwd.log_softmax — "An unmasked slice whose entries are all ``-inf`` is ``NaN``,
# as in ``jax.nn``; mask it (``where=x > -jnp.inf``) to get ``-inf``."
@fns(LOG_SOFTMAX)
def test_log_softmax_unmasked_all_neg_inf_slice_is_nan_and_masking_it_gives_neg_inf(fn):
    x = a([[-INF, -INF, -INF], [1.0, 2.0, 3.0]])
    y = np.asarray(fn(x))
    assert np.all(np.isnan(y[0]))
    assert np.all(np.isnan(np.asarray(jax.nn.log_softmax(x))[0]))  # "as in jax.nn"
    masked = np.asarray(fn(x, where=x > -jnp.inf))
    assert np.all(np.isneginf(masked[0]))
    np.testing.assert_array_equal(masked[1], y[1])


# logsumexp, fwd.logsumexp — "``-inf`` entries and masked entries are left out and get a zero
# gradient."
@pytest.mark.parametrize("how", ["neg_inf", "masked"])
@fns(LOGSUMEXP)
def test_logsumexp_neg_inf_and_masked_entries_are_left_out_with_zero_gradient(fn, how):
    x = a([[1.0, 5.0, 2.0], [-1.0, 0.5, 3.0]])
    out = np.array([[False, True, False], [True, False, False]])
    kw = {"where": jnp.asarray(~out)} if how == "masked" else {}
    if how == "neg_inf":
        x = jnp.where(out, -jnp.inf, x)
    g = a([1.5, -2.0])
    y, grads = value_and_grads(fn, x, g, **kw)
    np.testing.assert_allclose(y, np_lse(np.where(out, -np.inf, x)), rtol=1e-6)
    for mode, dx in grads.items():
        assert np.all(dx[out] == 0), mode
        assert np.all(np.isfinite(dx)), mode


# logsumexp, fwd.logsumexp — "A fully masked (or all ``-inf``) slice gives ``-inf`` with a zero
# gradient."
@pytest.mark.parametrize("how", ["fully_masked", "all_neg_inf"])
@fns(LOGSUMEXP)
def test_logsumexp_fully_masked_or_all_neg_inf_slice_gives_neg_inf_with_zero_gradient(fn, how):
    x = a([[1.0, 5.0, 2.0], [-1.0, 0.5, 3.0]])
    kw = {}
    if how == "fully_masked":
        kw["where"] = jnp.array([[True, True, True], [False, False, False]])
    else:
        x = x.at[1].set(-jnp.inf)
    y, grads = value_and_grads(fn, x, a([1.5, -2.0]), **kw)
    assert np.isneginf(y[1]) and np.isfinite(y[0])
    for mode, dx in grads.items():
        assert np.all(dx[1] == 0), mode
        assert np.all(np.isfinite(dx)), mode


# logsumexp, fwd.logsumexp — "A ``+inf`` entry gives ``+inf``; a ``NaN`` entry gives ``NaN``,
# for its own slice only."
@pytest.mark.parametrize("bad", [INF, NAN], ids=["+inf", "nan"])
@fns(LOGSUMEXP)
def test_logsumexp_plus_inf_entry_gives_plus_inf_nan_gives_nan_for_its_own_slice_only(fn, bad):
    clean = a([[1.0, 5.0, 2.0], [-1.0, 0.5, 3.0], [0.0, 0.0, 0.0]])
    y = np.asarray(fn(clean.at[0, 1].set(bad)))
    if np.isnan(bad):
        assert np.isnan(y[0])
    else:
        assert y[0] == np.inf
    np.testing.assert_array_equal(y[1:], np.asarray(fn(clean))[1:])


# jsoftmax.fwd — "Same values and signatures as the top-level functions, with ``jax.custom_jvp``
# rules ..., so ``jax.jvp``, ``jax.jacfwd``, ``jax.linearize`` and forward-over-forward
# derivatives work too."
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_fwd_twin_same_values_and_jvp_jacfwd_linearize_forward_over_forward_work(name, x64):
    twin, top = getattr(fwd, name), getattr(jsoftmax, name)
    x = jnp.array([0.3, -1.2, 2.0, 0.7], jnp.float64)
    where = jnp.array([True, True, False, True])
    v = jnp.array([1.0, -0.5, 2.0, 0.25], jnp.float64)
    for kw in ({}, {"where": where}):
        f, ref = partial(twin, **kw), partial(top, **kw)

        @jax.jit
        def run(x, v, f=f, ref=ref):
            return {
                "value": (f(x), ref(x)),
                "jacfwd": (jax.jacfwd(f)(x), jax.jacrev(ref)(x)),
                "jvp": (jax.jvp(f, (x,), (v,))[1], jax.jacrev(ref)(x) @ v),
                "linearize": (jax.linearize(f, x)[1](v), jax.jacrev(ref)(x) @ v),
                # forward-over-forward of the twin; forward-over-reverse of the custom_vjp one
                "jacfwd_jacfwd": (jax.jacfwd(jax.jacfwd(f))(x), jax.jacfwd(jax.jacrev(ref))(x)),
            }

        for what, (got, want) in run(x, v).items():
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14, err_msg=what)


# fwd.log_softmax — "Same inf/NaN/mask behaviour as jsoftmax.log_softmax: a masked output is a
# constant with a zero tangent."
def test_fwd_log_softmax_masked_output_is_a_constant_with_zero_tangent():
    x = a([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    where = jnp.array([[True, False, True], [False, False, False]])
    v = a([[1.0, 7.0, -2.0], [3.0, 5.0, 1.0]])
    out, tangent = jax.jvp(lambda x: fwd.log_softmax(x, where=where), (x,), (v,))
    off = ~np.asarray(where)
    assert np.all(np.isneginf(np.asarray(out)[off]))
    assert np.all(np.asarray(tangent)[off] == 0)
    assert np.all(np.isfinite(np.asarray(tangent)))
    # and the masked entries' input tangents do not leak into the unmasked outputs
    _, tangent2 = jax.jvp(lambda x: fwd.log_softmax(x, where=where), (x,), (v.at[0, 1].set(-9.0),))
    np.testing.assert_array_equal(tangent, tangent2)


# ============================================================================================
# softmax_jacobian, log_softmax_jacobian
# ============================================================================================


# softmax_jacobian, log_softmax_jacobian (Returns) — "``[..., n, n]``: the other axes first (in
# order), then the ``n × n`` Jacobian with row ``i`` the output index and column ``j`` the input
# index."
@pytest.mark.parametrize("axis", [-1, 0], ids=["-1", "0"])
@fns(JACOBIANS)
def test_jacobian_returns_other_axes_first_then_n_by_n_rows_output_columns_input(fn, axis):
    x = a(np.linspace(-2.0, 2.0, 24).reshape(2, 3, 4))
    jac = np.asarray(fn(x, axis))
    ax = axis % 3
    other = [d for i, d in enumerate(x.shape) if i != ax]
    n = x.shape[ax]
    assert jac.shape == (*other, n, n)
    base = jsoftmax.softmax if fn is jsoftmax.softmax_jacobian else jsoftmax.log_softmax
    xm = jnp.moveaxis(x, ax, -1)
    want = jax.jit(jax.vmap(jax.vmap(jax.jacrev(base))))(xm)  # jacrev: [output, input]
    np.testing.assert_allclose(jac, want, rtol=1e-5, atol=1e-7)


# softmax_jacobian — "Each row and column sums to zero (softmax is invariant to adding a
# constant)."
def test_softmax_jacobian_each_row_and_column_sums_to_zero():
    jac = np.asarray(jsoftmax.softmax_jacobian(a([[0.3, -1.2, 2.0, 0.7], [1.0, 1.0, 5.0, -3.0]])))
    np.testing.assert_allclose(jac.sum(-1), 0.0, atol=1e-7)
    np.testing.assert_allclose(jac.sum(-2), 0.0, atol=1e-7)


# softmax_jacobian — "``-inf`` entries give zero rows and columns"
def test_softmax_jacobian_neg_inf_entries_give_zero_rows_and_columns():
    jac = np.asarray(jsoftmax.softmax_jacobian(a([[0.3, -INF, 2.0], [-INF, 1.0, 5.0]])))
    assert np.all(jac[0, 1, :] == 0) and np.all(jac[0, :, 1] == 0)
    assert np.all(jac[1, 0, :] == 0) and np.all(jac[1, :, 0] == 0)
    assert np.all(np.isfinite(jac))


# log_softmax_jacobian — "Every row sums to zero."
def test_log_softmax_jacobian_every_row_sums_to_zero():
    x = a([[0.3, -1.2, 2.0, 0.7], [1.0, 1.0, 5.0, -3.0]])
    np.testing.assert_allclose(np.asarray(jsoftmax.log_softmax_jacobian(x)).sum(-1), 0, atol=1e-6)


# log_softmax_jacobian — "``-inf`` entries contribute ``s_j = 0`` columns"
def test_log_softmax_jacobian_neg_inf_entries_contribute_s_j_zero_columns():
    jac = np.asarray(jsoftmax.log_softmax_jacobian(a([[0.3, -INF, 2.0], [-INF, 1.0, 5.0]])))
    # column j of I − 1 sᵀ with s_j = 0 is the unit column e_j
    np.testing.assert_array_equal(jac[0, :, 1], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(jac[1, :, 0], [1.0, 0.0, 0.0])
    assert np.all(np.isfinite(jac))


# softmax_jacobian, log_softmax_jacobian — "a ``+inf`` or ``NaN`` entry makes its slice ``NaN``"
@pytest.mark.parametrize("bad", [INF, NAN], ids=["+inf", "nan"])
@fns(JACOBIANS)
def test_jacobian_inf_or_nan_entry_makes_its_slice_nan(fn, bad):
    clean = a([[0.3, -1.2, 2.0], [1.0, 1.0, 5.0]])
    jac = np.asarray(fn(clean.at[0, 2].set(bad)))
    assert np.all(np.isnan(jac[0]))
    np.testing.assert_array_equal(jac[1], np.asarray(fn(clean))[1])


# ============================================================================================
# Integer-label losses sharing a promise: cross_entropy, nll_loss,
# softmax_cross_entropy_with_integer_labels, linear_cross_entropy (logits = x @ I)
# ============================================================================================

PER_EXAMPLE = {
    "cross_entropy": lambda z, y, **kw: jsoftmax.cross_entropy(z, y, reduction="none", **kw),
    "nll_loss": lambda z, y, **kw: jsoftmax.nll_loss(z, y, reduction="none", **kw),
    "softmax_cross_entropy_with_integer_labels": (
        lambda z, y, **kw: jsoftmax.softmax_cross_entropy_with_integer_labels(z, y, **kw)
    ),
    "linear_cross_entropy": lambda z, y, **kw: jsoftmax.linear_cross_entropy(
        z, jnp.eye(z.shape[-1], dtype=z.dtype), y, reduction="none", **kw
    ),
}


# cross_entropy — "Out-of-range integer labels (other than ``ignore_index``) raise ``ValueError``
# when ``labels`` is concrete"; nll_loss, softmax_cross_entropy_with_integer_labels —
# "Out-of-range labels raise ``ValueError`` when concrete"; linear_cross_entropy — "Out-of-range
# labels (not in ``[0, V)`` and not ``ignore_index``) raise ``ValueError`` when ``labels`` is
# concrete".
@pytest.mark.parametrize("bad", [3, -1, 1000], ids=["C", "-1", "1000"])
@pytest.mark.parametrize("name", list(PER_EXAMPLE))
def test_out_of_range_label_raises_value_error_when_concrete(name, bad):
    with pytest.raises(ValueError, match="labels must be class indices"):
        PER_EXAMPLE[name](LOGITS, jnp.array([0, bad]))


# cross_entropy, nll_loss, linear_cross_entropy — "... (other than ``ignore_index``)": an
# ignored label is not out of range.
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "linear_cross_entropy"])
def test_out_of_range_check_exempts_ignore_index(name):
    loss = np.asarray(PER_EXAMPLE[name](LOGITS, jnp.array([0, -100]), ignore_index=-100))
    assert loss[1] == 0 and np.isfinite(loss[0])


# cross_entropy — "... under ``jit`` they give a NaN loss and a NaN gradient row";
# nll_loss — "... under ``jit`` they give a NaN loss (and a NaN gradient entry)";
# softmax_cross_entropy_with_integer_labels — "... under ``jit`` they give NaN";
# linear_cross_entropy — "... under ``jit`` they give a ``NaN`` loss for that token (and ``NaN``
# gradients), never a finite wrong number".
@pytest.mark.parametrize("bad", [3, -1], ids=["C", "-1"])
@pytest.mark.parametrize(
    "name, grad_promise",
    [
        ("cross_entropy", "row"),
        ("nll_loss", "entry"),
        ("softmax_cross_entropy_with_integer_labels", None),
        ("linear_cross_entropy", "row"),
    ],
    ids=["cross_entropy", "nll_loss", "sce_with_integer_labels", "linear_cross_entropy"],
)
def test_out_of_range_label_under_jit_gives_nan_loss_and_nan_gradient(name, grad_promise, bad):
    fn = PER_EXAMPLE[name]
    labels = jnp.array([0, bad, 2])
    z = a([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, -1.0, 0.5]])
    loss = np.asarray(jax.jit(fn)(z, labels))
    assert np.isnan(loss[1])
    assert np.all(np.isfinite(loss[[0, 2]]))
    if grad_promise is not None:
        dz = np.asarray(jax.jit(jax.grad(lambda z, y: jnp.sum(fn(z, y))))(z, labels))
        if grad_promise == "row":
            assert np.all(np.isnan(dz[1]))
        else:
            assert np.any(np.isnan(dz[1]))
        assert np.all(np.isfinite(dz[[0, 2]]))


# ============================================================================================
# cross_entropy
# ============================================================================================

ZERO_MASS = {
    "integer_label": (np.array([0, 2]), {}),
    "probability_label": (np.array([[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]], np.float32), {}),
    "smoothing_on_zero_weight_class": (
        np.array([0, 2]),
        {"label_smoothing": 0.1, "weight": a([1.0, 0.0, 2.0])},
    ),
}


# cross_entropy — "A ``-inf`` logit on a class with zero target mass has probability 0 and a
# zero gradient: the loss stays finite."
@pytest.mark.parametrize("case", list(ZERO_MASS))
def test_cross_entropy_neg_inf_logit_with_zero_target_mass_zero_gradient_loss_finite(case):
    labels, kw = ZERO_MASS[case]
    z = a([[1.0, -INF, 2.0], [0.5, -INF, -1.0]])
    loss = np.asarray(jitted.cross_entropy(z, jnp.asarray(labels), reduction="none", **kw))
    weight = None if "weight" not in kw else np.asarray(kw["weight"])
    t, _ = np_targets(3, labels, weight, kw.get("label_smoothing", 0.0))
    assert np.all(np.isfinite(loss))
    np.testing.assert_allclose(loss, np_ce(z, t)[0], rtol=1e-6)
    dz = ce_grad(jsoftmax.cross_entropy, z, jnp.asarray(labels), reduction="none", **kw)
    assert np.all(dz[:, 1] == 0) and np.all(np.isfinite(dz))


# cross_entropy — "A ``-inf`` logit on the labelled class gives ``+inf`` (not NaN)"
@pytest.mark.parametrize(
    "labels",
    [np.array([1, 0]), np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], np.float32)],
    ids=["integer_label", "probability_label"],
)
def test_cross_entropy_neg_inf_logit_on_labelled_class_gives_plus_inf_not_nan(labels):
    z = a([[1.0, -INF, 2.0], [0.5, 0.0, -1.0]])
    loss = np.asarray(jitted.cross_entropy(z, jnp.asarray(labels), reduction="none"))
    assert loss[0] == np.inf
    assert np.isfinite(loss[1])


# cross_entropy — "... with ``label_smoothing > 0`` every unmasked class has target mass, so any
# unmasked ``-inf`` logit gives ``+inf`` (as in PyTorch; mask such classes with ``where``)."
@pytest.mark.parametrize(
    "labels",
    [np.array([0, 2]), np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)],
    ids=["integer_label", "probability_label"],
)
def test_cross_entropy_smoothing_unmasked_neg_inf_logit_gives_plus_inf_masked_is_finite(labels):
    z = a([[1.0, -INF, 2.0], [0.5, 0.0, -1.0]])
    y = jnp.asarray(labels)
    loss = np.asarray(jitted.cross_entropy(z, y, label_smoothing=0.1, reduction="none"))
    assert loss[0] == np.inf and np.isfinite(loss[1])
    where = z > -jnp.inf
    masked = np.asarray(
        jitted.cross_entropy(z, y, label_smoothing=0.1, reduction="none", where=where)
    )
    assert np.all(np.isfinite(masked))
    dz = ce_grad(jsoftmax.cross_entropy, z, y, label_smoothing=0.1, reduction="none", where=where)
    assert np.all(np.isfinite(dz)) and dz[0, 1] == 0


# cross_entropy — "A ``+inf`` or ``NaN`` logit, or a row with every logit ``-inf``, gives a NaN
# loss for that example only."
@pytest.mark.parametrize(
    "labels",
    [np.array([0, 2, 1]), np.array([[1, 0, 0], [0, 0, 1], [0.5, 0.5, 0]], np.float32)],
    ids=["integer_label", "probability_label"],
)
@pytest.mark.parametrize("bad", ["+inf", "nan", "all_neg_inf"])
def test_cross_entropy_inf_or_nan_logit_or_all_neg_inf_row_gives_nan_for_that_example_only(
    bad, labels
):
    clean = a([[1.0, 0.5, 2.0], [0.5, 0.0, -1.0], [0.0, 1.0, 3.0]])
    z = {
        "+inf": clean.at[0, 1].set(INF),
        "nan": clean.at[0, 1].set(NAN),
        "all_neg_inf": clean.at[0].set(-INF),
    }[bad]
    y = jnp.asarray(labels)
    loss = np.asarray(jitted.cross_entropy(z, y, reduction="none"))
    assert np.isnan(loss[0])
    np.testing.assert_array_equal(
        loss[1:], np.asarray(jitted.cross_entropy(clean, y, reduction="none"))[1:]
    )


NOTHING_CONTRIBUTES = {
    "all_ignored": (np.array([-100, -100]), {"ignore_index": -100}),
    "all_examples_masked": (np.array([0, 2]), {"where": np.array([False, False])}),
    "every_class_masked": (np.array([0, 2]), {"where": np.zeros((2, 3), bool)}),
    "class_weight_zero_no_smoothing": (np.array([1, 1]), {"weight": a([1.0, 0.0, 1.0])}),
    "probability_labels_all_masked": (
        np.array([[1, 0, 0], [0, 0, 1]], np.float32),
        {"where": np.array([False, False])},
    ),
}


# cross_entropy — "If no example contributes (every one ignored or masked, or of class weight 0
# with no smoothing mass), ``"mean"`` returns 0 with zero gradients"
@pytest.mark.parametrize("case", list(NOTHING_CONTRIBUTES))
def test_cross_entropy_no_example_contributes_mean_returns_zero_with_zero_gradients(case):
    labels, kw = NOTHING_CONTRIBUTES[case]
    kw = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    y = jnp.asarray(labels)

    def mean(z):
        return jsoftmax.cross_entropy(z, y, reduction="mean", **kw)

    loss, dz = jax.jit(jax.value_and_grad(mean))(LOGITS)
    assert float(loss) == 0.0
    assert np.all(np.asarray(dz) == 0)


# cross_entropy — "If the weights ω_n of the examples that do contribute sum to 0 (negative class
# weights, or zero-weight labels with smoothing), ``"mean"`` divides by 0 and is ``±inf`` or
# NaN, as in PyTorch."
@pytest.mark.parametrize(
    "labels, kw",
    [
        (np.array([0, 1]), {"weight": a([1.0, -1.0, 1.0])}),
        (np.array([0, 0]), {"weight": a([0.0, 1.0, 1.0]), "label_smoothing": 0.1}),
    ],
    ids=["negative_class_weights", "zero_weight_labels_with_smoothing"],
)
def test_cross_entropy_contributing_weights_summing_to_zero_mean_divides_by_zero(labels, kw):
    y = jnp.asarray(labels)
    total = float(jitted.cross_entropy(LOGITS, y, reduction="sum", **kw))
    assert total != 0  # the examples do contribute
    assert not np.isfinite(float(jitted.cross_entropy(LOGITS, y, reduction="mean", **kw)))


# cross_entropy — "PyTorch ignores ``ignore_index`` for probability labels; here it raises
# ``ValueError``."
def test_cross_entropy_ignore_index_with_probability_labels_raises_value_error():
    q = a([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="ignore_index"):
        jsoftmax.cross_entropy(LOGITS, q, ignore_index=-100)


# cross_entropy — "Integer labels of any integer dtype (``int8`` … ``int64``, ``uint8`` …) are
# compared in ``int32`` ..., never in their own dtype: ``uint8`` labels with 300 classes are
# valid."
@MODE
@pytest.mark.parametrize(
    "dtype, n_classes, label",
    [
        (np.int8, 200, 127),
        (np.uint8, 300, 255),
        (np.uint16, 300, 299),
        (np.uint32, 300, 299),
    ],
    ids=["int8_200_classes", "uint8_300_classes", "uint16", "uint32"],
)
def test_cross_entropy_integer_labels_of_any_dtype_are_compared_in_int32(
    dtype, n_classes, label, jit
):
    z = a(np.sin(np.arange(2 * n_classes)).reshape(2, n_classes))
    labels = np.array([label, 7], dtype)
    f = (
        jax.jit(jsoftmax.cross_entropy, static_argnames="reduction")
        if jit
        else jsoftmax.cross_entropy
    )
    loss = np.asarray(f(z, jnp.asarray(labels), reduction="none"))
    want = np.asarray(jitted.cross_entropy(z, jnp.array([label, 7], jnp.int32), reduction="none"))
    np.testing.assert_array_equal(loss, want)
    np.testing.assert_allclose(loss, np_lse(z) - np.asarray(z)[[0, 1], [label, 7]], rtol=1e-5)


# cross_entropy — "... (``int64`` for 64-bit labels)": a 64-bit label that would wrap to a valid
# class in int32 is still out of range.
@MODE
@pytest.mark.parametrize("dtype", [jnp.int64, jnp.uint64], ids=["int64", "uint64"])
def test_cross_entropy_64_bit_labels_are_compared_in_int64(dtype, jit, x64):
    z = jnp.array([[0.5, 1.0, -1.0], [0.0, 2.0, 1.0]], jnp.float32)
    labels = jnp.array([2**32 + 1, 1], dtype)  # 1 after a wrap to int32
    if not jit:
        with pytest.raises(ValueError, match="labels must be class indices"):
            jsoftmax.cross_entropy(z, labels, reduction="none")
    else:
        loss = np.asarray(
            jax.jit(lambda z, y: jsoftmax.cross_entropy(z, y, reduction="none"))(z, labels)
        )
        assert np.isnan(loss[0]) and np.isfinite(loss[1])


# cross_entropy — "A label on a class masked out by ``where`` still scores its own logit against
# the masked normaliser (as optax does)."
def test_cross_entropy_label_on_class_masked_out_by_where_still_scores_its_own_logit():
    z = a([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    where = jnp.array([[True, True, False], [True, True, True]])
    labels = jnp.array([2, 0])
    loss = np.asarray(jitted.cross_entropy(z, labels, reduction="none", where=where))
    zn = np.asarray(z, np.float64)
    want0 = np_lse(zn[0, :2]) - zn[0, 2]  # its own logit, 3.0, against the masked normaliser
    np.testing.assert_allclose(loss, [want0, np_lse(zn[1]) - zn[1, 0]], rtol=1e-6)
    optax_loss = optax.softmax_cross_entropy_with_integer_labels(z, labels, where=where)
    np.testing.assert_allclose(loss, optax_loss, rtol=1e-6)
    # the gradient of that value: the masked softmax, minus one at the (masked) label
    dz = ce_grad(jsoftmax.cross_entropy, z, labels, reduction="none", where=where)
    np.testing.assert_allclose(dz[0], [*np_softmax(zn[0, :2]), -1.0], rtol=1e-6)


# cross_entropy — "float16/bfloat16 logits are computed in float32; the loss is float32 and the
# logits' gradient has the logits' dtype."
@pytest.mark.parametrize(
    "labels", [[0, 2], [[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]]], ids=["integer", "probability"]
)
@HALF
def test_cross_entropy_half_logits_computed_in_float32_loss_float32_gradient_in_logits_dtype(
    dtype, labels
):
    z = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], dtype)
    y = jnp.asarray(labels) if isinstance(labels[0], int) else jnp.array(labels, dtype)
    kw = {"label_smoothing": 0.1, "z_loss": 1e-3, "reduction": "none"}
    loss = jitted.cross_entropy(z, y, **kw)
    assert loss.dtype == jnp.float32
    y32 = y if y.dtype.kind == "i" else y.astype(jnp.float32)
    want = jitted.cross_entropy(z.astype(jnp.float32), y32, **kw)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    dz = jgrad(lambda z: jnp.sum(jsoftmax.cross_entropy(z, y, **kw)))(z)
    assert dz.dtype == dtype


# cross_entropy — "``label_smoothing`` and ``z_loss`` are static, finite Python numbers
# (validated at trace time)."
@MODE
@pytest.mark.parametrize(
    "option, value, error",
    [
        ("label_smoothing", INF, ValueError),
        ("label_smoothing", NAN, ValueError),
        ("label_smoothing", 1.5, ValueError),
        ("label_smoothing", -0.1, ValueError),
        ("z_loss", INF, ValueError),
        ("z_loss", NAN, ValueError),
        ("z_loss", -1.0, ValueError),
        ("label_smoothing", "0.1", TypeError),
        ("z_loss", True, TypeError),
    ],
    ids=lambda p: p.__name__ if isinstance(p, type) else repr(p),
)
def test_cross_entropy_label_smoothing_and_z_loss_are_static_finite_python_numbers(
    option, value, error, jit
):
    def loss(z):
        return jsoftmax.cross_entropy(z, jnp.array([0, 2]), **{option: value})

    with pytest.raises(error, match=option):
        (jax.jit(loss) if jit else loss)(LOGITS)


# cross_entropy — "``label_smoothing`` and ``z_loss`` are static ...": a traced value (or any
# array) is rejected with TypeError, while NumPy scalars are Python numbers enough.
@pytest.mark.parametrize("option", ["label_smoothing", "z_loss"])
def test_cross_entropy_label_smoothing_and_z_loss_are_static_traced_value_raises_type_error(option):
    def loss(z, v):
        return jsoftmax.cross_entropy(z, jnp.array([0, 2]), **{option: v})

    with pytest.raises(TypeError, match=option):
        jax.jit(loss)(LOGITS, 0.1)
    with pytest.raises(TypeError, match=option):
        loss(LOGITS, jnp.array(0.1))
    np.testing.assert_array_equal(loss(LOGITS, np.float32(0.1)), loss(LOGITS, 0.1))


# cross_entropy (Returns) — "A scalar for ``"mean"`` and ``"sum"``; the per-example losses of
# ``logits``' shape without ``axis`` for ``"none"``. float32 for float16/bfloat16/float32 logits"
@pytest.mark.parametrize("reduction, shape", [("mean", ()), ("sum", ()), ("none", (2, 4))])
def test_cross_entropy_returns_scalar_or_per_example_shape_without_axis(reduction, shape):
    z = a(np.linspace(-2.0, 2.0, 24).reshape(2, 3, 4))
    labels = jnp.array([[0, 1, 2, 0], [2, 2, 1, 0]])
    loss = jitted.cross_entropy(z, labels, axis=1, reduction=reduction)
    assert loss.shape == shape and loss.dtype == jnp.float32
    per = (
        np_lse(np.asarray(z), 1)
        - np.take_along_axis(np.asarray(z, np.float64), np.asarray(labels)[:, None, :], 1)[:, 0]
    )
    want = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    np.testing.assert_allclose(loss, want, rtol=1e-6)


# cross_entropy (Returns) — "... float64 for float64 logits."
def test_cross_entropy_returns_float64_for_float64_logits(x64):
    z = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], jnp.float64)
    assert jitted.cross_entropy(z, jnp.array([0, 2])).dtype == jnp.float64


# cross_entropy (description) — "``"mean"`` is Σ_n L_n / Σ_n ω_n ..., which is PyTorch's weighted
# mean for integer labels (smoothing does not change the denominator) and its plain mean over
# examples for probability labels."
@pytest.mark.parametrize("smoothing", [0.0, 0.2], ids=["no_smoothing", "smoothing"])
def test_cross_entropy_mean_is_weighted_mean_for_integer_labels_plain_mean_for_probabilities(
    smoothing,
):
    z = a([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, -2.0]])
    w = a([0.5, 2.0, 3.0])
    y = jnp.array([0, 1, 2])
    kw = {"weight": w, "label_smoothing": smoothing}
    per = np.asarray(jitted.cross_entropy(z, y, reduction="none", **kw), np.float64)
    mean = float(jitted.cross_entropy(z, y, **kw))
    np.testing.assert_allclose(mean, per.sum() / np.asarray(w)[[0, 1, 2]].sum(), rtol=1e-6)
    q = a([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.2, 0.3, 0.5]])
    per = np.asarray(jitted.cross_entropy(z, q, reduction="none", **kw), np.float64)
    np.testing.assert_allclose(float(jitted.cross_entropy(z, q, **kw)), per.mean(), rtol=1e-6)


# cross_entropy (description) — the loss "L_n = Σ_c t_nc (ℓ_n − z_nc) + ζ ω_n ℓ_n²" and "The
# gradient is the closed form (Σ_c' t_nc' + 2 ζ ω_n ℓ_n) softmax(z_n)_c − t_nc"; "probability
# labels get ∂L_n/∂q_nc = (1 − ε) w_c (ℓ_n − z_nc)".
@pytest.mark.parametrize("kind", ["integer", "probability"])
def test_cross_entropy_loss_and_gradient_are_the_closed_forms(kind, x64):
    z = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, -2.0]], jnp.float64)
    w = jnp.array([0.5, 2.0, 3.0], jnp.float64)
    if kind == "integer":
        y = jnp.array([0, 1, 2])
    else:
        y = jnp.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.2, 0.3, 0.5]], jnp.float64)
    eps, zeta = 0.2, 0.05
    kw = {"weight": w, "label_smoothing": eps, "z_loss": zeta, "reduction": "none"}
    t, omega = np_targets(3, np.asarray(y), np.asarray(w), eps)
    want, lse = np_ce(z, t, zeta, omega)
    np.testing.assert_allclose(jitted.cross_entropy(z, y, **kw), want, rtol=1e-12)
    coef = t.sum(-1) + 2 * zeta * omega * lse
    want_dz = coef[:, None] * np_softmax(z) - t
    np.testing.assert_allclose(ce_grad(jsoftmax.cross_entropy, z, y, **kw), want_dz, rtol=1e-12)
    if kind == "probability":
        dq = jgrad(lambda q: jnp.sum(jsoftmax.cross_entropy(z, q, **kw)))(y)
        want_dq = (1 - eps) * np.asarray(w)[None, :] * (lse[:, None] - np.asarray(z))
        np.testing.assert_allclose(dq, want_dq, rtol=1e-12)


# cross_entropy (Args) — "where: ... Of ``logits``' rank minus the number of class axes ...:
# masks examples. ... Masked examples contribute nothing to the loss, the gradient or the mean."
def test_cross_entropy_masked_examples_contribute_nothing_to_loss_gradient_or_mean():
    z = a([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, -2.0]])
    y = jnp.array([0, 1, 2])
    where = jnp.array([True, False, True])
    per = np.asarray(jitted.cross_entropy(z, y, reduction="none", where=where))
    full = np.asarray(jitted.cross_entropy(z, y, reduction="none"))
    assert per[1] == 0
    np.testing.assert_array_equal(per[[0, 2]], full[[0, 2]])
    np.testing.assert_allclose(jitted.cross_entropy(z, y, where=where), full[[0, 2]].mean())
    dz = np.asarray(jgrad(lambda z: jsoftmax.cross_entropy(z, y, where=where))(z))
    assert np.all(dz[1] == 0)


# cross_entropy (Args) — "Of ``logits``' rank ...: masks classes, which leave the softmax and get
# no smoothing mass (C becomes the number of unmasked classes); an example with every class
# masked is masked."
def test_cross_entropy_masked_classes_leave_softmax_get_no_smoothing_mass_all_masked_is_masked():
    z = a([[2.0, 0.5, -1.0, 4.0], [0.0, 1.0, 3.0, -1.0]])
    y = jnp.array([0, 2])
    where = jnp.array([[True, True, False, True], [False, False, False, False]])
    kw = {"label_smoothing": 0.3, "where": where}
    per = np.asarray(jitted.cross_entropy(z, y, reduction="none", **kw))
    sub = jnp.asarray(np.asarray(z)[:1, [0, 1, 3]])  # C = 3 unmasked classes
    want0 = jitted.cross_entropy(sub, jnp.array([0]), label_smoothing=0.3, reduction="none")
    np.testing.assert_allclose(per, [float(want0[0]), 0.0], rtol=1e-6)
    np.testing.assert_allclose(jitted.cross_entropy(z, y, **kw), want0[0], rtol=1e-6)
    dz = np.asarray(jgrad(lambda z: jsoftmax.cross_entropy(z, y, **kw))(z))
    assert dz[0, 2] == 0 and np.all(dz[1] == 0)
    d_sub = jgrad(lambda s: jsoftmax.cross_entropy(s, jnp.array([0]), label_smoothing=0.3))(sub)
    np.testing.assert_allclose(dz[0, [0, 1, 3]], d_sub[0], rtol=1e-6)


# cross_entropy (Args) — "weight: optional per-class weights ``[classes]``; treated as constants
# (no gradient)."
def test_cross_entropy_class_weights_are_constants_with_no_gradient():
    y = jnp.array([0, 2])
    dw = jgrad(lambda w: jsoftmax.cross_entropy(LOGITS, y, weight=w, label_smoothing=0.1))(
        a([1.0, 2.0, 3.0])
    )
    assert np.all(np.asarray(dw) == 0)


# cross_entropy (Args) — "ignore_index: ... (which defaults to -100; here the default ``None``
# ignores nothing)."
def test_cross_entropy_default_ignore_index_none_ignores_nothing():
    with pytest.raises(ValueError, match="labels must be class indices"):
        jsoftmax.cross_entropy(LOGITS, jnp.array([0, -100]))
    per = jitted.cross_entropy(LOGITS, jnp.array([0, 2]), reduction="none")
    np.testing.assert_allclose(jitted.cross_entropy(LOGITS, jnp.array([0, 2])), np.mean(per))


# cross_entropy (Args) — "axis: the class axis, or a tuple of axes flattened (in the order given)
# into one class axis; integer labels are then flat indices into that slice, as in optax."
@pytest.mark.parametrize("axis", [(1, 2), (2, 1)], ids=["(1,2)", "(2,1)"])
def test_cross_entropy_tuple_axis_flattened_in_order_given_labels_are_flat_indices(axis):
    z = a(np.sin(np.arange(24.0)).reshape(2, 3, 4))
    y = jnp.array([5, 11])
    flat = np.asarray(z).transpose(0, *axis).reshape(2, 12)
    want = np.asarray(jitted.cross_entropy(jnp.asarray(flat), y, reduction="none"))
    got = jitted.cross_entropy(z, y, axis=axis, reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-6)
    optax_loss = optax.softmax_cross_entropy_with_integer_labels(z, y, axis=axis)
    np.testing.assert_allclose(got, optax_loss, rtol=1e-6)


# ============================================================================================
# nll_loss
# ============================================================================================


# nll_loss — "A ``-inf`` log-probability at the label gives ``+inf``; elsewhere it is not read."
def test_nll_loss_neg_inf_log_probability_at_label_gives_plus_inf_elsewhere_not_read():
    lp = a([[-INF, np.log(0.5), np.log(0.5)], [np.log(0.2), -INF, np.log(0.8)]])
    loss = np.asarray(jitted.nll_loss(lp, jnp.array([0, 2]), reduction="none"))
    assert loss[0] == np.inf
    np.testing.assert_allclose(loss[1], -np.log(0.8), rtol=1e-6)
    dlp = jgrad(lambda lp: jnp.sum(jsoftmax.nll_loss(lp, jnp.array([1, 2]), reduction="none")))(lp)
    np.testing.assert_array_equal(dlp, [[0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


# nll_loss — "If every example is ignored, ``"mean"`` returns 0 (PyTorch returns NaN)."
def test_nll_loss_every_example_ignored_mean_returns_zero():
    lp = jnp.log(a([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]))
    loss = jitted.nll_loss(lp, jnp.array([-100, -100]), ignore_index=-100)
    assert float(loss) == 0.0


# nll_loss (Returns) — "A scalar for ``"mean"``/``"sum"``, per-example losses ``[batch]`` for
# ``"none"``, in the compute dtype (float32 for half-precision inputs)."
@pytest.mark.parametrize("reduction, shape", [("mean", ()), ("sum", ()), ("none", (2,))])
@HALF
def test_nll_loss_returns_compute_dtype_float32_for_half_inputs(dtype, reduction, shape):
    lp = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]], dtype))
    loss = jitted.nll_loss(lp, jnp.array([0, 2]), reduction=reduction)
    assert loss.dtype == jnp.float32 and loss.shape == shape
    want = jitted.nll_loss(lp.astype(jnp.float32), jnp.array([0, 2]), reduction=reduction)
    np.testing.assert_array_equal(loss, want)


# nll_loss (description) — "L_n = −w_{y_n} log p_{n y_n}, mean = Σ L_n / Σ w_{y_n} ...:
# ``nll_loss(log_softmax(z), y)`` equals ``cross_entropy(z, y)``; the gradient is plain autodiff
# (−w_{y_n} at the label, 0 elsewhere)."
def test_nll_loss_is_weighted_mean_equals_cross_entropy_of_log_softmax_gradient_minus_w_at_label():
    z = a([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, -2.0]])
    y = jnp.array([0, 1, 1])
    w = a([0.5, 2.0, 3.0])
    lp = jsoftmax.log_softmax(z)
    np.testing.assert_allclose(
        jitted.nll_loss(lp, y, weight=w), jitted.cross_entropy(z, y, weight=w), rtol=1e-6
    )
    per = np.asarray(jitted.nll_loss(lp, y, weight=w, reduction="none"))
    np.testing.assert_allclose(
        per, -np.asarray(w)[[0, 1, 1]] * np.asarray(lp)[[0, 1, 2], [0, 1, 1]]
    )
    np.testing.assert_allclose(jitted.nll_loss(lp, y, weight=w), per.sum() / 4.5, rtol=1e-6)
    dlp = jgrad(lambda lp: jsoftmax.nll_loss(lp, y, weight=w, reduction="sum"))(lp)
    np.testing.assert_array_equal(dlp, [[-0.5, 0, 0], [0, -2.0, 0], [0, -2.0, 0]])


# ============================================================================================
# softmax_cross_entropy, softmax_cross_entropy_with_integer_labels (optax drop-ins)
# ============================================================================================


# softmax_cross_entropy — "Where a label is exactly 0 and its logit is ``-inf`` the term is 0
# (optax gives NaN ...)."
def test_softmax_cross_entropy_zero_label_on_neg_inf_logit_term_is_zero():
    z = a([[1.2, -INF, -0.5], [0.9, -1.2, 1.1]])
    q = a([[0.7, 0.0, 0.3], [0.0, 1.0, 0.0]])
    loss = np.asarray(jitted.softmax_cross_entropy(z, q))
    assert np.all(np.isfinite(loss))
    np.testing.assert_allclose(loss, np_ce(z, np.asarray(q, np.float64))[0], rtol=1e-6)
    dz = ce_grad(jsoftmax.softmax_cross_entropy, z, q)
    assert dz[0, 1] == 0 and np.all(np.isfinite(dz))


# softmax_cross_entropy — "A ``+inf`` or ``NaN`` logit makes that example's loss NaN."
@pytest.mark.parametrize("bad", [INF, NAN], ids=["+inf", "nan"])
def test_softmax_cross_entropy_inf_or_nan_logit_makes_that_examples_loss_nan(bad):
    clean = a([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    q = a([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    loss = np.asarray(jitted.softmax_cross_entropy(clean.at[0, 1].set(bad), q))
    assert np.isnan(loss[0])
    np.testing.assert_array_equal(loss[1], np.asarray(jitted.softmax_cross_entropy(clean, q))[1])


# softmax_cross_entropy_with_integer_labels — "``-inf`` logits off the label are fine; a
# ``-inf`` logit at the label gives ``+inf``."
def test_sce_with_integer_labels_neg_inf_logits_off_label_fine_at_label_gives_plus_inf():
    z = a([[1.2, -INF, -0.5], [0.9, -INF, 1.1]])
    loss = np.asarray(jitted.softmax_cross_entropy_with_integer_labels(z, jnp.array([0, 1])))
    np.testing.assert_allclose(loss[0], np_lse(np.asarray(z)[0]) - 1.2, rtol=1e-6)
    assert loss[1] == np.inf
    dz = ce_grad(jsoftmax.softmax_cross_entropy_with_integer_labels, z, jnp.array([0, 2]))
    assert np.all(np.isfinite(dz)) and np.all(dz[:, 1] == 0)


OPTAX_DROP_INS = {
    "softmax_cross_entropy": (
        jsoftmax.softmax_cross_entropy,
        optax.softmax_cross_entropy,
        a([[0.6, 0.4, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]]),
    ),
    "softmax_cross_entropy_with_integer_labels": (
        jsoftmax.softmax_cross_entropy_with_integer_labels,
        optax.softmax_cross_entropy_with_integer_labels,
        jnp.array([0, 1, 2]),
    ),
}


# softmax_cross_entropy, softmax_cross_entropy_with_integer_labels — "Same signature and values
# as optax 0.2.8 (``axis`` and ``where`` positional or keyword)"
@pytest.mark.parametrize("name", list(OPTAX_DROP_INS))
def test_optax_drop_in_same_signature_and_values_axis_and_where_positional_or_keyword(name):
    ours, theirs, labels = OPTAX_DROP_INS[name]
    z = a([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1], [0.0, 2.0, -3.0]])
    masks = (jnp.array([True, False, True]), jnp.array([[True, True, False]] * 3))

    @jax.jit
    def run(z, labels, masks):
        zt, lt = z.T, (labels.T if labels.ndim == 2 else labels)
        out = {
            "plain": (ours(z, labels), theirs(z, labels)),
            "axis_0_positional": (ours(zt, lt, 0), theirs(zt, lt, 0)),
        }
        for i, where in enumerate(masks):
            want = theirs(z, labels, -1, where)
            out[f"where{i}_positional"] = (ours(z, labels, -1, where), want)
            out[f"where{i}_keyword"] = (ours(z, labels, axis=-1, where=where), want)
        return out

    for what, (got, want) in run(z, labels, masks).items():
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=what)


# softmax_cross_entropy, softmax_cross_entropy_with_integer_labels (Returns) — "Per-example
# losses ``[batch]`` in ``logits``' dtype (computed in float32 for half precision), like optax."
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("name", list(OPTAX_DROP_INS))
def test_optax_drop_in_returns_per_example_losses_in_logits_dtype_computed_in_float32(name, dtype):
    ours, _, labels = OPTAX_DROP_INS[name]
    z = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1], [0.0, 2.0, -3.0]], dtype)
    lab = labels.astype(dtype) if labels.dtype.kind == "f" else labels
    loss = ours(z, lab)
    assert loss.shape == (3,) and loss.dtype == dtype
    lab32 = labels if labels.dtype.kind != "f" else lab.astype(jnp.float32)
    want = ours(z.astype(jnp.float32), lab32).astype(dtype)
    np.testing.assert_array_equal(np.asarray(loss, np.float32), np.asarray(want, np.float32))


# softmax_cross_entropy (description) — "the gradient is the closed form (Σ_c q_nc)
# softmax(z_n) − q_n for the logits and logsumexp(z_n) − z_n for the labels"
def test_softmax_cross_entropy_gradient_closed_form_for_logits_and_labels(x64):
    z = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]], jnp.float64)
    q = jnp.array([[0.6, 0.4, 0.0], [0.0, 0.5, 0.0]], jnp.float64)  # rows need not sum to 1
    dz, dq = jgrad(lambda z, q: jnp.sum(jsoftmax.softmax_cross_entropy(z, q)), (0, 1))(z, q)
    qn = np.asarray(q)
    np.testing.assert_allclose(dz, qn.sum(-1, keepdims=True) * np_softmax(z) - qn, rtol=1e-12)
    np.testing.assert_allclose(dq, np_lse(z)[:, None] - np.asarray(z), rtol=1e-12)


# softmax_cross_entropy_with_integer_labels (description) — "the gradient is the closed form
# softmax(z_n) − onehot(y_n)."
def test_sce_with_integer_labels_gradient_is_softmax_minus_onehot(x64):
    z = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]], jnp.float64)
    y = jnp.array([0, 2])
    dz = ce_grad(jsoftmax.softmax_cross_entropy_with_integer_labels, z, y)
    np.testing.assert_allclose(dz, np_softmax(z) - np.eye(3)[[0, 2]], rtol=1e-12, atol=1e-15)


# softmax_cross_entropy (Args) — "labels: class probabilities broadcastable to ``logits`` ...;
# non-floating labels are cast to ``logits``' dtype."
def test_softmax_cross_entropy_labels_broadcastable_and_non_floating_labels_cast():
    z = a([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    onehot = np.array([[1, 0, 0], [0, 1, 0]])
    want = jitted.softmax_cross_entropy(z, jnp.asarray(onehot, jnp.float32))
    for labels in (jnp.asarray(onehot, jnp.int32), jnp.asarray(onehot, bool)):
        np.testing.assert_array_equal(jitted.softmax_cross_entropy(z, labels), want)
    row = a([[0.0, 1.0, 0.0]])  # [1, classes] broadcast to [batch, classes]
    np.testing.assert_array_equal(
        jitted.softmax_cross_entropy(z, row),
        jitted.softmax_cross_entropy(z, jnp.broadcast_to(row, z.shape)),
    )


# softmax_cross_entropy (Args) — "where: ... masked classes leave the softmax and the sum, masked
# examples give 0."
def test_softmax_cross_entropy_masked_classes_leave_softmax_and_sum_masked_examples_give_zero():
    z = a([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    q = a([[0.5, 0.3, 0.2], [0.0, 1.0, 0.0]])
    cls = jnp.array([[True, True, False], [True, True, True]])
    loss = np.asarray(jitted.softmax_cross_entropy(z, q, where=cls))
    zn, qn = np.asarray(z, np.float64), np.asarray(q, np.float64)
    np.testing.assert_allclose(
        loss[0], np.sum(qn[0, :2] * (np_lse(zn[0, :2]) - zn[0, :2])), rtol=1e-6
    )
    ex = np.asarray(jitted.softmax_cross_entropy(z, q, where=jnp.array([False, True])))
    assert ex[0] == 0 and ex[1] == loss[1]


# softmax_cross_entropy_with_integer_labels (Args) — "axis: ... a tuple of axes; a label is then
# a flat row-major index into the slice ``logits[axis]`` taken in the order given."
@pytest.mark.parametrize("axis", [(1, 2), (2, 1)], ids=["(1,2)", "(2,1)"])
def test_sce_with_integer_labels_tuple_axis_label_is_flat_row_major_index_in_order_given(axis):
    z = a(np.sin(np.arange(24.0)).reshape(2, 3, 4))
    y = jnp.array([5, 11])
    flat = np.asarray(z, np.float64).transpose(0, *axis).reshape(2, 12)
    got = jitted.softmax_cross_entropy_with_integer_labels(z, y, axis=axis)
    np.testing.assert_allclose(got, np_lse(flat) - flat[[0, 1], [5, 11]], rtol=1e-6)


# ============================================================================================
# linear_cross_entropy
# ============================================================================================

X = a([[0.5, -1.0, 2.0, 0.3], [1.0, 0.3, -0.2, -0.7], [-0.4, 0.8, 0.1, 1.2]])
W = a(np.cos(np.arange(20.0)).reshape(4, 5))
B = a([0.1, -0.2, 0.0, 0.3, -0.1])
Y = jnp.array([0, 4, 2])


@jax.jit
def linear_per_token(x, w, bias):
    return jsoftmax.linear_cross_entropy(x, w, Y, bias=bias, reduction="none")


def logits_of(x, w, bias=None):
    z = x @ w
    return z if bias is None else z + bias[None, :]


# linear_cross_entropy — "Non-finite values in ``x``, ``w`` or ``bias`` (``inf`` or ``NaN``) make
# the affected tokens' losses ``NaN`` (a ``+inf`` logit has no finite logsumexp); other tokens are
# unaffected under ``reduction="none"``."
@pytest.mark.parametrize(
    "where, bad",
    [
        ("x", INF),
        ("x", -INF),
        ("x", NAN),
        ("w", NAN),
        ("bias", INF),
        ("bias", NAN),
    ],
    ids=["x+inf", "x-inf", "x_nan", "w_nan", "bias+inf", "bias_nan"],
)
def test_linear_cross_entropy_non_finite_x_w_or_bias_make_affected_tokens_nan_others_unaffected(
    where, bad
):
    x, w, bias = X, W, B
    if where == "x":
        x, affected = X.at[0, 1].set(bad), [0]  # one token's features
    elif where == "w":
        w, affected = W.at[1, 3].set(bad), [0, 1, 2]  # one class of every token
    else:
        bias, affected = B.at[3].set(bad), [0, 1, 2]
    loss = np.asarray(linear_per_token(x, w, bias))
    assert np.all(np.isnan(loss[affected])), loss
    clean = np.asarray(linear_per_token(X, W, B))
    rest = [n for n in range(3) if n not in affected]
    np.testing.assert_array_equal(loss[rest], clean[rest])


# linear_cross_entropy — "A ``-inf`` logit has probability 0, as in cross_entropy: the loss
# stays finite unless the class has target mass (the label's class, or any class with
# ``label_smoothing > 0``), where it is ``+inf``."
@pytest.mark.parametrize("gradients_in_forward", [True, False], ids=["fused", "recompute"])
def test_linear_cross_entropy_neg_inf_logit_has_probability_zero_finite_unless_target_mass(
    gradients_in_forward,
):
    bias = B.at[3].set(-INF)  # class 3's logit is -inf for every token
    labels = jnp.array([0, 1, 3])  # token 2 is labelled with class 3

    def per_token(bias, **kw):
        return jsoftmax.linear_cross_entropy(X, W, labels, bias=bias, reduction="none", **kw)

    loss = np.asarray(per_token(bias))
    assert np.isfinite(loss[:2]).all() and loss[2] == np.inf, loss
    # the finite tokens equal the loss over the other classes
    ref = jsoftmax.cross_entropy(
        logits_of(X, W, B)[:2][:, [0, 1, 2, 4]], labels[:2], reduction="none"
    )
    np.testing.assert_allclose(loss[:2], np.asarray(ref), rtol=1e-6)
    assert (np.asarray(per_token(bias, label_smoothing=0.1)) == np.inf).all()
    # the gradient of the finite tokens' mean: zero for the -inf class, finite elsewhere
    grad = jax.grad(
        lambda b: jsoftmax.linear_cross_entropy(
            X[:2], W, labels[:2], bias=b, gradients_in_forward=gradients_in_forward
        )
    )(bias)
    assert np.isfinite(np.asarray(grad)).all() and float(grad[3]) == 0.0


# linear_cross_entropy — "Reverse mode to any order (``grad``, grad-of-grad) and
# forward-over-reverse (Hessian products) work; forward mode applied directly (``jax.jvp``,
# ``jax.jacfwd``) does not, as for every ``jax.custom_vjp``."
def test_linear_cross_entropy_reverse_any_order_and_forward_over_reverse_work_forward_mode_does_not(
    x64,
):
    x, w, b = (jnp.asarray(v, jnp.float64) for v in (X, W, B))
    kw = {"chunk_size": (2, 3), "label_smoothing": 0.1, "z_loss": 0.01}

    def ours(b):
        return jsoftmax.linear_cross_entropy(x, w, Y, bias=b, **kw)

    def ref(b):
        return jsoftmax.cross_entropy(logits_of(x, w, b), Y, label_smoothing=0.1, z_loss=0.01)

    v = jnp.linspace(-1.0, 1.0, 5)

    @jax.jit
    def run(b):
        return {
            what: (d(ours)(b), d(ref)(b))
            for what, d in [
                # grad-of-grad (which includes grad)
                ("grad_of_grad", lambda f: jax.grad(lambda b: jnp.sum(jax.grad(f)(b) ** 2))),
                # forward-over-reverse: a Hessian-vector product
                ("forward_over_reverse", lambda f: lambda b: jax.jvp(jax.grad(f), (b,), (v,))[1]),
            ]
        }

    for what, (got, want) in run(b).items():
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-14, err_msg=what)
    # forward mode fails by the time the program is lowered (nothing needs compiling)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jit(lambda b: jax.jvp(ours, (b,), (b,))).lower(b)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jit(jax.jacfwd(ours)).lower(b)


# linear_cross_entropy — "float16/bfloat16 ``x``/``w`` run their matmuls with float32
# accumulation (``preferred_element_type``) and every other step in float32." (Returns: "float32
# for float16/bfloat16/float32 inputs ...; the gradients have the inputs' dtypes.")
@HALF
def test_linear_cross_entropy_half_inputs_float32_accumulation_loss_float32_grads_input_dtype(
    dtype,
):
    x, w, b = X.astype(dtype), W.astype(dtype), B.astype(dtype)

    @jax.jit
    def run(x, w, b):
        def loss(x, w, b):
            return jsoftmax.linear_cross_entropy(
                x, w, Y, bias=b, chunk_size=(2, 2), reduction="none"
            )

        per, pull = jax.vjp(loss, x, w, b)
        # products of two half-precision numbers are exact in float32: only the order of the sum
        # differs from the float32 logits
        z32 = logits_of(x.astype(jnp.float32), w.astype(jnp.float32), b.astype(jnp.float32))
        return per, jsoftmax.cross_entropy(z32, Y, reduction="none"), pull(jnp.ones_like(per))

    loss, want, grads = run(x, w, b)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert [g.dtype for g in grads] == [dtype] * 3


# linear_cross_entropy (description) — "This is exactly ``jsoftmax.cross_entropy(x @ w + bias,
# labels, ...)`` with the same options."
@pytest.mark.parametrize(
    "kw",
    [
        {"reduction": "mean", "ignore_index": 2, "z_loss": 0.01},
        {"reduction": "sum", "label_smoothing": 0.2},
        {"reduction": "none", "ignore_index": 4, "label_smoothing": 0.1, "z_loss": 0.05},
    ],
    ids=["mean_ignore_index_z_loss", "sum_smoothing", "none_all_options"],
)
def test_linear_cross_entropy_is_exactly_cross_entropy_of_x_at_w_plus_bias(kw):
    def ours(x, w, b):
        return jnp.sum(jsoftmax.linear_cross_entropy(x, w, Y, bias=b, chunk_size=(2, 2), **kw))

    def ref(x, w, b):
        return jnp.sum(jsoftmax.cross_entropy(logits_of(x, w, b), Y, **kw))

    @jax.jit
    def run(x, w, b):
        return jax.value_and_grad(ours, (0, 1, 2))(x, w, b), jax.value_and_grad(ref, (0, 1, 2))(
            x, w, b
        )

    (got, dgot), (want, dwant) = run(X, W, B)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for g, h in zip(dgot, dwant, strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-6)


# linear_cross_entropy (description) — "Tokens whose label is ``ignore_index`` have ℓ_n = 0;
# ``"mean"`` divides Σ ℓ_n by the number of tokens that are not ignored (0 if there are none)."
def test_linear_cross_entropy_ignored_tokens_are_zero_mean_over_non_ignored_zero_if_none():
    y = jnp.array([0, -1, 2])
    per = np.asarray(jitted.linear_cross_entropy(X, W, y, ignore_index=-1, reduction="none"))
    assert per[1] == 0
    mean = float(jitted.linear_cross_entropy(X, W, y, ignore_index=-1))
    np.testing.assert_allclose(mean, per.sum() / 2, rtol=1e-6)
    none = jnp.array([-1, -1, -1])
    assert float(jitted.linear_cross_entropy(X, W, none, ignore_index=-1)) == 0.0


# linear_cross_entropy (Args) — "chunk_size: ``None`` (automatic), an int (the vocabulary chunk;
# tokens automatic) or a pair ``(token_chunk, vocab_chunk)`` whose entries may be ``None``.
# Chunks larger than the axis are clipped to it."
@pytest.mark.parametrize(
    "chunk_size",
    [None, 2, (2, 3), (None, 2), (2, None), (100, 100)],
    ids=["None", "2", "(2,3)", "(None,2)", "(2,None)", "(100,100)"],
)
def test_linear_cross_entropy_chunk_size_forms_and_oversized_chunks_give_the_same_loss(chunk_size):
    kw = {"bias": B, "label_smoothing": 0.1, "reduction": "none"}
    got = jitted.linear_cross_entropy(X, W, Y, chunk_size=chunk_size, **kw)
    want = jitted.cross_entropy(logits_of(X, W, B), Y, label_smoothing=0.1, reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-6)


# linear_cross_entropy (Args) — "softcap: c > 0 for logit soft-capping c tanh(s/c) (as in
# Gemma 2), applied before the loss in value and gradient"
def test_linear_cross_entropy_softcap_applied_before_the_loss_in_value_and_gradient():
    c = 1.5

    def ours(x, w):
        return jsoftmax.linear_cross_entropy(x, w, Y, bias=B, softcap=c, chunk_size=(2, 2))

    def ref(x, w):
        return jsoftmax.cross_entropy(c * jnp.tanh(logits_of(x, w, B) / c), Y)

    np.testing.assert_allclose(jax.jit(ours)(X, W), jax.jit(ref)(X, W), rtol=1e-6)
    for g, h in zip(jgrad(ours, (0, 1))(X, W), jgrad(ref, (0, 1))(X, W), strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-7)


# linear_cross_entropy (description) — gradients in the forward pass: the forward rule "saves
# only those gradients and the backward pass scales them"; recompute: it "saves ``x``, ``w``,
# ``bias``, ``labels`` and two numbers per token (the shift and the log-sum) and the mean's
# divisor"
def test_linear_cross_entropy_gradients_in_forward_saves_only_the_gradients():
    _, pull = jax.vjp(lambda x, w, b: jsoftmax.linear_cross_entropy(x, w, Y, bias=b), X, W, B)
    residuals = [np.asarray(r) for r in jax.tree_util.tree_leaves(pull)]
    assert sorted(r.shape for r in residuals) == sorted([X.shape, W.shape, B.shape])
    grads = jax.grad(lambda x, w, b: jsoftmax.linear_cross_entropy(x, w, Y, bias=b), (0, 1, 2))(
        X, W, B
    )
    for g in grads:  # what is saved is the gradient for a unit cotangent
        assert any(r.shape == g.shape and np.allclose(r, g) for r in residuals)


@pytest.mark.parametrize(
    "kw", [{"gradients_in_forward": False}, {"reduction": "none"}], ids=["forced", "none"]
)
def test_linear_cross_entropy_recompute_saves_inputs_labels_two_numbers_per_token_and_divisor(kw):
    def f(x, w, b):
        out = jsoftmax.linear_cross_entropy(x, w, Y, bias=b, **kw)
        return out

    _, pull = jax.vjp(f, X, W, B)
    residuals = [np.asarray(r) for r in jax.tree_util.tree_leaves(pull)]
    shapes = sorted(r.shape for r in residuals)
    assert shapes == sorted([X.shape, W.shape, B.shape, Y.shape, (3,), (3,), ()])
    for saved in (X, W, B, Y):  # the inputs themselves, not arrays of the same shape
        assert any(r.shape == saved.shape and np.array_equal(r, saved) for r in residuals)


# linear_cross_entropy (Returns) — "A scalar for ``"mean"``/``"sum"``; the per-token losses of
# ``labels``' shape for ``"none"``."
@pytest.mark.parametrize("reduction, shape", [("mean", ()), ("sum", ()), ("none", (2, 3))])
def test_linear_cross_entropy_returns_scalar_or_per_token_losses_of_labels_shape(reduction, shape):
    x = a(np.sin(np.arange(24.0)).reshape(2, 3, 4))  # [batch, seq, D]
    labels = jnp.array([[0, 4, 2], [1, 1, 3]])
    loss = jitted.linear_cross_entropy(x, W, labels, reduction=reduction)
    assert loss.shape == shape and loss.dtype == jnp.float32
    want = jitted.cross_entropy(
        logits_of(x.reshape(6, 4), W), labels.reshape(6), reduction=reduction
    )
    np.testing.assert_allclose(np.asarray(loss).reshape(np.shape(want)), want, rtol=1e-6)
