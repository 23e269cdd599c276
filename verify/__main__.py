"""``python -m verify``: see :mod:`verify.cli`."""

import sys

from .cli import main

sys.exit(main())
