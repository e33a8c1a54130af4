"""1-D convolution over time, ONNX ``Conv`` semantics, with a fused epilogue.

``conv1d`` computes ``y = act(conv(x) + bias + residual)`` and picks the fastest path for the
shape (measured in benchmarks/bench_kernels.py):

* depthwise (``group == Cin > 1``, ``Cout`` a multiple of ``Cin``): with Cout = Cin, more than SHORT_FRAMES
  outputs and most taps non-zero, depthwise.py's kernel (vectors across 8 or 16 channels, channels-last in
  registers); else a Numba kernel one output row at a time, its non-zero taps in time tiles in registers or
  (few taps) in the outer loop over the row (contiguous; a strided input row is first split into its stride
  phases), epilogue applied while the row is in L1; up to SHORT_FRAMES output frames at stride 1 (streaming
  chunks), ``depthwise_short_rows``: four rows' outputs in registers, every tap added to all of them;
* pointwise (K = 1, group 1, no padding; a stride subsamples first): the Numba kernels of
  pointwise.py where they beat BLAS: ``pointwise_tiles()`` (the tile shape measured fastest on this
  CPU) from POINTWISE_MIN_FRAMES frames (any Cout), ``pointwise_narrow(T)`` up to 12 frames (where it
  measured faster than BLAS on this CPU);
* everything else (other pointwise sizes, Cin=1 STFT-as-conv, grouped or dense K > 1):
  im2col then BLAS ``matmul`` per batch item and group, then the Numba epilogue.  For a
  pointwise conv im2col is a no-copy view; for a strided K=1 conv it is the subsampling.

Numerics: the depthwise kernels use ``fastmath={"contract"}`` only: fused multiply-add, but no
reassociation, so each output is summed in tap order k = 0..K-1 (all kernels alike: streamed and
offline outputs are equal), and one thread computes a whole row (or block of 8 rows): results are
bit-identical at any thread count.  (Allowing reassociation would not speed up these loops: they vectorise
over time, or over channels, not over the sum.)
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from numba import carray, njit
from numba.types import Array, float32, int64, uint16, void
from numpy.lib.stride_tricks import as_strided

from tinyasr.engine import threads
from tinyasr.errors import GraphError
from tinyasr.kernels._compile import (copy_elements, element_pointer, gather_fma, serial_and_parallel, stack_buffer,
                                      vector_fma)
from tinyasr.kernels.depthwise import blocked_weight, depthwise_blocks
from tinyasr.kernels.epilogue import (
    ACTIVATIONS,  # noqa: F401  (re-exported: the Conv op's activation names)
    NO_BIAS,
    NO_RESIDUAL,
    READ_1D,
    READ_2D,
    READ_3D,
    activate_reference,
    activation_code,
    as_float32,
    bias_act,  # noqa: F401  (re-exported)
    check_bias_residual,
    epilogue_rows,
    finish_row,
    kept_per_array,
    remembered,
    residual_argument,
)
from tinyasr.kernels.pointwise import (
    CLIP,
    NARROW_FRAMES,
    NARROW_KERNELS,
    RELU,
    frames_first,
    packed_strips,
    pointwise_narrow,
    pointwise_tiles,
    prefer_blas,
    row_parts,
)

# im2col copies at most this many floats at a time (4 MB); longer inputs are done in time chunks.
IM2COL_MAX_ELEMENTS = 1 << 20
# Below this many output frames a pointwise conv goes to BLAS: the Numba kernel computes whole 64-frame tiles.
POINTWISE_MIN_FRAMES = 24
# Up to this many output frames a stride-1 depthwise conv takes depthwise_short_rows (a literal: a stack buffer).
SHORT_FRAMES = 16
SHORT_QUAD = 4 * SHORT_FRAMES  # four rows' accumulators
# Stride-1 depthwise rows are computed DEPTHWISE_TILE frames at a time in registers (8 AVX2 / 4 AVX-512 registers),
# DEPTHWISE_ROWS rows per work item (which allocates the scratch once).  Measured on Zen 3 (AVX2), C256 T500, K 33 /
# 57 / 87, against the per-tap pass, random taps kept: 10 % 0.071 / 0.107 / 0.159 -> 0.077 / 0.092 / 0.119 ms, 25 %
# 0.123 / 0.210 / 0.307 -> 0.098 / 0.132 / 0.185 (benchmarks/results/sparse_gather.md).
DEPTHWISE_TILE = 64
DEPTHWISE_ROWS = 16
# A depthwise conv with at least this share of non-zero taps (Cout = Cin, more than SHORT_FRAMES outputs) runs
# depthwise.py's kernel, vectors across 8 (or 16) channels, every tap: 1.6-1.75x the row kernels per tap on Zen 3 (C256
# T500, K 33-87: 152-331 against 273-546 us), so it wins while more than about 0.6 of the taps are non-zero.
BLOCKED_MIN_DENSITY = 0.6


def output_length(T, K, stride=1, dilation=1, pad_left=0, pad_right=0) -> int:
    """Output frames of a 1-D conv (ONNX / torch rule); 0 when the padded input is shorter than the kernel."""
    return max(0, (T + pad_left + pad_right - dilation * (K - 1) - 1) // stride + 1)


# ---------------------------------------------------------------------------------------------
# Depthwise kernel
# ---------------------------------------------------------------------------------------------


@njit(float32[::1](READ_1D, int64), cache=True)
def deinterleave(x_row, stride):
    """The ``stride`` phases of x_row one after another: x[p], x[p + stride], ... for p = 0 .. stride-1.

    Phase p starts at p * (T // stride) + min(p, T % stride).  A strided conv then reads each phase
    contiguously (vectorised loads instead of a gather).
    """
    t_in = x_row.shape[0]
    out = np.empty(t_in, np.float32)
    i = 0
    for p in range(stride):
        for j in range(p, t_in, stride):
            out[i] = x_row[j]
            i += 1
    return out


@njit(inline="always", fastmath={"contract"})
def _depthwise_tiles(x_row, tap_offsets, tap_values, first, last, y_row, pad_left, tiles, padded):
    """y_row = the stride-1 depthwise conv of x_row, DEPTHWISE_TILE output frames at a time in registers.

    Each tile sums the row's non-zero taps (tap_offsets / tap_values[first:last], nonzero_taps) with gather_fma,
    the sparse kernels' loop (a tap is a "non-zero" whose column is its offset in the row): one x load and one
    fused multiply-add per vector, no store, where the per-tap pass over the row loads, adds and stores y per tap
    (store-bound).  x_row is first copied between zeros (the padding; ``padded``: scratch of tiles *
    DEPTHWISE_TILE + (taps - 1) * dilation floats), so every tile reads in range.  Same sum, in tap order, as the
    per-tap pass: identical results."""
    copied = min(x_row.shape[0], padded.shape[0] - pad_left)
    # Through pointers, indices from 0: a slice assignment is checked for overlap first, and ``padded[pad_left +
    # t]`` carries Numba's negative-index code, which kept the copy scalar (either cost as much as the taps).
    for t in range(pad_left):
        padded[t] = 0.0
    copy_elements(carray(element_pointer(padded, pad_left), (copied,)), x_row)
    tail = padded.shape[0] - pad_left - copied
    after = carray(element_pointer(padded, pad_left + copied), (tail,))
    for t in range(tail):
        after[t] = 0.0
    acc = carray(stack_buffer(DEPTHWISE_TILE), (DEPTHWISE_TILE,))
    frames = y_row.shape[0]
    for tile in range(tiles):
        t0 = tile * DEPTHWISE_TILE
        n = min(DEPTHWISE_TILE, frames - t0)
        # A whole tile's sums go from registers straight into y; the last, shorter one through acc (copying
        # every tile out of acc was a memcpy call per tile, as long as the taps at 10 % density).
        sums = element_pointer(y_row, t0) if n == DEPTHWISE_TILE else element_pointer(acc, 0)
        gather_fma(sums, element_pointer(padded, t0), np.int64(1), element_pointer(tap_values, 0), np.int64(1),
                   element_pointer(tap_offsets, 0), np.int64(first), np.int64(last), 1, DEPTHWISE_TILE, 1)
        if n < DEPTHWISE_TILE:
            for t in range(n):
                y_row[t0 + t] = acc[t]


NO_TAPS = (np.zeros(0, np.uint16), np.zeros(0, np.float32), np.zeros(1, np.int64))  # depthwise_rows' per-tap loop


@kept_per_array
def nonzero_taps(weight: np.ndarray, dilation: int):
    """(offsets uint16, values float32, starts int64 [rows + 1]): each row's non-zero taps of a depthwise weight
    [C, 1, K] in tap order, as offsets k * dilation into the padded row, for depthwise_rows at stride 1; NO_TAPS
    where the offsets do not fit uint16 (that kernel then runs its per-tap loop).  Made once per model weight
    (kept): listed per row on every call, they cost a pruned 256-channel conv 6-14 us (K 33-87) of its ~75-115
    (Intel Xeon, Emerald Rapids)."""
    rows, taps = weight.shape[0], weight.shape[-1]
    if (taps - 1) * dilation > 65535:
        return NO_TAPS
    matrix = weight.reshape(rows, taps)
    nonzero = matrix != 0
    starts = np.zeros(rows + 1, np.int64)
    np.cumsum(nonzero.sum(axis=1), out=starts[1:])
    offsets = (np.nonzero(nonzero)[1] * dilation).astype(np.uint16)
    return offsets, np.ascontiguousarray(matrix[nonzero], np.float32), starts


@serial_and_parallel(
    void(READ_3D, READ_2D, Array(uint16, 1, "C", readonly=True), READ_1D, Array(int64, 1, "C", readonly=True), READ_1D,
         READ_3D, float32[:, :, ::1], int64, int64, int64, int64, float32, float32),
    fastmath={"contract"},
)
def depthwise_rows(loop):
    """y[b, c] = act(sum_k w[c, k] * x[b, c // m, t*stride + k*dilation - pad_left] + bias + residual).

    x [B, Cin, T], w [Cout, K] with Cout = m * Cin, y [B, Cout, T_out]; out-of-range taps are zero padding; the
    taps (offsets, values, starts: nonzero_taps of w at this dilation, or NO_TAPS).  A stride-1 row with its taps
    listed: time tiles in registers (_depthwise_tiles).  Else taps in the outer loop, time in the inner loop,
    always contiguous (strided input is deinterleaved).
    Zero taps are skipped: a pruned depthwise conv (tinyasr_convert.sparsity, ``depthwise=True``) costs its
    non-zeros only, without a sparse encoding.
    """

    def kernel(x, w, tap_offsets, tap_values, tap_starts, bias, residual, y, stride, dilation, pad_left, act, lo, hi):
        batch, channels_in, t_in = x.shape
        channels_out, taps = w.shape
        t_out = y.shape[2]
        multiplier = channels_out // channels_in
        has_bias = bias.shape[0] > 0
        add_residual = residual.size > 0
        # Per tap: the output frames [t_lo, t_hi) it reaches and where their inputs start in the
        # deinterleaved row.  Input frame t * stride + offset is frame t + shift of phase `phase`;
        # phases p < long_phases hold one frame more than the others.
        short, long_phases = t_in // stride, t_in % stride
        tap_lo, tap_hi, tap_src = np.zeros(taps, np.int64), np.zeros(taps, np.int64), np.zeros(taps, np.int64)
        for k in range(taps):
            offset = k * dilation - pad_left
            shift = offset // stride
            phase = offset - shift * stride
            phase_len = short + (1 if phase < long_phases else 0)
            tap_lo[k], tap_hi[k] = max(0, -shift), min(t_out, phase_len - shift)
            tap_src[k] = phase * short + min(phase, long_phases) + tap_lo[k] + shift
        tiles = (t_out + DEPTHWISE_TILE - 1) // DEPTHWISE_TILE
        span = (taps - 1) * dilation
        tiled = stride == 1 and tap_starts.shape[0] == channels_out + 1  # the taps listed (nonzero_taps)
        rows = batch * channels_out
        for item in loop((rows + DEPTHWISE_ROWS - 1) // DEPTHWISE_ROWS):
            padded = np.empty(tiles * DEPTHWISE_TILE + span if tiled else 0, np.float32)
            for r in range(item * DEPTHWISE_ROWS, min(rows, (item + 1) * DEPTHWISE_ROWS)):
                b = r // channels_out
                c = r - b * channels_out
                x_row = x[b, c // multiplier]
                y_row = y[b, c]
                w_c = w[c]
                if tiled:
                    _depthwise_tiles(x_row, tap_offsets, tap_values, tap_starts[c], tap_starts[c + 1], y_row, pad_left,
                                     tiles, padded)
                else:
                    phases = x_row if stride == 1 else deinterleave(x_row, stride)
                    y_row[:] = 0.0
                    for k in range(taps):
                        if tap_hi[k] <= tap_lo[k] or w_c[k] == 0.0:
                            continue  # the tap falls entirely in the padding, or was pruned
                        # Slices read from index 0: provably >= 0, so no wraparound check blocks vectorising.
                        y_part = y_row[tap_lo[k] : tap_hi[k]]
                        x_part = phases[tap_src[k] :]
                        w_k = w_c[k]
                        for i in range(y_part.shape[0]):
                            y_part[i] += w_k * x_part[i]
                bias_c = bias[c] if has_bias else np.float32(0.0)
                finish_row(y_row, bias_c, add_residual, residual[b, c] if add_residual else y_row, act, lo, hi)

    return kernel


def _depthwise_short(outputs: int):
    """The short-input depthwise kernel computing ``outputs`` frames per row (a closure constant: the stack buffer's
    size and the vector loop's trip count)."""
    quad = 4 * outputs

    def make(loop):
        """depthwise_rows for stride 1 and T_out <= ``outputs`` (streaming chunks), x padded by the caller to
        (K - 1) * dilation + ``outputs`` frames (its zero padding included): every tap reads ``outputs`` frames.

        There the long-input loop spends its time setting up each tap's few-frame loop (C256 K75, 4 frames:
        85 us; here 10 us).  Four rows' outputs sit in a stack buffer (registers), every tap adds to all
        of them: four independent multiply-add chains hide the FMA latency.  Each output is still summed in
        tap order with fused multiply-adds, as in depthwise_rows, so streamed and offline results are identical.
        """

        def kernel(x, w, bias, residual, y, dilation, act, lo, hi):
            batch, channels_in = x.shape[0], x.shape[1]
            channels_out, taps = w.shape
            multiplier = channels_out // channels_in
            quads = (channels_out + 3) // 4
            has_bias, add_residual = bias.shape[0] > 0, residual.size > 0
            for item in loop(batch * quads):
                b = item // quads
                c0 = (item - b * quads) * 4
                # Past the last channel the last row is computed again and not stored.
                c1, c2 = min(c0 + 1, channels_out - 1), min(c0 + 2, channels_out - 1)
                c3 = min(c0 + 3, channels_out - 1)
                x0, x1 = x[b, c0 // multiplier], x[b, c1 // multiplier]
                x2, x3 = x[b, c2 // multiplier], x[b, c3 // multiplier]
                w0, w1, w2, w3 = w[c0], w[c1], w[c2], w[c3]
                acc = carray(stack_buffer(quad), (quad,))
                for t in range(quad):
                    acc[t] = 0.0
                a0, a1 = acc[0:outputs], acc[outputs : 2 * outputs]
                a2, a3 = acc[2 * outputs : 3 * outputs], acc[3 * outputs :]
                for k in range(taps):
                    start = k * dilation
                    v0, v1, v2, v3 = w0[k], w1[k], w2[k], w3[k]
                    if v0 == 0.0 and v1 == 0.0 and v2 == 0.0 and v3 == 0.0:
                        continue  # pruned in all four rows
                    if outputs == SHORT_FRAMES:
                        # Slices from index 0 (provably >= 0, so no wraparound check) and a constant trip count:
                        # LLVM's vectoriser makes this one vector multiply-add per row and tap.
                        p0, p1, p2, p3 = x0[start:], x1[start:], x2[start:], x3[start:]
                        for t in range(outputs):
                            a0[t] += v0 * p0[t]
                            a1[t] += v1 * p1[t]
                            a2[t] += v2 * p2[t]
                            a3[t] += v3 * p3[t]
                    else:  # too short for the vectoriser: one explicit vector multiply-add per row and tap
                        vector_fma(element_pointer(acc, 0), v0, element_pointer(x0, start), outputs)
                        vector_fma(element_pointer(acc, outputs), v1, element_pointer(x1, start), outputs)
                        vector_fma(element_pointer(acc, 2 * outputs), v2, element_pointer(x2, start), outputs)
                        vector_fma(element_pointer(acc, 3 * outputs), v3, element_pointer(x3, start), outputs)
                for j in range(min(4, channels_out - c0)):
                    c = c0 + j
                    y_row = y[b, c]
                    for t in range(y_row.shape[0]):
                        y_row[t] = acc[j * outputs + t]
                    bias_c = bias[c] if has_bias else np.float32(0.0)
                    finish_row(y_row, bias_c, add_residual, residual[b, c] if add_residual else y_row, act, lo, hi)

        return kernel

    make.__name__ = make.__qualname__ = f"depthwise_short_{outputs}"
    return serial_and_parallel(
        void(READ_3D, READ_2D, READ_1D, READ_3D, float32[:, :, ::1], int64, int64, float32, float32),
        fastmath={"contract"},
    )(make)


# An 80 ms chunk is 4 frames after a stride of 2 and 8 before: computing 16 outputs for 4 wasted 3/4 of the
# multiply-adds (the depthwise convs were a fifth of a causal QuartzNet 5x5's stream on Zen 3).
DEPTHWISE_SHORT = {outputs: _depthwise_short(outputs) for outputs in (4, 8, SHORT_FRAMES)}


def depthwise_short_rows(frames: int):
    """The short-input depthwise kernel for ``frames`` (<= SHORT_FRAMES) output frames: the smallest that holds
    them; the caller pads x to (K - 1) * dilation + SHORT_FRAMES frames, enough for each."""
    return DEPTHWISE_SHORT[4 if frames <= 4 else 8 if frames <= 8 else SHORT_FRAMES]


# ---------------------------------------------------------------------------------------------
# im2col + BLAS
# ---------------------------------------------------------------------------------------------


def _conv_matmul(x, weight, y, stride, dilation, pad_left, pad_right, group):
    """y = conv(x) without epilogue, as matmuls of the weight [Cout/g, Cin/g*K] with column blocks."""
    batch, channels_in, t_in = x.shape
    channels_out, cin_g, taps = weight.shape
    cout_g = channels_out // group
    t_out = y.shape[2]
    if pad_left or pad_right:
        padded = np.zeros((batch, channels_in, pad_left + t_in + pad_right), np.float32)
        padded[:, :, pad_left : pad_left + t_in] = x
        x = padded
    # columns[b, c, k, t] = x[b, c, t * stride + k * dilation]: a view; reshape below copies it unless K == stride == 1
    if taps == stride == 1:
        columns = x[:, :, None, :]  # as_strided costs ~10 us per call: too much for a streaming chunk
    else:
        item = x.itemsize
        columns = as_strided(x, (batch, channels_in, taps, t_out), x.strides[:2] + (dilation * item, stride * item))
    weight_2d = weight.reshape(channels_out, cin_g * taps)
    chunk = t_out if taps == stride == 1 else max(1, IM2COL_MAX_ELEMENTS // (cin_g * taps))
    for b in range(batch):
        for g in range(group):
            cin_slice, cout_slice = slice(g * cin_g, (g + 1) * cin_g), slice(g * cout_g, (g + 1) * cout_g)
            for t0 in range(0, t_out, chunk):
                t1 = min(t_out, t0 + chunk)
                block = columns[b, cin_slice, :, t0:t1].reshape(cin_g * taps, t1 - t0)
                np.matmul(weight_2d[cout_slice], block, out=y[b, cout_slice, t0:t1])


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def _check_geometry(x, weight, stride, dilation, pad_left, pad_right, group):
    """Validate shapes and attributes; return T_out.  Messages name the tensor or attribute at fault."""
    return _checked_geometry(x.shape, weight.shape, stride, dilation, pad_left, pad_right, group)


@remembered
def _checked_geometry(x_shape, weight_shape, stride, dilation, pad_left, pad_right, group):
    if len(x_shape) != 3:
        raise GraphError(f"conv1d: input X must be [batch, channels, time], got shape {x_shape}")
    if len(weight_shape) != 3:
        raise GraphError(
            f"conv1d: weight W must be [out_channels, in_channels/group, kernel], got shape {weight_shape}"
        )
    for name, value, least in (("strides", stride, 1), ("dilations", dilation, 1), ("group", group, 1),
                               ("pads[0]", pad_left, 0), ("pads[1]", pad_right, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise GraphError(f"conv1d: attribute {name} must be an integer >= {least}, got {value!r}")
    channels_in, (channels_out, cin_g, taps) = x_shape[1], weight_shape
    if channels_in % group or channels_out % group or cin_g * group != channels_in or taps < 1:
        raise GraphError(
            f"conv1d: weight W of shape {weight_shape} does not fit input X with {channels_in} channels and "
            f"group={group} (need W [Cout, Cin/group, K >= 1] with Cin and Cout divisible by group)"
        )
    return output_length(x_shape[2], taps, stride, dilation, pad_left, pad_right)


def _pointwise_work(shape, channels_in: int) -> int:
    """threads.py's work units of a pointwise conv with output [B, Cout, T_out] and ``channels_in`` inputs."""
    return shape[0] * shape[1] * shape[2] * channels_in // threads.POINTWISE_MACS_PER_WORK


def _pointwise_kernel(shape, channels_in: int):
    """The Numba pointwise kernel that beats BLAS matmul for an output [B, Cout, T_out], or None (measured in
    benchmarks/bench_kernels.py): pointwise_narrow up to 12 frames, pointwise_tiles from 24 frames (a 64-frame
    tile costs as much as 24 frames of BLAS; any Cout, the weight padded to whole strips), else BLAS.  Both Numba
    kernels only where they measured faster than BLAS on this CPU; the tiles always where they will run on more
    than one thread (BLAS runs at one), not where the work is too small for threads.py to grant that."""
    if shape[2] in NARROW_FRAMES:
        return pointwise_narrow(shape[2])  # None where BLAS measured faster on this CPU
    if (shape[2] >= POINTWISE_MIN_FRAMES
            and (not threads.serial_only(_pointwise_work(shape, channels_in)) or not prefer_blas(shape[2]))):
        return pointwise_tiles(shape[2])
    return None


def _pointwise_runner(kernel, stride, weight, bias, act, lo, hi, shape, channels_in: int):
    """``run(x, residual, out)``: out = act(W @ x[:, :, ::stride] + bias + residual) with a pointwise.py kernel
    (Relu / Clip fused, others after) for an output of ``shape``, ``weight`` W [Cout, Cin, 1] as the model stores
    it (its packed copy is kept per stored weight); x C-contiguous float32, holding at least the frames the output
    reads; residual as residual_argument gives it.  What depends on the shape alone (the work, the packed weight,
    the split per thread count) is worked out once: a replayed run's Python around a 256 x 256 conv, ~8 us against
    ~2 for the Numba call (AMD EPYC Zen 1)."""
    fused = act in (0, RELU, CLIP)
    work, kernel_act = _pointwise_work(shape, channels_in), act if fused else 0
    weight_2d = weight.reshape(shape[1], channels_in)
    if kernel in NARROW_KERNELS.values():
        def compute(x, residual, out):
            kernel(work, frames_first(x[:, :, : stride * (shape[2] - 1) + 1 : stride]), weight_2d, bias, residual,
                   out, kernel_act, lo, hi)
    else:  # the tile kernel reads the first T_out frames of each row of x
        strips, parts_for = packed_strips(weight, kernel.rows), {}

        def compute(x, residual, out):
            workers = 1 if threads.serial_only(work) else threads.get_num_threads()
            parts = parts_for.get(workers)
            if parts is None:
                parts = parts_for[workers] = row_parts(shape[0], shape[2], strips.shape[0] // kernel.rows,
                                                       kernel.width, workers)
            kernel(work, x if stride == 1 else np.ascontiguousarray(x[:, :, ::stride]), strips, bias, residual, out,
                   kernel_act, lo, hi, parts)
    if fused:
        return compute

    def compute_then_activate(x, residual, out):
        compute(x, residual, out)
        epilogue_rows(out.size, out, NO_BIAS, NO_RESIDUAL, act, lo, hi)

    return compute_then_activate


@kept_per_array  # counted once per model weight: ~9 us a 256 x 87 weight, on every run that is not replayed
def _mostly_nonzero(weight) -> bool:
    """True when at least BLOCKED_MIN_DENSITY of a depthwise weight's taps are non-zero: depthwise.py's kernel, 8
    channels a vector, computes every tap; the row kernels skip each row's zeros (a pruned depthwise conv)."""
    return np.count_nonzero(weight) >= BLOCKED_MIN_DENSITY * weight.size


def conv1d(x, weight, bias=None, residual=None, *, stride=1, dilation=1, pad_left=0, pad_right=0, group=1,
           activation="", activation_params=(), out=None) -> np.ndarray:
    """y = act(conv(x) + bias + residual), zero padding, ONNX Conv semantics (1-D).

    x [B, Cin, T], weight [Cout, Cin/group, K], bias [Cout] or None, residual [B, Cout, T_out] or None;
    any float dtype, converted once to C-contiguous float32.  Returns float32 [B, Cout, T_out], written into
    ``out`` when given (float32, C-contiguous, that shape).  Raises GraphError on inconsistent shapes / attributes.
    """
    x = as_float32(x, "input X")
    residual = None if residual is None else as_float32(residual, "residual")
    out, run = bound_conv1d(x, weight, bias, residual, stride=stride, dilation=dilation, pad_left=pad_left,
                            pad_right=pad_right, group=group, activation=activation,
                            activation_params=activation_params, out=out)
    run(x, residual)
    return out


def run_nothing(x, residual) -> None:
    """The run of a call with an empty output."""


def bound_conv1d(x, weight, bias=None, residual=None, *, stride=1, dilation=1, pad_left=0, pad_right=0, group=1,
                 activation="", activation_params=(), out=None):
    """conv1d's checks and choice of kernel made once: ``(out, run)``, where ``run(x, residual)`` computes conv1d
    into ``out`` for an x and residual of the shapes and dtypes given here, without checking them again.

    A model run again on input of the same shapes calls each node with the same shapes (engine/offline.py replays
    the bound calls): there the checks and choices cost ~10 us a node, as much as a sparse kernel on a 4-frame
    chunk and ~6 % of a 90 %-sparse encoder on 10 s."""
    x, weight = as_float32(x, "input X"), as_float32(weight, "weight W")
    t_out = _check_geometry(x, weight, stride, dilation, pad_left, pad_right, group)
    shape = (x.shape[0], weight.shape[0], t_out)
    act, lo, hi = activation_code(activation, activation_params)
    bias, residual = check_bias_residual(bias, residual, shape)
    if out is None:
        out = np.empty(shape, np.float32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.flags.c_contiguous
              and out.shape == shape):
        raise GraphError(f"conv1d: out must be a C-contiguous float32 array of shape {shape}")
    elif np.may_share_memory(out, x) or np.may_share_memory(out, residual):
        raise GraphError("conv1d: out must not overlap input X or the residual (both are read after out is written)")
    if out.size == 0:
        return out, run_nothing
    channels_in, taps = x.shape[1], weight.shape[2]
    finish = bool(bias.size or residual.size or act)  # an epilogue after kernels that have none
    if group == channels_in > 1 and stride == 1 and t_out <= SHORT_FRAMES:
        kernel, weight_2d = depthwise_short_rows(t_out), weight.reshape(shape[1], taps)
        frames = (taps - 1) * dilation + SHORT_FRAMES

        def run(x, residual):
            # Zero padding, and zeros after the input so every row holds SHORT_FRAMES outputs' worth of frames.
            x = as_float32(x, "input X")
            padded = np.zeros(x.shape[:2] + (frames,), np.float32)
            padded[:, :, pad_left : pad_left + x.shape[2]] = x[:, :, : frames - pad_left]
            kernel(out.size * taps, padded, weight_2d, bias, residual_argument(residual), out, dilation, act, lo, hi)
    elif group == channels_in == shape[1] > 1 and _mostly_nonzero(weight):
        # Threads split the blocks of channels, not time: two threads writing halves of every row share the cache
        # line at each row's split (a 256 x 500 conv on 2 threads: 1.07-1.38x with time halves, 1.89-1.94x by
        # channels; in the 90 % encoder its depthwise convs 4.8-5.7 -> 4.0-4.1 ms, Zen 3).
        blocked = blocked_weight(weight)  # made once per model weight
        planes = out.reshape(shape[0], shape[1], 1, t_out)

        def run(x, residual):
            x = as_float32(x, "input X")
            depthwise_blocks(out.size * taps, x.reshape(x.shape[0], channels_in, 1, x.shape[2]), blocked, planes,
                             1, stride, 1, dilation, 0, pad_left, 1)
            if finish:
                epilogue_rows(out.size, out, bias, residual_argument(residual), act, lo, hi)
    elif group == channels_in > 1:
        weight_2d = weight.reshape(shape[1], taps)
        listed = nonzero_taps(weight, dilation) if stride == 1 else NO_TAPS

        def run(x, residual):
            depthwise_rows(out.size * taps, as_float32(x, "input X"), weight_2d, *listed, bias,
                           residual_argument(residual), out, stride, dilation, pad_left, act, lo, hi)
    elif (taps == group == 1 and not (pad_left or pad_right)
          and (kernel := _pointwise_kernel(shape, channels_in)) is not None):
        pointwise = _pointwise_runner(kernel, stride, weight, bias, act, lo, hi, shape, channels_in)

        def run(x, residual):
            pointwise(as_float32(x, "input X"), residual_argument(residual), out)
    else:
        def run(x, residual):
            _conv_matmul(as_float32(x, "input X"), weight, out, stride, dilation, pad_left, pad_right, group)
            if finish:
                epilogue_rows(out.size, out, bias, residual_argument(residual), act, lo, hi)
    return out, run


class PreparedConv1d:
    """conv1d with its weight, bias, stride, dilation, group and activation checked once, for a caller that runs the
    same conv many times on a few frames: a streamed 80 ms chunk is 4 frames per layer, where conv1d's per-call
    checks and copies cost as much as its kernel.  No padding: the caller's x holds it.

    Same kernels, chosen by the same rules, as conv1d on the same input, so the results are identical.
    """

    def __init__(self, weight, bias=None, *, stride=1, dilation=1, group=1, activation="", activation_params=()):
        self.weight = as_float32(weight, "weight W")
        shape = self.weight.shape
        self.channels_in = shape[1] * group if len(shape) == 3 else 0
        self.span = dilation * (shape[2] - 1) if len(shape) == 3 else 0
        _checked_geometry((0, self.channels_in, self.span + 1), shape, stride, dilation, 0, 0, group)
        self.channels_out, self.stride, self.dilation, self.group = shape[0], stride, dilation, group
        self.options = dict(stride=stride, dilation=dilation, group=group, activation=activation,
                            activation_params=activation_params)  # conv1d's, for other shapes
        self.act, self.lo, self.hi = activation_code(activation, activation_params)
        self.bias, _ = check_bias_residual(bias, None, (1, self.channels_out, 1))
        self.depthwise = group == self.channels_in > 1
        self.depthwise_short = self.depthwise and stride == 1
        self.pointwise = shape[2] == group == 1
        self.weight_2d = self.weight.reshape(self.channels_out, -1)

    def __call__(self, x: np.ndarray, frames: int, residual: Optional[np.ndarray] = None) -> np.ndarray:
        """y [B, Cout, frames] from the first (frames - 1) * stride + span + 1 frames of x [B, Cin, T], C-contiguous
        float32 (at stride 1 a depthwise conv takes its short-input kernel when T >= span + SHORT_FRAMES: it reads
        those frames, finite values, past the input too); residual None or C-contiguous float32 [B, Cout, frames]."""
        shape = (x.shape[0], self.channels_out, frames)
        needed = (frames - 1) * self.stride + self.span + 1
        if x.shape[1] != self.channels_in or x.shape[2] < needed or (residual is not None and residual.shape != shape):
            raise GraphError(f"conv1d: input X {x.shape} / residual {getattr(residual, 'shape', None)} do not fit "
                             f"weight W {self.weight.shape} with group={self.group} for {frames} output frames")
        z = NO_RESIDUAL if residual is None else residual
        if self.depthwise_short and frames <= SHORT_FRAMES and x.shape[2] >= self.span + SHORT_FRAMES:
            out = np.empty(shape, np.float32)
            depthwise_short_rows(frames)(out.size * self.weight_2d.shape[1], x, self.weight_2d, self.bias, z, out,
                                 self.dilation, self.act, self.lo, self.hi)
        elif self.pointwise and (kernel := _pointwise_kernel(shape, self.channels_in)) is not None:
            out = np.empty(shape, np.float32)
            _pointwise_runner(kernel, self.stride, self.weight, self.bias, self.act, self.lo, self.hi, shape,
                              self.channels_in)(x, z, out)
        elif self.depthwise:  # conv1d's kernel on the frames it reads, without conv1d's per-call checks
            out = np.empty(shape, np.float32)
            listed = nonzero_taps(self.weight, self.dilation) if self.stride == 1 else NO_TAPS
            depthwise_rows(out.size * self.weight_2d.shape[1], np.ascontiguousarray(x[:, :, :needed]),
                           self.weight_2d, *listed, self.bias, z, out, self.stride, self.dilation, 0, self.act, self.lo,
                           self.hi)
        elif self.pointwise and self.stride == 1:  # BLAS as conv1d's _conv_matmul calls it, then the epilogue
            out = np.empty(shape, np.float32)
            for b in range(shape[0]):
                np.matmul(self.weight_2d, x[b, :, :frames], out=out[b])
            if self.bias.size or residual is not None or self.act:
                epilogue_rows(out.size, out, self.bias, z, self.act, self.lo, self.hi)
        else:
            out = conv1d(x[:, :, :needed], self.weight, self.bias if self.bias.size else None, residual,
                         **self.options)
        return out


def conv1d_reference(x, weight, bias=None, residual=None, *, stride=1, dilation=1, pad_left=0, pad_right=0, group=1,
                     activation="", activation_params=(), out=None) -> np.ndarray:
    """Plain numpy conv1d (same signature): zero-pad, then one strided slice and einsum per tap, in float64."""
    x, weight = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    t_out = _check_geometry(x, weight, stride, dilation, pad_left, pad_right, group)
    activation_code(activation, activation_params)
    batch, channels_out, cin_g, taps = x.shape[0], weight.shape[0], weight.shape[1], weight.shape[2]
    padded = np.pad(x, ((0, 0), (0, 0), (pad_left, pad_right))).reshape(batch, group, cin_g, -1)
    w = weight.reshape(group, channels_out // group, cin_g, taps)
    y = np.zeros((batch, group, channels_out // group, t_out))
    for k in range(taps):
        start = k * dilation
        tap = padded[..., start : start + stride * (t_out - 1) + 1 : stride] if t_out else padded[..., :0]
        y += np.einsum("goi,bgit->bgot", w[..., k], tap)
    y = y.reshape(batch, channels_out, t_out)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)[:, None]
    if residual is not None:
        y = y + np.asarray(residual, np.float64)
    y = activate_reference(y, activation, activation_params).astype(np.float32)
    if out is not None:
        out[...] = y
        return out
    return y
