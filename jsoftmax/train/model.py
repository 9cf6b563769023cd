"""The model: a multilayer perceptron as a list of ``{"w", "b"}`` dense layers.

* :func:`init_mlp`: He-initialised weights (``jax.nn.initializers.variance_scaling``), zero
  biases.
* :func:`mlp_apply`: the logits, with ReLU or GELU between the layers.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = ["ACTIVATIONS", "Params", "he_init", "init_mlp", "mlp_apply"]

Params = list[dict[str, jax.Array]]

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu}

# He initialisation: a normal truncated at two of its standard deviations, rescaled to variance
# 2 / fan_in (fan_in: the weight matrix's first axis, the layer's inputs).
he_init = jax.nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> Params:
    r"""Initial parameters of a dense network with layer widths ``sizes`` (inputs first).

    Weights are drawn from a truncated normal with variance :math:`2 / \text{fan\_in}` (He
    initialisation, suited to ReLU and GELU: :data:`he_init`), one key per layer split from
    ``key``; biases start at zero.

    Args:
      key: a PRNG key (``jax.random.key``).
      sizes: ``[inputs, hidden..., outputs]``, at least two entries.

    Returns:
      A list with one ``{"w": [fan_in, fan_out], "b": [fan_out]}`` dict per layer, float32.

    Examples:
      >>> import jax
      >>> from jsoftmax.train import init_mlp
      >>> params = init_mlp(jax.random.key(0), [64, 32, 10])
      >>> [(p["w"].shape, p["b"].shape) for p in params]
      [((64, 32), (32,)), ((32, 10), (10,))]
    """
    sizes = tuple(sizes)
    if len(sizes) < 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes):
        raise ValueError(f"init_mlp: sizes must hold >= 2 positive ints; got {sizes!r}")
    shapes = list(itertools.pairwise(sizes))
    keys = jax.random.split(key, len(shapes))
    return [
        {"w": he_init(k, (m, n), jnp.float32), "b": jnp.zeros((n,), jnp.float32)}
        for k, (m, n) in zip(keys, shapes, strict=True)
    ]


def mlp_apply(params: Params, x: ArrayLike, *, activation: str = "gelu") -> jax.Array:
    """Logits of the network ``params`` for the inputs ``x``.

    Args:
      params: from :func:`init_mlp`.
      x: inputs ``[batch, features]``.
      activation: ``"gelu"`` or ``"relu"``, applied after every layer but the last.

    Returns:
      Logits ``[batch, outputs]``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"mlp_apply: activation must be one of {tuple(ACTIVATIONS)}; got {activation!r}"
        )
    act = ACTIVATIONS[activation]
    h = jnp.asarray(x)
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"][None, :]
        if i < len(params) - 1:
            h = act(h)
    return h
