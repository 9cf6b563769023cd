"""The ``jsoftmax train`` subcommand: one flag per :class:`~jsoftmax.train.Config` field.

The flags are generated from the dataclass (``hidden_sizes`` becomes ``--hidden-sizes 256,256``,
booleans get ``--plot`` / ``--no-plot``, unset flags keep the field's default); the subcommand
does nothing but build the config, call :func:`jsoftmax.train.train_and_evaluate` and report.
A bad flag value is one line naming the flag (``--learning-rate must be > 0, got -0.1``) and exit
status 2; a problem with the data or a checkpoint one line and status 1; Ctrl-C one line saying
where training stopped and how to continue, and status 130.
``jsoftmax/__main__.py`` adds it to the ``jsoftmax`` command with :func:`add_train_command` and
runs it with :func:`run`.

Examples::

    jsoftmax train                                   # digits, defaults, into runs/digits
    jsoftmax train --epochs 10 --optimizer sgd --learning-rate 0.05
    jsoftmax train --data mnist --data-dir ~/data/mnist --output-dir runs/mnist
    jsoftmax train --resume                          # continue from runs/digits/checkpoints
                                                     # (give the run's own flags again)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, NoReturn

from jsoftmax.train.config import Config, ConfigError, get_config

__all__ = ["add_train_command", "parse_config", "run"]

_HELP = "train an MLP on handwritten digits with jsoftmax.cross_entropy"
_DESCRIPTION = "Train an MLP on handwritten digits (jsoftmax.train.train_and_evaluate)."


def _int_tuple(text: str) -> tuple[int, ...]:
    """``"256,128"`` -> ``(256, 128)``; ``""`` -> ``()``."""
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 256,256; got {text!r}"
        ) from None


def _add_config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per dataclass field; unset flags keep the dataclass default."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None -> X
            (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        kw: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,  # absent flags leave the field to get_config()
            "help": f"{f.metadata.get('help', '')} (default: {shown})",
        }
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            kw.update(type=_int_tuple, metavar="N,N,...")
        else:
            kw["type"] = kind
            kw["metavar"] = f.name.upper()
            if "choices" in f.metadata:
                kw.update(choices=f.metadata["choices"], metavar=None)
            if "const" in f.metadata:
                kw.update(nargs="?", const=f.metadata["const"])
        parser.add_argument("--" + f.name.replace("_", "-"), **kw)


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


_FIELDS = re.compile(r"\b(" + "|".join(f.name for f in dataclasses.fields(Config)) + r")\b")


def _flags_in(text: str) -> str:
    """``text`` with every Config field name written as its flag (``epochs`` -> ``--epochs``)."""
    return _FIELDS.sub(lambda m: _flag(m.group(1)), text)


def _blamed_flag(message: str) -> str:
    """A message that starts with ``Config.FIELD`` starting with its flag instead."""
    return re.sub(r"^Config\.(\w+)", lambda m: _flag(m.group(1)), message)


def _flag_value(value: Any) -> str:
    """A config value as it is typed after its flag (``(256, 256)`` -> ``256,256``)."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _one_line_value_errors(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` report a bad flag value in one line, without the usage block.

    argparse words those errors ``argument --epochs: invalid int value: 'two'``; anything else
    (an unknown flag) still gets the usage.
    """
    with_usage = parser.error

    def error(message: str) -> NoReturn:
        if message.startswith("argument "):
            parser.exit(2, f"{parser.prog}: error: {message}\n")
        with_usage(message)

    parser.error = error  # type: ignore[method-assign]


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _add_config_flags(parser, Config)
    _one_line_value_errors(parser)
    parser.set_defaults(subparser=parser)  # so errors print the train usage line
    return parser


def add_train_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand, with its flags, to ``subparsers`` (``add_subparsers()``)."""
    return _configure(subparsers.add_parser("train", help=_HELP, description=_DESCRIPTION))


def _fail(message: str, status: int = 2) -> NoReturn:
    print(f"jsoftmax train: error: {message}", file=sys.stderr)
    sys.exit(status)


def _config_error_message(e: ConfigError, given: set[str]) -> str:
    """``e`` in the user's terms: the flag they typed, ``--learning-rate must be > 0, got -0.1``.

    A check across fields names the field the user set: ``--val-fraction 0.85`` is reported on
    ``--val-fraction``, not on the default ``test_fraction`` it collides with.
    """
    field, requirement, got = e.field, e.requirement, e.got
    if field not in given:
        for other, (other_requirement, other_got) in e.instead.items():
            if other in given:
                field, requirement, got = other, other_requirement, other_got
                break
    said = ", but it is not set" if got == "None" else f", got {got}"
    return f"{_flags_in(field)} {_flags_in(requirement)}{said}{_flags_in(e.note)}"


def _config(args: argparse.Namespace) -> Config:
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "subparser")}
    try:
        return get_config(**overrides)
    except ConfigError as e:
        _fail(_config_error_message(e, set(overrides)))
    except (TypeError, ValueError) as e:
        _fail(_blamed_flag(str(e)))


def parse_config(argv: Sequence[str]) -> Config:
    """The :class:`~jsoftmax.train.Config` that ``jsoftmax train ARGV`` runs (flags only)."""
    parser = argparse.ArgumentParser(prog="jsoftmax train", description=_DESCRIPTION)
    return _config(_configure(parser).parse_args(list(argv)))


def _mismatch_message(e: Any) -> str:
    """A checkpoint written with other settings: each one, and the flags that resume it."""
    details = ", ".join(
        f"{field}: checkpoint has {saved!r}, flags say {now!r}"
        for field, saved, now in e.differences
    )
    fix = " ".join(f"{_flag(field)} {_flag_value(saved)}" for field, saved, _ in e.differences)
    from jsoftmax.train.loop import _NO_EXTENDING

    return (
        f"cannot resume from {e.path}: it was trained with other settings ({details}); "
        f"resume with the checkpoint's: {fix}{_NO_EXTENDING if e.changes_epochs else ''}"
    )


def _interrupted_message(e: Any, config: Config) -> str:
    """Ctrl-C during training: where it stopped and how to continue."""
    from jsoftmax.train.checkpoints import latest_checkpoint

    text = f"interrupted {'after' if e.checkpoint_epoch == e.epoch else 'during'} epoch "
    text += f"{e.epoch} of {e.epochs}; "
    if e.checkpoint is None:
        why = " (--output-dir '' saves none)" if not config.output_dir else ""
        return text + f"no checkpoint of this run was saved{why}"
    folder = os.path.join(config.output_dir, "checkpoints") if config.output_dir else None
    newest = latest_checkpoint(folder) if folder else None
    same = newest is not None and os.path.abspath(newest) == os.path.abspath(e.checkpoint)
    resume = "--resume" if same else f"--resume {e.checkpoint}"
    return text + (
        f"epoch {e.checkpoint_epoch} is saved in {e.checkpoint}: continue with the same flags "
        f"and {resume}"
    )


def run(args: argparse.Namespace) -> int:
    """Train as the parsed ``jsoftmax train`` flags say; print a summary; return the exit status.

    A missing package of the ``train`` extra, or a problem with the data or a checkpoint, is
    one line on stderr and exit status 1. Ctrl-C is one line saying where training stopped and
    how to continue, and exit status 130.
    """
    from jsoftmax.train.checkpoints import CheckpointError
    from jsoftmax.train.data import DataError
    from jsoftmax.train.extras import MissingExtraError
    from jsoftmax.train.loop import (
        ResumeMismatchError,
        TrainingInterrupted,
        loss_label,
        train_and_evaluate,
    )

    config = _config(args)
    try:
        metrics = train_and_evaluate(config).metrics
    except MissingExtraError as e:
        print(e, file=sys.stderr)
        return 1
    except ResumeMismatchError as e:
        print(f"jsoftmax train: error: {_mismatch_message(e)}", file=sys.stderr)
        return 1
    except (FileNotFoundError, NotADirectoryError, DataError, CheckpointError) as e:
        print(f"jsoftmax train: error: {_blamed_flag(str(e))}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"jsoftmax train: {_interrupted_message(e, config)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(
            "jsoftmax train: interrupted outside the training epochs (loading, compiling or the "
            "final evaluation)",
            file=sys.stderr,
        )
        return 130
    test, last = metrics["test"], metrics["history"][-1] if metrics["history"] else {}
    trained = len(metrics["timing"]["epoch_s"])
    print(
        f"test accuracy {test['accuracy']:.4f} and loss {test['loss']:.4f} "
        f"({loss_label(config)}); validation accuracy "
        f"{last.get('val_accuracy', float('nan')):.4f}; {len(metrics['history'])} epochs on "
        f"{metrics['devices']} device(s), {metrics['timing']['wall_s']:.1f} s"
    )
    if config.output_dir and trained:
        print(f"metrics, plot and checkpoints in {config.output_dir}")
    return 0
