"""CIFAR-2 (airplane vs bird): MLP 3072-512-128-32-2, hand backprop + hand SGD, grid search, test report.

    python scripts/cifar2_sgd.py [--epochs 30] [--batch-size 64] [--quick] [--force]

Writes results/cifar2/results.json and PNGs. An interrupted grid resumes from
results/cifar2/grid_partial.json unless --force.
"""
import argparse

from jaxgd.experiments import cifar2
from jaxgd.report import print_table

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--epochs", type=int, default=cifar2.DEFAULTS["epochs"])
p.add_argument("--batch-size", type=int, default=cifar2.DEFAULTS["batch_size"])
p.add_argument("--seed", type=int, default=0)
p.add_argument("--quick", action="store_true", help="4 configs instead of the full grid of 18")
p.add_argument("--force", action="store_true", help="retrain finished configs")
p.add_argument("--data-dir", default=None)
p.add_argument("--results", default=None, help="results root (default: ./results)")
a = p.parse_args()
res = cifar2.run({"epochs": a.epochs, "batch_size": a.batch_size, "seed": a.seed, "data_dir": a.data_dir,
                  "grid": cifar2.QUICK_GRID if a.quick else cifar2.GRID}, out=a.results, force=a.force)
print_table(cifar2.summary(res))
b = res["best"]
print(f"best {b['label']}: train {b['train_acc']:.4f}  val {b['val_acc']:.4f}  test {b['test_acc']:.4f}")
