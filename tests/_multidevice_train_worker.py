"""Subprocess worker for tests/test_train.py: the same small run on 1 and on 8 CPU devices.

Usage: ``python tests/_multidevice_train_worker.py OUT_DIR``. The parent sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (it must be set before JAX starts, hence
the subprocess). The worker trains once on a one-device mesh and once on all eight devices,
writing the final checkpoints to OUT_DIR/d1 and OUT_DIR/d8, and prints one JSON line: both runs'
metrics and what it saw of the sharding.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from functools import partial


def main(out_dir: str) -> None:
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from jsoftmax import train
    from jsoftmax.train.sharding import padded_size, to_device

    assert jax.device_count() == 8, jax.devices()
    # batch 60 and eval batch 100 do not divide by 8: the 8-device run pads them to 64 and 104
    config = train.get_config(
        hidden_sizes=(16,),
        epochs=2,
        batch_size=60,
        eval_batch_size=100,
        keep_checkpoints=1,
        plot=False,
        quiet=True,
    )

    # How one step is laid out: the batch split over the "data" axis, the state replicated.
    mesh = train.make_mesh()
    tx = train.make_optimizer(config, steps_per_epoch=1)
    init = jax.jit(
        partial(train.init_train_state, sizes=(64, 16, 10), tx=tx),
        out_shardings=NamedSharding(mesh, PartitionSpec()),
    )
    state = init(jax.random.key(0))
    size = padded_size(config.batch_size, mesh.size)
    host = {
        "x": np.ones((size, 64), np.float32),
        "y": np.zeros((size,), np.int32),
        "mask": np.arange(size) < config.batch_size,
    }
    batch = to_device(host, NamedSharding(mesh, PartitionSpec("data")))
    state, metrics = train.train_step(state, batch, tx=tx)
    layout = {
        "batch_rows_per_shard": sorted({s.data.shape[0] for s in batch["x"].addressable_shards}),
        "batch_shards": len(batch["x"].addressable_shards),
        "state_replicated": all(a.sharding.is_fully_replicated for a in jax.tree.leaves(state)),
        "count": int(metrics["count"]),
    }

    runs = {}
    for name, devices in (("d1", jax.devices()[:1]), ("d8", jax.devices())):
        cfg = dataclasses.replace(config, output_dir=os.path.join(out_dir, name))
        metrics = train.train_and_evaluate(cfg, devices=devices).metrics
        metrics.pop("timing")
        runs[name] = metrics
    print(json.dumps({"runs": runs, "layout": layout}))


if __name__ == "__main__":
    main(sys.argv[1])
