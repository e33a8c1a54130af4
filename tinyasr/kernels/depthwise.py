"""Depthwise convolution 8 or 16 channels at a time, in vector registers across channels (1-D and 2-D).

``y[b, c, h, w] = sum over taps (i, j) in order of weight[c, i, j] * x[b, c, h*sh + i*dh - top, w*sw + j*dw - left]``,
taps outside x counting as zero: FastConformer's ``dw_striding`` subsampling (2-D, stride 2) and the time
convolutions of separable-conv and Conformer blocks (1-D, as one row: H = 1).

Each block of ``lanes`` channels is transposed into a zero-bordered channels-last buffer (8 x 8 register
transposes, _compile.transpose_8x8), so that every tap of every output position is one vector multiply-add
whatever the strides and dilations, reading whole aligned vectors (_compile.lanes_fma); RUN output positions are
summed together in registers, each its own chain of multiply-adds, and the outputs go back to planes the same way
(a 1-D row's runs transposed from the registers straight into the planes, _compile.transpose_run).

The block width is chosen per CPU by measurement (block_lanes): 8 channels fill an AVX2 register, 16 an AVX-512
one.  Where the CPU has two 512-bit multiply-add units (Intel Xeon, Emerald Rapids), 8-channel blocks ran at
~37 GMAC/s, near the peak of 256-bit multiply-adds, and 16-channel blocks at ~62: a 256-channel conv at T = 500,
K 33 / 87, 128 / 318 us -> 106 / 203 us.  The kernels are built per width (BLOCK_KERNELS) and only the chosen
one is compiled in a normal run.
Measured on AMD EPYC Zen 3 (AVX2), 1 thread, 8 channels:

* 2-D, 64 channels, 500 x 40 input, stride 2: 0.43 ms, against 1.06-1.26 ms for a plane at a time over the four
  stride phases (the kernel before) and 3.1 ms for strided reads per tap; onnxruntime's NCHWc kernel 0.19 ms on
  input already in its blocked layout;
* 1-D, 256 channels, T = 500, K 33 / 45 / 87: 156 / 195 / 331 us, against 273 / 337 / 546 us for conv1d's
  row kernel (time tiles in registers, where unaligned time-shifted loads split across cache lines);
  with 4 positions per run instead of 8, 225 / 277 / 475 us (4 chains wait on the multiply-add latency);
* taps two at a time (2026-12-06, same CPU): the x vector at position p serves output k's tap j and output k-1's
  tap j + 1, so LLVM loads it once for both: 9 x loads per 16 multiply-adds instead of 16 (with 2 weight loads),
  1.03-1.18x over one tap at a time (K 5-87, T 125-1000; four taps at a time: no faster).

Taps are added in order with fused multiply-adds, as in conv1d's row kernels: the same results bit for bit.
Every tap is computed: a pruned depthwise conv runs faster on conv1d's row kernel, which skips each row's own
zeros (conv1d.py chooses).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import carray, literally, njit
from numba.types import Array, float32, int64, void

from tinyasr.kernels import tuning
from tinyasr.kernels._compile import (aligned_rows, element_pointer, lanes_fma, serial_and_parallel, stack_buffer,
                                     transpose_8x8, transpose_run)
from tinyasr.kernels.epilogue import kept_per_array

LANE_CHOICES = (8, 16)  # channels per vector: one AVX2 register (two NEON ones), or one AVX-512 register
RUN = 8  # output positions summed together, each in its own register
RUN_FLOATS = 128  # RUN * the widest lanes, a literal for stack_buffer
HALF_RUN = 4  # a second, shorter run for what is left of a row (FastConformer's 20-wide rows: 8 + 8 + 4)
READ_4D = Array(float32, 4, "C", readonly=True)


@njit(inline="always", fastmath={"contract"})
def _run_taps(xt, wt, acc, base, kh, kw, dilation_h, dilation_w, pitch, stride_w, count, lanes):
    """acc[k] (``lanes`` channels) = sum over the taps (i, j), in order, of wt[tap] * xt[base + k * stride_w + the
    tap's offset] for the ``count`` output positions k (RUN, HALF_RUN or 1: a constant, so the loops unroll).  Every
    tap: skipping those zero in a whole block through a list of the others cost 1-D rows 30 %.  acc is touched only
    at constant offsets once unrolled (nested loops of ``lanes``: a flat loop of count * 16 stayed a loop, and its
    variable index kept acc in memory, stored after every multiply-add), so LLVM keeps it in registers."""
    for k in range(count):
        for lane in range(lanes):
            acc[k * lanes + lane] = 0.0
    for i in range(kh):
        j = 0
        while j + 2 <= kw:  # two taps per pass: at stride and dilation 1, each x vector is loaded once for both
            position = base + i * dilation_h * pitch + j * dilation_w
            for k in range(count):
                lanes_fma(element_pointer(acc, k * lanes), element_pointer(wt, (i * kw + j) * lanes),
                          element_pointer(xt, (position + k * stride_w) * lanes), lanes)
                lanes_fma(element_pointer(acc, k * lanes), element_pointer(wt, (i * kw + j + 1) * lanes),
                          element_pointer(xt, (position + dilation_w + k * stride_w) * lanes), lanes)
            j += 2
        if j < kw:
            position = base + i * dilation_h * pitch + j * dilation_w
            for k in range(count):
                lanes_fma(element_pointer(acc, k * lanes), element_pointer(wt, (i * kw + j) * lanes),
                          element_pointer(xt, (position + k * stride_w) * lanes), lanes)


@njit(inline="always")
def _zero_border(padded, pitch, row_lo, row_hi, column_lo, column_hi):
    """Zero a padded channels-last block [rows * pitch, lanes] outside rows [row_lo, row_hi) and columns
    [column_lo, column_hi): the padding."""
    for r in range(padded.shape[0] // pitch):
        if r < row_lo or r >= row_hi:
            padded[r * pitch:(r + 1) * pitch, :] = 0.0
        else:
            padded[r * pitch:r * pitch + column_lo, :] = 0.0
            padded[r * pitch + column_hi:(r + 1) * pitch, :] = 0.0


@njit(inline="always")
def _store_run(acc, yt, position, count, lanes):
    stored = carray(element_pointer(yt, position * lanes), (count * lanes,))
    for k in range(count):  # nested, as in _run_taps: constant offsets into acc
        for lane in range(lanes):
            stored[k * lanes + lane] = acc[k * lanes + lane]


@njit(inline="always", fastmath={"contract"})
def _row_runs(xt, wt, acc, yt, planes, offset, direct, h, base, across, kh, kw, dilation_h, dilation_w, pitch,
              stride_w, lanes):
    """Output row h of a window (its ``across`` positions, from input position ``base`` on): RUN positions at a
    time, then HALF_RUN, then one by one, into yt; with ``direct``, each run of RUN is transposed in registers
    straight into the output planes (``planes`` [lanes, positions of a plane], the window's first at ``offset``)."""
    w = 0
    while w + RUN <= across:
        _run_taps(xt, wt, acc, base + w * stride_w, kh, kw, dilation_h, dilation_w, pitch, stride_w, RUN, lanes)
        if direct:
            transpose_run(element_pointer(acc, 0), lanes, planes, 0, offset + h * across + w)
        else:
            _store_run(acc, yt, h * across + w, RUN, lanes)
        w += RUN
    if w + HALF_RUN <= across:
        _run_taps(xt, wt, acc, base + w * stride_w, kh, kw, dilation_h, dilation_w, pitch, stride_w, HALF_RUN, lanes)
        _store_run(acc, yt, h * across + w, HALF_RUN, lanes)
        w += HALF_RUN
    for ww in range(w, across):
        _run_taps(xt, wt, acc, base + ww * stride_w, kh, kw, dilation_h, dilation_w, pitch, stride_w, 1, lanes)
        _store_run(acc, yt, h * across + ww, 1, lanes)


def blocked_weight(weight: np.ndarray) -> np.ndarray:
    """A depthwise weight as a model stores it, [C, 1, K] (1-D) or [C, 1, kh, kw] (2-D), as the kernel reads it
    on this CPU: [C / lanes blocks, kh, kw, lanes], ``lanes`` the block width measured fastest here (block_lanes),
    a block's taps one vector each, the last block's missing channels zero."""
    return _blocked_weight(weight, block_lanes())


@kept_per_array
def _blocked_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """blocked_weight's layout for ``lanes``.  Taken in the stored layout, not a reshaped view of it, so that it is
    made once per read-only weight (kept_per_array; ``lanes`` is fixed for the process): gathered per work item,
    taps times lanes scalar reads with a division each, it cost a 1-D 256-channel conv 10-25 us of its 110-270
    (K 33-87, T 500, Zen 4); made with numpy per call, 7-16 us."""
    channels, (kh, kw) = weight.shape[0], (weight.shape[2:] if weight.ndim == 4 else (1, weight.shape[2]))
    blocks = -(-channels // lanes)
    padded = np.zeros((blocks * lanes, kh, kw), np.float32)
    padded[:channels] = weight.reshape(channels, kh, kw)
    return np.ascontiguousarray(padded.reshape(blocks, lanes, kh, kw).transpose(0, 2, 3, 1))


@njit(fastmath={"contract"}, cache=True)
def _window(x, weight, out, b, g, h0, h1, w0, w1, stride_h, stride_w, dilation_h, dilation_w, top, left, lanes):
    """One work item: out[b, g:g + lanes, h0:h1, w0:w1] (whole rows, or a span of the only row), ``lanes`` the
    weight's block width as a literal (the vectors' width).  A function of its own, not inlined into the parallel
    loop: there its address arithmetic spilled around every multiply-add (read with inspect_asm; the parallel
    build ran 1.35x slower on one thread)."""
    literally(lanes)
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    h_out, w_out = out.shape[2], out.shape[3]
    kh, kw = weight.shape[1], weight.shape[2]  # weight: blocked_weight's
    rows = (h1 - h0 - 1) * stride_h + (kh - 1) * dilation_h + 1  # the window of x the item reads
    pitch = (w1 - w0 - 1) * stride_w + (kw - 1) * dilation_w + 1
    row0, col0 = h0 * stride_h - top, w0 * stride_w - left
    r0, r1 = max(0, row0), min(height, row0 + rows)  # its rows and columns inside x
    c0, c1 = max(0, col0), min(width, col0 + pitch)
    positions, across = (h1 - h0) * (w1 - w0), w1 - w0
    # the padded input window, channels-last [position, lanes], and the outputs (both on cache lines: at 16 lanes
    # a position is one); the weights as [tap, lanes]
    xt = aligned_rows(rows * pitch, lanes)
    yt = aligned_rows(positions, lanes)
    wt = weight[g // lanes]
    present = min(lanes, channels - g)  # channels of this block in x (the last block's may be fewer)
    source = x[b, g:g + present].reshape(present, height * width)
    _zero_border(xt, pitch, r0 - row0, r1 - row0, c0 - col0, c1 - col0)
    for r in range(r0, r1):
        first, target = r * width, (r - row0) * pitch - col0
        c = c0
        while present == lanes and c + 8 <= c1:
            for part in range(0, lanes, 8):
                transpose_8x8(source, part, first + c, xt, target + c, part)
            c += 8
        for cc in range(c, c1):
            for lane in range(present):
                xt[target + cc, lane] = source[lane, first + cc]
    acc = carray(stack_buffer(RUN_FLOATS), (RUN_FLOATS,))
    # whole rows, or a span of the only row: contiguous in each output plane.  A 1-D row's runs go straight into
    # the planes (C 256, T 500, K 5-87: 4-12 us less a conv, Zen 4); the 20-wide rows of FastConformer's 2-D
    # subsampling ran 6-12 % slower that way (their 4-position tails a lane at a time), so 2-D goes through yt.
    planes, offset = out[b, g:g + present].reshape(present, h_out * w_out), h0 * w_out + w0
    direct = present == lanes and h_out == 1
    for h in range(h1 - h0):
        # Constants where they are 1: the run's loads take fixed displacements (stride: 1.35x faster at 1-D), and
        # at dilation 1 too the two taps of a pass share their x loads (_run_taps).
        row = h * stride_h * pitch
        if stride_w == dilation_w == 1:
            _row_runs(xt, wt, acc, yt, planes, offset, direct, h, row, across, kh, kw, dilation_h, 1, pitch, 1, lanes)
        elif stride_w == 1:
            _row_runs(xt, wt, acc, yt, planes, offset, direct, h, row, across, kh, kw, dilation_h, dilation_w, pitch,
                      1, lanes)
        else:
            _row_runs(xt, wt, acc, yt, planes, offset, direct, h, row, across, kh, kw, dilation_h, dilation_w, pitch,
                      stride_w, lanes)
    # what went to yt: the row's positions after its whole runs, or every position
    p = (across // RUN) * RUN if direct else 0
    while not direct and present == lanes and p + 8 <= positions:
        for part in range(0, lanes, 8):
            transpose_8x8(yt, p, part, planes, part, offset + p)
        p += 8
    for q in range(p, positions):
        for lane in range(present):
            planes[lane, offset + q] = yt[q, lane]


def _blocks_kernel(lanes: int):
    """depthwise_blocks for blocks of ``lanes`` channels (a closure constant: one build each, compiled when used)."""

    @serial_and_parallel(void(READ_4D, READ_4D, float32[:, :, :, ::1], int64, int64, int64, int64, int64, int64,
                              int64), fastmath={"contract"})
    def depthwise_blocks(loop):
        """The kernel (module docstring): x [B, C, H, W], weight [C / lanes, kh, kw, lanes] (_blocked_weight's),
        out [B, C, H_out, W_out]; strides, dilations, the top / left padding (bottom / right follow from the
        output's size), and ``parts``: how many chunks of time (output rows, or columns for one-row 1-D input) to
        split the work into.  Work items are (chunk, batch, block of lanes channels), chunk-major, so that each
        thread of a parallel run takes its own span of time.  2-D input (FastConformer's subsampling) is split in
        whole output rows, the thread count; 1-D rows are not split (conv1d passes 1): two threads writing the
        halves of every row share the cache line at each split, and a 256 x 500 conv ran 1.07-1.38x faster on 2
        threads than on 1 with time halves, 1.89-1.94x split by channel blocks only (Zen 3).  Every output is
        summed in tap order whatever the chunks: the same results at any thread count."""

        def kernel(x, weight, out, stride_h, stride_w, dilation_h, dilation_w, top, left, parts):
            batch, channels = x.shape[0], x.shape[1]
            h_out, w_out = out.shape[2], out.shape[3]
            blocks = (channels + lanes - 1) // lanes
            split_rows = h_out > 1
            extent = h_out if split_rows else w_out
            parts = max(1, min(parts, extent))
            chunk = (extent + parts - 1) // parts
            for item in loop(parts * batch * blocks):
                part, rest = item // (batch * blocks), item % (batch * blocks)
                lo, hi = part * chunk, min(extent, (part + 1) * chunk)
                if lo < hi:
                    h0, h1, w0, w1 = (lo, hi, 0, w_out) if split_rows else (0, h_out, lo, hi)
                    _window(x, weight, out, rest // blocks, (rest % blocks) * lanes, h0, h1, w0, w1, stride_h,
                            stride_w, dilation_h, dilation_w, top, left, lanes)

        return kernel

    return depthwise_blocks


BLOCK_KERNELS = {lanes: _blocks_kernel(lanes) for lanes in LANE_CHOICES}


def depthwise_blocks(work, x, weight, out, stride_h, stride_w, dilation_h, dilation_w, top, left, parts):
    """Run the kernel for ``weight``'s block width (blocked_weight's layout) on ``work`` multiply-adds'
    worth of threads (serial_and_parallel)."""
    BLOCK_KERNELS[weight.shape[3]](work, x, weight, out, stride_h, stride_w, dilation_h, dilation_w, top, left, parts)


@functools.cache
def block_lanes() -> int:
    """The channel block width measured fastest on this CPU, on a 256-channel K 33 conv of T 256 (tuning.fastest,
    cached per CPU), among LANE_CHOICES where a vector register holds 16 floats (AVX-512), else 8 without timing:
    on AVX2 and NEON 16 lanes are two or four registers an accumulator, the eight of a run no longer fit, and
    timing would only add a build to the first run.  On an Intel Xeon (Emerald Rapids, two 512-bit FMA units) a
    256 x 500 conv of K 33-87 ran 1.5-1.6x faster on 16 lanes than on 8."""
    if not tuning.host_has("avx512f"):
        return LANE_CHOICES[0]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 256, 1, 256), dtype=np.float32)
    out = np.empty_like(x)
    weight = rng.standard_normal((256, 1, 1, 33), dtype=np.float32)

    def run(lanes):
        blocked = _blocked_weight(weight, lanes)
        return lambda: BLOCK_KERNELS[lanes].serial(x, blocked, out, 1, 1, 1, 1, 0, 16, 1)

    name = tuning.fastest("depthwise lanes", {str(lanes): run(lanes) for lanes in LANE_CHOICES},
                          *tuning.cache_of(_window))
    return int(name)
