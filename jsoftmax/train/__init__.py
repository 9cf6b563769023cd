"""Train a multilayer perceptron on handwritten digits with jsoftmax's cross-entropy and optax.

The training demo behind ``jsoftmax train``. It needs the ``train`` extra
(``pip install "jsoftmax[train]"``: scikit-learn, tqdm, matplotlib), imported only where used;
``import jsoftmax`` and the losses do not. Everything is a pure function except
:func:`train_and_evaluate`, the loop that ties them together and writes files. One module per
concern:

* :mod:`~jsoftmax.train.config`: :class:`Config` (every field a ``jsoftmax train`` flag, checked
  when built; an out-of-range value raises :class:`ConfigError`) and :func:`get_config`.
* :mod:`~jsoftmax.train.model`: :func:`init_mlp` / :func:`mlp_apply`, a list of ``{"w", "b"}``
  dense layers with ReLU or GELU between them and logits out.
* :mod:`~jsoftmax.train.optimizer`: :func:`make_optimizer`, optax AdamW (default) or SGD with
  momentum on a linear warm-up and cosine decay schedule; weight decay applies to weight
  matrices, not biases.
* :mod:`~jsoftmax.train.steps`: :class:`TrainState`, :func:`loss_fn` (jsoftmax's cross-entropy
  over the examples a mask keeps), :func:`make_train_step` (the jitted step for one optimiser,
  state donated), :func:`train_step` and :func:`eval_step`.
* :mod:`~jsoftmax.train.data`: the digits and MNIST (IDX files) loaders and the padded, masked
  host batches.
* :mod:`~jsoftmax.train.sharding`: the ``"data"`` device mesh (:func:`make_mesh`), batches
  placed on it, results read back.
* :mod:`~jsoftmax.train.checkpoints`: one ``.npz`` checkpoint per epoch, no pickle.
* :mod:`~jsoftmax.train.plots`: :func:`plot_history`, the loss and accuracy curves.
* :mod:`~jsoftmax.train.loop`: :func:`train_and_evaluate` (progress bar or per-epoch lines,
  metrics, files, resuming), returning a :class:`TrainResult`, and :func:`evaluate`; Ctrl-C
  raises :class:`TrainingInterrupted`, a checkpoint of other settings
  :class:`ResumeMismatchError`.
* :mod:`~jsoftmax.train.cli`: the ``jsoftmax train`` subcommand's flags.
* :mod:`~jsoftmax.train.extras`: the optional packages and the error naming what to install.

Example::

    from jsoftmax.train import get_config, train_and_evaluate
    result = train_and_evaluate(get_config(epochs=5, output_dir=""))
    result.metrics["test"]["accuracy"], result.state.params
"""

from jsoftmax.train.config import RESUME_MAY_DIFFER, Config, ConfigError, get_config
from jsoftmax.train.extras import MissingExtraError
from jsoftmax.train.loop import (
    ResumeMismatchError,
    TrainingInterrupted,
    TrainResult,
    evaluate,
    train_and_evaluate,
)
from jsoftmax.train.model import Params, init_mlp, mlp_apply
from jsoftmax.train.optimizer import make_optimizer
from jsoftmax.train.plots import plot_history
from jsoftmax.train.sharding import make_mesh
from jsoftmax.train.steps import (
    Batch,
    TrainState,
    eval_step,
    init_train_state,
    loss_fn,
    make_train_step,
    train_step,
)

# Not public: the uncompiled step body, which jsoftmax.bench.train_step times with two losses.
from jsoftmax.train.steps import _train_step_impl as _train_step_impl

__all__ = [
    "RESUME_MAY_DIFFER",
    "Batch",
    "Config",
    "ConfigError",
    "MissingExtraError",
    "Params",
    "ResumeMismatchError",
    "TrainResult",
    "TrainState",
    "TrainingInterrupted",
    "eval_step",
    "evaluate",
    "get_config",
    "init_mlp",
    "init_train_state",
    "loss_fn",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "mlp_apply",
    "plot_history",
    "train_and_evaluate",
    "train_step",
]
