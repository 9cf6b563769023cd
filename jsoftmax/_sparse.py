"""Sparse normalisers with analytic ``jax.custom_vjp`` rules: sparsemax, 1.5-entmax, α-entmax.

α-entmax maps scores ``x`` to the distribution that maximises ``⟨x, p⟩ + H_α(p)`` over the
simplex, with the Tsallis entropy ``H_α``. Its solution is a thresholded power,

    p_i = [(α − 1) x_i − τ]_+^{1/(α−1)},  τ such that Σ_i p_i = 1,

so entries below the threshold are exactly 0. α = 2 is sparsemax (the Euclidean projection onto
the simplex, ``p = [x − τ]_+``), α = 1.5 is 1.5-entmax (``p = [x/2 − τ]_+²``) and α → 1 is
softmax.

Every function here is split like the softmax layer: a primal that finds ``τ``, a ``_fwd`` that
saves the output only, and a ``_bwd`` that applies the closed form of the Jacobian written above
it. On the support ``S = {p > 0}`` the Jacobian is

    ∂p/∂x = diag(u) − u uᵀ / Σu,   u = p^(2−α) on S, 0 off it,

(``u`` is the support's indicator for sparsemax, ``√p`` for 1.5-entmax and ``p`` for softmax),
so the VJP is ``x̄ = u ⊙ g − u ⟨u, g⟩ / Σu``: :func:`support_vjp`.

Finding ``τ``. Every variant first shifts by the maximum (so ``τ ∈ [−1, 0]`` and large
magnitudes cost nothing) and then either

* sorts each slice (``method="sort"``): the textbook closed forms, O(n log n);
* or runs Newton's method on ``f(τ) = Σ_i [z_i − τ]_+^{1/(α−1)} − 1`` from ``τ = −1``
  (``method="newton"``, sparsemax and 1.5-entmax): ``f`` is convex and decreasing, so the
  iterates rise monotonically to the root without overshooting, and as soon as the support
  stops changing the root of that piece is solved exactly (linear for sparsemax, quadratic for
  1.5-entmax). The result is the sort's threshold, in a few O(n) passes instead of a sort;
* or bisects ``τ`` (general α): :func:`entmax`'s ``n_iter``.

``"auto"`` picks by measurement (BENCHMARKS.md): Newton at every shape measured on CPU.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jsoftmax._checks import Axis, as_float_array, compute_dtype
from jsoftmax._softmax import _prepare, max_shifted, softmax
from jsoftmax._xent_engine import poison

__all__ = ["entmax", "entmax15", "sparsemax"]

METHODS = ("auto", "newton", "sort")


def _check_method(method, fn: str) -> str:
    if method not in METHODS:
        raise ValueError(f"{fn}: method must be one of {METHODS}; got {method!r}")
    return "newton" if method == "auto" else method


def _slice_size(shape: tuple[int, ...], axes: tuple[int, ...]) -> int:
    return math.prod(shape[a] for a in axes)


# --------------------------------------------------------------------------------------------
# The shared backward: the Jacobian diag(u) − u uᵀ / Σu
# --------------------------------------------------------------------------------------------


def support_weights(p: jax.Array, power: float | jax.Array) -> jax.Array:
    """``u = p^power`` on the support ``p > 0`` and exactly 0 off it (``power = 2 − α``).

    Sparsemax and 1.5-entmax use plain arithmetic (``ceil(p)`` is the support's indicator for
    ``p ∈ [0, 1]``), which XLA fuses with the sums of :func:`support_vjp`. Other
    powers replace the base by 1 off the support first, so neither the value nor its derivative
    (which higher-order rules take) meets ``0^(negative)``.
    """
    if isinstance(power, (int, float)) and power == 0:
        return jnp.ceil(p)  # sparsemax: the support's indicator
    if isinstance(power, (int, float)) and power == 0.5:
        # 1.5-entmax: √p on the support, and √1 · 0 off it, so that the derivative there (a
        # second-order rule differentiates u) is 0, not ∞ · 0
        on = jnp.ceil(p)
        return jnp.sqrt(p + (1 - on)) * on
    on = p > 0
    # off the support 0 · p: exactly 0, but NaN for a NaN slice (its gradient stays NaN)
    return jnp.where(on, jnp.power(jnp.where(on, p, 1), power), 0 * p)


def support_vjp(u: jax.Array, g: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """``u ⊙ g − u ⟨u, g⟩ / Σu``: the VJP (and JVP: the matrix is symmetric) of α-entmax.

    The sums are contractions (:func:`_dot_over`): linear, so JAX can transpose this as a JVP
    and differentiate it again, and each one fused loop on CPU. A slice with an empty support
    (fully masked) has ``u = 0`` and gets 0, not 0/0.
    """
    su, ug = _dot_over(u, jnp.ones_like(u), axes), _dot_over(u, g, axes)
    # per-slice select after the reductions: a fully masked slice divides by 1 instead of 0
    return u * (g - ug / jnp.where(su > 0, su, 1))


def _series_or_direct(x, direct, coefs, cut):
    """``direct(x)``, or the power series ``Σ_k coefs[k] x^k`` where ``|x| < cut``.

    For quotients that cancel catastrophically near ``x = 0``: the direct form loses about
    ``log10(1/cut²)`` digits at the cut, the series (Horner) none. The direct form sees a safe
    ``x`` (the cut) inside the series' range, so it meets no 0/0 there.
    """
    small = jnp.abs(x) < cut
    xs = jnp.where(small, x, 0)
    series = jnp.zeros_like(x)
    for c in reversed(coefs):
        series = series * xs + c
    return jnp.where(small, series, direct(jnp.where(small, cut, x)))


#: (x/(1+x) − log1p x)/x² = Σ_{k≥1} (−1)^k k/(k+1) x^(k−1); 16 terms: 0.1^16 below float64's ulp
_H_COEFS = tuple((-1) ** k * k / (k + 1) for k in range(1, 17))


def _h(x: jax.Array) -> jax.Array:
    """``(x/(1+x) − log1p(x)) / x²`` for ``x > −1``, accurate at ``x → 0`` (where it is −½)."""
    return _series_or_direct(x, lambda v: (v / (1 + v) - jnp.log1p(v)) / (v * v), _H_COEFS, 0.1)


def alpha_derivative(
    p: jax.Array, u: jax.Array, eps: jax.Array | float, axes: tuple[int, ...]
) -> jax.Array:
    """``∂p/∂α`` per entry, from the output alone (``eps = α − 1``).

    On the support ``p_i = exp(log1p(ε d_i)/ε)`` with ``d_i = z_i − t`` (see
    :func:`entmax_tau_bisect`), so ``ε d_i = expm1(ε log p_i)`` comes back from ``p`` and

        ∂ log p_i/∂ε = G_i − t′/(1 + ε d_i),   G_i = d_i² h(ε d_i),
        h(x) = (x/(1 + x) − log1p x)/x²,

    and ``Σ ∂p/∂ε = 0`` fixes ``t′``: ``∂p/∂α = p ⊙ G − u ⟨p, G⟩ / Σu`` with
    ``u = p/(1 + ε d) = p^(2−α)``. This is ``β² (p − u/Σu) − β (p log p − u Σ p log p / Σu)``
    (``β = 1/ε``) rearranged so that nothing of size ``β²`` cancels: ``h`` is evaluated by its
    series near 0, and float32 keeps its precision as α → 1.
    """
    on = p > 0
    x = jnp.expm1(eps * jnp.log(jnp.where(on, p, 1)))  # ε d on the support, 0 off it
    d = x / eps
    # off the support 0 · p: exactly 0, but NaN for a NaN slice (its gradient stays NaN)
    pg = jnp.where(on, p * (d * d) * _h(x), 0 * p)
    su = jnp.sum(u, axes, keepdims=True)
    su = jnp.where(su > 0, su, 1)
    return pg - u * jnp.sum(pg, axes, keepdims=True) / su


# --------------------------------------------------------------------------------------------
# Thresholds. z is x − max(x) in the compute dtype (≤ 0, max 0), masked entries -inf.
# --------------------------------------------------------------------------------------------


def _to_last(z: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Move ``axes`` to the end and flatten them: ``[..., n]``."""
    batch = tuple(a for a in range(z.ndim) if a not in axes)
    n = _slice_size(z.shape, axes)
    z = jnp.transpose(z, batch + axes)
    # the slice size spelled out: with an empty batch, -1 would be 0 / 0
    return z.reshape((*z.shape[: len(batch)], n))


def _keepdims_shape(shape, axes):
    return tuple(1 if a in axes else d for a, d in enumerate(shape))


def _per_slice(z: jax.Array, axes: tuple[int, ...], value: float) -> jax.Array:
    """``value`` at ``z``'s shape with size 1 along ``axes``, sharded as a reduction of ``z``.

    A loop carry must come out of the body with the sharding it went in with, and the body's
    per-slice values are reductions of ``z``: on a mesh with Explicit axes an array made by
    ``jnp.full(shape)`` is replicated and would not match. ``full_like`` of a reduction takes
    its type (shape, dtype, sharding) and not its value, so the reduction itself is dead code.
    """
    return jnp.full_like(jnp.max(z, axes, keepdims=True), value)


def _class_spec(a: jax.Array, axes: tuple[int, ...]):
    """``a``'s partition spec if its type shards any of ``axes`` (a mesh with Explicit axes),
    else ``None`` (one device, or Auto axes, whose types carry no sharding)."""
    spec = getattr(jax.typeof(a).sharding, "spec", None)
    if spec is None or all(d >= len(spec) or spec[d] is None for d in axes):
        return None
    return tuple(spec) + (None,) * (a.ndim - len(spec))


def _sorted_desc(z, axes):
    z = _to_last(z, axes)
    spec = _class_spec(z, (z.ndim - 1,))
    if spec is not None:
        # a sort needs its axis whole on each device: gather the slices (batch axes stay split)
        z = jax.sharding.reshard(z, P(*spec[:-1], None))
    zs = -jnp.sort(-z, axis=-1)
    k = jnp.arange(1, zs.shape[-1] + 1, dtype=zs.dtype).reshape((1,) * (zs.ndim - 1) + (-1,))
    return zs, k


def sparsemax_tau_sort(z: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Sparsemax threshold by sorting: ``τ = (Σ_{j≤k} z_(j) − 1) / k`` for the largest ``k``
    with ``1 + k z_(k) > Σ_{j≤k} z_(j)`` (Martins & Astudillo's support condition)."""
    zs, k = _sorted_desc(z, axes)
    cs = jnp.cumsum(zs, -1)
    support = jnp.sum(1 + k * zs > cs, -1, keepdims=True)
    top = jnp.take_along_axis(cs, jnp.maximum(support - 1, 0), -1)
    return ((top - 1) / support).reshape(_keepdims_shape(z.shape, axes))


def entmax15_tau_sort(z: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """1.5-entmax threshold by sorting: for the ``k`` largest entries, the smaller root of
    ``Σ_{j≤k} (z_(j) − τ)² = 1`` is ``τ_k = μ_k − √((1 − k σ²_k)/k)`` (mean and variance of
    the ``k`` largest); the support is the largest ``k`` with ``τ_k ≤ z_(k)``."""
    zs, k = _sorted_desc(z, axes)
    finite = jnp.isfinite(zs)  # not -inf (z ≤ 0; a NaN slice is NaN anyway)
    zf = jnp.where(finite, zs, 0)  # -inf entries would make the running sums NaN
    mean = jnp.cumsum(zf, -1) / k
    var = jnp.cumsum(zf * zf, -1) / k - mean * mean
    tau = mean - jnp.sqrt(jnp.maximum((1 - k * var) / k, 0))
    support = jnp.sum((tau <= zs) & finite, -1, keepdims=True)
    top = jnp.take_along_axis(tau, jnp.maximum(support - 1, 0), -1)
    return top.reshape(_keepdims_shape(z.shape, axes))


def _row_sums(terms: tuple[jax.Array, ...], axes: tuple[int, ...]) -> list[jax.Array]:
    """Sums of several arrays over ``axes`` (kept as size 1) in one pass: a variadic reduce.

    Measured on CPU (jax 0.10.2, [4096, 1024] float32): two separate ``jnp.sum`` of terms of the
    same input compile to separate kernels that materialise the terms (16 ms a pass), one
    variadic reduce to one fused loop (1.8 ms).
    """
    zero = jnp.zeros((), terms[0].dtype)

    def add(a, b):
        return tuple(u + v for u, v in zip(a, b, strict=True))

    out = lax.reduce(tuple(terms), (zero,) * len(terms), add, axes)
    keep = _keepdims_shape(terms[0].shape, axes)
    return [o.reshape(keep) for o in out]


def _dot_over(a: jax.Array, b: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """``Σ_axes a ⊙ b`` kept as size-1 axes, as a ``dot_general`` contraction.

    Measured on CPU ([4096, 1024] float32): two ``jnp.sum`` reductions of products of the same
    arrays compile to kernels that materialise the products (16 ms); as contractions they are
    1.5 ms. Unlike a variadic reduce, a contraction is linear in each argument, so JAX can
    transpose and differentiate it.
    """
    batch = tuple(d for d in range(a.ndim) if d not in axes)
    spec = _class_spec(a, axes)
    # contracting a sharded axis: the result is split like a's batch axes (JAX asks to be told)
    out_sharding = None if spec is None else P(*(spec[d] for d in batch))
    out = lax.dot_general(a, b, ((axes, axes), (batch, batch)), out_sharding=out_sharding)
    return out.reshape(_keepdims_shape(a.shape, axes))


def _excess(z: jax.Array, tau: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(r, s)``: ``r = [z − τ]_+`` and the support's indicator ``s = [z > τ]`` as numbers.

    ``τ ≥ −1`` and ``z ≤ 0`` put ``r`` in ``[0, 1]``, where ``ceil(r)`` is exactly the indicator
    (plain arithmetic; a NaN slice stays NaN).
    """
    r = jnp.maximum(z - tau, 0)
    return r, jnp.ceil(r)


def sparsemax_tau_newton(z: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Sparsemax threshold by Newton's method on ``f(τ) = Σ [z − τ]_+ − 1`` from ``τ = −1``.

    ``f`` is convex, decreasing and piecewise linear; from ``f(−1) ≥ 0`` (the maximum alone
    contributes 1) each Newton step lands on the root of the current piece,
    ``τ + f(τ)/|S| = (Σ_S z − 1)/|S|`` over ``S = {z > τ}``, which is ≤ the true root, and the
    support can only shrink. When it stops shrinking that root is the threshold: the sort's
    formula on the sort's support. At most ``n`` steps; 6–7 passes over the data for Gaussian
    scores of 1024 … 262144 entries (BENCHMARKS.md), each one fused loop.
    """
    tau0 = _per_slice(z, axes, -1)
    count0 = _per_slice(z, axes, -1)
    limit = _slice_size(z.shape, axes) + 2

    def body(state):
        i, tau, _, count = state
        r, s = _excess(z, tau)
        k, d1 = _row_sums((s, r), axes)
        # never step back: rounding must not let the support grow again (it bounds the loop)
        return i + 1, jnp.maximum(tau + (d1 - 1) / k, tau), count, k

    def cond(state):
        i, _, before, count = state
        # a NaN slice has a NaN count, which never equals itself: it is done
        return (i < limit) & jnp.any((before != count) & ~jnp.isnan(count))

    _, tau, _, _ = lax.while_loop(cond, body, (0, tau0, count0 - 1, count0))
    return tau


def entmax15_tau_newton(z: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """1.5-entmax threshold by Newton's method on ``f(τ) = Σ [z − τ]_+² − 1`` from ``τ = −1``.

    ``f`` is convex and decreasing, so Newton steps from the left stay ≤ the root and the
    support only shrinks. With ``r = [z − τ]_+`` on the support ``S`` (size ``k``),
    ``D₁ = Σr`` and ``D₂ = Σr²``, each pass takes the Newton step ``τ + (D₂ − 1)/(2 D₁)`` and
    solves the current quadratic piece exactly, ``τ + (D₂ − 1)/(D₁ + √(D₁² − k(D₂ − 1)))``
    (the rationalised smaller root, no cancellation). That root is the threshold when the
    support at it is ``S``, which the next pass counts in the same loop over the data.
    """
    limit = _slice_size(z.shape, axes) + 64
    minus_one = _per_slice(z, axes, -1)

    def body(state):
        i, tau, exact, k_solved, answer, done = state
        r, s = _excess(z, tau)
        _, s_exact = _excess(z, exact)
        k, d1, d2, k_exact = _row_sums((s, r, r * r, s_exact), axes)
        # the previous pass's exact root is confirmed when its support is the one it was
        # solved on; a NaN slice is done (its answer stays NaN)
        confirmed = ~done & ((k_exact == k_solved) | jnp.isnan(k))
        answer = jnp.where(confirmed, exact, answer)
        f = d2 - 1
        exact = tau + f / (d1 + jnp.sqrt(jnp.maximum(d1 * d1 - k * f, 0)))
        newton = jnp.maximum(tau + f / (2 * d1), tau)
        # Newton no longer moves: τ is within rounding of the root. An entry within an ulp of
        # the threshold can make the exact root round onto it and fail the count above on
        # every pass; this pass's exact root is then the threshold to working precision.
        stalled = ~done & ~confirmed & (newton == tau)
        answer = jnp.where(stalled, exact, answer)
        return i + 1, newton, exact, k, answer, done | confirmed | stalled

    def cond(state):
        i, *_, done = state
        return (i < limit) & ~jnp.all(done)

    # the first pass confirms nothing (k_solved = -1 is no support size); the answer starts as
    # a placeholder that is read only where `done` (no NaN constant: see _xent_engine.poison)
    state = (0, minus_one, minus_one, minus_one, minus_one, minus_one > 0)
    _, _, exact, _, answer, done = lax.while_loop(cond, body, state)
    # (the pass limit is never reached in practice; should it be, the last exact root)
    return jnp.where(done, answer, exact)


def _integer_beta(static: float | None) -> int | None:
    """``1/(α − 1)`` when it is an integer 1 … 8 (α = 1 + 1/k): then a product, not a power."""
    if static is None:
        return None
    beta = 1 / (static - 1)
    return round(beta) if abs(beta - round(beta)) < 1e-12 and 1 <= round(beta) <= 8 else None


def entmax_terms(d: jax.Array, eps: jax.Array | float, static: float | None) -> jax.Array:
    """``[1 + ε d]_+^(1/ε)`` (``d = z − t``, ``ε = α − 1``): α-entmax before normalising.

    Computed as ``exp(log1p(ε d)/ε)``: accurate for every ε, and as ε → 0 it tends to
    ``exp(d)`` (softmax) instead of ``1^∞``. For α = 1 + 1/k (k ≤ 8) a k-th power instead.
    """
    x = eps * d
    k = _integer_beta(static)
    if k is not None:
        return lax.integer_pow(jnp.maximum(1 + x, 0), k)
    on = x > -1
    # off the support (ε d ≤ −1) exactly 0; the log sees a safe 0 there
    return jnp.where(on, jnp.exp(jnp.log1p(jnp.where(on, x, 0)) / eps), 0)


def entmax_tau_bisect(
    z: jax.Array,
    axes: tuple[int, ...],
    eps: jax.Array | float,
    static: float | None,
    n_iter: int,
) -> jax.Array:
    """α-entmax threshold ``t`` by bisection, in the units of ``z`` (``ε = α − 1``).

    The textbook threshold ``τ`` of ``[(α − 1) z − τ]_+^(1/(α−1))`` is written
    ``τ = ε t − 1``, so that ``p_i = [1 + ε (z_i − t)]_+^(1/ε)``: as α → 1, ``t`` tends to
    ``logsumexp(z)`` and ``p`` to softmax, where ``τ`` would tend to −1 and lose every digit
    of ``ε z`` to the rounding of ``−1 + ε z``. The mass ``F(t) = Σ p_i`` decreases from
    ``F(0) ≥ 1`` (the maximum ``z = 0`` alone gives 1) to ``F(log n) ≤ n e^(−log n) = 1``
    (``log1p(y) ≤ y``), so ``t ∈ [0, min(log n, 1/ε)]`` (at ``1/ε`` every term is 0). The loop
    stops after ``n_iter`` halvings, once no slice's interval can shrink in this precision, or
    once every interval is below ``eps/8`` (``t`` enters only through ``z − t``, with ``z`` of
    order 1 on the support). The lower end is returned: ``Σ p ≥ 1``, and the caller divides by
    the sum.
    """
    n = _slice_size(z.shape, axes)
    top = math.log(n) if n > 1 else 0.0
    tol = float(jnp.finfo(z.dtype).eps) / 8
    lo0 = _per_slice(z, axes, 0)
    hi0 = lo0 + (min(top, 1 / (static - 1)) if static is not None else jnp.minimum(top, 1 / eps))

    def mass(t):
        return jnp.sum(entmax_terms(z - t, eps, static), axes, keepdims=True)

    def body(state):
        i, lo, hi = state
        mid = (lo + hi) / 2
        above = mass(mid) >= 1
        return i + 1, jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    def cond(state):
        i, lo, hi = state
        mid = (lo + hi) / 2
        return (i < n_iter) & jnp.any((mid != lo) & (mid != hi) & (hi - lo > tol))

    _, lo, _ = lax.while_loop(cond, body, (0, lo0, hi0))
    return lo


def _nan_if_posinf(tau: jax.Array, m: jax.Array) -> jax.Array:
    """The threshold, NaN for a slice whose maximum is ``+inf`` (or ``-inf``: all ``-inf``).

    Shifting by ``+inf`` leaves the other entries at ``-inf`` and the infinite one NaN, which
    the threshold search skips; without this its slice would come out finite (zeros with a NaN
    hole). A ``NaN`` entry needs nothing: the maximum, and so the whole slice, is already NaN.
    ``τ + 0 · m``: ``0 · ±inf`` is NaN, ``0 · m`` exactly 0 for a finite maximum (no NaN or inf
    constant where the result is finite, for ``jax.debug_nans``/``debug_infs``). A per-slice
    operation after the search: it does not split the elementwise kernels.
    """
    return tau + 0 * m


# --------------------------------------------------------------------------------------------
# sparsemax
# --------------------------------------------------------------------------------------------


def sparsemax(
    x: ArrayLike, axis: Axis = -1, *, where: ArrayLike | None = None, method: str = "auto"
) -> jax.Array:
    r"""Sparsemax over ``axis``: the Euclidean projection of ``x`` onto the probability simplex.

    .. math::
        \mathrm{sparsemax}(x) = \operatorname*{argmin}_{p \in \Delta} \|p - x\|^2
        = [x - \tau]_+, \qquad \tau \text{ such that } \textstyle\sum_i [x_i - \tau]_+ = 1

    Entries below the threshold are exactly 0. The gradient is the analytic VJP on the support
    :math:`S = \{i : p_i > 0\}`, :math:`\bar x = [i \in S]\,(g - \tfrac{1}{|S|}\sum_{j \in S}
    g_j)`, from the Jacobian :math:`\mathrm{diag}(s) - s s^\top / |S|` with :math:`s` the
    support's indicator. The rule saves only the output.

    Args:
      x: scores, any shape ``[..., n, ...]``, floating point.
      axis: the axis, or tuple of axes, to normalise over (``None``: all axes).
      where: optional boolean mask broadcastable to ``x``; ``False`` entries are left out.
      method: how the threshold is found: ``"newton"`` (a few O(n) passes), ``"sort"`` (the
        sort-based closed form) or ``"auto"`` (the faster one measured, Newton). Both give
        the same threshold up to rounding.

    Returns:
      An array of ``x``'s shape and dtype whose slices along ``axis`` sum to one.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> print(jsoftmax.sparsemax(jnp.array([1.0, 2.0, 3.0])))
      [0. 0. 1.]
      >>> print(jsoftmax.sparsemax(jnp.array([0.5, 0.25, -1.0])))
      [0.625 0.375 0.   ]
      >>> print(jsoftmax.sparsemax(jnp.array([1e4, 1e4 - 0.5])))
      [0.75 0.25]

    Notes:
      * ``-inf`` entries get probability 0 and a zero gradient.
      * Masked entries are 0 with a zero gradient; a fully masked slice is all 0 with a zero
        gradient.
      * An unmasked slice whose entries are all ``-inf`` is ``NaN``, as for
        :func:`jsoftmax.softmax`; mask it (``where=x > -jnp.inf``) to get zeros.
      * A ``+inf`` or ``NaN`` entry makes its own slice ``NaN``; other slices are unaffected.
      * Tied entries get equal probabilities. Where an entry sits exactly on the threshold the
        function is not differentiable; the rule gives it probability 0 and leaves it out of
        the support (the one-sided derivative).
      * float16/bfloat16 inputs are computed in float32 and returned in the input dtype.
      * Integer and boolean inputs raise ``TypeError``.

    See also:
      :func:`entmax15`, :func:`entmax`, :func:`jsoftmax.sparsemax_loss`,
      :func:`jsoftmax.sparsemax_jacobian`, :func:`jsoftmax.fwd.sparsemax`.
    """
    x, axes, mask = _prepare(x, axis, where, "sparsemax")
    return _sparsemax(x, mask, axes, _check_method(method, "sparsemax"))


def sparsemax_impl(x, where, axes, method):
    """The primal: shift by the maximum, find τ, clip; masked entries exactly 0."""
    z, m = max_shifted(x.astype(compute_dtype(x.dtype)), axes, where)
    find = sparsemax_tau_newton if method == "newton" else sparsemax_tau_sort
    p = jnp.maximum(z - _nan_if_posinf(find(z, axes), m), 0)
    if where is not None:
        p = jnp.where(where, p, jnp.zeros((), p.dtype))  # a fully masked slice: 0, not NaN
    return p.astype(x.dtype)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def sparsemax_twin(x, where, axes, method):
    return sparsemax_impl(x, where, axes, method)


@sparsemax_twin.defjvp
def _sparsemax_jvp(axes, method, primals, tangents):
    x, where = primals
    p = sparsemax_twin(x, where, axes, method)
    cdt = compute_dtype(p.dtype)
    # ṗ = s ⊙ (ẋ − ⟨s, ẋ⟩ / |S|): linear in ẋ, so JAX can transpose it for reverse mode
    u = support_weights(p.astype(cdt), 0)
    return p, support_vjp(u, tangents[0].astype(cdt), axes).astype(p.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _sparsemax(x, where, axes, method):
    return sparsemax_impl(x, where, axes, method)


def _sparsemax_fwd(x, where, axes, method):
    # The output through the forward-mode twin (the same Jacobian as a custom_jvp rule): a
    # derivative of this rule (grad-of-grad, or jax.hessian's forward-over-reverse) then
    # differentiates p analytically instead of through the threshold search.
    p = sparsemax_twin(x, where, axes, method)
    return p, p  # the output is the only residual


def _sparsemax_bwd(axes, method, p, g):
    # x̄ = s ⊙ (g − ⟨s, g⟩ / |S|) with s = [p > 0]: the VJP of diag(s) − s sᵀ / |S|.
    cdt = compute_dtype(p.dtype)
    u = support_weights(p.astype(cdt), 0)
    return support_vjp(u, g.astype(cdt), axes).astype(p.dtype), None


_sparsemax.defvjp(_sparsemax_fwd, _sparsemax_bwd)


# --------------------------------------------------------------------------------------------
# 1.5-entmax
# --------------------------------------------------------------------------------------------


def entmax15(
    x: ArrayLike, axis: Axis = -1, *, where: ArrayLike | None = None, method: str = "auto"
) -> jax.Array:
    r"""1.5-entmax over ``axis``: sparse like sparsemax, smooth like softmax near the top.

    .. math::
        \mathrm{entmax}_{1.5}(x) = \big[\tfrac{x}{2} - \tau\big]_+^2,
        \qquad \tau \text{ such that } \textstyle\sum_i \big[\tfrac{x_i}{2} - \tau\big]_+^2 = 1

    the α = 1.5 member of :func:`entmax` (Peters, Niculae & Martins, 2019). The gradient is the
    analytic VJP :math:`\bar x = u \odot g - u \langle u, g\rangle / \sum_j u_j` with
    :math:`u = \sqrt{p}`, from the Jacobian :math:`\mathrm{diag}(u) - u u^\top / \sum_j u_j`.
    The rule saves only the output.

    Args:
      x: scores, any shape ``[..., n, ...]``, floating point.
      axis: the axis, or tuple of axes, to normalise over (``None``: all axes).
      where: optional boolean mask broadcastable to ``x``; ``False`` entries are left out.
      method: ``"newton"`` (a few O(n) passes, exact root once the support is found),
        ``"sort"`` (the sort-based closed form) or ``"auto"`` (Newton, the faster one measured).

    Returns:
      An array of ``x``'s shape and dtype whose slices along ``axis`` sum to one.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> print(jsoftmax.entmax15(jnp.array([1.0, 2.0, 3.0])))
      [0.     0.1693 0.8307]
      >>> print(jsoftmax.entmax15(jnp.array([0.0, 0.0, -5.0])))
      [0.5 0.5 0. ]

    Notes:
      * ``-inf`` entries get probability 0 and a zero gradient.
      * Masked entries are 0 with a zero gradient; a fully masked slice is all 0 with a zero
        gradient.
      * An unmasked slice whose entries are all ``-inf`` is ``NaN`` (as for softmax); mask it
        to get zeros.
      * A ``+inf`` or ``NaN`` entry makes its own slice ``NaN``; other slices are unaffected.
      * Tied entries get equal probabilities. An entry within rounding of the threshold gets
        0 or a number of the order of the rounding (``"newton"`` and ``"sort"`` may differ
        there by that much).
      * float16/bfloat16 inputs are computed in float32 and returned in the input dtype.
      * Integer and boolean inputs raise ``TypeError``.

    See also:
      :func:`sparsemax`, :func:`entmax`, :func:`jsoftmax.entmax_loss`,
      :func:`jsoftmax.entmax15_jacobian`, :func:`jsoftmax.fwd.entmax15`.
    """
    x, axes, mask = _prepare(x, axis, where, "entmax15")
    return _entmax15(x, mask, axes, _check_method(method, "entmax15"))


def entmax15_impl(x, where, axes, method):
    """The primal: ``z = (x − max x)/2``, find τ, square the clipped difference."""
    z, m = max_shifted(x.astype(compute_dtype(x.dtype)), axes, where)
    z = z / 2  # (α − 1) x with α = 1.5
    find = entmax15_tau_newton if method == "newton" else entmax15_tau_sort
    d = jnp.maximum(z - _nan_if_posinf(find(z, axes), m), 0)
    p = d * d
    if where is not None:
        p = jnp.where(where, p, jnp.zeros((), p.dtype))
    return p.astype(x.dtype)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def entmax15_twin(x, where, axes, method):
    return entmax15_impl(x, where, axes, method)


@entmax15_twin.defjvp
def _entmax15_jvp(axes, method, primals, tangents):
    x, where = primals
    p = entmax15_twin(x, where, axes, method)
    cdt = compute_dtype(p.dtype)
    # ṗ = u ⊙ ẋ − u ⟨u, ẋ⟩ / Σu with u = √p on the support
    u = support_weights(p.astype(cdt), 0.5)
    return p, support_vjp(u, tangents[0].astype(cdt), axes).astype(p.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _entmax15(x, where, axes, method):
    return entmax15_impl(x, where, axes, method)


def _entmax15_fwd(x, where, axes, method):
    p = entmax15_twin(x, where, axes, method)  # through the twin (see sparsemax)
    return p, p


def _entmax15_bwd(axes, method, p, g):
    # x̄ = u ⊙ g − u ⟨u, g⟩ / Σu with u = √p on the support: the VJP of diag(u) − u uᵀ / Σu.
    cdt = compute_dtype(p.dtype)
    u = support_weights(p.astype(cdt), 0.5)
    return support_vjp(u, g.astype(cdt), axes).astype(p.dtype), None


_entmax15.defvjp(_entmax15_fwd, _entmax15_bwd)


# --------------------------------------------------------------------------------------------
# α-entmax
# --------------------------------------------------------------------------------------------


#: Python values of α with an exact function of their own (no bisection)
_EXACT = {1.0: "softmax", 1.5: "entmax15", 2.0: "sparsemax"}


def _prepare_alpha(alpha, x: jax.Array, axes: tuple[int, ...], fn: str):
    """``(kind, static, alpha)``: which function computes α-entmax, and its α.

    ``kind`` is ``"softmax"``, ``"entmax15"`` or ``"sparsemax"`` for a Python number of exactly
    1, 1.5 or 2 (the exact functions), else ``"bisect"``. ``static`` is a Python number's value
    (checked ≥ 1), ``None`` for an array. ``alpha`` is ``None`` for a Python number, else the
    array in the compute dtype at ``x``'s rank, broadcastable to ``x``'s shape with size 1
    along ``axis`` (one α per slice, or one for all).
    """
    if isinstance(alpha, bool):
        raise TypeError(f"{fn}: alpha must be a float or a floating-point array; got {alpha!r}")
    if isinstance(alpha, (np.integer, np.floating)):
        alpha = alpha.item()  # a NumPy scalar is a Python number (np.float32(2) is sparsemax)
    if isinstance(alpha, (int, float)):
        if not (math.isfinite(alpha) and alpha >= 1):
            raise ValueError(f"{fn}: alpha must be finite and >= 1; got {alpha!r}")
        static = float(alpha)
        return _EXACT.get(static, "bisect"), static, None
    a = as_float_array(alpha, "alpha", fn)
    keep = _keepdims_shape(x.shape, axes)
    given = a.shape
    ok = a.ndim <= x.ndim
    if ok:
        a = a.reshape((1,) * (x.ndim - a.ndim) + a.shape)
        try:
            ok = np.broadcast_shapes(a.shape, keep) == keep
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(
            f"{fn}: alpha must be a scalar or broadcastable to {keep} (x's shape {x.shape} with "
            f"size 1 along axis: one alpha per slice); got shape {given}"
        )
    # kept at its own shape (size 1 where it is shared): a broadcast copy would be replicated,
    # not sharded like x, on a mesh with Explicit axes
    return "bisect", None, a.astype(compute_dtype(x.dtype))


def _check_n_iter(n_iter, fn: str) -> int:
    if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)):
        raise TypeError(f"{fn}: n_iter must be a positive int; got {n_iter!r}")
    if n_iter < 1:
        raise ValueError(f"{fn}: n_iter must be a positive int; got {n_iter!r}")
    return n_iter


def entmax(
    x: ArrayLike,
    alpha: float | ArrayLike = 1.5,
    axis: Axis = -1,
    *,
    where: ArrayLike | None = None,
    n_iter: int = 50,
) -> jax.Array:
    r"""α-entmax over ``axis``: softmax at α = 1, sparsemax at α = 2, sparse for every α > 1.

    .. math::
        \alpha\text{-entmax}(x) = \operatorname*{argmax}_{p \in \Delta}
        \langle x, p\rangle + \tfrac{1}{\alpha(\alpha-1)}\textstyle\sum_i (p_i - p_i^\alpha)
        = \big[(\alpha-1)x - \tau\big]_+^{1/(\alpha-1)}

    with :math:`\tau` such that the output sums to one. For α > 1 the threshold is found by
    bisection (at most ``n_iter`` halvings; it stops early once the interval cannot shrink in
    the compute precision) and the output is divided by its sum. The gradient is the analytic
    VJP :math:`\bar x = u \odot g - u \langle u, g\rangle / \sum_j u_j` with
    :math:`u = p^{2-\alpha}` on the support, and for an array ``alpha``

    .. math::
        \bar\alpha = \sum_i g_i \Big[\beta^2\big(p_i - \tfrac{u_i}{\sum u}\big)
        - \beta\big(p_i \log p_i - \tfrac{u_i}{\sum u} \textstyle\sum_j p_j \log p_j\big)\Big],
        \qquad \beta = \tfrac{1}{\alpha - 1},

    both from the output alone: the rule saves only ``p`` (and ``alpha``).

    Args:
      x: scores, any shape ``[..., n, ...]``, floating point.
      alpha: a Python number ≥ 1, or a floating-point array (differentiable) broadcastable to
        ``x``'s shape with size 1 along ``axis`` (one α per slice).
      axis: the axis, or tuple of axes, to normalise over (``None``: all axes).
      where: optional boolean mask broadcastable to ``x``; ``False`` entries are left out.
      n_iter: the most bisection steps on an interval of width at most ``log n`` (float32
        stops by itself after about 25-30; 50 leaves float64 within ``log(n) · 2^-50``).

    Returns:
      An array of ``x``'s shape and dtype whose slices along ``axis`` sum to one.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> print(jsoftmax.entmax(x, 1.25))
      [0.0345 0.2148 0.7507]
      >>> print(jsoftmax.entmax(x, jnp.array(2.0)))
      [0. 0. 1.]

    Notes:
      * A Python ``alpha`` of exactly 1, 1.5 or 2 uses the exact function:
        :func:`jsoftmax.softmax`, :func:`entmax15` or :func:`sparsemax` (and their rules; no
        gradient for ``alpha`` then). Any other Python ``alpha`` > 1 bisects.
      * An array ``alpha`` always bisects; where it is ≤ 1 (or not finite) the output and its
        gradients are ``NaN`` for that slice (values cannot be checked under ``jit``).
      * Same ``-inf``, mask, ``+inf``/``NaN``, dtype conventions as :func:`sparsemax`.
      * Accuracy (measured against float64 for scores of scale 2, n = 10 and 1000): the
        threshold is bisected in the units of the scores, so α → 1 tends to softmax (a
        Python α keeps ``α − 1`` exact even at 1 + 1e-8; a float32 array α that rounds to 1
        is NaN). In float32 the output is within 2e-6 of the exact value for
        1 < α ≤ 3, and ``∂/∂α`` of an array ``alpha`` has a median relative error below
        1e-6 and a 90th percentile below 1e-5 over the same range, α = 1 + 1e-6 included.
        Beyond that, entries at the edge of the support are only Hölder-continuous in the
        scores (exponent ``1/(α − 1)``): a rounding ``δ`` there moves them by up to
        ``δ^(1/(α−1))``, in any algorithm. The error stays below ``eps^(1/(α−1))`` of the
        dtype (float32: 2e-2 at α = 5, 0.2 at α = 10–20; float64: 1e-4 at α = 5), and the
        gradients, with ``u = p^(2−α)`` unbounded at that edge, are not trustworthy in float32
        for α ≥ 5 (they may overflow to inf or NaN). Use float64, or α ≤ 3, there.

    See also:
      :func:`sparsemax`, :func:`entmax15`, :func:`jsoftmax.entmax_loss`,
      :func:`jsoftmax.entmax_jacobian`, :func:`jsoftmax.fwd.entmax`.
    """
    fn = "entmax"
    x, axes, mask = _prepare(x, axis, where, fn)
    kind, static, arr = _prepare_alpha(alpha, x, axes, fn)
    n_iter = _check_n_iter(n_iter, fn)
    if kind == "softmax":
        return softmax(x, axes, where=mask)
    if kind == "entmax15":
        return _entmax15(x, mask, axes, "newton")
    if kind == "sparsemax":
        return _sparsemax(x, mask, axes, "newton")
    return _entmax_bisect(x, arr, mask, axes, n_iter, static)


def entmax_bisect_impl(x, alpha, where, axes, n_iter, static):
    """The primal: ``z = (α − 1)(x − max x)``, bisect τ, power, divide by the sum."""
    z, m = max_shifted(x.astype(compute_dtype(x.dtype)), axes, where)
    eps = _alpha_minus_one(alpha, static)
    t = _nan_if_posinf(entmax_tau_bisect(z, axes, eps, static, n_iter), m)
    p = entmax_terms(z - t, eps, static)
    p = p / jnp.sum(p, axes, keepdims=True)  # bisection leaves Σp ≥ 1 by a rounding error
    if where is not None:
        p = jnp.where(where, p, jnp.zeros((), p.dtype))
    return p.astype(x.dtype)


def _alpha_minus_one(alpha, static):
    """``ε = α − 1``: a Python float for a Python α (exact, even for α = 1 + 1e-8, where
    float32's α would be 1), else the array's, NaN where α ≤ 1 or α is not finite (no sparse
    solution: NaN for the slice, never a finite wrong distribution)."""
    if static is not None:
        return static - 1
    return poison(~((alpha > 1) & jnp.isfinite(alpha)), alpha - 1)[0]


def _sum_to(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``g`` summed over the axes along which an argument of ``shape`` was broadcast."""
    axes = tuple(a for a, (n, m) in enumerate(zip(shape, g.shape, strict=True)) if n != m)
    return jnp.sum(g, axes, keepdims=True) if axes else g


@partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def entmax_bisect_twin(x, alpha, where, axes, n_iter, static):
    return entmax_bisect_impl(x, alpha, where, axes, n_iter, static)


@entmax_bisect_twin.defjvp
def _entmax_bisect_jvp(axes, n_iter, static, primals, tangents):
    x, alpha, where = primals
    dx, dalpha = tangents[0], tangents[1]
    p = entmax_bisect_twin(x, alpha, where, axes, n_iter, static)
    cdt = compute_dtype(p.dtype)
    pc = p.astype(cdt)
    # ṗ = u ⊙ ẋ − u ⟨u, ẋ⟩ / Σu + α̇ ∂p/∂α with u = p^(2−α) on the support
    u = support_weights(pc, 2 - static if static is not None else 2 - alpha)
    dp = support_vjp(u, dx.astype(cdt), axes)
    if static is None:  # a Python α has no tangent
        dp = dp + dalpha * alpha_derivative(pc, u, _alpha_minus_one(alpha, None), axes)
    return p, dp.astype(p.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _entmax_bisect(x, alpha, where, axes, n_iter, static):
    return entmax_bisect_impl(x, alpha, where, axes, n_iter, static)


def _entmax_bisect_fwd(x, alpha, where, axes, n_iter, static):
    p = entmax_bisect_twin(x, alpha, where, axes, n_iter, static)  # the twin (see sparsemax)
    return p, (p, alpha)


def _entmax_bisect_bwd(axes, n_iter, static, res, g):
    # x̄ = u ⊙ g − u ⟨u, g⟩ / Σu with u = p^(2−α) on the support;
    # ᾱ = Σ_i g_i ∂p_i/∂α (alpha_derivative), summed over each slice.
    p, alpha = res
    cdt = compute_dtype(p.dtype)
    p, g = p.astype(cdt), g.astype(cdt)
    u = support_weights(p, 2 - static if static is not None else 2 - alpha)
    dx = support_vjp(u, g, axes).astype(res[0].dtype)
    if static is not None:  # a Python α: no array, no cotangent
        return dx, None, None
    da = alpha_derivative(p, u, _alpha_minus_one(alpha, None), axes)
    dalpha = _sum_to(jnp.sum(g * da, axes, keepdims=True), alpha.shape)
    return dx, dalpha.astype(alpha.dtype), None


_entmax_bisect.defvjp(_entmax_bisect_fwd, _entmax_bisect_bwd)
