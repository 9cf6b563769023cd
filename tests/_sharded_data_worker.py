"""Data x vocabulary-parallel tests that need 8 devices; run by tests/test_sharded_data.py.

Issue 20 items 1-2: the vocabulary-parallel losses split the tokens over the mesh's other axes
(each device forms logits only for its own tokens over its own vocabulary shard), the
per-shard form runs inside the caller's ``shard_map``, and ``linear_cross_entropy`` on an
``Explicit`` mesh with sharded tokens or vocabulary takes the same path. Collected in the main
process (one device), this file skips itself.
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
        "needs 8 (faked CPU) devices; run via tests/test_sharded_data.py", allow_module_level=True
    )

N, D, V = 16, 5, 48
IGNORE = -100
OPTS = {"ignore_index": IGNORE, "label_smoothing": 0.1, "z_loss": 1e-2}
CONTEXTS = ["eager", "jit", "set_mesh", "set_mesh+jit"]
AXIS_TYPES = pytest.mark.parametrize(
    "axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"]
)


def _mesh(axis_type=AxisType.Explicit, shape=(2, 4), names=("data", "model")):
    return jax.make_mesh(shape, names, (axis_type,) * len(shape))


def _data(dtype=jnp.float64):
    kx, kw, kb, ky = jax.random.split(jax.random.key(7), 4)
    x = jax.random.normal(kx, (N, D), dtype)
    w = jax.random.normal(kw, (D, V), dtype)
    b = jax.random.normal(kb, (V,), dtype)
    y = jax.random.randint(ky, (N,), 0, V).at[jnp.array([1, 10])].set(IGNORE)
    return x, w, b, y


def _close(a, b, rtol=1e-10, atol=1e-13):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def _spec(a):
    """``a``'s PartitionSpec padded with ``None`` to its rank (``P('d')`` == ``P('d', None)``)."""
    spec = tuple(a.sharding.spec)
    return spec + (None,) * (a.ndim - len(spec))


def _put(mesh, a, spec):
    return jax.device_put(a, NamedSharding(mesh, spec))


def _in_context(context, mesh, fn, *args):
    if context == "eager":
        return fn(*args)
    if context == "jit":
        return jax.jit(fn)(*args)
    with jax.set_mesh(mesh):
        return jax.jit(fn)(*args) if context == "set_mesh+jit" else fn(*args)


def _weighted(out):
    # a non-uniform cotangent for "none", so every per-token loss's gradient is checked
    return jnp.sum(out * jnp.cos(jnp.arange(out.size)).reshape(out.shape)) if out.ndim else out


def _losses(name, y, reduction="mean", **extra):
    """(data x vocabulary-parallel loss on (2, 4), the single-device reference, argnums)."""
    if name == "logits":

        def vp(z):
            return _weighted(
                jsoftmax.vocab_parallel_cross_entropy(
                    z, y, mesh=extra["mesh"], axis_name="model", reduction=reduction, **OPTS
                )
            )

        def ref(z):
            return _weighted(jsoftmax.cross_entropy(z, y, reduction=reduction, **OPTS))

        return vp, ref, 0
    opts = {**OPTS, "softcap": 3.0, "reduction": reduction}
    gif = extra.get("gradients_in_forward")

    def vpl(x, w, b):
        return _weighted(
            jsoftmax.vocab_parallel_linear_cross_entropy(
                x, w, y, bias=b, mesh=extra["mesh"], axis_name="model", chunk_size=(3, 5),
                gradients_in_forward=gif, **opts,
            )
        )  # fmt: skip

    def refl(x, w, b):
        return _weighted(jsoftmax.linear_cross_entropy(x, w, y, bias=b, **opts))

    return vpl, refl, (0, 1, 2)


def _args(name, mesh, x, w, b):
    if name == "logits":
        return (_put(mesh, x @ w, P("data", "model")),), (x @ w,)
    return (_put(mesh, x, P("data")), _put(mesh, w, P(None, "model")), _put(mesh, b, P("model"))), (
        x,
        w,
        b,
    )


@pytest.mark.parametrize("context", CONTEXTS)
@AXIS_TYPES
@pytest.mark.parametrize("name", ["logits", "linear"])
def test_data_vocab_parallel_matches_single_device(name, axis_type, context):
    with jax.enable_x64(True):
        x, w, b, y = _data()
        mesh = _mesh(axis_type)
        vp, ref, argnums = _losses(name, y, mesh=mesh)
        args, ref_args = _args(name, mesh, x, w, b)
        got = _in_context(context, mesh, jax.value_and_grad(vp, argnums), *args)
        _close(got, jax.jit(jax.value_and_grad(ref, argnums))(*ref_args))
        grads = got[1] if name == "linear" else (got[1],)
        # each gradient keeps its input's sharding: dx / dz over the tokens, dw over the vocab
        for g, a in zip(grads, args, strict=True):
            assert _spec(g) == _spec(a), (g.sharding, a.sharding)


@pytest.mark.parametrize(
    ("name", "reduction", "gif"),
    [
        ("logits", "sum", None),
        ("logits", "none", None),
        ("linear", "mean", True),
        ("linear", "mean", False),
        ("linear", "sum", True),
        ("linear", "sum", False),
        ("linear", "none", None),
    ],
)
def test_every_reduction_and_gradient_path(name, reduction, gif):
    with jax.enable_x64(True):
        x, w, b, y = _data()
        mesh = _mesh()
        vp, ref, argnums = _losses(name, y, reduction, mesh=mesh, gradients_in_forward=gif)
        args, ref_args = _args(name, mesh, x, w, b)
        got = jax.jit(jax.value_and_grad(vp, argnums))(*args)
        _close(got, jax.jit(jax.value_and_grad(ref, argnums))(*ref_args))


def test_none_is_sharded_over_the_token_axes_and_keeps_the_token_shape():
    x, w, _, y = _data(jnp.float32)
    mesh = _mesh()
    x3, y3 = x.reshape(4, 4, D), y.reshape(4, 4)
    with jax.set_mesh(mesh):
        got = jsoftmax.vocab_parallel_linear_cross_entropy(
            _put(mesh, x3, P("data")), w, y3, mesh=mesh, axis_name="model", reduction="none",
            ignore_index=IGNORE,
        )  # fmt: skip
    assert got.shape == (4, 4) and _spec(got) == ("data", None)
    want = jsoftmax.linear_cross_entropy(x3, w, y3, reduction="none", ignore_index=IGNORE)
    _close(got, want, rtol=1e-5, atol=1e-6)


def test_grad_of_grad_on_a_data_vocab_mesh():
    with jax.enable_x64(True):
        x, w, _, y = _data()
        mesh = _mesh(AxisType.Auto)

        def gg(loss):
            return jax.grad(lambda x: jnp.sum(jax.grad(loss)(x) ** 2))

        def vp(x):
            return jsoftmax.vocab_parallel_linear_cross_entropy(
                x, w, y, mesh=mesh, axis_name="model", chunk_size=4, **OPTS
            )

        def ref(x):
            return jsoftmax.linear_cross_entropy(x, w, y, **OPTS)

        _close(jax.jit(gg(vp))(x), jax.jit(gg(ref))(x), rtol=1e-9)


def test_tokens_not_divisible_by_an_axis_leave_it_replicated():
    # 12 tokens: "data" (2) divides them, "pipe" (2) then needs 4 | 12 -> used, "more" (2)
    # would need 8 | 12 -> replicates the work instead
    with jax.enable_x64(True):
        x, w, _, y = _data()
        x, y = x[:12], y[:12]
        mesh = jax.make_mesh((2, 2, 2), ("data", "pipe", "more"))
        z = x @ w[:, :24]
        y = jnp.where(y == IGNORE, y, y % 24)
        got = jax.value_and_grad(
            lambda z: jsoftmax.vocab_parallel_cross_entropy(
                z, y, mesh=mesh, axis_name="more", reduction="sum", **OPTS
            )
        )(z)
        _close(got, jax.value_and_grad(lambda z: jsoftmax.cross_entropy(z, y, reduction="sum",
                                                                         **OPTS))(z))  # fmt: skip


@pytest.mark.parametrize(
    ("data_axis_name", "match"),
    [
        ("model", "data_axis_name must name mesh axes other than axis_name='model'"),
        ("seq", "data_axis_name must name mesh axes other than"),
        (3, "data_axis_name must be a mesh axis name, a tuple of them or None; got 3"),
    ],
)
def test_bad_data_axis_name(data_axis_name, match):
    x, w, _, y = _data(jnp.float32)
    with pytest.raises((TypeError, ValueError), match=match):
        jsoftmax.vocab_parallel_linear_cross_entropy(
            x, w, y, mesh=_mesh(), axis_name="model", data_axis_name=data_axis_name,
            ignore_index=IGNORE,
        )  # fmt: skip


def test_tokens_must_divide_over_the_given_data_axes():
    x, w, _, y = _data(jnp.float32)
    with pytest.raises(ValueError, match=r"N=15 tokens must divide evenly over data_axis_name="):
        jsoftmax.vocab_parallel_cross_entropy(
            x[:15] @ w, y[:15], mesh=_mesh(), axis_name="model", data_axis_name="data",
            ignore_index=IGNORE,
        )  # fmt: skip


# ---- linear_cross_entropy on an Explicit mesh (issue 20 item 1, /tmp/r201.py) -------------
# Regression: with x and labels sharded over "data" (or w over the vocabulary) on a
# jax.make_mesh mesh, linear_cross_entropy raised ShardingTypeError ("Use .at[...].get(
# out_sharding=)" for the label-logit gather; "dynamic_slice on sharded dims" in its grad).
LAYOUTS = {
    "data8": ((8,), ("data",), P("data"), P()),
    "data_w_replicated": ((2, 4), ("data", "model"), P("data"), P()),
    "data_vocab": ((2, 4), ("data", "model"), P("data"), P(None, "model")),
    "vocab_only": ((2, 4), ("data", "model"), P(), P(None, "model")),
}


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_linear_cross_entropy_on_an_explicit_mesh(layout, context):
    with jax.enable_x64(True):
        x, w, _, y = _data()
        shape, names, x_spec, w_spec = LAYOUTS[layout]
        mesh = jax.make_mesh(shape, names)
        opts = {**OPTS, "softcap": 2.0}
        args = (_put(mesh, x, x_spec), _put(mesh, w, w_spec))
        y_s = _put(mesh, y, P(*x_spec))

        def loss(x, w, y):
            return jsoftmax.linear_cross_entropy(x, w, y, chunk_size=(3, 7), **opts)

        got = _in_context(context, mesh, jax.value_and_grad(loss, (0, 1)), *args, y_s)
        _close(got, jax.value_and_grad(loss, (0, 1))(x, w, y))
        assert _spec(got[1][0]) == _spec(args[0])
        assert _spec(got[1][1]) == _spec(args[1])


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_linear_cross_entropy_explicit_reductions(reduction):
    with jax.enable_x64(True):
        x, w, b, y = _data()
        mesh = jax.make_mesh((2, 4), ("data", "model"))

        def loss(x, w, b):
            out = jsoftmax.linear_cross_entropy(x, w, y_s, bias=b, reduction=reduction, **OPTS)
            return _weighted(out)

        def ref(x, w, b):
            out = jsoftmax.linear_cross_entropy(x, w, y, bias=b, reduction=reduction, **OPTS)
            return _weighted(out)

        with jax.set_mesh(mesh):
            y_s = _put(mesh, y, P("data"))
            args = (_put(mesh, x, P("data")), _put(mesh, w, P(None, "model")), b)
            got = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(*args)
        _close(got, jax.jit(jax.value_and_grad(ref, (0, 1, 2)))(x, w, b))


# ---- no redundant head work: HLO and per-device FLOPs (issue 20 item 2) --------------------
BIG = (256, 64, 1024)  # N, D, V: the head's matmuls dominate the FLOPs


def _compiled(f, *args):
    return jax.jit(f).lower(*args).compile()


def _flops(compiled):
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


@AXIS_TYPES
@pytest.mark.parametrize("name", ["logits", "linear"])
def test_no_all_gather_and_an_eighth_of_the_flops_per_device(name, axis_type):
    n, d, v = BIG
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, d))
    w = jax.random.normal(kw, (d, v))
    y = jax.random.randint(ky, (n,), 0, v)
    mesh = _mesh(axis_type)
    x_s, w_s, y_s = (
        _put(mesh, x, P("data")),
        _put(mesh, w, P(None, "model")),
        _put(mesh, y, P("data")),
    )

    if name == "linear":

        def loss(x, w, y, **kw):
            return jsoftmax.vocab_parallel_linear_cross_entropy(
                x, w, y, mesh=mesh, axis_name="model", **kw
            )

        def single(x, w, y):
            return jsoftmax.linear_cross_entropy(x, w, y)

        args, one = (x_s, w_s, y_s), (x, w, y)
        argnums = (0, 1)
    else:

        def loss(z, y, **kw):
            return jsoftmax.vocab_parallel_cross_entropy(z, y, mesh=mesh, axis_name="model", **kw)

        def single(z, y):
            return jsoftmax.cross_entropy(z, y)

        args, one = (_put(mesh, x @ w, P("data", "model")), y_s), (x @ w, y)
        argnums = 0
    compiled = _compiled(jax.value_and_grad(loss, argnums), *args)
    hlo = compiled.as_text()
    # nothing of [N, D] x, [N] labels or [N, V] logits (nor anything else) is gathered
    assert "all-gather" not in hlo, [line for line in hlo.splitlines() if "all-gather" in line]
    per_device = _flops(compiled)
    single_device = _flops(_compiled(jax.value_and_grad(single, argnums), *one))
    # tokens over "data" as well as classes over "model": 1/8 of the work on each device
    assert per_device <= single_device / 8 * 1.1, (per_device, single_device)
    # against the tokens replicated over "data" (the behaviour before): twice as much
    replicated = _flops(
        _compiled(jax.value_and_grad(functools.partial(loss, data_axis_name=()), argnums), *args)
    )
    assert per_device <= replicated * 0.55, (per_device, replicated)


# ---- the per-shard form, inside the caller's shard_map (Megatron style) --------------------
def _user_shard_map(mesh, fn, in_specs, check_vma):
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=check_vma)


@pytest.mark.parametrize("check_vma", [True, False], ids=["check_vma", "no_check_vma"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_per_shard_cross_entropy_inside_a_users_shard_map(reduction, check_vma):
    # promise (Returns, mesh=None): this device's per-token losses, or the reduction over
    # data_axis_name
    with jax.enable_x64(True):
        x, w, _, y = _data()
        mesh = _mesh(AxisType.Auto)

        def body(z, y):
            return jsoftmax.vocab_parallel_cross_entropy(
                z, y, mesh=None, axis_name="model", data_axis_name="data",
                reduction=reduction, **OPTS,
            )  # fmt: skip

        out_spec = P("data") if reduction == "none" else P()
        f = jax.shard_map(
            body, mesh=mesh, in_specs=(P("data", "model"), P("data")), out_specs=out_spec,
            check_vma=check_vma,
        )  # fmt: skip
        got = jax.jit(jax.value_and_grad(lambda z, y: _weighted(f(z, y))))(x @ w, y)
        want = jax.value_and_grad(
            lambda z: _weighted(jsoftmax.cross_entropy(z, y, reduction=reduction, **OPTS))
        )(x @ w)
        _close(got, want)


@pytest.mark.parametrize("gif", [None, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_per_shard_linear_inside_a_users_unchecked_shard_map(reduction, gif):
    with jax.enable_x64(True):
        x, w, b, y = _data()
        mesh = _mesh(AxisType.Auto)
        opts = {**OPTS, "softcap": 3.0, "reduction": reduction}

        def body(x, w, b, y):
            return jsoftmax.vocab_parallel_linear_cross_entropy(
                x, w, y, bias=b, mesh=None, axis_name="model", data_axis_name="data",
                chunk_size=(3, 5), gradients_in_forward=gif, **opts,
            )  # fmt: skip

        specs = (P("data"), P(None, "model"), P("model"), P("data"))
        f = _user_shard_map(mesh, body, specs, check_vma=False)
        got = jax.jit(jax.value_and_grad(f, (0, 1, 2)))(x, w, b, y)
        want = jax.value_and_grad(
            lambda x, w, b: jsoftmax.linear_cross_entropy(x, w, y, bias=b, **opts), (0, 1, 2)
        )(x, w, b)
        _close(got, want)


@pytest.mark.parametrize("gif", [True, False], ids=["fused", "recompute"])
def test_per_shard_linear_with_checked_types_and_sharded_tokens(gif):
    # issue 20, item 2: inside the caller's shard_map(check_vma=True) with the tokens split over
    # "data" (this raised NotImplementedError: the kernel's carries varied over "model" only)
    with jax.enable_x64(True):
        x, w, b, y = _data()
        mesh = _mesh(AxisType.Auto)

        def body(x, w, b, y):
            return jsoftmax.vocab_parallel_linear_cross_entropy(
                x, w, y, bias=b, mesh=None, axis_name="model", data_axis_name="data",
                chunk_size=(3, 5), gradients_in_forward=gif, **OPTS,
            )  # fmt: skip

        specs = (P("data"), P(None, "model"), P("model"), P("data"))
        f = _user_shard_map(mesh, body, specs, check_vma=True)
        got = jax.jit(jax.value_and_grad(f, (0, 1, 2)))(x, w, b, y)
        want = jax.value_and_grad(
            lambda x, w, b: jsoftmax.linear_cross_entropy(x, w, y, bias=b, **OPTS), (0, 1, 2)
        )(x, w, b)
        _close(got, want)


@pytest.mark.parametrize("check_vma", [True, False], ids=["check_vma", "no_check_vma"])
def test_per_shard_linear_over_the_vocabulary_axis_alone(check_vma):
    # promise (Notes): with the tokens replicated (a shard_map over axis_name alone) either
    # check_vma setting works
    with jax.enable_x64(True):
        x, w, _, y = _data()
        mesh = jax.make_mesh((4,), ("model",), (AxisType.Auto,), devices=jax.devices()[:4])

        def body(x, w, y):
            return jsoftmax.vocab_parallel_linear_cross_entropy(
                x, w, y, mesh=None, axis_name="model", **OPTS
            )

        f = _user_shard_map(mesh, body, (P(), P(None, "model"), P()), check_vma=check_vma)
        got = jax.jit(jax.value_and_grad(f, (0, 1)))(x, w, y)
        want = jax.value_and_grad(
            lambda x, w: jsoftmax.linear_cross_entropy(x, w, y, **OPTS), (0, 1)
        )(x, w)
        _close(got, want)


@pytest.mark.parametrize("name", ["logits", "linear"])
def test_eager_hessian_on_a_data_vocab_mesh(name):
    # forward-over-reverse through the two nested shard_maps, eagerly on an Explicit mesh
    with jax.enable_x64(True):
        mesh = _mesh()
        z = jax.random.normal(jax.random.key(3), (4, 8), jnp.float64)
        x, w = z[:, :3], jax.random.normal(jax.random.key(4), (3, 8), jnp.float64)
        y = jnp.array([1, 6, 0, 3])
        if name == "logits":
            got = jax.hessian(
                lambda z: jsoftmax.vocab_parallel_cross_entropy(
                    z, y, mesh=mesh, axis_name="model", label_smoothing=0.1
                )
            )(_put(mesh, z, P("data", "model")))
            want = jax.hessian(lambda z: jsoftmax.cross_entropy(z, y, label_smoothing=0.1))(z)
        else:
            got = jax.hessian(
                lambda w: jsoftmax.vocab_parallel_linear_cross_entropy(
                    x, w, y, mesh=mesh, axis_name="model", z_loss=0.1
                )
            )(w)
            want = jax.hessian(lambda w: jsoftmax.cross_entropy(x @ w, y, z_loss=0.1))(w)
        _close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_half_precision_on_a_data_vocab_mesh(dtype):
    # half-precision inputs: float32 loss, gradients in the inputs' dtype, as on one device
    x, w, _, y = _data(jnp.float32)
    x, w = x.astype(dtype), w.astype(dtype)
    mesh = _mesh()

    def vp(x, w):
        return jsoftmax.vocab_parallel_linear_cross_entropy(
            x, w, y, mesh=mesh, axis_name="model", **OPTS
        )

    got = jax.jit(jax.value_and_grad(vp, (0, 1)))(_put(mesh, x, P("data")), w)
    want = jax.value_and_grad(lambda x, w: jsoftmax.linear_cross_entropy(x, w, y, **OPTS), (0, 1))(
        x, w
    )
    assert got[0].dtype == jnp.float32 and got[1][0].dtype == got[1][1].dtype == dtype
    _close(got[0], want[0], rtol=1e-5, atol=1e-6)
    # one rounding of each gradient to the half-precision dtype apart
    _close([g.astype(jnp.float32) for g in got[1]], [g.astype(jnp.float32) for g in want[1]],
           rtol=2e-2, atol=2e-3)  # fmt: skip


# linear_cross_entropy — "Inside the caller's own ``shard_map`` ... each device's call is the
# loss of its own tokens ..., and the gradient of the replicated ``w`` (and ``bias``) is the
# sum of the devices' shares, as JAX gives it for ``x @ w``"
@pytest.mark.parametrize(
    ("check_vma", "gif", "reduction"),
    [(True, None, "mean"), (True, False, "none"), (True, None, "sum"), (False, None, "mean")],
    ids=str,
)
def test_plain_linear_loss_inside_a_users_data_parallel_shard_map(check_vma, gif, reduction):
    import optax

    with jax.enable_x64(True):
        x, w, b, y = _data()
        tw = jnp.linspace(0.5, 1.5, N)
        mesh = _mesh(AxisType.Auto, (8,), ("data",))

        def ours(x, w, b, y, tw):
            return jsoftmax.linear_cross_entropy(
                x, w, y, bias=b, token_weights=tw, ignore_index=IGNORE, reduction=reduction,
                gradients_in_forward=gif,
            )  # fmt: skip

        def naive(x, w, b, y, tw):
            valid = y != IGNORE
            z = x @ w + b[None]
            per = optax.softmax_cross_entropy_with_integer_labels(z, jnp.where(valid, y, 0))
            omega = jnp.where(valid, tw, 0)
            per = per * omega
            if reduction == "none":
                return per
            return jnp.sum(per) / (jnp.sum(omega) if reduction == "mean" else 1)

        def run(loss):
            def step(x, w, b, y, tw):
                scalar = lambda x, w, b: _weighted(loss(x, w, b, y, tw))  # noqa: E731
                value, grads = jax.value_and_grad(scalar, (0, 1, 2))(x, w, b)
                return value[None], grads

            specs = (P("data"), P(), P(), P("data"), P("data"))
            out = (P("data"), (P("data"), P(), P()))
            f = jax.shard_map(step, mesh=mesh, in_specs=specs, out_specs=out, check_vma=check_vma)
            return jax.jit(f)(x, w, b, y, tw)

        _close(run(ours), run(naive), rtol=1e-10, atol=1e-12)
