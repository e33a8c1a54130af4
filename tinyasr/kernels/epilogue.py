"""The elementwise epilogue of every conv / matmul: ``y = act(y + bias + residual)``, in place.

After a BLAS matmul the output is still in cache; one Numba pass adds the bias and the fused
residual and applies the activation, instead of three numpy passes and two temporaries.
The depthwise kernel calls :func:`finish_row` on each row it has just accumulated.

Order of operations is fixed, ``(y + bias) + residual`` then the activation, so the kernel
and :func:`bias_act_reference` round the same way.  No ``fastmath``: the epilogue is memory
bound, and NaN / inf must pass through as in the reference.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, Dict, Tuple

import numpy as np
from numba import njit
from numba.types import Array, boolean, float32, int64, void

from tinyasr.errors import GraphError
from tinyasr.kernels._compile import ACTIVATIONS, serial_and_parallel

_ACT_RELU, _ACT_SIGMOID, _ACT_TANH, _ACT_CLIP = (ACTIVATIONS[name] for name in ("Relu", "Sigmoid", "Tanh", "Clip"))

# A float32[::1] of length 0 stands for "no bias", a float32[:, :, ::1] of size 0 for "no residual",
# so each kernel has one signature instead of one per combination of optional arguments.
NO_BIAS = np.zeros(0, np.float32)
NO_RESIDUAL = np.zeros((0, 0, 0), np.float32)

# Inputs are typed read-only so memory-mapped weights (read-only views of the model file) pass
# without a copy; Numba converts writable arrays to these types for free.
READ_1D = Array(float32, 1, "C", readonly=True)
READ_2D = Array(float32, 2, "C", readonly=True)
READ_3D = Array(float32, 3, "C", readonly=True)


@njit(inline="always")
def relu_stored(value):
    """max(value, 0) for storing back where ``value`` was read.  ``y[t] = max(y[t], 0)`` lets LLVM store only the
    lanes that change: on AVX2 a masked store (vmaskmovps), microcoded on AMD Zen, 3.3x slower than the whole
    epilogue without it (Zen 3, 2026-12-06).  Adding +0.0 first makes the stored value a new one (it is not
    an identity in IEEE arithmetic: -0.0 + 0.0 = +0.0), so every lane is stored: a vaddps, a vmaxps and a plain
    store."""
    return max(value + np.float32(0.0), np.float32(0.0))


@njit(void(float32[::1], float32, boolean, READ_1D, int64, float32, float32), cache=True, inline="always")
def finish_row(y, bias, add_residual, residual, act, lo, hi):
    """One output row: y = act((y + bias) + residual).  Branches sit outside the loops so each loop vectorises."""
    n = y.shape[0]
    if add_residual:
        for t in range(n):
            y[t] = (y[t] + bias) + residual[t]
    elif bias != 0.0:
        for t in range(n):
            y[t] = y[t] + bias
    if act == _ACT_RELU:
        for t in range(n):
            y[t] = relu_stored(y[t])
    elif act == _ACT_SIGMOID:
        one = np.float32(1.0)
        for t in range(n):
            y[t] = one / (one + np.exp(-y[t]))
    elif act == _ACT_TANH:
        for t in range(n):
            y[t] = np.tanh(y[t])
    elif act == _ACT_CLIP:
        for t in range(n):
            y[t] = min(max(y[t], lo), hi)


@njit(inline="always")
def store_tile(y, acc, acc_stride, b, r0, rows, t0, n, bias, has_bias, residual, add_residual, act, lo, hi):
    """Rows r0 .. r0+rows-1 of frames t0 .. t0+n-1: y = act((acc + bias) + residual), acc row k at k * acc_stride.

    The register-tiled kernels (pointwise.py, sparse.py) finish each tile with this while it is in cache;
    Relu and Clip only (Sigmoid / Tanh run afterwards as a separate pass over y).
    """
    for k in range(rows):
        r = r0 + k
        y_row = y[b, r, t0 : t0 + n]
        bias_r = bias[r] if has_bias else np.float32(0.0)
        if add_residual:
            residual_row = residual[b, r, t0 : t0 + n]
            for t in range(n):
                y_row[t] = (acc[k * acc_stride + t] + bias_r) + residual_row[t]
        else:
            for t in range(n):
                y_row[t] = acc[k * acc_stride + t] + bias_r
        if act == _ACT_RELU:
            for t in range(n):
                y_row[t] = relu_stored(y_row[t])
        elif act == _ACT_CLIP:
            for t in range(n):
                y_row[t] = min(max(y_row[t], lo), hi)


@serial_and_parallel(void(float32[:, :, ::1], READ_1D, READ_3D, int64, float32, float32))
def epilogue_rows(loop):
    """finish_row on every [b, c] row of y [B, C, T] (bias per channel c, residual [B, C, T] or empty)."""

    def kernel(y, bias, residual, act, lo, hi):
        batch, channels = y.shape[0], y.shape[1]
        has_bias = bias.shape[0] > 0
        add_residual = residual.size > 0
        for r in loop(batch * channels):
            b = r // channels
            c = r - b * channels
            bias_c = bias[c] if has_bias else np.float32(0.0)
            finish_row(y[b, c], bias_c, add_residual, residual[b, c] if add_residual else y[b, c], act, lo, hi)

    return kernel


# ---------------------------------------------------------------------------------------------
# Python side: checking arguments, the public entry point and its numpy reference
# ---------------------------------------------------------------------------------------------


def remembered(check):
    """Cache a pure argument check: a node passes the same arguments on every call (many per second when
    streaming).  Typed, so True never hits the entry of a valid 1; unhashable arguments run uncached."""
    cached = functools.lru_cache(maxsize=1024, typed=True)(check)

    @functools.wraps(check)
    def run(*args):
        try:
            return cached(*args)
        except TypeError:  # unhashable: the check itself reports it
            return check(*args)

    return run


def kept_per_array(derive):
    """Cache ``derive(array, *options)`` per read-only array (and hashable options) while the array lives.  A
    model's stored weights are read-only views of its file, the same arrays on every call, so what a kernel derives
    from one (a blocked layout, its density) is made once, also on runs that are not replayed (a new input length);
    a writable array could change between calls and is derived again every time."""
    cache: Dict[tuple, Tuple[weakref.ref, Any]] = {}

    @functools.wraps(derive)
    def kept(array, *options):
        if not isinstance(array, np.ndarray) or array.flags.writeable:
            return derive(array, *options)
        key = (id(array), *options)
        entry = cache.get(key)
        if entry is not None and entry[0]() is array:
            return entry[1]
        value = derive(array, *options)
        cache[key] = (weakref.ref(array, lambda _, key=key: cache.pop(key, None)), value)
        return value

    return kept


def activation_code(activation, params, where="conv1d"):
    """(code, lo, hi) for the kernels; GraphError for an unknown activation or wrong parameter count."""
    return _activation_code(activation, tuple(params) if params is not None else (), where)


@remembered
def _activation_code(activation, params, where):
    if activation not in ACTIVATIONS:
        raise GraphError(f"{where}: unknown activation {activation!r}; supported: {sorted(ACTIVATIONS)}")
    params = tuple(float(p) for p in (params if params is not None else ()))
    if activation == "Clip":
        if len(params) != 2 or not params[0] <= params[1]:
            raise GraphError(f"{where}: Clip needs activation_params [min, max] with min <= max, got {list(params)}")
        return _ACT_CLIP, np.float32(params[0]), np.float32(params[1])
    if params:
        raise GraphError(f"{where}: activation {activation!r} takes no activation_params, got {list(params)}")
    return ACTIVATIONS[activation], np.float32(0.0), np.float32(0.0)


def as_float32(array, name, where="conv1d"):
    """A C-contiguous float32 array: converted once if needed, GraphError if not floating point."""
    if type(array) is np.ndarray and array.dtype == np.float32 and array.flags.c_contiguous:
        return array  # the usual case, checked first: streaming calls the kernels on small inputs
    array = np.asarray(array)
    if array.dtype.kind != "f":
        raise GraphError(f"{where}: {name} must be a floating-point array, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def check_bias_residual(bias, residual, shape, where="conv1d"):
    """bias [C] and residual of exactly ``shape`` [B, C, T] as kernel arguments (NO_BIAS / NO_RESIDUAL if None)."""
    channels = shape[1]
    if bias is None:
        bias = NO_BIAS
    else:
        bias = as_float32(bias, "bias", where)
        if bias.shape != (channels,):
            raise GraphError(f"{where}: bias has shape {bias.shape}, expected ({channels},)")
    if residual is None:
        residual = NO_RESIDUAL
    else:
        residual = as_float32(residual, "residual", where)
        if residual.shape != tuple(shape):
            raise GraphError(f"{where}: residual has shape {residual.shape}, expected {tuple(shape)}")
        if residual.size == 0:
            residual = NO_RESIDUAL
    return bias, residual


def residual_argument(residual):
    """A residual as the kernels take it, for a call whose arguments were checked before (a bound call's run):
    NO_RESIDUAL for None or an empty one, else C-contiguous float32."""
    if residual is None or residual.size == 0:
        return NO_RESIDUAL
    return as_float32(residual, "residual")


def bias_act(y, bias=None, residual=None, activation="", params=()):
    """In place: y = act((y + bias) + residual).  y: float32 C-contiguous [B, C, T] or [C, T];
    bias [C] or None; residual of y's shape or None.  Returns y."""
    if not (isinstance(y, np.ndarray) and y.dtype == np.float32 and y.flags.c_contiguous and y.ndim in (2, 3)):
        raise GraphError("bias_act: y must be a C-contiguous float32 array of shape [B, C, T] or [C, T]")
    if residual is not None and np.shape(residual) != y.shape:
        raise GraphError(f"bias_act: residual has shape {np.shape(residual)}, expected y's shape {y.shape}")
    y3 = y.reshape((1,) + y.shape) if y.ndim == 2 else y
    residual = None if residual is None else np.reshape(residual, y3.shape)
    act, lo, hi = activation_code(activation, params, "bias_act")
    bias, residual = check_bias_residual(bias, residual, y3.shape, "bias_act")
    if y3.size:
        epilogue_rows(y3.size, y3, bias, residual, act, lo, hi)
    return y


def activate_reference(y, activation, params=()):
    """The activations in plain numpy, computed in y's dtype."""
    if activation == "Relu":
        return np.maximum(y, 0)
    if activation == "Sigmoid":
        with np.errstate(over="ignore"):
            return 1 / (1 + np.exp(-y))
    if activation == "Tanh":
        return np.tanh(y)
    if activation == "Clip":
        return np.minimum(np.maximum(y, params[0]), params[1])
    return y


def bias_act_reference(y, bias=None, residual=None, activation="", params=()):
    """numpy reference of bias_act: a new array, computed in float32 in the kernel's order."""
    out = np.array(y, dtype=np.float32)
    if bias is not None:
        out = out + np.asarray(bias, np.float32)[:, None]
    if residual is not None:
        out = out + np.asarray(residual, np.float32)
    return activate_reference(out, activation, np.asarray(params, np.float32)).astype(np.float32)
