"""Benchmarks, measured side by side in one run (see jaxgd/experiments/bench.py).

    python scripts/bench.py [--repeats 5] [--sections matmul mlp_epoch grad configs cnn_epoch]
                            [--no-cnn-variants] [--no-torch]

Prints the table and the ratios; writes results/bench/<device>.json and <device>.png.
PyTorch rows need torch: pip install 'jaxgd[torch]'.
"""
import argparse

from jaxgd.experiments import bench
from jaxgd.report import print_table

D = bench.DEFAULTS
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--repeats", type=int, default=D["repeats"], help="timed runs per row (median, min, max)")
p.add_argument("--sections", nargs="+", default=list(D["sections"]), choices=D["sections"])
p.add_argument("--no-cnn-variants", action="store_true",
               help="time only the default CNN epoch (not the im2col forward and jax.grad variants)")
p.add_argument("--no-torch", action="store_true", help="leave out the PyTorch rows")
p.add_argument("--results", default=None, help="results root (default: ./results)")
a = p.parse_args()
res = bench.run({"repeats": a.repeats, "sections": a.sections, "cnn_variants": not a.no_cnn_variants, "torch": not a.no_torch},
                out=a.results, verbose=False)
print_table(bench.table(res["sections"]))
print()
print_table(bench.ratio_rows(res))
