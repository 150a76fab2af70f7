"""Experiment 2: gradient descent on the matrix chain, hand gradients vs ``jax.grad``."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from jaxgd import backprop
from jaxgd.experiments.common import outdir, provenance, save_json

# The step is lr / K: the curvature grows with ||x||^2 ~ K, and one lr for all K diverges at K = 32.
DEFAULTS = {"Ks": [2, 4, 8, 16, 32], "iters": 300, "lr": 0.1, "seed": 0}


def descend(grad_fn, params, x, lr, iters):
    """``iters`` steps of ``p <- p - lr dL/dp``; returns (losses before each step, final params)."""
    def step(p, _):
        loss = backprop.matrix_chain_loss(p, x)
        g = grad_fn(p, x)
        return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g), loss
    final, losses = jax.lax.scan(step, params, None, length=iters)
    return losses, final


def run(config=None, out=None) -> dict:
    cfg = {**DEFAULTS, **(config or {})}
    if cfg["lr"] <= 0 or cfg["iters"] < 1 or min(cfg["Ks"]) < 1:
        raise ValueError(f"need lr > 0, iters >= 1 and every K >= 1; got {cfg}")
    t0 = time.time()
    runs = []
    key = jax.random.PRNGKey(cfg["seed"])
    for K in cfg["Ks"]:
        key, kp, kx = jax.random.split(key, 3)
        params = backprop.init_matrix_chain(kp, K)
        x = jax.random.normal(kx, (K,))
        go = jax.jit(descend, static_argnums=(0, 4))
        hand, p_hand = go(backprop.matrix_chain_grads, params, x, cfg["lr"] / K, cfg["iters"])
        auto, p_auto = go(jax.grad(backprop.matrix_chain_loss), params, x, cfg["lr"] / K, cfg["iters"])
        runs.append({
            "K": K, "loss_hand": hand, "loss_autodiff": auto,
            "max_abs_loss_diff": float(jnp.max(jnp.abs(hand - auto))),
            "max_abs_final_A_diff": float(jnp.max(jnp.abs(p_hand["A"] - p_auto["A"]))),
            "initial_loss": float(hand[0]), "final_loss": float(hand[-1]),
            "final_A_hand": p_hand["A"] if K <= 4 else None,
            "final_A_autodiff": p_auto["A"] if K <= 4 else None,
        })
    res = {"experiment": "matrix_chain", "config": cfg, "runs": runs,
           "max_abs_loss_diff": max(r["max_abs_loss_diff"] for r in runs),
           "wall_time_s": time.time() - t0, "provenance": provenance()}
    if out is not False:
        d = outdir("matrix_chain", out)
        from jaxgd import plots
        plots.matrix_chain(res, d / "loss_curves.png")
        save_json(d / "results.json", res)
    return res


def summary(res) -> list[dict]:
    return [{"K": r["K"], "initial loss": r["initial_loss"], "final loss": r["final_loss"],
             "max |hand - autodiff| (loss)": r["max_abs_loss_diff"],
             "max |hand - autodiff| (final A)": r["max_abs_final_A_diff"]} for r in res["runs"]]
