"""Sparse normalisers and their losses on meshes of 8 faked CPU devices; run by
tests/test_sparse_mesh.py in a subprocess.

Regression tests for issue 20 item 1: on ``jax.make_mesh``'s default (Explicit) axes,
``jax.grad`` of sparsemax raised ``while_loop body function carry input and carry output must
have equal types`` and entmax15 / entmax_loss ``select 'which' must be scalar or have the same
sharding as cases``. Every function, on Explicit and Auto axes, eagerly and under ``jit``, with
the batch axis, the class axis or both sharded, must give the single-device values and
gradients. Collected in the main process, this file skips itself.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import jsoftmax
from jsoftmax import fwd

if jax.device_count() < 8:
    pytest.skip(
        "needs 8 (faked CPU) devices; run via tests/test_sparse_mesh.py", allow_module_level=True
    )

# float64: a sum split over devices rounds in another order, and float32's last bits, amplified
# near the support's edge, would hide a real difference behind a loose tolerance
jax.config.update("jax_enable_x64", True)
B, C = 16, 8
Z = 2.0 * jax.random.normal(jax.random.key(0), (B, C), jnp.float64)
Y = jax.random.randint(jax.random.key(1), (B,), 0, C)
T = jax.nn.softmax(jax.random.normal(jax.random.key(2), (B, C), jnp.float64))
A = jnp.array(1.3, jnp.float64)

FUNCTIONS = {
    "sparsemax": lambda z, y, t: jsoftmax.sparsemax(z),
    "sparsemax_sort": lambda z, y, t: jsoftmax.sparsemax(z, method="sort"),
    "entmax15": lambda z, y, t: jsoftmax.entmax15(z),
    "entmax15_sort": lambda z, y, t: jsoftmax.entmax15(z, method="sort"),
    "entmax_1.3": lambda z, y, t: jsoftmax.entmax(z, 1.3),
    "entmax_array": lambda z, y, t: jsoftmax.entmax(z, A),
    "fwd.sparsemax": lambda z, y, t: fwd.sparsemax(z),
    "fwd.entmax15": lambda z, y, t: fwd.entmax15(z),
    "fwd.entmax_array": lambda z, y, t: fwd.entmax(z, A),
    "sparsemax_loss_int": lambda z, y, t: jsoftmax.sparsemax_loss(z, y),
    "sparsemax_loss_prob": lambda z, y, t: jsoftmax.sparsemax_loss(z, t),
    "entmax_loss_int": lambda z, y, t: jsoftmax.entmax_loss(z, y),
    "entmax_loss_prob": lambda z, y, t: jsoftmax.entmax_loss(z, t),
    "entmax_loss_array_int": lambda z, y, t: jsoftmax.entmax_loss(z, y, A),
    "entmax_loss_array_prob": lambda z, y, t: jsoftmax.entmax_loss(z, t, A),
}
# mesh shape, axis names, the logits' spec (batch, classes)
LAYOUTS = {
    "batch": ((8,), ("data",), P("data", None)),
    "classes": ((8,), ("data",), P(None, "data")),
    "both": ((2, 4), ("data", "model"), P("data", "model")),
}


def _scalar(f, y, t):
    weights = jnp.arange(1.0, 1.0 + B * C, dtype=jnp.float64).reshape(B, C) / (B * C)

    def g(z):
        out = f(z, y, t)
        return jnp.sum(out * weights) if out.ndim == 2 else out

    return g


# Every layout under jit on Explicit axes (the default mesh); Auto axes and eager calls on the
# (2, 4) layout. (All twelve combinations took 12 minutes on 2 cores; these cover each code
# path: the eager calls trace the same rules as jit.)
CASES = [(layout, AxisType.Explicit, "jit") for layout in LAYOUTS] + [
    ("both", AxisType.Auto, "jit"),
    ("both", AxisType.Explicit, "eager"),
]


@functools.cache
def _reference(name):
    """The one-device value and gradient of ``FUNCTIONS[name]``, once per function (jitted)."""
    f = FUNCTIONS[name]
    return jax.jit(f)(Z, Y, T), jax.jit(jax.grad(_scalar(f, Y, T)))(Z)


@pytest.mark.parametrize(("layout", "axis_type", "mode"), CASES)
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_sharded_inputs_give_the_single_device_numbers(name, layout, axis_type, mode):
    f = FUNCTIONS[name]
    want, want_grad = _reference(name)
    shape, names, spec = LAYOUTS[layout]
    mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))
    with jax.set_mesh(mesh):
        z, t = jax.device_put(Z, spec), jax.device_put(T, spec)
        y = jax.device_put(Y, P(spec[0]))
        run = (lambda h: h) if mode == "eager" else jax.jit
        got = run(f)(z, y, t)
        got_grad = run(jax.grad(_scalar(f, y, t)))(z)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-10, atol=1e-13)
    if got.ndim == 2:
        assert got.sharding.spec == spec or axis_type == AxisType.Auto
