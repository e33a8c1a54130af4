"""RelPositionSoftmax: tinyasr's fused relative-position attention weights (a Conformer's ``rel_pos`` attention).

Inputs: content [B, H, T, T] (the (q + u) k^T scores), position [B or 1, H, T, 2T - 1] (the (q + v) p^T scores
over positions T - 1 .. -(T - 1)), keep [B or 1, 1, T, T] bool (optional: False where a query or key frame is
padding).  With the attribute ``position_product`` = 1 the position scores' operands come instead of them:
content, query [B or 1, H, T, d] (q + v), keys [B or 1, H, d, 2T - 1] (p^T), keep; the kernel then computes only
the scores the rel-shift keeps (converters/passes.absorb_position_product), or, where BLAS's whole product
measured faster on this CPU (kernels/attention.product_in_kernel), the product first as before.  Attrs:
``scale`` (the divisor, sqrt(d_k)), ``masked_value`` (default -10000, NeMo's).  Output:
Where(keep, Softmax(Where(keep, (content + rel_shift(position)) / scale, masked_value)), 0), which is what NeMo's
export computes with Pad / Reshape / Slice / Add / Div / Where / Softmax / Where (tinyasr/kernels/attention.py).
"""

from __future__ import annotations

import numpy as np

from tinyasr.errors import GraphError
from tinyasr.kernels.attention import (
    product_in_kernel,
    rel_position_product_softmax_rows,
    rel_position_softmax_rows,
)
from tinyasr.ops.common import check_inputs
from tinyasr.ops.registry import register
from tinyasr.ops.streaming_rules import Refuses

NO_MASK = np.zeros((0, 1, 0, 0), bool)


@register("RelPositionSoftmax", streaming=Refuses("attention weighs every frame of the utterance"))
def rel_position_softmax(ctx, inputs, attrs):
    check_inputs("RelPositionSoftmax", inputs, 2)
    content = inputs[0]
    if content.ndim != 4 or content.shape[2] != content.shape[3]:
        raise GraphError(f"RelPositionSoftmax: content must be [B, H, T, T], got shape {content.shape}")
    batch, heads, frames = content.shape[:3]
    if attrs.get("position_product", 0):  # the (q + v) p^T product's operands, not its result
        check_inputs("RelPositionSoftmax", inputs, 3)
        query, keys = inputs[1], inputs[2]
        keep = inputs[3] if len(inputs) > 3 else None
        if query.ndim != 4 or query.shape[0] not in (1, batch) or query.shape[1:3] != (heads, frames):
            raise GraphError(f"RelPositionSoftmax: query must be [{batch} or 1, {heads}, {frames}, d] for content "
                             f"{content.shape}, got {query.shape}")
        if keys.ndim != 4 or keys.shape[0] not in (1, batch) or keys.shape[1:] != (heads, query.shape[3],
                                                                                   2 * frames - 1):
            raise GraphError(f"RelPositionSoftmax: keys must be [{batch} or 1, {heads}, {query.shape[3]}, "
                             f"{2 * frames - 1}] for query {query.shape}, got {keys.shape}")
    else:
        position = inputs[1]
        keep = inputs[2] if len(inputs) > 2 else None
        if position.ndim != 4 or position.shape[0] not in (1, batch) or position.shape[1:] != (heads, frames,
                                                                                               2 * frames - 1):
            raise GraphError(f"RelPositionSoftmax: position must be [{batch} or 1, {heads}, {frames}, "
                             f"{2 * frames - 1}] for content {content.shape}, got {position.shape}")
    if keep is not None and (keep.dtype != np.bool_ or keep.ndim != 4 or keep.shape[0] not in (1, batch)
                             or keep.shape[1:] != (1, frames, frames)):
        raise GraphError(f"RelPositionSoftmax: keep must be bool [{batch} or 1, 1, {frames}, {frames}], got "
                         f"{keep.dtype} {keep.shape}")
    scale = float(attrs.get("scale", 1.0))
    if not scale > 0:
        raise GraphError(f"RelPositionSoftmax: scale must be > 0, got {scale}")
    out = ctx.output(content.shape, np.float32)
    if out.size:
        keep = NO_MASK if keep is None else np.ascontiguousarray(keep)
        scale, masked = np.float32(scale), np.float32(attrs.get("masked_value", -10000.0))
        content = np.ascontiguousarray(content, np.float32)
        if attrs.get("position_product", 0):
            query, keys = np.ascontiguousarray(query, np.float32), np.ascontiguousarray(keys, np.float32)
            if product_in_kernel(frames):
                rel_position_product_softmax_rows(content, query, keys, keep, scale, masked, out)
                return [out]
            shape = (max(query.shape[0], keys.shape[0]),) + query.shape[1:3] + (keys.shape[3],)
            position = np.matmul(query, keys, out=ctx.output(shape, np.float32))
        rel_position_softmax_rows(content, np.ascontiguousarray(position, np.float32), keep, scale, masked, out)
    return [out]
