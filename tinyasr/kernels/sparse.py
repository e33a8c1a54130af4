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
* CSR work items are (batch, tile, part of the rows), tile-major: the item copies its tile's frames of x into a
  contiguous [Cin, width] scratch first, which stays in L2 while all its rows gather from it.  Read in place,
  each gathered segment of x lies on its own page (rows are T frames apart): 512 pages per tile at Cin = 512,
  past the first-level TLB, and the gathers ran 1.1-1.6x slower at T = 1000 (benchmarks/results/sparse_packing.md).
  What is left is the gather's traffic from L2: 52 non-zeros per row, 64 frames, Zen 3: 6.4 cycles per
  non-zero with the tile in L1 (Cin 64), 8.8 at Cin 256, 10.7 at Cin 512, against 4 for its 8 FMAs;
* BSR work items are (batch, tile, 4-row strip), reading x in place (see _bsr_kernel); both kernels apply
  the epilogue to each row tile while it is in L1.

Transformer blocks keep activations time-major, x [frames, K] (a row per frame), and multiply by a stored
W [K, N] (MatMul, then a bias Add).  ``matmul_time_major`` runs a CSR / BSR W there with the same row tile:
W is read by output column (``CSRMatrix.transposed``, built once), and each tile of 64 frames of x is first
transposed into a [K, 64] scratch tile, so the inner loop is again a contiguous vector over frames; 8 output
columns' sums are then transposed back into y's rows (both transposes in 8 x 8 register blocks,
_compile.transpose_8x8).  Measured on Zen 3 (AVX2), 90 % sparse 88x352 / 352x88 / 88x88 at T = 64-1500,
speed-up over numpy's BLAS matmul: this kernel 2.0-3.2x (1.3-2.0x with transposes one value at a time, which
then took 1.5-3x the multiply-adds' time); transposing x and y with numpy around ``spmm`` 1.0-1.5x (two more
passes over memory); scattering x[t, k] * W[k, :] into a transposed accumulator by input row (W as stored, no
transposed copy) 0.4-0.5x (a load and a store per non-zero instead of a register accumulator).  Below ~8
frames BLAS wins (0.4-0.5x at 1 frame): per output column the kernel pays a fixed ~20 ns.

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
from tinyasr.kernels._compile import element_pointer, serial_and_parallel, stack_buffer, transpose_8x8
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


def _signature(*extra):
    """(x, values, indices, indptr, bias, residual, y, act, lo, hi, *extra).  Inputs are typed read-only (weights are
    views of the read-only memory map; writable arrays are accepted too).  uint16 column indices only, so the
    kernel compiles once per build (matrices over 65535 columns store int32 indices and run dense)."""
    readonly = [types.Array(dtype, ndim, "C", readonly=True) for dtype, ndim in (
        (types.float32, 3), (types.float32, 3), (types.uint16, 1), (types.int32, 1), (types.float32, 1),
        (types.float32, 3))]
    return types.void(*readonly, types.Array(types.float32, 3, "C"), types.int64, types.float32, types.float32,
                      *extra)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@njit(inline="always", fastmath={"contract"})
def _csr_row_tile(acc, x, values, indices, indptr, row, n, pairs):
    """acc[:n] = sum over the non-zeros j of ``row`` of values[j, 0, 0] * x[indices[j], :n], four per pass.

    ``pairs`` (a compile-time constant) sums each four as (v0 x0 + v1 x1) + (v2 x2 + v3 x3): 6 vector ops, two
    chains, for wide registers where a tile is too few vectors to hide the FMA latency; else one chain of 4
    fused multiply-adds per vector (Zen 3, AVX2, 64 frames = 8 chains: 1.1-1.25x faster).  Values, indices and
    x rows are read through pointers (element_pointer), not slices, whose index wrap-around and clamping
    doubled the instructions per pass (benchmarks/results/sparse_gathers.md)."""
    stride = x.shape[1]  # x is a [Cin, >= n] tile
    j, end = np.int64(indptr[row]), np.int64(indptr[row + 1])
    for t in range(n):
        acc[t] = 0.0
    while j + 4 <= end:
        v = carray(element_pointer(values, j), (4,))
        c = carray(element_pointer(indices, j), (4,))
        x0 = carray(element_pointer(x, np.int64(c[0]) * stride), (n,))
        x1 = carray(element_pointer(x, np.int64(c[1]) * stride), (n,))
        x2 = carray(element_pointer(x, np.int64(c[2]) * stride), (n,))
        x3 = carray(element_pointer(x, np.int64(c[3]) * stride), (n,))
        v0, v1, v2, v3 = v[0], v[1], v[2], v[3]
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
        v0 = carray(element_pointer(values, j), (1,))[0]
        x0 = carray(element_pointer(x, np.int64(carray(element_pointer(indices, j), (1,))[0]) * stride), (n,))
        for t in range(n):
            acc[t] += v0 * x0[t]
        j += 1


@njit(inline="always", fastmath={"contract"})
def _bsr_strip_tile(acc, x, values, indices, indptr, strip, t0, n):
    """acc[k*n:(k+1)*n] = sum over the blocks j of the strip's block row of values[j, i+k, 0] * x[indices[j], t0:t0+n]
    for the strip's 4 rows k (i: the strip's first row inside its block of br = values.shape[1] rows); read
    through pointers as in _csr_row_tile."""
    frames, block_rows = x.shape[1], values.shape[1]
    strips_per_block = block_rows // 4
    block_row, i = strip // strips_per_block, (strip % strips_per_block) * 4
    j, end = np.int64(indptr[block_row]), np.int64(indptr[block_row + 1])
    for t in range(4 * n):
        acc[t] = 0.0
    a0, a1, a2, a3 = acc[0:n], acc[n:2 * n], acc[2 * n:3 * n], acc[3 * n:4 * n]
    while j < end:
        v = carray(element_pointer(values, j * block_rows + i), (4,))
        xj = carray(element_pointer(x, np.int64(carray(element_pointer(indices, j), (1,))[0]) * frames + t0), (n,))
        strip_update(a0, a1, a2, a3, v[0], v[1], v[2], v[3], xj, n)
        j += 1


@njit(inline="always")
def _pack_tile(x, t0, n, x_tile):
    """x_tile[c, :n] = x[c, t0:t0+n] for every input channel c: the tile's frames made contiguous."""
    frames, width = x.shape[1], x_tile.shape[1]
    for c in range(x.shape[0]):
        source = carray(element_pointer(x, c * frames + t0), (n,))
        target = carray(element_pointer(x_tile, c * width), (n,))
        for t in range(n):
            target[t] = source[t]


def _csr_kernel(width: int, pairs: bool = False):
    """The CSR kernel factory on tiles of ``width`` frames (``pairs`` as in _csr_row_tile).

    Work items are (batch, tile, part of the rows), tile-major, the rows split in ``parts`` (the last argument,
    row_parts: more than 1 only where there are too few tiles for every thread); an item first copies its tile's
    frames of x into a contiguous [Cin, width] scratch (_pack_tile) unless x has one tile only.  The rows of x are T
    frames apart, so the gathered segments of one tile are each on their own page: at Cin = 512 a tile's
    non-zeros touch 512 pages, past the first-level TLB; the packed tile is 32 pages (width 64).  The copy is
    Cin x width floats per tile against nnz x width multiply-adds (benchmarks/results/sparse_packing.md).
    The epilogue y = act((acc + bias) + residual) is applied while copying out of the accumulator (store_tile,
    inlined: calling the epilogue's finish_row, even a branch of it never taken, made the kernel 1.2-2x
    slower), so only "" / Relu / Clip are applied here; spmm applies Sigmoid / Tanh in a second pass.
    """

    def make(loop):
        def kernel(x, values, indices, indptr, bias, residual, y, act, lo, hi, parts):
            batch, inputs, frames = x.shape
            rows = y.shape[1]
            tiles = (frames + width - 1) // width
            parts = max(parts, 1)
            rows_per_part = -(-rows // parts)
            has_bias, add_residual = bias.shape[0] > 0, residual.size > 0
            for item in loop(batch * tiles * parts):
                part = item % parts
                b = item // (parts * tiles)
                t0 = (item // parts - b * tiles) * width
                n = min(width, frames - t0)
                # One gather path for both sources: with the gathers inlined twice (from x and from the tile)
                # LLVM no longer kept the accumulators in registers.
                if tiles == 1:  # x's rows are the tile's rows already
                    source = carray(element_pointer(x, b * inputs * frames), (inputs, frames))
                else:
                    source = np.empty((inputs, width), np.float32)
                    if n == width:
                        _pack_tile(x[b], t0, width, source)
                    else:
                        _pack_tile(x[b], t0, n, source)
                acc = carray(stack_buffer(width), (width,))
                for row in range(part * rows_per_part, min(rows, (part + 1) * rows_per_part)):
                    if n == width:  # constant width: the tile lives in registers
                        _csr_row_tile(acc, source, values, indices, indptr, row, width, pairs)
                    else:
                        _csr_row_tile(acc, source, values, indices, indptr, row, n, pairs)
                    store_tile(y, acc, n, b, row, 1, t0, n, bias, has_bias, residual, add_residual, act, lo, hi)

        return kernel

    make.__name__ = make.__qualname__ = "csr_rows"
    kernel = serial_and_parallel(_signature(types.int64), fastmath={"contract"})(make)
    kernel.width = width
    return kernel


def _bsr_kernel(width: int):
    """The BSR kernel factory (blocks of br x 1, br = 4k) on tiles of ``width`` frames: strips of 4 rows.

    Work items are (batch, tile, strip), tile-major, and x is read in place: reading a tile packed in the work
    item as _csr_kernel does, LLVM no longer kept the strip's accumulators in registers (it stored all of them
    on every block, Zen 3: 2.2-2.7x slower); with the packed tile passed in as an argument they stayed, and it
    ran no faster (0.9-1.1x).  The epilogue as in _csr_kernel.
    """

    strip_size = 4 * width  # stack_buffer needs a compile-time constant

    def make(loop):
        def kernel(x, values, indices, indptr, bias, residual, y, act, lo, hi):
            batch, frames = x.shape[0], x.shape[2]
            strips = y.shape[1] // 4
            tiles = (frames + width - 1) // width
            has_bias, add_residual = bias.shape[0] > 0, residual.size > 0
            for item in loop(batch * tiles * strips):
                acc = carray(stack_buffer(strip_size), (strip_size,))
                strip = item % strips
                b = item // (strips * tiles)
                t0 = (item // strips - b * tiles) * width
                n = min(width, frames - t0)
                if n == width:  # constant width: the tile lives in registers
                    _bsr_strip_tile(acc, x[b], values, indices, indptr, strip, t0, width)
                else:
                    _bsr_strip_tile(acc, x[b], values, indices, indptr, strip, t0, n)
                store_tile(y, acc, n, b, 4 * strip, 4, t0, n, bias, has_bias, residual, add_residual, act, lo, hi)

        return kernel

    make.__name__ = make.__qualname__ = "bsr_rows"
    return serial_and_parallel(_signature(), fastmath={"contract"})(make)


# The variants, one chosen per CPU (tuning.py; all are exact to float32 rounding, each the same at any thread count).
# CSR: y[b, r] = act(sum_j values[j] * x[b, indices[j]] + bias[r] + residual[b, r]) over the non-zeros j of row r;
# values [nnz, 1, 1] (a free reshape of the CSR values); indptr and indices were validated at load.
# BSR: the same for blocks of br x 1, br a multiple of 4: values [nblocks, br, 1], indptr [rows/br + 1]; a strip
# of 4 rows x width frames must fit the registers: 4x64 is 16 AVX-512 registers but 32 AVX2 ones (spills).
# Measured on Zen 3 (AVX2), 512x512 at 90 %, T = 1000: CSR chain64 3.6-3.9x numpy's BLAS (what conv1d runs there on
# this CPU) with the packed tile; before it, over the dense tile kernel, CSR pairs64 2.9, chain64 3.6, chain128 3.0,
# BSR 4x1 width 32 4.2, width 64 3.8 (2026-12-05).
CSR_KERNELS = {"pairs64": _csr_kernel(64, True), "chain64": _csr_kernel(64), "chain128": _csr_kernel(128)}
BSR_KERNELS = {"4x32": _bsr_kernel(32), "4x64": _bsr_kernel(64)}
CALIBRATION = (256, 256, 384, 0.9)  # rows, columns, T (whole tiles for every width), sparsity of the timing problem


def row_parts(batch: int, frames: int, rows: int, width: int, workers: int) -> int:
    """The CSR kernels' ``parts``: rows split so that there are two work items per worker, 1 if the tiles suffice."""
    tiles = max(1, batch * -(-frames // width))
    return max(1, min(rows, -(-2 * workers // tiles))) if workers > 1 else 1


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
        extra = (1,) if kind == "csr" else ()  # one part: the serial build
        return lambda: kernel.serial(x, values, indices, indptr, NO_BIAS, NO_RESIDUAL, y, 0, 0.0, 0.0, *extra)

    name = tuning.fastest(f"spmm {kind}", {name: run(kernel) for name, kernel in kernels.items()},
                          *tuning.cache_of(next(iter(kernels.values())).serial))
    return kernels[name]


def _time_major_signature():
    """(x [frames, K], values [nnz, 1, 1], indices, indptr of W^T [N, K] by output column, bias [N] or empty,
    y [frames, N])."""
    readonly = [types.Array(dtype, ndim, "C", readonly=True) for dtype, ndim in (
        (types.float32, 2), (types.float32, 3), (types.uint16, 1), (types.int32, 1), (types.float32, 1))]
    return types.void(*readonly, types.Array(types.float32, 2, "C"))


@njit(inline="always")
def _frames_to_tile(x, t0, n, x_tile):
    """x_tile[c, t] = x[t0 + t, c] for t < n and every input c: 8 x 8 blocks transposed in registers, the
    edges (frames past a multiple of 8, inputs past a multiple of 8) one value at a time."""
    inputs = x.shape[1]
    block_frames, block_inputs = n - n % 8, inputs - inputs % 8
    for t in range(0, block_frames, 8):
        for c in range(0, block_inputs, 8):
            transpose_8x8(x, t0 + t, c, x_tile, c, t)
        for c in range(block_inputs, inputs):
            for k in range(t, t + 8):
                x_tile[c, k] = x[t0 + k, c]
    for k in range(block_frames, n):
        for c in range(inputs):
            x_tile[c, k] = x[t0 + k, c]


@njit(inline="always")
def _columns_to_frames(acc, columns, y, t0, n, c0):
    """y[t0 + t, c0 + q] = acc[q, t] for t < n and q < columns (<= 8): 8 x 8 blocks transposed in registers
    when all 8 columns are there, the rest one value at a time."""
    block_frames = n - n % 8 if columns == 8 else 0
    for t in range(0, block_frames, 8):
        transpose_8x8(acc, 0, t, y, t0 + t, c0)
    for t in range(block_frames, n):
        y_row = y[t0 + t]
        for q in range(columns):
            y_row[c0 + q] = acc[q, t]


def _time_major_kernel(width: int, pairs: bool = False):
    """The time-major CSR kernel factory on tiles of ``width`` frames (``pairs`` as in _csr_row_tile).

    Work items are tiles of frames.  One item transposes its frames of x into a [K, width] scratch tile, then
    runs _csr_row_tile on it for each output column, 8 columns at a time into an [8, width] stack buffer, and
    writes those 8 columns' sums (plus bias) into y by 8 x 8 register transposes.  Measured on Zen 3 (AVX2), 90 %
    sparse, 256 frames, multiply-adds alone -> whole kernel: 88x352 36 -> 62 us, 352x88 35 -> 57, 512x512 358 ->
    409, 88x88 7 -> 18 (BLAS: 179, 177, 1460, 46); with transposes one value at a time the kernel took 75, 118,
    731, 27.  Frames are independent, so any batch dims are folded into them.
    """
    block_size = 8 * width  # stack_buffer needs a compile-time constant

    def make(loop):
        def kernel(x, values, indices, indptr, bias, y):
            frames, inputs = x.shape
            outputs = y.shape[1]
            has_bias = bias.shape[0] > 0
            for tile in loop((frames + width - 1) // width):
                t0 = tile * width
                n = min(width, frames - t0)
                x_tile = np.empty((inputs, width), np.float32)
                _frames_to_tile(x, t0, n, x_tile)
                acc = carray(stack_buffer(block_size), (8, width))
                for c0 in range(0, outputs, 8):
                    columns = min(8, outputs - c0)
                    for q in range(columns):
                        acc_q = acc[q]
                        if n == width:  # constant width: the tile lives in registers
                            _csr_row_tile(acc_q, x_tile, values, indices, indptr, c0 + q, width, pairs)
                        else:
                            _csr_row_tile(acc_q, x_tile, values, indices, indptr, c0 + q, n, pairs)
                        if has_bias:
                            bias_q = bias[c0 + q]
                            for t in range(n):
                                acc_q[t] = acc_q[t] + bias_q
                    _columns_to_frames(acc, columns, y, t0, n, c0)

        return kernel

    make.__name__ = make.__qualname__ = "csr_time_major"
    return serial_and_parallel(_time_major_signature(), fastmath={"contract"})(make)


# One chosen per CPU, as for the channel-major CSR kernels (they differ where those do: FMA chains per register).
TIME_MAJOR_KERNELS = {"pairs64": _time_major_kernel(64, True), "chain64": _time_major_kernel(64)}


@functools.cache
def fastest_time_major_kernel():
    """The time-major CSR kernel measured fastest on this CPU (tuning.fastest), on the CALIBRATION problem."""
    rows, columns, frames, sparsity = CALIBRATION
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((rows, columns), dtype=np.float32)
    weight[rng.random(weight.shape) < sparsity] = 0.0
    values, indices, indptr = csr_arrays(weight)
    values = values.reshape(-1, 1, 1)
    x = rng.standard_normal((frames, columns), dtype=np.float32)
    y = np.empty((frames, rows), np.float32)

    def run(kernel):
        return lambda: kernel.serial(x, values, indices, indptr, NO_BIAS, y)

    kernels = TIME_MAJOR_KERNELS
    name = tuning.fastest("spmm time-major csr", {name: run(kernel) for name, kernel in kernels.items()},
                          *tuning.cache_of(next(iter(kernels.values())).serial))
    return kernels[name]


# ---------------------------------------------------------------------------------------------
# Python side: checks, dispatch and the numpy reference
# ---------------------------------------------------------------------------------------------


def kernel_matrix(weight):
    """The form of ``weight`` the kernels run, or None: CSR, or BSR of br x 1 blocks (br = 4k; other blocks
    run as CSR), with uint16 column indices (matrices over 65535 columns store int32 indices and run dense)."""
    if isinstance(weight, BSRMatrix) and not (weight.block[1] == 1 and weight.block[0] % 4 == 0):
        weight = weight.csr
    if isinstance(weight, (CSRMatrix, BSRMatrix)) and weight.indices.dtype == np.uint16 and weight.row_axes == 1:
        return weight
    return None


def _output(out, shape, where: str) -> np.ndarray:
    """``out`` if it can take the result (C-contiguous float32 of ``shape``), a new array if it is None."""
    if out is None:
        return np.empty(shape, np.float32)
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.flags.c_contiguous and out.shape == shape):
        raise GraphError(f"{where}: out must be a C-contiguous float32 array of shape {shape}")
    return out


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
    out = _output(out, shape, "spmm")
    if out.size == 0:
        return out
    work = weight.values.size * shape[0] * shape[2] // threads.SPARSE_MACS_PER_WORK  # threads.py: parallel or not
    fused = act in (0, RELU, CLIP)
    if isinstance(weight, CSRMatrix):
        kernel, values = fastest_kernel("csr"), weight.values.reshape(-1, 1, 1)
        workers = 1 if threads.serial_only(work) else threads.get_num_threads()
        extra = (row_parts(shape[0], shape[2], rows, kernel.width, workers),)
    else:
        kernel, values, extra = fastest_kernel("bsr"), weight.values, ()
    kernel(work, x, values, weight.indices, weight.indptr, bias, residual, out, act if fused else 0, lo, hi, *extra)
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


def time_major_matrix(weight):
    """What matmul_time_major runs for a MatMul weight W [K, N] stored CSR or BSR: W^T [N, K] as CSR by output
    column (built once, cached on the weight), or None: another encoding, a weight of rank other than 2, or
    over 65535 inputs (int32 indices: the op decodes W and runs BLAS)."""
    if isinstance(weight, BSRMatrix):
        weight = weight.csr
    if not isinstance(weight, CSRMatrix) or len(weight.shape) != 2:
        return None
    transposed = weight.transposed
    return transposed if transposed.indices.dtype == np.uint16 else None


def matmul_time_major(x, weight, bias=None, out=None) -> np.ndarray:
    """y = x @ W (+ bias) for time-major activations x [..., K] (a row per frame) and a CSR / BSR W [K, N].

    bias [N] or None.  Returns float32 [..., N] (into ``out`` when given).  GraphError on bad shapes or a
    weight the kernel cannot run (see time_major_matrix).
    """
    matrix = time_major_matrix(weight)
    if matrix is None:
        raise GraphError("matmul_time_major: weight must be a 2-D CSRMatrix or BSRMatrix with at most 65535 rows")
    outputs, inputs = matrix.matrix_shape
    x = as_float32(x, "input A", "matmul_time_major")
    if x.ndim < 1 or x.shape[-1] != inputs:
        raise GraphError(f"matmul_time_major: input A must be [..., {inputs}] for a {inputs}x{outputs} weight, "
                         f"got shape {x.shape}")
    shape = x.shape[:-1] + (outputs,)
    bias, _ = check_bias_residual(bias, None, (1, outputs), "matmul_time_major")
    out = _output(out, shape, "matmul_time_major")
    if out.size == 0:
        return out
    rows = x.reshape(-1, inputs)
    work = matrix.nnz * rows.shape[0] // threads.SPARSE_MACS_PER_WORK  # threads.py: parallel or not
    fastest_time_major_kernel()(work, rows, matrix.values.reshape(-1, 1, 1), matrix.indices, matrix.indptr, bias,
                                out.reshape(-1, outputs))
    return out


def linear(a, weight) -> np.ndarray:
    """a [M, K] @ W.T for a weight W [N, K] in any encoding (Gemm with transB=1, torch Linear): [M, N] float32."""
    a = as_float32(a, "input A", "linear")
    if a.ndim != 2:
        raise GraphError(f"linear: input A must be 2-D, got shape {a.shape}")
    if kernel_matrix(weight) is not None:
        return np.ascontiguousarray(spmm(weight, np.ascontiguousarray(a.T)[None])[0].T)
    return a @ np.asarray(as_dense(weight), np.float32).T
