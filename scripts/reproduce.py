"""Reproduce every result and write results/REPORT.md.

    python scripts/reproduce.py --quick          # a few minutes on a 2-core CPU -> results/quick/
    python scripts/reproduce.py --full           # the course reports' protocols -> results/
    python scripts/reproduce.py --full --only cifar2 --force

A finished experiment is skipped unless --force; a failing one is reported and
the others still run; the exit code is 0 only if all succeeded.
"""
import argparse
import sys

from jaxgd.experiments import reproduce

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
g = p.add_mutually_exclusive_group()
g.add_argument("--quick", action="store_const", dest="profile", const="quick")
g.add_argument("--full", action="store_const", dest="profile", const="full")
p.add_argument("--only", nargs="+", choices=list(reproduce.EXPERIMENTS))
p.add_argument("--force", action="store_true")
p.add_argument("--data-dir", default=None)
p.add_argument("--results", default=None, help="results root (default: ./results)")
a = p.parse_args()
status = reproduce.run_all(a.profile or "quick", a.only, a.force, a.results, a.data_dir)
for name, s in status.items():
    print(f"{name:16s} {s}")
print(f"report: {reproduce.root(a.profile or 'quick', a.results) / 'REPORT.md'}")
sys.exit(0 if all(not s.startswith("FAILED") for s in status.values()) else 1)
