"""2-D convolution, ONNX ``Conv`` semantics, with the fused activation: the Conformer / FastConformer subsampling.

``conv2d`` computes ``y = act(conv(x) + bias)`` for x [B, Cin, H, W] (NeMo: H = time, W = mel bins):

* depthwise (``group == Cin == Cout``, FastConformer's ``dw_striding``): a Numba kernel, one output row at a
  time with every tap added in order (numpy's per-tap passes over strided planes took 10x longer);
* everything else (dense 3x3 stride 2, pointwise 1x1, grouped): im2col then BLAS ``matmul`` per batch item and
  group, in row chunks of at most IM2COL_MAX_ELEMENTS copied floats (a 60 s input stays a few MB);

then the shared Numba epilogue (bias + activation).  The subsampling convs are a few percent of a Conformer's
time (benchmarks/bench_conformer.py).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from numba import njit
from numba.types import Array, float32, int64, void
from numpy.lib.stride_tricks import as_strided

from tinyasr.errors import GraphError
from tinyasr.kernels.conv1d import IM2COL_MAX_ELEMENTS, output_length
from tinyasr.kernels.epilogue import (
    NO_RESIDUAL,
    READ_3D,
    activate_reference,
    activation_code,
    as_float32,
    check_bias_residual,
    epilogue_rows,
    remembered,
)

Pair = Tuple[int, int]
READ_4D = Array(float32, 4, "C", readonly=True)


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


def _padded(x: np.ndarray, pads) -> np.ndarray:
    top, left, bottom, right = pads
    if not any(pads):
        return x
    padded = np.zeros(x.shape[:2] + (top + x.shape[2] + bottom, left + x.shape[3] + right), x.dtype)
    padded[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
    return padded


def _taps(x: np.ndarray, kernel: Pair, strides: Pair, dilations: Pair, out_hw: Pair) -> np.ndarray:
    """A view [B, C, kh, kw, H_out, W_out]: view[b, c, i, j, h, w] = x[b, c, h*sh + i*dh, w*sw + j*dw]."""
    s = x.strides
    return as_strided(x, x.shape[:2] + tuple(kernel) + tuple(out_hw),
                      s[:2] + (dilations[0] * s[2], dilations[1] * s[3], strides[0] * s[2], strides[1] * s[3]),
                      writeable=False)


def conv2d(x, weight, bias=None, *, strides: Sequence[int] = (1, 1), dilations: Sequence[int] = (1, 1),
           pads: Sequence[int] = (0, 0, 0, 0), group: int = 1, activation: str = "", activation_params=(),
           out=None) -> np.ndarray:
    """y = act(conv2d(x, weight) + bias), zero padding.  x [B, Cin, H, W], weight [Cout, Cin/group, kh, kw],
    bias [Cout] or None; returns float32 [B, Cout, H_out, W_out], into ``out`` when given (C-contiguous float32)."""
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
    x = _padded(x, pads)
    if group == x.shape[1] == channels_out > 1:
        _depthwise(x, weight.reshape(channels_out, kh, kw), out, *strides, *dilations)
    else:
        _im2col_matmul(x, weight, out, strides, dilations, group)
    if bias.size or act:
        epilogue_rows(out.size, out.reshape(flat_shape), bias, NO_RESIDUAL, act, lo, hi)
    return out


@njit(void(READ_4D, READ_3D, float32[:, :, :, ::1], int64, int64, int64, int64), cache=True,
      fastmath={"contract"})
def _depthwise(x, weight, out, stride_h, stride_w, dilation_h, dilation_w):
    """out[b, c, h, w] = sum over taps (i, j) in order of weight[c, i, j] * x[b, c, h*sh + i*dh, w*sw + j*dw] on
    the padded x: one output row at a time, the row stays in L1 while every tap is added."""
    batch, channels, h_out, w_out = out.shape
    kh, kw = weight.shape[1], weight.shape[2]
    for b in range(batch):
        for c in range(channels):
            for h in range(h_out):
                row = out[b, c, h]
                row[:] = 0.0
                for i in range(kh):
                    source = x[b, c, h * stride_h + i * dilation_h]
                    for j in range(kw):
                        tap = weight[c, i, j]
                        offset = j * dilation_w
                        for w in range(w_out):
                            row[w] += tap * source[offset + w * stride_w]


def _im2col_matmul(x, weight, out, strides, dilations, group):
    """out[b, group rows] = W_g [Cout/g, Cin/g*kh*kw] @ columns, in chunks of output rows."""
    batch, channels_out = out.shape[:2]
    h_out, w_out = out.shape[2:]
    _, cin_g, kh, kw = weight.shape
    cout_g = channels_out // group
    taps = _taps(x, (kh, kw), strides, dilations, (h_out, w_out))
    weight_2d = weight.reshape(channels_out, cin_g * kh * kw)
    depth = cin_g * kh * kw
    rows = max(1, min(h_out, IM2COL_MAX_ELEMENTS // (depth * w_out)))
    for b in range(batch):
        for g in range(group):
            cin, cout = slice(g * cin_g, (g + 1) * cin_g), slice(g * cout_g, (g + 1) * cout_g)
            for h0 in range(0, h_out, rows):
                h1 = min(h_out, h0 + rows)
                columns = taps[b, cin, :, :, h0:h1].reshape(depth, (h1 - h0) * w_out)
                product = weight_2d[cout] @ columns
                out[b, cout, h0:h1] = product.reshape(cout_g, h1 - h0, w_out)


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
