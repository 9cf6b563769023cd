"""The ``jsoftmax train`` subcommand: one flag per :class:`~jsoftmax.train.Config` field.

The flags are generated from the dataclass (``hidden_sizes`` becomes ``--hidden-sizes 256,256``,
booleans get ``--plot`` / ``--no-plot``, unset flags keep the field's default); the subcommand
does nothing but build the config and call :func:`jsoftmax.train.train_and_evaluate`.
``jsoftmax/__main__.py`` adds it to the ``jsoftmax`` command with :func:`add_train_command` and
runs it with :func:`run`.

Examples::

    jsoftmax train                                   # digits, defaults, into runs/digits
    jsoftmax train --epochs 10 --optimizer sgd --learning-rate 0.05
    jsoftmax train --data mnist --data-dir ~/data/mnist --output-dir runs/mnist
    jsoftmax train --resume                          # continue from runs/digits/checkpoints
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from jsoftmax.train.config import Config, get_config

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


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _add_config_flags(parser, Config)
    parser.set_defaults(subparser=parser)  # so errors print the train usage line
    return parser


def add_train_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand, with its flags, to ``subparsers`` (``add_subparsers()``)."""
    return _configure(subparsers.add_parser("train", help=_HELP, description=_DESCRIPTION))


def _config(args: argparse.Namespace) -> Config:
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "subparser")}
    try:
        return get_config(**overrides)
    except ValueError as e:
        args.subparser.error(str(e))  # exits with status 2 and the usage line


def parse_config(argv: Sequence[str]) -> Config:
    """The :class:`~jsoftmax.train.Config` that ``jsoftmax train ARGV`` runs (flags only)."""
    parser = argparse.ArgumentParser(prog="jsoftmax train", description=_DESCRIPTION)
    return _config(_configure(parser).parse_args(list(argv)))


def run(args: argparse.Namespace) -> int:
    """Train as the parsed ``jsoftmax train`` flags say; print a summary; return the exit status.

    A missing package of the ``train`` extra, or a problem with the data or a checkpoint, is
    one line on stderr and exit status 1.
    """
    from jsoftmax.train.checkpoints import CheckpointError
    from jsoftmax.train.data import DataError
    from jsoftmax.train.extras import MissingExtraError
    from jsoftmax.train.loop import train_and_evaluate

    config = _config(args)
    try:
        metrics = train_and_evaluate(config).metrics
    except MissingExtraError as e:
        print(e, file=sys.stderr)
        return 1
    except (FileNotFoundError, DataError, CheckpointError) as e:
        print(f"jsoftmax train: error: {e}", file=sys.stderr)
        return 1
    test, last = metrics["test"], metrics["history"][-1] if metrics["history"] else {}
    print(
        f"test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f}), "
        f"validation accuracy {last.get('val_accuracy', float('nan')):.4f}, "
        f"{len(metrics['history'])} epochs on {metrics['devices']} device(s), "
        f"{metrics['timing']['wall_s']:.1f} s"
    )
    if config.output_dir:
        print(f"metrics, plot and checkpoints in {config.output_dir}")
    return 0
