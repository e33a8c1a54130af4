"""Ops that turn lengths into masks: CumSum and ScatterND.

Hugging Face's wav2vec2 export builds its frame mask from the sample mask this way: CumSum of the sample mask
gives the lengths, ScatterND sets a 1 at each sequence's last valid frame, and a reversed CumSum spreads it
back over the frames before it.  They run on small integer tensors ([batch, samples] at most).
"""

from __future__ import annotations

import numpy as np

from tinyasr.errors import GraphError
from tinyasr.ops.attributes import integer
from tinyasr.ops.common import check_inputs, int_list, normalize_axis
from tinyasr.ops.registry import register
from tinyasr.ops.streaming_rules import Refuses


@register("CumSum", streaming=Refuses("it sums over the whole axis, which may be the time axis"),
          attrs={"exclusive": integer(0, 1), "reverse": integer(0, 1)})
def cumsum(ctx, inputs, attrs):
    """Running sum along the axis given as input 1; ``exclusive`` leaves each element out of its own sum,
    ``reverse`` sums from the end.  The dtype is kept (int64 stays int64, float32 sums in float32 as ONNX)."""
    check_inputs("CumSum", inputs, 2)
    x = inputs[0]
    axes = int_list(inputs[1], "CumSum axis")
    if len(axes) != 1:
        raise GraphError(f"CumSum: the axis input must hold one value, got {axes}")
    if x.dtype.kind not in "iuf":
        raise GraphError(f"CumSum needs a numeric tensor, got {x.dtype}")
    axis = normalize_axis(axes[0], x.ndim, "CumSum")
    reverse, exclusive = attrs.get("reverse", 0), attrs.get("exclusive", 0)
    data = np.flip(x, axis) if reverse else x
    summed = np.cumsum(data, axis=axis, dtype=x.dtype)
    if exclusive:
        summed = np.subtract(summed, data, dtype=x.dtype)
    return [np.ascontiguousarray(np.flip(summed, axis) if reverse else summed)]


@register("ScatterND", streaming=Refuses("it writes to positions given by values"),
          attrs={"reduction": lambda value, what: _no_reduction(value, what)})
def scatter_nd(ctx, inputs, attrs):
    """A copy of data with the slices ``data[indices[i]]`` replaced by ``updates[i]`` (ONNX ScatterND, no
    reduction).  Every index is checked against data's shape: a model file is untrusted."""
    check_inputs("ScatterND", inputs, 3)
    data, indices, updates = inputs[:3]
    if indices.dtype.kind not in "iu" or indices.ndim < 1:
        raise GraphError(f"ScatterND: indices must be an integer tensor of rank >= 1, got {indices.dtype} "
                         f"shape {indices.shape}")
    depth = indices.shape[-1]
    if not 1 <= depth <= data.ndim:
        raise GraphError(f"ScatterND: indices' last dimension {depth} must be from 1 to data's rank {data.ndim}")
    slice_shape = data.shape[depth:]
    if updates.shape != indices.shape[:-1] + slice_shape or updates.dtype != data.dtype:
        raise GraphError(f"ScatterND: updates must be {data.dtype} of shape {indices.shape[:-1] + slice_shape}, "
                         f"got {updates.dtype} {updates.shape}")
    flat_indices = indices.reshape(-1, depth).astype(np.int64)
    bounds = np.asarray(data.shape[:depth], np.int64)
    if flat_indices.size and (np.any(flat_indices < -bounds) or np.any(flat_indices >= bounds)):
        raise GraphError(f"ScatterND: an index lies outside data's shape {data.shape}")
    out = ctx.output(data.shape, data.dtype)
    np.copyto(out, data)
    out[tuple(np.mod(flat_indices, bounds).T)] = updates.reshape((-1,) + slice_shape)
    return [out]


def _no_reduction(value, what):
    if value != "none":
        raise GraphError(f"{what}: only 'none' is supported (no reduction), got {str(value)[:40]!r}")
