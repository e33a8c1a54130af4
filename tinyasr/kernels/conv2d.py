"""2-D convolution, ONNX ``Conv`` semantics, with the fused activation: the Conformer / FastConformer subsampling.

``conv2d`` computes ``y = act(conv(x) + bias)`` for x [B, Cin, H, W] (NeMo: H = time, W = mel bins):

* depthwise (``group == Cin == Cout``, FastConformer's ``dw_striding``): depthwise.py's kernel, 8 or 16 channels
  at a time in vector registers from a channels-last copy of their planes;
* pointwise (1x1, stride 1, no padding: FastConformer's subsampling): BLAS ``matmul`` on the input as it is;
* one input channel, 3x3, stride 2 (the striding subsampling's first conv): a direct Numba kernel over the
  input's stride phases, the epilogue included;
* everything else (dense 3x3 stride 2, grouped): im2col then BLAS ``matmul``, per batch item and group, in row
  chunks of at most IM2COL_MAX_ELEMENTS floats (a 60 s input stays a few MB).  At stride 2 the columns are
  copied from the input's four stride phases on a grid one column wider than the output (the product's
  extra column is dropped as it is copied out), else gathered per output row;

then the shared Numba epilogue (bias + activation).  Both kernels read the unpadded input (taps outside it
count as zeros) and the im2col columns go to a caller's scratch buffer (the engine's pool): no array is
allocated per call.  That matters more than the arithmetic: on the shared 2-core machine (2026-12-06) the
Conformer's first subsampling conv took 10.7 ms into a fresh 5 MB output and 1.0 ms into a reused one (page
faults); the padded copy and the im2col / product temporaries cost the same again.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from numba import njit
from numba.types import Array, UniTuple, float32, int64, void

from tinyasr.engine import threads
from tinyasr.errors import GraphError
from tinyasr.kernels.conv1d import IM2COL_MAX_ELEMENTS, output_length
from tinyasr.kernels.depthwise import blocked_weight, depthwise_blocks
from tinyasr.kernels.epilogue import (
    NO_RESIDUAL,
    READ_1D,
    activate_reference,
    activation_code,
    as_float32,
    check_bias_residual,
    epilogue_rows,
    finish_row,
    remembered,
)

Pair = Tuple[int, int]
READ_4D = Array(float32, 4, "C", readonly=True)
# ``_phase_direct_3x3`` splits this many floats of input rows into phases at a time (they stay in L1)
DIRECT_ROWS_FLOATS = 1024


@remembered
def conv2d_geometry(x_shape, weight_shape, strides: Pair, dilations: Pair, pads: Tuple[int, int, int, int],
                    group: int) -> Pair:
    """Check shapes and attributes; return (H_out, W_out).  ``pads`` is ONNX's [top, left, bottom, right]."""
    if len(x_shape) != 4:
        raise GraphError(f"conv2d: input X must be [batch, channels, height, width], got shape {x_shape}")
    if len(weight_shape) != 4:
        raise GraphError(f"conv2d: weight W must be [out_channels, in_channels/group, kh, kw], got {weight_shape}")
    for name, values, least in (("strides", strides, 1), ("dilations", dilations, 1), ("pads", pads, 0),
                                ("group", (group,), 1)):
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least for v in values):
            raise GraphError(f"conv2d: attribute {name} must hold integers >= {least}, got {list(values)}")
    channels_in, (channels_out, cin_g, kh, kw) = x_shape[1], weight_shape
    if channels_in % group or channels_out % group or cin_g * group != channels_in or kh < 1 or kw < 1:
        raise GraphError(
            f"conv2d: weight W of shape {weight_shape} does not fit input X with {channels_in} channels and "
            f"group={group} (need W [Cout, Cin/group, kh, kw] with Cin and Cout divisible by group)"
        )
    h_out = output_length(x_shape[2], kh, strides[0], dilations[0], pads[0], pads[2])
    w_out = output_length(x_shape[3], kw, strides[1], dilations[1], pads[1], pads[3])
    if h_out < 1 or w_out < 1:
        raise GraphError(f"conv2d: input of shape {x_shape} is too small for kernel {kh}x{kw} "
                         f"(strides {list(strides)}, dilations {list(dilations)}, pads {list(pads)})")
    return h_out, w_out


def conv2d(x, weight, bias=None, *, strides: Sequence[int] = (1, 1), dilations: Sequence[int] = (1, 1),
           pads: Sequence[int] = (0, 0, 0, 0), group: int = 1, activation: str = "", activation_params=(),
           out=None, scratch=None) -> np.ndarray:
    """y = act(conv2d(x, weight) + bias), zero padding.  x [B, Cin, H, W], weight [Cout, Cin/group, kh, kw],
    bias [Cout] or None; returns float32 [B, Cout, H_out, W_out], into ``out`` when given (C-contiguous float32).
    ``scratch``: a float32 buffer of at least im2col_elements(...) floats for the columns (else allocated)."""
    x, weight = as_float32(x, "input X", "conv2d"), as_float32(weight, "weight W", "conv2d")
    strides, dilations, pads = tuple(strides), tuple(dilations), tuple(pads)
    h_out, w_out = conv2d_geometry(x.shape, weight.shape, strides, dilations, pads, group)
    shape = (x.shape[0], weight.shape[0], h_out, w_out)
    act, lo, hi = activation_code(activation, activation_params, "conv2d")
    flat_shape = (shape[0], shape[1], h_out * w_out)
    bias, _ = check_bias_residual(bias, None, flat_shape, "conv2d")
    if out is None:
        out = np.empty(shape, np.float32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.flags.c_contiguous
              and out.shape == shape):
        raise GraphError(f"conv2d: out must be a C-contiguous float32 array of shape {shape}")
    if out.size == 0:
        return out
    channels_out, cin_g, kh, kw = weight.shape
    if _direct(weight.shape, strides, dilations, group):
        _phase_direct_3x3(x, weight, bias, out, pads[0], pads[1], act, lo, hi)
        return out
    if group == x.shape[1] == channels_out > 1:
        depthwise_blocks(out.size * kh * kw, x, blocked_weight(weight), out, *strides, *dilations, pads[0], pads[1],
                         threads.get_num_threads())
    else:
        needed = 0 if kh == kw == 1 and strides == (1, 1) and not any(pads) else im2col_elements(
            weight.shape, out.shape[2:], strides, dilations, group)
        if scratch is None or scratch.dtype != np.float32 or scratch.size < needed or not scratch.flags.c_contiguous:
            scratch = np.empty(needed, np.float32)
        _im2col_matmul(x, weight, out, strides, dilations, pads, group, scratch.reshape(-1))
    if bias.size or act:
        epilogue_rows(out.size, out.reshape(flat_shape), bias, NO_RESIDUAL, act, lo, hi)
    return out


def im2col_elements(weight_shape, out_hw, strides=(1, 1), dilations=(1, 1), group=1) -> int:
    """Floats of scratch the dense path needs for a weight [Cout, Cin/g, kh, kw], output [H_out, W_out] and
    these strides, dilations and group (at stride 2: the columns, one channel's phases and the product)."""
    channels_out, depth = int(weight_shape[0]), int(np.prod(weight_shape[1:]))
    if _direct(weight_shape, strides, dilations, group):
        return 0
    if _by_phases(strides, dilations):
        kh, kw = int(weight_shape[2]), int(weight_shape[3])
        pitch = int(out_hw[1]) + (kw - 1) // 2
        rows = _im2col_rows(depth, (out_hw[0], pitch))
        return (depth + channels_out) * rows * pitch + 4 * _phase_plane(rows, kh, kw, pitch)
    return depth * _im2col_rows(depth, out_hw) * int(out_hw[1])


def _im2col_rows(depth: int, out_hw) -> int:
    return max(1, min(int(out_hw[0]), IM2COL_MAX_ELEMENTS // (depth * int(out_hw[1]))))


def _by_phases(strides, dilations) -> bool:
    return tuple(strides) == (2, 2) and tuple(dilations) == (1, 1)


def _direct(weight_shape, strides, dilations, group) -> bool:
    return group == 1 and tuple(weight_shape[1:]) == (1, 3, 3) and _by_phases(strides, dilations)


def _phase_plane(rows: int, kh: int, kw: int, pitch: int) -> int:
    """Floats of one stride phase for ``rows`` output rows: the rows taps reach, and the last tap's overhang."""
    return (rows + (kh - 1) // 2) * pitch + (kw - 1) // 2


@njit(UniTuple(int64[::1], 2)(int64, int64, int64, int64, int64, int64), cache=True)
def _column_ranges(width, w_out, kw, stride_w, dilation_w, left):
    """Per tap column j: the output columns [first, last) whose input column w*sw + j*dw - left is inside x."""
    first, last = np.zeros(kw, np.int64), np.zeros(kw, np.int64)
    for j in range(kw):
        offset = j * dilation_w - left
        first[j] = min(w_out, max(0, (-offset + stride_w - 1) // stride_w))
        last[j] = max(first[j], min(w_out, (width - 1 - offset) // stride_w + 1) if width - 1 - offset >= 0 else 0)
    return first, last


@njit(inline="always")
def _fill_phases(plane, top, left, h0, rows, pitch, phases):
    """Split input plane [H, W] into its four stride-2 phases, rows from phase row h0 on: phases[(pi, pj),
    r * pitch + q] = plane[2 (h0 + r) + pi - top, 2q + pj - left] for r < rows, q < pitch, where that lies inside
    the plane; every other entry is left as it is (the caller's zeros: the padding)."""
    for phase in range(4):
        _fill_phase(plane, top, left, h0, rows, pitch, phase // 2, phase % 2, 0, phases[phase])


@njit(inline="always")
def _fill_phase(plane, top, left, h0, rows, pitch, pi, pj, shift, target):
    """One stride-2 phase, its columns starting at phase column ``shift``: target[r * pitch + q] =
    plane[2 (h0 + r) + pi - top, 2 (q + shift) + pj - left] where that lies inside the plane."""
    height, width = plane.shape
    r0, r1 = max(0, (top - pi + 1) // 2 - h0), min(rows, (height - 1 + top - pi) // 2 + 1 - h0)
    q0 = max(0, (left - pj + 1) // 2 - shift)
    q1 = min(pitch, (width - 1 + left - pj) // 2 + 1 - shift)
    for r in range(r0, r1):
        # views from the first element read: indexed by loop variables alone, no negative-index select per
        # element, so the stride-2 copy vectorises (2x faster)
        inside = plane[2 * (h0 + r) + pi - top, 2 * (q0 + shift) + pj - left:]
        row = target[r * pitch + q0:]
        for q in range(q1 - q0):
            row[q] = inside[2 * q]


@njit(void(READ_4D, int64, int64, int64, int64, int64, int64, int64, int64, int64, int64, int64, int64, int64,
           float32[:, ::1]), cache=True)
def _im2col(x, b, c0, channels, kh, kw, stride_h, stride_w, dilation_h, dilation_w, top, left, h0, w_out, columns):
    """columns[(c, i, j), (h - h0) * W_out + w] = x[b, c0 + c, h*sh + i*dh - top, w*sw + j*dw - left] (zero
    outside x) for the output rows h0 .. h0 + columns.shape[1] / W_out."""
    height, width = x.shape[2], x.shape[3]
    rows = columns.shape[1] // w_out
    firsts, lasts = _column_ranges(width, w_out, kw, stride_w, dilation_w, left)
    for c in range(channels):
        for i in range(kh):
            for j in range(kw):
                dest = columns[(c * kh + i) * kw + j]
                offset = j * dilation_w - left
                first, last = firsts[j], lasts[j]
                for rr in range(rows):
                    r = (h0 + rr) * stride_h + i * dilation_h - top
                    base = rr * w_out
                    if r < 0 or r >= height:
                        for w in range(w_out):
                            dest[base + w] = 0.0
                        continue
                    source = x[b, c0 + c, r]
                    for w in range(first):
                        dest[base + w] = 0.0
                    for w in range(first, last):
                        dest[base + w] = source[offset + w * stride_w]
                    for w in range(last, w_out):
                        dest[base + w] = 0.0


@njit(void(READ_4D, int64, int64, int64, int64, int64, int64, int64, int64, int64, float32[:, ::1],
           float32[:, ::1]), cache=True)
def _phase_columns(x, b, c0, channels, kh, kw, top, left, h0, pitch, phases, columns):
    """im2col at stride 2, dilation 1, on a grid of pitch ``pitch`` = W_out + (kw - 1) / 2 (the columns past
    W_out are computed and dropped after the product): columns[(c, i, j), (h - h0) * pitch + w] = x[b, c0 + c,
    2h + i - top, 2w + j - left], zero outside x.

    Each channel's input rows are split once into their four stride phases (even / odd rows x even / odd
    columns: _fill_phases); tap (i, j) is then phase (i % 2, j % 2) from offset
    (i / 2) * pitch + j / 2 on: one contiguous copy of all the chunk's columns per tap, where the strided
    gather copied W_out values per output row (conformer_ctc_small's second conv, 88 channels, 500 x 40
    input: 4.5 -> 1.2 ms beside an 8.3 ms product)."""
    span = columns.shape[1]
    rows = span // pitch + (kh - 1) // 2
    phases[:] = 0.0  # the padding's zeros: only the inside is rewritten per channel
    for c in range(channels):
        _fill_phases(x[b, c0 + c], top, left, h0, rows, pitch, phases)
        for i in range(kh):
            for j in range(kw):
                source = phases[(i % 2) * 2 + j % 2, (i // 2) * pitch + j // 2:]
                dest = columns[(c * kh + i) * kw + j]
                for p in range(span):
                    dest[p] = source[p]


@njit(void(READ_4D, READ_4D, READ_1D, float32[:, :, :, ::1], int64, int64, int64, float32, float32), cache=True,
      fastmath={"contract"})
def _phase_direct_3x3(x, weight, bias, out, top, left, act, lo, hi):
    """Dense 3 x 3 conv at stride 2, dilation 1, of a one-channel input (the striding subsampling's first conv),
    bias and activation included.

    A chunk of output rows at a time, the input's rows for them split into six planes of the output's own row
    pitch (in L1): the four stride phases, and the two even-column phases again one column on, for the taps
    j = 2 (``_fill_phase``).  Tap (i, j) then reads one of them from row offset i / 2 on, so each output channel
    is one loop over the chunk's outputs, contiguous in ``out``: nine loads and nine multiply-adds per vector of
    outputs and one store.  im2col + BLAS spent its time writing and re-reading the 9-row columns (a
    [88, 9] x [9, 20000] product is store-bound), then took a separate epilogue pass: 2.2-2.4 ms against
    onnxruntime's 0.76 ms (88 channels, 1000 x 80 input, Zen 3); this kernel 0.64-0.72 ms.  Passes over an
    accumulator, three taps each, lost to im2col (2.5 ms: its loads and stores), and so did one pass per output
    row (1.8 ms: 40-output rows spend their time setting up)."""
    batch, channels_out, h_out, w_out = out.shape
    rows = max(1, min(h_out, DIRECT_ROWS_FLOATS // w_out))
    plane = (rows + 1) * w_out
    planes = np.empty((6, plane), np.float32)
    has_bias = bias.shape[0] > 0
    for b in range(batch):
        for h0 in range(0, h_out, rows):
            n = min(rows, h_out - h0)
            planes[:] = 0.0  # the padding's zeros: only the inside is written
            for k in range(6):  # (row phase, column phase, column shift) for k = 0..5
                _fill_phase(x[b, 0], top, left, h0, n + 1, w_out, (k // 3) % 2, k % 3 % 2, k % 3 // 2, planes[k])
            # tap (i, j) reads plane 3 (i % 2) + j from row offset i / 2
            even, even_odd, even_next = planes[0], planes[1], planes[2]
            odd, odd_odd, odd_next = planes[3], planes[4], planes[5]
            below, below_odd, below_next = planes[0, w_out:], planes[1, w_out:], planes[2, w_out:]
            span = n * w_out
            for co in range(channels_out):
                taps = weight[co, 0]
                t00, t01, t02 = taps[0, 0], taps[0, 1], taps[0, 2]
                t10, t11, t12 = taps[1, 0], taps[1, 1], taps[1, 2]
                t20, t21, t22 = taps[2, 0], taps[2, 1], taps[2, 2]
                bias_co = bias[co] if has_bias else np.float32(0.0)
                target = out[b, co].reshape(-1)[h0 * w_out:h0 * w_out + span]
                for p in range(span):
                    target[p] = (bias_co + t00 * even[p] + t01 * even_odd[p] + t02 * even_next[p]
                                 + t10 * odd[p] + t11 * odd_odd[p] + t12 * odd_next[p]
                                 + t20 * below[p] + t21 * below_odd[p] + t22 * below_next[p])
                finish_row(target, np.float32(0.0), False, target, act, lo, hi)


def _im2col_matmul(x, weight, out, strides, dilations, pads, group, scratch):
    """out[b, group rows] = W_g [Cout/g, Cin/g*kh*kw] @ columns, in chunks of output rows, the product written
    into ``out`` by BLAS."""
    batch, channels_out = out.shape[:2]
    h_out, w_out = out.shape[2:]
    _, cin_g, kh, kw = weight.shape
    cout_g = channels_out // group
    weight_2d = weight.reshape(channels_out, cin_g * kh * kw)
    depth = cin_g * kh * kw
    rows = _im2col_rows(depth, (h_out, w_out))
    flat = out.reshape(batch, channels_out, h_out * w_out)
    if kh == kw == 1 and strides == (1, 1) and not any(pads) and x.flags.c_contiguous:  # 1x1: x is the columns
        columns = x.reshape(batch, group, cin_g, h_out * w_out)
        for b in range(batch):
            for g in range(group):
                np.matmul(weight_2d[g * cout_g:(g + 1) * cout_g], columns[b, g],
                          out=flat[b, g * cout_g:(g + 1) * cout_g])
        return
    if _by_phases(strides, dilations):
        _phase_matmul(x, weight_2d, out, kh, kw, pads, group, scratch)
        return
    for b in range(batch):
        for g in range(group):
            for h0 in range(0, h_out, rows):
                h1 = min(h_out, h0 + rows)
                columns = scratch[: depth * (h1 - h0) * w_out].reshape(depth, (h1 - h0) * w_out)
                _im2col(x, b, g * cin_g, cin_g, kh, kw, *strides, *dilations, pads[0], pads[1], h0, w_out, columns)
                np.matmul(weight_2d[g * cout_g:(g + 1) * cout_g], columns,
                          out=flat[b, g * cout_g:(g + 1) * cout_g, h0 * w_out:h1 * w_out])


def _phase_matmul(x, weight_2d, out, kh, kw, pads, group, scratch):
    """``_im2col_matmul`` at stride 2, dilation 1: columns from ``_phase_columns`` on a grid of pitch
    W_out + (kw - 1) / 2, the product into scratch, its first W_out columns of each row copied to ``out``."""
    batch, channels_out, h_out, w_out = out.shape
    cin_g, cout_g = x.shape[1] // group, channels_out // group
    depth = weight_2d.shape[1]
    pitch = w_out + (kw - 1) // 2
    rows = _im2col_rows(depth, (h_out, pitch))
    plane = _phase_plane(rows, kh, kw, pitch)
    phases = scratch[:4 * plane].reshape(4, plane)
    for b in range(batch):
        for g in range(group):
            for h0 in range(0, h_out, rows):
                h1 = min(h_out, h0 + rows)
                span = (h1 - h0) * pitch
                start = 4 * plane
                columns = scratch[start:start + depth * span].reshape(depth, span)
                start += depth * rows * pitch
                product = scratch[start:start + cout_g * span].reshape(cout_g, h1 - h0, pitch)
                _phase_columns(x, b, g * cin_g, cin_g, kh, kw, pads[0], pads[1], h0, pitch, phases, columns)
                np.matmul(weight_2d[g * cout_g:(g + 1) * cout_g], columns, out=product.reshape(cout_g, span))
                out[b, g * cout_g:(g + 1) * cout_g, h0:h1] = product[:, :, :w_out]


def conv2d_reference(x, weight, bias=None, *, strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0), group=1,
                     activation="", activation_params=()) -> np.ndarray:
    """Plain numpy conv2d in float64: zero-pad, then one strided slice and einsum per tap."""
    x, weight = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    h_out, w_out = conv2d_geometry(x.shape, weight.shape, tuple(strides), tuple(dilations), tuple(pads), group)
    top, left, bottom, right = pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    batch, channels_out, cin_g, kh, kw = x.shape[0], *weight.shape
    padded = padded.reshape(batch, group, cin_g, *padded.shape[2:])
    w = weight.reshape(group, channels_out // group, cin_g, kh, kw)
    y = np.zeros((batch, group, channels_out // group, h_out, w_out))
    for i in range(kh):
        for j in range(kw):
            r, c = i * dilations[0], j * dilations[1]
            tap = padded[..., r:r + strides[0] * (h_out - 1) + 1:strides[0], c:c + strides[1] * (w_out - 1) + 1:strides[1]]
            y += np.einsum("goi,bgihw->bgohw", w[..., i, j], tap)
    y = y.reshape(batch, channels_out, h_out, w_out)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)[:, None, None]
    return activate_reference(y, activation, activation_params).astype(np.float32)
