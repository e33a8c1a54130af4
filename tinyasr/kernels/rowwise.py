"""Row-wise kernels of transformer blocks: softmax, layer norm and sigmoid, one pass per row instead of numpy's
four to six passes over the whole tensor (each pass a temporary): Conformer attention scores are
[B, heads, T, T] and its feed-forward activations [B, T, 4 d].

Each takes C-contiguous float32 arrays viewed as rows [N, C] (the op reshapes); the ops keep their numpy code for
every other case, which is also the reference these kernels are tested against (tests/test_kernels.py).
No ``fastmath``: NaN / inf pass through as in numpy.  LayerNorm sums in float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.types import float32, void

from tinyasr.kernels.epilogue import READ_1D, READ_2D


@njit(void(READ_2D, float32[:, ::1]), cache=True)
def softmax_rows(x, out):
    """out[r] = exp(x[r] - max x[r]) / sum: max, then exp and sum, then scale."""
    for r in range(x.shape[0]):
        row, y = x[r], out[r]
        top = row[0]
        for c in range(1, row.shape[0]):
            top = max(top, row[c])
        total = np.float32(0.0)
        for c in range(row.shape[0]):
            y[c] = np.exp(row[c] - top)
            total += y[c]
        scale = np.float32(1.0) / total
        for c in range(row.shape[0]):
            y[c] *= scale


@njit(void(READ_2D, READ_1D, READ_1D, float32, float32[:, ::1]), cache=True)
def layer_norm_rows(x, scale, bias, epsilon, out):
    """out[r] = (x[r] - mean) / sqrt(var + epsilon) * scale + bias (biased variance, as ONNX); bias of size 0:
    none."""
    width = x.shape[1]
    has_bias = bias.shape[0] > 0
    for r in range(x.shape[0]):
        row, y = x[r], out[r]
        total = 0.0
        for c in range(width):
            total += row[c]
        mean = total / width
        square = 0.0
        for c in range(width):
            d = row[c] - mean
            square += d * d
        inv = np.float32(1.0 / np.sqrt(square / width + epsilon))
        m = np.float32(mean)
        for c in range(width):
            v = (row[c] - m) * inv * scale[c]
            y[c] = v + bias[c] if has_bias else v


@njit(void(READ_1D, float32[::1]), cache=True)
def sigmoid_flat(x, out):
    one = np.float32(1.0)
    for i in range(x.shape[0]):
        out[i] = one / (one + np.exp(-x[i]))
