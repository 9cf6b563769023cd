"""Every dense function on a mesh of 8 devices; run by tests/test_mesh.py in a subprocess.

Issue 20, item 1: on the default mesh of ``jax.make_mesh`` (``Explicit`` axes) the losses raised
``ShardingTypeError`` under plain data parallelism (a ``select`` whose operands were sharded
differently, a gather whose output sharding JAX could not infer). Here every function runs on a
(2, 4) mesh with its inputs sharded over the batch, over the classes, over both, and with the
labels and masks placed differently from the logits; on ``Explicit`` and ``Auto`` axes, eagerly
and under ``jit``; and must give the single-device value and gradient.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts, so this
file runs in its own process; collected in the main process, it skips itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jsoftmax

if jax.device_count() < 8:
    pytest.skip("needs 8 (faked CPU) devices; run via tests/test_mesh.py", allow_module_level=True)

B, C = 16, 8  # both divide over the 2 x 4 mesh

# placements of the [B, C] logits; the per-example arrays follow in LABEL_SPECS
SPECS = {
    "data": P("data"),
    "data_model": P("data", "model"),
    "model": P(None, "model"),
    "both_on_batch": P(("data", "model")),
}


def _inputs():
    kz, ky, kp, km = jax.random.split(jax.random.key(0), 4)
    z = jax.random.normal(kz, (B, C)) * 3
    y = jax.random.randint(ky, (B,), 0, C).at[3].set(-100)  # one ignored example
    q = jax.nn.softmax(jax.random.normal(kp, (B, C)))
    mask = jax.random.bernoulli(km, 0.8, (B, C)).at[:, 0].set(True)
    return z, y, q, mask


def _functions():
    """name -> f(z, y, q, mask) -> scalar, covering every dense public function and option."""
    w = jnp.arange(1.0, C + 1)
    ce = jsoftmax.cross_entropy
    yy = lambda y: jnp.where(y < 0, 0, y)  # noqa: E731  (labels with no ignored value)

    def weighted(f):
        # a fixed, non-uniform cotangent for functions with array outputs
        def g(z, y, q, m):
            out = f(z, y, q, m)
            cot = jnp.arange(out.size, dtype=out.dtype).reshape(out.shape) / out.size
            return jnp.sum(jnp.where(jnp.isfinite(out), out, 0) * cot)

        return g

    return {
        "softmax": weighted(lambda z, y, q, m: jsoftmax.softmax(z)),
        "softmax_where": weighted(lambda z, y, q, m: jsoftmax.softmax(z, where=m)),
        "softmax_axis0": weighted(lambda z, y, q, m: jsoftmax.softmax(z, axis=0)),
        "log_softmax": weighted(lambda z, y, q, m: jsoftmax.log_softmax(z)),
        "log_softmax_where": weighted(lambda z, y, q, m: jsoftmax.log_softmax(z, where=m)),
        "logsumexp": weighted(lambda z, y, q, m: jsoftmax.logsumexp(z)),
        "logsumexp_where_all": weighted(lambda z, y, q, m: jsoftmax.logsumexp(z, axis=None)),
        "fwd.softmax": weighted(lambda z, y, q, m: jsoftmax.fwd.softmax(z, where=m)),
        "fwd.log_softmax": weighted(lambda z, y, q, m: jsoftmax.fwd.log_softmax(z)),
        "fwd.logsumexp": weighted(lambda z, y, q, m: jsoftmax.fwd.logsumexp(z, where=m)),
        "softmax_jacobian": weighted(lambda z, y, q, m: jsoftmax.softmax_jacobian(z)),
        "log_softmax_jacobian": weighted(lambda z, y, q, m: jsoftmax.log_softmax_jacobian(z)),
        "cross_entropy": lambda z, y, q, m: ce(z, yy(y)),
        "cross_entropy_options": lambda z, y, q, m: ce(
            z, y, ignore_index=-100, label_smoothing=0.1, z_loss=1e-3
        ),
        "cross_entropy_weight": lambda z, y, q, m: ce(
            z, y, weight=w, ignore_index=-100, label_smoothing=0.2
        ),
        "cross_entropy_class_mask": lambda z, y, q, m: ce(
            z, yy(y), where=m, label_smoothing=0.1, weight=w
        ),
        "cross_entropy_example_mask": lambda z, y, q, m: ce(z, yy(y), where=y > 2),
        "cross_entropy_none": weighted(
            lambda z, y, q, m: ce(z, y, ignore_index=-100, reduction="none")
        ),
        "cross_entropy_sum": lambda z, y, q, m: ce(z, yy(y), reduction="sum", z_loss=1e-2),
        "cross_entropy_probs": lambda z, y, q, m: ce(z, q, label_smoothing=0.1, weight=w),
        "cross_entropy_probs_mask": lambda z, y, q, m: ce(z, q, where=m),
        "nll_loss": lambda z, y, q, m: jsoftmax.nll_loss(
            jax.nn.log_softmax(z), y, weight=w, ignore_index=-100
        ),
        "softmax_cross_entropy": weighted(
            lambda z, y, q, m: jsoftmax.softmax_cross_entropy(z, q, where=m)
        ),
        "softmax_cross_entropy_with_integer_labels": weighted(
            lambda z, y, q, m: jsoftmax.softmax_cross_entropy_with_integer_labels(z, yy(y))
        ),
    }


FUNCTIONS = _functions()
_REFERENCE = {}


def _reference(name):
    """The single-device value and gradient (w.r.t. the logits and the probability labels)."""
    if name not in _REFERENCE:
        z, y, q, m = (np.asarray(a) for a in _inputs())
        f = FUNCTIONS[name]
        dev = jax.devices()[0]
        args = [jax.device_put(a, dev) for a in (z, y, q, m)]
        _REFERENCE[name] = jax.value_and_grad(f, argnums=(0, 2))(*args)
    return _REFERENCE[name]


def _mesh(axis_type):
    return jax.make_mesh((2, 4), ("data", "model"), (axis_type, axis_type))


def _placed(mesh, spec, label_spec):
    z, y, q, m = _inputs()
    put = lambda a, s: jax.device_put(a, NamedSharding(mesh, s))  # noqa: E731
    return put(z, spec), put(y, label_spec), put(q, spec), put(m, spec)


def _check(name, got):
    want = _reference(name)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)


# every placement under jit on Explicit axes; eagerly and on Auto axes, the two main ones
CASES = [(s, "jit", AxisType.Explicit) for s in SPECS] + [
    (s, m, t)
    for s in ("data", "data_model")
    for m, t in (("eager", AxisType.Explicit), ("jit", AxisType.Auto))
]


@pytest.mark.parametrize(("spec_name", "mode", "axis_type"), CASES)
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_every_function_on_a_mesh_matches_one_device(name, spec_name, mode, axis_type):
    mesh = _mesh(axis_type)
    spec = SPECS[spec_name]
    label_spec = P(spec[0]) if len(spec) else P()
    f = jax.value_and_grad(FUNCTIONS[name], argnums=(0, 2))
    f = jax.jit(f) if mode == "jit" else f
    with jax.set_mesh(mesh):
        args = _placed(mesh, spec, label_spec)
        got = f(*args)
        if axis_type == AxisType.Explicit:
            # the gradient has the logits' sharding (it is part of its type here)
            assert jax.typeof(got[1][0]).sharding.spec == jax.typeof(args[0]).sharding.spec
    _check(name, got)


@pytest.mark.parametrize("name", [n for n in FUNCTIONS if "cross_entropy" in n or "nll" in n])
def test_labels_and_masks_placed_unlike_the_logits(name):
    # replicated labels and masks beside batch-sharded logits, and batch-sharded labels beside
    # class-sharded logits: the losses reshard them to the logits' placement
    mesh = _mesh(AxisType.Explicit)
    f = jax.jit(jax.value_and_grad(FUNCTIONS[name], argnums=(0, 2)))
    _reference(name)  # the one-device numbers, computed outside the mesh (any test order)
    with jax.set_mesh(mesh):
        z, y, q, m = _placed(mesh, P("data"), P())
        m = jax.reshard(m, NamedSharding(mesh, P()))
        _check(name, f(z, y, q, m))
        z, y, q, m = _placed(mesh, P(None, "model"), P("data"))
        _check(name, f(z, y, q, m))


def test_explicit_mesh_outside_set_mesh():
    # arrays committed to an Explicit mesh, called without jax.set_mesh
    mesh = _mesh(AxisType.Explicit)
    z, y, q, m = _placed(mesh, P("data"), P("data"))
    for name in ("cross_entropy_options", "cross_entropy_weight", "log_softmax_where"):
        f = jax.jit(jax.value_and_grad(FUNCTIONS[name], argnums=(0, 2)))
        _check(name, f(z, y, q, m))
