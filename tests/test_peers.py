"""The bench's peers do the work jaxgd's rows do: the flax + optax + jax.grad epoch, given jaxgd's
initial parameters and the same minibatches, ends where jaxgd's compiled epoch ends."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import require_peer

from jaxgd import draws, models, optim, train

require_peer("flax")


def test_the_flax_epoch_trains_the_same_mlp_as_jaxgds():
    from jaxgd.experiments import flax_peers

    sizes, bs, hp = (12, 16, 8, 3), 16, (0.05, 0.9, 1e-3)
    model = models.mlp(sizes)
    params, state = model.init(jax.random.PRNGKey(0))
    x = draws.normal(jax.random.PRNGKey(1), (96, sizes[0]))
    y = jax.random.randint(jax.random.PRNGKey(2), (96,), 0, sizes[-1])
    key = jax.random.PRNGKey(3)
    # jaxgd: hand gradients, hand SGD, its permutation drawn from split(key)[0]
    epoch = train.make_epoch(train.make_step(train.make_grad_fn(model), optim.HAND_SGD), bs)
    (p_jaxgd, _, _), _ = jax.jit(epoch)((params, optim.sgd_init(params), state), x, y, optim.sgd_hyperparams(*hp), key)
    # flax: the same weights in flax's tree, the same permutation
    init, flax_epoch = flax_peers.epoch_fn(flax_peers.mlp(sizes), hp, bs)
    fparams, opt_state = init(jax.random.PRNGKey(0), x)
    dense = [p for p in params if p]
    fparams = {"params": {f"Dense_{i}": {"kernel": p["W"], "bias": p["b"]} for i, p in enumerate(dense)}}
    opt_state = init(jax.random.PRNGKey(0), x)[1]
    (f_out, _), _ = jax.jit(flax_epoch)((fparams, opt_state), x, y, jax.random.split(key)[0])
    for i, _p in enumerate(dense):
        np.testing.assert_allclose(
            np.asarray(f_out["params"][f"Dense_{i}"]["kernel"]), np.asarray(p_jaxgd[2 * i]["W"]), rtol=1e-4, atol=1e-6
        )
    assert float(jnp.max(jnp.abs(p_jaxgd[0]["W"] - params[0]["W"]))) > 1e-3  # it did train
