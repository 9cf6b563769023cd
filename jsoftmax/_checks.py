"""Trace-time validation shared by every public function.

Everything here runs on static information (shapes, dtypes, Python options), so it raises
ordinary Python errors while a function is being traced, with the real values in the message.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jsoftmax._xent_engine import XentOptions

Axis = int | Sequence[int] | None

# Half-precision inputs are computed in float32 and cast back; everything else in its own dtype.
_UPCAST = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def as_float_array(x: ArrayLike, name: str, fn: str) -> jax.Array:
    """Return ``x`` as a floating-point ``jax.Array`` or raise a ``TypeError`` naming it."""
    try:
        dtype = jnp.result_type(x)
    except TypeError:
        # nested Python lists and other non-arrays: JAX's own message does not say which
        # argument it was, so name it (lists are not ArrayLike, as in jax.numpy)
        raise TypeError(
            f"{fn}: {name} must be an array (a jax.Array, a NumPy array or a scalar); got "
            f"{type(x).__name__}. Convert it first, e.g. jnp.asarray({name})."
        ) from None
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


def as_token_weights(
    token_weights: ArrayLike | None, shape: tuple[int, ...], dtype, fn: str
) -> jax.Array | None:
    """Per-token weights (floating) or a loss mask (bool) of exactly ``shape``, as ``dtype``."""
    if token_weights is None:
        return None
    try:
        given = jnp.result_type(token_weights)
    except TypeError:
        raise TypeError(
            f"{fn}: token_weights must be an array of labels' shape {tuple(shape)} or None; got "
            f"{type(token_weights).__name__}"
        ) from None
    if not (jnp.issubdtype(given, jnp.floating) or given == jnp.bool_):
        raise TypeError(
            f"{fn}: token_weights must be floating point (weights) or bool (a loss mask); got "
            f"dtype {given}. Cast it first, e.g. token_weights.astype(jnp.float32)."
        )
    token_weights = jnp.asarray(token_weights)
    if token_weights.shape != tuple(shape):
        raise ValueError(
            f"{fn}: token_weights must have labels' shape {tuple(shape)}; got {token_weights.shape}"
        )
    return token_weights.astype(dtype)


REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction, fn: str) -> str:
    """One of :data:`REDUCTIONS`, or a ``ValueError`` listing them."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {REDUCTIONS}; got {reduction!r}")
    return reduction


def check_real(value, name: str, fn: str, lo: float, hi: float | None = None) -> float:
    """A finite Python-number hyper-parameter in ``[lo, hi]`` (``hi=None``: no upper bound).

    Infinity and NaN are rejected: an infinite weight (``z_loss=inf``) gives an infinite loss,
    never a useful one.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: {name} must be a Python float; got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and lo <= value and (hi is None or value <= hi)):
        bound = f"in [{lo:g}, {hi:g}]" if hi is not None else f"finite and >= {lo:g}"
        raise ValueError(f"{fn}: {name} must be {bound}; got {value!r}")
    return value


def as_label_index(labels: jax.Array) -> jax.Array:
    """Integer labels in a dtype wide enough to compare with any class count: int32 or int64.

    Comparing in the labels' own dtype would cast the class count to it, so that 200 classes
    become -56 in int8 and 300 become 44 in uint8, and valid labels would count as out of range.
    64-bit labels (under x64) stay 64-bit; every narrower or unsigned dtype becomes int32.

    An unsigned label above the signed maximum (a uint32 label of 2**31 or more, a uint64 one of
    2**63 or more) becomes :data:`OUT_OF_RANGE_LABEL` of the index dtype, its maximum: out of
    range for every class count below it, and never ``ignore_index`` (which must fit in int32
    below that value). A plain cast would wrap it, and ``2**32 - 100`` would become an ignored
    ``-100`` under ``jit`` instead of a NaN loss.
    """
    index = jnp.dtype(jnp.int64 if labels.dtype.itemsize == 8 else jnp.int32)
    if labels.dtype == index:
        return labels
    top = np.iinfo(index).max
    if jnp.issubdtype(labels.dtype, jnp.unsignedinteger) and np.iinfo(labels.dtype).max > top:
        # compared in the unsigned dtype itself, where the signed maximum is representable
        wraps = labels > jnp.asarray(top, labels.dtype)
        return jnp.where(wraps, jnp.asarray(top, index), labels.astype(index))
    return labels.astype(index)


# The index an unsigned label too large for the signed index dtype is mapped to (see
# as_label_index): int32's maximum, which ignore_index may therefore not take.
OUT_OF_RANGE_LABEL = int(np.iinfo(np.int32).max)


def check_ignore_index(ignore_index, fn: str) -> int | None:
    """``None`` or a Python int in int32's range (labels are compared in int32 or wider)."""
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"{fn}: ignore_index must be an int or None; got {ignore_index!r}")
    info = np.iinfo(np.int32)
    # the int32 maximum is reserved for unsigned labels too large for int32 (as_label_index)
    if not info.min <= int(ignore_index) < OUT_OF_RANGE_LABEL:
        raise ValueError(
            f"{fn}: ignore_index must fit in int32 below its maximum, [{info.min}, "
            f"{OUT_OF_RANGE_LABEL - 1}]; got {ignore_index}"
        )
    return int(ignore_index)


_LABEL_CHECKS = {"on": False}


def label_checks_on() -> bool:
    """Whether the checked-labels mode (:func:`set_label_checks`) is on for functions traced now."""
    return _LABEL_CHECKS["on"]


def set_label_checks(enabled: bool) -> bool:
    """Turn the checked-labels mode on or off for losses traced from now on; returns the old state.

    With it on, every loss that takes integer labels also checks them when they are traced (under
    ``jit``, ``vmap``, ``grad``): a host callback raises a ``ValueError`` naming the function, the
    first out-of-range label and its position, which surfaces from the jitted call as a
    ``jax.errors.JaxRuntimeError`` carrying that message. Off (the default), nothing is added to
    the program and an out-of-range label gives NaN. The mode is read while a function is traced,
    so switching it clears JAX's caches (``jax.clear_caches()``): every function is traced and
    compiled anew on its next call, with the new mode. It is a debugging mode: switch it rarely.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jsoftmax
      >>> with jsoftmax.label_checks():
      ...     loss = jax.jit(jsoftmax.cross_entropy)
      ...     try:
      ...         loss(jnp.zeros((2, 3)), jnp.array([0, 7])).block_until_ready()
      ...     except Exception as e:
      ...         print("labels must be class indices in [0, 3); got 7 at position (1,)" in str(e))
      True
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"set_label_checks: enabled must be a bool; got {enabled!r}")
    old, _LABEL_CHECKS["on"] = _LABEL_CHECKS["on"], enabled
    if old != enabled:
        jax.clear_caches()  # traced and compiled functions hold the old mode
    return old


@contextlib.contextmanager
def label_checks(enabled: bool = True) -> Iterator[None]:
    """Context manager form of :func:`set_label_checks`: the mode inside, the old one after."""
    old = set_label_checks(enabled)
    try:
        yield
    finally:
        set_label_checks(old)


def _bad_label_message(host, n_classes: int, ignore_index: int | None, fn: str) -> str | None:
    """The error message for the first out-of-range label of ``host`` (NumPy), or ``None``."""
    host = np.asarray(host).astype(np.int64)  # never compare in a narrow label dtype
    bad = (host < 0) | (host >= n_classes)
    if ignore_index is not None:
        bad &= host != ignore_index
    if not bad.any():
        return None
    pos = tuple(int(i) for i in np.argwhere(bad)[0])
    allowed = f"[0, {n_classes})"
    if ignore_index is not None:
        allowed += f" or ignore_index={ignore_index}"
    return (
        f"{fn}: labels must be class indices in {allowed}; got {host[pos]} at position {pos} of "
        f"labels with shape {host.shape}"
    )


def _raise_bad_labels(host, *, n_classes: int, ignore_index: int | None, fn: str) -> None:
    message = _bad_label_message(host, n_classes, ignore_index, fn)
    if message is not None:
        raise ValueError(message)


def check_labels_in_range(labels, n_classes: int, ignore_index: int | None, fn: str) -> None:
    """Raise ``ValueError`` naming the first out-of-range label when ``labels`` is concrete.

    Under ``jit`` the labels are tracers: the kernels then make the loss of such an example NaN,
    and with :func:`label_checks` on, a host callback raises the same error when the program
    runs (position within one example of a ``vmap``).
    """
    if isinstance(labels, jax.core.Tracer):
        if _LABEL_CHECKS["on"]:
            jax.debug.callback(
                partial(_raise_bad_labels, n_classes=n_classes, ignore_index=ignore_index, fn=fn),
                labels,
            )
        return
    _raise_bad_labels(labels, n_classes=n_classes, ignore_index=ignore_index, fn=fn)


def check_integer_labels(
    labels: ArrayLike, shape: tuple[int, ...], what: str, fn: str
) -> jax.Array:
    """Integer labels of exactly ``shape`` (the token shape of ``what``), as an index dtype."""
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{fn}: labels must be integer class indices; got dtype {labels.dtype}")
    if labels.shape != tuple(shape):
        raise ValueError(
            f"{fn}: labels must have shape {tuple(shape)} to match {what}; got {labels.shape}"
        )
    return as_label_index(labels)  # int8 labels with 200 classes must not wrap


def check_xent_options(*, fn: str, ignore_index, label_smoothing, z_loss, softcap, reduction):
    """The cross-entropy options: ``(ignore_index, XentOptions, softcap, reduction)``."""
    ignore_index = check_ignore_index(ignore_index, fn)
    xent = XentOptions(
        check_real(label_smoothing, "label_smoothing", fn, 0.0, 1.0),
        check_real(z_loss, "z_loss", fn, 0.0),
    )
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(
            softcap, (int, float, np.integer, np.floating)
        ):
            raise TypeError(f"{fn}: softcap must be a positive float or None; got {softcap!r}")
        if not (float(softcap) > 0 and math.isfinite(float(softcap))):
            raise ValueError(
                f"{fn}: softcap must be a positive finite float or None; got {softcap}"
            )
        softcap = float(softcap)
    return ignore_index, xent, softcap, check_reduction(reduction, fn)
