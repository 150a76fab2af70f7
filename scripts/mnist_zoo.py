"""MNIST model zoo: softmax regression, MLP and CNN, each plain / dropout / batch norm.

The same as `jaxgd mnist-zoo` (see `jaxgd mnist-zoo --help`): this script stays so that
`python scripts/mnist_zoo.py` works in a checkout; its flags are the command's.
"""
import sys

from jaxgd.cli import main

sys.exit(main(['mnist-zoo', *sys.argv[1:]]))
