"""``python -m twotower.cli ARGS``: the ``twotower`` command (used where the console script is not on PATH)."""

import sys

from . import main

sys.exit(main())
