# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A transformer language model on a (data, model) mesh
#
# A small decoder-only transformer, written with Equinox
# modules, trained on real text: the source code of Python's own standard library, read as
# bytes (a vocabulary of 256). Attention normalises with `jsoftmax.softmax` under a causal
# mask; the language-model head and its loss are `jsoftmax.vocab_parallel_linear_cross_entropy`,
# which never forms the `[tokens, vocabulary]` logits and splits the vocabulary over the
# `"model"` axis of the mesh while the batch is split over its `"data"` axis. The embedding
# table is tied to the head and passed in its own `[V, D]` layout.
#
# The same model is trained a second time, from the same initial parameters on the same
# batches, with the plain head: `h @ table.T` and optax's cross-entropy. The two loss curves
# must agree to float32 round-off, and the compiled programs' per-device memory and work are
# printed side by side.
#
# On a CPU this notebook fakes 8 devices (`--xla_force_host_platform_device_count=8`, which
# only affects the CPU); on an accelerator host it uses the devices it finds. With
# `JSOFTMAX_NB_SMALL=1` (the test suite) the model and the run are tiny.

# %% [markdown]
# ## Setup
#
# The first code cell installs jsoftmax where it cannot be imported yet (a fresh notebook
# runtime in the cloud, say) and does nothing where it can. jsoftmax is not on PyPI, so the cell
# installs it from the project source: `..`, the checkout this notebook is in, unless you
# replace `..` with the path of your local checkout of the jsoftmax repository (the folder with
# `pyproject.toml`) or of a wheel built from one (`pip wheel --no-deps PATH`). The
# `[examples]` extra installs Equinox (the model) and matplotlib (the plot), which jsoftmax
# itself does not need.
#
# **GPU or TPU.** Nothing in this notebook names a device: JAX runs on an accelerator when it
# finds one, and the second cell prints the devices it found. For an NVIDIA GPU, install JAX's
# CUDA build (`pip install -U "jax[cuda12]"`); for a TPU, use a TPU runtime (or
# `pip install -U "jax[tpu]"` on a TPU VM). The mesh is (2, 4) on 8 or more devices, else
# (1, n).

# %%
try:
    import jsoftmax
except ImportError:  # not installed here: install it from the project source (see above)
    import importlib
    import subprocess
    import sys

    # ".." is this notebook's checkout; replace it with your checkout's or wheel's path
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "..[examples]"], check=True)
    importlib.invalidate_caches()
    import jsoftmax

# %%
import os

# 8 CPU devices, set before JAX starts its backends (an accelerator's devices are unaffected)
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

SMALL = os.environ.get("JSOFTMAX_NB_SMALL") == "1"
print(jax.devices())

# %% [markdown]
# ## Data: the standard library's source, as bytes
#
# Every `.py` file at the top of the standard library folder, in name order, concatenated;
# the first 90 % trains and the rest validates. A batch is a set of random windows of
# `seq + 1` bytes: the first `seq` are the input, the last `seq` the targets.

# %%
STDLIB = pathlib.Path(os.__file__).parent
files = sorted(STDLIB.glob("*.py"))
text = b"".join(p.read_bytes() for p in files[: 8 if SMALL else 60])
data = np.frombuffer(text, dtype=np.uint8)
split = int(0.9 * len(data))
train_data, val_data = data[:split], data[split:]
print(f"{len(files[: 8 if SMALL else 60])} files, {len(data):,} bytes of Python source")

CFG = {
    "vocab": 256,
    "dim": 32 if SMALL else 64,
    "heads": 2 if SMALL else 4,
    "layers": 1 if SMALL else 2,
    "seq": 32 if SMALL else 64,
    "batch": 8 if SMALL else 16,
    "steps": 6 if SMALL else 150,
    "lr": 3e-3,
    "context": 4,  # targets with fewer than this many bytes of context carry no loss
}


def batches(seed: int):
    """An endless stream of [batch, seq + 1] windows of the training text."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(train_data) - CFG["seq"] - 1, CFG["batch"])
        yield np.stack([train_data[s : s + CFG["seq"] + 1] for s in starts]).astype(np.int32)


# %% [markdown]
# ## The model
#
# Pre-norm blocks (RMS norm, causal self-attention, a GELU MLP), learned positions, the
# embedding table tied to the head. The modules hold parameters only; every method works on
# the whole batch `[batch, seq, dim]`, so the batch axis keeps its sharding throughout.
# Attention's softmax is `jsoftmax.softmax` with the causal mask as `where`.

# %%


def rms_norm(x, scale):
    """``x`` over its last axis divided by its root mean square, times ``scale``."""
    scale = scale.reshape((1,) * (x.ndim - 1) + scale.shape)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


class Block(eqx.Module):
    norm1: jax.Array
    qkv: jax.Array  # [dim, 3 dim]
    out: jax.Array  # [dim, dim]
    norm2: jax.Array
    up: jax.Array  # [dim, 4 dim]
    down: jax.Array  # [4 dim, dim]
    heads: int = eqx.field(static=True)

    def __init__(self, dim, heads, key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        init = jax.nn.initializers.normal(0.02)
        self.norm1, self.norm2 = jnp.ones(dim), jnp.ones(dim)
        self.qkv, self.out = init(k1, (dim, 3 * dim)), init(k2, (dim, dim))
        self.up, self.down = init(k3, (dim, 4 * dim)), init(k4, (4 * dim, dim))
        self.heads = heads

    def __call__(self, x, causal):
        b, t, d = x.shape
        q, k, v = jnp.split(rms_norm(x, self.norm1) @ self.qkv, 3, axis=-1)
        q, k, v = (a.reshape(b, t, self.heads, d // self.heads) for a in (q, k, v))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // self.heads)
        attn = jsoftmax.softmax(scores, axis=-1, where=causal)
        x = x + jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, t, d) @ self.out
        return x + jax.nn.gelu(rms_norm(x, self.norm2) @ self.up) @ self.down


class LM(eqx.Module):
    embed: jax.Array  # [vocab, dim], tied to the head
    pos: jax.Array  # [seq, dim]
    blocks: tuple
    norm: jax.Array

    def __init__(self, cfg, key):
        keys = jax.random.split(key, cfg["layers"] + 2)
        self.embed = jax.random.normal(keys[0], (cfg["vocab"], cfg["dim"])) * 0.02
        self.pos = jax.random.normal(keys[1], (cfg["seq"], cfg["dim"])) * 0.02
        self.blocks = tuple(Block(cfg["dim"], cfg["heads"], k) for k in keys[2:])
        self.norm = jnp.ones(cfg["dim"])

    def hidden(self, tokens):
        """The final hidden states [batch, seq, dim] of int tokens [batch, seq]."""
        # the embedding lookup, sharded like the tokens (on an Explicit mesh the gather is told)
        spec = jax.typeof(tokens).sharding.spec
        x = self.embed.at[tokens].get(out_sharding=P(*spec, None)) + self.pos[None]
        t = tokens.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))
        for block in self.blocks:
            x = block(x, causal)
        return rms_norm(x, self.norm)


# %% [markdown]
# ## Two losses, one model
#
# Both weight each target token the same way: 0 for the first `context` positions of each
# window (too little context to judge the model by), 0.5 for whitespace targets (the easy
# bytes of indented source), 1 elsewhere; the loss is the weighted mean. `jsoftmax_loss` hands
# the hidden states and the tied `[V, D]` table to the vocabulary-parallel loss with these
# `token_weights` and `return_aux=True`, which also returns the accuracy (argmax = target) and
# the per-token log-sum-exp from the same pass, without logits; `plain_loss` forms the logits
# and uses optax, and computes the same accuracy from them.

# %%
n_dev = len(jax.devices())
mesh = jax.make_mesh((2, n_dev // 2) if n_dev >= 8 else (1, n_dev), ("data", "model"))
print(mesh)


def token_weights(targets):
    pos = jnp.arange(targets.shape[1])[None, :]
    enough_context = jnp.broadcast_to(pos >= CFG["context"], targets.shape)
    whitespace = (targets == ord(" ")) | (targets == ord("\n"))
    return jnp.where(enough_context, jnp.where(whitespace, 0.5, 1.0), 0.0)


def split_batch(batch):
    return batch[:, :-1], batch[:, 1:]


def jsoftmax_loss(model, batch):
    tokens, targets = split_batch(batch)
    h = model.hidden(tokens)
    loss, aux = jsoftmax.vocab_parallel_linear_cross_entropy(
        h,
        model.embed,  # the tied table as it is, [V, D]: no transposed copy
        targets,
        mesh=mesh,
        axis_name="model",
        w_layout="vd",
        token_weights=token_weights(targets),
        return_aux=True,
    )
    return loss, {"accuracy": aux.accuracy, "mean_lse": jnp.mean(aux.lse)}


def plain_loss(model, batch):
    tokens, targets = split_batch(batch)
    logits = model.hidden(tokens) @ model.embed.T
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    w = token_weights(targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    mean_lse = jnp.mean(jax.nn.logsumexp(logits, axis=-1))
    return jnp.sum(per_token * w) / jnp.sum(w), {
        "accuracy": jnp.sum(correct * w) / jnp.sum(w),
        "mean_lse": mean_lse,
    }


optimizer = optax.adamw(CFG["lr"])


def make_step(loss_fn):
    @jax.jit
    def step(model, opt_state, batch):
        (loss, logs), grads = jax.value_and_grad(loss_fn, has_aux=True)(model, batch)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        return optax.apply_updates(model, updates), opt_state, loss, logs

    return step


# %% [markdown]
# ## One step, side by side
#
# From the same parameters and batch, both losses give the same value, the same logged
# accuracy and log-sum-exp, and the same gradient for every parameter, to float32 round-off.

# %%
with jax.set_mesh(mesh):
    model0 = jax.device_put(LM(CFG, jax.random.key(0)), NamedSharding(mesh, P()))
    batch = jax.device_put(next(batches(seed=1)), NamedSharding(mesh, P("data")))
    (loss_j, logs_j), grads_j = jax.jit(jax.value_and_grad(jsoftmax_loss, has_aux=True))(
        model0, batch
    )
    (loss_p, logs_p), grads_p = jax.jit(jax.value_and_grad(plain_loss, has_aux=True))(model0, batch)
print(f"loss {float(loss_j):.6f} vs {float(loss_p):.6f}")
print(f"accuracy {float(logs_j['accuracy']):.6f} vs {float(logs_p['accuracy']):.6f}")
worst = max(
    float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    for a, b in zip(
        jax.tree_util.tree_leaves(grads_j), jax.tree_util.tree_leaves(grads_p), strict=True
    )
)
print(f"largest gradient difference, relative to the parameter's largest entry: {worst:.1e}")
assert abs(float(loss_j) - float(loss_p)) < 1e-5 * float(loss_p) and worst < 1e-5, worst

# %% [markdown]
# ## Train both
#
# The parameters are replicated and each batch is split over `"data"`; inside the loss the
# vocabulary is split over `"model"`.

# %%
replicated = NamedSharding(mesh, P())
by_batch = NamedSharding(mesh, P("data"))
with jax.set_mesh(mesh):
    model0 = jax.device_put(LM(CFG, jax.random.key(0)), replicated)
    curves, steps = {}, {}
    for name, loss_fn in [("jsoftmax", jsoftmax_loss), ("plain", plain_loss)]:
        steps[name] = make_step(loss_fn)
        model, opt_state = model0, jax.device_put(optimizer.init(model0), replicated)
        stream, losses = batches(seed=1), []
        for _ in range(CFG["steps"]):
            batch = jax.device_put(next(stream), by_batch)
            model, opt_state, loss, logs = steps[name](model, opt_state, batch)
            losses.append(float(loss))
        curves[name] = np.array(losses)
        print(
            f"{name:>8}: loss {losses[0]:.4f} -> {losses[-1]:.4f} after {CFG['steps']} steps; "
            f"last batch: accuracy {float(logs['accuracy']):.3f}, "
            f"mean log-sum-exp {float(logs['mean_lse']):.3f}"
        )

# Relative differences of the two curves. Over the first steps they are the loss's own
# float32 round-off. Later steps start from parameters that differ by the round-off of every
# earlier update, which AdamW (dividing each gradient by its running RMS) enlarges for
# parameters whose gradient is near 0, and training is chaotic enough to grow it: the two runs
# drift apart by more than one step's round-off.
gap = np.abs(curves["jsoftmax"] - curves["plain"]) / curves["plain"]
print(f"loss curves' relative difference: {gap[:5].max():.1e} over the first 5 steps,")
print(f"{np.median(gap):.1e} median and {gap.max():.1e} largest over all {len(gap)}")
assert gap[:5].max() < 1e-5, gap

# %% [markdown]
# The drift is the runs', not the losses': replayed along the plain run's own trajectory (the
# same parameters and batches), the two losses agree at every checkpoint to round-off, in
# value and in every gradient.

# %%
grad_j = jax.jit(jax.value_and_grad(jsoftmax_loss, has_aux=True))
grad_p = jax.jit(jax.value_and_grad(plain_loss, has_aux=True))
with jax.set_mesh(mesh):
    model, opt_state = model0, jax.device_put(optimizer.init(model0), replicated)
    stream = batches(seed=1)
    for i in range(CFG["steps"]):
        batch = jax.device_put(next(stream), by_batch)
        if i % max(CFG["steps"] // 5, 1) == 0:
            (lj, _), gj = grad_j(model, batch)
            (lp, _), gp = grad_p(model, batch)
            worst = max(
                float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                for a, b in zip(
                    jax.tree_util.tree_leaves(gj), jax.tree_util.tree_leaves(gp), strict=True
                )
            )
            print(f"step {i:3d}: loss {float(lj):.6f} vs {float(lp):.6f}, gradients {worst:.1e}")
            assert abs(float(lj) - float(lp)) < 1e-5 * float(lp) and worst < 1e-5, worst
        model, opt_state, _, _ = steps["plain"](model, opt_state, batch)
        # one program at a time: on faked CPU devices two multi-device programs in flight
        # can wait on each other's collectives
        jax.block_until_ready(model)

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(curves["plain"], label="x @ table.T + optax", lw=3, alpha=0.5)
ax.plot(curves["jsoftmax"], label="jsoftmax.vocab_parallel_linear_cross_entropy", lw=1)
ax.set_xlabel("step")
ax.set_ylabel("training loss (nats per byte)")
ax.legend()
plt.show()

# %% [markdown]
# ## What each device holds and does
#
# The compiled training step of each version, per device: XLA's temporary memory (beyond the
# step's inputs and outputs) and the floating-point operations from its cost analysis.

# %%
with jax.set_mesh(mesh):
    batch = jax.device_put(next(batches(seed=2)), by_batch)
    opt_state = jax.device_put(optimizer.init(model0), replicated)
    for name, step in steps.items():
        compiled = step.lower(model0, opt_state, batch).compile()
        mem = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        print(
            f"{name:>8}: temp {mem.temp_size_in_bytes / 2**20:7.2f} MiB per device, "
            f"{cost.get('flops', float('nan')) / 1e6:9.1f} MFLOP per device"
        )
