"""linear_cross_entropy's Mosaic GPU block kernel (issue 22): the switch, interpret mode, lowering.

With ``implementation="mosaic_gpu"`` each block of the gradients-in-forward path hands its raw
logits to one Pallas kernel (``jsoftmax._impl.mosaic_gpu.linear_xent_block``) that forms the
statistics, the engine's per-token terms and ``z̄`` in one read and one write of the block;
the matmuls stay XLA's. The switch tests run on every leg; the interpret-mode and lowering tests
need a JAX with Mosaic GPU interpret mode (the second CI leg).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsoftmax
from jsoftmax._dispatch import record_implementations, use_implementation
from jsoftmax._impl import mosaic_gpu

needs_interpret = pytest.mark.skipif(
    mosaic_gpu.MISSING is not None, reason=f"no Mosaic GPU interpret mode: {mosaic_gpu.MISSING}"
)

N, D, V = 45, 16, 256  # 45 tokens in blocks of 16: the last block overlaps the one before


def _interpret():
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams(detect_races=True))


def _inputs(dtype=jnp.float32, v=V, w_layout="dv"):
    kx, kw, kb, ky, kt = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(kx, (N, D), jnp.float32).astype(dtype)
    w = (2 * jax.random.normal(kw, (D, v), jnp.float32) / np.sqrt(D)).astype(dtype)
    if w_layout == "vd":
        w = w.T
    b = jax.random.normal(kb, (v,), jnp.float32).astype(dtype)
    y = jax.random.randint(ky, (N,), 0, v)
    tw = jax.random.uniform(kt, (N,), jnp.float32, 0.0, 2.0)
    return x, w, b, y, tw


def _value_and_grads(impl, x, w, b, y, tw, *, bias=False, weights=False, **kw):
    """``value_and_grad`` w.r.t. ``x``, ``w`` (and ``bias``), jitted, on one implementation."""

    def loss(x, w, b):
        return jsoftmax.linear_cross_entropy(
            x,
            w,
            y,
            bias=b if bias else None,
            token_weights=tw if weights else None,
            chunk_size=(16, None),
            implementation=impl,
            **kw,
        )

    has_aux = kw.get("return_aux", False)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=has_aux))(x, w, b)


def _check(got, want, dtype):
    # float32 to round-off (the kernel and XLA sum in different orders); half precision
    # within the rounding of z̄ to the matmul dtype
    tol = {"rtol": 2e-5, "atol": 1e-6} if dtype == jnp.float32 else {"rtol": 2e-2, "atol": 2e-3}
    for g, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.dtype == w_.dtype
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w_, np.float32), **tol)


# --------------------------------------------------------------------------------------------
# The switch (every leg)
# --------------------------------------------------------------------------------------------


def test_none_and_xla_compile_the_program_of_a_call_without_the_argument():
    x, w, _, y, _ = _inputs()

    def program(**kw):
        f = jax.value_and_grad(lambda x, w: jsoftmax.linear_cross_entropy(x, w, y, **kw), (0, 1))
        return jax.jit(f).lower(x, w).as_text()

    plain = program()
    assert plain == program(implementation=None) == program(implementation="xla")
    assert "mosaic_gpu" not in plain


@pytest.mark.parametrize("bad", [1, "XLA", ("xla",)])
def test_bad_implementation_values_raise_naming_the_argument(bad):
    x, w, _, y, _ = _inputs()
    error = TypeError if not isinstance(bad, str) else ValueError
    with pytest.raises(error, match="linear_cross_entropy: implementation must be None or one of"):
        jsoftmax.linear_cross_entropy(x, w, y, implementation=bad)


@pytest.mark.skipif(
    mosaic_gpu.environment_problem() is None, reason="this machine can run the kernels"
)
def test_explicit_mosaic_gpu_without_a_gpu_or_interpret_mode_raises_why():
    x, w, _, y, _ = _inputs()
    with pytest.raises(ValueError, match=r"implementation='mosaic_gpu' \(requested\) cannot run"):
        jax.grad(lambda w: jsoftmax.linear_cross_entropy(x, w, y, implementation="mosaic_gpu"))(w)


# linear_cross_entropy — "implementation: ... calls the kernel cannot serve ... the recompute
# path (``reduction="none"``, ``gradients_in_forward=False`` or the automatic choice in a
# differentiated loop body) ... raise with an explicit ``"mosaic_gpu"`` and fall back to
# ``"xla"`` under :func:`jsoftmax.use_implementation`"
def test_the_recompute_path_is_refused_explicitly_and_falls_back_by_default():
    x, w, _, y, _ = _inputs()
    for kw in ({"reduction": "none"}, {"gradients_in_forward": False}):
        with pytest.raises(ValueError, match=f"{next(iter(kw))}=.* takes the recompute path"):
            jsoftmax.linear_cross_entropy(x, w, y, implementation="mosaic_gpu", **kw)
        with use_implementation("mosaic_gpu"), record_implementations() as calls:
            jsoftmax.linear_cross_entropy(x, w, y, **kw)
        ((call,),) = [calls]
        assert call.function == "linear_cross_entropy" and call.implementation == "xla"
        assert call.reason is not None and call.requested is None

    # the automatic choice in a differentiated scan body: the message says how to get the kernel
    def accumulated(w):
        def body(c, _):
            return c + jsoftmax.linear_cross_entropy(x, w, y, implementation="mosaic_gpu"), None

        return jax.lax.scan(body, 0.0, None, length=2)[0]

    with pytest.raises(ValueError, match=r"loop body .* \(pass gradients_in_forward=True"):
        jax.grad(accumulated)(w)


# linear_cross_entropy — "one device (no Explicit mesh)"
def test_inputs_on_an_explicit_mesh_are_refused_explicitly(monkeypatch):
    import jsoftmax._sharded

    x, w, _, y, _ = _inputs()
    # as if x were sharded over an Explicit mesh's "data" axis (a real one needs several
    # devices, which the 8-device workers test on the XLA path)
    mesh = jax.make_mesh((1,), ("data",))
    monkeypatch.setattr(jsoftmax._sharded, "explicit_placement", lambda *a, **k: (mesh, None))
    with pytest.raises(ValueError, match=r"on an Explicit mesh \(tokens sharded, mesh axes"):
        jsoftmax.linear_cross_entropy(x, w, y, implementation="mosaic_gpu")


# linear_cross_entropy — "one device (no Explicit mesh, no inputs varying over the axes of a
# ``shard_map`` with ``check_vma=True``)"
def test_inputs_varying_over_a_users_shard_map_axes_are_refused_explicitly():
    from jax.sharding import PartitionSpec as P

    x, w, _, y, _ = _inputs()
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))

    def step(x, w, y):
        return jsoftmax.linear_cross_entropy(x, w, y, implementation="mosaic_gpu")[None]

    f = jax.shard_map(step, mesh=mesh, in_specs=(P("data"), P(), P("data")), out_specs=P("data"))
    with pytest.raises(ValueError, match=r"manual mesh axes \('data',\)"):
        jax.jit(f)(x, w, y)


# --------------------------------------------------------------------------------------------
# The kernel in GPU interpret mode
# --------------------------------------------------------------------------------------------

OPTIONS = [
    {},
    {"reduction": "sum"},
    {"label_smoothing": 0.1, "z_loss": 1e-3},
    {"softcap": 3.0},
    {"ignore_index": 7, "weights": True},
    {"bias": True, "softcap": 5.0, "label_smoothing": 0.2},
    {"return_aux": True, "z_loss": 1e-2, "weights": True, "softcap": 4.0},
    {"w_layout": "vd"},
]


# every option set in float32; half precision on two of them keeps interpret mode short
CASES = [(o, jnp.float32) for o in OPTIONS] + [
    (o, dt) for dt in (jnp.bfloat16, jnp.float16) for o in (OPTIONS[0], OPTIONS[2])
]


@needs_interpret
@pytest.mark.parametrize(("options", "dtype"), CASES, ids=str)
def test_kernel_values_and_gradients_equal_xla(options, dtype):
    x, w, b, y, tw = _inputs(dtype, w_layout=options.get("w_layout", "dv"))
    if "ignore_index" in options:
        y = y.at[::5].set(options["ignore_index"])
    with _interpret(), record_implementations() as calls:
        got = _value_and_grads("mosaic_gpu", x, w, b, y, tw, **options)
    assert [c.implementation for c in calls] == ["mosaic_gpu"]
    want = _value_and_grads("xla", x, w, b, y, tw, **options)
    _check(got, want, dtype)


@needs_interpret
@pytest.mark.parametrize("chunk", [N, 1, 7], ids=["one_block", "one_token", "ragged_7"])
def test_one_block_of_every_token_and_many_short_blocks(chunk):
    x, w, _, y, _ = _inputs()

    def vg(impl):
        def loss(x, w):
            kw = {"chunk_size": (chunk, None), "implementation": impl}
            return jsoftmax.linear_cross_entropy(x, w, y, **kw)

        return jax.jit(jax.value_and_grad(loss, (0, 1)))(x, w)

    with _interpret():
        got = vg("mosaic_gpu")
    _check(got, vg("xla"), jnp.float32)


@needs_interpret
def test_vmap_over_sequences_and_grad_of_a_scan_with_the_kernel():
    # the compositions a training program makes: a loss per sequence under vmap, and
    # micro-batches under a differentiated scan (gradients_in_forward=True: the kernel serves
    # the gradients-in-forward path only)
    x, w, _, y, _ = _inputs()
    xs, ys = x[:40].reshape(2, 20, D), y[:40].reshape(2, 20)

    def per_sequence(impl):
        loss = lambda x, w, y: jsoftmax.linear_cross_entropy(x, w, y, implementation=impl)  # noqa: E731
        return jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1)), (0, None, 0)))(xs, w, ys)

    def accumulated(impl):
        def total(w):
            def body(c, xy):
                step = jsoftmax.linear_cross_entropy(
                    xy[0], w, xy[1], gradients_in_forward=True, implementation=impl
                )
                return c + step, None

            return jax.lax.scan(body, jnp.zeros(()), (xs, ys))[0]

        return jax.jit(jax.value_and_grad(total))(w)

    with _interpret():
        got = per_sequence("mosaic_gpu"), accumulated("mosaic_gpu")
    _check(got, (per_sequence("xla"), accumulated("xla")), jnp.float32)


# linear_cross_entropy — "Out-of-range labels (not in ``[0, V)`` and not ``ignore_index``) ...
# under ``jit`` they give a ``NaN`` loss for that token (and ``NaN`` gradients), never a finite
# wrong number" (on either implementation)
@needs_interpret
def test_out_of_range_labels_under_jit_give_nan_on_the_kernel_as_on_xla():
    x, w, _, y, _ = _inputs()
    y = y.at[3].set(V + 5).at[9].set(-2)
    for impl in ("mosaic_gpu", "xla"):
        with _interpret():
            loss, (dx, dw) = jax.jit(
                jax.value_and_grad(
                    lambda x, w, y, impl=impl: jsoftmax.linear_cross_entropy(
                        x, w, y, implementation=impl
                    ),
                    (0, 1),
                )
            )(x, w, y)
        assert np.isnan(loss) and np.isnan(dw).all()
        assert np.isnan(dx[3]).all() and np.isnan(dx[9]).all()
    # a 64-bit label past int32 (2**32 + 1 would wrap onto class 1 in the kernel's int32)
    with jax.enable_x64(True), _interpret():
        wide = jnp.asarray(y, jnp.int64).at[3].set(2**32 + 1).at[9].set(5)

        def loss_of(x, w, y):
            return jsoftmax.linear_cross_entropy(x, w, y, implementation="mosaic_gpu")

        loss, (dx, _) = jax.jit(jax.value_and_grad(loss_of, (0, 1)))(x, w, wide)
    assert np.isnan(loss) and np.isnan(dx[3]).all() and np.isfinite(dx[4]).all()


@needs_interpret
def test_large_logit_offsets_keep_the_shift():
    # a common offset of 3e4 through the bias: the kernel's running max keeps p exact
    x, w, b, y, _ = _inputs()
    b = b + 3e4
    with _interpret():
        got = _value_and_grads("mosaic_gpu", x, w, b, y, None, bias=True)
    want = _value_and_grads("xla", x, w, b, y, None, bias=True)
    _check(got, want, jnp.float32)


@needs_interpret
def test_kernel_refuses_what_it_does_not_cover():
    x, w, _, y, _ = _inputs(v=200)
    with _interpret(), pytest.raises(ValueError, match="multiple of 128"):
        jax.grad(lambda w: jsoftmax.linear_cross_entropy(x, w, y, implementation="mosaic_gpu"))(w)
    assert "dtype float64" in mosaic_gpu.rows_problem((16, 128), np.float64)


# linear_cross_entropy — "A float32 row of ``V`` logits beyond the kernel's shared-memory budget
# (``V > 49152``) is split into pieces: two kernels per block, two reads of the logits and one
# write"
def test_rows_of_logits_beyond_the_budget_are_split():
    assert mosaic_gpu.pieces(49152, 4, 1) == 1
    assert mosaic_gpu.pieces(49152 + 128, 4, 1) == 5  # 128 · 385 = 128 · 5 · 7 · 11
    assert mosaic_gpu.pieces(65536, 4, 1) == 2
    assert mosaic_gpu.pieces(128256, 4, 1) == 3


SPLIT_CASES = [(o, jnp.float32) for o in OPTIONS] + [(OPTIONS[2], jnp.bfloat16)]


@needs_interpret
@pytest.mark.parametrize(("options", "dtype"), SPLIT_CASES, ids=str)
def test_split_rows_of_logits_equal_xla(options, dtype, layouts):
    # 512 classes in a 1 KiB budget: each float32 row of logits in 2 pieces of 256; labels
    # in both pieces (and ignored ones with ignore_index)
    x, w, b, y, tw = _inputs(dtype, v=512, w_layout=options.get("w_layout", "dv"))
    if "ignore_index" in options:
        y = y.at[::5].set(options["ignore_index"])
    with _interpret(), mosaic_gpu.staging_budget(1024):
        got = _value_and_grads("mosaic_gpu", x, w, b, y, tw, **options)
    assert layouts == [("jsoftmax_linear_xent_pieces", True), ("jsoftmax_linear_xent", True)]
    want = _value_and_grads("xla", x, w, b, y, tw, **options)
    _check(got, want, dtype)


@needs_interpret
def test_split_rows_of_logits_out_of_range_labels_give_nan():
    # labels past V and below 0 give NaN in the split layout as for whole rows (the engine's
    # poison, evaluated on each piece's copy of the row's numbers); 300 is in the second piece
    x, w, _, y, _ = _inputs(v=512)
    y = y.at[3].set(512 + 256).at[9].set(-2).at[10].set(300)
    with _interpret(), mosaic_gpu.staging_budget(1024):
        loss, (dx, dw) = jax.jit(
            jax.value_and_grad(
                lambda x, w, y: jsoftmax.linear_cross_entropy(
                    x, w, y, reduction="sum", implementation="mosaic_gpu"
                ),
                (0, 1),
            )
        )(x, w, y)  # traced labels: not checked, NaN for those out of range
    dx = np.asarray(dx)
    assert np.isnan(loss) and np.isnan(dw).all()
    assert np.isnan(dx[[3, 9]]).all() and np.isfinite(dx[[0, 10]]).all()


# --------------------------------------------------------------------------------------------
# Lowering for CUDA without a GPU: the custom call is in the module
# --------------------------------------------------------------------------------------------


@needs_interpret
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lowering_for_cuda_has_one_mosaic_gpu_call_in_the_block_loop(dtype):
    x, w, _, y, tw = _inputs(dtype)

    def loss(x, w):
        return jsoftmax.linear_cross_entropy(
            x, w, y, token_weights=tw, softcap=3.0, implementation="mosaic_gpu"
        )

    with mosaic_gpu.assume_cuda_target():
        grad = jax.jit(jax.value_and_grad(loss, (0, 1)))
        text = grad.trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    # one kernel in the body of the block loop; the undifferentiated loss stays XLA's
    # (linear_cross_entropy — "An undifferentiated call computes the loss on the XLA path")
    assert text.count("stablehlo.custom_call @mosaic_gpu_v2") == 1
    # split rows (512 classes in 1 KiB): the pieces' statistics, then z̄ (two kernels in the
    # loop body)
    x, w, _, y, tw = _inputs(dtype, v=512)
    with mosaic_gpu.assume_cuda_target(), mosaic_gpu.staging_budget(1024):
        split = jax.jit(jax.value_and_grad(loss, (0, 1)))
        text = split.trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("stablehlo.custom_call @mosaic_gpu_v2") == 2
    with mosaic_gpu.assume_cuda_target():
        plain = jax.jit(loss).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    assert "mosaic_gpu" not in plain


# --------------------------------------------------------------------------------------------
# The GPU benchmark script (benchmarks/gpu.sh runs it on a device), tested here in interpret mode
# --------------------------------------------------------------------------------------------


@needs_interpret
def test_gpu_benchmark_script_times_every_program_and_reports_refused_shapes(
    tmp_path, benchmark_script
):
    import json

    bench = benchmark_script("linear_xent_gpu_bench")
    out = tmp_path / "rows.json"
    args = [str(out), "--n", "40", "--d", "16", "--vocab", "256,200", "--dtypes", "float32"]
    rows = bench.main([*args, "--reps", "1", "--interpret"])
    assert json.loads(out.read_text()) == rows
    served, refused = rows
    assert served["mosaic_gpu pieces"] == 1 and "mosaic_gpu pieces" not in refused
    for name in ("naive", "xla", "mosaic_gpu", "matmuls"):
        assert served[f"{name} seconds"] > 0 and served[f"{name} temp MiB"] >= 0
    assert served["mosaic_gpu / xla"] > 0 and served["xla / naive"] > 0
    # strict mode: 200 classes is no kernel shape, reported with the reason, not timed as XLA
    assert "multiple of 128" in refused["mosaic_gpu error"]
    assert "mosaic_gpu seconds" not in refused and refused["xla seconds"] > 0
