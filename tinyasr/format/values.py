"""Rules for the numbers a manifest holds, in one place: a model file is untrusted, and its numbers become
float32 weights, frame counts and allocation sizes.

``is_real`` is the test every real-valued manifest key passes (decoder entry, front end, encoding params, op
attributes): a JSON number that stays finite as float32, so 3.5e38 (inf in float32) and a 1025-digit integer
(which ``math.isfinite`` cannot even convert) are refused like NaN.  Sizes are checked as *products* against
``MEMORY_BUDGET`` by the readers that allocate (tinyasr/features/frontend.py, tinyasr/format/encodings/).
"""

from __future__ import annotations

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)
MEMORY_BUDGET = 1 << 30  # bytes one allocation that a manifest value sizes may take: refused past this, not tried


def is_int(x) -> bool:
    """An integer as JSON gives one: a Python int that is not a bool (True is an int in Python)."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_real(x) -> bool:
    """A JSON number finite as float32.  Compares without converting, so a huge integer is False, not an
    OverflowError, and NaN is False."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and -FLOAT32_MAX <= x <= FLOAT32_MAX
