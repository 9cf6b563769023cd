"""The training curves: train and validation loss and accuracy per epoch, as a PNG.

Uses matplotlib (the ``train`` extra), imported only when a plot is drawn.
"""

from __future__ import annotations

from typing import Any

from jsoftmax.train.extras import require

__all__ = ["plot_history"]


def plot_history(
    history: list[dict[str, Any]], path: str, *, title: str = "", loss_label: str = "loss"
) -> None:
    """Save a PNG with train/validation loss and accuracy per epoch (matplotlib, Agg).

    ``loss_label`` is the loss axis's label, e.g. ``"loss, nats\\n(cross-entropy)"``.

    Raises:
      MissingExtraError: matplotlib is not installed (``pip install "jsoftmax[train]"``).
    """
    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)  # render off-screen, leaving pyplot's global backend alone
    for ax, key in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], "s-", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(loss_label if key == "loss" else key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
