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
# # Memory-efficient cross-entropy: `jsoftmax.linear_cross_entropy`
#
# A classifier head over a large vocabulary maps $N$ token features $x$ `[N, D]` through
# $w$ `[D, V]` to $N \cdot V$ logits. Computed the obvious way, `cross_entropy(x @ w, labels)`,
# those logits are materialised in the forward pass and kept for the backward pass, together
# with a same-sized gradient: for $N = 8192$ tokens and $V = 128\,000$ classes that is 4 GB
# per copy in float32, far more than $x$ and $w$ themselves.
#
# `jsoftmax.linear_cross_entropy(x, w, labels)` computes the same loss and gradients without
# ever holding the `[N, V]` logits. For the default `"mean"` reduction (and `"sum"`) it computes
# the gradients already in the forward pass, a block of tokens at a time: each block's logits
# over the whole vocabulary are formed once, turned into the block's loss and logit gradient,
# and multiplied into $\bar x$ and $\bar w$, which are all the backward pass needs (three
# $N \times D \times V$ matmuls, as many as the naive version). With `reduction="none"` or
# `gradients_in_forward=False` it keeps $x$ and $w$ instead and recomputes the logits in the
# backward pass, one `[token_chunk, vocab_chunk]` block at a time (four matmuls). Either way its
# memory is set by the block size, not by $N \cdot V$.
#
# This notebook compares the two on the device JAX finds: the compiled temporary memory
# (`jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes`, what XLA allocates
# beyond inputs and outputs) and the time of `value_and_grad`, against the vocabulary size.
# With `JSOFTMAX_NB_SMALL=1` (the test suite) the sizes are tiny.

# %% [markdown]
# ## Setup
#
# The first code cell installs jsoftmax where it cannot be imported yet (a fresh notebook
# runtime in the cloud, say) and does nothing where it can. jsoftmax is not on PyPI, so the cell
# installs it from the project source: `..`, the checkout this notebook is in, unless you
# replace `..` with the path of your local checkout of the jsoftmax repository (the folder with
# `pyproject.toml`) or of a wheel built from one (`pip wheel --no-deps PATH`). The `[train]`
# extra installs scikit-learn, tqdm and matplotlib, which jsoftmax itself does not need; this
# notebook's plots need matplotlib.
#
# **GPU or TPU.** Nothing in this notebook names a device: JAX runs on an accelerator when it
# finds one, and the second cell prints the devices it found. For an NVIDIA GPU, install JAX's
# CUDA build (`pip install -U "jax[cuda12]"`); for a TPU, use a TPU runtime (or
# `pip install -U "jax[tpu]"` on a TPU VM).

# %%
try:
    import jsoftmax
except ImportError:  # not installed here: install it from the project source (see above)
    import importlib
    import subprocess
    import sys

    # ".." is this notebook's checkout; replace it with your checkout's or wheel's path
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "..[train]"], check=True)
    importlib.invalidate_caches()
    import jsoftmax

# %%
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

SMALL = os.environ.get("JSOFTMAX_NB_SMALL") == "1"
print(jax.devices())

# %% [markdown]
# ## The two functions
#
# Both return the mean loss and its gradients with respect to $x$ and $w$. The naive one uses
# `jsoftmax.cross_entropy` on materialised logits, so the only difference is the chunking.


# %%
def naive(x, w, labels):
    return jax.value_and_grad(lambda x, w: jsoftmax.cross_entropy(x @ w, labels), argnums=(0, 1))(
        x, w
    )


def chunked(x, w, labels):
    return jax.value_and_grad(
        lambda x, w: jsoftmax.linear_cross_entropy(x, w, labels), argnums=(0, 1)
    )(x, w)


def inputs(n, d, v, seed=0):
    kx, kw, ky = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, d), jnp.float32)
    w = jax.random.normal(kw, (d, v), jnp.float32) / np.sqrt(d)
    labels = jax.random.randint(ky, (n,), 0, v)
    return x, w, labels


# same numbers first: loss and both gradients, on a size that spans several chunks
x, w, labels = inputs(300, 32, 5000)
(loss_n, (dx_n, dw_n)), (loss_c, (dx_c, dw_c)) = (
    jax.jit(naive)(x, w, labels),
    jax.jit(chunked)(x, w, labels),
)
print(f"loss: naive {float(loss_n):.6f}, chunked {float(loss_c):.6f}")
print(f"max |dx naive - dx chunked| = {float(jnp.max(jnp.abs(dx_n - dx_c))):.2e}")
print(f"max |dw naive - dw chunked| = {float(jnp.max(jnp.abs(dw_n - dw_c))):.2e}")

# %% [markdown]
# ## Compiled temporary memory against the vocabulary size
#
# Compiling needs only shapes (`jax.ShapeDtypeStruct`), so the memory of even the largest naive
# program is read off without allocating it. The dashed line is the size of one `[N, V]`
# float32 logits array.

# %%
if SMALL:
    N, D = 128, 32
    VOCABS = [256, 1024, 4096]
    TIMED = [256, 1024]
    REPS = 3
else:
    N, D = 2048, 256
    VOCABS = [1024 * 2**k for k in range(8)]  # 1,024 … 131,072
    TIMED = [1024 * 2**k for k in range(6)]  # 1,024 … 32,768
    REPS = 5


def temp_bytes(fn, n, d, v):
    shapes = (
        jax.ShapeDtypeStruct((n, d), jnp.float32),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )
    analysis = jax.jit(fn).lower(*shapes).compile().memory_analysis()
    return analysis.temp_size_in_bytes


MiB = 2**20
memory = {"naive": [], "chunked": []}
print(f"N = {N}, D = {D}, float32, on {jax.devices()[0].platform}")
print(f"{'V':>8} {'logits MiB':>11} {'naive MiB':>10} {'chunked MiB':>12} {'ratio':>7}")
for v in VOCABS:
    memory["naive"].append(temp_bytes(naive, N, D, v))
    memory["chunked"].append(temp_bytes(chunked, N, D, v))
    print(
        f"{v:>8,} {N * v * 4 / MiB:>11.1f} {memory['naive'][-1] / MiB:>10.1f} "
        f"{memory['chunked'][-1] / MiB:>12.1f} "
        f"{memory['naive'][-1] / max(memory['chunked'][-1], 1):>7.1f}"
    )

# %% [markdown]
# ## Time against the vocabulary size
#
# Each function is compiled once, its inputs are on the device before the clock starts, every
# call ends with `block_until_ready()`, the two are timed interleaved (naive, chunked, naive,
# ...) so that drift on a shared machine hits both alike, and the median is reported.


# %%
def time_pair(fns, args, reps):
    compiled = {name: jax.jit(fn).lower(*args).compile() for name, fn in fns.items()}
    for c in compiled.values():
        jax.block_until_ready(c(*args))  # warm-up
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, c in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(c(*args))
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


timing = {"naive": [], "chunked": []}
print(f"N = {N}, D = {D}, float32, on {jax.devices()[0].device_kind}; median of {REPS} calls")
print(f"{'V':>8} {'naive ms':>9} {'chunked ms':>11} {'chunked / naive':>16}")
for v in TIMED:
    args = jax.device_put(inputs(N, D, v))
    t = time_pair({"naive": naive, "chunked": chunked}, args, REPS)
    for name in timing:
        timing[name].append(t[name])
    print(
        f"{v:>8,} {t['naive'] * 1e3:>9.2f} {t['chunked'] * 1e3:>11.2f} "
        f"{t['chunked'] / t['naive']:>16.2f}"
    )
    del args

# %%
fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for name, marker in (("naive", "o-"), ("chunked", "s-")):
    ax_mem.loglog(VOCABS, np.array(memory[name]) / MiB, marker, ms=4, label=name)
    ax_time.loglog(TIMED, np.array(timing[name]) * 1e3, marker, ms=4, label=name)
ax_mem.loglog(VOCABS, np.array(VOCABS) * N * 4 / MiB, "--", c="gray", label="one [N, V] f32 array")
ax_mem.set_ylabel("compiled temp memory (MiB)")
ax_time.set_ylabel("value_and_grad time (ms, median)")
for ax in (ax_mem, ax_time):
    ax.set_xlabel("vocabulary size V")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
fig.suptitle(f"linear + cross-entropy, N={N}, D={D}, float32, {jax.devices()[0].device_kind}")
plt.show()

# %% [markdown]
# Reading the plots: the naive program's temporaries grow linearly with $V$ (two copies of the
# `[N, V]` logits: the logits and their gradient). The chunked one holds one block of tokens'
# logits and their gradient, sized to at most 64 MiB (fewer tokens per block as $V$ grows), plus
# the gradients $\bar x$ `[N, D]` and $\bar w$ `[D, V]` kept from the forward to the backward
# pass. Only $\bar w$ still grows with $V$, and it is $D / N$ the size of the logits (here
# $1/8$); the measured ratio is the table's last column. The `linear_cross_entropy` docstring
# gives the block sizes (`chunk_size` overrides them).
#
# The time of both grows linearly with $V$: the matmuls dominate, and with gradients in the
# forward pass the chunked version does the same three $N \times D \times V$ matmuls as the
# naive one, without writing the `[N, V]` logits to memory and reading them back. The table
# above gives the measured ratio on the device that ran this notebook.
