"""An independent float64 reference for the jsoftmax losses (a helper of test_loss_sweep.py).

Written from the docstring math of ``jsoftmax.cross_entropy``, ``nll_loss`` and
``linear_cross_entropy`` only; nothing here imports jsoftmax. Every function takes the array
module ``xp``: with NumPy (the default) it is a plain float64 NumPy implementation, with
``jax.numpy`` under ``jax.enable_x64`` the same code can be differentiated by ``jax.grad``, which
checks the closed-form gradients below (``test_reference_gradients_are_autodiff``).

Notation as in the docstrings, per example ``n`` and class ``c`` after the class axes have been
moved to the end (in the order given) and flattened: ``m`` the max over the live classes,
``xs = z - m``, ``s = sum_c exp(xs)`` over the live classes, ``lse = m + log s``, ``t`` the
target row, ``omega`` the example's weight in the mean.
"""

from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------


def class_axes(axis, ndim: int) -> tuple[int, ...]:
    """The class axes in the order given (``None``: every axis), non-negative."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        return (int(axis) % ndim,)
    return tuple(int(a) % ndim for a in axis)


def batch_shape(shape, axes) -> tuple[int, ...]:
    return tuple(d for a, d in enumerate(shape) if a not in axes)


def classes_last(x, axes, xp=np):
    """Move ``axes`` to the end in the order given and flatten them into one axis."""
    k = len(axes)
    x = xp.moveaxis(x, axes, tuple(range(x.ndim - k, x.ndim)))
    return x.reshape((*x.shape[: x.ndim - k], -1))


def classes_back(x, shape, axes):
    """Inverse of :func:`classes_last` (NumPy): ``[..., C]`` back to the layout ``shape``."""
    k = len(axes)
    x = np.asarray(x).reshape(batch_shape(shape, axes) + tuple(shape[a] for a in axes))
    return np.moveaxis(x, tuple(range(x.ndim - k, x.ndim)), axes)


def per_class(v, ndim: int, xp=np):
    """A ``[C]`` vector as ``[1, ..., 1, C]`` (explicit ranks: the suite forbids promotion)."""
    return xp.reshape(v, (1,) * (ndim - 1) + (-1,))


def unbroadcast(g, shape):
    """Sum a gradient of a broadcast array back to the array's own ``shape``."""
    g = np.asarray(g)
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    keep = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    return g.sum(axis=keep, keepdims=True) if keep else g


# --------------------------------------------------------------------------------------------
# cross-entropy
# --------------------------------------------------------------------------------------------


def ce_terms(
    z,
    labels,
    *,
    axis=-1,
    weight=None,
    ignore_index=None,
    label_smoothing=0.0,
    z_loss=0.0,
    where=None,
    xp=np,
):
    """Per-example pieces of ``cross_entropy`` (classes last), as a dict of ``xp`` arrays.

    ``labels`` integer (class indices) or floating (probabilities of ``z``'s shape). ``where``
    of the batch rank masks examples; of ``z``'s rank (broadcastable) masks classes.
    """
    z = xp.asarray(z)
    shape = z.shape
    axes = class_axes(axis, z.ndim)
    bshape = batch_shape(shape, axes)
    zf = classes_last(z, axes, xp)
    n_classes = zf.shape[-1]
    live = xp.ones(zf.shape, dtype=bool)
    ok = xp.ones(bshape, dtype=bool)
    if where is not None:
        where = xp.asarray(where)
        if where.ndim == len(bshape):
            ok = xp.broadcast_to(where, bshape)
        else:
            assert where.ndim == z.ndim, where.shape
            # the mask is broadcast to the logits FIRST, then laid out like them
            live = classes_last(xp.broadcast_to(where, shape), axes, xp)
    anylive = xp.any(live, axis=-1)
    ok = ok & anylive  # an example with every class masked takes no part
    count = xp.sum(live, axis=-1)  # C_n: live classes of the broadcast mask
    count_safe = xp.where(count > 0, count, 1).astype(zf.dtype)

    # logsumexp over the live classes, shifted by their max
    m = xp.max(xp.where(live, zf, -np.inf), axis=-1)
    m = xp.where(anylive, m, 0.0)
    xs = zf - m[..., None]  # of the RAW logits: a masked label still scores its own logit
    e = xp.where(live, xp.exp(xp.where(live, xs, 0.0)), 0.0)
    s = xp.sum(e, axis=-1)
    s_safe = xp.where(anylive, s, 1.0)
    log_s = xp.log(s_safe)
    lse = m + log_s
    p = e / s_safe[..., None]

    w = xp.ones((n_classes,), zf.dtype) if weight is None else xp.asarray(weight, zf.dtype)
    wrow = per_class(w, zf.ndim, xp)
    eps = float(label_smoothing)
    uniform = xp.where(live, wrow, 0.0) / count_safe[..., None]  # w_c / C_n on live classes
    labels = xp.asarray(labels)
    if np.issubdtype(labels.dtype, np.integer):
        y = labels.astype(np.int64)
        if ignore_index is not None:
            ok = ok & (y != ignore_index)
        y_safe = xp.where((y >= 0) & (y < n_classes), y, 0)
        onehot = per_class(xp.arange(n_classes), zf.ndim, xp) == y_safe[..., None]
        onehot = onehot.astype(zf.dtype)
        w_y = w[y_safe]
        t = (1 - eps) * w_y[..., None] * onehot + eps * uniform
        omega = w_y
    else:
        assert ignore_index is None
        q = classes_last(labels, axes, xp)
        t = xp.where(live, wrow * ((1 - eps) * q + eps / count_safe[..., None]), 0.0)
        omega = xp.ones(bshape, zf.dtype)
    t = xp.where(ok[..., None], t, 0.0)
    omega = xp.where(ok, omega, 0.0)
    nll = log_s[..., None] - xs  # = lse - z, without cancelling a large lse against z
    loss = xp.sum(t * nll, axis=-1) + z_loss * omega * lse**2
    return {
        "loss": loss,
        "omega": omega,
        "t": t,
        "p": p,
        "xs": xs,
        "log_s": log_s,
        "lse": lse,
        "live": live,
        "ok": ok,
        "w": wrow,
        "eps": eps,
        "z_loss": float(z_loss),
        "shape": shape,
        "axes": axes,
    }


def reduce(loss, omega, reduction: str, xp=np):
    """``"mean"`` is sum L / sum omega; 0 when no example contributes (not 0 / 0).

    (Weights of contributing examples that sum to 0 divide by 0, as in PyTorch; the sweep
    draws no such case.)
    """
    if reduction == "none":
        return loss
    total = xp.sum(loss)
    if reduction == "sum":
        return total
    den = xp.sum(omega)
    nothing = (den == 0) & xp.all(loss == 0)
    return total / xp.where(nothing, 1.0, den)


def cotangent_per_example(g, terms, reduction: str):
    """``G_n``: the cotangent of each per-example loss for the output cotangent ``g``."""
    bshape = terms["loss"].shape
    g = np.asarray(g, np.float64)
    if reduction == "none":
        return np.broadcast_to(g, bshape)
    if reduction == "mean":
        den = np.sum(terms["omega"])
        g = g / (den if den != 0 else 1.0)
    return np.broadcast_to(g, bshape)


def ce_grads(terms, g, reduction: str):
    """Closed-form gradients (classes last) of the reduced loss for the output cotangent ``g``.

    ``dz = G (sum_c t + 2 zeta omega lse) p - G t`` and, for probability labels,
    ``dq = G (1 - eps) w_c (lse - z_c)`` on the live classes of taking-part examples.
    """
    gn = cotangent_per_example(g, terms, reduction)[..., None]
    t = terms["t"]
    coef = t.sum(-1) + 2 * terms["z_loss"] * terms["omega"] * terms["lse"]
    dz = gn * (coef[..., None] * terms["p"] - t)
    nll = terms["log_s"][..., None] - terms["xs"]
    mask = terms["live"] & terms["ok"][..., None]
    dq = np.where(mask, gn * (1 - terms["eps"]) * terms["w"] * nll, 0.0)
    return dz, dq


def ce_value_scale(terms):
    """Per example: a rounding-aware magnitude of the loss (a bound on what rounding can hit).

    A loss evaluated as ``sum_c t_c (log s - xs_c) + zeta omega lse^2`` in precision ``u`` is off
    by at most a small multiple of ``u`` times this (times the summation length); the 1 is the
    absolute error of ``log s`` for a sum ``s >= 1`` known to a relative ``u``.
    """
    t = np.abs(terms["t"])
    term = np.sum(t * (1 + np.abs(terms["log_s"])[..., None] + np.abs(terms["xs"])), -1)
    return term + terms["z_loss"] * np.abs(terms["omega"]) * terms["lse"] ** 2


def ce_grad_scale(terms, g, reduction: str):
    """Per logit: a rounding-aware magnitude of ``dz`` (the closed form's terms in absolute
    value, with ``p``'s relative error growing like ``|xs| + |log s|``)."""
    gn = np.abs(cotangent_per_example(g, terms, reduction))[..., None]
    t = np.abs(terms["t"])
    coef = t.sum(-1) + 2 * terms["z_loss"] * np.abs(terms["omega"] * terms["lse"])
    p = terms["p"] * (1 + np.abs(terms["xs"]) + np.abs(terms["log_s"])[..., None])
    return gn * (coef[..., None] * p + t)


def reduced_scale(per_example, terms, reduction: str):
    """The magnitude of a reduced value from per-example magnitudes."""
    if reduction == "none":
        return per_example
    total = np.sum(per_example)
    if reduction == "mean":
        den = np.sum(terms["omega"])
        return total / (abs(den) if den != 0 else 1.0)
    return total


def cross_entropy(z, labels, *, reduction="mean", xp=np, **opts):
    """The reduced reference loss (``opts`` as :func:`ce_terms`)."""
    terms = ce_terms(z, labels, xp=xp, **opts)
    return reduce(terms["loss"], terms["omega"], reduction, xp)


# --------------------------------------------------------------------------------------------
# nll_loss
# --------------------------------------------------------------------------------------------


def nll_loss(lp, labels, *, axis=-1, weight=None, ignore_index=None, reduction="mean"):
    """``L_n = -w_y log p_{n,y}`` over the examples not ignored; the mean divides by
    ``sum w_y``. Returns ``(value, omega, y, classes, axes)``: the reduced loss, each example's
    weight ``w_y`` (0 if ignored), the labels made safe to index with, the class count and the
    class axes (the gradient is ``-G_n omega_n`` at ``y_n``, 0 elsewhere)."""
    lp = np.asarray(lp, np.float64)
    axes = class_axes(axis, lp.ndim)
    lpf = classes_last(lp, axes)
    n_classes = lpf.shape[-1]
    y = np.asarray(labels).astype(np.int64)
    ok = np.ones(y.shape, bool) if ignore_index is None else y != ignore_index
    y_safe = np.where(ok, y, 0)
    w = np.ones(n_classes) if weight is None else np.asarray(weight, np.float64)
    omega = np.where(ok, w[y_safe], 0.0)
    picked = np.take_along_axis(lpf, y_safe[..., None], -1)[..., 0]
    loss = np.where(ok, -omega * picked, 0.0)
    value = reduce(loss, omega, reduction)
    return value, omega, y_safe, n_classes, axes


# --------------------------------------------------------------------------------------------
# linear_cross_entropy
# --------------------------------------------------------------------------------------------


def linear_logits(x, w, bias, softcap, xp=np):
    """``z = x @ w + bias``, soft-capped to ``c tanh(s / c)``; also ``tanh(s / c)`` (or None)."""
    s = xp.asarray(x) @ xp.asarray(w)
    if bias is not None:
        s = s + per_class(xp.asarray(bias), 2, xp)
    if softcap is None:
        return s, None
    th = xp.tanh(s / softcap)
    return softcap * th, th


def linear_terms(x, w, labels, *, bias=None, ignore_index=None, label_smoothing=0.0,
                 z_loss=0.0, softcap=None, xp=np):  # fmt: skip
    """Per-token terms of ``linear_cross_entropy`` (tokens flattened), via :func:`ce_terms`."""
    x = xp.asarray(x)
    d = x.shape[-1]
    z, th = linear_logits(x.reshape(-1, d), w, bias, softcap, xp)
    terms = ce_terms(
        z,
        xp.asarray(labels).reshape(-1),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        xp=xp,
    )
    terms["tanh"] = th
    return terms


def linear_grads(x, w, terms, g, reduction: str):
    """Closed-form ``(dx, dw, dbias)`` of the reduced loss, and their rounding-aware scales.

    ``dz`` as in :func:`ce_grads`, times ``1 - tanh^2`` under soft-capping; then
    ``dx = dz w^T``, ``dw = x^T dz``, ``dbias = sum_n dz``. The scales propagate the absolute
    values through the same products.
    """
    x2 = np.asarray(x, np.float64).reshape(-1, np.shape(w)[0])
    w = np.asarray(w, np.float64)
    g = np.asarray(g, np.float64).reshape(-1) if reduction == "none" else g
    dz, _ = ce_grads(terms, g, reduction)
    scale = ce_grad_scale(terms, g, reduction)
    if terms["tanh"] is not None:
        d = 1 - terms["tanh"] ** 2
        dz, scale = dz * d, scale * (1 + terms["tanh"] ** 2)
    grads = (dz @ w.T, x2.T @ dz, dz.sum(0))
    scales = (scale @ np.abs(w).T, np.abs(x2).T @ scale, scale.sum(0))
    return grads, scales
