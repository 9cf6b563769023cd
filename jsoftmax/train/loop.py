"""The training loop: :func:`train_and_evaluate`, with its progress bar, metrics and files.

:func:`train_and_evaluate` ties the other modules together: it loads the data
(:mod:`~jsoftmax.train.data`), builds the optimiser and the compiled step
(:mod:`~jsoftmax.train.optimizer`, :mod:`~jsoftmax.train.steps`) on the device mesh
(:mod:`~jsoftmax.train.sharding`), trains for the configured epochs with a tqdm progress bar,
evaluates after every epoch and at the end (:func:`evaluate`), and writes ``metrics.json``,
``metrics.png`` (:mod:`~jsoftmax.train.plots`) and a checkpoint per epoch
(:mod:`~jsoftmax.train.checkpoints`). It returns a :class:`TrainResult`.

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

__all__ = ["TrainResult", "evaluate", "train_and_evaluate"]


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


def _check_resumable(path: str, saved: dict, config: Config) -> None:
    now = config.to_dict()
    differ = sorted(k for k in now if k not in RESUME_MAY_DIFFER and saved.get(k, now[k]) != now[k])
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in differ)
        raise checkpoints.CheckpointError(
            f"cannot resume from {path}: the config differs in fields that change training "
            f"({details}). Resume with the checkpoint's settings."
        )


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
    ``keep_checkpoints`` kept) there. ``config.resume`` continues from a checkpoint.

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
        data, the output folder or the checkpoint to resume, raised before anything compiles.
    """
    if not isinstance(config, Config):
        raise TypeError(f"train_and_evaluate: config must be a Config; got {type(config).__name__}")
    require(*_extras_needed(config))
    from tqdm import tqdm  # the terminal bar: tqdm.auto warns inside notebooks without widgets

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
    # one compiled program, its output placed straight onto the mesh, instead of a dozen
    # eagerly dispatched (and separately compiled) small ops
    init = jax.jit(partial(init_train_state, sizes=sizes, tx=tx), out_shardings=replicated)
    state = init(jax.random.key(config.seed))
    history: list[dict[str, Any]] = []
    first_epoch = 1
    if resume_path:
        state, meta = checkpoints.load_checkpoint(resume_path, state)
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
            batches = host_batches(ds.train, order, config.batch_size, batch_size)
            for i, host_batch in enumerate(batches):
                state, m = train_step(state, to_device(host_batch, data_sharding))
                step_metrics.append(m)
                bar.update(1)
                if not bar.disable and (i % 10 == 9):  # fetching a value waits for the device
                    recent = _mean(fetch(step_metrics[-10:]))
                    bar.set_postfix(loss=f"{recent['loss']:.4f}", acc=f"{recent['accuracy']:.4f}")
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
            if out_dir and writer:
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
    return TrainResult(metrics=metrics, state=state)
