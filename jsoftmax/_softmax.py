"""softmax, log_softmax and logsumexp with analytic ``jax.custom_vjp`` rules.

Each function is split the way the JAX custom-derivatives tutorial splits them: a primal, a
``_fwd`` that returns ``(out, residuals)`` and saves the least the rule needs, and a ``_bwd`` that
applies the analytic Jacobian-vector product written above it in a comment.

The numerics shared by all three (and by the dense cross-entropies) live in
:func:`max_shifted`: masked entries become ``-inf`` and the slice maximum is subtracted with
its gradient stopped, so ``exp`` cannot overflow. What each function makes of a slice with no
finite entry is in its Notes: an unmasked softmax or log_softmax of it is NaN (as in
``jax.nn``: the plain chain, fastest on XLA), a masked one 0 or ``-inf``, and its logsumexp
``-inf`` with a zero gradient (its shift starts at the lowest finite value).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jsoftmax._checks import Axis, as_float_array, as_mask, canonical_axes, compute_dtype
from jsoftmax._dispatch import choose
from jsoftmax._impl import mosaic_gpu
from jsoftmax._mesh import sharded_where

__all__ = ["log_softmax", "logsumexp", "softmax"]


def _prepare(x: ArrayLike, axis: Axis, where: ArrayLike | None, fn: str):
    x = as_float_array(x, "x", fn)
    axes = canonical_axes(axis, x.ndim, fn)
    mask = as_mask(where, x.shape, fn)
    return x, axes, mask


def _kernel_problem(x: jax.Array, axes: tuple[int, ...], where):
    """Why the Mosaic GPU kernels cannot take this call (``None`` if they can)."""

    def problem():
        if where is not None:
            return "where masks are not covered by the kernels"
        if axes != (x.ndim - 1,):
            return f"axis {axes} (the kernels normalise over the last axis only)"
        return mosaic_gpu.environment_problem() or mosaic_gpu.rows_problem(x.shape, x.dtype)

    return problem


def max_shifted(
    x: jax.Array, axes: tuple[int, ...], where: jax.Array | None = None, *, finite: bool = False
):
    """``(x − m, m)``: ``x`` less its maximum ``m`` over ``axes``, masked entries set to ``-inf``.

    Every function that normalises over classes shifts with this (softmax, log_softmax,
    logsumexp and the dense cross-entropies); the chunked and sharded losses keep the same
    convention in their running and ``pmax``-combined maxima. ``x`` is already in the compute
    dtype. The maximum carries no gradient: every function built from the shifted values is
    invariant to the shift, so its derivative is exact.

    ``finite=False`` is the plain ``exp(x − max(x))`` chain: a slice with no finite entry shifts
    by ``-inf`` and gives NaN (softmax and log_softmax document this, as ``jax.nn`` does).
    ``finite=True`` starts the maximum at the lowest finite value instead, so such a slice
    shifts by a finite number, its ``exp`` terms are exact zeros and its log-sum ``-inf`` (what
    logsumexp and the losses need: a row with no target mass then scores 0, not NaN).

    What XLA makes of it, measured on CPU (jax 0.10.2, float32): at [4096, 1024] a softmax is
    one fused kernel with either initial value; at [256, 32768] log_softmax compiles to 4
    kernels with the plain chain (as ``jax.nn``'s) but 5 with ``finite=True``, about 15 %
    slower (16.5 ms against 14.3 ms), while logsumexp is 4 kernels and the same time either
    way. A select on the maximum (``where(isfinite(m), m, 0)``) is worse than both, so fixes for
    non-finite slices go after the reductions, on per-slice values.
    """
    if where is not None:
        # masked entries take part as -inf: probability 0, left out of every sum
        x = sharded_where(where, x, -jnp.inf)
    if finite:
        start = jnp.finfo(x.dtype).min
    else:
        # no initial value unless a slice is empty: an initial -inf is a constant inf, which
        # jax.debug_infs reports as an error when the function runs op by op
        start = -jnp.inf if any(x.shape[a] == 0 for a in axes) else None
    m = lax.stop_gradient(jnp.max(x, axes, keepdims=True, initial=start))
    return x - m, m  # subtract the max so exp cannot overflow


# --------------------------------------------------------------------------------------------
# softmax
# --------------------------------------------------------------------------------------------


def softmax(
    x: ArrayLike,
    axis: Axis = -1,
    *,
    where: ArrayLike | None = None,
    implementation: str | None = None,
) -> jax.Array:
    r"""Softmax over ``axis``: positive outputs that sum to one.

    .. math::
        \mathrm{softmax}(x)_i = \frac{\exp(x_i - m)}{\sum_j \exp(x_j - m)},
        \qquad m = \max_j x_j

    The gradient is the analytic vector-Jacobian product
    :math:`\bar x = s \odot (g - \langle g, s\rangle)` with :math:`s = \mathrm{softmax}(x)`,
    from the Jacobian :math:`\partial s_i / \partial x_j = s_i(\delta_{ij} - s_j)`. The rule
    saves only the output.

    Args:
      x: scores, any shape ``[..., n, ...]``, floating point.
      axis: the axis, or tuple of axes, to normalise over (``None``: all axes).
      where: optional boolean mask broadcastable to ``x``; ``False`` entries are left out.
      implementation: ``None`` (default: ``"xla"``), ``"xla"`` or ``"mosaic_gpu"`` (the
        Pallas kernel: last axis, no ``where``, float16/bfloat16/float32, classes a multiple
        of 128, rows longer than shared memory holds split into pieces and read twice;
        raises ``ValueError`` saying why where it cannot run). See
        :func:`jsoftmax.use_implementation`.

    Returns:
      An array of ``x``'s shape and dtype whose slices along ``axis`` sum to one.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> print(jsoftmax.softmax(jnp.array([1.0, 2.0, 3.0])))
      [0.09   0.2447 0.6652]
      >>> print(jsoftmax.softmax(jnp.array([1e4, 1e4 - 1.0])))
      [0.7311 0.2689]

    Notes:
      * ``-inf`` entries get probability 0 and a zero gradient.
      * Masked entries are 0 with a zero gradient; a fully masked slice is all 0 with a zero
        gradient.
      * An unmasked slice whose entries are all ``-inf`` is ``NaN``, as in ``jax.nn``: there is
        no distribution to return. Mask such slices (``where=x > -jnp.inf``) to get zeros.
        Detecting them without a mask would cost an extra pass over ``x`` on every call.
      * A ``+inf`` or ``NaN`` entry makes its own slice ``NaN``; other slices are unaffected.
      * float16/bfloat16 inputs are computed in float32 and returned in the input dtype.
      * Integer and boolean inputs raise ``TypeError`` rather than being silently promoted.

    See also:
      :func:`log_softmax`, :func:`jsoftmax.softmax_jacobian`, :func:`jsoftmax.fwd.softmax`.
    """
    x, axes, mask = _prepare(x, axis, where, "softmax")
    if choose("softmax", implementation, _kernel_problem(x, axes, mask)) == "mosaic_gpu":
        return _softmax_mosaic(x, implementation)
    return _softmax(x, mask, axes)


def _softmax_impl(x: jax.Array, where: jax.Array | None, axes: tuple[int, ...]) -> jax.Array:
    z, _ = max_shifted(x.astype(compute_dtype(x.dtype)), axes, where)
    e = jnp.exp(z)  # every entry ≤ 1: the max entry gives exactly 1, so the sum is ≥ 1
    y = e / jnp.sum(e, axes, keepdims=True)
    if where is not None:
        # masked entries (and so a fully masked slice, NaN above) are exactly 0
        y = sharded_where(where, y, jnp.zeros((), y.dtype))
    return y.astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _softmax(x, where, axes):
    return _softmax_impl(x, where, axes)


def _softmax_fwd(x, where, axes):
    y = _softmax_impl(x, where, axes)
    return y, y  # the output is the only residual


def _softmax_bwd(axes, y, g):
    # x̄ = s ⊙ (g − ⟨g, s⟩): the VJP of diag(s) − s sᵀ. Masked and -inf entries have s = 0,
    # so their gradient is exactly 0.
    cdt = compute_dtype(y.dtype)
    s, g = y.astype(cdt), g.astype(cdt)
    dot = jnp.sum(g * s, axes, keepdims=True)
    return (s * (g - dot)).astype(y.dtype), None


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _softmax_mosaic(x, implementation):
    return mosaic_gpu.softmax_forward(x)


def _softmax_mosaic_fwd(x, implementation):
    y = mosaic_gpu.softmax_forward(x)
    return y, y  # the output is the only residual


def _softmax_mosaic_bwd(implementation, y, g):
    # x̄ = s ⊙ (g − ⟨g, s⟩), as in _softmax_bwd; the kernel stages y and g (two buffers)
    problem = _kernel_problem(y, (y.ndim - 1,), None)
    if choose("softmax backward", implementation, problem) == "mosaic_gpu":
        return (mosaic_gpu.softmax_backward(y, g),)
    return (_softmax_bwd((y.ndim - 1,), y, g)[0],)


_softmax_mosaic.defvjp(_softmax_mosaic_fwd, _softmax_mosaic_bwd)


# --------------------------------------------------------------------------------------------
# log_softmax
# --------------------------------------------------------------------------------------------


def log_softmax(
    x: ArrayLike,
    axis: Axis = -1,
    *,
    where: ArrayLike | None = None,
    implementation: str | None = None,
) -> jax.Array:
    r"""Log of the softmax over ``axis``, computed without forming the softmax.

    .. math::
        \log\mathrm{softmax}(x)_i = (x_i - m) - \log \sum_j \exp(x_j - m),
        \qquad m = \max_j x_j

    The gradient is :math:`\bar x = g - s \sum_j g_j` with :math:`s = \exp(\text{output})`, the
    VJP of the Jacobian :math:`\delta_{ij} - s_j`. The rule saves only the output.

    Args:
      x: scores, any shape ``[..., n, ...]``, floating point.
      axis: the axis, or tuple of axes, to normalise over (``None``: all axes).
      where: optional boolean mask broadcastable to ``x``; ``False`` entries are left out.
      implementation: ``None`` (default: ``"xla"``), ``"xla"`` or ``"mosaic_gpu"`` (as in
        :func:`softmax`).

    Returns:
      An array of ``x``'s shape and dtype: log-probabilities along ``axis``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> print(jsoftmax.log_softmax(jnp.array([1.0, 2.0, 3.0])))
      [-2.4076 -1.4076 -0.4076]
      >>> print(jsoftmax.log_softmax(jnp.array([-1e4, 1e4])))
      [-20000.      0.]

    Notes:
      * Masked entries give ``-inf``; they are constants: their cotangent is ignored and their
        gradient is 0. A fully masked slice is all ``-inf`` with a zero gradient.
      * A ``-inf`` input gives ``-inf`` with its exact derivative: the gradient of entry ``i``
        is ``g_i − s_i Σg = g_i`` since ``s_i = 0``.
      * An unmasked slice whose entries are all ``-inf`` is ``NaN``, as in ``jax.nn``; mask it
        (``where=x > -jnp.inf``) to get ``-inf``.
      * A ``+inf`` or ``NaN`` entry makes its own slice ``NaN``; other slices are unaffected.
      * float16/bfloat16 inputs are computed in float32 and returned in the input dtype.
      * Integer and boolean inputs raise ``TypeError``.

    See also:
      :func:`softmax`, :func:`logsumexp`, :func:`jsoftmax.log_softmax_jacobian`.
    """
    x, axes, mask = _prepare(x, axis, where, "log_softmax")
    if choose("log_softmax", implementation, _kernel_problem(x, axes, mask)) == "mosaic_gpu":
        return _log_softmax_mosaic(x, implementation)
    return _log_softmax(x, mask, axes)


def _log_softmax_impl(x: jax.Array, where: jax.Array | None, axes: tuple[int, ...]) -> jax.Array:
    z, _ = max_shifted(x.astype(compute_dtype(x.dtype)), axes, where)
    # log Σ exp(x - m) ∈ [0, log n]: subtracting it from x - m cannot overflow
    out = z - jnp.log(jnp.sum(jnp.exp(z), axes, keepdims=True))
    if where is not None:
        # masked entries (and so a fully masked slice, NaN above) are exactly -inf
        out = sharded_where(where, out, jnp.array(-jnp.inf, out.dtype))
    return out.astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _log_softmax(x, where, axes):
    return _log_softmax_impl(x, where, axes)


def _log_softmax_fwd(x, where, axes):
    out = _log_softmax_impl(x, where, axes)
    # the output is the only array residual (s = exp(out)); the boolean mask, when given, is
    # kept so that masked entries can be told apart from -inf inputs
    return out, (out, where)


def _log_softmax_bwd(axes, res, g):
    # x̄ = g − s Σ g with s = exp(out): the VJP of I − 1 sᵀ. Masked entries are constants, so
    # their cotangent is dropped first; s = 0 there, which makes their gradient exactly 0. A
    # -inf input keeps its exact derivative g_i − 0 · Σg = g_i.
    out, where = res
    cdt = compute_dtype(out.dtype)
    g = g.astype(cdt)
    if where is not None:
        g = sharded_where(where, g, jnp.zeros((), cdt))
    dx = g - jnp.exp(out.astype(cdt)) * jnp.sum(g, axes, keepdims=True)
    return dx.astype(out.dtype), None


_log_softmax.defvjp(_log_softmax_fwd, _log_softmax_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _log_softmax_mosaic(x, implementation):
    return mosaic_gpu.log_softmax_forward(x)


def _log_softmax_mosaic_fwd(x, implementation):
    out = mosaic_gpu.log_softmax_forward(x)
    return out, out  # the output is the only residual (no mask on this path)


def _log_softmax_mosaic_bwd(implementation, out, g):
    # x̄ = g − s Σ g with s = exp(out), as in _log_softmax_bwd
    problem = _kernel_problem(out, (out.ndim - 1,), None)
    if choose("log_softmax backward", implementation, problem) == "mosaic_gpu":
        return (mosaic_gpu.log_softmax_backward(out, g),)
    return (_log_softmax_bwd((out.ndim - 1,), (out, None), g)[0],)


_log_softmax_mosaic.defvjp(_log_softmax_mosaic_fwd, _log_softmax_mosaic_bwd)


# --------------------------------------------------------------------------------------------
# logsumexp
# --------------------------------------------------------------------------------------------


def logsumexp(
    x: ArrayLike,
    axis: Axis = -1,
    *,
    where: ArrayLike | None = None,
    keepdims: bool = False,
    implementation: str | None = None,
) -> jax.Array:
    r"""Log of the sum of exponentials over ``axis``, computed without overflow.

    .. math::
        \mathrm{logsumexp}(x) = m + \log \sum_j \exp(x_j - m), \qquad m = \max_j x_j

    The gradient is :math:`\bar x = g\,\mathrm{softmax}(x)`, recomputed in the backward pass as
    :math:`\exp((x - m) - \log \sum_j \exp(x_j - m))` from the saved input and the two
    per-slice numbers, so it stays accurate to a few ulps even where :math:`|x|` is huge.

    Args:
      x: any shape ``[..., n, ...]``, floating point.
      axis: the axis, or tuple of axes, to reduce (``None``: all axes).
      where: optional boolean mask broadcastable to ``x``; ``False`` entries are left out.
      keepdims: keep the reduced axes with size 1.
      implementation: ``None`` (default: ``"xla"``), ``"xla"`` or ``"mosaic_gpu"`` (as in
        :func:`softmax`).

    Returns:
      ``x``'s shape without ``axis`` (or with size-1 axes if ``keepdims``), in ``x``'s dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> print(jsoftmax.logsumexp(jnp.array([1.0, 2.0, 3.0])))
      3.4076
      >>> print(jsoftmax.logsumexp(jnp.array([1e4, 1e4])))
      10000.693

    Notes:
      * ``-inf`` entries and masked entries are left out and get a zero gradient.
      * A fully masked (or all ``-inf``) slice gives ``-inf`` with a zero gradient.
      * A ``+inf`` entry gives ``+inf``; a ``NaN`` entry gives ``NaN``, for its own slice only.
      * float16/bfloat16 inputs are computed in float32 and returned in the input dtype.
      * Integer and boolean inputs raise ``TypeError``.

    See also:
      :func:`log_softmax`, :func:`softmax`.
    """
    x, axes, mask = _prepare(x, axis, where, "logsumexp")
    if not isinstance(keepdims, bool):
        raise TypeError(f"logsumexp: keepdims must be a bool; got {keepdims!r}")
    if choose("logsumexp", implementation, _kernel_problem(x, axes, mask)) == "mosaic_gpu":
        out = _logsumexp_mosaic(x)
    else:
        out = _logsumexp(x, mask, axes)
    return out if keepdims else jnp.squeeze(out, axes)


def _logsumexp_impl(x, where, axes):
    """``(m, log_s, xm)``: the shift, ``log Σ exp(x − m)`` and the masked input, per slice.

    The two numbers are kept apart for the backward pass: forming ``exp(x − lse)`` from their
    rounded sum would cost ``|lse|·eps`` of relative error in every gradient entry (``0.49989``
    instead of ``0.5`` for ``[1e4, 1e4]`` in float32), while ``exp((x − m) − log_s)`` rounds
    only ``x − m`` and ``log_s ∈ [0, log n]``.
    """
    if where is not None:
        # masked entries take part as -inf (kept in x's dtype: this is also the residual)
        x = sharded_where(where, x, jnp.array(-jnp.inf, x.dtype))
    xs, m = max_shifted(x.astype(compute_dtype(x.dtype)), axes, finite=True)
    # log 0 = -inf for a slice with no finite entry (its shift is finite, its exps exact 0s)
    log_s = jnp.log(jnp.sum(jnp.exp(xs), axes, keepdims=True))
    return m, log_s, x


def _lse(m, log_s):
    """``m + log_s``: adding the shift back after the log keeps the result exact for huge |x|.

    A ``+inf`` entry shifts by ``+inf`` and makes ``log_s`` NaN (inf − inf); its slice's
    logsumexp is ``+inf``, restored here by a select on the per-slice values (after the
    reductions, where it does not split the fused kernel).
    """
    # m > max finite is m == +inf without an inf constant (see max_shifted)
    return sharded_where(m > jnp.finfo(m.dtype).max, m, m + log_s)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _logsumexp(x, where, axes):
    m, log_s, _ = _logsumexp_impl(x, where, axes)
    return _lse(m, log_s).astype(x.dtype)


def _logsumexp_fwd(x, where, axes):
    m, log_s, xm = _logsumexp_impl(x, where, axes)
    # residuals: the (masked) input and, per slice, the shift and the log-sum, from which the
    # softmax is recomputed (two numbers per slice rather than their rounded sum)
    return _lse(m, log_s).astype(x.dtype), (xm, m, log_s)


def _logsumexp_bwd(axes, res, g):
    # x̄ = g · softmax(x) = g · exp((x − m) − log_s), never exp(x − lse) with a rounded lse.
    # A slice with no finite entry has log_s = -inf and every x − m = -inf; subtracting 0
    # instead keeps its gradient at exactly 0 rather than NaN from -inf − (-inf).
    xm, m, log_s = res
    # log_s < lowest finite is log_s == -inf without an inf constant (see max_shifted)
    log_s = sharded_where(log_s < jnp.finfo(log_s.dtype).min, jnp.zeros_like(log_s), log_s)
    dx = g.astype(m.dtype) * jnp.exp((xm.astype(m.dtype) - m) - log_s)
    return dx.astype(xm.dtype), None


_logsumexp.defvjp(_logsumexp_fwd, _logsumexp_bwd)


@jax.custom_vjp
def _logsumexp_mosaic(x):
    m, log_s = mosaic_gpu.logsumexp_forward(x)
    return _lse(m, log_s).astype(x.dtype)


def _logsumexp_mosaic_fwd(x):
    m, log_s = mosaic_gpu.logsumexp_forward(x)
    # the residuals of _logsumexp_fwd: the input and the two numbers per row
    return _lse(m, log_s).astype(x.dtype), (x, m, log_s)


def _logsumexp_mosaic_bwd(res, g):
    # x̄ = g · exp((x − m) − log_s), as in _logsumexp_bwd, with the same guard for a row with
    # no finite entry (log_s = -inf) applied per row before the kernel
    x, m, log_s = res
    log_s = jnp.where(log_s < jnp.finfo(log_s.dtype).min, jnp.zeros_like(log_s), log_s)
    return (mosaic_gpu.logsumexp_backward(x, m, log_s, g.astype(m.dtype)),)


_logsumexp_mosaic.defvjp(_logsumexp_mosaic_fwd, _logsumexp_mosaic_bwd)
