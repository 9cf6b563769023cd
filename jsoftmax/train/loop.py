"""The training loop: :func:`train_and_evaluate`, with its progress output, metrics and files.

:func:`train_and_evaluate` ties the other modules together: it loads the data
(:mod:`~jsoftmax.train.data`), builds the optimiser and the compiled step
(:mod:`~jsoftmax.train.optimizer`, :mod:`~jsoftmax.train.steps`) on the device mesh
(:mod:`~jsoftmax.train.sharding`), trains for the configured epochs, evaluates after every
epoch and at the end (:func:`evaluate`), and writes ``metrics.json``, ``metrics.png``
(:mod:`~jsoftmax.train.plots`) and a checkpoint per epoch (:mod:`~jsoftmax.train.checkpoints`).
It returns a :class:`TrainResult`.

Progress. With stderr a terminal, a tqdm progress bar there; with stdout not a terminal (a log
file, CI), or no bar to watch, one flushed line per epoch on stdout (epoch, train loss and
accuracy, validation loss and accuracy, seconds) after a line saying what the loss is
(:func:`loss_label`). ``Config.quiet`` turns both off.

Resuming. ``Config.resume`` continues from a checkpoint written with the same settings (all but
``jsoftmax.train.RESUME_MAY_DIFFER``; otherwise :class:`ResumeMismatchError` names each
setting that differs). The number of epochs is one of them: the learning-rate schedule, a
warm-up then a cosine decay to 0 at the last epoch, is a function of it, so a run cannot be
extended (or shortened) by resuming it. Resuming prints the checkpoint, its epoch and the epochs
left; a finished run has nothing left, and then nothing is trained or written (``metrics.json``
keeps its bytes). A corrupt checkpoint is reported with the newest intact earlier one to resume
from. Ctrl-C during training raises :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) with
the epoch it stopped in and the checkpoint to continue from. A run that saves its first
checkpoint removes the folder's checkpoints of that epoch and later ones, which belong to an
earlier run there.

Several hosts. Call ``jax.distributed.initialize()`` in every process before anything else uses
JAX (on Cloud TPU and under SLURM it reads its arguments from the environment; elsewhere pass
``coordinator_address``, ``num_processes`` and ``process_id``), then run the same code::

    import jax
    jax.distributed.initialize()
    from jsoftmax.train import get_config, train_and_evaluate
    train_and_evaluate(get_config(data="mnist", data_dir="/data/mnist"))

``jax.devices()`` then lists the devices of all hosts and the mesh spans them. Every process
loads the same data and draws the same shuffles from the same seed, builds the same global
batch, and copies in only the shards of its own devices. Only process 0 writes the metrics,
plot and checkpoints.

Reproducibility. The data split, the initial parameters and each epoch's shuffle are pure
functions of the seeds, and the train state (step, parameters, optimiser state) is all there is
to resume, so the same seed gives the same metrics on CPU, and resuming from a checkpoint ends
at bit-for-bit the parameters of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jsoftmax.train import checkpoints
from jsoftmax.train.config import RESUME_MAY_DIFFER, Config
from jsoftmax.train.data import Split, host_batches, load_dataset
from jsoftmax.train.extras import require
from jsoftmax.train.model import Params
from jsoftmax.train.optimizer import make_optimizer
from jsoftmax.train.plots import plot_history
from jsoftmax.train.sharding import fetch, make_mesh, padded_size, to_device
from jsoftmax.train.steps import TrainState, eval_step, init_train_state, make_train_step

__all__ = [
    "ResumeMismatchError",
    "TrainResult",
    "TrainingInterrupted",
    "evaluate",
    "loss_label",
    "train_and_evaluate",
]


class TrainResult(NamedTuple):
    """What :func:`train_and_evaluate` returns.

    Attributes:
      metrics: ``{"config", "dataset", "devices", "history": [per-epoch train/val loss and
        accuracy], "test": {"loss", "accuracy"}, "timing": {...}, "jax_version"}``, the
        contents of ``metrics.json``. Every loss is the training objective (cross-entropy with
        the config's label smoothing), so the curves compare like with like; the training
        figures are averages over the epoch's steps.
      state: the final :class:`~jsoftmax.train.TrainState` (step, parameters and optimiser
        state), e.g. to predict with ``mlp_apply(result.state.params, x)``.
    """

    metrics: dict[str, Any]
    state: TrainState


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
    split: Split,
    *,
    config: Config,
    sharding: NamedSharding,
) -> dict[str, float]:
    """Loss and accuracy of ``params`` on every example of ``split`` (padded, masked batches)."""
    order = np.arange(len(split))
    size = padded_size(config.eval_batch_size, sharding.mesh.size)
    outs = [
        eval_step(
            params,
            to_device(b, sharding),
            activation=config.activation,
            label_smoothing=config.label_smoothing,
        )
        for b in host_batches(split, order, config.eval_batch_size, size)
    ]
    return _mean(fetch(outs))


def _extras_needed(config: Config) -> list[str]:
    """The modules of the ``train`` extra that a run of ``config`` imports."""
    needed = ["sklearn"] if config.data == "digits" else []  # the bundled digits
    needed.append("tqdm")  # the progress bar
    if config.plot and config.output_dir:
        needed.append("matplotlib")  # metrics.png
    return needed


def _resume_path(config: Config) -> str:
    if config.resume != "latest":
        if not os.path.isfile(config.resume):
            raise FileNotFoundError(
                f"Config.resume must name an existing checkpoint file; got {config.resume!r}"
            )
        return config.resume
    folder = os.path.join(config.output_dir or "", "checkpoints")
    path = checkpoints.latest_checkpoint(folder)
    if path is None:
        raise FileNotFoundError(f"--resume latest: no checkpoint in {folder}")
    return path


class ResumeMismatchError(checkpoints.CheckpointError):
    """The checkpoint to resume was written with other settings than the config's.

    Attributes:
      path: the checkpoint.
      differences: ``(field, checkpoint's value, config's value)`` for every field that differs
        and changes training (``RESUME_MAY_DIFFER`` lists those that may differ), values as
        :class:`Config` holds them (tuples, not JSON lists).
    """

    def __init__(self, path: str, differences: list[tuple[str, Any, Any]]) -> None:
        self.path, self.differences = path, differences
        details = ", ".join(
            f"{k}: checkpoint has {a!r}, config has {b!r}" for k, a, b in differences
        )
        super().__init__(
            f"cannot resume from {path}: it was trained with other settings ({details}); resume "
            f"with the checkpoint's settings{_NO_EXTENDING if self.changes_epochs else ''}"
        )

    @property
    def changes_epochs(self) -> bool:
        return any(k == "epochs" for k, _, _ in self.differences)


# Why a run cannot be extended (or shortened) by resuming it with another number of epochs.
_NO_EXTENDING = (
    "; a run cannot be extended: its learning-rate schedule (warm-up, then a cosine decay to 0 "
    "at the last epoch) is fixed by epochs, so to train longer start a new run with more epochs"
)


def _as_config_value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # JSON lists were tuples


def _check_resumable(path: str, saved: dict, config: Config) -> None:
    now = config.to_dict()
    differ = sorted(k for k in now if k not in RESUME_MAY_DIFFER and saved.get(k, now[k]) != now[k])
    if differ:
        raise ResumeMismatchError(
            path, [(k, _as_config_value(saved[k]), getattr(config, k)) for k in differ]
        )


def _intact_before(path: str) -> tuple[int, str] | None:
    """The newest intact checkpoint older than ``path`` in its folder, as ``(epoch, path)``."""
    found = checkpoints.list_checkpoints(os.path.dirname(os.path.abspath(path)))
    here = os.path.abspath(path)
    own = [e for e, p in found if os.path.abspath(p) == here]
    for epoch, candidate in reversed(found):
        if os.path.abspath(candidate) == here or (own and epoch >= own[0]):
            continue
        try:
            checkpoints.check_checkpoint(candidate)
        except (OSError, checkpoints.CheckpointError):
            continue
        return epoch, candidate
    return None


def _corrupt(path: str, error: checkpoints.CheckpointError) -> checkpoints.CheckpointError:
    """``error`` with the newest intact earlier checkpoint to resume from named, if any."""
    previous = _intact_before(path)
    if previous is None:
        where = os.path.dirname(os.path.abspath(path))
        hint = f"; there is no intact earlier checkpoint in {where}"
    else:
        epoch, good = previous
        hint = f"; the previous checkpoint, {good} (epoch {epoch}), is intact: --resume {good}"
    return checkpoints.CheckpointError(f"{error}{hint}")


def _read_resumable(path: str, config: Config) -> dict:
    """The checkpoint's metadata, after checking the file is intact and resumable by ``config``."""
    try:
        manifest = checkpoints.check_checkpoint(path)
    except checkpoints.CheckpointError as e:
        raise _corrupt(path, e) from None
    meta = manifest["metadata"]
    if not all(k in meta for k in ("epoch", "config", "history")):
        raise checkpoints.CheckpointError(
            f"{path}: not a checkpoint of jsoftmax.train (no epoch, config and history in its "
            "metadata)"
        )
    _check_resumable(path, meta["config"], config)
    return meta


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (``KeyboardInterrupt``) during training, with where it stopped.

    Attributes:
      epoch: the epoch that was running (not finished) when it came.
      epochs: the run's number of epochs.
      checkpoint: the newest checkpoint on disk, the one ``--resume`` continues from, or
        ``None`` if there is none (nothing saved yet, or no output folder).
      checkpoint_epoch: that checkpoint's epoch (``None`` with it).
    """

    def __init__(
        self, epoch: int, epochs: int, checkpoint: str | None, checkpoint_epoch: int | None
    ) -> None:
        self.epoch, self.epochs = epoch, epochs
        self.checkpoint, self.checkpoint_epoch = checkpoint, checkpoint_epoch
        when = f"after epoch {epoch}" if checkpoint_epoch == epoch else f"during epoch {epoch}"
        saved = f"epoch {checkpoint_epoch} is saved in {checkpoint}" if checkpoint else ""
        super().__init__(
            f"interrupted {when} of {epochs}; {saved or 'no checkpoint of this run saved'}"
        )


def _loss_kind(config: Config) -> str:
    if config.label_smoothing:
        return f"cross-entropy with label smoothing {config.label_smoothing:g}"
    return "cross-entropy"


def loss_label(config: Config) -> str:
    """What the reported loss is: the training objective, in nats (natural log)."""
    return f"{_loss_kind(config)}, nats"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _say(text: str) -> None:
    print(text, file=sys.stdout, flush=True)  # flushed: a log file shows each line at once


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def train_and_evaluate(
    config: Config, *, devices: Sequence[jax.Device] | None = None
) -> TrainResult:
    """Train the MLP of ``config`` and evaluate it; return (and write) the metrics.

    With ``config.output_dir`` set, writes ``metrics.json`` (updated every epoch),
    ``metrics.png`` and ``checkpoints/epoch_NNNN.npz`` (one per epoch, the newest
    ``keep_checkpoints`` kept) there. ``config.resume`` continues from a checkpoint of a run with
    the same settings (see the module's notes on progress output and resuming).

    Args:
      config: the run's settings.
      devices: the devices to shard each batch over (default: all of them, on every host).

    Returns:
      A :class:`TrainResult`: the metrics (as written to ``metrics.json``) and the final
      train state.

    Raises:
      MissingExtraError: a package of the ``train`` extra that this run needs is not
        installed (tqdm always, scikit-learn for the digits, matplotlib for the plot).
      FileNotFoundError, NotADirectoryError, DataError, CheckpointError: a problem with the
        data, the output folder or the checkpoint to resume (:class:`ResumeMismatchError`: it
        was written with other settings), raised before anything compiles.
      TrainingInterrupted: Ctrl-C during training.
    """
    if not isinstance(config, Config):
        raise TypeError(f"train_and_evaluate: config must be a Config; got {type(config).__name__}")
    require(*_extras_needed(config))
    from tqdm import tqdm  # the terminal bar: tqdm.auto warns inside notebooks without widgets

    # What the config's own checks cannot know, before anything is loaded or compiled: the
    # output folder must be a folder and the checkpoint to resume must exist, be intact and
    # have been written with the same settings.
    if config.output_dir and os.path.exists(config.output_dir):
        if not os.path.isdir(config.output_dir):
            raise NotADirectoryError(
                f"Config.output_dir must be a folder (or '' for none); got {config.output_dir!r}, "
                "which is a file"
            )
    resume_path = _resume_path(config) if config.resume else None
    resumed = _read_resumable(resume_path, config) if resume_path else None
    writer = jax.process_index() == 0
    if resumed is not None and writer:
        done = resumed["epoch"]
        left = max(config.epochs - done, 0)
        _say(
            f"resuming from {resume_path} (epoch {done} of {config.epochs}): "
            + (f"{left} epoch(s) left" if left else "the run is finished, nothing to train")
        )

    t_start = time.perf_counter()
    ds = load_dataset(
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
    batch_size = padded_size(config.batch_size, n_dev)
    steps_per_epoch = math.ceil(len(ds.train) / config.batch_size)

    tx = make_optimizer(config, steps_per_epoch)
    train_step = make_train_step(
        tx, activation=config.activation, label_smoothing=config.label_smoothing
    )
    sizes = (ds.num_features, *config.hidden_sizes, ds.num_classes)
    init = partial(init_train_state, sizes=sizes, tx=tx)
    history: list[dict[str, Any]] = []
    first_epoch = 1
    if resume_path:
        # the target's structure, shapes and dtypes, without computing (or compiling) anything
        target = jax.eval_shape(init, jax.random.key(config.seed))
        try:
            state, meta = checkpoints.load_checkpoint(resume_path, target)
        except checkpoints.CheckpointError as e:
            raise _corrupt(resume_path, e) from None
        history, first_epoch = meta["history"], meta["epoch"] + 1
        state = jax.device_put(state, replicated)
    else:
        # one compiled program, its output placed straight onto the mesh, instead of a dozen
        # eagerly dispatched (and separately compiled) small ops
        state = jax.jit(init, out_shardings=replicated)(jax.random.key(config.seed))

    out_dir = config.output_dir or None
    ckpt_dir = os.path.join(out_dir, "checkpoints") if out_dir else None

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
    if first_epoch > config.epochs:
        # a finished run: evaluate what it ended with and change nothing on disk
        test = evaluate(state.params, ds.test, config=config, sharding=data_sharding)
        return TrainResult(metrics=metrics_so_far(test), state=state)
    if out_dir and writer:
        os.makedirs(ckpt_dir, exist_ok=True)

    # Progress: a tqdm bar on a terminal (stderr); one line per epoch on stdout when that is
    # not a terminal (a log file, CI) or when there is no bar to watch.
    show_bar = writer and not config.quiet and _isatty(sys.stderr)
    epoch_lines = writer and not config.quiet and not (show_bar and _isatty(sys.stdout))
    if epoch_lines:
        _say(
            f"training {config.epochs - first_epoch + 1} epoch(s) of {steps_per_epoch} steps on "
            f"{n_dev} device(s); loss: {loss_label(config)}"
        )
    bar = tqdm(
        total=steps_per_epoch * config.epochs,
        initial=steps_per_epoch * (first_epoch - 1),
        unit="step",
        disable=not show_bar,
        dynamic_ncols=True,
    )
    stale_checked = False  # checkpoints of an earlier run in ckpt_dir are removed at first save
    epoch = first_epoch
    try:
        with bar:
            for epoch in range(first_epoch, config.epochs + 1):
                t_epoch = time.perf_counter()
                bar.set_description(f"epoch {epoch}/{config.epochs}")
                order = np.random.default_rng((config.seed, epoch)).permutation(len(ds.train))
                step_metrics = []
                batches = host_batches(ds.train, order, config.batch_size, batch_size)
                for i, host_batch in enumerate(batches):
                    state, m = train_step(state, to_device(host_batch, data_sharding))
                    step_metrics.append(m)
                    bar.update(1)
                    if not bar.disable and (i % 10 == 9):  # fetching a value waits for the device
                        recent = _mean(fetch(step_metrics[-10:]))
                        bar.set_postfix(
                            loss=f"{recent['loss']:.4f}", acc=f"{recent['accuracy']:.4f}"
                        )
                train = _mean(fetch(step_metrics))
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
                if epoch_lines:
                    width = len(str(config.epochs))
                    _say(
                        f"epoch {epoch:{width}d}/{config.epochs}: train loss {train['loss']:.4f} "
                        f"accuracy {train['accuracy']:.4f}, validation loss {val['loss']:.4f} "
                        f"accuracy {val['accuracy']:.4f}, {epoch_times[-1]:.2f} s"
                    )
                if out_dir and writer:
                    if not stale_checked:
                        stale_checked = True
                        _remove_stale_checkpoints(ckpt_dir, epoch)
                    checkpoints.save_checkpoint(
                        checkpoints.checkpoint_path(ckpt_dir, epoch),
                        state,
                        metadata={
                            "epoch": epoch,
                            "step": int(fetch(state.step)),
                            "config": config.to_dict(),
                            "history": history,
                        },
                    )
                    checkpoints.prune_checkpoints(ckpt_dir, config.keep_checkpoints)
                    _write_json(os.path.join(out_dir, "metrics.json"), metrics_so_far())
    except KeyboardInterrupt:
        if stale_checked:  # this run has saved: its newest checkpoint
            last_epoch, last = checkpoints.list_checkpoints(ckpt_dir)[-1]
        elif resume_path:  # not yet: the one it resumed from
            last_epoch, last = first_epoch - 1, resume_path
        else:
            last_epoch, last = None, None
        raise TrainingInterrupted(epoch, config.epochs, last, last_epoch) from None

    test = evaluate(state.params, ds.test, config=config, sharding=data_sharding)
    metrics = metrics_so_far(test)
    if out_dir and writer:
        _write_json(os.path.join(out_dir, "metrics.json"), metrics)
        if config.plot and history:
            plot_history(
                history,
                os.path.join(out_dir, "metrics.png"),
                title=f"{ds.name}: test accuracy {test['accuracy']:.4f}",
                loss_label=f"loss, nats\n({_loss_kind(config)})",
            )
    return TrainResult(metrics=metrics, state=state)


def _remove_stale_checkpoints(ckpt_dir: str, epoch: int) -> None:
    """Before this run first saves ``epoch``: delete the folder's checkpoints of epoch >= it.

    They belong to an earlier run in the same output folder (or to a continuation of this one
    that was abandoned); left there, ``--resume latest`` would pick them and the pruning, which
    keeps the highest epochs, would delete this run's checkpoints instead.
    """
    stale = [(e, p) for e, p in checkpoints.list_checkpoints(ckpt_dir) if e >= epoch]
    for _, path in stale:
        os.remove(path)
    if stale:
        _say(
            f"removed {len(stale)} checkpoint(s) of an earlier run from {ckpt_dir} "
            f"(epochs {', '.join(str(e) for e, _ in stale)})"
        )
