"""Data x vocabulary parallelism of the sharded losses (issue 20 items 1-2).

The tests need 8 devices: they live in tests/_sharded_data_worker.py and run here in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set
before JAX starts). This process keeps one device and checks the per-shard form's validation.
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from _workers import run_worker

import jsoftmax


def test_eight_device_worker():
    run_worker("_sharded_data_worker.py")


def test_per_shard_form_outside_a_shard_map_says_so():
    z, y = jnp.zeros((2, 4)), jnp.array([0, 1])
    with pytest.raises(ValueError, match=r"mesh=None .* inside jax.shard_map .* 'vocab' is not"):
        jsoftmax.vocab_parallel_cross_entropy(z, y, mesh=None, axis_name="vocab")
    with pytest.raises(ValueError, match=r"with mesh=None the loss is the per-shard form"):
        jsoftmax.vocab_parallel_linear_cross_entropy(
            z, jnp.zeros((4, 3)), y, mesh=None, axis_name="vocab"
        )


def test_per_shard_form_bad_axis_names():
    z, y = jnp.zeros((2, 4)), jnp.array([0, 1])
    with pytest.raises(TypeError, match=r"axis_name must be a mesh axis name \(str\); got 3"):
        jsoftmax.vocab_parallel_cross_entropy(z, y, mesh=None, axis_name=3)
    with pytest.raises(ValueError, match=r"data_axis_name=\('v',\) must not contain axis_name"):
        jsoftmax.vocab_parallel_cross_entropy(z, y, mesh=None, axis_name="v", data_axis_name=("v",))
