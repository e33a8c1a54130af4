"""Sparse weight x activations: 1x1 convs and linear layers whose weight is CSR or BSR.

``y[b] = act(W @ x[b] + bias + residual)`` with W [Cout, Cin] sparse and x [B, Cin, T] dense, the Conv
op's semantics (see conv1d.py).  What makes sparsity pay (notes: ../shared/research/kernels.md):

* time is the inner, contiguous, vectorised loop: each non-zero (column c, value v) of an output row
  adds ``v * x[b, c, t0:t0+width]`` to the row's sums over a tile of ``width`` frames (16 to 64: a few
  variants, the fastest on this CPU chosen by measurement at first use, tuning.py);
* that loop is LLVM IR written here (_compile.gather_fma_finish): the sums are SSA vector values, so they stay in
  registers.  Written as Numba loops over a stack buffer, whether LLVM kept them there depended on the code
  around the loop: the BSR strip with its tile packed in the work item loaded and stored all 16 sums for
  every block (Zen 3: 2-3x slower), and narrow tiles were out of reach;
* BSR blocks of 4k x 1 (4 output rows share a column): a strip of 4 rows is summed at once, one x load
  serves 4 multiply-adds, one index load 4 weights;
* work items are (batch, tile, part of the rows), tile-major: the item copies its tile's frames of x into a
  contiguous [Cin, width] scratch first, which stays in L1 / L2 while all its rows gather from it.  Read in
  place, each gathered segment of x lies on its own page (rows are T frames apart): 512 pages per tile at
  Cin = 512, past the first-level TLB, and the gathers ran 1.1-1.6x slower at T = 1000
  (benchmarks/results/sparse_packing.md).  The scratch starts on a 64-byte boundary (_compile.aligned_rows):
  Numba's np.empty gives 32, and a 1x64 tile of 512 inputs came 32 bytes past a line in every process, each
  AVX-512 load of x split over two lines (512 x 512 at T = 1000: 1.46 -> 1.10 ms, Zen 4).  What is left is the
  gather's traffic from the cache, one vector load per multiply-add for CSR: figures in
  benchmarks/results/sparse_gather.md;
* the epilogue (bias, residual, Relu / Clip) is applied to each whole row tile in registers as the gather ends
  (_compile.gather_fma_finish), the short last tile's through a stack buffer (epilogue.store_tile).

Transformer blocks keep activations time-major, x [frames, K] (a row per frame), and multiply by a stored
W [K, N] (MatMul, then a bias Add).  ``matmul_time_major`` runs a CSR / BSR W there with the same row tile:
W is read by output column (``CSRMatrix.transposed``, built once), and each tile of frames of x is first
transposed into a [K, width] scratch tile, so the inner loop is again a contiguous vector over frames; 8 output
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
from numba import carray, literally, njit, types

from tinyasr.engine import threads
from tinyasr.errors import GraphError
from tinyasr.format.encodings.sparse import BSRMatrix, CSRMatrix, as_dense, bsr_arrays, csr_arrays
from tinyasr.kernels import tuning
from tinyasr.kernels._compile import (aligned_rows, element_pointer, gather_fma_finish, serial_and_parallel,
                                     stack_buffer, transpose_8x8)
from tinyasr.kernels.conv1d import bound_conv1d, run_nothing
from tinyasr.kernels.epilogue import (
    ACTIVATIONS,
    NO_BIAS,
    NO_RESIDUAL,
    activation_code,
    as_float32,
    bias_act,
    bias_act_reference,
    check_bias_residual,
    residual_argument,
    store_tile,
)
from tinyasr.kernels.pointwise import MAX_STRIP, pack_tile, row_parts, tile_item

RELU, CLIP = ACTIVATIONS["Relu"], ACTIVATIONS["Clip"]  # applied in the kernels; others after them


def _signature():
    """(x, values, indices, indptr, bias, residual, y, act, lo, hi, parts).  Inputs are typed read-only (weights are
    views of the read-only memory map; writable arrays are accepted too).  uint16 column indices only, so the
    kernel compiles once per build (matrices over 65535 columns store int32 indices and run dense)."""
    readonly = [types.Array(dtype, ndim, "C", readonly=True) for dtype, ndim in (
        (types.float32, 3), (types.float32, 3), (types.uint16, 1), (types.int32, 1), (types.float32, 1),
        (types.float32, 3))]
    return types.void(*readonly, types.Array(types.float32, 3, "C"), types.int64, types.float32, types.float32,
                      types.int64)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _strip_rows(acc, x_tile, values, indices, indptr, strip, strip_rows, width, ways, finish, y, y_row, frames, bias,
                has_bias, residual, add_residual, act, lo, hi):
    """The sums of the ``strip_rows`` rows of ``strip`` over the tile's frames: its block row's non-zeros gathered
    from x_tile (gather_fma_finish).  Where ``finish`` (a whole tile), finished and stored straight into y from
    element y_row on (rows ``frames`` apart); else into acc (acc[k*width:(k+1)*width], row k) for store_tile.
    CSR: values [nnz, 1, 1], one row a strip; BSR: values [nblocks, br, 1], strips of 4 rows inside blocks of br
    rows sharing each column index."""
    block_rows = values.shape[1]
    strips_per_block = block_rows // strip_rows
    block_row, first_row = strip // strips_per_block, (strip % strips_per_block) * strip_rows
    r0 = strip * strip_rows
    gather_fma_finish(element_pointer(acc, 0), element_pointer(x_tile, 0), np.int64(width),
                      element_pointer(values, first_row), np.int64(block_rows), element_pointer(indices, 0),
                      np.int64(indptr[block_row]), np.int64(indptr[block_row + 1]), np.int64(finish),
                      element_pointer(y, y_row), np.int64(frames), element_pointer(bias, r0 if has_bias else 0),
                      np.int64(has_bias), element_pointer(residual, y_row if add_residual else 0),
                      np.int64(add_residual), act, lo, hi, strip_rows, width, ways)


@njit(fastmath={"contract"}, cache=True)
def _sparse_tile(x, values, indices, indptr, bias, residual, y, act, lo, hi, b, t0, first, last, strip_rows, width,
                 ways):
    """One work item of _sparse_kernel: frames t0 .. t0+width-1 (fewer at the end) of batch b, strips first ..
    last-1.  A function of its own, called by both builds: inlined into Numba's parallel loop, the item ran 1.16x
    slower on one thread than in the serial build, so two threads gained 1.6x (now 1.9x).  Module-level, its
    variant's shape passed as literals: as a closure of the factory it was part of the kernels' closure, whose
    pickled form (a dispatcher's, with a per-process id) is in Numba's cache key, and every process compiled the
    kernels again.  A whole tile's rows are finished in the gather's IR; the last, short tile's go through acc and
    store_tile."""
    literally(strip_rows)
    literally(width)
    literally(ways)
    inputs, frames = x.shape[1], x.shape[2]
    n = min(width, frames - t0)
    finish = n == width
    has_bias, add_residual = bias.shape[0] > 0, residual.size > 0
    x_tile = aligned_rows(inputs, width)
    pack_tile(x[b], t0, n, x_tile)
    acc = carray(stack_buffer(MAX_STRIP), (MAX_STRIP,))
    for strip in range(first, last):
        r0 = strip * strip_rows
        _strip_rows(acc, x_tile, values, indices, indptr, strip, strip_rows, width, ways, finish, y,
                    (b * y.shape[1] + r0) * frames + t0, frames, bias, has_bias, residual, add_residual, act, lo, hi)
        if not finish:
            store_tile(y, acc, width, b, r0, strip_rows, t0, n, bias, has_bias, residual, add_residual, act, lo, hi)


def _sparse_kernel(strip_rows: int, width: int, ways: int = 1):
    """The CSR (strip_rows 1) or BSR (strip_rows 4, blocks of br x 1, br = 4k) kernel factory on tiles of
    ``width`` frames, each row's non-zeros interleaved ``ways`` ways (gather_fma).

    Work items are (batch, tile, part of the strips), tile-major, the strips split in ``parts`` (the last
    argument, pointwise.row_parts: more than 1 only where there are too few tiles for every thread).  An item first
    copies its tile's frames of x into a contiguous [Cin, width] scratch (pointwise.pack_tile), which stays in L1 / L2
    while all its strips gather from it.  Read in place, the gathered rows of x are T frames apart, each on its own page
    (512 pages a tile at Cin 512, past the first-level TLB: the gathers ran 1.1-1.6x slower at T = 1000,
    benchmarks/results/sparse_packing.md), and a row of x at a frame that is not a multiple of 16 straddles
    cache lines.  The copy is Cin x width floats per tile against nnz x width multiply-adds.  The epilogue
    y = act((sums + bias) + residual) is applied to the sums in registers (gather_fma_finish; a short last tile's
    through store_tile, inlined: calling the epilogue's finish_row, even a branch of it never taken, made the
    kernel 1.2-2x slower), so only "" / Relu / Clip are applied here; spmm applies Sigmoid / Tanh in a second pass.
    """
    if strip_rows * width > MAX_STRIP:
        raise ValueError(f"a {strip_rows}x{width} strip needs more than MAX_STRIP = {MAX_STRIP} sums")

    def make(loop):
        def kernel(x, values, indices, indptr, bias, residual, y, act, lo, hi, parts):
            batch, frames = x.shape[0], x.shape[2]
            strips = y.shape[1] // strip_rows
            tiles = (frames + width - 1) // width
            parts = max(parts, 1)
            for item in loop(batch * tiles * parts):
                b, t0, first, last = tile_item(item, parts, tiles, width, strips)
                _sparse_tile(x, values, indices, indptr, bias, residual, y, act, lo, hi, b, t0, first, last,
                             strip_rows, width, ways)

        return kernel

    make.__name__ = make.__qualname__ = "csr_rows" if strip_rows == 1 else "bsr_strips"
    kernel = serial_and_parallel(_signature(), fastmath={"contract"})(make)
    kernel.width = width
    return kernel


# The variants, one chosen per CPU (tuning.py; all are exact to float32 rounding, each the same at any thread count).
# CSR: y[b, r] = act(sum_j values[j] * x[b, indices[j]] + bias[r] + residual[b, r]) over the non-zeros j of row r;
# values [nnz, 1, 1] (a free reshape of the CSR values); indptr and indices were validated at load.
# BSR: the same for blocks of br x 1, br a multiple of 4: values [nblocks, br, 1], indptr [rows/br + 1].
# Named rows x frames of a strip's sums, and the ways its non-zeros are interleaved: the sums and the values' broadcasts
# must fit the registers (16 AVX2, 32 AVX-512 / NEON), and rows x vectors x ways chains must hide the multiply-add's
# latency.  Measured: benchmarks/results/sparse_gather.md.
CSR_KERNELS = {"1x16 4-way": _sparse_kernel(1, 16, 4), "1x32": _sparse_kernel(1, 32),
               "1x32 2-way": _sparse_kernel(1, 32, 2), "1x64": _sparse_kernel(1, 64),
               "1x64 2-way": _sparse_kernel(1, 64, 2)}
BSR_KERNELS = {"4x16": _sparse_kernel(4, 16), "4x32": _sparse_kernel(4, 32), "4x64": _sparse_kernel(4, 64)}
# The timing problems: square weights of these sizes (input channels decide the packed tile's place in the cache: a
# 1x64 tile of 512 inputs is 128 KB, past a 32 KB L1, and the variant that wins at 256 inputs lost at 512 on Zen 3),
# T (whole tiles for every width) and sparsity, in a chain of CALIBRATION_LAYERS layers as a model runs them (below).
# A weight takes the choice made on the nearest size.
CALIBRATION_SIZES = (256, 512)
CALIBRATION = (384, 0.9)
CALIBRATION_LAYERS = 8


def fastest_kernel(kind: str, inputs: int = CALIBRATION_SIZES[0]):
    """The CSR ("csr") or BSR ("bsr", 4x1 blocks) kernel measured fastest on this CPU (tuning.fastest) for a
    weight of ``inputs`` columns: the choice made on the nearest of CALIBRATION_SIZES."""
    return _fastest_kernel(kind, min(CALIBRATION_SIZES, key=lambda size: abs(size - inputs)))


@functools.cache
def _fastest_kernel(kind: str, size: int):
    """Each candidate times a chain of CALIBRATION_LAYERS layers of their own weights, each layer's output (bias
    and Relu fused) the next one's input, as in a pruned encoder.  One layer with its weights copied from an 8 MB
    rotation (tuning.Rotation, right for dense weights) ranked the CSR variants unlike a model on Zen 4: 1x32 first
    (106 against 127 us for 1x64 2-way at 256 x 384), where in the 90 % encoders 1x32 ran 4-5 % slower than 1x64
    2-way (whole-model medians, one process); the chain ranks them as the models do (110-111 us a layer for 1x64
    2-way, 121-131 for 1x32): a sparse model's weights (~40 KB a layer) stay in the caches between its runs,
    its activations flow from layer to layer."""
    frames, sparsity = CALIBRATION
    rng = np.random.default_rng(0)
    layers = []
    for _ in range(CALIBRATION_LAYERS):
        weight = rng.standard_normal((size, size), dtype=np.float32) / np.float32(np.sqrt(size * (1 - sparsity)))
        if kind == "csr":
            weight[rng.random(weight.shape) < sparsity] = 0.0
            values, indices, indptr = csr_arrays(weight)
            layers.append((values.reshape(-1, 1, 1), indices, indptr))
        else:
            weight[np.repeat(rng.random((size // 4, size)) < sparsity, 4, axis=0)] = 0.0
            layers.append(bsr_arrays(weight, (4, 1)))
    kernels = CSR_KERNELS if kind == "csr" else BSR_KERNELS
    bias = np.zeros(size, np.float32)
    buffers = [rng.standard_normal((1, size, frames), dtype=np.float32), np.empty((1, size, frames), np.float32),
               np.empty((1, size, frames), np.float32)]

    def run(kernel):  # one part: the serial build
        def chain():
            source = 0
            for layer, arrays in enumerate(layers):
                target = 1 + layer % 2
                kernel.serial(buffers[source], *arrays, bias, NO_RESIDUAL, buffers[target], RELU, 0.0, 0.0, 1)
                source = target

        return chain

    name = tuning.fastest(f"spmm {kind} {size} inputs, {CALIBRATION_LAYERS} layers chained",
                          {name: run(kernel) for name, kernel in kernels.items()},
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
    """x_tile[c, t] = x[t0 + t, c] for t < n and every input c, zeros after n: 8 x 8 blocks transposed in
    registers, the edges (frames past a multiple of 8, inputs past a multiple of 8) one value at a time."""
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
    for c in range(inputs):  # a short last tile runs the full-width gathers too; its extra sums are not stored
        for k in range(n, x_tile.shape[1]):
            x_tile[c, k] = 0.0


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


def _time_major_kernel(width: int, ways: int = 1):
    """The time-major CSR kernel factory on tiles of ``width`` frames, non-zeros interleaved ``ways`` ways.

    Work items are tiles of frames.  One item transposes its frames of x into a [K, width] scratch tile, then
    gathers each output column's sums from it, 8 columns at a time into an [8, width] stack buffer, the bias added
    in registers (gather_fma_finish; added by a loop over the buffer afterwards, 176 x 704 at T = 256 ran 146 ->
    121-124 us, Zen 4), and writes those 8 columns into y by 8 x 8 register transposes.  Measured on Zen 3 (AVX2),
    90 % sparse, 256 frames, multiply-adds alone -> whole kernel: 88x352 36 -> 62 us, 352x88 35 -> 57, 512x512
    358 -> 409, 88x88 7 -> 18 (BLAS: 179, 177, 1460, 46); with transposes one value at a time the kernel took
    75, 118, 731, 27.  Frames are independent, so any batch dims are folded into them.
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
                x_tile = aligned_rows(inputs, width)
                _frames_to_tile(x, t0, n, x_tile)
                acc = carray(stack_buffer(block_size), (8, width))
                for c0 in range(0, outputs, 8):
                    columns = min(8, outputs - c0)
                    for q in range(columns):
                        sums = element_pointer(acc, q * width)
                        gather_fma_finish(sums, element_pointer(x_tile, 0), np.int64(width),
                                          element_pointer(values, 0), np.int64(1), element_pointer(indices, 0),
                                          np.int64(indptr[c0 + q]), np.int64(indptr[c0 + q + 1]), np.int64(1),
                                          sums, np.int64(width), element_pointer(bias, c0 + q if has_bias else 0),
                                          np.int64(has_bias), sums, np.int64(0), np.int64(0), np.float32(0.0),
                                          np.float32(0.0), 1, width, ways)
                    _columns_to_frames(acc, columns, y, t0, n, c0)

        return kernel

    make.__name__ = make.__qualname__ = "csr_time_major"
    return serial_and_parallel(_time_major_signature(), fastmath={"contract"})(make)


# One chosen per CPU, as for the channel-major CSR kernels (widths of 8k frames: the transposes are 8 x 8 blocks).
TIME_MAJOR_KERNELS = {"1x32": _time_major_kernel(32), "1x64": _time_major_kernel(64),
                      "1x64 2-way": _time_major_kernel(64, 2)}


@functools.cache
def fastest_time_major_kernel():
    """The time-major CSR kernel measured fastest on this CPU (tuning.fastest), on the smaller CALIBRATION problem."""
    rows = columns = CALIBRATION_SIZES[0]
    frames, sparsity = CALIBRATION
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((rows, columns), dtype=np.float32)
    weight[rng.random(weight.shape) < sparsity] = 0.0
    values, indices, indptr = csr_arrays(weight)
    values = values.reshape(-1, 1, 1)
    x = rng.standard_normal((frames, columns), dtype=np.float32)
    y = np.empty((frames, rows), np.float32)
    weights = tuning.Rotation(values, indices, indptr)

    def run(kernel):
        return lambda: kernel.serial(x, *weights(), NO_BIAS, y)

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
    x = as_float32(x, "input X", "spmm")
    residual = None if residual is None else as_float32(residual, "residual", "spmm")
    out, run = bound_spmm(weight, x, bias, residual, activation, activation_params, out)
    run(x, residual)
    return out


def bound_spmm(weight, x, bias=None, residual=None, activation="", activation_params=(), out=None):
    """spmm's checks and choice of kernel made once: ``(out, run)``, where ``run(x, residual)`` computes spmm into
    ``out`` for an x and residual of the shapes and dtypes given here (conv1d.bound_conv1d says why)."""
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
        return out, run_nothing
    work = weight.values.size * shape[0] * shape[2] // threads.SPARSE_MACS_PER_WORK  # threads.py: parallel or not
    fused = act in (0, RELU, CLIP)
    if isinstance(weight, CSRMatrix):
        kernel, values = fastest_kernel("csr", columns), weight.values.reshape(-1, 1, 1)
    else:
        kernel, values = fastest_kernel("bsr", columns), weight.values
    workers = 1 if threads.serial_only(work) else threads.get_num_threads()
    strips = rows if isinstance(weight, CSRMatrix) else rows // 4
    parts = row_parts(shape[0], shape[2], strips, kernel.width, workers)

    def run(x, residual):
        kernel(work, as_float32(x, "input X", "spmm"), values, weight.indices, weight.indptr, bias,
               residual_argument(residual), out, act if fused else 0, lo, hi, parts)
        if not fused:
            bias_act(out, activation=activation, params=activation_params)

    return out, run


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
    out, run = bound_conv1d_any(x, weight, bias, residual, stride=stride, dilation=dilation, pad_left=pad_left,
                                pad_right=pad_right, group=group, activation=activation,
                                activation_params=activation_params, out=out)
    run(x, residual)
    return out


def bound_conv1d_any(x, weight, bias=None, residual=None, *, stride=1, dilation=1, pad_left=0, pad_right=0, group=1,
                     activation="", activation_params=(), out=None):
    """conv1d_any's checks and choice of kernel made once: ``(out, run)`` as conv1d.bound_conv1d returns them."""
    if kernel_matrix(weight) is not None and is_pointwise(weight.shape, pad_left=pad_left, pad_right=pad_right,
                                                          group=group):
        x = np.asarray(x)
        if x.ndim == 3 and stride > 1:
            out, run = bound_spmm(weight, x[:, :, ::stride], bias, residual, activation, activation_params, out)
            return out, lambda x, residual: run(np.asarray(x)[:, :, ::stride], residual)
        return bound_spmm(weight, x, bias, residual, activation, activation_params, out)
    return bound_conv1d(x, as_dense(weight), bias, residual, stride=stride, dilation=dilation, pad_left=pad_left,
                        pad_right=pad_right, group=group, activation=activation,
                        activation_params=activation_params, out=out)


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
