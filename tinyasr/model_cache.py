"""Where models are: bundled with the package, in the download cache, or at a path the user gives.

Imports nothing of tinyasr but its errors, so the Recognizer, the online stream, the CLI and the
converter's downloader can all ask it without importing each other.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Union

from tinyasr.errors import ModelFileError

BUNDLED_MODELS = Path(__file__).parent / "models"
DEFAULT_MODEL = "digits"
MODEL_SUFFIX = ".tasr"



def cache_dir() -> Path:
    """Where downloaded models live: ``$TINYASR_HOME/models``, else ``~/.cache/tinyasr/models``."""
    home = os.environ.get("TINYASR_HOME")
    root = Path(home).expanduser() if home else Path.home() / ".cache" / "tinyasr"
    return root / "models"


def resolve_model_path(model: Union[str, os.PathLike, None] = None) -> Path:
    """A model file path, the name of a bundled model, or the name of a model in the cache.

    None means the bundled ``digits`` model.  Raises ModelFileError listing every place tried.
    """
    name = DEFAULT_MODEL if model is None else os.fspath(model)
    candidates = [] if model is None else [Path(name).expanduser()]
    if os.sep not in name and "/" not in name:
        file_name = name if name.endswith(MODEL_SUFFIX) else name + MODEL_SUFFIX
        candidates += [BUNDLED_MODELS / file_name, cache_dir() / file_name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if candidates and candidates[0].is_dir():
        raise ModelFileError(candidates[0], "is a directory, not a .tasr model file")
    tried = ", ".join(str(c) for c in candidates)
    hint = f"; a public model is fetched once with 'tinyasr download {name}'" if len(candidates) > 1 else ""
    raise ModelFileError(name, f"no such model file (tried {tried}){hint}")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (downloads and .nemo archives can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
