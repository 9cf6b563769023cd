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
# # Custom VJPs and gradient checks
#
# Every differentiable function in jsoftmax carries an analytic `jax.custom_vjp` rule. This
# notebook shows
#
# 1. how such a rule is written (a small one built here, then the library's own), and what the
#    library's rules give for a slice whose entries are all $-\infty$;
# 2. what it saves for the backward pass (its residuals), next to `jax.nn`;
# 3. how the rules are checked against finite differences (`jax.test_util.check_grads` and the
#    `jsoftmax check` table);
# 4. forward mode (`jax.jvp`, `jax.jacfwd`, `jax.hessian`, Hessian-vector products) through
#    `jsoftmax.fwd`;
# 5. `jit`, `vmap` and per-example gradients.
#
# Set `JSOFTMAX_NB_SMALL=1` to run a shorter gradient-check table (the test suite does).

# %% [markdown]
# ## Setup
#
# The first code cell installs jsoftmax where it cannot be imported yet (a fresh notebook
# runtime in the cloud, say) and does nothing where it can. jsoftmax is not on PyPI, so the cell
# installs it from the project source: `..`, the checkout this notebook is in, unless you
# replace `..` with the path of your local checkout of the jsoftmax repository (the folder with
# `pyproject.toml`) or of a wheel built from one (`pip wheel --no-deps PATH`).
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
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", ".."], check=True)
    importlib.invalidate_caches()
    import jsoftmax

# %%
import contextlib
import inspect
import io
import os
import re
import shlex
import subprocess
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.ad_checkpoint import print_saved_residuals
from jax.test_util import check_grads

from jsoftmax import _softmax, fwd  # _softmax: only to print the library's rule below

SMALL = os.environ.get("JSOFTMAX_NB_SMALL") == "1"


def report(what, a, b):
    """Print the largest absolute difference between two arrays."""
    print(f"max |{what}|".ljust(58), f"= {float(jnp.max(jnp.abs(a - b))):.2e}")


print(jax.devices())

# %% [markdown]
# ## 1. Writing a custom VJP
#
# Reverse-mode autodiff of softmax written with `jnp` ops would differentiate each op in turn
# and keep their intermediates. The analytic rule from notebook 01 needs far less: with
# $s = \mathrm{softmax}(x)$ and an incoming cotangent $g$,
#
# $$\bar x = J^\top g = s \odot (g - \langle g, s \rangle),$$
#
# so only $s$ has to be kept. `jax.custom_vjp` states that rule explicitly, in three parts:
#
# * the **primal**, the decorated function, used when nothing is differentiated;
# * `_fwd(args) -> (out, residuals)`, run in the forward pass of differentiation; the residuals
#   are everything the backward pass will get, so save the least that suffices;
# * `_bwd(residuals, g) -> one cotangent per differentiable input`, with the formula written
#   above the code. Non-array options such as `axis` go in `nondiff_argnums` and arrive first.
#
# A teaching version:


# %%
@partial(jax.custom_vjp, nondiff_argnums=(1,))
def my_softmax(x, axis):
    # subtract the max (without its gradient) so exp cannot overflow
    z = x - lax.stop_gradient(jnp.max(x, axis, keepdims=True))
    e = jnp.exp(z)
    return e / jnp.sum(e, axis, keepdims=True)


def _my_softmax_fwd(x, axis):
    s = my_softmax(x, axis)
    return s, s  # the output is the only residual


def _my_softmax_bwd(axis, s, g):
    # x̄ = s ⊙ (g − ⟨g, s⟩), the VJP of diag(s) − s sᵀ
    return (s * (g - jnp.sum(g * s, axis, keepdims=True)),)


my_softmax.defvjp(_my_softmax_fwd, _my_softmax_bwd)

x = jax.random.normal(jax.random.key(0), (4, 7))
w = jax.random.normal(jax.random.key(1), (4, 7))


def objective(f):
    # a scalar that depends on every output, so the cotangent g = w is not trivial
    return lambda x: jnp.sum(w * f(x))


g_mine = jax.jit(jax.grad(objective(lambda x: my_softmax(x, -1))))(x)
g_autodiff = jax.jit(jax.grad(objective(jax.nn.softmax)))(x)
g_jsoftmax = jax.jit(jax.grad(objective(jsoftmax.softmax)))(x)
report("my_softmax grad - autodiff of jax.nn.softmax", g_mine, g_autodiff)
report("jsoftmax.softmax grad - my_softmax grad", g_jsoftmax, g_mine)

# %% [markdown]
# The library's rule for `jsoftmax.softmax` lives in the private module `jsoftmax/_softmax.py`
# (printed here, not meant to be imported) and has the same shape. On top of the teaching version
# it handles a `where=` mask (masked entries take part as `-inf` and come out exactly 0) and
# float16/bfloat16 inputs (computed in float32, returned in the input dtype):

# %%
print(inspect.getsource(_softmax._softmax_fwd))
print(inspect.getsource(_softmax._softmax_bwd))
print(inspect.getsource(_softmax._log_softmax_bwd))

# %% [markdown]
# ### Slices with no finite entry
#
# A slice whose entries are all $-\infty$ has no distribution to return: every $e^{x_i}$ is 0
# and softmax is $0/0$. What jsoftmax gives, by design:
#
# | function | unmasked: `x` all `-inf` on the slice | masked: `where=` all `False` on the slice |
# |---|---|---|
# | `softmax` | NaN | zeros, with a zero gradient |
# | `log_softmax` | NaN | `-inf`, with a zero gradient |
# | `logsumexp` | `-inf`, with a zero gradient | `-inf`, with a zero gradient |
#
# The unmasked NaN is the documented choice, the same as `jax.nn.softmax` and PyTorch's
# `torch.softmax`. Returning zeros there would need a select on the slice maximum
# (`where(isfinite(m), m, 0)`) on every call, and XLA compiles an ordinary softmax's reduce-max,
# `exp` and sum into one fused kernel that such a select splits into three: a guard measured
# 1.1–2× slower on XLA CPU. With a mask, the library knows which entries to drop and sets
# their outputs directly, so a fully masked slice costs no such test. `logsumexp` needs no
# guard at all: the log of an empty sum is $-\infty$, which is the right answer.
#
# So where all `-inf` slices can occur (a padded row, a causal mask's first position), pass the
# remedy `where=x > -jnp.inf`:

# %%
x_inf = jnp.array([[1.0, 2.0, -jnp.inf], [-jnp.inf, -jnp.inf, -jnp.inf]])
mask = x_inf > -jnp.inf  # the remedy: leave the -inf entries out


def value_and_vjp(f):
    """f(x_inf) and its gradient for a fixed cotangent (1, 2, 3, ... in f's output shape)."""
    y, vjp = jax.vjp(f, x_inf)
    (dx,) = vjp(jnp.arange(1.0, 1.0 + y.size).reshape(y.shape))
    return y, dx


print("x =", x_inf.tolist(), "\n")
print(f"{'':<36} {'all -inf row':<20} its gradient")
for name, f in [
    ("jax.nn.softmax(x)", jax.nn.softmax),
    ("jsoftmax.softmax(x)", jsoftmax.softmax),
    ("jsoftmax.softmax(x, where=mask)", lambda x: jsoftmax.softmax(x, where=mask)),
    ("jsoftmax.log_softmax(x)", jsoftmax.log_softmax),
    ("jsoftmax.log_softmax(x, where=mask)", lambda x: jsoftmax.log_softmax(x, where=mask)),
    ("jsoftmax.logsumexp(x)", jsoftmax.logsumexp),
    ("jsoftmax.logsumexp(x, where=mask)", lambda x: jsoftmax.logsumexp(x, where=mask)),
]:
    y, dx = value_and_vjp(f)
    print(f"{name:<36} {np.asarray(y[1]).tolist()!s:<20} {np.asarray(dx[1]).tolist()}")

# the first row, which has finite entries, is the same with and without the mask
report(
    "softmax(x, where=mask) - softmax(x), first row",
    jsoftmax.softmax(x_inf, where=mask)[0],
    jsoftmax.softmax(x_inf)[0],
)

# %% [markdown]
# ## 2. What the rules save
#
# The closure returned by `jax.vjp` holds the residuals; its array leaves are exactly what is
# kept in memory between the forward and the backward pass. For a `[256, 1000]` batch of
# logits, float32:

# %%
B, C = 256, 1000
logits = jax.random.normal(jax.random.key(2), (B, C))
labels = jax.random.randint(jax.random.key(3), (B,), 0, C)

pairs = {
    "softmax": (jsoftmax.softmax, jax.nn.softmax),
    "log_softmax": (jsoftmax.log_softmax, jax.nn.log_softmax),
    "logsumexp": (jsoftmax.logsumexp, jax.nn.logsumexp),
    "cross-entropy": (
        lambda z: jsoftmax.cross_entropy(z, labels),
        lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean(),
    ),
}


def residuals(f, x):
    # eval_shape only traces: the residuals' shapes and dtypes, with nothing computed
    leaves = jax.eval_shape(lambda x: jax.tree_util.tree_leaves(jax.vjp(f, x)[1]), x)
    nbytes = sum(np.prod(leaf.shape, dtype=int) * leaf.dtype.itemsize for leaf in leaves)
    return [tuple(leaf.shape) for leaf in leaves], nbytes


print(f"{'function':<14} {'library':<9} {'residual bytes':>15}  shapes")
for name, fns in pairs.items():
    for lib, f in zip(("jsoftmax", "jax/optax"), fns, strict=True):
        shapes, nbytes = residuals(f, logits)
        print(f"{name:<14} {lib:<9} {nbytes:>15,}  {shapes}")

# %% [markdown]
# `jsoftmax.softmax` and `jsoftmax.log_softmax` keep exactly their output; `jax.nn`,
# differentiated op by op, also keeps per-row intermediates of the normalisation. For the
# losses both sides keep one `[B, C]` array plus a few per-row values, so the saved memory is
# about the size of the logits either way.
#
# `jax.ad_checkpoint.print_saved_residuals` says where each saved value comes from. It names the
# source file with its absolute path and line; the helper below prints the path from the
# package folder on (`jsoftmax/_softmax.py`) and the function, which is what matters here:


# %%
def saved_residuals(f, *args):
    """print_saved_residuals(f, *args), with each source file shown relative to its package."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print_saved_residuals(f, *args)
    for line in buffer.getvalue().splitlines():
        # ".../site-packages/jsoftmax/_loss.py:283:8 (_shift)" -> "jsoftmax/_loss.py (_shift)";
        # a file outside jsoftmax keeps only its name
        line = re.sub(r"\S*[/\\](jsoftmax)[/\\](\S+?\.py):\d+(:\d+)?", r"\1/\2", line)
        line = re.sub(r"\S*[/\\](\S+?\.py):\d+(:\d+)?", r"\1", line)
        print(line)


print("jsoftmax.softmax:")
saved_residuals(jsoftmax.softmax, logits)
print("\njax.nn.softmax:")
saved_residuals(jax.nn.softmax, logits)
print("\njsoftmax.cross_entropy:")
saved_residuals(lambda z: jsoftmax.cross_entropy(z, labels), logits)

# %% [markdown]
# The test suite asserts these counts (`tests/test_softmax.py`), so a change that starts saving
# the input as well fails a test rather than silently doubling the memory of the backward pass.
#
# ## 3. Checking the rules
#
# `jax.test_util.check_grads` compares the VJP with central finite differences along random
# directions, up to a given order (order 2 checks the VJP of the VJP). It needs float64 to be
# meaningful, and `modes=["rev"]`: a `custom_vjp` function has no forward-mode rule.

# %%
with jax.enable_x64(True):
    x64 = jax.random.normal(jax.random.key(4), (4, 7), jnp.float64)
    for name, f in [
        ("softmax", jsoftmax.softmax),
        ("log_softmax", jsoftmax.log_softmax),
        ("logsumexp", jsoftmax.logsumexp),
        ("my_softmax", lambda x: my_softmax(x, -1)),
    ]:
        check_grads(f, (x64,), order=2, modes=["rev"])
        print(f"check_grads({name}, order=2, modes=['rev']): passed")

# %% [markdown]
# A check that cannot fail proves nothing, so here is one that does: the same teaching rule with
# the sign of the inner product flipped.


# %%
@partial(jax.custom_vjp, nondiff_argnums=(1,))
def bad_softmax(x, axis):
    return my_softmax(x, axis)


def _bad_softmax_bwd(axis, s, g):
    return (s * (g + jnp.sum(g * s, axis, keepdims=True)),)  # wrong sign on purpose


bad_softmax.defvjp(_my_softmax_fwd, _bad_softmax_bwd)

with jax.enable_x64(True):
    try:
        check_grads(lambda x: bad_softmax(x, -1), (x64,), order=1, modes=["rev"])
        print("passed (unexpected)")
    except AssertionError as err:
        print("check_grads caught the wrong rule:", str(err).strip().splitlines()[0])

# %% [markdown]
# The command `jsoftmax check` (or `python -m jsoftmax check`) runs `check_grads` on every
# public differentiable function, in float64, for orders 1 and 2 (order 2 checks the first and
# the second derivatives), in the modes its rules support: reverse mode for the `custom_vjp`
# functions, forward and reverse for `jsoftmax.fwd`. Its first lines give the JAX version, the
# devices and the tolerances handed to `check_grads` (`atol`, `rtol` and the finite-difference
# step `eps`); then one row per function and order says `pass`, or `FAIL` with `check_grads`'
# own message (which derivative disagreed, and by how much); the last line counts them, and the
# exit status is 1 if any failed. `--only NAME` keeps the functions whose name contains `NAME`.
# The functions with `softmax` in their name (the test suite checks one, to be quick):

# %%
only = "log_softmax(axis=0)" if SMALL else "softmax"
check = subprocess.run(
    [sys.executable, "-m", "jsoftmax", "check", "--only", only], capture_output=True, text=True
)
print("$", shlex.join(["jsoftmax", "check", "--only", only]))
print(check.stdout, end="")
print("exit status:", check.returncode)

# %% [markdown]
# ## 4. Forward mode: `jsoftmax.fwd`
#
# A `custom_vjp` rule only describes reverse mode, so forward mode applied directly to
# `jsoftmax.softmax` (`jax.jvp`, `jax.jacfwd`) is an error:

# %%
try:
    jax.jacfwd(jsoftmax.softmax)(x[0])
except TypeError as err:
    print("TypeError:", str(err).splitlines()[0])

# %% [markdown]
# The documented route is `jsoftmax.fwd`: `fwd.softmax`, `fwd.log_softmax` and `fwd.logsumexp`
# compute the same values with `jax.custom_jvp` rules (the JVP form of the same Jacobians,
# $\dot s = s \odot (\dot x - \langle \dot x, s\rangle)$). JAX transposes a JVP rule for reverse
# mode, so they support every mode and composition:

# %%
v = x[0]
s = jsoftmax.softmax(v)
J_fwd = jax.jit(jax.jacfwd(fwd.softmax))(v)
J_rev = jax.jit(jax.jacrev(fwd.softmax))(v)
report("jacfwd(fwd.softmax) - softmax_jacobian", J_fwd, jsoftmax.softmax_jacobian(v))
report("jacrev(fwd.softmax) - jacfwd(...)", J_rev, J_fwd)
report("fwd.softmax - softmax", fwd.softmax(v), s)

# %% [markdown]
# The Hessian of $\mathrm{logsumexp}$ is the softmax Jacobian, $\nabla^2 \mathrm{lse}(z) =
# \mathrm{diag}(s) - s s^\top$, and so is the Hessian of the negative log-likelihood
# $L(z) = \mathrm{lse}(z) - z_y$ with respect to the logits (the $-z_y$ term is linear). A
# Hessian-vector product never forms the matrix: it is the JVP of the gradient,
# `jax.jvp(jax.grad(L), (z,), (u,))`.

# %%
y = 2


def nll(z):
    return -fwd.log_softmax(z)[y]


H_formula = jnp.diag(s) - jnp.outer(s, s)
H_lse = jax.jit(jax.hessian(fwd.logsumexp))(v)
H_nll = jax.jit(jax.hessian(nll))(v)
u = jax.random.normal(jax.random.key(5), v.shape)
hvp = jax.jit(lambda z, u: jax.jvp(jax.grad(nll), (z,), (u,))[1])(v, u)  # forward-over-reverse
report("hessian(fwd.logsumexp) - (diag(s) - s s^T)", H_lse, H_formula)
report("hessian(nll) - (diag(s) - s s^T)", H_nll, H_formula)
report("jvp(grad(nll)) - H u", hvp, H_formula @ u)

# %% [markdown]
# Forward-over-reverse compositions (`jax.hessian`, which is `jacfwd(jacrev(f))`, and the
# jvp-of-grad product above) also work on the `custom_vjp` functions themselves: the outer
# forward pass differentiates the ordinary JAX code of the backward rule. It is forward mode
# applied *directly* (`jax.jvp`, `jax.jacfwd`, forward-over-forward) that needs `jsoftmax.fwd`:

# %%
H_vjp = jax.jit(jax.hessian(jsoftmax.logsumexp))(v)
report("hessian(jsoftmax.logsumexp) - hessian(fwd.logsumexp)", H_vjp, H_lse)
H_ff = jax.jit(jax.jacfwd(jax.jacfwd(fwd.logsumexp)))(v)
report("jacfwd(jacfwd(fwd.logsumexp)) - formula", H_ff, H_formula)

# %% [markdown]
# ## 5. `jit`, `vmap` and per-example gradients
#
# The rules are ordinary JAX functions, so they compose with every transformation. `vmap` of
# the one-row function equals the batched call, inside `jit` as well:

# %%
batched = jax.jit(jax.vmap(jsoftmax.softmax))(logits)
report("jit(vmap(softmax)) - softmax(axis=-1)", batched, jsoftmax.softmax(logits))

row_grad = jax.grad(lambda r: jnp.sum(jnp.sin(jsoftmax.log_softmax(r))))
grad_of_rows = jax.jit(jax.grad(lambda z: jnp.sum(jnp.sin(jsoftmax.log_softmax(z)))))(logits)
report("vmap(grad) - grad of batch", jax.jit(jax.vmap(row_grad))(logits), grad_of_rows)

# %% [markdown]
# Per-example gradients (for gradient-norm clipping, differential privacy or influence
# estimates) are `vmap` of `grad`. For a linear classifier with weights $W$ `[D, C]`, the
# gradient of example $b$'s loss is the outer product $x_b (\sigma(x_b W) - e_{y_b})^\top$, and
# the batch-mean gradient is their average:

# %%
D = 64
features = jax.random.normal(jax.random.key(6), (B, D))
W = jax.random.normal(jax.random.key(7), (D, C)) / jnp.sqrt(D)


def example_loss(W, x, y):
    # one example as a batch of one: logits [1, C], label [1]
    return jsoftmax.cross_entropy((x @ W)[None, :], y[None])


def batch_loss(W, xs, ys):
    return jsoftmax.cross_entropy(xs @ W, ys)


per_example = jax.jit(jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0)))
grads = per_example(W, features, labels)  # [B, D, C]
closed_form = jnp.einsum(
    "bd,bc->bdc", features, jsoftmax.softmax(features @ W) - jax.nn.one_hot(labels, C)
)
mean_grad = jax.jit(jax.grad(batch_loss))(W, features, labels)
print("per-example gradients:", grads.shape)
report("vmap(grad) - x (softmax - onehot)^T", grads, closed_form)
report("mean of per-example - grad of mean", grads.mean(0), mean_grad)
norms = jnp.sqrt(jnp.sum(grads**2, axis=(1, 2)))
print(
    "per-example gradient norms: min {:.3f}, median {:.3f}, max {:.3f}".format(
        *np.percentile(np.asarray(norms), [0, 50, 100])
    )
)
