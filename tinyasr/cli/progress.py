"""A progress bar on stderr for long files and batches: tqdm's when it is installed, else a one-line bar.

Silent when stderr is not a terminal (logs, pipes, CI) or when asked (``--quiet``), so the output of a
command never depends on it.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

LONG_FILE_SECONDS = 30.0  # a single file longer than this gets a bar (seconds of audio)


def wanted(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


class Progress:
    """``with Progress(total, unit, enabled) as bar: bar.update(n)``; nothing at all when not enabled."""

    def __init__(self, total: float, unit: str, enabled: bool, description: str = ""):
        self.total, self.unit, self.enabled, self.description = total, unit, enabled, description
        self.done = 0.0
        self._bar = None
        self._started = time.monotonic()
        self._shown = 0.0
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, unit=unit, desc=description or None, file=sys.stderr, leave=False)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def update(self, amount: float) -> None:
        self.done += amount
        if self._bar is not None:
            self._bar.update(amount)
        elif self.enabled and (time.monotonic() - self._shown > 0.2 or self.done >= self.total):
            self._shown = time.monotonic()
            self._draw()

    def _draw(self, width: int = 30) -> None:
        share = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(share * width)
        elapsed = time.monotonic() - self._started
        sys.stderr.write(f"\r{self.description} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.done:.0f}/{self.total:.0f} {self.unit} {elapsed:.0f}s")
        sys.stderr.flush()


def file_progress(duration: Optional[float], quiet: bool, name: str = "") -> Progress:
    """A bar in seconds of audio for one file longer than LONG_FILE_SECONDS, else a silent one."""
    enabled = duration is not None and duration > LONG_FILE_SECONDS and wanted(quiet)
    return Progress(duration or 0.0, "s", enabled, name)
