"""Stateful execution of a conv graph on input that arrives frame by frame.

Every value of the graph that depends on the streamed input is a stream of
frames along its time axis.  Each node keeps what it still needs between calls:

* a ``Conv`` keeps its input from the first frame its next output reads, with
  its left zero padding in front of the first frame, and emits every output
  whose whole kernel span has arrived; ``finish`` appends its right zero
  padding.  Each output frame is computed once, by the same op function the
  offline runtime uses, on ``[kept context | new frames]`` with pads 0;
* a time-local op (elementwise, Softmax over classes, Transpose, MatMul with a
  stored matrix, ...) runs on the frames all its streamed inputs have in common
  and keeps the rest (the branches of a residual block arrive with different
  delays).

So the concatenated outputs equal an offline run on the whole input (to BLAS
rounding), causal or not.  The price of a symmetric ("same"-padded) conv is
latency: output frame t leaves once input frame ``t * stride + right`` is in,
where ``right`` is the right side of the receptive field
(:func:`receptive_field`).  Ops that mix all frames (global pooling, ReduceMean
over time, Shape, a length input, attention) cannot stream and are refused at
plan time, naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .errors import GraphError, InputError
from .graph import Graph, Node
from .ops import OpContext, lookup
from .ops.common import axes_from, normalize_axis

# Ops applied frame by frame: output frame t depends on input frame t only.
ELEMENTWISE = frozenset({
    "Abs", "Add", "And", "Cast", "Ceil", "Clip", "Div", "Dropout", "Equal", "Erf", "Exp", "Floor", "Greater",
    "GreaterOrEqual", "Identity", "LeakyRelu", "Less", "LessOrEqual", "Log", "Max", "Min", "Mul", "Neg", "Not", "Or",
    "Pow", "Reciprocal", "Relu", "Round", "Sigmoid", "Softplus", "Sqrt", "Sub", "Tanh", "Where", "Xor",
})
AXIS_OPS = frozenset({"Softmax", "LogSoftmax", "Concat", "Split"})  # fine unless their axis is the time axis


@dataclass(frozen=True)
class ReceptiveField:
    """Input frames an output frame depends on: ``left`` before and ``right`` after frame ``t * stride``."""

    left: int
    right: int
    stride: int


@dataclass(frozen=True)
class _Stream:
    """A value that depends on the streamed input: its rank, time axis and receptive field."""

    rank: int
    axis: int
    field: ReceptiveField


@dataclass(frozen=True)
class _ConvGeometry:
    kernel_span: int  # dilation * (K - 1)
    stride: int
    pad_left: int
    pad_right: int
    attrs: dict  # the node's attributes with pads [0, 0]


@dataclass(frozen=True)
class _PlannedNode:
    node: Node
    run: Any
    constants: Tuple[Any, ...]  # per input: the stored / folded value, or None for a streamed input
    streamed: Tuple[Optional[_Stream], ...]  # per input
    conv: Optional[_ConvGeometry]


def _shape(value) -> Tuple[int, ...]:
    return tuple(getattr(value, "shape", np.shape(value)))


class StreamPlan:
    """How each node of a model streams; built once, immutable, shared by every stream of the model.

    ``graph`` and ``tensors`` are a Model's (see :meth:`from_model`); the graph's
    one input is streamed along its last axis.
    """

    def __init__(self, graph: Graph, tensors: Dict[str, Any], label: str = "model"):
        self.label = label
        if len(graph.inputs) != 1:
            raise GraphError(f"{label}: streaming needs a graph with one input (the signal); this one has "
                             f"{[v.name for v in graph.inputs]} (a length input means the graph masks over the "
                             "whole utterance)")
        info = self.input = graph.inputs[0]
        rank = len(info.shape)
        streams: Dict[str, _Stream] = {info.name: _Stream(rank, rank - 1, ReceptiveField(0, 0, 1))}
        constants: Dict[str, Any] = dict(tensors)
        self.nodes: List[_PlannedNode] = []
        for node in graph.nodes:
            run = lookup(node.op, node.name)
            args = [constants.get(name) if name else None for name in node.inputs]
            streamed = tuple(streams.get(name) if name else None for name in node.inputs)
            if not any(streamed):  # depends on stored tensors only: fold it now
                for name, value in zip(node.outputs, run(OpContext(len(node.outputs)), args, node.attrs)):
                    constants[name] = value
                continue
            try:
                outputs, conv = self._plan_node(node, args, streamed)
            except GraphError as exc:
                raise GraphError(f"{label}: node {node.name!r} ({node.op}) cannot stream: {exc}") from None
            streams.update(zip(node.outputs, outputs))
            self.nodes.append(_PlannedNode(node, run, tuple(args), streamed, conv))
        missing = [v.name for v in graph.outputs if v.name not in streams]
        if missing:
            raise GraphError(f"{label}: outputs {missing} do not depend on the input; nothing to stream")
        self.outputs = [(v.name, streams[v.name]) for v in graph.outputs]
        fields = {s.field for _, s in self.outputs}
        self.receptive_field = ReceptiveField(max(f.left for f in fields), max(f.right for f in fields),
                                              max(f.stride for f in fields))

    @staticmethod
    def from_model(model) -> "StreamPlan":
        """The plan of a loaded runtime Model (its graph and stored tensors)."""
        return StreamPlan(model.graph, dict(model.tensors), label=model.label)

    # -- planning ------------------------------------------------------------------

    def _plan_node(self, node: Node, args, streamed) -> Tuple[List[_Stream], Optional[_ConvGeometry]]:
        live = [s for s in streamed if s is not None]
        strides = {s.field.stride for s in live}
        if len(strides) > 1:
            raise GraphError(f"its inputs run at different frame rates (strides {sorted(strides)})")
        field = ReceptiveField(max(s.field.left for s in live), max(s.field.right for s in live), strides.pop())
        op, attrs = node.op, node.attrs
        if op == "Conv":
            return self._plan_conv(node, args, streamed, field)
        if op in ELEMENTWISE:
            rank = max([s.rank for s in live] + [len(_shape(a)) for a in args if a is not None])
            axes = {rank - s.rank + s.axis for s in live}
            if len(axes) > 1:
                raise GraphError("its streamed inputs have their time axes in different places")
            axis = axes.pop()
            for value in args:
                shape = _shape(value) if value is not None else ()
                back = rank - axis  # the time axis counted from the end
                if value is not None and len(shape) >= back and shape[-back] != 1:
                    raise GraphError(f"a stored input of shape {shape} spans the time axis")
            return [_Stream(rank, axis, field)] * len(node.outputs), None
        stream = live[0]
        if len(live) > 1 and op != "Concat":
            raise GraphError("more than one streamed input")
        if op in AXIS_OPS:
            axis = normalize_axis(attrs.get("axis", -1 if op.endswith("Softmax") else 0), stream.rank, op)
            if axis == stream.axis:
                raise GraphError(f"it works along axis {axis}, the time axis")
            return [stream] * len(node.outputs), None
        if op == "Transpose":
            perm = list(attrs.get("perm", range(stream.rank - 1, -1, -1)))
            return [_Stream(stream.rank, perm.index(stream.axis), field)], None
        if op == "MatMul" and streamed[0] is not None and streamed[1] is None:
            if stream.rank < 2 or stream.axis == stream.rank - 1:
                raise GraphError("it contracts the time axis")
            rank = max(stream.rank, len(_shape(args[1])))
            return [_Stream(rank, stream.axis + rank - stream.rank, field)], None
        if op in ("Unsqueeze", "Squeeze"):
            axes = axes_from(args, 1, attrs)
            if axes is None:
                raise GraphError("Squeeze without axes may drop the time axis")
            rank = stream.rank + (len(axes) if op == "Unsqueeze" else -len(axes))
            axes = [normalize_axis(a, rank if op == "Unsqueeze" else stream.rank, op) for a in axes]
            if op == "Squeeze":
                if stream.axis in axes:
                    raise GraphError("it removes the time axis")
                return [_Stream(rank, stream.axis - sum(a < stream.axis for a in axes), field)], None
            axis = stream.axis
            for a in sorted(axes):
                axis += a <= axis
            return [_Stream(rank, axis, field)], None
        raise GraphError("the op mixes frames across time (or its effect on the time axis is unknown); "
                         f"streamable ops: Conv, Transpose, MatMul, Squeeze/Unsqueeze, {', '.join(sorted(AXIS_OPS))}, "
                         "elementwise ops")

    @staticmethod
    def _plan_conv(node: Node, args, streamed, field: ReceptiveField):
        if streamed[0] is None or any(s is not None for s in streamed[1:3]):
            raise GraphError("only the data input X (and the residual Z) may depend on the streamed input")
        x = streamed[0]
        if x.rank != 3 or x.axis != 2:
            raise GraphError(f"input X must be [batch, channels, time] with time last (rank {x.rank}, axis {x.axis})")
        attrs = node.attrs
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "", "VALID"):
            raise GraphError(f"auto_pad {attrs['auto_pad']!r} depends on the input length")
        pads = [0, 0] if attrs.get("auto_pad") == "VALID" else list(attrs.get("pads", [0, 0]))
        stride = int(attrs.get("strides", [1])[0])
        span = int(attrs.get("dilations", [1])[0]) * (_shape(args[1])[2] - 1)
        if len(pads) != 2:
            raise GraphError(f"pads {pads} must be [begin, end]")
        geometry = _ConvGeometry(span, stride, int(pads[0]), int(pads[1]),
                                 {**attrs, "pads": [0, 0], "auto_pad": "NOTSET"})
        z = streamed[3] if len(streamed) > 3 else None
        if len(args) > 3 and args[3] is not None and z is None:
            raise GraphError("a stored residual input Z cannot follow a stream")
        left = field.left + geometry.pad_left * field.stride
        right = field.right + (span - geometry.pad_left) * field.stride
        if z is not None:
            left, right = max(left, z.field.left), max(right, z.field.right)
            if z.field.stride != field.stride * stride:
                raise GraphError("the residual Z runs at a different frame rate than the conv's output")
        return [_Stream(3, 2, ReceptiveField(left, right, field.stride * stride))], geometry


# ---------------------------------------------------------------------------
# Running


def _take(array: np.ndarray, axis: int, start: int, stop: Optional[int] = None) -> np.ndarray:
    index = [slice(None)] * array.ndim
    index[axis] = slice(start, stop)
    return array[tuple(index)]


def _join(parts: List[np.ndarray], axis: int) -> Optional[np.ndarray]:
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)


class _ConvState:
    """A conv's kept input, in padded coordinates (index 0 is the first left-padding frame)."""

    def __init__(self):
        self.buffer: Optional[np.ndarray] = None
        self.start = 0  # padded index of buffer[..., 0]
        self.emitted = 0  # output frames produced so far


class GraphStream:
    """One stream's state on a StreamPlan: feed input frames with ``accept``, end with ``finish``.

    Both return ``{output name: new frames}`` for the outputs that completed
    frames in this call (the output's shape with only those frames on its time
    axis); an output with no new frame is left out.
    """

    def __init__(self, plan: StreamPlan):
        self.plan = plan
        self.reset()

    def reset(self) -> None:
        self._pending: List[List[Optional[np.ndarray]]] = [[None] * len(p.node.inputs) for p in self.plan.nodes]
        self._convs = {i: _ConvState() for i, p in enumerate(self.plan.nodes) if p.conv is not None}
        self.frames_in = 0

    def accept(self, frames: np.ndarray) -> Dict[str, np.ndarray]:
        """Input frames (the input's shape, any number of frames on its last axis) -> new output frames."""
        frames = np.asarray(frames, dtype=self.plan.input.dtype)
        if frames.ndim != len(self.plan.input.shape):
            raise InputError(f"{self.plan.label}: streamed input {self.plan.input.name!r} must have rank "
                             f"{len(self.plan.input.shape)}, got shape {frames.shape}")
        self.frames_in += frames.shape[-1]
        return self._round(frames, final=False)

    def finish(self) -> Dict[str, np.ndarray]:
        """End of input: the remaining output frames (convs add their right padding).  Then reset."""
        out = self._round(None, final=True)
        self.reset()
        return out

    def _round(self, frames: Optional[np.ndarray], final: bool) -> Dict[str, np.ndarray]:
        plan = self.plan
        new: Dict[str, Optional[np.ndarray]] = {plan.input.name: frames}
        for index, planned in enumerate(plan.nodes):
            pending = self._pending[index]
            for i, (name, stream) in enumerate(zip(planned.node.inputs, planned.streamed)):
                if stream is not None:
                    pending[i] = _join([pending[i], new.get(name)], stream.axis)
            if planned.conv is not None:
                results = self._conv(index, planned, pending, final)
            else:
                results = self._time_local(planned, pending)
            new.update(zip(planned.node.outputs, results))
        return {name: new[name] for name, _ in plan.outputs if new.get(name) is not None}

    def _time_local(self, planned: _PlannedNode, pending) -> List[Optional[np.ndarray]]:
        """Run the op on the frames every streamed input has; keep the rest for the next round."""
        counts = [p.shape[s.axis] if p is not None else 0 for p, s in zip(pending, planned.streamed) if s is not None]
        n = min(counts)
        if n == 0:
            return [None] * len(planned.node.outputs)
        args = list(planned.constants)
        for i, stream in enumerate(planned.streamed):
            if stream is not None:
                args[i] = _take(pending[i], stream.axis, 0, n)
                rest = _take(pending[i], stream.axis, n)
                pending[i] = rest if rest.shape[stream.axis] else None
        return self._call(planned, args)

    def _conv(self, index: int, planned: _PlannedNode, pending, final: bool) -> List[Optional[np.ndarray]]:
        geometry, state = planned.conv, self._convs[index]
        x = pending[0]
        pending[0] = None
        if state.buffer is None and x is not None:
            state.buffer = np.zeros(x.shape[:2] + (geometry.pad_left,), x.dtype)
        if state.buffer is None:
            if final:
                raise GraphError(f"{self.plan.label}: node {planned.node.name!r} (Conv) received no frames")
            return [None]
        parts = [state.buffer, x]
        if final:
            parts.append(np.zeros(state.buffer.shape[:2] + (geometry.pad_right,), state.buffer.dtype))
        state.buffer = _join(parts, 2)
        available = state.start + state.buffer.shape[2]
        ready = (available - geometry.kernel_span - 1) // geometry.stride + 1 if available > geometry.kernel_span else 0
        n = ready - state.emitted
        has_z = len(pending) > 3 and planned.streamed[3] is not None
        if has_z:
            n = min(n, pending[3].shape[2] if pending[3] is not None else 0)
        if n <= 0:
            if final and state.emitted == 0:
                raise GraphError(f"{self.plan.label}: node {planned.node.name!r} (Conv): the input is too short "
                                 f"for kernel span {geometry.kernel_span + 1}")
            return [None]
        lo = state.emitted * geometry.stride - state.start
        hi = (state.emitted + n - 1) * geometry.stride + geometry.kernel_span + 1 - state.start
        args = list(planned.constants)
        args[0] = np.ascontiguousarray(state.buffer[:, :, lo:hi])
        if has_z:
            args[3] = np.ascontiguousarray(pending[3][:, :, :n])
            rest = pending[3][:, :, n:]
            pending[3] = rest if rest.shape[2] else None
        state.emitted += n
        keep_from = state.emitted * geometry.stride
        state.buffer = state.buffer[:, :, keep_from - state.start:]
        state.start = keep_from
        return self._call(planned, args, geometry.attrs)

    def _call(self, planned: _PlannedNode, args, attrs=None) -> List[np.ndarray]:
        node = planned.node
        try:
            return planned.run(OpContext(len(node.outputs)), args, node.attrs if attrs is None else attrs)
        except (GraphError, InputError) as exc:
            raise type(exc)(f"{self.plan.label}: node {node.name!r} ({node.op}): {exc}") from None

