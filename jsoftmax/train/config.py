"""The configuration of a training run: :class:`Config`, :func:`get_config` and their checks.

Every field of :class:`Config` is a ``jsoftmax train`` flag (:mod:`jsoftmax.train.cli` generates
them from the dataclass) and is checked when the config is built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jsoftmax.train.data import DIGITS_SIZE, split_sizes
from jsoftmax.train.model import ACTIVATIONS

__all__ = ["RESUME_MAY_DIFFER", "Config", "ConfigError", "get_config"]

_DATASETS = ("digits", "mnist")
_OPTIMIZERS = ("adamw", "sgd")

# Seeds of the initial parameters must lie below this: without 64-bit mode jax.random.key keeps
# only the low 32 bits, so seed 2**32 would silently start from seed 0's parameters.
_SEED_LIMIT = 2**32

#: Config fields that may differ between a run and the run it resumes; none of them changes a
#: single number of the training.
RESUME_MAY_DIFFER = ("data_dir", "output_dir", "resume", "keep_checkpoints", "plot", "quiet")


def _is_int(value: Any) -> bool:
    """A Python or NumPy integer, but not a bool (``True`` is not a batch size)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    """A Python or NumPy integer or float, but not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class ConfigError(ValueError):
    """A :class:`Config` field is out of range; the message names the field and its value.

    ``str(error)`` reads ``Config.FIELD REQUIREMENT; got VALUE[NOTE]``. The parts are kept so that
    ``jsoftmax train`` can say the same with the flag the user typed (``--learning-rate must be
    > 0, got -0.1``).

    Attributes:
      field: the field blamed (``"val_fraction + test_fraction"`` when it is their sum).
      requirement: what it must be, e.g. ``"must be > 0"``.
      got: the offending value as text.
      note: anything said after the value (may be empty).
      instead: for a check across fields, the same error blamed on another field involved,
        ``{field: (requirement, got)}``: when a user set only that other field, it is the one
        to name (``--val-fraction 0.85`` is too large, not the default ``test_fraction``).
    """

    def __init__(
        self,
        field: str,
        requirement: str,
        got: str,
        note: str = "",
        instead: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(f"Config.{field} {requirement}; got {got}{note}")
        self.field, self.requirement, self.got, self.note = field, requirement, got, note
        self.instead = dict(instead or {})


def _check_digits_split(val_fraction: float, test_fraction: float) -> None:
    """Raise :class:`ConfigError` if the fractions leave a digits split without an example."""
    sizes = split_sizes(DIGITS_SIZE, val_fraction, test_fraction)
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
    raise ConfigError(
        name,
        f"must leave at least one {split} example",
        got,
        f", which splits the {DIGITS_SIZE} digits into {counts}",
    )


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with its command-line help (and, optionally, choices) attached."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Config:
    """Everything that defines a training run. Every field is a ``jsoftmax train`` flag.

    Every field is checked when the config is built: a value of the wrong type raises
    ``TypeError`` and a value out of range :class:`ConfigError` (a ``ValueError``), both naming
    the field, what it must be and what it got (``Config.seed must be a non-negative int below
    2**32; got -1``). NumPy scalars and ``os.PathLike`` paths are accepted and stored as plain
    Python values; a bool is not accepted where an int or a number is expected. What depends on
    files (the data, the checkpoint to resume) is checked by
    :func:`jsoftmax.train.train_and_evaluate` before it compiles anything.
    """

    # data
    data: str = _opt("digits", "dataset", choices=_DATASETS)
    data_dir: str | None = _opt(None, "folder with the MNIST IDX files (for --data mnist)")
    val_fraction: float = _opt(0.1, "share of the data held out for validation")
    test_fraction: float = _opt(0.2, "share held out for testing (digits; MNIST has its own)")
    split_seed: int = _opt(0, "seed of the train/validation/test split")
    # model
    hidden_sizes: tuple[int, ...] = _opt((256, 256), "hidden layer widths, e.g. 256,256")
    activation: str = _opt("gelu", "hidden-layer activation", choices=tuple(ACTIVATIONS))
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
    epochs: int = _opt(
        30, "passes over the training set; the learning-rate schedule ends at the last one"
    )
    # outputs
    output_dir: str | None = _opt(
        "runs/digits", "where metrics.json, metrics.png and checkpoints/ go ('' for nowhere)"
    )
    keep_checkpoints: int = _opt(3, "how many of the newest epoch checkpoints to keep (0: all)")
    resume: str | None = _opt(
        None,
        "continue from a checkpoint file, or from the newest in the output folder ('latest'); "
        "give the same settings as the run that wrote it",
        const="latest",
    )
    plot: bool = _opt(True, "write metrics.png")
    quiet: bool = _opt(False, "no progress bar and no per-epoch lines")

    def __post_init__(self) -> None:
        def fail(
            name: str,
            expected: str,
            error: type[Exception] = ValueError,
            instead: dict[str, str] | None = None,
        ) -> None:
            value = getattr(self, name)
            if error is TypeError:
                raise TypeError(
                    f"Config.{name} must be {expected}; got {value!r} ({type(value).__name__})"
                )
            others = {
                k: (f"must be {v}", repr(getattr(self, k))) for k, v in (instead or {}).items()
            }
            raise ConfigError(name, f"must be {expected}", repr(value), instead=others)

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

        def number(
            name: str, expected: str, within: Any, instead: dict[str, str] | None = None
        ) -> None:
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
                fail(name, expected, instead=instead)
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
            fail("data_dir", "the folder holding the MNIST IDX files when data is 'mnist'")
        for name in ("val_fraction", "test_fraction"):
            number(name, "in (0, 1)", lambda v: 0.0 < v < 1.0)
        if self.val_fraction + self.test_fraction >= 1.0:  # blame the one the user set
            why = "(val_fraction + test_fraction < 1)"
            fail(
                "test_fraction",
                f"< {1 - self.val_fraction:g} {why}",
                instead={"val_fraction": f"< {1 - self.test_fraction:g} {why}"},
            )
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
        choice("activation", tuple(ACTIVATIONS), f"one of {tuple(ACTIVATIONS)}")
        # optimisation
        integer("seed", "a non-negative int below 2**32", 0, _SEED_LIMIT)
        choice("optimizer", _OPTIMIZERS, "'adamw' or 'sgd'")
        number("learning_rate", "> 0", lambda v: v > 0.0)
        # epochs first: warmup_epochs is bounded by it, and --epochs 0 is an epochs error
        integer("epochs", "a positive int", 1)
        number(
            "warmup_epochs",
            f"in [0, epochs={self.epochs}]",
            lambda v: 0 <= v <= self.epochs,
            instead={"epochs": f"a positive int >= warmup_epochs={self.warmup_epochs}"},
        )
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
