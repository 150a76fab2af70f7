"""Gradients derived by hand with the chain rule: no ``jax.grad`` anywhere in this file.

Each function's docstring gives the derivation it implements; ``gradcheck`` and
the tests prove every one equal to ``jax.grad`` and to finite differences.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgd import losses
from jaxgd.nn import ACTIVATIONS, mlp_forward, resolve_activations


def mlp_backward(params, cache, dL_dout, activations="relu"):
    """Backpropagation through an MLP (the delta recursion).

    With ``delta_l = dL/dz_l``:

    - ``delta_L = dL/da_L * f_L'(z_L)``
    - ``dL/dW_l = a_{l-1}^T delta_l`` (summed over the batch), ``dL/db_l = sum_batch delta_l``
    - ``delta_{l-1} = (delta_l W_l^T) * f_{l-1}'(z_{l-1})``

    ``cache`` comes from ``nn.mlp_forward``; ``dL_dout`` has the output's shape
    (batched or a single example). Returns grads with exactly the params' structure.
    """
    names = resolve_activations(activations, len(params))
    zs, acts = cache["z"], cache["a"]
    if dL_dout.shape != acts[-1].shape:
        raise ValueError(f"dL_dout shape {dL_dout.shape} != network output shape {acts[-1].shape}")
    grads = [None] * len(params)
    delta = dL_dout
    for l in reversed(range(len(params))):
        if names[l] != "identity":
            delta = delta * ACTIVATIONS[names[l]][1](zs[l], acts[l + 1])
        a_in = acts[l]
        if a_in.ndim == 1:  # one example: outer product
            dW, db = jnp.outer(a_in, delta), delta
        else:
            dW, db = a_in.T @ delta, jnp.sum(delta, axis=0)
        grads[l] = {"W": dW, "b": db}
        if l > 0:
            delta = delta @ params[l]["W"].T
    return grads


def mlp_loss_and_grads(params, x, y, activations="relu", loss="cross_entropy"):
    """``(L, logits, dL/dparams)`` by a forward pass, the loss derivative and ``mlp_backward``."""
    loss_fn, loss_grad = losses.get_loss(loss)
    out, cache = mlp_forward(params, x, activations)
    return loss_fn(out, y), out, mlp_backward(params, cache, loss_grad(out, y), activations)


def linear_softmax_cost(params, x, labels, lam):
    """DD2424's cost ``J = mean_i CE(softmax(W x_i + b), y_i) + lam ||W||^2``.

    ``params`` is a one-layer MLP ``[{"W": (d, K), "b": (K,)}]``; its ``W`` is the
    transpose of DD2424's ``K x d`` matrix because our samples are rows.
    """
    W, b = params[0]["W"], params[0]["b"]
    return losses.softmax_cross_entropy(x @ W + b, labels) + lam * jnp.sum(W * W)


def linear_softmax_grads(params, x, labels, lam):
    """Closed form of DD2424: ``G = P - Y``, ``dJ/dW = X^T G / n + 2 lam W``, ``dJ/db = G^T 1 / n``.

    (In DD2424's column layout: ``dJ/dW = G X^T / n + 2 lam W`` with ``G = -(Y - P)``.)
    """
    W, b = params[0]["W"], params[0]["b"]
    logits = x @ W + b
    y = losses._targets(logits, labels)
    G = jax.nn.softmax(logits, axis=-1) - y
    n = x.shape[0]
    return [{"W": x.T @ G / n + 2 * lam * W, "b": jnp.sum(G, axis=0) / n}]


# ---------------------------------------------------------------- matrix chain
def init_matrix_chain(key, K: int, scale: float | None = None, dtype=jnp.float32) -> dict:
    """``A, B, C ~ N(0, scale^2)`` with ``scale = 1/sqrt(K)`` by default."""
    scale = K ** -0.5 if scale is None else scale
    kA, kB, kC = jax.random.split(key, 3)
    return {n: scale * jax.random.normal(k, (K, K), dtype) for n, k in zip("ABC", (kA, kB, kC))}


def matrix_chain_forward(params, x):
    """``y = A x, u = sigmoid(y), v = B x, z = u + v, w = C z, L = ||w||^2``; returns ``(L, cache)``."""
    A, B, C = params["A"], params["B"], params["C"]
    K = A.shape[0]
    if x.shape != (K,) or any(m.shape != (K, K) for m in (A, B, C)):
        raise ValueError(f"matrix chain needs x of shape ({K},) and A, B, C of shape ({K}, {K}); "
                         f"got x {x.shape}, A {A.shape}, B {B.shape}, C {C.shape}")
    y = A @ x
    u = jax.nn.sigmoid(y)
    v = B @ x
    z = u + v
    w = C @ z
    return w @ w, {"x": x, "u": u, "z": z, "w": w}


def matrix_chain_loss(params, x):
    return matrix_chain_forward(params, x)[0]


def matrix_chain_grads(params, x):
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
