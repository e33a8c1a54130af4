"""``python -m tinyasr`` is the ``tinyasr`` command."""

import sys

from tinyasr.cli.main import main

sys.exit(main())
