"""Benchmark suite: the data x vocabulary-parallel loss on a (2, 4) mesh, per device.

On a ``("data", "model")`` mesh of 2 x 4 devices, with ``x [N, D]`` and the labels sharded
over ``"data"`` and ``w [D, V]`` over ``"model"``, ``value_and_grad`` of
:func:`jsoftmax.vocab_parallel_linear_cross_entropy` (each device forms logits only for its
own ``N / 2`` tokens over its own ``V / 4`` classes) is compared with:

* ``xla_plain``: XLA's SPMD partitioner given the plain loss (``optax`` on ``x @ w``) and the
  same input shardings on an ``Auto`` mesh;
* ``xla_chunked``: the same for :func:`jsoftmax.linear_cross_entropy` (the one-device chunked
  kernel, partitioned by XLA);
* ``vocab_only``: the vocabulary-parallel loss with the tokens replicated over ``"data"``
  (``data_axis_name=()``, what the loss did before): each data replica repeats the head.

Each row gives the median time of the whole SPMD program, its per-device compiled temp memory
and the per-device FLOPs from the compiled cost analysis, next to the single-device FLOPs
(``flops_fraction`` = per-device / single-device: 1/8 means no redundant head work). On the
CPU the 8 devices are faked (``--xla_force_host_platform_device_count=8``) and share the
machine's cores, so the times say little about real devices; the memory and FLOPs do.

Run ``python -m jsoftmax.bench.sharded [--quick]``; it prints one JSON row per comparison.
With fewer than 8 devices, :func:`run` runs that command in a subprocess with 8 faked CPU
devices and collects its rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jsoftmax
from jsoftmax.bench._timing import compare, comparison_row

__all__ = ["run"]

SUITE = "sharded"
SHAPE = {"n": 2048, "d": 256, "v": 8192}
QUICK_SHAPE = {"n": 256, "d": 64, "v": 2048}
MESH_SHAPE = (2, 4)


def _flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def _measure(quick: bool) -> list[dict]:
    shape = QUICK_SHAPE if quick else SHAPE
    n, d, v = shape["n"], shape["d"], shape["v"]
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, d), jnp.float32)
    w = jax.random.normal(kw, (d, v), jnp.float32) / d**0.5
    y = jax.random.randint(ky, (n,), 0, v)
    mesh = jax.make_mesh(MESH_SHAPE, ("data", "model"), (AxisType.Auto, AxisType.Auto))

    def put(a, spec):
        return jax.device_put(a, NamedSharding(mesh, spec))

    args = (put(x, P("data")), put(w, P(None, "model")), put(y, P("data")))

    def grad_of(loss):
        return jax.value_and_grad(loss, (0, 1))

    def ours(x, w, y):
        return jsoftmax.vocab_parallel_linear_cross_entropy(x, w, y, mesh=mesh, axis_name="model")

    baselines = {
        "xla_plain": lambda x, w, y: optax.softmax_cross_entropy_with_integer_labels(
            x @ w, y
        ).mean(),
        "xla_chunked": jsoftmax.linear_cross_entropy,
        "vocab_only": lambda x, w, y: jsoftmax.vocab_parallel_linear_cross_entropy(
            x, w, y, mesh=mesh, axis_name="model", data_axis_name=()
        ),
    }
    single = _flops(grad_of(jsoftmax.linear_cross_entropy), x, w, y)
    ours_flops = _flops(grad_of(ours), *args)
    reps = 5 if quick else 10
    rows = []
    for name, base in baselines.items():
        res = compare({"jsoftmax": grad_of(ours), "baseline": grad_of(base)}, args, reps=reps)
        base_flops = _flops(grad_of(base), *args)
        rows.append(
            comparison_row(
                SUITE,
                "vocab_parallel_linear_cross_entropy value_and_grad, (2, 4) data x model mesh",
                (n, d, v),
                "float32",
                res["jsoftmax"],
                res["baseline"],
                name,
                devices=jax.device_count(),
                mesh=dict(zip(("data", "model"), MESH_SHAPE, strict=True)),
                flops_per_device=ours_flops,
                baseline_flops_per_device=base_flops,
                single_device_flops=single,
                flops_fraction=ours_flops / single,
                baseline_flops_fraction=base_flops / single,
            )
        )
    return rows


def run(quick: bool = False) -> list[dict]:
    """The suite's rows: measured here on 8 or more devices, else in an 8-device subprocess."""
    if jax.device_count() >= 8:
        return _measure(quick)
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "jsoftmax.bench.sharded", *(["--quick"] if quick else [])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv[1:]):
        print(json.dumps(row))
