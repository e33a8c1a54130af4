"""Value slots for a schedule: each value a node reads or writes gets a list index, and each slot the step after
which it is dead.  Both schedules (offline.py, streaming.py) number their values here; the offline one frees a
slot's buffer as soon as it is dead, so a deep encoder needs only a few live activations at a time."""

from __future__ import annotations

from collections import defaultdict
from typing import Container, Dict, Iterable, List, Sequence, Tuple

from tinyasr.format.graph import Node


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
