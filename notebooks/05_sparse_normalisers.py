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
# # Sparse normalisers: sparsemax, 1.5-entmax and α-entmax
#
# Softmax gives every class a positive probability. The α-entmax family keeps softmax's job
# (scores in, a probability vector out) but puts exactly zero on the classes whose scores fall
# below a threshold:
#
# $$
# \alpha\text{-entmax}(x)_i = \big[(\alpha - 1)\,x_i - \tau\big]_+^{1/(\alpha - 1)},
# \qquad \tau \text{ such that } \textstyle\sum_i p_i = 1,
# $$
#
# with $[\,\cdot\,]_+ = \max(\cdot, 0)$. At $\alpha = 2$ this is sparsemax, $[x - \tau]_+$,
# the Euclidean projection of $x$ onto the probability simplex; at $\alpha = 1.5$ it is
# 1.5-entmax, $[x/2 - \tau]_+^2$; as $\alpha \to 1$ it tends to softmax. jsoftmax provides
# `jsoftmax.sparsemax`, `jsoftmax.entmax15` and `jsoftmax.entmax(x, alpha)`, their dense
# Jacobians, forward-mode twins in `jsoftmax.fwd`, and the matching losses
# `jsoftmax.sparsemax_loss` and `jsoftmax.entmax_loss`. This notebook
#
# 1. applies them to one score vector and counts the exact zeros;
# 2. draws where they map scores on the 3-class simplex, and the 2-class case as curves;
# 3. checks their Jacobians: symmetric, rows summing to zero, zero off the support, and equal
#    to what `jax.jacrev` gets from the `custom_vjp` rules;
# 4. trains a small classifier on the digits with each loss and measures how sparse its
#    predictions are.
#
# With `JSOFTMAX_NB_SMALL=1` (as in the test suite) the training runs are shortened.

# %% [markdown]
# ## Setup
#
# The first code cell installs jsoftmax where it cannot be imported yet (a fresh notebook
# runtime in the cloud, say) and does nothing where it can. jsoftmax is not on PyPI, so the cell
# installs it from the project source: `..`, the checkout this notebook is in, unless you
# replace `..` with the path of your local checkout of the jsoftmax repository (the folder with
# `pyproject.toml`) or of a wheel built from one (`pip wheel --no-deps PATH`). The `[train]`
# extra installs scikit-learn, tqdm and matplotlib, which jsoftmax itself does not need; this
# notebook trains on scikit-learn's digits and plots with matplotlib.
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
from functools import partial

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from jsoftmax.train import init_mlp, mlp_apply
from jsoftmax.train.data import load_digits

SMALL = os.environ.get("JSOFTMAX_NB_SMALL") == "1"
print(jax.devices())

# %% [markdown]
# ## 1. The same scores through each normaliser
#
# One score vector of six classes, through softmax ($\alpha = 1$), α-entmax at
# $\alpha = 1.25$ and $1.75$, 1.5-entmax and sparsemax ($\alpha = 2$). Every output sums to
# one; the larger $\alpha$, the more classes get exactly zero and the more mass moves to the top
# scores. The order of the scores is kept: a larger score never gets a smaller probability.

# %%
x = jnp.array([1.6, 1.2, 0.9, 0.3, -0.4, -1.0])
normalisers = {
    "softmax": (1.0, jsoftmax.softmax),
    "entmax α=1.25": (1.25, lambda v: jsoftmax.entmax(v, 1.25)),
    "entmax15": (1.5, jsoftmax.entmax15),
    "entmax α=1.75": (1.75, lambda v: jsoftmax.entmax(v, 1.75)),
    "sparsemax": (2.0, jsoftmax.sparsemax),
}
outputs = {name: np.asarray(f(x)) for name, (_, f) in normalisers.items()}

print(f"x = {np.asarray(x)}\n")
print(f"{'':>14} {'probabilities':^47} {'zeros':>5} {'sum':>10}")
for name, p in outputs.items():
    print(
        f"{name:>14} {np.array2string(p, precision=4, floatmode='fixed')} "
        f"{int(np.sum(p == 0)):>5} {float(p.sum()):>10.7f}"
    )
# x is sorted in decreasing order; the outputs must not increase along it
ordered = all(bool(np.all(np.diff(p) <= 0)) for p in outputs.values())
print("\nevery output non-increasing, like x:", ordered)

# %% [markdown]
# The thresholded-power form can be checked on these outputs: the top class is always in the
# support, so $\tau = (\alpha - 1)\,x_{\max} - p_{\max}^{\alpha - 1}$, and rebuilding
# $[(\alpha - 1)x - \tau]_+^{1/(\alpha - 1)}$ from that $\tau$ must give the output back. At
# $\alpha = 2$ the threshold is the mean of the supported scores minus $1/|S|$. `entmax` with an
# array `alpha` always bisects for $\tau$; at 1.5 and 2 it must agree with the exact
# `entmax15` and `sparsemax`, and as $\alpha \to 1$ it approaches softmax.

# %%
top = int(jnp.argmax(x))
for name, (alpha, _) in normalisers.items():
    if alpha == 1.0:
        continue
    p = jnp.asarray(outputs[name])
    tau = (alpha - 1) * x[top] - p[top] ** (alpha - 1)
    rebuilt = jnp.maximum((alpha - 1) * x - tau, 0) ** (1 / (alpha - 1))
    print(
        f"{name:>14}: tau = {float(tau):+.4f}, max |p - rebuilt| = "
        f"{float(jnp.max(jnp.abs(p - rebuilt))):.1e}"
    )

support = outputs["sparsemax"] > 0
tau_sparsemax = (float(np.sum(np.asarray(x)[support])) - 1) / int(support.sum())
print(
    f"\nsparsemax: (sum of x on S - 1) / |S| = {tau_sparsemax:.4f}, S = {np.flatnonzero(support)}"
)

for alpha, exact in ((1.5, jsoftmax.entmax15), (2.0, jsoftmax.sparsemax)):
    bisected = jsoftmax.entmax(x, jnp.array(alpha))
    print(
        f"max |entmax(x, jnp.array({alpha})) - {exact.__name__}(x)| = "
        f"{float(jnp.max(jnp.abs(bisected - exact(x)))):.1e}"
    )
for alpha in (1.1, 1.01, 1.001):
    gap = float(jnp.max(jnp.abs(jsoftmax.entmax(x, alpha) - jsoftmax.softmax(x))))
    print(f"max |entmax(x, {alpha}) - softmax(x)| = {gap:.1e}")

# %%
fig, ax = plt.subplots(figsize=(10, 3.6), layout="constrained")
width = 0.8 / len(outputs)
for k, (name, p) in enumerate(outputs.items()):
    offset = (k - (len(outputs) - 1) / 2) * width
    ax.bar(np.arange(len(x)) + offset, p, width, label=f"{name} ({int(np.sum(p == 0))} zeros)")
ax.set_xticks(np.arange(len(x)), [f"x={v:g}" for v in np.asarray(x)])
ax.set_ylabel("probability")
ax.set_title("one score vector, five normalisers")
ax.legend()
plt.show()

# %% [markdown]
# ## 2. Where the outputs land on the simplex
#
# With three classes every output is a point of the triangle whose corners are the one-hot
# vectors. The scores $x = (t_1, t_2, 0)$ for a grid of $(t_1, t_2)$ cover all cases (adding a
# constant to every score changes nothing, so fixing $x_3 = 0$ loses nothing). Each point is
# coloured by its support size: one nonzero entry is a corner, two an edge, three the interior.
# Softmax never leaves the interior; sparsemax sends whole regions of scores to the edges and the
# corners.

# %%
n_grid = 61
t = np.linspace(-3, 3, n_grid, dtype=np.float32)
t1, t2 = np.meshgrid(t, t)
grid = jnp.stack([t1.ravel(), t2.ravel(), np.zeros(t1.size, np.float32)], axis=-1)
simplex = {
    "softmax": jsoftmax.softmax,
    "entmax15": jsoftmax.entmax15,
    "sparsemax": jsoftmax.sparsemax,
}
corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])  # one-hot e1, e2, e3
colours = {1: "tab:red", 2: "tab:orange", 3: "tab:blue"}
where = {1: "corner", 2: "edge", 3: "interior"}

fig, axes = plt.subplots(1, 3, figsize=(12, 4), layout="constrained")
print(f"{n_grid}x{n_grid} scores (t1, t2, 0), t in [-3, 3]: share of outputs by support size")
print(f"{'':>10} {'corner':>8} {'edge':>8} {'interior':>8} {'smallest p':>11}")
for ax, (name, f) in zip(axes, simplex.items(), strict=True):
    p = np.asarray(jax.jit(f)(grid))
    size = np.sum(p > 0, axis=-1)
    xy = p @ corners
    for k in (3, 2, 1):
        on = size == k
        ax.scatter(xy[on, 0], xy[on, 1], s=4, c=colours[k], label=f"{where[k]} ({on.mean():.0%})")
    ax.plot(*np.vstack([corners, corners[:1]]).T, c="k", lw=0.8)
    for (cx, cy), label in zip(corners, ("e1", "e2", "e3"), strict=True):
        ax.annotate(
            label,
            (cx, cy),
            textcoords="offset points",
            xytext=(0, -12 if cy == 0 else 4),
            ha="center",
        )
    ax.set_title(name)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.legend(loc="upper right", fontsize=8, markerscale=3)
    shares = [f"{np.mean(size == k):>8.1%}" for k in (1, 2, 3)]
    print(f"{name:>10} {' '.join(shares)} {p.min():>11.2e}")
plt.show()

# %% [markdown]
# With two classes the output is fixed by $p_1$, a function of the score difference $t$ for
# $x = (t, 0)$. Softmax gives the logistic sigmoid $p_1 = 1 / (1 + e^{-t})$, which reaches 0 and
# 1 only in the limit. Sparsemax gives the clipped line $p_1 = \mathrm{clip}((1 + t)/2, 0, 1)$.
# 1.5-entmax lies in between: on a two-class support $\sqrt{p_1} - \sqrt{p_2} = t/2$ and
# $p_1 + p_2 = 1$, so
#
# $$
# p_1 = \Big(\tfrac{1}{2}\big(\tfrac{t}{2} + \sqrt{2 - t^2/4}\,\big)\Big)^2
# \quad\text{for } |t| \le 2,
# $$
#
# and 0 or 1 beyond. In general α-entmax puts all mass on class 1 exactly when
# $(\alpha - 1)\,t \ge 1$, i.e. from $t = 1/(\alpha - 1)$ on. Below, the library's outputs
# against these closed forms, and the first grid point $t$ (a step of 0.01 in $[-5, 5]$) where
# $p_2$ is exactly 0. The last column is where the float32 $p_1$ first rounds to 1.0: it can do
# so a little earlier, while $p_2$ is still positive but below half a float32 step of 1
# (about $6 \cdot 10^{-8}$).

# %%
t = jnp.arange(-500, 501, dtype=jnp.float32) / 100  # exact multiples of 0.01 in [-5, 5]
pairs = jnp.stack([t, jnp.zeros_like(t)], axis=-1)
tc = jnp.clip(t, -2, 2)
closed_forms = {
    "softmax": (1.0, jsoftmax.softmax, jax.nn.sigmoid(t)),
    "entmax15": (1.5, jsoftmax.entmax15, ((tc / 2 + jnp.sqrt(2 - tc**2 / 4)) / 2) ** 2),
    "sparsemax": (2.0, jsoftmax.sparsemax, jnp.clip((1 + t) / 2, 0, 1)),
}
curves = {}
for name, (alpha, f, p1) in closed_forms.items():
    p = jax.jit(f)(pairs)
    curves[name] = (alpha, np.asarray(p))
    print(f"{name:>10}: max |p_1 - closed form| = {float(jnp.max(jnp.abs(p[:, 0] - p1))):.1e}")
for alpha in (1.25, 1.75):
    p = jax.jit(partial(jsoftmax.entmax, alpha=alpha))(pairs)
    curves[f"entmax α={alpha}"] = (alpha, np.asarray(p))


def first_t(hit):
    return f"{float(t[np.flatnonzero(hit)[0]]):.2f}" if hit.any() else "none"


print(f"\n{'':>14} {'first t: p_2 = 0':>16} {'1/(α-1)':>8} {'first t: p_1 == 1.0':>19}")
for name, (alpha, p) in sorted(curves.items(), key=lambda kv: kv[1][0]):
    bound = f"{1 / (alpha - 1):.3f}" if alpha > 1 else "inf"
    print(f"{name:>14} {first_t(p[:, 1] == 0):>16} {bound:>8} {first_t(p[:, 0] == 1):>19}")

fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
for name, (_, p) in sorted(curves.items(), key=lambda kv: kv[1][0]):
    ax.plot(t, p[:, 0], label=name)
ax.set_xlabel("t  (scores (t, 0))")
ax.set_ylabel("$p_1$")
ax.set_title("two classes")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# ## 3. Jacobians
#
# On the support $S = \{i : p_i > 0\}$ every α-entmax has the Jacobian
#
# $$
# \frac{\partial p}{\partial x} = \mathrm{diag}(u) - \frac{u u^\top}{\sum_j u_j},
# \qquad u_i = p_i^{\,2 - \alpha} \text{ for } i \in S, \quad u_i = 0 \text{ off } S,
# $$
#
# so $u = p$ for softmax (and $\sum u = 1$: the familiar $\mathrm{diag}(p) - p p^\top$),
# $u = \sqrt{p}$ for 1.5-entmax and $u$ the support's indicator for sparsemax. Read off the
# formula: the matrix is symmetric; each row sums to $u_i - u_i \sum_j u_j / \sum_j u_j = 0$
# (adding a constant to every score changes nothing); and a class off the support has a zero
# row (its probability stays 0 under a small change of any score) and a zero column (its score
# moves nothing). For sparsemax the matrix is the orthogonal projection onto the vectors that
# live on $S$ and sum to zero, so $J^2 = J$.
#
# `jsoftmax.softmax_jacobian`, `entmax15_jacobian`, `sparsemax_jacobian` and
# `entmax_jacobian(x, alpha)` build this matrix directly. Here they are compared with the
# formula built by hand, with `jax.jacrev` of the functions (reverse mode: the `custom_vjp`
# rule applied to every basis vector) and with `jax.jacfwd` of the `jsoftmax.fwd` twins
# (forward mode, through their `custom_jvp` rules), at the score vector of section 1.

# %%
jacobians = {
    "softmax": (1.0, jsoftmax.softmax, jsoftmax.fwd.softmax, jsoftmax.softmax_jacobian),
    "entmax α=1.25": (
        1.25,
        lambda v: jsoftmax.entmax(v, 1.25),
        lambda v: jsoftmax.fwd.entmax(v, 1.25),
        lambda v: jsoftmax.entmax_jacobian(v, 1.25),
    ),
    "entmax15": (1.5, jsoftmax.entmax15, jsoftmax.fwd.entmax15, jsoftmax.entmax15_jacobian),
    "sparsemax": (2.0, jsoftmax.sparsemax, jsoftmax.fwd.sparsemax, jsoftmax.sparsemax_jacobian),
}
dense = {}
header = ("", "|S|", "formula", "jacrev", "jacfwd(fwd)", "max|J-J^T|", "max|row sum|", "off S")
print("{:>14} {:>3} {:>9} {:>9} {:>11} {:>10} {:>12} {:>6}".format(*header))
for name, (alpha, f, f_fwd, jacobian) in jacobians.items():
    J = np.asarray(jacobian(x))
    p = np.asarray(f(x))
    on = p > 0
    u = np.where(on, np.where(on, p, 1) ** (2 - alpha), 0)
    formula = np.diag(u) - np.outer(u, u) / u.sum()
    J_rev = np.asarray(jax.jit(jax.jacrev(f))(x))
    J_fwd = np.asarray(jax.jit(jax.jacfwd(f_fwd))(x))
    for other in (formula, J_rev, J_fwd):
        np.testing.assert_allclose(other, J, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(J, J.T, rtol=0, atol=1e-7)
    np.testing.assert_allclose(J.sum(axis=1), 0, rtol=0, atol=1e-6)
    off_zero = bool(np.all(J[~on, :] == 0) and np.all(J[:, ~on] == 0))
    assert off_zero
    dense[name] = J
    print(
        f"{name:>14} {int(on.sum()):>3} {np.abs(formula - J).max():>9.1e} "
        f"{np.abs(J_rev - J).max():>9.1e} {np.abs(J_fwd - J).max():>11.1e} "
        f"{np.abs(J - J.T).max():>10.1e} {np.abs(J.sum(axis=1)).max():>12.1e} "
        f"{'zero' if off_zero else 'NOT 0':>6}"
    )

J = dense["sparsemax"]
print(f"\nsparsemax: max |J @ J - J| = {np.abs(J @ J - J).max():.1e}")
with np.printoptions(precision=4, suppress=True, floatmode="fixed"):
    print(f"\nsparsemax Jacobian at x (support {np.flatnonzero(outputs['sparsemax'] > 0)}):")
    print(dense["sparsemax"])
    print(f"\nentmax15 Jacobian at x (support {np.flatnonzero(outputs['entmax15'] > 0)}):")
    print(dense["entmax15"])

# %% [markdown]
# Every comparison above is also an `assert` in the cell: the notebook stops if one fails.
# Forward mode needs the `jsoftmax.fwd` twins; the top-level functions carry `custom_vjp`
# rules, which JAX does not differentiate in forward mode:

# %%
try:
    jax.jacfwd(jsoftmax.sparsemax)(x)
except TypeError as e:
    print(f"jax.jacfwd(jsoftmax.sparsemax): TypeError: {str(e).splitlines()[0]}")

# %% [markdown]
# ## 4. Training with the matching losses
#
# Each normaliser has its loss: `jsoftmax.cross_entropy` for softmax,
# `jsoftmax.entmax_loss(logits, labels, alpha)` for α-entmax and `jsoftmax.sparsemax_loss` for
# sparsemax. The last two are Fenchel–Young losses; for an integer label $y$ the loss is
# $L(z; y) = \Omega^*(z) - z_y$ with $\Omega^*(z) = \max_{p \in \Delta} \langle z, p \rangle -
# \Omega_\alpha(p)$, and its gradient is $p - \mathrm{onehot}(y)$ with $p$ the α-entmax of $z$:
# the same form as the softmax cross-entropy's. A first check, on a random batch: the gradients
# of the `"mean"` losses against $(p - \mathrm{onehot}(y)) / B$, and `entmax_loss` at
# $\alpha = 1$ and $2$ against `cross_entropy` and `sparsemax_loss`.

# %%
B, C = 8, 10
logits = 3 * jax.random.normal(jax.random.key(0), (B, C))
labels = jax.random.randint(jax.random.key(1), (B,), 0, C)
onehot = jax.nn.one_hot(labels, C)
losses = {
    "cross_entropy": (jsoftmax.cross_entropy, jsoftmax.softmax),
    "entmax_loss": (jsoftmax.entmax_loss, jsoftmax.entmax15),
    "sparsemax_loss": (jsoftmax.sparsemax_loss, jsoftmax.sparsemax),
}
for name, (loss, normalise) in losses.items():
    grad = jax.jit(jax.grad(loss))(logits, labels)
    err = float(jnp.max(jnp.abs(grad - (jax.jit(normalise)(logits) - onehot) / B)))
    print(f"{name:>14}: max |grad - (p - onehot) / B| = {err:.1e}")
for alpha, other in ((1.0, jsoftmax.cross_entropy), (2.0, jsoftmax.sparsemax_loss)):
    value = jax.jit(partial(jsoftmax.entmax_loss, alpha=alpha))(logits, labels)
    gap = float(jnp.abs(value - jax.jit(other)(logits, labels)))
    print(f"|entmax_loss(alpha={alpha}) - {other.__name__}| = {gap:.1e}")

# %% [markdown]
# A sparse loss can reach exactly zero: it is zero exactly when $p$ is the one-hot of the label,
# which by section 2 happens once the label's score leads every other by $1/(\alpha - 1)$.
# Cross-entropy only tends to zero. Below, two classes with scores $(m, 0)$ and label 0, for a
# margin $m$ from 0 to 4.

# %%
m = jnp.arange(0, 401, dtype=jnp.float32) / 100
pair_logits = jnp.stack([m, jnp.zeros_like(m)], axis=-1)
zeros = jnp.zeros(m.shape, jnp.int32)
margin_losses = {
    name: jax.jit(partial(loss, reduction="none"))(pair_logits, zeros)
    for name, loss in (
        ("cross_entropy", jsoftmax.cross_entropy),
        ("entmax_loss α=1.5", partial(jsoftmax.entmax_loss, alpha=1.5)),
        ("sparsemax_loss", jsoftmax.sparsemax_loss),
    )
}
fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
for name, value in margin_losses.items():
    value = np.asarray(value)
    hit = np.flatnonzero(value == 0)
    first = f"{float(m[hit[0]]):.2f}" if hit.size else "none"
    print(
        f"{name:>18}: loss at m=0 {value[0]:.4f}, at m=4 {value[-1]:.2e}; "
        f"first m with loss exactly 0: {first}"
    )
    ax.plot(m, value, label=name)
ax.set_xlabel("margin m  (scores (m, 0), label 0)")
ax.set_ylabel("loss")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# ### A digits classifier with each loss
#
# The same multilayer perceptron (`jsoftmax.train.init_mlp` / `mlp_apply`), the same
# initialisation, optimiser (optax Adam) and batches, trained on scikit-learn's 8×8 digits
# (`jsoftmax.train.data.load_digits`) once with each loss. `jsoftmax.train`'s own training loop
# is written for cross-entropy, so the loop here is a few lines of `jax.jit`. On the test split
# each model is read through its own normaliser: softmax for cross-entropy, 1.5-entmax for
# `entmax_loss`, sparsemax for `sparsemax_loss`.

# %%
ds = load_digits(seed=0)
steps, hidden, batch_size, learning_rate = (
    (60, (32,), 128, 1e-2) if SMALL else (400, (64,), 128, 3e-3)
)
sizes = (ds.num_features, *hidden, ds.num_classes)
x_train, y_train = jnp.asarray(ds.train.x), jnp.asarray(ds.train.y)
x_test, y_test = jnp.asarray(ds.test.x), np.asarray(ds.test.y)

# the same batches for every loss: a fresh permutation of the training set per epoch
rng = np.random.default_rng(0)
per_epoch = len(ds.train) // batch_size
epochs = -(-steps // per_epoch)
order = np.concatenate(
    [rng.permutation(len(ds.train))[: per_epoch * batch_size] for _ in range(epochs)]
)
batches = order.reshape(-1, batch_size)[:steps]
tx = optax.adam(learning_rate)
print(
    f"{len(ds.train)} training and {len(ds.test)} test images, MLP {sizes}, "
    f"{steps} steps of {batch_size} (Adam, lr {learning_rate})"
)


def train(loss):
    params = init_mlp(jax.random.key(0), sizes)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, idx):
        def objective(params):
            return loss(mlp_apply(params, x_train[idx]), y_train[idx])

        value, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    for idx in batches:
        params, opt_state, value = step(params, opt_state, idx)
    return params, float(value)


results = {}
print(
    f"\n{'':>14} {'last loss':>9} {'test acc':>8} {'mean nonzero':>12} {'one-hot':>7} "
    f"{'acc | one-hot':>13} {'p_y = 0':>7} {'time':>6}"
)
for name, (loss, normalise) in losses.items():
    start = time.perf_counter()
    params, last = train(loss)
    seconds = time.perf_counter() - start
    test_logits = mlp_apply(params, x_test)
    p = np.asarray(normalise(test_logits))
    pred = np.asarray(test_logits).argmax(-1)
    assert np.array_equal(pred, p.argmax(-1))  # order-preserving: the same prediction
    nonzero = np.sum(p > 0, axis=-1)
    single = nonzero == 1
    correct = pred == y_test
    label_zero = p[np.arange(len(y_test)), y_test] == 0
    results[name] = nonzero
    acc_single = f"{correct[single].mean():.4f}" if single.any() else "n/a"
    print(
        f"{name:>14} {last:>9.2e} {correct.mean():>8.4f} {nonzero.mean():>12.2f} "
        f"{single.mean():>7.1%} {acc_single:>13} {label_zero.mean():>7.1%} {seconds:>5.1f}s"
    )

# %% [markdown]
# The columns: the loss of the last training batch; test accuracy (the arg-max, which all three
# normalisers leave where the logits put it, as the cell asserts); the mean number of nonzero
# probabilities per test image (out of 10); the share of test images whose prediction puts all
# mass on one class, and the accuracy on those images; the share whose true class gets
# probability exactly 0; the wall time of the run, compilation included. The histogram shows the
# support sizes.

# %%
fig, ax = plt.subplots(figsize=(8, 3.4), layout="constrained")
width = 0.8 / len(results)
for k, (name, nonzero) in enumerate(results.items()):
    counts = np.bincount(nonzero, minlength=ds.num_classes + 1)[1:]
    ax.bar(np.arange(1, ds.num_classes + 1) + (k - 1) * width, counts, width, label=name)
ax.set_xticks(np.arange(1, ds.num_classes + 1))
ax.set_xlabel("nonzero probabilities in the prediction")
ax.set_ylabel("test images")
ax.set_title(f"support size on the {len(ds.test)} test digits")
ax.legend(loc="upper center")
plt.show()

# %% [markdown]
# See also: [01_softmax_and_log_softmax](01_softmax_and_log_softmax.ipynb) for the softmax
# Jacobian and the cross-entropy gradient derived step by step, and
# [02_custom_vjp_and_check_grads](02_custom_vjp_and_check_grads.ipynb) for how the
# `custom_vjp` rules are written and checked.
