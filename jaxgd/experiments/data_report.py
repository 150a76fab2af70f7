"""Sanity report of a dataset: split sizes, class counts, pixel statistics, sample images."""
from __future__ import annotations

import numpy as np

from jaxgd import data
from jaxgd.experiments.common import outdir, provenance, save_json


def run(name="cifar2", config=None, out=None) -> dict:
    cfg = {"seed": 0, "val_fraction": 0.1, **(config or {})}
    raw = data.load(name, seed=cfg["seed"], val_fraction=cfg["val_fraction"], normalize=False, layout="nhwc",
                    data_dir=cfg.get("data_dir"))
    k = len(raw.info["classes"])
    splits = {}
    for s in ("train", "val", "test"):
        x, y = getattr(raw, s)
        splits[s] = {"size": len(y), "class_counts": np.bincount(y, minlength=k).tolist(),
                     "pixel_mean": x.mean(axis=(0, 1, 2), dtype=np.float64).tolist(),
                     "pixel_std": x.std(axis=(0, 1, 2), dtype=np.float64).tolist(),
                     "min": float(x.min()), "max": float(x.max())}
    res = {"experiment": "data_report", "dataset": name, "config": cfg, "splits": splits,
           "info": {k_: v for k_, v in raw.info.items() if k_ not in ("mean", "std")},
           "normalization_from_train": {"mean": raw.info["mean"], "std": raw.info["std"]},
           "provenance": provenance()}
    if out is not False:
        from jaxgd import plots
        d = outdir("data", out)
        plots.samples_per_class(raw.train.x, raw.train.y, raw.info["classes"], d / f"{name}_samples.png")
        save_json(d / f"{name}.json", res)
    return res


def summary(res) -> list[dict]:
    return [{"dataset": res["dataset"], "split": s, "size": v["size"], "class counts": v["class_counts"],
             "pixel mean": [round(m, 4) for m in v["pixel_mean"]], "range": f"[{v['min']:.0f}, {v['max']:.0f}]"}
            for s, v in res["splits"].items()]
