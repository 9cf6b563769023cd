"""Sharded-loss tests that need 8 devices; run by tests/test_sharded.py in a subprocess.

``tests/test_sharded.py`` runs ``python -m pytest tests/_sharded_worker.py`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set before JAX starts),
so the rest of the suite keeps one device. Collected in the main process (doctest collection
imports every module), this file skips itself.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jsoftmax

if jax.device_count() < 8:
    pytest.skip(
        "needs 8 (faked CPU) devices; run via tests/test_sharded.py", allow_module_level=True
    )

N, D, V = 16, 5, 48  # N and V divide over 2, 4 and 8 shards; 48 / 8 = 6 is not a multiple of 4
IGNORE = -100
OPTS = {"ignore_index": IGNORE, "label_smoothing": 0.1, "z_loss": 1e-2}
SIZES = [2, 4, 8]


def _mesh(n, axis_type=AxisType.Explicit):
    return jax.make_mesh((n,), ("vocab",), (axis_type,), devices=jax.devices()[:n])


def _data(dtype=jnp.float64):
    kx, kw, kb, ky = jax.random.split(jax.random.key(1), 4)
    x = jax.random.normal(kx, (N, D), dtype)
    w = jax.random.normal(kw, (D, V), dtype)
    b = jax.random.normal(kb, (V,), dtype)
    y = jax.random.randint(ky, (N,), 0, V).at[:2].set(IGNORE)
    return x, w, b, y


def _close(a, b, rtol=1e-10, atol=1e-13):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


@pytest.mark.parametrize(("n", "reduction"), [(2, "mean"), (4, "none"), (8, "sum")])
def test_vocab_parallel_cross_entropy_matches_single_device(n, reduction):
    with jax.enable_x64(True):
        x, w, _, y = _data()
        logits = x @ w
        mesh = _mesh(n, AxisType.Auto if reduction == "none" else AxisType.Explicit)
        sharded = jax.device_put(logits, NamedSharding(mesh, P(None, "vocab")))

        def loss(f, z):  # non-uniform cotangent for "none"
            out = f(z)
            return jnp.sum(out * jnp.cos(jnp.arange(out.size))) if out.ndim else out

        vp = functools.partial(
            jsoftmax.vocab_parallel_cross_entropy,
            labels=y,
            mesh=mesh,
            axis_name="vocab",
            reduction=reduction,
            **OPTS,
        )
        ref = functools.partial(jsoftmax.cross_entropy, labels=y, reduction=reduction, **OPTS)
        got = jax.jit(jax.value_and_grad(functools.partial(loss, vp)))(sharded)
        want = jax.value_and_grad(functools.partial(loss, ref))(logits)
        _close(got, want)
        assert got[1].sharding.spec == P(None, "vocab")  # the gradient stays sharded


@pytest.mark.parametrize("n", SIZES)
def test_vocab_parallel_linear_cross_entropy_matches_single_device(n):
    with jax.enable_x64(True):
        x, w, b, y = _data()
        mesh = _mesh(n)
        w_s = jax.device_put(w, NamedSharding(mesh, P(None, "vocab")))
        b_s = jax.device_put(b, NamedSharding(mesh, P("vocab")))
        opts = {**OPTS, "softcap": 3.0}

        def vp(x, w, b):
            return jsoftmax.vocab_parallel_linear_cross_entropy(
                x, w, y, bias=b, mesh=mesh, axis_name="vocab", chunk_size=(5, 4), **opts
            )

        def ref(x, w, b):
            return jsoftmax.linear_cross_entropy(x, w, y, bias=b, **opts)

        got = jax.jit(jax.value_and_grad(vp, (0, 1, 2)))(x, w_s, b_s)
        _close(got, jax.value_and_grad(ref, (0, 1, 2))(x, w, b))
        assert got[1][1].sharding.spec == P(None, "vocab")  # dw stays on its shards
        assert got[1][2].sharding.spec == P("vocab")


@pytest.mark.parametrize("n", [8])
def test_vocab_parallel_linear_grad_of_grad(n):
    with jax.enable_x64(True):
        x, w, _, y = _data()
        mesh = _mesh(n)

        def gg(loss):
            return jax.grad(lambda x: jnp.sum(jax.grad(loss)(x) ** 2))

        vp = functools.partial(
            jsoftmax.vocab_parallel_linear_cross_entropy,
            w=w,
            labels=y,
            mesh=mesh,
            axis_name="vocab",
            chunk_size=4,
            **OPTS,
        )
        ref = functools.partial(jsoftmax.linear_cross_entropy, w=w, labels=y, **OPTS)
        _close(jax.jit(gg(vp))(x), gg(ref)(x), rtol=1e-9)


def test_vocab_parallel_linear_none_and_leading_axes():
    x, w, _, y = _data(jnp.float32)
    x, y = x.reshape(4, 4, D), y.reshape(4, 4)
    mesh = _mesh(4, AxisType.Auto)
    f = functools.partial(
        jsoftmax.vocab_parallel_linear_cross_entropy,
        mesh=mesh,
        axis_name="vocab",
        reduction="none",
        ignore_index=IGNORE,
    )
    got = jax.jit(f)(x, w, y)
    want = jsoftmax.linear_cross_entropy(x, w, y, reduction="none", ignore_index=IGNORE)
    assert got.shape == (4, 4)
    _close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [2, 8])
def test_token_parallel_plain_jit(n):
    # data parallelism needs no special API: shard the tokens and jit the chunked loss
    with jax.enable_x64(True):
        x, w, _b, y = _data()
        mesh = jax.make_mesh((n,), ("data",), (AxisType.Auto,), devices=jax.devices()[:n])
        x_s = jax.device_put(x, NamedSharding(mesh, P("data")))
        y_s = jax.device_put(y, NamedSharding(mesh, P("data")))
        f = functools.partial(jsoftmax.linear_cross_entropy, chunk_size=(3, 7), **OPTS)
        got = jax.jit(jax.value_and_grad(f, (0, 1)))(x_s, w, y_s)
        _close(got, jax.value_and_grad(f, (0, 1))(x, w, y))


def test_vocab_must_divide_over_the_mesh():
    mesh = _mesh(8)
    x, w, _, y = _data(jnp.float32)
    with pytest.raises(ValueError, match=r"V=44 of w \(5, 44\) must divide evenly over mesh axis "):
        jsoftmax.vocab_parallel_linear_cross_entropy(
            x, w[:, :44], jnp.clip(y, 0, 43), mesh=mesh, axis_name="vocab"
        )
    with pytest.raises(ValueError, match=r"V=44 of logits \(16, 44\).*size 8; got V % 8 = 4"):
        jsoftmax.vocab_parallel_cross_entropy(
            (x @ w)[:, :44], jnp.clip(y, 0, 43), mesh=mesh, axis_name="vocab"
        )


# Regression (probe bug 8): eager jax.grad / value_and_grad / hessian of the vocabulary-parallel
# losses raised "Length of device assignment 1 is not equal to the size of the mesh" on an
# Explicit mesh (the default of jax.make_mesh) outside jax.set_mesh. The docstrings promise grad.
CONTEXTS = ["eager", "jit", "set_mesh+jit", "set_mesh eager"]


def _in_context(context, mesh, fn, *args):
    if context == "eager":
        return fn(*args)
    if context == "jit":
        return jax.jit(fn)(*args)
    with jax.set_mesh(mesh):
        return jax.jit(fn)(*args) if context == "set_mesh+jit" else fn(*args)


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
@pytest.mark.parametrize("loss", ["vocab_parallel_cross_entropy", "vocab_parallel_linear"])
def test_grad_value_and_grad_hessian_work_in_every_context(loss, axis_type, context):
    with jax.enable_x64(True):
        x, w, _, y = _data()
        x, y = x[:4], y[:4]
        mesh = _mesh(4, axis_type)
        w_s = jax.device_put(w, NamedSharding(mesh, P(None, "vocab")))
        z = x @ w
        if loss == "vocab_parallel_cross_entropy":

            def vp(z):
                return jsoftmax.vocab_parallel_cross_entropy(
                    z, y, mesh=mesh, axis_name="vocab", **OPTS
                )

            def ref(z):
                return jsoftmax.cross_entropy(z, y, **OPTS)

            args, ref_args = (jax.device_put(z, NamedSharding(mesh, P(None, "vocab"))),), (z,)
        else:

            def vp(x, w):
                return jsoftmax.vocab_parallel_linear_cross_entropy(
                    x, w, y, mesh=mesh, axis_name="vocab", chunk_size=(3, 5), **OPTS
                )

            def ref(x, w):
                return jsoftmax.cross_entropy(x @ w, y, **OPTS)

            args, ref_args = (x, w_s), (x, w)
        argnums = tuple(range(len(args)))

        got = _in_context(context, mesh, jax.value_and_grad(vp, argnums), *args)
        _close(got, jax.value_and_grad(ref, argnums)(*ref_args))
        _close(_in_context(context, mesh, jax.grad(vp), *args), jax.grad(ref)(*ref_args))
        if context == "eager" and axis_type == AxisType.Explicit:  # the probe's case (slow)
            hess = _in_context(context, mesh, jax.hessian(vp), *args)
            _close(hess, jax.hessian(ref)(*ref_args), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", ["vocab_parallel_cross_entropy", "vocab_parallel_linear"])
def test_eager_grad_of_unplaced_inputs_on_an_explicit_mesh(loss):
    # inputs that live on one device (not yet placed on the mesh) are placed by the loss
    with jax.enable_x64(True):
        x, w, _, y = _data()
        mesh = _mesh(4)
        if loss == "vocab_parallel_cross_entropy":
            vp = functools.partial(
                jsoftmax.vocab_parallel_cross_entropy,
                labels=y,
                mesh=mesh,
                axis_name="vocab",
                ignore_index=IGNORE,
            )
            got = jax.value_and_grad(lambda x, w: vp(x @ w), (0, 1))(x, w)
        else:
            got = jax.value_and_grad(
                lambda x, w: jsoftmax.vocab_parallel_linear_cross_entropy(
                    x, w, y, mesh=mesh, axis_name="vocab", ignore_index=IGNORE
                ),
                (0, 1),
            )(x, w)
        want = jax.value_and_grad(
            lambda x, w: jsoftmax.cross_entropy(x @ w, y, ignore_index=IGNORE), (0, 1)
        )(x, w)
        _close(got, want)


@pytest.mark.parametrize(
    ("dtype", "v"), [(jnp.int8, 200), (jnp.uint8, 304), (jnp.int16, 40000)], ids=str
)
def test_narrow_label_dtypes_do_not_wrap_on_a_mesh(dtype, v):
    # Regression (probe bug 7): the class count was compared in the label dtype (200 → -56 in
    # int8), so valid labels counted as out of range: NaN loss, OverflowError in the backward.
    mesh = _mesh(4)
    top = int(jnp.iinfo(dtype).max)
    y = jnp.array([min(top, v - 1), 3, 0, 1], dtype)
    x = jax.random.normal(jax.random.key(0), (4, 3))
    w = jax.random.normal(jax.random.key(1), (3, v))
    for vp, ref in [
        (
            lambda x, w, y: jsoftmax.vocab_parallel_cross_entropy(
                x @ w, y, mesh=mesh, axis_name="vocab"
            ),
            lambda x, w, y: jsoftmax.cross_entropy(x @ w, y),
        ),
        (
            lambda x, w, y: jsoftmax.vocab_parallel_linear_cross_entropy(
                x, w, y, mesh=mesh, axis_name="vocab"
            ),
            lambda x, w, y: jsoftmax.linear_cross_entropy(x, w, y),
        ),
    ]:
        got = jax.value_and_grad(vp)(x, w, y)
        want = jax.value_and_grad(ref)(x, w, y.astype(jnp.int32))
        assert np.isfinite(np.asarray(got[0]))
        _close(got, want, rtol=2e-5, atol=1e-6)


def test_large_logits_gradient_on_a_mesh():
    # Regression (probe bug 2): p = exp(z − lse) with a rounded lse gave p = 1 instead of 0.5 at
    # |z| = 3e7; the sharded rule uses the same saved (m, log Σ) pair as the one-device rule.
    mesh = _mesh(2)
    x = jnp.ones((1, 1))
    w = jnp.array([[3e7, 3e7, 0.0, 0.0]])
    y = jnp.array([2])
    dw = jax.grad(
        lambda w: jsoftmax.vocab_parallel_linear_cross_entropy(
            x, w, y, mesh=mesh, axis_name="vocab"
        )
    )(w)
    np.testing.assert_array_equal(np.asarray(dw), [[0.5, 0.5, -1.0, 0.0]])
    dz = jax.grad(
        lambda z: jsoftmax.vocab_parallel_cross_entropy(z, y, mesh=mesh, axis_name="vocab")
    )(x @ w)
    np.testing.assert_array_equal(np.asarray(dz), [[0.5, 0.5, -1.0, 0.0]])


def test_eager_hessian_of_unplaced_inputs_on_an_explicit_mesh():
    # inputs on one device, outside jit and set_mesh: JAX's own reshard fails under hessian
    # there, so the loss places them inside a jit of its own
    with jax.enable_x64(True):
        mesh = _mesh(4)
        z = jax.random.normal(jax.random.key(3), (2, 8), jnp.float64)
        x, w = z[:, :3], jax.random.normal(jax.random.key(4), (3, 8), jnp.float64)
        y = jnp.array([1, 6])
        vp = functools.partial(jsoftmax.vocab_parallel_cross_entropy, mesh=mesh, axis_name="vocab")
        got = jax.hessian(lambda z: vp(z, y, label_smoothing=0.1))(z)
        _close(got, jax.hessian(lambda z: jsoftmax.cross_entropy(z, y, label_smoothing=0.1))(z))
        vpl = functools.partial(
            jsoftmax.vocab_parallel_linear_cross_entropy, mesh=mesh, axis_name="vocab"
        )
        got = jax.hessian(lambda w: vpl(x, w, y, z_loss=0.1))(w)
        want = jax.hessian(lambda w: jsoftmax.cross_entropy(x @ w, y, z_loss=0.1))(w)
        _close(got, want, rtol=1e-9, atol=1e-12)
