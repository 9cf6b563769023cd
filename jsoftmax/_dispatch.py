"""The implementation switch: which backend a call runs on, checked at trace time.

Each public function that has a kernel takes a keyword-only ``implementation``:

* ``"xla"``: the plain JAX code (``jsoftmax/_impl/xla.py`` points at it), on every backend;
* ``"mosaic_gpu"``: the Pallas Mosaic GPU kernels (``jsoftmax/_impl/mosaic_gpu.py``), on a
  Hopper GPU or, for tests, in GPU interpret mode on CPU. A call they cannot serve raises one
  ``ValueError`` that says why (no CUDA GPU and no interpret mode, a JAX without Mosaic GPU,
  or an input or option the kernels do not cover);
* ``None`` (default): the default of the enclosing :func:`use_implementation`, else ``"xla"``.
  No GPU has measured the kernels yet, so ``None`` does not pick them by itself.

:func:`use_implementation` makes ``"mosaic_gpu"`` the default inside a ``with`` block: calls
the kernels cannot serve fall back to ``"xla"`` (and say why in :func:`record_implementations`),
or raise with ``strict=True``. The choice is made when a function is traced, so a jitted
function traced outside the block keeps its choice inside it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

__all__ = [
    "IMPLEMENTATIONS",
    "ImplementationChoice",
    "check_implementation",
    "choose",
    "record_implementations",
    "use_implementation",
]

IMPLEMENTATIONS = ("xla", "mosaic_gpu")


class ImplementationChoice(NamedTuple):
    """What one traced call ran on, and why it did not run on the requested kernel."""

    function: str  # the public function, e.g. "softmax"
    implementation: str  # "xla" or "mosaic_gpu"
    requested: str | None  # the argument (None: the default)
    reason: str | None  # why the kernels did not serve it (None if they did or were not asked)


class _State(threading.local):
    def __init__(self):
        self.default: str | None = None
        self.strict = False
        self.records: list[list[ImplementationChoice]] = []


_state = _State()


def check_implementation(implementation, fn: str) -> str | None:
    """Validate the ``implementation`` argument (trace time, with the value in the message)."""
    if implementation is None:
        return None
    if not isinstance(implementation, str):
        raise TypeError(
            f"{fn}: implementation must be None or one of {IMPLEMENTATIONS}; got "
            f"{implementation!r} of type {type(implementation).__name__}"
        )
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"{fn}: implementation must be None or one of {IMPLEMENTATIONS}; got {implementation!r}"
        )
    return implementation


@contextlib.contextmanager
def use_implementation(implementation: str, *, strict: bool = False) -> Iterator[None]:
    """Make ``implementation`` the default of ``implementation=None`` calls traced inside.

    Args:
      implementation: ``"xla"`` or ``"mosaic_gpu"``.
      strict: with ``"mosaic_gpu"``, a call the kernels cannot serve raises ``ValueError``
        instead of falling back to ``"xla"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jsoftmax
      >>> from jsoftmax._dispatch import record_implementations, use_implementation
      >>> with use_implementation("mosaic_gpu"), record_implementations() as calls:
      ...     y = jsoftmax.softmax(jnp.zeros((2, 3)))
      >>> print(calls[0].implementation)
      xla
    """
    implementation = check_implementation(implementation, "use_implementation")
    if not isinstance(strict, bool):
        raise TypeError(f"use_implementation: strict must be a bool; got {strict!r}")
    saved = _state.default, _state.strict
    _state.default, _state.strict = implementation, strict
    try:
        yield
    finally:
        _state.default, _state.strict = saved


@contextlib.contextmanager
def record_implementations() -> Iterator[list[ImplementationChoice]]:
    """Collect an :class:`ImplementationChoice` for every call traced inside the block.

    A jitted function already traced (and cached) is not traced again, so it records nothing;
    wrap a fresh trace, e.g. ``jax.eval_shape(f, x)``, to see what a call would run on.
    """
    records: list[ImplementationChoice] = []
    _state.records.append(records)
    try:
        yield records
    finally:
        _state.records.remove(records)


def choose(fn: str, implementation: str | None, kernel_problem: Callable[[], str | None]) -> str:
    """The implementation a call runs on; ``kernel_problem()`` says why the kernels cannot.

    An explicit ``"mosaic_gpu"`` (or a strict default) that the kernels cannot serve raises
    ``ValueError``; a non-strict default falls back to ``"xla"``.
    """
    requested = check_implementation(implementation, fn)
    wanted = requested if requested is not None else (_state.default or "xla")
    reason = None
    chosen = wanted
    if wanted == "mosaic_gpu":
        reason = kernel_problem()
        if reason is not None:
            if requested is not None or _state.strict:
                how = "requested" if requested is not None else "required by strict mode"
                raise ValueError(f"{fn}: implementation='mosaic_gpu' ({how}) cannot run: {reason}")
            chosen = "xla"
    for records in _state.records:
        records.append(ImplementationChoice(fn, chosen, requested, reason))
    return chosen
