"""CIFAR-10 linear softmax (DD2424 assignment 1): settings A-G over (lambda, eta).

    python scripts/cifar10_softmax.py [--epochs 40] [--n-batch 100] [--settings A B C D]

Writes results/cifar10_softmax/results.json, curves_<S>.png and templates_<S>.png.
"""
import argparse

from jaxgd.experiments import cifar10_softmax as exp
from jaxgd.report import print_table

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--epochs", type=int, default=exp.DEFAULTS["epochs"])
p.add_argument("--n-batch", type=int, default=exp.DEFAULTS["n_batch"])
p.add_argument("--settings", nargs="+", default=exp.DEFAULTS["settings"], choices=sorted(exp.SETTINGS))
p.add_argument("--seed", type=int, default=0)
p.add_argument("--data-dir", default=None)
p.add_argument("--results", default=None, help="results root (default: ./results)")
a = p.parse_args()
res = exp.run({"epochs": a.epochs, "n_batch": a.n_batch, "settings": a.settings, "seed": a.seed,
               "data_dir": a.data_dir}, out=a.results, verbose=True)
print_table(exp.summary(res))
print("gradient check (float64):", {k: f"{v['fd_max']:.2e}" for k, v in res["gradient_check"].items()})
