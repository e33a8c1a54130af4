"""The sequential part of LSTM and GRU: the recurrent product and the gates, one frame at a time.

The ops (tinyasr/ops/recurrent.py) compute the input projection for all frames at once (one matrix product,
both biases added); these kernels then walk one direction over the frames.  Per frame and batch row they
add ``R @ h`` to the frame's pre-activations and apply the gate nonlinearities in the same pass, so the gates
never make a round trip through memory.

``R @ h`` at one frame is a matrix x vector product, memory-bound: its cost is the bytes of R read.  R comes
either dense, transposed to [H, G*H] so the product is a sum of columns (``acc += R_T[k] * h[k]``: the
inner loop is contiguous and vectorises without reassociation), or as CSR over the G*H gate rows (uint16
column indices), where only the non-zeros are read: at 90 % sparsity a tenth of the values plus their
indices.  The unused form is passed empty.

ONNX gate orders: LSTM i, o, f, c; GRU z, r, h.  Activations are the ONNX defaults (sigmoid, tanh), the
ones torch and NeMo export; ``clip`` (0: none) bounds every gate pre-activation, as onnxruntime does.
``numpy`` references of both cells are in ``lstm_reference`` / ``gru_reference`` (tests compare the
kernels with them and with torch).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.types import Array, boolean, float32, int32, int64, uint16, void

READ_1D = Array(float32, 1, "C", readonly=True)
READ_2D = Array(float32, 2, "C", readonly=True)
READ_3D = Array(float32, 3, "C", readonly=True)
READ_INDEX = Array(uint16, 1, "C", readonly=True)
READ_PTR = Array(int32, 1, "C", readonly=True)
READ_LENGTHS = Array(int64, 1, "C", readonly=True)

EMPTY_DENSE = np.zeros((0, 0), np.float32)
EMPTY_CSR = (np.zeros(0, np.float32), np.zeros(0, np.uint16), np.zeros(1, np.int32))


@njit(inline="always", fastmath={"contract"})
def _add_recurrent(acc, h, dense_t, values, indices, indptr):
    """acc += R @ h: dense R given transposed [H, G*H] (column sums), else CSR over the G*H rows."""
    if dense_t.shape[0] > 0:
        for k in range(h.shape[0]):
            hk = h[k]
            row = dense_t[k]
            for g in range(acc.shape[0]):
                acc[g] += row[g] * hk
    else:
        for g in range(acc.shape[0]):
            start, stop = indptr[g], indptr[g + 1]
            s0 = s1 = s2 = s3 = np.float32(0.0)  # four chains: the adds of one row do not wait on each other
            j = start
            while j + 4 <= stop:
                s0 += values[j] * h[indices[j]]
                s1 += values[j + 1] * h[indices[j + 1]]
                s2 += values[j + 2] * h[indices[j + 2]]
                s3 += values[j + 3] * h[indices[j + 3]]
                j += 4
            while j < stop:
                s0 += values[j] * h[indices[j]]
                j += 1
            acc[g] += (s0 + s1) + (s2 + s3)


@njit(inline="always")
def _sigmoid(x):
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


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


@njit(void(READ_3D, READ_2D, READ_1D, READ_INDEX, READ_PTR, READ_1D, READ_2D, float32[:, ::1], float32[:, ::1],
           READ_LENGTHS, boolean, float32, Array(float32, 3, "A")), cache=True, fastmath={"contract"})
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
            acc[:] = pre[t, b]
            _add_recurrent(acc, hb, dense_t, values, indices, indptr)
            for k in range(hidden):
                ai, ao, af, ac = acc[k], acc[hidden + k], acc[2 * hidden + k], acc[3 * hidden + k]
                if has_peephole:
                    ai += peephole[k] * cb[k]
                    af += peephole[2 * hidden + k] * cb[k]
                gi = _sigmoid(_clipped(ai, clip))
                gf = _sigmoid(_clipped(af, clip))
                cell = gf * cb[k] + gi * np.tanh(_clipped(ac, clip))
                if has_peephole:
                    ao += peephole[hidden + k] * cell
                cb[k] = cell
                acc[k] = _sigmoid(_clipped(ao, clip)) * np.tanh(cell)  # the new h, kept apart until all read hb
            if projected:
                hb[:] = 0.0
                for k in range(hidden):
                    m = acc[k]
                    row = projection_t[k]
                    for j in range(hb.shape[0]):
                        hb[j] += row[j] * m
            else:
                hb[:] = acc[:hidden]
            y[t, b] = hb
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
    else:
        for g in range(2 * hidden, 3 * hidden):
            total = np.float32(0.0)
            for j in range(indptr[g], indptr[g + 1]):
                total += values[j] * v[indices[j]]
            acc[g] += total


@njit(void(READ_3D, READ_2D, READ_1D, READ_INDEX, READ_PTR, READ_1D, float32[:, ::1], READ_LENGTHS, boolean,
           float32, boolean, Array(float32, 3, "A")), cache=True, fastmath={"contract"})
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
            acc[:2 * hidden] = pre[t, b, :2 * hidden]
            acc[2 * hidden:] = rbias_h
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
                candidate = np.tanh(_clipped(a, clip))
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
