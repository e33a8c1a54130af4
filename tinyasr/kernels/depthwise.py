"""Depthwise convolution eight channels at a time, in vector registers across channels (1-D and 2-D).

``y[b, c, h, w] = sum over taps (i, j) in order of weight[c, i, j] * x[b, c, h*sh + i*dh - top, w*sw + j*dw - left]``,
taps outside x counting as zero: FastConformer's ``dw_striding`` subsampling (2-D, stride 2) and the time
convolutions of separable-conv and Conformer blocks (1-D, as one row: H = 1).

Each block of LANES channels is transposed into a zero-bordered channels-last buffer (8 x 8 register transposes,
_compile.transpose_8x8), so that every tap of every output position is one vector multiply-add whatever the
strides and dilations, reading whole aligned vectors (_compile.lanes_fma); RUN output positions are summed
together in registers, each its own chain of multiply-adds, and the outputs go back to planes the same way
(a 1-D row's runs transposed from the registers straight into the planes).
Measured on AMD EPYC Zen 3 (AVX2), 1 thread:

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

import numpy as np
from numba import carray, njit
from numba.types import Array, float32, int64, void

from tinyasr.kernels._compile import element_pointer, lanes_fma, serial_and_parallel, stack_buffer, transpose_8x8
from tinyasr.kernels.epilogue import READ_3D, kept_per_array

LANES = 8  # channels per vector (one AVX2 register, two NEON ones)
RUN = 8  # output positions summed together, each in its own register
RUN_FLOATS = 64  # RUN * LANES, a literal for stack_buffer
HALF_RUN = 4  # a second, shorter run for what is left of a row (FastConformer's 20-wide rows: 8 + 8 + 4)
READ_4D = Array(float32, 4, "C", readonly=True)


@njit(inline="always", fastmath={"contract"})
def _run_taps(xt, wt, acc, base, kh, kw, dilation_h, dilation_w, pitch, stride_w, count):
    """acc[k] (LANES channels) = sum over the taps (i, j), in order, of wt[tap] * xt[base + k * stride_w + the tap's
    offset] for the ``count`` output positions k (RUN, HALF_RUN or 1: a constant, so the loops unroll).  Every
    tap: skipping those zero in a whole block through a list of the others cost 1-D rows 30 %."""
    for k in range(count * LANES):
        acc[k] = 0.0
    for i in range(kh):
        j = 0
        while j + 2 <= kw:  # two taps per pass: at stride and dilation 1, each x vector is loaded once for both
            position = base + i * dilation_h * pitch + j * dilation_w
            for k in range(count):
                lanes_fma(element_pointer(acc, k * LANES), element_pointer(wt, (i * kw + j) * LANES),
                          element_pointer(xt, (position + k * stride_w) * LANES), LANES)
                lanes_fma(element_pointer(acc, k * LANES), element_pointer(wt, (i * kw + j + 1) * LANES),
                          element_pointer(xt, (position + dilation_w + k * stride_w) * LANES), LANES)
            j += 2
        if j < kw:
            position = base + i * dilation_h * pitch + j * dilation_w
            for k in range(count):
                lanes_fma(element_pointer(acc, k * LANES), element_pointer(wt, (i * kw + j) * LANES),
                          element_pointer(xt, (position + k * stride_w) * LANES), LANES)


@njit(inline="always")
def _zero_border(padded, pitch, row_lo, row_hi, column_lo, column_hi):
    """Zero a padded channels-last block [rows * pitch, LANES] outside rows [row_lo, row_hi) and columns
    [column_lo, column_hi): the padding."""
    for r in range(padded.shape[0] // pitch):
        if r < row_lo or r >= row_hi:
            padded[r * pitch:(r + 1) * pitch, :] = 0.0
        else:
            padded[r * pitch:r * pitch + column_lo, :] = 0.0
            padded[r * pitch + column_hi:(r + 1) * pitch, :] = 0.0


@njit(inline="always")
def _store_run(acc, yt, position, count):
    stored = carray(element_pointer(yt, position * LANES), (count * LANES,))
    for k in range(count * LANES):
        stored[k] = acc[k]


@njit(inline="always", fastmath={"contract"})
def _row_runs(xt, wt, acc, yt, planes, offset, direct, h, base, across, kh, kw, dilation_h, dilation_w, pitch,
              stride_w):
    """Output row h of a window (its ``across`` positions, from input position ``base`` on): RUN positions at a
    time, then HALF_RUN, then one by one, into yt; with ``direct``, each run of RUN is transposed in registers
    straight into the output planes (``planes`` [LANES, positions of a plane], the window's first at ``offset``)."""
    w = 0
    while w + RUN <= across:
        _run_taps(xt, wt, acc, base + w * stride_w, kh, kw, dilation_h, dilation_w, pitch, stride_w, RUN)
        if direct:
            transpose_8x8(carray(element_pointer(acc, 0), (RUN, LANES)), 0, 0, planes, 0, offset + h * across + w)
        else:
            _store_run(acc, yt, h * across + w, RUN)
        w += RUN
    if w + HALF_RUN <= across:
        _run_taps(xt, wt, acc, base + w * stride_w, kh, kw, dilation_h, dilation_w, pitch, stride_w, HALF_RUN)
        _store_run(acc, yt, h * across + w, HALF_RUN)
        w += HALF_RUN
    for ww in range(w, across):
        _run_taps(xt, wt, acc, base + ww * stride_w, kh, kw, dilation_h, dilation_w, pitch, stride_w, 1)
        _store_run(acc, yt, h * across + ww, 1)


@kept_per_array
def blocked_weight(weight: np.ndarray) -> np.ndarray:
    """A depthwise weight as a model stores it, [C, 1, K] (1-D) or [C, 1, kh, kw] (2-D), as the kernel reads it:
    [C / LANES blocks, kh, kw, LANES] (kh = 1, kw = K for 1-D), a block's taps one vector each, the last block's
    missing channels zero.  Taken in the stored layout, not a reshaped view of it, so that it is made once per
    read-only weight (kept_per_array): gathered per work item, taps times LANES scalar reads with a division each,
    it cost a 1-D 256-channel conv 10-25 us of its 110-270 (K 33-87, T 500, Zen 4); made with numpy per call,
    7-16 us."""
    channels, (kh, kw) = weight.shape[0], (weight.shape[2:] if weight.ndim == 4 else (1, weight.shape[2]))
    blocks = -(-channels // LANES)
    padded = np.zeros((blocks * LANES, kh, kw), np.float32)
    padded[:channels] = weight.reshape(channels, kh, kw)
    return np.ascontiguousarray(padded.reshape(blocks, LANES, kh, kw).transpose(0, 2, 3, 1))


@njit(fastmath={"contract"}, cache=True)
def _window(x, weight, out, b, g, h0, h1, w0, w1, stride_h, stride_w, dilation_h, dilation_w, top, left):
    """One work item: out[b, g:g + LANES, h0:h1, w0:w1] (whole rows, or a span of the only row).  A function of its
    own, not inlined into the parallel loop: there its address arithmetic spilled around every multiply-add
    (read with inspect_asm; the parallel build ran 1.35x slower on one thread)."""
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    h_out, w_out = out.shape[2], out.shape[3]
    kh, kw = weight.shape[1], weight.shape[2]  # weight: blocked_weight's
    rows = (h1 - h0 - 1) * stride_h + (kh - 1) * dilation_h + 1  # the window of x the item reads
    pitch = (w1 - w0 - 1) * stride_w + (kw - 1) * dilation_w + 1
    row0, col0 = h0 * stride_h - top, w0 * stride_w - left
    r0, r1 = max(0, row0), min(height, row0 + rows)  # its rows and columns inside x
    c0, c1 = max(0, col0), min(width, col0 + pitch)
    positions, across = (h1 - h0) * (w1 - w0), w1 - w0
    # the padded input window, the outputs; the weights as [tap, LANES]
    xt = np.empty(rows * pitch * LANES, np.float32)
    yt = np.empty((positions, LANES), np.float32)
    wt = weight[g // LANES]
    lanes = min(LANES, channels - g)
    source = x[b, g:g + lanes].reshape(lanes, height * width)
    padded = xt.reshape(rows * pitch, LANES)
    _zero_border(padded, pitch, r0 - row0, r1 - row0, c0 - col0, c1 - col0)
    for r in range(r0, r1):
        first, target = r * width, (r - row0) * pitch - col0
        c = c0
        while lanes == LANES and c + 8 <= c1:
            transpose_8x8(source, 0, first + c, padded, target + c, 0)
            c += 8
        for cc in range(c, c1):
            for lane in range(lanes):
                padded[target + cc, lane] = source[lane, first + cc]
    acc = carray(stack_buffer(RUN_FLOATS), (RUN_FLOATS,))
    # whole rows, or a span of the only row: contiguous in each output plane.  A 1-D row's runs go straight into
    # the planes (C 256, T 500, K 5-87: 4-12 us less a conv, Zen 4); the 20-wide rows of FastConformer's 2-D
    # subsampling ran 6-12 % slower that way (their 4-position tails a lane at a time), so 2-D goes through yt.
    planes, offset = out[b, g:g + lanes].reshape(lanes, h_out * w_out), h0 * w_out + w0
    direct = lanes == LANES and h_out == 1
    for h in range(h1 - h0):
        # Constants where they are 1: the run's loads take fixed displacements (stride: 1.35x faster at 1-D), and
        # at dilation 1 too the two taps of a pass share their x loads (_run_taps).
        row = h * stride_h * pitch
        if stride_w == dilation_w == 1:
            _row_runs(xt, wt, acc, yt, planes, offset, direct, h, row, across, kh, kw, dilation_h, 1, pitch, 1)
        elif stride_w == 1:
            _row_runs(xt, wt, acc, yt, planes, offset, direct, h, row, across, kh, kw, dilation_h, dilation_w, pitch,
                      1)
        else:
            _row_runs(xt, wt, acc, yt, planes, offset, direct, h, row, across, kh, kw, dilation_h, dilation_w, pitch,
                      stride_w)
    # what went to yt: the row's positions after its whole runs, or every position
    p = (across // RUN) * RUN if direct else 0
    while not direct and lanes == LANES and p + 8 <= positions:
        transpose_8x8(yt, p, 0, planes, 0, offset + p)
        p += 8
    for q in range(p, positions):
        for lane in range(lanes):
            planes[lane, offset + q] = yt[q, lane]


@serial_and_parallel(void(READ_4D, READ_4D, float32[:, :, :, ::1], int64, int64, int64, int64, int64, int64, int64),
                     fastmath={"contract"})
def depthwise_blocks(loop):
    """The kernel (module docstring): x [B, C, H, W], weight [C / LANES, kh, kw, LANES] (blocked_weight's),
    out [B, C, H_out, W_out]; strides,
    dilations, the top / left padding (bottom / right follow from the output's size), and ``parts``: how many
    chunks of time (output rows, or columns for one-row 1-D input) to split the work into.  Work items are
    (chunk, batch, block of LANES channels), chunk-major, so that each thread of a parallel run takes its own span
    of time.  2-D input (FastConformer's subsampling) is split in whole output rows, the thread count; 1-D rows are
    not split (conv1d passes 1): two threads writing the halves of every row share the cache line at each split,
    and a 256 x 500 conv ran 1.07-1.38x faster on 2 threads than on 1 with time halves, 1.89-1.94x split by
    channel blocks only (Zen 3).  Every output is summed in tap order whatever the chunks: the same results at any
    thread count."""

    def kernel(x, weight, out, stride_h, stride_w, dilation_h, dilation_w, top, left, parts):
        batch, channels = x.shape[0], x.shape[1]
        h_out, w_out = out.shape[2], out.shape[3]
        blocks = (channels + LANES - 1) // LANES
        split_rows = h_out > 1
        extent = h_out if split_rows else w_out
        parts = max(1, min(parts, extent))
        chunk = (extent + parts - 1) // parts
        for item in loop(parts * batch * blocks):
            part, rest = item // (batch * blocks), item % (batch * blocks)
            lo, hi = part * chunk, min(extent, (part + 1) * chunk)
            if lo < hi:
                h0, h1, w0, w1 = (lo, hi, 0, w_out) if split_rows else (0, h_out, lo, hi)
                _window(x, weight, out, rest // blocks, (rest % blocks) * LANES, h0, h1, w0, w1, stride_h, stride_w,
                        dilation_h, dilation_w, top, left)

    return kernel
