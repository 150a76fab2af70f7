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
# # 6. Batch norm and dropout by hand: train mode, eval mode, running statistics
#
# Two layers behave differently in training and at evaluation, which is where hand-written
# backprop most often goes wrong. CSI 5340 homework 2 trains each MNIST model plain, with dropout
# and with batch norm ([`models.mnist_zoo`](../jaxgd/models.py)); here are the two layers by hand.
#
# ## Batch norm
#
# Per feature, over the $m$ values of the batch: $\mu = \frac1m \sum x$,
# $\sigma^2 = \frac1m \sum (x - \mu)^2$, $\hat x = (x - \mu)/\sqrt{\sigma^2 + \epsilon}$,
# $y = \gamma \hat x + \beta$. In training $\mu$ and $\sigma^2$ are the batch's own, so they depend
# on every $x$, and the backward must follow those paths too:
#
# $$\bar\beta = \textstyle\sum \bar y, \qquad \bar\gamma = \sum \bar y\, \hat x, \qquad
#   \bar x = \frac{\gamma}{m \sqrt{\sigma^2 + \epsilon}} \left( m\, \bar y - \bar\beta - \hat x\, \bar\gamma \right).$$
#
# At evaluation the layer normalises with *running* statistics, constants, so
# $\bar x = \bar y\, \gamma / \sqrt{r_{\sigma^2} + \epsilon}$. The running statistics move as
# PyTorch's do: $r \leftarrow (1 - \text{momentum})\, r + \text{momentum} \cdot$ (batch statistic),
# with the unbiased $\sigma^2 m / (m - 1)$ for the variance.

# %%
import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

import jaxgd
from jaxgd import layers

jax.config.update("jax_enable_x64", True)


class MyBatchNorm(layers.BatchNorm):  # jaxgd's init (scale 1, shift 0; running mean 0, variance 1) and fields
    def forward(self, params, state, x, *, train=False, key=None):
        if train:
            m = x.shape[0]
            mean, var = x.mean(0), x.var(0)
            state = {
                "mean": (1 - self.momentum) * state["mean"] + self.momentum * mean,
                "var": (1 - self.momentum) * state["var"] + self.momentum * var * m / (m - 1),
            }
        else:
            mean, var = state["mean"], state["var"]
        inv = 1 / jnp.sqrt(var + self.eps)
        x_hat = (x - mean) * inv
        return params["scale"] * x_hat + params["shift"], state, (x_hat, inv, train)

    def backward(self, params, residuals, dy):
        x_hat, inv, train = residuals
        dshift, dscale = dy.sum(0), (dy * x_hat).sum(0)
        if not train:
            return {"scale": dscale, "shift": dshift}, dy * params["scale"] * inv
        m = dy.shape[0]
        return {"scale": dscale, "shift": dshift}, params["scale"] * inv / m * (m * dy - dshift - x_hat * dscale)

    def __str__(self):
        return "my_batch_norm"


# %% [markdown]
# ### Checked against `jax.vjp` and against jaxgd's layer, in both modes

# %%
bn, ref = MyBatchNorm(), layers.batch_norm()
params, state, _ = bn.init(None, (5,), jnp.float64)
kx, kd, kp = jax.random.split(jax.random.PRNGKey(0), 3)
x = 3.0 + 2.0 * jax.random.normal(kx, (16, 5), jnp.float64)
dy = jax.random.normal(kd, (16, 5), jnp.float64)
params = {"scale": 1 + 0.1 * jax.random.normal(kp, (5,), jnp.float64), "shift": jnp.full((5,), 0.3)}
state = {"mean": jnp.full((5,), 2.5), "var": jnp.full((5,), 3.0)}
gaps = {}
for train in (True, False):
    y, new_state, res = bn.forward(params, state, x, train=train)
    ours = bn.backward(params, res, dy)
    _, vjp = jax.vjp(lambda p, x: bn.forward(p, state, x, train=train)[0], params, x)
    y_ref, _, res_ref = ref.forward(params, state, x, train=train)
    mode = "train" if train else "eval"
    gaps[f"{mode} vs jax.vjp"] = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(vjp(dy)))
    )
    gaps[f"{mode} vs jaxgd"] = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref.backward(params, res_ref, dy)))
    )
print({k: f"{v:.1e}" for k, v in gaps.items()})

# %% [markdown]
# ### A trap: never check batch norm with an all-ones cotangent
#
# In training mode each feature of $y$ sums to $m\beta$ whatever $x$ is (the normalised
# values sum to zero), so $\bar y = 1$ gives $\bar x = 0$ for *any* backward that gets the mean's
# path right, and also for many that don't. `jaxgd.check` draws random cotangents for that reason.

# %%
_, _, res = bn.forward(params, state, x, train=True)
ones_dx = float(jnp.max(jnp.abs(bn.backward(params, res, jnp.ones_like(x))[1])))
print(f"largest |dx| for dy = 1: {ones_dx:.1e}")
bn_report = jaxgd.check(MyBatchNorm(), (5,))
print(bn_report)

# %% [markdown]
# ### Running statistics
#
# Feed training batches drawn with mean 3 and variance 4: the running statistics approach them
# at a rate set by the momentum; evaluation then normalises new data with them.

# %%
s = {"mean": jnp.zeros(5), "var": jnp.ones(5)}
means, varis = [], []
for t in range(60):
    xb = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(100 + t), (32, 5), jnp.float64)
    _, s, _ = bn.forward({"scale": jnp.ones(5), "shift": jnp.zeros(5)}, s, xb, train=True)
    means.append(float(s["mean"][0]))
    varis.append(float(s["var"][0]))
plt.plot(means, label="running mean (feature 0)")
plt.plot(varis, label="running variance (feature 0)")
plt.axhline(3, ls=":", c="C0"), plt.axhline(4, ls=":", c="C1"), plt.xlabel("training step"), plt.legend()
plt.title("batch norm's running statistics, momentum 0.1")
plt.show()
x_new = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(7), (1000, 5), jnp.float64)
y_eval = bn.forward({"scale": jnp.ones(5), "shift": jnp.zeros(5)}, s, x_new, train=False)[0]
print(f"eval-mode output: mean {float(y_eval.mean()):.3f}, std {float(y_eval.std()):.3f} (about 0 and 1)")

# %% [markdown]
# ## Dropout
#
# Inverted dropout with rate $r$ (the probability of dropping a unit): in training
# $y = x \odot m / (1 - r)$ with $m_i \sim \mathrm{Bernoulli}(1 - r)$, so that $E[y] = x$; at
# evaluation $y = x$. The backward reuses the same mask: $\bar x = \bar y \odot m / (1 - r)$. The
# mask is a residual, so it must come from the forward's key, never be drawn again.


# %%
@dataclasses.dataclass(frozen=True)
class MyDropout(layers.Layer):
    rate: float = 0.5

    def forward(self, params, state, x, *, train=False, key=None):
        if not train:
            return x, state, None
        keep = jax.random.bernoulli(key, 1 - self.rate, x.shape)
        return jnp.where(keep, x / (1 - self.rate), 0.0), state, keep

    def backward(self, params, keep, dy):
        return {}, dy if keep is None else jnp.where(keep, dy / (1 - self.rate), 0.0)


drop = MyDropout(0.5)
xd = jnp.ones((1, 8))
samples = jax.vmap(lambda k: drop.forward({}, {}, xd, train=True, key=k)[0])(
    jax.random.split(jax.random.PRNGKey(0), 2000)
)
mean_error = float(jnp.max(jnp.abs(samples.mean(0) - xd)))
print(f"E[y] over 2000 masks, largest distance from x: {mean_error:.3f}; one mask: {samples[0, 0]}")
drop_report = jaxgd.check(MyDropout(0.5), (8,))
print(drop_report)

# %% [markdown]
# **What to take away**: a layer with a mode has two backwards; batch norm's training one
# carries the paths through the batch statistics, dropout's reuses its forward's mask. Both are
# proven like every other layer: `jaxgd.check` runs each mode. Next:
# [7. attention by hand](07_attention_by_hand.py), its backward and FlashAttention-2's.

# %%
CHECKS = {
    "gaps": gaps,
    "ones_cotangent_dx": ones_dx,
    "batch_norm_passed": bn_report.passed,
    "running_mean": means[-1],
    "running_var": varis[-1],
    "dropout_mean_error": mean_error,
    "dropout_passed": drop_report.passed,
}
