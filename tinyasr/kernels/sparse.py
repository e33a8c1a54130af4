"""Sparse weight x activations: 1x1 convs and linear layers whose weight is CSR or BSR.

``y[b] = act(W @ x[b] + bias + residual)`` with W [Cout, Cin] sparse and x [B, Cin, T] dense, the Conv
op's semantics (see conv1d.py).  What makes sparsity pay (notes: ../shared/research/kernels.md):

* time is the inner, contiguous, vectorised loop: each non-zero (column c, value v) of an output row
  adds ``v * x[b, c, t0:t0+width]`` to the row's tile of ``width`` frames (32 to 128: a few variants,
  the fastest on this CPU chosen by measurement at first use, tuning.py);
* the tile is accumulated in a stack buffer (``stack_buffer``): LLVM knows a stack slot aliases no
  argument, so it keeps the tile in vector registers across the non-zeros instead of loading and storing
  y for each one (Numba cannot mark array arguments noalias).  Full tiles have a constant width so the
  time loop unrolls into registers; the last, shorter tile takes the same code with a runtime width;
* BSR blocks of 4k x 1 (4 output rows share a column): 4 rows are accumulated at once,
  one x load serves 4 multiply-adds, one index load 4 weights;
* work items are (batch, tile, row or 4-row strip), tile-major: the x tile (width frames x Cin) stays in L2
  while all rows use it, and the epilogue runs on each row tile while it is in L1.

Summation order differs from BLAS (and between the CSR variants), so results match a dense matmul to
float32 rounding, not bitwise.  ``fastmath={"contract"}`` only (fused multiply-add, no reassociation).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import carray, njit, types

from tinyasr.engine import threads
from tinyasr.errors import GraphError
from tinyasr.format.encodings.sparse import BSRMatrix, CSRMatrix, as_dense, bsr_arrays, csr_arrays
from tinyasr.kernels import tuning
from tinyasr.kernels._compile import serial_and_parallel, stack_buffer
from tinyasr.kernels.conv1d import conv1d
from tinyasr.kernels.epilogue import (
    ACTIVATIONS,
    NO_BIAS,
    NO_RESIDUAL,
    activation_code,
    as_float32,
    bias_act,
    bias_act_reference,
    check_bias_residual,
    store_tile,
)
from tinyasr.kernels.pointwise import strip_update

RELU, CLIP = ACTIVATIONS["Relu"], ACTIVATIONS["Clip"]  # applied in the kernels; others after them


def _signature():
    """(x, values, indices, indptr, bias, residual, y, act, lo, hi).  Inputs are typed read-only (weights are
    views of the read-only memory map; writable arrays are accepted too).  uint16 column indices only, so the
    kernel compiles once per build (matrices over 65535 columns store int32 indices and run dense)."""
    readonly = [types.Array(dtype, ndim, "C", readonly=True) for dtype, ndim in (
        (types.float32, 3), (types.float32, 3), (types.uint16, 1), (types.int32, 1), (types.float32, 1),
        (types.float32, 3))]
    return types.void(*readonly, types.Array(types.float32, 3, "C"), types.int64, types.float32, types.float32)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@njit(inline="always", fastmath={"contract"})
def _csr_row_tile(acc, x, values, indices, indptr, row, t0, n, pairs):
    """acc[:n] = sum over the non-zeros j of ``row`` of values[j, 0, 0] * x[indices[j], t0:t0+n], four per pass.

    ``pairs`` (a compile-time constant) sums each four as (v0 x0 + v1 x1) + (v2 x2 + v3 x3): 6 vector ops, two
    chains, for wide registers where a tile is too few vectors to hide the FMA latency; else one chain of 4
    fused multiply-adds per vector (Zen 3, AVX2, 64 frames = 8 chains: 1.1-1.25x faster)."""
    j, end = indptr[row], indptr[row + 1]
    for t in range(n):
        acc[t] = 0.0
    while j + 4 <= end:
        v0, v1, v2, v3 = values[j, 0, 0], values[j + 1, 0, 0], values[j + 2, 0, 0], values[j + 3, 0, 0]
        x0, x1 = x[np.int64(indices[j]), t0:t0 + n], x[np.int64(indices[j + 1]), t0:t0 + n]
        x2, x3 = x[np.int64(indices[j + 2]), t0:t0 + n], x[np.int64(indices[j + 3]), t0:t0 + n]
        if pairs:
            for t in range(n):
                acc[t] += (v0 * x0[t] + v1 * x1[t]) + (v2 * x2[t] + v3 * x3[t])
        else:
            for t in range(n):
                acc[t] = acc[t] + v0 * x0[t]
                acc[t] = acc[t] + v1 * x1[t]
                acc[t] = acc[t] + v2 * x2[t]
                acc[t] = acc[t] + v3 * x3[t]
        j += 4
    while j < end:
        v0, x0 = values[j, 0, 0], x[np.int64(indices[j]), t0:t0 + n]
        for t in range(n):
            acc[t] += v0 * x0[t]
        j += 1


@njit(inline="always", fastmath={"contract"})
def _bsr_strip_tile(acc, x, values, indices, indptr, strip, t0, n):
    """acc[k*n:(k+1)*n] = sum over the blocks j of the strip's block row of values[j, i+k, 0] * x[indices[j], t0:t0+n]
    for the strip's 4 rows k (i: the strip's first row inside its block of br = values.shape[1] rows)."""
    strips_per_block = values.shape[1] // 4
    block_row, i = strip // strips_per_block, (strip % strips_per_block) * 4
    j, end = indptr[block_row], indptr[block_row + 1]
    for t in range(4 * n):
        acc[t] = 0.0
    a0, a1, a2, a3 = acc[0:n], acc[n:2 * n], acc[2 * n:3 * n], acc[3 * n:4 * n]
    while j < end:
        xj = x[np.int64(indices[j]), t0:t0 + n]
        strip_update(a0, a1, a2, a3, values[j, i, 0], values[j, i + 1, 0], values[j, i + 2, 0], values[j, i + 3, 0],
                     xj, n)
        j += 1


def _rows_kernel(rows_per_group: int, width: int, pairs: bool = False):
    """The kernel factory for CSR (``rows_per_group`` 1) and BSR (4: a strip of 4 rows of a br x 1 block row),
    on tiles of ``width`` frames (for CSR, ``pairs`` as in _csr_row_tile).

    ``rows_per_group`` is a closure constant, so each kernel is compiled with only its own path (one kernel
    branching on the encoding at run time ran CSR 1.3x slower) and the two stay apart in Numba's cache.
    Work items are (batch, tile, row group), tile-major.  The epilogue y = act((acc + bias) + residual) is
    applied while copying out of the accumulator, written out here: moving it into a helper or calling the
    epilogue's finish_row (any call, even one never taken, e.g. a libm exp) made the kernel 1.2-2x slower.
    So only "" / Relu / Clip are applied here; spmm applies Sigmoid / Tanh in a second pass.
    """

    strip_size = 4 * width  # stack_buffer needs a compile-time constant

    def make(loop):
        def kernel(x, values, indices, indptr, bias, residual, y, act, lo, hi):
            batch, frames = x.shape[0], x.shape[2]
            groups = y.shape[1] // rows_per_group
            tiles = (frames + width - 1) // width
            has_bias, add_residual = bias.shape[0] > 0, residual.size > 0
            for item in loop(batch * tiles * groups):
                acc = carray(stack_buffer(strip_size), (strip_size,))
                group = item % groups
                b = item // (groups * tiles)
                t0 = (item // groups - b * tiles) * width
                n = min(width, frames - t0)
                if rows_per_group == 1:
                    if n == width:  # constant width: the tile lives in registers
                        _csr_row_tile(acc, x[b], values, indices, indptr, group, t0, width, pairs)
                    else:
                        _csr_row_tile(acc, x[b], values, indices, indptr, group, t0, n, pairs)
                elif n == width:
                    _bsr_strip_tile(acc, x[b], values, indices, indptr, group, t0, width)
                else:
                    _bsr_strip_tile(acc, x[b], values, indices, indptr, group, t0, n)
                store_tile(y, acc, n, b, group * rows_per_group, rows_per_group, t0, n, bias, has_bias, residual,
                           add_residual, act, lo, hi)

        return kernel

    make.__name__ = make.__qualname__ = "csr_rows" if rows_per_group == 1 else "bsr_rows"
    return serial_and_parallel(_signature(), fastmath={"contract"})(make)


# The variants, one chosen per CPU (tuning.py; all are exact to float32 rounding, each the same at any thread count).
# CSR: y[b, r] = act(sum_j values[j] * x[b, indices[j]] + bias[r] + residual[b, r]) over the non-zeros j of row r;
# values [nnz, 1, 1] (a free reshape of the CSR values); indptr and indices were validated at load.
# BSR: the same for blocks of br x 1, br a multiple of 4: values [nblocks, br, 1], indptr [rows/br + 1]; a strip
# of 4 rows x width frames must fit the registers: 4x64 is 16 AVX-512 registers but 32 AVX2 ones (spills).
# Measured on Zen 3 (AVX2), 512x512 at 90 %, T = 1000, speed-up over the dense kernel: CSR pairs64 2.9, chain64
# 3.6, chain128 3.0; BSR 4x1 width 32 4.2, width 64 3.8.
CSR_KERNELS = {"pairs64": _rows_kernel(1, 64, True), "chain64": _rows_kernel(1, 64), "chain128": _rows_kernel(1, 128)}
BSR_KERNELS = {"4x32": _rows_kernel(4, 32), "4x64": _rows_kernel(4, 64)}
CALIBRATION = (256, 256, 384, 0.9)  # rows, columns, T (whole tiles for every width), sparsity of the timing problem


@functools.cache
def fastest_kernel(kind: str):
    """The CSR ("csr") or BSR ("bsr", 4x1 blocks) kernel measured fastest on this CPU (tuning.fastest)."""
    rows, columns, frames, sparsity = CALIBRATION
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((rows, columns), dtype=np.float32)
    if kind == "csr":
        weight[rng.random(weight.shape) < sparsity] = 0.0
        values, indices, indptr = csr_arrays(weight)
        values, kernels = values.reshape(-1, 1, 1), CSR_KERNELS
    else:
        weight[np.repeat(rng.random((rows // 4, columns)) < sparsity, 4, axis=0)] = 0.0
        (values, indices, indptr), kernels = bsr_arrays(weight, (4, 1)), BSR_KERNELS
    x = rng.standard_normal((1, columns, frames), dtype=np.float32)
    y = np.empty((1, rows, frames), np.float32)

    def run(kernel):
        return lambda: kernel.serial(x, values, indices, indptr, NO_BIAS, NO_RESIDUAL, y, 0, 0.0, 0.0)

    name = tuning.fastest(f"spmm {kind}", {name: run(kernel) for name, kernel in kernels.items()},
                          tuning.cache_folder(next(iter(kernels.values())).serial))
    return kernels[name]


# ---------------------------------------------------------------------------------------------
# Python side: checks, dispatch and the numpy reference
# ---------------------------------------------------------------------------------------------


def kernel_matrix(weight):
    """The form of ``weight`` the kernels run, or None: CSR, or BSR of br x 1 blocks (br = 4k; other blocks
    run as CSR), with uint16 column indices (matrices over 65535 columns store int32 indices and run dense)."""
    if isinstance(weight, BSRMatrix) and not (weight.block[1] == 1 and weight.block[0] % 4 == 0):
        weight = weight.csr
    if isinstance(weight, (CSRMatrix, BSRMatrix)) and weight.indices.dtype == np.uint16:
        return weight
    return None


def spmm(weight, x, bias=None, residual=None, activation="", activation_params=(), out=None) -> np.ndarray:
    """y = act(W @ x[b] + bias + residual) for a CSRMatrix / BSRMatrix W [Cout, Cin] and x [B, Cin, T].

    bias [Cout] or None, residual [B, Cout, T] or None.  Returns float32 [B, Cout, T] (into ``out`` when
    given).  GraphError on bad shapes or a weight the kernels cannot run (see kernel_matrix).
    """
    weight = kernel_matrix(weight)
    if weight is None:
        raise GraphError("spmm: weight must be a CSRMatrix or BSRMatrix with at most 65535 columns")
    x = as_float32(x, "input X", "spmm")
    rows, columns = weight.matrix_shape
    if x.ndim != 3 or x.shape[1] != columns:
        raise GraphError(f"spmm: input X must be [batch, {columns}, time] for a {rows}x{columns} weight, "
                         f"got shape {x.shape}")
    shape = (x.shape[0], rows, x.shape[2])
    act, lo, hi = activation_code(activation, activation_params, "spmm")
    bias, residual = check_bias_residual(bias, residual, shape, "spmm")
    if out is None:
        out = np.empty(shape, np.float32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.flags.c_contiguous and out.shape == shape):
        raise GraphError(f"spmm: out must be a C-contiguous float32 array of shape {shape}")
    if out.size == 0:
        return out
    work = weight.values.size * shape[0] * shape[2] // threads.SPARSE_MACS_PER_WORK  # threads.py: parallel or not
    fused = act in (0, RELU, CLIP)
    if isinstance(weight, CSRMatrix):
        kernel, values = fastest_kernel("csr"), weight.values.reshape(-1, 1, 1)
    else:
        kernel, values = fastest_kernel("bsr"), weight.values
    kernel(work, x, values, weight.indices, weight.indptr, bias, residual, out, act if fused else 0, lo, hi)
    if not fused:
        bias_act(out, activation=activation, params=activation_params)
    return out


def spmm_reference(weight, x, bias=None, residual=None, activation="", activation_params=()) -> np.ndarray:
    """numpy reference of spmm: the dense weight, a float64 matmul, then the epilogue in float32."""
    dense = np.asarray(weight.to_dense(), np.float64).reshape(weight.matrix_shape)
    y = np.matmul(dense, np.asarray(x, np.float64)).astype(np.float32)
    return bias_act_reference(y, bias, residual, activation, activation_params)


def is_pointwise(weight_shape, pad_left=0, pad_right=0, group=1) -> bool:
    """True for a Conv that is a matrix product per frame (K = 1, no padding, group 1): what spmm runs."""
    return len(weight_shape) == 3 and weight_shape[2] == 1 and group == 1 and pad_left == pad_right == 0


def conv1d_any(x, weight, bias=None, residual=None, *, stride=1, dilation=1, pad_left=0, pad_right=0, group=1,
               activation="", activation_params=(), out=None) -> np.ndarray:
    """conv1d (same signature) for a weight in any encoding: the sparse kernels for a pointwise conv with a
    CSR / BSR weight (a stride subsamples x first), else conv1d on the dense weight (decoded once)."""
    if kernel_matrix(weight) is not None and is_pointwise(weight.shape, pad_left=pad_left, pad_right=pad_right,
                                                          group=group):
        x = np.asarray(x)
        if x.ndim == 3 and stride > 1:
            x = x[:, :, ::stride]
        return spmm(weight, x, bias, residual, activation, activation_params, out)
    return conv1d(x, as_dense(weight), bias, residual, stride=stride, dilation=dilation, pad_left=pad_left,
                  pad_right=pad_right, group=group, activation=activation, activation_params=activation_params, out=out)


def linear(a, weight) -> np.ndarray:
    """a [M, K] @ W.T for a weight W [N, K] in any encoding (Gemm with transB=1, torch Linear): [M, N] float32."""
    a = as_float32(a, "input A", "linear")
    if a.ndim != 2:
        raise GraphError(f"linear: input A must be 2-D, got shape {a.shape}")
    if kernel_matrix(weight) is not None:
        return np.ascontiguousarray(spmm(weight, np.ascontiguousarray(a.T)[None])[0].T)
    return a @ np.asarray(as_dense(weight), np.float32).T
