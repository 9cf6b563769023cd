"""Tests for jsoftmax.linear_cross_entropy (chunked linear + cross-entropy, custom_vjp).

The reference is the naive loss written here from ``jax.nn.log_softmax`` on the full logits
``x @ w + bias``; the chunked function must equal it in value and in every gradient.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals
from jax.test_util import check_grads

import jsoftmax
from jsoftmax import linear_cross_entropy

N, D, V = 13, 5, 29  # primes, so chunks of (4, 7) leave a remainder along both axes
IGNORE = -100


def reference(
    x,
    w,
    labels,
    bias=None,
    *,
    ignore_index=None,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    reduction="mean",
    **_,
):
    """PyTorch-semantics cross-entropy on the materialised logits, from log_softmax."""
    z = jnp.matmul(x, w, preferred_element_type=jnp.float32 if x.dtype == jnp.bfloat16 else None)
    if bias is not None:
        z = z + jnp.broadcast_to(bias, z.shape)
    if softcap is not None:
        z = softcap * jnp.tanh(z / softcap)
    v = z.shape[-1]
    valid = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), v, dtype=z.dtype)
    target = (1 - label_smoothing) * onehot + label_smoothing / v
    lse = jax.nn.logsumexp(z, axis=-1)
    loss = -jnp.sum(target * jax.nn.log_softmax(z, axis=-1), axis=-1) + z_loss * lse**2
    loss = jnp.where(valid, loss, 0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / jnp.maximum(valid.sum(), 1)


def make(n=N, d=D, v=V, dtype=jnp.float64, seed=0, n_ignored=3, lead=()):
    kx, kw, kb, ky = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(kx, (*lead, n, d), dtype)
    w = jax.random.normal(kw, (d, v), dtype)
    b = jax.random.normal(kb, (v,), dtype)
    y = jax.random.randint(ky, (*lead, n), 0, v)
    y = y.at[..., :n_ignored].set(IGNORE)
    return x, w, b, y


OPTIONS = [
    pytest.param({}, id="plain"),
    pytest.param({"reduction": "none"}, id="none"),
    pytest.param({"label_smoothing": 0.2, "reduction": "sum"}, id="smoothing_sum"),
    pytest.param({"z_loss": 1e-2}, id="z_loss"),
    pytest.param({"softcap": 2.5}, id="softcap"),
    pytest.param(
        {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 3.0, "reduction": "sum"}, id="all"
    ),
    pytest.param({"label_smoothing": 1.0, "reduction": "none"}, id="uniform_target"),
]
CHUNKS = [None, (4, 7), (13, 3), (1, 29), (100, 100)]


def _both(opts, chunk_size, with_bias=True):
    """Jitted (value, grads wrt x, w, bias) of the chunked function and of the reference."""
    opts = {"ignore_index": IGNORE, **opts}

    def chunked(x, w, b, y):
        return linear_cross_entropy(
            x, w, y, bias=b if with_bias else None, chunk_size=chunk_size, **opts
        )

    def ref(x, w, b, y):
        return reference(x, w, y, b if with_bias else None, **opts)

    def value_and_grads(f):
        # a non-uniform cotangent for "none", so per-token gradients are checked separately
        def scalar(x, w, b, y):
            out = f(x, w, b, y)
            return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))

        return jax.jit(lambda x, w, b, y: (f(x, w, b, y), jax.grad(scalar, (0, 1, 2))(x, w, b, y)))

    return value_and_grads(chunked), value_and_grads(ref)


def _assert_close(a, b, **tol):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


# ------------------------------------------------------------------------------------------
# value and gradients against the naive reference
# ------------------------------------------------------------------------------------------


# every option set meets a different chunking (remainders on one, both or no axes; one block;
# chunks larger than the array) and half of them run without a bias
CASES = [
    pytest.param(
        opts.values[0],
        CHUNKS[i % len(CHUNKS)],
        i % 2 == 0,
        id=f"{opts.id}-chunk={CHUNKS[i % len(CHUNKS)]}-{'bias' if i % 2 == 0 else 'no_bias'}",
    )
    for i, opts in enumerate(OPTIONS)
]


@pytest.mark.parametrize(("opts", "chunk_size", "with_bias"), CASES)
def test_matches_reference_float64(opts, chunk_size, with_bias):
    with jax.enable_x64(True):
        x, w, b, y = make()
        chunked, ref = _both(opts, chunk_size, with_bias)
        _assert_close(chunked(x, w, b, y), ref(x, w, b, y), rtol=1e-11, atol=1e-12)


def test_check_grads_order_1():
    with jax.enable_x64(True):
        x, w, b, y = make(n_ignored=1)
        f = functools.partial(
            linear_cross_entropy,
            labels=y,
            chunk_size=(4, 7),
            ignore_index=IGNORE,
            label_smoothing=0.1,
            z_loss=1e-2,
            softcap=2.0,
            reduction="none",
        )
        check_grads(jax.jit(lambda x, w, b: f(x, w, bias=b)), (x, w, b), order=1, modes=["rev"])


def test_float32_automatic_chunks():
    # automatic chunking with more than one vocabulary chunk (V > 2048) and a remainder
    x, w, b, y = make(n=64, d=16, v=2048 + 333, dtype=jnp.float32, n_ignored=5)
    w = w / 4
    chunked, ref = _both({"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0}, None)
    _assert_close(chunked(x, w, b, y), ref(x, w, b, y), rtol=2e-5, atol=2e-6)


def test_check_grads_order_2():
    # grad-of-grad: the backward pass is itself differentiable JAX
    with jax.enable_x64(True):
        x, w, _, y = make(n=5, d=3, v=7, n_ignored=1)
        f = functools.partial(
            linear_cross_entropy,
            labels=y,
            chunk_size=(2, 3),
            ignore_index=IGNORE,
            label_smoothing=0.1,
            z_loss=1e-2,
            softcap=2.0,
        )
        check_grads(jax.jit(f), (x, w), order=2, modes=["rev"])


def test_hessian_forward_over_reverse():
    # second derivatives equal the reference's exactly (forward mode over our backward pass)
    with jax.enable_x64(True):
        x, w, _, y = make(n=4, d=3, v=5, n_ignored=1)
        opts = {"ignore_index": IGNORE, "softcap": 2.0}
        u = jnp.cos(jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape)

        def hvp(loss):  # Hessian-vector product, jvp of grad
            return jax.jit(lambda x: jax.jvp(jax.grad(loss), (x,), (u,))[1])

        h = hvp(lambda x: linear_cross_entropy(x, w, y, chunk_size=2, **opts))
        h_ref = hvp(lambda x: reference(x, w, y, **opts))
        _assert_close(h(x), h_ref(x), rtol=1e-9, atol=1e-12)


def test_closed_form_gradient():
    # ∂/∂logits of the mean loss is (softmax − onehot) / N; chained through the matmul
    with jax.enable_x64(True):
        x, w, _, y = make(n_ignored=0)
        f = functools.partial(linear_cross_entropy, chunk_size=(4, 7))
        dx, dw = jax.jit(jax.grad(f, (0, 1)))(x, w, y)
        dz = (jax.nn.softmax(x @ w) - jax.nn.one_hot(y, V)) / N
        _assert_close((dx, dw), (dz @ w.T, x.T @ dz), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("opts", [OPTIONS[0], OPTIONS[-2], OPTIONS[-1]])
def test_matches_jsoftmax_cross_entropy(opts):
    with jax.enable_x64(True):
        x, w, b, y = make()
        opts = {"ignore_index": IGNORE, **opts}
        cap = opts.get("softcap")

        def naive(x, w, b):
            z = x @ w + b[None, :]
            z = z if cap is None else cap * jnp.tanh(z / cap)  # soft-capping, by hand
            ce_opts = {k: v for k, v in opts.items() if k != "softcap"}
            return jsoftmax.cross_entropy(z, y, **ce_opts)

        def chunked(x, w, b):
            return linear_cross_entropy(x, w, y, bias=b, chunk_size=(4, 7), **opts)

        def vg(f):
            return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(f(*a) ** 2), (0, 1, 2)))

        _assert_close(vg(chunked)(x, w, b), vg(naive)(x, w, b), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------
# dtypes
# ------------------------------------------------------------------------------------------


def test_bfloat16_accumulates_in_float32():
    x, w, b, y = make(n=32, d=64, v=300, dtype=jnp.float32)
    xb, wb, bb = (a.astype(jnp.bfloat16) for a in (x, w / 8, b))
    f = functools.partial(linear_cross_entropy, chunk_size=(8, 64), ignore_index=IGNORE)
    (loss, (dx, dw)) = jax.jit(jax.value_and_grad(f, (0, 1)))(xb, wb, y, bias=bb)
    assert loss.dtype == jnp.float32  # as jsoftmax.cross_entropy: half precision in, f32 loss
    assert dx.dtype == dw.dtype == jnp.bfloat16
    # the reference on the same bf16-rounded values in float32
    xf, wf, bf = (a.astype(jnp.float32) for a in (xb, wb, bb))
    ref = functools.partial(reference, ignore_index=IGNORE)
    ref_loss, (rdx, rdw) = jax.jit(jax.value_and_grad(ref, (0, 1)))(xf, wf, y, bf)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-2)
    _assert_close(
        (dx.astype(jnp.float32), dw.astype(jnp.float32)), (rdx, rdw), rtol=0.05, atol=2e-3
    )


def test_float32_in_float32_out():
    x, w, _b, y = make(dtype=jnp.float32)
    f = functools.partial(linear_cross_entropy, ignore_index=IGNORE)
    loss, grads = jax.jit(jax.value_and_grad(f, (0, 1)))(x, w, y)
    assert loss.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in grads)


# ------------------------------------------------------------------------------------------
# transformations
# ------------------------------------------------------------------------------------------


def test_vmap_per_sequence_matches_loop():
    x, w, b, y = make(lead=(3,), dtype=jnp.float32)

    def per_seq(x, y):
        return linear_cross_entropy(x, w, y, bias=b, chunk_size=(4, 7), ignore_index=IGNORE)

    batched = jax.jit(jax.vmap(per_seq))(x, y)
    looped = jnp.stack([jax.jit(per_seq)(x[i], y[i]) for i in range(3)])
    np.testing.assert_allclose(batched, looped, rtol=1e-6)

    # vmap of grad (per-sequence gradients) and grad of vmap
    g_vmap = jax.jit(jax.vmap(jax.grad(per_seq)))(x, y)
    g_loop = jnp.stack([jax.jit(jax.grad(per_seq))(x[i], y[i]) for i in range(3)])
    np.testing.assert_allclose(g_vmap, g_loop, rtol=1e-5, atol=1e-7)
    g_of_vmap = jax.jit(jax.grad(lambda x: jax.vmap(per_seq)(x, y).sum()))(x)
    np.testing.assert_allclose(g_of_vmap, g_loop, rtol=1e-5, atol=1e-7)


def test_vmap_over_weights():
    # per-example w (e.g. an ensemble of heads): the batched w flows through the chunk loop
    x, w, _, y = make(dtype=jnp.float32)
    ws = jnp.stack([w, 2 * w])
    f = functools.partial(linear_cross_entropy, chunk_size=(4, 7), ignore_index=IGNORE)
    vg = jax.jit(lambda w: jax.value_and_grad(f, 1)(x, w, y))
    out = jax.jit(jax.vmap(vg))(ws)
    for i in range(2):
        _assert_close((out[0][i], out[1][i]), vg(ws[i]), rtol=1e-5, atol=1e-6)


def test_leading_axes_and_reduction_none_shape():
    x, w, _b, y = make(lead=(2,), dtype=jnp.float32)
    opts = {"ignore_index": IGNORE, "reduction": "none"}
    out = jax.jit(functools.partial(linear_cross_entropy, chunk_size=(5, 7), **opts))(x, w, y)
    assert out.shape == y.shape == (2, N)
    ref = jax.jit(functools.partial(reference, **opts))(x, w, y)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_checkpoint():
    x, w, _b, y = make(dtype=jnp.float32)

    def model(x, w):
        h = jnp.tanh(x)
        return linear_cross_entropy(h, w, y, chunk_size=(4, 7), ignore_index=IGNORE)

    g = jax.jit(jax.grad(jax.checkpoint(model), (0, 1)))(x, w)
    g_ref = jax.grad(lambda x, w: reference(jnp.tanh(x), w, y, ignore_index=IGNORE), (0, 1))(x, w)
    _assert_close(g, g_ref, rtol=1e-5, atol=1e-7)


def test_recompute_path_saves_only_the_inputs_and_two_numbers_per_token():
    # the residuals are x, w, bias (the arguments themselves), the labels, two floats per
    # token (the shift and the log-sum) and the mean's divisor: never a logits-sized array
    x, w, b, y = make(dtype=jnp.float32)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(
            lambda x, w, b: linear_cross_entropy(
                x, w, y, bias=b, chunk_size=(4, 7), ignore_index=IGNORE, gradients_in_forward=False
            ),
            x,
            w,
            b,
        )
    saved = out.getvalue().strip().splitlines()
    assert len(saved) == 7, saved
    args = [line.split()[0] for line in saved if "from the argument" in line]
    assert sorted(args) == sorted([f"f32[{N},{D}]", f"f32[{D},{V}]", f"f32[{V}]"]), saved
    per_token = [line for line in saved if "from the argument" not in line]
    assert sorted(line.split()[0] for line in per_token) == sorted(
        ["f32[]", f"f32[{N}]", f"f32[{N}]", f"i32[{N}]"]
    ), saved


def test_gradients_in_forward_path_saves_only_the_gradients():
    # with reduction "mean" or "sum" the forward rule forms dx, dw and dbias (for a unit
    # cotangent) and saves only them: the backward pass scales them by the cotangent
    x, w, b, y = make(dtype=jnp.float32)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(
            lambda x, w, b: linear_cross_entropy(x, w, y, bias=b, ignore_index=IGNORE), x, w, b
        )
    saved = sorted(line.split()[0] for line in out.getvalue().strip().splitlines())
    assert saved == sorted([f"f32[{N},{D}]", f"f32[{D},{V}]", f"f32[{V}]"]), out.getvalue()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("gradients_in_forward", [None, True, False], ids=["auto", "on", "off"])
def test_gradients_in_forward_equals_recompute_and_reference(reduction, gradients_in_forward):
    # every option at once, float64, against autodiff of the naive x @ w + bias cross-entropy;
    # reduction "none" gets a non-uniform cotangent (the per-token path)
    with jax.enable_x64(True):
        x, w, b, y = make()
        if gradients_in_forward and reduction == "none":
            with pytest.raises(ValueError, match="gradients_in_forward=True needs reduction"):
                linear_cross_entropy(x, w, y, reduction="none", gradients_in_forward=True)
            return
        opts = {"ignore_index": IGNORE, "label_smoothing": 0.2, "z_loss": 0.01}
        cot = jnp.cos(jnp.arange(N, dtype=jnp.float64))

        def scalar(out):
            return jnp.vdot(out, cot) if reduction == "none" else out

        def ours(x, w, b):
            return scalar(
                linear_cross_entropy(
                    x,
                    w,
                    y,
                    bias=b,
                    softcap=4.0,
                    chunk_size=(5, None),
                    reduction=reduction,
                    gradients_in_forward=gradients_in_forward,
                    **opts,
                )
            )

        def naive(x, w, b):
            z = 4.0 * jnp.tanh((x @ w + b[None, :]) / 4.0)
            return scalar(jsoftmax.cross_entropy(z, y, reduction=reduction, **opts))

        _assert_close(
            jax.value_and_grad(ours, (0, 1, 2))(x, w, b),
            jax.value_and_grad(naive, (0, 1, 2))(x, w, b),
            rtol=1e-10,
            atol=1e-12,
        )
        # grad-of-grad through either forward rule
        gg = jax.grad(lambda x: jnp.sum(jax.grad(ours, 1)(x, w, b) ** 2))(x)
        _assert_close(gg, jax.grad(lambda x: jnp.sum(jax.grad(naive, 1)(x, w, b) ** 2))(x))


@pytest.mark.parametrize(
    ("chunk_size", "gradients_in_forward"),
    [((128, 512), False), ((16, None), True)],
    ids=["recompute", "gradients-in-forward"],
)
def test_jit_matches_eager_and_compiles_no_logits(chunk_size, gradients_in_forward):
    x, w, _b, y = make(n=512, d=8, v=4096, dtype=jnp.float32)
    f = functools.partial(
        linear_cross_entropy,
        chunk_size=chunk_size,
        ignore_index=IGNORE,
        gradients_in_forward=gradients_in_forward,
    )
    g = jax.jit(jax.value_and_grad(f, (0, 1)))
    np.testing.assert_allclose(g(x, w, y)[0], f(x, w, y), rtol=1e-6)
    # compiled temp memory stays well below one [N, V] float32 logits array
    temp = g.lower(x, w, y).compile().memory_analysis().temp_size_in_bytes
    assert temp < 512 * 4096 * 4 / 4, temp


# ------------------------------------------------------------------------------------------
# edge inputs
# ------------------------------------------------------------------------------------------


def test_all_ignored_is_zero_with_zero_gradient():
    x, w, _b, y = make(dtype=jnp.float32, n_ignored=N)
    f = functools.partial(linear_cross_entropy, ignore_index=IGNORE)
    loss, grads = jax.jit(jax.value_and_grad(f, (0, 1)))(x, w, y)
    assert float(loss) == 0.0
    assert all(not np.any(np.asarray(g)) for g in grads)


def test_ignore_index_inside_range_is_ignored():
    x, w, _b, y = make(dtype=jnp.float32, n_ignored=0)
    out = linear_cross_entropy(x, w, y, ignore_index=int(y[0]), reduction="none")
    assert float(out[0]) == 0.0
    ref = reference(x, w, y, ignore_index=int(y[0]), reduction="none")
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_tokens(reduction):
    x, w, _b, y = make(n=0, dtype=jnp.float32, n_ignored=0)

    def total(f):  # the value, and the gradient of its sum with respect to x and w
        return jax.value_and_grad(lambda x, w: f(x, w, y, reduction=reduction).sum(), (0, 1))

    out = linear_cross_entropy(x, w, y, reduction=reduction)
    assert out.dtype == jnp.float32 and out.shape == (() if reduction != "none" else (0,))
    np.testing.assert_array_equal(out, reference(x, w, y, reduction=reduction))
    value, (dx, dw) = total(linear_cross_entropy)(x, w)
    assert float(value) == 0.0  # no tokens: 0, not 0 / 0 = nan, for the mean too
    assert dx.shape == (0, D) and dx.dtype == jnp.float32
    np.testing.assert_array_equal(dw, np.zeros((D, V), np.float32))  # finite, and exactly 0
    np.testing.assert_array_equal(dw, total(reference)(x, w)[1][1])


def test_large_logits_stay_finite():
    x, w, _b, y = make(dtype=jnp.float32)
    x = x * 1e3  # logits of order 1e3: exp overflows without the running max
    out = linear_cross_entropy(x, w, y, chunk_size=(4, 7), ignore_index=IGNORE, reduction="none")
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, reference(x, w, y, ignore_index=IGNORE, reduction="none"),
                               rtol=1e-5, atol=1e-3)  # fmt: skip


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_nonfinite_input_poisons_only_its_token(bad):
    x, w, _b, y = make(dtype=jnp.float32, n_ignored=0)
    x = x.at[5, 2].set(bad)
    out = linear_cross_entropy(x, w, y, chunk_size=(4, 7), reduction="none")
    assert np.isnan(out[5])
    assert np.all(np.isfinite(np.delete(np.asarray(out), 5)))


def test_out_of_range_label_raises_when_concrete():
    x, w, _b, y = make(dtype=jnp.float32, n_ignored=0)
    with pytest.raises(ValueError, match=r"class indices in \[0, 29\).*got 29 at position \(2,\)"):
        linear_cross_entropy(x, w, y.at[2].set(V))
    with pytest.raises(ValueError, match="-1"):
        linear_cross_entropy(x, w, y.at[2].set(-1), ignore_index=IGNORE)


def test_out_of_range_label_is_nan_under_jit():
    x, w, _b, y = make(dtype=jnp.float32, n_ignored=0)
    y = y.at[2].set(V)
    f = jax.jit(functools.partial(linear_cross_entropy, chunk_size=(4, 7), reduction="none"))
    out = f(x, w, y)
    assert np.isnan(out[2]) and np.all(np.isfinite(np.delete(np.asarray(out), 2)))
    dx = jax.jit(jax.grad(linear_cross_entropy))(x, w, y)
    assert np.all(np.isnan(dx[2]))


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


def _call(**over):
    x, w, _b, y = make(dtype=jnp.float32, n_ignored=0)
    args = {"x": x, "w": w, "labels": y, **over}
    kw = {k: args.pop(k) for k in list(args) if k not in ("x", "w", "labels")}
    return linear_cross_entropy(args["x"], args["w"], args["labels"], **kw)


def _over_id(over):
    """A test id for ``_call``'s overrides: ``w=float32[6,29]``, ``chunk_size=(4, -1)``."""
    ((key, value),) = over.items()
    if hasattr(value, "shape"):
        value = f"{value.dtype}[{','.join(map(str, value.shape))}]"
    return f"{key}={value}"


BAD_INPUT = [
    ({"w": jnp.ones((D + 1, V))}, ValueError, r"agree on D; got x \(13, 5\) and w \(6, 29\)"),
    ({"w": jnp.ones((D,))}, ValueError, r"w must have shape \[D, V\]; got shape \(5,\)"),
    ({"labels": jnp.zeros((N, 1), int)}, ValueError, r"shape \(13,\) to match.*\(13, 1\)"),
    ({"labels": jnp.zeros((N,))}, TypeError, "labels must be integer.*got dtype float"),
    ({"x": jnp.ones((N, D), int)}, TypeError, "x must have a floating-point dtype"),
    ({"bias": jnp.ones((V + 1,))}, ValueError, r"bias must have shape \[V\] = \(29,\); got"),
    ({"chunk_size": 0}, ValueError, "chunk_size must be positive; got 0"),
    ({"chunk_size": (4, -1)}, ValueError, r"chunk_size must be positive; got \(4, -1\)"),
    ({"chunk_size": 2.5}, TypeError, "chunk_size must be None, a positive int"),
    ({"chunk_size": (1, 2, 3)}, TypeError, "chunk_size must be None"),
    ({"softcap": -1.0}, ValueError, "softcap must be a positive finite.*got -1.0"),
    ({"softcap": 0.0}, ValueError, "softcap must be a positive"),
    ({"label_smoothing": 1.5}, ValueError, r"label_smoothing must be in \[0, 1\]; got 1.5"),
    ({"z_loss": -0.1}, ValueError, "z_loss must be finite and >= 0; got -0.1"),
    ({"reduction": "avg"}, ValueError, "reduction must be one of"),
    ({"ignore_index": 1.0}, TypeError, "ignore_index must be an int or None"),
    ({"w": jnp.ones((D, 0))}, ValueError, "at least one class"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("over", "error", "match"), BAD_INPUT, ids=[_over_id(over) for over, _, _ in BAD_INPUT]
)
def test_bad_input(over, error, match):
    with pytest.raises(error, match=match):
        _call(**over)


def test_bad_input_raises_at_trace_time():
    x, w, _b, y = make(dtype=jnp.float32, n_ignored=0)
    with pytest.raises(ValueError, match="softcap"):
        jax.jit(lambda x: linear_cross_entropy(x, w, y, softcap=-2.0))(x)


@pytest.mark.parametrize("lead", [(4,), (2, 2)], ids=["batch", "batch_and_group"])
def test_out_of_range_label_position_is_in_the_callers_shape_issue20(lead):
    # issue 20 item 5: labels of shape (4, 16) with a bad label at (1, 1) were reported "at
    # position (17,) of labels with shape (64,)", their flattened index; cross_entropy says (1, 1)
    x, w, _b, y = make(n=16, dtype=jnp.float32, n_ignored=0, lead=lead)
    where = (*[1] * len(lead), 1)
    y = y.at[where].set(V + 3)
    shape = (*lead, 16)
    message = rf"got {V + 3} at position {re.escape(str(where))} of labels with shape "
    message += re.escape(str(shape))
    with pytest.raises(ValueError, match=message):
        linear_cross_entropy(x, w, y)
    # the same words as cross_entropy on the logits
    with pytest.raises(ValueError, match=message):
        jsoftmax.cross_entropy(x @ w, y)
    mesh = jax.make_mesh((1,), ("vocab",))
    with pytest.raises(ValueError, match=message):
        jsoftmax.vocab_parallel_linear_cross_entropy(x, w, y, mesh=mesh, axis_name="vocab")


# --------------------------------------------------------------------------------------------
# the token block of the gradients-in-forward path, by backend (issue 22)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "free", "budget"),
    [
        ("cpu", None, 256 << 20),  # the CPU's measured optimum, whatever memory it has
        ("cpu", 1 << 40, 256 << 20),
        ("gpu", None, 256 << 20),  # free memory unknown: the CPU's budget
        ("gpu", 75 << 30, 2 << 30),  # an H100's free memory / 16, capped at 2 GiB
        ("gpu", 16 << 30, 1 << 30),  # 16 GiB free: a sixteenth
        ("tpu", 1 << 30, 256 << 20),  # little free memory: never below 256 MiB
    ],
)
def test_fused_block_budget_by_backend(platform, free, budget):
    from jsoftmax._linear_xent import fused_block_budget

    assert fused_block_budget(platform, free) == budget


@pytest.mark.parametrize(
    ("n", "v", "itemsize", "budget", "tokens"),
    [
        (8192, 65536, 4, 256 << 20, 512),  # the CPU default at the benchmark shape
        (8192, 65536, 4, 2 << 30, 1024),  # an H100's budget: the N / 8 cap binds
        (65536, 65536, 4, 2 << 30, 4096),  # more tokens: the budget binds
        (8192, 128256, 4, 256 << 20, 261),
        (7, 65536, 4, 2 << 30, 1),  # at least one token
        (4, 10, 4, 1 << 40, 1),  # never more than N / 8 (rounded down, at least 1)
    ],
)
def test_fused_token_block_from_a_budget(n, v, itemsize, budget, tokens):
    from jsoftmax._linear_xent import fused_token_block

    got = fused_token_block(n, v, itemsize, budget)
    assert got == tokens
    assert 2 * got * v * itemsize <= budget or got == 1


def test_automatic_block_on_this_backend_is_the_cpu_budget():
    from jsoftmax._linear_xent import _device_block_budget

    if jax.default_backend() == "cpu":
        assert _device_block_budget() == 256 << 20


# linear_cross_entropy — "Inside the caller's own ``shard_map`` (``check_vma=True``, the
# default, or ``False``) ... each device's call is the loss of its own tokens ..., exactly as
# ``x @ w`` with an optax loss there" (one device here: the type check of check_vma=True is the
# same on any mesh; tests/_sharded_data_worker.py runs 8 devices)
@pytest.mark.parametrize("check_vma", [True, False], ids=["check_vma", "no_check_vma"])
@pytest.mark.parametrize(
    ("gif", "reduction"), [(None, "mean"), (False, "mean"), (None, "none")], ids=str
)
def test_inside_a_users_data_parallel_shard_map(check_vma, gif, reduction):
    import optax
    from jax.sharding import PartitionSpec as P

    x, w, b, y = make(dtype=jnp.float32)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))

    def ours(x, w, b, y):
        kw = {"bias": b, "ignore_index": IGNORE, "reduction": reduction}
        return linear_cross_entropy(x, w, y, gradients_in_forward=gif, **kw)

    def naive(x, w, b, y):
        valid = y != IGNORE
        z = x @ w + b[None]
        per = optax.softmax_cross_entropy_with_integer_labels(z, jnp.where(valid, y, 0))
        per = jnp.where(valid, per, 0)
        return per if reduction == "none" else jnp.sum(per) / jnp.sum(valid)

    def in_shard_map(loss):
        def step(x, w, b, y):
            weighted = lambda x, w, b: jnp.sum(loss(x, w, b, y) * jnp.cos(y))  # noqa: E731
            value, grads = jax.value_and_grad(weighted, (0, 1, 2))(x, w, b)
            return value[None], grads

        specs = (P("data"), P(), P(), P("data"))
        out_specs = (P("data"), (P("data"), P(), P()))
        f = jax.shard_map(step, mesh=mesh, in_specs=specs, out_specs=out_specs, check_vma=check_vma)
        return jax.jit(f)(x, w, b, y)

    got, want = in_shard_map(ours), in_shard_map(naive)
    for a, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, e, rtol=2e-5, atol=2e-6)
