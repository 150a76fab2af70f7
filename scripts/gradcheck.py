"""Check every hand-derived gradient against finite differences and jax.grad: every layer's

The same as `jaxgd gradcheck` (see `jaxgd gradcheck --help`): this script stays so that
`python scripts/gradcheck.py` works in a checkout; its flags are the command's.
"""
import sys

from jaxgd.cli import main

sys.exit(main(['gradcheck', *sys.argv[1:]]))
