"""RelPositionSoftmax: tinyasr's fused relative-position attention weights (a Conformer's ``rel_pos`` attention).

Inputs: content [B, H, T, T] (the (q + u) k^T scores), position [B or 1, H, T, 2T - 1] (the (q + v) p^T scores
over positions T - 1 .. -(T - 1)), keep [B or 1, 1, T, T] bool (optional: False where a query or key frame is
padding).  Attrs: ``scale`` (the divisor, sqrt(d_k)), ``masked_value`` (default -10000, NeMo's).  Output:
Where(keep, Softmax(Where(keep, (content + rel_shift(position)) / scale, masked_value)), 0), which is what NeMo's
export computes with Pad / Reshape / Slice / Add / Div / Where / Softmax / Where (tinyasr/kernels/attention.py).
"""

from __future__ import annotations

import numpy as np

from tinyasr.errors import GraphError
from tinyasr.kernels.attention import rel_position_softmax_rows
from tinyasr.ops.common import check_inputs
from tinyasr.ops.registry import register
from tinyasr.ops.streaming_rules import Refuses

NO_MASK = np.zeros((0, 1, 0, 0), bool)


@register("RelPositionSoftmax", streaming=Refuses("attention weighs every frame of the utterance"))
def rel_position_softmax(ctx, inputs, attrs):
    check_inputs("RelPositionSoftmax", inputs, 2)
    content, position = inputs[0], inputs[1]
    keep = inputs[2] if len(inputs) > 2 else None
    if content.ndim != 4 or content.shape[2] != content.shape[3]:
        raise GraphError(f"RelPositionSoftmax: content must be [B, H, T, T], got shape {content.shape}")
    batch, heads, frames = content.shape[:3]
    if position.ndim != 4 or position.shape[0] not in (1, batch) or position.shape[1:] != (heads, frames,
                                                                                           2 * frames - 1):
        raise GraphError(f"RelPositionSoftmax: position must be [{batch} or 1, {heads}, {frames}, {2 * frames - 1}] "
                         f"for content {content.shape}, got {position.shape}")
    if keep is not None and (keep.dtype != np.bool_ or keep.ndim != 4 or keep.shape[0] not in (1, batch)
                             or keep.shape[1:] != (1, frames, frames)):
        raise GraphError(f"RelPositionSoftmax: keep must be bool [{batch} or 1, 1, {frames}, {frames}], got "
                         f"{keep.dtype} {keep.shape}")
    scale = float(attrs.get("scale", 1.0))
    if not scale > 0:
        raise GraphError(f"RelPositionSoftmax: scale must be > 0, got {scale}")
    out = ctx.output(content.shape, np.float32)
    if out.size:
        rel_position_softmax_rows(np.ascontiguousarray(content, np.float32), np.ascontiguousarray(position, np.float32),
                                  NO_MASK if keep is None else np.ascontiguousarray(keep), np.float32(scale),
                                  np.float32(attrs.get("masked_value", -10000.0)), out)
    return [out]
