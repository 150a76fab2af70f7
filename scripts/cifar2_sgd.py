"""CIFAR-2 (airplane vs bird): MLP 3072-512-128-32-2, hand backprop + hand SGD, grid search, test report.

The same as `jaxgd cifar2` (see `jaxgd cifar2 --help`): this script stays so that
`python scripts/cifar2_sgd.py` works in a checkout; its flags are the command's.
"""
import sys

from jaxgd.cli import main

sys.exit(main(['cifar2', *sys.argv[1:]]))
