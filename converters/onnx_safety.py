"""An ONNX file is untrusted: what the converter checks in a ModelProto before reading it, and how it runs
onnx's C++ passes so that a malformed model cannot kill the process.

``check_proto`` refuses, as a ConversionError naming the initializer, node or value, everything the importer
and the passes would otherwise trip over with a Python builtin error: initializers whose data type is unknown
or whose dims disagree with their data, nodes with no outputs or too few inputs, attribute strings that are
not UTF-8, negative or absurd dims, no graph outputs.  ``in_child`` runs onnx's shape inference and version
converter in a forked child: they abort (SIGABRT) on some malformed models (an input dim of -1), which would
end ``tinyasr convert`` with no message.
"""

from __future__ import annotations

import os
import signal
from typing import Callable

import numpy as np

from tinyasr.errors import ConversionError
from tinyasr.format.values import MEMORY_BUDGET
from tinyasr.ops.shape import ONNX_DTYPES

ONNX_NUMPY = {code: np.dtype(t).name for code, t in ONNX_DTYPES.items()}  # the element types tinyasr reads

MAX_DIM = 2**31 - 1  # a dim past this is no model's
CHILD_SECONDS = 120  # onnx's passes take well under a second on the largest speech model

# Fewest inputs an op reads (ONNX's required inputs); others need one.  The passes index inputs up to these.
MIN_INPUTS = {
    "Constant": 0, "Conv": 2, "BatchNormalization": 5, "Gemm": 2, "MatMul": 2, "Add": 2, "Sub": 2, "Mul": 2,
    "Div": 2, "Pow": 2, "And": 2, "Or": 2, "Xor": 2, "Equal": 2, "Greater": 2, "GreaterOrEqual": 2, "Less": 2,
    "LessOrEqual": 2, "Where": 3, "Gather": 2, "Reshape": 2, "Expand": 2, "Tile": 2, "Range": 3, "LSTM": 3,
    "GRU": 3, "LayerNormalization": 2, "Slice": 3, "RelPositionSoftmax": 2,
}


def _bad(where: str, problem: str) -> ConversionError:
    return ConversionError(f"{where}: {problem}")


def _check_dims(dims, where: str) -> int:
    """The element count of ``dims`` (each in [0, MAX_DIM]), refused once it passes the memory budget."""
    count = 1
    for d in dims:
        if not 0 <= d <= MAX_DIM:
            raise _bad(where, f"dim {d} is outside [0, {MAX_DIM}]")
        count *= d
        if count > MEMORY_BUDGET:
            raise _bad(where, f"dims {list(dims)[:8]} hold more than {MEMORY_BUDGET} elements")
    return count


def _check_initializer(t, source: str) -> None:
    from onnx import numpy_helper

    where = f"{source}: initializer {t.name!r}"
    count = _check_dims(t.dims, where)
    if t.data_type not in ONNX_NUMPY:
        raise _bad(where, f"ONNX element type {t.data_type} is not one tinyasr reads "
                          f"({', '.join(sorted(set(ONNX_NUMPY.values())))})")
    dtype = ONNX_NUMPY[t.data_type]
    if t.data_location == 1:  # EXTERNAL: loaded (and checked by onnx) in load_onnx
        return
    try:
        array = numpy_helper.to_array(t)
    except Exception as exc:  # onnx raises ValueError, TypeError, KeyError ... on data that disagrees with dims
        raise _bad(where, f"its data does not match dims {list(t.dims)} of {dtype} "
                          f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if array.size != count:
        raise _bad(where, f"holds {array.size} values but dims {list(t.dims)} say {count}")


def _check_value(v, what: str, source: str) -> None:
    where = f"{source}: graph {what} {v.name!r}"
    for d in v.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and not 0 <= d.dim_value <= MAX_DIM:
            raise _bad(where, f"dim {d.dim_value} is outside [0, {MAX_DIM}]")


def _check_node(pn, index: int, source: str) -> None:
    from onnx import AttributeProto

    where = f"{source}: node {pn.name or pn.op_type + '_' + str(index)!r} ({pn.op_type})"
    if not pn.output or not pn.output[0]:
        raise _bad(where, "has no output")
    need = MIN_INPUTS.get(pn.op_type, 1)
    if len(pn.input) < need or not all(pn.input[:need]):
        raise _bad(where, f"needs {need} inputs, has {list(pn.input)[:8]}")
    for a in pn.attribute:
        strings = [a.s] if a.type == AttributeProto.STRING else list(a.strings)
        try:
            for s in strings:
                s.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(where, f"attribute {a.name!r} is not UTF-8 text") from None
        if a.type == AttributeProto.TENSOR:
            _check_initializer(a.t, f"{where} attribute {a.name!r}")


def check_proto(model, source: str) -> None:
    """ConversionError naming the part at fault for a ModelProto the importer cannot read safely."""
    graph = model.graph
    if not graph.output:
        raise ConversionError(f"{source}: the graph has no outputs")
    for t in graph.initializer:
        _check_initializer(t, source)
    for v in graph.input:
        _check_value(v, "input", source)
    for v in graph.output:
        _check_value(v, "output", source)
    for index, pn in enumerate(graph.node):
        _check_node(pn, index, source)
    for p in model.metadata_props:
        if not isinstance(p.value, str):
            raise ConversionError(f"{source}: metadata {p.key!r} is not text")


def in_child(run: Callable[[bytes], bytes], model_bytes: bytes, what: str) -> bytes:
    """``run(model_bytes)`` in a forked child; its result, or ConversionError if the child died (a signal from
    onnx's C++ code, a Python error, or CHILD_SECONDS passed).  Without fork (Windows) it runs here."""
    if not hasattr(os, "fork"):
        return run(model_bytes)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        status = 1
        try:
            os.close(read_end)
            signal.alarm(CHILD_SECONDS)
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(run(model_bytes))
            status = 0
        except BaseException:  # reported through the exit status: the parent raises ConversionError
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        raise ConversionError(f"onnx's {what} crashed on this model ({name}): the model is malformed")
    if os.WEXITSTATUS(status) != 0 or not data:
        raise ConversionError(f"onnx's {what} failed on this model: the model is malformed")
    return data
