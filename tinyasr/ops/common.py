"""Small helpers shared by the op modules: attribute and axis handling, error messages."""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from tinyasr.errors import GraphError
from tinyasr.format.encodings.sparse import ENCODED_TYPES, as_dense


def int_list(values, what: str) -> List[int]:
    """A 1-D integer tensor (or JSON list) as Python ints; ONNX passes shapes and axes as int64."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iub" or arr.ndim > 1:
        raise GraphError(f"{what} must be a 1-D integer tensor, got dtype {arr.dtype} shape {arr.shape}")
    return [int(v) for v in arr.reshape(-1)]


def normalize_axis(axis: int, rank: int, what: str) -> int:
    """ONNX axes may be negative (counted from the end); check the range."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise GraphError(f"{what}: axis {axis} is out of range for a tensor of rank {rank}")
    return axis % rank if rank else 0


def normalize_axes(axes, rank: int, what: str) -> List[int]:
    out = [normalize_axis(a, rank, what) for a in axes]
    if len(set(out)) != len(out):
        raise GraphError(f"{what}: repeated axis in {list(axes)}")
    return out


def axes_from(inputs, index: int, attrs: dict) -> Optional[List[int]]:
    """Axes given as input ``index`` (newer opsets) or as the ``axes`` attribute (older ones); None if absent."""
    if len(inputs) > index and inputs[index] is not None:
        return int_list(inputs[index], "axes")
    if "axes" in attrs:
        return int_list(attrs["axes"], "axes")
    return None


def check_inputs(op: str, inputs, required: int) -> None:
    """GraphError if fewer than ``required`` non-omitted inputs lead the list.  (A plain loop: every node calls
    this, and a generator fed to any() cost 2 us a call.)"""
    if len(inputs) < required:
        raise GraphError(f"{op} needs at least {required} inputs, got {len(inputs)}")
    for i in range(required):
        if inputs[i] is None:
            raise GraphError(f"{op} needs at least {required} inputs, got {len(inputs)}")


def broadcast_shape(a, b):
    """np.broadcast_shapes, without its cost (~5 us, a tenth of a Conformer's bias Add) in the common cases:
    equal shapes, or one shape the other's trailing dims (a bias row)."""
    if a == b or (len(a) <= len(b) and b[len(b) - len(a):] == a):
        return b
    if len(b) < len(a) and a[len(a) - len(b):] == b:
        return a
    return np.broadcast_shapes(a, b)


def dense(weight, op: str, what: str = "weight") -> np.ndarray:
    """The array behind an input: encoded weights (CSR, BSR, int8) are decoded once, for ops without their kernel."""
    if isinstance(weight, np.ndarray):
        return weight
    if isinstance(weight, ENCODED_TYPES):
        return as_dense(weight)
    raise GraphError(f"{op}: {what} stored as {type(weight).__name__} is not supported by this op")
