"""What a stored tensor is: its table entry, its parts, and the Encoding that turns parts into the tensor.

Shared by the container (which reads and writes entries) and the encodings (which validate and decode
parts), so neither imports the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

# Storage dtypes, always little-endian.  Keys are numpy dtype names.
DTYPES: Dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in [
        ("float32", "<f4"), ("float16", "<f2"), ("int64", "<i8"), ("int32", "<i4"), ("int16", "<i2"),
        ("int8", "i1"), ("uint16", "<u2"), ("uint8", "u1"), ("bool", "?"),
    ]
}
FLOAT_DTYPES = ("float32", "float16")

# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class PartEntry:
    """One stored byte array of a tensor; ``offset`` is relative to the data section."""

    role: str
    dtype: str
    shape: Tuple[int, ...]
    offset: int
    nbytes: int
    crc32: int


@dataclass(frozen=True)
class TensorEntry:
    """A row of the tensor table: the logical tensor and the parts its encoding stores."""

    name: str
    encoding: str
    dtype: str
    shape: Tuple[int, ...]
    parts: Tuple[PartEntry, ...]
    params: Dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    @property
    def size(self) -> int:
        """Number of elements of the logical tensor (its parameter count)."""
        return math.prod(self.shape)


@dataclass
class EncodedTensor:
    """What the writer stores for a non-plain tensor: an encoding tag, the logical dtype/shape, parts, params."""

    encoding: str
    dtype: str
    shape: Tuple[int, ...]
    parts: Dict[str, np.ndarray]
    params: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- encodings


@dataclass(frozen=True)
class Encoding:
    """How an encoding's parts make the logical tensor.

    ``validate(entry, parts)`` raises ValueError on any inconsistency; ``decode(entry, parts)``
    returns what ModelFile.tensor gives the runtime; ``count_nonzero(entry, parts)`` returns the
    number of non-zero weights, or None where sparsity is not meaningful.  ``parts`` maps role ->
    read-only array view.
    """

    name: str
    validate: Callable[[TensorEntry, Dict[str, np.ndarray]], None]
    decode: Callable[[TensorEntry, Dict[str, np.ndarray]], Any]
    count_nonzero: Callable[[TensorEntry, Dict[str, np.ndarray]], Optional[int]]
    minor: int = 0  # the format minor version that introduced it; files using it declare at least 1.<minor>
    # Where older writers declared it lower (ternary: 1.0 before it got its version), the lowest file minor
    # a reader still accepts it in; None means ``minor``.  See "Version history" in docs/format.md.
    legacy_minor: Optional[int] = None

    @property
    def oldest_file_minor(self) -> int:
        """The lowest file minor version a reader accepts this encoding in."""
        return self.minor if self.legacy_minor is None else self.legacy_minor
