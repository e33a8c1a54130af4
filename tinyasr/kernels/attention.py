"""Relative-position attention weights in one pass per row (Transformer-XL / NeMo ``rel_pos``).

weights = Where(keep, softmax(Where(keep, (content + rel_shift(position)) / scale, masked)), 0), where
rel_shift(position)[.., i, j] = position[.., i, T - 1 - i + j] (NeMo's pad-reshape-slice trick).  As separate
ops that is ten passes over [B, heads, T, T] and [B, heads, T, 2T - 1] arrays and two copies for the shift;
here each output row is read, shifted, masked, normalised and written once.  The order of the float32
operations is the unfused chain's (add, divide, then the softmax), so only the softmax's sum order and exp
(kernels/vector_math.exp32, within 1 ulp, vectorised) differ.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import carray, njit
from numba.types import Array, boolean, float32, void

from tinyasr.kernels import tuning
from tinyasr.kernels._compile import element_pointer, stack_buffer, vector_fma
from tinyasr.kernels.vector_math import CONTRACT, exp32, lane_max, lane_total

READ_4D = Array(float32, 4, "C", readonly=True)
READ_MASK = Array(boolean, 4, "C", readonly=True)
CHUNK = 64  # scores of a row computed together in vector registers: 8 of AVX2's 16, 16 of NEON's 32, 4 AVX-512
# The product kernel or BLAS's full [T, 2T - 1] product and the row kernel is chosen per CPU by timing both on
# these shapes (heads, d_k, T), the short one for inputs below SHORT_FRAMES encoder frames: once per CPU, cached
# (tuning.py); the long one takes ~0.6 s on the first input that needs it (AMD EPYC Zen 3).
CALIBRATION_SHAPES = ((4, 24, 256), (4, 24, 768))
SHORT_FRAMES = 512


@njit(inline="always")
def _weights_row(row, shifted, valid, scale, masked, y):
    """y = Where(valid, softmax(Where(valid, (row + shifted) / scale, masked)), 0) for one query's row (``shifted``
    already at the rel-shift's offset; it may be y itself)."""
    for j in range(row.shape[0]):
        v = (row[j] + shifted[j]) / scale
        y[j] = v if valid[j] else masked
    _softmax_row(y, valid)


@njit(inline="always")
def _softmax_row(y, valid):
    """y = Where(valid, softmax(y), 0) in place: the max, then exp and sum in one pass (the sum in lane_sum's eight
    interleaved lanes and order, one lane per element of each block of eight), then the scale."""
    frames = y.shape[0]
    top = lane_max(y)
    body = frames - frames % 8
    sums = carray(stack_buffer(8), (8,))
    for lane in range(8):
        sums[lane] = 0.0
    for j in range(0, body, 8):
        block = carray(element_pointer(y, j), (8,))
        for lane in range(8):
            e = exp32(block[lane] - top)
            block[lane] = e
            sums[lane] += e
    tail = np.float32(0.0)
    for j in range(body, frames):
        e = exp32(y[j] - top)
        y[j] = e
        tail += e
    total = lane_total(sums[0], sums[1], sums[2], sums[3], sums[4], sums[5], sums[6], sums[7], tail)
    inverse = np.float32(1.0) / total
    for j in range(frames):
        y[j] = y[j] * inverse if valid[j] else np.float32(0.0)


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
                valid = keep[kb, 0, i] if masking else everything
                _weights_row(content[b, h, i], position[pb, h, i, frames - 1 - i:], valid, scale, masked,
                             out[b, h, i])


@njit(inline="always")
def _chunk_scores(acc, row, y, valid, j0, n, scale, masked):
    """y[j0 + j] = Where(valid, (row + acc) / scale, masked) at j0 + j for j < n: a chunk's scores out of the
    registers holding its position scores (n a constant for whole chunks, so the loop vectorises unrolled)."""
    content, out, keep = carray(element_pointer(row, j0), (n,)), carray(element_pointer(y, j0), (n,)), \
        carray(element_pointer(valid, j0), (n,))
    for j in range(n):
        v = (content[j] + acc[j]) / scale
        out[j] = v if keep[j] else masked


@njit(void(READ_4D, READ_4D, READ_4D, READ_MASK, float32, float32, float32[:, :, :, ::1]), cache=True,
      error_model="numpy", fastmath=CONTRACT)
def rel_position_product_softmax_rows(content, query, keys, keep, scale, masked, out):
    """``rel_position_softmax_rows`` with the position scores computed here, only the T of each row's 2T - 1 that
    the rel-shift keeps: position[b, h, i, T - 1 - i + j] = query[b, h, i] . keys[b, h, :, T - 1 - i + j], for
    query [B or 1, H, T, d] and keys [B or 1, H, d, 2T - 1] (NeMo's (q + v) and p^T).  The product NeMo exports
    computes all 2T - 1 and writes them out ([B, H, T, 2T - 1], 2 MB a layer at 10 s) for the shift to drop half.

    A row's scores are computed CHUNK at a time in CHUNK / 8 vector registers, each summing its d products in
    order (vector_fma, read with inspect_asm: eight fused multiply-adds with memory operands and one broadcast per
    key row), then turned into the masked, scaled scores as they leave the registers.  The keys are copied once
    per head into rows CHUNK zeros longer, so that the last chunk of a row may read past its end.  At T = 250, 4
    heads of 22 (AMD EPYC Zen 3): 0.68 -> 0.55 ms a layer; the four-key-rows-per-pass loop this replaced loaded
    and stored each score for every four multiply-adds."""
    batch, heads, frames = content.shape[0], content.shape[1], content.shape[2]
    depth, positions = query.shape[3], keys.shape[3]
    width = positions + CHUNK
    padded = np.zeros((depth, width), np.float32)
    masking = keep.size > 0
    everything = np.ones(frames, np.bool_)
    for b in range(batch):
        qb = b if query.shape[0] > 1 else 0
        pb = b if keys.shape[0] > 1 else 0
        kb = b if masking and keep.shape[0] > 1 else 0
        for h in range(heads):
            for k in range(depth):
                padded[k, :positions] = keys[pb, h, k]
            for i in range(frames):
                q, offset = query[qb, h, i], frames - 1 - i
                y, row = out[b, h, i], content[b, h, i]
                valid = keep[kb, 0, i] if masking else everything
                for j0 in range(0, frames, CHUNK):
                    acc = carray(stack_buffer(CHUNK), (CHUNK,))
                    for t in range(CHUNK):
                        acc[t] = 0.0
                    for k in range(depth):
                        qk, base = q[k], k * width + offset + j0
                        for v in range(0, CHUNK, 8):
                            vector_fma(element_pointer(acc, v), qk, element_pointer(padded, base + v), 8)
                    n = min(CHUNK, frames - j0)
                    if n == CHUNK:
                        _chunk_scores(acc, row, y, valid, j0, CHUNK, scale, masked)
                    else:
                        _chunk_scores(acc, row, y, valid, j0, n, scale, masked)
                _softmax_row(y, valid)


def product_in_kernel(frames: int) -> bool:
    """Whether ``rel_position_product_softmax_rows`` measured faster on this CPU than numpy's BLAS product over
    all 2T - 1 positions followed by ``rel_position_softmax_rows``, at the calibration size nearest ``frames``.
    AMD EPYC Zen 3, 4 heads of 22: at T = 250 the kernel 0.54 ms a layer against 0.65 (BLAS's product 0.33 and
    the row kernel 0.32); at T = 1500 the kernel wins more (25 against 35-38 ms before its registers version:
    half the multiply-adds and no [H, T, 2T - 1] array)."""
    return _product_in_kernel(CALIBRATION_SHAPES[0] if frames < SHORT_FRAMES else CALIBRATION_SHAPES[1])


@functools.cache
def _product_in_kernel(shape) -> bool:
    heads, depth, frames = shape
    rng = np.random.default_rng(0)
    content = rng.standard_normal((1, heads, frames, frames), dtype=np.float32)
    query = rng.standard_normal((1, heads, frames, depth), dtype=np.float32)
    keys = rng.standard_normal((1, heads, depth, 2 * frames - 1), dtype=np.float32)
    position = np.empty((1, heads, frames, 2 * frames - 1), np.float32)
    out, keep, scale, masked = np.empty_like(content), np.zeros((0, 1, 0, 0), np.bool_), np.float32(5), np.float32(-1e4)

    def blas():
        np.matmul(query, keys, out=position)
        rel_position_softmax_rows(content, position, keep, scale, masked, out)

    def kernel():
        rel_position_product_softmax_rows(content, query, keys, keep, scale, masked, out)

    family = f"rel_position_product heads={heads} d={depth} T={frames}"
    return tuning.fastest(family, {"blas": blas, "kernel": kernel},
                          *tuning.cache_of(rel_position_product_softmax_rows)) == "kernel"


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
