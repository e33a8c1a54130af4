"""Ternary 1x1 convolution kernels: y = act(scale * (sum of +1 inputs - sum of -1 inputs) + bias + residual).

Two variants share the inner loops (``_row_tile``, ``_gather_row``), so they return identical bits:

* ``ternary_regenerate``: the pattern of each block of ROWS_PER_TASK output rows is regenerated from
  the seed (splitmix64, the generator of docs/ternary.md) into small scratch lists.  No index memory.
* ``ternary_index``: the pattern was expanded once into uint16 +1 / -1 column lists (``expand_lists``).

Multiplication-free: input rows are added or subtracted, four per pass, into a tile of 64 frames
held in registers (time is the contiguous inner loop), then one multiply by the channel's scale.
Summation order is fixed (+1 columns ascending, then -1 columns ascending); no fastmath.  Bias,
residual and activation follow in one pass of the shared epilogue (``epilogue_rows``): calling
``finish_row`` per row inside these kernels measured 3x slower at T = 1 (a non-inlined call with
array views per row); the extra pass costs < 5 % at T = 1000.

Which variant runs: ``mode`` argument, else ``set_mode``, else ``TINYASR_TERNARY`` (memory | speed |
auto), else auto: cached lists if present; for short inputs (T < AUTO_INDEX_BELOW_FRAMES, where the
per-row hashing is not amortised) expand and cache them; otherwise regenerate.
"""

from __future__ import annotations

import os

import numpy as np
from numba import carray, njit
from numba.types import Array, float32, int32, int64, uint16, uint64, void

from tinyasr.errors import GraphError, TinyASRError
from tinyasr.format.encodings.ternary import (
    GOLDEN_GAMMA,
    MIX_MUL1,
    MIX_MUL2,
    MIX_SHIFTS,
    IndexLists,
    TernaryWeight,
    block_width,
    is_plain_pointwise,
)
from tinyasr.kernels._compile import TILE, serial_and_parallel, stack_buffer
from tinyasr.kernels.epilogue import (
    activation_code,
    as_float32,
    bias_act_reference,
    check_bias_residual,
    epilogue_rows,
)

MODES = ("auto", "memory", "speed")
ENV_VAR = "TINYASR_TERNARY"
AUTO_INDEX_BELOW_FRAMES = 256  # measured: regenerating costs 1.3-1.7x the index lists at T = 64, 1.0-1.3x from 256 on
GATHER_BELOW_FRAMES = 12  # measured: below this, summing frame by frame beats a vector loop per input row
ROWS_PER_TASK = 64  # output rows regenerated together; each tile of x then serves them all from cache

# Kernel inputs are typed read-only: stored index lists and scales are views of the read-only memory map.
# Writable arrays match the same signature (Numba converts writable to read-only), so nothing is copied or
# re-viewed per call (making read-only views of the six arguments each call cost 2 us, 10 % at 64 frames).
_X = Array(float32, 3, "C", readonly=True)
_INDEX = Array(uint16, 1, "C", readonly=True)
_PTR = Array(int32, 1, "C", readonly=True)
_SCALES = Array(float32, 1, "C", readonly=True)

_GAMMA, _MUL1, _MUL2 = np.uint64(GOLDEN_GAMMA), np.uint64(MIX_MUL1), np.uint64(MIX_MUL2)
_S1, _S2, _S3 = (np.uint64(s) for s in MIX_SHIFTS)


# ---------------------------------------------------------------------------------------------
# The generator (Numba); bit-identical to tinyasr.format.encodings.ternary's numpy reference
# ---------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def mix64(z):
    """splitmix64's output function; uint64 arithmetic wraps modulo 2**64."""
    z = (z ^ (z >> _S1)) * _MUL1
    z = (z ^ (z >> _S2)) * _MUL2
    return z ^ (z >> _S3)


@njit(cache=True, inline="always")
def generate_row(key, row, in_channels, width, plus, minus, hashes):
    """Columns of row ``row`` holding +1 into ``plus``, -1 into ``minus`` (ascending); returns the two counts.

    ``hashes`` (uint64, >= nblocks) is scratch: hashing first, in a loop of its own, lets LLVM vectorise
    it (1.45x faster).  The second loop is branch-free (a random sign would mispredict half the time):
    every column is written to both lists and only the count of its sign advances.
    """
    nblocks = (in_channels + width - 1) // width
    base = key + np.uint64(row * nblocks) * _GAMMA
    for b in range(nblocks):
        hashes[b] = mix64(base + np.uint64(b + 1) * _GAMMA)
    n_plus = 0
    n_minus = 0
    for b in range(nblocks):
        h = hashes[b]
        start = b * width
        span = np.uint64(min(width, in_channels - start))
        col = start + np.int64(((h >> np.uint64(32)) * span) >> np.uint64(32))
        negative = np.int64(h & np.uint64(1))
        plus[n_plus] = col
        minus[n_minus] = col
        n_plus += 1 - negative
        n_minus += negative
    return n_plus, n_minus


@njit(cache=True, inline="always")
def layer_key(seed, layer_id):
    return mix64(seed + (layer_id + np.uint64(1)) * _GAMMA)


@njit("void(uint64, uint64, int64, int8[:, ::1])", cache=True)
def generate_matrix(seed, layer_id, width, matrix):
    """Fill the int8 [out, in] matrix with the layer's pattern (the Numba generator end to end)."""
    out_channels, in_channels = matrix.shape
    key = layer_key(seed, layer_id)
    plus = np.empty(in_channels, np.uint16)
    minus = np.empty(in_channels, np.uint16)
    hashes = np.empty(in_channels, np.uint64)
    matrix[:, :] = 0
    for r in range(out_channels):
        n_plus, n_minus = generate_row(key, r, in_channels, width, plus, minus, hashes)
        for k in range(n_plus):
            matrix[r, plus[k]] = 1
        for k in range(n_minus):
            matrix[r, minus[k]] = -1


@njit("void(uint64, uint64, int64, int64, uint16[::1], int32[::1], uint16[::1], int32[::1])", cache=True)
def expand_lists(seed, layer_id, in_channels, width, plus, plus_ptr, minus, minus_ptr):
    """Expand the pattern into +1 / -1 index lists; plus and minus have room for out * nblocks entries."""
    key = layer_key(seed, layer_id)
    hashes = np.empty(in_channels, np.uint64)
    n_plus = 0
    n_minus = 0
    plus_ptr[0] = 0
    minus_ptr[0] = 0
    for r in range(plus_ptr.shape[0] - 1):
        a, b = generate_row(key, r, in_channels, width, plus[n_plus:], minus[n_minus:], hashes)
        n_plus += a
        n_minus += b
        plus_ptr[r + 1] = n_plus
        minus_ptr[r + 1] = n_minus


# ---------------------------------------------------------------------------------------------
# The hot loop and the two kernels
# ---------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _add_rows(acc, x, columns, t0, n, subtract):
    """acc[:n] += (or -=) the sum of x[c, t0:t0+n] over ``columns``, four input rows per pass.

    ``subtract`` is a constant at every call site, so after inlining each call keeps one branch."""
    k, end = 0, columns.shape[0]
    while k + 4 <= end:
        x0, x1 = x[np.int64(columns[k]), t0:t0 + n], x[np.int64(columns[k + 1]), t0:t0 + n]
        x2, x3 = x[np.int64(columns[k + 2]), t0:t0 + n], x[np.int64(columns[k + 3]), t0:t0 + n]
        if subtract:
            for t in range(n):
                acc[t] -= (x0[t] + x1[t]) + (x2[t] + x3[t])
        else:
            for t in range(n):
                acc[t] += (x0[t] + x1[t]) + (x2[t] + x3[t])
        k += 4
    while k < end:
        x0 = x[np.int64(columns[k]), t0:t0 + n]
        if subtract:
            for t in range(n):
                acc[t] -= x0[t]
        else:
            for t in range(n):
                acc[t] += x0[t]
        k += 1


@njit(cache=True, inline="always")
def _gather_row(x, r, plus, minus, scale, y):
    """Output row r of every batch item, one frame at a time (short inputs: a vector loop per input row
    would not pay).  Same summation order as _tiled_row."""
    for b in range(x.shape[0]):
        for t in range(x.shape[2]):
            s = np.float32(0.0)
            for k in range(plus.shape[0]):
                s += x[b, np.int64(plus[k]), t]
            for k in range(minus.shape[0]):
                s -= x[b, np.int64(minus[k]), t]
            y[b, r, t] = s * scale


@njit(cache=True, inline="always")
def _row_tile(acc, x_b, plus, minus, scale, y_row, t0):
    """y_row[t0:t0+n] = scale * (sum over plus of x_b[c, t0:t0+n] - sum over minus ...), n <= TILE frames.

    The tile is summed in a stack buffer: LLVM keeps a full tile in vector registers across the
    non-zeros (the technique of tinyasr.kernels.sparse).
    """
    n = min(TILE, y_row.shape[0] - t0)
    for t in range(n):
        acc[t] = 0.0
    if n == TILE:  # a constant width: the tile lives in registers
        _add_rows(acc, x_b, plus, t0, TILE, False)
        _add_rows(acc, x_b, minus, t0, TILE, True)
    else:
        _add_rows(acc, x_b, plus, t0, n, False)
        _add_rows(acc, x_b, minus, t0, n, True)
    for t in range(n):
        y_row[t0 + t] = acc[t] * scale


@serial_and_parallel(void(_X, uint64, uint64, int64, _SCALES, float32[:, :, ::1]))
def ternary_regenerate(loop):
    """y [B, out, T] from x [B, in, T], regenerating the pattern from (seed, layer_id, width).

    Work items are blocks of ROWS_PER_TASK output rows: their patterns are generated once into
    scratch lists, then every tile of frames serves all the block's rows while it is in cache.
    """

    def kernel(x, seed, layer_id, width, scales, y):
        in_channels, out_channels, frames = x.shape[1], y.shape[1], x.shape[2]
        key = layer_key(seed, layer_id)
        nblocks = (in_channels + width - 1) // width
        for task in loop((out_channels + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
            first = task * ROWS_PER_TASK
            rows = min(ROWS_PER_TASK, out_channels - first)
            plus = np.empty((rows, nblocks), np.uint16)
            minus = np.empty((rows, nblocks), np.uint16)
            n_plus = np.empty(rows, np.int64)
            n_minus = np.empty(rows, np.int64)
            hashes = np.empty(nblocks, np.uint64)
            for i in range(rows):
                n_plus[i], n_minus[i] = generate_row(key, first + i, in_channels, width, plus[i], minus[i], hashes)
            if frames < GATHER_BELOW_FRAMES:
                for i in range(rows):
                    _gather_row(x, first + i, plus[i, :n_plus[i]], minus[i, :n_minus[i]], scales[first + i], y)
                continue
            acc = carray(stack_buffer(TILE), (TILE,))
            for b in range(x.shape[0]):
                x_b = x[b]
                for t0 in range(0, frames, TILE):
                    for i in range(rows):
                        _row_tile(acc, x_b, plus[i, :n_plus[i]], minus[i, :n_minus[i]], scales[first + i],
                                  y[b, first + i], t0)

    return kernel


@serial_and_parallel(void(_X, _INDEX, _PTR, _INDEX, _PTR, _SCALES, float32[:, :, ::1]))
def ternary_index(loop):
    """y [B, out, T] from x [B, in, T] and the +1 / -1 column lists of each output row.

    Work items are (batch, tile, row), tile-major, so one tile of x serves every row from cache."""

    def kernel(x, plus, plus_ptr, minus, minus_ptr, scales, y):
        batch, frames, out_channels = x.shape[0], x.shape[2], y.shape[1]
        if frames < GATHER_BELOW_FRAMES:
            for r in loop(out_channels):
                _gather_row(x, r, plus[plus_ptr[r]:plus_ptr[r + 1]], minus[minus_ptr[r]:minus_ptr[r + 1]],
                            scales[r], y)
            return
        tiles = (frames + TILE - 1) // TILE
        for item in loop(batch * tiles * out_channels):
            acc = carray(stack_buffer(TILE), (TILE,))
            r = item % out_channels
            b = item // (tiles * out_channels)
            t0 = (item // out_channels - b * tiles) * TILE
            _row_tile(acc, x[b], plus[plus_ptr[r]:plus_ptr[r + 1]], minus[minus_ptr[r]:minus_ptr[r + 1]], scales[r],
                      y[b, r], t0)

    return kernel


# ---------------------------------------------------------------------------------------------
# Python side: mode, expansion cache, the public entry point and its numpy reference
# ---------------------------------------------------------------------------------------------


def _checked_mode(mode, where):
    if mode not in MODES:
        raise TinyASRError(f"{where}: ternary mode {mode!r} is not one of {', '.join(MODES)}")
    return mode


_mode = _checked_mode(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", f"environment variable {ENV_VAR}")


def set_mode(mode: str) -> None:
    """Process-wide default: "memory" (always regenerate), "speed" (always index lists) or "auto"."""
    global _mode
    _mode = _checked_mode(mode, "set_mode")


def get_mode() -> str:
    return _mode


def weight_lists(weight: TernaryWeight) -> IndexLists:
    """The weight's index lists, expanded by the Numba generator on first use and cached on the weight."""
    if weight.lists is None:
        capacity = weight.out_channels * -(-weight.in_channels // block_width(weight.density))
        plus, minus = np.empty(capacity, np.uint16), np.empty(capacity, np.uint16)
        plus_ptr, minus_ptr = np.empty(weight.out_channels + 1, np.int32), np.empty(weight.out_channels + 1, np.int32)
        expand_lists(np.uint64(weight.seed), np.uint64(weight.layer_id), weight.in_channels,
                     block_width(weight.density), plus, plus_ptr, minus, minus_ptr)
        weight.lists = IndexLists(plus[: plus_ptr[-1]].copy(), plus_ptr, minus[: minus_ptr[-1]].copy(), minus_ptr)
    return weight.lists


def uses_index_lists(weight: TernaryWeight, frames: int, mode=None) -> bool:
    """Whether a call with ``frames`` frames runs from index lists (True) or regenerates (False)."""
    mode = _mode if mode is None else _checked_mode(mode, "ternary_pointwise")
    if weight.seed is None or mode == "speed":
        return True
    if mode == "memory":
        return False
    return weight.lists is not None or frames < AUTO_INDEX_BELOW_FRAMES


def ternary_pointwise(x, weight: TernaryWeight, bias=None, residual=None, activation="", activation_params=(),
                      mode=None, out=None) -> np.ndarray:
    """y = act(conv1x1(x, weight) + bias + residual) for x float32 [B, in, T]; returns y [B, out, T].

    ``mode``: None (the process default, see module docstring), "memory", "speed" or "auto".
    """
    where = "Conv (ternary)"
    x = as_float32(x, "input", where)
    if x.ndim != 3 or x.shape[1] != weight.in_channels:
        raise GraphError(f"{where}: input has shape {x.shape}, expected [batch, {weight.in_channels}, time]")
    shape = (x.shape[0], weight.out_channels, x.shape[2])
    act, lo, hi = activation_code(activation, activation_params, where)
    bias, residual = (a if a.flags.writeable else a.copy()  # the epilogue's signature takes writable arrays
                      for a in check_bias_residual(bias, residual, shape, where))
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise GraphError(f"{where}: out must be a C-contiguous float32 array of shape {shape}")
    scales = np.ascontiguousarray(weight.scales, np.float32)
    if out.size == 0:
        return out
    if uses_index_lists(weight, x.shape[2], mode):
        lists = weight_lists(weight)
        ternary_index(out.size, x, *lists, scales, out)
    else:
        ternary_regenerate(out.size, x, np.uint64(weight.seed), np.uint64(weight.layer_id),
                           block_width(weight.density), scales, out)
    if act or bias.size or residual.size:
        epilogue_rows(out.size, out, bias, residual, act, lo, hi)
    return out


def ternary_pointwise_reference(x, weight: TernaryWeight, bias=None, residual=None, activation="",
                                activation_params=()) -> np.ndarray:
    """numpy reference (tests/test_ternary.py checks both kernels against it): the pattern expanded by the numpy
    generator, not the Numba one, a dense float64 matmul instead of the multiplication-free sums, then the
    epilogue's numpy reference."""
    y = np.einsum("oi,bit->bot", weight.pattern().astype(np.float64), np.asarray(x, np.float64))
    y = (y * np.asarray(weight.scales, np.float64)[:, None]).astype(np.float32)
    return bias_act_reference(y, bias, residual, activation, activation_params)


def ternary_conv(ctx, inputs, attrs):
    """The Conv op for a TernaryWeight (called by ops/conv.py): a plain 1x1 conv with the fused epilogue."""
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    residual = inputs[3] if len(inputs) > 3 else None
    if not is_plain_pointwise(attrs):
        raise GraphError(f"Conv: a ternary weight {list(weight.shape)} needs a plain 1x1 conv (group 1, stride 1, "
                         f"dilation 1, no padding), got attributes {attrs}")
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.dtype != np.float32:
        raise GraphError(f"Conv: needs a float32 input [N, C, T], got {getattr(x, 'dtype', type(x))} "
                         f"{getattr(x, 'shape', '')}")
    out = ctx.output((x.shape[0], weight.out_channels, x.shape[2]), np.float32)
    return [ternary_pointwise(x, weight, bias, residual, attrs.get("activation", ""),
                              attrs.get("activation_params", ()), out=out)]
