"""Experiment 5: DD2424 assignment 1, a linear softmax classifier on CIFAR-10.

``P = softmax(W x + b)``, cost ``J = mean CE + lam ||W||^2``: ``models.linear_softmax()``,
trained with its hand gradient (the generic reverse pass, plus ``2 lam W``), which the
gradient check shows equal to DD2424's closed form (``backprop.linear_softmax_grads``)
and to finite differences; plain minibatch gradient descent
(momentum 0, no weight decay: the penalty is in the cost). Protocol: 10,000
training, 10,000 validation (both from the TFDS train split, seeded) and the
10,000 test images; W, b ~ N(0, 0.01^2) as in the assignment.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgd import backprop, data, draws, gradcheck, models, optim, progress, train, xla
from jaxgd.experiments.common import provenance, record, write
from jaxgd.experiments.config import Config, at_least, data_dir_option, option
from jaxgd.experiments.protocol import Experiment

# name: (lambda, eta). A-D as in the report; the assignment's original eta = 0.001 settings.
SETTINGS = {
    "A": (0.0, 0.1),
    "B": (0.0, 0.01),
    "C": (0.1, 0.01),
    "D": (1.0, 0.01),
    "E": (0.0, 0.001),
    "F": (0.1, 0.001),
    "G": (1.0, 0.001),
}
REPORT_TEST_ACC = {"A": 28.33, "B": 34.73, "C": 31.88, "D": 26.76}


@dataclasses.dataclass(frozen=True)
class Cifar10SoftmaxConfig(Config):
    NAME = "cifar10_softmax"
    epochs: int = option(40, "training epochs per setting", check=at_least(1))
    n_batch: int = option(100, "minibatch size (images)", check=at_least(1))
    seed: int = option(0, "PRNG seed of the split, the initial weights and the batch order")
    settings: tuple[str, ...] = option(
        tuple(SETTINGS),
        "settings (lambda, eta) to train: A-D as in DD2424's report, E-G the assignment's eta = 0.001",
        choices=tuple(SETTINGS),
    )
    data_dir: str | None = data_dir_option()
    n_train: int = option(10_000, "training images (from the TFDS train split)", check=at_least(1))
    n_val: int = option(10_000, "validation images (from the TFDS train split)", check=at_least(1))


CONFIG = Cifar10SoftmaxConfig


def check_hparams(lam, eta, n_batch):
    if not (np.isfinite(lam) and lam >= 0):
        raise ValueError(f"lambda must be finite and >= 0, got {lam}")
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be finite and > 0, got {eta}")
    if not (isinstance(n_batch, int) and n_batch >= 1):
        raise ValueError(f"n_batch must be an integer >= 1, got {n_batch}")


def init(key, d=3072, k=10, std=0.01):
    kw, kb = jax.random.split(key)
    return [{"W": std * draws.normal(kw, (d, k)), "b": std * draws.normal(kb, (k,))}]


# lam ||W||^2 of the cost J, for its history (one program for every setting, not three per shape op by op)
_penalty = jax.jit(lambda lam, W: lam * jnp.sum(W**2))


def train_one(d, lam, eta, cfg, key, show=None, trainers=None):
    """Minibatch GD on J; returns params and the per-epoch history (cost, loss, accuracy).
    ``cfg``: a ``Cifar10SoftmaxConfig`` or a dict of its fields. ``trainers``, a dict the caller
    holds, keeps the compiled programs (``train.compile``) per ``lam`` for the next setting."""
    cfg = Cifar10SoftmaxConfig.make(cfg)
    check_hparams(lam, eta, cfg.n_batch)
    params = init(key, d.train.x.shape[1])
    penalty = lambda p: float(_penalty(lam, p[0]["W"]))
    hp, monitor = optim.sgd_hyperparams(eta), train.Monitor(eval_train=True)
    trainers = {} if trainers is None else trainers
    if lam not in trainers:
        trainers[lam] = train.compile(
            models.linear_softmax(d.train.x.shape[1]),
            cfg.n_batch,
            hparams=hp,
            step=train.Step(l2=lam),
            monitor=monitor,
            seed=cfg.seed,
        )
    params, _, h = train.fit(
        trainers[lam],
        params,
        d.train,
        d.val,
        hparams=hp,
        epochs=cfg.epochs,
        seed=cfg.seed,
        monitor=monitor,
        callback=lambda e, p, s: penalty(p),
        progress=show,
    )
    hd = h.as_dict()
    hd["train_cost"], hd["val_cost"] = hd.pop("train_loss"), hd.pop("val_loss")
    hd["train_loss"] = [c - r for c, r in zip(hd["train_cost"], h.extra)]
    hd["val_loss"] = [c - r for c, r in zip(hd["val_cost"], h.extra)]
    return params, hd


def gradient_check(d, lam=0.1, n=20, dims=20):
    """DD2424's check in float64: 20 images, the first 20 dimensions, then the full W."""
    out = {}
    key = jax.random.PRNGKey(1)
    for name, dd in (("first_20_dims", dims), ("full_W", d.train.x.shape[1])):
        x = d.train.x[:n, :dd]
        rep = gradcheck.check_gradients(
            backprop.linear_softmax_cost,
            backprop.linear_softmax_grads,
            init(key, dd),
            x,
            d.train.y[:n],
            lam,
            max_per_leaf=None if dd == dims else 500,
        )
        out[name] = {
            "fd_max": rep["fd_max"],
            "autodiff_max": rep["autodiff_max"],
            "directional_max": rep["directional_max"],
            "passed": gradcheck.passed(rep),
            "fd_coordinates_checked": sum(l["fd_checked"] for l in rep["leaves"]),
        }
    return out


def run(config=None, out=None, force=False, verbose=False, log=print) -> dict:
    cfg = Cifar10SoftmaxConfig.make(config)
    for s in cfg.settings:
        check_hparams(*SETTINGS[s], cfg.n_batch)
    t0, prov = time.time(), provenance()
    d = data.load("cifar10", val_size=cfg.n_val, train_size=cfg.n_train, seed=cfg.seed, data_dir=cfg.data_dir)
    runs, weights = {}, {}
    # One compiled program for every setting's test evaluation (op by op, its chunked forward
    # compiled anew per call): the accuracy is the same, from the same logits.
    evaluate = xla.jit(train.make_eval(models.linear_softmax(d.test.x.shape[1])))
    trainers: dict = {}  # settings with the same lambda share one compiled program
    for s in progress.bar(cfg.settings, "DD2424 settings", quiet=not verbose):
        lam, eta = SETTINGS[s]
        show = progress.epoch_logger(f"setting {s}", cfg.epochs, quiet=not verbose)
        params, h = train_one(d, lam, eta, cfg, jax.random.PRNGKey(cfg.seed), show, trainers)
        show.close()
        _, test_acc = evaluate(params, None, d.test.x, d.test.y)
        weights[s] = np.asarray(params[0]["W"])
        runs[s] = {
            "lambda": lam,
            "eta": eta,
            "history": h,
            "test_acc": float(test_acc),
            "final_train_acc": h["train_acc"][-1],
            "final_val_acc": h["val_acc"][-1],
            "report_test_acc_percent": REPORT_TEST_ACC.get(s),
        }
        if verbose:
            log(f"{s} lambda={lam:g} eta={eta:g}: test acc {float(test_acc):.4f}")
    res = record("cifar10_softmax", cfg, t0, prov, data=d.info, runs=runs, gradient_check=gradient_check(d))

    def draw(st):
        from jaxgd.experiments import figures

        for s, r in runs.items():
            title = f"{s}: lambda={r['lambda']:g}, eta={r['eta']:g}"
            figures.templates(weights[s].T.reshape(10, 32, 32, 3), d.info["classes"], title, st / f"templates_{s}.png")
            figures.curves(
                {
                    k: r["history"][k]
                    for k in ("train_cost", "val_cost", "train_loss", "val_loss", "train_acc", "val_acc")
                },
                title,
                st / f"curves_{s}.png",
            )

    write("cifar10_softmax", out, res, draw=draw)
    return res


def summary(res) -> list[dict]:
    return [
        {
            "setting": s,
            "lambda": r["lambda"],
            "eta": r["eta"],
            "train acc": r["final_train_acc"],
            "val acc": r["final_val_acc"],
            "test acc (ours)": r["test_acc"],
            "test acc (report)": f"{r['report_test_acc_percent'] / 100:.4f}" if r["report_test_acc_percent"] else "-",
        }
        for s, r in res["runs"].items()
    ]


def about(res, out) -> str:
    c = res["config"]
    return (
        f"**CIFAR-10 linear softmax** (DD2424 assignment 1: {res['data']['sizes']['train']:,} train / "
        f"{res['data']['sizes']['val']:,} val / {res['data']['sizes']['test']:,} test, n_batch {c['n_batch']}, "
        f"{c['epochs']} epochs, the closed-form hand gradient)."
    )


def notes(res, out) -> list[str]:
    return [
        "Gradient check (float64, max relative error against finite differences): "
        + ", ".join(f"{k} {v['fd_max']:.2e}" for k, v in res["gradient_check"].items())
        + "."
    ]


def headline(res, out) -> tuple[str, str]:
    runs = res["runs"]
    return (
        ", ".join(f"{s} {r['test_acc']:.4f}" for s, r in runs.items()),
        "DD2424 report: " + ", ".join(f"{s} {REPORT_TEST_ACC[s] / 100:.4f}" for s in runs if s in REPORT_TEST_ACC),
    )


EXPERIMENT = Experiment(
    name="cifar10_softmax",
    what="DD2424 assignment 1: a linear softmax on CIFAR-10, settings A-G",
    run=run,
    config=Cifar10SoftmaxConfig,
    results="cifar10_softmax/results.json",
    summary=summary,
    quick={"settings": ["A", "B", "C", "D"], "epochs": 3},
    figures=("cifar10_softmax/curves_B.png", "cifar10_softmax/templates_B.png"),
    needs=("cifar10",),
    compare_with="report: A 28.33%, B 34.73%, C 31.88%, D 26.76% test accuracy",
    notes=notes,
    about=about,
    headline=headline,
)
