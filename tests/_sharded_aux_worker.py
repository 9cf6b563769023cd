"""token_weights, return_aux and w_layout on the vocabulary-parallel losses (issue 20 item 4).

Run by tests/test_sharded_aux.py with 8 faked CPU devices. The reference is the one-device
``linear_cross_entropy(..., token_weights=..., return_aux=True, w_layout=...)`` (itself tested
against the materialised logits in tests/test_linear_xent_aux.py), compared at float64
round-off: values, the auxiliary outputs, and the gradients of x, w and bias. Collected in
the main process (one device), this file skips itself.
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
    pytest.skip(
        "needs 8 (faked CPU) devices; run via tests/test_sharded_aux.py", allow_module_level=True
    )

N, D, V = 16, 5, 48
IGNORE = -100
OPTS = {"ignore_index": IGNORE, "label_smoothing": 0.1, "z_loss": 1e-2, "softcap": 3.0}


def _mesh(axis_type=AxisType.Explicit):
    return jax.make_mesh((2, 4), ("data", "model"), (axis_type,) * 2)


def _data(mask=False):
    """x, w [D, V], bias, labels (two ignored) and token weights (two zeros) or a bool mask."""
    kx, kw, kb, ky, kt = jax.random.split(jax.random.key(11), 5)
    x = jax.random.normal(kx, (N, D), jnp.float64)
    w = jax.random.normal(kw, (D, V), jnp.float64)
    b = jax.random.normal(kb, (V,), jnp.float64)
    y = jax.random.randint(ky, (N,), 0, V).at[jnp.array([1, 10])].set(IGNORE)
    tw = jax.random.uniform(kt, (N,), jnp.float64, 0.2, 2.0).at[jnp.array([3, 12])].set(0.0)
    return x, w, b, y, (tw > 0.6 if mask else tw)


def _close(a, b, rtol=1e-10, atol=1e-13):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for u, v in zip(leaves_a, leaves_b, strict=True):
        assert np.shape(u) == np.shape(v), (np.shape(u), np.shape(v))
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def _spec(a):
    spec = tuple(a.sharding.spec)
    return spec + (None,) * (a.ndim - len(spec))


def _put(mesh, a, spec):
    return jax.device_put(a, NamedSharding(mesh, spec))


def _weighted(out):
    # a non-uniform cotangent for "none", so every per-token loss's gradient is checked
    return jnp.sum(out * jnp.cos(jnp.arange(out.size)).reshape(out.shape)) if out.ndim else out


def _with_aux(loss_fn):
    """``(scalar, aux)`` for ``value_and_grad(..., has_aux=True)``."""

    def f(*args):
        loss, aux = loss_fn(*args)
        return _weighted(loss), aux

    return f


def _reference(y, tw, reduction, w_layout, **extra):
    def ref(x, w, b):
        return jsoftmax.linear_cross_entropy(
            x, w, y, bias=b, token_weights=tw, return_aux=True, reduction=reduction,
            w_layout=w_layout, **OPTS, **extra,
        )  # fmt: skip

    return _with_aux(ref)


CASES = [
    # (axis type, reduction, gradients_in_forward, w_layout): every reduction and both
    # gradient paths on each mesh kind, each layout on both
    (AxisType.Explicit, "mean", None, "dv"),
    (AxisType.Explicit, "sum", False, "vd"),
    (AxisType.Explicit, "none", None, "vd"),
    (AxisType.Auto, "mean", False, "vd"),
    (AxisType.Auto, "sum", None, "dv"),
    (AxisType.Auto, "none", None, "dv"),
]


def _case_id(case):
    kind, reduction, gif, layout = case
    path = {None: "fwdgrad", False: "recompute"}[gif] if reduction != "none" else "bwd"
    return f"{'explicit' if kind == AxisType.Explicit else 'auto'}-{reduction}-{path}-{layout}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_vocab_parallel_linear_matches_one_device(case):
    axis_type, reduction, gif, layout = case
    with jax.enable_x64(True):
        x, w, b, y, tw = _data()
        w = w.T if layout == "vd" else w
        mesh = _mesh(axis_type)
        w_spec = P("model", None) if layout == "vd" else P(None, "model")
        args = (_put(mesh, x, P("data")), _put(mesh, w, w_spec), _put(mesh, b, P("model")))

        def vp(x, w, b):
            return jsoftmax.vocab_parallel_linear_cross_entropy(
                x, w, y, bias=b, mesh=mesh, axis_name="model", chunk_size=(3, 5),
                gradients_in_forward=gif, token_weights=tw, return_aux=True, w_layout=layout,
                reduction=reduction, **OPTS,
            )  # fmt: skip

        got = jax.jit(jax.value_and_grad(_with_aux(vp), (0, 1, 2), has_aux=True))(*args)
        ref = _reference(y, tw, reduction, layout)
        want = jax.value_and_grad(ref, (0, 1, 2), has_aux=True)(x, w, b)
        _close(got, want)
        (_, aux), grads = got
        assert isinstance(aux, jsoftmax.LinearCrossEntropyAux)
        # dw comes back in w's layout and sharding ([V, D] over "model" with w_layout="vd")
        for g, a in zip(grads, args, strict=True):
            assert g.shape == a.shape and _spec(g) == _spec(a), (g.sharding, a.sharding)
        if reduction == "none":  # per-token fields split over the token axis like the labels
            assert all(_spec(f) == ("data",) for f in (aux.lse, aux.z_loss, aux.accuracy))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_on_an_explicit_mesh_takes_the_options(reduction):
    # the mesh dispatch of linear_cross_entropy (tokens over "data", the [V, D] table over
    # "model") used to raise NotImplementedError for these options
    with jax.enable_x64(True):
        x, w, b, y, mask = _data(mask=True)
        mesh = _mesh()
        x3, y3, m3 = x.reshape(4, 4, D), y.reshape(4, 4), mask.reshape(4, 4)
        with jax.set_mesh(mesh):
            args = (_put(mesh, x3, P("data")), _put(mesh, w.T, P("model", None)), b)
            y_s, m_s = _put(mesh, y3, P("data")), _put(mesh, m3, P("data"))

            def loss(x, w, b):
                return jsoftmax.linear_cross_entropy(
                    x, w, y_s, bias=b, token_weights=m_s, return_aux=True, w_layout="vd",
                    reduction=reduction, **OPTS,
                )  # fmt: skip

            got = jax.jit(jax.value_and_grad(_with_aux(loss), (0, 1, 2), has_aux=True))(*args)
        want = jax.value_and_grad(_reference(y3, m3, reduction, "vd"), (0, 1, 2), has_aux=True)
        _close(got, want(x3, w.T, b))
        assert _spec(got[1][1]) == ("model", None)
        if reduction == "none":
            assert got[0][1].lse.shape == (4, 4) and _spec(got[0][1].lse) == ("data", None)


@pytest.mark.parametrize(
    ("reduction", "gif", "layout"),
    [("mean", None, "vd"), ("sum", False, "dv"), ("none", None, "vd")],
)
def test_per_shard_linear_inside_a_users_unchecked_shard_map(reduction, gif, layout):
    with jax.enable_x64(True):
        x, w, b, y, tw = _data()
        w = w.T if layout == "vd" else w
        mesh = _mesh(AxisType.Auto)

        def body(x, w, b, y, tw):
            return jsoftmax.vocab_parallel_linear_cross_entropy(
                x, w, y, bias=b, mesh=None, axis_name="model", data_axis_name="data",
                chunk_size=(3, 5), gradients_in_forward=gif, token_weights=tw, return_aux=True,
                w_layout=layout, reduction=reduction, **OPTS,
            )  # fmt: skip

        w_spec = P("model", None) if layout == "vd" else P(None, "model")
        per_token = P("data") if reduction == "none" else P()
        out_specs = (
            per_token,
            jsoftmax.LinearCrossEntropyAux(P("data"), per_token, P(), per_token),
        )
        f = jax.shard_map(
            body, mesh=mesh, in_specs=(P("data"), w_spec, P("model"), P("data"), P("data")),
            out_specs=out_specs, check_vma=False,
        )  # fmt: skip
        got = jax.jit(
            jax.value_and_grad(_with_aux(lambda x, w, b: f(x, w, b, y, tw)), (0, 1, 2), True)
        )(x, w, b)
        want = jax.value_and_grad(_reference(y, tw, reduction, layout), (0, 1, 2), True)(x, w, b)
        _close(got, want)


def test_eager_on_an_explicit_mesh_outside_set_mesh():
    # eagerly, inputs typed on an Explicit mesh: the (loss, aux) pair comes back as ordinary
    # arrays (each resharded off the mesh), so value_and_grad can seed the loss
    with jax.enable_x64(True):
        x, w, b, y, tw = _data()
        mesh = _mesh()
        args = (_put(mesh, x, P("data")), _put(mesh, w, P(None, "model")), b)

        def vp(x, w, b):
            return jsoftmax.vocab_parallel_linear_cross_entropy(
                x, w, y, bias=b, mesh=mesh, axis_name="model", token_weights=tw,
                return_aux=True, reduction="sum", **OPTS,
            )  # fmt: skip

        got = jax.value_and_grad(_with_aux(vp), (0, 1, 2), has_aux=True)(*args)
        want = jax.value_and_grad(_reference(y, tw, "sum", "dv"), (0, 1, 2), has_aux=True)
        _close(got, want(x, w, b))


def test_per_shard_linear_over_the_vocabulary_axis_alone_with_checked_types():
    # tokens replicated (a shard_map over axis_name alone, check_vma=True): the kernel's own
    # types, the weights and the aux replicated over the vocabulary shards
    with jax.enable_x64(True):
        x, w, b, y, tw = _data()
        mesh = jax.make_mesh((4,), ("model",), (AxisType.Auto,), devices=jax.devices()[:4])

        def body(x, w, b, tw):
            return jsoftmax.vocab_parallel_linear_cross_entropy(
                x, w, y, bias=b, mesh=None, axis_name="model", token_weights=tw,
                return_aux=True, w_layout="vd", **OPTS,
            )  # fmt: skip

        f = jax.shard_map(
            body, mesh=mesh, in_specs=(P(), P("model", None), P("model"), P()), out_specs=P()
        )
        got = jax.jit(
            jax.value_and_grad(_with_aux(lambda x, w, b: f(x, w, b, tw)), (0, 1, 2), True)
        )(x, w.T, b)
        want = jax.value_and_grad(_reference(y, tw, "mean", "vd"), (0, 1, 2), True)
        _close(got, want(x, w.T, b))


def _logits_reference(y, tw, reduction):
    """The weighted cross-entropy from jsoftmax.cross_entropy's per-token losses."""

    def ref(z):
        opts = {k: v for k, v in OPTS.items() if k != "softcap"}
        per_token = jsoftmax.cross_entropy(z, y, reduction="none", **opts)
        omega = jnp.where(y != IGNORE, tw.astype(z.dtype), 0)
        weighted = jnp.where(omega == 0, 0, omega * per_token)
        if reduction == "none":
            return _weighted(weighted)
        total = jnp.sum(weighted)
        return total / jnp.sum(omega) if reduction == "mean" else total

    return ref


@pytest.mark.parametrize(
    ("reduction", "axis_type"),
    [("mean", AxisType.Explicit), ("mean", AxisType.Auto), ("sum", AxisType.Explicit),
     ("none", AxisType.Auto)],
    ids=["mean-explicit", "mean-auto", "sum-explicit", "none-auto"],
)  # fmt: skip
def test_vocab_parallel_cross_entropy_token_weights(reduction, axis_type):
    with jax.enable_x64(True):
        x, w, _, y, tw = _data()
        mesh = _mesh(axis_type)
        z = x @ w
        opts = {k: v for k, v in OPTS.items() if k != "softcap"}

        def vp(z):
            return _weighted(
                jsoftmax.vocab_parallel_cross_entropy(
                    z, y, mesh=mesh, axis_name="model", token_weights=tw, reduction=reduction,
                    **opts,
                )
            )  # fmt: skip

        got = jax.jit(jax.value_and_grad(vp))(_put(mesh, z, P("data", "model")))
        _close(got, jax.value_and_grad(_logits_reference(y, tw, reduction))(z))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_per_shard_cross_entropy_token_weights(reduction):
    with jax.enable_x64(True):
        x, w, _, y, mask = _data(mask=True)
        mesh = _mesh(AxisType.Auto)
        opts = {k: v for k, v in OPTS.items() if k != "softcap"}

        def body(z, y, m):
            return jsoftmax.vocab_parallel_cross_entropy(
                z, y, mesh=None, axis_name="model", data_axis_name="data", token_weights=m,
                reduction=reduction, **opts,
            )  # fmt: skip

        f = jax.shard_map(
            body, mesh=mesh, in_specs=(P("data", "model"), P("data"), P("data")),
            out_specs=P("data") if reduction == "none" else P(), check_vma=False,
        )  # fmt: skip
        got = jax.jit(jax.value_and_grad(lambda z: _weighted(f(z, y, mask))))(x @ w)
        _close(got, jax.value_and_grad(_logits_reference(y, mask, reduction))(x @ w))


def test_options_are_checked_on_the_global_arrays():
    with jax.enable_x64(True):
        x, w, _, y, tw = _data()
        mesh = _mesh()
        with pytest.raises(ValueError, match=r"token_weights must have labels' shape \(16,\); got"):
            jsoftmax.vocab_parallel_linear_cross_entropy(
                x, w, y, mesh=mesh, axis_name="model", ignore_index=IGNORE, token_weights=tw[:8]
            )
        with pytest.raises(
            TypeError, match=r"token_weights must be floating point .* got dtype int"
        ):
            jsoftmax.vocab_parallel_cross_entropy(
                x @ w, y, mesh=mesh, axis_name="model", ignore_index=IGNORE, token_weights=y
            )
        # w_layout="vd": V is w.shape[0]
        with pytest.raises(
            ValueError, match=r"V=47 of w \(47, 5\) must divide evenly over mesh axis"
        ):
            jsoftmax.vocab_parallel_linear_cross_entropy(
                x, w.T[:47], y, mesh=mesh, axis_name="model", w_layout="vd", ignore_index=IGNORE
            )
