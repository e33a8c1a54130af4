"""Where the shared data lives: ``../shared`` beside the repository (as on CI), or ``$TINYASR_SHARED``."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_FROM_ENV = bool(os.environ.get("TINYASR_SHARED"))  # set and not empty
SHARED_DIR = Path(os.environ["TINYASR_SHARED"] if SHARED_FROM_ENV else REPO.parent / "shared")


def skipped_for_shared_data(reason: str) -> bool:
    """Whether a skip reason is the shared data's absence (test files say "shared ..." or name a path in it)."""
    return "shared" in reason.lower() or str(SHARED_DIR) in reason
