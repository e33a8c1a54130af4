"""Conv with a 4-D weight: ONNX 2-D convolution (the Conformer / FastConformer subsampling).

The ``Conv`` op (ops/conv.py) hands a node whose weight is [Cout, Cin/group, kh, kw] to :func:`conv2d_op`,
which turns ONNX attributes (strides, dilations, pads [top, left, bottom, right], auto_pad) into the
arguments of tinyasr/kernels/conv2d.py.  A fused residual input is not supported on this path.  Streaming:
the Conv rule (ops/conv_stream.py) refuses a 2-D conv (its input is not [batch, channels, time]).
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from tinyasr.errors import GraphError
from tinyasr.kernels.conv1d import output_length
from tinyasr.kernels.conv2d import conv2d, im2col_elements
from tinyasr.ops.common import dense


def _pair(attrs, name: str) -> Tuple[int, int]:
    values = list(attrs.get(name, [1, 1]))
    if len(values) != 2:
        raise GraphError(f"Conv: {name} {values} must have 2 entries for a 2-D convolution")
    return int(values[0]), int(values[1])


def _pads_2d(attrs, spatial, kernel, strides, dilations) -> List[int]:
    """[top, left, bottom, right] from ``pads`` or ``auto_pad`` (SAME_*: the output is ceil(input / stride))."""
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        if len(pads) != 4:
            raise GraphError(f"Conv: pads {pads} must be [top, left, bottom, right] for a 2-D convolution")
        return pads
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise GraphError(f"Conv: auto_pad {auto_pad!r} is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER")
    begin, end = [], []
    for length, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max((-(-length // s) - 1) * s + (k - 1) * d + 1 - length, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def conv2d_op(ctx, inputs, attrs):
    """Conv on x [N, C, H, W] with weight [Cout, Cin/group, kh, kw]; the kernel checks channels, group, bias."""
    x, weight = inputs[0], dense(inputs[1], "Conv", "weight W")
    bias = inputs[2] if len(inputs) > 2 else None
    if len(inputs) > 3 and inputs[3] is not None:
        raise GraphError("Conv: a fused residual input Z is supported for 1-D convolutions only")
    if x.ndim != 4:
        raise GraphError(f"Conv: a 2-D convolution needs input [N, C, H, W], got shape {x.shape}")
    kernel = tuple(weight.shape[2:])
    if tuple(attrs.get("kernel_shape", kernel)) != kernel:
        raise GraphError(f"Conv: kernel_shape {attrs['kernel_shape']} does not match weight {weight.shape}")
    strides, dilations = _pair(attrs, "strides"), _pair(attrs, "dilations")
    pads = _pads_2d(attrs, x.shape[2:], kernel, strides, dilations)
    shape = (x.shape[0], weight.shape[0]) + tuple(
        output_length(x.shape[2 + a], kernel[a], strides[a], dilations[a], pads[a], pads[2 + a]) for a in (0, 1))
    if min(shape[2:]) < 1:
        raise GraphError(f"Conv: input of shape {x.shape} is too small for kernel {kernel} (pads {pads})")
    out = ctx.output(shape, np.float32)
    group = int(attrs.get("group", 1))
    depthwise = group == x.shape[1] == weight.shape[0] > 1
    # the im2col columns come from the pool like an output: the same buffer every run, no page faults
    pointwise = kernel == (1, 1) and strides == (1, 1) and not any(pads)
    scratch_size = 0 if depthwise or pointwise else im2col_elements(weight.shape, shape[2:], strides, dilations, group)
    scratch = ctx.output((scratch_size,), np.float32) if scratch_size else None
    conv2d(x, weight, bias, strides=strides, dilations=dilations, pads=tuple(pads), group=group,
           activation=attrs.get("activation", ""), activation_params=attrs.get("activation_params", ()), out=out,
           scratch=scratch)
    return [out]
