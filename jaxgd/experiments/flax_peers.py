"""The bench's JAX peer: the same models trained the way a JAX user would write them without
jaxgd, with flax (linen) modules, ``jax.grad`` and optax's SGD, and the epoch compiled as one
``lax.scan`` like jaxgd's (an optional extra: ``pip install -e '.[peers]'`` in the jaxgd checkout;
nothing here is imported without it).

The update is optax's ``add_decayed_weights`` + ``sgd(momentum)``, which the tests prove equal to
jaxgd's hand SGD (PyTorch's rule); the loss is optax's integer-label softmax cross-entropy, batch
mean. So the row differs from jaxgd's compiled epoch in one thing only: who wrote the backward.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from jaxgd import xla


def available():
    """``(flax, optax)`` versions, or None where flax is not installed."""
    try:
        import flax
        import optax
    except ImportError:
        return None
    return {"flax": flax.__version__, "optax": optax.__version__}


def mlp(sizes):
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for width in sizes[1:-1]:
                x = nn.relu(nn.Dense(width)(x))
            return nn.Dense(sizes[-1])(x)

    return MLP()


def cnn():
    """The MNIST CNN of CSI 5340 homework 2 (``models.mnist_zoo("cnn")``), NHWC."""
    import flax.linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            for c in (32, 64):
                x = nn.max_pool(nn.relu(nn.Conv(c, (3, 3), padding="SAME")(x)), (2, 2), (2, 2))
            x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
            return nn.Dense(10)(x)

    return CNN()


def epoch_fn(module, hp, batch_size):
    """``(init(key, x) -> carry, epoch(carry, x, y, key) -> carry)``: one shuffled pass of SGD."""
    import optax

    lr, momentum, wd = hp
    tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=momentum))

    def loss(params, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(module.apply(params, xb), yb).mean()

    def init(key, x):
        params = module.init(key, x[:1])
        return params, tx.init(params)

    def epoch(carry, x, y, key):
        n_b = x.shape[0] // batch_size
        idx = jax.random.permutation(key, x.shape[0])[: n_b * batch_size].reshape(n_b, batch_size)

        def step(carry, i):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params, x[i], y[i])
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        carry, values = jax.lax.scan(step, carry, idx)
        return carry, jnp.mean(values)

    return init, epoch


def row(what, module, x, y, batch_size, hp, flops, options="default"):
    """``(row, fn)`` for the bench: ``fn`` runs one more compiled epoch from where the last stopped,
    compiled with the ``jaxgd.xla`` setting ``options`` (``"default"``: as a flax user's ``jax.jit``;
    ``"tuned"``: the compiler options jaxgd's own epochs take, a fair peer)."""
    from jaxgd.experiments import timing

    init, epoch = epoch_fn(module, hp, batch_size)
    carry = jax.jit(init)(jax.random.PRNGKey(0), x)  # one program, not one per parameter and op
    key = jax.random.PRNGKey(1)
    t = time.perf_counter()
    compiled = xla.jit(epoch, options).lower(carry, x, y, key).compile()
    compile_s = time.perf_counter() - t
    name = f"flax + optax + jax.grad compiled epoch, {what}" + ("" if options == "default" else f", xla={options}")
    return ({"name": name, "compile_s": compile_s, "flops": flops}, timing.training(compiled, carry, x, y, key))
