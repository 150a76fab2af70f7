"""Experiment 6: a small residual network on CIFAR-2 and CIFAR-10, every gradient by hand.

``models.resnet``: He et al. (2016)'s CIFAR ResNet shape (3x3 convs, batch norm, identity and
1x1 stride-2 projection shortcuts, global average pooling), one block per stage (ResNet-8) so
that a run fits a session on a 2-core CPU. Its gradient is the hand reverse pass through the
residual blocks (``layers.residual``: the two paths' input gradients add); before training, it
is compared with ``jax.grad`` in float64 on real images.

Protocol, fixed in advance (no search, so no learning rate is chosen on any split): He et al.'s
CIFAR recipe at a short budget, Nesterov SGD (momentum 0.9) with weight decay on the weights, a
linear warm-up for 5% of the steps and a cosine to 0, random flips and 4-pixel crops, batch 128.
Every seed of a dataset (split, init, batch order, augmentation) trains as one program; each
run's parameters come from its best epoch by validation accuracy, and the test set is read once
per seed, there. Each dataset is saved as soon as it finishes (a stopped run resumes).
"""

from __future__ import annotations

import dataclasses
import time

import jax

from jaxgd import augment, data, models, optim, progress
from jaxgd.experiments.common import duration, load_json_if, run_datasets
from jaxgd.experiments.config import Config, at_least, data_dir_option, option, warmup_option
from jaxgd.experiments.protocol import Experiment
from jaxgd.experiments.recipes import fit_seeds, hand_vs_autodiff, seeds_record

DATASETS = ("cifar2", "cifar10")
CLASSES = {"cifar2": 2, "cifar10": 10}


@dataclasses.dataclass(frozen=True)
class ResnetConfig(Config):
    NAME = "resnet"
    datasets: tuple[str, ...] = option(DATASETS, "datasets to train on", choices=DATASETS)
    cifar2_epochs: int = option(12, "training epochs on CIFAR-2", check=at_least(1))
    cifar10_epochs: int = option(10, "training epochs on CIFAR-10", check=at_least(1))
    cifar2_seeds: tuple[int, ...] = option((0, 1, 2), "seeds of the CIFAR-2 runs (split, init, batch order, crops)")
    cifar10_seeds: tuple[int, ...] = option((0,), "seeds of the CIFAR-10 runs")
    widths: tuple[int, ...] = option(
        (16, 32, 64), "channels per stage (each stage after the first halves height and width)", check=at_least(1)
    )
    blocks: int = option(1, "residual blocks per stage (1: ResNet-8, 3: ResNet-20)", check=at_least(1))
    batch_size: int = option(128, "minibatch size (images)", check=at_least(1))
    lr: float = option(0.1, "peak learning rate (Nesterov SGD)")
    momentum: float = option(0.9, "Nesterov momentum")
    weight_decay: float = option(5e-4, "weight decay, on the weights (not biases or batch-norm parameters)")
    warmup: float = warmup_option()
    pad: int = option(4, "zero padding of the random crop (pixels)", check=at_least(0))
    train_size: int | None = option(None, "train on the first N training images only", check=at_least(1))
    data_dir: str | None = data_dir_option()

    def validate(self):
        for ds in self.datasets:
            seeds = self.seeds(ds)
            if not seeds or len(set(seeds)) != len(seeds):
                raise ValueError(f"{ds}: give at least one seed, all different; got {list(seeds)}")
        optim.sgd_hyperparams(self.lr, self.momentum, self.weight_decay)

    def seeds(self, dataset) -> tuple:
        return getattr(self, f"{dataset}_seeds")

    def epochs(self, dataset) -> int:
        return getattr(self, f"{dataset}_epochs")


CONFIG = ResnetConfig


def model_for(cfg, dataset) -> models.Model:
    return models.resnet(cfg.widths, cfg.blocks, CLASSES[dataset])


def train_one(dataset, cfg, verbose=False, log=print) -> dict:
    seeds, epochs = cfg.seeds(dataset), cfg.epochs(dataset)
    splits = [
        data.load(dataset, seed=s, layout="nhwc", data_dir=cfg.data_dir, train_size=cfg.train_size) for s in seeds
    ]
    model = model_for(cfg, dataset)
    inits = [model.init(jax.random.PRNGKey(s)) for s in seeds]
    params0, state0 = inits[0]
    check = hand_vs_autodiff(model, params0, state0, splits[0].train.x[:16], splits[0].train.y[:16])
    show = progress.epoch_logger(
        f"{dataset} x {len(seeds)} seeds", epochs, quiet=not verbose, log=lambda s: log(f"  {dataset}: {s}")
    )
    t0 = time.time()
    fitted = fit_seeds(
        model, inits, splits, seeds, cfg, cfg.lr, epochs, augment.flip_crop((32, 32, 3), cfg.pad), show, "train_loss"
    )
    show.close()
    return seeds_record(dataset, model, inits, splits, seeds, epochs, check, fitted, t0)


def run(config=None, out=None, force=False, verbose=True, log=print) -> dict:
    cfg = ResnetConfig.make(config)
    from jaxgd.experiments import figures

    return run_datasets(
        "resnet",
        cfg,
        lambda ds: train_one(ds, cfg, verbose, log),
        "settings fixed in advance (no search); best epoch by validation accuracy; test read once "
        "per seed, at that epoch",
        desc="ResNet",
        say=lambda ds: f"training on {ds} ({cfg.epochs(ds)} epochs x {len(cfg.seeds(ds))} seeds)",
        out=out,
        force=force,
        verbose=verbose,
        log=log,
        figures=lambda res: [("curves.png", lambda path: figures.resnet_curves(res, path))],
    )


def summary(res) -> list[dict]:
    rows = []
    depth = models.resnet_depth(res["config"]["widths"], res["config"]["blocks"])
    for ds, r in res["datasets"].items():
        rows.append(
            {
                "dataset": ds,
                "model": f"ResNet-{depth}",
                "params": r["n_params"],
                "epochs": r["epochs"],
                "best epochs (by val)": " / ".join(str(x["best_epoch"]) for x in r["runs"]),
                "test acc, mean +- std": (
                    f"{r['test_acc_mean']:.4f} +- {r['test_acc_std']:.4f}"
                    if len(r["runs"]) > 1
                    else f"{r['test_acc_mean']:.4f} (1 seed)"
                ),
                "per seed": ", ".join(f"{x['test_acc']:.4f}" for x in r["runs"]),
                "hand vs jax.grad (float64)": f"{r['hand_vs_autodiff']['max_rel']:.1e}",
                "train time": duration(r["train_time_s"]),
            }
        )
    return rows


def about(res, out) -> str:
    c = res["config"]
    hours = sum(d["train_time_s"] for d in res["datasets"].values()) / 3600
    depth = models.resnet_depth(c["widths"], c["blocks"])
    return (
        f"**A residual network, every gradient by hand** (`jaxgd resnet`; `models.resnet`: ResNet-{depth}, widths "
        f"{list(c['widths'])}, {c['blocks']} block(s) per stage, 3x3 convs, batch norm, identity and 1x1 stride-2 "
        "projection shortcuts, global average pooling, He et al. (2016)'s CIFAR shape; its gradient is the hand "
        "reverse pass through `layers.residual`, compared with `jax.grad` in float64 on real images before "
        f"training; recipe fixed in advance, no search: Nesterov SGD lr {c['lr']:g}, momentum {c['momentum']:g}, "
        f"weight decay {c['weight_decay']:g} on the weights, warm-up then cosine, flips and {c['pad']}-pixel crops, "
        f"batch {c['batch_size']}, each run's best epoch by validation accuracy, test read once per seed; "
        f"{hours:.1f} h of training on the 2-core CPU, shared part of the time with other runs. A target of "
        ">= 0.93 on CIFAR-10 needs a longer run, on a GPU)."
    )


def notes(res, out) -> list[str]:
    """The MLP and the linear softmax trained here on the same test images."""
    others = []
    o = load_json_if(out / "cifar2_improved/results.json")
    if o is not None:
        others.append(f"the INF265 CIFAR-2 MLP, improved protocol: {o['test_acc_mean']:.4f} +- {o['test_acc_std']:.4f}")
    o = load_json_if(out / "cifar10_improved/results.json")
    if o is not None:
        acc = o["chosen"].get("test_acc") if isinstance(o.get("chosen"), dict) else None
        if acc is not None:
            others.append(f"DD2424's linear softmax on CIFAR-10, improved: {acc:.4f}")
    return [f"On the same test images: {'; '.join(others)}."] if others else []


def headline(res, out) -> tuple[str, str]:
    return (
        "; ".join(
            f"{ds} {r['test_acc_mean']:.4f}"
            + (f" +- {r['test_acc_std']:.4f} ({len(r['runs'])} seeds)" if len(r["runs"]) > 1 else " (1 seed)")
            for ds, r in res["datasets"].items()
        ),
        "the MLP and the linear softmax above; >= 0.93 on CIFAR-10 is for a run on a GPU",
    )


EXPERIMENT = Experiment(
    name="resnet",
    what="a ResNet-8 (residual blocks, batch norm, strided convs) on CIFAR-2 and CIFAR-10, every "
    "gradient by hand, over seeds",
    run=run,
    config=ResnetConfig,
    results="resnet/results.json",
    summary=summary,
    quick={"datasets": ("cifar2",), "cifar2_epochs": 1, "cifar2_seeds": (0, 1), "train_size": 1024},
    # quick: CIFAR-2 only. CIFAR-10's 5,000 validation and 10,000 test images through the ResNet were more
    # than half of its time in the quick profile; cifar10_softmax and cifar10_improved show CIFAR-10 there
    figures=("resnet/curves.png",),
    needs=("cifar2", "cifar10"),
    resumable=True,
    compare_with="the CIFAR-2 MLP of INF265 project 1 (`cifar2_improved` above) and DD2424's linear softmax on "
    "CIFAR-10 (`cifar10_improved`), the other models trained here on these images; a target of >= 0.93 "
    "on CIFAR-10 is for a run on a GPU",
    notes=notes,
    about=about,
    headline=headline,
)
