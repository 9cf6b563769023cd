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


# linear_cross_entropy — "Gradient accumulation: ... Either take ``value_and_grad`` inside the
# scan body ..., or put the step under ``jax.checkpoint`` ..., or pass
# ``gradients_in_forward=False``"
@pytest.mark.parametrize(
    ("gif", "pattern"),
    [
        pytest.param(None, "grad of scan, checkpointed step", id="fused-checkpointed"),
        pytest.param(None, "value_and_grad in the scan body", id="fused-in_body"),
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


# linear_cross_entropy — "Gradient accumulation: ... ``jax.grad`` of a ``lax.scan`` ... over
# ``T`` calls holds ``T`` float32 ``[D, V]`` buffers"
def test_grad_of_scan_on_the_gradients_in_forward_path_holds_one_dw_per_step():
    # the documented cost (issue 20 item 3): the forward rule hands dw to the backward rule as
    # a residual, and grad of a scan stacks every step's residuals, so each step holds a dw
    growth = _growth(None, "grad of scan")
    assert DW <= growth < 1.5 * DW


def test_checkpointed_step_costs_no_more_than_a_single_call_holds():
    # under checkpoint the whole accumulation needs about what one step's value_and_grad needs
    fn = accumulation_patterns(None)
    checkpointed, _ = accumulation_memory(fn["grad of scan, checkpointed step"], MANY, N, D, V)
    in_body, _ = accumulation_memory(fn["value_and_grad in the scan body"], MANY, N, D, V)
    assert checkpointed < in_body + DW / 2
