"""Experiment 1: every hand-derived gradient against finite differences and ``jax.grad``."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from jaxgd import backprop, gradcheck, losses, nn
from jaxgd.experiments.common import outdir, provenance, save_json


def _mlp_case(name, sizes, acts, loss, batch=8, seed=0, max_per_leaf=None):
    kp, kx, ky = jax.random.split(jax.random.PRNGKey(seed), 3)
    # PyTorch-style init gives non-zero biases, so no ReLU input sits exactly on its kink at 0
    params = nn.init_mlp(kp, sizes, "torch")
    shape = (batch, sizes[0]) if batch else (sizes[0],)
    x = jax.random.normal(kx, shape)
    out_shape = shape[:-1]
    if loss == "cross_entropy":
        y = jax.random.randint(ky, out_shape, 0, sizes[-1])
    else:
        y = jax.random.normal(ky, out_shape + (sizes[-1],))
    loss_fn = losses.get_loss(loss)[0]
    return {"name": name, "model": f"MLP {'-'.join(map(str, sizes))} {acts}", "loss": loss,
            "loss_fn": lambda p, x, y: loss_fn(nn.mlp_apply(p, x, acts), y),
            "grad_fn": lambda p, x, y: backprop.mlp_loss_and_grads(p, x, y, acts, loss)[2],
            "params": params, "args": (x, y), "max_per_leaf": max_per_leaf}


def cases(quick=False):
    """The checked models. ReLU has a kink at 0 where a stencil reads the mean of the two
    slopes; these seeds keep every ReLU input farther than the stencil's 2h from 0."""
    out = [
        _mlp_case("mlp-relu-ce", (5, 7, 6, 3), "relu", "cross_entropy"),
        _mlp_case("mlp-tanh-ssr", (4, 9, 2), "tanh", "ssr"),
        _mlp_case("mlp-sigmoid-mse", (6, 5, 5, 4), "sigmoid", "mse"),
        _mlp_case("mlp-mixed-ce", (3, 8, 8, 8, 2), ("tanh", "relu", "sigmoid", "identity"), "cross_entropy"),
        _mlp_case("mlp-single-example", (5, 6, 3), "tanh", "cross_entropy", batch=None),
    ]
    kp, kx, ky = jax.random.split(jax.random.PRNGKey(1), 3)
    # DD2424's check: 20 images, first 20 dimensions, lambda = 0.1
    out.append({"name": "linear-softmax", "model": "linear softmax 20->10", "loss": "CE + lam||W||^2",
                "loss_fn": backprop.linear_softmax_cost, "grad_fn": backprop.linear_softmax_grads,
                "params": nn.init_mlp(kp, (20, 10), "torch"),
                "args": (jax.random.normal(kx, (20, 20)), jax.random.randint(ky, (20,), 0, 10), 0.1),
                "max_per_leaf": None})
    for K in (4, 8):
        kp, kx = jax.random.split(jax.random.PRNGKey(K))
        out.append({"name": f"matrix-chain-K{K}", "model": f"matrix chain K={K}", "loss": "||w||^2",
                    "loss_fn": backprop.matrix_chain_loss, "grad_fn": backprop.matrix_chain_grads,
                    "params": backprop.init_matrix_chain(kp, K), "args": (jax.random.normal(kx, (K,)),),
                    "max_per_leaf": None})
    if not quick:
        # 1.6M parameters: 40 sampled coordinates per leaf + one random direction per leaf.
        out.append(_mlp_case("cifar2-mlp", (3072, 512, 128, 32, 2), "relu", "cross_entropy",
                             batch=16, max_per_leaf=40))
    return out


def run(config=None, out=None) -> dict:
    cfg = {"quick": False, **(config or {})}
    t0 = time.time()
    rows = []
    for c in cases(cfg["quick"]):
        for dtype in (jnp.float64, jnp.float32):
            rep = gradcheck.check_gradients(c["loss_fn"], c["grad_fn"], c["params"], *c["args"], dtype=dtype,
                                            max_per_leaf=c["max_per_leaf"])
            rows.append({"name": c["name"], "model": c["model"], "loss": c["loss"],
                         "passed": gradcheck.passed(rep), **rep})
    res = {"experiment": "gradcheck", "config": cfg, "tolerances": gradcheck.TOLERANCES, "checks": rows,
           "all_passed": all(r["passed"] for r in rows), "wall_time_s": time.time() - t0,
           "provenance": provenance()}
    if out is not False:
        save_json(outdir("gradcheck", out) / "results.json", res)
    return res


def summary(res) -> list[dict]:
    return [{"model": r["model"], "loss": r["loss"], "dtype": r["dtype"], "stencil": f"{r['order']}-point, h={r['h']:g}",
             "max rel err vs FD": r["fd_max"], "max rel err (random direction)": r["directional_max"],
             "max rel err vs jax.grad": r["autodiff_max"], "pass": "yes" if r["passed"] else "NO"}
            for r in res["checks"]]
