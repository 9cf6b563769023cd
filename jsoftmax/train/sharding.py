"""Devices: the ``"data"`` mesh, batches placed on it, and results read back to the host.

The batch is split along a ``"data"`` mesh axis over every device JAX sees, with the
parameters and optimiser state replicated (``NamedSharding``); ``jit`` inserts the gradient
all-reduce. Each batch has a fixed padded size, a multiple of the device count
(:func:`padded_size`), and a mask marks the real examples, so the last short batch of an epoch
and the evaluation sets are used in full and nothing recompiles. The same code therefore runs
on one CPU, on eight faked CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``)
and on a GPU or TPU host. Results on one and on several devices agree to float32 round-off, not
bit for bit: the gradient's sum over the batch is split into per-device partial sums that are
then added, a different order of floating-point additions.

On several hosts every process builds the same global batch and :func:`to_device` copies in
only the shards of its own devices; :func:`fetch` reads replicated results from the local copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

__all__ = ["fetch", "make_mesh", "padded_size", "to_device"]


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (default: every device, all hosts)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def padded_size(size: int, n_devices: int) -> int:
    """``size`` rounded up to a multiple of the device count."""
    return -(-size // n_devices) * n_devices


def to_device(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """The host batch as global arrays laid out by ``sharding``."""
    # Each process holds the same global batch and copies in only its own devices' shards,
    # which is exactly device_put on one host and still right on many.
    return {
        k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
        for k, v in batch.items()
    }


def fetch(tree: Any) -> Any:
    """Device values to host NumPy, including replicated arrays that span several hosts."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = x.addressable_data(0)
        return np.asarray(x)

    return jax.tree.map(one, tree)
