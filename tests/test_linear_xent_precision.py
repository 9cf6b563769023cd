"""Half precision in linear_cross_entropy: loss scaling, large sums, float32 residuals.

Both linear paths (gradients in the forward pass, and recompute) run float16 and bfloat16 inputs
with cotangents of 1, 65536 (loss scaling) and 1/N after a ``"sum"`` over many tokens, against
float64 autodiff of ``x @ w + bias`` cross-entropy on the same (half-rounded) inputs.
"""

from __future__ import annotations

import contextlib
import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from jsoftmax import linear_cross_entropy

PATHS = [pytest.param(None, id="fused"), pytest.param(False, id="recompute")]
HALF = [pytest.param(jnp.float16, id="float16"), pytest.param(jnp.bfloat16, id="bfloat16")]
# unit roundoff (the largest relative rounding error) of each format: 2**-(significand bits)
UNIT = {jnp.dtype(jnp.float16): 2.0**-11, jnp.dtype(jnp.bfloat16): 2.0**-8}
# half the smallest subnormal: the absolute rounding error of a float16 result near 0
TINY = {jnp.dtype(jnp.float16): 2.0**-25, jnp.dtype(jnp.bfloat16): 0.0}


def _reference_logits_grad(x, w, b, y, reduction, cotangent):
    """float64 ``(loss, dz)``: the loss and its gradient with respect to the logits."""

    def loss(z):
        ls = jax.nn.log_softmax(z, axis=-1)
        per = -jnp.take_along_axis(ls, y[:, None], axis=1)[:, 0]
        return cotangent * (jnp.sum(per) if reduction == "sum" else jnp.mean(per))

    z = x @ w + b[None, :]
    return jax.value_and_grad(loss)(z)


@pytest.mark.usefixtures("x64")
def test_float16_loss_scaling_keeps_small_gradients_issue19():
    # issue 19 item 1: the gradients-in-forward path rounded dw to float16 in the forward pass,
    # before the cotangent 65536 scaled it: p = e**-20 / (1 + e**-20) = 2.06e-9 became 0, and
    # dw[0, 1] was 0 instead of 65536 p = 1.35e-4
    x = jnp.ones((1, 1), jnp.float16)
    w = jnp.array([[0.0, -20.0]], jnp.float16)
    y = jnp.array([0])
    want = 65536 * np.exp(-20.0) / (1 + np.exp(-20.0))
    for gif in (None, False):
        dw = jax.grad(lambda w, gif=gif: 65536 * linear_cross_entropy(x, w, y, **_gif(gif)))(w)
        assert dw.dtype == jnp.float16
        # two roundings to float16: z̄ for the matmul, scaled so that the block's largest
        # |z̄| = 1 (or 65536) becomes 2**14, puts p at 2**14 · 2.06e-9 = 3.4e-5, a float16
        # subnormal (spacing 2**-24); then the scaled result (relative error u)
        operand = 2.0**-25 / (2.0**14 * want / 65536)
        rtol = operand + UNIT[jnp.dtype(jnp.float16)]
        np.testing.assert_allclose(float(dw[0, 1]), want, rtol=rtol)


def _gif(gif):
    return {"gradients_in_forward": gif}


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("gif", PATHS)
def test_large_sum_divided_by_n_is_finite_issue19(dtype, gif):
    # issue 19 item 1: reduction="sum" over 1e5 identical tokens gives dw[0, 0] = Σ (p − 1) =
    # −88080 before the cotangent 1/N; rounded to float16 in the forward pass it was −inf
    n = 100_000
    x = jnp.ones((n, 1), dtype)
    w = jnp.array([[0.0, 2.0]], dtype)
    y = jnp.zeros((n,), jnp.int32)
    f = lambda w: linear_cross_entropy(x, w, y, reduction="sum", **_gif(gif)) / n  # noqa: E731
    dw = jax.jit(jax.grad(f))(w)
    want = 1 / (1 + np.exp(2.0)) - 1  # p − 1 at the label, the same for every token
    assert np.all(np.isfinite(np.asarray(dw, np.float64)))
    # 1e5 equal terms summed in float32 (one [1, N] × [N, 2] product on the recompute path)
    # can drift by up to N·2**-24 ≈ 6e-3 relative; XLA's blocked sums stay near 1e-3
    np.testing.assert_allclose(np.asarray(dw, np.float64)[0], [want, -want], rtol=3e-3)


# linear_cross_entropy — "The gradients-in-forward path holds ``dx``, ``dw`` and ``dbias`` in
# float32 until the cotangent has scaled them"
@pytest.mark.parametrize("dtype", [*HALF, pytest.param(jnp.float32, id="float32")])
def test_gradients_in_forward_saves_its_gradients_in_float32(dtype):
    # the residuals are dx, dw, dbias in the compute dtype (float32 also for half precision):
    # the cotangent scales them before they are rounded to the inputs' dtype
    n, d, v = 6, 3, 10
    x, w, b = jnp.ones((n, d), dtype), jnp.ones((d, v), dtype), jnp.ones((v,), dtype)
    y = jnp.arange(n)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(lambda x, w, b: linear_cross_entropy(x, w, y, bias=b), x, w, b)
    saved = sorted(line.split()[0] for line in out.getvalue().strip().splitlines())
    assert saved == sorted([f"f32[{n},{d}]", f"f32[{d},{v}]", f"f32[{v}]"]), out.getvalue()
    grads = jax.grad(lambda x, w, b: linear_cross_entropy(x, w, y, bias=b), (0, 1, 2))(x, w, b)
    assert all(g.dtype == dtype for g in grads)


# ------------------------------------------------------------------------------------------
# mixed-precision sweep
# ------------------------------------------------------------------------------------------

COTANGENTS = [
    pytest.param(1.0, "mean", id="unit"),
    pytest.param(65536.0, "mean", id="loss_scale"),
    pytest.param("1/N", "sum", id="sum_over_n"),
]


# linear_cross_entropy — "float16/bfloat16 ``x``/``w`` run their matmuls with float32
# accumulation ..."; "For float16, ``z̄`` is multiplied by an exact power of two ..."
@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(("cotangent", "reduction"), COTANGENTS)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("gif", PATHS)
def test_half_precision_sweep_against_float64(gif, dtype, cotangent, reduction):
    # value and gradients within the half-precision rounding of the float64 truth on the same
    # inputs: z̄ is rounded once to the half dtype for the gradient matmuls (relative error u on
    # each product x_n z̄_nc, so at most u Σ_n |x_n| |z̄_nc| on a sum), accumulation is in
    # float32, and the result is rounded once more to the half dtype (u of its magnitude)
    n, d, v = 4096, 16, 96
    kx, kw, kb, ky = jax.random.split(jax.random.key(7), 4)
    x = (0.5 * jax.random.normal(kx, (n, d))).astype(dtype)
    w = (0.5 * jax.random.normal(kw, (d, v))).astype(dtype)
    b = jax.random.normal(kb, (v,)).astype(dtype)
    y = jax.random.randint(ky, (n,), 0, v)
    c = 1.0 / n if cotangent == "1/N" else cotangent

    def loss(x, w, b):
        out = linear_cross_entropy(x, w, y, bias=b, reduction=reduction, **_gif(gif))
        return c * out

    val, grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(x, w, b)
    assert val.dtype == jnp.float32 and all(g.dtype == dtype for g in grads)

    x64, w64, b64 = (np.asarray(a, np.float64) for a in (x, w, b))
    with jax.enable_x64(True):
        ref_val, dz = _reference_logits_grad(
            jnp.asarray(x64), jnp.asarray(w64), jnp.asarray(b64), jnp.asarray(y), reduction, c
        )
    dz = np.asarray(dz)
    truth = (dz @ w64.T, x64.T @ dz, dz.sum(0))
    # the error bound of each gradient: the same products in absolute value
    spread = (np.abs(dz) @ np.abs(w64.T), np.abs(x64.T) @ np.abs(dz), np.abs(dz).sum(0))
    assert max(float(np.abs(t).max()) for t in truth) < 6e4  # in range of float16: a valid test
    np.testing.assert_allclose(float(val), float(ref_val), rtol=1e-5)
    u, tiny = UNIT[jnp.dtype(dtype)], TINY[jnp.dtype(dtype)]
    for name, got, want, s in zip(("dx", "dw", "dbias"), grads, truth, spread, strict=True):
        err = np.abs(np.asarray(got, np.float64) - want)
        bound = u * s + u * np.abs(want) + tiny + 1e-6 * np.abs(want).max()
        worst = np.unravel_index(np.argmax(err - bound), err.shape)
        assert np.all(err <= bound), (name, worst, err[worst], bound[worst], want[worst])


@pytest.mark.parametrize("gif", PATHS)
def test_bfloat16_end_to_end_matches_float32(gif):
    # bfloat16 x and w (float32 accumulation throughout) against the float32 computation on the
    # unrounded float32 inputs: the difference is bfloat16's input rounding, a few 2**-8
    n, d, v = 512, 64, 1000
    kx, kw, ky = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (n, d))
    w = jax.random.normal(kw, (d, v)) / 8
    y = jax.random.randint(ky, (n,), 0, v)
    f = functools.partial(linear_cross_entropy, labels=y, **_gif(gif))
    vg = jax.jit(jax.value_and_grad(lambda x, w: f(x, w), (0, 1)))
    loss16, (dx16, dw16) = vg(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    loss32, (dx32, dw32) = vg(x, w)
    np.testing.assert_allclose(float(loss16), float(loss32), rtol=1e-2)
    for g16, g32 in ((dx16, dx32), (dw16, dw32)):
        g16 = np.asarray(g16, np.float32)
        g32 = np.asarray(g32)
        rel = np.linalg.norm(g16 - g32) / np.linalg.norm(g32)
        assert rel < 3e-2, rel
