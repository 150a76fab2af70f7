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
# # 2. An MLP's backward: the delta recursion
#
# INF265 project 1 trains a multilayer perceptron with backpropagation written by hand. For
# layers $l = 1, \dots, L$ with weights $W_l$, biases $b_l$ and activation $f$ (ReLU here; the
# last layer is linear):
#
# $$z_l = a_{l-1} W_l + b_l, \qquad a_l = f(z_l), \qquad a_0 = X,$$
#
# and the loss is the batch mean of the softmax cross-entropy of $z_L$. The backward pass is one
# recursion on $\delta_l = \partial \mathcal{L} / \partial z_l$:
#
# $$\delta_L = \tfrac{1}{n}(\mathrm{softmax}(z_L) - Y), \qquad
#   \delta_{l} = (\delta_{l+1} W_{l+1}^\top) \odot f'(z_{l}),$$
# $$\frac{\partial \mathcal{L}}{\partial W_l} = a_{l-1}^\top \delta_l, \qquad
#   \frac{\partial \mathcal{L}}{\partial b_l} = \textstyle\sum_i \delta_{l,i}.$$
#
# We write it, check it, then see the same computation done layer by layer by
# [`jaxgd.layers`](../jaxgd/layers.py), and DD2424's closed form fall out as the one-layer case.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

from jaxgd import backprop, losses, models

jax.config.update("jax_enable_x64", True)
sizes = (20, 16, 8, 3)  # a small MLP: 20 inputs, 3 classes
kp, kx, kw = jax.random.split(jax.random.PRNGKey(0), 3)
params = backprop.init_mlp(kp, sizes, dtype=jnp.float64)  # [{"W": (20, 16), "b": (16,)}, ...]
X = jax.random.normal(kx, (64, sizes[0]), jnp.float64)
y = jnp.argmax(X @ jax.random.normal(kw, (sizes[0], sizes[-1]), jnp.float64), axis=1)  # labels a linear rule gives

# %% [markdown]
# ## Forward, keeping every $z_l$ and $a_l$


# %%
def forward(params, X):
    zs, acts = [], [X]
    for l, p in enumerate(params):
        z = acts[-1] @ p["W"] + p["b"]
        zs.append(z)
        acts.append(z if l == len(params) - 1 else jax.nn.relu(z))
    return zs, acts


def loss(params, X, y):
    return losses.softmax_cross_entropy(forward(params, X)[0][-1], y)


# %% [markdown]
# ## Backward: the delta recursion
#
# Read it bottom-up against the equations above. `(z > 0)` is ReLU's derivative $f'(z)$.


# %%
def backward(params, zs, acts, y):
    n, L = len(y), len(params)
    delta = (jax.nn.softmax(zs[-1]) - jax.nn.one_hot(y, zs[-1].shape[1])) / n
    grads = [None] * L
    for l in reversed(range(L)):
        grads[l] = {"W": acts[l].T @ delta, "b": delta.sum(0)}
        if l > 0:
            delta = (delta @ params[l]["W"].T) * (zs[l - 1] > 0)
    return grads


ours = backward(params, *forward(params, X), y)
auto = jax.grad(loss)(params, X, y)
gap = lambda a, b: max(
    float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
)
vs_autodiff = gap(ours, auto)
print(f"largest |ours - jax.grad| = {vs_autodiff:.1e}")

# %% [markdown]
# jaxgd has INF265's recursion too, over its own cache of $z$ and $a$
# ([`backprop.mlp_backward`](../jaxgd/backprop.py)):

# %%
_, _, inf265 = backprop.mlp_loss_and_grads(params, X, y)
vs_inf265 = gap(ours, inf265)
print(f"largest |ours - backprop.mlp_backward| = {vs_inf265:.1e}")

# %% [markdown]
# ## The same, layer by layer
#
# The recursion interleaves two kinds of step: a dense layer ($\delta \mapsto \delta W^\top$, with
# $\bar W = a^\top \delta$) and an activation ($\delta \mapsto \delta \odot f'(z)$). `jaxgd.layers`
# makes each a layer with its own `backward(params, residuals, dy) -> (dparams, dx)`, and
# `models.Model.grad` runs them in reverse. The model's parameters have one entry per layer, `{}`
# for the ReLUs:

# %%
model = models.mlp(sizes, "relu")
model_params = []
for p in params:
    model_params += [p, {}]
model_params = model_params[:-1]  # no activation after the last dense layer
value, logits, layer_grads, _ = model.grad(model_params, model.empty_state(), X, y)
vs_layers = gap([g for g in layer_grads if g], ours)
print(model.layers)
print(f"loss {value:.6f}; largest |layers - ours| = {vs_layers:.1e}")

# %% [markdown]
# One dense layer's backward is exactly the two lines of the recursion
# ([`layers.Dense.backward`](../jaxgd/layers.py)):

# %%
dense = model.layers[0]
_, _, res = dense.forward(params[0], {}, X)
dparams, dx = dense.backward(params[0], res, jnp.ones((64, sizes[1])))
print(
    "dW == X^T dy:",
    bool(jnp.allclose(dparams["W"], X.T @ jnp.ones((64, sizes[1])))),
    "| dx == dy W^T:",
    bool(jnp.allclose(dx, jnp.ones((64, sizes[1])) @ params[0]["W"].T)),
)

# %% [markdown]
# ## DD2424's closed form is the one-layer case
#
# DD2424 assignment 1 trains $P = \mathrm{softmax}(XW + b)$ with cost
# $J = \frac1n \sum_i \mathrm{CE}(P_i, y_i) + \lambda \lVert W \rVert^2$. With $L = 1$ the recursion stops
# at once: $\delta_1 = \frac1n (P - Y)$, so
# $\partial J / \partial W = \frac1n X^\top (P - Y) + 2 \lambda W$ and $\partial J/\partial b = \frac1n
# \sum_i (P - Y)_i$: the assignment's formula (written there for column samples, $G X^\top$).

# %%
lam = 0.01
soft = backprop.init_mlp(kp, (sizes[0], sizes[-1]), dtype=jnp.float64)
zs, acts = forward(soft, X)
recursion = backward(soft, zs, acts, y)
recursion[0]["W"] = recursion[0]["W"] + 2 * lam * soft[0]["W"]
closed = backprop.linear_softmax_grads(soft, X, y, lam)
auto_dd = jax.grad(backprop.linear_softmax_cost)(soft, X, y, lam)
vs_closed_form = max(gap(recursion, closed), gap(closed, auto_dd))
print(f"recursion vs DD2424's closed form vs jax.grad: largest gap {vs_closed_form:.1e}")

# %% [markdown]
# ## Where the gradient goes
#
# The size of $\delta_l$ at each layer shows how the error signal travels back through the network:

# %%
n, L = len(y), len(params)
zs_full, _ = forward(params, X)
delta = (jax.nn.softmax(zs_full[-1]) - jax.nn.one_hot(y, sizes[-1])) / n
norms = [float(jnp.linalg.norm(delta))]
for l in reversed(range(1, L)):
    delta = (delta @ params[l]["W"].T) * (zs_full[l - 1] > 0)
    norms.append(float(jnp.linalg.norm(delta)))
plt.bar([f"delta_{l}" for l in range(L, 0, -1)], norms)
plt.ylabel("||delta_l||"), plt.title("the error signal, from the output back")
plt.show()

# %% [markdown]
# **What to take away**: the backward of a network is the backward of each layer, chained; the
# delta recursion is that chain written for dense layers and one activation. Next:
# [3. write your own layer](03_your_own_layer.py) and prove its backward with one call.

# %%
CHECKS = {"vs_autodiff": vs_autodiff, "vs_inf265": vs_inf265, "vs_layers": vs_layers, "vs_closed_form": vs_closed_form}
