"""The cross-entropy engine: per-token statistics to loss, gradient coefficients and reduction.

Every cross-entropy in jsoftmax reduces its logits to the same few numbers per token (per
example), each in its own way, and hands them to this module:

* :func:`jsoftmax.cross_entropy` and the optax drop-ins, from a dense ``[..., C]`` row
  (``_loss.py``);
* :func:`jsoftmax.linear_cross_entropy`, block by block from ``x @ w`` with an online
  logsumexp (``_linear_xent.py``);
* the two vocabulary-parallel losses, combining per-shard numbers with ``pmax``/``psum``
  (``_sharded.py``).

The numbers, for logits ``z``, live classes ``c`` (not masked) and a target row ``t``:

* ``m``: the shift, a constant ``≥ max_c z_c`` (it carries no gradient);
* ``log_s = log Σ_c exp(z_c − m)``, so ``lse = m + log_s``;
* ``tsum = Σ_c t_c``, the target mass;
* ``tz = Σ_c t_c (z_c − m)``, the target-weighted logit relative to the shift;
* ``ω``, the token's weight in the mean (and in the z-loss).

From them, with z-loss weight ``ζ``:

* loss ``ℓ = Σ_c t_c (lse − z_c) + ζ ω lse² = tsum · log_s − tz + ζ ω lse²`` (never
  ``lse − z`` of two large numbers: ``m`` cancels exactly, so a logit of 3e7 costs nothing);
* gradient ``∂ℓ/∂z_c = (tsum + 2 ζ ω lse) · p_c − t_c`` with ``p = softmax(z)``: the engine
  gives the coefficient of ``p``; each caller subtracts its own ``t`` (a gather/scatter for
  integer labels, a block mask for the chunked kernel, a dense row for probabilities);
* ``"mean"`` divides ``Σ ℓ`` by ``Σ ω``.

For integer labels ``y`` with smoothing ``ε``, class weights ``w`` and ``C_n`` live classes,
``t_c = a [c = y] + b w_c`` with ``a = (1 − ε) ω`` and ``b = ε / C_n``: :func:`integer_target`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jsoftmax._mesh import sharded_where

__all__ = [
    "IntegerTarget",
    "TokenStats",
    "UniformWeightTerms",
    "XentOptions",
    "integer_target",
    "mean_divisor",
    "poison",
    "reduce_token_losses",
    "token_loss",
    "uniform_weight_terms",
    "xmul",
    "z_loss_term",
]


class XentOptions(NamedTuple):
    """The loss options every cross-entropy shares; static (hashable, ``nondiff_argnums``)."""

    label_smoothing: float = 0.0  # ε ∈ [0, 1]
    z_loss: float = 0.0  # ζ ≥ 0


class TokenStats(NamedTuple):
    """Per-token statistics (see the module docstring); all of the token shape."""

    m: jax.Array  # the shift
    log_s: jax.Array  # log Σ_c exp(z_c − m) over the live classes
    tsum: jax.Array  # Σ_c t_c
    tz: jax.Array  # Σ_c t_c (z_c − m)
    omega: jax.Array  # ω: weight in the mean and in the z-loss


class IntegerTarget(NamedTuple):
    """``t_c = a [c = y] + b w_c`` per token, and the sums the loss needs."""

    a: jax.Array  # the one-hot part: (1 − ε) ω
    b: jax.Array | None  # the uniform part per unit class weight: ε / C_n (None without ε)
    tsum: jax.Array  # a + b W
    tz: jax.Array  # a (z_y − m) + b Σ_c w_c (z_c − m)


def xmul(coef: jax.Array, x: jax.Array) -> jax.Array:
    """``coef · x``, but 0 wherever ``coef == 0`` even if ``x`` is ±inf (0 · log 0 = 0).

    ``x`` is replaced by 0 before the product rather than the product after it, so no
    ``0 · inf = NaN`` is ever formed (``jax.debug_nans`` reports it even when it is selected
    away).
    """
    return coef * sharded_where(coef == 0, jnp.zeros_like(x), x)


def integer_target(
    omega: jax.Array,
    zy_s: jax.Array,
    eps: float,
    share: jax.Array | float | None = None,
    wtot: jax.Array | float | None = None,
    wz_s: jax.Array | None = None,
) -> IntegerTarget:
    """The target of integer labels from the per-token pieces.

    Args:
      omega: ``ω``, the label's class weight (0 for tokens that take no part).
      zy_s: ``z_y − m``, the label's logit relative to the shift.
      eps: the label smoothing ``ε``.
      share: ``b = ε / C_n`` (0 for tokens that take no part); only read when ``eps > 0``.
      wtot: ``W = Σ_c w_c`` over the live classes; only read when ``eps > 0``.
      wz_s: ``Σ_c w_c (z_c − m)`` over the live classes; only read when ``eps > 0``.
    """
    a = (1 - eps) * omega
    # a label whose logit is -inf scores +inf; a token that takes no part (a = 0) scores 0
    tsum, tz = a, xmul(a, zy_s)
    if eps == 0:
        return IntegerTarget(a, None, tsum, tz)
    return IntegerTarget(a, share, tsum + share * wtot, tz + xmul(share, wz_s))


def z_loss_term(lse: jax.Array, omega: jax.Array, z_loss: float) -> jax.Array:
    """The PaLM z-loss ``ζ ω lse²`` of each token, weighted like it (0 where ``ω = 0``)."""
    return z_loss * xmul(omega, lse * lse)


def token_loss(st: TokenStats, z_loss: float) -> tuple[jax.Array, jax.Array]:
    """``(ℓ, coef)``: the per-token loss and the coefficient of ``softmax(z)`` in its gradient.

    ``ℓ = tsum · log_s − tz + ζ ω lse²`` and ``∂ℓ/∂z_c = coef · p_c − t_c`` with
    ``coef = tsum + 2 ζ ω lse``. A token with no target mass scores 0 even where its row has no
    live class (``log_s = -inf``).
    """
    loss = xmul(st.tsum, st.log_s) - st.tz
    coef = st.tsum
    if z_loss:
        # the PaLM z-loss ζ ω lse², weighted like the token; its gradient adds 2 ζ ω lse · p
        lse = st.m + st.log_s
        loss = loss + z_loss_term(lse, st.omega, z_loss)
        coef = coef + 2 * z_loss * xmul(st.omega, lse)
    return loss, coef


def poison(bad: jax.Array | None, *values: jax.Array):
    """NaN wherever ``bad`` (an out-of-range label under ``jit``): never a finite wrong number.

    Each value is multiplied by ``1 + sqrt(−bad)``: 1 where the label is fine (the value is
    unchanged, ±inf included) and NaN where it is not. A product, not a select, so that the
    gradient of a poisoned value is NaN too (a select would pass a zero gradient to a rule
    differentiated by autodiff, such as the vocabulary-parallel loss); and the NaN is made only
    where a label is bad, so ``jax.debug_nans`` stays quiet on valid labels.
    """
    if bad is None:
        return values
    return tuple(v * (1 + jnp.sqrt(-bad.astype(v.dtype))) for v in values)


def mean_divisor(omega_sum: jax.Array, contributes: jax.Array) -> jax.Array:
    """The divisor of ``"mean"``: ``Σ ω``, or 1 where no token contributes anything.

    With nothing contributing (every token ignored or masked, or of weight 0 with no smoothing
    mass) the mean is 0 and its gradient 0, not 0/0. Weights of contributing tokens that sum
    to 0 divide by 0 (±inf or NaN, as in PyTorch): never a finite wrong mean.
    """
    nothing = (omega_sum == 0) & ~contributes
    return sharded_where(nothing, jnp.ones_like(omega_sum), omega_sum)


def reduce_token_losses(
    loss: jax.Array, omega: jax.Array, reduction: str
) -> tuple[jax.Array, jax.Array]:
    """``(reduced, divisor)``: ``"none"``: ``loss``; ``"sum"``: ``Σ ℓ``; ``"mean"``: ``Σ ℓ / Σ ω``.

    ``divisor`` is what each token's loss was divided by (1 except for ``"mean"``, see
    :func:`mean_divisor`), for a rule that scales the cotangent itself.
    """
    one = jnp.ones((), loss.dtype)
    if reduction == "none":
        return loss, one
    total = jnp.sum(loss)
    if reduction == "sum":
        return total, one
    divisor = mean_divisor(jnp.sum(omega), jnp.any(loss != 0))
    return total / divisor, divisor


class UniformWeightTerms(NamedTuple):
    """Per-token terms of integer labels with no class weights or masks (see below)."""

    loss: jax.Array  # ℓ (NaN for an out-of-range label, 0 for an ignored token)
    coef: jax.Array  # the coefficient of p in ∂ℓ/∂z (NaN for an out-of-range label)
    a: jax.Array  # the one-hot part of t: (1 − ε) ω
    share: jax.Array  # the uniform part of t: ε ω / V
    omega: jax.Array  # ω: the token's weight (1 unweighted), 0 for an ignored one


def uniform_weight_terms(
    m: jax.Array,
    log_s: jax.Array,
    zy: jax.Array,
    zs: jax.Array | None,
    labels: jax.Array,
    *,
    num_classes: int,
    ignore_index: int | None,
    options: XentOptions,
    token_weights: jax.Array | None = None,
) -> UniformWeightTerms:
    """The engine for integer labels over all ``V = num_classes`` classes, no class weights.

    The chunked and the vocabulary-parallel losses reduce their logits to ``m``, ``log_s``, the
    label's raw logit ``zy`` and ``zs = Σ_c (z_c − m)`` (needed with smoothing only; relative
    to the shift, so that ``ε (lse − z̄) = ε log_s − (ε / V) zs`` has no cancellation). Tokens
    whose label is ``ignore_index`` take no part (ω = 0); an out-of-range label gives NaN, also
    with a token weight of 0. ``token_weights`` (labels' shape, or None for 1) is ``ω`` of
    every token that is not ignored: the whole target, hence the loss ``ω ℓ`` (0 where
    ``ω = 0``, even where ``ℓ`` is infinite), its z-loss and its share of the mean.
    """
    eps, v = options.label_smoothing, num_classes
    valid = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= v))
    if token_weights is None:
        omega = valid.astype(m.dtype)
    else:  # a select, not a product: an ignored token's weight (even NaN) is never read
        omega = jnp.where(valid, token_weights.astype(m.dtype), 0)
    share = (eps / v) * omega
    if eps:
        target = integer_target(omega, zy - m, eps, share, v, zs)
    else:
        target = integer_target(omega, zy - m, eps)
    loss, coef = token_loss(TokenStats(m, log_s, target.tsum, target.tz, omega), options.z_loss)
    loss, coef = poison(bad, loss, coef)
    return UniformWeightTerms(loss, coef, target.a, share, omega)
