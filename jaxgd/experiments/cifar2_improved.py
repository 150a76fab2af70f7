"""Experiment 3b: the same CIFAR-2 MLP (3072-512-128-32-2) under an improved protocol.

What changes from the INF265 reports' protocol (``cifar2``): training images are flipped and
cropped at random on the device (``augment.flip_crop``, 4-pixel zero padding), SGD uses Nesterov
momentum and weight decay on the weights only (``optim.sgd(nesterov=True,
wd_mask=optim.weights_only)``), the learning rate warms up linearly for 5% of the steps and then
follows a cosine to 0 (``schedules.warmup_cosine``), training runs longer, and ``fit`` returns
each run's parameters from its best epoch by validation accuracy.

Protocol: the learning rate is chosen on validation accuracy (best epoch) at seed 0, among
``lrs``, all trained as one program. The chosen config is then trained at every seed of
``seeds``, where the seed changes the train/validation split, the initial weights, the batch
order and the augmentation, all seeds as one program (``fit(seed=[...], configs=Configs(per_config_data=True))``).
The test set is read once per seed, for the chosen config at its best validation epoch, and
reported as mean +- standard deviation (ddof 1).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jaxgd import augment, data, models, optim, progress, train
from jaxgd.experiments.cifar2 import REPORTS, SIZES
from jaxgd.experiments.common import load_json_if, provenance, record, write
from jaxgd.experiments.config import POSITIVE, Config, at_least, data_dir_option, option, warmup_option
from jaxgd.experiments.protocol import Experiment
from jaxgd.experiments.recipes import BEST_BY_VAL, best_by_val, fit_seeds, improved_schedule, improved_step
from jaxgd.report import markdown_table

TARGET = 0.89  # mean test accuracy over >= 3 seeds


@dataclasses.dataclass(frozen=True)
class Cifar2ImprovedConfig(Config):
    NAME = "cifar2_improved"
    # 200 epochs and lrs up to 0.04: in a first run (100 epochs, lrs 0.005-0.02) the validation accuracy
    # still rose at the last epochs and was best at the largest lr (its test mean: 0.8828 +- 0.0055)
    epochs: int = option(200, "training epochs", check=at_least(1))
    batch_size: int = option(64, "minibatch size (images)", check=at_least(1))
    lrs: tuple[float, ...] = option(
        (0.02, 0.04), "peak learning rates to choose from (on validation, seed 0)", check=POSITIVE
    )
    momentum: float = option(0.9, "Nesterov momentum")
    weight_decay: float = option(5e-4, "weight decay, on the weights (not biases)")
    warmup: float = warmup_option()
    pad: int = option(4, "zero padding of the random crop (pixels)", check=at_least(0))
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds of the final runs (split, init, batch order, augmentation)")
    data_dir: str | None = data_dir_option()
    train_size: int | None = option(None, "train on the first N training images only", check=at_least(1))

    def validate(self):
        if not self.seeds or not self.lrs:
            raise ValueError("give at least one learning rate and one seed")
        optim.sgd_hyperparams(list(self.lrs), self.momentum, self.weight_decay)


CONFIG = Cifar2ImprovedConfig
MODEL = models.mlp(SIZES, "relu")


def _fit(cfg, params, train_xy, val_xy, lrs, show=None):
    """The learning rates ``lrs`` from the same ``params``, as one program, on one split (seed 0)."""
    hp = optim.sgd_hyperparams(
        list(lrs),
        cfg.momentum,
        cfg.weight_decay,
        schedule=improved_schedule(cfg.warmup, cfg.epochs, train_xy[1].shape[-1], cfg.batch_size),
    )
    return train.fit(
        MODEL,
        train.stack_params(params),
        train_xy,
        val_xy,
        hparams=hp,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        step=improved_step(augment.flip_crop((32, 32, 3), cfg.pad)),
        monitor=BEST_BY_VAL,
        seed=0,
        configs=train.Configs(per_config_data=False),
        progress=show,
    )


def run(config=None, out=None, force=False, verbose=True, log=print) -> dict:
    cfg = Cifar2ImprovedConfig.make(config)
    t0, prov = time.time(), provenance()
    load = lambda s: data.load("cifar2", seed=s, data_dir=cfg.data_dir, train_size=cfg.train_size)
    d0 = load(0)
    init = MODEL.init(jax.random.PRNGKey(0))[0]

    # 1. the learning rate, on validation accuracy at seed 0
    show = progress.epoch_logger("choose lr", cfg.epochs, quiet=not verbose, log=log)
    _, _, h = _fit(cfg, [init] * len(cfg.lrs), d0.train, d0.val, cfg.lrs, show=show)
    show.close()
    best_val, chosen = best_by_val(h)
    lr = cfg.lrs[chosen]
    choice = {
        "lrs": list(cfg.lrs),
        "best_val_acc": best_val,
        "best_epoch": h.best_epoch,
        "chosen_lr": lr,
        "val_acc": h.val_acc,
        "train_loss": h.train_loss,
    }

    # 2. the chosen config at every seed, as one program
    splits = [d0 if s == 0 else load(s) for s in cfg.seeds]
    inits = [MODEL.init(jax.random.PRNGKey(s))[0] for s in cfg.seeds]
    show = progress.epoch_logger(f"lr {lr:g} x {len(cfg.seeds)} seeds", cfg.epochs, quiet=not verbose, log=log)
    runs, mean, std, _ = fit_seeds(
        MODEL,
        [(p, None) for p in inits],
        splits,
        cfg.seeds,
        cfg,
        lr,
        cfg.epochs,
        augment.flip_crop((32, 32, 3), cfg.pad),
        show,
        "train_acc",
    )
    show.close()
    res = record(
        "cifar2_improved",
        cfg,
        t0,
        prov,
        data=d0.info,
        choice=choice,
        runs=runs,
        test_acc_mean=mean,
        test_acc_std=std,
        target=TARGET,
        reports_test_acc=REPORTS,
    )
    from jaxgd.experiments import figures

    write("cifar2_improved", out, res, figures=[("seed_curves.png", lambda p: figures.seed_curves(res, p))])
    return res


def summary(res) -> list[dict]:
    rows = [
        {
            "run": f"seed {r['seed']}",
            "lr": res["choice"]["chosen_lr"],
            "best epoch (by val)": r["best_epoch"],
            "val acc": r["val_acc"],
            "test acc": r["test_acc"],
        }
        for r in res["runs"]
    ]
    rows.append(
        {
            "run": f"mean +- std over {len(res['runs'])} seeds",
            "lr": res["choice"]["chosen_lr"],
            "best epoch (by val)": "",
            "val acc": float(np.mean([r["val_acc"] for r in res["runs"]])),
            "test acc": f"{res['test_acc_mean']:.4f} +- {res['test_acc_std']:.4f}",
        }
    )
    return rows


def about(res, out) -> str:
    c = res["config"]
    return (
        f"**CIFAR-2, improved protocol** (the same MLP; what changed: random flips and {c['pad']}-pixel crops on the "
        f"device, Nesterov momentum {c['momentum']:g}, weight decay {c['weight_decay']:g} on the weights only, a "
        f"linear warm-up then a cosine to 0, {c['epochs']} epochs, each run's best epoch by validation accuracy; "
        f"the learning rate chosen among {c['lrs']} on validation at seed 0; each seed changes the split, the "
        f"initial weights, the batch order and the augmentation; test read once per seed; target "
        f">= {res['target']} as the mean)."
    )


def notes(res, out) -> list[str]:
    """The three protocols side by side, and the protocol's first run (kept with its own provenance,
    since its test accuracy was read)."""
    base = load_json_if(out / "cifar2/results.json")
    rows = [{"protocol": "INF265 reports (one run each)", "test acc": res["reports_test_acc"]}]
    if base is not None:
        rows.append(
            {
                "protocol": f"the reports' protocol here (best of {len(base['grid'])} configs by val, seed "
                f"{base['config']['seed']})",
                "test acc": base["best"]["test_acc"],
            }
        )
    each = ", ".join(f"{x['test_acc']:.4f}" for x in res["runs"])
    rows.append(
        {
            "protocol": f"improved (lr {res['choice']['chosen_lr']:g} by val; mean +- std over "
            f"{len(res['runs'])} seeds)",
            "test acc": f"{res['test_acc_mean']:.4f} +- {res['test_acc_std']:.4f} ({each})",
        }
    )
    lines = [markdown_table(rows)]
    r = load_json_if(out / "cifar2_improved/first_run.json")
    if r is not None:
        c = r["config"]
        lines.append(
            f"The protocol's first run ({c['epochs']} epochs, lrs {c['lrs']}; commit "
            f"{r['provenance']['commit']}; `cifar2_improved/first_run.json`) chose lr "
            f"{r['choice']['chosen_lr']:g} and reached test {r['test_acc_mean']:.4f} +- {r['test_acc_std']:.4f}. "
            "Its validation accuracy was still rising at the last epochs and best at the largest lr, so the "
            "protocol grew to the epochs and lrs above."
        )
    return lines


def headline(res, out) -> tuple[str, str]:
    return (
        f"test {res['test_acc_mean']:.4f} +- {res['test_acc_std']:.4f} (mean +- std, {len(res['runs'])} seeds)",
        f"target >= {res['target']}; INF265 reports: {REPORTS}",
    )


EXPERIMENT = Experiment(
    name="cifar2_improved",
    what="the CIFAR-2 MLP with augmentation, Nesterov, warm-up + cosine, best epoch by validation, over seeds",
    run=run,
    config=Cifar2ImprovedConfig,
    results="cifar2_improved/results.json",
    summary=summary,
    quick={"epochs": 4, "lrs": (0.01, 0.02), "seeds": (0, 1), "train_size": 4500},
    figures=("cifar2_improved/seed_curves.png",),
    needs=("cifar2",),
    compare_with=f"the INF265 project 1 reports: best test accuracy {REPORTS} (one run each, their "
    f"protocol); this protocol's target: {TARGET} as the mean over >= 3 seeds",
    notes=notes,
    about=about,
    headline=headline,
)
