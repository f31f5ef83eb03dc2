"""`python -m pipeline`: the cros-guest command (pipeline/cli.py)."""

import sys

from .cli import main

sys.exit(main())
