"""Sanity report of the datasets: split sizes, class counts, pixel statistics, sample images."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxgd import data
from jaxgd.experiments.common import load_json, provenance, write
from jaxgd.experiments.config import Config, data_dir_option, option
from jaxgd.experiments.protocol import Experiment
from jaxgd.report import markdown_table


@dataclasses.dataclass(frozen=True)
class DataReportConfig(Config):
    NAME = "data_report"
    datasets: tuple[str, ...] = option(
        ("cifar2", "mnist", "cifar10"), "datasets to report", choices=tuple(data.DATASETS)
    )
    seed: int = option(0, "PRNG seed of the train/validation split")
    val_fraction: float = option(
        0.1, "fraction of the TFDS train split held out for validation", check=((lambda v: 0 <= v < 1), "in [0, 1)")
    )
    data_dir: str | None = data_dir_option()


CONFIG = DataReportConfig


def run(config=None, out=None, force=False, verbose=True, log=print) -> dict:
    """One report per dataset of ``config.datasets``: ``{name: report}``; writes data/<name>.json."""
    cfg = DataReportConfig.make(config)
    return {name: report(name, cfg, out) for name in cfg.datasets}


def report(name, cfg: DataReportConfig, out=None) -> dict:
    raw = data.load(
        name, seed=cfg.seed, val_fraction=cfg.val_fraction, normalize=False, layout="nhwc", data_dir=cfg.data_dir
    )
    k = len(raw.info["classes"])
    splits = {}
    for s in ("train", "val", "test"):
        x, y = getattr(raw, s)
        splits[s] = {
            "size": len(y),
            "class_counts": np.bincount(y, minlength=k).tolist(),
            "pixel_mean": x.mean(axis=(0, 1, 2), dtype=np.float64).tolist(),
            "pixel_std": x.std(axis=(0, 1, 2), dtype=np.float64).tolist(),
            "min": float(x.min()),
            "max": float(x.max()),
        }
    res = {
        "experiment": "data_report",
        "dataset": name,
        "config": {k_: v for k_, v in cfg.to_dict().items() if k_ != "datasets"},
        "splits": splits,
        "info": {k_: v for k_, v in raw.info.items() if k_ not in ("mean", "std")},
        "normalization_from_train": {"mean": raw.info["mean"], "std": raw.info["std"]},
        "provenance": provenance(),
    }
    from jaxgd.experiments import figures

    write(
        "data",
        out,
        res,
        f"{name}.json",
        figures=[
            (
                f"{name}_samples.png",
                lambda path: figures.samples_per_class(raw.train.x, raw.train.y, raw.info["classes"], path),
            )
        ],
    )
    return res


def summary(res) -> list[dict]:
    return [
        {
            "dataset": res["dataset"],
            "split": s,
            "size": v["size"],
            "class counts": v["class_counts"],
            "pixel mean": [round(m, 4) for m in v["pixel_mean"]],
            "range": f"[{v['min']:.0f}, {v['max']:.0f}]",
        }
        for s, v in res["splits"].items()
    ]


def notes(res, out) -> list[str]:
    """The other datasets' tables (the section is headed by the first dataset's file)."""
    others = [out / f"data/{ds}.json" for ds in ("mnist", "cifar10") if ds != res["dataset"]]
    return [markdown_table(summary(load_json(f))) for f in others if f.exists()]


EXPERIMENT = Experiment(
    name="data_report",
    what="the datasets: split sizes, class counts, pixel statistics, sample images",
    run=run,
    config=DataReportConfig,
    results="data/cifar2.json",
    summary=summary,
    quick={"datasets": ("cifar2", "mnist")},
    figures=("data/cifar2_samples.png", "data/mnist_samples.png"),
    needs=("cifar2", "mnist"),
    notes=notes,
    command="",
)
