"""The implementation switch and the Mosaic GPU kernels (issue 21).

The switch tests run everywhere. The kernel tests run the kernels in GPU interpret mode on CPU
(with the race detector on) and compare values and gradients with ``implementation="xla"``;
the lowering tests lower for CUDA without a GPU and look for the Mosaic GPU custom call, so a
fallback to XLA cannot pass for a kernel. Both are skipped on a JAX without Mosaic GPU
interpret mode (jax 0.10.2 has the backend but not the interpreter).
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

FUNCS = {
    "softmax": jsoftmax.softmax,
    "log_softmax": jsoftmax.log_softmax,
    "logsumexp": jsoftmax.logsumexp,
}


def _interpret():
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams(detect_races=True))


def _ce(implementation, **kw):
    def f(z, y):
        return jsoftmax.cross_entropy(z, y, implementation=implementation, **kw)

    return f


# --------------------------------------------------------------------------------------------
# The switch (every leg)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*FUNCS, "cross_entropy"])
def test_none_and_xla_compile_the_program_of_a_call_without_the_argument(name):
    x = jnp.linspace(-3.0, 3.0, 4 * 256).reshape(4, 256)
    y = jnp.array([0, 3, 255, 7])
    if name == "cross_entropy":
        lowered = [
            jax.jit(lambda z, **kw: jsoftmax.cross_entropy(z, y, **kw), static_argnames=())
            .lower(x)
            .as_text()
        ]
        for impl in (None, "xla"):
            f = jax.jit(lambda z, impl=impl: jsoftmax.cross_entropy(z, y, implementation=impl))
            lowered.append(f.lower(x).as_text())
        g = jax.jit(jax.grad(lambda z: jsoftmax.cross_entropy(z, y)))
        gx = jax.jit(jax.grad(lambda z: jsoftmax.cross_entropy(z, y, implementation="xla")))
    else:
        f = FUNCS[name]
        lowered = [jax.jit(lambda z: f(z)).lower(x).as_text()]
        for impl in (None, "xla"):
            lowered.append(
                jax.jit(lambda z, impl=impl: f(z, implementation=impl)).lower(x).as_text()
            )
        g = jax.jit(jax.grad(lambda z: jnp.sum(jnp.sin(f(z)))))
        gx = jax.jit(jax.grad(lambda z: jnp.sum(jnp.sin(f(z, implementation="xla")))))
    assert lowered[0] == lowered[1] == lowered[2]
    assert "mosaic_gpu" not in lowered[0]
    assert g.lower(x).as_text() == gx.lower(x).as_text()


@pytest.mark.parametrize("bad", [1, "XLA", "triton", ("xla",)])
def test_bad_implementation_values_raise_naming_the_argument(bad):
    error = TypeError if not isinstance(bad, str) else ValueError
    with pytest.raises(error, match="softmax: implementation must be None or one of"):
        jsoftmax.softmax(jnp.zeros(128), implementation=bad)
    with pytest.raises(error, match="cross_entropy: implementation must be"):
        jsoftmax.cross_entropy(jnp.zeros((2, 128)), jnp.zeros(2, int), implementation=bad)


@pytest.mark.skipif(
    mosaic_gpu.environment_problem() is None, reason="this machine can run the kernels"
)
@pytest.mark.parametrize("name", [*FUNCS, "cross_entropy"])
def test_explicit_mosaic_gpu_without_a_gpu_or_interpret_mode_raises_why(name):
    x = jnp.zeros((2, 128))
    f = _ce("mosaic_gpu") if name == "cross_entropy" else FUNCS[name]
    args = (x, jnp.zeros(2, int)) if name == "cross_entropy" else (x,)
    kw = {} if name == "cross_entropy" else {"implementation": "mosaic_gpu"}
    with pytest.raises(ValueError, match=r"implementation='mosaic_gpu' \(requested\) cannot run"):
        f(*args, **kw)


def test_default_mosaic_gpu_falls_back_and_records_why_unless_strict():
    x = jnp.zeros((2, 3))  # 3 classes: never a kernel shape, on any machine
    with use_implementation("mosaic_gpu"), record_implementations() as calls:
        y = jsoftmax.softmax(x)
    np.testing.assert_array_equal(y, jsoftmax.softmax(x, implementation="xla"))
    assert [(c.function, c.implementation, c.requested) for c in calls] == [
        ("softmax", "xla", None)
    ]
    assert calls[0].reason is not None
    with use_implementation("mosaic_gpu", strict=True):
        with pytest.raises(ValueError, match=r"\(required by strict mode\) cannot run"):
            jsoftmax.softmax(x)
        with pytest.raises(ValueError, match="strict mode"):
            jsoftmax.cross_entropy(x, jnp.zeros(2, int), weight=jnp.ones(3))
    with record_implementations() as calls:
        jsoftmax.log_softmax(x)  # outside the block the default is xla again, no reason
    assert calls == [("log_softmax", "xla", None, None)]


def test_use_implementation_validates_its_arguments():
    with pytest.raises(ValueError, match="use_implementation: implementation must be"):
        with use_implementation("gpu"):
            pass
    with pytest.raises(TypeError, match="strict must be a bool"):
        with use_implementation("xla", strict=1):
            pass


# --------------------------------------------------------------------------------------------
# The kernels in GPU interpret mode
# --------------------------------------------------------------------------------------------

# 37 rows: 16 rows per block at 256 classes, so the last block overlaps the one before;
# 1152 classes: one chunk of 1024 and a tail of 128; a batch of [2, 3] rows
SHAPES = [(37, 256), (3, 1152), (2, 3, 128)]


def _tol(dtype):
    # float32 at the suite's ulps level; half precision within its rounding
    return {"rtol": 4e-6, "atol": 1e-6} if dtype == jnp.float32 else {"rtol": 1e-2, "atol": 1e-2}


def _inputs(shape, dtype, seed=0):
    x = 3 * jax.random.normal(jax.random.key(seed), shape, jnp.float32)
    return x.astype(dtype)


def _check(got, want, dtype):
    assert got.dtype == want.dtype
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), **_tol(dtype)
    )


@needs_interpret
@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_values_and_gradients_equal_xla(name, shape, dtype):
    if dtype == jnp.bfloat16 and shape != SHAPES[0]:
        pytest.skip("bfloat16 on one shape keeps interpret mode short")
    f = FUNCS[name]
    x = _inputs(shape, dtype)
    ct = _inputs(f(x).shape, dtype, seed=1)

    def vjp(impl):
        out, pull = jax.vjp(lambda z: f(z, implementation=impl), x)
        return out, pull(ct)[0]

    with _interpret(), record_implementations() as calls:
        got, dgot = vjp("mosaic_gpu")
    assert {c.implementation for c in calls} == {"mosaic_gpu"}
    want, dwant = vjp("xla")
    _check(got, want, dtype)
    _check(dgot, dwant, dtype)


@needs_interpret
@pytest.mark.parametrize("name", list(FUNCS))
def test_kernel_edge_inputs_equal_xla(name):
    f = FUNCS[name]
    x = np.array(_inputs((6, 256), jnp.float32))
    x[0, ::3] = -np.inf  # -inf entries: probability 0
    x[1] += 1e4  # a large offset: the shift keeps it exact
    x[2] += 3e7  # an offset past float32's integer precision
    x[3, 5] = np.nan  # a NaN row
    x[4] = -np.inf  # a row with no finite entry
    x[5, 1000 % 256] = np.inf  # a +inf entry
    x = jnp.asarray(x)
    with _interpret():
        got = f(x, implementation="mosaic_gpu")
        dgot = jax.grad(
            lambda z: jnp.sum(
                jnp.where(
                    jnp.isfinite(f(z, implementation="mosaic_gpu")),
                    f(z, implementation="mosaic_gpu"),
                    0.0,
                )
            )
        )(x[:4])
    want = f(x, implementation="xla")
    dwant = jax.grad(
        lambda z: jnp.sum(
            jnp.where(jnp.isfinite(f(z, implementation="xla")), f(z, implementation="xla"), 0.0)
        )
    )(x[:4])
    np.testing.assert_allclose(got, want, rtol=4e-6, atol=1e-6)
    np.testing.assert_allclose(dgot, dwant, rtol=4e-6, atol=1e-6)


CE_OPTIONS = [
    {},
    {"reduction": "none"},
    {"reduction": "sum", "ignore_index": 3},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-3, "label_smoothing": 0.2, "reduction": "none"},
    {"where": jnp.arange(37) % 5 != 0},
]


@needs_interpret
@pytest.mark.parametrize("options", CE_OPTIONS, ids=str)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cross_entropy_kernel_equals_xla(options, dtype):
    if dtype == jnp.bfloat16 and options not in ({}, {"label_smoothing": 0.1}):
        pytest.skip("bfloat16 on two option sets keeps interpret mode short")
    z = _inputs((37, 256), dtype)
    y = (jnp.arange(37) * 7) % 256
    y = y.at[4].set(3)  # an ignored label where ignore_index=3

    def vg(impl):
        return jax.value_and_grad(lambda z: jnp.sum(_ce(impl, **options)(z, y)))(z)

    with _interpret(), record_implementations() as calls:
        got, dgot = vg("mosaic_gpu")
    assert {c.implementation for c in calls} == {"mosaic_gpu"}
    want, dwant = vg("xla")
    np.testing.assert_allclose(got, want, rtol=4e-6)
    _check(dgot, dwant, dtype)


@needs_interpret
def test_cross_entropy_kernel_edges_and_out_of_range_labels_under_jit():
    z = np.array(_inputs((5, 128), jnp.float32))
    z[0] += 3e7
    z[1, ::2] = -np.inf
    z[2, 7] = -np.inf  # the label's logit: +inf loss
    z = jnp.asarray(z)
    y = jnp.array([1, 3, 7, 200, -1])  # rows 3 and 4 out of range under jit: NaN

    def f(impl):
        fn = jax.jit(lambda z, y: _ce(impl, reduction="none")(z, y))
        return fn(z, y), jax.jit(
            jax.grad(lambda z, y: jnp.sum(_ce(impl, reduction="none")(z, y)[:2]))
        )(z, y)

    with _interpret():
        got, dgot = f("mosaic_gpu")
    want, dwant = f("xla")
    np.testing.assert_allclose(got, want, rtol=4e-6)
    assert np.isnan(got[3:]).all() and got[2] == np.inf
    np.testing.assert_allclose(dgot, dwant, rtol=4e-6, atol=1e-7)


@needs_interpret
def test_kernels_refuse_what_they_do_not_cover():
    z = jnp.zeros((4, 256))
    y = jnp.zeros(4, int)
    cases = {
        "where masks": lambda: jsoftmax.softmax(z, where=z > 0, implementation="mosaic_gpu"),
        "last axis only": lambda: jsoftmax.log_softmax(z, axis=0, implementation="mosaic_gpu"),
        "multiple of 128": lambda: jsoftmax.logsumexp(z[:, :200], implementation="mosaic_gpu"),
        "class weights": lambda: _ce("mosaic_gpu", weight=jnp.ones(256))(z, y),
        "probability labels": lambda: jsoftmax.softmax_cross_entropy(
            z, jax.nn.softmax(z), implementation="mosaic_gpu"
        ),
    }
    with _interpret():
        for why, call in cases.items():
            with pytest.raises(ValueError, match=why):
                call()
        # float64 cannot reach the kernels with x64 off (it is float32 then); the check itself
        assert "dtype float64" in mosaic_gpu.rows_problem((2, 128), np.float64)
        assert "empty" in mosaic_gpu.rows_problem((0, 128), np.float32)
        # no row is too long: rows beyond shared memory are split (tests below)
        assert mosaic_gpu.rows_problem((1, 2**20), np.float32) is None


# --------------------------------------------------------------------------------------------
# Split rows: rows whose buffers exceed the staging budget, in pieces read twice
# --------------------------------------------------------------------------------------------


def test_rows_are_split_into_the_fewest_pieces_that_fit_the_budget():
    # the default budget (192 KiB): whole float32 rows up to 49,152 classes (one buffer)
    assert mosaic_gpu.pieces(49152, 4, 1) == 1
    assert mosaic_gpu.pieces(65536, 4, 1) == 2
    assert mosaic_gpu.pieces(131072, 4, 1) == 4
    assert mosaic_gpu.pieces(131072, 4, 2) == 8  # the backward passes stage y and g
    assert mosaic_gpu.pieces(131072, 2, 1) == 2
    assert mosaic_gpu.pieces(32768, 4, 2) == 2
    # 128,256 = 128 · 1002 classes (a Llama-3 vocabulary): 3 pieces of 42,752
    assert mosaic_gpu.pieces(128256, 4, 1) == 3
    # 128 · 7 classes in 2 KiB: 7 is prime, so 7 pieces of one warpgroup's 128 classes
    with mosaic_gpu.staging_budget(2048):
        assert mosaic_gpu.pieces(896, 4, 1) == 7
        assert mosaic_gpu.pieces(896, 2, 1) == 1
    with mosaic_gpu.staging_budget(8192):
        assert (mosaic_gpu.pieces(3072, 4, 1), mosaic_gpu.pieces(3072, 4, 2)) == (2, 3)
    assert mosaic_gpu.pieces(65536, 4, 1) == 2  # the budget is restored after the block


@pytest.mark.parametrize("bad", [1023, 0, -1, 4096.0, True, "8192"])
def test_staging_budget_validates_its_argument(bad):
    with pytest.raises(ValueError, match="staging_budget: nbytes must be an int >= 1024"):
        with mosaic_gpu.staging_budget(bad):
            pass


def _split_inputs(dtype):
    # 3072 classes in an 8 KiB budget: float32 rows in 2 pieces of 1536 (a full chunk and a
    # tail each), the float32 backward (two buffers) in 3 of 1024
    x = np.array(_inputs((6, 3072), jnp.float32))
    x[1] += 1e4  # a large offset: the merged shift keeps it exact
    x[2, :1536] = -np.inf  # a piece with no finite entry (the row has some)
    x[3] += 3e7
    x[4, 2000] = 40.0  # the row's maximum in its second piece
    x[5, 100] = 40.0  # ... and in its first
    return jnp.asarray(x, dtype)


@needs_interpret
@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_split_rows_equal_xla(name, dtype, layouts):
    f = FUNCS[name]
    x = _split_inputs(dtype)
    ct = _inputs(f(x).shape, dtype, seed=1)

    def vjp(impl):
        out, pull = jax.vjp(lambda z: f(z, implementation=impl), x)
        return out, pull(ct)[0]

    # 2 pieces forward, 3 backward (two buffers): 8 KiB for float32 rows, 4 KiB for bfloat16
    budget = 8192 * jnp.dtype(dtype).itemsize // 4
    with _interpret(), mosaic_gpu.staging_budget(budget):
        got, dgot = vjp("mosaic_gpu")
    # forward: pieces' statistics, then (softmax, log_softmax) the pieces rewritten; backward:
    # (softmax, log_softmax) pieces' sums, then the rewrite, or (logsumexp) the rewrite alone
    assert len(layouts) == (2 if name == "logsumexp" else 4)
    assert all(split for _, split in layouts)
    want, dwant = vjp("xla")
    if dtype == jnp.bfloat16:
        _check(got, want, dtype)
        _check(dgot, dwant, dtype)
        return
    _as_accurate_as_xla(f, x, ct, (got, dgot), (want, dwant))


def _as_accurate_as_xla(f, x, ct, kernel, xla):
    """float32 ``(value, vjp)`` of the kernels no further from float64 than XLA's (twice its
    largest error, plus an ulp of the largest value), NaN and inf where float64 has them.

    Sums over long rows (Σ g in the backward) are rounded in another order than XLA's, so the
    two float32 results differ by round-off; each is compared with float64 instead.
    """
    with jax.enable_x64(True):
        x64, ct64 = (jnp.asarray(np.asarray(a), jnp.float64) for a in (x, ct))
        out, pull = jax.vjp(lambda z: f(z, implementation="xla"), x64)
        ref = np.asarray(out), np.asarray(pull(ct64)[0])
    for k, x_, r in zip(kernel, xla, ref, strict=True):
        assert k.dtype == x_.dtype == jnp.float32
        k, x_ = np.asarray(k, np.float64), np.asarray(x_, np.float64)
        np.testing.assert_array_equal(np.isnan(k), np.isnan(r))
        fin = np.isfinite(r)
        np.testing.assert_array_equal(k[~fin], r[~fin])  # the same infinities
        err_k, err_x = (np.max(np.abs(a[fin] - r[fin])) for a in (k, x_))
        ulp = np.finfo(np.float32).eps * np.max(np.abs(r[fin]))
        assert err_k <= 2 * err_x + ulp, (err_k, err_x, ulp)


@needs_interpret
@pytest.mark.parametrize("name", list(FUNCS))
def test_split_rows_several_pieces_per_block_equal_xla(name, layouts):
    # 896 = 128 · 7 classes in a 2 KiB budget: 7 pieces of 128 per row, 4 pieces per block,
    # 63 pieces in 16 blocks, the last block overlapping the one before
    f = FUNCS[name]
    x = np.array(_inputs((9, 896), jnp.float32))
    x[1] += 1e4
    x[2, :128] = -np.inf  # one piece with no finite entry
    x[3, 5] = np.inf  # +inf in one piece: NaN row
    x[4, 700] = np.nan
    x[5] = -np.inf  # no finite entry
    x[6, 895] = 30.0  # the maximum in the last piece
    x = jnp.asarray(x)
    ct = _inputs(f(x).shape, jnp.float32, seed=1)

    def vjp(impl):
        out, pull = jax.vjp(lambda z: f(z, implementation=impl), x)
        return out, pull(ct)[0]

    with _interpret(), mosaic_gpu.staging_budget(2048):
        got, dgot = vjp("mosaic_gpu")
    assert all(split for _, split in layouts)
    _as_accurate_as_xla(f, x, ct, (got, dgot), vjp("xla"))


@needs_interpret
def test_a_long_row_at_the_default_budget_is_split_and_equals_xla(layouts):
    # 65,536 float32 classes: 256 KiB, beyond the 192 KiB budget, so 2 pieces
    x = _inputs((2, 65536), jnp.float32)
    with _interpret():
        got = jsoftmax.log_softmax(x, implementation="mosaic_gpu")
    names = ["jsoftmax_log_softmax_fwd_pieces", "jsoftmax_log_softmax_fwd"]
    assert layouts == [(name, True) for name in names]
    _check(got, jsoftmax.log_softmax(x, implementation="xla"), jnp.float32)


@needs_interpret
@pytest.mark.parametrize("options", CE_OPTIONS[:5], ids=str)
def test_split_rows_cross_entropy_equals_xla(options, layouts):
    z = _split_inputs(jnp.float32)
    # labels in either piece, at the pieces' first and last classes, and one ignored
    y = jnp.array([0, 1535, 1536, 3071, 3, 2000])

    opts = {k: v for k, v in options.items() if k not in ("where", "reduction")}
    ignored = options.get("ignore_index")

    def per_row_and_grad(impl):
        # per-row losses (row 2, a piece of -inf logits, is +inf under smoothing: compared row
        # by row, the finite rows still test the merged statistics); the gradient of the
        # option set's own reduction
        rows = _ce(impl, reduction="none", **opts)(z, y)
        grad = jax.grad(lambda z: jnp.sum(_ce(impl, **{**opts, **options})(z, y)))(z)
        return rows, grad

    with _interpret(), mosaic_gpu.staging_budget(8192):
        got, dgot = per_row_and_grad("mosaic_gpu")
    assert len(layouts) == 3 and all(split for _, split in layouts)  # rows; grad: fwd, bwd
    want, dwant = per_row_and_grad("xla")
    finite = np.isfinite(np.asarray(want))
    assert finite.sum() >= 5 - (ignored is not None)  # rows that test the values
    np.testing.assert_allclose(got, want, rtol=4e-6)
    _check(dgot, dwant, jnp.float32)


@needs_interpret
def test_split_rows_out_of_range_labels_under_jit_give_nan():
    z = _split_inputs(jnp.float32)
    # 3072, 4607 and -1 are out of range: NaN on their rows in the split layout as for whole
    # rows (the engine's poison), finite elsewhere, whatever piece the labels fall near
    y = jnp.array([3072, -1, 1536, 4607, 5, 6])
    with _interpret(), mosaic_gpu.staging_budget(8192):
        got = jax.jit(lambda z, y: _ce("mosaic_gpu", reduction="none")(z, y))(z, y)
        dgot = jax.jit(jax.grad(lambda z, y: jnp.sum(_ce("mosaic_gpu", reduction="none")(z, y))))(
            z, y
        )
    want = jax.jit(lambda z, y: _ce("xla", reduction="none")(z, y))(z, y)
    got, dgot = np.asarray(got), np.asarray(dgot)
    assert np.isnan(got[[0, 1, 3]]).all() and np.isnan(dgot[[0, 1, 3]]).all()
    np.testing.assert_allclose(got, want, rtol=4e-6)
    assert np.isfinite(dgot[[2, 4, 5]]).all()


# --------------------------------------------------------------------------------------------
# Lowering for CUDA without a GPU: the custom call is in the module
# --------------------------------------------------------------------------------------------


def _forward(f):
    return lambda x: f(x, implementation="mosaic_gpu")


def _backward(f):
    return jax.grad(lambda x: jnp.sum(jnp.sin(f(x, implementation="mosaic_gpu"))))


LOWERED = {
    **{f"{k} forward": _forward(f) for k, f in FUNCS.items()},
    **{f"{k} backward": _backward(f) for k, f in FUNCS.items()},
    "cross_entropy value_and_grad": jax.value_and_grad(
        lambda x: jsoftmax.cross_entropy(x, jnp.arange(8), implementation="mosaic_gpu")
    ),
    "softmax_cross_entropy_with_integer_labels": lambda x: (
        jsoftmax.softmax_cross_entropy_with_integer_labels(
            x, jnp.arange(8), implementation="mosaic_gpu"
        )
    ),
}


@needs_interpret
@pytest.mark.parametrize("name", list(LOWERED))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lowering_for_cuda_contains_the_mosaic_gpu_call(name, dtype):
    x = jnp.zeros((8, 1152), dtype)
    with mosaic_gpu.assume_cuda_target():
        text = jax.jit(LOWERED[name]).trace(x).lower(lowering_platforms=("cuda",)).as_text()
    kernels = text.count("stablehlo.custom_call @mosaic_gpu_v2")
    assert kernels == (2 if ("backward" in name or "grad" in name) else 1)


# split rows: softmax and log_softmax are two kernels each way (statistics, then rewrite),
# logsumexp forward one (its statistics are the output) and backward one (per-row scalars in)
SPLIT_KERNELS = {
    "softmax forward": 2,
    "log_softmax forward": 2,
    "logsumexp forward": 1,
    "softmax backward": 4,
    "log_softmax backward": 4,
    "logsumexp backward": 2,
    "cross_entropy value_and_grad": 2,
    "softmax_cross_entropy_with_integer_labels": 1,
}


@needs_interpret
@pytest.mark.parametrize("name", list(SPLIT_KERNELS))
def test_lowering_split_rows_for_cuda_contains_every_kernel(name, layouts):
    x = jnp.zeros((8, 1152), jnp.float32)
    f = LOWERED[name]  # a fresh function: jit's cache holds the whole-row trace of f itself
    with mosaic_gpu.assume_cuda_target(), mosaic_gpu.staging_budget(2048):
        text = jax.jit(lambda x: f(x)).trace(x).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("stablehlo.custom_call @mosaic_gpu_v2") == SPLIT_KERNELS[name]
    # every kernel in the split layout (logsumexp's and cross-entropy's counts are those of
    # whole rows: their statistics are the output, their backward a rewrite only)
    assert len(layouts) == SPLIT_KERNELS[name] and all(split for _, split in layouts)


# --------------------------------------------------------------------------------------------
# The GPU benchmark script (benchmarks/gpu.sh runs it on a device), tested here in interpret mode
# --------------------------------------------------------------------------------------------


@needs_interpret
def test_gpu_bandwidth_script_times_every_program_and_reports_refused_shapes(
    tmp_path, layouts, benchmark_script
):
    import json

    bench = benchmark_script("mosaic_gpu_bench")
    out = tmp_path / "rows.json"
    args = [str(out), "--rows", "5", "--cols", "512,200", "--dtypes", "float32", "--reps", "1"]
    rows = bench.main([*args, "--interpret"])
    assert json.loads(out.read_text()) == rows
    served, refused = rows[:5], rows[5:]
    assert (
        [r["program"] for r in served]
        == [r["program"] for r in refused]
        == [
            "softmax forward",
            "log_softmax forward",
            "softmax forward+backward",
            "log_softmax forward+backward",
            "cross_entropy value_and_grad",
        ]
    )
    for row in served:
        base = "optax" if row["program"].startswith("cross") else "jax.nn"
        for name in ("mosaic_gpu", "mosaic_gpu split", "xla", base):
            assert row[f"{name} seconds"] > 0 and row[f"{name} copy fraction"] > 0
            assert row[f"{name} kernels"] >= 1
        assert row[f"speedup over {base}"] > 0 and row["copy seconds"] > 0
    # "mosaic_gpu split" ran the split layout: 512 float32 classes in two pieces
    assert any(split for _, split in layouts) and not all(split for _, split in layouts)
    # strict mode: 200 classes is no kernel shape, reported with the reason, not timed as XLA
    for row in refused:
        assert "multiple of 128" in row["mosaic_gpu error"]
        assert "mosaic_gpu seconds" not in row and row["xla seconds"] > 0


@needs_interpret
def test_gpu_correctness_script_compares_every_kernel_with_xla(tmp_path, layouts, benchmark_script):
    # benchmarks/mosaic_gpu_check.py (gpu.sh's "check" section, run before the benchmarks):
    # shrunk shapes in a 1 KiB budget, so that whole and split rows both run
    import json

    check = benchmark_script("mosaic_gpu_check")
    out = tmp_path / "check.json"
    args = [str(out), "--scale", "0.01", "--dtypes", "float32", "--interpret"]
    with mosaic_gpu.staging_budget(1024):
        rows, failed = check.main(args)
    assert failed == 0 and len(rows) == 21 and all(r["ok"] for r in rows)
    assert json.loads(out.read_text()) == rows
    assert {split for _, split in layouts} == {True, False}
    # a disagreement is reported, not passed: a NaN where XLA has a number, and a vacuous case
    one = {"a": jnp.array([1.0, 2.0])}
    assert check._compare(one, one, "float32") == 0.0
    assert "NaN" in check._compare({"a": jnp.array([1.0, np.nan])}, one, "float32")
    assert check._compare({"a": jnp.array([1.0, 2.1])}, one, "float32") > 1
    nan = {"a": jnp.array([np.nan])}
    assert "nothing compared" in check._compare(nan, nan, "float32")
