"""Forward-mode-capable twins: ``jsoftmax.fwd.softmax``, ``.log_softmax``, ``.logsumexp``,
``.sparsemax``, ``.entmax15`` and ``.entmax``.

Same values and signatures as the top-level functions, with ``jax.custom_jvp`` rules instead
of ``jax.custom_vjp``, so ``jax.jvp``, ``jax.jacfwd``, ``jax.linearize`` and
forward-over-forward derivatives work too. Use the top-level functions for reverse mode (their
rules save only what the backward pass needs); use these where a forward-mode derivative is
needed (``jax.jvp``, ``jax.jacfwd``, Jacobians of a few outputs with many inputs).
"""

from jsoftmax._forward_mode import entmax as entmax
from jsoftmax._forward_mode import entmax15 as entmax15
from jsoftmax._forward_mode import log_softmax as log_softmax
from jsoftmax._forward_mode import logsumexp as logsumexp
from jsoftmax._forward_mode import softmax as softmax
from jsoftmax._forward_mode import sparsemax as sparsemax

__all__ = ["entmax", "entmax15", "log_softmax", "logsumexp", "softmax", "sparsemax"]
