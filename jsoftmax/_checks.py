"""Trace-time validation shared by every public function.

Everything here runs on static information (shapes, dtypes, Python options), so it raises
ordinary Python errors while a function is being traced, with the real values in the message.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

Axis = int | Sequence[int] | None

# Half-precision inputs are computed in float32 and cast back; everything else in its own dtype.
_UPCAST = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def as_float_array(x: ArrayLike, name: str, fn: str) -> jax.Array:
    """Return ``x`` as a floating-point ``jax.Array`` or raise a ``TypeError`` naming it."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{fn}: {name} must have a floating-point dtype (float16, bfloat16, float32 or "
            f"float64); got {dtype}. Cast it first, e.g. {name}.astype(jnp.float32)."
        )
    return jnp.asarray(x)


def compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """The dtype arithmetic runs in: float32 for float16/bfloat16, else ``dtype`` itself."""
    return jnp.dtype(jnp.float32) if jnp.dtype(dtype) in _UPCAST else jnp.dtype(dtype)


def canonical_axes(axis: Axis, ndim: int, fn: str, name: str = "axis") -> tuple[int, ...]:
    """Normalise an int, negative int, tuple of ints or ``None`` to sorted non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
    try:
        axes = tuple(axes)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be an int or a tuple of ints; got {axis!r}") from None
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"{fn}: {name} must be an int or a tuple of ints; got {axis!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"{fn}: {name}={axis!r} is out of range for an array of rank {ndim}")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{fn}: {name}={axis!r} repeats an axis")
    if not out:
        raise ValueError(f"{fn}: {name} must name at least one axis; got {axis!r}")
    return tuple(sorted(out))


def single_axis(axis: int, ndim: int, fn: str, name: str = "axis") -> int:
    """Normalise a single int axis (for functions that act on one 1-D slice)."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be a single int; got {axis!r}")
    return canonical_axes(axis, ndim, fn, name)[0]


def as_mask(where: ArrayLike | None, shape: tuple[int, ...], fn: str) -> jax.Array | None:
    """Check a boolean ``where`` mask broadcastable to ``shape``; return it at that rank."""
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"{fn}: where must be a boolean mask; got dtype {where.dtype}")
    try:
        np.broadcast_shapes(where.shape, shape)
    except ValueError:
        raise ValueError(
            f"{fn}: where of shape {where.shape} is not broadcastable to x of shape {shape}"
        ) from None
    if np.broadcast_shapes(where.shape, shape) != tuple(shape):
        raise ValueError(
            f"{fn}: where of shape {where.shape} would broadcast x of shape {shape} to a larger "
            f"shape {np.broadcast_shapes(where.shape, shape)}"
        )
    # add leading unit axes but keep size-1 axes unbroadcast: a [batch, 1] or [1, n] mask stays
    # small (it may be saved for the backward pass) and jnp.where broadcasts it in the kernel
    return jnp.reshape(where, (1,) * (len(shape) - where.ndim) + where.shape)


def check_labels_in_range(labels, n_classes: int, ignore_index: int | None, fn: str) -> None:
    """Raise ``ValueError`` naming the first out-of-range label when ``labels`` is concrete.

    Under ``jit`` the labels are tracers and this check is skipped; the kernels then make the
    loss of such an example NaN instead.
    """
    if isinstance(labels, jax.core.Tracer):
        return
    host = np.asarray(labels)
    bad = (host < 0) | (host >= n_classes)
    if ignore_index is not None:
        bad &= host != ignore_index
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        allowed = f"[0, {n_classes})"
        if ignore_index is not None:
            allowed += f" or ignore_index={ignore_index}"
        raise ValueError(
            f"{fn}: labels must be class indices in {allowed}; got {host[pos]} at position "
            f"{pos} of labels with shape {host.shape}"
        )
