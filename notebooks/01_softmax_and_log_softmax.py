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
# # Softmax and log-softmax: definitions, stability, Jacobian and the cross-entropy gradient
#
# This notebook derives everything `jsoftmax.softmax`, `jsoftmax.log_softmax` and
# `jsoftmax.cross_entropy` compute, and checks each formula numerically:
#
# 1. the definitions;
# 2. why the maximum is subtracted before `exp`;
# 3. the Jacobian $\partial s_i / \partial x_j = s_i(\delta_{ij} - s_j)$;
# 4. the negative log-likelihood and its gradient $\mathrm{softmax}(z) - \mathrm{onehot}(y)$,
#    including a check of a wrong-signed formula that circulates in some write-ups;
# 5. softmax under a temperature.

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
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

print(jax.devices())

# %% [markdown]
# ## 1. Definitions
#
# For a vector of scores (logits) $x \in \mathbb{R}^n$:
#
# $$
# \mathrm{softmax}(x)_i = \frac{e^{x_i}}{\sum_j e^{x_j}}, \qquad
# \mathrm{logsumexp}(x) = \log \sum_j e^{x_j}, \qquad
# \log\mathrm{softmax}(x)_i = x_i - \mathrm{logsumexp}(x).
# $$
#
# Softmax turns scores into a probability vector: every entry is positive and they sum to one.
# It does not change when the same constant $c$ is added to every score, because
# $e^{x_i + c} / \sum_j e^{x_j + c} = e^{x_i} / \sum_j e^{x_j}$.

# %%
x = jnp.array([1.0, 2.0, 3.0, 0.5])
s = jsoftmax.softmax(x)
print("softmax      ", s.round(4), " sum =", float(s.sum()))
print("log_softmax  ", jsoftmax.log_softmax(x).round(4))
print("log(softmax) ", jnp.log(s).round(4))
print("logsumexp    ", float(jsoftmax.logsumexp(x)))
print("shift by 100 ", jsoftmax.softmax(x + 100.0).round(4))
print("max |jsoftmax - jax.nn| =", float(jnp.max(jnp.abs(s - jax.nn.softmax(x)))))

# %% [markdown]
# ## 2. Why the maximum is subtracted
#
# In float32, `exp` overflows to `inf` for arguments above about 88.7, and underflows to `0`
# below about −104 (−87 where subnormal numbers are flushed to zero). The textbook formula
# therefore breaks on perfectly ordinary logits: at $x = [1000, 1001]$ both exponentials are
# `inf`, and `inf / inf` is `nan`.
#
# The shift invariance above is the fix: with $m = \max_j x_j$,
#
# $$
# \mathrm{softmax}(x)_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}},
# $$
#
# every exponent is $\le 0$ (nothing overflows) and the largest is exactly $e^0 = 1$ (the
# denominator is at least 1, so it cannot underflow to zero either). The same shift gives the
# stable $\mathrm{logsumexp}(x) = m + \log \sum_j e^{x_j - m}$.


# %%
def naive_softmax(x):
    return jnp.exp(x) / jnp.sum(jnp.exp(x))


for case in ([1000.0, 1001.0], [-1000.0, -1001.0], [1.0, 2.0]):
    x = jnp.array(case, jnp.float32)
    print(f"x = {case}")
    print("  exp(x)          ", jnp.exp(x))
    print("  naive softmax   ", naive_softmax(x))
    print("  jsoftmax.softmax", jsoftmax.softmax(x))

# %% [markdown]
# Large positive logits overflow (`inf / inf = nan`), large negative ones underflow
# (`0 / 0 = nan`); the shifted form gives $[0.2689, 0.7311]$ in both cases, the same as for
# $[1, 2]$ because only differences matter.
#
# Taking the log of a computed softmax loses information too: a probability of $e^{-200}$
# underflows to 0 in float32, and its log becomes `-inf`. `log_softmax` computes
# $(x_i - m) - \log\sum_j e^{x_j - m}$ directly and keeps the exact value $-200$:

# %%
x = jnp.array([0.0, 200.0])
print("log(softmax(x))", jnp.log(jsoftmax.softmax(x)))
print("log_softmax(x) ", jsoftmax.log_softmax(x))
print("naive logsumexp", jnp.log(jnp.sum(jnp.exp(jnp.array([1000.0, 1000.0])))))
print("logsumexp      ", jsoftmax.logsumexp(jnp.array([1000.0, 1000.0])))

# %% [markdown]
# ## 3. The Jacobian of softmax
#
# Write $s_i = e^{x_i} / S$ with $S = \sum_k e^{x_k}$, so $\partial S / \partial x_j = e^{x_j}$.
# By the quotient rule,
#
# $$
# \frac{\partial s_i}{\partial x_j}
# = \frac{\delta_{ij}\, e^{x_i}\, S - e^{x_i}\, e^{x_j}}{S^2}
# = \frac{e^{x_i}}{S}\,\delta_{ij} - \frac{e^{x_i}}{S}\,\frac{e^{x_j}}{S}
# = s_i\,(\delta_{ij} - s_j).
# $$
#
# In matrix form $J = \mathrm{diag}(s) - s s^\top$: symmetric, with every row and column summing
# to $s_i - s_i \sum_j s_j = 0$ (the direction $\mathbf{1}$, adding a constant to every score,
# changes nothing). For log-softmax, $\partial \log s_i / \partial x_j = \delta_{ij} - s_j$, i.e.
# $I - \mathbf{1} s^\top$.
#
# Reverse-mode autodiff never builds $J$: it needs the vector-Jacobian product
# $\bar x = J^\top g = s \odot (g - \langle g, s\rangle)$, which costs $O(n)$ and needs only
# $s$. That is the rule `jsoftmax.softmax` registers with `jax.custom_vjp`.
#
# Below, the formula built by hand is compared with `jax.jacrev` of `jsoftmax.softmax` (the
# custom VJP applied to every basis vector, batched with `vmap`), with `jax.jacrev` of
# `jax.nn.softmax`, and with `jsoftmax.softmax_jacobian`.

# %%
x = jax.random.normal(jax.random.key(0), (6,))
s = jsoftmax.softmax(x)
J_formula = jnp.diag(s) - jnp.outer(s, s)

comparisons = {
    "jax.jacrev(jsoftmax.softmax)": jax.jit(jax.jacrev(jsoftmax.softmax))(x),
    "jax.jacrev(jax.nn.softmax)": jax.jit(jax.jacrev(jax.nn.softmax))(x),
    "jsoftmax.softmax_jacobian": jsoftmax.softmax_jacobian(x),
}
for name, J in comparisons.items():
    print(f"max |diag(s) - s s^T - {name}| = {float(jnp.max(jnp.abs(J_formula - J))):.2e}")

print(f"max |row sums| = {float(jnp.max(jnp.abs(J_formula.sum(axis=1)))):.2e}")
print("symmetric:", bool(jnp.allclose(J_formula, J_formula.T)))

J_log = jax.jit(jax.jacrev(jsoftmax.log_softmax))(x)
print(
    "max |I - 1 s^T - jacrev(log_softmax)| =",
    f"{float(jnp.max(jnp.abs(jnp.eye(6) - s[None, :] - J_log))):.2e}",
)
print(
    "max |I - 1 s^T - log_softmax_jacobian| =",
    f"{float(jnp.max(jnp.abs(jnp.eye(6) - s[None, :] - jsoftmax.log_softmax_jacobian(x)))):.2e}",
)

# %% [markdown]
# The differences are float32 round-off (about $10^{-8}$). The VJP itself, for a random
# cotangent $g$, agrees with $J^\top g$:

# %%
g = jax.random.normal(jax.random.key(1), (6,))
_, vjp = jax.vjp(jsoftmax.softmax, x)
(x_bar,) = vjp(g)
print(f"max |vjp(g) - J^T g|          = {float(jnp.max(jnp.abs(x_bar - J_formula.T @ g))):.2e}")
print(f"max |vjp(g) - s*(g - <g, s>)| = {float(jnp.max(jnp.abs(x_bar - s * (g - g @ s)))):.2e}")

# %% [markdown]
# ## 4. The negative log-likelihood and its gradient
#
# For one example with logits $z \in \mathbb{R}^C$ and integer label $y$, the negative
# log-likelihood (the cross-entropy against a one-hot target) is
#
# $$
# L(z) = -\log \sigma_y(z) = -z_y + \log \sum_k e^{z_k}, \qquad
# \sigma(z) = \mathrm{softmax}(z).
# $$
#
# Differentiating the two terms separately: $\partial(-z_y)/\partial z_i = -\delta_{iy}$, and
# $\partial \log\sum_k e^{z_k} / \partial z_i = e^{z_i} / \sum_k e^{z_k} = \sigma_i$. Hence
#
# $$
# \boxed{\frac{\partial L}{\partial z_i} = \sigma_i - \delta_{iy}}
# \qquad\text{i.e.}\qquad \nabla_z L = \sigma(z) - \mathrm{onehot}(y),
# $$
#
# which is $\sigma_y - 1 \in (-1, 0)$ for the true class and $\sigma_i \in (0, 1)$ for the
# others. The same result follows from the chain rule through the Jacobian of section 3:
# $\partial L / \partial z_i = -\frac{1}{\sigma_y}\,\sigma_y(\delta_{yi} - \sigma_i)
# = \sigma_i - \delta_{iy}$.
#
# Some write-ups instead give $\partial L / \partial z_i = -1 - \sigma_i$ for the true class
# $i = y$ (the sign of $\sigma_i$ flipped). Two quick arguments say it cannot be right:
#
# * **sign/size:** $L = \mathrm{logsumexp}(z) - z_y$, and $\partial\,\mathrm{logsumexp} /
#   \partial z_y = \sigma_y \in (0, 1)$, so raising the true logit by $\varepsilon$ lowers the
#   loss by *less* than $\varepsilon$. The slope lies in $(-1, 0)$; $-1 - \sigma_y < -1$.
# * **shift invariance:** $L(z + c\mathbf{1}) = L(z)$, so the gradient must sum to zero.
#   $\sum_i (\sigma_i - \delta_{iy}) = 1 - 1 = 0$, whereas replacing the true-class entry by
#   $-1 - \sigma_y$ gives the sum $(1 - \sigma_y) - 1 - \sigma_y = -2\sigma_y \ne 0$.
#
# Numerically, in float64: both candidate gradients against central finite differences
# $(L(z + h e_i) - L(z - h e_i)) / 2h$ and against `jax.grad` of `jsoftmax.cross_entropy` and of
# a plain `-jax.nn.log_softmax(z)[y]`.

# %%
with jax.enable_x64(True):
    z = jax.random.normal(jax.random.key(2), (5,), jnp.float64)
    y = 3
    sigma = jsoftmax.softmax(z)
    onehot = jax.nn.one_hot(y, 5, dtype=jnp.float64)

    def nll(z):
        return jsoftmax.cross_entropy(z[None, :], jnp.array([y]))

    def nll_plain(z):
        return -jax.nn.log_softmax(z)[y]

    h = 1e-6

    @jax.jit
    def finite_differences(z):
        # central differences along each basis vector e_i, all at once with vmap
        basis = jnp.eye(z.shape[0], dtype=z.dtype)
        return jax.vmap(lambda e: (nll(z + h * e) - nll(z - h * e)) / (2 * h))(basis)

    finite_diff = finite_differences(z)
    grad_jsoftmax = jax.jit(jax.grad(nll))(z)
    grad_plain = jax.jit(jax.grad(nll_plain))(z)

    correct = sigma - onehot  # A: σ_i − δ_iy
    wrong = jnp.where(onehot == 1, -1.0 - sigma, sigma)  # B: −1 − σ_y at the true class

    print(f"label y = {y}, sigma = {np.asarray(sigma).round(4)}\n")
    header = ("i", "finite diff", "jax.grad", "A: σ − onehot", "B: −1 − σ_y")
    print(f"{header[0]:>2} {header[1]:>12} {header[2]:>12} {header[3]:>14} {header[4]:>12}")
    for i in range(5):
        print(
            f"{i:>2} {float(finite_diff[i]):>12.6f} {float(grad_jsoftmax[i]):>12.6f} "
            f"{float(correct[i]):>14.6f} {float(wrong[i]):>12.6f}"
        )
    print()
    for name, cand in (("A: σ − onehot", correct), ("B: −1 − σ_y", wrong)):
        err_fd = float(jnp.max(jnp.abs(cand - finite_diff)))
        err_grad = float(jnp.max(jnp.abs(cand - grad_jsoftmax)))
        print(
            f"{name:>16}: max |cand − finite diff| = {err_fd:.2e}, "
            f"max |cand − jax.grad| = {err_grad:.2e}, sum = {float(cand.sum()):+.2e}"
        )
    print(
        "\njax.grad(jsoftmax.cross_entropy) vs jax.grad(-jax.nn.log_softmax(z)[y]):",
        f"{float(jnp.max(jnp.abs(grad_jsoftmax - grad_plain))):.2e}",
    )

# %% [markdown]
# $\sigma - \mathrm{onehot}$ matches finite differences to about $10^{-10}$ (the finite
# difference's own error) and `jax.grad` to round-off; the candidate $-1 - \sigma_y$ is off by
# exactly $2\sigma_y$ at the true class and its entries do not sum to zero.
#
# For a batch, `jsoftmax.cross_entropy` takes the mean over the $B$ examples, so its gradient
# is $(\sigma(z_b) - \mathrm{onehot}(y_b)) / B$ row by row:

# %%
logits = jax.random.normal(jax.random.key(3), (8, 10))
labels = jax.random.randint(jax.random.key(4), (8,), 0, 10)
grad = jax.jit(jax.grad(jsoftmax.cross_entropy))(logits, labels)
closed_form = (jsoftmax.softmax(logits) - jax.nn.one_hot(labels, 10)) / 8
print(f"max |grad - (softmax - onehot) / B| = {float(jnp.max(jnp.abs(grad - closed_form))):.2e}")

# %% [markdown]
# ## 5. Softmax under a temperature
#
# Dividing the logits by a temperature $T > 0$ before the softmax,
# $\sigma(z / T)$, interpolates between the one-hot of the $\arg\max$ ($T \to 0$) and the
# uniform distribution ($T \to \infty$) without changing the ranking. The entropy
# $H = -\sum_i \sigma_i \log \sigma_i$ rises monotonically from 0 to $\log C$; it is computed
# from `log_softmax` so that zero probabilities contribute $0 \cdot (-\text{large}) = 0$ and
# not `nan`.

# %%
z = jnp.array([2.0, 1.0, 0.2, -0.5, -1.5, 0.8])
temperatures = [0.25, 0.5, 1.0, 2.0, 5.0]

fig, (ax_bar, ax_ent) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
width = 0.8 / len(temperatures)
for k, t in enumerate(temperatures):
    p = jsoftmax.softmax(z / t)
    ax_bar.bar(np.arange(len(z)) + (k - 2) * width, p, width, label=f"T = {t}")
ax_bar.set_xticks(np.arange(len(z)), [f"z={v:g}" for v in z])
ax_bar.set_ylabel("probability")
ax_bar.set_title("softmax(z / T)")
ax_bar.legend()

ts = jnp.logspace(-2, 2, 200)
logp = jax.vmap(lambda t: jsoftmax.log_softmax(z / t))(ts)
entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
ax_ent.semilogx(ts, entropy)
ax_ent.axhline(np.log(len(z)), ls="--", c="gray", label="log C (uniform)")
ax_ent.set_xlabel("temperature T")
ax_ent.set_ylabel("entropy (nats)")
ax_ent.set_title("entropy of softmax(z / T)")
ax_ent.legend()
plt.show()

print("T = 0.01:", jsoftmax.softmax(z / 0.01).round(4))
print("T = 100: ", jsoftmax.softmax(z / 100.0).round(4))

# %% [markdown]
# Next: [02_custom_vjp_and_check_grads](02_custom_vjp_and_check_grads.ipynb) shows how these
# rules are written as `jax.custom_vjp`, what they save for the backward pass, and how they are
# checked.
