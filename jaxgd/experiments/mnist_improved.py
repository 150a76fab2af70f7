"""Experiment 4b: the nine MNIST zoo models under an improved protocol, each over several seeds.

The architectures are ``mnist_zoo``'s (``models.mnist_zoo``), trained by the same ``fit`` with
their hand-derived gradients. What changes from CSI 5340 homework 2's protocol (``mnist_zoo``):
5,000 of the 60,000 training images are held out for validation (the split changes with the
seed); training images are shifted at random by up to ``shift`` pixels on the device
(``augment.flip_crop(flip=False)``: a crop of the zero-padded image, no mirroring, since digits
are not symmetric); SGD uses Nesterov momentum and weight decay on the weights only
(``optim.sgd(nesterov=True, wd_mask=optim.weights_only)``), the learning rate warms up linearly
and then follows a cosine to 0 (``schedules.warmup_cosine``); each family trains for its own
number of epochs; and ``fit`` returns each run's parameters from its best epoch by validation
accuracy.

Protocol: the settings are fixed in advance, with no search (one learning rate for all nine
models). Each model trains at every seed of ``seeds`` as one program (``fit(seed=[...],
configs=Configs(per_config_data=True))``): the seed changes the split, the initial weights, the batch order, the
dropout masks and the shifts. The test set is read once per seed, at the best validation epoch,
and reported as mean +- standard deviation (ddof 1). Each finished model is saved at once, so a
stopped run resumes.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jaxgd import augment, data, layers, models, optim, progress
from jaxgd.experiments.common import PartialRun, load_json_if, provenance, record, write
from jaxgd.experiments.config import Config, at_least, data_dir_option, option, warmup_option
from jaxgd.experiments.mnist_zoo import MODELS, family_ranges
from jaxgd.experiments.protocol import Experiment
from jaxgd.experiments.recipes import fit_seeds, stack_splits
from jaxgd.report import markdown_table

TARGETS = {"softmax": None, "mlp": 0.985, "cnn": 0.994}  # mean test accuracy over >= 3 seeds


@dataclasses.dataclass(frozen=True)
class MnistImprovedConfig(Config):
    NAME = "mnist_improved"
    softmax_epochs: int = option(20, "training epochs of the softmax regressions", check=at_least(1))
    mlp_epochs: int = option(50, "training epochs of the MLPs", check=at_least(1))
    cnn_epochs: int = option(20, "training epochs of the CNNs", check=at_least(1))
    batch_size: int = option(128, "minibatch size (images)", check=at_least(1))
    lr: float = option(0.05, "peak learning rate (Nesterov SGD)")
    momentum: float = option(0.9, "Nesterov momentum")
    weight_decay: float = option(5e-4, "weight decay, on the weights (not biases or batch-norm parameters)")
    warmup: float = warmup_option()
    shift: int = option(2, "random shifts of up to this many pixels (crop of the zero-padded image)", check=at_least(0))
    val_size: int = option(
        5000, "validation images (from the 60,000 training images); the rest train", check=at_least(1)
    )
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds (split, init, batch order, dropout, shifts)")
    models: tuple[str, ...] = option(MODELS, "models to train, family/variant", choices=MODELS)
    conv_impl: str = option("auto", "conv2d forward", choices=layers.CONV_IMPLS)
    train_size: int | None = option(None, "train on the first N of the remaining training images", check=at_least(1))
    data_dir: str | None = data_dir_option()

    def validate(self):
        if not self.seeds or not self.models:
            raise ValueError("give at least one seed and one model")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"the seeds must differ, got {list(self.seeds)}")
        optim.sgd_hyperparams(self.lr, self.momentum, self.weight_decay)

    def epochs(self, family: str) -> int:
        return getattr(self, f"{family}_epochs")


CONFIG = MnistImprovedConfig


def train_one(name, splits, stacked, cfg, verbose=False, log=print) -> dict:
    """Train model ``name`` at every seed as one program (``stacked``: the seeds' train and val
    splits, ``recipes.stack_splits``); the test set is read once per seed."""
    family, variant = name.split("/")
    model = models.mnist_zoo(family, variant, cfg.conv_impl)
    inits = [model.init(jax.random.PRNGKey(s)) for s in cfg.seeds]
    epochs = cfg.epochs(family)
    show = progress.epoch_logger(
        f"{name} x {len(cfg.seeds)} seeds", epochs, quiet=not verbose, log=lambda s: log(f"  {name}: {s}")
    )
    shifts = augment.flip_crop((28, 28, 1), cfg.shift, flip=False) if cfg.shift else None
    runs, mean, std, h = fit_seeds(
        model, inits, splits, cfg.seeds, cfg, cfg.lr, epochs, shifts, show, "train_loss", stacked
    )
    show.close()
    return {
        "family": family,
        "variant": variant,
        "layers": model.describe(),
        "epochs": epochs,
        "n_params": models.count_params(inits[0][0]),
        "runs": runs,
        "test_acc_mean": mean,
        "test_acc_std": std,
        "target": TARGETS[family],
        "epoch_time_s": h.epoch_time,
        "compile_time_s": h.compile_time,
        "diverged_at_epoch": h.diverged_at,
    }


def run(config=None, out=None, force=False, verbose=True, log=print) -> dict:
    cfg = MnistImprovedConfig.make(config)
    t0, prov = time.time(), provenance()  # the code as it was when training started
    splits = [
        data.load(
            "mnist", val_size=cfg.val_size, train_size=cfg.train_size, seed=s, layout="nhwc", data_dir=cfg.data_dir
        )
        for s in cfg.seeds
    ]
    part = PartialRun.of("mnist_improved", out, cfg, "models", "models", prov, force, verbose, log)
    stacked = stack_splits(splits, "train"), stack_splits(splits, "val")  # once, for all nine models
    done = part.each(
        cfg.models,
        lambda name: train_one(name, splits, stacked, cfg, verbose, log),
        "MNIST improved",
        quiet=not verbose,
        say=lambda name: log(f"training {name} ({cfg.epochs(name.split('/')[0])} epochs x {len(cfg.seeds)} seeds)"),
    )
    res = record(
        "mnist_improved",
        cfg,
        t0,
        prov,
        data=splits[0].info,
        models=done,
        note="settings fixed in advance (no search); best epoch by validation accuracy; test read once "
        "per seed, at that epoch",
        reused=part.reused(cfg.models),
    )
    from jaxgd.experiments import figures

    write("mnist_improved", out, res, figures=[("test_acc.png", lambda path: figures.zoo_seeds(res, path))])
    return res


def summary(res) -> list[dict]:
    rows = []
    for name, r in res["models"].items():
        rows.append(
            {
                "model": name,
                "epochs": r["epochs"],
                "best epochs (by val)": " / ".join(str(x["best_epoch"]) for x in r["runs"]),
                "val acc (mean)": float(np.mean([x["val_acc"] for x in r["runs"]])),
                "test acc, mean +- std": f"{r['test_acc_mean']:.4f} +- {r['test_acc_std']:.4f}",
                "per seed": ", ".join(f"{x['test_acc']:.4f}" for x in r["runs"]),
                "target": r["target"] if r["target"] is not None else "",
                "met": "" if r["target"] is None else ("yes" if r["test_acc_mean"] >= r["target"] else "NO"),
            }
        )
    return rows


def about(res, out) -> str:
    c = res["config"]
    which = "the same nine models" if len(res["models"]) == len(MODELS) else f"{', '.join(res['models'])} of the nine"
    return (
        f"**MNIST, improved protocol** ({which}, `jaxgd mnist-improved`; what changed: "
        f"{c['val_size']:,} of the 60,000 training images held out for validation, random shifts of up to "
        f"{c['shift']} pixels on the device, Nesterov momentum {c['momentum']:g}, weight decay "
        f"{c['weight_decay']:g} on the weights only, lr {c['lr']:g} with a linear warm-up then a cosine to 0, each "
        "run's best epoch by validation accuracy; settings fixed in advance, no search; each seed changes the "
        "split, the initial weights, the batch order, the dropout masks and the shifts; test read once per seed; "
        "targets: every CNN >= 0.994 and every MLP >= 0.985 as the mean)."
    )


def _zoo(out) -> dict:
    zoo = load_json_if(out / "mnist/results.json")
    return zoo["models"] if zoo is not None else {}


def notes(res, out) -> list[str]:
    """Beside the CSI 5340 protocol's numbers; each missed target with what validation said of it; where
    the settings lowered softmax regression's accuracy."""
    zoo = _zoo(out)
    lines = [
        markdown_table(
            [
                {
                    "model": n,
                    "CSI 5340 protocol here (1 seed, last epoch)": zoo[n]["final_test_acc"] if n in zoo else "",
                    f"improved (mean over {len(m['runs'])} seeds)": m["test_acc_mean"],
                }
                for n, m in res["models"].items()
            ]
        )
    ]
    mean = lambda m, f: float(np.mean([f(x) for x in m["runs"]]))
    val, loss = (lambda x: x["val_acc"]), (lambda x: x["train_loss_curve"][-1])
    for n, m in res["models"].items():
        if m["target"] is None or m["test_acc_mean"] >= m["target"]:
            continue
        rest = {k: o for k, o in res["models"].items() if o["family"] == m["family"] and k != n}

        def beside(f, fmt):  # the family's other models, for comparison (none in a run of one per family)
            return f" ({', '.join(f'{k} {f(o):{fmt}}' for k, o in rest.items())})" if rest else ""

        lines.append(
            f"{n} misses its target by {m['target'] - m['test_acc_mean']:.4f}. Validation said so before the "
            f"test set was read: {mean(m, val):.4f} at its best epochs{beside(lambda o: mean(o, val), '.4f')}, "
            f"and its training loss (the last epoch's running mean, in training mode) is "
            f"{mean(m, loss):.3f}{beside(lambda o: mean(o, loss), '.3f')}: with these settings it under-fits."
        )
    worse = [
        n
        for n, m in res["models"].items()
        if m["family"] == "softmax" and n in zoo and m["test_acc_mean"] < zoo[n]["final_test_acc"]
    ]
    if worse:
        lines.append(
            f"Softmax regression has no target here and does worse under these settings than under CSI "
            f"5340's ({', '.join(worse)}), most likely because of the shifts: a shift moves a digit's pixels, "
            "which a model linear in the pixels cannot undo (crops lowered the CIFAR-10 linear softmax's "
            "validation accuracy too). The shifts are for the MLPs and CNNs; the CSI 5340 protocol's numbers "
            "stay softmax regression's best here."
        )
    return lines


def headline(res, out) -> tuple[str, str]:
    targeted = [m for m in res["models"].values() if m["target"] is not None]
    met = sum(m["test_acc_mean"] >= m["target"] for m in targeted)
    n = {len(m["runs"]) for m in res["models"].values()}
    return (
        f"mean test acc {family_ranges(res['models'], 'test_acc_mean')} ({'/'.join(map(str, sorted(n)))} seeds); {met} of {len(targeted)} meet their target",
        "targets (mean over >= 3 seeds): " + ", ".join(f"{f} {t}" for f, t in TARGETS.items() if t),
    )


EXPERIMENT = Experiment(
    name="mnist_improved",
    what="the nine MNIST models with shifts, Nesterov, warm-up + cosine, best epoch by validation, over seeds",
    run=run,
    config=MnistImprovedConfig,
    results="mnist_improved/results.json",
    summary=summary,
    # quick: one model per family, each variant once (mnist_zoo's quick run trains all nine)
    quick={
        "softmax_epochs": 2,
        "mlp_epochs": 2,
        "cnn_epochs": 1,
        "train_size": 2000,
        "val_size": 1000,
        "seeds": (0, 1),
        "models": ("softmax/plain", "mlp/dropout", "cnn/batchnorm"),
    },
    figures=("mnist_improved/test_acc.png",),
    needs=("mnist",),
    resumable=True,
    compare_with="the CSI 5340 homework 2 protocol's results in `mnist_zoo` above (one seed, last epoch); this "
    "protocol's targets: every CNN >= 0.994 and every MLP >= 0.985 as the mean over >= 3 seeds",
    notes=notes,
    about=about,
    headline=headline,
)
