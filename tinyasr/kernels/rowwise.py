"""Row-wise kernels of transformer blocks: softmax, layer norm and sigmoid, one pass per row instead of numpy's
four to six passes over the whole tensor (each pass a temporary): Conformer attention scores are
[B, heads, T, T] and its feed-forward activations [B, T, 4 d].

Each takes C-contiguous float32 arrays viewed as rows [N, C] (the op reshapes); the ops keep their numpy code for
every other case, which is also the reference these kernels are tested against (tests/test_kernels.py).
No ``fastmath`` beyond contracting multiply-adds (``CONTRACT``: exp32's polynomial in FMAs, 1.6x faster): NaN /
inf pass through as in numpy.  LayerNorm sums in float64.  exp is kernels/vector_math.exp32 (vectorised, within
1 ulp), not the C library's expf per element.

:func:`log_probs_rows` is the decoders' float64 log-softmax (CTC scores as every decoder reads them).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.types import boolean, float32, float64, int64, void

from tinyasr.kernels.epilogue import READ_1D, READ_2D, READ_3D, relu_stored
from tinyasr.kernels.vector_math import (CONTRACT, MASK_MULTIPLY, MASK_SELECT, exp32, lane_max, lane_sum,
                                         lane_total, masked_lane_sum, masked_value)


@njit(void(READ_2D, float32[:, ::1]), cache=True, fastmath=CONTRACT)
def softmax_rows(x, out):
    """out[r] = exp(x[r] - max x[r]) / sum: max, then exp, sum (eight lanes) and scale, each pass vectorised."""
    for r in range(x.shape[0]):
        row, y = x[r], out[r]
        top = lane_max(row)
        for c in range(row.shape[0]):
            y[c] = exp32(row[c] - top)
        scale = np.float32(1.0) / lane_sum(y)
        for c in range(row.shape[0]):
            y[c] *= scale


@njit(void(READ_2D, float32[:, ::1]), cache=True, fastmath=CONTRACT)
def log_softmax_rows(x, out):
    """out[r] = (x[r] - max x[r]) - log(sum exp(x[r] - max x[r])): softmax_rows's passes, the exponentials into a
    scratch row (so ``out`` may be ``x``) and the log of their sum subtracted.  For the CTC output of a streamed
    chunk (4 frames x 29 classes) numpy's five calls took ~13 us against ~4, a fifth of what the streamed graph
    spent outside its convs (Zen 4)."""
    exponentials = np.empty(x.shape[1], np.float32)
    for r in range(x.shape[0]):
        row, y = x[r], out[r]
        top = lane_max(row)
        for c in range(row.shape[0]):
            exponentials[c] = exp32(row[c] - top)
        shift = top + np.float32(np.log(lane_sum(exponentials)))
        for c in range(row.shape[0]):
            y[c] = row[c] - shift


@njit(void(READ_3D, float32[:, :, ::1]), cache=True, fastmath=CONTRACT)
def log_softmax_columns(x, out):
    """out[o, :, i] = log_softmax of x[o, :, i] over the middle axis, for x [outer, classes, inner]: a CTC conv
    stack's log-probs [B, classes, T], the classes T floats apart.  log_softmax_rows's steps with the frames in the
    vector lanes, each a pass over the classes' rows, and its sums in its order (lane_sum's eight interleaved
    partial sums over the classes, then its tail), so the two give the same bits: a stream's time-major chunks
    take the rows, an offline run's [B, C, T] these columns.  numpy's five passes over the strided classes took
    150-190 us for [1, 29, 500] (AMD EPYC Zen 1)."""
    classes, inner = x.shape[1], x.shape[2]
    body = classes - classes % 8
    top = np.empty(inner, np.float32)
    partial = np.empty((9, inner), np.float32)  # lane_sum's s0 .. s7, then its tail
    for o in range(x.shape[0]):
        first = x[o, 0]
        for i in range(inner):
            top[i] = first[i]
        for c in range(1, classes):
            row = x[o, c]
            for i in range(inner):
                top[i] = max(top[i], row[i])
        partial[:] = 0.0
        for c in range(classes):
            row, total = x[o, c], partial[c % 8 if c < body else 8]
            for i in range(inner):
                total[i] += exp32(row[i] - top[i])
        for i in range(inner):
            summed = lane_total(partial[0, i], partial[1, i], partial[2, i], partial[3, i], partial[4, i],
                                partial[5, i], partial[6, i], partial[7, i], partial[8, i])
            top[i] += np.float32(np.log(summed))
        for c in range(classes):
            row, y = x[o, c], out[o, c]
            for i in range(inner):
                y[i] = row[i] - top[i]


@njit([void(float32[:, :], boolean, float64[:, ::1], int64[::1]),
       void(float64[:, :], boolean, float64[:, ::1], int64[::1])], cache=True, error_model="numpy")
def log_probs_rows(x, take_log, out, best):
    """out[r] = log_softmax(log(x[r]) if take_log else x[r]) in float64, best[r] = its first greatest class:
    numpy's shift by the row's maximum and log-sum-exp, a row with a NaN all NaN (best 0, as np.argmax).  The
    decoders' to_log_probs and a stream's partial result both read their frames through it, so the two agree
    to the bit; numpy's eight calls for the few frames of a streamed chunk took ~30 us there, with their code
    out of the caches after the graph (AMD EPYC Zen 1)."""
    for r in range(x.shape[0]):
        y = out[r]
        top = -np.inf
        broken = False
        for c in range(x.shape[1]):
            v = np.float64(x[r, c])
            if take_log:
                v = np.log(v)
            y[c] = v
            if v > top:
                top = v
            elif v != v:
                broken = True
        if broken:
            y[:] = np.nan
            best[r] = 0
            continue
        total = 0.0
        for c in range(x.shape[1]):
            total += np.exp(y[c] - top)
        shift = np.log(total)
        first = 0
        for c in range(x.shape[1]):
            y[c] = (y[c] - top) - shift
            if y[c] > y[first]:
                first = c
        best[r] = first


@njit(inline="always")
def _layer_norm_row(row, y, scale, bias, has_bias, epsilon):
    """y = (row - mean) / sqrt(var + epsilon) * scale + bias (biased variance, as ONNX), sums in float64."""
    width = row.shape[0]
    body = width - width % 4
    t0 = t1 = t2 = t3 = 0.0  # four float64 lanes: LLVM keeps them in one vector register
    for c in range(0, body, 4):
        t0 += row[c]
        t1 += row[c + 1]
        t2 += row[c + 2]
        t3 += row[c + 3]
    for c in range(body, width):
        t0 += row[c]
    mean = ((t0 + t1) + (t2 + t3)) / width
    t0 = t1 = t2 = t3 = 0.0
    for c in range(0, body, 4):
        d0, d1, d2, d3 = row[c] - mean, row[c + 1] - mean, row[c + 2] - mean, row[c + 3] - mean
        t0 += d0 * d0
        t1 += d1 * d1
        t2 += d2 * d2
        t3 += d3 * d3
    for c in range(body, width):
        d = row[c] - mean
        t0 += d * d
    inv = np.float32(1.0 / np.sqrt(((t0 + t1) + (t2 + t3)) / width + epsilon))
    m = np.float32(mean)
    for c in range(width):
        v = (row[c] - m) * inv * scale[c]
        y[c] = v + bias[c] if has_bias else v


@njit(void(READ_2D, READ_1D, READ_1D, float32, float32[:, ::1]), cache=True, error_model="numpy")
def layer_norm_rows(x, scale, bias, epsilon, out):
    """out[r] = (x[r] - mean) / sqrt(var + epsilon) * scale + bias for each row; bias of size 0: none."""
    has_bias = bias.shape[0] > 0
    for r in range(x.shape[0]):
        _layer_norm_row(x[r], out[r], scale, bias, has_bias, epsilon)


@njit(void(float32[:, ::1], READ_1D, READ_1D, float32), cache=True, error_model="numpy")
def layer_norm_rows_in_place(y, scale, bias, epsilon):
    """layer_norm_rows with out = x (a donated input): given two views of one buffer, LLVM's run-time overlap
    check sends the last loop to its scalar version (34 against 25 us for 250 x 88 on Zen 3); one array avoids it."""
    has_bias = bias.shape[0] > 0
    for r in range(y.shape[0]):
        _layer_norm_row(y[r], y[r], scale, bias, has_bias, epsilon)


# error_model numpy: no ZeroDivisionError branch, so the loop vectorises
@njit(void(READ_1D, float32[::1]), cache=True, error_model="numpy", fastmath=CONTRACT)
def sigmoid_flat(x, out):
    one = np.float32(1.0)
    for i in range(x.shape[0]):
        out[i] = one / (one + exp32(-x[i]))


@njit(void(READ_1D, float32[::1]), cache=True, error_model="numpy", fastmath=CONTRACT)
def swish_flat(x, out):
    """out = x * sigmoid(x) (Swish / SiLU), rounded as the unfused Sigmoid then Mul."""
    one = np.float32(1.0)
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = v * (one / (one + exp32(-v)))


# In-place twins of the two above: when an op writes over its input (a donated buffer), x and out are one
# array, LLVM's run-time overlap check fails and it runs the scalar loop: 7x slower (Conformer FFN, 88k floats).


@njit(void(float32[::1]), cache=True, error_model="numpy", fastmath=CONTRACT)
def sigmoid_in_place(y):
    one = np.float32(1.0)
    for i in range(y.shape[0]):
        y[i] = one / (one + exp32(-y[i]))


@njit(void(float32[::1]), cache=True, error_model="numpy", fastmath=CONTRACT)
def swish_in_place(y):
    one = np.float32(1.0)
    for i in range(y.shape[0]):
        v = y[i]
        y[i] = v * (one / (one + exp32(-v)))


# activations the Linear op applies (converters/passes.fuse_matmul_epilogues: the attribute's names)
LINEAR_ACTIVATIONS = {"": 0, "Relu": 1, "Swish": 2}


@njit(void(float32[:, ::1], READ_1D, int64, READ_2D), cache=True, error_model="numpy", fastmath=CONTRACT)
def bias_activation_rows(y, bias, act, residual):
    """y[r] = act(y[r] + bias) + residual[r] per row, in place (``act`` a LINEAR_ACTIVATIONS code; ``residual`` of
    y's shape, or 0 x 0 for none): a transformer linear layer's bias, activation and residual connection in the
    pass after its product, rounded as the unfused Add, Relu or Sigmoid and Mul, and Add."""
    one = np.float32(1.0)
    add_residual = residual.size > 0
    for r in range(y.shape[0]):
        row = y[r]
        for c in range(row.shape[0]):
            row[c] = row[c] + bias[c]
        if act == 1:
            for c in range(row.shape[0]):
                row[c] = relu_stored(row[c])
        elif act == 2:
            for c in range(row.shape[0]):
                v = row[c]
                row[c] = v * (one / (one + exp32(-v)))
        if add_residual:
            z = residual[r]
            for c in range(row.shape[0]):
                row[c] = row[c] + z[c]


@njit(void(READ_3D, READ_2D, int64, READ_2D, READ_2D, int64, int64, float32[:, :, ::1]), cache=True,
      error_model="numpy", fastmath=CONTRACT)
def squeeze_excite(x, mask, select, squeeze, excite, hidden_act, act, out):
    """NeMo's SqueezeExcite over a whole utterance, for x [B, C, T] and mask [B, T] (1 on its valid frames, 0 on
    the padding):  masked = where(mask != 0, x, 0) with ``select``, else x * mask;  mean = the masked rows' sums
    over the sum of the mask;  gate = sigmoid(hidden_act(mean @ squeeze) @ excite), squeeze [C, H], excite [H, C];
    out = act(masked * gate), ``hidden_act`` and ``act`` LINEAR_ACTIVATIONS codes ("" or Relu for act).

    Two passes over x where the ~15 ONNX nodes it replaces took four, and one call where they took ~15
    (converters/passes.fuse_squeeze_excite): the masked rows' sums, read only, then the scale, masking again as it
    writes.  Storing the masked rows in the first pass and scaling them in place took a write and a read more:
    838 against ~400 us for [1, 256, 3000], whose 3 MB come from L3 (AMD EPYC Zen 1).  The sums over time in eight
    float32 lanes in lane_sum's order (one running sum is a chain of adds LLVM may not reorder, 4-5x slower), the
    two small products in channel order."""
    one = np.float32(1.0)
    mode = MASK_SELECT if select else MASK_MULTIPLY
    batch, channels, frames = x.shape
    hidden = squeeze.shape[1]
    mean = np.empty(channels, np.float32)
    h = np.empty(hidden, np.float32)
    gate = np.empty(channels, np.float32)
    for b in range(batch):
        m = mask[b]
        count = np.float32(0.0)
        for t in range(frames):
            count += m[t]
        for c in range(channels):
            mean[c] = masked_lane_sum(x[b, c], m, mode) / count
        h[:] = 0.0
        for c in range(channels):
            mc = mean[c]
            for j in range(hidden):
                h[j] += mc * squeeze[c, j]
        if hidden_act == 1:
            for j in range(hidden):
                h[j] = max(h[j], np.float32(0.0))
        elif hidden_act == 2:
            for j in range(hidden):
                h[j] = h[j] * (one / (one + exp32(-h[j])))
        gate[:] = 0.0
        for j in range(hidden):
            hj = h[j]
            for c in range(channels):
                gate[c] += hj * excite[j, c]
        for c in range(channels):
            g = one / (one + exp32(-gate[c]))
            row, y = x[b, c], out[b, c]
            if act == 1:
                for t in range(frames):
                    y[t] = relu_stored(masked_value(row[t], m[t], mode) * g)
            else:
                for t in range(frames):
                    y[t] = masked_value(row[t], m[t], mode) * g


@njit(void(READ_3D, float32[:, ::1]), cache=True, error_model="numpy", fastmath=CONTRACT)
def glu_rows(x, out):
    """out[r] = x[r, 0] * sigmoid(x[r, 1]) for x [R, 2, N] (a GLU's value and gate halves), one pass, the gate's
    sigmoid rounded as the Sigmoid op's."""
    one = np.float32(1.0)
    for r in range(x.shape[0]):
        value, gate, y = x[r, 0], x[r, 1], out[r]
        for j in range(y.shape[0]):
            y[j] = value[j] * (one / (one + exp32(-gate[j])))
