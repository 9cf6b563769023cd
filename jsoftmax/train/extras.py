"""The training demo's optional packages (the ``train`` extra) and the error when one is missing.

``import jsoftmax`` and the losses need only jax, jaxlib, numpy and optax. The training demo
also uses scikit-learn (the bundled digits), tqdm (the progress bar) and matplotlib (the metrics
plot), installed with ``pip install "jsoftmax[train]"``. They are imported only inside the
functions that use them; :func:`require` imports them first and turns a missing one into a
:class:`MissingExtraError` whose one-line message says what to install.
"""

from __future__ import annotations

import importlib

__all__ = ["INSTALL", "PACKAGES", "MissingExtraError", "require"]

INSTALL = 'pip install "jsoftmax[train]"'

#: the top-level module each function imports -> the package that pip installs it from
PACKAGES = {"sklearn": "scikit-learn", "tqdm": "tqdm", "matplotlib": "matplotlib"}


class MissingExtraError(ImportError):
    """A package of the ``train`` extra is not installed; the message says what to install."""


def require(*modules: str) -> None:
    """Import each of ``modules`` (keys of :data:`PACKAGES`), or raise :class:`MissingExtraError`.

    A module counts as missing only when that module itself cannot be found; any other import
    error (say, a broken dependency of an installed package) propagates unchanged.
    """
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            missing.append(PACKAGES[module])
    if missing:
        raise MissingExtraError(
            f"jsoftmax train needs the training extra ({', '.join(missing)} not installed): "
            f"{INSTALL}"
        )
