"""The train state, the loss and the compiled training and evaluation steps.

* :class:`TrainState` and :func:`init_train_state`: the step count, parameters and optimiser
  state, everything that changes during training.
* :func:`loss_fn`: :func:`jsoftmax.cross_entropy` (with label smoothing) over the examples a
  boolean ``mask`` keeps; weight decay is decoupled and lives in the optimiser.
* :func:`make_train_step`: the jitted step for one optimiser, the state argument donated;
  :func:`train_step` is the same step with the optimiser as a static argument.
* :func:`eval_step`: loss, accuracy and example count of one batch.

Under a mesh (sharded batch, replicated state) the compiled steps average the gradient over
the devices; see :mod:`jsoftmax.train.sharding`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

import jsoftmax
from jsoftmax.train.model import Params, init_mlp, mlp_apply

__all__ = [
    "Batch",
    "TrainState",
    "eval_step",
    "init_train_state",
    "loss_fn",
    "make_train_step",
    "train_step",
]

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(NamedTuple):
    """Everything that changes during training: the step count, parameters, optimiser state."""

    step: jax.Array
    params: Params
    opt_state: optax.OptState


def init_train_state(
    key: jax.Array, sizes: Sequence[int], tx: optax.GradientTransformation
) -> TrainState:
    """A fresh :class:`TrainState`: step 0, :func:`init_mlp` parameters, ``tx.init`` state."""
    params = init_mlp(key, sizes)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def loss_fn(
    params: Params,
    batch: Batch,
    *,
    activation: str = "gelu",
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    r"""Mean cross-entropy of the network over the examples that ``batch["mask"]`` keeps.

    .. math::
        L = \frac{1}{\sum_b m_b} \sum_b m_b \Big( -\sum_c q_{bc} \log \mathrm{softmax}(z_b)_c
        \Big), \qquad q_{bc} = (1 - \varepsilon)\,[c = y_b] + \varepsilon / C

    with logits :math:`z = \mathrm{mlp}(x)`, mask :math:`m`, label smoothing
    :math:`\varepsilon` and :math:`C` classes, computed by :func:`jsoftmax.cross_entropy`.

    Args:
      params: from :func:`init_mlp`.
      batch: ``{"x": [batch, features], "y": [batch] int, "mask": [batch] bool}``; rows with
        ``mask`` False (padding) count for nothing.
      activation: hidden-layer activation.
      label_smoothing: :math:`\varepsilon` above.

    Returns:
      ``(loss, logits)``: the scalar loss and the ``[batch, classes]`` logits.
    """
    logits = mlp_apply(params, batch["x"], activation=activation)
    # where= masks whole examples (padding): they add nothing to the sum or to the mean's count
    loss = jsoftmax.cross_entropy(
        logits, batch["y"], label_smoothing=label_smoothing, where=batch["mask"]
    )
    return loss, logits


def _metrics(loss: jax.Array, logits: jax.Array, batch: Batch) -> Metrics:
    mask = batch["mask"]
    count = jnp.sum(mask, dtype=jnp.int32)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["y"]) & mask, dtype=jnp.int32)
    accuracy = correct / jnp.maximum(count, 1)  # an all-padding batch reports 0, not NaN
    return {"loss": loss, "accuracy": accuracy, "correct": correct, "count": count}


def _train_step_impl(
    state: TrainState,
    batch: Batch,
    tx: optax.GradientTransformation,
    objective: Callable[[Params, Batch], tuple[jax.Array, jax.Array]],
) -> tuple[TrainState, Metrics]:
    """The step body, not compiled: the gradient of ``objective`` and the ``tx`` update.

    ``objective(params, batch)`` returns ``(loss, logits)``, like :func:`loss_fn`.
    """
    (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, _metrics(loss, logits, batch)


def make_train_step(
    tx: optax.GradientTransformation, *, activation: str = "gelu", label_smoothing: float = 0.0
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The compiled training step ``step(state, batch) -> (new_state, metrics)`` for ``tx``.

    The step takes the gradient of :func:`loss_fn` and applies the ``tx`` update. It closes
    over ``tx``, ``activation`` and ``label_smoothing``: build it once per run and call it for
    every batch, which compiles it once per batch shape. ``state`` is donated, so its buffers
    are reused for the new state and the caller must not use the old one again.

    Args:
      tx: the optimiser that made ``state.opt_state``.
      activation: hidden-layer activation.
      label_smoothing: label smoothing of the loss.

    Returns:
      A jitted function of ``(state, batch)``, ``batch`` as in :func:`loss_fn`, that returns
      ``(new_state, metrics)`` with scalar metrics ``loss`` (the mean objective), ``accuracy``,
      ``correct`` and ``count`` (the number of real, unmasked examples).
    """
    objective = partial(loss_fn, activation=activation, label_smoothing=label_smoothing)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        return _train_step_impl(state, batch, tx, objective)

    return jax.jit(step, donate_argnums=0)


@partial(
    jax.jit,
    static_argnames=("tx", "activation", "label_smoothing"),
    donate_argnames=("state",),
)
def train_step(
    state: TrainState,
    batch: Batch,
    *,
    tx: optax.GradientTransformation,
    activation: str = "gelu",
    label_smoothing: float = 0.0,
) -> tuple[TrainState, Metrics]:
    """One optimisation step: the step of :func:`make_train_step`, the optimiser given per call.

    Compiled with ``jax.jit`` with ``tx``, ``activation`` and ``label_smoothing`` static: each
    new optimiser object compiles anew, so pass the same one every time. ``state`` is donated.
    A loop should build its step once with :func:`make_train_step` instead.

    Returns:
      ``(new_state, metrics)`` as the step of :func:`make_train_step` does.
    """
    objective = partial(loss_fn, activation=activation, label_smoothing=label_smoothing)
    return _train_step_impl(state, batch, tx, objective)


@partial(jax.jit, static_argnames=("activation", "label_smoothing"))
def eval_step(
    params: Params, batch: Batch, *, activation: str = "gelu", label_smoothing: float = 0.0
) -> Metrics:
    """Loss (same objective as training), accuracy and example count of one masked batch."""
    loss, logits = loss_fn(params, batch, activation=activation, label_smoothing=label_smoothing)
    return _metrics(loss, logits, batch)
