"""Reductions over axes (ReduceMean / Sum / Max / Min / Prod) and ArgMax / ArgMin.

ReduceSum takes its axes as input 1 since opset 13, the others since opset 18;
earlier opsets use the ``axes`` attribute.  Both forms are accepted for every op.
"""

from __future__ import annotations

import numpy as np

from tinyasr.ops.common import axes_from, check_inputs, normalize_axes, normalize_axis
from tinyasr.ops.registry import register
from tinyasr.ops.streaming_rules import Refuses

# Reductions over axes other than time could stream; none is declared yet, as none was needed.
OVER_TIME = Refuses("it reduces over its axes, which may include the time axis")


def _reduction(op: str, numpy_reduce):
    def run(ctx, inputs, attrs):
        check_inputs(op, inputs, 1)
        x = inputs[0]
        axes = axes_from(inputs, 1, attrs)
        keepdims = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.ndim))
        axis = tuple(normalize_axes(axes, x.ndim, op))
        result = numpy_reduce(x, axis=axis, keepdims=keepdims)
        return [np.asarray(result, dtype=x.dtype)]

    register(op, streaming=OVER_TIME)(run)


_reduction("ReduceMean", np.mean)
_reduction("ReduceSum", np.sum)
_reduction("ReduceMax", np.max)
_reduction("ReduceMin", np.min)
_reduction("ReduceProd", np.prod)


def _arg_reduction(op: str, numpy_arg):
    def run(ctx, inputs, attrs):
        check_inputs(op, inputs, 1)
        x = inputs[0]
        axis = normalize_axis(attrs.get("axis", 0), x.ndim, op)
        if attrs.get("select_last_index", 0):
            flipped = np.flip(x, axis)
            index = x.shape[axis] - 1 - numpy_arg(flipped, axis=axis)
        else:
            index = numpy_arg(x, axis=axis)
        index = np.asarray(index, dtype=np.int64)
        return [np.expand_dims(index, axis) if attrs.get("keepdims", 1) else index]

    register(op, streaming=OVER_TIME)(run)


_arg_reduction("ArgMax", np.argmax)
_arg_reduction("ArgMin", np.argmin)
