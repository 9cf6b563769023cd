"""Forward-mode-capable twins: ``jsoftmax.fwd.softmax``, ``.log_softmax``, ``.logsumexp``.

Same values and signatures as the top-level functions, with ``jax.custom_jvp`` rules instead
of ``jax.custom_vjp``, so ``jax.jvp``, ``jax.jacfwd``, ``jax.linearize`` and
forward-over-forward derivatives work too. See :mod:`jsoftmax._forward_mode` for when to use which.
"""

from jsoftmax._forward_mode import log_softmax as log_softmax
from jsoftmax._forward_mode import logsumexp as logsumexp
from jsoftmax._forward_mode import softmax as softmax

__all__ = ["log_softmax", "logsumexp", "softmax"]
