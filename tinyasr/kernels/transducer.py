"""Greedy transducer search in one compiled loop: the joint, the argmax and the prediction network per emitted
token, with no Python between frames.

Greedy RNN-T / TDT decoding is a chain of tiny steps (a joint of J x K multiply-adds per try, an LSTM step of
the prediction network per emitted token) whose arithmetic is a few microseconds; run from Python, every try
and every token paid 30-40 us of dispatch and allocation (benchmarks/results/transducer.md), so a 10 s
FastConformer's search cost a third of its end-to-end time.  Here the whole frame loop is one Numba call.

The prediction network's layers travel packed, so any number of layers and any mix of dense and sparse
weights share one compiled signature (:func:`pack_layers`): all float32 operands in one flat buffer, the uint16
indices and int32 row pointers in two more, and a table of offsets per layer.  Each layer's step is the
recurrent kernels' own code (``add_product`` for the token's input projection, ``lstm_direction`` for one
frame of the cell), so dense, CSR and column-blocked weights run exactly as they do in the ``LSTM`` op.

The rules are NeMo's (tinyasr.decoding.transducer documents them); the Python side keeps the hypothesis.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from numba import njit
from numba.types import Array, UniTuple, float32, int64

from tinyasr.kernels._compile import copy_elements
from tinyasr.kernels.recurrent import (
    EMPTY_CSR,
    READ_1D,
    READ_2D,
    READ_INDEX,
    READ_PTR,
    add_product,
    lstm_direction,
)

# activation codes of the joint (the decoder spec's names)
JOINT_ACTIVATION_CODES = {"relu": 0, "tanh": 1, "sigmoid": 2}

# columns of the per-layer table: sizes, then (offset, length) of each operand in its flat buffer
(_HIDDEN, _WIDTH, _W_DENSE, _W_DENSE_ROWS, _W_VALUES, _W_NNZ, _W_INDICES, _W_PTR, _W_PTR_LEN, _BIAS,
 _R_DENSE, _R_DENSE_ROWS, _R_VALUES, _R_NNZ, _R_INDICES, _R_PTR, _R_PTR_LEN, _PROJECTION, _PROJECTION_ROWS,
 _COLUMNS) = range(20)


class _EndToEnd:
    """Arrays of one dtype laid end to end in one buffer."""

    def __init__(self, dtype):
        self.dtype, self.parts, self.size = dtype, [], 0

    def put(self, array) -> int:
        """Append ``array`` (flattened); -> where it starts."""
        array = np.ascontiguousarray(array, self.dtype).reshape(-1)
        self.parts.append(array)
        self.size += array.size
        return self.size - array.size

    def joined(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, self.dtype)


def pack_layers(layers: Sequence) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(table int64 [L, _COLUMNS], floats, indices uint16, indptr int32) of prediction-network LSTM layers
    (tinyasr.decoding.transducer.LSTMLayer: ``input_operands`` / ``w_t``, ``recurrent``, ``bias``,
    ``projection_t``)."""
    floats, indices, pointers = _EndToEnd(np.float32), _EndToEnd(np.uint16), _EndToEnd(np.int32)
    table = np.zeros((len(layers), _COLUMNS), np.int64)
    for row, layer in zip(table, layers):
        row[_HIDDEN], row[_WIDTH] = layer.hidden, layer.width
        for (dense, values, index, indptr), columns in (
                (layer.input_operands or (layer.w_t,) + EMPTY_CSR,
                 (_W_DENSE, _W_DENSE_ROWS, _W_VALUES, _W_NNZ, _W_INDICES, _W_PTR, _W_PTR_LEN)),
                (layer.recurrent, (_R_DENSE, _R_DENSE_ROWS, _R_VALUES, _R_NNZ, _R_INDICES, _R_PTR, _R_PTR_LEN))):
            d, d_rows, v, nnz, i, p, p_len = columns
            row[d], row[d_rows] = floats.put(dense), dense.shape[0]
            row[v], row[nnz] = floats.put(values), values.size
            row[i] = indices.put(index)
            row[p], row[p_len] = pointers.put(indptr), indptr.size
        row[_BIAS] = floats.put(layer.bias)
        row[_PROJECTION], row[_PROJECTION_ROWS] = floats.put(layer.projection_t), layer.projection_t.shape[0]
    return table, floats.joined(), indices.joined(), pointers.joined()


@njit(inline="always")
def _layer_step(layer, x, table, floats, indices, pointers, h, c, pre, one, output):
    """One LSTM step of prediction layer ``layer`` on input x; h / c (this layer's slices) updated, the layer's
    output left in ``output``."""
    row = table[layer]
    hidden, width = row[_HIDDEN], row[_WIDTH]
    gates = 4 * hidden
    copy_elements(pre[:gates], floats[row[_BIAS]:])
    add_product(pre[:gates], x,
                floats[row[_W_DENSE]:row[_W_DENSE] + row[_W_DENSE_ROWS] * gates].reshape(row[_W_DENSE_ROWS], gates),
                floats[row[_W_VALUES]:row[_W_VALUES] + row[_W_NNZ]],
                indices[row[_W_INDICES]:row[_W_INDICES] + row[_W_NNZ]],
                pointers[row[_W_PTR]:row[_W_PTR] + row[_W_PTR_LEN]])
    projection_rows = row[_PROJECTION_ROWS]
    lstm_direction(pre[:gates].reshape(1, 1, gates),
                   floats[row[_R_DENSE]:row[_R_DENSE] + row[_R_DENSE_ROWS] * gates].reshape(row[_R_DENSE_ROWS],
                                                                                          gates),
                   floats[row[_R_VALUES]:row[_R_VALUES] + row[_R_NNZ]],
                   indices[row[_R_INDICES]:row[_R_INDICES] + row[_R_NNZ]],
                   pointers[row[_R_PTR]:row[_R_PTR] + row[_R_PTR_LEN]],
                   floats[:0],
                   floats[row[_PROJECTION]:row[_PROJECTION] + projection_rows * width].reshape(projection_rows,
                                                                                            width),
                   h.reshape(1, width), c.reshape(1, hidden), one, False, np.float32(0.0),
                   output[:width].reshape(1, 1, width))


@njit(inline="always")
def _prediction_scratch(embedding, table):
    """(pre, buffers, one): the scratch :func:`_predict` takes for an embedding and these packed layers."""
    widest = embedding.shape[1]
    for layer in range(table.shape[0]):
        widest = max(widest, table[layer, _WIDTH], table[layer, _HIDDEN])
    return np.empty(4 * widest, np.float32), np.empty((2, widest), np.float32), np.ones(1, np.int64)


@njit(inline="always", fastmath={"contract"})
def _predict(token, embedding, table, floats, indices, pointers, h, c, pre, one, buffers, pred_w, pred_b,
             projected):
    """Feed ``token`` through every layer (states h / c: all layers' slices, in order) and project the last
    layer's output through the joint's prediction half into ``projected``."""
    width = embedding.shape[1]
    copy_elements(buffers[1, :width], embedding[token])  # layer l reads buffers[(l + 1) % 2], writes buffers[l % 2]
    h_start = c_start = 0
    for layer in range(table.shape[0]):
        hidden = table[layer, _HIDDEN]
        _layer_step(layer, buffers[(layer + 1) % 2, :width], table, floats, indices, pointers,
                    h[h_start:h_start + table[layer, _WIDTH]], c[c_start:c_start + hidden], pre, one,
                    buffers[layer % 2])
        width = table[layer, _WIDTH]
        h_start += width
        c_start += hidden
    x = buffers[(table.shape[0] - 1) % 2, :width]
    copy_elements(projected, pred_b)
    for p in range(width):
        value = x[p]
        row = pred_w[p]
        for j in range(projected.shape[0]):
            projected[j] += row[j] * value


@njit(inline="always", fastmath={"contract"})
def _joint(frame, projected, out_w, out_b, activation, hidden, logits):
    """logits = out(act(frame + projected)); ``hidden`` scratch [J]."""
    for j in range(hidden.shape[0]):
        value = frame[j] + projected[j]
        if activation == 0:
            value = max(value, np.float32(0.0))
        elif activation == 1:
            value = np.tanh(value)
        else:
            value = np.float32(1.0) / (np.float32(1.0) + np.exp(-value))
        hidden[j] = value
    copy_elements(logits, out_b)
    for j in range(hidden.shape[0]):
        value = hidden[j]
        row = out_w[j]
        for k in range(logits.shape[0]):
            logits[k] += row[k] * value


@njit(inline="always")
def _first_max(values, start, stop):
    best = start
    for k in range(start + 1, stop):
        if values[k] > values[best]:
            best = k
    return best - start


@njit(inline="always")
def _probability(logits, token, classes):
    """softmax(logits[:classes])[token]."""
    top = logits[0]
    for k in range(1, classes):
        top = max(top, logits[k])
    total = 0.0
    for k in range(classes):
        total += np.exp(np.float64(logits[k] - top))
    return np.exp(np.float64(logits[token] - top)) / total


@njit(UniTuple(int64, 2)(READ_2D, int64, int64, int64, Array(int64, 1, "C", readonly=True), READ_2D, Array(int64, 2, "C", readonly=True), READ_1D, READ_INDEX, READ_PTR,
                         float32[::1], float32[::1], READ_2D, READ_1D, READ_2D, READ_1D, int64, float32[::1],
                         int64[::1], int64[::1], int64[::1], float32[::1]),
      cache=True, fastmath={"contract"})
def greedy_frames(frames, frame, max_symbols, blank, durations, embedding, table, floats, indices, pointers, h, c,
                  pred_w, pred_b, out_w, out_b, activation, projected, tokens, token_frames, token_durations,
                  confidences):
    """Greedy search over ``frames`` [T, J] (the joint's encoder projection) from frame ``frame`` (an index into
    them) to their end: TDT with ``durations`` (the joint's last len(durations) outputs), RNN-T without (empty);
    h / c / ``projected`` hold the hypothesis' states and prediction projection and are updated in place.  Emitted tokens go to ``tokens`` / ``token_frames`` / ``token_durations`` (TDT; -1 for
    RNN-T) / ``confidences`` (T * max_symbols entries suffice).  -> (tokens emitted, the next frame to try, which
    a TDT duration may put past T)."""
    tdt = durations.shape[0] > 0
    classes = out_b.shape[0] - durations.shape[0]  # token classes: the outputs before the durations'
    joint_hidden = np.empty(frames.shape[1], np.float32)
    logits = np.empty(out_b.shape[0], np.float32)
    pre, buffers, one = _prediction_scratch(embedding, table)
    count = 0
    while frame < frames.shape[0]:
        current = frames[frame]
        following = frame + 1
        for tries in range(1, max_symbols + 1):
            _joint(current, projected, out_w, out_b, activation, joint_hidden, logits)
            token = _first_max(logits, 0, classes)
            duration = durations[_first_max(logits, classes, logits.shape[0])] if tdt else -1
            if token != blank:
                tokens[count], token_frames[count], token_durations[count] = token, frame, duration
                confidences[count] = _probability(logits, token, classes)
                count += 1
                _predict(token, embedding, table, floats, indices, pointers, h, c, pre, one, buffers, pred_w,
                         pred_b, projected)
            if tdt:
                if duration != 0:
                    following = frame + duration + (1 if tries == max_symbols else 0)
                    break
            elif token == blank:
                break
        frame = following
    return count, frame
