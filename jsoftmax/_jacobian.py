"""Dense Jacobians of every normaliser, for teaching and as test oracles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jsoftmax._checks import as_float_array, single_axis
from jsoftmax._mesh import explicit_spec, reshard_like
from jsoftmax._softmax import softmax
from jsoftmax._sparse import _prepare_alpha, entmax, entmax15, sparsemax, support_weights

__all__ = [
    "entmax15_jacobian",
    "entmax_jacobian",
    "log_softmax_jacobian",
    "softmax_jacobian",
    "sparsemax_jacobian",
]


def _classes_unsharded(s: jax.Array) -> jax.Array:
    """``s [..., n]`` with its class axis gathered on an ``Explicit`` mesh (identity elsewhere).

    The ``n × n`` block indexes classes twice, and one mesh axis cannot shard both of its
    axes: the Jacobian is sharded over the other axes only.
    """
    spec = explicit_spec(s)
    return s if spec is None else reshard_like(s, s, (*spec[:-1], None))


def softmax_jacobian(x: ArrayLike, axis: int = -1) -> jax.Array:
    r"""Dense Jacobian of :func:`jsoftmax.softmax` for every 1-D slice along ``axis``.

    .. math::
        J_{ij} = \frac{\partial s_i}{\partial x_j} = s_i(\delta_{ij} - s_j),
        \qquad J = \mathrm{diag}(s) - s s^\top

    Args:
      x: scores of shape ``[..., n, ...]`` with ``n`` along ``axis``.
      axis: the single axis the softmax normalises over.

    Returns:
      ``[..., n, n]``: the other axes first (in order), then the ``n × n`` Jacobian with row
      ``i`` the output index and column ``j`` the input index.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> print(jsoftmax.softmax_jacobian(jnp.array([0.0, 0.0])))
      [[ 0.25 -0.25]
       [-0.25  0.25]]

    Notes:
      Each row and column sums to zero (softmax is invariant to adding a constant). ``-inf``
      entries give zero rows and columns; a ``+inf`` or ``NaN`` entry makes its slice ``NaN``.
      This materialises ``n²`` numbers per slice: use it to inspect or test, not to train.
    """
    x = as_float_array(x, "x", "softmax_jacobian")
    ax = single_axis(axis, x.ndim, "softmax_jacobian")
    s = _classes_unsharded(jnp.moveaxis(softmax(x, ax), ax, -1))
    # diag(s) − s sᵀ, built by broadcasting rather than by differentiating anything
    eye = jnp.eye(s.shape[-1], dtype=s.dtype).reshape((1,) * (s.ndim - 1) + (s.shape[-1],) * 2)
    return s[..., :, None] * (eye - s[..., None, :])


def log_softmax_jacobian(x: ArrayLike, axis: int = -1) -> jax.Array:
    r"""Dense Jacobian of :func:`jsoftmax.log_softmax` for every 1-D slice along ``axis``.

    .. math::
        J_{ij} = \frac{\partial \log s_i}{\partial x_j} = \delta_{ij} - s_j,
        \qquad J = I - \mathbf{1} s^\top

    Args:
      x: scores of shape ``[..., n, ...]`` with ``n`` along ``axis``.
      axis: the single axis the log-softmax normalises over.

    Returns:
      ``[..., n, n]``: the other axes first (in order), then the ``n × n`` Jacobian.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> print(jsoftmax.log_softmax_jacobian(jnp.array([0.0, 0.0])))
      [[ 0.5 -0.5]
       [-0.5  0.5]]

    Notes:
      Every row sums to zero. ``-inf`` entries contribute ``s_j = 0`` columns; a ``+inf`` or
      ``NaN`` entry makes its slice ``NaN``.
    """
    x = as_float_array(x, "x", "log_softmax_jacobian")
    ax = single_axis(axis, x.ndim, "log_softmax_jacobian")
    s = _classes_unsharded(jnp.moveaxis(softmax(x, ax), ax, -1))
    # I − 1 sᵀ: every row is the same shifted copy of −s
    eye = jnp.eye(s.shape[-1], dtype=s.dtype).reshape((1,) * (s.ndim - 1) + (s.shape[-1],) * 2)
    return eye - s[..., None, :]


def _support_jacobian(p: jax.Array, u: jax.Array) -> jax.Array:
    """``diag(u) − u uᵀ / Σu`` for every slice of ``[..., n]`` (0 for an empty support)."""
    su = jnp.sum(u, -1, keepdims=True)
    su = jnp.where(su > 0, su, 1)
    eye = jnp.eye(p.shape[-1], dtype=p.dtype).reshape((1,) * (p.ndim - 1) + (p.shape[-1],) * 2)
    return u[..., :, None] * eye - u[..., :, None] * u[..., None, :] / su[..., None]


def sparsemax_jacobian(x: ArrayLike, axis: int = -1) -> jax.Array:
    r"""Dense Jacobian of :func:`jsoftmax.sparsemax` for every 1-D slice along ``axis``.

    .. math::
        J = \mathrm{diag}(s) - \frac{s s^\top}{|S|}, \qquad s_i = [p_i > 0]

    Args:
      x: scores of shape ``[..., n, ...]`` with ``n`` along ``axis``.
      axis: the single axis sparsemax normalises over.

    Returns:
      ``[..., n, n]``: the other axes first (in order), then the ``n × n`` Jacobian (row ``i``
      the output index, column ``j`` the input index).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> print(jsoftmax.sparsemax_jacobian(jnp.array([0.5, 0.25, -1.0])))
      [[ 0.5 -0.5  0. ]
       [-0.5  0.5  0. ]
       [ 0.   0.   0. ]]

    Notes:
      Symmetric, rows and columns sum to zero; entries off the support have zero rows and
      columns. A ``+inf`` or ``NaN`` entry makes its slice ``NaN``. Materialises ``n²`` numbers
      per slice: for inspection and tests.
    """
    x = as_float_array(x, "x", "sparsemax_jacobian")
    ax = single_axis(axis, x.ndim, "sparsemax_jacobian")
    p = _classes_unsharded(jnp.moveaxis(sparsemax(x, ax), ax, -1))
    return _support_jacobian(p, support_weights(p, 0))


def entmax15_jacobian(x: ArrayLike, axis: int = -1) -> jax.Array:
    r"""Dense Jacobian of :func:`jsoftmax.entmax15` for every 1-D slice along ``axis``.

    .. math::
        J = \mathrm{diag}(u) - \frac{u u^\top}{\sum_j u_j}, \qquad u = \sqrt{p}

    Args:
      x: scores of shape ``[..., n, ...]`` with ``n`` along ``axis``.
      axis: the single axis 1.5-entmax normalises over.

    Returns:
      ``[..., n, n]``: the other axes first (in order), then the ``n × n`` Jacobian.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> print(jsoftmax.entmax15_jacobian(jnp.array([0.0, 0.0, -5.0])))
      [[ 0.3536 -0.3536  0.    ]
       [-0.3536  0.3536  0.    ]
       [ 0.      0.      0.    ]]

    Notes:
      Symmetric, rows and columns sum to zero, zero off the support. A ``+inf`` or ``NaN``
      entry makes its slice ``NaN``.
    """
    x = as_float_array(x, "x", "entmax15_jacobian")
    ax = single_axis(axis, x.ndim, "entmax15_jacobian")
    p = _classes_unsharded(jnp.moveaxis(entmax15(x, ax), ax, -1))
    return _support_jacobian(p, support_weights(p, 0.5))


def entmax_jacobian(x: ArrayLike, alpha: float = 1.5, axis: int = -1) -> jax.Array:
    r"""Dense Jacobian of :func:`jsoftmax.entmax` (with respect to ``x``) along ``axis``.

    .. math::
        J = \mathrm{diag}(u) - \frac{u u^\top}{\sum_j u_j}, \qquad u = p^{2-\alpha}
        \text{ on the support}

    At ``alpha = 1`` this is :func:`softmax_jacobian`, at ``alpha = 2``
    :func:`sparsemax_jacobian`.

    Args:
      x: scores of shape ``[..., n, ...]`` with ``n`` along ``axis``.
      alpha: a Python number ≥ 1.
      axis: the single axis α-entmax normalises over.

    Returns:
      ``[..., n, n]``: the other axes first (in order), then the ``n × n`` Jacobian.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> print(jsoftmax.entmax_jacobian(jnp.array([0.0, 0.0]), alpha=1.25))
      [[ 0.2973 -0.2973]
       [-0.2973  0.2973]]

    Notes:
      Symmetric, rows and columns sum to zero, zero off the support.
    """
    fn = "entmax_jacobian"
    x = as_float_array(x, "x", fn)
    ax = single_axis(axis, x.ndim, fn)
    _, static, _ = _prepare_alpha(alpha, x, (ax,), fn)
    if static is None:
        raise TypeError(f"{fn}: alpha must be a Python number >= 1; got {alpha!r}")
    p = _classes_unsharded(jnp.moveaxis(entmax(x, static, ax), ax, -1))
    return _support_jacobian(p, support_weights(p, 2 - static))
