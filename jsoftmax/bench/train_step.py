"""Benchmark suite: the jitted MLP training step with jsoftmax's loss vs the same step with optax.

Both steps are the training example's step (:mod:`jsoftmax.train`): the default MLP
(64 → 256 → 256 → 10, GELU), AdamW on the warm-up + cosine schedule, the gradient, the optimiser
update and the metrics. They differ only in the loss:

* ``jsoftmax``: :func:`jsoftmax.train.loss_fn`, i.e. :func:`jsoftmax.cross_entropy` with the
  padding mask (``where=``) exactly as training runs it;
* ``optax``: ``optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()``, which
  ignores the mask (every benchmark row is real, so both compute the same number).

Label smoothing is 0 for both (optax's integer-label loss has none).

Timing. :func:`jsoftmax.train.train_step` donates its state, so calling it twice on the same
inputs is not possible. Both sides are therefore timed as non-donating compilations of the same
step body (``jsoftmax.train._train_step_impl``): each call reads the same state and batch and
returns a fresh state, which is discarded. Donation only lets XLA reuse the input buffers for the
output, which both sides would get alike.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from jsoftmax import train
from jsoftmax.bench._timing import compare

BATCHES = [256, 4096]
QUICK_BATCHES = [64]
FEATURES, CLASSES = 64, 10


def _optax_loss(params, batch, *, activation):
    logits = train.mlp_apply(params, batch["x"], activation=activation)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, logits


def run(quick: bool = False, reps: int = 30) -> list[dict]:
    """Steps per second of the jsoftmax-loss and optax-loss training steps, interleaved."""
    config = train.get_config(label_smoothing=0.0)
    tx = train.make_optimizer(config, steps_per_epoch=100)
    sizes = (FEATURES, *config.hidden_sizes, CLASSES)
    objectives = {
        "jsoftmax": partial(train.loss_fn, activation=config.activation, label_smoothing=0.0),
        "optax": partial(_optax_loss, activation=config.activation),
    }
    steps = {
        name: partial(train._train_step_impl, tx=tx, objective=objective)
        for name, objective in objectives.items()
    }
    rows = []
    for batch_size in QUICK_BATCHES if quick else BATCHES:
        kx, ky, kp = jax.random.split(jax.random.key(0), 3)
        state = jax.jit(partial(train.init_train_state, sizes=sizes, tx=tx))(kp)
        batch = {
            "x": jax.random.normal(kx, (batch_size, FEATURES), jnp.float32),
            "y": jax.random.randint(ky, (batch_size,), 0, CLASSES),
            "mask": jnp.ones((batch_size,), jnp.bool_),
        }
        res = compare(steps, (state, batch), reps=10 if quick else reps)
        ours, base = res["jsoftmax"], res["optax"]
        rows.append(
            {
                "suite": "train_step",
                "op": "train_step",
                "shape": [batch_size, FEATURES],
                "dtype": "float32",
                "model": f"mlp {'-'.join(map(str, sizes))} {config.activation}, adamw",
                "jsoftmax_ms": ours.median_s * 1e3,
                "baseline": "optax",
                "baseline_ms": base.median_s * 1e3,
                "ratio": ours.median_s / base.median_s,
                "jsoftmax_steps_per_s": 1.0 / ours.median_s,
                "baseline_steps_per_s": 1.0 / base.median_s,
                "jsoftmax_temp_bytes": ours.temp_bytes,
                "baseline_temp_bytes": base.temp_bytes,
                "compile_s": {"jsoftmax": ours.compile_s, "baseline": base.compile_s},
                "reps": ours.reps,
            }
        )
    return rows
