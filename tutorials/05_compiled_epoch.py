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
# # 5. From a Python loop to one compiled program
#
# The same training, written three ways, on a slice of CIFAR-2 (INF265's airplane-vs-bird task)
# with INF265's MLP (3072-512-128-32-2, hand backprop, hand SGD):
#
# 1. a Python loop over minibatches, each step run op by op (JAX's eager mode);
# 2. the same loop calling one `jax.jit`-compiled step;
# 3. the whole epoch as one compiled `lax.scan` ([`train.make_epoch`](../jaxgd/train.py)).
#
# Then a grid of learning rates as *one* program instead of one run after another. The steps are
# the same in all of them; only who loops (Python or XLA) changes. Timings here are for
# intuition: `jaxgd bench` measures them properly, side by side, and its JSON keys
# (`mlp_epoch`: `eager / compiled epoch bs64`, `jit step / compiled epoch bs64`; `configs`:
# `fit default/sequential`) are what to quote.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from jaxgd import data, models, optim, train

d = data.load("cifar2", train_size=1024)  # 1,024 training images, flattened, normalised
x, y = jnp.asarray(d.train.x), jnp.asarray(d.train.y)
model = models.mlp((3072, 512, 128, 32, 2))
params, state = model.init(jax.random.PRNGKey(0))
hp = optim.sgd_hyperparams(0.01, 0.9, 0.001)
opt, batch = optim.HAND_SGD, 64

# one step: the hand gradient, then the hand SGD update (train.make_step wires the two)
step = train.make_step(train.make_grad_fn(model), opt)
carry0 = (params, opt.init(params), state)
# the epoch's minibatches: one seeded permutation, cut into 1024 // 64 = 16 batches
key = jax.random.PRNGKey(1)
k_perm, k_steps = jax.random.split(key)
order = jax.random.permutation(k_perm, x.shape[0]).reshape(-1, batch)
step_keys = jax.random.split(k_steps, order.shape[0])

# %% [markdown]
# ## 1 and 2: Python loops


# %%
def python_loop(step_fn):
    carry = carry0
    for i, k in zip(order, step_keys):
        carry, (loss, acc) = step_fn(carry, x[i], y[i], hp, k)
    return jax.block_until_ready(carry)


def seconds(fn, repeats=3):
    fn()  # the first call compiles (where there is anything to compile)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


eager_carry = python_loop(step)
jit_step = jax.jit(step)
jit_carry = python_loop(jit_step)
t_eager = seconds(lambda: python_loop(step), repeats=1)
t_jit = seconds(lambda: python_loop(jit_step))

# %% [markdown]
# ## 3: the epoch as one `lax.scan`
#
# `make_epoch` scans the step over the minibatches: the parameters, momentum buffers and model
# state are the scan's carry, and the permutation is drawn inside, from the epoch's key (the
# same key and split as above, so it sees the same batches). XLA compiles the whole epoch once;
# Python makes one call per epoch.

# %%
epoch = jax.jit(train.make_epoch(step, batch))
epoch_carry, (mean_loss, mean_acc) = epoch(carry0, x, y, hp, key)
t_epoch = seconds(lambda: jax.block_until_ready(epoch(carry0, x, y, hp, key)))


def gap(a, b):
    return max(
        float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


loop_vs_epoch = gap(jit_carry[0], epoch_carry[0])
eager_vs_epoch = gap(eager_carry[0], epoch_carry[0])
print(f"epoch: mean training loss {float(mean_loss):.4f}, accuracy {float(mean_acc):.3f}")
print(f"parameters after the epoch: jit loop vs scan {loop_vs_epoch:.1e}, eager loop vs scan {eager_vs_epoch:.1e}")
print(f"seconds per epoch: eager loop {t_eager:.2f}, jitted step in a loop {t_jit:.3f}, one scan {t_epoch:.3f}")

# %% [markdown]
# The jitted loop and the scan compute the same numbers; the eager loop agrees to float32
# rounding (run op by op, nothing is fused; the compiled programs may fuse and reorder a few
# operations: the mathematics is the same). The eager loop dispatches every operation from
# Python; the jitted step still returns to Python between minibatches; the scan does not.
#
# ## A grid of configs as one program
#
# Hyperparameters given as 1-D arrays train one config per entry in one program: `fit` stacks the
# parameters on a leading axis and runs the configs with `lax.map` on a CPU (one after another
# inside the program) or `vmap` on a GPU (batched), on the same minibatches. For comparison, the
# same configs one fit at a time: `train.compile` builds the programs once as a value (a
# `Trainer`), and each `fit(trainer, ...)` runs them without compiling again.

# %%
lrs = [0.002, 0.005, 0.01, 0.02]
grid_hp = optim.sgd_hyperparams(lrs, 0.9, 0.001)
kw = dict(epochs=3, batch_size=batch, seed=0)
t = time.perf_counter()
grid_params, _, grid_hist = train.fit(
    model, train.stack_params([params] * len(lrs)), d.train, d.val, hparams=grid_hp, **kw
)
t_grid = time.perf_counter() - t
t = time.perf_counter()
one = train.compile(model, batch, hparams=optim.sgd_hyperparams(0.01, 0.9, 0.001))  # the programs, built once
alone = [
    train.fit(one, params, d.train, d.val, hparams=optim.sgd_hyperparams(lr, 0.9, 0.001), epochs=3, seed=0)
    for lr in lrs
]
t_alone = time.perf_counter() - t
grid_vs_alone = max(gap(train.unstack_params(grid_params, i), a[0]) for i, a in enumerate(alone))
print(f"grid vs each alone: largest parameter gap {grid_vs_alone:.1e}")
print(f"wall seconds, compilation included: one program {t_grid:.1f}, {len(lrs)} fits {t_alone:.1f}")

fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.5))
ax.bar(["eager loop", "jit step loop", "one scan"], [t_eager, t_jit, t_epoch])
ax.set_yscale("log"), ax.set_ylabel("seconds per epoch (this machine)")
for i, lr in enumerate(lrs):
    bx.plot(range(1, 4), np.asarray(grid_hist.val_acc)[:, i], "o-", label=f"lr {lr:g}")
bx.set_xlabel("epoch"), bx.set_ylabel("validation accuracy"), bx.legend(fontsize=8)
plt.show()

# %% [markdown]
# On this CPU, `lax.map` runs each config exactly as it would run alone (the gap is 0), so a grid
# costs one compilation instead of one per config. Next:
# [6. batch norm and dropout by hand](06_batchnorm_dropout.py).

# %%
CHECKS = {
    "loop_vs_epoch": loop_vs_epoch,
    "eager_vs_epoch": eager_vs_epoch,
    "grid_vs_alone": grid_vs_alone,
    "seconds": {"eager": t_eager, "jit_step": t_jit, "scan": t_epoch, "grid": t_grid, "alone": t_alone},
}
