"""The ``jsoftmax`` command: ``train``, ``check`` and ``bench``.

``jsoftmax train`` is the training demo's subcommand, defined in :mod:`jsoftmax.train.cli` (one
flag per field of :class:`jsoftmax.train.Config`; it needs the ``train`` extra,
``pip install "jsoftmax[train]"``). ``jsoftmax check`` and ``jsoftmax bench`` hand their
arguments to :func:`jsoftmax._gradcheck.main` and :func:`jsoftmax.bench.__main__.main`.

``jsoftmax --version`` prints the version.

Examples::

    jsoftmax train                                   # digits, defaults, into runs/digits
    jsoftmax train --epochs 10 --optimizer sgd --learning-rate 0.05
    python -m jsoftmax check
    jsoftmax bench --quick
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

_DELEGATED = {
    "check": ("jsoftmax._gradcheck", "check_grads on every public differentiable function"),
    "bench": ("jsoftmax.bench.__main__", "benchmarks against jax.nn and optax"),
}


def build_parser() -> argparse.ArgumentParser:
    """The full ``jsoftmax`` argument parser (``train`` flags generated from ``Config``)."""
    from jsoftmax import __version__
    from jsoftmax.train.cli import add_train_command

    parser = argparse.ArgumentParser(
        prog="jsoftmax", description="jsoftmax: train the digits example, check, benchmark."
    )
    parser.add_argument("--version", action="version", version=f"jsoftmax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub)
    for name, (_, text) in _DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jsoftmax`` and ``python -m jsoftmax``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        import importlib

        # imported only when asked for: these modules pull in their own dependencies
        module = importlib.import_module(_DELEGATED[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # after `train` (nothing else stands before it: the top level's own flags exit), an
        # unknown flag is train's to report, with train's usage
        before = argv[: argv.index(args.command)] if args.command in argv else argv
        (parser if before else args.subparser).error(f"unrecognized arguments: {' '.join(unknown)}")
    from jsoftmax.train.cli import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
