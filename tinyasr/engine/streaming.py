"""Stateful execution of a conv graph on input that arrives frame by frame.

Every value of the graph that depends on the streamed input is a stream of
frames along its time axis.  Each node keeps what it still needs between calls:

* a ``Conv`` keeps its input from the first frame its next output reads, with
  its left zero padding in front of the first frame, and emits every output
  whose whole kernel span has arrived; ``finish`` appends its right zero
  padding.  Each output frame is computed once, with pads 0 on
  ``[kept context | new frames]``, by the kernels the offline op would pick for
  that input (``PreparedConv1d``: checked once per node, no per-call copies);
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

from tinyasr.errors import GraphError, InputError
from tinyasr.format.encodings.sparse import SPARSE_TYPES, as_dense
from tinyasr.format.graph import Graph, Node
from tinyasr.kernels.conv1d import SHORT_FRAMES, PreparedConv1d
from tinyasr.ops import OpContext, lookup
from tinyasr.ops.common import axes_from, normalize_axis

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
        slots = {name: slot for slot, name in enumerate([info.name] + [o for p in self.nodes for o in p.node.outputs])}
        self.value_count = len(slots)
        self.steps = [(_ConvStep if p.conv is not None else _Step)(p, slots, label) for p in self.nodes]
        self.output_slots = [(name, slots[name]) for name, _ in self.outputs]

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
# Running: each node is a step (built once per plan) with a state per stream.  Values live in a list,
# one slot per graph value, so the per-chunk loop does no name lookups.


def _take(array: np.ndarray, axis: int, start: int, stop: Optional[int] = None) -> np.ndarray:
    index = [slice(None)] * array.ndim
    index[axis] = slice(start, stop)
    return array[tuple(index)]


def _append(kept: Optional[np.ndarray], new: Optional[np.ndarray], axis: int) -> Optional[np.ndarray]:
    if new is None or kept is None:
        return kept if new is None else new
    return np.concatenate((kept, new), axis=axis)


class _Step:
    """One node's part of a round: reads its streamed inputs' new frames from ``values``, writes its outputs'."""

    def __init__(self, planned: _PlannedNode, slots: Dict[str, int], label: str):
        node = planned.node
        self.planned, self.label = planned, label
        self.inputs = tuple((i, slots[name], stream.axis) for i, (name, stream)
                            in enumerate(zip(node.inputs, planned.streamed)) if stream is not None)
        self.outputs = tuple(slots[name] for name in node.outputs)
        self.context = OpContext(len(node.outputs))

    def new_state(self):
        return [None] * len(self.inputs)  # per streamed input: frames not yet used

    def advance(self, state, values: list, final: bool) -> None:
        """A time-local op: run it on the frames every streamed input has; keep the rest for the next round."""
        if len(self.inputs) == 1:  # nothing to wait for
            new = values[self.inputs[0][1]]
            results = None if new is None else self._call(self._args([new]))
            return self._store(values, results)
        for j, (_, slot, axis) in enumerate(self.inputs):
            state[j] = _append(state[j], values[slot], axis)
        n = min(0 if kept is None else kept.shape[axis] for kept, (_, _, axis) in zip(state, self.inputs))
        if n == 0:
            return self._store(values, None)
        ready = []
        for j, (_, _, axis) in enumerate(self.inputs):
            ready.append(_take(state[j], axis, 0, n))
            rest = _take(state[j], axis, n)
            state[j] = rest if rest.shape[axis] else None
        self._store(values, self._call(self._args(ready)))

    def _args(self, streamed: List[np.ndarray]) -> list:
        args = list(self.planned.constants)
        for (i, _, _), value in zip(self.inputs, streamed):
            args[i] = value
        return args

    def _store(self, values: list, results) -> None:
        for j, slot in enumerate(self.outputs):
            values[slot] = None if results is None else results[j]

    def _call(self, args, attrs=None) -> List[np.ndarray]:
        node = self.planned.node
        try:
            return self.planned.run(self.context, args, node.attrs if attrs is None else attrs)
        except (GraphError, InputError) as exc:
            raise self._named(exc) from None

    def _named(self, exc: Exception) -> Exception:
        node = self.planned.node
        return type(exc)(f"{self.label}: node {node.name!r} ({node.op}): {exc}")


class _ConvState:
    """A conv's kept input: frames ``origin .. origin + filled`` of each row of ``rows`` [B, C, capacity] are the
    padded frames from ``start`` on (padded frame 0 is the first left-padding frame), always from the first frame
    the next output reads.

    Emitting only moves ``origin`` on; :meth:`window` shows the rows from ``origin`` as a C-contiguous
    [B, C, capacity] array over ``flat`` (each row runs on into the next row's storage), which the kernels take
    without a copy.  Only when a chunk does not fit before the rows' end are the kept frames moved to the front.
    """

    __slots__ = ("flat", "rows", "origin", "filled", "start", "skip", "emitted", "residual")

    def __init__(self):
        self.rows: Optional[np.ndarray] = None
        self.filled = 0
        self.start = 0
        self.skip = 0  # input frames no output reads (a stride longer than the kernel span) still to arrive
        self.emitted = 0  # output frames produced so far
        self.residual: Optional[np.ndarray] = None  # frames of the residual input Z not yet used

    def allocate(self, lead: Tuple[int, int], dtype, capacity: int) -> None:
        """Zeroed rows [*lead, capacity]; the kept frames, if any, copied to their front."""
        kept = None if self.rows is None else self.rows[:, :, self.origin:self.origin + self.filled]
        self.flat = np.zeros((lead[0] * lead[1] + 1) * capacity, dtype)
        self.rows = self.flat[:-capacity].reshape(tuple(lead) + (capacity,))
        self.origin = 0
        if kept is not None:
            self.rows[:, :, :self.filled] = kept

    def window(self) -> np.ndarray:
        """The kept frames from the first on, then whatever follows: [B, C, capacity], C-contiguous, no copy."""
        return np.ndarray(self.rows.shape, self.rows.dtype, self.flat, self.origin * self.rows.itemsize)

    def append(self, frames: Optional[np.ndarray], zeros: int = 0) -> None:
        """Keep ``frames`` (or, with frames None, ``zeros`` zero frames)."""
        count = zeros if frames is None else frames.shape[2]
        if self.skip:
            dropped = min(self.skip, count)
            self.skip, count = self.skip - dropped, count - dropped
            frames = None if frames is None else frames[:, :, dropped:]
        capacity = self.rows.shape[2]
        if self.origin + self.filled + count > capacity:
            if 2 * (self.filled + count) > capacity:
                self.allocate(self.rows.shape[:2], self.rows.dtype, 2 * (self.filled + count))
            else:
                self.rows[:, :, :self.filled] = self.rows[:, :, self.origin:self.origin + self.filled]
                self.origin = 0
        end = self.origin + self.filled
        self.rows[:, :, end:end + count] = 0 if frames is None else frames
        self.filled += count

    def drop(self, count: int) -> None:
        """Forget the first ``count`` frames: the next output starts past them."""
        if count >= self.filled:
            self.skip += count - self.filled
            self.origin, self.filled = 0, 0
        else:
            self.origin += count
            self.filled -= count
        self.start += count


class _ConvStep(_Step):
    """A Conv: emits every output whose kernel span has arrived (and whose residual frames have)."""

    def __init__(self, planned: _PlannedNode, slots: Dict[str, int], label: str):
        super().__init__(planned, slots, label)
        node, self.geometry = planned.node, planned.conv
        self.x_slot = slots[node.inputs[0]]
        self.z_slot = slots[node.inputs[3]] if len(node.inputs) > 3 and planned.streamed[3] is not None else None
        self.prepared = self._prepare(planned)
        # the short-input depthwise kernel reads SHORT_FRAMES outputs' worth of frames from the buffer
        self.min_frames = self.geometry.kernel_span + SHORT_FRAMES
        # a 1x1 conv at stride 1 without residual keeps nothing: each chunk's frames go straight to the kernel
        self.direct = (self.geometry.kernel_span == self.geometry.pad_left == self.geometry.pad_right == 0
                       and self.geometry.stride == 1 and self.z_slot is None)

    @staticmethod
    def _prepare(planned: _PlannedNode) -> Optional[PreparedConv1d]:
        """The conv's kernels called directly, checked once; None (the op runs each time) for weights a sparse
        kernel runs or int8, or attributes the op itself should report."""
        weight = planned.constants[1]
        if isinstance(weight, SPARSE_TYPES) and len(weight.shape) == 3 and weight.shape[2] > 1:
            weight = as_dense(weight)  # stored sparse for size only: no sparse kernel runs a kernel over 1
        bias = planned.constants[2] if len(planned.constants) > 2 else None
        attrs = planned.conv.attrs
        dilations = attrs.get("dilations", [1])
        if (not isinstance(weight, np.ndarray) or weight.dtype.kind != "f" or weight.ndim != 3
                or not (bias is None or isinstance(bias, np.ndarray))
                or len(attrs.get("strides", [1])) != 1 or len(dilations) != 1
                or list(attrs.get("kernel_shape", [weight.shape[2]])) != [weight.shape[2]]):
            return None
        try:
            return PreparedConv1d(weight, bias, stride=planned.conv.stride, dilation=int(dilations[0]),
                                  group=int(attrs.get("group", 1)), activation=attrs.get("activation", ""),
                                  activation_params=attrs.get("activation_params", ()))
        except GraphError:
            return None

    def new_state(self) -> _ConvState:
        return _ConvState()

    def advance(self, state: _ConvState, values: list, final: bool) -> None:
        geometry, node = self.geometry, self.planned.node
        x = values[self.x_slot]
        if self.direct:
            if final and state.emitted == 0 and x is None:
                raise GraphError(f"{self.label}: node {node.name!r} (Conv) received no frames")
            if x is None or x.shape[2] == 0:
                return self._store(values, None)
            state.emitted += x.shape[2]
            return self._store(values, [self._compute(np.ascontiguousarray(x), x.shape[2], None)])
        if x is not None:
            if state.rows is None:  # the left padding, then room for a few chunks before moving the kept frames
                state.allocate(x.shape[:2], x.dtype, 2 * max(geometry.pad_left + x.shape[2], self.min_frames))
                state.filled = geometry.pad_left
            elif x.shape[:2] != state.rows.shape[:2]:
                raise InputError(f"{self.label}: node {node.name!r} (Conv): input frames of shape {x.shape} after "
                                 f"frames with {state.rows.shape[:2]} as [batch, channels]")
            state.append(x)
        if self.z_slot is not None:
            state.residual = _append(state.residual, values[self.z_slot], 2)
        if state.rows is None:
            if final:
                raise GraphError(f"{self.label}: node {node.name!r} (Conv) received no frames")
            return self._store(values, None)
        if final:
            state.append(None, geometry.pad_right)
        available = state.start + state.filled
        ready = (available - geometry.kernel_span - 1) // geometry.stride + 1 if available > geometry.kernel_span else 0
        n = ready - state.emitted
        if self.z_slot is not None:
            n = min(n, 0 if state.residual is None else state.residual.shape[2])
        if n <= 0:
            if final and state.emitted == 0:
                raise GraphError(f"{self.label}: node {node.name!r} (Conv): the input is too short "
                                 f"for kernel span {geometry.kernel_span + 1}")
            return self._store(values, None)
        residual = None
        if self.z_slot is not None:
            kept = state.residual
            residual = np.ascontiguousarray(kept[:, :, :n])
            state.residual = kept[:, :, n:] if kept.shape[2] > n else None
        self._store(values, [self._compute(state.window(), n, residual)])
        state.emitted += n
        state.drop(state.emitted * geometry.stride - state.start)

    def _compute(self, x: np.ndarray, n: int, residual: Optional[np.ndarray]) -> np.ndarray:
        """n output frames from x[:, :, 0:], the conv's input from the first frame they read."""
        if (self.prepared is not None and x.dtype == np.float32
                and (residual is None or residual.dtype == np.float32)):
            try:
                return self.prepared(x, n, residual)
            except GraphError as exc:
                raise self._named(exc) from None
        args = list(self.planned.constants)
        args[0] = np.ascontiguousarray(x[:, :, :(n - 1) * self.geometry.stride + self.geometry.kernel_span + 1])
        if self.z_slot is not None:
            args[3] = residual
        return self._call(args, self.geometry.attrs)[0]


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
        self._states = [step.new_state() for step in self.plan.steps]
        self._values: List[Optional[np.ndarray]] = [None] * self.plan.value_count
        self.frames_in = 0

    def accept(self, frames: np.ndarray) -> Dict[str, np.ndarray]:
        """Input frames (the input's shape, any number of frames on its last axis) -> new output frames."""
        frames = np.asarray(frames, dtype=self.plan.input.dtype)
        if frames.ndim != len(self.plan.input.shape):
            raise InputError(f"{self.plan.label}: streamed input {self.plan.input.name!r} must have rank "
                             f"{len(self.plan.input.shape)}, got shape {frames.shape}")
        self.frames_in += frames.shape[-1]
        return self._round(frames if frames.shape[-1] else None, final=False)

    def finish(self) -> Dict[str, np.ndarray]:
        """End of input: the remaining output frames (convs add their right padding).  Then reset."""
        out = self._round(None, final=True)
        self.reset()
        return out

    def _round(self, frames: Optional[np.ndarray], final: bool) -> Dict[str, np.ndarray]:
        values = self._values
        values[0] = frames
        for step, state in zip(self.plan.steps, self._states):
            step.advance(state, values, final)
        return {name: values[slot] for name, slot in self.plan.output_slots if values[slot] is not None}
