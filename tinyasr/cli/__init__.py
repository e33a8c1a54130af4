"""The ``tinyasr`` command: transcribe, classify, stream, convert, download, info."""

from tinyasr.cli.main import main

__all__ = ["main"]
