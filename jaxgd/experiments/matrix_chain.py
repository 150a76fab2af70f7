"""Experiment 2: gradient descent on the matrix chain, hand gradients vs ``jax.grad``."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jaxgd import backprop, draws
from jaxgd.experiments.common import provenance, record, write
from jaxgd.experiments.config import POSITIVE, Config, at_least, option
from jaxgd.experiments.protocol import Experiment


@dataclasses.dataclass(frozen=True)
class MatrixChainConfig(Config):
    NAME = "matrix_chain"
    Ks: tuple[int, ...] = option((2, 4, 8, 16, 32), "chain lengths K", check=at_least(1))
    iters: int = option(300, "gradient-descent steps per K", check=at_least(1))
    # The step is lr / K: the curvature grows with ||x||^2 ~ K, and one lr for all K diverges at K = 32.
    lr: float = option(0.1, "learning rate; each K steps with lr / K", check=POSITIVE)
    seed: int = option(0, "PRNG seed of the initial matrices and x")


CONFIG = MatrixChainConfig


def descend(grad_fn, params, x, lr, iters):
    """``iters`` steps of ``p <- p - lr dL/dp``; returns (losses before each step, final params)."""

    def step(p, _):
        loss = backprop.matrix_chain_loss(p, x)
        g = grad_fn(p, x)
        return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g), loss

    final, losses = jax.lax.scan(step, params, None, length=iters)
    return losses, final


def run(config=None, out=None, force=False, verbose=True, log=print) -> dict:
    cfg = MatrixChainConfig.make(config)
    t0 = time.time()
    runs = []
    key = jax.random.PRNGKey(cfg.seed)
    go = jax.jit(descend, static_argnums=(0, 4))
    for K in cfg.Ks:
        key, kp, kx = jax.random.split(key, 3)
        # drawn op by op: as one program, XLA fuses the scaling into the draws and changes last bits
        params, x = backprop.init_matrix_chain(kp, K), draws.normal(kx, (K,))
        hand, p_hand = jax.device_get(go(backprop.matrix_chain_grads, params, x, cfg.lr / K, cfg.iters))
        auto, p_auto = jax.device_get(go(jax.grad(backprop.matrix_chain_loss), params, x, cfg.lr / K, cfg.iters))
        runs.append(
            {
                "K": K,
                "loss_hand": hand,
                "loss_autodiff": auto,
                "max_abs_loss_diff": float(np.max(np.abs(hand - auto))),
                "max_abs_final_A_diff": float(np.max(np.abs(p_hand["A"] - p_auto["A"]))),
                "initial_loss": float(hand[0]),
                "final_loss": float(hand[-1]),
                "final_A_hand": p_hand["A"] if K <= 4 else None,
                "final_A_autodiff": p_auto["A"] if K <= 4 else None,
            }
        )
    res = record(
        "matrix_chain", cfg, t0, provenance(), runs=runs, max_abs_loss_diff=max(r["max_abs_loss_diff"] for r in runs)
    )
    from jaxgd.experiments import figures

    write("matrix_chain", out, res, figures=[("loss_curves.png", lambda p: figures.matrix_chain(res, p))])
    return res


def summary(res) -> list[dict]:
    return [
        {
            "K": r["K"],
            "initial loss": r["initial_loss"],
            "final loss": r["final_loss"],
            "max |hand - autodiff| (loss)": r["max_abs_loss_diff"],
            "max |hand - autodiff| (final A)": r["max_abs_final_A_diff"],
        }
        for r in res["runs"]
    ]


def about(res, out) -> str:
    return (
        f"**Matrix chain**: gradient descent with hand gradients and with `jax.grad`, K in "
        f"{[x['K'] for x in res['runs']]}; the loss curves differ by at most {res['max_abs_loss_diff']:.1e}."
    )


def headline(res, out) -> tuple[str, str]:
    return f"hand and `jax.grad` loss curves differ by at most {res['max_abs_loss_diff']:.0e}", "`jax.grad`"


EXPERIMENT = Experiment(
    name="matrix_chain",
    what="gradient descent on the matrix chain, hand gradients vs jax.grad",
    run=run,
    config=MatrixChainConfig,
    results="matrix_chain/results.json",
    summary=summary,
    quick={"iters": 200},
    figures=("matrix_chain/loss_curves.png",),
    about=about,
    headline=headline,
)
