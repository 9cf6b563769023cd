"""Pallas Mosaic GPU kernels: the forward and backward bodies of the row-wise rules.

Every kernel here works on rows of a ``[n, c]`` array (the class axis last), staged whole in
shared memory: one bulk copy from HBM per block of ``R`` rows, the per-row passes over the
staged rows (shared memory only), and one bulk copy back per row. Each row is read in chunks of
at most :data:`CHUNK` elements, a multiple of the 128 threads of a warpgroup; the running
maximum and the rescaled sum of exponentials are updated in the same pass
(``s ← s·exp(m − m') + Σ exp(v − m')``), so the maximum shift is kept without a second pass for
the sum. Arithmetic is float32; half-precision rows are rounded once, on the way out.

Per-row numbers (statistics, labels, cotangents of per-row outputs) travel in a ``[blocks,
rs]`` layout, one row of ``rs ≥ R`` entries (16-byte aligned) per block, which
:func:`_to_blocks`/:func:`_from_blocks` build and undo with one static gather of ``n``
numbers. The last block starts at ``n − R`` when ``R`` does not divide ``n``: it reads rows the
block before it also read, and writes back only the rows it owns, so no row is written twice.

What the kernels need (else :func:`rows_problem` names the reason, and the dispatch in
:mod:`jsoftmax._dispatch` falls back or raises): float16, bfloat16 or float32 rows; a class
count that is a multiple of 128; ``R = 1`` row per buffer fitting in :data:`SMEM_BUDGET`; a JAX
with ``jax.experimental.pallas.mosaic_gpu``; and either a CUDA GPU of compute capability 9.0
or newer or GPU interpret mode (``plgpu.force_gpu_interpret_mode``), in which the kernels run
on CPU. The rules themselves (which residuals, which formula) stay in ``_softmax.py``,
``_loss.py`` and ``_linear_xent.py``; this file only provides their bodies.
:func:`linear_xent_block` evaluates the cross-entropy engine's per-token terms
(:func:`jsoftmax._xent_engine.uniform_weight_terms`) on each row's scalars inside the kernel,
so both implementations share one formula for ignored tokens, token weights, smoothing, z-loss
and out-of-range labels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

try:
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    _OOB = plgpu.OOBFillMode.PROMISE_IN_BOUNDS
    _INTERPRET_PARAMS = plgpu.InterpretGPUParams
    MISSING = None
except (ImportError, AttributeError) as err:  # a JAX without Mosaic GPU or its interpret mode
    pl = plgpu = _OOB = _INTERPRET_PARAMS = None
    MISSING = (
        f"this JAX ({jax.__version__}) has no Pallas Mosaic GPU backend with GPU interpret "
        f"mode ({type(err).__name__}: {err}); jax >= 0.12 has it"
    )

__all__ = [
    "CHUNK",
    "LANES",
    "SMEM_BUDGET",
    "assume_cuda_target",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "environment_problem",
    "interpret_mode",
    "linear_xent_block",
    "log_softmax_backward",
    "log_softmax_forward",
    "logsumexp_backward",
    "logsumexp_forward",
    "rows_problem",
    "softmax_backward",
    "softmax_forward",
]

LANES = 128  # threads of a warpgroup: every vector the kernels load is a multiple of this
CHUNK = 1024  # elements of a row handled per step (8 per thread)
SMEM_BUDGET = 192 * 1024  # bytes of staged rows per block (Hopper allows 227 KiB)
BLOCK_BYTES = 32 * 1024  # short rows: stage about this much per block ...
MAX_ROWS = 16  # ... but at most this many rows
_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))
_F32 = jnp.float32
_LOWEST = float(np.finfo(np.float32).min)  # the running max starts here (a finite shift)

_assume_cuda = [0]


@contextlib.contextmanager
def assume_cuda_target():
    """Treat the trace as one for a CUDA GPU (ahead-of-time lowering on a machine without one).

    For ``jax.jit(f).trace(x).lower(lowering_platforms=("cuda",))`` on a CPU-only machine: the
    environment check would otherwise refuse the kernels, since the default backend is CPU.
    """
    _assume_cuda[0] += 1
    try:
        yield
    finally:
        _assume_cuda[0] -= 1


def interpret_mode() -> bool:
    """Whether ``plgpu.force_gpu_interpret_mode`` (or ``set_gpu_interpret_mode``) is active."""
    if MISSING is not None:
        return False
    from jax._src import config  # the state force_gpu_interpret_mode sets

    value = config.pallas_tpu_interpret_mode_context_manager.value
    return isinstance(value, _INTERPRET_PARAMS)


def environment_problem() -> str | None:
    """Why the kernels cannot run here, or ``None`` if they can."""
    if MISSING is not None:
        return MISSING
    if interpret_mode() or _assume_cuda[0]:
        return None
    device = jax.devices()[0]
    if device.platform != "gpu" or "cuda" not in getattr(device.client, "platform_version", ""):
        return (
            f"the default device is {device.platform!r}, not a CUDA GPU, and GPU interpret "
            "mode is off (run under jax.experimental.pallas.mosaic_gpu.force_gpu_interpret_mode "
            "to run the kernels on CPU)"
        )
    capability = getattr(device, "compute_capability", "0")
    if float(capability) < 9.0:
        return f"the kernels target Hopper (compute capability >= 9.0); got {capability}"
    return None


def rows_problem(shape: Sequence[int], dtype, buffers: int) -> str | None:
    """Why rows of ``shape`` (classes last) and ``dtype`` do not fit the kernels, or ``None``.

    ``buffers`` is how many row-sized arrays one block stages (the backward passes stage two).
    """
    dtype = jnp.dtype(dtype)
    if dtype not in _DTYPES:
        return f"dtype {dtype} (the kernels take float16, bfloat16 and float32)"
    if len(shape) == 0:
        return "a scalar input has no class axis"
    c, n = shape[-1], math.prod(shape[:-1])
    if c == 0 or n == 0:
        return f"shape {tuple(shape)} is empty"
    if c % LANES:
        return f"{c} classes is not a multiple of {LANES} (one entry per warpgroup thread)"
    if c * dtype.itemsize * buffers > SMEM_BUDGET:
        return (
            f"a row of {c} {dtype} classes ({buffers} staged buffer(s)) needs "
            f"{c * dtype.itemsize * buffers} bytes of shared memory; the budget is {SMEM_BUDGET}"
        )
    return None


# --------------------------------------------------------------------------------------------
# The row engine
# --------------------------------------------------------------------------------------------


class _Plan:
    """Rows per block ``r``, blocks ``nb``, per-row slots per block ``rs``, for ``[n, c]``."""

    def __init__(self, n: int, c: int, itemsize: int, buffers: int):
        row = c * itemsize
        self.r = max(1, min(MAX_ROWS, BLOCK_BYTES // row, SMEM_BUDGET // (row * buffers), n))
        self.nb = -(-n // self.r)
        self.rs = -(-self.r // 4) * 4  # 16-byte rows of float32/int32 per-row numbers
        self.n, self.c = n, c
        # block b covers rows start_b .. start_b + r; the last one ends at row n
        starts = np.minimum(np.arange(self.nb) * self.r, n - self.r)
        slots = np.minimum(starts[:, None] + np.arange(self.rs)[None, :], n - 1)
        self.gather = slots.astype(np.int32)  # [nb, rs] → row index (padding repeats row n−1)
        rows = np.arange(n)
        block = np.minimum(rows // self.r, self.nb - 1)
        self.scatter = (block * self.rs + rows - starts[block]).astype(np.int32)  # row → slot


def _to_blocks(v: jax.Array, plan: _Plan) -> jax.Array:
    return v[plan.gather]


def _from_blocks(v: jax.Array, plan: _Plan) -> jax.Array:
    return v.reshape(-1)[plan.scatter]


def _chunks(c: int):
    """``(count, size)`` pairs covering a row: full chunks, then a tail (both multiples of 128)."""
    out = [(c // CHUNK, CHUNK)] if c >= CHUNK else []
    if c % CHUNK:
        out.append((1, c % CHUNK))
    return out


class _Row:
    """One staged row of each row buffer, read and written chunk by chunk in float32."""

    def __init__(self, bufs, r, c):
        self.bufs, self.r, self.c = bufs, r, c

    def fold(self, fn: Callable, init):
        """``fn(values, base, carry) -> carry`` over the chunks; ``values`` one per buffer."""
        carry, offset = init, 0
        for count, size in _chunks(self.c):

            def step(j, carry, offset=offset, size=size):
                base = offset + j * size
                vals = [b[self.r, pl.ds(base, size)].astype(_F32) for b in self.bufs]
                return fn(vals, base, carry)

            carry = lax.fori_loop(0, count, step, carry) if count > 1 else step(0, carry)
            offset += count * size
        return carry

    def write(self, fn: Callable):
        """Replace the first buffer's row by ``fn(values, base)``, chunk by chunk."""
        out = self.bufs[0]

        def store(vals, base, carry):
            size = vals[0].shape[0]
            out[self.r, pl.ds(base, size)] = fn(vals, base).astype(out.dtype)
            return carry

        self.fold(store, 0)


def _iota(size: int, base) -> jax.Array:
    return lax.broadcasted_iota(jnp.int32, (size,), 0) + base


def _online_stats(row: _Row, buffer: int = 0):
    """``(m, s)``: the row max and ``Σ exp(v − m)``, in one pass (the sum rescaled as m grows)."""

    def step(vals, base, carry):
        m, s = carry
        v = vals[buffer]
        m_new = jnp.maximum(m, jnp.max(v))
        # rescale the sum so far to the new shift; exp(v − m_new) ≤ 1 cannot overflow
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(v - m_new))
        return m_new, s

    # a finite start: a row with no finite entry keeps m finite and s = 0
    return row.fold(step, (jnp.float32(_LOWEST), jnp.float32(0)))


def _run_rows(
    row_fn: Callable,
    rows: Sequence[jax.Array],
    per_row: Sequence[jax.Array],
    n_out: int,
    write_row: bool,
    name: str,
):
    """Run ``row_fn(row, *per_row_scalars) -> per_row_outputs`` on every row of ``rows``.

    Args:
      row_fn: the per-row body; gets a :class:`_Row` over the staged rows (its first buffer is
        written back when ``write_row``) and one scalar per ``per_row`` array.
      rows: ``[n, c]`` arrays staged in shared memory.
      per_row: ``[n]`` float32 or int32 arrays (statistics, labels, cotangents).
      n_out: how many float32 numbers per row ``row_fn`` returns.
      write_row: whether the first row buffer, rewritten in place, is an output.

    Returns:
      ``(new rows or None, [n] float32 outputs)``.
    """
    n, c = rows[0].shape
    plan = _Plan(n, c, rows[0].dtype.itemsize, len(rows))
    r, nb, rs = plan.r, plan.nb, plan.rs
    per_row = [_to_blocks(v, plan) for v in per_row]
    out_type = [jax.ShapeDtypeStruct((n, c), rows[0].dtype)] if write_row else []
    out_type += [jax.ShapeDtypeStruct((nb, rs), _F32)] * n_out
    k_in, k_st, k_out = len(rows), len(per_row), len(out_type)
    scratch = (
        [plgpu.SMEM((r, c), a.dtype) for a in rows]
        + [plgpu.SMEM((rs,), a.dtype) for a in per_row]
        + [plgpu.SMEM((rs,), _F32) for _ in range(n_out)]
        + [plgpu.Barrier() for _ in range(k_in + k_st)]
    )

    def body(*refs):
        ins, refs = refs[: k_in + k_st], refs[k_in + k_st :]
        outs, refs = refs[:k_out], refs[k_out:]
        bufs, refs = refs[:k_in], refs[k_in:]
        sbufs, refs = refs[:k_st], refs[k_st:]
        obufs, bars = refs[:n_out], refs[n_out:]
        b = lax.axis_index("blocks")
        start = jnp.minimum(b * r, n - r)  # the last block ends at row n
        for src, dst, bar in zip(ins[:k_in], bufs, bars[:k_in], strict=True):
            plgpu.copy_gmem_to_smem(src.at[pl.ds(start, r)], dst, bar, oob_mode=_OOB)
        for src, dst, bar in zip(ins[k_in:], sbufs, bars[k_in:], strict=True):
            plgpu.copy_gmem_to_smem(src.at[b], dst, bar, oob_mode=_OOB)
        for bar in bars:
            plgpu.barrier_wait(bar)

        @pl.loop(0, r)
        def _(i):
            values = row_fn(_Row(bufs, i, c), *[s[i] for s in sbufs])
            for dst, v in zip(obufs, values, strict=True):
                dst[i] = v

        plgpu.commit_smem()  # make the shared-memory writes visible to the copy engine
        if write_row:
            own = b * r - start  # rows before this one belong to the block before
            for i in range(r):

                @pl.when(i >= own)
                def _(i=i):
                    plgpu.copy_smem_to_gmem(
                        bufs[0].at[pl.ds(i, 1)], outs[0].at[pl.ds(start + i, 1)]
                    )

        for src, dst in zip(obufs, outs[int(write_row) :], strict=True):
            plgpu.copy_smem_to_gmem(src, dst.at[b])
        plgpu.wait_smem_to_gmem(0)

    kernel = plgpu.kernel(
        body,
        out_type=tuple(out_type),
        scratch_types=scratch,
        grid=(nb,),
        grid_names=("blocks",),
    )
    with jax.named_scope(name):
        results = kernel(*rows, *per_row)
    new_rows = results[0] if write_row else None
    stats = [_from_blocks(v, plan) for v in results[int(write_row) :]]
    return new_rows, stats


def _as_rows(x: jax.Array) -> jax.Array:
    return x.reshape(-1, x.shape[-1])


def _scalars(v: jax.Array, dtype=_F32) -> jax.Array:
    return v.reshape(-1).astype(dtype)


# --------------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp
# --------------------------------------------------------------------------------------------


def _softmax_row(row: _Row):
    m, s = _online_stats(row)
    row.write(lambda v, base: jnp.exp(v[0] - m) / s)  # exp(v − m) ≤ 1, s ≥ 1 for a finite row
    return ()


def _log_softmax_row(row: _Row):
    m, s = _online_stats(row)
    log_s = jnp.log(s)  # ∈ [0, log c]: subtracting it from v − m cannot overflow
    row.write(lambda v, base: (v[0] - m) - log_s)
    return ()


def softmax_forward(x: jax.Array) -> jax.Array:
    """``softmax(x)`` over the last axis, ``x``'s dtype: one read and one write per row."""
    y, _ = _run_rows(_softmax_row, [_as_rows(x)], [], 0, True, "jsoftmax_softmax_fwd")
    return y.reshape(x.shape)


def log_softmax_forward(x: jax.Array) -> jax.Array:
    """``log_softmax(x)`` over the last axis, ``x``'s dtype."""
    y, _ = _run_rows(_log_softmax_row, [_as_rows(x)], [], 0, True, "jsoftmax_log_softmax_fwd")
    return y.reshape(x.shape)


def _softmax_bwd_row(row: _Row):
    # x̄ = y ⊙ (g − ⟨g, y⟩): the dot product first, then one pass that writes x̄ over y
    dot = row.fold(lambda v, base, acc: acc + jnp.sum(v[0] * v[1]), jnp.float32(0))
    row.write(lambda v, base: v[0] * (v[1] - dot))
    return ()


def _log_softmax_bwd_row(row: _Row):
    # x̄ = g − exp(out) Σ g
    gsum = row.fold(lambda v, base, acc: acc + jnp.sum(v[1]), jnp.float32(0))
    row.write(lambda v, base: v[1] - jnp.exp(v[0]) * gsum)
    return ()


def softmax_backward(y: jax.Array, g: jax.Array) -> jax.Array:
    """``y ⊙ (g − ⟨g, y⟩)`` over the last axis from the output ``y`` and its cotangent ``g``."""
    rows = [_as_rows(y), _as_rows(g.astype(y.dtype))]
    dx, _ = _run_rows(_softmax_bwd_row, rows, [], 0, True, "jsoftmax_softmax_bwd")
    return dx.reshape(y.shape)


def log_softmax_backward(out: jax.Array, g: jax.Array) -> jax.Array:
    """``g − exp(out) Σ g`` over the last axis from the output and its cotangent."""
    rows = [_as_rows(out), _as_rows(g.astype(out.dtype))]
    dx, _ = _run_rows(_log_softmax_bwd_row, rows, [], 0, True, "jsoftmax_log_softmax_bwd")
    return dx.reshape(out.shape)


def _logsumexp_row(row: _Row):
    m, s = _online_stats(row)
    return m, jnp.log(s)  # log 0 = -inf for a row with no finite entry


def logsumexp_forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(m, log_s)`` per row, of shape ``x.shape[:-1] + (1,)``: the statistics of the rule."""
    _, (m, log_s) = _run_rows(_logsumexp_row, [_as_rows(x)], [], 2, False, "jsoftmax_lse_fwd")
    shape = (*x.shape[:-1], 1)
    return m.reshape(shape), log_s.reshape(shape)


def _logsumexp_bwd_row(row: _Row, g, m, log_s):
    # x̄ = g · exp((x − m) − log_s), never exp(x − lse) with a rounded lse
    row.write(lambda v, base: g * jnp.exp((v[0] - m) - log_s))
    return ()


def logsumexp_backward(x, m, log_s, g) -> jax.Array:
    """``g · exp((x − m) − log_s)`` per row (``log_s`` already 0 where it was ``-inf``)."""
    per_row = [_scalars(g), _scalars(m), _scalars(log_s)]
    dx, _ = _run_rows(_logsumexp_bwd_row, [_as_rows(x)], per_row, 0, True, "jsoftmax_lse_bwd")
    return dx.reshape(x.shape)


# --------------------------------------------------------------------------------------------
# cross-entropy with integer labels
# --------------------------------------------------------------------------------------------


def _xent_fwd_row(smoothing: bool):
    def row_fn(row: _Row, y):
        m, s = _online_stats(row)

        def step(v, base, carry):
            zy, zs = carry
            # the label's raw logit: one match in the row (none for an out-of-range label)
            zy = zy + jnp.sum(jnp.where(_iota(v[0].shape[0], base) == y, v[0], 0.0))
            if smoothing:
                zs = zs + jnp.sum(v[0] - m)  # Σ (z − m), relative to the shift
            return zy, zs

        zy, zs = row.fold(step, (jnp.float32(0), jnp.float32(0)))
        return m, s, zy, zs

    return row_fn


def cross_entropy_forward(z: jax.Array, labels: jax.Array, smoothing: bool):
    """Per example ``(m, s, z_y, Σ(z − m))`` for logits ``[..., C]`` and safe labels ``[...]``.

    ``s = Σ exp(z − m)``; ``z_y`` is the raw logit at the label (0 for a label outside
    ``[0, C)``); ``Σ(z − m)`` is only computed with ``smoothing`` (else 0).
    """
    _, stats = _run_rows(
        _xent_fwd_row(smoothing),
        [_as_rows(z)],
        [_scalars(labels, jnp.int32)],
        4,
        False,
        "jsoftmax_xent_fwd",
    )
    return tuple(v.reshape(labels.shape) for v in stats)


def _xent_bwd_row(row: _Row, y, m, rg, ag, bg):
    # ∂ℓ/∂z_c = r e_c − b − a [c = y] with e = exp(z − m), scaled by g: every term in float32,
    # so p_y − 1 is never formed from a rounded buffer
    def grad(v, base):
        dz = rg * jnp.exp(v[0] - m) - bg
        return dz - jnp.where(_iota(v[0].shape[0], base) == y, ag, 0.0)

    row.write(grad)
    return ()


def cross_entropy_backward(z, labels, m, rg, ag, bg) -> jax.Array:
    """``rg·exp(z − m) − bg − ag·[c = y]`` per row, in ``z``'s dtype (``labels`` outside
    ``[0, C)`` match no class)."""
    per_row = [_scalars(labels, jnp.int32), _scalars(m), _scalars(rg), _scalars(ag)]
    per_row.append(_scalars(bg))
    dz, _ = _run_rows(_xent_bwd_row, [_as_rows(z)], per_row, 0, True, "jsoftmax_xent_bwd")
    return dz.reshape(z.shape)


# --------------------------------------------------------------------------------------------
# one block of linear_cross_entropy's gradients-in-forward path
# --------------------------------------------------------------------------------------------


def _linear_xent_row(num_classes, ignore_index, options, softcap, weighted):
    # imported here: the engine imports nothing of this file, but this file stays importable
    # on its own (the lowering tests import it first)
    from jsoftmax._xent_engine import uniform_weight_terms

    smooth = options.label_smoothing > 0

    def capped(v):
        # the soft cap c·tanh(s/c) of the staged raw logits s, and t = tanh(s/c) for its
        # derivative 1 − t² (as _block_logits forms them)
        if softcap is None:
            return v, None
        t = jnp.tanh(v / softcap)
        return softcap * t, t

    def row_fn(row: _Row, y, g, *weight):
        # pass 1 (shared memory): the shift and Σ exp(z − m) of the capped logits
        def stats(vals, base, carry):
            m, s = carry
            z, _ = capped(vals[0])
            m_new = jnp.maximum(m, jnp.max(z))
            s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new))
            return m_new, s

        m, s = row.fold(stats, (jnp.float32(_LOWEST), jnp.float32(0)))

        # pass 2: the label's logit and, with smoothing, Σ (z − m) relative to the final shift
        def sums(vals, base, carry):
            zy, zs = carry
            z, _ = capped(vals[0])
            zy = zy + jnp.sum(jnp.where(_iota(z.shape[0], base) == y, z, 0.0))
            if smooth:
                zs = zs + jnp.sum(z - m)
            return zy, zs

        zy, zs = row.fold(sums, (jnp.float32(0), jnp.float32(0)))
        log_s = jnp.log(s)
        # the engine's own per-token terms, on this row's scalars: the same formulas (ignored
        # tokens, NaN for an out-of-range label, token weights, z-loss) as the XLA path
        terms = uniform_weight_terms(
            m,
            log_s,
            zy,
            zs if smooth else None,
            y,
            num_classes=num_classes,
            ignore_index=ignore_index,
            options=options,
            token_weights=weight[0] if weighted else None,
        )
        r, a, share = g * terms.coef / s, g * terms.a, g * terms.share

        # pass 3: z̄ = g (coef · p − a · onehot − share) ⊙ (1 − t²), p = exp(z − m) / s, in
        # float32 (p_y − 1 is never formed from a rounded buffer), written over the logits
        def grad(vals, base):
            z, t = capped(vals[0])
            dz = r * jnp.exp(z - m) - jnp.where(_iota(z.shape[0], base) == y, a, 0.0)
            if smooth:
                dz = dz - share
            return dz if t is None else dz * (1 - t * t)

        row.write(grad)
        return m, log_s, zy, zs

    return row_fn


def linear_xent_block(
    s: jax.Array,
    labels: jax.Array,
    g: jax.Array,
    token_weights: jax.Array | None,
    *,
    num_classes: int,
    ignore_index: int | None,
    options,
    softcap: float | None,
):
    """One block's ``z̄`` and per-token statistics in one read and one write of the block.

    Args:
      s: ``[tn, V]`` float32 raw logits ``x @ w (+ bias)`` of a block, before soft-capping.
      labels: ``[tn]`` integer labels (``ignore_index`` allowed; others outside ``[0, V)``
        give NaN terms, as in the engine).
      g: ``[tn]`` float32 cotangent of each token's loss (0 for a row another block owns).
      token_weights: ``[tn]`` float32 ``ω`` or ``None`` (1).
      num_classes, ignore_index, options, softcap: as in
        :func:`jsoftmax._xent_engine.uniform_weight_terms` and ``linear_cross_entropy``.

    Returns:
      ``(dz, m, log_s, zy, zs)``: ``dz [tn, V]`` float32, ``g (coef · p − a · onehot −
      share) ⊙ (1 − t²)``; per token the shift ``m``, ``log Σ exp(z − m)``, the label's
      (capped) logit and ``Σ (z − m)`` (0 without smoothing), from which the caller forms the
      loss with the same engine.
    """
    weighted = token_weights is not None
    # int32 in the kernel: a wider label outside [0, V) (not ignore_index) becomes V, still out
    # of range, so that it cannot wrap onto a valid class
    keep = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        keep = keep | (labels == ignore_index)
    labels = jnp.where(keep, labels, num_classes)
    per_row = [_scalars(labels, jnp.int32), _scalars(g)]
    if weighted:
        per_row.append(_scalars(token_weights))
    row_fn = _linear_xent_row(num_classes, ignore_index, options, softcap, weighted)
    dz, stats = _run_rows(row_fn, [s.astype(_F32)], per_row, 4, True, "jsoftmax_linear_xent")
    return (dz, *stats)
