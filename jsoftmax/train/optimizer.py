"""The optimiser: optax AdamW or SGD with momentum on a linear warm-up + cosine schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import optax

if TYPE_CHECKING:
    from jsoftmax.train.config import Config
    from jsoftmax.train.model import Params

__all__ = ["make_optimizer"]


def _decay_mask(params: Params) -> Any:
    return jax.tree.map(lambda p: p.ndim > 1, params)  # decay weight matrices, not biases


def make_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax optimiser of ``config``: AdamW or SGD+momentum on a warm-up + cosine schedule.

    The learning rate rises linearly from 0 to ``config.learning_rate`` over
    ``config.warmup_epochs`` epochs, then follows a cosine down to 0 at the end of training
    (if the warm-up fills the whole run, it is all there is). AdamW's weight decay is decoupled
    (``optax.adamw``); for SGD it is added to the gradient before the momentum
    (``optax.add_decayed_weights``), as in PyTorch's ``SGD``. Either way it applies only to the
    weight matrices.

    Every call builds a new optimiser; :func:`jsoftmax.train.make_train_step` compiles the
    training step for one of them once.
    """
    peak = config.learning_rate
    warmup = round(config.warmup_epochs * steps_per_epoch)
    total = steps_per_epoch * config.epochs
    if warmup >= total:
        schedule = optax.linear_schedule(0.0, peak, transition_steps=warmup)
    else:
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total, end_value=0.0
        )
    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay, mask=_decay_mask)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=_decay_mask),
        optax.sgd(schedule, momentum=config.momentum or None),
    )
