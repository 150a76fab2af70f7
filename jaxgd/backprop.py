"""Gradients derived on paper with the chain rule, as the course reports wrote them: no
``jax.grad`` anywhere in this file.

- The MLP delta recursion of INF265 project 1, over its own forward cache of ``z`` and ``a``.
- DD2424 assignment 1's closed form for the linear softmax classifier.
- The matrix chain, derived step by step.

The models that ``train.fit`` trains use the generic reverse pass over layers
(``models.Model.grad``); the tests show each derivation here equal to it, to ``jax.grad``
and to finite differences.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jaxgd import draws, losses
from jaxgd.layers import ACTIVATIONS, init_linear


def resolve_activations(activations: str | Sequence[str], n_layers: int) -> tuple[str, ...]:
    """One activation name per layer: a single name means that activation on every hidden layer
    and ``identity`` on the output layer; a sequence must name one per layer."""
    if isinstance(activations, str):
        if activations not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activations!r}; choose from {sorted(ACTIVATIONS)}")
        names = (activations,) * (n_layers - 1) + ("identity",)
    else:
        names = tuple(activations)
        if len(names) != n_layers:
            raise ValueError(
                f"activations has {len(names)} names but the MLP has {n_layers} layers; "
                "give one name per layer, or a single name for all hidden layers"
            )
    for name in names:
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return names


def init_mlp(key, sizes: Sequence[int], init: str = "torch", dtype=jnp.float32) -> list[dict]:
    """MLP params for widths ``sizes = (d_0, ..., d_L)``: a list of L ``{"W": (d_in, d_out), "b"}``
    dicts, layer ``l`` initialised from ``split(key, L)[l]``."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least an input and an output width, all >= 1; got {sizes}")
    keys = jax.random.split(key, len(sizes) - 1)
    return [init_linear(k, a, b, init, dtype) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def mlp_forward(params: list[dict], x: Array, activations: str | Sequence[str] = "relu") -> tuple[Array, dict]:
    """Forward pass that keeps what backprop needs: ``z_l = a_{l-1} W_l + b_l``, ``a_l = f_l(z_l)``,
    ``a_0 = x`` (``(batch, d_0)`` or one ``(d_0,)`` example). Returns ``(a_L, {"z": [z_1..z_L],
    "a": [a_0..a_L]})``."""
    names = resolve_activations(activations, len(params))
    d_in = params[0]["W"].shape[0] if params else None
    if d_in is None or x.ndim not in (1, 2) or x.shape[-1] != d_in:
        raise ValueError(f"MLP input must have shape (batch, {d_in}) or ({d_in},); got {tuple(x.shape)}")
    zs, acts = [], [x]
    for layer, name in zip(params, names):
        z = acts[-1] @ layer["W"] + layer["b"]
        zs.append(z)
        acts.append(ACTIVATIONS[name][0](z))
    return acts[-1], {"z": zs, "a": acts}


def mlp_apply(params: list[dict], x: Array, activations: str | Sequence[str] = "relu") -> Array:
    """INF265's MLP's output (logits) for ``x``: ``mlp_forward`` without its cache."""
    return mlp_forward(params, x, activations)[0]


def mlp_backward(
    params: list[dict], cache: dict, dL_dout: Array, activations: str | Sequence[str] = "relu"
) -> list[dict]:
    """Backpropagation through an MLP (the delta recursion).

    With ``delta_l = dL/dz_l``:

    - ``delta_L = dL/da_L * f_L'(z_L)``
    - ``dL/dW_l = a_{l-1}^T delta_l`` (summed over the batch), ``dL/db_l = sum_batch delta_l``
    - ``delta_{l-1} = (delta_l W_l^T) * f_{l-1}'(z_{l-1})``

    ``cache`` comes from ``mlp_forward``; ``dL_dout`` has the output's shape
    (batched or a single example). Returns grads with exactly the params' structure.
    """
    names = resolve_activations(activations, len(params))
    acts = cache["a"]
    if dL_dout.shape != acts[-1].shape:
        raise ValueError(f"dL_dout shape {dL_dout.shape} != network output shape {acts[-1].shape}")
    grads: list = [None] * len(params)
    delta = dL_dout
    for l in reversed(range(len(params))):
        slope = ACTIVATIONS[names[l]][1]  # f'(z_l), written with a_l = f(z_l); None for the identity
        if slope is not None:
            delta = delta * slope(acts[l + 1])
        a_in = acts[l]
        if a_in.ndim == 1:  # one example: outer product
            dW, db = jnp.outer(a_in, delta), delta
        else:
            dW, db = a_in.T @ delta, jnp.sum(delta, axis=0)
        grads[l] = {"W": dW, "b": db}
        if l > 0:
            delta = delta @ params[l]["W"].T
    return grads


def mlp_loss_and_grads(
    params: list[dict], x: Array, y: Array, activations: str | Sequence[str] = "relu", loss: str = "cross_entropy"
) -> tuple[Array, Array, list[dict]]:
    """``(L, logits, dL/dparams)`` by a forward pass, the loss derivative and ``mlp_backward``."""
    loss_fn, loss_grad = losses.get_loss(loss)
    out, cache = mlp_forward(params, x, activations)
    return loss_fn(out, y), out, mlp_backward(params, cache, loss_grad(out, y), activations)


def linear_softmax_cost(params: list[dict], x: Array, labels: Array, lam: ArrayLike) -> Array:
    """DD2424's cost ``J = mean_i CE(softmax(W x_i + b), y_i) + lam ||W||^2``.

    ``params`` is ``models.linear_softmax()``'s ``[{"W": (d, K), "b": (K,)}]``; its ``W`` is the
    transpose of DD2424's ``K x d`` matrix because our samples are rows.
    """
    W, b = params[0]["W"], params[0]["b"]
    return losses.softmax_cross_entropy(x @ W + b, labels) + lam * jnp.sum(W * W)


def linear_softmax_grads(params: list[dict], x: Array, labels: Array, lam: ArrayLike) -> list[dict]:
    """Closed form of DD2424: ``G = P - Y``, ``dJ/dW = X^T G / n + 2 lam W``, ``dJ/db = G^T 1 / n``.

    (In DD2424's column layout: ``dJ/dW = G X^T / n + 2 lam W`` with ``G = -(Y - P)``.)
    """
    W, b = params[0]["W"], params[0]["b"]
    logits = x @ W + b
    y = losses.targets(logits, labels)
    G = jax.nn.softmax(logits, axis=-1) - y
    n = x.shape[0]
    return [{"W": x.T @ G / n + 2 * lam * W, "b": jnp.sum(G, axis=0) / n}]


# ---------------------------------------------------------------- matrix chain
def init_matrix_chain(key, K: int, scale: float | None = None, dtype=jnp.float32) -> dict:
    """``A, B, C ~ N(0, scale^2)`` with ``scale = 1/sqrt(K)`` by default."""
    scale = K**-0.5 if scale is None else scale
    kA, kB, kC = jax.random.split(key, 3)
    return {n: scale * draws.normal(k, (K, K), dtype) for n, k in zip("ABC", (kA, kB, kC))}


def matrix_chain_forward(params: dict, x: Array) -> tuple[Array, dict]:
    """``y = A x, u = sigmoid(y), v = B x, z = u + v, w = C z, L = ||w||^2``; returns ``(L, cache)``."""
    A, B, C = params["A"], params["B"], params["C"]
    K = A.shape[0]
    if x.shape != (K,) or any(m.shape != (K, K) for m in (A, B, C)):
        raise ValueError(
            f"matrix chain needs x of shape ({K},) and A, B, C of shape ({K}, {K}); "
            f"got x {x.shape}, A {A.shape}, B {B.shape}, C {C.shape}"
        )
    y = A @ x
    u = jax.nn.sigmoid(y)
    v = B @ x
    z = u + v
    w = C @ z
    return w @ w, {"x": x, "u": u, "z": z, "w": w}


def matrix_chain_loss(params: dict, x: Array) -> Array:
    """The matrix chain's loss: ``matrix_chain_forward`` without its cache."""
    return matrix_chain_forward(params, x)[0]


def matrix_chain_grads(params: dict, x: Array) -> dict:
    """Chain rule, from the loss back:

    ``dL/dw = 2w``; ``dL/dC = (dL/dw) z^T``; ``dL/dz = C^T dL/dw``;
    ``dL/du = dL/dv = dL/dz``; ``dL/dB = (dL/dv) x^T``;
    ``dL/dy = dL/du * u (1 - u)``; ``dL/dA = (dL/dy) x^T``.
    """
    _, c = matrix_chain_forward(params, x)
    dw = 2 * c["w"]
    dz = params["C"].T @ dw
    dy = dz * c["u"] * (1 - c["u"])
    return {"A": jnp.outer(dy, c["x"]), "B": jnp.outer(dz, c["x"]), "C": jnp.outer(dw, c["z"])}
