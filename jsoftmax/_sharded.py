"""Vocabulary-parallel cross-entropy on JAX SPMD (``jax.sharding`` meshes and ``jax.shard_map``).

When the class axis is split over the devices of a mesh axis (Megatron-style tensor
parallelism of a language-model head), no device ever holds a whole row of logits. Each device
reduces its own shard to per-token statistics and the statistics are combined with collectives
over that mesh axis:

* the row maximum with ``lax.pmax`` (as a constant shift, so it carries no gradient);
* the sum of ``exp(z − max)`` with ``lax.psum``, giving the logsumexp on every device;
* the target logit with a ``lax.psum`` of each shard's contribution (the shard that holds the
  label's class contributes its logit, the others 0), and likewise the sum of the logits that
  label smoothing needs.

Only ``[tokens]``-sized vectors cross the mesh, never logits. The same code runs on one host
or many: after ``jax.distributed.initialize()`` on every process, ``jax.devices()`` lists the
devices of all hosts, a ``Mesh`` built from them spans the cluster, and the functions here are
called unchanged on global arrays (e.g. made with ``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jsoftmax._checks import (
    as_float_array,
    check_integer_labels,
    check_labels_in_range,
    check_xent_options,
    compute_dtype,
)
from jsoftmax._linear_xent import ChunkedXentOptions, chunked_xent, prepare_linear_inputs
from jsoftmax._xent_engine import reduce_token_losses, uniform_weight_terms

__all__ = ["vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy"]


def _check_mesh(mesh, axis_name, v: int, what: str, fn: str) -> int:
    """Validate the mesh and axis; return the number of shards, which must divide ``v``."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{fn}: mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}")
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"{fn}: axis_name={axis_name!r} is not an axis of the mesh; its axes are "
            f"{tuple(mesh.axis_names)}"
        )
    k = int(mesh.shape[axis_name])
    if v % k:
        raise ValueError(
            f"{fn}: the vocabulary V={v} of {what} must divide evenly over mesh axis "
            f"{axis_name!r} of size {k}; got V % {k} = {v % k} (pad the vocabulary to a multiple "
            f"of {k} and give the padding a large negative bias, or choose another mesh)"
        )
    return k


def _placed(mesh: Mesh, specs, *arrays):
    """Put ``arrays`` in the layouts ``shard_map`` is given.

    On a mesh with ``Explicit`` axes (the default of ``jax.make_mesh``) an array's sharding is
    part of its type and ``shard_map`` only accepts matching inputs, so they are resharded
    first; on ``Auto`` axes ``shard_map`` reshards by itself.
    """
    if not any(t == AxisType.Explicit for t in mesh.axis_types):
        return arrays
    return tuple(jax.reshard(a, NamedSharding(mesh, s)) for a, s in zip(arrays, specs, strict=True))


def _auto_twin(mesh: Mesh) -> Mesh:
    """``mesh``'s devices and axis names with every axis ``Auto``."""
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _run_sharded(kernel, opts: ChunkedXentOptions, mesh: Mesh, specs, *arrays) -> jax.Array:
    """``kernel(opts, *shards)`` on every device of ``mesh``; its result, replicated.

    On an ``Explicit`` mesh used outside ``jax.set_mesh`` the result would carry the mesh in its
    type, and JAX cannot seed an eager ``jax.grad`` of such a value ("Length of device
    assignment 1 is not equal to the size of the mesh"). There the work goes through
    :func:`_run_detached`, whose result is an ordinary replicated array. Everywhere else
    (``Auto`` meshes, ``jax.set_mesh``) the ``shard_map`` runs over ``mesh`` as it is.
    """
    explicit = any(t == AxisType.Explicit for t in mesh.axis_types)
    if not explicit or not jax.sharding.get_abstract_mesh().empty:
        mapped = jax.shard_map(partial(kernel, opts), mesh=mesh, in_specs=specs, out_specs=P())
        return mapped(*_placed(mesh, specs, *arrays))
    typed = any(not jax.typeof(a).sharding.mesh.empty for a in arrays)
    if typed:
        # Inputs typed on the mesh are resharded to the specs here, outside the jit below:
        # inside it, an unsharded input would keep the result on the Explicit type.
        arrays = _placed(mesh, specs, *arrays)
    return _run_detached(kernel, opts, mesh, specs, typed, *arrays)


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _run_detached(kernel, opts: ChunkedXentOptions, mesh: Mesh, specs, typed: bool, *arrays):
    """:func:`_run_sharded` on an ``Explicit`` mesh outside ``jax.set_mesh``, under ``jit``.

    Inputs with no mesh in their type go to a ``shard_map`` over the ``Auto`` twin of ``mesh``
    (same devices and axis names), which places them itself; inputs typed on ``mesh``
    (``typed``, already resharded to ``specs``) go to one over ``mesh``, and the replicated
    result is then moved to the twin. Either way the result is an ordinary replicated array, so
    ``grad``, ``value_and_grad`` and ``hessian`` work outside ``jit``, and the gradients come
    back in the inputs' own shardings. The ``jit`` is needed for ``hessian``: eagerly, JAX's
    forward-over-reverse of the placement asks an abstract mesh for its devices and fails.
    """
    auto = _auto_twin(mesh)
    mapped = jax.shard_map(
        partial(kernel, opts), mesh=mesh if typed else auto, in_specs=specs, out_specs=P()
    )
    out = mapped(*arrays)
    return jax.device_put(out, NamedSharding(auto, P())) if typed else out


def _vocab_parallel_xent_kernel(opts: ChunkedXentOptions, z, y):
    """Per-shard body of :func:`vocab_parallel_cross_entropy`: ``z [N, V / k]``, ``y [N]``."""
    axis_name, eps = opts.axis_name, opts.xent.label_smoothing
    cdt = compute_dtype(z.dtype)
    z = z.astype(cdt)
    v_loc = z.shape[1]
    # the global row max, a constant shift (no gradient): exp(z − m) cannot overflow
    m = lax.pmax(lax.stop_gradient(jnp.max(z, axis=1)), axis_name)
    s = lax.psum(jnp.sum(jnp.exp(z - m[:, None]), axis=1), axis_name)
    # the target logit from the one shard that holds the label's class (0 from the others)
    yl = y - lax.axis_index(axis_name) * v_loc
    mine = (yl >= 0) & (yl < v_loc)
    z_t = jnp.take_along_axis(z, jnp.clip(yl, 0, v_loc - 1)[:, None], axis=1)[:, 0]
    zy = lax.psum(jnp.where(mine, z_t, 0), axis_name)
    # Σ_c (z_c − m): relative to the shift, so the smoothing term has no cancellation
    zs = lax.psum(jnp.sum(z - m[:, None], axis=1), axis_name) if eps > 0 else None
    # the engine's per-token loss (autodiff through the collectives gives its gradient)
    terms = uniform_weight_terms(
        m,
        jnp.log(s),
        zy,
        zs,
        y,
        num_classes=opts.num_classes,
        ignore_index=opts.ignore_index,
        options=opts.xent,
    )
    return reduce_token_losses(terms.loss, terms.omega, opts.reduction)[0]


def _vocab_parallel_linear_xent_kernel(opts: ChunkedXentOptions, x, w, *bias_and_labels):
    """Per-shard body of :func:`vocab_parallel_linear_cross_entropy`: ``(b,) y`` last."""
    *bias, y = bias_and_labels
    return chunked_xent(x, w, bias[0] if bias else None, y, opts, (x.shape[0],))


def vocab_parallel_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    axis_name: str,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
) -> jax.Array:
    r"""Cross-entropy of logits whose class axis is sharded over a mesh axis.

    Computes :func:`jsoftmax.cross_entropy` (integer labels, no class weights) with each device
    of mesh axis ``axis_name`` holding ``V / k`` of the ``V`` classes. With
    :math:`m_n = \max_c z_{nc}` (from ``lax.pmax`` of the per-shard maxima):

    .. math::
        \mathrm{lse}_n = m_n + \log \textstyle\sum_{\text{shards}} \sum_{c \in \text{shard}}
        e^{z_{nc} - m_n}, \qquad
        \ell_n = \mathrm{lse}_n - (1-\varepsilon)\, z_{n y_n} - \tfrac{\varepsilon}{V}
        \sum_c z_{nc} + \lambda\, \mathrm{lse}_n^2

    where the double sum and :math:`z_{n y_n}` are ``lax.psum``\ s over the shards. Ignored
    tokens give 0 and ``"mean"`` divides by the number of tokens not ignored (0 if none). The
    gradient, by reverse-mode autodiff through the collectives, is
    :math:`\partial \ell_n / \partial z_{nc} = p_{nc}(1 + 2\lambda\,\mathrm{lse}_n)
    - (1-\varepsilon)[c = y_n] - \varepsilon/V` on each shard, with no communication beyond the
    forward pass's.

    Multi-host: call ``jax.distributed.initialize()`` on every process first; build ``mesh``
    from ``jax.devices()`` (all hosts' devices) exactly as on one host, and pass global arrays.

    Args:
      logits: ``[..., V]`` scores, floating point; sharded (or to be sharded) as
        ``PartitionSpec(..., axis_name)`` over ``mesh``. Other placements are resharded.
      labels: integer class indices ``[...]`` (``logits``' shape without ``V``), replicated.
      mesh: the ``jax.sharding.Mesh``; other mesh axes replicate the computation.
      axis_name: the mesh axis the classes are split over; its size must divide ``V``.
      ignore_index: a label value whose tokens contribute 0 and are left out of the mean.
      label_smoothing: :math:`\varepsilon \in [0, 1]`.
      z_loss: :math:`\lambda \ge 0`.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
      A scalar, or for ``"none"`` the per-token losses of ``labels``' shape, replicated over
      the mesh; float32 for half-precision and float32 logits, float64 for float64.

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> import jsoftmax
      >>> mesh = jax.make_mesh((1,), ("vocab",))  # one device here; any size that divides V
      >>> logits = jnp.array([[2.0, 0.5, -1.0, 0.0], [0.0, 1.0, 3.0, -2.0]])
      >>> loss = jsoftmax.vocab_parallel_cross_entropy(
      ...     logits, jnp.array([0, 1]), mesh=mesh, axis_name="vocab")
      >>> print(loss.round(4))
      1.2589

    Notes:
      * A ``+inf`` or ``NaN`` logit makes its token's loss ``NaN``; ``-inf`` logits have
        probability 0 (but a ``-inf`` target logit gives ``+inf``).
      * Out-of-range labels raise ``ValueError`` when concrete and give ``NaN`` under ``jit``.
      * ``grad``, ``value_and_grad`` and ``hessian`` work eagerly and under ``jit``, on
        ``Explicit`` meshes (the default of ``jax.make_mesh``) and ``Auto`` ones, inside
        ``jax.set_mesh`` or not; the gradient has the logits' sharding. The collectives need
        the devices of ``mesh``. Outside ``jax.set_mesh`` on an ``Explicit`` mesh the result
        is an ordinary replicated array (JAX cannot seed ``grad`` of a value typed on a mesh
        there), computed inside a ``jit`` of its own.

    See also:
      :func:`vocab_parallel_linear_cross_entropy`, :func:`jsoftmax.cross_entropy`.
    """
    fn = "vocab_parallel_cross_entropy"
    logits = as_float_array(logits, "logits", fn)
    if logits.ndim < 1:
        raise ValueError(f"{fn}: logits must have shape [..., V]; got a scalar")
    v = logits.shape[-1]
    if v == 0:
        raise ValueError(f"{fn}: logits must have at least one class; got shape {logits.shape}")
    labels = check_integer_labels(labels, logits.shape[:-1], f"logits {logits.shape}", fn)
    ignore_index, xent, _, reduction = check_xent_options(
        fn=fn,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=None,
        reduction=reduction,
    )
    k = _check_mesh(mesh, axis_name, v, f"logits {logits.shape}", fn)
    check_labels_in_range(labels, v, ignore_index, fn)
    token_shape = labels.shape
    n = math.prod(token_shape)
    opts = ChunkedXentOptions(max(n, 1), v // k, v, ignore_index, xent, None, reduction, axis_name)

    specs = (P(None, axis_name), P())
    arrays = (logits.reshape(n, v), labels.reshape(n))
    out = _run_sharded(_vocab_parallel_xent_kernel, opts, mesh, specs, *arrays)
    return out.reshape(token_shape) if reduction == "none" else out


def vocab_parallel_linear_cross_entropy(
    x: ArrayLike,
    w: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    axis_name: str,
    bias: ArrayLike | None = None,
    chunk_size: int | tuple[int | None, int | None] | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
    gradients_in_forward: bool | None = None,
) -> jax.Array:
    r"""Chunked linear cross-entropy with ``w`` (and ``bias``) sharded over the vocabulary.

    Computes :func:`jsoftmax.linear_cross_entropy` — the cross-entropy of
    :math:`z = \mathrm{softcap}(x w + b)` — with each device of mesh axis ``axis_name``
    holding the columns ``w[:, shard]`` (and ``bias[shard]``) of its ``V / k`` classes. Each
    device runs the chunked kernel over its own classes to per-token statistics (running max,
    rescaled sum of exponentials, target logit, logit sum), which are combined as

    .. math::
        m_n = \mathrm{pmax}(m^{(s)}_n), \quad
        \mathrm{lse}_n = m_n + \log \mathrm{psum}\big(S^{(s)}_n e^{m^{(s)}_n - m_n}\big), \quad
        z_{n y_n} = \mathrm{psum}(z^{(s)}_{n y_n})

    and give the loss of :func:`jsoftmax.linear_cross_entropy`. The ``custom_vjp`` backward
    pass recomputes each shard's logit blocks from the global logsumexp, keeps ``dw``/``dbias``
    on their shards and sums ``dx`` over the mesh axis (one ``psum`` of ``[N, D]``).

    Multi-host: call ``jax.distributed.initialize()`` on every process first; build ``mesh``
    from ``jax.devices()`` (all hosts' devices) exactly as on one host, and pass global arrays.

    Args:
      x: token features ``[..., D]``, replicated over ``axis_name``.
      w: ``[D, V]`` sharded (or to be sharded) as ``PartitionSpec(None, axis_name)``.
      labels: integer class indices of ``x``'s leading shape ``[...]``, replicated.
      mesh: the ``jax.sharding.Mesh``; other mesh axes replicate the computation.
      axis_name: the mesh axis the vocabulary is split over; its size must divide ``V``.
      bias: optional ``[V]`` bias, sharded as ``PartitionSpec(axis_name)``.
      chunk_size: as in :func:`jsoftmax.linear_cross_entropy`, applied to each shard's
        ``[D, V / k]`` (automatic: vocabulary chunks of ``min(V / k, 2048)``).
      ignore_index, label_smoothing, z_loss, softcap, reduction, gradients_in_forward: as in
        :func:`jsoftmax.linear_cross_entropy`. With gradients in the forward pass (the default
        for ``"mean"`` and ``"sum"``), each shard forms its ``[tn, V / k]`` block of logits
        once per token block; the per-token statistics are combined with ``pmax``/``psum``
        before ``softmax − target`` is formed, and ``dw``/``dbias`` stay on their shards.
        ``gradients_in_forward=False`` keeps the recompute path (the forward rule then holds
        no ``[D, V / k]`` gradient buffer beside ``w``'s own).

    Returns:
      A scalar, or for ``"none"`` the per-token losses of ``labels``' shape, replicated; the
      dtype of :func:`jsoftmax.linear_cross_entropy`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jsoftmax
      >>> mesh = jax.make_mesh((1,), ("vocab",))  # one device here; any size that divides V
      >>> x = jnp.ones((3, 2))
      >>> w = jnp.arange(8.0).reshape(2, 4) / 8
      >>> labels = jnp.array([0, 1, 3])
      >>> loss = jsoftmax.vocab_parallel_linear_cross_entropy(
      ...     x, w, labels, mesh=mesh, axis_name="vocab")
      >>> print(jnp.allclose(loss, jsoftmax.linear_cross_entropy(x, w, labels)))
      True

    Notes:
      * As :func:`jsoftmax.linear_cross_entropy`: non-finite inputs give ``NaN`` for the
        affected tokens; out-of-range labels raise when concrete and give ``NaN`` under ``jit``;
        reverse mode to any order works, forward mode applied directly does not.
      * ``grad``, ``value_and_grad`` and ``hessian`` work eagerly and under ``jit``, on
        ``Explicit`` and ``Auto`` meshes, inside ``jax.set_mesh`` or not (as
        :func:`vocab_parallel_cross_entropy`); ``dw`` and ``dbias`` keep their shardings.

    See also:
      :func:`vocab_parallel_cross_entropy`, :func:`jsoftmax.linear_cross_entropy`.
    """
    fn = "vocab_parallel_linear_cross_entropy"
    w_shape = np.shape(w)
    v = w_shape[1] if len(w_shape) == 2 else None
    token_shape = np.shape(x)[:-1]
    k = 1
    if isinstance(mesh, Mesh) and axis_name in mesh.axis_names and v:
        k = int(mesh.shape[axis_name])
    x, w, bias, labels, opts = prepare_linear_inputs(
        x,
        w,
        labels,
        bias=bias,
        chunk_size=chunk_size,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        reduction=reduction,
        gradients_in_forward=gradients_in_forward,
        fn=fn,
        num_shards=k,
        axis_name=axis_name,
    )
    _check_mesh(mesh, axis_name, w.shape[1], f"w {w.shape}", fn)
    check_labels_in_range(labels, opts.num_classes, opts.ignore_index, fn)
    if x.shape[0] == 0:  # nothing to shard: the local rule handles empty inputs
        return chunked_xent(x, w, bias, labels, opts._replace(axis_name=None), token_shape)
    if bias is None:
        specs, arrays = (P(), P(None, axis_name), P()), (x, w, labels)
    else:
        specs, arrays = (P(), P(None, axis_name), P(axis_name), P()), (x, w, bias, labels)
    out = _run_sharded(_vocab_parallel_linear_xent_kernel, opts, mesh, specs, *arrays)
    return out.reshape(token_shape) if reduction == "none" else out
