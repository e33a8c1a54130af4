"""Conv: ONNX 1-D convolution, extended with a fused residual input and activation.

Y = act(conv(X, W) + B + Z) where Z (input 3, optional) is a residual added
before the activation, and ``activation`` / ``activation_params`` name the
activation ("" / "Relu" / "Sigmoid" / "Tanh" / "Clip" with [min, max]).
The arithmetic and most shape checks are the kernels' (``bound_conv1d_any``: dense weights,
or CSR / BSR weights of pointwise convs, see tinyasr/kernels/sparse.py); this op turns
ONNX attributes (strides, dilations, pads, auto_pad) into their arguments.  How it streams: conv_stream.py.
A 4-D weight (2-D convolution, the Conformer subsampling) goes to conv2d.py.
"""

from __future__ import annotations

import numpy as np

from tinyasr.errors import GraphError
from tinyasr.format.encodings.ternary import TernaryWeight
from tinyasr.kernels.conv1d import output_length
from tinyasr.kernels.sparse import bound_conv1d_any
from tinyasr.ops.attributes import CONV_ATTRS
from tinyasr.ops.common import check_inputs
from tinyasr.ops.conv2d import conv2d_op
from tinyasr.ops.conv_stream import CONV_STREAMING
from tinyasr.ops.registry import register


def _single(attrs, name: str, default: int) -> int:
    """A 1-D conv's per-axis attribute (``strides`` [s], ``dilations`` [d]) as one int."""
    values = attrs.get(name, [default])
    if len(values) != 1:
        raise GraphError(f"Conv: {name} {values} has {len(values)} entries; only 1-D convolution is supported")
    return int(values[0])


def _pads(attrs, length: int, kernel: int, stride: int, dilation: int):
    """(left, right) padding from ``pads`` [begin, end] or ``auto_pad``."""
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = attrs.get("pads", [0, 0])
        if len(pads) != 2:
            raise GraphError(f"Conv: pads {pads} must be [begin, end] for a 1-D convolution")
        return int(pads[0]), int(pads[1])
    if auto_pad == "VALID":
        return 0, 0
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = max((-(-length // stride) - 1) * stride + (kernel - 1) * dilation + 1 - length, 0)
        small, large = total // 2, total - total // 2
        return (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    raise GraphError(f"Conv: auto_pad {auto_pad!r} is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER")


def _shapes(x, residual):
    return np.shape(x), np.shape(residual) if residual is not None else None


@register("Conv", streaming=CONV_STREAMING, attrs=CONV_ATTRS)
def conv(ctx, inputs, attrs):
    """Attributes to kernel arguments; the kernel checks channels, group, bias, residual and activation."""
    check_inputs("Conv", inputs, 2)
    if isinstance(inputs[1], TernaryWeight):  # a regenerated / index-list ternary 1x1 conv
        from tinyasr.kernels.ternary import (
            ternary_conv,  # compiled only by models that have ternary layers
        )

        return ternary_conv(ctx, inputs, attrs)
    if getattr(inputs[1], "ndim", 3) == 4:
        return conv2d_op(ctx, inputs, attrs)
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    residual = inputs[3] if len(inputs) > 3 else None
    if x.ndim != 3 or weight.ndim != 3:
        raise GraphError(
            "Conv: only 1-D convolution (input [N, C, T], weight [Cout, Cin/group, K]) and 2-D convolution "
            "(input [N, C, H, W], weight [Cout, Cin/group, kh, kw]) are supported; "
            f"got input {x.shape}, weight {weight.shape}"
        )
    kernel = weight.shape[2]
    if list(attrs.get("kernel_shape", [kernel])) != [kernel]:
        raise GraphError(f"Conv: kernel_shape {attrs['kernel_shape']} does not match weight {weight.shape}")
    stride, dilation = _single(attrs, "strides", 1), _single(attrs, "dilations", 1)
    length = x.shape[2]
    pad_left, pad_right = _pads(attrs, length, kernel, stride, dilation)
    out_length = output_length(length, kernel, stride, dilation, pad_left, pad_right)
    if out_length < 1:
        raise GraphError(
            f"Conv: input length {length} is too short for kernel {kernel} (dilation {dilation}, "
            f"pads {pad_left},{pad_right})"
        )
    out, run = bound_conv1d_any(x, weight, bias, residual, stride=stride, dilation=dilation, pad_left=pad_left,
                                pad_right=pad_right, group=int(attrs.get("group", 1)),
                                activation=attrs.get("activation", ""),
                                activation_params=attrs.get("activation_params", ()),
                                out=ctx.output((x.shape[0], weight.shape[0], out_length), np.float32))
    run(x, residual)
    bound = _shapes(x, residual)

    def replay(ctx, inputs, attrs):
        """The bound call, where x and the residual have the shapes it was bound for (a shape that depends on an
        input's values upstream can differ on a replayed run: then the op runs in full)."""
        x, residual = inputs[0], inputs[3] if len(inputs) > 3 else None
        if _shapes(x, residual) != bound:
            return conv(ctx, inputs, attrs)
        run(x, residual)
        return [out]

    ctx.replay_with(replay)
    return [out]
