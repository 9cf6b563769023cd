"""``jsoftmax check`` runs check_grads on every public function and catches a wrong rule."""

import jax
import jax.numpy as jnp
import pytest

import jsoftmax
from jsoftmax import _gradcheck
from jsoftmax.__main__ import main as jsoftmax_main


@jax.custom_vjp
def _wrong_softmax(x):
    return jax.nn.softmax(x)


def _wrong_fwd(x):
    y = jax.nn.softmax(x)
    return y, y


def _wrong_bwd(y, g):
    # the sign error of the well-known write-up: −(g − ⟨g, s⟩) s instead of +
    return (-y * (g - jnp.sum(g * y, -1, keepdims=True)),)


_wrong_softmax.defvjp(_wrong_fwd, _wrong_bwd)


@jax.custom_vjp
def _frozen_softmax(x):
    return jax.nn.softmax(x)


def _frozen_bwd(y, g):
    # right first derivative, but the residual's own dependence on x is cut off, so every
    # second derivative through this rule is wrong
    y = jax.lax.stop_gradient(y)
    return (y * (g - jnp.sum(g * y, -1, keepdims=True)),)


_frozen_softmax.defvjp(_wrong_fwd, _frozen_bwd)

RULES = {"right": jax.nn.softmax, "wrong_sign": _wrong_softmax, "frozen_residual": _frozen_softmax}


@pytest.mark.parametrize(
    ("rule", "passes", "miss"),
    [
        pytest.param("right", [1, 2], None, id="right"),
        # a wrong first derivative: both orders fail on it
        pytest.param("wrong_sign", [], "VJP cotangent", id="wrong_sign"),
        # a wrong second derivative only
        pytest.param("frozen_residual", [1], "VJP of VJP cotangent", id="frozen_residual"),
    ],
)
def test_check_case_passes_exactly_the_right_orders(rule, passes, miss):
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (3, 5), jnp.float64)
        case = _gradcheck.Case(rule, RULES[rule], (x,))
        rows = [_gradcheck.check_case(case, order) for order in (1, 2)]
    assert [r["order"] for r in rows if r["passed"]] == passes
    for r in rows:
        if r["passed"]:
            assert r["failure"] == ""
        else:  # check_grads' own message: the failing derivative and the size of the miss
            assert r["failure"].startswith(miss) and "abs. diff" in r["failure"]


# public names with no case, and why
UNCHECKED = {
    "__version__": "not a function",
    "LinearCrossEntropyAux": "a NamedTuple of outputs (linear_cross_entropy(return_aux=True))",
    "ImplementationChoice": "a NamedTuple record of the implementation switch",
    "use_implementation": "a context manager (no array output); tested in test_mosaic_gpu",
    "record_implementations": "a context manager (no array output); tested in test_mosaic_gpu",
    "fwd": "a module (its functions have cases as fwd.*)",
    "softmax_jacobian": "built from softmax; compared with jax.jacrev in test_softmax",
    "log_softmax_jacobian": "built from log_softmax; compared with jax.jacrev in test_softmax",
    "sparsemax_jacobian": "built from sparsemax; compared with jax.jacrev in test_sparse",
    "entmax15_jacobian": "built from entmax15; compared with jax.jacrev in test_sparse",
    "entmax_jacobian": "built from entmax; compared with jax.jacrev in test_sparse",
    "vocab_parallel_cross_entropy": "needs a device mesh; its gradients are in test_sharded",
    "vocab_parallel_linear_cross_entropy": "needs a device mesh; see test_sharded",
    "label_checks": "a context manager (no array output); tested in test_label_checks",
    "set_label_checks": "a mode switch (no array output); tested in test_label_checks",
}


def test_every_public_differentiable_function_has_a_case():
    with jax.enable_x64(True):
        names = {case.name.split("(")[0] for case in _gradcheck.cases()}
    assert names == set(jsoftmax.__all__) - set(UNCHECKED) | {
        f"fwd.{n}"
        for n in ("softmax", "log_softmax", "logsumexp", "sparsemax", "entmax15", "entmax")
    }


@pytest.mark.parametrize("entry", ["module", "jsoftmax_cli"])
def test_cli_table_for_a_subset(entry, capsys):
    argv = ["--only", "logsumexp"]
    status = _gradcheck.main(argv) if entry == "module" else jsoftmax_main(["check", *argv])
    assert status == 0
    out = capsys.readouterr().out
    assert "check_grads" in out and f"atol={_gradcheck.ATOL:g}" in out
    assert f"rtol={_gradcheck.RTOL:g}" in out and f"eps={_gradcheck.EPS:g}" in out
    assert "logsumexp(where=)" in out and "fwd.logsumexp" in out
    assert "FAIL" not in out and "6 passed, 0 failed" in out


def test_cli_reports_a_failure_and_exits_1(monkeypatch, capsys):
    def wrong_cases(seed=0):
        x = jax.random.normal(jax.random.key(seed), (3, 5), jnp.float64)
        return [_gradcheck.Case("wrong_softmax", _wrong_softmax, (x,))]

    monkeypatch.setattr(_gradcheck, "cases", wrong_cases)
    assert _gradcheck.main([]) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL") == 2 and "VJP cotangent" in out and "0 passed, 2 failed" in out


def test_cli_unknown_filter(capsys):
    assert _gradcheck.main(["--only", "no-such-function"]) == 2
    assert "no function name contains 'no-such-function'" in capsys.readouterr().out
