"""Classification losses: cross-entropy with PyTorch's options, NLL, and optax drop-ins.

Every cross-entropy here is one fused ``jax.custom_vjp`` that returns the per-example loss. Its
backward pass is the closed form ``g · (Σt · softmax(z) − t)`` (plus the z-loss term), so no
log-softmax is ever materialised for autodiff to walk back through. The reduction ("mean",
"sum", "none") is plain JAX around the per-example kernel.

Notation, per example ``n`` and class ``c`` (after the class axes have been moved to the end and
flattened into one axis of ``C`` classes):

* ``z`` logits, ``m = max_c z`` (the shift), ``s = Σ_c exp(z − m)``, ``lse = m + log s``;
* ``t`` the target row: a smoothed, weighted one-hot for integer labels (never formed in memory:
  the forward pass gathers one logit per example and the backward pass scatter-adds one value
  per example), or the smoothed, weighted probabilities;
* ``e = exp(z − m)``: for integer labels the forward pass saves ``e`` rather than ``z``, so the
  gradient ``(coef / s) · e − t`` costs no second ``exp`` per logit;
* ``ok`` whether the example takes part (not masked, not ``ignore_index``, some class left by a
  class mask) and ``ω`` its weight in the mean: ``weight[y]·ok`` for integer labels, ``ok`` for
  probability labels.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jsoftmax._checks import (
    Axis,
    as_float_array,
    as_label_index,
    as_mask,
    canonical_axes,
    check_ignore_index,
    check_labels_in_range,
    check_real,
    check_reduction,
    compute_dtype,
)
from jsoftmax._dispatch import choose
from jsoftmax._impl import mosaic_gpu
from jsoftmax._mesh import (
    batch_ones,
    explicit_sharding,
    explicit_spec,
    gather_1d,
    reshard_like,
    sharded_where,
    take_at_label,
)
from jsoftmax._softmax import max_shifted
from jsoftmax._xent_engine import (
    TokenStats,
    XentOptions,
    integer_target,
    poison,
    reduce_token_losses,
    token_loss,
    xmul,
)

__all__ = [
    "cross_entropy",
    "nll_loss",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
]

# --------------------------------------------------------------------------------------------
# Trace-time validation and layout
# --------------------------------------------------------------------------------------------


def _class_axes(axis: Axis, ndim: int, fn: str) -> tuple[int, ...]:
    """Validate ``axis``; return the class axes in the order the caller gave them.

    The order matters for tuple axes: an integer label is a flat row-major index into the slice
    ``logits[axis]`` taken in that order, as in optax.
    """
    canonical_axes(axis, ndim, fn)  # raises the shared TypeError / ValueError messages
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        return (int(axis) % ndim,)
    return tuple(int(a) % ndim for a in axis)


def _to_classes_last(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Move ``axes`` to the end (in the given order) and flatten them into one class axis."""
    batch = tuple(a for a in range(x.ndim) if a not in axes)
    if batch + axes != tuple(range(x.ndim)):
        x = jnp.transpose(x, batch + axes)  # skipped for the usual trailing class axis
    if len(axes) == 1:
        return x
    return x.reshape((*x.shape[: len(batch)], -1))


class _Inputs(NamedTuple):
    """Validated inputs, class axes moved to the end and flattened."""

    logits: jax.Array  # [..., C] in the caller's dtype
    labels: jax.Array  # int [...] or float [..., C]
    weight: jax.Array | None  # [C] in the compute dtype, gradient stopped
    ok: jax.Array | None  # bool [...]: the example takes part
    mask: jax.Array | None  # bool [..., C]: the class takes part in the softmax
    count: jax.Array | None  # int [...]: unmasked classes per example (with a class mask only)


def _prepare(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: Axis,
    weight: ArrayLike | None,
    ignore_index: int | None,
    where: ArrayLike | None,
    fn: str,
    name: str = "logits",
) -> _Inputs:
    logits = as_float_array(logits, name, fn)
    labels = jnp.asarray(labels)
    axes = _class_axes(axis, logits.ndim, fn)
    batch_shape = tuple(d for a, d in enumerate(logits.shape) if a not in axes)
    n_classes = int(np.prod([logits.shape[a] for a in axes]))
    layout = f"{name} of shape {logits.shape} with axis={axis!r}"
    if n_classes == 0:
        raise ValueError(f"{fn}: {layout} have no classes")
    ignore_index = check_ignore_index(ignore_index, fn)

    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != batch_shape:
            raise ValueError(
                f"{fn}: integer labels must have shape {batch_shape} (the {layout} without "
                f"the class axes); got {labels.shape}"
            )
        check_labels_in_range(labels, n_classes, ignore_index, fn)
        labels = as_label_index(labels)  # int8 labels with 200 classes must not wrap
    elif jnp.issubdtype(labels.dtype, jnp.floating):
        if labels.shape != logits.shape:
            raise ValueError(
                f"{fn}: probability labels must have the shape of {name}, {logits.shape}; got "
                f"{labels.shape} (class indices need an integer dtype)"
            )
        if ignore_index is not None:
            raise ValueError(
                f"{fn}: ignore_index={ignore_index!r} applies to integer labels only; got "
                f"probability labels of dtype {labels.dtype} (mask examples with where instead)"
            )
        labels = _to_classes_last(labels, axes)
    else:
        raise TypeError(
            f"{fn}: labels must be integer class indices or floating-point probabilities; got "
            f"dtype {labels.dtype}"
        )

    if weight is not None:
        weight = as_float_array(weight, "weight", fn)
        if weight.shape != (n_classes,):
            raise ValueError(
                f"{fn}: weight must have shape [classes] = ({n_classes},) for {layout}; got "
                f"{weight.shape}"
            )
        # class weights are constants of the loss: no gradient flows into them
        weight = lax.stop_gradient(weight.astype(compute_dtype(logits.dtype)))

    ok = mask = count = None
    if where is not None:
        where = jnp.asarray(where)
        if where.dtype != jnp.bool_:
            raise TypeError(f"{fn}: where must be a boolean mask; got dtype {where.dtype}")
        if where.ndim == len(batch_shape):
            # one flag per example
            if not _broadcasts(where.shape, batch_shape):
                raise ValueError(
                    f"{fn}: where of shape {where.shape} (one flag per example) must be "
                    f"broadcastable to {batch_shape}, the {layout} without the class axes"
                )
            ok = as_mask(where, batch_shape, fn)
        elif where.ndim == logits.ndim:
            # one flag per class: masked classes leave the softmax
            if not _broadcasts(where.shape, logits.shape):
                raise ValueError(
                    f"{fn}: where of shape {where.shape} (one flag per class) must be "
                    f"broadcastable to {name} of shape {logits.shape}"
                )
            mask = as_mask(where, logits.shape, fn)
            if len(axes) > 1:
                # several class axes are flattened into one, which needs them at full size
                # (a size-1 axis among them cannot be reshaped into the flat class index)
                full = tuple(logits.shape[a] if a in axes else d for a, d in enumerate(mask.shape))
                mask = jnp.broadcast_to(mask, full)
            mask = _to_classes_last(mask, axes)
            # Live classes per example, counted on the mask broadcast to all n_classes classes
            # (a [..., 1] mask stays unbroadcast in memory; XLA fuses the broadcast into the sum)
            count = jnp.sum(
                jnp.broadcast_to(mask, (*mask.shape[:-1], n_classes)), -1, dtype=jnp.int32
            )
            ok = count > 0  # an example with every class masked contributes nothing
        else:
            raise ValueError(
                f"{fn}: where must have rank {len(batch_shape)} (one flag per example, "
                f"broadcastable to {batch_shape}) or rank {logits.ndim} (broadcastable to "
                f"{name} of shape {logits.shape}); got shape {where.shape}"
            )
    if ignore_index is not None:
        keep = labels != ignore_index
        ok = keep if ok is None else ok & keep
    return _placed(_Inputs(_to_classes_last(logits, axes), labels, weight, ok, mask, count))


def _placed(inp: _Inputs) -> _Inputs:
    """On an ``Explicit`` mesh, every input sharded like the logits (identity elsewhere).

    Per-example arrays take the sharding of the logits' batch axes, per-class ones that of
    their class axis, and masks that of the logits on their full-size axes, so that every step
    between them is local to a device, whatever placement the caller gave the labels or masks.
    """
    z = inp.logits
    spec = explicit_spec(z)
    if spec is None:
        return inp
    batch, cls = spec[:-1], spec[-1:]

    def like(a, entries):
        if a is None:
            return None
        # a size-1 (broadcast) axis of a mask is not sharded
        entries = tuple(e if n != 1 else None for e, n in zip(entries, a.shape, strict=True))
        return reshard_like(a, z, entries)

    integer = jnp.issubdtype(inp.labels.dtype, jnp.integer)
    return _Inputs(
        z,
        like(inp.labels, batch if integer else spec),
        like(inp.weight, cls),
        like(inp.ok, batch),
        like(inp.mask, spec),
        like(inp.count, batch),
    )


def _broadcasts(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def _safe_labels(labels: jax.Array, n_classes: int, ok: jax.Array | None):
    """``(bad, y)``: which taking-part labels are out of range, and labels safe to index with."""
    out = (labels < 0) | (labels >= n_classes)
    bad = out if ok is None else out & ok
    return bad, sharded_where(out, 0, labels)


def _example_weight(inp: _Inputs, cdt) -> jax.Array:
    """``ω``: the example's weight in the mean's denominator."""
    if jnp.issubdtype(inp.labels.dtype, jnp.integer) and inp.weight is not None:
        omega = gather_1d(inp.weight, _safe_labels(inp.labels, inp.logits.shape[-1], None)[1])
    else:
        # *_like keeps the logits' sharding (a new array would be replicated)
        omega = batch_ones(inp.logits, cdt)
    return omega if inp.ok is None else sharded_where(inp.ok, omega, 0)


def _per_class(w: jax.Array, ndim: int) -> jax.Array:
    """A ``[C]`` vector viewed as ``[1, ..., 1, C]`` so it broadcasts without rank promotion."""
    return w.reshape((1,) * (ndim - 1) + w.shape)


def _shift(z: jax.Array, mask: jax.Array | None):
    """Per example: ``(z − m, exp(z − m), m, s)`` over the unmasked classes, compute dtype."""
    # a finite shift: a row with every class masked scores 0, not NaN
    xs, m = max_shifted(z.astype(compute_dtype(z.dtype)), (z.ndim - 1,), mask, finite=True)
    e = jnp.exp(xs)
    return xs, e, m[..., 0], jnp.sum(e, -1)


def _softmax_scale(coef: jax.Array, s: jax.Array) -> jax.Array:
    """``coef / s``: the gradient's softmax term is ``coef · p = (coef / s) · exp(z − m)``.

    ``s ≥ 1`` whenever the row has a finite live logit (its max contributes exp(0) = 1);
    otherwise ``s = 0`` and ``e = 0``, and dividing by ``max(s, 1)`` keeps that row at 0 without
    a select, which would split the fused reduce-exp-multiply in two.
    """
    return coef / jnp.maximum(s, 1)


def _smoothing_share(eps: float, ok, count, n_classes: int, shape, cdt):
    """``ε / C_n`` for taking-part examples, 0 otherwise (``C_n``: unmasked classes)."""
    share = eps / (n_classes if count is None else jnp.maximum(count, 1).astype(cdt))
    share = jnp.broadcast_to(jnp.asarray(share, cdt), shape)
    return share if ok is None else sharded_where(ok, share, 0)


# --------------------------------------------------------------------------------------------
# Integer labels: one fused rule
# --------------------------------------------------------------------------------------------


class _IntegerResiduals(NamedTuple):
    """What the integer-label rule saves: one logits-sized array and per-example numbers."""

    e_or_z: jax.Array  # exp(z − m) (same-precision logits) or z itself (half precision)
    m: jax.Array | None  # the shift, to recompute e from z (half precision only)
    labels: jax.Array  # int [...]
    weight: jax.Array | None  # [C]
    mask: jax.Array | None  # [..., C or 1]
    r: jax.Array  # coef / s: the scale of e in the gradient (NaN for a bad label)
    a: jax.Array  # the one-hot part of t
    b: jax.Array | None  # the uniform part of t per unit class weight (with smoothing)


def _integer_forward(opts: XentOptions, z, labels, weight, ok, mask, count):
    """Per-example loss of integer labels and the rule's residuals."""
    cdt = compute_dtype(z.dtype)
    n_classes, eps = z.shape[-1], opts.label_smoothing
    xs, e, m, s = _shift(z, mask)
    log_s = jnp.log(s)  # log 0 = -inf for a row with no finite unmasked logit
    bad, y = _safe_labels(labels, n_classes, ok)
    omega = jnp.ones_like(m) if weight is None else gather_1d(weight, y)
    if ok is not None:
        omega = sharded_where(ok, omega, 0)
    # z_y − m from a gather of one value per example (of the raw logit: a label on a masked
    # class still scores its own logit, as in optax)
    zy_s = take_at_label(z, y).astype(cdt) - m
    if eps:
        share = _smoothing_share(eps, ok, count, n_classes, labels.shape, cdt)
        w = _per_class(jnp.ones((n_classes,), cdt) if weight is None else weight, z.ndim)
        keep = w != 0 if mask is None else (w != 0) & mask
        # Σ_c w_c (z_c − m) and W = Σ_c w_c over the live classes, where a zero weight or a
        # masked class adds 0 even at -inf
        wz_s = jnp.sum(sharded_where(keep, w * xs, 0), -1)
        wtot = jnp.sum(sharded_where(keep, w, 0), -1)
        target = integer_target(omega, zy_s, eps, share, wtot, wz_s)
    else:
        target = integer_target(omega, zy_s, eps)
    loss, coef = token_loss(TokenStats(m, log_s, target.tsum, target.tz, omega), opts.z_loss)
    loss, coef = poison(bad, loss, coef)
    res = _IntegerResiduals(
        # Saving e instead of z spares the backward pass a second exp per logit; half-precision
        # logits save z (half the bytes of a float32 e) and recompute e.
        e if z.dtype == e.dtype else z,
        None if z.dtype == e.dtype else m,
        labels,
        weight,
        mask,
        _softmax_scale(coef, s),
        target.a,
        target.b,
    )
    return loss, res


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _xent_integer(opts, z, labels, weight, ok, mask, count):
    return _integer_forward(opts, z, labels, weight, ok, mask, count)[0]


def _xent_integer_fwd(opts, z, labels, weight, ok, mask, count):
    # ok and count live on in a, b and r
    return _integer_forward(opts, z, labels, weight, ok, mask, count)


def _xent_integer_bwd(opts, res: _IntegerResiduals, g):
    # loss_n = Σ_c t_nc (lse_n − z_nc) + ζ ω_n lse_n² with t_nc = a_n [c = y_n] + b_n w_c, so
    # with p = softmax(z) = e / s:
    #   ∂loss_n/∂z_nc = (Σ_c t_nc + 2 ζ ω_n lse_n) p_nc − t_nc = r_n e_nc − a_n [c = y_n] − b_n w_c
    cdt = compute_dtype(res.e_or_z.dtype)
    g = g.astype(cdt)
    if res.m is None:
        e = res.e_or_z
    else:
        xs = res.e_or_z.astype(cdt) - res.m[..., None]
        e = jnp.exp(xs if res.mask is None else sharded_where(res.mask, xs, -jnp.inf))
    dz = (g * res.r)[..., None] * e
    if res.b is not None:
        # the uniform part b · w_c on unmasked classes
        u = (g * res.b)[..., None]
        u = u if res.weight is None else u * _per_class(res.weight, u.ndim)
        dz = dz - (u if res.mask is None else sharded_where(res.mask, u, 0))
    # The one-hot part a · [c = y]. An index past the end (ignored or out-of-range labels, whose
    # rows are 0 or NaN already) never matches: it is dropped.
    n_classes, labels = dz.shape[-1], res.labels
    y = sharded_where((labels < 0) | (labels >= n_classes), n_classes, labels)
    if res.m is None and explicit_sharding(dz) is None:
        # Same precision: a scatter-add of one value per example into dz, in place, rather
        # than an iota comparison over every logit.
        rows = dz.reshape(-1, n_classes)
        a = -(g * res.a).reshape(-1)
        rows = rows.at[jnp.arange(rows.shape[0]), y.reshape(-1)].add(a, mode="drop")
        return rows.reshape(dz.shape), None, None, None, None, None
    # Half precision: dz is float32 and the result is not, so a scatter would need the float32
    # dz as a buffer of its own (N·V·4 bytes, and one more pass over it). The comparison with
    # the class index fuses into the one elementwise pass that recomputes e, subtracts the
    # one-hot part in float32 and rounds once to z's dtype.
    # (On an Explicit mesh the same comparison serves every precision: it is local to each
    # device, where the scatter's indices would have to be placed by hand.)
    iota = lax.broadcasted_iota(
        jnp.int32, dz.shape, dz.ndim - 1, out_sharding=explicit_sharding(dz)
    )
    hit = iota == y[..., None].astype(jnp.int32)
    dz = dz - sharded_where(hit, (g * res.a)[..., None], 0)
    return dz.astype(res.e_or_z.dtype), None, None, None, None, None


_xent_integer.defvjp(_xent_integer_fwd, _xent_integer_bwd)


# --------------------------------------------------------------------------------------------
# Probability labels: one fused rule, differentiable in the labels too
# --------------------------------------------------------------------------------------------


class _ProbabilityResiduals(NamedTuple):
    """What the probability-label rule saves: the two inputs and per-example numbers."""

    z: jax.Array  # the logits: the labels' gradient needs z itself, and e is recomputed
    labels: jax.Array  # [..., C]
    weight: jax.Array | None  # [C]
    ok: jax.Array | None  # [...]
    mask: jax.Array | None  # [..., C or 1]
    count: jax.Array | None  # [...]: live classes (with a class mask)
    m: jax.Array  # the shift
    log_s: jax.Array  # log Σ_c exp(z_c − m)
    r: jax.Array  # coef / s: the scale of e in the gradient


def _probability_target(eps: float, labels, weight, ok, mask, count, cdt):
    """``t_c = w_c ((1 − ε) q_c + ε / C_n)`` on unmasked classes of taking-part examples."""
    t = labels.astype(cdt)
    if eps:
        share = _smoothing_share(eps, None, count, labels.shape[-1], labels.shape[:-1], cdt)
        t = (1 - eps) * t + share[..., None]  # mix with the uniform distribution
    if weight is not None:
        t = t * _per_class(weight, t.ndim)
    if mask is not None:
        t = sharded_where(mask, t, 0)
    if ok is not None:
        t = sharded_where(ok[..., None], t, 0)
    return t


def _probability_forward(opts: XentOptions, z, labels, weight, ok, mask, count):
    """Per-example loss of probability labels and the rule's residuals."""
    cdt = compute_dtype(z.dtype)
    xs, _, m, s = _shift(z, mask)
    log_s = jnp.log(s)  # log 0 = -inf for a row with no finite unmasked logit
    t = _probability_target(opts.label_smoothing, labels, weight, ok, mask, count, cdt)
    omega = jnp.ones_like(m) if ok is None else ok.astype(cdt)
    # Σ_c t_c (z_c − m), with 0 · (−inf) taken as 0 (a -inf logit with no target mass)
    stats = TokenStats(m, log_s, jnp.sum(t, -1), jnp.sum(xmul(t, xs), -1), omega)
    loss, coef = token_loss(stats, opts.z_loss)
    res = _ProbabilityResiduals(
        z, labels, weight, ok, mask, count, m, log_s, _softmax_scale(coef, s)
    )
    return loss, res


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _xent_probability(opts, z, labels, weight, ok, mask, count):
    return _probability_forward(opts, z, labels, weight, ok, mask, count)[0]


def _xent_probability_fwd(opts, z, labels, weight, ok, mask, count):
    return _probability_forward(opts, z, labels, weight, ok, mask, count)


def _xent_probability_bwd(opts, res: _ProbabilityResiduals, g):
    # loss_n = Σ_c t_nc (lse_n − z_nc) + ζ ω_n lse_n², so with p = softmax(z) = e / s:
    #   ∂loss_n/∂z_nc = (Σ_c t_nc + 2 ζ ω_n lse_n) p_nc − t_nc = r_n e_nc − t_nc
    #   ∂loss_n/∂q_nc = (1 − ε) w_c ok_n (lse_n − z_nc)  for the labels q (0 if masked)
    cdt = compute_dtype(res.z.dtype)
    g = g.astype(cdt)
    xs = res.z.astype(cdt) - res.m[..., None]
    # masked classes: e = 0 (xs itself stays finite: it also feeds the labels' gradient, whose
    # own derivatives must not meet an infinity)
    e = jnp.exp(xs if res.mask is None else sharded_where(res.mask, xs, -jnp.inf))
    t = _probability_target(
        opts.label_smoothing, res.labels, res.weight, res.ok, res.mask, res.count, cdt
    )
    dz = (g * res.r)[..., None] * e - g[..., None] * t
    live = jnp.ones_like(dz, dtype=bool) if res.mask is None else res.mask
    if res.ok is not None:
        live = live & res.ok[..., None]
    scale = ((1 - opts.label_smoothing) * g)[..., None]
    scale = scale if res.weight is None else scale * _per_class(res.weight, scale.ndim)
    # lse − z = log s − (z − m)
    dq = sharded_where(live, scale * (res.log_s[..., None] - xs), 0).astype(res.labels.dtype)
    return dz.astype(res.z.dtype), dq, None, None, None, None


_xent_probability.defvjp(_xent_probability_fwd, _xent_probability_bwd)


# --------------------------------------------------------------------------------------------
# Integer labels on the Mosaic GPU kernels: the same engine, statistics from the kernel
# --------------------------------------------------------------------------------------------


def _kernel_problem(inp: _Inputs, axis: Axis, fn: str):
    """Why the Mosaic GPU kernels cannot take this call (``None`` if they can)."""

    def problem():
        if not jnp.issubdtype(inp.labels.dtype, jnp.integer):
            return "probability labels are not covered by the kernels (integer labels are)"
        if inp.weight is not None:
            return "class weights are not covered by the kernels"
        if inp.mask is not None:
            return "per-class where masks are not covered by the kernels"
        if not (
            isinstance(axis, (int, np.integer))
            and int(axis) % inp.logits.ndim == (inp.logits.ndim - 1)
        ):
            return f"axis={axis!r} (the kernels take the last axis only)"
        if explicit_sharding(inp.logits) is not None:
            return "logits on an Explicit mesh are not covered by the kernels"
        return mosaic_gpu.environment_problem() or mosaic_gpu.rows_problem(
            inp.logits.shape, inp.logits.dtype
        )

    return problem


def _mosaic_forward(opts: XentOptions, z, labels, ok):
    """As :func:`_integer_forward` without weights or class masks, statistics from the kernel."""
    cdt = compute_dtype(z.dtype)
    n_classes, eps = z.shape[-1], opts.label_smoothing
    bad, y = _safe_labels(labels, n_classes, ok)
    m, s, zy, zs = mosaic_gpu.cross_entropy_forward(z, y, bool(eps))
    log_s = jnp.log(s)  # log 0 = -inf for a row with no finite logit
    omega = jnp.ones_like(m) if ok is None else sharded_where(ok, jnp.ones_like(m), 0)
    zy_s = zy - m
    if eps:
        share = _smoothing_share(eps, ok, None, n_classes, labels.shape, cdt)
        # with unit weights and no mask: W = C and Σ_c w_c (z_c − m) = Σ_c (z_c − m)
        target = integer_target(omega, zy_s, eps, share, jnp.asarray(n_classes, cdt), zs)
    else:
        target = integer_target(omega, zy_s, eps)
    loss, coef = token_loss(TokenStats(m, log_s, target.tsum, target.tz, omega), opts.z_loss)
    loss, coef = poison(bad, loss, coef)
    # the one-hot index of the backward pass: past the end (never matched) if out of range
    y_drop = sharded_where((labels < 0) | (labels >= n_classes), n_classes, labels)
    b = jnp.zeros_like(m) if target.b is None else target.b
    return loss, (z, y_drop, m, _softmax_scale(coef, s), target.a, b)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _xent_integer_mosaic(opts, z, labels, ok):
    return _mosaic_forward(opts, z, labels, ok)[0]


def _xent_integer_mosaic_fwd(opts, z, labels, ok):
    return _mosaic_forward(opts, z, labels, ok)


def _xent_integer_mosaic_bwd(opts, res, g):
    # ∂loss_n/∂z_nc = r_n e_nc − b_n − a_n [c = y_n], as in _xent_integer_bwd (unit weights, no
    # mask), each term scaled by g and formed in float32 inside the kernel
    z, y, m, r, a, b = res
    g = g.astype(r.dtype)
    dz = mosaic_gpu.cross_entropy_backward(z, y, m, g * r, g * a, g * b)
    return dz, None, None


_xent_integer_mosaic.defvjp(_xent_integer_mosaic_fwd, _xent_integer_mosaic_bwd)


def _ce_per_example(
    inp: _Inputs,
    opts: XentOptions,
    fn: str = "cross_entropy",
    implementation: str | None = None,
    axis: Axis = -1,
) -> jax.Array:
    if choose(fn, implementation, _kernel_problem(inp, axis, fn)) == "mosaic_gpu":
        return _xent_integer_mosaic(opts, inp.logits, inp.labels, inp.ok)
    rule = _xent_integer if jnp.issubdtype(inp.labels.dtype, jnp.integer) else _xent_probability
    return rule(opts, inp.logits, inp.labels, inp.weight, inp.ok, inp.mask, inp.count)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: Axis = -1,
    weight: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
    where: ArrayLike | None = None,
    implementation: str | None = None,
) -> jax.Array:
    r"""Softmax cross-entropy with PyTorch's options, a z-loss and masks, in one fused rule.

    With :math:`\ell_n = \mathrm{logsumexp}(z_n)` and a target row :math:`t_n`, the loss of
    example :math:`n` is

    .. math::
        L_n = \sum_c t_{nc}\,(\ell_n - z_{nc}) + \zeta\,\omega_n\,\ell_n^2 .

    Integer labels :math:`y_n` (class weights :math:`w`, ones by default, smoothing
    :math:`\varepsilon`, :math:`C` classes):

    .. math::
        t_{nc} = (1-\varepsilon)\,w_{y_n}[c = y_n] + \tfrac{\varepsilon}{C}\,w_c,
        \qquad \omega_n = w_{y_n}.

    Probability labels :math:`q_n`:

    .. math::
        t_{nc} = w_c\left((1-\varepsilon)\,q_{nc} + \tfrac{\varepsilon}{C}\right),
        \qquad \omega_n = 1.

    ``"mean"`` is :math:`\sum_n L_n / \sum_n \omega_n` over the examples that take part, which
    is PyTorch's weighted mean for integer labels (smoothing does not change the denominator)
    and its plain mean over examples for probability labels. The gradient is the closed form

    .. math::
        \frac{\partial L_n}{\partial z_{nc}} =
        \Big(\sum_{c'} t_{nc'} + 2\zeta\,\omega_n\,\ell_n\Big)\,\mathrm{softmax}(z_n)_c - t_{nc},

    computed from the saved logits and per-example statistics; probability labels get
    :math:`\partial L_n / \partial q_{nc} = (1-\varepsilon)\,w_c\,(\ell_n - z_{nc})`.

    Args:
      logits: unnormalised scores ``[..., classes]`` (classes along ``axis``), floating point.
      labels: either integer class indices of ``logits``' shape without ``axis``, e.g.
        ``[batch]`` for ``[batch, classes]`` logits, or floating-point class probabilities of
        ``logits``' shape, ``[batch, classes]`` (PyTorch dispatches the same way).
      axis: the class axis, or a tuple of axes flattened (in the order given) into one class
        axis; integer labels are then flat indices into that slice, as in optax.
      weight: optional per-class weights ``[classes]``; treated as constants (no gradient).
      ignore_index: an integer label value whose examples contribute nothing, as in PyTorch
        (which defaults to -100; here the default ``None`` ignores nothing). Integer labels
        only.
      label_smoothing: :math:`\varepsilon \in [0, 1]`, mass moved to the uniform distribution.
      z_loss: :math:`\zeta \ge 0`, weight of the auxiliary :math:`\ell_n^2` term (PaLM).
      reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
      where: optional boolean mask. Of ``logits``' rank minus the number of class axes (e.g.
        ``[batch]``): masks examples. Of ``logits``' rank and broadcastable to it (e.g.
        ``[batch, classes]``): masks classes, which leave the softmax and get no smoothing mass
        (:math:`C` becomes the number of unmasked classes); an example with every class masked
        is masked. Masked examples contribute nothing to the loss, the gradient or the mean.
      implementation: ``None`` (default: ``"xla"``), ``"xla"`` or ``"mosaic_gpu"``: the Pallas
        kernels for integer labels over the last axis (with ``ignore_index``,
        ``label_smoothing``, ``z_loss``, per-example ``where``; not class ``weight``, per-class
        ``where``, tuple axes or probability labels), which raise ``ValueError`` saying why
        where they cannot run. See :func:`jsoftmax.use_implementation`.

    Returns:
      A scalar for ``"mean"`` and ``"sum"``; the per-example losses of ``logits``' shape
      without ``axis`` for ``"none"``. float32 for float16/bfloat16/float32 logits, float64 for
      float64 logits.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
      >>> print(jsoftmax.cross_entropy(logits, jnp.array([0, 1])).round(4))
      1.2056
      >>> print(jsoftmax.cross_entropy(logits, jnp.array([0, 1]), reduction="none").round(4))
      [0.2413 2.1698]
      >>> w = jnp.array([1.0, 3.0, 1.0])
      >>> loss = jsoftmax.cross_entropy(logits, jnp.array([0, 1]), weight=w, label_smoothing=0.1)
      >>> print(loss.round(4))
      1.6736

    Notes:
      * A ``-inf`` logit on a class with zero target mass has probability 0 and a zero
        gradient: the loss stays finite. A ``-inf`` logit on the labelled class gives ``+inf``
        (not NaN); with ``label_smoothing > 0`` every unmasked class has target mass, so any
        unmasked ``-inf`` logit gives ``+inf`` (as in PyTorch; mask such classes with
        ``where``).
      * A ``+inf`` or ``NaN`` logit, or a row with every logit ``-inf``, gives a NaN loss for
        that example only.
      * Out-of-range integer labels (other than ``ignore_index``) raise ``ValueError`` when
        ``labels`` is concrete; under ``jit`` they give a NaN loss and a NaN gradient row.
      * If no example contributes (every one ignored or masked, or of class weight 0 with no
        smoothing mass), ``"mean"`` returns 0 with zero gradients; PyTorch returns NaN there.
        If the weights :math:`\omega_n` of the examples that do contribute sum to 0 (negative
        class weights, or zero-weight labels with smoothing), ``"mean"`` divides by 0 and is
        ``±inf`` or NaN, as in PyTorch. PyTorch ignores ``ignore_index`` for probability
        labels; here it raises ``ValueError``.
      * Integer labels of any integer dtype (``int8`` … ``int64``, ``uint8`` …) are compared
        in ``int32`` (``int64`` for 64-bit labels), never in their own dtype: ``uint8`` labels
        with 300 classes are valid.
      * A label on a class masked out by ``where`` still scores its own logit against the
        masked normaliser (as optax does).
      * float16/bfloat16 logits are computed in float32; the loss is float32 and the logits'
        gradient has the logits' dtype.
      * ``label_smoothing`` and ``z_loss`` are static, finite Python numbers (validated at
        trace time).

    See also:
      :func:`nll_loss`, :func:`softmax_cross_entropy_with_integer_labels`,
      :func:`softmax_cross_entropy`, :func:`jsoftmax.logsumexp`.
    """
    fn = "cross_entropy"
    opts = XentOptions(
        check_real(label_smoothing, "label_smoothing", fn, 0.0, 1.0),
        check_real(z_loss, "z_loss", fn, 0.0),
    )
    check_reduction(reduction, fn)
    inp = _prepare(logits, labels, axis, weight, ignore_index, where, fn)
    loss = _ce_per_example(inp, opts, fn, implementation, axis)
    return reduce_token_losses(loss, _example_weight(inp, loss.dtype), reduction)[0]


def nll_loss(
    log_probs: ArrayLike,
    labels: ArrayLike,
    *,
    axis: Axis = -1,
    weight: ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> jax.Array:
    r"""Negative log-likelihood of integer labels under given log-probabilities (PyTorch's).

    .. math::
        L_n = -\,w_{y_n} \log p_{n y_n}, \qquad
        \mathrm{mean} = \frac{\sum_n L_n}{\sum_n w_{y_n}}

    over the examples whose label is not ``ignore_index``. Nothing is normalised:
    ``nll_loss(log_softmax(z), y)`` equals ``cross_entropy(z, y)`` (which is faster and more
    accurate); the gradient is plain autodiff (:math:`-w_{y_n}` at the label, 0 elsewhere).

    Args:
      log_probs: log-probabilities ``[batch, classes]`` (classes along ``axis``).
      labels: integer class indices ``[batch]`` (``log_probs``' shape without ``axis``).
      axis: the class axis, or a tuple of axes flattened in the order given.
      weight: optional per-class weights ``[classes]``; constants (no gradient).
      ignore_index: an integer label value whose examples contribute nothing.
      reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Returns:
      A scalar for ``"mean"``/``"sum"``, per-example losses ``[batch]`` for ``"none"``, in the
      compute dtype (float32 for half-precision inputs).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> log_probs = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]))
      >>> print(jsoftmax.nll_loss(log_probs, jnp.array([0, 2]), reduction="none").round(4))
      [0.3567 0.6931]
      >>> print(jsoftmax.nll_loss(log_probs, jnp.array([0, -100]), ignore_index=-100).round(4))
      0.3567

    Notes:
      * A ``-inf`` log-probability at the label gives ``+inf``; elsewhere it is not read.
      * Out-of-range labels raise ``ValueError`` when concrete; under ``jit`` they give a NaN
        loss (and a NaN gradient entry).
      * If every example is ignored, ``"mean"`` returns 0 (PyTorch returns NaN).

    See also:
      :func:`cross_entropy`.
    """
    fn = "nll_loss"
    check_reduction(reduction, fn)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{fn}: labels must be integer class indices; got dtype {labels.dtype}")
    inp = _prepare(log_probs, labels, axis, weight, ignore_index, None, fn, name="log_probs")
    lp = inp.logits.astype(compute_dtype(inp.logits.dtype))
    bad, y = _safe_labels(inp.labels, lp.shape[-1], inp.ok)
    omega = _example_weight(inp, lp.dtype)
    # an out-of-range label multiplies by NaN, so both the loss and its gradient are NaN
    (scale,) = poison(bad, omega)
    loss = -xmul(scale, take_at_label(lp, y))
    return reduce_token_losses(loss, omega, reduction)[0]


def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    *,
    implementation: str | None = None,
) -> jax.Array:
    r"""Drop-in for ``optax.softmax_cross_entropy`` on the fused jsoftmax rule.

    .. math::
        L_n = -\sum_c q_{nc} \log \mathrm{softmax}(z_n)_c
            = \sum_c q_{nc}\,(\mathrm{logsumexp}(z_n) - z_{nc})

    Same signature and values as optax 0.2.8 (``axis`` and ``where`` positional or keyword);
    the gradient is the closed form :math:`(\sum_c q_{nc})\,\mathrm{softmax}(z_n) - q_n` for the
    logits and :math:`\mathrm{logsumexp}(z_n) - z_n` for the labels.

    Args:
      logits: unnormalised scores ``[batch, classes]``.
      labels: class probabilities broadcastable to ``logits`` (e.g. one-hot ``[batch,
        classes]``); non-floating labels are cast to ``logits``' dtype.
      axis: the class axis or axes (``None``: all axes).
      where: boolean mask, per example (``[batch]``) or per class (``logits``' rank); masked
        classes leave the softmax and the sum, masked examples give 0.
      implementation: ``None`` (default: ``"xla"``) or ``"xla"``; ``"mosaic_gpu"`` raises
        ``ValueError`` (the kernels take integer labels only).

    Returns:
      Per-example losses ``[batch]`` in ``logits``' dtype (computed in float32 for half
      precision), like optax.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
      >>> print(jsoftmax.softmax_cross_entropy(logits, labels).round(4))
      [0.2761 2.9518]

    Notes:
      * Where a label is exactly 0 and its logit is ``-inf`` the term is 0 (optax gives NaN,
        like ``optax.safe_softmax_cross_entropy`` does not).
      * A ``+inf`` or ``NaN`` logit makes that example's loss NaN.

    See also:
      :func:`cross_entropy`, :func:`softmax_cross_entropy_with_integer_labels`.
    """
    fn = "softmax_cross_entropy"
    logits = as_float_array(logits, "logits", fn)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.floating):
        labels = labels.astype(logits.dtype)  # optax multiplies, so one-hot ints/bools work
    if labels.shape != logits.shape:
        if not _broadcasts(labels.shape, logits.shape):
            raise ValueError(
                f"{fn}: labels of shape {labels.shape} must be broadcastable to logits of "
                f"shape {logits.shape}"
            )
        labels = jnp.broadcast_to(labels, logits.shape)
    inp = _prepare(logits, labels, axis, None, None, where, fn)
    return _ce_per_example(inp, XentOptions(), fn, implementation, axis).astype(logits.dtype)


def softmax_cross_entropy_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    where: ArrayLike | None = None,
    *,
    implementation: str | None = None,
) -> jax.Array:
    r"""Drop-in for ``optax.softmax_cross_entropy_with_integer_labels`` on the fused rule.

    .. math::
        L_n = -\log \mathrm{softmax}(z_n)_{y_n} = \mathrm{logsumexp}(z_n) - z_{n y_n}

    Same signature and values as optax 0.2.8 (``axis`` and ``where`` positional or keyword);
    the gradient is the closed form :math:`\mathrm{softmax}(z_n) - \mathrm{onehot}(y_n)`.

    Args:
      logits: unnormalised scores ``[batch, classes]``.
      labels: integer class indices ``[batch]`` in ``[0, classes)``.
      axis: the class axis, or a tuple of axes; a label is then a flat row-major index into
        the slice ``logits[axis]`` taken in the order given.
      where: boolean mask, per example (``[batch]``) or per class (``logits``' rank).
      implementation: ``None`` (default: ``"xla"``), ``"xla"`` or ``"mosaic_gpu"`` (as in
        :func:`cross_entropy`).

    Returns:
      Per-example losses ``[batch]`` in ``logits``' dtype (computed in float32 for half
      precision), like optax.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> loss = jsoftmax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1]))
      >>> print(loss.round(4))
      [0.2761 2.9518]

    Notes:
      * Out-of-range labels raise ``ValueError`` when concrete; under ``jit`` they give NaN
        (optax gives NaN above the range and silently wraps negative labels).
      * ``-inf`` logits off the label are fine; a ``-inf`` logit at the label gives ``+inf``.

    See also:
      :func:`cross_entropy`, :func:`softmax_cross_entropy`.
    """
    fn = "softmax_cross_entropy_with_integer_labels"
    if axis is None:
        raise ValueError(f"{fn}: axis must be an int or a tuple of ints; got None")
    logits = as_float_array(logits, "logits", fn)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{fn}: labels must be integer class indices; got dtype {labels.dtype}")
    inp = _prepare(logits, labels, axis, None, None, where, fn)
    return _ce_per_example(inp, XentOptions(), fn, implementation, axis).astype(logits.dtype)
