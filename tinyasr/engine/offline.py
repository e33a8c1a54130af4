"""Model: load a .tasr file and execute its graph with the op library.

Everything that does not depend on the input is settled at load: each node's op
function, where each of its inputs comes from (a stored tensor or a value slot),
and after which node each value is dead.  A run then walks a flat list of steps:
the graph's order on the first run of an input-shape signature, then the steps
that read nothing of the signal (lengths, masks) first (planner.light_first).

Buffers: ops ask the run context for output buffers.  The context takes them
from a pool kept per input-shape signature, so the second run with the same
shapes allocates nothing; a value's buffer returns to the pool as soon as the
last node reading it (or any view of it) has run, so a deep encoder needs only
a few live activations at a time.  Pools live in thread-local storage: one
Model can serve several threads.  Outputs are always copied out of the pool.
"""

from __future__ import annotations

import math
import os
import threading
import types
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tinyasr.engine import threads
from tinyasr.engine.planner import SlotPlan, light_first, release_points, signature_values
from tinyasr.errors import GraphError, InputError, TinyASRError
from tinyasr.format.container import read_model
from tinyasr.format.graph import Graph, Node, ValueInfo
from tinyasr.model_cache import resolve_model_path
from tinyasr.ops import ENCODED_WEIGHT_INPUTS, OpContext, OpFunction, check_node_attrs, lookup

# Input-shape signatures whose buffers a thread keeps (a recogniser sees a few lengths over and over).
MAX_PLANS_PER_THREAD = 4
# Largest output of a signature-determined node (planner.signature_values) kept between runs: the shape
# arithmetic is a few int64s; a Conformer's position projection [2T - 1, d] is kept up to about 25 s of input.
SIGNATURE_VALUE_MAX_BYTES = 1 << 20
# Largest output of a step that reads nothing of the signal run first from a signature's second run on
# (planner.light_first): Citrinet's masks are [1, 1, T] (4 KB at 10 s); a Conformer's [T, T] ones stay in place.
LIGHT_STEP_MAX_BYTES = 1 << 16


@dataclass(frozen=True)
class _Step:
    """One node, resolved: ``slots[i]`` is the value slot of input i (-1: a constant, in ``constants[i]``)."""

    node: Node
    run: OpFunction
    slots: Tuple[int, ...]
    constants: Tuple[Any, ...]
    outputs: Tuple[int, ...]


_Recorded = Tuple[int, Tuple[np.ndarray, ...], Tuple[int, ...], Optional[OpFunction]]
# A run's order of steps (Model._schedule): (index into Model._steps, the value slots dead once it has run, and its
# input positions whose slots are among them: the only possible donors)
_Schedule = List[Tuple[int, Tuple[int, ...], Tuple[int, ...]]]

ALIGNMENT = 64  # bytes: a cache line, one AVX-512 register


def aligned_empty(shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """np.empty whose data starts on a 64-byte boundary.

    numpy only promises 16 bytes.  A kernel's vector loads of an activation row at frame t0 (a multiple of
    its tile) then straddle two cache lines: the sparse kernels, which load activations once per multiply-add,
    ran 1.4x faster on aligned buffers (kernels.md machine, CSR 256x256 and 512x512).
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


class _BufferPool:
    """The buffers of one input-shape signature, reused run after run (64-byte aligned, see aligned_empty)."""

    def __init__(self):
        # id of the memory's owner (what every view's .base is) -> buffer; the buffer keeps its owner
        # alive, so ids stay unique.
        self.owned: Dict[int, np.ndarray] = {}
        self.free: Dict[Tuple, List[np.ndarray]] = defaultdict(list)
        self.allocations = 0
        # outputs of the signature-determined steps, kept from the first run (slot -> private copy); None until
        # that run is over
        self.signature_values: Optional[Dict[int, np.ndarray]] = None
        # the order of the steps that run once signature values are kept (Model._recording_schedule)
        self.schedule: Optional[_Schedule] = None
        # those steps, each with the buffers its ctx.output calls got, in order, the slots dead after it and what
        # its op offered to replay it with (ctx.replay_with) or None: recorded on the second run, replayed from
        # the third on (see Model._replay)
        self.tape: Optional[List[_Recorded]] = None

    def reset(self) -> None:
        """Start of a run: every buffer is free."""
        self.free.clear()
        for buffer in self.owned.values():
            self.free[(buffer.shape, buffer.dtype.str)].append(buffer)

    def take(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        free = self.free.get((shape, dtype.str))
        if free:
            return free.pop()
        buffer = aligned_empty(shape, dtype)
        self.owned[id(buffer.base)] = buffer
        self.allocations += 1
        return buffer

    def give_back(self, buffer: np.ndarray) -> None:
        self.free[(buffer.shape, buffer.dtype.str)].append(buffer)

    def owner(self, array) -> Optional[int]:
        """The key of the pool buffer ``array`` is (or views), or None."""
        while isinstance(array, np.ndarray):
            array = array.base
            if id(array) in self.owned:
                return id(array)
        return None


class _RunContext(OpContext):
    """Hands ops pool buffers; tracks which buffers live values still reference."""

    def __init__(self, pool: _BufferPool, slot_count: int, record: bool = False):
        super().__init__()
        self.pool = pool
        self.references: Dict[int, int] = defaultdict(int)  # pool buffer id -> live values on it
        self.slot_owner: List[Optional[int]] = [None] * slot_count
        self.donatable: List[Optional[np.ndarray]] = []
        self.recorded: Optional[List[np.ndarray]] = [] if record else None  # this step's buffers, when recording
        self.replay: Optional[OpFunction] = None  # what this step offered to be replayed with, when recording

    def output(self, shape, dtype=np.float32, donors=()) -> np.ndarray:
        shape, dtype = tuple(map(int, shape)), np.dtype(dtype)
        buffer = None
        for i in donors:
            candidate = self.donatable[i] if i < len(self.donatable) else None
            if candidate is not None and candidate.shape == shape and candidate.dtype == dtype:
                self.donatable = [None if d is candidate else d for d in self.donatable]
                buffer = candidate
                break
        if buffer is None:
            buffer = self.pool.take(shape, dtype)
        if self.recorded is not None:
            self.recorded.append(buffer)
        return buffer

    def replay_with(self, replay: OpFunction) -> None:
        if self.recorded is not None:
            self.replay = replay

    def prepare(self, step: _Step, args: List[Any], dying: Tuple[int, ...]) -> None:
        """Mark as donatable the inputs that are whole pool buffers no other live value uses (of ``dying``: the
        input positions whose slots are dead after the step in this run's order)."""
        self.num_outputs = len(step.outputs)
        if not dying:  # most steps: every input lives on (planned once per order, see Model._schedule)
            self.donatable = []
            return
        donatable: List[Optional[np.ndarray]] = [None] * len(args)
        for i in dying:
            if self._sole_owner(step.slots[i], args[i]):
                donatable[i] = args[i]
        self.donatable = donatable

    def _sole_owner(self, slot: int, array) -> bool:
        owner = self.slot_owner[slot]
        return owner is not None and self.pool.owned[owner] is array and self.references[owner] == 1

    def bind(self, slot: int, array) -> None:
        owner = self.pool.owner(array)
        self.slot_owner[slot] = owner
        if owner is not None:
            self.references[owner] += 1

    def unbind(self, slot: int) -> None:
        owner, self.slot_owner[slot] = self.slot_owner[slot], None
        if owner is not None:
            self.references[owner] -= 1
            if self.references[owner] == 0:
                self.pool.give_back(self.pool.owned[owner])


class _ReplayContext(OpContext):
    """Hands each step the buffers the recorded run gave it, in the same order (``Model._replay``); a request
    that does not match the recording (another shape or dtype, or more of them) gets a fresh buffer."""

    def __init__(self, pool: _BufferPool):
        super().__init__()
        self.pool = pool
        self.buffers: Tuple[np.ndarray, ...] = ()
        self.next = 0

    def output(self, shape, dtype=np.float32, donors=()) -> np.ndarray:
        if self.next < len(self.buffers):
            buffer = self.buffers[self.next]
            self.next += 1
            if buffer.shape == tuple(shape) and buffer.dtype == dtype:  # ints and dtypes compare as they are
                return buffer
        self.pool.allocations += 1
        return aligned_empty(tuple(map(int, shape)), np.dtype(dtype))


class Model:
    """A graph with its stored tensors, ready to run.  Safe to share between threads."""

    def __init__(self, graph: Graph, tensors: Mapping[str, Any], manifest: Optional[dict] = None,
                 path: Optional[str] = None, decoder_tensors: Optional[Mapping[str, Any]] = None):
        self.label = os.path.basename(path) if path else "model"  # names the model in error messages
        try:
            graph.validate(tensors.keys())
            _check_declared_dtypes(graph)
            _check_encoded_tensor_uses(graph, tensors)
            slots = SlotPlan([v.name for v in graph.inputs], graph.nodes, tensors, [v.name for v in graph.outputs])
            self._steps = self._plan_steps(graph, tensors, slots)
            self._signature_steps = frozenset(signature_values([v.name for v in graph.inputs], graph.nodes, tensors))
            self._first_schedule = self._schedule(range(len(self._steps)), slots.release)
            # the signal's inputs (rank 2 and up; a lengths input is rank 1), after which light steps are not
            self._heavy_inputs = frozenset(i for i, v in enumerate(graph.inputs) if len(v.shape) >= 2)
        except GraphError as exc:
            raise GraphError(f"{self.label}: {exc}") from None
        self.graph = graph
        self.manifest = manifest or {}
        self.path = path
        self.tensors = types.MappingProxyType(dict(tensors))  # stored tensors as the ops see them (read-only)
        # stored tensors no node reads: a transducer's prediction network and joint, which its decoder entry
        # names and the Recognizer checks (tinyasr.decoding.transducer_decoder.transducer_of)
        self.decoder_tensors = types.MappingProxyType(dict(decoder_tensors or {}))
        self._slot_count = slots.count
        self._output_slots = [slots.slot_of.get(v.name, -1) for v in graph.outputs]  # -1: a stored tensor
        self._output_constants = [tensors.get(v.name) for v in graph.outputs]
        self._local = threading.local()

    # ------------------------------------------------------------------ metadata

    @property
    def inputs(self) -> List[ValueInfo]:
        return list(self.graph.inputs)

    @property
    def outputs(self) -> List[ValueInfo]:
        return list(self.graph.outputs)

    @property
    def frontend(self) -> Optional[dict]:
        return self.manifest.get("frontend")

    @property
    def decoder(self) -> Optional[dict]:
        return self.manifest.get("decoder")

    # ------------------------------------------------------------------ planning (once, at load)

    @staticmethod
    def _plan_steps(graph: Graph, tensors: Mapping[str, Any], slots: SlotPlan) -> List[_Step]:
        """Resolve ops, check their attributes and input sources."""
        functions = [lookup(node.op, node.name) for node in graph.nodes]
        for node in graph.nodes:
            check_node_attrs(node)
        return [_Step(node, run, slots.input_slots(node),
                      tuple(tensors[n] if n in tensors else None for n in node.inputs), slots.output_slots(node))
                for node, run in zip(graph.nodes, functions)]

    def _schedule(self, order: Iterable[int], release: Sequence[Tuple[int, ...]]) -> _Schedule:
        """The steps ``order`` names, with ``release[i]`` the slots dead after the i-th of them."""
        steps = self._steps
        return [(i, dead, tuple(k for k, slot in enumerate(steps[i].slots) if slot >= 0 and slot in dead))
                for i, dead in zip(order, release)]

    # ------------------------------------------------------------------ running

    def run(self, inputs: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        """Run the graph; returns {output name: fresh array in the declared dtype}."""
        threads.ensure_configured()
        arrays = self._check_inputs(inputs)
        # The thread count is part of the signature: kernels and work splits are chosen for it (a replayed step
        # repeats those choices).
        pool = self._pool_for((threads.get_num_threads(),) + tuple((a.shape, a.dtype.str) for a in arrays))
        if pool.tape is not None:
            return self._outputs(self._replay(pool, arrays))
        pool.reset()
        kept = pool.signature_values
        tape: Optional[List[_Recorded]] = None if kept is None else []
        ctx = _RunContext(pool, self._slot_count, record=tape is not None)
        values: List[Any] = [None] * len(ctx.slot_owner)
        values[: len(arrays)] = arrays
        first_run = kept is None
        large = set()  # the first run's steps with an output over LIGHT_STEP_MAX_BYTES
        if first_run:
            kept, schedule, record = {}, self._first_schedule, self._signature_steps
        else:
            schedule, record = pool.schedule, frozenset()
            for slot, value in kept.items():  # never pool buffers: no op writes into them, none donates them
                values[slot] = value
        for index, release, dying in schedule:
            step = self._steps[index]
            args = [values[s] if s >= 0 else c for s, c in zip(step.slots, step.constants)]
            ctx.prepare(step, args, dying)
            results = self._run_step(step, ctx, args)
            for slot, result in zip(step.outputs, results):
                values[slot] = result
                ctx.bind(slot, result)
            if index in record:
                _keep_signature_values(kept, step, results)
            if first_run and any(getattr(result, "nbytes", 0) > LIGHT_STEP_MAX_BYTES for result in results):
                large.add(index)
            if tape is not None:
                tape.append((index, tuple(ctx.recorded), release, ctx.replay))
                ctx.recorded.clear()
                ctx.replay = None
            for slot in release:
                ctx.unbind(slot)
                values[slot] = None
        if first_run:
            pool.signature_values = kept
            pool.schedule = self._recording_schedule(frozenset(
                i for i in self._signature_steps if all(slot in kept for slot in self._steps[i].outputs)), large)
        else:
            pool.tape = tape
        return self._outputs(values)

    def _recording_schedule(self, skipped: frozenset, large: set) -> _Schedule:
        """The order of the steps from the second run of a signature on (its kept values in place of the
        skipped steps): light steps first (planner.light_first; those in ``large`` excepted), with the slots dead
        after each in that order."""
        steps = self._steps
        order = light_first([s.slots for s in steps], [s.outputs for s in steps], self._heavy_inputs, skipped, large)
        keep = {slot for slot in self._output_slots if slot >= 0}
        return self._schedule(order, release_points([steps[i].slots for i in order], [steps[i].outputs for i in order],
                                                    keep))

    def _replay(self, pool: _BufferPool, arrays: List[np.ndarray]) -> List[Any]:
        """A run of a signature seen twice already: every step gets the buffers it got on the recorded run.

        With the same input shapes the steps ask for the same buffers in the same order, so the pool's
        bookkeeping (which buffers live values use, which inputs an op may write over, what to give back when)
        would reach the same answers again: a Conformer spent ~4 us per node on it.  Liveness is the recorded
        run's: a buffer holds each value over the same steps, so no value is overwritten while still read; a
        request the recording cannot serve gets a fresh buffer (counted in plan_stats' allocations).  A step whose
        op offered a replay (ctx.replay_with: the op's checks and kernel choices made on the recorded run) runs
        that instead: Conv's cost ~10 us a node (a 90 %-sparse encoder's 61 nodes ~6 % of its 10 s run)."""
        ctx = _ReplayContext(pool)
        values: List[Any] = [None] * self._slot_count
        values[: len(arrays)] = arrays
        for slot, value in pool.signature_values.items():
            values[slot] = value
        steps = self._steps
        for index, buffers, release, replay in pool.tape:
            step = steps[index]
            ctx.buffers, ctx.next, ctx.num_outputs = buffers, 0, len(step.outputs)
            results = self._run_step(step, ctx, [values[s] if s >= 0 else c for s, c in zip(step.slots,
                                                                                               step.constants)],
                                     replay)
            for slot, result in zip(step.outputs, results):
                values[slot] = result
            for slot in release:
                values[slot] = None
        return values

    def _outputs(self, values: List[Any]) -> Dict[str, np.ndarray]:
        return {
            info.name: self._fresh_output(info, values[slot] if slot >= 0 else constant)
            for info, slot, constant in zip(self.graph.outputs, self._output_slots, self._output_constants)
        }

    def _fresh_output(self, info: ValueInfo, value) -> np.ndarray:
        """A C-ordered copy in the declared dtype; a cast across kinds (float -> int) means a bad graph."""
        value = np.asarray(value)
        if not np.can_cast(value.dtype, info.dtype, "same_kind"):
            raise GraphError(
                f"{self.label}: output {info.name!r} is computed as {value.dtype} but declared {info.dtype}"
            )
        return np.array(value, dtype=info.dtype, order="C", copy=True)

    def _run_step(self, step: _Step, ctx: OpContext, args: List[Any],
                  replay: Optional[OpFunction] = None) -> List[np.ndarray]:
        node = step.node
        try:
            results = (replay or step.run)(ctx, args, node.attrs)
        except (GraphError, InputError) as exc:
            raise type(exc)(f"{self.label}: node {node.name!r} ({node.op}): {exc}") from None
        except TinyASRError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, ZeroDivisionError, FloatingPointError,
                OverflowError) as exc:  # attributes are checked at load; this names the node if an op still slips
            shapes = ", ".join(str(getattr(a, "shape", None)) for a in args)
            raise GraphError(
                f"{self.label}: node {node.name!r} ({node.op}) failed on inputs of shapes {shapes}: {exc}"
            ) from None
        except MemoryError as exc:  # a hostile or broken graph asking for absurd sizes (pads, Tile, Range ...)
            raise GraphError(f"{self.label}: node {node.name!r} ({node.op}) needs more memory than is available: "
                             f"{exc}") from None
        if len(results) < len(step.outputs):
            raise GraphError(
                f"{self.label}: node {node.name!r} ({node.op}) declares {len(step.outputs)} outputs "
                f"but the op produced {len(results)}"
            )
        return results

    def _pool_for(self, signature) -> _BufferPool:
        plans = getattr(self._local, "plans", None)
        if plans is None:
            plans = self._local.plans = OrderedDict()
            self._local.allocations_before = 0
        pool = plans.pop(signature, None)
        if pool is None:
            pool = _BufferPool()
            if len(plans) >= MAX_PLANS_PER_THREAD:
                _, evicted = plans.popitem(last=False)
                self._local.allocations_before += evicted.allocations
        plans[signature] = pool
        return pool

    def plan_stats(self) -> Dict[str, int]:
        """This thread's buffer plans: how many, their buffers and bytes, and buffers allocated so far."""
        plans = getattr(self._local, "plans", None) or {}
        buffers = [b for pool in plans.values() for b in pool.owned.values()]
        return {
            "plans": len(plans),
            "buffers": len(buffers),
            "bytes": sum(b.nbytes for b in buffers),
            "allocations": getattr(self._local, "allocations_before", 0) + sum(p.allocations for p in plans.values()),
        }

    # ------------------------------------------------------------------ input checks

    def _check_inputs(self, inputs: Mapping[str, Any]) -> List[np.ndarray]:
        if not isinstance(inputs, Mapping):
            expected = "; ".join(v.describe() for v in self.graph.inputs)
            raise InputError(f"{self.label}: run() takes a dict of input name -> array; expected inputs: {expected}")
        names = {v.name for v in self.graph.inputs}
        missing = [v.name for v in self.graph.inputs if v.name not in inputs]
        unexpected = [str(n) for n in inputs if n not in names]
        if missing or unexpected:
            expected = "; ".join(v.describe() for v in self.graph.inputs)
            problem = "; ".join(
                text for text in (missing and f"missing input(s) {missing}",
                                  unexpected and f"unexpected input(s) {unexpected}") if text
            )
            raise InputError(f"{self.label}: {problem}; expected inputs: {expected}")
        symbols: Dict[str, Tuple[int, str]] = {}
        arrays = []
        for info in self.graph.inputs:
            array = _coerce(info, inputs[info.name], self.label)
            if array.ndim != len(info.shape):
                raise InputError(
                    f"{self.label}: input {info.name!r} has shape {array.shape} (rank {array.ndim}); "
                    f"expected rank {len(info.shape)}: {info.describe()}"
                )
            for axis, (size, declared) in enumerate(zip(array.shape, info.shape)):
                if isinstance(declared, int) and declared >= 0 and size != declared:
                    raise InputError(
                        f"{self.label}: input {info.name!r} has size {size} on axis {axis}; expected {declared} "
                        f"({info.describe()})"
                    )
                if isinstance(declared, str) and declared not in ("", "?"):
                    seen = symbols.setdefault(declared, (size, f"{info.name!r} axis {axis}"))
                    if seen[0] != size:
                        raise InputError(
                            f"{self.label}: dimension {declared!r} is {seen[0]} in input {seen[1]} but {size} in "
                            f"input {info.name!r} axis {axis}"
                        )
            arrays.append(array)
        return arrays


def _keep_signature_values(kept: Dict[int, np.ndarray], step: _Step, results) -> None:
    """Private copies of a signature-determined step's outputs, if all are small arrays (else it runs each time)."""
    if all(isinstance(r, np.ndarray) and r.nbytes <= SIGNATURE_VALUE_MAX_BYTES for r in results[: len(step.outputs)]):
        for slot, result in zip(step.outputs, results):
            kept[slot] = np.array(result, copy=True)


def _check_declared_dtypes(graph: Graph) -> None:
    """Graph inputs and outputs must declare a numeric numpy dtype (bool, int, uint, float)."""
    for what, values in (("input", graph.inputs), ("output", graph.outputs)):
        for info in values:
            try:
                kind = np.dtype(info.dtype).kind
            except (TypeError, ValueError):  # numpy raises either, depending on the string
                kind = None
            if kind not in ("b", "i", "u", "f"):
                raise GraphError(f"graph {what} {info.name!r} declares dtype {info.dtype[:40]!r}; "
                                 "expected a numeric type such as float32 or int64")


def _check_encoded_tensor_uses(graph: Graph, tensors: Mapping[str, Any]) -> None:
    """A stored tensor that is not a plain array (CSR, BSR, int8, ternary) may only be the weight of an op
    that dispatches on it (ops.ENCODED_WEIGHT_INPUTS); anywhere else an op would receive a foreign object."""
    encoded = {name for name, value in tensors.items() if not isinstance(value, np.ndarray)}
    if not encoded:
        return
    for node in graph.nodes:
        allowed = ENCODED_WEIGHT_INPUTS.get(node.op, ())
        for position, name in enumerate(node.inputs):
            if name in encoded and position not in allowed:
                raise GraphError(
                    f"node {node.name!r} ({node.op}) reads the {type(tensors[name]).__name__} tensor {name!r} "
                    f"as input {position}; encoded weights can only feed "
                    + ", ".join(f"{op} input(s) {list(p)}" for op, p in ENCODED_WEIGHT_INPUTS.items())
                )
    for info in graph.outputs:
        if info.name in encoded:
            raise GraphError(f"graph output {info.name!r} is the encoded tensor {info.name!r}; outputs must be arrays")


def _coerce(info: ValueInfo, value: Any, label: str) -> np.ndarray:
    """The input as the declared dtype: exact, or a cast that loses nothing that matters.

    Floats of any width go to the declared float type; other casts must be safe
    (int16 -> float32, int32 -> int64) or integers that fit.  Floats are never
    truncated into an integer input.
    """
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{label}: input {info.name!r} is not an array: {exc}") from None
    want = np.dtype(info.dtype)
    if array.dtype == want:
        return array
    if array.dtype.kind not in "biuf":
        raise InputError(f"{label}: input {info.name!r} has dtype {array.dtype}; expected {want}")
    if (want.kind == "f" and array.dtype.kind == "f") or np.can_cast(array.dtype, want, "safe"):
        return array.astype(want)
    if want.kind in "iu" and array.dtype.kind in "iu":
        limits = np.iinfo(want)
        if array.size == 0 or (limits.min <= array.min() and array.max() <= limits.max):
            return array.astype(want)
        raise InputError(f"{label}: input {info.name!r} has {array.dtype} values outside the range of {want}")
    raise InputError(
        f"{label}: input {info.name!r} has dtype {array.dtype}, which cannot be converted to the declared {want} "
        "without losing values; pass an array of that dtype"
    )


def _prepare_tensor(model_file, name: str):
    """A stored tensor as the ops see it: float16 weights stored to save space become float32, once."""
    tensor = model_file.tensor(name)
    entry = model_file.entry(name)
    if isinstance(tensor, np.ndarray) and tensor.dtype == np.float16 and entry.params.get("upcast_to") == "float32":
        return tensor.astype(np.float32)
    return tensor


def load_model(path) -> Model:
    """Read a .tasr file, or the bundled or downloaded model of that name as the Recognizer finds it
    (tinyasr.model_cache), strictly (ModelFileError on any problem), and prepare it to run."""
    model_file = read_model(resolve_model_path(path))
    used = {name for node in model_file.graph.nodes for name in node.inputs}
    used.update(v.name for v in model_file.graph.outputs)
    tensors = {name: _prepare_tensor(model_file, name) for name in model_file.tensor_names() if name in used}
    others = {name: _prepare_tensor(model_file, name) for name in model_file.tensor_names() if name not in used}
    return Model(model_file.graph, tensors, manifest=model_file.manifest, path=model_file.path,
                 decoder_tensors=others)
