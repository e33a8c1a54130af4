"""Consecutive streamed Conv nodes run as one step: one compiled call per chunk (tinyasr/kernels/conv_program.py).

A ConvStep whose conv the program runs (float weights, depthwise with one output channel per input channel or
pointwise) carries a :class:`ConvForm`.  The streaming schedule hands every run of such steps to :func:`fuse`,
which returns one StreamStep reading the values that enter the run and producing the values read after it.  The
node-by-node steps stay the reference: tests/test_streaming.py checks the program against them and the offline
run.  Batch items run one after another, each with its own state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from numba import typed

from tinyasr.errors import GraphError, InputError
from tinyasr.format.graph import Node
from tinyasr.kernels import conv_program as program
from tinyasr.kernels import tuning
from tinyasr.ops.streaming_rules import StreamStep


@dataclass(frozen=True)
class ConvForm:
    """What the program needs of one conv: its weight [Cout, Cin / group * K] as stored (the layout the kernel
    reads is made only when a plan fuses the conv: :meth:`kernel_weight`), bias [1, Cout] or None, geometry and
    activation, whether a residual (input 3) is added, and whether it reads its input in place (``direct``)."""

    kind: int
    weight: np.ndarray
    bias: Optional[np.ndarray]
    channels_in: int
    channels_out: int
    span: int
    stride: int
    dilation: int
    pad_left: int
    pad_right: int
    act: int
    lo: float
    hi: float
    residual: bool
    direct: bool

    def kernel_weight(self) -> np.ndarray:
        """The weight as the program's kernels read it, read-only: pack_strips's strips."""
        return _read_only(program.pack_strips(self.weight))


def conv_form(prepared, geometry, residual: bool, direct: bool) -> Optional[ConvForm]:
    """The program's form of a conv with PreparedConv1d ``prepared`` and ConvGeometry ``geometry`` (``direct``:
    ConvStep's: it keeps no window), or None when the program has no kernel for it (a dense conv over several
    taps, a grouped one, a depthwise multiplier)."""
    if prepared is None:
        return None
    if prepared.depthwise and prepared.channels_out == prepared.channels_in:
        kind = program.DEPTHWISE
    elif prepared.pointwise:
        kind = program.POINTWISE
    else:
        return None
    bias = _read_only(prepared.bias.reshape(1, -1)) if prepared.bias.size else None
    return ConvForm(kind, prepared.weight_2d, bias, prepared.channels_in, prepared.channels_out, geometry.kernel_span,
                    geometry.stride, prepared.dilation, geometry.pad_left, geometry.pad_right, prepared.act,
                    prepared.lo, prepared.hi, residual, direct and kind == program.POINTWISE)


def _read_only(array: np.ndarray, dtype=np.float32) -> np.ndarray:
    view = np.ascontiguousarray(array, dtype=dtype).view()
    view.flags.writeable = False
    return view


# Rows each buffer starts with (they double when a chunk brings more): a 160 ms chunk at a 10 ms hop fits
START_ROWS = 16
# The rounds ConvProgram times its weights' prefetch on: each entering value brings the frames of an 80 ms chunk at
# a 10 ms hop, after rounds of FILL_FRAMES until every conv has computed an output (a model's look-ahead, up to
# FILL_LIMIT frames)
CALIBRATION_FRAMES = 8
FILL_FRAMES = 64
FILL_LIMIT = 4096
_NO_FRAMES = np.zeros((0, 0), np.float32)  # what enters run_round_through in a round without new input frames


class ConvProgram(StreamStep):
    """The convs ``members`` (node, ConvStep with a form), in schedule order, as one step.  Its inputs are the values
    the members read that none of them makes, its outputs those in ``keep`` (read after the run, or graph outputs)
    that a member makes; ``node`` stands for the run in the schedule."""

    def __init__(self, members: Sequence[Tuple[Node, StreamStep]], keep):
        self.members = [node for node, _ in members]
        forms = [step.form for _, step in members]
        made = {name for node, _ in members for name in node.outputs}
        self.inputs: List[str] = []  # entering values, in order of first use
        self.input_channels: List[int] = []
        self.input_readers: List[Node] = []  # the first member reading each
        buffer_of: Dict[str, int] = {}  # a value's buffer: its new frames of the round
        channels: List[int] = []  # per buffer

        def buffer(name: Optional[str], width: int) -> int:
            """The buffer of value ``name`` (None: a new one of the step's own, a window or pending residual)."""
            if name in buffer_of:
                return buffer_of[name]
            if name is not None:
                buffer_of[name] = len(channels)
            channels.append(width)
            return len(channels) - 1

        for (node, _), form in zip(members, forms):
            for name, width in ((node.inputs[0], form.channels_in),
                                (node.inputs[3] if form.residual else None, form.channels_out)):
                if name is not None and name not in made and name not in buffer_of:
                    self.inputs.append(name)
                    self.input_channels.append(width)
                    self.input_readers.append(node)
                    buffer(name, width)
        self.outputs = [name for (node, _) in members for name in node.outputs if name in keep]
        table = np.full((len(forms), len(program.STEP_COLUMNS)), -1, np.int64)
        self.weights = typed.List.empty_list(program.WEIGHT_TYPE)
        self.halves = typed.List.empty_list(program.HALF_TYPE)
        for i, ((node, _), form) in enumerate(zip(members, forms)):
            row = table[i]
            row[program.KIND] = form.kind
            row[program.INPUT] = buffer(node.inputs[0], form.channels_in)
            row[program.OUTPUT] = buffer(node.outputs[0], form.channels_out)
            if form.residual:
                row[program.RESIDUAL] = buffer(node.inputs[3], form.channels_out)
                row[program.PENDING] = buffer(None, form.channels_out)
            if not form.direct:
                row[program.WINDOW] = buffer(None, form.channels_in)
            weight = form.kernel_weight()
            halves = program.half_strips(weight) if form.kind == program.POINTWISE else None
            row[program.HALF] = int(halves is not None)
            if halves is None:
                row[program.WEIGHT] = len(self.weights)
                self.weights.append(weight)
            else:  # every value a float16 (a model converted with --float16): half the bytes a chunk reads
                row[program.WEIGHT] = len(self.halves)
                self.halves.append(_read_only(halves, np.uint16))
            if form.bias is not None:
                row[program.BIAS] = len(self.weights)
                self.weights.append(form.bias)
            for column, value in ((program.CHANNELS_OUT, form.channels_out),
                                  (program.SPAN, form.span), (program.STRIDE, form.stride),
                                  (program.DILATION, form.dilation), (program.PAD_LEFT, form.pad_left),
                                  (program.PAD_RIGHT, form.pad_right), (program.ACT, form.act),
                                  (program.DIRECT, int(form.direct))):
                row[column] = value
        self.table = table
        self.flush_frames = program.FLUSH_FRAMES  # outputs per conv per round at the end of the input
        self.limits = np.array([[form.lo, form.hi] for form in forms], np.float32).reshape(-1, 2)
        self.channels = channels
        # rows each buffer starts with: a window holds its left zero padding from the start
        self.start_rows = [START_ROWS] * len(channels)
        for form, window in zip(forms, table[:, program.WINDOW]):
            if window >= 0:
                self.start_rows[window] = max(START_ROWS, 2 * form.pad_left)
        self.input_buffers = [buffer_of[name] for name in self.inputs]
        self.output_buffers = [buffer_of[name] for name in self.outputs]
        self.node = Node(f"{self.members[0].name} .. {self.members[-1].name}", "Conv", tuple(self.inputs),
                         tuple(self.outputs))
        self.weights_ahead = self._measured_weights_ahead()

    def _measured_weights_ahead(self) -> int:
        """run_round's ``weights_ahead``: READ_ONCE_AHEAD where asking for the pointwise weights as data read once
        measured faster on this CPU for this program's weights (they stream from memory every chunk anyway), else
        0 (they stay in the caches between chunks).  Timed on steady rounds of CALIBRATION_FRAMES zero frames once
        per CPU and weight size (tuning.fastest); the hint changes speed only, never a result."""
        pointwise = self.table[:, program.KIND] == program.POINTWISE
        if not pointwise.any():
            return 0
        weight_bytes = sum((self.halves if half else self.weights)[index].nbytes
                           for index, half in self.table[pointwise][:, [program.WEIGHT, program.HALF]])
        timed, chunk = None, None  # a batch item's (buffers, counts, state) of its own and the frames of a round

        def rounds(ahead):
            def call():
                nonlocal timed, chunk
                if timed is None:  # made, its windows filled, by the first timed call: a cached choice makes none
                    timed = self._item_state()
                    filling = [np.zeros((width, FILL_FRAMES), np.float32) for width in self.input_channels]
                    for _ in range(FILL_LIMIT // FILL_FRAMES):
                        if (timed[2][:, program.EMITTED] > 0).all():
                            break
                        self._round(timed, filling, False, 0)
                    chunk = [np.zeros((width, CALIBRATION_FRAMES), np.float32) for width in self.input_channels]
                self._round(timed, chunk, False, ahead)
            return call

        family = (f"streamed conv program: weights read once or kept, {weight_bytes} bytes in "
                  f"{int(pointwise.sum())} pointwise convs")
        choice = tuning.fastest(family, {"kept": rounds(0), "read once": rounds(program.READ_ONCE_AHEAD)},
                                *tuning.cache_of(program.run_round))
        return program.READ_ONCE_AHEAD if choice == "read once" else 0

    def new_state(self) -> list:
        return []  # (buffers, counts, state) per batch item, made when the first frames show the batch size

    def _item_state(self):
        buffers = typed.List.empty_list(program.BUFFER_TYPE)
        for rows, width in zip(self.start_rows, self.channels):
            buffer = program.aligned_rows(rows, width)
            buffer[:] = 0.0  # a window holds its left zero padding from the start
            buffers.append(buffer)
        state = np.zeros((len(self.table), len(program.STATE_COLUMNS)), np.int64)
        state[:, program.FILLED] = self.table[:, program.PAD_LEFT]  # the left zero padding is kept from the start
        return buffers, np.zeros(len(self.channels), np.int64), state

    def _round(self, item_state, entering, final: bool, ahead: int) -> Tuple[int, list]:
        """One run_round of a batch item's (buffers, counts, state), each entering value's new frames [C, n] (or
        None) entered first; returns run_round's code and each leaving value's new frames [n, C] (None: none)."""
        buffers, counts, state = item_state
        if len(entering) == 1 and len(self.output_buffers) == 1:  # one call from Python, not three
            x = entering[0]
            code, out = program.run_round_through(self.table, self.limits, self.weights, self.halves, buffers, counts,
                                                  state, final, self.flush_frames, ahead, self.input_buffers[0],
                                                  _NO_FRAMES if x is None else x, self.output_buffers[0])
            return code, [out if len(out) else None]
        for buffer, x in zip(self.input_buffers, entering):
            counts[buffer] = 0 if x is None else x.shape[1]
            if counts[buffer]:
                program.enter_frames(buffers, buffer, x)
        code = program.run_round(self.table, self.limits, self.weights, self.halves, buffers, counts, state, final,
                                 self.flush_frames, ahead)
        return code, [program.leaving_frames(buffers, buffer, counts[buffer]) if counts[buffer] else None
                      for buffer in self.output_buffers]

    def advance(self, state, frames, final):
        batch = self._check(state, frames)
        if not state:
            if all(x is None for x in frames) and not final:
                return None  # the batch size is not known yet
            state.extend(self._item_state() for _ in range(batch))
        outputs: List[List[np.ndarray]] = [[] for _ in self.outputs]
        for item, item_state in enumerate(state):
            steps_state = item_state[2]
            entering = [None if x is None else x[item] for x in frames]
            pieces: List[List[np.ndarray]] = [[] for _ in self.outputs]  # [frames, C] each, in time order
            progress = -1
            while True:
                code, leaving = self._round(item_state, entering, final, self.weights_ahead)
                if code not in (program.OK, program.FLUSHING):
                    self._fail(code)
                for piece, out in zip(pieces, leaving):
                    if out is not None:
                        piece.append(out)
                if code == program.OK:
                    break
                # the end of the input is flushed a few rounds at a time (program.FLUSH_FRAMES); a round that
                # moves nothing ends it (a residual branch shorter than its main path leaves frames unmatched)
                moved = int(steps_state[:, program.EMITTED].sum() + steps_state[:, program.PADDED].sum())
                if moved == progress:
                    break
                progress = moved
                entering = [None] * len(entering)
            for out, piece in zip(outputs, pieces):
                if piece:
                    out.append((piece[0] if len(piece) == 1 else np.concatenate(piece)).T)
        if not any(outputs):
            return None
        return [(out[0][None] if len(out) == 1 else np.stack(out)) if out else None for out in outputs]

    def _check(self, state, frames) -> int:
        """The batch size (1 before any frames), after checking each entering value's shape against what its
        convs read."""
        batch = len(state) or 1
        for name, width, node, x in zip(self.inputs, self.input_channels, self.input_readers, frames):
            if x is None:
                continue
            problem = None
            if x.ndim != 3 or x.shape[1] != width:
                problem = f"input {name!r}: frames of shape {x.shape}, expected [batch, {width}, time]"
            elif state and x.shape[0] != len(state):
                problem = f"input {name!r}: frames of shape {x.shape} after frames of batch {len(state)}"
            if problem:
                error = InputError(problem)
                error.node = node
                raise error
            batch = x.shape[0]
        return batch

    def _fail(self, code: int):
        node = self.members[code // 2]
        if code % 2 == program.NO_FRAMES:
            error = GraphError("received no frames")
        else:
            form_span = self.table[code // 2, program.SPAN]
            error = GraphError(f"the input is too short for kernel span {form_span + 1}")
        error.node = node
        raise error


def fuse(members: Sequence[Tuple[Node, StreamStep]], keep) -> Tuple[Node, StreamStep]:
    """The schedule's entry for a run of steps with a ConvForm: (the node standing for it, its step)."""
    step = ConvProgram(members, keep)
    return step.node, step
