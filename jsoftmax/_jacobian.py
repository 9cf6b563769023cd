"""Dense Jacobians of softmax and log_softmax, for teaching and as test oracles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jsoftmax._checks import as_float_array, single_axis
from jsoftmax._softmax import softmax

__all__ = ["log_softmax_jacobian", "softmax_jacobian"]


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
    s = jnp.moveaxis(softmax(x, ax), ax, -1)
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
    s = jnp.moveaxis(softmax(x, ax), ax, -1)
    # I − 1 sᵀ: every row is the same shifted copy of −s
    eye = jnp.eye(s.shape[-1], dtype=s.dtype).reshape((1,) * (s.ndim - 1) + (s.shape[-1],) * 2)
    return eye - s[..., None, :]
