"""Elementwise ops: activations, arithmetic, comparisons and logic, with numpy broadcasting.

Outputs come from ``ctx.output`` with the inputs listed as donors, so a chain of
activations on float32 tensors can run in one buffer instead of allocating a
temporary per op.  Binary ops require equal input dtypes, as ONNX does (int64
arithmetic stays int64); Pow alone takes an exponent of another type.
"""

from __future__ import annotations

import math
from functools import reduce

import numba
import numpy as np

from tinyasr.errors import GraphError
from tinyasr.kernels.rowwise import sigmoid_flat, sigmoid_in_place, swish_flat, swish_in_place
from tinyasr.ops.attributes import integer
from tinyasr.ops.common import broadcast_shape, check_inputs
from tinyasr.ops.registry import register
from tinyasr.ops.streaming_rules import TIME_LOCAL


def _same_dtype(op: str, arrays) -> None:
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        raise GraphError(f"{op}: inputs must have one element type, got {', '.join(sorted(map(str, dtypes)))}")


# ----------------------------------------------------------------------------- unary

def _unary(op: str, compute):
    """An op applying ``compute(x, out)`` to its one input, writing into a same-shaped buffer."""

    def run(ctx, inputs, attrs):
        check_inputs(op, inputs, 1)
        x = inputs[0]
        out = ctx.output(x.shape, x.dtype, donors=(0,))
        compute(x, out, attrs)
        return [out]

    register(op, streaming=TIME_LOCAL)(run)


def _row_kernel_takes(x, out) -> bool:
    """float32, C-contiguous, and ``out`` either ``x`` itself (a donated buffer) or memory apart from it."""
    return (x.dtype == np.float32 and x.flags.c_contiguous and out.flags.c_contiguous
            and (out is x or not np.may_share_memory(x, out)))


def _sigmoid(x, out, attrs):
    if _row_kernel_takes(x, out):  # one pass (the GLU gate in Conformers)
        (sigmoid_in_place(out.reshape(-1)) if out is x else sigmoid_flat(x.reshape(-1), out.reshape(-1)))
        return
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x << 0, and 1/inf is the right answer
        np.negative(x, out=out)
        np.exp(out, out=out)
    np.add(out, 1, out=out)
    np.reciprocal(out, out=out)


def _leaky_relu(x, out, attrs):
    alpha = float(attrs.get("alpha", 0.01))
    np.multiply(x, np.where(x < 0, np.asarray(alpha, x.dtype), np.asarray(1, x.dtype)), out=out)


def erf_reference(x: np.ndarray) -> np.ndarray:
    """numpy reference for the erf kernel."""
    return np.vectorize(math.erf, otypes=[x.dtype])(x)


@numba.njit(cache=True)
def _erf_kernel(x, out):
    """numpy has no erf and the runtime may not use scipy; Numba exposes the C library's erf."""
    for i in range(x.size):
        out[i] = math.erf(x[i])


def _erf(x, out, attrs):
    if x.dtype.kind != "f":
        raise GraphError(f"Erf needs a float tensor, got {x.dtype}")
    flat = np.ascontiguousarray(x).reshape(-1)
    if out.flags.c_contiguous:
        _erf_kernel(flat, out.reshape(-1))
    else:
        out[...] = erf_reference(x)


def _swish(x, out, attrs):
    """tinyasr's Swish (SiLU): x * Sigmoid(x) in one pass, what converters/passes.fuse_swish makes of a
    Sigmoid whose output only a Mul with its own input reads (every Conformer feed-forward and conv module)."""
    if _row_kernel_takes(x, out):
        (swish_in_place(out.reshape(-1)) if out is x else swish_flat(x.reshape(-1), out.reshape(-1)))
        return
    sigmoid = np.empty_like(out)
    _sigmoid(x, sigmoid, attrs)
    np.multiply(x, sigmoid, out=out)


_unary("Relu", lambda x, out, a: np.maximum(x, 0, out=out))
_unary("LeakyRelu", _leaky_relu)
_unary("Sigmoid", _sigmoid)
_unary("Swish", _swish)
_unary("Tanh", lambda x, out, a: np.tanh(x, out=out))
_unary("Softplus", lambda x, out, a: np.logaddexp(0, x, out=out))
_unary("Erf", _erf)
_unary("Sqrt", lambda x, out, a: np.sqrt(x, out=out))
_unary("Exp", lambda x, out, a: np.exp(x, out=out))
_unary("Sin", lambda x, out, a: np.sin(x, out=out))  # sinusoidal position tables, regenerated
_unary("Cos", lambda x, out, a: np.cos(x, out=out))
_unary("Log", lambda x, out, a: np.log(x, out=out))
_unary("Neg", lambda x, out, a: np.negative(x, out=out))
_unary("Abs", lambda x, out, a: np.abs(x, out=out))
_unary("Reciprocal", lambda x, out, a: np.reciprocal(x, out=out))
_unary("Floor", lambda x, out, a: np.floor(x, out=out))
_unary("Ceil", lambda x, out, a: np.ceil(x, out=out))
_unary("Round", lambda x, out, a: np.round(x, out=out))  # half to even, as ONNX specifies
_unary("Not", lambda x, out, a: np.logical_not(x, out=out))


@register("IsNaN", streaming=TIME_LOCAL)
def is_nan(ctx, inputs, attrs):
    """wav2vec2's attention zeroes the weights of fully masked rows with Where(IsNaN(softmax), 0, softmax)."""
    check_inputs("IsNaN", inputs, 1)
    out = ctx.output(inputs[0].shape, np.bool_)
    np.isnan(inputs[0], out=out)
    return [out]


@register("Clip", streaming=TIME_LOCAL)
def clip(ctx, inputs, attrs):
    """Bounds come as inputs 1 and 2 (opset 11+) or as ``min``/``max`` attributes (opset 6)."""
    check_inputs("Clip", inputs, 1)
    x = inputs[0]
    low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attrs.get("min")
    high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attrs.get("max")
    out = ctx.output(x.shape, x.dtype, donors=(0,))
    if low is None and high is None:
        np.copyto(out, x)
    elif high is None:
        np.maximum(x, np.asarray(low, x.dtype), out=out)
    elif low is None:
        np.minimum(x, np.asarray(high, x.dtype), out=out)
    else:
        np.clip(x, np.asarray(low, x.dtype), np.asarray(high, x.dtype), out=out)
    return [out]


@register("Identity", streaming=TIME_LOCAL)
def identity(ctx, inputs, attrs):
    check_inputs("Identity", inputs, 1)
    return [inputs[0]]


@register("Dropout", streaming=TIME_LOCAL)
def dropout(ctx, inputs, attrs):
    """Inference: the data passes through; the optional mask output is all True."""
    check_inputs("Dropout", inputs, 1)
    x = inputs[0]
    if ctx.num_outputs > 1:
        return [x, np.ones(x.shape, bool)]
    return [x]


# ----------------------------------------------------------------------------- binary

def _binary(op: str, compute, result_dtype=None, same_dtype=True):
    """A broadcasting op ``compute(a, b, out)``; the output has a's dtype unless ``result_dtype`` says."""

    def run(ctx, inputs, attrs):
        check_inputs(op, inputs, 2)
        a, b = inputs[0], inputs[1]
        if same_dtype and a.dtype != b.dtype:
            _same_dtype(op, (a, b))
        dtype = a.dtype if result_dtype is None else result_dtype
        donors = (0, 1) if result_dtype is None else ()
        out = ctx.output(broadcast_shape(a.shape, b.shape), dtype, donors=donors)
        compute(a, b, out)
        return [out]

    register(op, streaming=TIME_LOCAL)(run)


def _divide(a, b, out):
    """Integer Div truncates toward zero in ONNX (numpy floors)."""
    if a.dtype.kind in "iu":
        quotient = np.abs(a) // np.abs(b)
        np.multiply(quotient, np.sign(a) * np.sign(b), out=out)
    else:
        np.divide(a, b, out=out)


def _power(a, b, out):
    """The exponent may have another type; the result keeps the base's type."""
    if b.size == 1 and b.reshape(-1)[0] == 2:
        np.multiply(a, a, out=out)
    else:
        np.power(a, b, out=out, casting="unsafe")


_binary("Add", lambda a, b, out: np.add(a, b, out=out))
_binary("Sub", lambda a, b, out: np.subtract(a, b, out=out))
_binary("Mul", lambda a, b, out: np.multiply(a, b, out=out))
_binary("Div", _divide)
_binary("Pow", _power, same_dtype=False)
_binary("Less", lambda a, b, out: np.less(a, b, out=out), np.bool_)
_binary("LessOrEqual", lambda a, b, out: np.less_equal(a, b, out=out), np.bool_)
_binary("Greater", lambda a, b, out: np.greater(a, b, out=out), np.bool_)
_binary("GreaterOrEqual", lambda a, b, out: np.greater_equal(a, b, out=out), np.bool_)
_binary("Equal", lambda a, b, out: np.equal(a, b, out=out), np.bool_)
_binary("And", lambda a, b, out: np.logical_and(a, b, out=out), np.bool_)
_binary("Or", lambda a, b, out: np.logical_or(a, b, out=out), np.bool_)
_binary("Xor", lambda a, b, out: np.logical_xor(a, b, out=out), np.bool_)


@register("Mod", streaming=TIME_LOCAL, attrs={"fmod": integer(0, 1)})
def modulo(ctx, inputs, attrs):
    """ONNX Mod: the remainder takes the divisor's sign (numpy's remainder) unless ``fmod`` (the dividend's, C's
    fmod); an integer divisor of 0 is refused.  Conv output lengths in wav2vec2's export come from it."""
    check_inputs("Mod", inputs, 2)
    a, b = inputs[0], inputs[1]
    _same_dtype("Mod", (a, b))
    if a.dtype.kind in "iu" and np.any(b == 0):
        raise GraphError("Mod: integer division by zero")
    out = ctx.output(np.broadcast_shapes(a.shape, b.shape), a.dtype, donors=(0, 1))
    (np.fmod if attrs.get("fmod", 0) else np.remainder)(a, b, out=out)
    return [out]


def _variadic(op: str, ufunc):
    """Max / Min over any number of broadcasting inputs."""

    def run(ctx, inputs, attrs):
        check_inputs(op, inputs, 1)
        _same_dtype(op, inputs)
        return [np.asarray(reduce(ufunc, inputs))]

    register(op, streaming=TIME_LOCAL)(run)


_variadic("Max", np.maximum)
_variadic("Min", np.minimum)


@register("Where", streaming=TIME_LOCAL)
def where(ctx, inputs, attrs):
    check_inputs("Where", inputs, 3)
    condition, x, y = inputs
    _same_dtype("Where", (x, y))
    out = ctx.output(np.broadcast_shapes(condition.shape, x.shape, y.shape), x.dtype, donors=(2,))
    np.copyto(out, y)  # y first: the buffer may be y's own, never x's
    np.copyto(out, x, where=condition)
    return [out]
