"""Shape and data-movement ops: Shape, Reshape, Transpose, Slice, Gather, Concat, Pad, Cast, ...

These mostly run on small int64 shape tensors (the converter folds them when the
shapes are static) or move activations without arithmetic; views are returned
where numpy gives them for free.
"""

from __future__ import annotations

import math

import numpy as np

from tinyasr.errors import GraphError
from tinyasr.ops.attributes import number
from tinyasr.ops.common import (
    axes_from,
    check_inputs,
    int_list,
    normalize_axes,
    normalize_axis,
)
from tinyasr.ops.registry import register
from tinyasr.ops.streaming_rules import TIME_LOCAL, AxisOp, Refuses, Stream, TimeLocal

# ONNX TensorProto.DataType -> numpy (the types a speech model's graph can carry).
ONNX_DTYPES = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}


def numpy_dtype(code, what: str) -> np.dtype:
    """An ONNX dtype enum int (or a numpy dtype name, as the IR may write it) as a numeric numpy dtype."""
    if isinstance(code, str):
        try:
            dtype = np.dtype(code)
        except (TypeError, ValueError):  # numpy says ValueError for some strings ("1e-310"), TypeError for others
            raise GraphError(f"{what}: unknown dtype name {code[:40]!r}") from None
        if dtype.kind not in "biuf":
            raise GraphError(f"{what}: dtype {code[:40]!r} is not numeric")
        return dtype
    if isinstance(code, bool) or not isinstance(code, int) or code not in ONNX_DTYPES:
        raise GraphError(f"{what}: ONNX data type {str(code)[:40]} is not supported; supported: {sorted(ONNX_DTYPES)}")
    return np.dtype(ONNX_DTYPES[code])


@register("Shape", streaming=Refuses("its value is the length of the whole input"))
def shape(ctx, inputs, attrs):
    check_inputs("Shape", inputs, 1)
    dims = inputs[0].shape[attrs.get("start", 0): attrs.get("end", None)]
    return [np.array(dims, dtype=np.int64)]


@register("Size", streaming=Refuses("its value is the length of the whole input"))
def size(ctx, inputs, attrs):
    check_inputs("Size", inputs, 1)
    return [np.array(inputs[0].size, dtype=np.int64)]


@register("Reshape", streaming=Refuses("it may merge or split the time axis"))
def reshape(ctx, inputs, attrs):
    """0 copies the input's dim (unless allowzero=1), -1 is inferred."""
    check_inputs("Reshape", inputs, 2)
    x = inputs[0]
    target = int_list(inputs[1], "Reshape shape")
    if not attrs.get("allowzero", 0):
        for i, d in enumerate(target):
            if d == 0:
                if i >= x.ndim:
                    raise GraphError(f"Reshape: 0 at position {i} but the input {x.shape} has rank {x.ndim}")
                target[i] = x.shape[i]
    try:
        return [x.reshape(target)]
    except ValueError:
        raise GraphError(f"Reshape: cannot reshape a tensor of shape {x.shape} to {target}") from None


@register("Flatten", streaming=Refuses("it may merge the time axis with others"))
def flatten(ctx, inputs, attrs):
    check_inputs("Flatten", inputs, 1)
    x = inputs[0]
    axis = attrs.get("axis", 1)
    axis = x.ndim if axis == x.ndim else normalize_axis(axis, x.ndim, "Flatten")
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


def _transpose_time_axis(node, constants, stream: Stream):
    perm = node.attrs.get("perm")
    perm = list(range(stream.rank))[::-1] if perm is None else normalize_axes(perm, stream.rank, "Transpose")
    if len(perm) != stream.rank:
        raise GraphError(f"perm {perm} does not match rank {stream.rank}")
    return stream.rank, perm.index(stream.axis)


@register("Transpose", streaming=TimeLocal(layout=_transpose_time_axis))
def transpose(ctx, inputs, attrs):
    check_inputs("Transpose", inputs, 1)
    x = inputs[0]
    perm = attrs.get("perm")
    perm = list(range(x.ndim))[::-1] if perm is None else normalize_axes(perm, x.ndim, "Transpose")
    if len(perm) != x.ndim:
        raise GraphError(f"Transpose: perm {perm} does not match rank {x.ndim}")
    return [x.transpose(perm)]


def _squeeze_time_axis(node, constants, stream: Stream):
    axes = axes_from(constants, 1, node.attrs)
    if axes is None:
        raise GraphError("Squeeze without axes may drop the time axis")
    axes = normalize_axes(axes, stream.rank, "Squeeze")
    if stream.axis in axes:
        raise GraphError("it removes the time axis")
    return stream.rank - len(axes), stream.axis - sum(a < stream.axis for a in axes)


@register("Squeeze", streaming=TimeLocal(layout=_squeeze_time_axis))
def squeeze(ctx, inputs, attrs):
    check_inputs("Squeeze", inputs, 1)
    x = inputs[0]
    axes = axes_from(inputs, 1, attrs)
    if axes is None:
        return [x.reshape([d for d in x.shape if d != 1])]
    axes = normalize_axes(axes, x.ndim, "Squeeze")
    for a in axes:
        if x.shape[a] != 1:
            raise GraphError(f"Squeeze: axis {a} of a tensor of shape {x.shape} is not 1")
    return [np.squeeze(x, axis=tuple(axes))]


def _unsqueeze_time_axis(node, constants, stream: Stream):
    axes = axes_from(constants, 1, node.attrs)
    if axes is None:
        raise GraphError("Unsqueeze needs axes (input 1 or attribute)")
    rank = stream.rank + len(axes)
    axis = stream.axis
    for a in sorted(normalize_axes(axes, rank, "Unsqueeze")):
        axis += a <= axis
    return rank, axis


@register("Unsqueeze", streaming=TimeLocal(layout=_unsqueeze_time_axis))
def unsqueeze(ctx, inputs, attrs):
    """Axes count in the output's rank; negative ones from its end."""
    check_inputs("Unsqueeze", inputs, 1)
    x = inputs[0]
    axes = axes_from(inputs, 1, attrs)
    if axes is None:
        raise GraphError("Unsqueeze needs axes (input 1 or attribute)")
    axes = sorted(normalize_axes(axes, x.ndim + len(axes), "Unsqueeze"))
    shape_out = list(x.shape)
    for a in axes:
        shape_out.insert(a, 1)
    return [x.reshape(shape_out)]


@register("Concat", streaming=AxisOp(0, several_streams=True))
def concat(ctx, inputs, attrs):
    parts = [x for x in inputs if x is not None]
    if not parts:
        raise GraphError("Concat needs at least one input")
    if "axis" not in attrs:
        raise GraphError("Concat needs the axis attribute")
    axis = normalize_axis(attrs["axis"], parts[0].ndim, "Concat")
    if len({p.dtype for p in parts}) > 1 or len({p.ndim for p in parts}) > 1:
        raise GraphError(f"Concat: inputs differ in dtype or rank: {[(str(p.dtype), p.shape) for p in parts]}")
    shape_out = list(parts[0].shape)
    shape_out[axis] = sum(p.shape[axis] for p in parts)
    out = ctx.output(tuple(shape_out), parts[0].dtype)
    try:
        np.concatenate(parts, axis=axis, out=out)
    except ValueError:
        raise GraphError(f"Concat on axis {axis}: shapes {[p.shape for p in parts]} do not match") from None
    return [out]


@register("Split", streaming=AxisOp(0))
def split(ctx, inputs, attrs):
    """Sizes from input 1 (opset 13+), the ``split`` attribute, ``num_outputs`` (18+) or equal parts."""
    check_inputs("Split", inputs, 1)
    x = inputs[0]
    axis = normalize_axis(attrs.get("axis", 0), x.ndim, "Split")
    length = x.shape[axis]
    if len(inputs) > 1 and inputs[1] is not None:
        sizes = int_list(inputs[1], "Split split")
    elif "split" in attrs:
        sizes = int_list(attrs["split"], "Split split")
    else:
        count = int(attrs.get("num_outputs", ctx.num_outputs))
        chunk = -(-length // count)
        sizes = [min(chunk, max(0, length - i * chunk)) for i in range(count)]
        if "num_outputs" not in attrs and length % count:
            raise GraphError(f"Split: axis length {length} is not divisible into {count} equal outputs")
    if sum(sizes) != length or any(s < 0 for s in sizes):
        raise GraphError(f"Split: sizes {sizes} do not add up to the axis length {length}")
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def _slice_bounds(start: int, end: int, step: int, dim: int):
    """ONNX Slice clamping (negative indices count from the end; ends beyond the axis are clamped)."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


@register("Slice", streaming=Refuses("it may select frames by position along the time axis"))
def slice_(ctx, inputs, attrs):
    check_inputs("Slice", inputs, 3)
    x = inputs[0]
    starts = int_list(inputs[1], "Slice starts")
    ends = int_list(inputs[2], "Slice ends")
    axes = axes_from(inputs, 3, {}) or list(range(len(starts)))
    steps = int_list(inputs[4], "Slice steps") if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise GraphError(f"Slice: starts {starts}, ends {ends}, axes {axes}, steps {steps} differ in length")
    if 0 in steps:
        raise GraphError("Slice: a step of 0 is not allowed")
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, normalize_axes(axes, x.ndim, "Slice"), steps):
        index[axis] = _slice_bounds(start, end, step, x.shape[axis])
    return [x[tuple(index)]]


@register("Gather", streaming=Refuses("it may select frames by position along the time axis"))
def gather(ctx, inputs, attrs):
    check_inputs("Gather", inputs, 2)
    data, indices = inputs
    axis = normalize_axis(attrs.get("axis", 0), data.ndim, "Gather")
    dim = data.shape[axis]
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        raise GraphError(f"Gather: indices outside [-{dim}, {dim}) for axis {axis} of shape {data.shape}")
    return [np.asarray(np.take(data, indices.astype(np.int64, copy=False), axis=axis))]


@register("Expand", streaming=Refuses("it may repeat values along the time axis"))
def expand(ctx, inputs, attrs):
    """Two-way broadcast of the input against the given shape (so a 1 in the shape keeps the input's dim).

    The result is a read-only broadcast view, not a copy: NeMo's masked subsampling expands a [B, 1, T, 1]
    mask to the [B, C, T, F] activation only to multiply by it, and the copy cost as much as the multiply."""
    check_inputs("Expand", inputs, 2)
    x = inputs[0]
    target = int_list(inputs[1], "Expand shape")
    try:
        shape_out = np.broadcast_shapes(x.shape, tuple(target))
    except ValueError:
        raise GraphError(f"Expand: shape {x.shape} cannot broadcast to {target}") from None
    return [np.broadcast_to(x, shape_out)]


@register("Tile", streaming=Refuses("it may repeat values along the time axis"))
def tile(ctx, inputs, attrs):
    check_inputs("Tile", inputs, 2)
    repeats = int_list(inputs[1], "Tile repeats")
    if len(repeats) != inputs[0].ndim:
        raise GraphError(f"Tile: {len(repeats)} repeats for a tensor of rank {inputs[0].ndim}")
    return [np.tile(inputs[0], repeats)]


@register("Range", streaming=Refuses("its output is built from values, not from frames"))
def range_(ctx, inputs, attrs):
    """max(ceil((limit - start) / delta), 0) elements start + i * delta, in start's dtype."""
    check_inputs("Range", inputs, 3)
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs)
    if delta == 0:
        raise GraphError("Range: delta must not be 0")
    count = max(int(np.ceil((limit - start) / delta)), 0)
    return [(start + np.arange(count, dtype=start.dtype) * delta).astype(start.dtype)]


def _fill_value(value):
    """ConstantOfShape's ``value``: a number (float -> float32, int -> int64, bool), a one-element list,
    or ``{"dtype": NAME, "value": NUMBER}``; absent means float32 zero."""
    if value is None:
        return np.zeros((), np.float32)
    if isinstance(value, dict):
        if set(value) != {"dtype", "value"}:
            raise GraphError(f"ConstantOfShape: value must be {{'dtype': NAME, 'value': NUMBER}}, got {str(value)[:80]}")
        dtype = numpy_dtype(value["dtype"], "ConstantOfShape value")
        number(value["value"], "ConstantOfShape value")
        return np.asarray(value["value"]).astype(dtype)
    if isinstance(value, (list, tuple, np.ndarray)):
        value = np.asarray(value)
        if value.size != 1 or value.dtype.kind not in "biuf":
            raise GraphError(f"ConstantOfShape: value must be one number, got {value.dtype} shape {value.shape}")
        return value.reshape(())
    if isinstance(value, bool):
        return np.asarray(value, np.bool_)
    number(value, "ConstantOfShape value")
    return np.asarray(value, np.int64 if isinstance(value, int) else np.float32)


def _fill_rule(value, what: str) -> None:
    try:
        _fill_value(value)
    except GraphError as exc:
        raise GraphError(f"{what}: {exc}") from None


@register("ConstantOfShape", streaming=Refuses("its output is built from values, not from frames"),
          attrs={"value": _fill_rule})
def constant_of_shape(ctx, inputs, attrs):
    check_inputs("ConstantOfShape", inputs, 1)
    fill = _fill_value(attrs.get("value"))
    return [np.full(int_list(inputs[0], "ConstantOfShape shape"), fill, dtype=fill.dtype)]


def _dtype_rule(code, what: str) -> None:
    numpy_dtype(code, what)


@register("Cast", streaming=TIME_LOCAL, attrs={"to": _dtype_rule})
def cast(ctx, inputs, attrs):
    """``to`` is the ONNX TensorProto enum; float -> int truncates toward zero, as in ONNX."""
    check_inputs("Cast", inputs, 1)
    if "to" not in attrs:
        raise GraphError("Cast needs the 'to' attribute")
    dtype = numpy_dtype(attrs["to"], "Cast")
    x = inputs[0]
    if x.dtype == dtype:
        return [x]
    out = ctx.output(x.shape, dtype)
    np.copyto(out, x, casting="unsafe")
    return [out]


@register("Pad", streaming=Refuses("it may pad the time axis, which needs the end of the input"))
def pad(ctx, inputs, attrs):
    """Modes constant, reflect, edge and wrap; pads [x1_begin, x2_begin, ..., x1_end, ...]; negative pads crop."""
    check_inputs("Pad", inputs, 1)
    x = inputs[0]
    pads = int_list(inputs[1], "Pad pads") if len(inputs) > 1 and inputs[1] is not None else int_list(
        attrs.get("pads", []), "Pad pads")
    axes = axes_from(inputs, 3, {}) or list(range(x.ndim))
    axes = normalize_axes(axes, x.ndim, "Pad")
    if len(pads) != 2 * len(axes):
        raise GraphError(f"Pad: {len(pads)} pads for {len(axes)} axes (need begin and end per axis)")
    mode = attrs.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise GraphError(f"Pad: mode {mode!r} is not supported; supported: constant, reflect, edge, wrap")
    widths = [(0, 0)] * x.ndim
    crop = [slice(None)] * x.ndim
    for i, axis in enumerate(axes):
        begin, end = pads[i], pads[i + len(axes)]
        crop[axis] = slice(max(-begin, 0), x.shape[axis] - max(-end, 0))
        widths[axis] = (max(begin, 0), max(end, 0))
    x = x[tuple(crop)]
    if mode == "constant":
        value = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attrs.get("value", 0)
        return [np.pad(x, widths, mode="constant", constant_values=np.asarray(value, x.dtype).reshape(()))]
    return [np.pad(x, widths, mode=mode)]
