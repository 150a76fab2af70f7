"""``python -m jaxgd``: the ``jaxgd`` command."""

import sys

from jaxgd.cli import main

sys.exit(main())
