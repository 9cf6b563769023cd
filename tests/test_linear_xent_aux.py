"""Tests for linear_cross_entropy's token_weights, return_aux and w_layout (issue 20, item 4).

The reference is written here from the materialised logits ``x @ w + bias`` in float64: the
per-token losses from ``jax.nn.log_softmax``, ``lse`` from ``jax.nn.logsumexp`` and the accuracy
from ``jnp.argmax``; weights multiply the per-token losses and ``"mean"`` divides by their sum.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from jsoftmax import linear_cross_entropy
from jsoftmax._linear_xent import LinearCrossEntropyAux

N, D, V = 13, 5, 29  # primes, so chunks of (4, 7) leave a remainder along both axes
IGNORE = -100


def reference(
    x,
    w,
    labels,
    bias=None,
    *,
    token_weights=None,
    ignore_index=None,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    reduction="mean",
):
    """``(loss, aux dict)`` from the full logits (``w`` is ``[D, V]``)."""
    z = jnp.matmul(x, w, preferred_element_type=jnp.float32 if x.dtype != jnp.float64 else None)
    if bias is not None:
        z = z + jnp.broadcast_to(bias, z.shape).astype(z.dtype)
    if softcap is not None:
        z = softcap * jnp.tanh(z / softcap)
    v = z.shape[-1]
    valid = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    omega = valid.astype(z.dtype)
    if token_weights is not None:
        omega = jnp.where(valid, jnp.asarray(token_weights, z.dtype), 0)
    onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), v, dtype=z.dtype)
    target = (1 - label_smoothing) * onehot + label_smoothing / v
    lse = jax.nn.logsumexp(z, axis=-1)
    logp = jax.nn.log_softmax(z, axis=-1)
    ce = -jnp.sum(jnp.where(target == 0, 0, target * logp), axis=-1)  # 0 · log 0 = 0
    zl = jnp.where(omega == 0, 0, omega * z_loss * lse**2)
    loss = jnp.where(omega == 0, 0, omega * ce) + zl
    acc = jnp.where(jnp.argmax(z, axis=-1) == labels, omega, 0)
    num = jnp.sum(omega)
    if reduction == "sum":
        loss, zl, acc = loss.sum(), zl.sum(), acc.sum()
    elif reduction == "mean":
        div = jnp.where(num == 0, 1, num)
        loss, zl, acc = loss.sum() / div, zl.sum() / div, acc.sum() / div
    return loss, {"lse": lse, "z_loss": zl, "num_tokens": num, "accuracy": acc}


def make(n=N, d=D, v=V, dtype=jnp.float64, seed=0, n_ignored=3, lead=()):
    kx, kw, kb, ky, kt = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(kx, (*lead, n, d), dtype)
    w = jax.random.normal(kw, (d, v), dtype)
    b = jax.random.normal(kb, (v,), dtype)
    y = jax.random.randint(ky, (*lead, n), 0, v)
    y = y.at[..., :n_ignored].set(IGNORE)
    # weights in [0, 2), with exact zeros on some tokens that are not ignored
    tw = 2 * jax.random.uniform(kt, (*lead, n), dtype)
    tw = tw.at[..., n_ignored].set(0)
    return x, w, b, y, tw


def _aux_dict(aux):
    assert isinstance(aux, LinearCrossEntropyAux)
    return aux._asdict()


def _close(a, b, **tol):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


def _call(x, w, y, b, layout, **kw):
    """``linear_cross_entropy`` of a ``[D, V]`` (``"dv"``) or ``[V, D]`` (``"vd"``) weight."""
    return linear_cross_entropy(x, w, y, bias=b, w_layout=layout, **kw)


def _as_dv(w, layout):
    """The ``[D, V]`` weight the reference takes."""
    return w if layout == "dv" else w.T


OPTIONS = [
    pytest.param({}, id="plain"),
    pytest.param({"ignore_index": IGNORE, "label_smoothing": 0.2}, id="ignore-smooth"),
    pytest.param({"z_loss": 0.05, "softcap": 2.0}, id="zloss-softcap"),
    pytest.param(
        {"ignore_index": IGNORE, "label_smoothing": 0.1, "z_loss": 0.01, "softcap": 3.0},
        id="all",
    ),
]


def _value_and_grads(f, x, w, b, cot):
    """``(loss, aux)`` and the gradients of ``Σ cot · loss`` in x, w and bias."""

    def scalar(x, w, b):
        loss, aux = f(x, w, b)
        return jnp.sum(cot * loss), (loss, aux)

    (_, out), g = jax.value_and_grad(scalar, (0, 1, 2), has_aux=True)(x, w, b)
    return out, g


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("path", ["fused", "recompute"])
@pytest.mark.parametrize("layout", ["dv", "vd"])
def test_weights_aux_and_layout_match_reference(options, reduction, path, layout):
    # float64 against autodiff of the materialised reference, with float weights (zeros
    # included), every reduction, both gradient paths and both layouts of w
    if path == "fused" and reduction == "none":
        pytest.skip("reduction='none' always recomputes")
    with jax.enable_x64(True):
        x, w, b, y, tw = make()
        if "ignore_index" not in options:
            y = jnp.abs(y) % V
        cot = jnp.cos(jnp.arange(N, dtype=jnp.float64)) if reduction == "none" else 1.0
        kw = dict(options, reduction=reduction, token_weights=tw)

        def f(x, w, b):
            return _call(
                x,
                w,
                y,
                b,
                layout,
                chunk_size=(4, 7),
                return_aux=True,
                gradients_in_forward=path == "fused",
                **kw,
            )

        def f_ref(x, w, b):
            return reference(x, _as_dv(w, layout), y, b, **kw)

        w = _as_dv(w, layout)  # [V, D] for "vd": the kernel's dw is [V, D] too
        (loss, aux), g = _value_and_grads(f, x, w, b, cot)
        (loss_r, aux_r), g_r = _value_and_grads(f_ref, x, w, b, cot)
        _close(loss, loss_r, rtol=1e-12, atol=1e-13)
        _close(_aux_dict(aux), aux_r, rtol=1e-12, atol=1e-13)
        assert g[1].shape == w.shape == g_r[1].shape
        _close(g, g_r, rtol=1e-10, atol=1e-12)
        # loss − z_loss is the cross-entropy part alone
        ce_only, _ = reference(x, _as_dv(w, layout), y, b, **dict(kw, z_loss=0.0))
        _close(loss - aux.z_loss, ce_only, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("chunk_size", [(4, 7), (13, 29), (5, 3), (1, 1), None], ids=str)
@pytest.mark.parametrize("weights", ["none", "float", "bool"])
@pytest.mark.parametrize("path", ["fused", "recompute"])
def test_chunk_sizes_and_weight_kinds(chunk_size, weights, path):
    # ragged tails on both axes, one block, one-element blocks; bool weights are a loss mask
    with jax.enable_x64(True):
        x, w, b, y, tw = make(seed=3)
        tw = {"none": None, "float": tw, "bool": tw > 0.7}[weights]
        opts = {"ignore_index": IGNORE, "z_loss": 0.02, "label_smoothing": 0.1}

        def f(x, w, b):
            return linear_cross_entropy(
                x,
                w,
                y,
                bias=b,
                chunk_size=chunk_size,
                token_weights=tw,
                return_aux=True,
                gradients_in_forward=path == "fused",
                **opts,
            )

        def f_ref(x, w, b):
            return reference(x, w, y, b, token_weights=tw, **opts)

        (loss, aux), g = _value_and_grads(f, x, w, b, 1.0)
        (loss_r, aux_r), g_r = _value_and_grads(f_ref, x, w, b, 1.0)
        _close((loss, _aux_dict(aux)), (loss_r, aux_r), rtol=1e-12, atol=1e-13)
        _close(g, g_r, rtol=1e-10, atol=1e-12)


def test_bool_mask_equals_ignore_index():
    # masking a token out with token_weights=False is the same as giving it ignore_index
    x, w, _b, y, _ = make(dtype=jnp.float32)
    y_full = jnp.abs(y) % V
    mask = y != IGNORE
    for path in (True, False):
        got = jax.value_and_grad(
            lambda x, w, p=path: linear_cross_entropy(
                x, w, y_full, token_weights=mask, gradients_in_forward=p
            ),
            (0, 1),
        )(x, w)
        want = jax.value_and_grad(
            lambda x, w, p=path: linear_cross_entropy(
                x, w, y, ignore_index=IGNORE, gradients_in_forward=p
            ),
            (0, 1),
        )(x, w)
        _close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("path", ["fused", "recompute"])
def test_unit_weights_equal_no_weights(path):
    x, w, b, y, _ = make(dtype=jnp.float32)
    ones = jnp.ones((N,), jnp.float32)
    kw = dict(bias=b, ignore_index=IGNORE, chunk_size=(4, 7), gradients_in_forward=path == "fused")
    got = jax.value_and_grad(
        lambda x, w: linear_cross_entropy(x, w, y, token_weights=ones, **kw), (0, 1)
    )(x, w)
    want = jax.value_and_grad(lambda x, w: linear_cross_entropy(x, w, y, **kw), (0, 1))(x, w)
    _close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("path", ["fused", "recompute"])
def test_zero_weight_token_scores_zero_at_an_infinite_label_logit(path):
    # a token of weight 0 whose label's logit is -inf (loss +inf unweighted) contributes 0, to
    # the loss and to the gradients, not 0 · inf = NaN
    x, w, b, y, tw = make(dtype=jnp.float32)
    y = jnp.abs(y) % V
    b = b.at[y[0]].set(-jnp.inf)  # every token labelled y[0] has an infinite loss
    hit = y == y[0]
    tw = jnp.where(hit, 0.0, tw)
    kw = dict(bias=b, chunk_size=(4, 7), gradients_in_forward=path == "fused")
    loss, (dx, dw) = jax.value_and_grad(
        lambda x, w: linear_cross_entropy(x, w, y, token_weights=tw, **kw), (0, 1)
    )(x, w)
    assert np.isfinite(loss) and np.all(np.isfinite(dx)) and np.all(np.isfinite(dw))
    want, _ = reference(x[~hit], w, y[~hit], b, token_weights=tw[~hit])
    _close(loss * tw.sum(), want * tw[~hit].sum(), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(dx)[np.asarray(hit)], 0)


@pytest.mark.parametrize("path", ["fused", "recompute"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_out_of_range_label_with_zero_weight_is_nan_under_jit(path, reduction):
    # a weight of 0 does not hide an out-of-range label: NaN, never a finite wrong number
    if path == "fused" and reduction == "none":
        pytest.skip("reduction='none' always recomputes")
    x, w, _b, y, tw = make(dtype=jnp.float32)
    y = y.at[5].set(V + 3)
    tw = tw.at[5].set(0.0)

    @jax.jit
    def f(x, w, y):
        return linear_cross_entropy(
            x,
            w,
            y,
            token_weights=tw,
            ignore_index=IGNORE,
            z_loss=0.01,
            reduction=reduction,
            return_aux=True,
            gradients_in_forward=path == "fused",
        )

    loss, aux = f(x, w, y)
    bad = np.asarray(loss if reduction != "none" else loss[5])
    assert np.isnan(bad)
    for field in (aux.z_loss, aux.accuracy):
        assert np.isnan(np.asarray(field if reduction != "none" else field[5]))
    assert np.all(np.isfinite(aux.lse)) and np.isfinite(aux.num_tokens)
    if reduction == "none":  # the other tokens are unaffected
        assert np.all(np.isfinite(np.delete(np.asarray(loss), 5)))


@pytest.mark.parametrize("path", ["fused", "recompute"])
def test_no_gradient_flows_into_the_weights(path):
    x, w, _b, y, tw = make(dtype=jnp.float32)
    g = jax.grad(
        lambda tw: linear_cross_entropy(
            x, w, y, token_weights=tw, ignore_index=IGNORE, gradients_in_forward=path == "fused"
        )
    )(tw)
    np.testing.assert_array_equal(g, np.zeros(N, np.float32))


@pytest.mark.parametrize("path", ["fused", "recompute"])
def test_aux_outputs_carry_no_gradient(path):
    # the aux cotangents are ignored: differentiating a function of aux alone gives 0, and
    # differentiating loss + f(aux) gives the loss's gradient
    x, w, _b, y, _ = make(dtype=jnp.float32)
    kw = dict(
        ignore_index=IGNORE, z_loss=0.1, return_aux=True, gradients_in_forward=path == "fused"
    )

    def aux_only(x, w):
        _, aux = linear_cross_entropy(x, w, y, **kw)
        return jnp.sum(aux.lse) + aux.z_loss + aux.accuracy + aux.num_tokens

    g = jax.grad(aux_only, (0, 1))(x, w)
    _close(g, (np.zeros_like(x), np.zeros_like(w)), rtol=0, atol=0)

    def both(x, w):
        loss, aux = linear_cross_entropy(x, w, y, **kw)
        return loss + 3.0 * aux.z_loss + jnp.sum(aux.lse)

    plain = jax.grad(
        lambda x, w: linear_cross_entropy(
            x, w, y, ignore_index=IGNORE, z_loss=0.1, gradients_in_forward=path == "fused"
        ),
        (0, 1),
    )
    _close(jax.grad(both, (0, 1))(x, w), plain(x, w), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("path", ["fused", "recompute"])
@pytest.mark.parametrize("chunk", [(13, 29), (4, 7), (3, 2)], ids=str)
def test_accuracy_ties_go_to_the_first_maximal_class(path, chunk):
    # classes 3, 10 and 20 have the same weight column, so the same logit for every token:
    # the argmax is 3 (jnp.argmax takes the first), also when they fall in different blocks
    x, w, _, _, _ = make(dtype=jnp.float32)
    x = jnp.round(8 * jnp.abs(x)) / 8  # dyadic: the tied logits are exact in any sum order
    col = 10.0 * jnp.ones((D,), jnp.float32)  # larger than every other logit
    w = w.at[:, 3].set(col).at[:, 10].set(col).at[:, 20].set(col)
    z = x @ w
    assert np.all(np.asarray(jnp.argmax(z, axis=1)) == 3)
    y = jnp.array([3, 10, 20, 3, 10, 20, 3, 0, 1, 2, 3, 3, 10])
    for layout in ("dv", "vd"):
        _, aux = _call(
            x,
            _as_dv(w, layout),  # the same transpose turns [D, V] into [V, D]
            y,
            None,
            layout,
            chunk_size=chunk,
            reduction="sum",
            return_aux=True,
            gradients_in_forward=path == "fused",
        )
        assert float(aux.accuracy) == float(jnp.sum(y == 3)) == 5.0


def test_num_tokens_counts_weights_of_tokens_not_ignored():
    x, w, _b, y, tw = make(dtype=jnp.float32)
    for reduction in ("mean", "sum", "none"):
        _, aux = linear_cross_entropy(
            x, w, y, ignore_index=IGNORE, token_weights=tw, reduction=reduction, return_aux=True
        )
        np.testing.assert_allclose(aux.num_tokens, jnp.sum(jnp.where(y != IGNORE, tw, 0)), 1e-6)
        assert aux.lse.shape == (N,) and aux.lse.dtype == jnp.float32
        want_shape = (N,) if reduction == "none" else ()
        assert aux.z_loss.shape == aux.accuracy.shape == want_shape


def test_mean_with_every_token_masked_is_zero():
    x, w, _b, y, _ = make(dtype=jnp.float32)
    y = jnp.abs(y) % V
    zeros = jnp.zeros((N,), jnp.float32)
    for path in (True, False):
        (loss, aux), g = jax.value_and_grad(
            lambda x, p=path: linear_cross_entropy(
                x, w, y, token_weights=zeros, return_aux=True, gradients_in_forward=p
            ),
            has_aux=True,
        )(x)
        assert float(loss) == 0 and float(aux.accuracy) == 0 and float(aux.num_tokens) == 0
        np.testing.assert_array_equal(g, np.zeros_like(x))


def test_jit_and_vmap_match_a_python_loop():
    x, w, b, y, tw = make(dtype=jnp.float32, lead=(3,))

    def f(x, y, tw):
        return linear_cross_entropy(
            x,
            w,
            y,
            bias=b,
            ignore_index=IGNORE,
            z_loss=0.01,
            token_weights=tw,
            return_aux=True,
            chunk_size=(4, 7),
        )

    got = jax.jit(jax.vmap(f))(x, y, tw)
    want = [f(x[i], y[i], tw[i]) for i in range(3)]
    want = jax.tree.map(lambda *a: jnp.stack(a), *want)
    _close(got, want, rtol=1e-5, atol=1e-6)
    # leading token axes: per-token fields keep labels' shape
    loss, aux = linear_cross_entropy(
        x, w, y, ignore_index=IGNORE, token_weights=tw, return_aux=True, reduction="none"
    )
    assert loss.shape == aux.lse.shape == aux.accuracy.shape == aux.z_loss.shape == (3, N)


def test_grad_of_vmap_with_aux():
    x, w, _b, y, tw = make(dtype=jnp.float32, lead=(2,))

    def f(w):
        loss, aux = jax.vmap(
            lambda x, y, tw: linear_cross_entropy(
                x, w, y, ignore_index=IGNORE, token_weights=tw, return_aux=True
            )
        )(x, y, tw)
        return jnp.sum(loss), aux

    g, aux = jax.grad(f, has_aux=True)(w)
    g_ref = jax.grad(
        lambda w: sum(
            reference(x[i], w, y[i], ignore_index=IGNORE, token_weights=tw[i])[0] for i in range(2)
        )
    )(w)
    _close(g, g_ref, rtol=1e-5, atol=1e-6)
    assert aux.num_tokens.shape == (2,)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("path", ["fused", "recompute"])
@pytest.mark.parametrize("layout", ["dv", "vd"])
def test_half_precision(dtype, path, layout):
    # float32 loss and aux, gradients in the inputs' dtype and w's layout; against the float32
    # reference on the same (rounded) inputs. Negative weights too (the float16 scaling bound)
    x, w, b, y, tw = make(dtype=jnp.float32)
    x, w, b = x.astype(dtype), _as_dv(w, layout).astype(dtype), b.astype(dtype)
    tw = tw - 0.5
    opts = dict(ignore_index=IGNORE, z_loss=0.01, label_smoothing=0.1, token_weights=tw)

    def f(x, w, b):
        return _call(
            x,
            w,
            y,
            b,
            layout,
            chunk_size=(4, 7),
            return_aux=True,
            gradients_in_forward=path == "fused",
            **opts,
        )

    (loss, aux), g = _value_and_grads(f, x, w, b, 1.0)
    assert loss.dtype == jnp.float32
    assert all(a.dtype == jnp.float32 for a in aux)
    assert [a.dtype for a in g] == [dtype] * 3
    up = lambda a: a.astype(jnp.float32)  # noqa: E731
    (loss_r, aux_r), g_r = _value_and_grads(
        lambda x, w, b: reference(x, _as_dv(w, layout), y, b, **opts), up(x), up(w), up(b), 1.0
    )
    _close((loss, _aux_dict(aux)), (loss_r, aux_r), rtol=1e-5, atol=1e-5)
    assert g[1].shape == w.shape
    _close(jax.tree.map(up, g), g_r, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("path", ["fused", "recompute"])
def test_vd_layout_makes_no_transposed_copy_of_w(path):
    # the compiled value-and-grad of a [V, D] weight holds no [D, V] array made by a transpose
    # (or a copy of that shape): the block matmuls contract w's feature axis directly
    d, v = 24, 40
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (16, d))
    w_vd = jax.random.normal(kw, (v, d))
    y = jnp.arange(16) % v
    kw_ = dict(w_layout="vd", chunk_size=(8, 16), gradients_in_forward=path == "fused")
    f = jax.jit(jax.value_and_grad(lambda x, w: linear_cross_entropy(x, w, y, **kw_), (0, 1)))
    hlo = f.lower(x, w_vd).compile().as_text()
    pattern = rf"f32\[{d},{v}\][^\n]*\b(transpose|copy)\("
    assert not re.search(pattern, hlo), re.findall(rf"[^\n]*f32\[{d},{v}\][^\n]*", hlo)
    # the same function on w.T with "dv" does hold such an array: the pattern can match
    g = jax.jit(jax.value_and_grad(lambda x, w: linear_cross_entropy(x, w.T, y), (0, 1)))
    assert re.search(pattern, g.lower(x, w_vd).compile().as_text())
    (loss, (dx, dw)) = f(x, w_vd)
    loss_t, (dx_t, dw_t) = jax.value_and_grad(
        lambda x, w: linear_cross_entropy(
            x, w, y, chunk_size=(8, 16), gradients_in_forward=path == "fused"
        ),
        (0, 1),
    )(x, w_vd.T)
    _close((loss, dx, dw), (loss_t, dx_t, dw_t.T), rtol=1e-5, atol=1e-6)


def test_residuals_with_token_weights():
    # the recompute path saves the weights (one per-token vector) besides its usual residuals;
    # the gradients-in-forward path still saves only the gradients
    x, w, _b, y, tw = make(dtype=jnp.float32)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(
            lambda x, w: linear_cross_entropy(
                x, w, y, token_weights=tw, ignore_index=IGNORE, gradients_in_forward=False
            ),
            x,
            w,
        )
    saved = sorted(line.split()[0] for line in out.getvalue().strip().splitlines())
    want = [f"f32[{N},{D}]", f"f32[{D},{V}]", "f32[]", *[f"f32[{N}]"] * 3, f"i32[{N}]"]
    assert saved == sorted(want), out.getvalue()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(
            lambda x, w: linear_cross_entropy(
                x, w, y, token_weights=tw, ignore_index=IGNORE, return_aux=True
            )[0],
            x,
            w,
        )
    saved = sorted(line.split()[0] for line in out.getvalue().strip().splitlines())
    assert saved == sorted([f"f32[{N},{D}]", f"f32[{D},{V}]"]), out.getvalue()


def test_empty_tokens_with_aux():
    x = jnp.zeros((0, D))
    w = jnp.ones((D, V))
    y = jnp.zeros((0,), jnp.int32)
    loss, aux = linear_cross_entropy(x, w, y, token_weights=jnp.zeros((0,)), return_aux=True)
    assert float(loss) == 0 and float(aux.num_tokens) == 0 and float(aux.accuracy) == 0
    assert aux.lse.shape == (0,)


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"token_weights": np.ones(N - 1, np.float32)},
            ValueError,
            re.escape(f"token_weights must have labels' shape ({N},); got ({N - 1},)"),
        ),
        (
            {"token_weights": np.ones((N, 1), np.float32)},
            ValueError,
            re.escape(f"token_weights must have labels' shape ({N},); got ({N}, 1)"),
        ),
        (
            {"token_weights": np.ones(N, np.int32)},
            TypeError,
            "token_weights must be floating point .* or bool .*; got dtype int32",
        ),
        ({"token_weights": [1.0] * N}, TypeError, "token_weights must be an array"),
        ({"w_layout": "DV"}, ValueError, "w_layout must be 'dv' .* or 'vd' .*; got 'DV'"),
        ({"w_layout": None}, TypeError, "w_layout must be 'dv' or 'vd'; got None"),
        ({"return_aux": "yes"}, TypeError, "return_aux must be True or False; got 'yes'"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    x, w, _, y, _ = make(dtype=jnp.float32)
    with pytest.raises(error, match="linear_cross_entropy: " + match):
        linear_cross_entropy(x, w, y, ignore_index=IGNORE, **kwargs)


def test_layout_mismatch_names_the_layout():
    x, w, _, y, _ = make(dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"w \[V, D\] \(w_layout='vd'\) must agree on D"):
        linear_cross_entropy(x, w, y, ignore_index=IGNORE, w_layout="vd")
    with pytest.raises(ValueError, match="pass a \\[V, D\\] weight with w_layout='vd'"):
        linear_cross_entropy(x, w.T, y, ignore_index=IGNORE)
    with pytest.raises(ValueError, match=r"w must have shape \[V, D\] \(w_layout='vd'\)"):
        linear_cross_entropy(x, w[0], y, ignore_index=IGNORE, w_layout="vd")


def test_vocab_sharded_kernel_combines_argmax_and_weights():
    # four faked devices in a subprocess (tests/_linear_xent_aux_worker.py): the per-shard
    # kernel with axis_name set, ties across shards, weights, both paths and layouts
    root = pathlib.Path(__file__).resolve().parents[1]
    worker = root / "tests" / "_linear_xent_aux_worker.py"
    env = dict(os.environ, PYTHONPATH=str(root))
    run = subprocess.run(
        [sys.executable, str(worker)], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok") == 4, run.stdout
