"""Reproduce every result and write results/REPORT.md.

The same as `jaxgd reproduce` (see `jaxgd reproduce --help`): this script stays so that
`python scripts/reproduce.py` works in a checkout; its flags are the command's.
"""
import sys

from jaxgd.cli import main

sys.exit(main(['reproduce', *sys.argv[1:]]))
