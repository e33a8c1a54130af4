"""Dense pointwise (1x1) conv without BLAS: ``y[b] = act(W @ x[b] + bias + residual)``, W [Cout, Cin].

The bulk of a QuartzNet's arithmetic.  numpy's matmul speed depends on which BLAS the user has and
which CPU kernels it picked (OpenBLAS runs its AVX2 kernels on AMD Zen 4 / 5 at half speed); this
kernel is a register-tiled loop that LLVM vectorises for the host CPU, as the sparse kernels are:

* each work item first copies its tile of ``width`` frames of x into a contiguous [Cin, width] scratch
  (pack_tile, the last tile zero-padded): reading a tile's frames from each of Cin long rows (stride T) ran at
  half speed (cache-set and prefetch trouble), a contiguous tile at full speed.  Copied by the item, not by
  numpy beforehand (2026-12-06): a thread packs its own tiles, and numpy's transposing copy ran at 16 GB/s
  against the item's 40 (a 256 x 500 layer 616 -> 602 us on one thread, 346 -> 309 on two, Zen 4);
* a strip of ``rows`` output rows x ``width`` frames is summed in vector registers over all Cin input channels
  (_compile.dense_fma_finish, LLVM IR, the sparse kernels' loop with every column present): per channel one x
  row of the tile is loaded once, the rows' weights (next to each other: packed_strips) are broadcast, rows x
  width / lanes fused multiply-adds.
  How big a strip fits the register file is the CPU's, so there are a few tile shapes (TILE_SHAPES) and the
  first call measures which is fastest here (tuning.py);
* work items are (batch, tile, part of the strips), tile-major, the strips split in ``parts`` only where
  there are too few tiles for the threads (row_parts): the x tile stays in L1 / L2 while every strip of the
  item uses it; the epilogue (bias, residual, Relu / Clip) is applied to a whole tile's sums in registers, a
  short last tile's through a stack buffer (epilogue.store_tile).  Written as Numba loops over a stack buffer
  (kept in registers by LLVM) followed by store_tile, the strips ran 4-6 % slower for 4x64, 13-14 % for 4x16
  and 2.4x for 2x48 (Zen 4, 256 x 256 to 512 x 512; benchmarks/results/sparse_gather.md).

A weight whose Cout is not a multiple of the tile's rows (a vocabulary-sized output conv: 29, 129, 1025) gets zero
rows up to one (packed_strips, made once per stored weight), and its last strip's extra sums are not stored.  A
64-frame tile costs as much as 24 frames of BLAS, so for streaming's few frames ``pointwise_narrow`` (below) walks
the weights instead; conv1d chooses by shape.

Summation is in channel order c = 0..Cin-1 with fused multiply-adds, so results match BLAS to
float32 rounding, not bitwise, and are the same at any thread count (one thread computes a strip) and for
every tile shape.

Measured (benchmarks/bench_kernels.py, 1 thread, Zen 5 with OpenBLAS on its AVX2 kernels, 4x64 tiles): 210-234
GFLOP/s from T = 64, 1.8-2x numpy's matmul, 0.95-1.04x onnxruntime's MLAS (both near the FMA peak).  On Zen 3
(AVX2, 2026-12-05) the 4x64 tile ran at 0.35-0.41x onnxruntime; 4x16 / 2x48 at 0.8-1.0x (60-79 GFLOP/s).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import carray, literally, njit
from numba.types import float32, int64, void

from tinyasr.kernels import tuning
from tinyasr.kernels._compile import (aligned_rows, dense_fma_finish, element_pointer, prefetch, serial_and_parallel,
                                     stack_buffer)
from tinyasr.kernels.epilogue import (
    ACTIVATIONS,
    NO_BIAS,
    NO_RESIDUAL,
    READ_1D,
    READ_2D,
    READ_3D,
    epilogue_rows,
    kept_per_array,
    store_tile,
)

RELU, CLIP = ACTIVATIONS["Relu"], ACTIVATIONS["Clip"]  # applied in the kernel; Sigmoid / Tanh after it
# Register tiles (rows x frames) of pointwise_tiles, one chosen per CPU (tuning.py).  Accumulators plus one x
# vector plus the rows' broadcast weights must fit the register file, or every step spills (LLVM broadcasts all
# rows' weights first): 4x64 is 16 of AVX-512's 32 registers; AVX2 / NEON have 16 / 32 of a quarter / an
# eighth of the width, so 4x16 (8 AVX2 accumulators) and 2x48 (12).  Measured, 1 thread, GFLOP/s on
# 256x256 / 512x512 at T = 1000: Zen 3 (AVX2) 4x64 30 / 32, 4x16 59 / 63, 2x48 73 / 79, onnxruntime 87 / 85;
# 4x24, 2x56 and 6x16 spilled (36-42, 11).
TILE_SHAPES = {"4x64": (4, 64), "4x16": (4, 16), "2x48": (2, 48)}
TILE_ROWS = sorted({rows for rows, _ in TILE_SHAPES.values()})  # the strip heights, each its own packed weight
# The timing problems (tuning.py): 256x256 at T = 64 (short inputs, below SHORT_INPUT frames: a 64-frame chunk,
# where 4x16 ran 1.1-1.8x 2x48, which pads it to 96 frames) and T = 384 (whole tiles for every width).
CALIBRATION_CHANNELS = (256, 256)
CALIBRATION_FRAMES = (64, 384)
SHORT_INPUT = 96


def row_parts(batch: int, frames: int, strips: int, width: int, workers: int) -> int:
    """The tile kernels' ``parts`` (here and sparse.py): the strips (output rows, or strips of them) split so that
    there are two work items per worker, 1 if the tiles suffice."""
    tiles = max(1, batch * -(-frames // width))
    return max(1, min(strips, -(-2 * workers // tiles))) if workers > 1 else 1


@njit(inline="always")
def tile_item(item, parts, tiles, width, strips):
    """Work item ``item`` of a tile kernel (here and sparse.py; items are (batch, tile, part of the strips),
    tile-major, ``parts`` >= 1): (batch, first frame, first strip, end of its strips)."""
    per_part = -(-strips // parts)
    part = item % parts
    b = item // (parts * tiles)
    return b, (item // parts - b * tiles) * width, part * per_part, min(strips, (part + 1) * per_part)


@njit(inline="always")
def pack_tile(x, t0, n, x_tile):
    """x_tile[c, :n] = x[c, t0:t0+n] for every input channel c, zeros after n: the tile's frames made contiguous
    (a short last tile then runs the same full-width code; its extra sums are not stored)."""
    frames, width = x.shape[1], x_tile.shape[1]
    for c in range(x.shape[0]):
        source = carray(element_pointer(x, c * frames + t0), (n,))
        target = carray(element_pointer(x_tile, c * width), (width,))
        for t in range(n):
            target[t] = source[t]
        for t in range(n, width):
            target[t] = 0.0


LINE_FLOATS = 16  # floats in a 64-byte cache line: the step of prefetch_next_tile


@njit(inline="always")
def prefetch_next_tile(x, b, t0, width, frames, first_row, rows):
    """Ask for the next tile's frames (t0 + width onwards, up to ``frames``) of x[b]'s rows first_row ..
    first_row + rows - 1 to be brought into the cache: called by a tile item once per strip, each strip a few rows,
    so that the next tile's pack (pack_tile) finds its rows there.  Without it each of the pack's Cin row segments
    (rows T frames apart: too many streams for the hardware prefetchers) waited on L3.  256 x 256 convs, 40
    weights in turn, T = 125-6000: 1-3 % faster; the next tile's rows of y asked for too (to be written), no
    gain (AMD EPYC Zen 1)."""
    inputs = x.shape[1]
    if t0 + width < frames:
        for c in range(first_row, min(inputs, first_row + rows)):
            for t in range(t0 + width, min(frames, t0 + 2 * width), LINE_FLOATS):
                prefetch(element_pointer(x, (b * inputs + c) * x.shape[2] + t))


MAX_STRIP = 256  # floats of the largest strip's sums (4 rows x 64 frames), here and in sparse.py: one stack buffer size


@njit(fastmath={"contract"}, cache=True)
def _tiles_item(x, w, bias, residual, y, act, lo, hi, b, t0, first, last, rows, width):
    """One work item of pointwise_tiles: frames t0 .. t0+width-1 (fewer at the end) of batch b, strips first ..
    last-1.  A function of its own, the tile shape passed as literals, as sparse.py's items are: written inline in
    the kernel's loop, the 2x48 tile ran 2.6x slower in some processes and not in others (Zen 4; the cause, spilled
    sums or the scratch tile's place in memory, not pinned down), the other shapes unchanged."""
    literally(rows)
    literally(width)
    inputs, outputs, frames = x.shape[1], y.shape[1], y.shape[2]
    n = min(width, frames - t0)
    has_bias, add_residual = bias.shape[0] > 0, residual.size > 0
    x_tile = aligned_rows(inputs, width)  # on a cache line: at 32 bytes past one (np.empty's), an Intel Xeon ran
    pack_tile(x[b], t0, n, x_tile)  # the 4x64 tile at 107-111 GFLOP/s instead of 146-156 (Zen 4: no difference)
    acc = carray(stack_buffer(MAX_STRIP), (MAX_STRIP,))
    per_strip = -(-inputs // max(1, last - first))
    for strip in range(first, last):
        prefetch_next_tile(x, b, t0, width, frames, (strip - first) * per_strip, per_strip)
        r0 = strip * rows
        kept = min(rows, outputs - r0)  # fewer in the last strip of a weight padded to whole strips (packed_strips)
        finish = n == width and kept == rows
        y_row = (b * outputs + r0) * frames + t0
        dense_fma_finish(element_pointer(acc, 0), element_pointer(x_tile, 0), np.int64(width),
                         element_pointer(w, r0 * inputs), np.int64(inputs), np.int64(finish),
                         element_pointer(y, y_row if finish else 0), np.int64(frames),
                         element_pointer(bias, r0 if has_bias and finish else 0), np.int64(has_bias),
                         element_pointer(residual, y_row if add_residual and finish else 0),
                         np.int64(add_residual), act, lo, hi, rows, width)
        if not finish:
            store_tile(y, acc, width, b, r0, kept, t0, n, bias, has_bias, residual, add_residual, act, lo, hi)


def _tiles_kernel(rows: int, width: int):
    """pointwise_tiles for a register tile of ``rows`` x ``width`` frames (closure constants: one build each)."""
    if rows * width > MAX_STRIP:
        raise ValueError(f"a {rows}x{width} strip needs more than MAX_STRIP = {MAX_STRIP} sums")

    @serial_and_parallel(
        void(READ_3D, READ_2D, READ_1D, READ_3D, float32[:, :, ::1], int64, float32, float32, int64),
        fastmath={"contract"},
    )
    def pointwise_tiles(loop):
        """y[b, r, t] = act((sum_c w[r, c] * x[b, c, t] + bias[r]) + residual[b, r, t]) for act "" / Relu / Clip.

        x [B, Cin, T'] with T' >= T (frames past T are not read), w [Cout', Cin] with Cout' the least multiple
        of ``rows`` >= Cout, packed as packed_strips packs it, y [B, Cout, T]; ``parts``: row_parts.
        """

        def kernel(x, w, bias, residual, y, act, lo, hi, parts):
            batch, channels_out, frames = y.shape
            tiles = (frames + width - 1) // width
            strips = w.shape[0] // rows
            parts = max(parts, 1)
            for item in loop(batch * tiles * parts):
                b, t0, first, last = tile_item(item, parts, tiles, width, strips)
                _tiles_item(x, w, bias, residual, y, act, lo, hi, b, t0, first, last, rows, width)

        return kernel

    pointwise_tiles.rows, pointwise_tiles.width = rows, width
    return pointwise_tiles


TILE_KERNELS = {name: _tiles_kernel(rows, width) for name, (rows, width) in TILE_SHAPES.items()}


@kept_per_array
def packed_strips(weight, rows: int) -> np.ndarray:
    """A [Cout, Cin] (or [Cout, Cin, 1]) weight as the tile kernels read it, [Cout', Cin]: zero rows after it up to
    a multiple of ``rows``, and each strip of ``rows`` rows stored input by input (strip s's weight of row k for
    input c at (s * Cin + c) * rows + k).  Made once per model weight (kept_per_array), not on every run of a new
    input length, where it would copy every pointwise weight again; the copy is held in memory while the weight
    lives, and the file's pages of that weight are no longer read (the kernel reads only the copy).

    Zero rows so that an output count like a vocabulary's runs on the tiles too, its last strip's extra sums not
    stored: BLAS, which ran those convs before, was slow at such counts (129 x 640 at T = 125 1490 us against 479
    for 128 x 640, OpenBLAS, AMD EPYC Zen 1) and runs at one thread.  Input by input so that a strip's weights are
    one stream read front to back, the whole weight one stream over the strips, where row by row they were ``rows``
    streams of Cin floats each: a model's weights come from memory once per conv (each conv its own), and a 256 x
    256 conv with 40 weights in turn ran 3-5 % faster at T = 125-500, its first call after another weight 33 ->
    ~13 us above a repeated one (Zen 1)."""
    weight = weight.reshape(weight.shape[0], -1)
    short = -weight.shape[0] % rows
    if short:
        weight = np.concatenate([weight, np.zeros((short, weight.shape[1]), weight.dtype)])
    strips, inputs = weight.shape[0] // rows, weight.shape[1]
    return np.ascontiguousarray(weight.reshape(strips, rows, inputs).transpose(0, 2, 1)).reshape(weight.shape)


def pointwise_tiles(frames: int):
    """The tile kernel measured fastest on this CPU for ``frames`` output frames: measured once at T = 64 for short
    inputs, where a wide tile computes mostly padding, and once at T = 384 for the rest (tuning.fastest)."""
    return _fastest_tiles(_calibration_frames(frames))


def prefer_blas(frames: int) -> bool:
    """True where numpy's BLAS matmul followed by the epilogue pass measured faster on this CPU than
    ``pointwise_tiles(frames)`` with its epilogue fused (both with a bias and Relu, one thread; conv1d then runs
    BLAS at one thread), measured at the same two frame counts.  OpenBLAS's AVX2 kernels reach 80-86 GFLOP/s on
    Zen 3 where the best tile did 57-70 (benchmarks/results/variants_znver3.md); on Zen 5 the tile ran 1.8-2x
    numpy's matmul."""
    return _blas_beats_tiles(_calibration_frames(frames))


def _calibration_frames(frames: int) -> int:
    return CALIBRATION_FRAMES[0] if frames < SHORT_INPUT else CALIBRATION_FRAMES[1]


def _calibration_problem(frames: int):
    """A layer of CALIBRATION_CHANNELS as a model runs it, fixed values: (x [1, Cin, frames], a tuning.Rotation of
    W [Cout, Cin], bias [Cout], y [1, Cout, frames]).  With the bias and Relu fused, as conv1d runs a QuartzNet's
    convs: without them the 4x16 and 4x64 tiles timed alike at T = 384 on Zen 4 (471-478 us) and the choice went
    either way, with them 4x64 was 1.03-1.10x faster at T = 126-504, and Citrinet-256 ran 1.10x faster on it."""
    cin, cout = CALIBRATION_CHANNELS
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, cin, frames), dtype=np.float32)
    weight = rng.standard_normal((cout, cin), dtype=np.float32)
    weights = tuning.Rotation(weight, *(packed_strips(weight, rows) for rows in TILE_ROWS))
    bias = rng.standard_normal(cout, dtype=np.float32)
    return x, weights, bias, np.empty((1, cout, frames), np.float32)


def _packed_for(kernel, weights: tuple) -> np.ndarray:
    """Of one call's calibration weights (_calibration_problem: W, then W packed for each of TILE_ROWS), the copy
    packed for ``kernel``'s strips."""
    return weights[1 + TILE_ROWS.index(kernel.rows)]


@functools.cache
def _fastest_tiles(frames: int):
    x, weights, bias, y = _calibration_problem(frames)

    def run(kernel):
        return lambda: kernel.serial(x, _packed_for(kernel, weights()), bias, NO_RESIDUAL, y, RELU, 0.0, 0.0, 1)

    name = tuning.fastest(f"pointwise_tiles T={frames}", {name: run(kernel) for name, kernel in TILE_KERNELS.items()},
                          *tuning.cache_of(next(iter(TILE_KERNELS.values())).serial))
    return TILE_KERNELS[name]


@functools.cache
def _blas_beats_tiles(frames: int) -> bool:
    kernel = _fastest_tiles(frames)
    x, weights, bias, y = _calibration_problem(frames)

    def tiles():
        kernel.serial(x, _packed_for(kernel, weights()), bias, NO_RESIDUAL, y, RELU, 0.0, 0.0, 1)

    def blas():
        np.matmul(weights()[0], x[0], out=y[0])
        epilogue_rows.serial(y, bias, NO_RESIDUAL, RELU, 0.0, 0.0)

    family = f"pointwise_tiles or blas T={frames}"
    return tuning.fastest(family, {"tiles": tiles, "blas": blas}, *tuning.cache_of(kernel.serial)) == "blas"


# ---------------------------------------------------------------------------------------------
# Few frames (streaming chunks): weight-bandwidth bound
# ---------------------------------------------------------------------------------------------

LANES = 16  # input channels per vector step
FRAME_GROUP = 4  # frames computed per pass over a strip of weight rows
# The narrow kernel beats BLAS up to 12 frames on Zen 5 (2-6 frames: 1.7-2.5x; 1 and 8-12: 1.0-1.5x), not at 16:
# benchmarks/bench_kernels.py, 256x256, 512x512, 256x1024, 1024x29.  Its strip of 4 rows x 4 frames x 16 lanes is
# 16 AVX-512 registers but 32 AVX2 ones: on Zen 3 it spilled and ran 1.1-1.5x slower than OpenBLAS at 2-4 frames.
# A strip of 1 row is 8 AVX2 registers (16 NEON ones); its loop, read with inspect_asm: 2 weight loads and 8 fused
# multiply-adds with the frames as memory operands, 17 instructions per 16 channels.  On Zen 3 (loaded machine,
# OpenBLAS at 1 thread, 4 frames) it took 18.5 / 52 / 83 us for 256x256 / 512x512 / 1024x512 against BLAS's
# 21 / 82 / 166 us, and made a causal QuartzNet 5x5's 80 ms stream 18 % cheaper.  Strips of 2 rows x 2 frames and
# 4 x 2 ran between the two; with fewer than 4 statements per lane LLVM unrolls the lane loop before its loop
# vectoriser sees it and the code stays scalar (5-8x slower).  pointwise_narrow picks the fastest per CPU.
NARROW_FRAMES = range(1, 13)
# The timing problems, (Cin, Cout): QuartzNet's narrowest and widest blocks (at 256 alone the kernels' fixed costs
# weigh more than in a whole model: BLAS won there on the loaded Zen 3 while the 1-row strip made a causal
# QuartzNet 5x5's stream 18 % cheaper) ...
NARROW_CALIBRATION = ((256, 256), (512, 512))
# ... at 1 frame, 4 (an 80 ms chunk after a stride of 2) and 8 (a batched chunk), each standing for a band of frame
# counts: on Zen 3 BLAS's matrix x vector ran 3x the strip at 1 frame and 1.2-2x at 8-12, the strip 1.2-1.5x BLAS
# at 512 x 512 and 2-7 frames (benchmarks/results/streaming_cost.md)
NARROW_BANDS = ((1, 1), (7, 4), (12, 8))  # (last frame count of the band, the frames it is measured at)


def frames_first(x) -> np.ndarray:
    """x [B, C, T] (any strides) as float32 [B, T', C], T' = T rounded up to a multiple of 4, frames past T zero."""
    batch, channels, frames = x.shape
    x_t = np.zeros((batch, -(-frames // FRAME_GROUP) * FRAME_GROUP, channels), np.float32)
    x_t[:, :frames] = x.transpose(0, 2, 1)
    return x_t


def _narrow_kernel(rows: int):
    """The few-frames kernel with strips of ``rows`` (4 or 1, a closure constant: each build has only its path)
    weight rows x FRAME_GROUP frames x LANES input channels of partial sums."""
    acc_size = rows * FRAME_GROUP * LANES

    def make(loop):
        """pointwise_tiles for few frames, x_t [B, T', Cin] from frames_first; any Cout.

        With T frames each weight is used T times: for small T the cost is reading W, which BLAS (and the
        64-frame tile) do at 20 GB/s here.  This walks ``rows`` weight rows contiguously, LANES input channels
        per step, keeping LANES partial sums per (row, frame) in registers for a group of 4 frames; further
        groups re-read the rows from L1, so W streams from memory once.  The lanes are added up at the end
        (channels c = l mod LANES first, then the lanes in order).
        """

        def kernel(x_t, w, bias, residual, y, act, lo, hi):
            batch, channels_out, frames = y.shape
            channels_in = w.shape[1]
            vector_end = channels_in - channels_in % LANES
            strips = (channels_out + rows - 1) // rows
            last = channels_out - 1
            has_bias, add_residual = bias.shape[0] > 0, residual.size > 0
            for item in loop(batch * strips):
                b = item // strips
                r0 = (item - b * strips) * rows
                # Past the last row the last row is computed again and not stored.
                w0 = w[r0]
                w1, w2, w3 = (w0, w0, w0) if rows == 1 else (w[min(r0 + 1, last)], w[min(r0 + 2, last)],
                                                             w[min(r0 + 3, last)])
                acc = carray(stack_buffer(acc_size), (acc_size,))
                for t0 in range(0, frames, FRAME_GROUP):
                    x0, x1, x2, x3 = x_t[b, t0], x_t[b, t0 + 1], x_t[b, t0 + 2], x_t[b, t0 + 3]
                    for i in range(acc_size):
                        acc[i] = 0.0
                    for c0 in range(0, vector_end, LANES):
                        u0 = w0[c0:]
                        p0, p1, p2, p3 = x0[c0:], x1[c0:], x2[c0:], x3[c0:]
                        if rows == 1:
                            for lane in range(LANES):  # acc[frame * LANES + lane]
                                acc[lane] += u0[lane] * p0[lane]
                                acc[LANES + lane] += u0[lane] * p1[lane]
                                acc[2 * LANES + lane] += u0[lane] * p2[lane]
                                acc[3 * LANES + lane] += u0[lane] * p3[lane]
                        else:
                            u1, u2, u3 = w1[c0:], w2[c0:], w3[c0:]
                            for lane in range(LANES):  # acc[(row * 4 + frame) * LANES + lane]
                                acc[lane] += u0[lane] * p0[lane]
                                acc[LANES + lane] += u0[lane] * p1[lane]
                                acc[2 * LANES + lane] += u0[lane] * p2[lane]
                                acc[3 * LANES + lane] += u0[lane] * p3[lane]
                                acc[4 * LANES + lane] += u1[lane] * p0[lane]
                                acc[5 * LANES + lane] += u1[lane] * p1[lane]
                                acc[6 * LANES + lane] += u1[lane] * p2[lane]
                                acc[7 * LANES + lane] += u1[lane] * p3[lane]
                                acc[8 * LANES + lane] += u2[lane] * p0[lane]
                                acc[9 * LANES + lane] += u2[lane] * p1[lane]
                                acc[10 * LANES + lane] += u2[lane] * p2[lane]
                                acc[11 * LANES + lane] += u2[lane] * p3[lane]
                                acc[12 * LANES + lane] += u3[lane] * p0[lane]
                                acc[13 * LANES + lane] += u3[lane] * p1[lane]
                                acc[14 * LANES + lane] += u3[lane] * p2[lane]
                                acc[15 * LANES + lane] += u3[lane] * p3[lane]
                    for j in range(min(rows, channels_out - r0)):
                        r = r0 + j
                        w_r = w[r]
                        bias_r = bias[r] if has_bias else np.float32(0.0)
                        for f in range(min(FRAME_GROUP, frames - t0)):
                            total = np.float32(0.0)
                            for lane in range(LANES):
                                total += acc[(j * FRAME_GROUP + f) * LANES + lane]
                            x_f = x_t[b, t0 + f]
                            for c in range(vector_end, channels_in):
                                total += w_r[c] * x_f[c]
                            value = total + bias_r
                            if add_residual:
                                value = value + residual[b, r, t0 + f]
                            if act == RELU:
                                value = max(value, np.float32(0.0))
                            elif act == CLIP:
                                value = min(max(value, lo), hi)
                            y[b, r, t0 + f] = value

        return kernel

    make.__name__ = make.__qualname__ = f"narrow_kernel_{rows}rows"
    return serial_and_parallel(
        void(READ_3D, READ_2D, READ_1D, READ_3D, float32[:, :, ::1], int64, float32, float32), fastmath={"contract"}
    )(make)


NARROW_KERNELS = {"4rows": _narrow_kernel(4), "1row": _narrow_kernel(1)}


def pointwise_narrow(frames: int):
    """The NARROW_KERNELS kernel measured fastest on this CPU for ``frames`` (1-12) output frames, or None where
    numpy's BLAS matmul was (conv1d then runs BLAS); measured once per band of NARROW_BANDS."""
    return _fastest_narrow(next(measured for last, measured in NARROW_BANDS if frames <= last))


@functools.cache
def _fastest_narrow(frames: int):
    rng = np.random.default_rng(0)
    inputs, outputs = [], []
    weights = tuning.Rotation(*(rng.standard_normal((cout, cin), dtype=np.float32) for cin, cout in NARROW_CALIBRATION))
    for cin, cout in NARROW_CALIBRATION:
        inputs.append(rng.standard_normal((1, cin, frames), dtype=np.float32))
        outputs.append(np.empty((1, cout, frames), np.float32))

    def run(kernel):
        def call():
            for x, w, y in zip(inputs, weights(), outputs):
                kernel.serial(frames_first(x), w, NO_BIAS, NO_RESIDUAL, y, 0, 0.0, 0.0)
        return call

    def blas():
        for x, w, y in zip(inputs, weights(), outputs):
            np.matmul(w, x[0], out=y[0])

    candidates = {name: run(kernel) for name, kernel in NARROW_KERNELS.items()}
    candidates["blas"] = blas
    name = tuning.fastest(f"pointwise_narrow T={frames}", candidates,
                          *tuning.cache_of(NARROW_KERNELS["4rows"].serial))
    return NARROW_KERNELS.get(name)
