"""Sanity report of the datasets: results/data/<name>.json and <name>_samples.png.

    python scripts/data_report.py [--datasets cifar2 mnist cifar10] [--data-dir DIR]
"""
import argparse

from jaxgd.experiments import data_report
from jaxgd.report import print_table

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--datasets", nargs="+", default=["cifar2", "mnist", "cifar10"])
p.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--results", default=None, help="results root (default: ./results)")
a = p.parse_args()
for name in a.datasets:
    res = data_report.run(name, {"seed": a.seed, "data_dir": a.data_dir}, out=a.results)
    print_table(data_report.summary(res))
