# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Training an MLP on handwritten digits with `jsoftmax.cross_entropy`
#
# The training example of `jsoftmax.train`, run from Python: a multilayer perceptron on
# scikit-learn's bundled 8×8 digits (1,797 images, no download), trained with optax AdamW on
# `jsoftmax.cross_entropy` with label smoothing. The same code runs on a CPU, a GPU or a TPU:
# JAX picks the accelerator when there is one, and the batch is split over every device it
# sees.
#
# The command-line equivalent is `jsoftmax train` (`jsoftmax train --help` lists the flags).
# With `JSOFTMAX_NB_SMALL=1` (as in the test suite) the run is shrunk to a couple of epochs of a
# small network; otherwise it uses the defaults of `jsoftmax.train.get_config()`.

# %% [markdown]
# ## Setup
#
# The first code cell installs jsoftmax where it cannot be imported yet (a fresh notebook
# runtime in the cloud, say) and does nothing where it can. jsoftmax is not on PyPI, so the cell
# installs it from the project source: `..`, the checkout this notebook is in, unless you
# replace `..` with the path of your local checkout of the jsoftmax repository (the folder with
# `pyproject.toml`) or of a wheel built from one (`pip wheel --no-deps PATH`). The `[train]`
# extra installs scikit-learn, tqdm and matplotlib, which jsoftmax itself does not need; this
# notebook trains on scikit-learn's digits and plots with matplotlib.
#
# **GPU or TPU.** Nothing in this notebook names a device: JAX runs on an accelerator when it
# finds one, and the second cell prints the devices it found. For an NVIDIA GPU, install JAX's
# CUDA build (`pip install -U "jax[cuda12]"`); for a TPU, use a TPU runtime (or
# `pip install -U "jax[tpu]"` on a TPU VM).

# %%
try:
    import jsoftmax
except ImportError:  # not installed here: install it from the project source (see above)
    import importlib
    import subprocess
    import sys

    # ".." is this notebook's checkout; replace it with your checkout's or wheel's path
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "..[train]"], check=True)
    importlib.invalidate_caches()
    import jsoftmax

# %%
import os
import tempfile
import warnings
from functools import partial

import jax
import matplotlib.pyplot as plt
import numpy as np

from jsoftmax.train import (
    get_config,
    init_train_state,
    make_optimizer,
    mlp_apply,
    train_and_evaluate,
)
from jsoftmax.train.checkpoints import latest_checkpoint, load_checkpoint
from jsoftmax.train.data import load_dataset

SMALL = os.environ.get("JSOFTMAX_NB_SMALL") == "1"
# the progress bar is off here (quiet=True); without ipywidgets tqdm.auto warns on import anyway
warnings.filterwarnings("ignore", message="IProgress not found")
print(jax.devices())

# %% [markdown]
# ## The run
#
# `get_config(**overrides)` returns the default configuration with some fields replaced;
# `train_and_evaluate(config)` trains, evaluates on the validation split after every epoch and
# on the test split at the end, writes `metrics.json` and one checkpoint per epoch to
# `output_dir`, and returns a `TrainResult`: the metrics (`result.metrics`, what `metrics.json`
# holds) and the final train state (`result.state`). Here the outputs go to a temporary folder.

# %%
workdir = tempfile.TemporaryDirectory()
overrides = {"output_dir": workdir.name, "quiet": True, "plot": False}
if SMALL:
    overrides |= {"epochs": 2, "hidden_sizes": (32,), "warmup_epochs": 0.5}
config = get_config(**overrides)

print(f"devices: {jax.devices()} (platform: {jax.devices()[0].platform})")
print(
    f"model: hidden {config.hidden_sizes}, {config.activation}; {config.optimizer} lr "
    f"{config.learning_rate}, batch {config.batch_size}, {config.epochs} epochs, "
    f"label smoothing {config.label_smoothing}"
)
result = train_and_evaluate(config)
metrics = result.metrics

history = metrics["history"]
print(f"\n{'epoch':>5} {'train loss':>10} {'train acc':>9} {'val loss':>9} {'val acc':>8}")
for h in history:
    print(
        f"{h['epoch']:>5} {h['train_loss']:>10.4f} {h['train_accuracy']:>9.4f} "
        f"{h['val_loss']:>9.4f} {h['val_accuracy']:>8.4f}"
    )
test = metrics["test"]
epoch_s = metrics["timing"]["epoch_s"]
print(f"\ntest loss {test['loss']:.4f}, test accuracy {test['accuracy']:.4f}")
print(
    f"{metrics['dataset']['train']} training images, {metrics['devices']} device(s), "
    f"{metrics['timing']['wall_s']:.1f} s in all; first epoch (with compilation) "
    f"{epoch_s[0]:.2f} s, later epochs median {np.median(epoch_s[1:]):.2f} s"
)

# %% [markdown]
# ## Loss and accuracy curves
#
# The training loss is the mean over each epoch's batches while the parameters were changing;
# the validation numbers are computed after the epoch. Both include the label-smoothing term, so
# the loss does not go to zero even for a perfect classifier.

# %%
epochs = [h["epoch"] for h in history]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
    ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
    ax.plot(epochs, [h[f"val_{key}"] for h in history], "s-", ms=3, label="validation")
    ax.axhline(test[key], ls="--", c="gray", label="test (final)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend()
fig.suptitle(f"digits MLP {config.hidden_sizes}: test accuracy {test['accuracy']:.4f}")
plt.show()

# %% [markdown]
# ## Predictions on test digits
#
# The last checkpoint holds the final train state, bit for bit the `result.state` that
# `train_and_evaluate` returned. Everything below is public API: `latest_checkpoint` and
# `load_checkpoint` from `jsoftmax.train.checkpoints`, `load_dataset` from
# `jsoftmax.train.data`, and `init_train_state`, `make_optimizer` and `mlp_apply` from
# `jsoftmax.train`. Restoring needs a *target* with the state's structure, which `jax.eval_shape`
# gives without computing anything. The predicted probabilities are
# `jsoftmax.softmax` of the network's logits; as a consistency check, their arg-max accuracy
# must equal the test accuracy that `train_and_evaluate` reported.

# %%
ds = load_dataset(
    config.data,
    data_dir=config.data_dir,
    val_fraction=config.val_fraction,
    test_fraction=config.test_fraction,
    seed=config.split_seed,
)
sizes = (ds.num_features, *config.hidden_sizes, ds.num_classes)
tx = make_optimizer(config, steps_per_epoch=1)  # the schedule does not change the structure
target = jax.eval_shape(partial(init_train_state, sizes=sizes, tx=tx), jax.random.key(0))
path = latest_checkpoint(os.path.join(workdir.name, "checkpoints"))
state, meta = load_checkpoint(path, target)
print(f"restored {os.path.basename(path)}: epoch {meta['epoch']}, step {meta['step']}")
# the checkpoint holds bit for bit the state that train_and_evaluate returned
for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(result.state), strict=True):
    np.testing.assert_array_equal(a, np.asarray(b))


@jax.jit
def predict(params, x):
    return jsoftmax.softmax(mlp_apply(params, x, activation=config.activation))


probs = np.asarray(predict(state.params, ds.test.x))
pred = probs.argmax(-1)
accuracy = float(np.mean(pred == ds.test.y))
print(
    f"test accuracy of the restored parameters: {accuracy:.4f} (reported: {test['accuracy']:.4f})"
)
# equal up to a near-tie that rounds differently in another batch shape (at most one example)
assert abs(accuracy - test["accuracy"]) <= 1 / len(ds.test) + 1e-12

# %% [markdown]
# A grid of test digits, the misclassified ones first: each image is followed by the ten
# predicted class probabilities (the true class in green, a wrong prediction in red).

# %%
wrong = np.flatnonzero(pred != ds.test.y)
right = np.flatnonzero(pred == ds.test.y)
shown = np.concatenate([wrong[:6], right[: 16 - min(len(wrong), 6)]])
print(f"{len(wrong)} of {len(ds.test)} test digits misclassified; showing {min(len(wrong), 6)}")

fig, axes = plt.subplots(4, 8, figsize=(13, 6.5), layout="constrained")
for k, i in enumerate(shown):
    ax_img, ax_bar = axes[k // 4, 2 * (k % 4)], axes[k // 4, 2 * (k % 4) + 1]
    ax_img.imshow(ds.test.x[i].reshape(8, 8), cmap="gray_r")
    ax_img.set_title(f"label {ds.test.y[i]}", fontsize=9)
    ax_img.axis("off")
    colors = ["tab:gray"] * 10
    colors[pred[i]] = "tab:red"
    colors[ds.test.y[i]] = "tab:green"
    ax_bar.barh(np.arange(10), probs[i], color=colors)
    ax_bar.set_xlim(0, 1)
    ax_bar.set_yticks(range(10))
    ax_bar.invert_yaxis()
    ax_bar.tick_params(labelsize=7)
    ax_bar.set_title(f"pred {pred[i]} ({probs[i, pred[i]]:.2f})", fontsize=9)
plt.show()

print("top-3 predictions of the first few shown:")
for i in shown[:8]:
    top = np.argsort(-probs[i])[:3]
    ranked = ", ".join(f"{c}: {probs[i, c]:.3f}" for c in top)
    print(f"  test #{i:>3} (label {ds.test.y[i]}): {ranked}")

# %%
workdir.cleanup()
