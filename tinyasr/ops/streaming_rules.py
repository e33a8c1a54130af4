"""How an op runs on a stream: the rule each op declares when it registers, and the steps that run it.

The streaming schedule (tinyasr/engine/streaming.py) follows every value that
depends on the streamed input as a :class:`Stream` (rank, time axis, receptive
field).  For each node it asks the op's rule, once per model, what the node's
outputs are as streams and for the :class:`StreamStep` that turns its inputs'
new frames into its outputs' new frames, chunk after chunk.  The schedule knows
no op by name: a new op family declares one of these kinds and nothing else
changes.

* ``TIME_LOCAL`` / ``TimeLocal(layout)``: output frame t needs input frame t
  only (elementwise ops; with ``layout``, ops that move the time axis:
  Transpose, Squeeze, MatMul with a stored matrix);
* ``AxisOp(default_axis)``: time-local unless its ``axis`` attribute is the
  time axis (Softmax, Concat, Split ...);
* ``LeftContext``: output frame t reads a window of earlier (and maybe later)
  frames, which the op's own step keeps between chunks (Conv: ops/conv_stream.py);
* ``Recurrent(make_step)``: the op carries a state from frame to frame in a step
  of its own (LSTM, GRU); its outputs reach back to the first frame;
* ``Refuses(reason)``: the op mixes frames across time; the plan names the node,
  the op and the reason.  An op that declares nothing refuses (``UNDECLARED``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from tinyasr.errors import GraphError
from tinyasr.format.graph import Node
from tinyasr.ops.common import normalize_axis
from tinyasr.ops.context import OpContext, OpFunction

UNBOUNDED = math.inf  # ReceptiveField.left behind a recurrent op: every earlier frame counts


@dataclass(frozen=True)
class ReceptiveField:
    """Input frames an output frame depends on: ``left`` before and ``right`` after frame ``t * stride``."""

    left: Union[int, float]  # an int, or UNBOUNDED
    right: int
    stride: int


@dataclass(frozen=True)
class Stream:
    """A value that depends on the streamed input: its rank, time axis and receptive field."""

    rank: int
    axis: int
    field: ReceptiveField


class StreamStep:
    """One node's work per chunk.  Built once per plan and shared by every stream of the model, so all that changes
    between chunks lives in the state ``new_state`` returns (kept frames, a recurrent state ...).

    ``fuse``: None, or a function that runs a run of consecutive steps with the same ``fuse`` as one:
    ``fuse([(node, step), ...], keep)`` -> (a node standing for the run: its inputs the values entering it, its
    outputs those in ``keep`` (read after it) that it makes; the run's step).  Errors it raises about one member
    carry that member's node as ``exc.node``."""

    fuse = None

    def new_state(self) -> Any:
        return None

    def advance(self, state, frames: List[Optional[np.ndarray]], final: bool) -> Optional[Sequence[np.ndarray]]:
        """``frames``: for each streamed input, in input order, its new frames this round (None: none).
        ``final``: the input has ended (flush what is kept).  Returns the new frames of every output of the node,
        or None when no output frame is complete.  Errors: GraphError / InputError with a plain message; the
        schedule names the model and the node."""
        raise NotImplementedError


@dataclass(frozen=True)
class NodeStream:
    """A rule's answer for one node: its outputs as streams (one per node output) and the step that runs it."""

    outputs: Tuple[Stream, ...]
    step: StreamStep


# plan(node, run, constants, streamed): ``run`` the op's function; per node input, ``constants[i]`` its stored or
# folded value (None for a streamed or omitted input) and ``streamed[i]`` its Stream (None unless streamed).
Constants = Tuple[Any, ...]
Streamed = Tuple[Optional[Stream], ...]


class StreamRule:
    """How the nodes of an op stream.  ``plan`` checks one node once, at plan time: GraphError with the reason (a
    plain sentence; the schedule names the node and op) when it cannot stream."""

    def plan(self, node: Node, run: OpFunction, constants: Constants, streamed: Streamed) -> NodeStream:
        raise NotImplementedError


def common_field(streamed: Streamed) -> ReceptiveField:
    """The receptive field of a node's streamed inputs together; they must run at one frame rate."""
    live = [s for s in streamed if s is not None]
    strides = {s.field.stride for s in live}
    if len(strides) > 1:
        raise GraphError(f"its inputs run at different frame rates (strides {sorted(strides)})")
    return ReceptiveField(max(s.field.left for s in live), max(s.field.right for s in live), strides.pop())


def _shape(value) -> Tuple[int, ...]:
    return tuple(getattr(value, "shape", np.shape(value)))


# (node, constants, stream of input 0) -> (rank, time axis) of the outputs; GraphError to refuse
Layout = Callable[[Node, Constants, Stream], Tuple[int, int]]


class TimeLocal(StreamRule):
    """Output frame t depends on input frame t only.

    Without ``layout``: an elementwise op, broadcasting as numpy does; every
    streamed input has its time axis in the same place and no stored input spans
    that axis.  With ``layout``: an op that may move or renumber the time axis,
    with its input 0 streamed; ``layout`` says where the axis goes.  The inputs at
    ``aligned_inputs`` (a residual added to the output) may follow the stream too,
    with the output's time axis.
    """

    def __init__(self, layout: Optional[Layout] = None, aligned_inputs: Tuple[int, ...] = ()):
        self.layout, self.aligned_inputs = layout, aligned_inputs

    def plan(self, node, run, constants, streamed):
        field = common_field(streamed)
        if self.layout is None:
            rank, axis = _broadcast_time_axis(constants, streamed)
        else:
            if streamed[0] is None:
                raise GraphError("only its input 0 may follow the stream")
            if any(s is not None for i, s in enumerate(streamed) if i and i not in self.aligned_inputs):
                raise GraphError("more than one streamed input")
            rank, axis = self.layout(node, constants, streamed[0])
            if any(streamed[i] is not None and (streamed[i].rank, streamed[i].axis) != (rank, axis)
                   for i in self.aligned_inputs if i < len(streamed)):
                raise GraphError("a streamed residual's time axis differs from the output's")
        return NodeStream((Stream(rank, axis, field),) * len(node.outputs), AlignedStep(node, run, constants, streamed))


def _broadcast_time_axis(constants: Constants, streamed: Streamed) -> Tuple[int, int]:
    """(rank, time axis) of an elementwise op's output; GraphError if a stored input would mix frames in."""
    live = [s for s in streamed if s is not None]
    rank = max([s.rank for s in live] + [len(_shape(a)) for a in constants if a is not None])
    axes = {rank - s.rank + s.axis for s in live}
    if len(axes) > 1:
        raise GraphError("its streamed inputs have their time axes in different places")
    axis = axes.pop()
    back = rank - axis  # the time axis counted from the end
    for value in constants:
        shape = _shape(value) if value is not None else ()
        if value is not None and len(shape) >= back and shape[-back] != 1:
            raise GraphError(f"a stored input of shape {shape} spans the time axis")
    return rank, axis


TIME_LOCAL = TimeLocal()


class AxisOp(StreamRule):
    """Time-local unless it works along the time axis: its ``axis`` attribute (default ``default_axis``) must be
    another one.  ``several_streams``: more than one input may follow the stream (Concat)."""

    def __init__(self, default_axis: int, several_streams: bool = False):
        self.default_axis, self.several_streams = default_axis, several_streams

    def plan(self, node, run, constants, streamed):
        field = common_field(streamed)
        live = [s for s in streamed if s is not None]
        if len(live) > 1 and not self.several_streams:
            raise GraphError("more than one streamed input")
        stream = live[0]
        if any((s.rank, s.axis) != (stream.rank, stream.axis) for s in live):
            raise GraphError("its streamed inputs have their time axes in different places")
        axis = normalize_axis(node.attrs.get("axis", self.default_axis), stream.rank, node.op)
        if axis == stream.axis:
            raise GraphError(f"it works along axis {axis}, the time axis")
        output = Stream(stream.rank, stream.axis, field)
        return NodeStream((output,) * len(node.outputs), AlignedStep(node, run, constants, streamed))


class LeftContext(StreamRule):
    """Output frame t reads a window of input frames around ``t * stride``: the op's step keeps the frames a later
    output still reads between chunks.  A subclass's ``plan`` reads the window from the node's attributes and
    weights, and returns its own step; ``window_field`` gives the outputs' receptive field."""

    @staticmethod
    def window_field(field: ReceptiveField, before: int, after: int, stride: int) -> ReceptiveField:
        """The outputs' field when output frame u reads input frames ``u * stride - before .. u * stride + after``."""
        return ReceptiveField(field.left + before * field.stride, field.right + after * field.stride,
                              field.stride * stride)


class Recurrent(StreamRule):
    """The op carries a state from frame to frame (LSTM, GRU, a running statistic).

    ``make_step(node, run, constants, stream)`` returns the op's StreamStep; its
    state (``new_state``) holds the recurrent state between chunks, and
    ``advance`` runs the frames that arrived from it.  Only input 0 (the
    sequence) follows the stream; weights and initial states are stored.  By
    default every output keeps the input's rank and time axis; ``layout`` (as for
    TimeLocal) moves it, e.g. ONNX LSTM's Y [T, directions, B, H] from X [T, B, I].
    The outputs depend on every earlier frame: their field's left is UNBOUNDED.
    """

    def __init__(self, make_step: Callable[[Node, OpFunction, Constants, Stream], StreamStep],
                 layout: Optional[Layout] = None):
        self.make_step, self.layout = make_step, layout

    def plan(self, node, run, constants, streamed):
        if streamed[0] is None or any(s is not None for s in streamed[1:]):
            raise GraphError("only its input 0 (the sequence) may follow the stream")
        stream = streamed[0]
        rank, axis = (stream.rank, stream.axis) if self.layout is None else self.layout(node, constants, stream)
        output = Stream(rank, axis, ReceptiveField(UNBOUNDED, stream.field.right, stream.field.stride))
        return NodeStream((output,) * len(node.outputs), self.make_step(node, run, constants, stream))


class Refuses(StreamRule):
    """The op cannot stream: it mixes frames across time (global pooling, a reduction over time, Shape ...)."""

    def __init__(self, reason: str):
        self.reason = reason

    def plan(self, node, run, constants, streamed):
        raise GraphError(self.reason)


UNDECLARED = Refuses("the op has not declared how it streams (its effect on the time axis is unknown)")


# ---------------------------------------------------------------------------------------------- steps


def take(array: np.ndarray, axis: int, start: int, stop: Optional[int] = None) -> np.ndarray:
    """Frames ``start:stop`` of ``array`` along ``axis`` (a view)."""
    index = [slice(None)] * array.ndim
    index[axis] = slice(start, stop)
    return array[tuple(index)]


def append_frames(kept: Optional[np.ndarray], new: Optional[np.ndarray], axis: int) -> Optional[np.ndarray]:
    """``kept`` then ``new`` along ``axis``; either may be None (no frames)."""
    if new is None or kept is None:
        return kept if new is None else new
    return np.concatenate((kept, new), axis=axis)


class AlignedStep(StreamStep):
    """Runs a time-local op on the frames all its streamed inputs have and keeps the rest for the next round: the
    branches of a residual block arrive with different delays."""

    def __init__(self, node: Node, run: OpFunction, constants: Constants, streamed: Streamed):
        self.run, self.attrs, self.constants = run, node.attrs, tuple(constants)
        self.positions = tuple(i for i, s in enumerate(streamed) if s is not None)
        self.axes = tuple(s.axis for s in streamed if s is not None)
        self.context = OpContext(len(node.outputs))

    def new_state(self):
        return [None] * len(self.positions)  # per streamed input: frames not yet used

    def advance(self, state, frames, final):
        if len(frames) == 1:  # nothing to wait for
            if frames[0] is None:
                return None
            args = list(self.constants)
            args[self.positions[0]] = frames[0]
            return self.run(self.context, args, self.attrs)
        for j, axis in enumerate(self.axes):
            state[j] = append_frames(state[j], frames[j], axis)
        n = min(0 if kept is None else kept.shape[axis] for kept, axis in zip(state, self.axes))
        if n == 0:
            return None
        args = list(self.constants)
        for j, (position, axis) in enumerate(zip(self.positions, self.axes)):
            args[position] = take(state[j], axis, 0, n)
            rest = take(state[j], axis, n)
            state[j] = rest if rest.shape[axis] else None
        return self.run(self.context, args, self.attrs)
