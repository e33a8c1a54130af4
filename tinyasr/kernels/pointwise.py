"""Dense pointwise (1x1) conv without BLAS: ``y[b] = act(W @ x[b] + bias + residual)``, W [Cout, Cin].

The bulk of a QuartzNet's arithmetic.  numpy's matmul speed depends on which BLAS the user has and
which CPU kernels it picked (OpenBLAS runs its AVX2 kernels on AMD Zen 4 / 5 at half speed); this
kernel is a register-tiled loop that LLVM vectorises for the host CPU, as the sparse kernels are:

* x is first copied into tiles of 64 frames, ``[B * tiles, Cin, 64]`` (the last tile zero-padded):
  reading 64 frames from each of Cin long rows (stride T) ran at half speed (cache-set and prefetch
  trouble), a contiguous tile at full speed, and the copy costs ~5 % of the product;
* a strip of 4 output rows x 64 frames is accumulated in a stack buffer (``stack_buffer``) that LLVM
  keeps in 16 vector registers over all Cin input channels: per channel one x row of the tile is
  loaded once, 4 weights are broadcast, 16 fused multiply-adds (6-row strips were no faster);
* work items are (batch, tile, strip), tile-major: the x tile stays in L2 while every strip uses it;
  the epilogue (bias, residual, Relu / Clip) is applied while copying the strip out.

Cout must be a multiple of 4 (QuartzNet / Citrinet / MatchboxNet layers are; a vocabulary-sized
output conv is not and stays on BLAS).  A 64-frame tile costs as much as 24 frames of BLAS, so for
streaming's few frames ``pointwise_narrow`` (below) walks the weights instead; conv1d chooses by shape.

Summation is in channel order c = 0..Cin-1 with fused multiply-adds, so results match BLAS to
float32 rounding, not bitwise, and are the same at any thread count (one thread computes a strip).

Measured (benchmarks/bench_kernels.py, 1 thread, Zen 5 with OpenBLAS on its AVX2 kernels): 210-234
GFLOP/s from T = 64, 1.8-2x numpy's matmul, 0.95-1.04x onnxruntime's MLAS (both near the FMA peak).
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit
from numba.types import float32, int64, void

from tinyasr.kernels._compile import TILE, serial_and_parallel, stack_buffer
from tinyasr.kernels.epilogue import ACTIVATIONS, READ_1D, READ_2D, READ_3D, store_tile

ROWS = 4  # output rows per strip
STRIP = ROWS * TILE  # a named constant: stack_buffer needs a literal
RELU, CLIP = ACTIVATIONS["Relu"], ACTIVATIONS["Clip"]  # applied in the kernel; Sigmoid / Tanh after it


def tiles_of(x) -> np.ndarray:
    """x [B, C, T] (any strides) as float32 tiles [B * ceil(T/64), C, 64]: tile j holds frames 64j .. 64j+63."""
    batch, channels, frames = x.shape
    tiles, full = -(-frames // TILE), frames // TILE
    packed = np.empty((batch, tiles, channels, TILE), np.float32)
    if full:
        packed[:, :full] = x[:, :, : full * TILE].reshape(batch, channels, full, TILE).transpose(0, 2, 1, 3)
    if frames % TILE:
        packed[:, full, :, : frames % TILE] = x[:, :, full * TILE :]
        packed[:, full, :, frames % TILE :] = 0.0
    return packed.reshape(batch * tiles, channels, TILE)


@njit(inline="always", fastmath={"contract"})
def strip_update(a0, a1, a2, a3, v0, v1, v2, v3, x_row, n):
    """a_k[:n] += v_k * x_row[:n] for the 4 rows k of a strip: one load of x serves 4 fused multiply-adds.

    The step of the dense tile below and of the sparse BSR strips (kernels/sparse.py); pass n = TILE where
    the width is constant, so the loop unrolls into registers."""
    for t in range(n):
        p = x_row[t]
        a0[t] += v0 * p
        a1[t] += v1 * p
        a2[t] += v2 * p
        a3[t] += v3 * p


@njit(inline="always", fastmath={"contract"})
def _strip_tile(acc, x_tile, w, r0):
    """acc[k*64:(k+1)*64] = sum over c of w[r0 + k, c] * x_tile[c] for the strip's 4 rows k."""
    for t in range(STRIP):
        acc[t] = 0.0
    a0, a1, a2, a3 = acc[0:TILE], acc[TILE : 2 * TILE], acc[2 * TILE : 3 * TILE], acc[3 * TILE : 4 * TILE]
    w0, w1, w2, w3 = w[r0], w[r0 + 1], w[r0 + 2], w[r0 + 3]
    for c in range(x_tile.shape[0]):
        strip_update(a0, a1, a2, a3, w0[c], w1[c], w2[c], w3[c], x_tile[c], TILE)


@serial_and_parallel(
    void(READ_3D, READ_2D, READ_1D, READ_3D, float32[:, :, ::1], int64, float32, float32), fastmath={"contract"}
)
def pointwise_tiles(loop):
    """y[b, r, t] = act((sum_c w[r, c] * x[b, c, t] + bias[r]) + residual[b, r, t]) for act "" / Relu / Clip.

    x_tiles [B * tiles, Cin, 64] from tiles_of, w [Cout, Cin] with Cout % 4 == 0, y [B, Cout, T].
    """

    def kernel(x_tiles, w, bias, residual, y, act, lo, hi):
        batch, channels_out, frames = y.shape
        tiles = x_tiles.shape[0] // batch
        strips = channels_out // ROWS
        has_bias, add_residual = bias.shape[0] > 0, residual.size > 0
        for item in loop(batch * tiles * strips):
            acc = carray(stack_buffer(STRIP), (STRIP,))
            strip = item % strips
            tile = item // strips
            b = tile // tiles
            t0 = (tile - b * tiles) * TILE
            n = min(TILE, frames - t0)
            _strip_tile(acc, x_tiles[tile], w, strip * ROWS)
            store_tile(y, acc, TILE, b, strip * ROWS, ROWS, t0, n, bias, has_bias, residual, add_residual, act, lo, hi)

    return kernel


# ---------------------------------------------------------------------------------------------
# Few frames (streaming chunks): weight-bandwidth bound
# ---------------------------------------------------------------------------------------------

LANES = 16  # input channels per vector step
FRAME_GROUP = 4  # frames computed per pass over a strip of 4 weight rows
NARROW_ACC = ROWS * FRAME_GROUP * LANES  # four rows x four frames x 16 lanes: 16 vector registers
# pointwise_narrow beats BLAS up to 12 frames (2-6 frames: 1.7-2.5x; 1 and 8-12: 1.0-1.5x), not at 16:
# benchmarks/bench_kernels.py, 256x256, 512x512, 256x1024, 1024x29.
NARROW_FRAMES = range(1, 13)


def frames_first(x) -> np.ndarray:
    """x [B, C, T] (any strides) as float32 [B, T', C], T' = T rounded up to a multiple of 4, frames past T zero."""
    batch, channels, frames = x.shape
    x_t = np.zeros((batch, -(-frames // FRAME_GROUP) * FRAME_GROUP, channels), np.float32)
    x_t[:, :frames] = x.transpose(0, 2, 1)
    return x_t


@serial_and_parallel(
    void(READ_3D, READ_2D, READ_1D, READ_3D, float32[:, :, ::1], int64, float32, float32), fastmath={"contract"}
)
def pointwise_narrow(loop):
    """pointwise_tiles for few frames, x_t [B, T', Cin] from frames_first; any Cout.

    With T frames each weight is used T times: for small T the cost is reading W, which BLAS (and the
    64-frame tile) do at 20 GB/s here.  This walks 4 weight rows contiguously, 16 input channels per
    step, keeping 16 partial sums per (row, frame) in registers for a group of 4 frames; further groups
    re-read the rows from L1, so W streams from memory once.  The 16 lanes are added up at the end
    (channels c = l mod 16 first, then the lanes in order).  512x512 at 4 frames: 24 us, BLAS 55 us.
    """

    def kernel(x_t, w, bias, residual, y, act, lo, hi):
        batch, channels_out, frames = y.shape
        channels_in = w.shape[1]
        vector_end = channels_in - channels_in % LANES
        strips = (channels_out + ROWS - 1) // ROWS
        has_bias, add_residual = bias.shape[0] > 0, residual.size > 0
        for item in loop(batch * strips):
            b = item // strips
            r0 = (item - b * strips) * ROWS
            # Past the last row the last row is computed again and not stored.
            w0, w1 = w[r0], w[min(r0 + 1, channels_out - 1)]
            w2, w3 = w[min(r0 + 2, channels_out - 1)], w[min(r0 + 3, channels_out - 1)]
            acc = carray(stack_buffer(NARROW_ACC), (NARROW_ACC,))
            for t0 in range(0, frames, FRAME_GROUP):
                x0, x1, x2, x3 = x_t[b, t0], x_t[b, t0 + 1], x_t[b, t0 + 2], x_t[b, t0 + 3]
                for i in range(NARROW_ACC):
                    acc[i] = 0.0
                for c0 in range(0, vector_end, LANES):
                    u0, u1, u2, u3 = w0[c0:], w1[c0:], w2[c0:], w3[c0:]
                    p0, p1, p2, p3 = x0[c0:], x1[c0:], x2[c0:], x3[c0:]
                    for lane in range(LANES):  # acc[(row * 4 + frame) * 16 + lane]
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
                for j in range(min(ROWS, channels_out - r0)):
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
