"""Forward-mode twins of every normaliser (softmax family and sparse family), on ``jax.custom_jvp``.

A ``custom_vjp`` function cannot itself be pushed through forward mode: ``jax.jvp``,
``jax.jacfwd``, ``jax.linearize`` and forward-over-forward derivatives of anything built from
:func:`jsoftmax.softmax` raise ``TypeError``. (Forward-over-reverse still works, because the
backward rule is ordinary JAX code: ``jax.hessian`` and jvp-of-grad Hessian-vector products of
the custom_vjp functions are fine.) These twins compute the same values with the same stable
numerics but carry the *JVP* form of the same analytic Jacobians; JAX transposes that linear
map for reverse mode, so one rule serves every mode and every composition.

Use them through the public namespace :mod:`jsoftmax.fwd`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jsoftmax._checks import Axis, compute_dtype
from jsoftmax._mesh import sharded_where
from jsoftmax._softmax import _log_softmax_impl, _logsumexp_impl, _lse, _prepare, _softmax_impl
from jsoftmax._sparse import (
    _check_method,
    _check_n_iter,
    _prepare_alpha,
    entmax15_twin,
    entmax_bisect_twin,
    sparsemax_twin,
)

__all__ = ["entmax", "entmax15", "log_softmax", "logsumexp", "softmax", "sparsemax"]


def softmax(x: ArrayLike, axis: Axis = -1, *, where: ArrayLike | None = None) -> jax.Array:
    r"""Softmax with a ``custom_jvp`` rule: same values as :func:`jsoftmax.softmax`, any AD mode.

    .. math::
        \dot s = s \odot (\dot x - \langle \dot x, s \rangle)

    Args:
      x: scores, any shape ``[..., n, ...]``, floating point.
      axis: the axis, or tuple of axes, to normalise over (``None``: all axes).
      where: optional boolean mask broadcastable to ``x``; ``False`` entries are left out.

    Returns:
      An array of ``x``'s shape and dtype whose slices along ``axis`` sum to one.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jsoftmax import fwd
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> print(jax.jacfwd(fwd.softmax)(x))
      [[ 0.0819 -0.022  -0.0599]
       [-0.022   0.1848 -0.1628]
       [-0.0599 -0.1628  0.2227]]

    Notes:
      Same inf/NaN/mask behaviour as :func:`jsoftmax.softmax`. Reverse mode comes from JAX
      transposing the JVP, so it saves what partial evaluation keeps (the output).
    """
    x, axes, mask = _prepare(x, axis, where, "fwd.softmax")
    return _softmax(x, mask, axes)


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _softmax(x, where, axes):
    return _softmax_impl(x, where, axes)


@_softmax.defjvp
def _softmax_jvp(axes, primals, tangents):
    x, where = primals
    dx = tangents[0]
    y = _softmax(x, where, axes)
    # ṡ = s ⊙ (ẋ − ⟨ẋ, s⟩): the JVP of diag(s) − s sᵀ; linear in ẋ, so JAX can transpose it
    s, dx = y.astype(compute_dtype(y.dtype)), dx.astype(compute_dtype(y.dtype))
    ds = s * (dx - jnp.sum(s * dx, axes, keepdims=True))
    return y, ds.astype(y.dtype)


def log_softmax(x: ArrayLike, axis: Axis = -1, *, where: ArrayLike | None = None) -> jax.Array:
    r"""Log-softmax with a ``custom_jvp`` rule: same values as :func:`jsoftmax.log_softmax`.

    .. math::
        \dot o = \dot x - \langle \dot x, s \rangle, \qquad s = \exp(o)

    Args:
      x: scores, any shape ``[..., n, ...]``, floating point.
      axis: the axis, or tuple of axes, to normalise over (``None``: all axes).
      where: optional boolean mask broadcastable to ``x``; ``False`` entries are left out.

    Returns:
      An array of ``x``'s shape and dtype: log-probabilities along ``axis``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jsoftmax import fwd
      >>> loss = lambda z: -fwd.log_softmax(z)[0]
      >>> print(jax.hessian(loss)(jnp.array([0.0, 0.0])))
      [[ 0.25 -0.25]
       [-0.25  0.25]]

    Notes:
      Same inf/NaN/mask behaviour as :func:`jsoftmax.log_softmax`: a masked output is a
      constant with a zero tangent.
    """
    x, axes, mask = _prepare(x, axis, where, "fwd.log_softmax")
    return _log_softmax(x, mask, axes)


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _log_softmax(x, where, axes):
    return _log_softmax_impl(x, where, axes)


@_log_softmax.defjvp
def _log_softmax_jvp(axes, primals, tangents):
    x, where = primals
    dx = tangents[0]
    out = _log_softmax(x, where, axes)
    cdt = compute_dtype(out.dtype)
    o, dx = out.astype(cdt), dx.astype(cdt)
    # ȯ = ẋ − ⟨ẋ, s⟩ with s = exp(o), the JVP of I − 1 sᵀ. A masked output is a constant: its
    # tangent is multiplied by 0 (a multiplication, not a select, so the map stays transposable).
    do = dx - jnp.sum(jnp.exp(o) * dx, axes, keepdims=True)
    if where is not None:
        do = do * where.astype(cdt)
    return out, do.astype(out.dtype)


def logsumexp(
    x: ArrayLike, axis: Axis = -1, *, where: ArrayLike | None = None, keepdims: bool = False
) -> jax.Array:
    r"""Logsumexp with a ``custom_jvp`` rule: same values as :func:`jsoftmax.logsumexp`.

    .. math::
        \dot\ell = \langle \dot x, \mathrm{softmax}(x) \rangle

    Args:
      x: any shape ``[..., n, ...]``, floating point.
      axis: the axis, or tuple of axes, to reduce (``None``: all axes).
      where: optional boolean mask broadcastable to ``x``; ``False`` entries are left out.
      keepdims: keep the reduced axes with size 1.

    Returns:
      ``x``'s shape without ``axis`` (or with size-1 axes if ``keepdims``), in ``x``'s dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jsoftmax import fwd
      >>> print(jax.hessian(fwd.logsumexp)(jnp.array([0.0, 0.0])))
      [[ 0.25 -0.25]
       [-0.25  0.25]]

    Notes:
      Same inf/NaN/mask behaviour as :func:`jsoftmax.logsumexp`.
    """
    x, axes, mask = _prepare(x, axis, where, "fwd.logsumexp")
    if not isinstance(keepdims, bool):
        raise TypeError(f"fwd.logsumexp: keepdims must be a bool; got {keepdims!r}")
    out = _logsumexp(x, mask, axes)
    return out if keepdims else jnp.squeeze(out, axes)


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _logsumexp(x, where, axes):
    m, log_s, _ = _logsumexp_impl(x, where, axes)
    return _lse(m, log_s).astype(x.dtype)


@_logsumexp.defjvp
def _logsumexp_jvp(axes, primals, tangents):
    x, where = primals
    dx = tangents[0]
    lse = _logsumexp(x, where, axes)
    # ℓ̇ = ⟨ẋ, softmax(x)⟩; softmax through the twin above so higher derivatives use its rule.
    # -inf entries have probability 0 in it; a slice with no finite entry (lse = -inf) has no
    # distribution, and gets the zero gradient the docstring promises instead of the softmax's
    # NaN, by a select after the fact (a NaN entry, lse NaN, stays NaN). No mask of the -inf
    # entries: it would form -inf constants, which jax.debug_infs reports op by op.
    s = _softmax(x, where, axes)
    s = sharded_where(lse < jnp.finfo(lse.dtype).min, jnp.zeros((), s.dtype), s)
    cdt = compute_dtype(x.dtype)
    dl = jnp.sum(s.astype(cdt) * dx.astype(cdt), axes, keepdims=True)
    return lse, dl.astype(lse.dtype)


# --------------------------------------------------------------------------------------------
# Sparse normalisers: sparsemax, 1.5-entmax, α-entmax
# --------------------------------------------------------------------------------------------


def sparsemax(
    x: ArrayLike, axis: Axis = -1, *, where: ArrayLike | None = None, method: str = "auto"
) -> jax.Array:
    r"""Sparsemax with a ``custom_jvp`` rule: same values as :func:`jsoftmax.sparsemax`.

    .. math::
        \dot p = s \odot (\dot x - \langle s, \dot x\rangle / |S|), \qquad s = [p > 0]

    Args:
      x: scores, any shape ``[..., n, ...]``, floating point.
      axis: the axis, or tuple of axes, to normalise over (``None``: all axes).
      where: optional boolean mask broadcastable to ``x``; ``False`` entries are left out.
      method: ``"auto"``, ``"newton"`` or ``"sort"``, as for :func:`jsoftmax.sparsemax`.

    Returns:
      An array of ``x``'s shape and dtype whose slices along ``axis`` sum to one.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jsoftmax import fwd
      >>> print(jax.jacfwd(fwd.sparsemax)(jnp.array([0.5, 0.25, -1.0])) + 0.0)
      [[ 0.5 -0.5  0. ]
       [-0.5  0.5  0. ]
       [ 0.   0.   0. ]]

    Notes:
      Same inf/NaN/mask behaviour as :func:`jsoftmax.sparsemax`.
    """
    x, axes, mask = _prepare(x, axis, where, "fwd.sparsemax")
    return sparsemax_twin(x, mask, axes, _check_method(method, "fwd.sparsemax"))


def entmax15(
    x: ArrayLike, axis: Axis = -1, *, where: ArrayLike | None = None, method: str = "auto"
) -> jax.Array:
    r"""1.5-entmax with a ``custom_jvp`` rule: same values as :func:`jsoftmax.entmax15`.

    .. math::
        \dot p = u \odot \dot x - u \langle u, \dot x\rangle / \textstyle\sum_j u_j,
        \qquad u = \sqrt{p}

    Args:
      x: scores, any shape ``[..., n, ...]``, floating point.
      axis: the axis, or tuple of axes, to normalise over (``None``: all axes).
      where: optional boolean mask broadcastable to ``x``; ``False`` entries are left out.
      method: ``"auto"``, ``"newton"`` or ``"sort"``, as for :func:`jsoftmax.entmax15`.

    Returns:
      An array of ``x``'s shape and dtype whose slices along ``axis`` sum to one.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jsoftmax import fwd
      >>> p, dp = jax.jvp(fwd.entmax15, (jnp.array([0.0, 0.0, -5.0]),),
      ...                 (jnp.array([1.0, 0.0, 0.0]),))
      >>> print(dp)
      [ 0.3536 -0.3536  0.    ]

    Notes:
      Same inf/NaN/mask behaviour as :func:`jsoftmax.entmax15`.
    """
    x, axes, mask = _prepare(x, axis, where, "fwd.entmax15")
    return entmax15_twin(x, mask, axes, _check_method(method, "fwd.entmax15"))


def entmax(
    x: ArrayLike,
    alpha: float | ArrayLike = 1.5,
    axis: Axis = -1,
    *,
    where: ArrayLike | None = None,
    n_iter: int = 50,
) -> jax.Array:
    r"""α-entmax with a ``custom_jvp`` rule: same values as :func:`jsoftmax.entmax`.

    .. math::
        \dot p = u \odot \dot x - u \langle u, \dot x\rangle / \textstyle\sum_j u_j
        + \dot\alpha\,\partial p / \partial \alpha, \qquad u = p^{2-\alpha}

    Args:
      x: scores, any shape ``[..., n, ...]``, floating point.
      alpha: a Python number ≥ 1 or an array, as for :func:`jsoftmax.entmax`.
      axis: the axis, or tuple of axes, to normalise over (``None``: all axes).
      where: optional boolean mask broadcastable to ``x``; ``False`` entries are left out.
      n_iter: the most bisection steps.

    Returns:
      An array of ``x``'s shape and dtype whose slices along ``axis`` sum to one.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jsoftmax import fwd
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> print(jax.jacfwd(fwd.entmax, argnums=1)(x, jnp.array(1.25)))
      [-0.2251 -0.1362  0.3613]

    Notes:
      Same conventions as :func:`jsoftmax.entmax` (Python ``alpha`` of 1, 1.5 or 2 uses the
      exact twin; an array ``alpha`` ≤ 1 gives ``NaN``).
    """
    fn = "fwd.entmax"
    x, axes, mask = _prepare(x, axis, where, fn)
    kind, static, arr = _prepare_alpha(alpha, x, axes, fn)
    n_iter = _check_n_iter(n_iter, fn)
    if kind == "softmax":
        return _softmax(x, mask, axes)
    if kind == "entmax15":
        return entmax15_twin(x, mask, axes, "newton")
    if kind == "sparsemax":
        return sparsemax_twin(x, mask, axes, "newton")
    return entmax_bisect_twin(x, arr, mask, axes, n_iter, static)
