"""SGD with momentum and weight decay, by hand, with ``torch.optim.SGD`` semantics, and its optax twin.

An optimizer is a pair of pure functions (optax's contract, with the step applied):

    init(params) -> state
    update(grads, state, params, hparams) -> (new_params, new_state)

``hparams`` is an ``SGDHyperparams`` of scalars, or of 1-D arrays when many
configurations are trained at once. They are kept in float64 and take each parameter's
dtype where they are used, so a float64 run steps with lr 0.01, not with float32's
0.0099999997764825821 (and matches ``torch.optim.SGD`` to ~1e-15).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class SGDHyperparams(NamedTuple):
    lr: Any
    momentum: Any = 0.0
    weight_decay: Any = 0.0


def sgd_hyperparams(lr, momentum=0.0, weight_decay=0.0) -> SGDHyperparams:
    """Validated hyperparameters (scalars or equal-length 1-D sequences) as float64 numpy arrays."""
    vals = [np.asarray(v, np.float64) for v in (lr, momentum, weight_decay)]
    shapes = {v.shape for v in vals if v.ndim}
    if any(v.ndim > 1 for v in vals) or len(shapes) > 1:
        raise ValueError(f"hyperparameters must be scalars or 1-D of one length; got shapes "
                         f"{[v.shape for v in vals]}")
    lr_, mom, wd = vals
    if not (np.all(np.isfinite(lr_)) and np.all(lr_ > 0)):
        raise ValueError(f"learning rate must be finite and > 0, got {lr}")
    if not (np.all(np.isfinite(mom)) and np.all(mom >= 0) and np.all(mom < 1)):
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not (np.all(np.isfinite(wd)) and np.all(wd >= 0)):
        raise ValueError(f"weight decay must be finite and >= 0, got {weight_decay}")
    n = shapes.pop()[0] if shapes else None
    if n == 0:
        raise ValueError("hyperparameters given as sequences must have at least one entry; got empty ones")
    return SGDHyperparams(*(np.broadcast_to(v, (n,)).copy() if n else v for v in vals))


class SGDState(NamedTuple):
    momentum: Any  # the buffer b, same structure as params


def sgd_init(params) -> SGDState:
    """``b = 0``. With dampening 0 the first step then gives ``b = g``: PyTorch's first-step rule."""
    return SGDState(jax.tree_util.tree_map(jnp.zeros_like, params))


def sgd_update(grads, state: SGDState, params, hparams: SGDHyperparams):
    """One step, in ``torch.optim.SGD``'s order (dampening 0, no Nesterov):

        g <- g + wd * p          (weight decay on every leaf, biases too, as PyTorch)
        b <- momentum * b + g    (b = g at the first step, since b starts at 0)
        p <- p - lr * b
    """
    lr, mu, wd = hparams
    at = lambda h, p: jnp.asarray(h, p.dtype)  # noqa: E731  (each hyperparameter in the leaf's dtype)
    g = jax.tree_util.tree_map(lambda g, p: g + at(wd, p) * p, grads, params)
    b = jax.tree_util.tree_map(lambda b, g: at(mu, b) * b + g, state.momentum, g)
    new = jax.tree_util.tree_map(lambda p, b: p - at(lr, p) * b, params, b)
    return new, SGDState(b)


class Optimizer(NamedTuple):
    init: Callable
    update: Callable


def _optax_chain(learning_rate, momentum, weight_decay):
    # add_decayed_weights must come before sgd's trace: decay enters the momentum buffer, as in PyTorch.
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum))


def optax_sgd() -> Optimizer:
    """The library twin: ``optax.chain(add_decayed_weights(wd), sgd(lr, momentum))``.

    Wrapped in ``optax.inject_hyperparams`` so the hyperparameters live in the state
    (the way to ``vmap`` over them) and set from ``hparams`` at every step.
    """
    tx = optax.inject_hyperparams(_optax_chain)(learning_rate=0.0, momentum=0.0, weight_decay=0.0)

    def update(grads, state, params, hparams: SGDHyperparams):
        hp = {"learning_rate": hparams.lr, "momentum": hparams.momentum, "weight_decay": hparams.weight_decay}
        state = state._replace(hyperparams={k: jnp.asarray(v, jnp.result_type(state.hyperparams[k]))
                                            for k, v in hp.items()})
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return Optimizer(tx.init, update)


HAND_SGD = Optimizer(sgd_init, sgd_update)
OPTIMIZERS = {"hand": lambda: HAND_SGD, "optax": optax_sgd}


def get_optimizer(name: str) -> Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name]()
