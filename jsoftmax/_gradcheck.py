"""``jsoftmax check``: :func:`jax.test_util.check_grads` on every public differentiable function.

Each function is checked in float64 at small random inputs, for derivative orders 1 and 2
(``check_grads(order=k)`` checks every order up to ``k``), in the modes its rules support:
reverse mode for the ``custom_vjp`` functions, forward and reverse for :mod:`jsoftmax.fwd`.
The tolerances and the finite-difference step are this module's :data:`ATOL`, :data:`RTOL` and
:data:`EPS`, printed with the results; a failure reports check_grads' own message (which
derivative disagreed, and by how much).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.test_util import check_grads

__all__ = ["ATOL", "EPS", "RTOL", "Case", "cases", "check_case", "main", "run_checks"]

#: Absolute and relative tolerance handed to ``check_grads`` (its float64 default is 1e-5;
#: every case passes at 1e-7, so 1e-6 leaves a margin and still catches a wrong rule).
ATOL = RTOL = 1e-6
#: The central finite-difference step handed to ``check_grads`` (its default).
EPS = 1e-4


@dataclass(frozen=True)
class Case:
    """One function to check: ``fn`` of float64 ``args`` (integer arguments closed over)."""

    name: str
    fn: Callable
    args: tuple
    order: int = 2
    modes: tuple[str, ...] = ("rev",)


def cases(seed: int = 0) -> list[Case]:
    """The checked functions with small float64 inputs (call inside ``jax.enable_x64``)."""
    import jsoftmax
    from jsoftmax import fwd

    k = jax.random.split(jax.random.key(seed), 6)
    x = jax.random.normal(k[0], (4, 7), jnp.float64) * 2
    mask = jax.random.bernoulli(k[1], 0.75, (4, 7)).at[:, 0].set(True)
    labels = jax.random.randint(k[2], (4,), 0, 7)
    probs = jax.nn.softmax(jax.random.normal(k[3], (4, 7), jnp.float64))
    weight = jax.random.uniform(k[4], (7,), jnp.float64, 0.5, 2.0)
    h = jax.random.normal(k[5], (6, 5), jnp.float64)
    w = jax.random.normal(k[5], (5, 7), jnp.float64) * 0.5
    tok = labels.at[3].set(1)
    tok = jnp.concatenate([tok, tok[:2]])
    ce = jsoftmax.cross_entropy
    lce = jsoftmax.linear_cross_entropy
    # scores for the sparse normalisers with every entry at least 0.1 from its slice's
    # threshold, so the finite differences never cross a change of support (where the
    # derivative jumps), and no probability on the support below 0.02 (1.5-entmax's second
    # derivative grows like 1/√p there), for α = 1.5, 2 and each row's own α below (checked
    # against the float64 reference when these rows were chosen; at least 3 in each support)
    xs = jnp.array(
        [
            [-0.1, -0.3, 0.7, 0.2, -0.3, -0.3, 0.4],
            [0.9, 0.3, -0.8, 0.7, -0.5, 0.9, -1.1],
            [1.2, -0.3, -0.8, 0.8, 0.3, 0.9, -0.3],
            [-1.1, -1.0, 0.0, -1.0, 0.5, 0.6, 0.5],
        ],
        jnp.float64,
    )
    alpha = jnp.array([[1.3], [1.6], [1.8], [2.4]], jnp.float64)
    fy = jsoftmax.entmax_loss

    return [
        Case("softmax", jsoftmax.softmax, (x,)),
        Case("softmax(where=)", lambda x: jsoftmax.softmax(x, where=mask), (x,)),
        Case("log_softmax", jsoftmax.log_softmax, (x,)),
        Case("log_softmax(axis=0)", lambda x: jsoftmax.log_softmax(x, 0), (x,)),
        Case("logsumexp", jsoftmax.logsumexp, (x,)),
        Case("logsumexp(where=)", lambda x: jsoftmax.logsumexp(x, where=mask), (x,)),
        Case("fwd.softmax", fwd.softmax, (x,), modes=("fwd", "rev")),
        Case("fwd.log_softmax", fwd.log_softmax, (x,), modes=("fwd", "rev")),
        Case("fwd.logsumexp", fwd.logsumexp, (x,), modes=("fwd", "rev")),
        Case("cross_entropy", lambda z: ce(z, labels), (x,)),
        Case(
            "cross_entropy(weight, smoothing, z_loss)",
            lambda z: ce(z, labels, weight=weight, label_smoothing=0.1, z_loss=1e-2),
            (x,),
        ),
        Case(
            "cross_entropy(ignore_index)",
            lambda z: ce(z, labels, ignore_index=int(labels[0])),
            (x,),
        ),
        Case("cross_entropy(prob labels)", lambda z, t: ce(z, t), (x, probs)),
        Case("nll_loss", lambda lp: jsoftmax.nll_loss(lp, labels, weight=weight), (x,)),
        Case("softmax_cross_entropy", jsoftmax.softmax_cross_entropy, (x, probs)),
        Case(
            "softmax_cross_entropy_with_integer_labels",
            lambda z: jsoftmax.softmax_cross_entropy_with_integer_labels(z, labels),
            (x,),
        ),
        Case("linear_cross_entropy", lambda h, w: lce(h, w, tok, chunk_size=3), (h, w)),
        Case(
            "linear_cross_entropy(softcap, z_loss)",
            lambda h, w: lce(h, w, tok, chunk_size=3, softcap=3.0, z_loss=1e-2),
            (h, w),
        ),
        Case("sparsemax", jsoftmax.sparsemax, (xs,)),
        Case("sparsemax(method=sort)", lambda x: jsoftmax.sparsemax(x, method="sort"), (xs,)),
        Case("entmax15", jsoftmax.entmax15, (xs,)),
        Case("entmax(alpha array)", lambda x, a: jsoftmax.entmax(x, a, n_iter=100), (xs, alpha)),
        Case("fwd.sparsemax", fwd.sparsemax, (xs,), modes=("fwd", "rev")),
        Case("fwd.entmax15", fwd.entmax15, (xs,), modes=("fwd", "rev")),
        Case(
            "fwd.entmax(alpha array)",
            lambda x, a: fwd.entmax(x, a, n_iter=100),
            (xs, alpha),
            modes=("fwd", "rev"),
        ),
        Case("sparsemax_loss", lambda z: jsoftmax.sparsemax_loss(z, labels), (xs,)),
        Case("sparsemax_loss(prob labels)", jsoftmax.sparsemax_loss, (xs, probs)),
        Case("entmax_loss", lambda z: fy(z, labels, weight=weight), (xs,)),
        Case(
            "entmax_loss(alpha array)",
            lambda z, a: fy(z, labels, a[:, 0], n_iter=100),
            (xs, alpha),
        ),
    ]


def _failure(err: AssertionError) -> str:
    """check_grads' message in one line: which check failed and its largest differences."""
    text = str(err)
    what = next((ln.strip() for ln in text.splitlines() if re.search(r"[JV]JP|primal", ln)), "")
    diffs = re.findall(r"Max (absolute|relative) difference[^:]*: *(\S+)", text)
    figures = ", ".join(f"{kind[:3]}. diff {value}" for kind, value in diffs)
    summary = "; ".join(part for part in (what, figures) if part)
    return summary or text.strip().splitlines()[0]


def check_case(
    case: Case, order: int, *, atol: float = ATOL, rtol: float = RTOL, eps: float = EPS
) -> dict:
    """``check_grads(case.fn, case.args, order, case.modes, atol, rtol, eps)`` as a result row.

    Call inside ``jax.enable_x64``. The row has ``function``, ``order``, ``modes``, ``passed``
    and ``failure`` (check_grads' message, shortened; empty when it passed).
    """
    try:
        check_grads(case.fn, case.args, order, modes=case.modes, atol=atol, rtol=rtol, eps=eps)
        failure = ""
    except AssertionError as err:
        failure = _failure(err)
    return {
        "function": case.name,
        "order": order,
        "modes": "+".join(case.modes),
        "passed": not failure,
        "failure": failure,
    }


def run_checks(seed: int = 0, only: str | None = None) -> list[dict]:
    """:func:`check_case` for every case (or those whose name contains ``only``) and order."""
    with jax.enable_x64(True):
        return [
            check_case(case, order)
            for case in cases(seed)
            if only is None or only in case.name
            for order in range(1, case.order + 1)
        ]


def format_table(rows: list[dict]) -> str:
    width = max(len(r["function"]) for r in rows)
    lines = [f"{'function':<{width}}  order  modes     result"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        result = "pass" if r["passed"] else f"FAIL  {r['failure']}"
        lines.append(f"{r['function']:<{width}}  {r['order']:>5}  {r['modes']:<8}  {result}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jsoftmax check",
        description="Run jax.test_util.check_grads on every public differentiable function "
        f"(float64, orders 1 and 2, atol={ATOL:g}, rtol={RTOL:g}, finite-difference step "
        f"{EPS:g}).",
    )
    parser.add_argument("--seed", type=int, default=0, help="random inputs seed")
    parser.add_argument("--only", default=None, help="check only functions whose name has this")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}: {jax.devices()}")
    rows = run_checks(args.seed, args.only)
    if not rows:
        print(f"no function name contains {args.only!r}")
        return 2
    print(
        f"jax.test_util.check_grads(order=k) in float64, atol={ATOL:g}, rtol={RTOL:g}, "
        f"eps={EPS:g}; order k checks every derivative order up to k"
    )
    print(format_table(rows))
    failed = [r for r in rows if not r["passed"]]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
