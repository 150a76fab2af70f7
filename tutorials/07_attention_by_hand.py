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
# # 7. Attention by hand: its backward, then FlashAttention-2's
#
# Scaled dot-product attention (Vaswani et al. 2017) maps queries $Q$ ($n \times d$), keys $K$
# ($m \times d$) and values $V$ ($m \times d_v$) to
#
# $$S = \tfrac{1}{\sqrt d}\, Q K^\top, \qquad P = \mathrm{softmax}_\text{rows}(S), \qquad O = P V.$$
#
# We derive its backward, check it against `jax.grad` and `jaxgd.check`, let the checker name a
# classic mistake, and then write the backward that FlashAttention-2 (Dao 2023) uses: one that never
# stores the $n \times m$ matrix $P$. The library's versions are in
# [`jaxgd/attention.py`](../jaxgd/attention.py).

# %%
import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxgd
from jaxgd import attention, mistakes

jax.config.update("jax_enable_x64", True)  # derivations are checked in float64

# %% [markdown]
# ## The backward, step by step
#
# Given $\bar O = \partial L / \partial O$, walk the forward backwards:
#
# - $O = P V$ is a matrix product: $\bar V = P^\top \bar O$ and $\bar P = \bar O V^\top$.
# - Each row of $P$ is a softmax of the same row of $S$, with Jacobian $\mathrm{diag}(p) - p p^\top$:
#   $\bar S_{ij} = P_{ij} (\bar P_{ij} - D_i)$ with $D_i = \sum_j \bar P_{ij} P_{ij}$, one number per
#   row (the *coupling term*: every score of a row moves every probability of that row).
# - $S = c\, Q K^\top$ with $c = 1/\sqrt d$: $\bar Q = c\, \bar S K$ and $\bar K = c\, \bar S^\top Q$.


# %%
def forward(q, k, v):
    s = q @ k.T / math.sqrt(q.shape[-1])
    p = jax.nn.softmax(s, axis=-1)
    return p @ v, p  # the output, and P for the backward


def backward(q, k, v, p, do):
    c = 1 / math.sqrt(q.shape[-1])
    dv = p.T @ do
    dp = do @ v.T
    ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
    return c * ds @ k, c * ds.T @ q, dv


r = np.random.default_rng(0)
n, m, d = 6, 7, 4
q, k, v, do = (jnp.asarray(r.standard_normal(s)) for s in ((n, d), (m, d), (m, d), (n, d)))
o, p = forward(q, k, v)
hand = backward(q, k, v, p, do)
_, vjp = jax.vjp(lambda q, k, v: forward(q, k, v)[0], q, k, v)
true = vjp(do)
gap = max(float(jnp.max(jnp.abs(h - t)) / jnp.max(jnp.abs(t))) for h, t in zip(hand, true))
print(f"hand backward vs jax.vjp, largest relative gap over dQ, dK, dV: {gap:.1e}")

# %% [markdown]
# The coupling term has a second form that FlashAttention relies on. Since $O = P V$,
# $D_i = \sum_j \bar P_{ij} P_{ij} = \sum_j P_{ij} (\bar O V^\top)_{ij} = \sum_e \bar O_{ie} O_{ie}$:
# it can be computed from the *output*, without $P$.

# %%
d_from_p = jnp.sum((do @ v.T) * p, axis=-1)
d_from_o = jnp.sum(do * o, axis=-1)
d_gap = float(jnp.max(jnp.abs(d_from_p - d_from_o)))
print(f"rowsum(dP * P) vs rowsum(dO * O): largest difference {d_gap:.1e}")

# %% [markdown]
# ## Proving it, and reading a mistake
#
# `jaxgd.attention.attention` is this pair as a `jax.custom_vjp` (with any leading axes and an
# optional causal mask); `jaxgd.check` proves it in float64 and float32 against autodiff of the
# forward and finite differences, under `jit` and `vmap`.

# %%
plain_report = jaxgd.check(lambda q, k, v: attention.attention(q, k, v, causal=True), q, k[:n], v[:n])
print(plain_report)

# %% [markdown]
# Inside a multi-head attention layer ([`jaxgd/transformer.py`](../jaxgd/transformer.py)) the same
# backward runs per head. Here is the layer with the coupling term dropped ($\bar S = P \bar P$), a
# mistake that is easy to make and that no shape check catches; the checker recomputes the layer's
# gradients under each known attention mistake and names the one that reproduces them:

# %%
wrong = jaxgd.check(mistakes.AttentionCouplingDropped(2), (5, 4))
print("\n".join(sorted({c.split(";")[0] for c in wrong.causes()})))

# %% [markdown]
# ## FlashAttention-2: the same gradients without $P$
#
# $P$ has $n \times m$ entries per head: at 4,096 tokens and 4 heads, 268 MB in float32, and
# `jax.grad` keeps several such arrays. FlashAttention's forward walks the keys in blocks and keeps,
# per query row, a running maximum $m_i$, a running sum $\ell_i$ and an unnormalised output: when a
# new block raises the maximum, what was accumulated is rescaled by $e^{m_\text{old} - m_\text{new}}$
# (the *online softmax*). It saves only $O$ and each row's log-sum-exp $L_i = m_i + \log \ell_i$.


# %%
def flash_forward(q, k, v, block):
    c = 1 / math.sqrt(q.shape[-1])
    row_max = jnp.full(q.shape[0], -jnp.inf)
    row_sum = jnp.zeros(q.shape[0])
    acc = jnp.zeros((q.shape[0], v.shape[1]))
    for j in range(0, k.shape[0], block):
        s = c * q @ k[j : j + block].T
        new_max = jnp.maximum(row_max, s.max(axis=1))
        scale = jnp.exp(row_max - new_max)
        e = jnp.exp(s - new_max[:, None])
        acc = acc * scale[:, None] + e @ v[j : j + block]
        row_sum = row_sum * scale + e.sum(axis=1)
        row_max = new_max
    return acc / row_sum[:, None], row_max + jnp.log(row_sum)


o_flash, lse = flash_forward(q, k, v, block=3)
print(f"blockwise forward vs the plain one: {float(jnp.max(jnp.abs(o_flash - o))):.1e}")

# %% [markdown]
# The backward recomputes each block's probabilities from the saved log-sum-exp,
# $P_{ij} = e^{S_{ij} - L_i}$, and uses $D_i = \sum_e \bar O_{ie} O_{ie}$ of the whole row, computed
# once. Each key block then gets its $\bar K_j$ and $\bar V_j$, and adds its share to $\bar Q$:


# %%
def flash_backward(q, k, v, o, lse, do, block):
    c = 1 / math.sqrt(q.shape[-1])
    big_d = jnp.sum(do * o, axis=1)  # the whole row's D, never a block's
    dq, dks, dvs = jnp.zeros_like(q), [], []
    for j in range(0, k.shape[0], block):
        kj, vj = k[j : j + block], v[j : j + block]
        pj = jnp.exp(c * q @ kj.T - lse[:, None])
        dvs.append(pj.T @ do)
        ds = pj * (do @ vj.T - big_d[:, None])
        dq = dq + c * ds @ kj
        dks.append(c * ds.T @ q)
    return dq, jnp.concatenate(dks), jnp.concatenate(dvs)


flash = flash_backward(q, k, v, o_flash, lse, do, block=3)
flash_gap = max(float(jnp.max(jnp.abs(h - t)) / jnp.max(jnp.abs(t))) for h, t in zip(flash, true))
print(f"blockwise backward vs jax.vjp: {flash_gap:.1e}")

# %% [markdown]
# `jaxgd.attention.flash_attention` is this algorithm compiled (a `lax.map` over query blocks, a
# `lax.scan` over key blocks, ragged last blocks padded and masked, causal or not) as a
# `jax.custom_vjp`; the checker proves it like any other rule:

# %%
flash_report = jaxgd.check(
    lambda q, k, v: attention.flash_attention(q, k, v, causal=True, block_q=2, block_k=3), q, k[:n], v[:n]
)
print(flash_report)

# %% [markdown]
# ## The memory curve
#
# XLA says how much temporary memory a compiled program needs (`memory_analysis()`), exactly and
# before running it. Here is one attention gradient (4 heads, 64 features, float32) compiled at
# growing lengths, `jax.grad` of the formula against the flash backward:

# %%
lengths = [128, 256, 512, 1024]


def temp_mb(f, length):
    x = jax.ShapeDtypeStruct((4, length, 64), jnp.float32)
    step = jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) ** 2), (0, 1, 2)))
    return step.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes / 1e6


def formula(q, k, v):
    return jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / 8.0, axis=-1) @ v


grad_mb = [temp_mb(formula, length) for length in lengths]
flash_mb = [temp_mb(attention.flash_attention, length) for length in lengths]
for length, a, b in zip(lengths, grad_mb, flash_mb):
    print(f"n = {length:5d}: jax.grad {a:8.1f} MB, flash {b:6.1f} MB")
plt.loglog(lengths, grad_mb, "o-", label="jax.grad of the formula")
plt.loglog(lengths, flash_mb, "s-", label="FlashAttention-2 backward (jaxgd)")
plt.xlabel("tokens"), plt.ylabel("temporary memory, MB"), plt.legend()
plt.title("one attention gradient, 4 heads x 64 features, float32")
plt.show()

# %% [markdown]
# Doubling the length multiplies `jax.grad`'s memory by about four ($n^2$) and the flash backward's
# by about two ($n$). The bench's `attention` section measures both up to 8,192 tokens, with their
# times beside PyTorch's `scaled_dot_product_attention`, in `results/bench/`.
#
# **What to take away**: attention's backward is two matrix products, a softmax Jacobian and two
# more products; its coupling term can be read off the output, which is what lets FlashAttention
# recompute instead of store. Back to the start: [1. the chain rule](01_chain_rule.py), or on to the
# library's [README](../README.md).

# %%
CHECKS = {
    "hand_vs_vjp": gap,
    "d_forms": d_gap,
    "plain_passed": plain_report.passed,
    "wrong_passed": wrong.passed,
    "wrong_causes": wrong.causes(),
    "flash_vs_vjp": flash_gap,
    "flash_passed": flash_report.passed,
    "grad_growth": grad_mb[-1] / grad_mb[-2],
    "flash_growth": flash_mb[-1] / flash_mb[-2],
}
