"""ONNX LSTM and GRU (opset 14+ semantics: ``layout``; forward, reverse, bidirectional; sequence lengths).

The input projection ``X W^T + biases`` runs for all frames of a direction as one matrix product; only the
recurrent product is sequential, in tinyasr/kernels/recurrent.py with the gates fused.  Activations must be
the ONNX defaults (what torch and NeMo export); ``input_forget`` is refused.  Frames past a row's
``sequence_lens`` are zero in Y and leave that row's state alone, as onnxruntime does.

tinyasr extension (LSTM only): an optional ninth input ``projection`` [directions, P, H] is torch's
``proj_size`` (``weight_hr``, NeMo's RNNEncoder): h = projection @ (o * tanh(c)) has P < H values, so R is
[directions, 4H, P], initial_h [directions, B, P] and Y [.., P].  ONNX's LSTM has no projection (torch.onnx
refuses such LSTMs); a reader without the extension refuses the node, as R's shape does not fit ``hidden_size``.

R may come from the file as ``csr`` or 8 x 1 ``bsr`` (the converter's choice, converters/sparse_choice.py):
the step then runs sparse (kernels/recurrent.py, recurrent_operands); W and the rest are dense.

Streaming (``Recurrent`` rule): a forward, single-direction node without ``sequence_lens`` streams frame by
frame, its h (and c) carried between chunks.  Its final-state outputs Y_h / Y_c have no time axis and exist
only once the input has ended, so a streamed node must leave them unread (the converter drops unread optional
outputs); reverse and bidirectional nodes read the future and refuse.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from tinyasr.errors import GraphError
from tinyasr.format.encodings.sparse import ENCODED_TYPES
from tinyasr.kernels.recurrent import EMPTY_DENSE, gru_direction, lstm_direction, recurrent_operands
from tinyasr.ops.context import OpContext
from tinyasr.ops.registry import register
from tinyasr.ops.streaming_rules import Recurrent, StreamStep, Stream

_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}
_GATES = {"LSTM": 4, "GRU": 3}
_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def _check(op: str, inputs, attrs) -> Tuple[int, int, str, int]:
    """(hidden, directions, direction, width of h) after checking what this op supports; GraphError naming the
    problem."""
    if len(inputs) < 3 or any(x is None for x in inputs[:3]):
        raise GraphError(f"{op} needs inputs X, W and R")
    direction = attrs.get("direction", "forward")
    if direction not in _DIRECTIONS:
        raise GraphError(f"{op}: direction {direction!r} is not one of forward, reverse, bidirectional")
    directions = _DIRECTIONS[direction]
    activations = attrs.get("activations")
    if activations is not None and [a.lower() for a in activations] != [
            a.lower() for a in _DEFAULT_ACTIVATIONS[op] * directions]:
        raise GraphError(f"{op}: activations {activations} are not supported (only the defaults "
                         f"{_DEFAULT_ACTIVATIONS[op]})")
    if attrs.get("input_forget", 0):
        raise GraphError(f"{op}: input_forget=1 is not supported")
    x, w, r = inputs[:3]
    if not isinstance(r, (np.ndarray,) + ENCODED_TYPES):
        raise GraphError(f"{op}: R is a {type(r).__name__}; only a dense, csr, bsr or int8 R is supported")
    gates = _GATES[op]
    if x.ndim != 3 or w.ndim != 3 or r.ndim != 3:
        raise GraphError(f"{op}: X, W, R must have rank 3, got shapes {x.shape}, {w.shape}, {r.shape}")
    hidden = int(attrs.get("hidden_size", r.shape[-1]))
    projection = inputs[8] if len(inputs) > 8 else None
    width = hidden
    if projection is not None:
        if op != "LSTM" or projection.ndim != 3 or projection.shape[0] != directions or not (
                0 < projection.shape[1] < hidden) or projection.shape[2] != hidden:
            raise GraphError(f"{op}: projection {projection.shape} must be [{directions}, P, {hidden}] with "
                             f"0 < P < hidden size {hidden} (LSTM only)")
        width = projection.shape[1]
    if w.shape[:2] != (directions, gates * hidden) or r.shape != (directions, gates * hidden, width):
        raise GraphError(f"{op}: W {w.shape} / R {r.shape} do not match {directions} direction(s) of "
                         f"hidden size {hidden}" + (f" projected to {width}" if width != hidden else ""))
    if w.shape[2] != x.shape[2]:
        raise GraphError(f"{op}: X has {x.shape[2]} features but W expects {w.shape[2]}")
    if x.dtype != np.float32:
        raise GraphError(f"{op}: X must be float32, got {x.dtype}")
    return hidden, directions, direction, width


def _state(value: Optional[np.ndarray], layout: int, shape, op: str, what: str) -> np.ndarray:
    """An initial state as [directions, B, H] float32 (zeros when omitted)."""
    if value is None:
        return np.zeros(shape, np.float32)
    state = value.transpose(1, 0, 2) if layout else value
    if state.shape != shape:
        raise GraphError(f"{op}: {what} has shape {value.shape}, expected {shape} (layout {layout})")
    return np.array(state, np.float32)  # a copy: the kernels update it in place


def _lengths(value: Optional[np.ndarray], batch: int, steps: int, op: str) -> np.ndarray:
    if value is None:
        return np.full(batch, steps, np.int64)
    lengths = np.asarray(value).astype(np.int64).reshape(-1)
    if lengths.shape != (batch,) or (lengths < 0).any() or (lengths > steps).any():
        raise GraphError(f"{op}: sequence_lens {lengths.tolist()} must be {batch} values in 0..{steps}")
    return lengths


def _run(op: str, ctx, inputs, attrs) -> List[np.ndarray]:
    hidden, directions, direction, width = _check(op, inputs, attrs)
    inputs = list(inputs) + [None] * (9 - len(inputs))
    x, w, r, bias, sequence_lens, initial_h = inputs[:6]
    layout = int(attrs.get("layout", 0))
    xs = x.transpose(1, 0, 2) if layout else x  # [T, B, I]
    steps, batch = xs.shape[:2]
    gates = _GATES[op]
    if bias is None:
        bias = np.zeros((directions, 2 * gates * hidden), np.float32)
    if bias.shape != (directions, 2 * gates * hidden):
        raise GraphError(f"{op}: B has shape {bias.shape}, expected {(directions, 2 * gates * hidden)}")
    lengths = _lengths(sequence_lens, batch, steps, op)
    h = _state(initial_h, layout, (directions, batch, width), op, "initial_h")
    c = _state(inputs[6], layout, (directions, batch, hidden), op, "initial_c") if op == "LSTM" else None
    peephole = inputs[7] if op == "LSTM" else None
    if peephole is not None and peephole.shape != (directions, 3 * hidden):
        raise GraphError(f"{op}: P has shape {peephole.shape}, expected {(directions, 3 * hidden)}")
    clip = np.float32(attrs.get("clip", 0.0))
    y = np.empty((steps, directions, batch, width), np.float32)
    flat = np.ascontiguousarray(xs).reshape(steps * batch, -1)
    for d in range(directions):
        reverse = direction == "reverse" or d == 1
        wb, rb = bias[d, :gates * hidden], bias[d, gates * hidden:]
        pre = flat @ w[d].T + wb  # the input projection of every frame: one matrix product
        recurrent_t, values, indices, indptr = recurrent_operands(r, d)  # R dense, or as stored sparse
        if op == "LSTM":
            pre += rb
            pp = np.zeros(0, np.float32) if peephole is None else np.ascontiguousarray(peephole[d], np.float32)
            projection_t = EMPTY_DENSE if inputs[8] is None else np.ascontiguousarray(inputs[8][d].T, np.float32)
            lstm_direction(pre.reshape(steps, batch, -1), recurrent_t, values, indices, indptr, pp, projection_t,
                           h[d], c[d], lengths, reverse, clip, y[:, d])
        else:
            pre[:, :2 * hidden] += rb[:2 * hidden]
            gru_direction(pre.reshape(steps, batch, -1), recurrent_t, values, indices, indptr,
                          np.ascontiguousarray(rb[2 * hidden:]), h[d], lengths, reverse, clip,
                          bool(attrs.get("linear_before_reset", 0)), y[:, d])
    finals = [h] if op == "GRU" else [h, c]
    for state in finals:
        state[:, lengths == 0] = 0.0  # an empty row ends with zero states, not its initial ones (onnxruntime)
    if layout:
        y, finals = y.transpose(2, 0, 1, 3).copy(), [s.transpose(1, 0, 2).copy() for s in finals]
    return ([y] + finals)[:max(ctx.num_outputs, 1)]  # the node lists only what it reads


class _RecurrentStep(StreamStep):
    """A streamed forward LSTM / GRU: the node runs on each chunk with the previous chunk's final states as its
    initial ones.  Built once per plan; the states live in the stream's state."""

    def __init__(self, node, run, constants, stream: Stream):
        self.node, self.run, self.constants = node, run, list(constants) + [None] * (8 - len(constants))
        self.layout = int(node.attrs.get("layout", 0))
        if node.attrs.get("direction", "forward") != "forward":
            raise GraphError(f"direction {node.attrs['direction']!r} reads frames that have not arrived yet")
        if self.constants[4] is not None or (len(node.inputs) > 4 and node.inputs[4]):
            raise GraphError("sequence_lens counts frames of the whole utterance")
        if len(node.outputs) > 1:
            raise GraphError("its final-state outputs Y_h / Y_c are read; they exist only at the end of the "
                             "input (a streamed graph takes the states from Y)")
        if stream.axis != (1 if self.layout else 0):
            raise GraphError(f"the stream's time axis is {stream.axis}, not the op's sequence axis")
        self.states = 1 if node.op == "GRU" else 2  # h, or h and c: ONNX inputs 5 and 6
        self.context = OpContext(1 + self.states)  # the final states too, to carry

    def new_state(self):
        return {"states": [self.constants[5 + i] for i in range(self.states)]}

    def advance(self, state, frames, final):
        if frames[0] is None:
            return None
        args = list(self.constants)
        args[0] = frames[0]
        for i, value in enumerate(state["states"]):
            args[5 + i] = value
        outputs = self.run(self.context, args, self.node.attrs)
        state["states"] = outputs[1:]
        return outputs[:1]


def _layout(node, constants, stream):
    """Y [T, directions, B, H] from X [T, B, I]; with layout 1, Y [B, T, directions, H] from X [B, T, I]."""
    return 4, stream.axis


@register("LSTM", streaming=Recurrent(_RecurrentStep, _layout))
def lstm(ctx, inputs, attrs):
    return _run("LSTM", ctx, inputs, attrs)


@register("GRU", streaming=Recurrent(_RecurrentStep, _layout))
def gru(ctx, inputs, attrs):
    return _run("GRU", ctx, inputs, attrs)
