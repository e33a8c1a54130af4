"""How a Conv streams: it keeps its input from the first frame its next output reads, with its left zero padding in
front of the first frame, and emits every output whose whole kernel span (and residual frame) has arrived; at the
end it appends its right zero padding.

Each output frame is computed once, with pads 0 on ``[kept context | new frames]``, by the kernels the offline op
would pick for that input (``PreparedConv1d``: checked once per node, no per-call copies), so the streamed outputs
equal the offline ones, causal or not.  A symmetric ("same"-padded) conv costs latency: output frame t leaves once
input frame ``t * stride + right`` is in (the ``right`` of its receptive field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from tinyasr.errors import GraphError, InputError
from tinyasr.format.encodings.sparse import SPARSE_TYPES, as_dense
from tinyasr.kernels.conv1d import SHORT_FRAMES, PreparedConv1d
from tinyasr.ops.context import OpContext
from tinyasr.ops.conv_program import conv_form, fuse
from tinyasr.ops.streaming_rules import LeftContext, NodeStream, ReceptiveField, Stream, StreamStep, append_frames


@dataclass(frozen=True)
class ConvGeometry:
    kernel_span: int  # dilation * (K - 1)
    stride: int
    pad_left: int
    pad_right: int
    attrs: dict  # the node's attributes with pads [0, 0]


class ConvWindow(LeftContext):
    """Conv's rule: the window is the kernel span with the node's padding; only X (input 0) and the fused residual
    Z (input 3) may follow the stream."""

    def plan(self, node, run, constants, streamed):
        if streamed[0] is None or any(s is not None for s in streamed[1:3]):
            raise GraphError("only the data input X (and the residual Z) may depend on the streamed input")
        x = streamed[0]
        if len(getattr(constants[1], "shape", ())) == 4:
            raise GraphError("a 2-D convolution (a Conformer's subsampling) does not stream yet: it keeps no "
                             "window of earlier frames between chunks")
        if x.rank != 3 or x.axis != 2:
            raise GraphError(f"input X must be [batch, channels, time] with time last (rank {x.rank}, axis {x.axis})")
        attrs = node.attrs
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "", "VALID"):
            raise GraphError(f"auto_pad {attrs['auto_pad']!r} depends on the input length")
        pads = [0, 0] if attrs.get("auto_pad") == "VALID" else list(attrs.get("pads", [0, 0]))
        stride = int(attrs.get("strides", [1])[0])
        span = int(attrs.get("dilations", [1])[0]) * (np.shape(constants[1])[2] - 1)
        if len(pads) != 2:
            raise GraphError(f"pads {pads} must be [begin, end]")
        geometry = ConvGeometry(span, stride, int(pads[0]), int(pads[1]),
                                {**attrs, "pads": [0, 0], "auto_pad": "NOTSET"})
        z = streamed[3] if len(streamed) > 3 else None
        if len(constants) > 3 and constants[3] is not None and z is None:
            raise GraphError("a stored residual input Z cannot follow a stream")
        field = self.window_field(x.field, geometry.pad_left, span - geometry.pad_left, stride)
        if z is not None:
            if z.field.stride != field.stride:
                raise GraphError("the residual Z runs at a different frame rate than the conv's output")
            field = ReceptiveField(max(field.left, z.field.left), max(field.right, z.field.right), field.stride)
        return NodeStream((Stream(3, 2, field),), ConvStep(node, run, constants, geometry, z is not None))


class ConvState:
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


class ConvStep(StreamStep):
    """Emits every output whose kernel span has arrived (and whose residual frames have)."""

    def __init__(self, node, run, constants, geometry: ConvGeometry, residual: bool):
        self.run, self.constants, self.geometry, self.residual = run, tuple(constants), geometry, residual
        self.context = OpContext(1)
        self.prepared = _prepare(self.constants, geometry)
        # the short-input depthwise kernel reads SHORT_FRAMES outputs' worth of frames from the buffer
        self.min_frames = geometry.kernel_span + SHORT_FRAMES
        # a 1x1 conv at stride 1 without residual keeps nothing: each chunk's frames go straight to the kernel
        self.direct = (geometry.kernel_span == geometry.pad_left == geometry.pad_right == 0
                       and geometry.stride == 1 and not residual)
        # what the compiled program (ops/conv_program.py) needs to run this conv with its neighbours, if it can
        self.form = conv_form(self.prepared, geometry, residual, self.direct)
        if self.form is not None:
            self.fuse = fuse

    def new_state(self) -> ConvState:
        return ConvState()

    def advance(self, state: ConvState, frames, final):
        geometry, x = self.geometry, frames[0]
        if self.direct:
            if final and state.emitted == 0 and x is None:
                raise GraphError("received no frames")
            if x is None or x.shape[2] == 0:
                return None
            state.emitted += x.shape[2]
            return [self._compute(np.ascontiguousarray(x), x.shape[2], None)]
        if x is not None:
            if state.rows is None:  # the left padding, then room for a few chunks before moving the kept frames
                state.allocate(x.shape[:2], x.dtype, 2 * max(geometry.pad_left + x.shape[2], self.min_frames))
                state.filled = geometry.pad_left
            elif x.shape[:2] != state.rows.shape[:2]:
                raise InputError(f"input frames of shape {x.shape} after frames with {state.rows.shape[:2]} as "
                                 "[batch, channels]")
            state.append(x)
        if self.residual:
            state.residual = append_frames(state.residual, frames[1], 2)
        if state.rows is None:
            if final:
                raise GraphError("received no frames")
            return None
        if final:
            state.append(None, geometry.pad_right)
        available = state.start + state.filled
        ready = (available - geometry.kernel_span - 1) // geometry.stride + 1 if available > geometry.kernel_span else 0
        n = ready - state.emitted
        if self.residual:
            n = min(n, 0 if state.residual is None else state.residual.shape[2])
        if n <= 0:
            if final and state.emitted == 0:
                raise GraphError(f"the input is too short for kernel span {geometry.kernel_span + 1}")
            return None
        residual = None
        if self.residual:
            kept = state.residual
            residual = np.ascontiguousarray(kept[:, :, :n])
            state.residual = kept[:, :, n:] if kept.shape[2] > n else None
        out = self._compute(state.window(), n, residual)
        state.emitted += n
        state.drop(state.emitted * geometry.stride - state.start)
        return [out]

    def _compute(self, x: np.ndarray, n: int, residual: Optional[np.ndarray]) -> np.ndarray:
        """n output frames from x[:, :, 0:], the conv's input from the first frame they read."""
        if (self.prepared is not None and x.dtype == np.float32
                and (residual is None or residual.dtype == np.float32)):
            return self.prepared(x, n, residual)
        args = list(self.constants)
        args[0] = np.ascontiguousarray(x[:, :, :(n - 1) * self.geometry.stride + self.geometry.kernel_span + 1])
        if self.residual:
            args[3] = residual
        return self.run(self.context, args, self.geometry.attrs)[0]


def _prepare(constants, geometry: ConvGeometry) -> Optional[PreparedConv1d]:
    """The conv's kernels called directly, checked once; None (the op runs each time) for weights a sparse
    kernel runs or int8, or attributes the op itself should report."""
    weight = constants[1]
    if isinstance(weight, SPARSE_TYPES) and len(weight.shape) == 3 and weight.shape[2] > 1:
        weight = as_dense(weight)  # stored sparse for size only: no sparse kernel runs a kernel over 1
    bias = constants[2] if len(constants) > 2 else None
    attrs = geometry.attrs
    dilations = attrs.get("dilations", [1])
    if (not isinstance(weight, np.ndarray) or weight.dtype.kind != "f" or weight.ndim != 3
            or not (bias is None or isinstance(bias, np.ndarray))
            or len(attrs.get("strides", [1])) != 1 or len(dilations) != 1
            or list(attrs.get("kernel_shape", [weight.shape[2]])) != [weight.shape[2]]):
        return None
    try:
        return PreparedConv1d(weight, bias, stride=geometry.stride, dilation=int(dilations[0]),
                              group=int(attrs.get("group", 1)), activation=attrs.get("activation", ""),
                              activation_params=attrs.get("activation_params", ()))
    except GraphError:
        return None


CONV_STREAMING = ConvWindow()
