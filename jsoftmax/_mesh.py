"""Sharding-in-types helpers: what every function needs to run on an ``Explicit`` mesh.

On a mesh whose axes are ``Explicit`` (the default of ``jax.make_mesh``) an array's sharding is
part of its type, and JAX checks it op by op: a ``select`` needs its three operands sharded
alike, a gather or a scatter whose index and operand are sharded differently must be told the
sharding of its result, and a new array (``jnp.ones(shape)``) is replicated. Each helper here
is the identity on one device, on ``Auto`` meshes and outside any mesh, so the code paths of
those cases are unchanged; on an ``Explicit`` mesh it gives an operation the sharding that
makes the program well typed, and the compiler the placement it would otherwise have to guess.

The convention every loss follows: per-example arrays (labels, masks, weights gathered per
label) take the sharding of the logits' batch axes, so every elementwise step between them is
local to each device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "batch_ones",
    "explicit_sharding",
    "explicit_spec",
    "gather_1d",
    "reshard_like",
    "sharded_where",
    "take_at_label",
    "to_varying",
    "varying_axes",
]


def explicit_sharding(x) -> NamedSharding | None:
    """``x``'s sharding where it is part of its type (an ``Explicit`` mesh axis), else ``None``."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty:
        return None
    if not any(t == AxisType.Explicit for t in mesh.axis_types):
        return None
    return sharding


def explicit_spec(x) -> tuple | None:
    """``x``'s partition spec, one entry per axis, on an ``Explicit`` mesh; else ``None``."""
    sharding = explicit_sharding(x)
    return None if sharding is None else _normalized(sharding.spec, x.ndim)


def reshard_like(a: jax.Array, ref, spec: tuple | None = None) -> jax.Array:
    """``a`` resharded to ``spec`` on ``ref``'s ``Explicit`` mesh (default: ``ref``'s own spec).

    The identity when ``ref`` carries no ``Explicit`` sharding or ``a`` already has the spec.
    """
    target = explicit_sharding(ref)
    if target is None:
        return a
    want = P(*(target.spec if spec is None else spec))
    have = explicit_sharding(a)
    if have is not None and _normalized(have.spec, a.ndim) == _normalized(want, a.ndim):
        return a
    return jax.reshard(a, NamedSharding(target.mesh, want))


def gather_1d(table: jax.Array, index: jax.Array) -> jax.Array:
    """``table[index]`` for a small 1-D ``table`` (class weights), sharded like ``index``."""
    out = explicit_sharding(index)
    if out is None:
        return table[index]
    # a replicated table gathered at sharded indices: the result is sharded like the indices
    table = reshard_like(table, index, (None,))
    return table.at[index].get(out_sharding=out)


def sharded_where(cond, x, y) -> jax.Array:
    """``jnp.where(cond, x, y)`` whose array operands agree on their sharding.

    A ``select`` on an ``Explicit`` mesh needs its operands sharded alike after broadcasting, so
    a per-class ``[1, C]`` weight row cannot meet ``[B, C]`` logits sharded over ``B``. Each
    array operand is broadcast to the result's shape and resharded to the result's spec: per
    dimension, the sharding of an operand that has that dimension at full size (going from
    replicated to sharded is a local slice: no communication). Scalars are left as they are.
    """
    arrays = [v for v in (cond, x, y) if isinstance(v, jax.Array) and v.ndim]
    typed = [explicit_sharding(v) for v in arrays]
    if not any(t is not None for t in typed):
        return jnp.where(cond, x, y)
    mesh = next(t.mesh for t in typed if t is not None)
    shape = np.broadcast_shapes(*(v.shape for v in arrays))
    spec = [None] * len(shape)
    for v, t in zip(arrays, typed, strict=True):
        if t is None:
            continue
        entries = _normalized(t.spec, v.ndim)
        for d in range(1, v.ndim + 1):  # right-aligned, as broadcasting
            if v.shape[-d] == shape[-d] and spec[-d] is None:
                spec[-d] = entries[-d]
    target = NamedSharding(mesh, P(*spec))

    def place(v):
        if not (isinstance(v, jax.Array) and v.ndim):
            return v
        v = jnp.broadcast_to(v, shape)
        have = explicit_sharding(v)
        if have is not None and _normalized(have.spec, v.ndim) == tuple(spec):
            return v
        return jax.reshard(v, target)

    return jnp.where(place(cond), place(x), place(y))


def take_at_label(z: jax.Array, y: jax.Array) -> jax.Array:
    """``z[..., y]`` per row: the entry of each row of ``z [..., C]`` at its index ``y [...]``.

    A gather of one value per row, except where ``z``'s class axis is sharded over an
    ``Explicit`` mesh axis: there each device holds only some classes, and the entry is a
    masked sum over the row (local to each device, then one reduction over the class shards).
    ``y`` must be in ``[0, C)``.
    """
    sharding = explicit_sharding(z)
    if sharding is None or _normalized(sharding.spec, z.ndim)[-1] is None:
        return jnp.take_along_axis(z, y[..., None], -1)[..., 0]
    iota = jax.lax.broadcasted_iota(y.dtype, z.shape, z.ndim - 1, out_sharding=sharding)
    hit = iota == reshard_like(y, z, _normalized(sharding.spec, z.ndim)[:-1])[..., None]
    return jnp.sum(jnp.where(hit, z, jnp.zeros((), z.dtype)), -1)


def batch_ones(z: jax.Array, dtype) -> jax.Array:
    """Ones of ``z``'s shape without its last axis, sharded like ``z``'s leading axes."""
    sharding = explicit_sharding(z)
    if sharding is None:
        return jnp.ones(z.shape[:-1], dtype)
    spec = _normalized(sharding.spec, z.ndim)[:-1]
    return jnp.ones(z.shape[:-1], dtype, out_sharding=NamedSharding(sharding.mesh, P(*spec)))


def _normalized(spec, ndim: int) -> tuple:
    """A spec padded with ``None`` to ``ndim`` entries, for comparison."""
    entries = tuple(spec)
    return entries + (None,) * (ndim - len(entries))


def varying_axes(*arrays) -> tuple[str, ...]:
    """The manual mesh axes any of ``arrays`` varies over, sorted (``()`` outside a checked
    ``shard_map``).

    Inside ``shard_map(check_vma=True)`` an array's type says which manual axes its value
    differs along; ``None`` entries and non-JAX values (NumPy arrays, Python numbers) vary over
    none.
    """
    axes: set[str] = set()
    for a in arrays:
        if isinstance(a, jax.Array):  # tracers too
            axes |= set(getattr(getattr(jax.typeof(a), "mat", None), "varying", ()) or ())
    return tuple(sorted(axes))


def to_varying(a, axes: tuple[str, ...]):
    """``a`` cast to vary over every one of ``axes`` it does not vary over yet (``pcast``).

    The transpose of the cast sums a cotangent over the axes it added: the gradient of a
    replicated weight used by every device's own tokens is the sum of the devices' shares, as
    JAX's own implicit casts give it.
    """
    if a is None:
        return None
    missing = tuple(x for x in axes if x not in varying_axes(a))
    return jax.lax.pcast(a, missing, to="varying") if missing else a
