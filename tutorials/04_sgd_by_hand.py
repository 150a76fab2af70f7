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
# # 4. SGD with momentum and L2, by hand
#
# Every course report here trains with `torch.optim.SGD(lr, momentum, weight_decay)`. Its update,
# for a parameter $p$ with gradient $g$, is five lines:
#
# $$g \leftarrow g + \lambda p \quad\text{(weight decay: the gradient of } \tfrac{\lambda}{2}\lVert p\rVert^2)$$
# $$b \leftarrow g \text{ at the first step}, \qquad b \leftarrow \mu b + (1 - \tau) g \text{ afterwards}$$
# $$d \leftarrow g + \mu b \text{ (Nesterov)}, \quad\text{else } d \leftarrow b$$
# $$p \leftarrow p - \eta\, d$$
#
# with learning rate $\eta$, momentum $\mu$, dampening $\tau$. We write it, prove it equal to
# jaxgd's ([`optim.sgd`](../jaxgd/optim.py)), to optax's `add_decayed_weights` + `sgd`, and to
# `torch.optim.SGD` (if PyTorch is installed: `pip install -e '.[peers]' in the jaxgd checkout`), then watch what
# momentum, Nesterov and dampening do on a valley.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from jaxgd import models, optim

jax.config.update("jax_enable_x64", True)


def sgd_step(p, b, g, first, lr, mu, wd, dampening=0.0, nesterov=False):
    g = g + wd * p
    b = g if first else mu * b + (1 - dampening) * g
    d = g + mu * b if nesterov else b
    return p - lr * d, b


# %% [markdown]
# ## The same steps four ways
#
# A small MLP on random data, 20 steps on fixed minibatches, so that every optimizer sees the same
# gradients at the same parameters. All in float64.

# %%
model = models.mlp((10, 16, 3))
params, _ = model.init(jax.random.PRNGKey(0), jnp.float64)
kx, ky = jax.random.split(jax.random.PRNGKey(1))
X = jax.random.normal(kx, (20, 32, 10), jnp.float64)  # 20 minibatches of 32
Y = jax.random.randint(ky, (20, 32), 0, 3)
grad = jax.jit(lambda p, x, y: model.grad(p, model.empty_state(), x, y)[2])  # hand backprop
lr, mu, wd = 0.1, 0.9, 1e-3
leaves = jax.tree_util.tree_leaves


def by_hand(nesterov):
    p = params
    b = jax.tree_util.tree_map(jnp.zeros_like, p)
    for t in range(20):
        g = grad(p, X[t], Y[t])
        step = jax.tree_util.tree_map(lambda p, b, g: sgd_step(p, b, g, t == 0, lr, mu, wd, nesterov=nesterov), p, b, g)
        p = jax.tree_util.tree_map(lambda s: s[0], step, is_leaf=lambda s: isinstance(s, tuple))
        b = jax.tree_util.tree_map(lambda s: s[1], step, is_leaf=lambda s: isinstance(s, tuple))
    return p


def with_optimizer(init, update):
    p, s = params, init(params)
    for t in range(20):
        p, s = update(grad(p, X[t], Y[t]), s, p)
    return p


def jaxgd_sgd(nesterov):
    opt, hp = optim.sgd(nesterov=nesterov), optim.sgd_hyperparams(lr, mu, wd)
    return with_optimizer(opt.init, lambda g, s, p: opt.update(g, s, p, hp))


def optax_sgd(nesterov):
    tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=mu, nesterov=nesterov))

    def update(g, s, p):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return with_optimizer(tx.init, update)


def torch_sgd(nesterov):
    try:
        import torch
    except ImportError:
        return None
    tensors = [torch.tensor(np.asarray(a), requires_grad=True) for a in leaves(params)]
    opt = torch.optim.SGD(tensors, lr=lr, momentum=mu, weight_decay=wd, nesterov=nesterov)
    treedef = jax.tree_util.tree_structure(params)
    for t in range(20):
        p = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(v.detach().numpy()) for v in tensors])
        for v, g in zip(tensors, leaves(grad(p, X[t], Y[t]))):
            v.grad = torch.tensor(np.asarray(g))
        opt.step()
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(v.detach().numpy()) for v in tensors])


def gap(a, b):
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(leaves(a), leaves(b)))


gaps = {}
for nesterov in (False, True):
    ours = by_hand(nesterov)
    others = {"jaxgd": jaxgd_sgd(nesterov), "optax": optax_sgd(nesterov), "torch": torch_sgd(nesterov)}
    for name, p in others.items():
        gaps[f"{name}{' nesterov' if nesterov else ''}"] = None if p is None else gap(ours, p)
for name, v in gaps.items():
    print(f"by hand vs {name:17s}: " + ("PyTorch not installed" if v is None else f"largest gap {v:.1e}"))

# %% [markdown]
# The gaps are float64 rounding (or exactly 0): the same update. Note the order inside optax's
# chain: the decay is added to the gradient *before* the momentum trace, as PyTorch does, so the
# decay enters the buffer. (Swap them and the two drift apart.) DD2424's "L2" is different again:
# $\lambda \lVert W \rVert^2$ in the loss, on the weights only, with gradient $2 \lambda W$
# (`train.Step(l2=...)`), where PyTorch's weight decay touches every parameter, biases included
# (jaxgd's `optim.sgd(wd_mask=optim.weights_only)` restricts it).
#
# ## What momentum, Nesterov and dampening change
#
# On a long narrow valley, $f(u, v) = \frac12 (u^2 + 30 v^2)$, plain SGD must take a small step
# (the steep direction limits it) and crawls along the flat one. Momentum accumulates the
# consistent flat-direction gradient; Nesterov looks ahead and damps the oscillation across the
# valley; dampening $\tau$ scales down each gradient's entry into the buffer.


# %%
def valley(z):
    return 0.5 * (z[0] ** 2 + 30 * z[1] ** 2)


def path(steps=60, lr=0.03, **kw):
    z, b, out = jnp.array([-9.0, 1.5]), jnp.zeros(2), []
    for t in range(steps):
        out.append(z)
        z, b = sgd_step(z, b, jax.grad(valley)(z), t == 0, lr, wd=0.0, **kw)
    return jnp.stack(out)


runs = {
    "plain SGD": path(mu=0.0),
    "momentum 0.9": path(mu=0.9),
    "Nesterov 0.9": path(mu=0.9, nesterov=True),
    "momentum 0.9, dampening 0.5": path(mu=0.9, dampening=0.5),
}
fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.5))
u, v = np.meshgrid(np.linspace(-10, 2, 100), np.linspace(-2, 2, 100))
ax.contour(u, v, 0.5 * (u**2 + 30 * v**2), 20, colors="0.85")
for name, zs in runs.items():
    ax.plot(zs[:, 0], zs[:, 1], ".-", ms=3, label=name)
    bx.semilogy([float(valley(z)) for z in zs], label=name)
ax.set_title("paths on f = (u^2 + 30 v^2) / 2"), bx.set_title("f per step"), bx.set_xlabel("step")
bx.legend(fontsize=8)
plt.show()
final = {name: float(valley(zs[-1])) for name, zs in runs.items()}
print({k: f"{v:.1e}" for k, v in final.items()})

# %% [markdown]
# **What to take away**: an optimizer is a small pure function of (parameters, gradient, state).
# jaxgd keeps that function by hand and proves it equal to the libraries'. Next:
# [5. from a Python loop to one compiled program](05_compiled_epoch.py).

# %%
CHECKS = {"gaps": gaps, "final_loss": final}
