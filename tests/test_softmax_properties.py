"""Property-based tests: adversarial inputs against a float64 NumPy reference, in ulps.

Hypothesis draws huge magnitudes, ties, -inf entries and masks; ``hypothesis.target`` steers
the search towards the worst error, which Hypothesis reports in its statistics
(``pytest --hypothesis-show-statistics``). The bound allows what no float32 algorithm avoids:
rounding ``x − max`` costs ``|x − max|·eps`` relative error inside ``exp``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jsoftmax

SHAPE = (3, 7)
EPS = float(np.finfo(np.float32).eps)
TINY = float(np.finfo(np.float32).tiny)

finite = st.one_of(
    st.floats(-1e4, 1e4, width=32, allow_subnormal=False),
    st.sampled_from([0.0, 1.0, -1.0, 1e4, -1e4, 88.0, -88.0, 3e38, -3e38]),
    st.floats(-3.0000000054977558e38, 3.0000000054977558e38, width=32, allow_subnormal=False),
)
values = st.one_of(finite, st.just(-np.inf))
inputs = hnp.arrays(np.float32, SHAPE, elements=values)
masks = st.one_of(st.none(), hnp.arrays(np.bool_, SHAPE))


def reference(x, where):
    """float64 reference and the per-entry size of the unavoidable rounding of x − max."""
    x = np.asarray(x, np.float64)
    if where is not None:
        x = np.where(where, x, -np.inf)
    m = np.max(x, -1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    e = np.exp(z)
    s = np.sum(e, -1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(s == 0, 0.0, e / s)
        logp = np.where(s == 0, -np.inf, z - np.log(s))
        lse = np.log(s[..., 0]) + m[..., 0]
    # documented: an unmasked entry in a slice with no finite unmasked entry is NaN (jax.nn's
    # behaviour); masked entries stay 0 / -inf
    unmasked = np.ones(x.shape, bool) if where is None else np.asarray(where)
    dead = (s == 0) & unmasked
    p, logp = np.where(dead, np.nan, p), np.where(dead, np.nan, logp)
    zabs = np.where(np.isfinite(z), np.abs(z), 0.0)
    # |x - max| rounds with relative error eps/2, and float32(x) - float32(max) with eps/2 of
    # the result: both scale with |z|; the normaliser averages them with weights p
    # (a slice that is NaN by definition has no normaliser to average over: 0, not NaN, so the
    # masked entries of such a slice still get a finite bound)
    mean_z = np.sum(np.where(np.isnan(p), 0.0, p) * zabs, -1, keepdims=True)
    return p, logp, lse, zabs, mean_z


def check_finite_pattern(got, want):
    assert np.array_equal(np.isnan(got), np.isnan(want))
    got, want = np.where(np.isnan(got), 0.0, got), np.where(np.isnan(want), 0.0, want)
    # compare with the float64 answer rounded to float32: near ±3.4e38 the true result may
    # itself overflow float32, and then -inf is the correctly rounded answer
    with np.errstate(over="ignore"):
        want = np.asarray(want).astype(np.float32)
    assert np.array_equal(np.isneginf(got), np.isneginf(want))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=inputs, where=masks)
def test_softmax_family_against_float64(x, where):
    p, logp, lse, zabs, mean_z = reference(x, where)
    w = None if where is None else jnp.asarray(where)

    got = np.asarray(jsoftmax.softmax(x, where=w), np.float64)
    check_finite_pattern(got, p)
    bound = np.abs(p) * (4 + zabs + mean_z) * EPS + TINY
    ok = ~np.isnan(p)
    err = float(np.max(np.abs(got[ok] - p[ok]) / bound[ok], initial=0.0))
    target(err, label="softmax error / bound")
    assert err <= 1.0
    live = ~np.any(np.isnan(p), -1)
    np.testing.assert_allclose(
        np.sum(got, -1)[live], np.where(np.sum(p, -1) > 0, 1.0, 0.0)[live], atol=1e-5
    )

    got = np.asarray(jsoftmax.log_softmax(x, where=w), np.float64)
    check_finite_pattern(got, logp)
    fin = np.isfinite(got) & np.isfinite(logp)
    # the subtraction z − log Σ rounds to an ulp of the larger of the two
    bound = (4 * np.maximum(np.abs(logp), 1.0) + zabs + mean_z) * EPS
    err = float(np.max(np.abs(got[fin] - logp[fin]) / bound[fin], initial=0.0))
    target(err, label="log_softmax error / bound")
    assert err <= 1.0

    got = np.asarray(jsoftmax.logsumexp(x, where=w), np.float64)
    check_finite_pattern(got, lse)
    fin = np.isfinite(got)
    bound = (4 * np.maximum(np.abs(lse), 1.0) + mean_z[..., 0]) * EPS
    err = float(np.max(np.abs(got[fin] - lse[fin]) / bound[fin], initial=0.0))
    target(err, label="logsumexp error / bound")
    assert err <= 1.0


@settings(max_examples=40, deadline=None)
@given(x=hnp.arrays(np.float32, SHAPE, elements=st.floats(-30, 30, width=32)), ties=st.booleans())
def test_gradient_is_finite_and_matches_closed_form(x, ties):
    if ties:
        x = np.repeat(x[:, :1], SHAPE[1], axis=1)  # every entry of a row equal
    g = jax.random.normal(jax.random.key(0), SHAPE)
    _, pullback = jax.vjp(jsoftmax.softmax, jnp.asarray(x))
    got = np.asarray(pullback(g)[0], np.float64)
    p = reference(x, None)[0]
    g64 = np.asarray(g, np.float64)
    want = p * (g64 - np.sum(g64 * p, -1, keepdims=True))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_poisoned_slice_is_nan_only_there(value):
    x = np.zeros(SHAPE, np.float32)
    x[1, 3] = value
    got = np.asarray(jsoftmax.softmax(x))
    assert np.all(np.isnan(got[1])) and np.all(np.isfinite(got[[0, 2]]))
