# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. The chain rule by hand: the matrix chain
#
# CSI 5340 homework 2 opens with a small computation whose gradient is derived on paper:
# three $K \times K$ matrices $A, B, C$ and a vector $x$,
#
# $$y = A x,\quad u = \sigma(y),\quad v = B x,\quad z = u + v,\quad w = C z,\quad L = \lVert w \rVert^2 .$$
#
# Backpropagation is the chain rule applied from the loss back to the inputs, one node at a
# time, each node reusing the gradient of the node after it. Here we derive it, write it in six
# lines, and check it two independent ways: against `jax.grad` (automatic differentiation) and
# against finite differences (no differentiation at all). jaxgd's version is
# [`backprop.matrix_chain_grads`](../jaxgd/backprop.py); the experiment that trains with it is
# [`jaxgd matrix-chain`](../jaxgd/experiments/matrix_chain.py).

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

from jaxgd import backprop, gradcheck

jax.config.update("jax_enable_x64", True)  # float64, so that the checks can be tight
K = 4
key_p, key_x = jax.random.split(jax.random.PRNGKey(0))
params = backprop.init_matrix_chain(key_p, K, dtype=jnp.float64)
x = jax.random.normal(key_x, (K,), jnp.float64)

# %% [markdown]
# ## The forward pass, keeping what the backward needs
#
# The backward pass needs some of the forward's intermediate values: $x$, $u$, $z$ and $w$.


# %%
def forward(p, x):
    y = p["A"] @ x
    u = jax.nn.sigmoid(y)
    v = p["B"] @ x
    z = u + v
    w = p["C"] @ z
    return w @ w, (x, u, z, w)


loss, cache = forward(params, x)
print(f"L = {loss:.6f}")

# %% [markdown]
# ## The backward pass, one node at a time
#
# Start from the end and walk back. Each line is one local derivative times the gradient that
# arrives from the node after it:
#
# | node | local rule | gradient |
# |---|---|---|
# | $L = w^\top w$ | $\partial L / \partial w = 2w$ | $\bar w = 2w$ |
# | $w = C z$ | $\bar C = \bar w\, z^\top$, $\bar z = C^\top \bar w$ | |
# | $z = u + v$ | a sum passes its gradient to both terms | $\bar u = \bar v = \bar z$ |
# | $v = B x$ | $\bar B = \bar v\, x^\top$ | |
# | $u = \sigma(y)$ | $\sigma'(y) = \sigma(y)(1 - \sigma(y)) = u (1 - u)$ | $\bar y = \bar u \odot u (1 - u)$ |
# | $y = A x$ | $\bar A = \bar y\, x^\top$ | |
#
# A matrix-vector product $m = M a$ always gives $\bar M = \bar m\, a^\top$ (an outer product, the
# shape of $M$) and $\bar a = M^\top \bar m$.


# %%
def backward(p, cache):
    x, u, z, w = cache
    dw = 2 * w
    dC = jnp.outer(dw, z)
    dz = p["C"].T @ dw
    dB = jnp.outer(dz, x)  # dv = dz
    dy = dz * u * (1 - u)  # du = dz, times sigmoid's derivative
    dA = jnp.outer(dy, x)
    return {"A": dA, "B": dB, "C": dC}


ours = backward(params, cache)

# %% [markdown]
# ## Check 1: against `jax.grad`
#
# `jax.grad` differentiates `forward` by tracing it; it knows nothing of our derivation.

# %%
auto = jax.grad(lambda p: forward(p, x)[0])(params)
vs_autodiff = max(float(jnp.max(jnp.abs(ours[n] - auto[n]))) for n in "ABC")
print(f"largest |ours - jax.grad| = {vs_autodiff:.1e}")

# %% [markdown]
# ## Check 2: against finite differences
#
# A derivative is a limit of difference quotients: $\partial L/\partial \theta_i \approx
# (L(\theta + h e_i) - L(\theta - h e_i)) / 2h$. `gradcheck.check_gradients` does this for every
# coordinate (with a fourth-order formula and a step chosen for float64) and reports INF265
# project 1's relative error $|g - \hat g| / \max(|g|, |\hat g|)$. The project's bar is $10^{-6}$.

# %%
report = gradcheck.check_gradients(lambda p, x: forward(p, x)[0], lambda p, x: backward(p, forward(p, x)[1]), params, x)
worst_fd = report["fd_max"]
print(f"largest relative error against finite differences = {worst_fd:.1e}")
print(
    "jaxgd's own derivation agrees too:",
    max(float(jnp.max(jnp.abs(backprop.matrix_chain_grads(params, x)[n] - ours[n]))) for n in "ABC"),
)

# %% [markdown]
# ## Using the gradient: gradient descent
#
# With the gradient in hand, $\theta \leftarrow \theta - \eta\, \partial L / \partial \theta$ drives
# $L$ towards its minimum 0 (here $w = 0$ is reachable). The hand gradient and `jax.grad` take the
# same steps.


# %%
def descend(grad_fn, p, steps=100, lr=0.1 / K):
    curve = []
    for _ in range(steps):
        curve.append(float(forward(p, x)[0]))
        p = jax.tree_util.tree_map(lambda a, g: a - lr * g, p, grad_fn(p))
    return curve


hand_curve = descend(lambda p: backward(p, forward(p, x)[1]), params)
auto_curve = descend(jax.grad(lambda p: forward(p, x)[0]), params)
plt.semilogy(hand_curve, label="hand gradient")
plt.semilogy(auto_curve, "--", label="jax.grad")
plt.xlabel("step"), plt.ylabel("L"), plt.legend(), plt.title(f"matrix chain, K = {K}")
plt.show()
curves_gap = max(abs(a - b) for a, b in zip(hand_curve, auto_curve))
print(f"loss {hand_curve[0]:.3f} -> {hand_curve[-1]:.2e}; curves differ by at most {curves_gap:.1e}")

# %% [markdown]
# **What to take away**: backprop is bookkeeping. Every node needs its local derivative and the
# gradient of its output; matrix products turn into outer products and transposes. Next:
# [2. an MLP's backward](02_mlp_backward.py), where the same bookkeeping becomes a recursion.

# %%
CHECKS = {
    "vs_autodiff": vs_autodiff,
    "vs_finite_differences": worst_fd,
    "descent_gap": curves_gap,
    "loss_ratio": hand_curve[-1] / hand_curve[0],
}
