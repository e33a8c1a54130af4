"""Where the shared data lives: ``../shared`` beside the repository (as on CI), or ``$TINYASR_SHARED``."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("TINYASR_SHARED", REPO.parent / "shared"))
