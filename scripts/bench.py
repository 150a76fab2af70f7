"""Benchmarks, measured side by side in one run (see jaxgd/experiments/bench.py).

The same as `jaxgd bench` (see `jaxgd bench --help`): this script stays so that
`python scripts/bench.py` works in a checkout; its flags are the command's.
"""
import sys

from jaxgd.cli import main

sys.exit(main(['bench', *sys.argv[1:]]))
