"""sparsemax, entmax15, entmax: values, analytic rules, thresholds, Jacobians, twins, edge inputs.

References written here, independently of the library:

* float64 NumPy closed forms (sort-based sparsemax and 1.5-entmax; bisection to 200 steps for
  α-entmax) for values;
* plain-JAX sort-based versions differentiated by autodiff (through sort, cumsum and a gather)
  for gradients: the custom rules must equal autodiff of a textbook implementation;
* optax's ``projection_simplex`` for sparsemax, and the PyTorch ``entmax`` package through
  literals recorded by ``tests/entmax_oracle.py`` (and live when it is installed).
"""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.ad_checkpoint import print_saved_residuals
from jax.test_util import check_grads

import jsoftmax
from jsoftmax import fwd


def _load(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ORACLE = _load("entmax_oracle")
ref64 = _load("_sparse_reference").ref64
smooth_points = _load("_sparse_reference").smooth_points

NORMALISERS = {
    "sparsemax": jsoftmax.sparsemax,
    "entmax15": jsoftmax.entmax15,
    "entmax_1.3": lambda x, axis=-1, **kw: jsoftmax.entmax(x, 1.3, axis, n_iter=200, **kw),
    "entmax_2.5": lambda x, axis=-1, **kw: jsoftmax.entmax(x, 2.5, axis, n_iter=200, **kw),
}
TWINS = {
    "sparsemax": fwd.sparsemax,
    "entmax15": fwd.entmax15,
    "entmax_1.3": lambda x, axis=-1, **kw: fwd.entmax(x, 1.3, axis, n_iter=200, **kw),
    "entmax_2.5": lambda x, axis=-1, **kw: fwd.entmax(x, 2.5, axis, n_iter=200, **kw),
}
ALPHA = {"sparsemax": 2.0, "entmax15": 1.5, "entmax_1.3": 1.3, "entmax_2.5": 2.5}
NAMES = list(NORMALISERS)
# conventions (masks, infinities, dtypes, transforms) are shared code: α = 2.5 adds nothing there
EDGE_NAMES = ["sparsemax", "entmax15", "entmax_1.3"]
METHODS = ["newton", "sort"]


def rand(shape, seed=0, scale=2.0, dtype=jnp.float32):
    return (scale * jax.random.normal(jax.random.key(seed), shape)).astype(dtype)


# ------------------------------------------------------------------------- references


def sort_sparsemax(x):
    """Textbook sparsemax over the last axis in plain JAX (autodiff goes through the sort)."""
    zs = -jnp.sort(-x, axis=-1)
    k = jnp.arange(1, x.shape[-1] + 1, dtype=x.dtype).reshape((1,) * (x.ndim - 1) + (-1,))
    cs = jnp.cumsum(zs, -1)
    kk = jnp.sum(1 + k * zs > cs, -1, keepdims=True)
    tau = (jnp.take_along_axis(cs, kk - 1, -1) - 1) / kk
    return jnp.maximum(x - tau, 0)


def sort_entmax15(x):
    """Textbook 1.5-entmax (Peters et al.'s sort-based threshold) over the last axis."""
    z = x / 2
    zs = -jnp.sort(-z, axis=-1)
    k = jnp.arange(1, x.shape[-1] + 1, dtype=x.dtype).reshape((1,) * (x.ndim - 1) + (-1,))
    mean = jnp.cumsum(zs, -1) / k
    var = jnp.cumsum(zs**2, -1) / k - mean**2
    delta = (1 - k * var) / k
    # the root where it is real (a safe sqrt: autodiff must not meet sqrt'(0) in unused terms)
    tau = mean - jnp.where(delta > 0, jnp.sqrt(jnp.where(delta > 0, delta, 1)), 0)
    kk = jnp.sum(tau <= zs, -1, keepdims=True)
    return jnp.maximum(z - jnp.take_along_axis(tau, kk - 1, -1), 0) ** 2


# ------------------------------------------------------------------------------- values


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("axis", [-1, 0, 1], ids=str)
def test_values_match_float64_reference(name, axis, x64):
    x = rand((5, 6, 7), dtype=jnp.float64)
    got = NORMALISERS[name](x, axis)
    np.testing.assert_allclose(got, ref64(ALPHA[name], x, axis), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", ["sparsemax", "entmax15"])
@pytest.mark.parametrize("method", METHODS)
def test_newton_and_sort_thresholds_agree_in_float32(fn, method):
    x = rand((64, 300), scale=3.0)
    got = getattr(jsoftmax, fn)(x, method=method)
    want = ref64(ALPHA[fn], x)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    assert np.all(np.asarray(got)[want == 0] == 0)  # exact zeros off the support


HARD_ROWS = {
    "geometric": -(2.0 ** -np.arange(40)),  # each Newton step can drop a single entry
    "linear": np.linspace(0, -1, 257),
    "near_equal": 1e-6 * np.arange(300),
    "one_far_ahead": np.r_[100.0, np.zeros(50)],
    "wide_spread": np.r_[np.linspace(-40, 40, 200)],
    "ties_at_top": np.r_[3.0, 3.0, 3.0, 0.0, -1.0],
}


@pytest.mark.parametrize("fn", ["sparsemax", "entmax15"])
@pytest.mark.parametrize("row", list(HARD_ROWS), ids=str)
def test_newton_threshold_is_exact_on_adversarial_rows(fn, row, x64):
    x = jnp.asarray(HARD_ROWS[row])
    want = ref64(ALPHA[fn], x)
    for method in METHODS:
        got = getattr(jsoftmax, fn)(x, method=method)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_distributions_with_exact_zeros(name):
    x = rand((32, 50), scale=4.0)
    p = np.asarray(NORMALISERS[name](x))
    assert p.min() >= 0
    np.testing.assert_allclose(p.sum(-1), 1, atol=2e-6)
    assert (p == 0).sum() > 0  # sparse: scores this spread leave entries out


def test_sparsemax_equals_optax_projection_simplex():
    x = rand((16, 40))
    want = jax.vmap(optax.projections.projection_simplex)(x)
    np.testing.assert_allclose(jsoftmax.sparsemax(x), want, atol=1e-6)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax_1.3", "entmax_2.5"])
def test_values_match_the_entmax_package(name):
    entmax = pytest.importorskip("entmax")
    torch = pytest.importorskip("torch")
    x = rand((6, 9), scale=2.0)
    xt = torch.tensor(np.asarray(x, np.float64))
    if name == "sparsemax":
        want = entmax.sparsemax(xt, dim=-1)
    elif name == "entmax15":
        want = entmax.entmax15(xt, dim=-1)
    else:
        want = entmax.entmax_bisect(xt, ALPHA[name], dim=-1, n_iter=100)
    np.testing.assert_allclose(NORMALISERS[name](x), want.numpy(), atol=2e-6)


def test_values_and_gradients_match_recorded_entmax_package_literals(x64):
    x = jnp.asarray(ORACLE.X, jnp.float64)
    c = jnp.asarray(ORACLE.COTANGENT, jnp.float64)
    rec = ORACLE.ENTMAX_ORACLE
    for name, fn in [("sparsemax", jsoftmax.sparsemax), ("entmax15", jsoftmax.entmax15)]:
        for method in METHODS:
            np.testing.assert_allclose(fn(x, method=method), rec[name], atol=1e-12)
            grad = jax.grad(lambda x: jnp.sum(fn(x, method=method) * c))(x)  # noqa: B023
            np.testing.assert_allclose(grad, rec[name + "_grad"], atol=1e-12)
    for alpha, want in rec["entmax_bisect"].items():
        np.testing.assert_allclose(jsoftmax.entmax(x, alpha, n_iter=100), want, atol=1e-12)


# ------------------------------------------------------------------------------- limits


def test_entmax_with_alpha_array_two_is_sparsemax(x64):
    x = rand((8, 20), dtype=jnp.float64)
    np.testing.assert_allclose(
        jsoftmax.entmax(x, jnp.array(2.0)), jsoftmax.sparsemax(x), atol=1e-12
    )


def test_entmax_with_alpha_array_one_and_a_half_is_entmax15(x64):
    x = rand((8, 20), dtype=jnp.float64)
    np.testing.assert_allclose(jsoftmax.entmax(x, jnp.array(1.5)), jsoftmax.entmax15(x), atol=1e-12)


@pytest.mark.parametrize("eps", [1e-2, 1e-3, 1e-4])
def test_entmax_tends_to_softmax_as_alpha_tends_to_one(eps, x64):
    x = rand((8, 20), scale=1.0, dtype=jnp.float64)
    gap = np.abs(jsoftmax.entmax(x, 1 + eps, n_iter=200) - jax.nn.softmax(x)).max()
    assert gap < 3 * eps  # first order in α − 1


@pytest.mark.parametrize("alpha,exact", [(1, "softmax"), (1.5, "entmax15"), (2, "sparsemax")])
def test_python_alpha_of_exactly_1_15_2_uses_the_exact_function(alpha, exact):
    x = rand((4, 9))
    np.testing.assert_array_equal(jsoftmax.entmax(x, alpha), getattr(jsoftmax, exact)(x))
    g = jax.grad(lambda x: jnp.sum(jsoftmax.entmax(x, alpha) ** 2))(x)
    h = jax.grad(lambda x: jnp.sum(getattr(jsoftmax, exact)(x) ** 2))(x)
    np.testing.assert_array_equal(g, h)


@pytest.mark.parametrize("alpha", [1.0, 0.5, jnp.nan, -jnp.inf])
def test_entmax_alpha_array_not_above_one_gives_nan_for_its_slice(alpha):
    x = rand((3, 5))
    a = jnp.array([[1.5], [alpha], [2.0]])
    p = jsoftmax.entmax(x, a)
    assert np.all(np.isnan(p[1])) and np.all(np.isfinite(p[jnp.array([0, 2])]))
    g = jax.grad(lambda x, a: jnp.sum(jsoftmax.entmax(x, a) * x), argnums=(0, 1))(x, a)
    assert np.all(np.isnan(g[0][1])) and np.all(np.isfinite(g[0][jnp.array([0, 2])]))


def test_entmax_bisection_stops_early_and_n_iter_caps_it(x64):
    x = rand((4, 30), dtype=jnp.float64)
    rough = jsoftmax.entmax(x, 1.3, n_iter=3)
    fine = jsoftmax.entmax(x, 1.3, n_iter=200)
    assert np.abs(rough - fine).max() > 1e-4  # three halvings are visibly coarse
    np.testing.assert_allclose(fine, ref64(1.3, x), atol=1e-12)
    np.testing.assert_allclose(rough.sum(-1), 1, atol=1e-12)  # but still a distribution


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", NAMES)
def test_check_grads_reverse_order_two_away_from_support_changes(name, x64):
    for row in smooth_points(ALPHA[name]):
        check_grads(NORMALISERS[name], (jnp.asarray(row),), order=2, modes=["rev"])


@pytest.mark.parametrize("name", NAMES)
def test_twin_check_grads_both_modes_order_two(name, x64):
    for row in smooth_points(ALPHA[name], count=2):
        check_grads(TWINS[name], (jnp.asarray(row),), order=2, modes=["fwd", "rev"])


@pytest.mark.parametrize("fn,ref", [("sparsemax", sort_sparsemax), ("entmax15", sort_entmax15)])
@pytest.mark.parametrize("method", METHODS)
def test_custom_gradient_equals_autodiff_of_sort_based_reference(fn, ref, method, x64):
    x = jnp.asarray(smooth_points(ALPHA[fn], n=9, count=6))
    c = rand(x.shape, seed=5, dtype=jnp.float64)
    ours = jax.grad(lambda x: jnp.sum(getattr(jsoftmax, fn)(x, method=method) * c))(x)
    theirs = jax.grad(lambda x: jnp.sum(ref(x) * c))(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    h_ours = jax.hessian(lambda x: jnp.sum(getattr(jsoftmax, fn)(x, method=method) ** 3))(x[0])
    h_theirs = jax.hessian(lambda x: jnp.sum(ref(x) ** 3))(x[0])
    np.testing.assert_allclose(h_ours, h_theirs, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_is_the_analytic_vjp_u_g_minus_u_mean(name, x64):
    # x̄ = u ⊙ g − u ⟨u, g⟩ / Σu with u = p^(2−α) on the support
    x = rand((6, 11), dtype=jnp.float64)
    g = rand((6, 11), seed=9, dtype=jnp.float64)
    p = NORMALISERS[name](x)
    u = np.where(p > 0, np.asarray(p) ** (2 - ALPHA[name]), 0)
    want = u * g - u * np.sum(u * g, -1, keepdims=True) / u.sum(-1, keepdims=True)
    got = jax.vjp(NORMALISERS[name], x)[1](g)[0]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_entmax_alpha_gradient_matches_finite_differences(x64):
    x = rand((5, 8), dtype=jnp.float64)
    a = jnp.array([[1.2], [1.4], [1.7], [2.2], [3.0]])
    c = rand((5, 8), seed=4, dtype=jnp.float64)

    def f(a):
        return jnp.sum(jsoftmax.entmax(x, a, n_iter=200) * c)

    check_grads(f, (a,), order=1, modes=["rev"], eps=1e-5)
    check_grads(lambda a: jnp.sum(fwd.entmax(x, a, n_iter=200) * c), (a,), order=1, eps=1e-5)


def test_entmax_scalar_alpha_array_gets_summed_gradient(x64):
    x = rand((5, 8), dtype=jnp.float64)
    per_row = jax.grad(lambda a: jnp.sum(jsoftmax.entmax(x, a) * x))(jnp.full((5, 1), 1.3))
    scalar = jax.grad(lambda a: jnp.sum(jsoftmax.entmax(x, a) * x))(jnp.array(1.3))
    assert scalar.shape == ()
    np.testing.assert_allclose(scalar, per_row.sum(), rtol=1e-12)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax_1.3"])
def test_rule_saves_only_the_output(name, capsys):
    x = rand((4, 16))
    print_saved_residuals(lambda x: jnp.sum(NORMALISERS[name](x) * x), x)
    saved = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    shapes = [line.split()[0] for line in saved]
    # p itself (f32[4,16]); entmax also keeps α per slice (f32[4,1]); x is saved by the
    # caller's own x * p, not by the rule
    assert shapes.count("f32[4,16]") <= 2 and all(s in ("f32[4,16]", "f32[4,1]") for s in shapes), (
        saved
    )


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("name", EDGE_NAMES)
def test_jit_vmap_grad_checkpoint_compositions(name):
    f = NORMALISERS[name]
    x = rand((3, 4, 10))
    want = f(x)
    np.testing.assert_allclose(jax.jit(f)(x), want, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(f)(x), want, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.vmap(f))(x), want, atol=1e-6)
    loss = lambda x: jnp.sum(f(x) * jnp.arange(10.0).reshape((1,) * (x.ndim - 1) + (10,)))  # noqa: E731
    g = jax.grad(loss)(x)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(x), g, atol=1e-5)
    np.testing.assert_allclose(jax.vmap(jax.grad(loss))(x), g, atol=1e-5)
    np.testing.assert_allclose(jax.grad(jax.checkpoint(loss))(x), g, atol=1e-5)
    hvp = jax.jvp(jax.grad(loss), (x,), (jnp.ones_like(x),))[1]  # forward-over-reverse
    assert np.all(np.isfinite(hvp))


@pytest.mark.parametrize("name", EDGE_NAMES)
@pytest.mark.parametrize("axis", [(0, 2), (-1, -2), None], ids=str)
def test_tuple_and_none_axes_normalise_the_flattened_slice(name, axis):
    x = rand((3, 4, 5))
    got = NORMALISERS[name](x, axis)
    axes = tuple(range(3)) if axis is None else tuple(a % 3 for a in axis)
    moved = jnp.moveaxis(x, axes, tuple(range(3 - len(axes), 3)))
    flat = moved.reshape((*moved.shape[: 3 - len(axes)], -1))
    want = NORMALISERS[name](flat).reshape(moved.shape)
    np.testing.assert_allclose(
        jnp.moveaxis(got, tuple(range(3 - len(axes), 3)), axes), want, atol=1e-6
    )


# ------------------------------------------------------------------------ edge inputs


@pytest.mark.parametrize("name", EDGE_NAMES)
def test_neg_inf_entries_get_probability_zero_and_zero_gradient(name):
    x = rand((2, 6)).at[:, 2].set(-jnp.inf)
    p = NORMALISERS[name](x)
    assert np.all(p[:, 2] == 0) and np.all(np.isfinite(p))
    np.testing.assert_allclose(
        p[:, jnp.array([0, 1, 3, 4, 5])],
        NORMALISERS[name](x[:, jnp.array([0, 1, 3, 4, 5])]),
        atol=1e-6,
    )
    g = jax.grad(lambda x: jnp.sum(NORMALISERS[name](x) * jnp.arange(6.0)[None]))(x)
    assert np.all(g[:, 2] == 0) and np.all(np.isfinite(g))


@pytest.mark.parametrize("name", EDGE_NAMES)
def test_masked_entries_are_zero_fully_masked_slice_all_zero_with_zero_gradient(name):
    x = rand((3, 6))
    where = jnp.array([[True] * 6, [True, False] * 3, [False] * 6])
    p = NORMALISERS[name](x, where=where)
    np.testing.assert_array_equal(p[1, 1::2], 0)
    np.testing.assert_array_equal(p[2], 0)
    np.testing.assert_allclose(p[1, ::2], NORMALISERS[name](x[1, ::2]), atol=1e-6)
    g = jax.grad(lambda x: jnp.sum(NORMALISERS[name](x, where=where) * jnp.arange(6.0)[None]))(x)
    np.testing.assert_array_equal(g[1, 1::2], 0)
    np.testing.assert_array_equal(g[2], 0)


@pytest.mark.parametrize("name", EDGE_NAMES)
def test_where_broadcasts_from_a_per_class_row(name):
    x = rand((4, 6))
    where = jnp.array([True, True, False, True, False, True])
    np.testing.assert_allclose(
        NORMALISERS[name](x, where=where),
        NORMALISERS[name](x, where=jnp.broadcast_to(where, x.shape)),
    )


@pytest.mark.parametrize("name", EDGE_NAMES)
def test_unmasked_all_neg_inf_slice_is_nan_and_masking_it_gives_zeros(name):
    x = rand((2, 5)).at[0].set(-jnp.inf)
    p = NORMALISERS[name](x)
    assert np.all(np.isnan(p[0])) and np.all(np.isfinite(p[1]))
    q = NORMALISERS[name](x, where=x > -jnp.inf)
    np.testing.assert_array_equal(q[0], 0)
    np.testing.assert_allclose(q[1], p[1])


@pytest.mark.parametrize("name", EDGE_NAMES)
@pytest.mark.parametrize("bad", [jnp.inf, jnp.nan], ids=["inf", "nan"])
def test_inf_or_nan_entry_makes_its_own_slice_nan_other_slices_unaffected(name, bad):
    x = rand((3, 5)).at[1, 2].set(bad)
    p = NORMALISERS[name](x)
    assert np.all(np.isnan(p[1]))
    np.testing.assert_allclose(p[jnp.array([0, 2])], NORMALISERS[name](x[jnp.array([0, 2])]))


@pytest.mark.parametrize("name", EDGE_NAMES)
def test_tied_entries_get_equal_probabilities(name):
    x = jnp.array([[2.0, 2.0, 2.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0]])
    p = np.asarray(NORMALISERS[name](x))
    assert p[0, 0] == p[0, 1] == p[0, 2]
    np.testing.assert_allclose(p[1], 0.2, rtol=1e-6)


@pytest.mark.parametrize("name", EDGE_NAMES)
@pytest.mark.parametrize("base", [1e4, 3e7])
def test_huge_magnitudes_cost_nothing(name, base):
    d = jnp.array([[0.0, -0.5, -1.0, -4.0, 0.5], [0.5, 0.0, -2.0, -2.0, 0.5]]) * 4  # ulp(3e7) = 2
    want = NORMALISERS[name](d)
    np.testing.assert_allclose(NORMALISERS[name](d + base), want, atol=1e-6)
    np.testing.assert_allclose(NORMALISERS[name](d - base), want, atol=1e-6)
    g = jax.grad(lambda x: jnp.sum(NORMALISERS[name](x) * jnp.arange(5.0)[None]))
    np.testing.assert_allclose(g(d + base), g(d), atol=1e-5)


def test_point_on_the_threshold_gets_probability_zero_and_is_left_out_of_the_support():
    # sparsemax([2, 1, -1]) = [1, 0, 0] with the second entry exactly on the threshold
    x = jnp.array([2.0, 1.0, -1.0])
    p = jsoftmax.sparsemax(x)
    np.testing.assert_array_equal(p, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(jax.jacrev(jsoftmax.sparsemax)(x), np.zeros((3, 3)))


@pytest.mark.parametrize("name", EDGE_NAMES)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_is_computed_in_float32_and_returned_in_input_dtype(name, dtype):
    x = rand((4, 9))
    p = NORMALISERS[name](x.astype(dtype))
    assert p.dtype == dtype
    want = NORMALISERS[name](x.astype(dtype).astype(jnp.float32))
    np.testing.assert_allclose(p.astype(jnp.float32), want, atol=float(jnp.finfo(dtype).eps))
    g = jax.grad(lambda x: jnp.sum(NORMALISERS[name](x).astype(jnp.float32)))(x.astype(dtype))
    assert g.dtype == dtype


@pytest.mark.parametrize("fn", [jsoftmax.sparsemax, jsoftmax.entmax15, jsoftmax.entmax])
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_and_boolean_inputs_raise_type_error(fn, dtype):
    with pytest.raises(TypeError, match="x"):
        fn(jnp.ones((3,), dtype))


def test_bad_options_raise_naming_the_argument():
    x = rand((2, 4))
    with pytest.raises(ValueError, match="method"):
        jsoftmax.sparsemax(x, method="bisect")
    with pytest.raises(ValueError, match="alpha must be finite and >= 1"):
        jsoftmax.entmax(x, 0.5)
    with pytest.raises(ValueError, match="alpha must be finite"):
        jsoftmax.entmax(x, float("inf"))
    with pytest.raises(TypeError, match="alpha"):
        jsoftmax.entmax(x, True)
    with pytest.raises(ValueError, match="alpha must be a scalar or broadcastable"):
        jsoftmax.entmax(x, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="n_iter"):
        jsoftmax.entmax(x, 1.3, n_iter=0)
    with pytest.raises(ValueError, match="where"):
        jsoftmax.entmax15(x, where=jnp.ones((3, 4), bool))
    with pytest.raises(ValueError, match="axis"):
        jsoftmax.sparsemax(x, axis=2)


# ------------------------------------------------------------------------- Jacobians


@pytest.mark.parametrize(
    "jac,f",
    [
        (jsoftmax.sparsemax_jacobian, jsoftmax.sparsemax),
        (jsoftmax.entmax15_jacobian, jsoftmax.entmax15),
        (lambda x: jsoftmax.entmax_jacobian(x, 1.3), lambda x: jsoftmax.entmax(x, 1.3)),
        (lambda x: jsoftmax.entmax_jacobian(x, 1.0), jsoftmax.softmax),
    ],
)
def test_dense_jacobians_equal_jacrev_symmetric_rows_sum_to_zero(jac, f):
    x = rand((3, 7))
    J = np.asarray(jac(x))
    assert J.shape == (3, 7, 7)
    for i in range(3):
        np.testing.assert_allclose(J[i], jax.jacrev(f)(x[i]), atol=1e-6)
    np.testing.assert_allclose(J, np.swapaxes(J, -1, -2), atol=1e-7)
    np.testing.assert_allclose(J.sum(-1), 0, atol=1e-6)


def test_entmax_jacobian_at_alpha_one_is_softmax_jacobian():
    x = rand((2, 5))
    np.testing.assert_allclose(
        jsoftmax.entmax_jacobian(x, 1.0), jsoftmax.softmax_jacobian(x), atol=1e-7
    )


def test_jacobian_is_zero_off_the_support_and_along_another_axis():
    x = rand((5, 3))
    J = np.asarray(jsoftmax.sparsemax_jacobian(x, axis=0))
    p = np.asarray(jsoftmax.sparsemax(x, axis=0)).T
    assert J.shape == (3, 5, 5)
    off = p == 0
    assert np.all(J[off] == 0) and np.all(np.swapaxes(J, -1, -2)[off] == 0)


# ------------------------------------------------------------- review regressions


# Rows with an entry within an ulp of the 1.5-entmax threshold: the exact root of a piece can
# round onto that entry and fail the support count on every pass (the loop then ran to its
# limit and returned NaN).
NEAR_THRESHOLD_F32 = [
    0.0, 1.192244529724121, -0.4935152232646942, -0.5319418907165527, -0.5409639477729797,
    -0.12054093182086945, -0.017247144132852554, -0.0409848652780056,
]  # fmt: skip
NEAR_THRESHOLD_F64_HEX = [
    "0x1.4314c75b26e8cp-1", "0x1.f91651d366287p-1", "0x1.0aa1eb52e9bf5p-1",
    "0x1.541ae45b5eae3p-1", "0x1.3fc4d9165c585p+1", "0x1.1c2441881c560p-1",
    "0x1.1c2441881c560p-1", "0x1.645ebf3496fa7p-1",
]  # fmt: skip


def test_entmax15_newton_with_an_entry_on_the_threshold_is_finite_and_matches_sort():
    x = jnp.asarray(NEAR_THRESHOLD_F32, jnp.float32)
    np.testing.assert_allclose(jsoftmax.entmax15(x), jsoftmax.entmax15(x, method="sort"), atol=1e-6)
    with jax.enable_x64(True):
        r = jnp.asarray([float.fromhex(h) for h in NEAR_THRESHOLD_F64_HEX])
        np.testing.assert_allclose(jsoftmax.entmax15(r), ref64(1.5, r), atol=1e-14)


@pytest.mark.parametrize("fn", ["sparsemax", "entmax15"])
def test_newton_matches_sort_with_entries_placed_ulps_around_the_threshold(fn, x64):
    alpha = ALPHA[fn]
    rows = []
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = rng.normal(size=12)
        p = ref64(alpha, x)
        z = (alpha - 1) * (x - x.max())
        tau = np.min(z[p > 0] - p[p > 0] ** (alpha - 1))
        j = int(np.argmin(np.where(p > 0, np.inf, -z)))  # an entry off the support
        x[j] = x.max() + np.nextafter(tau, rng.choice([-1, 1]) * np.inf) / (alpha - 1)
        rows.append(x)
    x = jnp.asarray(np.stack(rows))
    f = jax.jit(lambda x: getattr(jsoftmax, fn)(x))
    np.testing.assert_allclose(f(x), getattr(jsoftmax, fn)(x, method="sort"), atol=1e-12)
    np.testing.assert_allclose(f(x), ref64(alpha, x), atol=1e-12)


@pytest.mark.parametrize("name", EDGE_NAMES)
@pytest.mark.parametrize("twin", [False, True], ids=["custom_vjp", "fwd_twin"])
@pytest.mark.parametrize("bad", [jnp.inf, jnp.nan], ids=["inf", "nan"])
def test_inf_or_nan_slice_has_a_nan_gradient_not_a_finite_one(name, twin, bad):
    f = (TWINS if twin else NORMALISERS)[name]
    x = rand((2, 5)).at[0, 2].set(bad)
    p = f(x)
    assert np.all(np.isnan(p[0])) and np.all(np.isfinite(p[1]))
    g = jax.grad(lambda x: jnp.sum(f(x) * jnp.arange(5.0)[None]))(x)
    assert np.all(np.isnan(g[0])) and np.all(np.isfinite(g[1]))


@pytest.mark.parametrize("name", EDGE_NAMES)
def test_twins_mask_conventions_match_the_custom_vjp_functions(name):
    x = rand((3, 6)).at[0, 1].set(-jnp.inf)
    where = jnp.array([[True] * 6, [True, False] * 3, [False] * 6])
    np.testing.assert_allclose(TWINS[name](x, where=where), NORMALISERS[name](x, where=where))


def test_fwd_entmax_alpha_array_not_above_one_gives_nan():
    p = fwd.entmax(rand((2, 5)), jnp.array([[1.5], [0.9]]))
    assert np.all(np.isnan(p[1])) and np.all(np.isfinite(p[0]))


@pytest.mark.parametrize(
    "alpha,exact", [(np.float32(2.0), "sparsemax"), (np.float64(1.5), "entmax15")]
)
def test_numpy_scalar_alpha_is_a_python_number(alpha, exact):
    x = rand((3, 7))
    np.testing.assert_array_equal(jsoftmax.entmax(x, alpha), getattr(jsoftmax, exact)(x))


def test_alpha_shape_error_reports_the_shape_given_and_n_iter_type():
    x = rand((4, 5))
    with pytest.raises(ValueError, match=r"broadcastable to \(4, 1\).*got shape \(4,\)"):
        jsoftmax.entmax(x, jnp.ones(4))
    with pytest.raises(ValueError, match=r"got shape \(2, 4, 1\)"):
        jsoftmax.entmax(x, jnp.ones((2, 4, 1)))
    with pytest.raises(TypeError, match=r"n_iter must be a positive int; got 50\.0"):
        jsoftmax.entmax(x, 1.3, n_iter=50.0)


def test_bisection_float32_accuracy_is_within_the_documented_bounds():
    x = rand((8, 30))
    with jax.enable_x64(True):
        want = {a: ref64(a, np.asarray(x, np.float64)) for a in (1.3, 2.0, 5.0)}
    assert np.abs(jsoftmax.entmax(x, jnp.array(2.0)) - want[2.0]).max() < 1e-6
    assert np.abs(jsoftmax.entmax(x, 1.3) - want[1.3]).max() < 1e-6
    assert np.abs(jsoftmax.entmax(x, 5.0) - want[5.0]).max() < 1e-4
