"""CIFAR-10 linear softmax (DD2424 assignment 1): settings A-G over (lambda, eta).

The same as `jaxgd cifar10-softmax` (see `jaxgd cifar10-softmax --help`): this script stays so that
`python scripts/cifar10_softmax.py` works in a checkout; its flags are the command's.
"""
import sys

from jaxgd.cli import main

sys.exit(main(['cifar10-softmax', *sys.argv[1:]]))
