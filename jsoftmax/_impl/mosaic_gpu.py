"""Pallas Mosaic GPU kernels: the forward and backward bodies of the row-wise rules.

Every kernel here works on rows of a ``[n, c]`` array (the class axis last), staged in shared
memory: one bulk copy from HBM per block of ``R`` rows, the per-row passes over the staged
rows (shared memory only), and one bulk copy back per row. Each row is read in chunks of at
most :data:`CHUNK` elements, a multiple of the 128 threads of a warpgroup; the running maximum
and the rescaled sum of exponentials are updated in the same pass (``s ← s·exp(m − m') +
Σ exp(v − m')``), so the maximum shift is kept without a second pass for the sum. Arithmetic
is float32; half-precision rows are rounded once, on the way out.

Two layouts (:func:`pieces` picks one per call, from the shapes):

* **whole rows**, when the buffers of one row fit :func:`staging_budget`: one kernel reads each
  row once and writes it once;
* **split rows**, when they do not (long rows: 131,072 float32 classes, a 65,536-class block of
  logits): the row ``[c]`` is cut into ``t`` equal pieces of a multiple of 128 classes (a free
  reshape to ``[n·t, c/t]``), a first kernel writes each piece's statistics (its max and
  rescaled sum, dot products, label logit), XLA merges the ``t`` numbers of each row
  (``m = max_j m_j``, ``s = Σ_j s_j·exp(m_j − m)``), and a second kernel rewrites each piece
  from its row's merged statistics. What it costs in HBM traffic: the softmax and
  log_softmax forward passes and ``linear_xent_block`` read each row twice (a ceiling of
  0.67 of copy bandwidth, against 1.0 for whole rows), the softmax and log_softmax backward
  passes read ``y`` and ``g`` twice (4 reads and a write against 2 and 1: 0.6), and the
  logsumexp and cross-entropy passes nothing more (their forward writes statistics only,
  their backward rewrites rows from per-row numbers). Each piece knows its first class
  (``offset``), so a label is matched against global class indices in every piece. The
  pieces are the fewest that fit: a class count of 128 times a large prime (151,936 =
  128 · 1187) can only be cut into 128-class pieces, correct but many (not measured).

Per-row numbers (statistics, labels, cotangents of per-row outputs) travel in a ``[blocks,
rs]`` layout, one row of ``rs ≥ R`` entries (16-byte aligned) per block, which
:func:`_to_blocks`/:func:`_from_blocks` build and undo with one static gather of ``n``
numbers. The last block starts at ``n − R`` when ``R`` does not divide ``n``: it reads rows the
block before it also read, and writes back only the rows it owns, so no row is written twice.

What the kernels need (else :func:`rows_problem` names the reason, and the dispatch in
:mod:`jsoftmax._dispatch` falls back or raises): float16, bfloat16 or float32 rows; a class
count that is a multiple of 128; a JAX with ``jax.experimental.pallas.mosaic_gpu``; and either
a CUDA GPU of compute capability 9.0 or newer or GPU interpret mode
(``plgpu.force_gpu_interpret_mode``), in which the kernels run on CPU. The rules themselves
(which residuals, which formula) stay in ``_softmax.py``, ``_loss.py`` and ``_linear_xent.py``;
this file only provides their bodies. :func:`linear_xent_block` evaluates the cross-entropy
engine's per-token terms (:func:`jsoftmax._xent_engine.uniform_weight_terms`) on each row's
scalars inside the kernel, so both implementations share one formula for ignored tokens, token
weights, smoothing, z-loss and out-of-range labels.
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
    "interpret",
    "interpret_mode",
    "linear_xent_block",
    "log_softmax_backward",
    "log_softmax_forward",
    "logsumexp_backward",
    "logsumexp_forward",
    "pieces",
    "rows_problem",
    "softmax_backward",
    "softmax_forward",
    "staging_budget",
]

LANES = 128  # threads of a warpgroup: every vector the kernels load is a multiple of this
CHUNK = 1024  # elements of a row handled per step (8 per thread)
SMEM_BUDGET = 192 * 1024  # bytes of staged rows per block by default (Hopper allows 227 KiB)
BLOCK_BYTES = 32 * 1024  # short rows: stage about this much per block ...
MAX_ROWS = 16  # ... but at most this many rows
_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))
_F32 = jnp.float32
_LOWEST = float(np.finfo(np.float32).min)  # the running max starts here (a finite shift)

_budget = [SMEM_BUDGET]
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


def interpret(enabled: bool = True):
    """``plgpu.force_gpu_interpret_mode()`` if ``enabled`` (the kernels on CPU), else a no-op
    context: the GPU scripts' ``--interpret`` switch."""
    if not enabled:
        return contextlib.nullcontext()
    if MISSING is not None:
        raise RuntimeError(f"GPU interpret mode is unavailable: {MISSING}")
    return plgpu.force_gpu_interpret_mode()


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


@contextlib.contextmanager
def staging_budget(nbytes: int):
    """Stage at most ``nbytes`` of row buffers per block in calls traced inside the block.

    Rows whose buffers exceed it are split (see the module docstring). For tests (the split
    layout on short rows) and benchmarks (whole against split rows at one width); the default
    is :data:`SMEM_BUDGET`. The layout is fixed when a function is traced: a jitted function
    traced outside the block keeps its layout inside it.
    """
    floor = 2 * LANES * 4  # two float32 buffers of one 128-class piece
    if not isinstance(nbytes, (int, np.integer)) or isinstance(nbytes, bool) or nbytes < floor:
        raise ValueError(f"staging_budget: nbytes must be an int >= {floor}; got {nbytes!r}")
    saved = _budget[0]
    _budget[0] = int(nbytes)
    try:
        yield
    finally:
        _budget[0] = saved


def rows_problem(shape: Sequence[int], dtype) -> str | None:
    """Why rows of ``shape`` (classes last) and ``dtype`` do not fit the kernels, or ``None``."""
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
    return None


def pieces(c: int, itemsize: int, buffers: int) -> int:
    """Into how many equal pieces each row of ``c`` classes is split (1: whole rows).

    The fewest pieces, each a multiple of :data:`LANES` classes, whose ``buffers`` staged
    arrays of ``itemsize`` bytes fit the staging budget; 1 if a whole row fits. ``c`` is a
    multiple of :data:`LANES` (:func:`rows_problem`), so 128-class pieces always fit.
    """
    units = c // LANES
    for t in range(1, units + 1):
        if units % t == 0 and (c // t) * itemsize * buffers <= _budget[0]:
            return t
    raise AssertionError(f"no piece of {c} classes fits {_budget[0]} bytes")  # see the floor


# --------------------------------------------------------------------------------------------
# The row engine
# --------------------------------------------------------------------------------------------


class _Plan:
    """Rows per block ``r``, blocks ``nb``, per-row slots per block ``rs``, for ``[n, c]``."""

    def __init__(self, n: int, c: int, itemsize: int, buffers: int):
        row = c * itemsize
        self.r = max(1, min(MAX_ROWS, BLOCK_BYTES // row, _budget[0] // (row * buffers), n))
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
    """One staged row (or piece of a row) of each buffer, read and written chunk by chunk in
    float32; ``offset`` is the class index of its first entry (0 for a whole row)."""

    def __init__(self, bufs, r, c, offset):
        self.bufs, self.r, self.c, self.offset = bufs, r, c, offset

    def fold(self, fn: Callable, init):
        """``fn(values, first, carry) -> carry`` over the chunks; ``values`` one per buffer,
        ``first`` the class index of the chunk's first entry."""
        carry, start = init, 0
        for count, size in _chunks(self.c):

            def step(j, carry, start=start, size=size):
                base = start + j * size
                vals = [b[self.r, pl.ds(base, size)].astype(_F32) for b in self.bufs]
                return fn(vals, self.offset + base, carry)

            carry = lax.fori_loop(0, count, step, carry) if count > 1 else step(0, carry)
            start += count * size
        return carry

    def write(self, fn: Callable):
        """Replace the first buffer's row by ``fn(values, first)``, chunk by chunk."""
        out = self.bufs[0]

        def store(vals, first, carry):
            size = vals[0].shape[0]
            base = first - self.offset
            out[self.r, pl.ds(base, size)] = fn(vals, first).astype(out.dtype)
            return carry

        self.fold(store, 0)


def _classes(size: int, first) -> jax.Array:
    """The class indices of a chunk of ``size`` entries starting at class ``first``."""
    return lax.broadcasted_iota(jnp.int32, (size,), 0) + first


def _online_stats(row: _Row, buffer: int = 0):
    """``(m, s)``: the row max and ``Σ exp(v − m)``, in one pass (the sum rescaled as m grows)."""

    def step(vals, first, carry):
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
    offsets: jax.Array | None = None,
):
    """Run ``row_fn(row, *per_row_scalars) -> per_row_outputs`` on every row of ``rows``.

    Args:
      row_fn: the per-row body; gets a :class:`_Row` over the staged rows (its first buffer is
        written back when ``write_row``) and one scalar per ``per_row`` array.
      rows: ``[n, c]`` arrays staged in shared memory.
      per_row: ``[n]`` float32 or int32 arrays (statistics, labels, cotangents).
      n_out: how many float32 numbers per row ``row_fn`` returns.
      write_row: whether the first row buffer, rewritten in place, is an output.
      offsets: ``[n]`` int32 class index of each row's first entry (pieces of split rows), or
        ``None`` (0: whole rows).

    Returns:
      ``(new rows or None, [n] float32 outputs)``.
    """
    n, c = rows[0].shape
    plan = _Plan(n, c, rows[0].dtype.itemsize, len(rows))
    r, nb, rs = plan.r, plan.nb, plan.rs
    split = offsets is not None
    per_row = [_to_blocks(v, plan) for v in (*per_row, *([offsets] if split else []))]
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
            scalars = [v[i] for v in sbufs]
            offset = scalars.pop() if split else 0
            values = row_fn(_Row(bufs, i, c, offset), *scalars) or ()  # a finish returns None
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


def _rowwise(
    name: str,
    rows: Sequence[jax.Array],
    per_row: Sequence[jax.Array] = (),
    *,
    stats: Callable | None = None,
    n_stats: int = 0,
    merge: Callable | None = None,
    finish: Callable | None = None,
    keep_stats: bool = False,
):
    """A row-wise computation in whichever layout fits (whole or split rows).

    Args:
      rows: ``[n, c]`` arrays (the first is rewritten by ``finish``).
      per_row: ``[n]`` float32/int32 scalars of each row, passed to ``stats`` and ``finish``.
      stats: ``stats(row, *scalars) -> n_stats`` float32 numbers of a row (or of a piece).
      merge: ``merge(*[n, t] piece statistics, size=c/t) -> n_stats [n]`` row statistics; it
        must be the identity for ``t = 1``, where it is not called.
      finish: ``finish(row, *scalars, *row_stats)`` rewrites the row (or piece) in place.
      keep_stats: return the row statistics too when there is a ``finish``.

    Returns:
      ``(new first row array or None, list of [n] float32 row statistics)``: the statistics
      when there is no ``finish`` or with ``keep_stats``, else an empty list.
    """
    n, c = rows[0].shape
    t = pieces(c, rows[0].dtype.itemsize, len(rows))
    returned = finish is None or keep_stats
    if t == 1:  # whole rows: one kernel, one read and one write of each row

        def row_fn(row, *scalars):
            got = stats(row, *scalars) if stats is not None else ()
            if finish is not None:
                finish(row, *scalars, *got)
            return got if returned else ()

        return _run_rows(
            row_fn, rows, per_row, n_stats if returned else 0, finish is not None, name
        )
    # split rows: row i is pieces i·t … i·t + t − 1 of [n·t, c/t] (a free reshape)
    size = c // t
    pieces_ = [a.reshape(n * t, size) for a in rows]
    spread = [jnp.repeat(v, t) for v in per_row]
    offsets = (lax.iota(jnp.int32, n * t) % t) * size  # each piece's first class
    row_stats = []
    if stats is not None:
        _, got = _run_rows(stats, pieces_, spread, n_stats, False, f"{name}_pieces", offsets)
        row_stats = list(merge(*[v.reshape(n, t) for v in got], size=size))
    new = None
    if finish is not None:
        spread += [jnp.repeat(v, t) for v in row_stats]
        new, _ = _run_rows(finish, pieces_, spread, 0, True, name, offsets)
        new = new.reshape(n, c)
    return new, row_stats if returned else []


def _merge_max_sum(m, s, size=None):
    """A row's ``(m, s)`` from its pieces': ``m = max_j m_j``, ``s = Σ_j s_j·exp(m_j − m)``
    (``size``, the pieces' class count, is not needed)."""
    top = jnp.max(m, axis=1)
    # exp(m_j − m) ≤ 1 rescales each piece's sum to the row's shift (as in the online pass)
    return top, jnp.sum(s * jnp.exp(m - top[:, None]), axis=1)


def _merge_sums(*sums, size):
    return tuple(jnp.sum(v, axis=1) for v in sums)


def _as_rows(x: jax.Array) -> jax.Array:
    return x.reshape(-1, x.shape[-1])


def _scalars(v: jax.Array, dtype=_F32) -> jax.Array:
    return v.reshape(-1).astype(dtype)


# --------------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp
# --------------------------------------------------------------------------------------------


def _softmax_write(row: _Row, m, s):
    row.write(lambda v, first: jnp.exp(v[0] - m) / s)  # exp(v − m) ≤ 1, s ≥ 1 for a finite row


def _log_softmax_write(row: _Row, m, s):
    log_s = jnp.log(s)  # ∈ [0, log c]: subtracting it from v − m cannot overflow
    row.write(lambda v, first: (v[0] - m) - log_s)


def _normalised(x: jax.Array, finish: Callable, name: str) -> jax.Array:
    """Each row's shift and sum of exponentials, then the row rewritten by ``finish``."""
    y, _ = _rowwise(
        name, [_as_rows(x)], stats=_online_stats, n_stats=2, merge=_merge_max_sum, finish=finish
    )
    return y.reshape(x.shape)


def softmax_forward(x: jax.Array) -> jax.Array:
    """``softmax(x)`` over the last axis, ``x``'s dtype: one read and one write per row (whole
    rows; two reads and a write for split rows)."""
    return _normalised(x, _softmax_write, "jsoftmax_softmax_fwd")


def log_softmax_forward(x: jax.Array) -> jax.Array:
    """``log_softmax(x)`` over the last axis, ``x``'s dtype."""
    return _normalised(x, _log_softmax_write, "jsoftmax_log_softmax_fwd")


def _dot(row: _Row):
    return (row.fold(lambda v, first, acc: acc + jnp.sum(v[0] * v[1]), jnp.float32(0)),)


def _gsum(row: _Row):
    return (row.fold(lambda v, first, acc: acc + jnp.sum(v[1]), jnp.float32(0)),)


def _softmax_bwd_write(row: _Row, dot):
    # x̄ = y ⊙ (g − ⟨g, y⟩): the dot product first, then one pass that writes x̄ over y
    row.write(lambda v, first: v[0] * (v[1] - dot))


def _log_softmax_bwd_write(row: _Row, gsum):
    # x̄ = g − exp(out) Σ g
    row.write(lambda v, first: v[1] - jnp.exp(v[0]) * gsum)


def softmax_backward(y: jax.Array, g: jax.Array) -> jax.Array:
    """``y ⊙ (g − ⟨g, y⟩)`` over the last axis from the output ``y`` and its cotangent ``g``."""
    rows = [_as_rows(y), _as_rows(g.astype(y.dtype))]
    dx, _ = _rowwise(
        "jsoftmax_softmax_bwd",
        rows,
        stats=_dot,
        n_stats=1,
        merge=_merge_sums,
        finish=_softmax_bwd_write,
    )
    return dx.reshape(y.shape)


def log_softmax_backward(out: jax.Array, g: jax.Array) -> jax.Array:
    """``g − exp(out) Σ g`` over the last axis from the output and its cotangent."""
    rows = [_as_rows(out), _as_rows(g.astype(out.dtype))]
    dx, _ = _rowwise(
        "jsoftmax_log_softmax_bwd",
        rows,
        stats=_gsum,
        n_stats=1,
        merge=_merge_sums,
        finish=_log_softmax_bwd_write,
    )
    return dx.reshape(out.shape)


def logsumexp_forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(m, log_s)`` per row, of shape ``x.shape[:-1] + (1,)``: the statistics of the rule."""
    _, (m, s) = _rowwise(
        "jsoftmax_lse_fwd", [_as_rows(x)], stats=_online_stats, n_stats=2, merge=_merge_max_sum
    )
    shape = (*x.shape[:-1], 1)
    return m.reshape(shape), jnp.log(s).reshape(shape)  # log 0 = -inf: no finite entry


def _logsumexp_bwd_write(row: _Row, g, m, log_s):
    # x̄ = g · exp((x − m) − log_s), never exp(x − lse) with a rounded lse
    row.write(lambda v, first: g * jnp.exp((v[0] - m) - log_s))


def logsumexp_backward(x, m, log_s, g) -> jax.Array:
    """``g · exp((x − m) − log_s)`` per row (``log_s`` already 0 where it was ``-inf``)."""
    per_row = [_scalars(g), _scalars(m), _scalars(log_s)]
    dx, _ = _rowwise("jsoftmax_lse_bwd", [_as_rows(x)], per_row, finish=_logsumexp_bwd_write)
    return dx.reshape(x.shape)


# --------------------------------------------------------------------------------------------
# cross-entropy with integer labels
# --------------------------------------------------------------------------------------------


def _label_sums(smoothing: bool):
    """``(z_y, Σ(z − m))`` of a row or piece with shift ``m``: the label's logit (0 where the
    label is not among its classes) and, with ``smoothing``, the sum relative to the shift."""

    def fold(row: _Row, y, m):
        def step(v, first, carry):
            zy, zs = carry
            # the label's raw logit: one match in the row (none for an out-of-range label)
            zy = zy + jnp.sum(jnp.where(_classes(v[0].shape[0], first) == y, v[0], 0.0))
            if smoothing:
                zs = zs + jnp.sum(v[0] - m)  # Σ (z − m), relative to the shift
            return zy, zs

        return row.fold(step, (jnp.float32(0), jnp.float32(0)))

    return fold


def _merge_xent(smoothing: bool):
    def merge(m, s, zy, zs, size):
        """A row's ``(m, s, z_y, Σ(z − m))`` from its pieces' (``Σ(z − m_j)`` moved to ``m``)."""
        top, total = _merge_max_sum(m, s)
        if smoothing:
            # Σ_j [Σ(z − m_j) + size·(m_j − m)]: each piece's sum re-expressed relative to the
            # row's shift (m_j − m is exact for nearby shifts: no large cancellation)
            zs = jnp.sum(zs + size * (m - top[:, None]), axis=1)
        else:
            zs = jnp.zeros_like(top)  # not computed without smoothing (0, as for whole rows)
        return top, total, jnp.sum(zy, axis=1), zs

    return merge


def _xent_fwd_stats(smoothing: bool):
    sums = _label_sums(smoothing)

    def stats(row: _Row, y):
        m, s = _online_stats(row)
        return (m, s, *sums(row, y, m))

    return stats


def cross_entropy_forward(z: jax.Array, labels: jax.Array, smoothing: bool):
    """Per example ``(m, s, z_y, Σ(z − m))`` for logits ``[..., C]`` and safe labels ``[...]``.

    ``s = Σ exp(z − m)``; ``z_y`` is the raw logit at the label (0 for a label outside
    ``[0, C)``); ``Σ(z − m)`` is only computed with ``smoothing`` (else 0).
    """
    _, stats = _rowwise(
        "jsoftmax_xent_fwd",
        [_as_rows(z)],
        [_scalars(labels, jnp.int32)],
        stats=_xent_fwd_stats(smoothing),
        n_stats=4,
        merge=_merge_xent(smoothing),
    )
    return tuple(v.reshape(labels.shape) for v in stats)


def _xent_bwd_write(row: _Row, y, m, rg, ag, bg):
    # ∂ℓ/∂z_c = r e_c − b − a [c = y] with e = exp(z − m), scaled by g: every term in float32,
    # so p_y − 1 is never formed from a rounded buffer
    def grad(v, first):
        dz = rg * jnp.exp(v[0] - m) - bg
        return dz - jnp.where(_classes(v[0].shape[0], first) == y, ag, 0.0)

    row.write(grad)


def cross_entropy_backward(z, labels, m, rg, ag, bg) -> jax.Array:
    """``rg·exp(z − m) − bg − ag·[c = y]`` per row, in ``z``'s dtype (``labels`` outside
    ``[0, C)`` match no class)."""
    per_row = [_scalars(labels, jnp.int32), _scalars(m), _scalars(rg), _scalars(ag)]
    per_row.append(_scalars(bg))
    dz, _ = _rowwise("jsoftmax_xent_bwd", [_as_rows(z)], per_row, finish=_xent_bwd_write)
    return dz.reshape(z.shape)


# --------------------------------------------------------------------------------------------
# one block of linear_cross_entropy's gradients-in-forward path
# --------------------------------------------------------------------------------------------


def _capped_rows(softcap):
    """``capped(v) -> (z, t)``: the soft cap ``c·tanh(s/c)`` of staged raw logits ``s`` and
    ``t = tanh(s/c)`` for its derivative ``1 − t²`` (as ``_block_logits`` forms them)."""

    def capped(v):
        if softcap is None:
            return v, None
        t = jnp.tanh(v / softcap)
        return softcap * t, t

    return capped


def _linear_xent_stats(softcap, smooth):
    capped = _capped_rows(softcap)

    def stats(row: _Row, y, g, *weight):
        # the shift and Σ exp(z − m) of the capped logits (one pass over the staged row)
        def step(vals, first, carry):
            m, s = carry
            z, _ = capped(vals[0])
            m_new = jnp.maximum(m, jnp.max(z))
            s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new))
            return m_new, s

        m, s = row.fold(step, (jnp.float32(_LOWEST), jnp.float32(0)))

        # the label's logit and, with smoothing, Σ (z − m) relative to the shift (staged: a
        # second pass over shared memory, not HBM)
        def sums(vals, first, carry):
            zy, zs = carry
            z, _ = capped(vals[0])
            zy = zy + jnp.sum(jnp.where(_classes(z.shape[0], first) == y, z, 0.0))
            if smooth:
                zs = zs + jnp.sum(z - m)
            return zy, zs

        zy, zs = row.fold(sums, (jnp.float32(0), jnp.float32(0)))
        return m, s, zy, zs

    return stats


def _linear_xent_write(num_classes, ignore_index, options, softcap, weighted):
    # imported here: the engine imports nothing of this file, but this file stays importable
    # on its own (the lowering tests import it first)
    from jsoftmax._xent_engine import uniform_weight_terms

    smooth = options.label_smoothing > 0
    capped = _capped_rows(softcap)

    def finish(row: _Row, y, g, *rest):
        weight, (m, s, zy, zs) = rest[: int(weighted)], rest[int(weighted) :]
        # the engine's own per-token terms, on this row's scalars: the same formulas (ignored
        # tokens, NaN for an out-of-range label, token weights, z-loss) as the XLA path
        terms = uniform_weight_terms(
            m,
            jnp.log(s),
            zy,
            zs if smooth else None,
            y,
            num_classes=num_classes,
            ignore_index=ignore_index,
            options=options,
            token_weights=weight[0] if weighted else None,
        )
        r, a, share = g * terms.coef / s, g * terms.a, g * terms.share

        # z̄ = g (coef · p − a · onehot − share) ⊙ (1 − t²), p = exp(z − m) / s, in float32
        # (p_y − 1 is never formed from a rounded buffer), written over the logits
        def grad(vals, first):
            z, t = capped(vals[0])
            dz = r * jnp.exp(z - m) - jnp.where(_classes(z.shape[0], first) == y, a, 0.0)
            if smooth:
                dz = dz - share
            return dz if t is None else dz * (1 - t * t)

        row.write(grad)

    return finish


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
    """One block's ``z̄`` and per-token statistics: one read and one write of the block
    (two reads when its rows are split).

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
    smooth = options.label_smoothing > 0
    dz, (m, s_sum, zy, zs) = _rowwise(
        "jsoftmax_linear_xent",
        [s.astype(_F32)],
        per_row,
        stats=_linear_xent_stats(softcap, smooth),
        n_stats=4,
        merge=_merge_xent(smooth),
        finish=_linear_xent_write(num_classes, ignore_index, options, softcap, weighted),
        keep_stats=True,
    )
    return dz, m, jnp.log(s_sum), zy, zs
