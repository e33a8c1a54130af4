"""Relative-position attention weights in one pass per row (Transformer-XL / NeMo ``rel_pos``).

weights = Where(keep, softmax(Where(keep, (content + rel_shift(position)) / scale, masked)), 0), where
rel_shift(position)[.., i, j] = position[.., i, T - 1 - i + j] (NeMo's pad-reshape-slice trick).  As separate
ops that is ten passes over [B, heads, T, T] and [B, heads, T, 2T - 1] arrays and two copies for the shift;
here each output row is read, shifted, masked, normalised and written once.  The order of the float32
operations is the unfused chain's (add, divide, then the softmax), so only the softmax's sum order and exp
(kernels/vector_math.exp32, within 1 ulp, vectorised) differ.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.types import Array, boolean, float32, void

from tinyasr.kernels.vector_math import CONTRACT, exp32, lane_max, lane_sum

READ_4D = Array(float32, 4, "C", readonly=True)
READ_MASK = Array(boolean, 4, "C", readonly=True)


@njit(void(READ_4D, READ_4D, READ_MASK, float32, float32, float32[:, :, :, ::1]), cache=True, error_model="numpy",
      fastmath=CONTRACT)
def rel_position_softmax_rows(content, position, keep, scale, masked, out):
    """content [B, H, T, T], position [B or 1, H, T, 2T - 1], keep [B or 1, 1, T, T] (size 0: none) -> out.
    Each row in passes LLVM vectorises (``error_model="numpy"``: no ZeroDivisionError branch in the divide):
    scores, max, exp, sum, scale."""
    batch, heads, frames = content.shape[0], content.shape[1], content.shape[2]
    masking = keep.size > 0
    everything = np.ones(frames, np.bool_)
    for b in range(batch):
        pb = b if position.shape[0] > 1 else 0
        kb = b if masking and keep.shape[0] > 1 else 0
        for h in range(heads):
            for i in range(frames):
                row, shifted, y = content[b, h, i], position[pb, h, i], out[b, h, i]
                valid = keep[kb, 0, i] if masking else everything
                offset = frames - 1 - i
                for j in range(frames):
                    v = (row[j] + shifted[offset + j]) / scale
                    y[j] = v if valid[j] else masked
                top = lane_max(y)
                for j in range(frames):
                    y[j] = exp32(y[j] - top)
                inverse = np.float32(1.0) / lane_sum(y)
                for j in range(frames):
                    y[j] = y[j] * inverse if valid[j] else np.float32(0.0)


def rel_position_softmax_reference(content, position, keep, scale, masked) -> np.ndarray:
    """The unfused numpy chain, as NeMo writes it."""
    frames = content.shape[-1]
    padded = np.pad(position, [(0, 0)] * 3 + [(1, 0)])
    b, h = padded.shape[:2]
    shifted = padded.reshape(b, h, -1, frames)[:, :, 1:].reshape(position.shape)[..., :frames]
    scores = (content + shifted) / np.float32(scale)
    if keep is None:
        keep = np.ones((1, 1, frames, frames), bool)
    scores = np.where(keep, scores, np.float32(masked))
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.where(keep, weights, np.float32(0)).astype(np.float32)
