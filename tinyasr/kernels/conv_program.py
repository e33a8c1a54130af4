"""A chain of streamed 1-D convolutions run as one compiled call per chunk.

At an 80 ms chunk a QuartzNet layer sees 4 frames.  Run node by node, each conv costs a Python step (keeping its
window, choosing a kernel) and a Numba dispatch (unboxing ~10 arguments) of 15-25 us on Zen 3, against 1-20 us of
arithmetic: per chunk the causal QuartzNet 5x5 stream cost 8x its offline compute and the digits model 9.6x
(benchmarks/results/streaming_program.md).  Here the plan is a table, one row per conv (``STEP_COLUMNS``), and
:func:`run_round` walks it inside one compiled function: it appends each conv's new input frames to the conv's
window, computes the outputs whose kernel span (and residual frame) has arrived, and drops the frames no later
output reads, as tinyasr/ops/conv_stream.py's ConvStep does for one node.

Every buffer is time-major, [frames, channels]: a chunk's frames append as contiguous rows, and both kernels
vectorise across channels, which at a few frames are the long axis:

* depthwise: LANES channels x 4 frames of partial sums in registers, the taps added in order k = 0..K-1 with
  fused multiply-adds (the offline depthwise kernels' order), each block of channels reading its taps from one
  strip (:func:`pack_strips`);
* pointwise: LANES output channels x 4 frames of partial sums, per input channel one vector of weights (from
  strips packed by :func:`pack_strips`) and its 4 frames' values broadcast; summed in channel order, so results
  match BLAS to float32 rounding, not bitwise.  A weight whose every value is a float16 (a model converted with
  ``--float16``) is kept as float16 (:func:`half_strips`) and widened in registers: the same values, half the
  bytes.  At 4 frames a chunk these convs read each weight once per 4 multiply-adds, so weights that do not fit
  the cache stream from memory every chunk: 26 layers of 512 x 512 (27 MB) took 1.44-1.49 ms a chunk in float32
  and 0.63 ms in float16 on Zen 3 (18-19 against 43 GMAC/s); QuartzNet 5x5's 7.4 MB stay in that CPU's 32 MB
  L3 (404 -> 388 us a chunk), but not in a Raspberry Pi's 1-2 MB.  Where they do not fit, each weight row is asked
  for READ_ONCE_AHEAD rows early as data read once (prefetch_once: prefetchnta / PRFM PLDL1STRM), so that the
  weights' stream waits less on memory and no longer pushes out of the caches what the chunk reads again (the
  windows, and between chunks the front end's, the gate's and the decoder's Python and numpy state).  On AMD EPYC
  Zen 1 (8 MB L3) a causal QuartzNet 5x5 took 1146-1242 -> 777-1034 us a round and 2019-2174 -> 1419-1879 us a
  chunk end to end, the decoder's scores 190-225 -> 132-186 us; asked for as data kept (prefetcht0), 1001-1077 us a
  round.  Where the weights stay in the caches from chunk to chunk (the digits model) the stream hint only makes
  them come from memory again: ConvProgram measures which way is faster for its program (tuning.fastest).

Buffers live in one typed list (``buffers``) and grow inside the call when a chunk brings more frames than they
hold; weights and biases (as [1, C] rows) in another, float16 pointwise weights (as uint16 bits) in a third, so the
call unboxes three typed lists and four small arrays.
"""

from __future__ import annotations

import functools
import platform

import numpy as np
from numba import carray, njit, types
from numba.extending import overload
from numba.types import float32

from tinyasr.kernels import tuning
from tinyasr.kernels._compile import (aligned_rows, copy_floats, element_pointer, halves_to_floats, prefetch_once,
                                      stack_buffer)
from tinyasr.kernels.epilogue import READ_2D, finish_row

DEPTHWISE, POINTWISE = 0, 1
# The step table's columns: what the conv is, where it reads and writes (indices into ``buffers``, -1: none),
# its weight and bias (indices into ``weights``, -1: none; the weight into ``halves`` when ``half``).  ``direct``: a
# pointwise conv at stride 1 with no padding or residual reads its input buffer in place, keeping no window.
STEP_COLUMNS = ("kind", "input", "residual", "output", "window", "pending", "weight", "bias", "channels_out", "span",
                "stride", "dilation", "pad_left", "pad_right", "act", "direct", "half")
(KIND, INPUT, RESIDUAL, OUTPUT, WINDOW, PENDING, WEIGHT, BIAS, CHANNELS_OUT, SPAN, STRIDE, DILATION, PAD_LEFT,
 PAD_RIGHT, ACT, DIRECT, HALF) = range(len(STEP_COLUMNS))
# Each conv's state between chunks (one row per conv): its window's first kept row, kept rows, the padded frame
# index of the first kept row, input frames no output reads still to come, outputs emitted, the pending
# residual's first row and count, whether any frame has arrived and whether its right padding has.
STATE_COLUMNS = ("origin", "filled", "start", "skip", "emitted", "pending_origin", "pending_count", "started",
                 "padded")
ORIGIN, FILLED, START, SKIP, EMITTED, PENDING_ORIGIN, PENDING_COUNT, STARTED, PADDED = range(len(STATE_COLUMNS))
# run_round's answer: OK, FLUSHING (the end of the input: call again, with no new frames, for the rest), or the
# failing step's index * 2 + one of these
NO_FRAMES, TOO_SHORT = 0, 1
OK, FLUSHING = -1, -2
# At the end of the input each conv computes at most this many outputs a round (run_round), so that a model with
# a long look-ahead does not flush it through every layer at once: QuartzNet 5x5's ~740 frames of look-ahead grew
# every buffer to twice that, and the fresh pages cost 12 of the 31 ms its end of stream took (16 s, Zen 4).
FLUSH_FRAMES = 64

# Weight rows (LANES values each: a 64-byte cache line of float32) that pointwise_frames asks for ahead of their use
# when its weights are read as a stream (run_round's ``weights_ahead``): a causal QuartzNet 5x5 at 80 ms chunks, 32 /
# 48 / 64 rows ahead took 787-956 / 783-915 / 777-1034 us a round, 128 rows 827-1041, none 1146-1242 (AMD EPYC Zen 1)
READ_ONCE_AHEAD = 64
LANES = 16  # channels per vector step: two AVX2 / one AVX-512 / four NEON registers
FRAMES = 4  # frames per pass over a weight row (the kernels and _store_sums are written out for 4)
ACC = FRAMES * LANES  # partial sums, kept in registers

BUFFER_TYPE = types.Array(float32, 2, "C")  # the item types of the typed lists ``buffers``, ``weights``, ``halves``
WEIGHT_TYPE = READ_2D
HALF_TYPE = types.Array(types.uint16, 2, "C", readonly=True)
_NO_BIAS = np.zeros((1, 0), np.float32)  # stands for a step's bias when it has none (never read)
_NO_RESIDUAL_ROW = np.zeros(0, np.float32)  # finish_row's residual where it adds none


@njit(inline="always")
def _strip_row(w_packed, row):
    """Row ``row`` of float32 strips (pack_strips) through a pointer: w_packed[row] costs Numba's negative-index code
    (4 scalar instructions and a multiply) per row, inside the kernels' loops over input channels and taps (read
    in the assembly; pointwise convs at 4-12 frames 5-10 % faster without it, AMD EPYC Zen 1)."""
    return carray(element_pointer(w_packed, row * LANES), (LANES,))


@njit(cache=True, inline="always")
def _store_sums(acc, count, y, t0, c0, lanes):
    """y[t0 + f, c0 + lane] = acc[f * LANES + lane] for f < count, lane < lanes: a block's sums as they are, through
    pointers; _finish_frames applies the epilogue to whole rows afterwards.  Applied per block of LANES channels
    (slices of y, the bias and the residual for each), the epilogue cost an NRT incref / decref call per array and
    block and LLVM left its loops scalar: ~65 ns a block whatever the taps against ~17 now (Zen 4, 4 frames), and
    pointwise convs at 4 frames 1.2-1.4x faster (benchmarks/results/streaming_program.md).  Each frame's row is
    one vector copy at a constant offset of ``acc``, so LLVM keeps the sums in registers through the whole block
    (with a loop over frames they went through the stack between the kernels' loops: a depthwise block of 16
    channels x 4 frames at K = 1 / 15 took 43 / 92 against 31 / 72 ns, AMD EPYC Zen 1)."""
    pitch = y.shape[1]
    if lanes == LANES:
        at = t0 * pitch + c0
        copy_floats(element_pointer(y, at), element_pointer(acc, 0), LANES)
        if count > 1:
            copy_floats(element_pointer(y, at + pitch), element_pointer(acc, LANES), LANES)
        if count > 2:
            copy_floats(element_pointer(y, at + 2 * pitch), element_pointer(acc, 2 * LANES), LANES)
        if count > 3:
            copy_floats(element_pointer(y, at + 3 * pitch), element_pointer(acc, 3 * LANES), LANES)
    else:
        for f in range(count):
            row = carray(element_pointer(y, (t0 + f) * pitch + c0), (LANES,))
            for lane in range(lanes):
                row[lane] = acc[f * LANES + lane]


@njit(cache=True)
def _finish_frames(y, t0, count, channels, bias, has_bias, residual, residual_first, add_residual, act, lo, hi):
    """y[t0 + f, :channels] = act((y + bias) + residual) for f < count, conv1d's epilogue order: one loop over the
    row per operation, each a few vector instructions a step, while the rows are still in L1."""
    for f in range(count):
        y_row = y[t0 + f]
        if has_bias:
            bias_row = bias[0]
            for c in range(channels):
                y_row[c] += bias_row[c]
        if add_residual:
            residual_row = residual[residual_first + t0 + f]
            for c in range(channels):
                y_row[c] += residual_row[c]
        if act != 0:
            finish_row(y_row[:channels], np.float32(0.0), False, _NO_RESIDUAL_ROW, act, lo, hi)


@njit(cache=True, inline="always", fastmath={"contract"})
def _four_taps_at_a_time(acc, x, o0, channels, w_packed, strip, taps):
    """The taps of depthwise_frames four at a time, for 4 consecutive frames at stride and dilation 1: frame f's tap
    k reads x row f + k, so 4 taps of 4 frames read 7 rows of x and 4 of weights for 16 multiply-adds, where a tap
    at a time reads 5 for 4.  Each sum still adds its taps in order.  Returns the first tap left for the caller."""
    k = 0
    while k + 4 <= taps:
        u0 = _strip_row(w_packed, strip + k)
        u1 = _strip_row(w_packed, strip + k + 1)
        u2 = _strip_row(w_packed, strip + k + 2)
        u3 = _strip_row(w_packed, strip + k + 3)
        row = o0 + k * channels
        q0 = carray(element_pointer(x, row), (LANES,))
        q1 = carray(element_pointer(x, row + channels), (LANES,))
        q2 = carray(element_pointer(x, row + 2 * channels), (LANES,))
        q3 = carray(element_pointer(x, row + 3 * channels), (LANES,))
        q4 = carray(element_pointer(x, row + 4 * channels), (LANES,))
        q5 = carray(element_pointer(x, row + 5 * channels), (LANES,))
        q6 = carray(element_pointer(x, row + 6 * channels), (LANES,))
        for lane in range(LANES):
            w0, w1, w2, w3 = u0[lane], u1[lane], u2[lane], u3[lane]
            x0, x1, x2, x3, x4, x5, x6 = q0[lane], q1[lane], q2[lane], q3[lane], q4[lane], q5[lane], q6[lane]
            acc[lane] = (((acc[lane] + w0 * x0) + w1 * x1) + w2 * x2) + w3 * x3
            acc[LANES + lane] = (((acc[LANES + lane] + w0 * x1) + w1 * x2) + w2 * x3) + w3 * x4
            acc[2 * LANES + lane] = (((acc[2 * LANES + lane] + w0 * x2) + w1 * x3) + w2 * x4) + w3 * x5
            acc[3 * LANES + lane] = (((acc[3 * LANES + lane] + w0 * x3) + w1 * x4) + w2 * x5) + w3 * x6
        k += 4
    return k


@njit(cache=True, fastmath={"contract"})
def depthwise_frames(x, first, stride, dilation, frames, w_packed, bias, has_bias, residual, residual_first,
                     add_residual, y, act, lo, hi):
    """y[t, c] = act(sum_k w[c, k] * x[first + t * stride + k * dilation, c] + bias + residual) for t < frames.

    x [rows, C] time-major, w from pack_strips; y [>= frames, C]; residual rows from ``residual_first``."""
    channels = x.shape[1]
    blocks = -(-channels // LANES)
    taps = w_packed.shape[0] // blocks
    vector_end = channels - channels % LANES
    for t0 in range(0, frames, FRAMES):
        # frames past the last repeat it (computed, not stored), so every read stays inside x's kept rows
        b0 = first + t0 * stride
        b1 = first + min(t0 + 1, frames - 1) * stride
        b2 = first + min(t0 + 2, frames - 1) * stride
        b3 = first + min(t0 + 3, frames - 1) * stride
        count = min(FRAMES, frames - t0)
        for c0 in range(0, vector_end, LANES):
            acc = carray(stack_buffer(ACC), (ACC,))
            for i in range(ACC):
                acc[i] = 0.0
            # pointers, not x[row, c0:]: Numba's negative-index code for four row indices per tap was 28 scalar
            # instructions per 8 fused multiply-adds (read in the assembly)
            o0, o1, o2, o3 = b0 * channels + c0, b1 * channels + c0, b2 * channels + c0, b3 * channels + c0
            strip = (c0 // LANES) * taps
            k = 0
            if stride == 1 and dilation == 1 and count == FRAMES:
                k = _four_taps_at_a_time(acc, x, o0, channels, w_packed, strip, taps)
            for k in range(k, taps):
                u = _strip_row(w_packed, strip + k)
                shift = k * dilation * channels
                p0 = carray(element_pointer(x, o0 + shift), (LANES,))
                p1 = carray(element_pointer(x, o1 + shift), (LANES,))
                p2 = carray(element_pointer(x, o2 + shift), (LANES,))
                p3 = carray(element_pointer(x, o3 + shift), (LANES,))
                for lane in range(LANES):  # acc[frame * LANES + lane]
                    acc[lane] += u[lane] * p0[lane]
                    acc[LANES + lane] += u[lane] * p1[lane]
                    acc[2 * LANES + lane] += u[lane] * p2[lane]
                    acc[3 * LANES + lane] += u[lane] * p3[lane]
            _store_sums(acc, count, y, t0, c0, LANES)
        for c in range(vector_end, channels):
            strip, lane = (c // LANES) * taps, c % LANES
            for f in range(count):
                base = (b0, b1, b2, b3)[f]
                total = np.float32(0.0)
                for k in range(taps):
                    total += w_packed[strip + k, lane] * x[base + k * dilation, c]
                y[t0 + f, c] = total
        _finish_frames(y, t0, count, channels, bias, has_bias, residual, residual_first, add_residual, act, lo, hi)


def pack_strips(weight: np.ndarray) -> np.ndarray:
    """weight [rows, columns] (a pointwise conv's [Cout, Cin], a depthwise conv's [C, K]) as the program's kernels
    read it: [blocks * columns, LANES], row ``block * columns + j`` holding w[block * LANES + lane, j] (rows padded
    with zeros to whole blocks of LANES), so each block of output channels reads its weights from one contiguous
    strip.  Read in the model's layout, a block's values lay 1-2 KB apart: a 512 x 512 pointwise conv streamed
    from L3 at 20 GB/s, QuartzNet-sized depthwise convs at 4 frames ran at about half the rate
    (benchmarks/results/streaming_program.md)."""
    rows, columns = weight.shape
    blocks = -(-rows // LANES)
    padded = np.zeros((blocks * LANES, columns), np.float32)
    padded[:rows] = weight
    strips = aligned_rows(blocks * columns, LANES)
    strips[...] = padded.reshape(blocks, LANES, columns).transpose(0, 2, 1).reshape(-1, LANES)
    return strips


@functools.cache
def widens_half_natively() -> bool:
    """Whether this CPU converts float16 to float32 in one instruction (ARMv8; x86 with F16C, every x86-64 CPU
    since 2012): elsewhere LLVM would call a conversion routine per value, which the JIT may not link."""
    return platform.machine().lower() in ("aarch64", "arm64") or tuning.host_has("f16c")


def half_strips(packed: np.ndarray):
    """pack_strips's strips as float16 bits (uint16) if every weight is a finite float16 value and this CPU
    widens float16 natively, else None (the program keeps them as float32)."""
    if not widens_half_natively() or not np.isfinite(packed).all():
        return None
    with np.errstate(over="ignore"):  # a value past float16's range is simply not one
        halves = packed.astype(np.float16)
    if not np.array_equal(halves.astype(np.float32), packed):
        return None
    bits = aligned_rows(packed.shape[0], LANES // 2).view(np.uint16)
    bits[...] = halves.view(np.uint16)
    return bits


def _weight_row(w_packed, row, scratch):
    """Row ``row`` of packed weights as float32: the row itself, or float16 bits widened into ``scratch``."""


@overload(_weight_row, inline="always")
def _weight_row_overload(w_packed, row, scratch):
    if w_packed.dtype == types.float32:
        return lambda w_packed, row, scratch: _strip_row(w_packed, row)
    if w_packed.dtype == types.uint16:
        def widened(w_packed, row, scratch):
            halves_to_floats(element_pointer(scratch, 0), element_pointer(w_packed, row * LANES), LANES)
            return scratch

        return widened
    return None


@njit(inline="always", fastmath={"contract"})
def _accumulate_input(acc, u, a0, a1, a2, a3):
    """acc[frame * LANES + lane] += a_frame * u[lane]: one input channel's weights u for 4 frames' values."""
    for lane in range(LANES):
        acc[lane] += a0 * u[lane]
        acc[LANES + lane] += a1 * u[lane]
        acc[2 * LANES + lane] += a2 * u[lane]
        acc[3 * LANES + lane] += a3 * u[lane]


@njit(cache=True, fastmath={"contract"})
def pointwise_frames(x, first, stride, frames, w_packed, channels_out, bias, has_bias, residual, residual_first,
                     add_residual, y, act, lo, hi, ahead):
    """y[t, r] = act(sum_c w[r, c] * x[first + t * stride, c] + bias + residual) for t < frames, r < channels_out;
    x [rows, Cin] time-major, w from pack_strips (float32) or half_strips (uint16).  LANES output channels x 4
    frames of partial sums: per input channel one vector of weights, its 4 frames' values broadcast; the weights
    are read once per 4 frames.  ``ahead`` > 0: each weight row is asked for that many rows before its use, as
    data read once (prefetch_once; run_round's ``weights_ahead``)."""
    channels_in = x.shape[1]
    scratch = carray(stack_buffer(LANES), (LANES,))
    blocks = w_packed.shape[0] // channels_in
    last_row = w_packed.shape[0] - 1
    for t0 in range(0, frames, FRAMES):
        x0 = x[first + t0 * stride]
        x1 = x[first + min(t0 + 1, frames - 1) * stride]
        x2 = x[first + min(t0 + 2, frames - 1) * stride]
        x3 = x[first + min(t0 + 3, frames - 1) * stride]
        count = min(FRAMES, frames - t0)
        for block in range(blocks):
            acc = carray(stack_buffer(ACC), (ACC,))
            for i in range(ACC):
                acc[i] = 0.0
            strip = block * channels_in
            if ahead > 0:  # two loops: LLVM kept the test inside one
                for c in range(channels_in):
                    prefetch_once(element_pointer(w_packed, min(strip + c + ahead, last_row) * LANES))
                    _accumulate_input(acc, _weight_row(w_packed, strip + c, scratch), x0[c], x1[c], x2[c], x3[c])
            else:
                for c in range(channels_in):
                    _accumulate_input(acc, _weight_row(w_packed, strip + c, scratch), x0[c], x1[c], x2[c], x3[c])
            _store_sums(acc, count, y, t0, block * LANES, min(LANES, channels_out - block * LANES))
        _finish_frames(y, t0, count, channels_out, bias, has_bias, residual, residual_first, add_residual, act, lo,
                       hi)


@njit(cache=True)
def enter_frames(buffers, index, frames):
    """buffers[index][:count] = frames.T for frames [C, count] (one batch item of an entering value): the input
    buffer's rows for this round, the buffer replaced by one twice the size when it is too short.  Compiled, as
    leaving_frames is: from Python each read of a typed list's item cost ~2.5 us, and the program's Python around
    its round (these two and np.stack) ~28 us a chunk against ~18 now (Zen 4)."""
    count = frames.shape[1]
    if buffers[index].shape[0] < count:
        buffers[index] = aligned_rows(2 * count, buffers[index].shape[1])
    buffers[index][:count] = frames.T


@njit(cache=True)
def leaving_frames(buffers, index, count):
    """A copy of buffers[index][:count]: this round's frames of a leaving value, [count, C]."""
    return buffers[index][:count].copy()


@njit(cache=True)
def _make_room(buffers, index, origin, filled, count):
    """Room for ``count`` rows after the ``filled`` rows from ``origin`` of buffers[index]; returns the new origin.
    The kept rows move to the front, or to a buffer twice the size when they would fill more than half of it."""
    rows = buffers[index]
    if origin + filled + count <= rows.shape[0]:
        return origin
    if 2 * (filled + count) > rows.shape[0]:
        bigger = aligned_rows(2 * (filled + count), rows.shape[1])
        bigger[:filled] = rows[origin:origin + filled]
        buffers[index] = bigger
    else:
        for i in range(filled):  # to lower rows, in order: never overwrites a row still to copy
            rows[i] = rows[origin + i]
    return 0


@njit(cache=True)
def _append(buffers, index, origin, filled, source, first, count):
    """Append rows ``first .. first + count`` of buffers[source] (source -1: ``count`` zero rows); returns the new
    origin."""
    origin = _make_room(buffers, index, origin, filled, count)
    rows = buffers[index]
    end = origin + filled
    if source < 0:
        rows[end:end + count] = 0.0
    else:
        rows[end:end + count] = buffers[source][first:first + count]
    return origin


@njit(cache=True)
def _keep(buffers, step, st, source, count):
    """A conv's window keeps ``count`` new frames (rows of buffers[source], or zero padding with source -1), less
    those at their front that no output reads (``skip``), as ConvState.append does."""
    dropped = min(st[SKIP], count)
    st[SKIP] -= dropped
    if count > dropped:
        st[ORIGIN] = _append(buffers, step[WINDOW], st[ORIGIN], st[FILLED], source, dropped, count - dropped)
        st[FILLED] += count - dropped


@njit(cache=True)
def _output_rows(buffers, index, frames):
    """buffers[index] with at least ``frames`` rows (its contents are this round's outputs only)."""
    if buffers[index].shape[0] < frames:
        buffers[index] = aligned_rows(2 * frames, buffers[index].shape[1])
    return buffers[index]


@njit(cache=True)
def _pointwise(step, weights, halves, x, first, stride, frames, bias, has_bias, residual, residual_first, add_residual,
               y, act, lo, hi, ahead):
    """pointwise_frames with the step's weight, from ``halves`` (float16 bits) or ``weights``."""
    if step[HALF]:
        pointwise_frames(x, first, stride, frames, halves[step[WEIGHT]], step[CHANNELS_OUT], bias, has_bias, residual,
                         residual_first, add_residual, y, act, lo, hi, ahead)
    else:
        pointwise_frames(x, first, stride, frames, weights[step[WEIGHT]], step[CHANNELS_OUT], bias, has_bias,
                         residual, residual_first, add_residual, y, act, lo, hi, ahead)


@njit(cache=True)
def run_round(steps, limits, weights, halves, buffers, counts, state, final, flush_frames, weights_ahead):
    """One chunk through every step in order (weights and biases in ``weights``, float16 pointwise weights as their
    bits in ``halves``); counts[b] holds the new rows of buffer b (the inputs' set by the
    caller, the outputs' set here).  Returns OK, or step * 2 + NO_FRAMES / TOO_SHORT for the first step that
    cannot produce its output at the end of the input.

    ``final``: the input has ended.  A conv whose input is complete (every frame of it emitted upstream, or the
    program's own input) appends its right padding; each conv then emits at most ``flush_frames`` outputs
    (FLUSH_FRAMES), and the call returns FLUSHING until every conv's output is complete: the caller calls again
    with no new input.  ``weights_ahead``: pointwise_frames's ``ahead`` (0, or READ_ONCE_AHEAD where the program's
    weights stream from memory every chunk anyway: ConvProgram measures)."""
    complete = np.ones(len(buffers), np.bool_)  # whether every frame of a buffer has been emitted (final only)
    for i in range(steps.shape[0]):
        complete[steps[i, OUTPUT]] = False
    flushing = False
    for i in range(steps.shape[0]):
        step, st = steps[i], state[i]
        counts[step[OUTPUT]] = 0
        if step[RESIDUAL] >= 0:  # residual frames may come before the first input frame
            arriving = counts[step[RESIDUAL]]
            if arriving > 0:
                st[PENDING_ORIGIN] = _append(buffers, step[PENDING], st[PENDING_ORIGIN], st[PENDING_COUNT],
                                             step[RESIDUAL], 0, arriving)
                st[PENDING_COUNT] += arriving
        input_complete = final and complete[step[INPUT]] and (step[RESIDUAL] < 0 or complete[step[RESIDUAL]])
        new = counts[step[INPUT]]
        if new > 0:
            st[STARTED] = 1
        elif st[STARTED] == 0:
            if input_complete:
                return 2 * i + NO_FRAMES
            flushing |= final
            continue
        bias = weights[step[BIAS]] if step[BIAS] >= 0 else _NO_BIAS
        has_bias = step[BIAS] >= 0
        act, lo, hi = step[ACT], limits[i, 0], limits[i, 1]
        if step[DIRECT]:
            complete[step[OUTPUT]] = input_complete
            flushing |= final and not input_complete
            if new == 0:
                continue
            y = _output_rows(buffers, step[OUTPUT], new)
            _pointwise(step, weights, halves, buffers[step[INPUT]], 0, 1, new, bias, has_bias, y, 0, False, y, act,
                       lo, hi, weights_ahead)
            st[EMITTED] += new
            counts[step[OUTPUT]] = new
            continue
        _keep(buffers, step, st, step[INPUT], new)
        if input_complete and st[PADDED] == 0:
            _keep(buffers, step, st, -1, step[PAD_RIGHT])  # the right zero padding
            st[PADDED] = 1
        span, stride = step[SPAN], step[STRIDE]
        available = st[START] + st[FILLED]
        ready = (available - span - 1) // stride + 1 if available > span else 0
        n = ready - st[EMITTED]
        if step[RESIDUAL] >= 0:
            n = min(n, st[PENDING_COUNT])
        if final:
            n = min(n, flush_frames)
            done = st[PADDED] == 1 and n == ready - st[EMITTED]  # nothing left after this round's outputs
            complete[step[OUTPUT]] = done
            flushing |= not done
        if n <= 0:
            if input_complete and st[PADDED] == 1 and st[EMITTED] == 0:
                return 2 * i + TOO_SHORT
            continue
        y = _output_rows(buffers, step[OUTPUT], n)
        window = buffers[step[WINDOW]]
        add_residual = step[RESIDUAL] >= 0
        pending = buffers[step[PENDING]] if add_residual else y
        if step[KIND] == DEPTHWISE:
            depthwise_frames(window, st[ORIGIN], stride, step[DILATION], n, weights[step[WEIGHT]], bias, has_bias,
                             pending, st[PENDING_ORIGIN], add_residual, y, act, lo, hi)
        else:
            _pointwise(step, weights, halves, window, st[ORIGIN], stride, n, bias, has_bias, pending,
                       st[PENDING_ORIGIN], add_residual, y, act, lo, hi, weights_ahead)
        counts[step[OUTPUT]] = n
        if add_residual:
            st[PENDING_ORIGIN] += n
            st[PENDING_COUNT] -= n
        st[EMITTED] += n
        # forget the frames before the next output's first
        drop = st[EMITTED] * stride - st[START]
        if drop >= st[FILLED]:
            st[SKIP] += drop - st[FILLED]
            st[ORIGIN], st[FILLED] = 0, 0
        else:
            st[ORIGIN] += drop
            st[FILLED] -= drop
        st[START] += drop
    return FLUSHING if flushing else OK


@njit(cache=True)
def run_round_through(steps, limits, weights, halves, buffers, counts, state, final, flush_frames, weights_ahead,
                      entering, frames, leaving):
    """run_round for a program with one input and one output, in one call: ``frames`` [C, n] (n may be 0) entered
    into buffers[entering] first (enter_frames), and the round's rows of buffers[leaving] returned with the code
    (leaving_frames; [0, C] when none).  From Python the three calls cost ~9 us more a round, each unboxing the
    typed list ``buffers`` (digits model), ~20 us in a causal stream whose weights have pushed the calls' code and
    data out of the caches (AMD EPYC Zen 1)."""
    counts[entering] = frames.shape[1]
    if frames.shape[1]:
        enter_frames(buffers, entering, frames)
    code = run_round(steps, limits, weights, halves, buffers, counts, state, final, flush_frames, weights_ahead)
    return code, leaving_frames(buffers, leaving, counts[leaving])
