"""Fenchel–Young losses of the sparse normalisers: ``sparsemax_loss`` and ``entmax_loss``.

For a regulariser ``Ω`` (here the negative Tsallis α-entropy, ``Ω_α(p) = (Σ p^α − 1) /
(α(α − 1))``, and ``Σ p log p`` at α = 1) the Fenchel–Young loss of scores ``θ`` against a
target distribution ``t`` is

    L(θ; t) = Ω*(θ) − ⟨θ, t⟩ + Ω(t),   Ω*(θ) = max_{p ∈ Δ} ⟨θ, p⟩ − Ω(p) = ⟨θ, p*⟩ − Ω(p*),

with ``p* = α-entmax(θ)``. It is ≥ 0, zero exactly when ``p* = t``, and ``∂L/∂θ = p* − t``. At
α = 1 it is the cross-entropy (minus the target's entropy); at α = 2 the sparsemax loss.

Only ``Ω*`` needs a rule: :func:`_conjugate` is a ``custom_vjp`` whose backward pass is
``g · p*`` (saving ``p*`` only); the linear term ``⟨θ, t⟩`` and ``Ω(t)`` are plain JAX, so the
whole backward is the fused ``g · (p* − t)`` and the labels get their own exact gradient
``∇Ω(t) − θ``. Options, label layout and reduction come from the cross-entropy's shared
preparation (``_loss._prepare``) and engine (:func:`reduce_token_losses`).

Everything is computed relative to the row maximum ``m`` (constant): ``L = Ω*(z) − ⟨z, t⟩ +
Ω(t) + m (1 − Σt)`` with ``z = θ − m``, which is the same number without forming ``Ω*(θ)`` and
``⟨θ, t⟩`` apart (two large numbers for large logits). The last term is exactly 0 for a target
that sums to one.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jsoftmax._checks import Axis, check_reduction, compute_dtype
from jsoftmax._loss import _example_weight, _per_class, _prepare, _safe_labels
from jsoftmax._mesh import take_at_label
from jsoftmax._softmax import logsumexp, max_shifted
from jsoftmax._sparse import (
    _alpha_minus_one,
    _check_n_iter,
    _prepare_alpha,
    _series_or_direct,
    _sum_to,
    entmax15_twin,
    entmax_bisect_twin,
    sparsemax_twin,
)
from jsoftmax._xent_engine import poison, reduce_token_losses, xmul

__all__ = ["entmax_loss", "sparsemax_loss"]


@jax.custom_jvp
def _xlogx(p: jax.Array) -> jax.Array:
    """``Σ p log p`` over the last axis, ``0 log 0 = 0``, with the true derivative ``log p + 1``.

    The value never forms ``log 0`` (no ``-inf`` where the result is finite, for
    ``jax.debug_infs``); the derivative is ``-inf`` at ``p = 0``, as it truly is.
    """
    on = p > 0
    return jnp.sum(jnp.where(on, p * jnp.log(jnp.where(on, p, 1)), 0), -1)


@_xlogx.defjvp
def _xlogx_jvp(primals, tangents):
    # d/dp (p log p) = log p + 1
    (p,), (dp,) = primals, tangents
    return _xlogx(p), jnp.sum((jnp.log(p) + 1) * dp, -1)


#: (y eʸ − expm1 y)/y² = Σ_{j≥0} (j+1)/(j+2)! y^j (17 terms: far below float64's ulp at 0.1)
_A_COEFS = tuple((j + 1) / math.factorial(j + 2) for j in range(17))


def _tsallis_parts(p, eps, on_simplex):
    """``(on, y, S)``: the support, ``y = ε log p`` on it, ``S = Σ p^α − 1`` without
    cancellation (``p^α − p = p expm1(ε log p)``, plus ``Σp − 1``, exactly 0 on the simplex)."""
    on = p > 0
    y = eps * jnp.log(jnp.where(on, p, 1))
    s = jnp.sum(jnp.where(on, p * jnp.expm1(y), 0), -1)
    return on, y, s if on_simplex else s + (jnp.sum(p, -1) - 1)


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _tsallis_general(p: jax.Array, eps: jax.Array, on_simplex: bool) -> jax.Array:
    """``Ω_α(p) = (Σ p^α − 1) / (α (α − 1))`` over the last axis, ``ε = α − 1`` (``[..., 1]``
    or a scalar), accurate as ε → 0 where it tends to ``Σ p log p``. ``on_simplex``: ``p``
    sums to one by construction and ``Σp − 1`` (rounding) is left out."""
    _, _, s = _tsallis_parts(p, eps, on_simplex)
    e = eps[..., 0] if jnp.ndim(eps) else eps
    return s / (e * (1 + e))


@_tsallis_general.defjvp
def _tsallis_general_jvp(on_simplex, primals, tangents):
    # ∂Ω/∂p_i = p_i^ε / ε. With y = ε log p, A(y) = y eʸ − expm1 y = y² a(y) and
    # B(y) = y eʸ − 2 expm1 y:
    #   ∂Ω/∂ε = Σ_i p_i (log² p_i · a(y_i) + B(y_i)/ε) / (1 + ε)²
    #           − (Σp − 1)(1 + 2ε) / (ε(1 + ε))²,
    # the quotient rule on S/(ε(1+ε)) with the 1/ε terms cancelled analytically (a by series).
    (p, eps), (dp, deps) = primals, tangents
    on, y, s = _tsallis_parts(p, eps, on_simplex)
    e = eps[..., 0] if jnp.ndim(eps) else eps
    de = deps[..., 0] if jnp.ndim(deps) else deps
    value = s / (e * (1 + e))
    ey = jnp.where(on, jnp.exp(y), 0)  # p^ε, 0 off the support
    dvalue_dp = jnp.sum(ey * dp, -1) / e
    logp = jnp.log(jnp.where(on, p, 1))
    a = _series_or_direct(y, lambda v: (v * jnp.exp(v) - jnp.expm1(v)) / (v * v), _A_COEFS, 0.1)
    b = y * ey - 2 * jnp.where(on, jnp.expm1(y), 0)
    per = jnp.where(on, p * (logp * logp * a + b / eps), 0)
    d_eps = jnp.sum(per, -1) / (1 + e) ** 2
    if not on_simplex:
        d_eps = d_eps - (jnp.sum(p, -1) - 1) * (1 + 2 * e) / (e * (1 + e)) ** 2
    return value, dvalue_dp + de * d_eps


def _tsallis(p: jax.Array, alpha, static, on_simplex: bool = False) -> jax.Array:
    """``Ω_α(p) = (Σ p^α − 1) / (α(α − 1))`` over the last axis (``Σ p log p`` at α = 1).

    Zero entries contribute exactly 0 and a finite derivative (the base is replaced by 1 off
    the support before the power or the log); α = 1 has the true ``log p + 1``.
    """
    if static == 1.0:
        return _xlogx(p)
    if static == 2.0:
        return (jnp.sum(p * p, -1) - 1) / 2
    on = p > 0
    if static == 1.5:
        return (jnp.sum(jnp.where(on, p * jnp.sqrt(jnp.where(on, p, 1)), 0), -1) - 1) / 0.75
    eps = jnp.asarray(static - 1, p.dtype) if static is not None else _alpha_minus_one(alpha, None)
    return _tsallis_general(p, eps, on_simplex)


def _normalise(z, alpha, mask, kind, n_iter, static):
    """``p* = α-entmax(z)`` over the last axis, through the analytic rule of its ``custom_jvp``
    twin, so that derivatives of the loss's own rule (grad-of-grad, ``jax.hessian``) are exact."""
    if kind == "sparsemax":
        return sparsemax_twin(z, mask, (z.ndim - 1,), "newton")
    if kind == "entmax15":
        return entmax15_twin(z, mask, (z.ndim - 1,), "newton")
    return entmax_bisect_twin(z, alpha, mask, (z.ndim - 1,), n_iter, static)


def _conjugate_forward(z, alpha, mask, kind, n_iter, static):
    p = _normalise(z, alpha, mask, kind, n_iter, static)
    # Ω*(z) = ⟨z, p*⟩ − Ω(p*); entries off the support (p = 0, z possibly -inf) add 0. p* is
    # on the simplex by construction: its Σp − 1 is rounding, which Ω_α would scale by
    # 1/(α(α − 1)) (10 for float32 at α = 1 + 1e-8), so it is left out
    value = jnp.sum(xmul(p, z), -1) - _tsallis(p, alpha, static, on_simplex=True)
    return value, p


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _conjugate(z, alpha, mask, kind, n_iter, static):
    return _conjugate_forward(z, alpha, mask, kind, n_iter, static)[0]


def _conjugate_fwd(z, alpha, mask, kind, n_iter, static):
    value, p = _conjugate_forward(z, alpha, mask, kind, n_iter, static)
    return value, (p, alpha)  # the maximiser p* is the only array residual


def _conjugate_bwd(kind, n_iter, static, res, g):
    # ∂Ω*/∂z = p* (Danskin: the maximiser); ∂Ω*/∂α = −∂_α Ω_α(p*) at fixed p*, with
    #   ∂_α Ω_α(p) = Σ p^α log p / (α(α−1)) − (Σ p^α − 1)(2α − 1) / (α(α−1))²
    # taken from the Tsallis rule's JVP in ε = α − 1 (which cancels its 1/ε terms exactly).
    p, alpha = res
    dz = g[..., None] * p
    if alpha is None:
        return dz, None, None
    eps = _alpha_minus_one(alpha, None)
    _, d_omega = jax.jvp(lambda e: _tsallis_general(p, e, True), (eps,), (jnp.ones_like(eps),))
    return dz, _sum_to((-g * d_omega)[..., None], alpha.shape).astype(alpha.dtype), None


_conjugate.defvjp(_conjugate_fwd, _conjugate_bwd)


@jax.custom_vjp
def _target_dot(t: jax.Array, z: jax.Array) -> jax.Array:
    """``⟨t, z⟩`` over the last axis with ``0 · (−inf) = 0``, and the exact derivatives.

    A class with no target mass and a ``-inf`` logit adds nothing to the value, but the
    derivative with respect to its target is still its logit: a plain ``where(t == 0, 0, t z)``
    would report 0 there for every zero target (a finite wrong number), not ``z`` (or ``−inf``).
    """
    return jnp.sum(xmul(t, z), -1)


def _target_dot_fwd(t, z):
    # the value computed here, not by calling _target_dot: under jax.hessian's outer forward
    # pass, a custom_vjp function called inside this rule would meet forward mode
    return jnp.sum(xmul(t, z), -1), (t, z)


def _target_dot_bwd(res, g):
    # ∂⟨t, z⟩/∂t = z (even where t = 0), ∂⟨t, z⟩/∂z = t
    t, z = res
    return g[..., None] * z, g[..., None] * t


_target_dot.defvjp(_target_dot_fwd, _target_dot_bwd)


def _fy_loss(fn, logits, labels, axis, weight, ignore_index, reduction, where, alpha, n_iter):
    """Shared body of the two losses: per-example ``ω · L`` and the reduction."""
    check_reduction(reduction, fn)
    inp = _prepare(logits, labels, axis, weight, ignore_index, where, fn)
    cdt = compute_dtype(inp.logits.dtype)
    theta = inp.logits.astype(cdt)
    if not isinstance(alpha, (int, float, np.integer, np.floating)) or isinstance(alpha, bool):
        a = jnp.asarray(alpha)
        batch = theta.shape[:-1]
        try:
            ok = a.ndim <= len(batch) and np.broadcast_shapes(a.shape, batch) == batch
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{fn}: alpha must be a scalar or broadcastable to {batch} (one alpha per "
                f"example: logits' shape without the class axes); got shape {a.shape}"
            )
        alpha = a[..., None]  # size 1 along the classes
    kind, static, arr = _prepare_alpha(alpha, theta, (theta.ndim - 1,), fn)
    # z = θ − m with the row maximum m a constant (a finite start: a fully masked row is all
    # -inf, p* = 0, and the example is masked anyway)
    z, m = max_shifted(theta, (theta.ndim - 1,), inp.mask, finite=True)
    m = m[..., 0]
    if kind == "softmax":
        conj = logsumexp(z, -1, where=inp.mask)  # Ω* of the Shannon entropy, and its rule
    else:
        conj = _conjugate(z, arr, inp.mask, kind, n_iter, static)

    if jnp.issubdtype(inp.labels.dtype, jnp.integer):
        # t = one-hot(y): ⟨z, t⟩ = z_y (a gather; its backward a scatter of −1), Ω(t) = 0
        bad, y = _safe_labels(inp.labels, theta.shape[-1], inp.ok)
        zy = take_at_label(theta, y) - m
        omega = _example_weight(inp, cdt)
        (scale,) = poison(bad, omega)  # an out-of-range label under jit: NaN, never finite
        # a label whose logit is -inf scores +inf; an ignored or masked example scores 0
        loss = xmul(scale, conj - zy)
    else:
        t = inp.labels.astype(cdt)
        if inp.mask is not None:
            t = jnp.where(inp.mask, t, 0)  # masked classes carry no target mass
        lin = _target_dot(t, z)
        omega_t = _tsallis(t, arr, static)
        # m (1 − Σt) is 0 for a target that sums to one; it keeps the loss the Fenchel–Young
        # loss of θ (and ∂L/∂t = ∇Ω(t) − θ) for one that does not
        per = conj - lin + omega_t + lax.stop_gradient(m) * (1 - jnp.sum(t, -1))
        # class weights: each example weighs its expected class weight ⟨w, t⟩
        omega = (
            jnp.ones_like(per)
            if inp.weight is None
            else jnp.sum(t * _per_class(inp.weight, t.ndim), -1)
        )
        if inp.ok is not None:
            omega = jnp.where(inp.ok, omega, 0)
        loss = xmul(omega, per)
    return reduce_token_losses(loss, omega, reduction)[0]


_LOSS_ARGS = """
    Args:
      logits: unnormalised scores ``[..., classes]`` (classes along ``axis``), floating point.
      labels: integer class indices of ``logits``' shape without ``axis`` (``[batch]``), or
        floating-point target distributions of ``logits``' shape (``[batch, classes]``), each
        summing to one over the classes (see Notes for ones that do not).
      axis: the class axis, or a tuple of axes flattened (in the order given) into one.
      weight: optional per-class weights ``[classes]`` (constants): an example weighs
        ``weight[y]`` (integer labels) or ``⟨weight, t⟩`` (probability labels), in the loss
        and in the mean's denominator.
      ignore_index: an integer label value whose examples contribute nothing (integer labels).
      reduction: ``"mean"`` (weighted: ``Σ ω L / Σ ω``), ``"sum"`` or ``"none"``.
      where: optional boolean mask, per example (``[batch]``) or per class (``logits``' rank,
        broadcastable): masked classes leave the normaliser and the target; an example with
        every class masked, or masked itself, contributes nothing."""


def sparsemax_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: Axis = -1,
    weight: ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""The sparsemax loss: the Fenchel–Young loss of :func:`jsoftmax.sparsemax`.

    .. math::
        L(z; t) = \langle z, p\rangle - \tfrac12\|p\|^2 - \langle z, t\rangle
        + \tfrac12\|t\|^2, \qquad p = \mathrm{sparsemax}(z)

    For integer labels this is Martins & Astudillo's
    :math:`-z_y + \tfrac12\sum_{j \in S}(z_j^2 - \tau^2) + \tfrac12`. It is ≥ 0 (see Notes for
    masked labels), zero exactly when :math:`p = t`, and its gradient is :math:`p - t`
    (computed as such: the rule saves only :math:`p`).
    {args}

    Returns:
      A scalar for ``"mean"``/``"sum"``, per-example losses of ``logits``' shape without
      ``axis`` for ``"none"``; float32 for half-precision logits.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jsoftmax
      >>> z = jnp.array([[2.0, 1.0, -1.0], [0.5, 0.25, -1.0]])
      >>> print(jsoftmax.sparsemax_loss(z, jnp.array([0, 1]), reduction="none"))
      [0.     0.3906]
      >>> print(jax.grad(jsoftmax.sparsemax_loss)(z, jnp.array([0, 1])))
      [[ 0.      0.      0.    ]
       [ 0.3125 -0.3125  0.    ]]

    Notes:
      * A ``-inf`` logit off the label is fine (probability 0); at the label the loss is
        ``+inf``.
      * A ``+inf`` or ``NaN`` logit makes that example's loss ``NaN``.
      * Out-of-range integer labels raise ``ValueError`` when concrete; under ``jit`` they give
        a ``NaN`` loss and gradient row.
      * If no example contributes, ``"mean"`` returns 0 with zero gradients.
      * Probability labels are differentiable: :math:`\partial L/\partial t = t - z`. For a
        target that does not sum to one the loss is still the Fenchel–Young loss of the
        logits, which then moves with their level by :math:`m (1 - \sum t)` (``m`` the row
        maximum; the gradients are exact). This includes targets that miss 1 by rounding
        (bfloat16, or float32 targets with float64 logits): normalise them in the logits'
        dtype when the logits are large.
      * "≥ 0" holds for targets on the live classes. An integer label on a class masked by
        ``where`` scores its own logit against the masked normaliser (as
        :func:`jsoftmax.cross_entropy` does) and can give a negative loss; probability mass
        on masked classes is dropped from the target.
      * Class weights with probability labels weigh each example by ``⟨weight, t⟩`` (one-hot
        targets then equal integer labels); :func:`jsoftmax.cross_entropy` weighs each class
        term instead.
      * float16/bfloat16 logits are computed in float32.

    See also:
      :func:`entmax_loss`, :func:`jsoftmax.sparsemax`, :func:`jsoftmax.cross_entropy`.
    """
    return _fy_loss(
        "sparsemax_loss", logits, labels, axis, weight, ignore_index, reduction, where, 2.0, 1
    )


def entmax_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    alpha: float | ArrayLike = 1.5,
    *,
    axis: Axis = -1,
    weight: ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    where: ArrayLike | None = None,
    n_iter: int = 50,
) -> jax.Array:
    r"""The α-entmax loss: the Fenchel–Young loss of :func:`jsoftmax.entmax`.

    .. math::
        L(z; t) = \langle z, p - t\rangle - \Omega_\alpha(p) + \Omega_\alpha(t),
        \qquad \Omega_\alpha(p) = \frac{\sum_i p_i^\alpha - 1}{\alpha(\alpha - 1)},
        \qquad p = \alpha\text{-entmax}(z)

    (:math:`\Omega_1(p) = \sum_i p_i \log p_i`). It is ≥ 0 (targets on the live classes), zero
    exactly when :math:`p = t`, and its gradient is :math:`p - t`. At α = 1 it is the
    cross-entropy minus the target's entropy (without class weights; equal to
    :func:`jsoftmax.cross_entropy` for integer labels, with every option), at α = 2
    :func:`sparsemax_loss`.
    {args}
      alpha: a Python number ≥ 1 (1, 1.5 and 2 use the exact normalisers; others bisect) or
        a floating-point array, differentiable, broadcastable to the logits without the class
        axis (one α per example); it always bisects.
      n_iter: the most bisection steps.

    Returns:
      A scalar for ``"mean"``/``"sum"``, per-example losses of ``logits``' shape without
      ``axis`` for ``"none"``; float32 for half-precision logits.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> z = jnp.array([[2.0, 1.0, -1.0], [0.5, 0.25, -1.0]])
      >>> print(jsoftmax.entmax_loss(z, jnp.array([0, 1]), reduction="none"))
      [0.0617 0.5266]
      >>> print(jsoftmax.entmax_loss(z, jnp.array([0, 1]), alpha=1.0, reduction="none"))
      [0.349  0.9441]

    Notes:
      * Same ``-inf``/``NaN``/out-of-range/empty-mean conventions as :func:`sparsemax_loss`.
      * An array ``alpha`` ≤ 1 gives ``NaN`` for its examples.
      * The gradient with respect to an array ``alpha`` is :math:`-\partial_\alpha
        \Omega_\alpha(p) + \partial_\alpha \Omega_\alpha(t)` (envelope theorem), from ``p``.

    See also:
      :func:`sparsemax_loss`, :func:`jsoftmax.entmax`, :func:`jsoftmax.cross_entropy`.
    """
    fn = "entmax_loss"
    n_iter = _check_n_iter(n_iter, fn)
    return _fy_loss(fn, logits, labels, axis, weight, ignore_index, reduction, where, alpha, n_iter)


sparsemax_loss.__doc__ = sparsemax_loss.__doc__.replace("{args}", _LOSS_ARGS)
entmax_loss.__doc__ = entmax_loss.__doc__.replace("{args}", _LOSS_ARGS)
