"""jsoftmax: softmax, log-softmax and cross-entropy for JAX with analytic custom_vjp rules."""

from jsoftmax import fwd as fwd
from jsoftmax._checks import label_checks as label_checks
from jsoftmax._checks import set_label_checks as set_label_checks
from jsoftmax._jacobian import log_softmax_jacobian as log_softmax_jacobian
from jsoftmax._jacobian import softmax_jacobian as softmax_jacobian
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

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "cross_entropy",
    "fwd",
    "label_checks",
    "linear_cross_entropy",
    "log_softmax",
    "log_softmax_jacobian",
    "logsumexp",
    "nll_loss",
    "set_label_checks",
    "softmax",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "softmax_jacobian",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]
