"""Check every hand-derived gradient against finite differences and jax.grad: every layer's
backward, the nine MNIST models, the CIFAR-2 MLP, INF265's MLP recursion, DD2424's closed form
and the matrix chain, in float64 and float32.

    python scripts/gradcheck.py [--quick]

Prints a table, writes results/gradcheck/results.json, exits 1 if any check fails.
"""
import argparse
import sys

from jaxgd.experiments import gradcheck
from jaxgd.report import print_table

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--quick", action="store_true",
               help="three layers and one MNIST model instead of all of them, and no 1.6M-parameter CIFAR-2 MLP")
p.add_argument("--results", default=None, help="results root (default: ./results)")
a = p.parse_args()
res = gradcheck.run({"quick": a.quick}, out=a.results)
print_table(gradcheck.summary(res))
print("all passed" if res["all_passed"] else "SOME CHECKS FAILED")
sys.exit(0 if res["all_passed"] else 1)
