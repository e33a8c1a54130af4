"""Stateful execution of a graph on input that arrives frame by frame.

Every value of the graph that depends on the streamed input is a stream of
frames along its time axis (a ``Stream``: rank, time axis, receptive field).
The plan asks each node's op how it streams (the rule it registered with,
tinyasr/ops/streaming_rules.py): what its outputs are as streams, and a step
that turns its inputs' new frames into its outputs' new frames, keeping what it
still needs between calls (a Conv's left context, frames a time-local op waits
for on a slower branch, a recurrent state).  Nodes that depend on stored
tensors only are folded once.  This module knows no op by name.

So the concatenated outputs equal an offline run on the whole input (to BLAS
rounding), causal or not; the price of look-ahead (a "same"-padded conv) is
latency: ``receptive_field.right`` input frames.  Ops that mix all frames
(global pooling, ReduceMean over time, Shape, a length input, attention) cannot
stream and are refused at plan time, naming the node, the op and the reason.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from tinyasr.engine import threads
from tinyasr.engine.planner import SlotPlan
from tinyasr.errors import GraphError, InputError
from tinyasr.format.graph import Graph, Node
from tinyasr.ops import OpContext, lookup, stream_rule
from tinyasr.ops.streaming_rules import ReceptiveField, Stream, StreamStep

__all__ = ["GraphStream", "ReceptiveField", "Stream", "StreamPlan"]


class _Scheduled:
    """A node's step with where it reads and writes: ``inputs`` the slots of its streamed inputs, in input order;
    ``first`` that slot when there is only one (-1 otherwise); ``outputs`` the slots of its outputs."""

    __slots__ = ("node", "step", "inputs", "first", "outputs")

    def __init__(self, node: Node, step: StreamStep, inputs: Tuple[int, ...], outputs: Tuple[int, ...]):
        self.node, self.step, self.inputs, self.outputs = node, step, inputs, outputs
        self.first = inputs[0] if len(inputs) == 1 else -1


class StreamPlan:
    """How each node of a model streams; built once, immutable, shared by every stream of the model.

    ``graph`` and ``tensors`` are a Model's (see :meth:`from_model`); the graph's
    one input is streamed along its last axis.
    """

    def __init__(self, graph: Graph, tensors: Dict[str, Any], label: str = "model", fuse: bool = True):
        self.label = label
        if len(graph.inputs) != 1:
            raise GraphError(f"{label}: streaming needs a graph with one input (the signal); this one has "
                             f"{[v.name for v in graph.inputs]} (a length input means the graph masks over the "
                             "whole utterance)")
        info = self.input = graph.inputs[0]
        rank = len(info.shape)
        streams: Dict[str, Stream] = {info.name: Stream(rank, rank - 1, ReceptiveField(0, 0, 1))}
        constants: Dict[str, Any] = dict(tensors)
        planned: List[Tuple[Node, StreamStep]] = []
        for node in graph.nodes:
            run = lookup(node.op, node.name)
            args = tuple(constants.get(name) if name else None for name in node.inputs)
            streamed = tuple(streams.get(name) if name else None for name in node.inputs)
            if not any(streamed):  # depends on stored tensors only: fold it now
                for name, value in zip(node.outputs, run(OpContext(len(node.outputs)), list(args), node.attrs)):
                    constants[name] = value
                continue
            try:
                result = stream_rule(node.op).plan(node, run, args, streamed)
            except GraphError as exc:
                raise GraphError(f"{label}: node {node.name!r} ({node.op}) cannot stream: {exc}") from None
            streams.update(zip(node.outputs, result.outputs))
            planned.append((node, result.step))
        missing = [v.name for v in graph.outputs if v.name not in streams]
        if missing:
            raise GraphError(f"{label}: outputs {missing} do not depend on the input; nothing to stream")
        self.outputs = [(v.name, streams[v.name]) for v in graph.outputs]
        fields = {s.field for _, s in self.outputs}
        self.receptive_field = ReceptiveField(max(f.left for f in fields), max(f.right for f in fields),
                                              max(f.stride for f in fields))
        if fuse:
            planned = _fused(planned, {v.name for v in graph.outputs})
        slots = SlotPlan([info.name], [node for node, _ in planned], constants)
        self.value_count = slots.count
        self.steps = [_Scheduled(node, step, tuple(s for s in slots.input_slots(node) if s >= 0),
                                 slots.output_slots(node)) for node, step in planned]
        self.output_slots = [(name, slots.slot_of[name]) for name, _ in self.outputs]

    @staticmethod
    def from_model(model, fuse: bool = True) -> "StreamPlan":
        """The plan of a loaded runtime Model (its graph and stored tensors)."""
        return StreamPlan(model.graph, dict(model.tensors), label=model.label, fuse=fuse)


def _fused(planned: List[Tuple[Node, StreamStep]], graph_outputs) -> List[Tuple[Node, StreamStep]]:
    """The schedule with each run of consecutive steps that share a ``fuse`` replaced by the one step it returns
    (a chain of convs becomes one compiled call per chunk: ops/conv_program.py)."""
    result = []
    start = 0
    while start < len(planned):
        fuse = planned[start][1].fuse
        end = start + 1
        while fuse is not None and end < len(planned) and planned[end][1].fuse is fuse:
            end += 1
        if fuse is None:
            result.append(planned[start])
        else:
            read_after = {name for node, _ in planned[end:] for name in node.inputs}
            result.append(fuse(planned[start:end], read_after | graph_outputs))
        start = end
    return result


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
        self._states = [scheduled.step.new_state() for scheduled in self.plan.steps]
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
        threads.ensure_configured()
        values = self._values
        values[0] = frames
        try:
            for scheduled, state in zip(self.plan.steps, self._states):
                first = scheduled.first
                results = scheduled.step.advance(
                    state, [values[first]] if first >= 0 else [values[s] for s in scheduled.inputs], final)
                if results is None:
                    for slot in scheduled.outputs:
                        values[slot] = None
                else:  # indexed, not zipped: a step that returns too few outputs fails here, never leaves stale ones
                    for j, slot in enumerate(scheduled.outputs):
                        values[slot] = results[j]
        except (GraphError, InputError) as exc:
            node = getattr(exc, "node", scheduled.node)  # a fused step names the member that failed
            raise type(exc)(f"{self.plan.label}: node {node.name!r} ({node.op}): {exc}") from None
        return {name: values[slot] for name, slot in self.plan.output_slots if values[slot] is not None}
