"""Chunked linear + cross-entropy: the loss of ``x @ w + bias`` without materialising the logits.

A language-model head maps ``N`` token features ``x [N, D]`` through ``w [D, V]`` to ``N·V``
logits, which for a large vocabulary dwarf everything else in the step. Here the logits are
only ever formed one ``[tn, tv]`` block at a time:

* the forward pass walks the blocks with an *online* logsumexp (a running maximum and a sum of
  exponentials rescaled whenever the maximum grows) and keeps per-token statistics only;
* the ``custom_vjp`` saves ``x``, ``w``, ``bias``, ``labels`` and, per token, the shift and the
  log-sum of the logsumexp (apart: their rounded sum would cost ``|z|·eps`` in every gradient),
  and the backward pass recomputes each block's logits to accumulate ``dx``, ``dw``, ``dbias``.

Every block has the same static shape. The last block along an axis that the block size does
not divide is *shifted back* so that it ends at the edge (``lax.dynamic_slice`` clamps its start
index), and the rows or columns it shares with the previous block are masked out. Nothing is
padded, so no copy of ``w`` is made.

The backward pass is itself ordinary differentiable JAX, so grad-of-grad works, and the same
kernel, given a mesh axis name, is the per-shard body of
:func:`jsoftmax.vocab_parallel_linear_cross_entropy` (see ``_sharded.py``): the per-token
statistics are then combined across vocabulary shards with ``lax.pmax``/``lax.psum``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jsoftmax._checks import (
    as_float_array,
    as_token_weights,
    check_integer_labels,
    check_labels_in_range,
    check_xent_options,
    compute_dtype,
)
from jsoftmax._dispatch import check_implementation, choose
from jsoftmax._impl import mosaic_gpu
from jsoftmax._mesh import to_varying, varying_axes
from jsoftmax._tracing import in_differentiated_loop_body
from jsoftmax._xent_engine import (
    UniformWeightTerms,
    XentOptions,
    mean_divisor,
    reduce_token_losses,
    uniform_weight_terms,
    z_loss_term,
)

__all__ = [
    "ChunkedXentOptions",
    "LinearCrossEntropyAux",
    "chunked_xent",
    "linear_cross_entropy",
    "prepare_linear_inputs",
]

# Automatic block size: at most 2**21 logits (8 MiB in float32) per block, vocabulary chunks of
# up to 2048 columns. Large enough that each block's matmul runs at full speed, small enough that
# the few block-sized temporaries of the backward pass stay far below the N·V of the logits (and
# mostly in cache: on CPU, [1024, 2048] blocks were faster than [2048, 2048] ones).
_AUTO_BLOCK_ELEMENTS = 1 << 21
_AUTO_VOCAB_CHUNK = 2048

# Gradients in the forward pass: token blocks whose [tn, V] logits and their gradient (in the
# compute dtype) fit in this many bytes, and at most an eighth of the tokens. Measured at
# N = 8192, D = 1024, V = 65536 in float32 on 2 CPU cores (value_and_grad, one run each on a
# quiet machine): 64 tokens 26.1 s, 128 tokens 21.4 s, 256 tokens 20.6 s, 512 tokens 19.4 s
# with 388 MiB of compiled temp memory (9 % of the naive version's 4096 MiB). 256 MiB gives 512.
# After the gather and transpose changes in _fused_value_and_grads (one interleaved run): 384
# tokens 19.6 s (355 MiB), 448 tokens 18.7 s (372 MiB), 512 tokens 17.6 s (388 MiB), against
# 22.7 s naive; before them, 1024 tokens gave 0.80× naive but 520 MiB (12.7 %). The temp memory
# is one [tn, V] block (XLA reuses it for the logits, their exponentials and the gradient) and
# the [D, V] product x_blkᵀ z̄ before it is added to w̄.
_FUSED_BLOCK_BYTES = 256 << 20
# On an accelerator the budget is a sixteenth of the device's free memory, kept within
# [256 MiB, 2 GiB]. Measured on an H100 (80 GB; N = 8192, D = 1024, V = 65536, float32,
# benchmarks/linear_xent/results-gpu-float32.*): 512-token blocks (256 MiB) 1.37x the naive
# version's time, 1024 (512 MiB) 1.14x, 4096 (2 GiB) 1.07x; the N / 8 cap then gives 1024 there.
_ACCELERATOR_BLOCK_BYTES = (256 << 20, 2 << 30)


def fused_block_budget(platform: str, free_bytes: int | None) -> int:
    """Bytes for one token block's ``[tn, V]`` logits and gradient, by backend.

    ``platform`` is the backend's name (``"cpu"``, ``"gpu"``/``"cuda"``/``"rocm"``, ``"tpu"``);
    ``free_bytes`` the device's free memory where it reports one (``None`` on the CPU). CPU:
    256 MiB, the measured optimum above. Accelerators: ``free_bytes / 16`` clipped to
    ``[256 MiB, 2 GiB]`` (256 MiB where the free memory is unknown).
    """
    if platform == "cpu" or free_bytes is None:
        return _FUSED_BLOCK_BYTES
    lo, hi = _ACCELERATOR_BLOCK_BYTES
    return int(min(max(free_bytes // 16, lo), hi))


def _device_block_budget() -> int:
    """:func:`fused_block_budget` for the default device (its free memory read now)."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    free = None
    if stats and "bytes_limit" in stats:
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return fused_block_budget(device.platform, free)


def fused_token_block(n: int, v_loc: int, itemsize: int, budget: int) -> int:
    """Tokens per block of the gradients-in-forward path from a budget in bytes.

    A block holds ``[tn, V]`` logits and their gradient in the compute dtype
    (``2 · tn · V · itemsize`` bytes), and at most ``N / 8`` tokens, so that the blocks stay
    a fraction of the logits they stand in for; at least one token, at most ``N``.
    """
    tn = budget // (2 * max(v_loc, 1) * itemsize)
    tn = min(tn, max(n // 8, 1))  # blocks stay a fraction of the logits
    return max(1, min(int(tn), max(n, 1)))


def _fused_token_chunk(n: int, v_loc: int, cdt, requested: int | None) -> int:
    """Token block of the gradients-in-forward path: ``requested``, or from the memory budget."""
    if requested is None:
        return fused_token_block(n, v_loc, jnp.dtype(cdt).itemsize, _device_block_budget())
    return max(1, min(int(requested), max(n, 1)))


class ChunkedXentOptions(NamedTuple):
    """Static (hashable) options of the chunked kernel; a ``nondiff_argnums`` argument."""

    token_chunk: int
    vocab_chunk: int
    num_classes: int  # V over all shards: the label range and the smoothing denominator
    ignore_index: int | None
    xent: XentOptions  # label smoothing and z-loss, as in every cross-entropy
    softcap: float | None
    reduction: str
    axis_name: str | None  # mesh axis the vocabulary is sharded over (inside shard_map), or None
    # token block of the gradients-in-forward path (see _fused_fwd), or None for the recompute
    # path; only read when the loss is differentiated
    fused_token_chunk: int | None = None
    # dtype of x, w and bias (after promotion): the gradients-in-forward path holds its saved
    # gradients in the compute dtype (float32 for half precision) and rounds to this one only
    # after the cotangent has scaled them; None: the saved gradients' own dtype
    param_dtype: np.dtype | None = None
    # return (loss, LinearCrossEntropyAux) instead of the loss (see linear_cross_entropy)
    return_aux: bool = False
    # "dv": w is [D, V_local]; "vd": w is [V_local, D] (torch.nn.Linear's weight, a tied
    # embedding table), contracted on its second axis by the block matmuls, never transposed
    w_layout: str = "dv"
    # manual mesh axes other than axis_name that the inputs vary over (the tokens split over
    # them inside a shard_map with check_vma=True): every loop carry varies over them too
    varying_axes: tuple[str, ...] = ()
    # what forms each block's z̄ on the gradients-in-forward path: "xla", or "mosaic_gpu" for
    # the Pallas kernel (jsoftmax._impl.mosaic_gpu.linear_xent_block)
    implementation: str = "xla"


class LinearCrossEntropyAux(NamedTuple):
    """What :func:`linear_cross_entropy` computes besides the loss with ``return_aux=True``.

    Every field is formed in the same pass as the loss (no logits are materialised) and
    carries no gradient. ``ω_n`` is token ``n``'s weight (``token_weights``, else 1), 0 for an
    ignored token; "reduced like the loss" means per token for ``"none"``, the sum over tokens
    for ``"sum"`` and the sum divided by the loss's divisor (``num_tokens``, or 1 when nothing
    contributes) for ``"mean"``.
    """

    lse: jax.Array  # [...] per token: log Σ_c exp z_nc (ignored tokens too), float32/float64
    z_loss: jax.Array  # the z-loss part λ ω_n lse_n², reduced like the loss
    num_tokens: jax.Array  # [] Σ_n ω_n over the tokens that are not ignored
    accuracy: jax.Array  # ω_n [argmax_c z_nc = y_n], reduced like the loss


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _auto_chunks(n: int, v: int) -> tuple[int, int]:
    """The automatic ``(token_chunk, vocab_chunk)`` for ``n`` tokens and ``v`` classes."""
    tv = max(1, min(v, _AUTO_VOCAB_CHUNK))
    tn = max(1, min(n, _AUTO_BLOCK_ELEMENTS // tv))
    return tn, tv


def _check_chunk_size(chunk_size, n: int, v: int, fn: str) -> tuple[int, int]:
    """Resolve ``chunk_size`` (None, an int for the vocabulary, or a (tokens, vocab) pair)."""
    if chunk_size is None:
        return _auto_chunks(n, v)
    pair = (None, chunk_size) if isinstance(chunk_size, (int, np.integer)) else chunk_size
    ok = isinstance(pair, tuple) and len(pair) == 2
    ok = ok and all(
        c is None or (isinstance(c, (int, np.integer)) and not isinstance(c, bool)) for c in pair
    )
    if not ok or isinstance(chunk_size, bool):
        raise TypeError(
            f"{fn}: chunk_size must be None, a positive int (vocabulary chunk) or a pair "
            f"(token_chunk, vocab_chunk) of positive ints or None; got {chunk_size!r}"
        )
    if any(c is not None and c <= 0 for c in pair):
        raise ValueError(f"{fn}: chunk_size must be positive; got {chunk_size!r}")
    tv = _auto_chunks(n, v)[1] if pair[1] is None else min(int(pair[1]), max(v, 1))
    tn = max(1, min(n, _AUTO_BLOCK_ELEMENTS // tv)) if pair[0] is None else int(pair[0])
    return max(1, min(tn, max(n, 1))), tv


# --------------------------------------------------------------------------------------------
# public function
# --------------------------------------------------------------------------------------------


def linear_cross_entropy(
    x: ArrayLike,
    w: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    chunk_size: int | tuple[int | None, int | None] | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
    gradients_in_forward: bool | None = None,
    token_weights: ArrayLike | None = None,
    return_aux: bool = False,
    w_layout: str = "dv",
    implementation: str | None = None,
) -> jax.Array | tuple[jax.Array, LinearCrossEntropyAux]:
    r"""Cross-entropy of the logits ``x @ w + bias``, computed in chunks without forming them.

    With logits :math:`s = x w + b`, optionally soft-capped to :math:`z = c \tanh(s / c)`
    (else :math:`z = s`), :math:`\mathrm{lse}_n = \log \sum_{c} \exp z_{nc}` over the
    :math:`V` classes, label smoothing :math:`\varepsilon` and z-loss weight :math:`\lambda`:

    .. math::
        \ell_n = \sum_c t_{nc}\,(\mathrm{lse}_n - z_{nc}) + \lambda\,\mathrm{lse}_n^2,
        \qquad t_{nc} = (1 - \varepsilon)\,[c = y_n] + \varepsilon / V

    so :math:`\ell_n = \mathrm{lse}_n - (1-\varepsilon) z_{n y_n}
    - \tfrac{\varepsilon}{V}\sum_c z_{nc} + \lambda\,\mathrm{lse}_n^2`. Tokens whose label is
    ``ignore_index`` have :math:`\ell_n = 0`; ``"mean"`` divides :math:`\sum_n \ell_n` by the
    number of tokens that are not ignored (0 if there are none). With ``token_weights``
    :math:`\omega_n`, token :math:`n` scores :math:`\omega_n \ell_n` (0 where
    :math:`\omega_n = 0`, even if :math:`\ell_n` is infinite) and ``"mean"`` is
    :math:`\sum_n \omega_n \ell_n / \sum_n \omega_n` over the tokens that are not ignored. This is
    ``jsoftmax.cross_entropy(x @ w + bias, labels, ...)`` with the options the two share
    (``ignore_index``, ``label_smoothing``, ``z_loss``, ``reduction``); ``cross_entropy`` adds
    class ``weight``, probability labels, ``where`` masks and tuple ``axis``, which a
    vocabulary-chunked kernel does not take, and only this function has ``softcap``.

    Without differentiation, the logits are formed one ``[token_chunk, vocab_chunk]`` block at
    a time with an *online* logsumexp (a running maximum and a rescaled running sum of
    exponentials per token), and peak memory is a few blocks instead of :math:`N V`. The
    gradient is, with :math:`p_{nc} = e^{(z_{nc} - m_n) - \log \sum_{c'} e^{z_{nc'} - m_n}}`
    (the shift :math:`m_n` and the log-sum kept apart, so :math:`p` never loses
    :math:`|m_n|\,\epsilon` to a rounded :math:`\mathrm{lse}_n`),

    .. math::
        \frac{\partial \ell_n}{\partial z_{nc}} = p_{nc}\,(1 + 2\lambda\,\mathrm{lse}_n)
        - (1-\varepsilon)\,[c = y_n] - \varepsilon / V

    (times :math:`1 - (z_{nc}/c)^2` under soft-capping), accumulated into
    :math:`\bar x = \bar s\, w^\top`, :math:`\bar w = x^\top \bar s` and
    :math:`\bar b = \sum_n \bar s_n` by one of two paths:

    * **gradients in the forward pass** (the default for ``"mean"`` and ``"sum"``, except
      in a loop body differentiated from outside the loop: see ``gradients_in_forward``): the
      ``custom_vjp`` forward rule walks blocks of ``tn`` tokens, forms each block's logits over
      the whole vocabulary once, and computes the loss, ``dx``, ``dw`` and ``dbias`` for a unit
      cotangent; it saves only those gradients and the backward pass scales them. Three
      ``[N, D] × [D, V]``-sized matmuls in all. Memory: one ``[tn, V]`` block (the logits,
      then their gradient, in one buffer; ``tn`` from a budget for the logits and their
      gradient of 256 MiB on the CPU and a sixteenth of the free device memory, within
      [256 MiB, 2 GiB], on an accelerator, and at most ``N / 8``: 512 tokens at
      ``V = 65536`` in float32 on the CPU; or the
      token part of ``chunk_size``), each block's ``[D, V]`` product before it is added to
      ``dw``, and ``dx`` and ``dw`` held from the forward to the backward pass (in float32 for
      half-precision inputs; 388 MiB of compiled temp memory at ``N = 8192, D = 1024,
      V = 65536``, 9 % of ``x @ w`` + cross-entropy's 4096 MiB). On a GPU larger token
      blocks run faster (see ``BENCHMARKS.md``: 1024-token blocks, what an H100's budget
      gives at ``N = 8192``, took 1.14× the naive time where 512 took 1.37×).
    * **recompute** (``reduction="none"``, whose per-token cotangents are only known in the
      backward pass, a call in the body of a ``lax.scan`` that ``jax.grad`` differentiates
      from outside, or ``gradients_in_forward=False``): the forward rule saves ``x``, ``w``,
      ``bias``, ``labels`` and two numbers per token (the shift and the log-sum) and the mean's
      divisor; the backward pass forms every ``[token_chunk, vocab_chunk]`` block of logits
      again. Four matmuls, but no ``[D, V]`` buffer beyond the gradient itself and blocks
      of at most 2M logits.

    Args:
      x: token features ``[..., D]`` (e.g. ``[N, D]`` or ``[batch, seq, D]``), floating point.
      w: output projection ``[D, V]`` (features by classes), or ``[V, D]`` with
        ``w_layout="vd"`` (a tied embedding table, PyTorch's ``nn.Linear`` weight).
      labels: integer class indices of ``x``'s leading shape ``[...]``.
      bias: optional ``[V]`` bias added to the logits.
      chunk_size: ``None`` (automatic), an int (the vocabulary chunk; tokens automatic) or a pair
        ``(token_chunk, vocab_chunk)`` whose entries may be ``None``. Chunks larger than the
        axis are clipped to it. Automatic rule: ``vocab_chunk = min(V, 2048)`` and
        ``token_chunk = min(N, 2**21 // vocab_chunk)``, i.e. blocks of at most 2M logits
        (8 MiB in float32).
      ignore_index: a label value whose tokens contribute 0 and are left out of the mean.
      label_smoothing: :math:`\varepsilon \in [0, 1]`.
      z_loss: :math:`\lambda \ge 0`, weight of the :math:`\mathrm{lse}^2` penalty.
      softcap: :math:`c > 0` for logit soft-capping :math:`c \tanh(s/c)` (as in Gemma 2),
        applied before the loss in value and gradient; ``None`` for no capping.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``.
      gradients_in_forward: ``None`` (automatic), ``True`` (``"none"`` raises
        ``ValueError``) or ``False`` to force the recompute path, e.g. when ``w`` is so large
        that a second ``[D, V]`` buffer should not be held. Automatic: off for ``"none"``;
        for ``"mean"`` and ``"sum"`` on, except where the call is traced in the body of a
        ``lax.scan``, ``lax.map`` or ``fori_loop`` with no ``jax.grad`` (or ``value_and_grad``,
        ``vjp``) and no ``jax.checkpoint`` between the call and the loop: a ``grad`` of the
        loop would save every step's ``dw`` (see Notes, "Gradient accumulation"). ``jit``,
        ``vmap`` and ``cond`` in between do not change the choice; a ``shard_map`` in between
        hides the loop (see Notes). It is made
        when the function is traced: a jitted function traced outside a loop keeps its path
        when called inside one.
      token_weights: optional per-token weights :math:`\omega` of ``labels``' shape ``[...]``,
        floating point, or bool as a loss mask (``True`` counts); cast to the loss's dtype.
        They are constants: no gradient flows into them (their cotangent is zero). One
        per-token vector costs nothing next to the matmuls, unlike weighting the output of
        ``reduction="none"``.
      return_aux: if ``True``, also return a :class:`LinearCrossEntropyAux` computed in the
        same pass: ``lse`` per token (``labels``' shape), the ``z_loss`` part alone reduced like
        the loss (so ``loss - aux.z_loss`` is the cross-entropy part), ``num_tokens``
        :math:`\sum_n \omega_n` (the mean's divisor before its guard against 0) and
        ``accuracy``, :math:`\omega_n [\arg\max_c z_{nc} = y_n]` reduced like the loss (the
        weighted fraction of tokens predicted right for ``"mean"``, their weighted count for
        ``"sum"``; ties go to the first maximal class, as ``jnp.argmax``). The argmax is
        over the logits the loss sees (after soft-capping), kept as a running maximum and its
        index per token across vocabulary blocks. The auxiliary outputs carry no gradient: the
        cotangents given to them are ignored (``jax.value_and_grad(..., has_aux=True)``).
      w_layout: ``"dv"`` (``w`` is ``[D, V]``) or ``"vd"`` (``w`` is ``[V, D]``: PyTorch's
        ``nn.Linear`` weight, a tied embedding table); ``"vd"`` is contracted on its last axis
        by the block matmuls without a transposed copy, and its gradient is ``[V, D]`` too.
      implementation: ``None`` (default: ``"xla"``), ``"xla"`` or ``"mosaic_gpu"``: what
        forms each block's statistics and :math:`\bar z` on the gradients-in-forward path.
        ``"mosaic_gpu"`` is one Pallas kernel per block (a Hopper GPU, or GPU interpret mode)
        that reads the block's raw logits once and writes :math:`\bar z` once, with every
        option above; the matmuls stay XLA's. A float32 row of ``V`` logits beyond the
        kernel's shared-memory budget (``V > 49152``) is split into pieces: two kernels per
        block, two reads of the logits and one write. It needs ``V`` a multiple of 128, one
        device (no Explicit mesh, no inputs varying over the axes of a ``shard_map`` with
        ``check_vma=True``), and the gradients-in-forward path: calls on the recompute
        path (``reduction="none"``, ``gradients_in_forward=False`` or the automatic choice in
        a differentiated loop body) raise with an explicit ``"mosaic_gpu"`` and fall back to
        ``"xla"`` under :func:`jsoftmax.use_implementation`. An undifferentiated call computes
        the loss on the XLA path (the online pass over vocabulary chunks). No GPU has measured
        the kernel yet, so ``None`` does not pick it.

    Returns:
      A scalar for ``"mean"``/``"sum"``; the per-token losses of ``labels``' shape for
      ``"none"``. float32 for float16/bfloat16/float32 inputs, float64 for float64 (as
      :func:`jsoftmax.cross_entropy`); the gradients have the inputs' dtypes. With
      ``return_aux=True`` the pair ``(loss, aux)``, every field of ``aux`` in the loss's dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jsoftmax
      >>> kx, kw = jax.random.split(jax.random.key(0))
      >>> x = jax.random.normal(kx, (6, 4))
      >>> w = jax.random.normal(kw, (4, 10))
      >>> labels = jnp.array([0, 3, 9, 2, 2, 7])
      >>> loss = jsoftmax.linear_cross_entropy(x, w, labels, chunk_size=(4, 3))
      >>> naive = -jnp.mean(jax.nn.log_softmax(x @ w)[jnp.arange(6), labels])
      >>> print(jnp.allclose(loss, naive, rtol=1e-5))
      True
      >>> dx, dw = jax.grad(jsoftmax.linear_cross_entropy, argnums=(0, 1))(x, w, labels)
      >>> print(dx.shape, dw.shape)
      (6, 4) (4, 10)

      A loss mask, the auxiliary outputs and a ``[V, D]`` weight:

      >>> mask = jnp.array([True, True, False, True, True, True])
      >>> loss, aux = jsoftmax.linear_cross_entropy(
      ...     x, w.T, labels, token_weights=mask, return_aux=True, w_layout="vd")
      >>> ref = -jnp.sum(jax.nn.log_softmax(x @ w)[jnp.arange(6), labels] * mask) / 5
      >>> print(jnp.allclose(loss, ref, rtol=1e-5), aux.num_tokens, aux.lse.shape)
      True 5.0 (6,)

    Notes:
      * A ``NaN`` or ``+inf`` logit (from non-finite values in ``x``, ``w`` or ``bias``) makes
        the affected tokens' losses ``NaN``; other tokens are unaffected under
        ``reduction="none"``. A ``-inf`` logit has probability 0, as in
        :func:`jsoftmax.cross_entropy`: the loss stays finite unless the class has target mass
        (the label's class, or any class with ``label_smoothing > 0``), where it is ``+inf``.
      * Out-of-range labels (not in ``[0, V)`` and not ``ignore_index``) raise ``ValueError``
        when ``labels`` is concrete; under ``jit`` they give a ``NaN`` loss for that token (and
        ``NaN`` gradients), never a finite wrong number, even where its token weight is 0.
      * A token of weight 0 (or a masked one) scores 0 even where its label's logit is
        ``-inf``; its features still enter the matmuls, so ``NaN`` features give ``NaN``
        gradients, as for an ignored token. ``NaN`` weights give ``NaN``; weights of
        contributing tokens that sum to 0 make ``"mean"`` divide by 0 (±inf or ``NaN``).
      * In ``aux``, ``z_loss`` and ``accuracy`` are ``NaN`` for the tokens whose loss is ``NaN``
        (out-of-range labels, ``NaN`` logits); ``lse`` is the row's logsumexp whatever the
        label (ignored tokens included).
      * Reverse mode to any order (``grad``, grad-of-grad) and forward-over-reverse (Hessian
        products) work; forward mode applied directly (``jax.jvp``, ``jax.jacfwd``) does not,
        as for every ``jax.custom_vjp``.
      * float16/bfloat16 ``x``/``w`` run their matmuls with float32 accumulation
        (``preferred_element_type``) and every other step in float32; ``dw`` and ``dbias``
        accumulate in float32 on both paths. The gradients-in-forward path holds ``dx``,
        ``dw`` and ``dbias`` in float32 until the cotangent has scaled them, so loss scaling
        (``grad(65536 * loss)``) and a large ``"sum"`` divided by ``N`` afterwards round once,
        at the end. For float16, ``z̄`` is multiplied by an exact power of two that brings its
        largest possible entry into ``[2**14, 2**15)`` before it is rounded for the gradient
        matmuls (and the results by its inverse), so it neither overflows nor flushes to 0.
      * Inside the caller's own ``shard_map`` (``check_vma=True``, the default, or ``False``),
        with the tokens split over its axes and ``w`` replicated: each device's call is the
        loss of its own tokens (``"mean"`` over its own count), exactly as ``x @ w`` with an
        optax loss there, and the gradient of the replicated ``w`` (and ``bias``) is the sum of
        the devices' shares, as JAX gives it for ``x @ w``. For a vocabulary split over an
        axis, use the per-shard form of :func:`jsoftmax.vocab_parallel_linear_cross_entropy`.
      * Gradient accumulation: the gradients-in-forward path hands ``dw`` to the backward
        pass as a residual, and ``jax.grad`` of a ``lax.scan`` saves every step's residuals,
        so on that path ``T`` steps would hold ``T`` float32 ``[D, V]`` buffers. The automatic
        choice (``gradients_in_forward=None``) therefore takes the recompute path in a loop
        body differentiated from outside, and the gradients-in-forward path everywhere else:
        under ``value_and_grad`` taken inside the body (gradients added in the carry) and
        under ``jax.checkpoint`` (whose backward pass runs the forward rule again, one
        extra logits pass) no step holds a ``dw``. Compiled temp memory (CPU, float32,
        ``T = 8`` micro-batches of 512 tokens, ``D = 256``, ``V = 8192``, ``dw`` = 8 MiB),
        grad of scan / checkpointed step / ``value_and_grad`` in the body: automatic 24.6 /
        18.6 / 18.6 MiB; ``gradients_in_forward=True`` 82.6 (146.6 at ``T = 16``: a ``dw``
        a step) / 18.6 / 18.6; ``False`` 24.6 / 34.5 / 16.5. At 256 tokens, ``D = 512``,
        ``V = 16384`` (``dw`` = 32 MiB): automatic 44.5 / 66.6 / 66.6, ``True`` 322.6 / 66.6
        / 66.6, ``False`` 44.5 / 78.5 / 38.5. A Python loop of ``T`` calls under one
        ``grad`` holds ``T`` buffers the size of ``dw`` on either path (each call's part of
        the gradient, until XLA adds them up): use a ``lax.scan``. A ``lax.scan`` around a
        ``shard_map`` that calls this function inside holds a ``dw`` a step on the default
        path (the loop is not visible from a ``shard_map`` body): pass
        ``gradients_in_forward=False`` there. Under ``jax.checkpoint``, a policy that saves
        matmul results (``dots_saveable``, ``dots_with_no_batch_dims_saveable``) holds no
        ``dw`` a step on the gradients-in-forward path (its block loop is rerun, not saved
        block by block; measured at 64 tokens a step, ``D = 64``, ``V = 2048``: no growth
        per step, where a scan of blocks saved 8 ``dw``), while the recompute path saves its
        forward's logits under it (``N·V`` a step); ``everything_saveable`` saves each
        step's residuals, a ``dw`` among them on the gradients-in-forward path: pass
        ``gradients_in_forward=False`` under it.

    See also:
      :func:`jsoftmax.cross_entropy`, :func:`jsoftmax.vocab_parallel_linear_cross_entropy`.
    """
    fn = "linear_cross_entropy"
    # On an Explicit mesh with the tokens or the vocabulary sharded, each device takes its own
    # tokens (and vocabulary shard) in a shard_map; _sharded imports this module, hence here.
    from jsoftmax._sharded import explicit_placement, linear_xent_on_mesh

    implementation = check_implementation(implementation, fn)
    placement = explicit_placement(x, w, labels, w_layout=w_layout)
    if placement is not None:
        mesh, vocab_axis = placement
        # the kernel takes one device's blocks; an explicit request (or strict mode) raises
        where = f"vocabulary over {vocab_axis!r}" if vocab_axis else "tokens sharded"
        choose(
            fn,
            implementation,
            lambda: (
                f"inputs on an Explicit mesh ({where}, mesh axes {mesh.axis_names}) are not covered"
            ),
        )
        return linear_xent_on_mesh(
            x,
            w,
            labels,
            mesh=mesh,
            axis_name=vocab_axis,
            bias=bias,
            chunk_size=chunk_size,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            reduction=reduction,
            gradients_in_forward=gradients_in_forward,
            token_weights=token_weights,
            return_aux=return_aux,
            w_layout=w_layout,
            fn=fn,
        )
    token_shape = np.shape(x)[:-1]
    # inside the caller's shard_map(check_vma=True): the manual axes the inputs vary over
    varying = varying_axes(x, w, bias, labels, token_weights)
    x, w, bias, labels, opts = prepare_linear_inputs(
        x,
        w,
        labels,
        bias=bias,
        chunk_size=chunk_size,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        reduction=reduction,
        gradients_in_forward=gradients_in_forward,
        fn=fn,
        num_shards=1,
        axis_name=None,
        return_aux=return_aux,
        w_layout=w_layout,
        implementation=implementation,
        varying=varying,
    )
    tw = as_token_weights(token_weights, token_shape, compute_dtype(x.dtype), fn)
    tw = None if tw is None else tw.reshape(labels.shape)
    if varying:
        # Every input enters as varying over all of those axes, so the kernel's loop carries
        # have one type, and the cotangent of an input that was invariant along an axis (a
        # replicated w beside each device's own tokens) is summed over it by pcast's transpose,
        # as JAX's own implicit casts do for x @ w
        opts = opts._replace(varying_axes=varying)
        x, w, bias, labels, tw = (to_varying(a, varying) for a in (x, w, bias, labels, tw))
    return chunked_xent(x, w, bias, labels, opts, token_shape, token_weights=tw)


def prepare_linear_inputs(
    x,
    w,
    labels,
    *,
    bias,
    chunk_size,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    reduction,
    gradients_in_forward,
    fn: str,
    num_shards: int,
    axis_name: str | None,
    return_aux: bool = False,
    w_layout: str = "dv",
    check_labels: bool = True,
    implementation: str | bool | None = False,
    varying: tuple[str, ...] = (),
):
    """Validate and canonicalise the arguments; returns ``(x2d, w, bias, labels1d, options)``.

    ``num_shards`` is how many vocabulary shards ``w`` is split into (1 on one device); chunk
    sizes are chosen for one shard's ``V / num_shards`` classes. ``token_weights`` are checked
    apart (``as_token_weights``), so that this returns the same five things with or without.
    ``implementation``: ``linear_cross_entropy``'s argument, resolved here by
    :func:`jsoftmax._dispatch.choose`; ``False`` (the sharded losses, which have no switch):
    ``"xla"`` without asking. ``varying``: the manual mesh axes the inputs vary over (in the
    caller's ``shard_map``), which the kernel does not take.
    """
    x = as_float_array(x, "x", fn)
    w = as_float_array(w, "w", fn)
    if not isinstance(w_layout, str):
        raise TypeError(f"{fn}: w_layout must be 'dv' or 'vd'; got {w_layout!r}")
    if w_layout not in ("dv", "vd"):
        raise ValueError(
            f"{fn}: w_layout must be 'dv' (w is [D, V]) or 'vd' (w is [V, D]); got {w_layout!r}"
        )
    if not isinstance(return_aux, (bool, np.bool_)):
        raise TypeError(f"{fn}: return_aux must be True or False; got {return_aux!r}")
    # the layout is named in messages only where it is not the default
    layout = "[D, V]" if w_layout == "dv" else "[V, D] (w_layout='vd')"
    if x.ndim < 1:
        raise ValueError(f"{fn}: x must have shape [..., D]; got a scalar")
    if w.ndim != 2:
        raise ValueError(f"{fn}: w must have shape {layout}; got shape {w.shape}")
    d, v = w.shape if w_layout == "dv" else w.shape[::-1]
    if x.shape[-1] != d:
        hint = (
            "pass a [V, D] weight with w_layout='vd'"
            if w_layout == "dv"
            else "pass a [D, V] weight with w_layout='dv'"
        )
        raise ValueError(
            f"{fn}: x [..., D] and w {layout} must agree on D; got x "
            f"{x.shape} and w {w.shape} ({hint})"
        )
    if v == 0:
        raise ValueError(f"{fn}: w must have at least one class (V >= 1); got shape {w.shape}")
    arrays = [x, w]
    if bias is not None:
        bias = as_float_array(bias, "bias", fn)
        if bias.shape != (v,):
            raise ValueError(f"{fn}: bias must have shape [V] = ({v},); got {bias.shape}")
        arrays.append(bias)
    labels = check_integer_labels(labels, x.shape[:-1], f"x {x.shape} (labels = x.shape[:-1])", fn)
    ignore_index, xent, softcap, reduction = check_xent_options(
        fn=fn,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        reduction=reduction,
    )
    dtype = jnp.result_type(*arrays)
    # mixed dtypes promote as x @ w + bias would; equal dtypes (the usual case) copy nothing
    x, w = x.astype(dtype), w.astype(dtype)
    bias = None if bias is None else bias.astype(dtype)
    n = math.prod(x.shape[:-1])
    tn, tv = _check_chunk_size(chunk_size, n, v // num_shards, fn)
    if gradients_in_forward is not None and not isinstance(gradients_in_forward, bool):
        raise TypeError(
            f"{fn}: gradients_in_forward must be True, False or None; got {gradients_in_forward!r}"
        )
    if gradients_in_forward and reduction == "none":
        raise ValueError(
            f"{fn}: gradients_in_forward=True needs reduction 'mean' or 'sum' (per-token "
            "cotangents of reduction='none' are only known in the backward pass); got 'none'"
        )
    # labels out of [0, V) are reported at their position in the caller's labels, before the
    # flattening to [N] below (concrete labels raise; traced ones under label_checks call
    # back), and after every static check: an option error comes first. The sharded losses
    # check once for all devices themselves (check_labels=False on each device's shard: a
    # callback raising on one device inside a collective would leave the others waiting).
    if check_labels:
        check_labels_in_range(labels, v, ignore_index, fn)
    # why the call does not take the gradients-in-forward path (None: it does). Automatic
    # (None): it does, except in the body of a loop that a grad outside it differentiates,
    # where each step's dw would be saved (jsoftmax._tracing)
    if n == 0:
        recompute = "there are no tokens"
    elif reduction == "none":
        recompute = "reduction='none' takes the recompute path"
    elif gradients_in_forward is False:
        recompute = "gradients_in_forward=False takes the recompute path"
    elif gradients_in_forward is None and in_differentiated_loop_body():
        recompute = (
            "the automatic gradients_in_forward takes the recompute path in a loop body "
            "differentiated from outside (pass gradients_in_forward=True for the kernel)"
        )
    else:
        recompute = None
    fused = None
    if recompute is None:
        # an explicit token chunk sets the block of either path; the vocabulary is whole here
        explicit = None if chunk_size is None or isinstance(chunk_size, int) else chunk_size[0]
        fused = _fused_token_chunk(n, v // num_shards, compute_dtype(dtype), explicit)
    chosen = "xla"
    if implementation is not False:
        problem = _kernel_problem(recompute, axis_name, v, fused, compute_dtype(dtype), varying)
        chosen = choose(fn, implementation, problem)
    opts = ChunkedXentOptions(
        tn,
        tv,
        v,
        ignore_index,
        xent,
        softcap,
        reduction,
        axis_name,
        fused,
        jnp.dtype(dtype),
        bool(return_aux),
        w_layout,
        implementation=chosen,
    )
    return x.reshape(n, d), w, bias, labels.reshape(n), opts


def _kernel_problem(path: str | None, axis_name, v: int, tn: int | None, cdt, varying=()):
    """Why the Mosaic GPU block kernel cannot serve this call (``None`` if it can).

    ``path``: why the call is not on the gradients-in-forward path, or ``None`` if it is
    (then ``tn`` is its token block).
    """

    def problem():
        if path is not None:
            return f"the kernel forms the blocks of the gradients-in-forward path; {path}"
        if axis_name is not None:
            return "a vocabulary sharded over a mesh axis is not covered"
        if varying:
            return (
                f"inputs varying over the manual mesh axes {varying} (a shard_map with "
                "check_vma=True) are not covered"
            )
        return mosaic_gpu.environment_problem() or mosaic_gpu.rows_problem((tn, v), cdt)

    return problem


def chunked_xent(
    x,
    w,
    bias,
    labels,
    opts: ChunkedXentOptions,
    token_shape: tuple[int, ...],
    token_weights=None,
):
    """The loss of 2-D ``x [N, D]`` and 1-D ``labels [N]``; ``"none"`` gets ``token_shape``.

    ``token_weights``: None or ``[N]`` in the compute dtype (``as_token_weights``). With
    ``opts.return_aux``, ``(loss, LinearCrossEntropyAux)``, per-token fields in ``token_shape``.
    """
    out = _lce(x, w, bias, labels, token_weights, opts)
    per_token = lambda a: a.reshape(token_shape)  # noqa: E731
    if not opts.return_aux:
        return per_token(out) if opts.reduction == "none" else out
    loss, aux = out
    if opts.reduction == "none":
        loss = per_token(loss)
        aux = aux._replace(z_loss=per_token(aux.z_loss), accuracy=per_token(aux.accuracy))
    return loss, aux._replace(lse=per_token(aux.lse))


# --------------------------------------------------------------------------------------------
# blocks
# --------------------------------------------------------------------------------------------


def _block_starts(k: jax.Array, nt: int, tn: int, tv: int, n: int, v: int):
    """Block ``k`` of the flat loop (vocabulary outer, tokens inner): its clamped starts.

    Returns ``(row0, col0, new_rows, new_cols, first_new_col)``: the slice starts, clamped so
    that the block ends inside the array; masks of the rows/columns not already covered by an
    earlier block (only a shifted-back last block overlaps its predecessor); and the index,
    within the block, of its first new column.
    """
    i, j = k % nt, k // nt
    row_nominal, col_nominal = i * tn, j * tv
    row0 = jnp.minimum(row_nominal, n - tn)
    col0 = jnp.minimum(col_nominal, v - tv)
    new_rows = row0 + jnp.arange(tn) >= row_nominal
    new_cols = col0 + jnp.arange(tv) >= col_nominal
    return row0, col0, new_rows, new_cols, col_nominal - col0


def _local_classes(w, opts: ChunkedXentOptions) -> int:
    """The number of classes ``w`` holds (this shard's, with the vocabulary sharded)."""
    return w.shape[1] if opts.w_layout == "dv" else w.shape[0]


def _w_block(w, col0, tv: int, opts: ChunkedXentOptions):
    """Classes ``[col0, col0 + tv)`` of ``w``: ``[D, tv]`` (``"dv"``) or ``[tv, D]`` (``"vd"``)."""
    return lax.dynamic_slice_in_dim(w, col0, tv, 1 if opts.w_layout == "dv" else 0)


def _dx_block(dzm, w_blk, cdt, w_layout: str):
    """``z̄ wᵀ [tn, D]``, contracting ``w``'s class axis wherever it is (no transposed copy)."""
    dims = (((1,), (1,)), ((), ())) if w_layout == "dv" else (((1,), (0,)), ((), ()))
    return lax.dot_general(dzm, w_blk, dims, preferred_element_type=cdt)


def _block_logits(x_blk, w_blk, b_blk, softcap, cdt, w_layout: str = "dv"):
    """Logits ``z`` of one block in the compute dtype, and ``tanh(s/c)`` under soft-capping."""
    # float32 accumulation even for bfloat16/float16 operands; a [V, D] w is contracted on its
    # feature axis directly
    dims = (((1,), (0,)), ((), ())) if w_layout == "dv" else (((1,), (1,)), ((), ()))
    s = lax.dot_general(x_blk, w_blk, dims, preferred_element_type=cdt)
    if b_blk is not None:
        s = s + b_blk.astype(cdt)[None, :]
    if softcap is None:
        return s, None
    return _soft_cap(s, softcap)


def _soft_cap(s, softcap: float):
    """``(c tanh(s/c), tanh(s/c))``: the capped logits and ``t`` for their derivative ``1 − t²``."""
    t = jnp.tanh(s / softcap)
    return softcap * t, t  # t is kept for the derivative c·tanh'(s/c)/c = 1 − t²


def _float16_operand(dz, bound):
    """``z̄`` rounded to float16 for the gradient matmuls, and the factor that undoes its scaling.

    float16 has 5 exponent bits: ``z̄ = G (coef · p − …)`` below ``2**-24`` (a small
    probability, or any entry once ``G`` is ``1 / N`` for a large ``N``) rounds to 0 and one
    above 65504 (``G = 65536`` of loss scaling) to ``inf``. So the block is first multiplied by
    a power of two ``2**k`` that brings ``bound``, the largest ``|z̄|`` it can hold, into
    ``[2**14, 2**15)``, and the float32 matmul results are multiplied by ``2**-k``: both
    products are exact, so the only rounding left is float16's 11-bit significand.
    ``bound`` is per token; non-finite entries (NaN terms of an out-of-range label, which make
    their own rows NaN anyway) are left out of the block's maximum.
    """
    bound = jnp.max(jnp.where(jnp.isfinite(bound), bound, 0)).astype(jnp.float32)
    # the binary exponent e of bound = 1.f · 2**e, read from its float32 bits (exact); a zero
    # bound (all rows masked) reads e = −127 and gets the largest factor, which is harmless
    e = (lax.bitcast_convert_type(bound, jnp.int32) >> 23 & 0xFF) - 127
    k = jnp.clip(14 - e, -126, 126)  # 2**±k both normal float32 numbers
    # 2**k built from its exponent bits, so that it is exactly a power of two
    up = lax.bitcast_convert_type((k + 127) << 23, jnp.float32)
    down = lax.bitcast_convert_type((127 - k) << 23, jnp.float32)
    return (dz * up).astype(jnp.float16), down


def _dz_bound(terms: UniformWeightTerms, smooth: bool, signed: bool = False):
    """Per token, the largest ``|coef · p − a · onehot − share|`` over ``p ∈ [0, 1]``.

    ``a`` and ``share`` are never negative without token weights; with ``coef ≥ 0`` the entry
    lies in ``[−a − share, coef]``, else ``|coef| + a + share`` bounds it. With token weights
    (``signed``: they may be negative) ``|coef| + |a| + |share|`` bounds it. Soft-capping's
    ``1 − t²`` only shrinks it.
    """
    if signed:
        a = jnp.abs(terms.a) + jnp.abs(terms.share) if smooth else jnp.abs(terms.a)
        return jnp.abs(terms.coef) + a
    a = terms.a + terms.share if smooth else terms.a
    return jnp.where(terms.coef >= 0, jnp.maximum(terms.coef, a), jnp.abs(terms.coef) + a)


def _vocab_offset(opts: ChunkedXentOptions, v_local: int):
    """Global index of this shard's first class (0 on one device)."""
    if opts.axis_name is None:
        return 0
    return lax.axis_index(opts.axis_name) * v_local


def _varying(tree, opts: ChunkedXentOptions):
    """Mark loop-carry initial values as varying over the vocabulary shards (inside shard_map).

    The carries pick up shard-dependent values in the loop, and a loop's carry type, which
    includes how it varies over mesh axes, must not change between iterations.
    """
    axes = () if opts.axis_name is None else (opts.axis_name,)
    return _varying_over(tree, axes + tuple(opts.varying_axes))


def _varying_over(tree, axes: tuple[str, ...]):
    """``tree`` marked as varying over the manual mesh ``axes`` (the identity for none)."""
    return lax.pcast(tree, axes, to="varying") if axes else tree


def _combined_argmax(arg, m_loc, m, opts: ChunkedXentOptions, v_loc: int):
    """The global argmax per token from this shard's ``arg`` (local index) and max ``m_loc``.

    ``m`` is the global max (``pmax`` of ``m_loc``); of the shards attaining it, the smallest
    global index wins (``pmin``), as ``jnp.argmax`` takes the first maximal class.
    """
    if opts.axis_name is None:
        return arg
    cand = jnp.where(m_loc == m, arg + _vocab_offset(opts, v_loc), opts.num_classes)
    return lax.pmin(cand, opts.axis_name)


def _aux_token_terms(m, log_s, arg, labels, terms: UniformWeightTerms, opts: ChunkedXentOptions):
    """Per token: ``lse``, the z-loss part ``λ ω lse²`` and ``ω [argmax = y]`` (``arg`` global).

    The last two are NaN where the token's loss is (an out-of-range label, NaN logits): a
    wrong label must not look like a miss.
    """
    lse = m + log_s
    nan = jnp.isnan(terms.loss)
    zl = jnp.zeros_like(lse)
    if opts.xent.z_loss:
        zl = jnp.where(nan, jnp.nan, z_loss_term(lse, terms.omega, opts.xent.z_loss))
    acc = jnp.where(nan, jnp.nan, jnp.where(arg == labels, terms.omega, 0))
    return lse, zl, acc


def _token_stats(x, w, bias, labels, opts: ChunkedXentOptions):
    """Per-token ``(m, log_s, z_target, z_sum, argmax)`` over all classes (all shards), by blocks.

    ``lse = m + log_s``; the two are returned apart because the backward pass needs them apart
    (see :func:`_lce_bwd`).

    ``z_sum`` is ``Σ_c (z_c − m)``, the logit sum relative to the shift (so the smoothing term
    ``lse − z̄ = log_s − z_sum / V`` never subtracts two large numbers); it is only computed
    (else 0) when label smoothing needs it. ``argmax`` (the global index of each token's first
    maximal logit) is only computed with ``opts.return_aux``, else None.
    """
    n, v_loc = x.shape[0], _local_classes(w, opts)
    cdt = compute_dtype(x.dtype)
    tn, tv = opts.token_chunk, min(opts.vocab_chunk, v_loc)
    nt, nv = -(-n // tn), -(-v_loc // tv)
    y_local = labels - _vocab_offset(opts, v_loc)  # this shard's column of each label
    smooth = opts.xent.label_smoothing > 0
    lowest = jnp.finfo(cdt).min

    def body(k, carry):
        m, s, zy, zs, arg = carry
        row0, col0, new_rows, new_cols, first_new = _block_starts(k, nt, tn, tv, n, v_loc)
        x_blk = lax.dynamic_slice_in_dim(x, row0, tn, 0)
        w_blk = _w_block(w, col0, tv, opts)
        b_blk = None if bias is None else lax.dynamic_slice_in_dim(bias, col0, tv, 0)
        z, _ = _block_logits(x_blk, w_blk, b_blk, opts.softcap, cdt, opts.w_layout)
        # columns already seen by the previous block take part as -inf: exp gives exactly 0
        zm = jnp.where(new_cols[None, :], z, -jnp.inf)
        m_old = lax.dynamic_slice_in_dim(m, row0, tn)
        s_old = lax.dynamic_slice_in_dim(s, row0, tn)
        # online logsumexp: raise the running max, rescale the old sum to it, add the new terms.
        # The max carries no gradient: lse = m + log Σ exp(z − m) is exact for any constant m.
        m_blk = jnp.max(zm, axis=1)
        m_new = lax.stop_gradient(jnp.maximum(m_old, m_blk))
        if arg is not None:
            # the running argmax moves only to a strictly larger maximum: blocks come in class
            # order and jnp.argmax takes a block's first maximum, so ties keep the first class
            a_old = lax.dynamic_slice_in_dim(arg, row0, tn)
            a_new = jnp.where(
                m_blk > m_old, col0 + jnp.argmax(zm, axis=1).astype(a_old.dtype), a_old
            )
            arg = lax.dynamic_update_slice_in_dim(arg, jnp.where(new_rows, a_new, a_old), row0, 0)
        s_new = s_old * jnp.exp(m_old - m_new) + jnp.sum(jnp.exp(zm - m_new[:, None]), axis=1)
        # the target logit, if this block holds the label's (new) column
        yc = y_local[row0 + jnp.arange(tn)] - col0
        hit = (yc >= first_new) & (yc < tv)
        z_t = jnp.take_along_axis(z, jnp.clip(yc, 0, tv - 1)[:, None], axis=1)[:, 0]
        zy_blk = jnp.where(hit, z_t, 0)
        if smooth:
            # Σ (z − m) over the columns seen so far, re-referenced to the new max: the
            # first_new + col0 columns before this block each move by m_old − m_new (none in
            # the first block, where m_old is the finite lowest value)
            seen = col0 + first_new
            shift = jnp.where(seen > 0, seen * (m_old - m_new), 0)
            zs_blk = shift + jnp.sum(jnp.where(new_cols[None, :], z - m_new[:, None], 0), axis=1)
        # rows already seen by the previous token block keep their statistics
        upd = lambda a, new: lax.dynamic_update_slice_in_dim(  # noqa: E731
            a, jnp.where(new_rows, new, lax.dynamic_slice_in_dim(a, row0, tn)), row0, 0
        )
        m = upd(m, m_new)
        s = upd(s, s_new)
        zy = upd(zy, lax.dynamic_slice_in_dim(zy, row0, tn) + zy_blk)
        if smooth:
            zs = upd(zs, lax.dynamic_slice_in_dim(zs, row0, tn) + zs_blk)
        return m, s, zy, zs, arg

    # the running max starts at the lowest finite value, so exp(m_old − m_new) is 0, not NaN
    init = (jnp.full((n,), lowest, cdt), jnp.zeros((n,), cdt), jnp.zeros((n,), cdt))
    # a row of -inf logits never moves its argmax from 0, jnp.argmax's answer too
    arg0 = jnp.zeros((n,), jnp.int32) if opts.return_aux else None
    init = (*init, jnp.zeros((n,), cdt), arg0)
    m, s, zy, zs, arg = lax.fori_loop(0, nt * nv, body, _varying(init, opts))
    if opts.axis_name is not None:
        # combine the shards: the global max, the sums rescaled to it, the target logit (held
        # by exactly one shard, 0 elsewhere) and the smoothing sum
        m_all = lax.pmax(lax.stop_gradient(m), opts.axis_name)
        if arg is not None:
            arg = _combined_argmax(arg, m, m_all, opts, v_loc)
        s = lax.psum(s * jnp.exp(m - m_all), opts.axis_name)
        if smooth:  # each shard's v_loc logits re-referenced from its own max to the global one
            zs = lax.psum(zs + v_loc * (m - m_all), opts.axis_name)
        m = m_all
        zy = lax.psum(zy, opts.axis_name)
    return m, jnp.log(s), zy, zs, arg


def _token_terms(
    m, log_s, zy, zs, labels, opts: ChunkedXentOptions, token_weights=None
) -> UniformWeightTerms:
    """The engine's per-token loss and gradient coefficients over all ``V`` classes."""
    return uniform_weight_terms(
        m,
        log_s,
        zy,
        zs if opts.xent.label_smoothing > 0 else None,
        labels,
        num_classes=opts.num_classes,
        ignore_index=opts.ignore_index,
        options=opts.xent,
        token_weights=token_weights,
    )


def _reduce_aux(lse, zl, acc, omega, divisor, reduction: str) -> LinearCrossEntropyAux:
    """The auxiliary outputs from their per-token values, reduced like the loss."""
    if reduction == "sum":
        zl, acc = jnp.sum(zl), jnp.sum(acc)
    elif reduction == "mean":
        zl, acc = jnp.sum(zl) / divisor, jnp.sum(acc) / divisor
    return LinearCrossEntropyAux(lse, zl, jnp.sum(omega), acc)


def _loss_value(x, w, bias, labels, tw, opts: ChunkedXentOptions):
    """``(out, (m, log_s, divisor))``: the reduced loss (and aux) and what the backward needs."""
    out_dtype = compute_dtype(x.dtype)  # float32 for half-precision inputs, as cross_entropy
    if x.shape[0] == 0:  # no tokens: nothing to chunk
        loss = jnp.zeros((0,), out_dtype)
        out, divisor = reduce_token_losses(loss, loss, opts.reduction)
        if opts.return_aux:
            out = (out, _reduce_aux(loss, loss, loss, loss, divisor, opts.reduction))
        return out, (loss, loss, divisor)
    m, log_s, zy, zs, arg = _token_stats(x, w, bias, labels, opts)
    terms = _token_terms(m, log_s, zy, zs, labels, opts, tw)
    out, divisor = reduce_token_losses(terms.loss, terms.omega, opts.reduction)
    out = out.astype(out_dtype)
    if opts.return_aux:
        lse, zl, acc = _aux_token_terms(m, log_s, arg, labels, terms, opts)
        aux = _reduce_aux(lse, zl, acc, terms.omega, divisor, opts.reduction)
        out = (out, jax.tree.map(lambda a: lax.stop_gradient(a.astype(out_dtype)), aux))
    return out, (m, log_s, divisor)


# --------------------------------------------------------------------------------------------
# custom_vjp
# --------------------------------------------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _lce(x, w, bias, labels, token_weights, opts):
    return _loss_value(x, w, bias, labels, token_weights, opts)[0]


def _lce_fwd(x, w, bias, labels, token_weights, opts):
    if opts.fused_token_chunk is not None:
        # residuals: the gradients for a unit cotangent, scaled in the backward pass
        return _fused_value_and_grads(x, w, bias, labels, token_weights, opts)
    out, (m, log_s, divisor) = _loss_value(x, w, bias, labels, token_weights, opts)
    # residuals: the inputs (token weights too, if any) and two floats per token (the shift m
    # and log Σ exp(z − m), kept apart rather than summed to lse) and the mean's divisor; the
    # logits are recomputed in the backward pass
    return out, (x, w, bias, labels, token_weights, m, log_s, divisor)


def _fused_value_and_grads(x, w, bias, labels, tw, opts: ChunkedXentOptions):
    """:func:`_fused_pass` with its block loop a ``while_loop``, differentiated as a scan.

    The forward rule's own block loop matters to a ``jax.checkpoint`` around the call: its
    backward pass reruns the forward rule unless the policy saves what it computes, and a
    policy that saves matmul results (``dots_saveable`` and its kin) would save every block's
    ``dw`` product from the body of a ``scan`` (the stacked residuals of the loop: ``nt``
    ``dw``-sized buffers a call). A ``while_loop`` has no stacked residuals, so such a policy
    reruns the loop instead (one ``dw``, as under the default policy). A ``while_loop`` cannot
    be reverse-differentiated, and the forward rule is differentiated when the gradient itself
    is (``jax.hessian``, grad of grad): the ``custom_jvp`` rule differentiates the same pass
    with the block loop a scan, so those stay as they were.
    """
    return _fused_recomputable(opts, x, w, bias, labels, tw)


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _fused_recomputable(opts, x, w, bias, labels, tw):
    loop = _while_fori_loop
    if opts.implementation == "mosaic_gpu" and mosaic_gpu.interpret_mode():
        # the kernel in GPU interpret mode runs on host callbacks, ordered effects that vmap
        # of a while_loop refuses: the scan keeps the interpreted kernel usable under vmap
        loop = lax.fori_loop
    return _fused_pass(x, w, bias, labels, tw, opts, loop)


@_fused_recomputable.defjvp
def _fused_recomputable_jvp(opts, primals, tangents):
    # the same pass with lax.fori_loop (a scan at static bounds): JAX's JVP of it is linear in
    # the tangents and transposable, so grad of grad and hessians work as before
    return jax.jvp(lambda *a: _fused_pass(*a, opts, lax.fori_loop), primals, tangents)


def _while_fori_loop(lower: int, upper: int, body, init):
    """``lax.fori_loop(lower, upper, body, init)`` as a ``while_loop`` at any bounds."""

    def step(carry):
        i, value = carry
        return i + 1, body(i, value)

    return lax.while_loop(lambda c: c[0] < upper, step, (jnp.int32(lower), init))[1]


def _fused_pass(x, w, bias, labels, tw, opts: ChunkedXentOptions, fori_loop):
    """The reduced loss and ``(dx, dw, dbias)`` for a unit cotangent, in one pass over tokens.

    Each block of ``tn`` tokens forms its logits over the whole (local) vocabulary once: their
    logsumexp, the engine's per-token terms, ``z̄ = G (coef · p − a · onehot − share)`` (times
    ``1 − t²`` under soft-capping), then ``x̄ = z̄ wᵀ`` and ``w̄ += xᵀ z̄``: three ``[N, D] ×
    [D, V]``-sized matmuls in all, against four for the recompute path, which forms every
    logit twice. ``G`` is 1 for ``"sum"`` and ``1 / Σω`` for ``"mean"`` (known from the labels
    and token weights alone: ω is the weight of a token that is not ignored, else 0). With the
    vocabulary sharded, the per-token statistics are combined with ``pmax``/``psum`` before
    ``z̄`` is formed, and ``x̄`` is summed over the shards at the end. With ``return_aux`` the
    loss is ``(loss, aux)``; each block's argmax is taken over its whole (local) vocabulary.
    """
    n, d = x.shape
    v_loc = _local_classes(w, opts)
    cdt = compute_dtype(x.dtype)
    tn = opts.fused_token_chunk
    nt = -(-n // tn)
    axis = opts.axis_name
    smooth = opts.xent.label_smoothing > 0
    y_local = labels - _vocab_offset(opts, v_loc)
    cols = jnp.arange(v_loc)
    valid = labels != opts.ignore_index if opts.ignore_index is not None else None
    if tw is None:
        omega_sum = jnp.sum(valid, dtype=cdt) if valid is not None else jnp.asarray(n, cdt)
        # with ω ∈ {0, 1}, a token contributes exactly when it is not ignored, so nothing
        # contributes exactly when Σω = 0
        contributes = omega_sum > 0
    else:
        omega = tw if valid is None else jnp.where(valid, tw, 0)
        omega_sum, contributes = jnp.sum(omega), jnp.any(omega != 0)
    # the engine's divisor of "mean" (1 for "sum")
    divisor = mean_divisor(omega_sum, contributes) if opts.reduction == "mean" else 1
    scale = jnp.asarray(1 / divisor, cdt)
    mm_dtype = x.dtype  # the matmuls take the operands' dtype and accumulate in cdt
    float16 = x.dtype == jnp.float16  # z̄ is scaled into float16's range (_float16_operand)
    kernel = opts.implementation == "mosaic_gpu"  # each block's z̄ from the Pallas kernel

    def body(i, carry):
        total, dx, dw, db, aux = carry
        row_nominal = i * tn
        row0 = jnp.minimum(row_nominal, n - tn)
        # the last block is shifted back to end at the edge; rows it shares with the previous
        # block were done there
        new_rows = row0 + jnp.arange(tn) >= row_nominal
        x_blk = lax.dynamic_slice_in_dim(x, row0, tn, 0)
        y_blk = lax.dynamic_slice_in_dim(y_local, row0, tn, 0)
        labels_blk = lax.dynamic_slice_in_dim(labels, row0, tn, 0)
        tw_blk = None if tw is None else lax.dynamic_slice_in_dim(tw, row0, tn, 0)
        g = jnp.where(new_rows, scale, 0)
        engine = partial(
            uniform_weight_terms,
            labels=labels_blk,
            num_classes=opts.num_classes,
            ignore_index=opts.ignore_index,
            options=opts.xent,
            token_weights=tw_blk,
        )
        if kernel:
            # the Pallas kernel: the statistics, the engine's terms and z̄ in one read and one
            # write of the block's raw logits (soft-capped inside the kernel; two reads when
            # its rows are split into pieces)
            s_raw, _ = _block_logits(x_blk, w, bias, None, cdt, opts.w_layout)
            dz, m, log_s, zy, zs = mosaic_gpu.linear_xent_block(
                s_raw,
                labels_blk,
                g.astype(jnp.float32),
                None if tw_blk is None else tw_blk.astype(jnp.float32),
                num_classes=opts.num_classes,
                ignore_index=opts.ignore_index,
                options=opts.xent,
                softcap=opts.softcap,
            )
            m, log_s, zy, zs = (a.astype(cdt) for a in (m, log_s, zy, zs))
            # the loss (and aux) from the kernel's statistics, by the same engine
            terms = engine(m, log_s, zy, zs if smooth else None)
            dz = dz.astype(cdt)
            m_loc = m
            if opts.return_aux:  # the argmax of the capped logits (XLA: one more read)
                capped = s_raw if opts.softcap is None else _soft_cap(s_raw, opts.softcap)[0]
                arg_loc = jnp.argmax(capped, axis=1)
        else:
            z, t = _block_logits(x_blk, w, bias, opts.softcap, cdt, opts.w_layout)
            # the shift: the row max over every class (all shards), a constant
            m_loc = lax.stop_gradient(jnp.max(z, axis=1))
            m = m_loc if axis is None else lax.pmax(m_loc, axis)
            xs = z - m[:, None]
            e = jnp.exp(xs)
            s = jnp.sum(e, axis=1)
            onehot = cols[None, :] == y_blk[:, None]
            # z at the label: a gather of one logit per token, not a masked sum over the block
            # (which XLA's CPU backend compiles to a [tn, V] select written out and read
            # back); a label outside this shard's classes (or ignored) adds 0
            here = (y_blk >= 0) & (y_blk < v_loc)
            z_at = jnp.take_along_axis(z, jnp.clip(y_blk, 0, v_loc - 1)[:, None], axis=1)[:, 0]
            zy = jnp.where(here, z_at, 0)
            zs = jnp.sum(xs, axis=1) if smooth else None
            if axis is not None:
                s, zy = lax.psum(s, axis), lax.psum(zy, axis)
                zs = lax.psum(zs, axis) if smooth else None
            log_s = jnp.log(s)
            terms = engine(m, log_s, zy, zs)
            # z̄ = G (coef · p − a · onehot − share), with p = e / s kept in the block
            dz = (g * terms.coef / s)[:, None] * e - jnp.where(onehot, (g * terms.a)[:, None], 0)
            if smooth:
                dz = dz - (g * terms.share)[:, None]
            if t is not None:
                dz = dz * (1 - t * t)  # d/ds [c tanh(s/c)] = 1 − tanh²(s/c)
            if opts.return_aux:
                arg_loc = jnp.argmax(z, axis=1)
        total = total + jnp.sum(jnp.where(new_rows, terms.loss, 0))
        if aux is not None:
            lse_all, zl_tot, acc_tot = aux
            arg = _combined_argmax(arg_loc, m_loc, m, opts, v_loc)
            lse, zl, acc = _aux_token_terms(m, log_s, arg, labels_blk, terms, opts)
            old_lse = lax.dynamic_slice_in_dim(lse_all, row0, tn, 0)
            lse_all = lax.dynamic_update_slice_in_dim(
                lse_all, jnp.where(new_rows, lse, old_lse), row0, 0
            )
            zl_tot = zl_tot + jnp.sum(jnp.where(new_rows, zl, 0))
            acc_tot = acc_tot + jnp.sum(jnp.where(new_rows, acc, 0))
            aux = lse_all, zl_tot, acc_tot
        if float16:
            dzm, down = _float16_operand(dz, g * _dz_bound(terms, smooth, tw is not None))
        else:
            dzm, down = dz.astype(mm_dtype), None
        dx_blk = _dx_block(dzm, w, cdt, opts.w_layout)
        if opts.w_layout == "dv":
            # w̄ += x_blkᵀ z̄ with the block transposed first, behind a barrier so XLA does not
            # fold the transpose back into the contraction: XLA's CPU backend runs a [D, tn] ×
            # [tn, V] product in its fast matmul library, and the one contracting x_blk's
            # leading axis in a slower generic dot (one [1024, 512] × [512, 65536] block: 390
            # against 450 ms)
            x_t = lax.optimization_barrier(x_blk.T)
            dw_blk = lax.dot_general(x_t, dzm, (((1,), (0,)), ((), ())), preferred_element_type=cdt)
        else:  # w̄ [V, D] += z̄ᵀ x_blk, contracting the token axis of both
            dw_blk = lax.dot_general(
                dzm, x_blk, (((0,), (0,)), ((), ())), preferred_element_type=cdt
            )
        if down is not None:  # undo float16's scaling (exact: a power of two)
            dx_blk, dw_blk = dx_blk * down, dw_blk * down
        dw = dw + dw_blk
        old = lax.dynamic_slice_in_dim(dx, row0, tn, 0)
        dx = lax.dynamic_update_slice_in_dim(dx, jnp.where(new_rows[:, None], dx_blk, old), row0, 0)
        if db is not None:
            db = db + jnp.sum(dz, axis=0)
        return total, dx, dw, db, aux

    grads = (
        jnp.zeros((n, d), cdt),
        jnp.zeros(w.shape, cdt),
        None if bias is None else jnp.zeros(bias.shape, cdt),
    )
    aux0 = None
    if opts.return_aux:  # per-token lse, and the totals of the z-loss part and of the hits
        aux0 = (jnp.zeros((n,), cdt), jnp.zeros((), cdt), jnp.zeros((), cdt))
    # the loss total (and aux) is the same on every vocabulary shard (it is made of combined
    # statistics) but not across the token shards; the gradient carries vary over both
    token_axes = tuple(opts.varying_axes)
    init = (
        _varying_over(jnp.zeros((), cdt), token_axes),
        *_varying(grads, opts),
        _varying_over(aux0, token_axes),
    )
    total, dx, dw, db, aux = fori_loop(0, nt, body, init)
    if axis is not None:
        dx = lax.psum(dx, axis)  # each shard holds its classes' share of x̄
    out = (total / divisor).astype(cdt)
    if aux is not None:
        lse_all, zl_tot, acc_tot = aux
        aux = LinearCrossEntropyAux(lse_all, zl_tot / divisor, omega_sum, acc_tot / divisor)
        out = (out, jax.tree.map(lambda a: lax.stop_gradient(a.astype(cdt)), aux))
    # the gradients stay in the compute dtype (float32 for half precision) until the backward
    # pass has scaled them: rounded now, a float16 dw would lose what a loss scale of 65536
    # brings back into range, and overflow where a large "sum" is divided by N afterwards
    return out, (dx, dw, db)


def _lce_bwd(opts: ChunkedXentOptions, res, g):
    # With G_n the cotangent of ℓ_n (g, g / divisor or g_n by reduction), p = exp((z − m) −
    # log_s) and the engine's per-token terms (coef = ω (1 + 2λ lse), a = (1 − ε) ω and
    # share = ε ω / V; 0 for an ignored token, NaN for an out-of-range label), per block:
    #   z̄ = G ⊙ [coef · p − a · onehot(y) − share] ⊙ (1 − t²)   (t² only with softcap)
    #   x̄ += z̄ wᵀ,   w̄ += xᵀ z̄,   b̄ += Σ_n z̄_n
    # and, with the vocabulary sharded, x̄ is summed over the shards. Token weights ω enter
    # through coef, a and share, and get no cotangent (they are constants); neither do the
    # auxiliary outputs, whose cotangents are dropped here.
    if opts.return_aux:
        g = g[0]
    if opts.fused_token_chunk is not None:
        # the gradients were formed in the forward pass for a unit cotangent, in the compute
        # dtype: scale them, then round to the inputs' dtype
        out_dtype = opts.param_dtype or res[0].dtype
        g = g.astype(res[0].dtype)
        dx, dw, db = (None if a is None else (g * a).astype(out_dtype) for a in res)
        return dx, dw, db, None, None
    x, w, bias, labels, tw, m, log_s, divisor = res
    n, d = x.shape
    v_loc = _local_classes(w, opts)
    cdt = compute_dtype(x.dtype)
    if n == 0:
        zero_b = None if bias is None else jnp.zeros_like(bias)
        return jnp.zeros_like(x), jnp.zeros_like(w), zero_b, None, None
    # the terms do not depend on the target logit or the logit sum: zeros stand in for them
    zeros = jnp.zeros_like(m)
    terms = _token_terms(m, log_s, zeros, zeros, labels, opts, tw)
    gn = jnp.broadcast_to(g.astype(cdt) / divisor, (n,))
    smooth = opts.xent.label_smoothing > 0
    tn, tv = opts.token_chunk, min(opts.vocab_chunk, v_loc)
    nt, nv = -(-n // tn), -(-v_loc // tv)
    y_local = labels - _vocab_offset(opts, v_loc)
    mm_dtype = x.dtype  # the backward matmuls take the operands' dtype, accumulate in cdt
    float16 = x.dtype == jnp.float16  # z̄ is scaled into float16's range (_float16_operand)

    def body(k, carry):
        dx, dw, db = carry
        row0, col0, new_rows, new_cols, _ = _block_starts(k, nt, tn, tv, n, v_loc)
        rows = row0 + jnp.arange(tn)
        x_blk = lax.dynamic_slice_in_dim(x, row0, tn, 0)
        w_blk = _w_block(w, col0, tv, opts)
        b_blk = None if bias is None else lax.dynamic_slice_in_dim(bias, col0, tv, 0)
        z, t = _block_logits(x_blk, w_blk, b_blk, opts.softcap, cdt, opts.w_layout)
        # rows already handled by the previous token block contribute nothing again
        g_blk = jnp.where(new_rows, gn[rows], 0)
        # The softmax recomputed from the saved statistics (no max or sum needed again). The
        # shift and the log-sum stay apart: exp(z − lse) would round lse = m + log_s to the
        # precision of m first and lose |m|·eps in every p (p = 1 instead of 0.5 at |z| = 3e7).
        p = jnp.exp((z - m[rows][:, None]) - log_s[rows][:, None])
        dz = (g_blk * terms.coef[rows])[:, None] * p
        if smooth:
            dz = dz - (g_blk * terms.share[rows])[:, None]
        # the one-hot term: −a G_n at the label's column, if it lies in this block
        onehot = (col0 + jnp.arange(tv))[None, :] == y_local[rows][:, None]
        dz = dz - jnp.where(onehot, (g_blk * terms.a[rows])[:, None], 0)
        if t is not None:
            dz = dz * (1 - t * t)  # d/ds [c tanh(s/c)] = 1 − tanh²(s/c)
        # columns already handled by the previous vocabulary block contribute nothing again
        dz = jnp.where(new_cols[None, :], dz, 0)
        if float16:
            bound = _dz_bound(jax.tree.map(lambda a: a[rows], terms), smooth, tw is not None)
            dzm, down = _float16_operand(dz, jnp.abs(g_blk) * bound)
        else:
            dzm, down = dz.astype(mm_dtype), None
        dx_blk = _dx_block(dzm, w_blk, cdt, opts.w_layout)
        if opts.w_layout == "dv":  # [D, tv] = x_blkᵀ z̄
            dw_blk = lax.dot_general(
                x_blk, dzm, (((0,), (0,)), ((), ())), preferred_element_type=cdt
            )
        else:  # [tv, D] = z̄ᵀ x_blk
            dw_blk = lax.dot_general(
                dzm, x_blk, (((0,), (0,)), ((), ())), preferred_element_type=cdt
            )
        if down is not None:  # undo float16's scaling (exact: a power of two)
            dx_blk, dw_blk = dx_blk * down, dw_blk * down
        dx = lax.dynamic_update_slice_in_dim(
            dx, lax.dynamic_slice_in_dim(dx, row0, tn, 0) + dx_blk, row0, 0
        )
        w_axis = 1 if opts.w_layout == "dv" else 0
        dw = lax.dynamic_update_slice_in_dim(
            dw, lax.dynamic_slice_in_dim(dw, col0, tv, w_axis) + dw_blk, col0, w_axis
        )
        if db is not None:
            db_blk = jnp.sum(dz, axis=0)
            db = lax.dynamic_update_slice_in_dim(
                db, lax.dynamic_slice_in_dim(db, col0, tv, 0) + db_blk, col0, 0
            )
        return dx, dw, db

    init = (
        jnp.zeros((n, d), cdt),
        jnp.zeros(w.shape, cdt),
        None if bias is None else jnp.zeros(bias.shape, cdt),
    )
    dx, dw, db = lax.fori_loop(0, nt * nv, body, _varying(init, opts))
    if opts.axis_name is not None:
        dx = lax.psum(dx, opts.axis_name)  # each shard holds its classes' share of x̄
    db = None if db is None else db.astype(bias.dtype)
    return dx.astype(x.dtype), dw.astype(w.dtype), db, None, None


_lce.defvjp(_lce_fwd, _lce_bwd)
