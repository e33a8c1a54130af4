"""The sequential part of LSTM and GRU: the recurrent product and the gates, one frame at a time.

The ops (tinyasr/ops/recurrent.py) compute the input projection for all frames at once (one matrix product,
both biases added); these kernels then walk one direction over the frames.  Per frame and batch row they
add ``R @ h`` to the frame's pre-activations and apply the gate nonlinearities in the same pass, so the gates
never make a round trip through memory.

``R @ h`` at one frame is a matrix x vector product, memory-bound: its cost is the bytes of R read.  R comes
either dense, transposed to [H, G*H] so the product is a sum of columns (``acc += R_T[k] * h[k]``: the
inner loop is contiguous and vectorises without reassociation), or sparse in one of two forms, passed as
(values, indices, indptr) and told apart by indptr's length:

* CSR over the G*H gate rows (uint16 column indices, G*H + 1 row pointers): any pattern, but each non-zero
  is a scalar gather ``h[index]``: about 0.5 ns a non-zero on an EPYC (Zen 3) whatever the matrix's size, so
  at 90 % the step is only 1.4-2x faster than dense (R fits the caches: the product is bound by loads, not
  bytes);
* column blocks (:func:`column_blocks`): R pruned in blocks of ``BLOCK`` = 8 consecutive gate rows x one
  column, stored by column (P + 1 column pointers, uint16 block-row indices, 8 values a block): column k
  adds ``values[b] * h[k]`` to 8 consecutive gates, one 8-lane fused multiply-add with no gather
  (:func:`_axpy_lanes`): at 90 % block sparsity the step is several times faster than dense
  (benchmarks/results/recurrent.md).  Needs H a multiple of 8.

The unused forms are passed empty.  :func:`recurrent_operands` picks them from R as the model file holds it:
a dense array, a ``csr`` weight, or a ``bsr`` one of 8 x 1 blocks (stored by block rows, reordered by column
once per weight here); any other encoding runs dense (decoded once).

ONNX gate orders: LSTM i, o, f, c; GRU z, r, h.  Activations are the ONNX defaults (sigmoid, tanh), the
ones torch and NeMo export, both from kernels/vector_math.exp32 so the gate loops vectorise (within ~2e-7 of
numpy's); ``clip`` (0: none) bounds every gate pre-activation, as onnxruntime does.
``numpy`` references of both cells are in ``lstm_reference`` / ``gru_reference`` (tests compare the
kernels with them and with torch).
"""

from __future__ import annotations

import weakref
from typing import Tuple

import llvmlite.ir as llvm_ir
import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.types import Array, boolean, float32, int32, int64, uint16, void

from tinyasr.format.encodings.sparse import BSRMatrix, CSRMatrix, as_dense, bsr_arrays
from tinyasr.kernels._compile import copy_elements, element_pointer, stack_buffer, vector_fma
from tinyasr.kernels.vector_math import exp32

READ_1D = Array(float32, 1, "C", readonly=True)
READ_2D = Array(float32, 2, "C", readonly=True)
READ_3D = Array(float32, 3, "C", readonly=True)
READ_INDEX = Array(uint16, 1, "C", readonly=True)
READ_PTR = Array(int32, 1, "C", readonly=True)
READ_LENGTHS = Array(int64, 1, "C", readonly=True)

EMPTY_DENSE = np.zeros((0, 0), np.float32)
EMPTY_CSR = (np.zeros(0, np.float32), np.zeros(0, np.uint16), np.zeros(1, np.int32))
BLOCK = 8  # gate rows per block of the column-blocked form: one 8-lane multiply-add


def column_blocks(r: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R [G*H, P] -> (values [blocks * 8], block-row indices uint16, column pointers int32 [P + 1]): the blocks
    of 8 consecutive rows x 1 column holding any non-zero, column by column (BSR of R^T with 1 x 8 blocks)."""
    if r.ndim != 2 or r.shape[0] % BLOCK:
        raise ValueError(f"column blocks need R with a multiple of {BLOCK} rows, got shape {r.shape}")
    values, columns, indptr = bsr_arrays(np.asarray(r, np.float32), (BLOCK, 1))
    return _by_column(values, columns, indptr, 0, r.shape[0] // BLOCK, r.shape[1])


def _by_column(values, columns, indptr, first_block_row, stop_block_row, width):
    """The column-blocked form of block rows [first, stop) of a BSR matrix of 8 x 1 blocks (values [n, 8, 1],
    block columns, block-row pointers, all checked at load): the same blocks reordered by column, their block
    rows counted from ``first_block_row``."""
    start, stop = int(indptr[first_block_row]), int(indptr[stop_block_row])
    rows = np.repeat(np.arange(stop_block_row - first_block_row), np.diff(indptr[first_block_row:stop_block_row + 1]))
    columns = np.asarray(columns[start:stop], np.int64)
    order = np.argsort(columns, kind="stable")  # by column; block rows stay increasing within one
    pointers = np.zeros(width + 1, np.int32)
    np.cumsum(np.bincount(columns, minlength=width), out=pointers[1:])
    return (np.ascontiguousarray(values[start:stop].reshape(-1, BLOCK)[order].reshape(-1)),
            rows[order].astype(np.uint16), pointers)


_OPERANDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # encoded R -> its per-direction operands


def recurrent_operands(r, direction: int):
    """(dense R^T [P, G*H] or empty, values, indices, indptr) of one direction of R, for the kernels.

    ``r``: an ONNX R [directions, G*H, P] or a prediction network's [G*H, P] (one direction; its input weight W
    [G*H, I] too, run by :func:`add_product`), dense or as the file decoded it.  ``csr`` and 8 x 1 ``bsr``
    weights whose matrix rows are the gate rows of all directions (row_axes = rank - 1) and whose indices fit
    uint16 run sparse: CSR rows of the direction (a slice of the row pointers: positions stay absolute), or its
    blocks reordered by column (built once per weight, cached while the weight lives).  Anything else runs
    dense."""
    if isinstance(r, (CSRMatrix, BSRMatrix)) and r.row_axes == len(r.shape) - 1 and r.indices.dtype == np.uint16:
        gate_rows, width = r.shape[-2], r.shape[-1]
        # the kernels tell CSR from column blocks by indptr's length (rows + 1 or width + 1): a square CSR (an
        # input weight W as wide as its gate rows) would read as column blocks, so it runs dense
        if isinstance(r, CSRMatrix) and gate_rows != width:
            return (EMPTY_DENSE, r.values, r.indices,
                    r.indptr[direction * gate_rows:(direction + 1) * gate_rows + 1])
        blocked = isinstance(r, BSRMatrix) and r.block == (BLOCK, 1) and gate_rows % BLOCK == 0
        if blocked and gate_rows // BLOCK <= 65536:  # block rows as uint16
            per_direction = _OPERANDS.get(r)
            if per_direction is None:
                per_direction = _OPERANDS[r] = tuple(
                    _by_column(r.values, r.indices, r.indptr, d * gate_rows // BLOCK, (d + 1) * gate_rows // BLOCK,
                               width) for d in range(int(np.prod(r.shape[:-2], dtype=np.int64))))
            return (EMPTY_DENSE,) + per_direction[direction]
    dense = as_dense(r)
    matrix = dense[direction] if dense.ndim == 3 else dense
    return (np.ascontiguousarray(matrix.T, np.float32),) + EMPTY_CSR


@intrinsic
def _axpy_lanes(typingctx, out, base, values, start, x):
    """out[base:base + 8] += values[start:start + 8] * x: one 8-lane fused multiply-add in LLVM's generic vector
    IR (AVX2: one instruction; NEON: two), with no alias check between out and values (they never overlap
    here) that would keep LLVM from vectorising the loop.  The caller keeps both ranges inside their arrays."""
    if not (isinstance(out, types.Array) and out.dtype == types.float32 and isinstance(values, types.Array)
            and values.dtype == types.float32 and base == types.uint64 and start == types.uint64
            and x == types.float32):
        return None

    def codegen(context, builder, signature, args):
        out_array, base, values_array, start, x = args
        lanes = llvm_ir.VectorType(llvm_ir.FloatType(), BLOCK)
        fma = cgutils.get_or_insert_function(builder.module, llvm_ir.FunctionType(lanes, [lanes] * 3),
                                             f"llvm.fma.v{BLOCK}f32")
        out_data = context.make_array(signature.args[0])(context, builder, out_array).data
        values_data = context.make_array(signature.args[2])(context, builder, values_array).data
        target = builder.bitcast(builder.gep(out_data, [base]), lanes.as_pointer())
        source = builder.bitcast(builder.gep(values_data, [start]), lanes.as_pointer())
        splat = builder.insert_element(llvm_ir.Constant(lanes, llvm_ir.Undefined), x, llvm_ir.IntType(32)(0))
        splat = builder.shuffle_vector(splat, llvm_ir.Constant(lanes, llvm_ir.Undefined),
                                       llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), BLOCK), [0] * BLOCK))
        total = builder.call(fma, [builder.load(source, align=4), splat, builder.load(target, align=4)])
        builder.store(total, target, align=4)
        return context.get_dummy_value()

    return types.void(out, base, values, start, x), codegen


@njit(inline="always", fastmath={"contract"})
def _add_column_blocks(acc, v, values, indices, indptr, first_row, stop_row):
    """acc[rows] += R[rows] @ v for the blocks whose rows lie in [first_row, stop_row) (column-blocked R); a
    block index past acc adds nothing."""
    lanes = np.uint64(BLOCK)
    stored = np.uint64(values.shape[0]) // lanes
    low, high = np.uint64(first_row), np.uint64(stop_row)
    for k in range(v.shape[0]):
        vk = v[k]
        for b in range(np.uint64(indptr[k]), min(np.uint64(indptr[k + 1]), stored)):
            base = np.uint64(indices[b]) * lanes
            if low <= base and base + lanes <= high:
                _axpy_lanes(acc, base, values, b * lanes, vk)


@njit(inline="always", fastmath={"contract"})
def _add_recurrent(acc, h, dense_t, values, indices, indptr):
    """acc += R @ h: dense R given transposed [H, G*H] (column sums), column blocks, or CSR over the G*H rows
    (the module docstring)."""
    if dense_t.shape[0] > 0:
        for k in range(h.shape[0]):
            hk = h[k]
            row = dense_t[k]
            for g in range(acc.shape[0]):
                acc[g] += row[g] * hk
    elif indptr.shape[0] == h.shape[0] + 1:
        _add_column_blocks(acc, h, values, indices, indptr, 0, acc.shape[0])
    else:
        four = np.uint64(4)
        for g in range(acc.shape[0]):
            # unsigned positions (indptr is checked non-negative at load): no negative-index wrap per access,
            # which cut the step by a quarter (benchmarks/results/recurrent.md)
            start, stop = np.uint64(indptr[g]), np.uint64(indptr[g + 1])
            s0 = s1 = s2 = s3 = np.float32(0.0)  # four chains: the adds of one row do not wait on each other
            j = start
            while j + four <= stop:
                s0 += values[j] * h[indices[j]]
                s1 += values[j + np.uint64(1)] * h[indices[j + np.uint64(1)]]
                s2 += values[j + np.uint64(2)] * h[indices[j + np.uint64(2)]]
                s3 += values[j + np.uint64(3)] * h[indices[j + np.uint64(3)]]
                j += four
            while j < stop:
                s0 += values[j] * h[indices[j]]
                j += np.uint64(1)
            acc[g] += (s0 + s1) + (s2 + s3)


@njit(void(float32[::1], READ_1D, READ_2D, READ_1D, READ_INDEX, READ_PTR), cache=True, fastmath={"contract"})
def add_product(acc, v, dense_t, values, indices, indptr):
    """acc += M @ v for M [G*H, I] in any of the three forms (recurrent_operands): a prediction network's input
    projection of one token, sparse where its W was pruned."""
    _add_recurrent(acc, v, dense_t, values, indices, indptr)


@njit(inline="always")
def _sigmoid(x):
    return np.float32(1.0) / (np.float32(1.0) + exp32(-x))


@njit(inline="always")
def _tanh(x):
    """tanh from the vectorised exp: 1 - 2 / (1 + e^2x) (absolute error ~1e-7 near 0, exact +-1 far out)."""
    return np.float32(1.0) - np.float32(2.0) / (np.float32(1.0) + exp32(np.float32(2.0) * x))


@njit(inline="always")
def _clipped(x, clip):
    if clip > 0:
        return min(max(x, -clip), clip)
    return x


@njit(inline="always")
def _frames(length, reverse):
    """(first frame, step) of a direction over ``length`` valid frames."""
    if reverse:
        return length - 1, -1
    return 0, 1


PROJECTION_BLOCK = 32  # projected units summed in registers at once: 4 AVX2 / 8 NEON vectors


@njit(inline="always", fastmath={"contract"})
def _project(out, v, weight_t):
    """out = weight_t^T @ v for weight_t [len(v), len(out)] (an LSTM's W_hr^T): blocks of PROJECTION_BLOCK outputs
    summed over all of v in a stack buffer, which LLVM keeps in vector registers (summed in ``out`` itself, every
    multiply-add was a load and a store of out: store-bound), then the remainder that way.  The same order of
    fused multiply-adds either way, so the results are bit-identical."""
    width = out.shape[0]
    full = width - width % PROJECTION_BLOCK
    for j0 in range(0, full, PROJECTION_BLOCK):
        acc = carray(stack_buffer(PROJECTION_BLOCK), (PROJECTION_BLOCK,))
        for j in range(PROJECTION_BLOCK):
            acc[j] = 0.0
        for k in range(v.shape[0]):
            vector_fma(element_pointer(acc, 0), v[k], element_pointer(weight_t[k], j0), PROJECTION_BLOCK)
        for j in range(PROJECTION_BLOCK):
            out[j0 + j] = acc[j]
    for j in range(full, width):
        out[j] = 0.0
    for k in range(v.shape[0]):
        m = v[k]
        row = weight_t[k]
        for j in range(full, width):
            out[j] += row[j] * m


@njit(void(READ_3D, READ_2D, READ_1D, READ_INDEX, READ_PTR, READ_1D, READ_2D, float32[:, ::1], float32[:, ::1],
           READ_LENGTHS, boolean, float32, Array(float32, 3, "A")), cache=True, fastmath={"contract"},
      error_model="numpy")  # no ZeroDivisionError branch in the gates' divides: their loops vectorise
def lstm_direction(pre, dense_t, values, indices, indptr, peephole, projection_t, h, c, lengths, reverse, clip, y):
    """One LSTM direction.  pre [T, B, 4H]: x W^T + Wb + Rb; c [B, H] and h [B, P]: initial states in, final
    states out (P = H, or torch's ``proj_size`` with ``projection_t`` [H, P] = W_hr^T: h = W_hr (o * tanh c));
    R is [4H, P]; lengths [B]: valid frames per row (frames past it are zero in y and leave the state alone);
    peephole [3H] (i, o, f) or empty; y [T, B, P] (any strides)."""
    hidden = c.shape[1]
    projected = projection_t.shape[0] > 0
    acc = np.empty(4 * hidden, np.float32)
    has_peephole = peephole.shape[0] > 0
    for b in range(pre.shape[1]):
        length = lengths[b]
        t, step = _frames(length, reverse)
        hb, cb = h[b], c[b]
        for _ in range(length):
            copy_elements(acc, pre[t, b])
            _add_recurrent(acc, hb, dense_t, values, indices, indptr)
            # the gates in branch-free loops over k, which LLVM vectorises (exp32): a quarter of the dense step
            # at H = 256 went to scalar expf / tanhf before
            if has_peephole:
                for k in range(hidden):
                    acc[k] += peephole[k] * cb[k]
                    acc[2 * hidden + k] += peephole[2 * hidden + k] * cb[k]
            for k in range(hidden):
                gi = _sigmoid(_clipped(acc[k], clip))
                gf = _sigmoid(_clipped(acc[2 * hidden + k], clip))
                cb[k] = gf * cb[k] + gi * _tanh(_clipped(acc[3 * hidden + k], clip))
            if has_peephole:
                for k in range(hidden):
                    acc[hidden + k] += peephole[hidden + k] * cb[k]
            for k in range(hidden):  # the new h, kept in acc until all of hb is read
                acc[k] = _sigmoid(_clipped(acc[hidden + k], clip)) * _tanh(cb[k])
            if projected:
                _project(hb, acc[:hidden], projection_t)
            else:
                copy_elements(hb, acc)
            copy_elements(y[t, b], hb)
            t += step
        for t in range(length, pre.shape[0]):
            y[t, b, :] = 0.0


@njit(inline="always", fastmath={"contract"})
def _add_h_rows(acc, v, dense_t, values, indices, indptr, hidden):
    """acc[2H:3H] += R_h @ v (the GRU h gate's rows of R)."""
    if dense_t.shape[0] > 0:
        for k in range(hidden):
            vk = v[k]
            row = dense_t[k]
            for g in range(2 * hidden, 3 * hidden):
                acc[g] += row[g] * vk
    elif indptr.shape[0] == v.shape[0] + 1:
        _add_column_blocks(acc, v, values, indices, indptr, 2 * hidden, 3 * hidden)
    else:
        for g in range(2 * hidden, 3 * hidden):
            total = np.float32(0.0)
            for j in range(indptr[g], indptr[g + 1]):
                total += values[j] * v[indices[j]]
            acc[g] += total


@njit(void(READ_3D, READ_2D, READ_1D, READ_INDEX, READ_PTR, READ_1D, float32[:, ::1], READ_LENGTHS, boolean,
           float32, boolean, Array(float32, 3, "A")), cache=True, fastmath={"contract"}, error_model="numpy")
def gru_direction(pre, dense_t, values, indices, indptr, rbias_h, h, lengths, reverse, clip, linear_before_reset,
                  y):
    """One GRU direction.  pre [T, B, 3H]: x W^T + Wb, plus Rb for z and r (the h gate's Rb is ``rbias_h``, as
    it sits inside the reset product when ``linear_before_reset``); h [B, H]: initial in, final out; lengths,
    clip, y as for LSTM.  Without ``linear_before_reset`` the h gate's product reads r * h, so it runs after
    the z and r rows (R's h block alone)."""
    hidden = h.shape[1]
    acc = np.empty(3 * hidden, np.float32)
    reset_h = np.empty(hidden, np.float32)
    new_h = np.empty(hidden, np.float32)
    for b in range(pre.shape[1]):
        length = lengths[b]
        t, step = _frames(length, reverse)
        hb = h[b]
        for _ in range(length):
            copy_elements(acc[:2 * hidden], pre[t, b])
            copy_elements(acc[2 * hidden:], rbias_h)
            if linear_before_reset:
                _add_recurrent(acc, hb, dense_t, values, indices, indptr)
            else:
                _add_recurrent(acc[:2 * hidden], hb, dense_t[:, :2 * hidden], values, indices, indptr)
                for k in range(hidden):
                    reset_h[k] = _sigmoid(_clipped(acc[hidden + k], clip)) * hb[k]
                _add_h_rows(acc, reset_h, dense_t, values, indices, indptr, hidden)
            for k in range(hidden):
                z = _sigmoid(_clipped(acc[k], clip))
                r = _sigmoid(_clipped(acc[hidden + k], clip))
                a = acc[2 * hidden + k]
                a = pre[t, b, 2 * hidden + k] + (r * a if linear_before_reset else a)
                candidate = _tanh(_clipped(a, clip))
                new_h[k] = (np.float32(1.0) - z) * candidate + z * hb[k]
            for k in range(hidden):
                hb[k] = new_h[k]
                y[t, b, k] = new_h[k]
            t += step
        for t in range(length, pre.shape[0]):
            y[t, b, :] = 0.0


# ------------------------------------------------------------------------------------------ numpy references


def _sigmoid_np(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_reference(pre, r, h, c, lengths, reverse=False):
    """numpy LSTM direction (no peephole, no clip) with R as stored by ONNX [4H, H]: (y, h, c)."""
    steps, batch, _ = pre.shape
    hidden = h.shape[1]
    h, c = h.astype(np.float64).copy(), c.astype(np.float64).copy()
    y = np.zeros((steps, batch, hidden))
    for b in range(batch):
        frames = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in frames:
            a = pre[t, b] + r @ h[b]
            i, o, f, g = np.split(a, 4)
            c[b] = _sigmoid_np(f) * c[b] + _sigmoid_np(i) * np.tanh(g)
            h[b] = _sigmoid_np(o) * np.tanh(c[b])
            y[t, b] = h[b]
    return y, h, c


def gru_reference(x_proj, wb, r, rb, h, lengths, linear_before_reset, reverse=False):
    """numpy GRU direction with x_proj = x W^T [T, B, 3H] and the ONNX biases: (y, h)."""
    steps, batch, _ = x_proj.shape
    hidden = h.shape[1]
    h = h.astype(np.float64).copy()
    y = np.zeros((steps, batch, hidden))
    rz, rr, rh = np.split(r, 3)
    wbz, wbr, wbh = np.split(wb, 3)
    rbz, rbr, rbh = np.split(rb, 3)
    for b in range(batch):
        frames = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in frames:
            xz, xr, xh = np.split(x_proj[t, b], 3)
            z = _sigmoid_np(xz + rz @ h[b] + wbz + rbz)
            gate = _sigmoid_np(xr + rr @ h[b] + wbr + rbr)
            if linear_before_reset:
                cand = np.tanh(xh + gate * (rh @ h[b] + rbh) + wbh)
            else:
                cand = np.tanh(xh + rh @ (gate * h[b]) + rbh + wbh)
            h[b] = (1 - z) * cand + z * h[b]
            y[t, b] = h[b]
    return y, h
