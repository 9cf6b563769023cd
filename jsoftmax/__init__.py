"""jsoftmax: softmax, sparse normalisers and their losses for JAX, with analytic rules."""

from jsoftmax import fwd as fwd
from jsoftmax._checks import label_checks as label_checks
from jsoftmax._checks import set_label_checks as set_label_checks
from jsoftmax._dispatch import ImplementationChoice as ImplementationChoice
from jsoftmax._dispatch import record_implementations as record_implementations
from jsoftmax._dispatch import use_implementation as use_implementation
from jsoftmax._fy_loss import entmax_loss as entmax_loss
from jsoftmax._fy_loss import sparsemax_loss as sparsemax_loss
from jsoftmax._jacobian import entmax15_jacobian as entmax15_jacobian
from jsoftmax._jacobian import entmax_jacobian as entmax_jacobian
from jsoftmax._jacobian import log_softmax_jacobian as log_softmax_jacobian
from jsoftmax._jacobian import softmax_jacobian as softmax_jacobian
from jsoftmax._jacobian import sparsemax_jacobian as sparsemax_jacobian
from jsoftmax._linear_xent import LinearCrossEntropyAux as LinearCrossEntropyAux
from jsoftmax._linear_xent import linear_cross_entropy as linear_cross_entropy
from jsoftmax._loss import cross_entropy as cross_entropy
from jsoftmax._loss import nll_loss as nll_loss
from jsoftmax._loss import softmax_cross_entropy as softmax_cross_entropy
from jsoftmax._loss import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)
from jsoftmax._sharded import vocab_parallel_cross_entropy as vocab_parallel_cross_entropy
from jsoftmax._sharded import (
    vocab_parallel_linear_cross_entropy as vocab_parallel_linear_cross_entropy,
)
from jsoftmax._softmax import log_softmax as log_softmax
from jsoftmax._softmax import logsumexp as logsumexp
from jsoftmax._softmax import softmax as softmax
from jsoftmax._sparse import entmax as entmax
from jsoftmax._sparse import entmax15 as entmax15
from jsoftmax._sparse import sparsemax as sparsemax

__version__ = "0.1.0"

__all__ = [
    "ImplementationChoice",
    "LinearCrossEntropyAux",
    "__version__",
    "cross_entropy",
    "entmax",
    "entmax15",
    "entmax15_jacobian",
    "entmax_jacobian",
    "entmax_loss",
    "fwd",
    "label_checks",
    "linear_cross_entropy",
    "log_softmax",
    "log_softmax_jacobian",
    "logsumexp",
    "nll_loss",
    "record_implementations",
    "set_label_checks",
    "softmax",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "softmax_jacobian",
    "sparsemax",
    "sparsemax_jacobian",
    "sparsemax_loss",
    "use_implementation",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]
