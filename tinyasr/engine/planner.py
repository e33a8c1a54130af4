"""Value slots for a schedule: each value a node reads or writes gets a list index, and each slot the step after
which it is dead.  Both schedules (offline.py, streaming.py) number their values here; the offline one frees a
slot's buffer as soon as it is dead, so a deep encoder needs only a few live activations at a time."""

from __future__ import annotations

from collections import defaultdict
from typing import Container, Dict, Iterable, List, Sequence, Tuple

from tinyasr.format.graph import Node
from tinyasr.ops.shape_rules import reads_shape_only, shape_giving_inputs


class SlotPlan:
    """Slots of ``inputs`` (the schedule's inputs, slots 0..) then of every output of ``nodes``, in order.

    A node input named in ``constants`` (stored or folded tensors), or omitted (""), has no slot.
    ``release[i]``: the slots dead once node i has run (their last reader, or their maker if nothing reads them);
    the values named in ``keep`` (the graph's outputs) and unread schedule inputs (the caller's) never are.
    """

    def __init__(self, inputs: Sequence[str], nodes: Sequence[Node], constants: Container[str],
                 keep: Iterable[str] = ()):
        self.slot_of: Dict[str, int] = {name: i for i, name in enumerate(
            list(inputs) + [o for node in nodes for o in node.outputs])}
        self.count = len(self.slot_of)
        self._constants = constants
        last_use = {slot: -1 for slot in self.slot_of.values()}  # -1: never read; dies where it is made
        for index, node in enumerate(nodes):
            for name in node.inputs:
                if name and name not in constants:
                    last_use[self.slot_of[name]] = index
        kept = {self.slot_of[name] for name in keep if name in self.slot_of}
        made_by = {self.slot_of[o]: i for i, node in enumerate(nodes) for o in node.outputs}
        release_after: Dict[int, List[int]] = defaultdict(list)
        for slot, index in last_use.items():
            if slot in kept or (index < 0 and slot not in made_by):
                continue  # graph outputs live to the end; unread graph inputs belong to the caller
            release_after[max(index, made_by.get(slot, -1))].append(slot)
        self.release: List[Tuple[int, ...]] = [tuple(release_after[i]) for i in range(len(nodes))]

    def input_slots(self, node: Node) -> Tuple[int, ...]:
        """Per input of ``node``: its slot, or -1 for a constant or an omitted input."""
        return tuple(self.slot_of[n] if n and n not in self._constants else -1 for n in node.inputs)

    def output_slots(self, node: Node) -> Tuple[int, ...]:
        return tuple(self.slot_of[o] for o in node.outputs)


def signature_values(inputs: Sequence[str], nodes: Sequence[Node], constants: Container[str]) -> List[int]:
    """Indices of the nodes whose outputs are a function of the graph inputs' shapes and dtypes alone.

    An exported graph recomputes its shape arithmetic on every run (Shape -> Gather -> Unsqueeze -> Concat ->
    Reshape: about 40 % of a NeMo Conformer export's nodes); the offline schedule runs these nodes once per
    input-shape signature and keeps their outputs.  A value qualifies when an op that reads shapes only
    (Shape, Size) makes it from a tensor whose shape is signature-determined, or when it is made from
    qualifying values and stored tensors only; a tensor's shape is signature-determined when it is a graph
    input's, or its op's shape rule (tinyasr/ops/shape_rules.py) says its shape follows from inputs that are.
    """
    fixed_shape = set(inputs)  # values whose shape the signature fixes (constants: always)
    fixed_value = set()  # values the signature fixes
    chosen = []
    for index, node in enumerate(nodes):
        present = [name for name in node.inputs if name]

        def known(name, of):
            return name in constants or name in of

        if reads_shape_only(node.op):
            value = bool(present) and known(present[0], fixed_shape)
        else:
            value = bool(present) and all(known(name, fixed_value) for name in present)
        if value:
            chosen.append(index)
            fixed_value.update(node.outputs)
            fixed_shape.update(node.outputs)
            continue
        first = shape_giving_inputs(node.op)  # inputs from here on give the output shape by their values
        if first is not None and all(known(name, fixed_shape) for name in node.inputs[:first] if name) and all(
                known(name, fixed_value) for name in node.inputs[first:] if name):
            fixed_shape.update(node.outputs)
    return chosen
