"""Benchmark suite: the jitted MLP training step with jsoftmax's loss vs the same step with optax.

Both steps are the training example's step (:mod:`jsoftmax.train`): the default MLP
(64 → 256 → 256 → 10, GELU), AdamW on the warm-up + cosine schedule, the gradient, the optimiser
update and the metrics. They differ only in the loss:

* ``jsoftmax``: :func:`jsoftmax.train.make_train_step` itself, whose loss is
  :func:`jsoftmax.train.loss_fn`, i.e. :func:`jsoftmax.cross_entropy` with the padding mask
  (``where=``) exactly as training runs it;
* ``optax``: the same step written here from public parts (:func:`jsoftmax.train.mlp_apply`,
  ``tx.update``, :class:`jsoftmax.train.TrainState`) with
  ``optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()``, which ignores the
  mask (every benchmark row is real, so both compute the same number). ``tests/test_bench.py``
  checks that it returns the same state and metrics as ``make_train_step``.

Label smoothing is 0 for both (optax's integer-label loss has none).

Timing. The step of ``make_train_step`` donates its state, so calling it twice on the same
inputs is not possible. :func:`jsoftmax.bench._timing.compare` compiles each side inside its own
``jax.jit``, which does not donate (donation applies only to the outermost call): each call
reads the same state and batch and returns a fresh state, which is discarded. Donation only
lets XLA reuse the input buffers for the output, which both sides would get alike.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import optax

from jsoftmax import train
from jsoftmax.bench._timing import compare, comparison_row

BATCHES = [256, 4096]
QUICK_BATCHES = [64]
FEATURES, CLASSES = 64, 10


def optax_train_step(tx: optax.GradientTransformation, *, activation: str) -> Callable:
    """``make_train_step(tx, activation=activation)``'s step with optax's loss instead of ours."""

    def objective(params, batch):
        logits = train.mlp_apply(params, batch["x"], activation=activation)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return loss, logits

    def step(state, batch):
        (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        mask = batch["mask"]
        count = jnp.sum(mask, dtype=jnp.int32)
        correct = jnp.sum((jnp.argmax(logits, -1) == batch["y"]) & mask, dtype=jnp.int32)
        metrics = {
            "loss": loss,
            "accuracy": correct / jnp.maximum(count, 1),
            "correct": correct,
            "count": count,
        }
        return train.TrainState(state.step + 1, params, opt_state), metrics

    return step


def setup(batch_size: int):
    """The optimiser, the two steps, a fresh train state and a batch of ``batch_size`` rows."""
    config = train.get_config(label_smoothing=0.0)
    tx = train.make_optimizer(config, steps_per_epoch=100)
    sizes = (FEATURES, *config.hidden_sizes, CLASSES)
    steps = {
        "jsoftmax": train.make_train_step(tx, activation=config.activation, label_smoothing=0.0),
        "optax": optax_train_step(tx, activation=config.activation),
    }
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    state = jax.jit(partial(train.init_train_state, sizes=sizes, tx=tx))(kp)
    batch = {
        "x": jax.random.normal(kx, (batch_size, FEATURES), jnp.float32),
        "y": jax.random.randint(ky, (batch_size,), 0, CLASSES),
        "mask": jnp.ones((batch_size,), jnp.bool_),
    }
    model = f"mlp {'-'.join(map(str, sizes))} {config.activation}, {config.optimizer}"
    return steps, state, batch, model


def run(quick: bool = False, reps: int = 30) -> list[dict]:
    """Steps per second of the jsoftmax-loss and optax-loss training steps, interleaved."""
    rows = []
    for batch_size in QUICK_BATCHES if quick else BATCHES:
        steps, state, batch, model = setup(batch_size)
        res = compare(steps, (state, batch), reps=10 if quick else reps)
        ours, base = res["jsoftmax"], res["optax"]
        rows.append(
            comparison_row(
                "train_step",
                "train_step",
                [batch_size, FEATURES],
                "float32",
                ours,
                base,
                "optax",
                model=model,
                jsoftmax_steps_per_s=1.0 / ours.median_s,
                baseline_steps_per_s=1.0 / base.median_s,
            )
        )
    return rows
