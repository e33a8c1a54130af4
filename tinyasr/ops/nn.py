"""Neural-network ops: Softmax / LogSoftmax, pooling, MatMul / Gemm and normalisations.

InstanceNormalization is how torch's exporter writes GroupNorm at opset 17 (Reshape to [N, groups, -1],
InstanceNormalization with unit scale, Reshape back, per-channel Mul / Add): wav2vec2's first feature conv.

Softmax and LogSoftmax follow opset 13+ (one axis, default -1).  The weight of
MatMul and Gemm may be stored in an encoding: Gemm with transB (a torch Linear) runs a sparse
weight through the sparse kernel, MatMul with a sparse 2-D B (a transformer block's linear layer on
time-major activations) through the time-major one; other cases decode it once to dense.
"""

from __future__ import annotations

import math

import numpy as np

from tinyasr.errors import GraphError
from tinyasr.kernels.rowwise import (
    LINEAR_ACTIVATIONS,
    bias_activation_rows,
    glu_rows,
    layer_norm_rows,
    layer_norm_rows_in_place,
    log_softmax_columns,
    log_softmax_rows,
    softmax_rows,
    squeeze_excite,
)
from tinyasr.kernels.sparse import kernel_matrix, linear, matmul_time_major, time_major_matrix
from tinyasr.ops.attributes import number
from tinyasr.ops.common import broadcast_shape, check_inputs, dense, normalize_axis
from tinyasr.ops.registry import register
from tinyasr.ops.streaming_rules import AxisOp, Refuses, Stream, TimeLocal


def _minus_max(ctx, op, inputs, attrs):
    """(x - max over the axis, axis): the shift that keeps exp() in range, into a fresh or donated buffer."""
    check_inputs(op, inputs, 1)
    x = inputs[0]
    axis = normalize_axis(attrs.get("axis", -1), x.ndim, op)
    out = ctx.output(x.shape, x.dtype, donors=(0,))
    np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    return out, axis


def _last_axis_rows(x, attrs) -> bool:
    """Whether a row kernel (kernels/rowwise.py) takes ``x``: float32, C-contiguous, ``axis`` the last one."""
    return (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous and x.size > 0
            and x.ndim >= 1 and attrs.get("axis", -1) in (-1, x.ndim - 1))


@register("Softmax", streaming=AxisOp(-1))
def softmax(ctx, inputs, attrs):
    x = inputs[0] if inputs else None
    if _last_axis_rows(x, attrs):  # attention scores: one pass per row
        out = ctx.output(x.shape, x.dtype, donors=(0,))
        softmax_rows(x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1]))
        return [out]
    out, axis = _minus_max(ctx, "Softmax", inputs, attrs)
    np.exp(out, out=out)
    np.divide(out, out.sum(axis=axis, keepdims=True), out=out)
    return [out]


@register("LogSoftmax", streaming=AxisOp(-1))
def log_softmax(ctx, inputs, attrs):
    x = inputs[0] if inputs else None
    if isinstance(x, np.ndarray) and x.ndim >= 1:
        # the row kernel where the classes lie along memory: CTC log-probs [B, T, classes], or a streamed conv
        # program's [B, classes, T] (a transposed view of its time-major rows), where numpy's five passes took
        # ~10 us on 4 frames; the axis swapped last (not np.moveaxis: 2-3 us a call), and back
        axis = normalize_axis(attrs.get("axis", -1), x.ndim, "LogSoftmax")
        rows = x if axis == x.ndim - 1 else x.swapaxes(axis, -1)
        if _last_axis_rows(rows, {}):
            out = ctx.output(rows.shape, x.dtype, donors=(0,) if rows is x else ())
            log_softmax_rows(rows.reshape(-1, rows.shape[-1]), out.reshape(-1, rows.shape[-1]))
            return [out if rows is x else out.swapaxes(axis, -1)]
        if x.dtype == np.float32 and x.size > 0:
            return [_log_softmax_columns(ctx, x, axis)]
    out, axis = _minus_max(ctx, "LogSoftmax", inputs, attrs)
    np.subtract(out, np.log(np.exp(out).sum(axis=axis, keepdims=True)), out=out)
    return [out]


def _log_softmax_columns(ctx, x, axis: int) -> np.ndarray:
    """LogSoftmax of float32 ``x`` whose classes are not contiguous rows, by the columns kernel (the same bits as
    the rows kernel): an offline CTC conv stack's [B, C, T], or [B, T, C] as its transposed view (the conv's
    output under a Transpose), taken as it lies; any other layout copied first (a stream's slices of a chunk)."""
    swapped = x.ndim == 3 and axis == 2 and x.swapaxes(1, 2).flags.c_contiguous
    middle = x.swapaxes(1, 2) if swapped else np.ascontiguousarray(x)
    axis = 1 if swapped else axis
    out = ctx.output(middle.shape, np.float32, donors=(0,) if middle is x else ())
    outer = math.prod(middle.shape[:axis])
    log_softmax_columns(middle.reshape(outer, middle.shape[axis], -1), out.reshape(outer, middle.shape[axis], -1))
    return out.swapaxes(1, 2) if swapped else out


@register("Glu", streaming=AxisOp(1))
def glu(ctx, inputs, attrs):
    """tinyasr's GLU: the first half of ``axis`` times the sigmoid of the second, what converters/passes.fuse_glu
    makes of Split -> Sigmoid(second) -> Mul(first, .) (a Conformer conv module's gate): one pass, no views."""
    check_inputs("Glu", inputs, 1)
    x = inputs[0]
    axis = normalize_axis(attrs.get("axis", 1), x.ndim, "Glu")
    if x.dtype != np.float32 or x.shape[axis] % 2:
        raise GraphError(f"Glu: needs float32 with an even length along axis {axis}, got {x.dtype} {x.shape}")
    shape = x.shape[:axis] + (x.shape[axis] // 2,) + x.shape[axis + 1:]
    out = ctx.output(shape, np.float32)
    if out.size:
        outer = math.prod(x.shape[:axis])  # np.prod of a tuple: 4 us
        glu_rows(np.ascontiguousarray(x).reshape(outer, 2, -1), out.reshape(outer, -1))
    return [out]


SQUEEZE_EXCITE_MASKS = ("valid", "padded")  # float 1 on valid frames (x * mask), or bool True on padding (Where)


@register("SqueezeExcite", streaming=Refuses("it scales every frame by a mean over the whole utterance"))
def squeeze_excite_op(ctx, inputs, attrs):
    """tinyasr's SqueezeExcite (NeMo's, global context), what converters/passes.fuse_squeeze_excite makes of the
    masked mean -> MatMul -> activation -> MatMul -> Sigmoid -> Mul -> [Relu] of a Citrinet block: inputs X
    [B, C, T] float32, M the frame mask [B or 1, 1, T] (``mask`` "valid": float 1 / 0 multiplied in; "padded": bool
    True on the padding, where X is taken as 0), W1 [C, H] and W2 [H, C]; ``hidden_activation`` "", "Relu" or
    "Swish", ``activation`` "" or "Relu" after the scale.  Citrinet-256 at 10 s: 23 blocks of ~15 nodes."""
    check_inputs("SqueezeExcite", inputs, 4)
    x, mask, squeeze, excite = inputs[0], inputs[1], dense(inputs[2], "SqueezeExcite", "W1"), \
        dense(inputs[3], "SqueezeExcite", "W2")
    kind, hidden, act = attrs.get("mask", "valid"), attrs.get("hidden_activation", "Relu"), attrs.get("activation", "")
    if kind not in SQUEEZE_EXCITE_MASKS or hidden not in LINEAR_ACTIVATIONS or act not in ("", "Relu"):
        raise GraphError(f"SqueezeExcite: unknown mask {kind!r}, hidden_activation {hidden!r} or activation {act!r}; "
                         f"supported: {SQUEEZE_EXCITE_MASKS}, {sorted(LINEAR_ACTIVATIONS)}, ['', 'Relu']")
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 3):
        raise GraphError(f"SqueezeExcite: X must be float32 [B, C, T], got {getattr(x, 'dtype', type(x).__name__)} "
                         f"of shape {getattr(x, 'shape', None)}")
    batch, channels, frames = x.shape
    if (squeeze.dtype != np.float32 or excite.dtype != np.float32 or squeeze.ndim != 2 or squeeze.shape[0] != channels
            or excite.shape != squeeze.shape[::-1]):
        raise GraphError(f"SqueezeExcite: W1 [C, H] and W2 [H, C] float32 with C = {channels}, got {squeeze.dtype} "
                         f"{squeeze.shape} and {excite.dtype} {excite.shape}")
    wanted = np.bool_ if kind == "padded" else np.float32
    if (not isinstance(mask, np.ndarray) or mask.dtype != wanted or mask.ndim != 3 or mask.shape[1] != 1
            or mask.shape[2] != frames or mask.shape[0] not in (1, batch)):
        raise GraphError(f"SqueezeExcite: mask M must be {np.dtype(wanted)} [{batch} or 1, 1, {frames}] for X of shape "
                         f"{x.shape}, got {getattr(mask, 'dtype', type(mask).__name__)} {getattr(mask, 'shape', None)}")
    out = ctx.output(x.shape, np.float32)
    squeeze, excite = np.ascontiguousarray(squeeze), np.ascontiguousarray(excite)
    hidden_code, act_code, select = LINEAR_ACTIVATIONS[hidden], LINEAR_ACTIVATIONS[act], kind == "padded"

    def run(x, mask):
        if out.size:
            rows = mask[:, 0] if mask.shape[0] == batch else np.broadcast_to(mask[:, 0], (batch, frames))
            rows = np.ascontiguousarray(~rows if select else rows, np.float32)
            squeeze_excite(np.ascontiguousarray(x), rows, select, squeeze, excite, hidden_code, act_code, out)
        return [out]

    def replay(ctx, inputs, attrs):
        """The checked call again, for X and M of the shapes and dtypes it was made for and the same weights (else
        the op in full): ~15 us of checks a node, 23 nodes in Citrinet-256."""
        x, mask = inputs[0], inputs[1]
        if (x.shape, x.dtype, mask.shape, mask.dtype) != bound or inputs[2] is not weights[0] \
                or inputs[3] is not weights[1]:
            return squeeze_excite_op(ctx, inputs, attrs)
        return run(x, mask)

    bound, weights = (x.shape, x.dtype, mask.shape, mask.dtype), (inputs[2], inputs[3])
    ctx.replay_with(replay)
    return run(x, mask)


def _global_pool(op: str, numpy_reduce):
    def run(ctx, inputs, attrs):
        check_inputs(op, inputs, 1)
        x = inputs[0]
        if x.ndim < 3:
            raise GraphError(f"{op} needs an input of rank >= 3 [N, C, ...], got shape {x.shape}")
        return [numpy_reduce(x, axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype, copy=False)]

    register(op, streaming=Refuses("it pools over every frame"))(run)


_global_pool("GlobalAveragePool", np.mean)
_global_pool("GlobalMaxPool", np.max)


def _matmul_into(ctx, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b, into a context buffer when both operands are matrices or stacks of them."""
    if a.dtype != b.dtype:
        raise GraphError(f"MatMul: operands must have one element type, got {a.dtype} and {b.dtype}")
    if a.ndim < 2 or b.ndim < 2:
        return np.asarray(np.matmul(a, b))
    if a.shape[-1] != b.shape[-2]:
        raise GraphError(f"MatMul: inner dimensions differ, shapes {a.shape} and {b.shape}")
    batch = broadcast_shape(a.shape[:-2], b.shape[:-2])
    out = ctx.output(batch + (a.shape[-2], b.shape[-1]), a.dtype)
    return np.matmul(a, b, out=out)


def _matmul_time_axis(node, constants, stream: Stream):
    """A streamed A times a stored B: the time axis of A stays a row axis of the product."""
    if stream.rank < 2 or stream.axis == stream.rank - 1:
        raise GraphError("it contracts the time axis")
    rank = max(stream.rank, len(getattr(constants[1], "shape", ())))
    return rank, stream.axis + rank - stream.rank


@register("MatMul", streaming=TimeLocal(layout=_matmul_time_axis))
def matmul(ctx, inputs, attrs):
    check_inputs("MatMul", inputs, 2)
    return [_product(ctx, "MatMul", inputs[0], inputs[1])]


NO_RESIDUAL_ROWS = np.zeros((0, 0), np.float32)


@register("Linear", streaming=TimeLocal(layout=_matmul_time_axis, aligned_inputs=(3,)))
def linear_layer(ctx, inputs, attrs):
    """tinyasr's Linear: act(A @ W + C) + Z with C [N] along the last axis, ``activation`` "", "Relu" or "Swish",
    and the optional Z (a residual connection) broadcast as ONNX's Add: what converters/passes.fuse_matmul_epilogues
    and fuse_linear_residuals make of MatMul -> Add(bias) -> activation -> Add(residual) (a transformer's linear
    layers): bias, activation and residual in one pass over the product while it is in cache.  An op of its own,
    not a MatMul with a third input, so that a reader without it refuses the file instead of dropping the bias."""
    check_inputs("Linear", inputs, 3)
    out, bias, activation = _product(ctx, "Linear", inputs[0], inputs[1]), inputs[2], attrs.get("activation", "")
    if activation not in LINEAR_ACTIVATIONS:
        raise GraphError(f"Linear: unknown activation {activation!r}; supported: {sorted(LINEAR_ACTIVATIONS)}")
    if not (isinstance(bias, np.ndarray) and bias.dtype == np.float32 and bias.size == out.shape[-1]):
        raise GraphError(f"Linear: bias C must be float32 with {out.shape[-1]} values (the last axis of A @ W), got "
                         f"{getattr(bias, 'dtype', type(bias).__name__)} of shape {getattr(bias, 'shape', None)}")
    if out.dtype != np.float32 or not out.flags.c_contiguous or out.ndim < 1:
        raise GraphError(f"Linear: needs a float32 product, got {out.dtype}")
    residual = inputs[3] if len(inputs) > 3 else None
    if residual is not None and getattr(residual, "dtype", None) != np.float32:
        kind = getattr(residual, "dtype", type(residual).__name__)
        raise GraphError(f"Linear: residual Z must be float32, got {kind}")
    fused = residual is not None and residual.shape == out.shape
    if out.size:
        rows = out.reshape(-1, out.shape[-1])
        bias_activation_rows(rows, np.ascontiguousarray(bias).reshape(-1), LINEAR_ACTIVATIONS[activation],
                             np.ascontiguousarray(residual).reshape(rows.shape) if fused else NO_RESIDUAL_ROWS)
    if residual is None or fused:
        return [out]
    try:
        shape = broadcast_shape(out.shape, residual.shape)
    except ValueError:
        raise GraphError(f"Linear: residual Z of shape {residual.shape} does not broadcast with the product's "
                         f"{out.shape}") from None
    if shape == out.shape:
        return [np.add(out, residual, out=out)]
    return [np.add(out, residual)]


def _product(ctx, op: str, a, b) -> np.ndarray:
    """a @ b: the time-major sparse kernel for an encoded 2-D b, else BLAS (encoded operands decoded once)."""
    if isinstance(a, np.ndarray) and a.ndim >= 1 and time_major_matrix(b) is not None:
        if a.dtype != np.float32:
            raise GraphError(f"{op}: operands must have one element type, got {a.dtype} and float32")
        out = ctx.output(a.shape[:-1] + (b.shape[1],), np.float32)
        return matmul_time_major(a, b, out=out)
    return _matmul_into(ctx, dense(a, op, "A"), dense(b, op, "B"))


@register("Gemm", streaming=Refuses("no streaming rule for Gemm yet (MatMul streams)"))
def gemm(ctx, inputs, attrs):
    """Y = alpha * A' B' + beta * C, with A' = A.T if transA, B' = B.T if transB."""
    check_inputs("Gemm", inputs, 2)
    if attrs.get("transB", 0) and not attrs.get("transA", 0) and kernel_matrix(inputs[1]) is not None:
        product = linear(inputs[0], inputs[1])
        out = ctx.output(product.shape, product.dtype)
        out[...] = product
        return _gemm_epilogue(out, inputs, attrs)
    a, b = dense(inputs[0], "Gemm", "A"), dense(inputs[1], "Gemm", "B")
    if a.ndim != 2 or b.ndim != 2:
        raise GraphError(f"Gemm needs 2-D A and B, got shapes {a.shape} and {b.shape}")
    a = a.T if attrs.get("transA", 0) else a
    b = b.T if attrs.get("transB", 0) else b
    return _gemm_epilogue(_matmul_into(ctx, a, b), inputs, attrs)


def _gemm_epilogue(out, inputs, attrs):
    """out = alpha * out + beta * C, in place."""
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if alpha != 1.0:
        np.multiply(out, np.asarray(alpha, out.dtype), out=out)
    c = inputs[2] if len(inputs) > 2 else None
    if c is not None and beta != 0.0:
        np.add(out, c if beta == 1.0 else c * np.asarray(beta, c.dtype), out=out)
    return [out]


@register("LayerNormalization", streaming=Refuses(
    "no streaming rule for LayerNormalization yet (its axes [axis, rank) may include the time axis)"))
def layer_normalization(ctx, inputs, attrs):
    """Normalise over axes [axis, rank); optional outputs Mean and InvStdDev keep the reduced dims as 1."""
    check_inputs("LayerNormalization", inputs, 2)
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    width = x.shape[-1] if x.ndim else 0
    if (ctx.num_outputs <= 1 and _last_axis_rows(x, attrs) and _row_vector(scale, width)
            and (bias is None or _row_vector(bias, width))):  # transformer blocks: one pass per row
        out = ctx.output(x.shape, x.dtype, donors=(0,))
        bias, epsilon = np.zeros(0, np.float32) if bias is None else bias, np.float32(attrs.get("epsilon", 1e-5))
        if out is x:
            layer_norm_rows_in_place(out.reshape(-1, width), scale, bias, epsilon)
        else:
            layer_norm_rows(x.reshape(-1, width), scale, bias, epsilon, out.reshape(-1, width))
        return [out]
    axis = normalize_axis(attrs.get("axis", -1), x.ndim, "LayerNormalization")
    axes = tuple(range(axis, x.ndim))
    epsilon = np.asarray(attrs.get("epsilon", 1e-5), x.dtype)
    mean = x.mean(axis=axes, keepdims=True)
    out = ctx.output(x.shape, x.dtype, donors=(0,))
    np.subtract(x, mean, out=out)
    inv_std = 1 / np.sqrt(np.mean(np.square(out), axis=axes, keepdims=True) + epsilon)
    np.multiply(out, inv_std, out=out)
    np.multiply(out, scale, out=out)
    if bias is not None:
        np.add(out, bias, out=out)
    return [out, mean, inv_std][: max(1, ctx.num_outputs)]


def _row_vector(value, width: int) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == np.float32 and value.shape == (width,) \
        and value.flags.c_contiguous


@register("BatchNormalization", streaming=Refuses("no streaming rule for BatchNormalization yet"))
def batch_normalization(ctx, inputs, attrs):
    """Inference form: per-channel (axis 1) affine map from the running statistics."""
    check_inputs("BatchNormalization", inputs, 5)
    x, scale, bias, mean, var = inputs[:5]
    epsilon = attrs.get("epsilon", 1e-5)
    gain = (scale / np.sqrt(var + np.asarray(epsilon, var.dtype))).astype(x.dtype)
    shift = (bias - mean * gain).astype(x.dtype)
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    out = ctx.output(x.shape, x.dtype, donors=(0,))
    np.multiply(x, gain.reshape(per_channel), out=out)
    np.add(out, shift.reshape(per_channel), out=out)
    return [out]


@register("InstanceNormalization", streaming=Refuses("it normalises over every frame"), attrs={"epsilon": number})
def instance_normalization(ctx, inputs, attrs):
    """Per sample and channel of X [N, C, ...]: (x - mean) / sqrt(var + epsilon) * scale[c] + B[c] over the
    spatial axes.  The statistics are summed in float64: wav2vec2 normalises 16,000 samples a second at once."""
    check_inputs("InstanceNormalization", inputs, 3)
    x, scale, bias = inputs[:3]
    if x.ndim < 3 or scale.shape != (x.shape[1],) or bias.shape != (x.shape[1],):
        raise GraphError(f"InstanceNormalization needs X [N, C, ...] with scale and B [C], got shapes {x.shape}, "
                         f"{scale.shape} and {bias.shape}")
    rows = x.reshape(x.shape[0], x.shape[1], -1)
    mean = rows.mean(axis=-1, keepdims=True, dtype=np.float64)
    centred = rows - mean
    inv_std = 1 / np.sqrt(np.mean(np.square(centred), axis=-1, keepdims=True) + float(attrs.get("epsilon", 1e-5)))
    normalised = centred * (inv_std * scale.reshape(1, -1, 1)) + bias.reshape(1, -1, 1)
    out = ctx.output(x.shape, x.dtype, donors=(0,))
    out[...] = normalised.reshape(x.shape)
    return [out]
