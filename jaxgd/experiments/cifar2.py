"""Experiment 3: the CIFAR-2 MLP with hand backprop and hand SGD, a grid search, and a test report.

Every grid config trains with the hand-derived gradient and the hand-written SGD
(momentum + weight decay, PyTorch semantics) from the same initial weights and on
the same minibatches. The best config by final validation accuracy is retrained
(on a CPU bit-identical, as the run is deterministic; on a GPU, where the grid's configs run
vmapped and the retrain alone, to within rounding: ``best.grid_vs_retrain_val_acc``), evaluated once on test, and trained a
third time with ``jax.grad`` + the optax twin to overlay the two curves.
Finished configs are written after every chunk, so an interrupted grid resumes.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jaxgd import data, layers, models, optim, parallel, progress, train
from jaxgd.experiments.common import PartialRun, provenance, record, write
from jaxgd.experiments.config import Config, ConfigError, at_least, data_dir_option, option
from jaxgd.experiments.protocol import Experiment

SIZES = (3072, 512, 128, 32, 2)
N_PARAMS = 1_643_234
REPORTS = "0.855 / 0.8405 / 0.848"  # the INF265 reports' best test accuracies
MODEL = models.mlp(SIZES, "relu")  # dense - relu - dense - relu - dense - relu - dense, cross-entropy

# (lr, momentum, weight decay): the INF265 reports' configs, their 2x2x2 grid, and their extra five.
GRID = (
    [(0.01, 0, 0), (0.01, 0, 0.01), (0.01, 0.9, 0), (0.01, 0.9, 0.01), (0.01, 0.9, 0.001), (0.01, 0.8, 0.01)]
    + [(lr, m, wd) for lr in (0.01, 0.005) for wd in (0, 0.001) for m in (0, 0.99)]
    + [(0.005, 0.9, 0.001), (0.02, 0.8, 0.005), (0.01, 0.7, 0.002), (0.015, 0.85, 0.01), (0.008, 0.95, 0.003)]
)
QUICK_GRID = [(0.01, 0.9, 0.001), (0.01, 0, 0), (0.02, 0.8, 0.005), (0.01, 0.99, 0)]


@dataclasses.dataclass(frozen=True)
class Cifar2Config(Config):
    NAME = "cifar2"
    epochs: int = option(30, "training epochs per config", check=at_least(1))
    batch_size: int = option(64, "minibatch size (images)", check=at_least(1))
    seed: int = option(0, "PRNG seed of the split, the initial weights and the batch order")
    init: str = option("torch", "initial-weight scheme", choices=layers.INITS)
    grid: tuple[tuple[float, float, float], ...] = option(
        tuple(GRID),
        "SGD configs as lr,momentum,weight_decay triples (a repeated one trains once)",
        metavar="LR,MOMENTUM,WD",
        shown="the INF265 reports' 18 configs",
    )
    chunk: int = option(8, "configs trained together as one program (and saved after each chunk)", check=at_least(1))
    data_dir: str | None = data_dir_option()
    train_size: int | None = option(None, "train on the first N training images only", check=at_least(1))
    shard_configs: bool = option(
        False,
        "spread each chunk's configs over all devices (of all processes in a "
        "multi-host run; jaxgd.parallel); results as on one device",
    )

    def validate(self):
        if not self.grid:
            raise ConfigError("cifar2 config 'grid' is empty: give at least one lr,momentum,weight_decay triple")
        # (.01, 0, 0) is both a seed config and a corner of the 2x2x2 grid: train it once
        object.__setattr__(self, "grid", tuple(dict.fromkeys(self.grid)))
        for g in self.grid:
            optim.sgd_hyperparams(*g)  # validates before any training


CONFIG = Cifar2Config


def _num(v) -> str:
    """``v`` as ``%g`` where that reads back as ``v`` exactly, else in full (``repr``)."""
    short = f"{v:g}"
    return short if float(short) == float(v) else repr(float(v))


def label(cfg) -> str:
    """A config's name, and its key in the results and the resume file: distinct configs get
    distinct labels (``%g`` alone rounds to 6 digits, so 0.0100001 and 0.01 collided)."""
    lr, m, wd = cfg
    return f"lr={_num(lr)} momentum={_num(m)} wd={_num(wd)}"


def _fit(d, params, grid, cfg, step=train.Step(), progress=None, trainers=None):
    """One config (a tuple) alone, or a list of configs stacked into one program. ``trainers``, a
    dict the caller holds, keeps the compiled programs (``train.compile``) for the next call of the
    same kind: the grid's chunks compile once."""
    configs = train.Configs()
    if isinstance(grid, tuple):
        hp = optim.sgd_hyperparams(*grid)
    else:
        hp = optim.sgd_hyperparams(*map(list, zip(*grid)))
        params = train.stack_params([params] * len(grid))
        if cfg.shard_configs and jax.device_count() > 1:
            configs = train.Configs(mesh=parallel.make_mesh(configs=jax.device_count()))
    trainers = {} if trainers is None else trainers
    kind = (isinstance(grid, tuple), step)
    if kind not in trainers:
        trainers[kind] = train.compile(MODEL, cfg.batch_size, hparams=hp, step=step, configs=configs, seed=cfg.seed)
    return train.fit(
        trainers[kind], params, d.train, d.val, hparams=hp, epochs=cfg.epochs, seed=cfg.seed, progress=progress
    )


def run(config=None, out=None, force=False, verbose=True, log=print) -> dict:
    cfg = Cifar2Config.make(config)
    t0, prov = time.time(), provenance()  # the code as it was when training started
    d = data.load("cifar2", seed=cfg.seed, data_dir=cfg.data_dir, train_size=cfg.train_size)
    # the init scheme only draws the initial weights; MODEL (init "torch") trains and predicts
    params, _ = models.mlp(SIZES, "relu", cfg.init).init(jax.random.PRNGKey(cfg.seed))
    assert models.count_params(params) == N_PARAMS, models.count_params(params)

    same = {k: getattr(cfg, k) for k in ("epochs", "batch_size", "seed", "init", "train_size")}  # not shard_configs:
    # a config sharded or not gives the same result up to float reassociation
    part = PartialRun.of("cifar2", out, cfg, "grid", "configs", prov, force, verbose, log, settings=same)
    todo = [g for g in cfg.grid if label(g) not in part]
    bar = progress.bar(len(cfg.grid), "CIFAR-2 grid", quiet=not verbose, unit="config")
    bar.update(len(cfg.grid) - len(todo))
    trainers: dict = {}
    for i in range(0, len(todo), cfg.chunk):
        chunk = todo[i : i + cfg.chunk]
        what = f"configs {len(part.done) + 1}..{len(part.done) + len(chunk)} of {len(cfg.grid)}"
        if verbose and bar.disable:
            log(f"training {what}: " + "; ".join(label(g) for g in chunk))
        show = progress.epoch_logger(what, cfg.epochs, quiet=not verbose, log=log)
        _, _, h = _fit(d, params, chunk, cfg, progress=show, trainers=trainers)
        show.close()
        bar.update(len(chunk))
        hd = h.as_dict()
        for j, g in enumerate(chunk):
            per = {k: [row[j] for row in hd[k]] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
            part.add(
                label(g),
                {
                    "lr": g[0],
                    "momentum": g[1],
                    "weight_decay": g[2],
                    **per,
                    "diverged_at_epoch": hd["diverged_at"][j],
                    "final_val_acc": per["val_acc"][-1],
                    "epoch_time_s": float(np.mean(hd["epoch_time"][1:] or hd["epoch_time"])),
                },
            )
    bar.close()
    done = {label(g): part.done[label(g)] for g in cfg.grid}
    ok = {k: v for k, v in done.items() if v["diverged_at_epoch"] is None}
    if not ok:
        raise RuntimeError("every config diverged; nothing to select")
    best_label = max(ok, key=lambda k: ok[k]["final_val_acc"])
    best = tuple(ok[best_label][k] for k in ("lr", "momentum", "weight_decay"))

    # The chosen config again: hand SGD + hand backprop (must reproduce the grid run) ...
    p_hand, _, h_hand = _fit(d, params, best, cfg)
    # ... and the library way: jax.grad + optax, for the overlay.
    _, _, h_optax = _fit(d, params, best, cfg, train.Step(optimizer="optax", grads="autodiff"))
    logits = np.asarray(jax.jit(lambda p, x: train.predict(MODEL, p, None, x))(p_hand, d.test.x))
    pred = logits.argmax(-1)
    test_acc = float((pred == d.test.y).mean())
    cm = np.zeros((2, 2), int)
    np.add.at(cm, (d.test.y, pred), 1)
    hh, ho = h_hand.as_dict(), h_optax.as_dict()
    curve_diff = max(float(np.nanmax(np.abs(np.subtract(hh[k], ho[k])))) for k in ("train_loss", "val_loss"))

    res = record(
        "cifar2",
        cfg,
        t0,
        prov,
        n_params=N_PARAMS,
        data=d.info,
        grid=done,
        best={
            "label": best_label,
            "lr": best[0],
            "momentum": best[1],
            "weight_decay": best[2],
            "train_acc": hh["train_acc"][-1],
            "val_acc": hh["val_acc"][-1],
            "test_acc": test_acc,
            "confusion_matrix": cm.tolist(),
            "reproduces_grid_run": hh["val_acc"][-1] == ok[best_label]["final_val_acc"],
            "grid_vs_retrain_val_acc": [ok[best_label]["final_val_acc"], hh["val_acc"][-1]],
        },
        hand_vs_optax={"history_hand": hh, "history_optax": ho, "max_abs_loss_curve_diff": curve_diff},
        reused=part.reused(map(label, cfg.grid)),
    )

    def draw(st):
        from jaxgd.experiments import figures

        figures.grid_curves(done, st / "curves.png")
        figures.overlay(hh, ho, f"CIFAR-2 {best_label}", st / "hand_vs_optax.png")
        figures.confusion(cm, d.info["classes"], st / "confusion_test.png")
        wrong = np.flatnonzero(pred != d.test.y)[:24]
        imgs = d.test.x[wrong].reshape(-1, 32, 32, 3) * np.asarray(d.info["std"]) + np.asarray(d.info["mean"])
        figures.misclassified(imgs, d.test.y[wrong], pred[wrong], d.info["classes"], st / "misclassified_test.png")

    write("cifar2", out, res, draw=draw)
    return res


def summary(res) -> list[dict]:
    rows = []
    for k, v in sorted(res["grid"].items(), key=lambda kv: -np.nan_to_num(float(kv[1]["final_val_acc"]), nan=-1)):
        rows.append(
            {
                "config": k,
                "train acc": v["train_acc"][-1],
                "val acc": v["final_val_acc"],
                "diverged": v["diverged_at_epoch"] or "",
                "best": "<-" if k == res["best"]["label"] else "",
            }
        )
    return rows


def about(res, out) -> str:
    c = res["config"]
    return (
        f"**CIFAR-2 MLP** (3072-512-128-32-2, {res['n_params']:,} parameters, hand backprop + hand SGD, "
        f"{len(res['grid'])} configs, {c['epochs']} epochs, batch {c['batch_size']}; the best config by validation "
        f"accuracy, its test accuracy read once). The hand-written update with hand backprop and the `jax.grad` + "
        f"optax twin give loss curves that differ by at most {res['hand_vs_optax']['max_abs_loss_curve_diff']:.1e}."
    )


def notes(res, out) -> list[str]:
    b = res["best"]
    return [
        f"Best by validation accuracy: **{b['label']}**: train {b['train_acc']:.4f}, val {b['val_acc']:.4f}, "
        f"**test {b['test_acc']:.4f}**; hand vs optax loss curves differ by at most "
        f"{res['hand_vs_optax']['max_abs_loss_curve_diff']:.1e}."
    ]


def headline(res, out) -> tuple[str, str]:
    return (
        f"test {res['best']['test_acc']:.4f} (the best of {len(res['grid'])} configs by validation, one seed)",
        f"INF265 reports: {REPORTS}",
    )


EXPERIMENT = Experiment(
    name="cifar2",
    what="INF265 project 1: the CIFAR-2 MLP, a grid of SGD configs, a test report",
    run=run,
    config=Cifar2Config,
    results="cifar2/results.json",
    summary=summary,
    quick={"grid": QUICK_GRID, "epochs": 3, "train_size": 4500},
    figures=(
        "cifar2/curves.png",
        "cifar2/hand_vs_optax.png",
        "cifar2/confusion_test.png",
        "cifar2/misclassified_test.png",
    ),
    needs=("cifar2",),
    resumable=True,
    compare_with=f"the INF265 project 1 reports: best test accuracy {REPORTS}",
    notes=notes,
    about=about,
    headline=headline,
    flags=(("--quick", {"grid": QUICK_GRID}, "the 4-config quick grid instead of the full 18"),),
)
