"""The ``jsoftmax`` command: ``train``, ``check`` and ``bench``.

``jsoftmax train`` has one flag per field of :class:`jsoftmax.train.Config`, generated from the
dataclass (``hidden_sizes`` becomes ``--hidden-sizes 256,256``, booleans get ``--plot`` /
``--no-plot``), and does nothing but build the config and call
:func:`jsoftmax.train.train_and_evaluate`. ``jsoftmax check`` and ``jsoftmax bench`` hand their
arguments to :func:`jsoftmax._gradcheck.main` and :func:`jsoftmax.bench.__main__.main`.

Examples::

    jsoftmax train                                   # digits, defaults, into runs/digits
    jsoftmax train --epochs 10 --optimizer sgd --learning-rate 0.05
    jsoftmax train --data mnist --data-dir ~/data/mnist --output-dir runs/mnist
    jsoftmax train --resume                          # continue from runs/digits/checkpoints
    python -m jsoftmax check
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main", "parse_config"]

_DELEGATED = {
    "check": ("jsoftmax._gradcheck", "check_grads on every public differentiable function"),
    "bench": ("jsoftmax.bench.__main__", "benchmarks against jax.nn and optax"),
}


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


def build_parser() -> argparse.ArgumentParser:
    """The full ``jsoftmax`` argument parser (``train`` flags generated from ``Config``)."""
    from jsoftmax.train import Config

    parser = argparse.ArgumentParser(
        prog="jsoftmax", description="jsoftmax: train the digits example, check, benchmark."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train an MLP on handwritten digits with jsoftmax.cross_entropy",
        description="Train an MLP on handwritten digits (jsoftmax.train.train_and_evaluate).",
    )
    _add_config_flags(train, Config)
    train.set_defaults(subparser=train)  # so errors print the train usage line
    for name, (_, text) in _DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def _config(args: argparse.Namespace):
    from jsoftmax.train import get_config

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "subparser")}
    try:
        return get_config(**overrides)
    except ValueError as e:
        args.subparser.error(str(e))  # exits with status 2 and the usage line


def parse_config(argv: Sequence[str]):
    """The :class:`jsoftmax.train.Config` that ``jsoftmax train ARGV`` runs (flags only)."""
    return _config(build_parser().parse_args(["train", *argv]))


def _train(args: argparse.Namespace) -> int:
    from jsoftmax._checkpoint import CheckpointError
    from jsoftmax._data import DataError
    from jsoftmax.train import train_and_evaluate

    config = _config(args)
    try:
        metrics = train_and_evaluate(config)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jsoftmax`` and ``python -m jsoftmax``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        import importlib

        # imported only when asked for: these modules pull in their own dependencies
        module = importlib.import_module(_DELEGATED[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    return _train(args)


if __name__ == "__main__":
    sys.exit(main())
