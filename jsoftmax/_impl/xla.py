"""The ``"xla"`` implementation: the plain JAX bodies, where they have always lived.

A pointer, so that each implementation has one file (as tokamax lays out its ops): the
softmax-family bodies are ``_softmax_impl``, ``_log_softmax_impl`` and ``_logsumexp_impl`` with
their rules in :mod:`jsoftmax._softmax`; the cross-entropy bodies are ``_integer_forward`` and
``_probability_forward`` with their rules in :mod:`jsoftmax._loss`. ``implementation="xla"``
and ``None`` run exactly that code, so their programs are the ones jsoftmax always compiled.
"""

from jsoftmax._loss import _integer_forward as integer_forward
from jsoftmax._loss import _probability_forward as probability_forward
from jsoftmax._softmax import _log_softmax_impl as log_softmax_forward
from jsoftmax._softmax import _logsumexp_impl as logsumexp_forward
from jsoftmax._softmax import _softmax_impl as softmax_forward

__all__ = [
    "integer_forward",
    "log_softmax_forward",
    "logsumexp_forward",
    "probability_forward",
    "softmax_forward",
]
