"""Sparse and int8 weights: what ``ModelFile.tensor`` returns for ``csr``, ``bsr`` and ``int8`` tensors.

A weight of logical shape [rows, ...] (Conv [Cout, Cin/g, K]; Gemm with transB=1 [N, K]) is read as the matrix
[rows, prod(rest)], so each matrix row is one output channel.  An LSTM / GRU R [directions, gates * H, P] is read as
[directions * gates * H, P] (``row_axes`` 2: the rows are its first two axes), each row one gate.  The objects hold
plain arrays (views of the memory map where the stored dtype is already the kernels' dtype) and are immutable;
``to_dense()`` gives the logical float32 tensor for ops without a sparse kernel.

Building them from dense matrices (``csr_arrays``, ``bsr_arrays``) lives here too: the converter and the
tests use it, and it is numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Tuple

import numpy as np

from tinyasr.format.tensors import Encoding

# Column indices fit uint16 up to this many columns; wider matrices store int32 indices.
UINT16_COLUMNS = 65535


def matrix_shape(weight_shape, row_axes: int = 1) -> Tuple[int, int]:
    """[rows, columns] of the matrix view of a weight: rows = the product of the first ``row_axes`` dims (1, or 2
    for a recurrent R), columns = the product of the rest."""
    if len(weight_shape) < 1:
        raise ValueError("a sparse weight needs at least one dimension")
    return int(math.prod(weight_shape[:row_axes])), int(math.prod(weight_shape[row_axes:]))


def index_dtype(columns: int) -> np.dtype:
    """uint16 column indices where they fit (less memory traffic), else int32."""
    return np.dtype("<u2") if columns <= UINT16_COLUMNS else np.dtype("<i4")


class _EncodedWeight:
    """What ops read from any weight: the logical ``shape``, ``ndim`` and ``dtype`` (float32) of the tensor."""

    dtype = np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    row_axes = 1  # CSRMatrix / BSRMatrix: a field

    @property
    def matrix_shape(self) -> Tuple[int, int]:
        return matrix_shape(self.shape, self.row_axes)

    @cached_property
    def dense(self) -> np.ndarray:
        """``to_dense()`` computed once: the fallback for ops and geometries without a kernel for this encoding."""
        return self.to_dense()


@dataclass(frozen=True, eq=False)
class CSRMatrix(_EncodedWeight):
    """Compressed sparse rows: row r holds ``values[indptr[r]:indptr[r+1]]`` at columns ``indices[...]``.

    values float32 [nnz]; indices uint16 / int32 [nnz], increasing within a row; indptr int32 [rows+1];
    shape: the logical (dense) shape; row_axes: how many of its leading axes make the matrix rows.
    """

    values: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: Tuple[int, ...]
    row_axes: int = 1

    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])

    def to_dense(self) -> np.ndarray:
        rows, columns = self.matrix_shape
        dense = np.zeros((rows, columns), np.float32)
        row_of = np.repeat(np.arange(rows), np.diff(self.indptr))
        dense[row_of, self.indices] = self.values
        return dense.reshape(self.shape)

    @cached_property
    def transposed(self) -> "CSRMatrix":
        """The transposed matrix [columns, rows] as CSR, built once from the validated arrays.

        A MatMul weight W [K, N] is stored by its logical rows, the K inputs; the time-major kernel
        (kernels/sparse.py, matmul_time_major) reads it by output column n."""
        rows, columns = self.matrix_shape
        row_of = np.repeat(np.arange(rows, dtype=np.int64), np.diff(self.indptr))
        order = np.lexsort((row_of, self.indices))  # by column, rows increasing within one
        indptr = np.zeros(columns + 1, np.int32)
        np.cumsum(np.bincount(self.indices, minlength=columns), out=indptr[1:])
        return CSRMatrix(np.ascontiguousarray(self.values[order]), row_of[order].astype(index_dtype(rows)), indptr,
                         (columns, rows))


@dataclass(frozen=True, eq=False)
class BSRMatrix(_EncodedWeight):
    """Block-sparse rows: blocks of ``block`` = (br, bc); block row R holds blocks ``indptr[R]:indptr[R+1]``.

    values float32 [nblocks, br, bc]; indices uint16 / int32 [nblocks] (block columns, increasing within a
    block row); indptr int32 [rows/br + 1].  A br x 1 block is br output channels sharing one input column.
    """

    values: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: Tuple[int, ...]
    block: Tuple[int, int]
    row_axes: int = 1

    @property
    def nnz(self) -> int:
        """Stored values, including zeros inside non-zero blocks."""
        return int(self.values.size)

    def to_dense(self) -> np.ndarray:
        rows, columns = self.matrix_shape
        br, bc = self.block
        blocks = np.zeros((rows // br, columns // bc, br, bc), np.float32)
        block_row = np.repeat(np.arange(rows // br), np.diff(self.indptr))
        blocks[block_row, self.indices] = self.values
        return blocks.transpose(0, 2, 1, 3).reshape(self.shape)

    @cached_property
    def csr(self) -> CSRMatrix:
        """The same matrix as CSR (zeros inside blocks dropped), for block shapes without a kernel."""
        return CSRMatrix(*csr_arrays(self.dense.reshape(self.matrix_shape)), self.shape, self.row_axes)


@dataclass(frozen=True, eq=False)
class Int8Matrix(_EncodedWeight):
    """Symmetric int8 weights: ``values * scales`` with one float32 scale per index of ``axis``."""

    values: np.ndarray
    scales: np.ndarray
    axis: int

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.values.shape)

    def to_dense(self) -> np.ndarray:
        shape = [1] * self.values.ndim
        shape[self.axis] = -1
        return self.values.astype(np.float32) * self.scales.reshape(shape)


SPARSE_TYPES = (CSRMatrix, BSRMatrix)
ENCODED_TYPES = (CSRMatrix, BSRMatrix, Int8Matrix)


def as_dense(weight) -> np.ndarray:
    """A weight as an array: dense arrays as they are, encoded weights decoded once (cached on the object)."""
    return weight.dense if isinstance(weight, _EncodedWeight) else weight


def csr_arrays(matrix: np.ndarray, value_dtype="float32"):
    """(values, indices, indptr) of the non-zeros of a 2-D matrix, row by row, columns increasing."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"csr_arrays needs a 2-D matrix, got shape {matrix.shape}")
    rows, columns = np.nonzero(matrix)
    indptr = np.zeros(matrix.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=matrix.shape[0]), out=indptr[1:])
    values = matrix[rows, columns].astype(value_dtype)
    return values, columns.astype(index_dtype(matrix.shape[1])), indptr


def bsr_arrays(matrix: np.ndarray, block, value_dtype="float32"):
    """(values [nblocks, br, bc], block column indices, indptr) of the blocks holding any non-zero."""
    matrix = np.asarray(matrix)
    br, bc = block
    if matrix.ndim != 2 or matrix.shape[0] % br or matrix.shape[1] % bc:
        raise ValueError(f"block {br}x{bc} does not tile a matrix of shape {matrix.shape}")
    blocks = matrix.reshape(matrix.shape[0] // br, br, matrix.shape[1] // bc, bc).transpose(0, 2, 1, 3)
    block_rows, block_columns = np.nonzero(blocks.any(axis=(2, 3)))
    indptr = np.zeros(blocks.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(block_rows, minlength=blocks.shape[0]), out=indptr[1:])
    values = blocks[block_rows, block_columns].astype(value_dtype)
    return values, block_columns.astype(index_dtype(blocks.shape[1])), indptr


def int8_arrays(weight: np.ndarray, axis: int = 0):
    """(values int8, scales float32) with scale = max|w| / 127 per index of ``axis`` (1 for an all-zero slice)."""
    weight = np.asarray(weight, np.float32)
    other = tuple(a for a in range(weight.ndim) if a != axis)
    peak = np.abs(weight).max(axis=other) if weight.size else np.zeros(weight.shape[axis], np.float32)
    scales = np.where(peak > 0, peak / 127, 1).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    values = np.clip(np.rint(weight / scales.reshape(shape)), -127, 127).astype(np.int8)
    return values, scales


# --------------------------------------------------------------------------- the file encodings
# Validators run at load (listed in tinyasr.format.encodings), so the kernels can index without checks.
# ``entry`` is a tinyasr.format.tensors.TensorEntry, ``parts`` maps role -> read-only array; problems raise ValueError.

VALUE_DTYPES = ("float32", "float16")
INDEX_DTYPES = ("uint16", "int32")


def _expect(parts, roles) -> None:
    if set(parts) != set(roles):
        raise ValueError(f"stores parts {sorted(roles)}, found {sorted(parts)}")


def _expect_array(parts, role, dtypes, shape) -> np.ndarray:
    array = parts[role]
    if array.dtype.name not in dtypes or array.shape != tuple(shape):
        raise ValueError(f"part {role!r} is {array.dtype.name}{list(array.shape)}, expected "
                         f"{' or '.join(dtypes)}{list(shape)}")
    return array


def _validate_compressed(parts, rows: int, columns: int, value_shape) -> None:
    """Shared by csr and bsr (on block rows / block columns): the index structure is in range and ordered."""
    _expect(parts, ("values", "indices", "indptr"))
    nnz = parts["indices"].shape[0] if parts["indices"].ndim == 1 else -1
    _expect_array(parts, "values", VALUE_DTYPES, (nnz,) + tuple(value_shape))
    indices = _expect_array(parts, "indices", INDEX_DTYPES, (nnz,)).astype(np.int64)
    indptr = _expect_array(parts, "indptr", ("int32",), (rows + 1,)).astype(np.int64)
    if indptr[0] != 0 or indptr[-1] != nnz:
        raise ValueError(f"indptr must start at 0 and end at the {nnz} stored entries, "
                         f"got {indptr[0]} ... {indptr[-1]}")
    if (np.diff(indptr) < 0).any():
        row = int(np.argmax(np.diff(indptr) < 0))
        raise ValueError(f"indptr decreases at row {row} ({indptr[row]} -> {indptr[row + 1]})")
    if nnz and (indices.min() < 0 or indices.max() >= columns):
        bad = int(indices[(indices < 0) | (indices >= columns)][0])
        raise ValueError(f"column index {bad} is outside [0, {columns})")
    increasing = np.diff(indices) > 0
    row_starts = indptr[1:-1]
    increasing[row_starts[(row_starts > 0) & (row_starts < nnz)] - 1] = True
    if not increasing.all():
        position = int(np.argmin(increasing)) + 1
        raise ValueError(f"column indices must increase within a row; entry {position} does not")


def row_axes_of(entry) -> int:
    """The checked ``row_axes`` param (default 1): an int from 1 to rank - 1 (rank 1: 1)."""
    row_axes = entry.params.get("row_axes", 1)
    if not (isinstance(row_axes, int) and not isinstance(row_axes, bool)
            and 1 <= row_axes <= max(1, len(entry.shape) - 1)):
        raise ValueError(f"row_axes must be an int from 1 to rank - 1 = {len(entry.shape) - 1}, got {row_axes!r}")
    return row_axes


def _matrix_of(entry) -> Tuple[int, int]:
    if entry.dtype != "float32" or len(entry.shape) < 1:
        raise ValueError(f"the logical tensor must be float32 of rank >= 1, got {entry.dtype}{list(entry.shape)}")
    return matrix_shape(entry.shape, row_axes_of(entry))


def validate_csr(entry, parts) -> None:
    rows, columns = _matrix_of(entry)
    if set(entry.params) - {"row_axes"}:
        raise ValueError(f"csr takes no params but row_axes, got {sorted(entry.params)}")
    _validate_compressed(parts, rows, columns, ())


def block_of(entry) -> Tuple[int, int]:
    """The checked (br, bc) of a bsr entry: positive integers tiling the matrix."""
    rows, columns = _matrix_of(entry)
    block = entry.params.get("block")
    if set(entry.params) - {"row_axes"} != {"block"} or not (
            isinstance(block, list) and len(block) == 2
            and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)):
        raise ValueError(f"bsr needs params {{'block': [rows, columns]}} of positive integers (and optionally "
                         f"row_axes), got {entry.params}")
    br, bc = block
    if rows % br or columns % bc:
        raise ValueError(f"block {br}x{bc} does not tile the {rows}x{columns} matrix")
    return br, bc


def validate_bsr(entry, parts) -> None:
    rows, columns = _matrix_of(entry)
    br, bc = block_of(entry)
    _validate_compressed(parts, rows // br, columns // bc, (br, bc))


def validate_int8(entry, parts) -> None:
    if entry.dtype != "float32":
        raise ValueError(f"the logical tensor must be float32, got {entry.dtype}")
    axis = entry.params.get("axis", 0)
    if set(entry.params) - {"axis"} or not (isinstance(axis, int) and not isinstance(axis, bool)
                                            and 0 <= axis < len(entry.shape)):
        raise ValueError(f"int8 takes params {{'axis': 0 <= int < rank}}, got {entry.params}")
    _expect(parts, ("values", "scales"))
    _expect_array(parts, "values", ("int8",), entry.shape)
    scales = _expect_array(parts, "scales", ("float32",), (entry.shape[axis],))
    if not (np.isfinite(scales) & (scales > 0)).all():
        raise ValueError("scales must be finite and > 0")


def _float32(values: np.ndarray) -> np.ndarray:
    """Kernels take float32: float16 values are upcast once at load (a copy of the non-zeros only)."""
    return values if values.dtype == np.float32 else values.astype(np.float32)


def decode_csr(entry, parts) -> CSRMatrix:
    return CSRMatrix(_float32(parts["values"]), parts["indices"], parts["indptr"], tuple(entry.shape),
                     row_axes_of(entry))


def decode_bsr(entry, parts) -> BSRMatrix:
    return BSRMatrix(_float32(parts["values"]), parts["indices"], parts["indptr"], tuple(entry.shape),
                     block_of(entry), row_axes_of(entry))


def decode_int8(entry, parts) -> Int8Matrix:
    return Int8Matrix(parts["values"], parts["scales"], entry.params.get("axis", 0))


def count_stored_nonzero(entry, parts) -> int:
    return int(np.count_nonzero(parts["values"]))


# introduced in format 1.1
FILE_ENCODINGS = (
    Encoding("csr", validate_csr, decode_csr, count_stored_nonzero, minor=1),
    Encoding("bsr", validate_bsr, decode_bsr, count_stored_nonzero, minor=1),
    Encoding("int8", validate_int8, decode_int8, count_stored_nonzero, minor=1),
)
