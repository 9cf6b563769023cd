"""Where a call is being traced: inside a loop body that is differentiated from outside it.

The gradients-in-forward path of :func:`jsoftmax.linear_cross_entropy` hands a whole
``[D, V]`` ``dw`` from its forward rule to its backward rule. Called once under
``jax.grad`` that is free (the backward pass scales it into the gradient), but when the call
sits in the body of a ``lax.scan`` that ``jax.grad`` differentiates from outside, the scan
saves every step's residuals for the backward pass: ``T`` steps hold ``T`` copies of ``dw``.
The automatic choice therefore asks, when the loss is called, how the call is being traced.

JAX traces a function under a stack of traces, innermost first; each knows its parent. Walking
outwards from the call:

* a differentiation trace (``jax.grad``/``value_and_grad``/``vjp``, inside the loop body or
  with no loop in between) is reached first: the call is differentiated on its own and its
  residuals live only until that differentiation's backward pass, so the answer is no;
* a ``jax.checkpoint`` body is reached first: its backward pass reruns the forward rule per
  step instead of saving its residuals, so the answer is no (a policy that saves matmul
  results reruns it too; ``everything_saveable``, which saves every residual, is beyond what
  the trace shows: see :func:`jsoftmax.linear_cross_entropy`, Notes);
* the body of a ``lax.scan``, ``lax.map`` or ``fori_loop`` with static bounds (a scan) is reached
  first: a differentiation outside the loop would stack every step's residuals, so the answer
  is yes;
* anything else (``jit``, ``cond``, ``vmap``) changes nothing about how long the residuals
  live, and the walk goes on to its parent; past the outermost trace the answer is no.

JAX traces a ``shard_map`` body apart from the traces around it (its parent is the top
level), so from inside one a loop outside it cannot be seen: the sharded losses ask before they
enter their ``shard_map`` (:func:`automatic_gradients_in_forward`), and the per-shard form
called inside a user's own ``shard_map`` says so in its docstring.

This reads JAX's private trace state (``jax._src.core.trace_ctx``, the traces' ``parent_trace``
and the ``traced_for`` of a staged body's debug info). Any of them missing or changed gives
"no", the answer of a call made outside every loop; the tests pin the answers on the JAX
versions CI runs. The answer is fixed when the function is traced: a jitted function traced
outside a loop and then called inside one keeps its first answer (its cached trace is reused).
"""

from __future__ import annotations

__all__ = ["automatic_gradients_in_forward", "in_differentiated_loop_body"]

# traced_for of the bodies JAX stages for its loops (lax.map is a scan)
# (a while_loop cannot be reverse-differentiated, so its body never needs the rule)
_LOOP_BODIES = frozenset({"scan", "fori_loop"})


def in_differentiated_loop_body() -> bool:
    """Whether this call is traced in a loop body whose residuals a later ``grad`` would stack.

    See the module docstring for the rule. ``False`` outside any trace, under a ``grad`` taken
    inside the loop body, under ``jax.checkpoint``, and whenever JAX's trace state does not
    look as expected.
    """
    try:
        from jax._src import core
        from jax._src.interpreters import ad

        differentiating = tuple(
            t for t in (getattr(ad, "LinearizeTrace", None), getattr(ad, "JVPTrace", None)) if t
        )
        trace = core.trace_ctx.trace
        for _ in range(1000):  # a trace stack is a few levels deep; never loop forever
            if trace is None:
                return False
            if differentiating and isinstance(trace, differentiating):
                return False
            frame = getattr(trace, "frame", None)
            info = getattr(frame, "debug_info", None)
            traced_for = getattr(info, "traced_for", None)
            if isinstance(traced_for, str):
                if traced_for in _LOOP_BODIES:
                    return True
                if traced_for.startswith("checkpoint"):  # "checkpoint / remat"
                    return False
            trace = getattr(trace, "parent_trace", None)
    except Exception:  # private state: any surprise means "not in a loop"
        return False
    return False


def automatic_gradients_in_forward(gradients_in_forward: bool | None) -> bool | None:
    """``gradients_in_forward`` with the loop rule applied: ``None`` becomes ``False`` in a loop
    body a ``grad`` outside it differentiates; anything else is returned as given.

    For callers that pass the option on into a ``shard_map``, inside which the loop is hidden.
    """
    if gradients_in_forward is None and in_differentiated_loop_body():
        return False
    return gradients_in_forward
