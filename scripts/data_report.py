"""Sanity report of the datasets: results/data/<name>.json and <name>_samples.png.

The same as `jaxgd data report` (see `jaxgd data report --help`): this script stays so that
`python scripts/data_report.py` works in a checkout; its flags are the command's.
"""
import sys

from jaxgd.cli import main

sys.exit(main(['data', 'report', *sys.argv[1:]]))
