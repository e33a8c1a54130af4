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
        kept = {self.slot_of[name] for name in keep if name in self.slot_of}
        self.release: List[Tuple[int, ...]] = release_points(
            [self.input_slots(node) for node in nodes], [self.output_slots(node) for node in nodes], kept)

    def input_slots(self, node: Node) -> Tuple[int, ...]:
        """Per input of ``node``: its slot, or -1 for a constant or an omitted input."""
        return tuple(self.slot_of[n] if n and n not in self._constants else -1 for n in node.inputs)

    def output_slots(self, node: Node) -> Tuple[int, ...]:
        return tuple(self.slot_of[o] for o in node.outputs)


def release_points(reads: Sequence[Sequence[int]], makes: Sequence[Sequence[int]],
                   keep: Container[int] = ()) -> List[Tuple[int, ...]]:
    """Per step of a schedule that reads the slots ``reads[i]`` (-1: a constant) and makes ``makes[i]``: the slots
    dead once it has run, in slot order.  A slot dies after its last reader, or where it is made if nothing reads
    it; slots in ``keep`` (the graph's outputs) never do, nor unread slots no step makes (the caller's inputs)."""
    last: Dict[int, int] = {}
    for index, (read, made) in enumerate(zip(reads, makes)):
        for slot in made:
            last[slot] = index
        for slot in read:
            if slot >= 0:
                last[slot] = index
    release_after: Dict[int, List[int]] = defaultdict(list)
    for slot in sorted(last):
        if slot not in keep:
            release_after[last[slot]].append(slot)
    return [tuple(release_after[i]) for i in range(len(reads))]


def light_first(reads: Sequence[Sequence[int]], makes: Sequence[Sequence[int]], heavy: Iterable[int],
                skip: Container[int] = (), large: Container[int] = ()) -> List[int]:
    """The indices of a schedule's steps, ``skip`` left out, reordered so that the steps reading no ``heavy`` slot
    (the signal's graph inputs), directly or through other steps, run first, each part in schedule order; a step
    in ``large`` (its outputs too big to hold from the start) stays in place, and so do the steps reading it.

    Those are the small arithmetic on lengths and the masks built from it (with the shapes' values kept by the
    signature, skipped on later runs): Citrinet's 23 blocks each make their mask from the lengths in four numpy
    steps between two convolutions, where numpy's code has left the caches: 25-39 us a step against 2-9 us run
    again at once (Zen 4).  Run back to back at the start they stay in the second regime.  Hoisted whatever their
    size, a 30 s Conformer-CTC's attention masks ([T, T]) lived from the start: its buffers 59 -> 67 MB, no
    faster.  A valid order: a light step reads only light slots, constants and inputs.
    """
    heavy = set(heavy)
    light, rest = [], []
    for index, (read, made) in enumerate(zip(reads, makes)):
        if index in skip:
            continue
        if index in large or any(slot in heavy for slot in read):
            rest.append(index)
            heavy.update(made)
        else:
            light.append(index)
    return light + rest


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
