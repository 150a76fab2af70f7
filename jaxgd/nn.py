"""Pure models: an MLP that keeps its forward cache, a CNN, dropout and batch norm.

A model is two pure functions: ``init(key, ...) -> params`` and a forward that
maps ``(params, x)`` to an output. Params are plain pytrees: an MLP is a list of
``{"W": (d_in, d_out), "b": (d_out,)}`` dicts and a layer computes
``z = x @ W + b`` (row-major samples, as ``torch.nn.Linear`` with ``W`` stored
transposed). Weight decay in a loss (``losses.l2_penalty``) sees every leaf named
``"W"`` and nothing else.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

# name -> (f(z), f'(z) written with z and a = f(z), whichever is cheaper)
ACTIVATIONS = {
    "relu": (jax.nn.relu, lambda z, a: (z > 0).astype(z.dtype)),
    "sigmoid": (jax.nn.sigmoid, lambda z, a: a * (1 - a)),
    "tanh": (jnp.tanh, lambda z, a: 1 - a * a),
    "identity": (lambda z: z, lambda z, a: jnp.ones_like(z)),
}

INITS = ("he", "glorot", "torch")


def resolve_activations(activations: str | Sequence[str], n_layers: int) -> tuple[str, ...]:
    """One activation name per layer.

    A single name means: that activation on every hidden layer and ``identity``
    on the output layer (logits / regression output). A sequence must name one
    activation per layer.
    """
    if isinstance(activations, str):
        if activations not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activations!r}; choose from {sorted(ACTIVATIONS)}")
        names = (activations,) * (n_layers - 1) + ("identity",)
    else:
        names = tuple(activations)
        if len(names) != n_layers:
            raise ValueError(
                f"activations has {len(names)} names but the MLP has {n_layers} layers; "
                "give one name per layer, or a single name for all hidden layers")
    for name in names:
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return names


def init_linear(key, d_in: int, d_out: int, init: str = "he", dtype=jnp.float32) -> dict:
    """One dense layer ``{"W": (d_in, d_out), "b": (d_out,)}``.

    - ``he``:     W ~ N(0, 2 / d_in), b = 0 (for ReLU).
    - ``glorot``: W ~ U(-r, r), r = sqrt(6 / (d_in + d_out)), b = 0 (for tanh/sigmoid).
    - ``torch``:  W, b ~ U(-1/sqrt(d_in), 1/sqrt(d_in)), PyTorch's ``nn.Linear`` default.
    """
    kw, kb = jax.random.split(key)
    if init == "he":
        W = jax.random.normal(kw, (d_in, d_out), dtype) * jnp.sqrt(2.0 / d_in).astype(dtype)
        b = jnp.zeros((d_out,), dtype)
    elif init == "glorot":
        r = (6.0 / (d_in + d_out)) ** 0.5
        W = jax.random.uniform(kw, (d_in, d_out), dtype, -r, r)
        b = jnp.zeros((d_out,), dtype)
    elif init == "torch":
        r = d_in ** -0.5
        W = jax.random.uniform(kw, (d_in, d_out), dtype, -r, r)
        b = jax.random.uniform(kb, (d_out,), dtype, -r, r)
    else:
        raise ValueError(f"unknown init {init!r}; choose from {INITS}")
    return {"W": W, "b": b}


def init_mlp(key, sizes: Sequence[int], init: str = "he", dtype=jnp.float32) -> list[dict]:
    """MLP params for layer widths ``sizes = (d_0, d_1, ..., d_L)``: L dense layers."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least an input and an output width, all >= 1; got {sizes}")
    keys = jax.random.split(key, len(sizes) - 1)
    return [init_linear(k, a, b, init, dtype) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


def _check_mlp_input(params, x):
    if not params:
        raise ValueError("params is empty: build it with init_mlp(key, sizes)")
    d_in = params[0]["W"].shape[0]
    if x.ndim not in (1, 2) or x.shape[-1] != d_in:
        raise ValueError(
            f"MLP input must have shape (batch, {d_in}) or ({d_in},); got {tuple(x.shape)}")
    for l in range(1, len(params)):
        if params[l]["W"].shape[0] != params[l - 1]["W"].shape[1]:
            raise ValueError(
                f"layer {l} expects {params[l]['W'].shape[0]} inputs but layer {l - 1} "
                f"gives {params[l - 1]['W'].shape[1]}")


def mlp_forward(params, x, activations="relu"):
    """Forward pass that keeps what backprop needs.

    ``z_l = a_{l-1} @ W_l + b_l``, ``a_l = f_l(z_l)``, ``a_0 = x``. ``x`` is
    ``(batch, d_0)`` or a single ``(d_0,)`` example. Returns ``(a_L, cache)`` with
    ``cache = {"z": [z_1..z_L], "a": [a_0..a_L]}``.
    """
    names = resolve_activations(activations, len(params))
    _check_mlp_input(params, x)
    zs, acts = [], [x]
    for layer, name in zip(params, names):
        z = acts[-1] @ layer["W"] + layer["b"]
        zs.append(z)
        acts.append(ACTIVATIONS[name][0](z))
    return acts[-1], {"z": zs, "a": acts}


def mlp_apply(params, x, activations="relu"):
    """The MLP's output alone (see ``mlp_forward``)."""
    return mlp_forward(params, x, activations)[0]
