"""``python -m twotower ARGS``: the ``twotower`` command."""

import sys

from .cli import main

sys.exit(main())
