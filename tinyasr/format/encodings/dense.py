"""The plain encoding: one part ``data`` holding the tensor as it is (float16 may declare an upcast)."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from tinyasr.format.tensors import FLOAT_DTYPES, Encoding, TensorEntry


def _validate_dense(entry: TensorEntry, parts: Dict[str, np.ndarray]) -> None:
    if set(parts) != {"data"}:
        raise ValueError(f"dense encoding stores exactly one part 'data', found {sorted(parts)}")
    (part,) = entry.parts
    if part.dtype != entry.dtype or part.shape != entry.shape:
        raise ValueError(
            f"dense part is {part.dtype}{list(part.shape)} but the tensor is {entry.dtype}{list(entry.shape)}"
        )
    unknown = set(entry.params) - {"upcast_to"}
    if unknown:
        raise ValueError(f"unknown dense params {sorted(unknown)}")
    if "upcast_to" in entry.params and (entry.dtype != "float16" or entry.params["upcast_to"] != "float32"):
        raise ValueError(f"upcast_to={entry.params['upcast_to']!r} is only allowed as float16 -> 'float32'")


def _count_nonzero_dense(entry: TensorEntry, parts: Dict[str, np.ndarray]) -> Optional[int]:
    return int(np.count_nonzero(parts["data"])) if entry.dtype in FLOAT_DTYPES else None


FILE_ENCODINGS = (Encoding("dense", _validate_dense, lambda entry, parts: parts["data"], _count_nonzero_dense),)
