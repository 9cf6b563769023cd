"""jsoftmax._tracing.in_differentiated_loop_body: its answer in every context its rule names.

The rule reads JAX's private trace state, so these tests pin it on each JAX version CI runs
(Python 3.11 with the floor jax, and the second leg's newest jax): a JAX that traces
differently fails here instead of silently changing linear_cross_entropy's path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from jsoftmax._tracing import automatic_gradients_in_forward, in_differentiated_loop_body


def _probe(seen):
    """A function of x that records the rule's answer each time it is traced."""

    def f(x):
        seen.append(in_differentiated_loop_body())
        return jnp.sum(jnp.sin(x))

    return f


def _in_scan(f):
    def g(x):
        body = lambda c, xi: (c + f(xi * x), None)  # noqa: E731
        return jax.lax.scan(body, jnp.zeros(()), jnp.ones((3, 2)))[0]

    return g


def _mesh():
    return jax.make_mesh((1,), ("d",))


# each context: a function of (f, x) running f somewhere, and the answer the rule must give
CONTEXTS = {
    # outside any loop: the call is differentiated on its own (or not at all)
    "eager": (lambda f, x: f(x), False),
    "jit": (lambda f, x: jax.jit(f)(x), False),
    "grad": (lambda f, x: jax.grad(f)(x), False),
    "jit_of_grad": (lambda f, x: jax.jit(jax.grad(f))(x), False),
    "grad_of_jit": (lambda f, x: jax.grad(jax.jit(f))(x), False),
    "grad_of_checkpoint": (lambda f, x: jax.grad(jax.checkpoint(f))(x), False),
    "grad_of_cond": (
        lambda f, x: jax.grad(lambda x: jax.lax.cond(True, f, lambda x: 0.0, x))(x),
        False,
    ),
    "vmap_of_grad": (lambda f, x: jax.vmap(jax.grad(f))(jnp.stack([x, x])), False),
    "grad_of_vmap": (
        lambda f, x: jax.grad(lambda x: jnp.sum(jax.vmap(f)(jnp.stack([x, x]))))(x),
        False,
    ),
    "grad_of_grad": (lambda f, x: jax.grad(lambda x: jnp.sum(jax.grad(f)(x)))(x), False),
    "grad_of_shard_map": (
        lambda f, x: jax.jit(
            jax.grad(
                lambda x: jnp.sum(
                    jax.shard_map(
                        lambda a: f(a)[None], mesh=_mesh(), in_specs=P(), out_specs=P("d")
                    )(x)
                )
            )
        )(x),
        False,
    ),
    # a grad inside the loop body: each step's residuals die within the step
    "value_and_grad_in_scan_body": (
        lambda f, x: jax.lax.scan(
            lambda c, xi: (c + jax.grad(f)(xi * x), None), jnp.zeros(2), jnp.ones((3, 2))
        ),
        False,
    ),
    # a checkpointed step in the loop: its backward pass reruns the forward rule
    "grad_of_scan_of_checkpoint": (lambda f, x: jax.grad(_in_scan(jax.checkpoint(f)))(x), False),
    # loop bodies a grad outside would stack the residuals of
    "scan_body": (lambda f, x: _in_scan(f)(x), True),
    "grad_of_scan": (lambda f, x: jax.grad(_in_scan(f))(x), True),
    "jit_of_grad_of_scan": (lambda f, x: jax.jit(jax.grad(_in_scan(f)))(x), True),
    "grad_of_scan_of_jit": (lambda f, x: jax.grad(_in_scan(jax.jit(f)))(x), True),
    "grad_of_map": (
        lambda f, x: jax.grad(lambda x: jnp.sum(jax.lax.map(f, jnp.ones((3, 2)) * x[None])))(x),
        True,
    ),
    "grad_of_fori_loop": (
        lambda f, x: jax.grad(lambda x: jax.lax.fori_loop(0, 3, lambda i, c: c + f(x * i), 0.0))(x),
        True,
    ),
    "grad_of_checkpoint_of_scan": (lambda f, x: jax.grad(jax.checkpoint(_in_scan(f)))(x), True),
    "grad_of_scan_of_cond": (
        lambda f, x: jax.grad(
            _in_scan(lambda a: jax.lax.cond(True, f, lambda a: jnp.zeros(()), a))
        )(x),
        True,
    ),
    # JAX traces a shard_map body apart (its parent trace is the top level): a loop outside
    # it is not seen from inside, which is why the sharded losses ask before their shard_map
    "grad_of_scan_of_shard_map_seen_from_inside": (
        lambda f, x: jax.jit(
            jax.grad(
                _in_scan(lambda a: jax.shard_map(f, mesh=_mesh(), in_specs=P(), out_specs=P())(a))
            )
        )(x),
        False,
    ),
}


@pytest.mark.parametrize("context", list(CONTEXTS))
def test_in_differentiated_loop_body(context):
    # jsoftmax._tracing's rule: a differentiation or checkpoint reached first → False; a
    # scan/map/fori_loop body reached first → True; jit/cond/vmap are walked through
    run, expected = CONTEXTS[context]
    seen = []
    run(_probe(seen), jnp.ones(2))
    assert seen, "the probe was never traced"
    assert all(answer is expected for answer in seen), seen


def test_outside_any_trace_is_false():
    assert in_differentiated_loop_body() is False


def test_unexpected_trace_state_means_not_in_a_loop(monkeypatch):
    # "Any of them missing or changed gives 'no'": a trace context that raises on access
    from jax._src import core

    class Broken:
        @property
        def trace(self):
            raise RuntimeError("no trace state here")

    monkeypatch.setattr(core, "trace_ctx", Broken())
    assert in_differentiated_loop_body() is False


@pytest.mark.parametrize(
    ("given", "in_loop", "expected"),
    [(None, False, None), (None, True, False), (True, True, True), (False, False, False)],
)
def test_automatic_gradients_in_forward(given, in_loop, expected):
    # "None becomes False in a loop body a grad outside it differentiates; anything else is
    # returned as given"
    seen = []

    def f(x):
        seen.append(automatic_gradients_in_forward(given))
        return jnp.sum(x)

    (jax.grad(_in_scan(f)) if in_loop else jax.grad(f))(jnp.ones(2))
    assert seen == [expected]


# jsoftmax._tracing — "The answer is fixed when the function is traced: a jitted function
# traced outside a loop and then called inside one keeps its first answer (its cached trace is
# reused)"
def test_a_jitted_function_keeps_the_answer_of_its_first_trace():
    seen = []
    f = jax.jit(_probe(seen))
    x = jnp.ones(2)
    f(x)  # traced outside any loop
    jax.grad(_in_scan(f))(x)  # the same shapes in a differentiated scan body: no new trace
    assert seen == [False]
    g = jax.jit(_probe(seen))
    jax.grad(_in_scan(g))(x)  # first traced in the loop body: the loop's answer
    assert seen == [False, True]
