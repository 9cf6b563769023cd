"""``jsoftmax check``: numerical gradient checks of every public differentiable function.

For each function and each derivative order it reports the largest relative disagreement
between the analytic rule and central finite differences along random directions, in float64,
and whether :func:`jax.test_util.check_grads` passes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.test_util import check_grads

__all__ = ["Case", "cases", "directional_error", "main", "run_checks"]


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

    out = [
        Case("softmax", jsoftmax.softmax, (x,)),
        Case("softmax(where=)", lambda x: jsoftmax.softmax(x, where=mask), (x,)),
        Case("log_softmax", jsoftmax.log_softmax, (x,)),
        Case("log_softmax(axis=0)", lambda x: jsoftmax.log_softmax(x, 0), (x,)),
        Case("logsumexp", jsoftmax.logsumexp, (x,)),
        Case("logsumexp(where=)", lambda x: jsoftmax.logsumexp(x, where=mask), (x,)),
        Case("fwd.softmax", fwd.softmax, (x,), modes=("fwd", "rev")),
        Case("fwd.log_softmax", fwd.log_softmax, (x,), modes=("fwd", "rev")),
        Case("fwd.logsumexp", fwd.logsumexp, (x,), modes=("fwd", "rev")),
    ]
    ce = getattr(jsoftmax, "cross_entropy", None)
    if ce is not None:
        out += [
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
            Case(
                "softmax_cross_entropy",
                lambda z, t: jsoftmax.softmax_cross_entropy(z, t),
                (x, probs),
            ),
            Case(
                "softmax_cross_entropy_with_integer_labels",
                lambda z: jsoftmax.softmax_cross_entropy_with_integer_labels(z, labels),
                (x,),
            ),
        ]
    lce = getattr(jsoftmax, "linear_cross_entropy", None)
    if lce is not None:
        out += [
            Case(
                "linear_cross_entropy",
                lambda h, w: lce(h, w, tok, chunk_size=3),
                (h, w),
            ),
            Case(
                "linear_cross_entropy(softcap, z_loss)",
                lambda h, w: lce(h, w, tok, chunk_size=3, softcap=3.0, z_loss=1e-2),
                (h, w),
            ),
        ]
    return out


def directional_error(fn: Callable, args: tuple, order: int, key: jax.Array) -> float:
    """Largest relative error of ``order``-th derivatives against central differences.

    For order 1 it compares ``uᵀ J v`` from the VJP with ``uᵀ (f(x + εv) − f(x − εv)) / 2ε``;
    for order 2 it does the same to the function ``x ↦ Jᵀu`` (a reverse-over-reverse check).
    """
    ku, kv, ku2 = jax.random.split(key, 3)
    vs = [
        jax.random.normal(jax.random.fold_in(kv, i), a.shape, a.dtype) for i, a in enumerate(args)
    ]

    def scalarise(f, u_key):
        def g(*xs):
            out = f(*xs)
            leaves = jax.tree_util.tree_leaves(out)
            us = [
                jax.random.normal(jax.random.fold_in(u_key, i), jnp.shape(leaf))
                for i, leaf in enumerate(leaves)
            ]
            return sum(jnp.vdot(u, leaf) for u, leaf in zip(us, leaves, strict=True))

        return g

    target = scalarise(fn, ku)
    if order == 2:
        target = scalarise(jax.grad(target, argnums=tuple(range(len(args)))), ku2)
    grads = jax.grad(target, argnums=tuple(range(len(args))))(*args)
    analytic = sum(jnp.vdot(g, v) for g, v in zip(grads, vs, strict=True))
    eps = 1e-5
    plus = target(*[a + eps * v for a, v in zip(args, vs, strict=True)])
    minus = target(*[a - eps * v for a, v in zip(args, vs, strict=True)])
    numeric = (plus - minus) / (2 * eps)
    return float(jnp.abs(analytic - numeric) / jnp.maximum(1.0, jnp.abs(numeric)))


def run_checks(seed: int = 0, only: str | None = None) -> list[dict]:
    """Run every case (or those whose name contains ``only``); one row per (function, order)."""
    rows = []
    with jax.enable_x64(True):
        for case in cases(seed):
            if only is not None and only not in case.name:
                continue
            for order in range(1, case.order + 1):
                err = directional_error(case.fn, case.args, order, jax.random.key(seed + order))
                try:
                    check_grads(case.fn, case.args, order=order, modes=list(case.modes))
                    ok = True
                except AssertionError:
                    ok = False
                rows.append(
                    {
                        "function": case.name,
                        "order": order,
                        "modes": "+".join(case.modes),
                        "max_rel_error": err,
                        "passed": ok and err < 1e-6,
                    }
                )
    return rows


def format_table(rows: list[dict]) -> str:
    width = max(len(r["function"]) for r in rows)
    lines = [f"{'function':<{width}}  order  modes     max rel. error  result"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        result = "pass" if r["passed"] else "FAIL"
        lines.append(
            f"{r['function']:<{width}}  {r['order']:>5}  {r['modes']:<8}  "
            f"{r['max_rel_error']:>14.2e}  {result}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jsoftmax check",
        description="Check the analytic gradients of every public function against finite "
        "differences (float64, reverse mode, orders 1 and 2).",
    )
    parser.add_argument("--seed", type=int, default=0, help="random inputs seed")
    parser.add_argument("--only", default=None, help="check only functions whose name has this")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}: {jax.devices()}")
    rows = run_checks(args.seed, args.only)
    if not rows:
        print(f"no function name contains {args.only!r}")
        return 2
    print(format_table(rows))
    failed = [r for r in rows if not r["passed"]]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
