"""Compiled memory of linear_cross_entropy under gradient accumulation (issue 20 item 3).

``jax.jit(f).lower(...).compile().memory_analysis()`` is deterministic on a given backend and
jax version, so these tests assert sizes, never times. The patterns are the benchmark's own
(:func:`jsoftmax.bench.linear_xent.accumulation_patterns`).
"""

from __future__ import annotations

import pytest

from jsoftmax.bench.linear_xent import accumulation_memory, accumulation_patterns

N, D, V = 64, 64, 2048
DW = D * V * 4  # bytes of one float32 dw
FEW, MANY = 4, 8  # micro-batches: MANY − FEW more steps must not cost a dw each


def _growth(gif, pattern):
    """Extra compiled temp bytes of MANY micro-batches over FEW, per extra step."""
    fn = accumulation_patterns(gif)[pattern]
    few, _ = accumulation_memory(fn, FEW, N, D, V)
    many, _ = accumulation_memory(fn, MANY, N, D, V)
    return (many - few) / (MANY - FEW)


# linear_cross_entropy — "Gradient accumulation: ... The automatic choice
# (``gradients_in_forward=None``) therefore takes the recompute path in a loop body
# differentiated from outside, and the gradients-in-forward path everywhere else: under
# ``value_and_grad`` taken inside the body ... and under ``jax.checkpoint`` ... no step holds a
# ``dw``"
@pytest.mark.parametrize(
    ("gif", "pattern"),
    [
        pytest.param(None, "grad of scan", id="automatic-grad_of_scan"),
        pytest.param(None, "grad of scan, checkpointed step", id="automatic-checkpointed"),
        pytest.param(None, "value_and_grad in the scan body", id="automatic-in_body"),
        pytest.param(True, "grad of scan, checkpointed step", id="fused-checkpointed"),
        pytest.param(True, "value_and_grad in the scan body", id="fused-in_body"),
        pytest.param(False, "grad of scan", id="recompute-grad_of_scan"),
        pytest.param(False, "grad of scan, checkpointed step", id="recompute-checkpointed"),
        pytest.param(False, "value_and_grad in the scan body", id="recompute-in_body"),
    ],
)
def test_accumulation_holds_no_dw_per_step(gif, pattern):
    # the docstring's promise: with the step checkpointed, with value_and_grad in the scan
    # body, or on the recompute path, a micro-batch more costs no [D, V] buffer (what it does
    # cost is the step's own residuals: a few numbers per token, far below a dw)
    assert _growth(gif, pattern) < DW / 4


# linear_cross_entropy — "Gradient accumulation: ... so on that path ``T`` steps would hold
# ``T`` float32 ``[D, V]`` buffers"; "``gradients_in_forward=True`` 82.6 (146.6 at ``T = 16``:
# a ``dw`` a step)"
def test_grad_of_scan_on_the_forced_gradients_in_forward_path_holds_one_dw_per_step():
    # the cost the automatic choice avoids: the forward rule hands dw to the backward rule as
    # a residual, and grad of a scan stacks every step's residuals, so each step holds a dw
    growth = _growth(True, "grad of scan")
    assert DW <= growth < 1.5 * DW


def test_automatic_grad_of_scan_costs_what_the_recompute_path_costs():
    # the automatic choice in a differentiated scan body is the recompute path itself
    for steps in (FEW, MANY):
        auto = accumulation_memory(accumulation_patterns(None)["grad of scan"], steps, N, D, V)
        recompute = accumulation_memory(
            accumulation_patterns(False)["grad of scan"], steps, N, D, V
        )
        assert auto == recompute


def _python_loop(gif):
    import jax
    import jax.numpy as jnp

    from jsoftmax import linear_cross_entropy

    def loss(w, xs, ys):
        total = jnp.zeros((), jnp.float32)
        for t in range(xs.shape[0]):  # unrolled: T calls under one grad, no loop body
            total = total + linear_cross_entropy(xs[t], w, ys[t], gradients_in_forward=gif)
        return total

    return jax.value_and_grad(loss)


# linear_cross_entropy — "A Python loop of ``T`` calls under one ``grad`` holds ``T`` buffers
# the size of ``dw`` on either path (each call's part of the gradient, until XLA adds them up):
# use a ``lax.scan``"
@pytest.mark.parametrize("gif", [None, False], ids=["default", "recompute"])
def test_python_loop_holds_a_dw_per_call_on_either_path(gif):
    few, _ = accumulation_memory(_python_loop(gif), FEW, N, D, V)
    many, _ = accumulation_memory(_python_loop(gif), MANY, N, D, V)
    assert DW <= (many - few) / (MANY - FEW) < 1.5 * DW


def _vocab_parallel_grad_of_scan(gif):
    import jax
    import jax.numpy as jnp

    from jsoftmax import vocab_parallel_linear_cross_entropy

    mesh = jax.make_mesh((1,), ("model",))

    def loss(w, xs, ys):
        def body(total, xy):
            step = vocab_parallel_linear_cross_entropy(
                *xy[:1], w, xy[1], mesh=mesh, axis_name="model", gradients_in_forward=gif
            )
            return total + step, None

        return jax.lax.scan(body, jnp.zeros((), jnp.float32), (xs, ys))[0]

    return jax.value_and_grad(loss)


# jsoftmax._tracing — "the sharded losses ask before they enter their ``shard_map``"
# (vocab_parallel_linear_cross_entropy: the automatic gradients_in_forward of
# linear_cross_entropy, whose loop body is then visible)
@pytest.mark.parametrize(("gif", "per_step_dw"), [(None, False), (True, True), (False, False)])
def test_vocab_parallel_in_a_differentiated_scan_body(gif, per_step_dw):
    few, _ = accumulation_memory(_vocab_parallel_grad_of_scan(gif), FEW, N, D, V)
    many, _ = accumulation_memory(_vocab_parallel_grad_of_scan(gif), MANY, N, D, V)
    growth = (many - few) / (MANY - FEW)
    assert (growth >= DW) if per_step_dw else (growth < DW / 4)


def _checkpoint_policy_scan(gif, policy):
    import jax

    from jsoftmax import linear_cross_entropy

    policy = getattr(jax.checkpoint_policies, policy)

    def loss(w, xs, ys):
        def step(w, x, y):
            return linear_cross_entropy(x, w, y, gradients_in_forward=gif)

        step = jax.checkpoint(step, policy=policy)
        return jax.lax.scan(lambda c, xy: (c + step(w, *xy), None), 0.0, (xs, ys))[0]

    return jax.value_and_grad(loss)


# linear_cross_entropy — "a policy that saves matmul results (``dots_saveable``,
# ``dots_with_no_batch_dims_saveable``) holds no ``dw`` a step on the gradients-in-forward path
# (its block loop is rerun, not saved block by block) ... ``everything_saveable`` saves each
# step's residuals, a ``dw`` among them on the gradients-in-forward path: pass
# ``gradients_in_forward=False`` under it"
DOTS = ["dots_saveable", "dots_with_no_batch_dims_saveable"]
N2 = 2 * N  # tokens a step for the recompute path's case, so that N·V and D·V differ
POLICY_CASES = [
    # (gradients_in_forward, policy, tokens a step, bytes per extra step)
    *[(gif, p, N, 0) for p in DOTS for gif in (None, True)],  # 8 dw a step before the fix
    # the recompute path under a dots policy saves its forward's logits, N·V a step
    *[(False, p, N2, N2 * V * 4) for p in DOTS],
    (None, "everything_saveable", N, DW),
    (True, "everything_saveable", N, DW),
    (False, "everything_saveable", N, 0),
]


@pytest.mark.parametrize(("gif", "policy", "n", "per_step"), POLICY_CASES, ids=str)
def test_checkpoint_policies_that_save_dots_hold_no_block_products(gif, policy, n, per_step):
    few, _ = accumulation_memory(_checkpoint_policy_scan(gif, policy), FEW, n, D, V)
    many, _ = accumulation_memory(_checkpoint_policy_scan(gif, policy), MANY, n, D, V)
    growth = (many - few) / (MANY - FEW)  # bytes per extra step
    assert growth == pytest.approx(per_step, abs=0.01 * DW)
