"""``python -m tinyasr`` is the ``tinyasr`` command."""

import sys

from .cli import main

sys.exit(main())
