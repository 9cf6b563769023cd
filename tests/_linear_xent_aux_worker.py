"""Vocabulary-sharded check of linear_cross_entropy's token_weights and return_aux.

Run by tests/test_linear_xent_aux.py as a script in a subprocess with 4 faked CPU devices (the
flag must be set before JAX starts); importing it does nothing. It calls the chunked kernel per
shard under ``jax.shard_map`` with ``axis_name`` set, as the vocabulary-parallel losses do, and
checks the loss, ``lse``, the accuracy (whose argmax is combined across shards: ties between
classes on different shards go to the smallest global index) and the gradients against the
materialised logits in float64, for both gradient paths and both layouts of ``w``.
"""


def main():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType
    from jax.sharding import PartitionSpec as P

    from jsoftmax._linear_xent import chunked_xent, prepare_linear_inputs

    jax.config.update("jax_enable_x64", True)
    N, D, V = 12, 5, 16
    kx, kw = jax.random.split(jax.random.key(0))
    # dyadic features: the tied logits are exact in any summation order
    x = jnp.round(8 * jnp.abs(jax.random.normal(kx, (N, D)))) / 8
    w = jax.random.normal(kw, (D, V))
    col = 10.0 * jnp.ones((D,))
    w = w.at[:, 6].set(col).at[:, 9].set(col).at[:, 13].set(col)  # tied classes on shards 1, 2, 3
    y = jnp.array([6, 9, 13, 6, 0, 1, 2, 6, 9, 6, 13, 3])
    tw = jnp.linspace(0.5, 1.5, N)
    mesh = jax.make_mesh((4,), ("vocab",), (AxisType.Auto,), devices=jax.devices()[:4])
    for gif in (None, False):
        for layout in ("dv", "vd"):
            ww = w if layout == "dv" else w.T
            xx, wl, _, yy, opts = prepare_linear_inputs(
                x,
                ww,
                y,
                bias=None,
                chunk_size=(5, 3),
                ignore_index=None,
                label_smoothing=0.0,
                z_loss=0.01,
                softcap=None,
                reduction="sum",
                gradients_in_forward=gif,
                fn="t",
                num_shards=4,
                axis_name="vocab",
                return_aux=True,
                w_layout=layout,
            )

            def kern(x, w, y, tw, opts=opts):
                return chunked_xent(x, w, None, y, opts, (N,), token_weights=tw)

            wspec = P(None, "vocab") if layout == "dv" else P("vocab", None)
            f = jax.shard_map(kern, mesh=mesh, in_specs=(P(), wspec, P(), P()), out_specs=P())
            (loss, aux), g = jax.value_and_grad(
                lambda x, w, f=f, yy=yy: f(x, w, yy, tw), (0, 1), has_aux=True
            )(xx, wl)
            z = x @ w
            lse = jax.nn.logsumexp(z, -1)
            ref = jnp.sum(tw * (lse - z[jnp.arange(N), y] + 0.01 * lse**2))
            acc = jnp.sum(tw * (jnp.argmax(z, -1) == y))
            gr = jax.grad(
                lambda x, w: jnp.sum(
                    tw
                    * (
                        jax.nn.logsumexp(x @ w, -1)
                        - (x @ w)[jnp.arange(N), y]
                        + 0.01 * jax.nn.logsumexp(x @ w, -1) ** 2
                    )
                ),
                (0, 1),
            )(x, w)
            np.testing.assert_allclose(loss, ref, rtol=1e-12)
            np.testing.assert_allclose(aux.lse, lse, rtol=1e-12)
            np.testing.assert_allclose(aux.accuracy, acc, rtol=1e-12)
            assert float(acc) == float(jnp.sum(tw * (y == 6)))
            np.testing.assert_allclose(g[0], gr[0], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(
                g[1], gr[1] if layout == "dv" else gr[1].T, rtol=1e-10, atol=1e-12
            )
            print("ok", gif, layout, float(aux.accuracy))


if __name__ == "__main__":
    import os

    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    main()
