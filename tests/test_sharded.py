"""Tests for the vocabulary-parallel losses (jsoftmax._sharded).

The multi-device tests live in tests/_sharded_worker.py and run here in a subprocess with 8
faked CPU devices (``XLA_FLAGS`` must be set before JAX starts); this process keeps one device
and checks what a one-device mesh can: argument validation and the trivial mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _workers import run_worker

import jsoftmax


def test_eight_device_worker():
    run_worker("_sharded_worker.py")


def _args():
    x = jax.random.normal(jax.random.key(0), (4, 3))
    w = jax.random.normal(jax.random.key(1), (3, 6))
    return x, w, jnp.array([0, 5, 2, 1])


def test_one_device_mesh_matches_unsharded():
    x, w, y = _args()
    mesh = jax.make_mesh((1,), ("vocab",))
    vp = jax.jit(
        lambda x, w: jsoftmax.vocab_parallel_linear_cross_entropy(
            x, w, y, mesh=mesh, axis_name="vocab", label_smoothing=0.1
        )
    )
    want = jsoftmax.linear_cross_entropy(x, w, y, label_smoothing=0.1)
    np.testing.assert_allclose(vp(x, w), want, rtol=1e-6)
    vp = jax.jit(
        lambda z: jsoftmax.vocab_parallel_cross_entropy(z, y, mesh=mesh, axis_name="vocab")
    )
    np.testing.assert_allclose(vp(x @ w), jsoftmax.cross_entropy(x @ w, y), rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"axis_name": "model"}, ValueError, r"axis_name='model' is not an axis of the mesh"),
        ({"mesh": "vocab"}, TypeError, "mesh must be a jax.sharding.Mesh or None; got str"),
        ({"softcap": -1.0}, ValueError, "softcap must be a positive finite float"),
        ({"chunk_size": -3}, ValueError, "chunk_size must be positive; got -3"),
        ({"labels": jnp.zeros((5,), int)}, ValueError, r"labels must have shape \(4,\)"),
        ({"w": jnp.ones((4, 6))}, ValueError, "must agree on D"),
    ],
)  # fmt: skip
def test_linear_bad_input(kwargs, error, match):
    x, w, y = _args()
    args = {"x": x, "w": w, "labels": y, "mesh": jax.make_mesh((1,), ("vocab",))}
    args["axis_name"] = "vocab"
    args.update(kwargs)
    with pytest.raises(error, match=match):
        jsoftmax.vocab_parallel_linear_cross_entropy(**args)


def test_logits_bad_input():
    x, w, y = _args()
    mesh = jax.make_mesh((1,), ("vocab",))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        jsoftmax.vocab_parallel_cross_entropy(x @ w, y[:3], mesh=mesh, axis_name="vocab")
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 6\)"):
        jsoftmax.vocab_parallel_cross_entropy(x @ w, y.at[0].set(6), mesh=mesh, axis_name="vocab")
    with pytest.raises(TypeError, match="logits must have a floating-point dtype"):
        jsoftmax.vocab_parallel_cross_entropy(y[:, None], y, mesh=mesh, axis_name="vocab")
