"""Train a multilayer perceptron on handwritten digits with jsoftmax's cross-entropy and optax.

Everything here is a pure function except :func:`train_and_evaluate`, the loop that ties them
together and writes files; the command line (``jsoftmax train``) only maps flags onto
:class:`Config`.

* :func:`init_mlp` / :func:`mlp_apply`: the model, a list of ``{"w", "b"}`` dense layers with
  ReLU or GELU between them and logits out.
* :func:`loss_fn`: :func:`jsoftmax.cross_entropy` (with label smoothing) over the examples a
  boolean ``mask`` keeps; weight decay is decoupled and lives in the optimiser.
* :func:`make_optimizer`: optax AdamW (default) or SGD with momentum, both driven by a linear
  warm-up and cosine decay schedule; weight decay applies to weight matrices, not biases.
* :func:`train_step` (jitted, the state argument donated) and :func:`eval_step`.

Devices. The batch is split along a ``"data"`` mesh axis over every device JAX sees, with the
parameters and optimiser state replicated (``NamedSharding``); ``jit`` inserts the gradient
all-reduce. Each batch has a fixed padded size, a multiple of the device count, and a mask marks
the real examples, so the last short batch of an epoch and the evaluation sets are used in full
and nothing recompiles. The same code therefore runs on one CPU, on eight faked CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) and on a GPU or TPU host. Results on
one and on several devices agree to float32 round-off, not bit for bit: the gradient's sum over
the batch is split into per-device partial sums that are then added, a different order of
floating-point additions.

Several hosts. Call ``jax.distributed.initialize()`` in every process before anything else uses
JAX (on Cloud TPU and under SLURM it reads its arguments from the environment; elsewhere pass
``coordinator_address``, ``num_processes`` and ``process_id``), then run the same code::

    import jax
    jax.distributed.initialize()
    from jsoftmax.train import get_config, train_and_evaluate
    train_and_evaluate(get_config(data="mnist", data_dir="/data/mnist"))

``jax.devices()`` then lists the devices of all hosts and the mesh spans them. Every process
loads the same data and draws the same shuffles from the same seed, builds the same global
batch, and ``jax.make_array_from_callback`` copies in only the shards of its own devices. Only
process 0 writes the metrics, plot and checkpoints.

Reproducibility. The data split, the initial parameters and each epoch's shuffle are pure
functions of the seeds, and the train state (step, parameters, optimiser state) is all there is
to resume, so the same seed gives the same metrics on CPU, and resuming from a checkpoint ends
at bit-for-bit the parameters of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

import jsoftmax
from jsoftmax import _checkpoint, _data

__all__ = [
    "Config",
    "TrainState",
    "eval_step",
    "evaluate",
    "get_config",
    "init_mlp",
    "init_train_state",
    "loss_fn",
    "make_mesh",
    "make_optimizer",
    "mlp_apply",
    "plot_history",
    "train_and_evaluate",
    "train_step",
]

Params = list[dict[str, jax.Array]]
Batch = dict[str, jax.Array]

_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu}
_DATASETS = ("digits", "mnist")
_OPTIMIZERS = ("adamw", "sgd")

# Seeds of the initial parameters must lie below this: without 64-bit mode jax.random.key keeps
# only the low 32 bits, so seed 2**32 would silently start from seed 0's parameters.
_SEED_LIMIT = 2**32

# Images in scikit-learn's bundled digits: a fixed size, so Config can check the split sizes of
# its fractions up front (MNIST's size comes from its files; its loader checks its own split).
_DIGITS_SIZE = 1797

# Standard deviation of a standard normal truncated to [-2, 2]:
# sqrt(1 - 2·a·φ(a) / (Φ(a) - Φ(-a))) at a = 2, with Φ(a) - Φ(-a) = erf(a / √2).
_TRUNCATED_STD = math.sqrt(
    1.0 - 4.0 * math.exp(-2.0) / math.sqrt(2.0 * math.pi) / math.erf(math.sqrt(2.0))
)

# Config fields that may differ between a run and the run it resumes: none of them changes a
# single number of the training.
RESUME_MAY_DIFFER = ("data_dir", "output_dir", "resume", "keep_checkpoints", "plot", "quiet")


def _is_int(value: Any) -> bool:
    """A Python or NumPy integer, but not a bool (``True`` is not a batch size)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    """A Python or NumPy integer or float, but not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _digits_split_sizes(val_fraction: float, test_fraction: float) -> dict[str, int]:
    """The train, validation and test sizes that :func:`jsoftmax._data.load_digits` cuts."""
    n_test = round(_DIGITS_SIZE * test_fraction)
    n_val = round(_DIGITS_SIZE * val_fraction)
    return {"train": _DIGITS_SIZE - n_val - n_test, "validation": n_val, "test": n_test}


def _check_digits_split(val_fraction: float, test_fraction: float) -> None:
    """Raise ``ValueError`` if the fractions leave a split of the digits without an example."""
    sizes = _digits_split_sizes(val_fraction, test_fraction)
    if all(sizes.values()):
        return
    if not sizes["validation"]:
        name, got, split = "val_fraction", repr(val_fraction), "validation"
    elif not sizes["test"]:
        name, got, split = "test_fraction", repr(test_fraction), "test"
    else:
        name, split = "val_fraction + test_fraction", "training"
        got = f"{val_fraction!r} + {test_fraction!r}"
    counts = ", ".join(f"{n} {part}" for part, n in sizes.items())
    raise ValueError(
        f"Config.{name} must leave at least one {split} example; got {got}, which splits the "
        f"{_DIGITS_SIZE} digits into {counts}"
    )


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with its command-line help (and, optionally, choices) attached."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Config:
    """Everything that defines a training run. Every field is a ``jsoftmax train`` flag.

    Every field is checked when the config is built: a value of the wrong type raises
    ``TypeError`` and a value out of range ``ValueError``, both naming the field, what it must be
    and what it got (``Config.seed must be a non-negative int below 2**32; got -1``). NumPy
    scalars and ``os.PathLike`` paths are accepted and stored as plain Python values; a bool is
    not accepted where an int or a number is expected. What depends on files (the data, the
    checkpoint to resume) is checked by :func:`train_and_evaluate` before it compiles anything.
    """

    # data
    data: str = _opt("digits", "dataset", choices=_DATASETS)
    data_dir: str | None = _opt(None, "folder with the MNIST IDX files (for --data mnist)")
    val_fraction: float = _opt(0.1, "share of the data held out for validation")
    test_fraction: float = _opt(0.2, "share held out for testing (digits; MNIST has its own)")
    split_seed: int = _opt(0, "seed of the train/validation/test split")
    # model
    hidden_sizes: tuple[int, ...] = _opt((256, 256), "hidden layer widths, e.g. 256,256")
    activation: str = _opt("gelu", "hidden-layer activation", choices=tuple(_ACTIVATIONS))
    # optimisation
    seed: int = _opt(0, "seed of the initial parameters and of the shuffles")
    optimizer: str = _opt("adamw", "optimiser", choices=_OPTIMIZERS)
    learning_rate: float = _opt(3e-3, "peak learning rate of the warm-up + cosine schedule")
    warmup_epochs: float = _opt(1.0, "epochs of linear warm-up from 0 to the peak rate")
    momentum: float = _opt(0.9, "SGD momentum (0 for none)")
    weight_decay: float = _opt(1e-4, "weight decay of the weight matrices (not the biases)")
    label_smoothing: float = _opt(0.1, "label smoothing of the cross-entropy, in [0, 1]")
    batch_size: int = _opt(64, "training batch size (over all devices)")
    eval_batch_size: int = _opt(1024, "evaluation batch size (over all devices)")
    epochs: int = _opt(30, "number of passes over the training set")
    # outputs
    output_dir: str | None = _opt(
        "runs/digits", "where metrics.json, metrics.png and checkpoints/ go ('' for nowhere)"
    )
    keep_checkpoints: int = _opt(3, "how many of the newest epoch checkpoints to keep (0: all)")
    resume: str | None = _opt(
        None,
        "continue from a checkpoint file, or from the newest in the output folder ('latest')",
        const="latest",
    )
    plot: bool = _opt(True, "write metrics.png")
    quiet: bool = _opt(False, "no progress bar")

    def __post_init__(self) -> None:
        def fail(name: str, expected: str, error: type[Exception] = ValueError) -> None:
            value = getattr(self, name)
            got = f"{value!r} ({type(value).__name__})" if error is TypeError else repr(value)
            raise error(f"Config.{name} must be {expected}; got {got}")

        def store(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        def choice(name: str, choices: tuple[str, ...], expected: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, str):
                fail(name, expected, TypeError)
            if value not in choices:
                fail(name, expected)

        def integer(name: str, expected: str, low: int, high: float = math.inf) -> None:
            value = getattr(self, name)
            if not _is_int(value):
                fail(name, expected, TypeError)
            if not low <= value < high:
                fail(name, expected)
            store(name, int(value))  # NumPy integers become plain ints (JSON-ready)

        def number(name: str, expected: str, within: Any) -> None:
            value = getattr(self, name)
            if not _is_real(value):
                fail(name, f"a number {expected}", TypeError)
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an int too large for a float
                finite = False
            if not finite:
                fail(name, "finite")
            if not within(value):
                fail(name, expected)
            if isinstance(value, (np.integer, np.floating)):  # plain Python numbers (JSON-ready)
                store(name, value.item())

        def path(name: str, expected: str) -> None:
            value = getattr(self, name)
            if value is None:
                return
            if not isinstance(value, (str, os.PathLike)) or not isinstance(os.fspath(value), str):
                fail(name, expected, TypeError)
            store(name, os.fspath(value))  # a pathlib.Path is stored as its string
            if "\0" in getattr(self, name):
                fail(name, f"{expected}, without NUL characters")

        def flag(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                fail(name, "a bool", TypeError)
            store(name, bool(value))

        # data
        choice("data", _DATASETS, "'digits' or 'mnist'")
        path("data_dir", "a folder path (str or os.PathLike) or None")
        if self.data == "mnist" and not self.data_dir:
            fail("data_dir", "the folder holding the MNIST IDX files when data='mnist'")
        for name in ("val_fraction", "test_fraction"):
            number(name, "in (0, 1)", lambda v: 0.0 < v < 1.0)
        if self.val_fraction + self.test_fraction >= 1.0:
            fail("test_fraction", f"< 1 - val_fraction = {1 - self.val_fraction}")
        if self.data == "digits":  # rounding can still leave a split of the digits empty
            _check_digits_split(self.val_fraction, self.test_fraction)
        integer("split_seed", "a non-negative int", 0)
        # model
        if isinstance(self.hidden_sizes, list):  # accept a list; store the hashable tuple
            store("hidden_sizes", tuple(self.hidden_sizes))
        widths = "a tuple of positive ints (may be empty)"
        if not isinstance(self.hidden_sizes, tuple) or not all(map(_is_int, self.hidden_sizes)):
            fail("hidden_sizes", widths, TypeError)
        if not all(h > 0 for h in self.hidden_sizes):
            fail("hidden_sizes", widths)
        store("hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        choice("activation", tuple(_ACTIVATIONS), f"one of {tuple(_ACTIVATIONS)}")
        # optimisation
        integer("seed", "a non-negative int below 2**32", 0, _SEED_LIMIT)
        choice("optimizer", _OPTIMIZERS, "'adamw' or 'sgd'")
        number("learning_rate", "> 0", lambda v: v > 0.0)
        integer("epochs", "a positive int", 1)  # before warmup_epochs, which is bounded by it
        number("warmup_epochs", f"in [0, epochs={self.epochs}]", lambda v: 0 <= v <= self.epochs)
        number("momentum", "in [0, 1)", lambda v: 0.0 <= v < 1.0)
        number("weight_decay", ">= 0", lambda v: v >= 0.0)
        number("label_smoothing", "in [0, 1]", lambda v: 0.0 <= v <= 1.0)
        integer("batch_size", "a positive int", 1)
        integer("eval_batch_size", "a positive int", 1)
        # outputs
        path("output_dir", "a folder path (str or os.PathLike), '' or None")
        integer("keep_checkpoints", "a non-negative int (0 keeps all)", 0)
        path("resume", "a checkpoint path (str or os.PathLike), 'latest' or None")
        if self.resume == "latest" and not self.output_dir:
            fail("resume", "a checkpoint file, not 'latest', when output_dir is empty")
        flag("plot")
        flag("quiet")

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def get_config(**overrides: Any) -> Config:
    """The default configuration, with any fields given as keyword arguments replaced.

    Examples:
      >>> from jsoftmax.train import get_config
      >>> get_config(epochs=5).epochs
      5
    """
    return dataclasses.replace(Config(), **overrides)


class TrainState(NamedTuple):
    """Everything that changes during training: the step count, parameters, optimiser state."""

    step: jax.Array
    params: Params
    opt_state: optax.OptState


# --------------------------------------------------------------------------------------------
# model and loss
# --------------------------------------------------------------------------------------------


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> Params:
    r"""Initial parameters of a dense network with layer widths ``sizes`` (inputs first).

    Weights are drawn from a truncated normal with variance :math:`2 / \text{fan\_in}` (He
    initialisation, suited to ReLU and GELU); biases start at zero.

    Args:
      key: a PRNG key (``jax.random.key``).
      sizes: ``[inputs, hidden..., outputs]``, at least two entries.

    Returns:
      A list with one ``{"w": [fan_in, fan_out], "b": [fan_out]}`` dict per layer, float32.

    Examples:
      >>> import jax
      >>> from jsoftmax.train import init_mlp
      >>> params = init_mlp(jax.random.key(0), [64, 32, 10])
      >>> [(p["w"].shape, p["b"].shape) for p in params]
      [((64, 32), (32,)), ((32, 10), (10,))]
    """
    sizes = tuple(sizes)
    if len(sizes) < 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes):
        raise ValueError(f"init_mlp: sizes must hold >= 2 positive ints; got {sizes!r}")
    shapes = list(itertools.pairwise(sizes))
    # One draw for every weight, cut into layers: XLA:CPU compiles a single threefry kernel
    # several times faster than one per layer (~0.7 s against ~4 s for the default network).
    z = jax.random.truncated_normal(key, -2.0, 2.0, (sum(m * n for m, n in shapes),))
    params, start = [], 0
    for m, n in shapes:
        # He: variance 2 / fan_in, after dividing out the truncated normal's own std
        scale = math.sqrt(2.0 / m) / _TRUNCATED_STD
        w = z[start : start + m * n].reshape(m, n) * scale
        params.append({"w": w, "b": jnp.zeros((n,), jnp.float32)})
        start += m * n
    return params


def mlp_apply(params: Params, x: ArrayLike, *, activation: str = "gelu") -> jax.Array:
    """Logits of the network ``params`` for the inputs ``x``.

    Args:
      params: from :func:`init_mlp`.
      x: inputs ``[batch, features]``.
      activation: ``"gelu"`` or ``"relu"``, applied after every layer but the last.

    Returns:
      Logits ``[batch, outputs]``.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"mlp_apply: activation must be one of {tuple(_ACTIVATIONS)}; got {activation!r}"
        )
    act = _ACTIVATIONS[activation]
    h = jnp.asarray(x)
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"][None, :]
        if i < len(params) - 1:
            h = act(h)
    return h


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


def _metrics(loss: jax.Array, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    mask = batch["mask"]
    count = jnp.sum(mask, dtype=jnp.int32)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["y"]) & mask, dtype=jnp.int32)
    accuracy = correct / jnp.maximum(count, 1)  # an all-padding batch reports 0, not NaN
    return {"loss": loss, "accuracy": accuracy, "correct": correct, "count": count}


# --------------------------------------------------------------------------------------------
# optimiser and steps
# --------------------------------------------------------------------------------------------


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

    Equal settings return the *same* optimiser object, so :func:`train_step` (which takes the
    optimiser as a static argument) is not recompiled when a run is repeated in one process.
    """
    return _optimizer(
        config.optimizer,
        config.learning_rate,
        round(config.warmup_epochs * steps_per_epoch),
        steps_per_epoch * config.epochs,
        config.momentum,
        config.weight_decay,
    )


@functools.lru_cache(maxsize=64)
def _optimizer(
    name: str, peak: float, warmup: int, total: int, momentum: float, weight_decay: float
) -> optax.GradientTransformation:
    if warmup >= total:
        schedule = optax.linear_schedule(0.0, peak, transition_steps=warmup)
    else:
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total, end_value=0.0
        )
    if name == "adamw":
        return optax.adamw(schedule, weight_decay=weight_decay, mask=_decay_mask)
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=_decay_mask),
        optax.sgd(schedule, momentum=momentum or None),
    )


def init_train_state(
    key: jax.Array, sizes: Sequence[int], tx: optax.GradientTransformation
) -> TrainState:
    """A fresh :class:`TrainState`: step 0, :func:`init_mlp` parameters, ``tx.init`` state."""
    params = init_mlp(key, sizes)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def _train_step_impl(state, batch, tx, objective):
    (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, _metrics(loss, logits, batch)


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
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step: gradient of :func:`loss_fn`, then the ``tx`` update.

    Compiled with ``jax.jit``; ``state`` is donated, so its buffers are reused for the new state
    and the caller must not use the old one again. Under a mesh (sharded ``batch``, replicated
    ``state``) the compiled step averages the gradient over devices.

    Args:
      state: the current :class:`TrainState`.
      batch: ``{"x": [batch, features], "y": [batch], "mask": [batch]}``.
      tx: the optimiser that made ``state.opt_state`` (static: one compilation per optimiser).
      activation: hidden-layer activation.
      label_smoothing: label smoothing of the loss.

    Returns:
      ``(new_state, metrics)`` with scalar metrics ``loss`` (the mean objective), ``accuracy``,
      ``correct`` and ``count`` (the number of real, unmasked examples).
    """
    objective = partial(loss_fn, activation=activation, label_smoothing=label_smoothing)
    return _train_step_impl(state, batch, tx, objective)


@partial(jax.jit, static_argnames=("activation", "label_smoothing"))
def eval_step(
    params: Params, batch: Batch, *, activation: str = "gelu", label_smoothing: float = 0.0
) -> dict[str, jax.Array]:
    """Loss (same objective as training), accuracy and example count of one masked batch."""
    loss, logits = loss_fn(params, batch, activation=activation, label_smoothing=label_smoothing)
    return _metrics(loss, logits, batch)


# --------------------------------------------------------------------------------------------
# devices and batches
# --------------------------------------------------------------------------------------------


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (default: every device, all hosts)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def _padded(size: int, n_devices: int) -> int:
    return -(-size // n_devices) * n_devices  # round up to a multiple of the device count


def _batches(split: _data.Split, order: np.ndarray, take: int, size: int):
    """Host batches of ``take`` examples in ``order``, zero-padded to ``size`` rows and masked.

    ``size >= take`` is a multiple of the device count; the last batch may hold fewer examples.
    """
    for start in range(0, len(order), take):
        idx = order[start : start + take]
        n = len(idx)
        x = np.zeros((size, split.x.shape[1]), np.float32)
        y = np.zeros((size,), np.int32)
        mask = np.zeros((size,), np.bool_)
        x[:n], y[:n], mask[:n] = split.x[idx], split.y[idx], True
        yield {"x": x, "y": y, "mask": mask}


def _to_device(batch: dict[str, np.ndarray], sharding: NamedSharding) -> Batch:
    # Each process holds the same global batch and copies in only its own devices' shards,
    # which is exactly device_put on one host and still right on many.
    return {
        k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
        for k, v in batch.items()
    }


def _fetch(tree: Any) -> Any:
    """Device values to host NumPy, including replicated arrays that span several hosts."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = x.addressable_data(0)
        return np.asarray(x)

    return jax.tree.map(one, tree)


def _mean(metrics: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per-example means over several batches, in float64 on the host."""
    counts = np.array([int(m["count"]) for m in metrics], np.float64)
    losses = np.array([float(m["loss"]) for m in metrics], np.float64)
    correct = sum(int(m["correct"]) for m in metrics)
    return {
        "loss": float(np.sum(losses * counts) / np.sum(counts)),  # weight each batch by size
        "accuracy": correct / float(np.sum(counts)),
    }


def evaluate(
    params: Params,
    split: _data.Split,
    *,
    config: Config,
    sharding: NamedSharding,
) -> dict[str, float]:
    """Loss and accuracy of ``params`` on every example of ``split`` (padded, masked batches)."""
    order = np.arange(len(split))
    size = _padded(config.eval_batch_size, sharding.mesh.size)
    outs = [
        eval_step(
            params,
            _to_device(b, sharding),
            activation=config.activation,
            label_smoothing=config.label_smoothing,
        )
        for b in _batches(split, order, config.eval_batch_size, size)
    ]
    return _mean(_fetch(outs))


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _compiled_init(sizes: tuple[int, ...], tx: optax.GradientTransformation, sharding):
    # one compiled program, its output placed straight onto the mesh, instead of a dozen eagerly
    # dispatched (and separately compiled) small ops; cached so a repeated run reuses it
    return jax.jit(partial(init_train_state, sizes=sizes, tx=tx), out_shardings=sharding)


def _resume_path(config: Config) -> str:
    if config.resume != "latest":
        if not os.path.isfile(config.resume):
            raise FileNotFoundError(
                f"Config.resume must name an existing checkpoint file; got {config.resume!r}"
            )
        return config.resume
    folder = os.path.join(config.output_dir or "", "checkpoints")
    path = _checkpoint.latest_checkpoint(folder)
    if path is None:
        raise FileNotFoundError(f"--resume latest: no checkpoint in {folder}")
    return path


def _check_resumable(path: str, saved: dict, config: Config) -> None:
    now = config.to_dict()
    differ = sorted(k for k in now if k not in RESUME_MAY_DIFFER and saved.get(k, now[k]) != now[k])
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in differ)
        raise _checkpoint.CheckpointError(
            f"cannot resume from {path}: the config differs in fields that change training "
            f"({details}). Resume with the checkpoint's settings."
        )


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def plot_history(history: list[dict[str, Any]], path: str, *, title: str = "") -> None:
    """Save a PNG with train/validation loss and accuracy per epoch (matplotlib, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)  # render off-screen, leaving pyplot's global backend alone
    for ax, key in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], "s-", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)


def train_and_evaluate(
    config: Config, *, devices: Sequence[jax.Device] | None = None, return_state: bool = False
) -> dict[str, Any] | tuple[dict[str, Any], TrainState]:
    """Train the MLP of ``config`` and evaluate it; return (and write) the metrics.

    With ``config.output_dir`` set, writes ``metrics.json`` (updated every epoch),
    ``metrics.png`` and ``checkpoints/epoch_NNNN.npz`` (one per epoch, the newest
    ``keep_checkpoints`` kept) there. ``config.resume`` continues from a checkpoint.

    Args:
      config: the run's settings.
      devices: the devices to shard each batch over (default: all of them, on every host).
      return_state: also return the final :class:`TrainState` (parameters and optimizer
        state), e.g. to predict with ``mlp_apply(state.params, x)``.

    Returns:
      ``{"config", "dataset", "devices", "history": [per-epoch train/val loss and accuracy],
      "test": {"loss", "accuracy"}, "timing": {...}, "jax_version"}``. Every loss is the
      training objective (cross-entropy with the config's label smoothing), so the curves
      compare like with like; the training figures are averages over the epoch's steps.
      With ``return_state=True``, the pair ``(metrics, state)``.
    """
    from tqdm import tqdm  # the terminal bar: tqdm.auto warns inside notebooks without widgets

    if not isinstance(config, Config):
        raise TypeError(f"train_and_evaluate: config must be a Config; got {type(config).__name__}")
    # What the config's own checks cannot know, before anything is loaded or compiled: the
    # output folder must be a folder and the checkpoint to resume must exist.
    if config.output_dir and os.path.exists(config.output_dir):
        if not os.path.isdir(config.output_dir):
            raise NotADirectoryError(
                f"Config.output_dir must be a folder (or '' for none); got {config.output_dir!r}, "
                "which is a file"
            )
    resume_path = _resume_path(config) if config.resume else None

    t_start = time.perf_counter()
    ds = _data.load_dataset(
        config.data,
        data_dir=config.data_dir,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.split_seed,
    )
    mesh = make_mesh(devices)
    n_dev = mesh.size
    data_sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_size = _padded(config.batch_size, n_dev)
    steps_per_epoch = math.ceil(len(ds.train) / config.batch_size)

    tx = make_optimizer(config, steps_per_epoch)
    sizes = (ds.num_features, *config.hidden_sizes, ds.num_classes)
    state = _compiled_init(sizes, tx, replicated)(jax.random.key(config.seed))
    history: list[dict[str, Any]] = []
    first_epoch = 1
    if resume_path:
        state, meta = _checkpoint.load_checkpoint(resume_path, state)
        _check_resumable(resume_path, meta["config"], config)
        history, first_epoch = meta["history"], meta["epoch"] + 1
    state = jax.device_put(state, replicated)

    writer = jax.process_index() == 0
    out_dir = config.output_dir or None
    ckpt_dir = os.path.join(out_dir, "checkpoints") if out_dir else None
    if out_dir and writer:
        os.makedirs(ckpt_dir, exist_ok=True)

    def metrics_so_far(test=None):
        return {
            "config": config.to_dict(),
            "dataset": {
                "name": ds.name,
                "train": len(ds.train),
                "val": len(ds.val),
                "test": len(ds.test),
                "features": ds.num_features,
            },
            "devices": n_dev,
            "history": history,
            "test": test,
            "timing": {"wall_s": time.perf_counter() - t_start, "epoch_s": epoch_times},
            "jax_version": jax.__version__,
        }

    epoch_times: list[float] = []
    step_kw = {"activation": config.activation, "label_smoothing": config.label_smoothing}
    bar = tqdm(
        total=steps_per_epoch * config.epochs,
        initial=steps_per_epoch * (first_epoch - 1),
        unit="step",
        disable=True if (config.quiet or not writer) else None,  # None: off when not a TTY
        dynamic_ncols=True,
    )
    with bar:
        for epoch in range(first_epoch, config.epochs + 1):
            t_epoch = time.perf_counter()
            bar.set_description(f"epoch {epoch}/{config.epochs}")
            order = np.random.default_rng((config.seed, epoch)).permutation(len(ds.train))
            step_metrics = []
            batches = _batches(ds.train, order, config.batch_size, batch_size)
            for i, host_batch in enumerate(batches):
                state, m = train_step(
                    state, _to_device(host_batch, data_sharding), tx=tx, **step_kw
                )
                step_metrics.append(m)
                bar.update(1)
                if not bar.disable and (i % 10 == 9):  # fetching a value waits for the device
                    recent = _mean(_fetch(step_metrics[-10:]))
                    bar.set_postfix(loss=f"{recent['loss']:.4f}", acc=f"{recent['accuracy']:.4f}")
            train = _mean(_fetch(step_metrics))
            val = evaluate(state.params, ds.val, config=config, sharding=data_sharding)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train["loss"],
                    "train_accuracy": train["accuracy"],
                    "val_loss": val["loss"],
                    "val_accuracy": val["accuracy"],
                }
            )
            epoch_times.append(time.perf_counter() - t_epoch)
            bar.set_postfix(
                loss=f"{train['loss']:.4f}",
                acc=f"{train['accuracy']:.4f}",
                val_acc=f"{val['accuracy']:.4f}",
            )
            if out_dir and writer:
                _checkpoint.save_checkpoint(
                    _checkpoint.checkpoint_path(ckpt_dir, epoch),
                    state,
                    metadata={
                        "epoch": epoch,
                        "step": int(_fetch(state.step)),
                        "config": config.to_dict(),
                        "history": history,
                    },
                )
                _checkpoint.prune_checkpoints(ckpt_dir, config.keep_checkpoints)
                _write_json(os.path.join(out_dir, "metrics.json"), metrics_so_far())

    test = evaluate(state.params, ds.test, config=config, sharding=data_sharding)
    metrics = metrics_so_far(test)
    if out_dir and writer:
        _write_json(os.path.join(out_dir, "metrics.json"), metrics)
        if config.plot and history:
            plot_history(
                history,
                os.path.join(out_dir, "metrics.png"),
                title=f"{ds.name}: test accuracy {test['accuracy']:.4f}",
            )
    return (metrics, state) if return_state else metrics
