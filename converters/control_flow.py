"""ONNX ``If`` whose condition is fixed at conversion time, replaced by the branch it takes.

Silero VAD switches on its sample-rate input ``sr``: converted with ``--sample-rate 16000``, that input
becomes the constant 16000, every ``If`` whose condition then depends on stored values only is evaluated
(onnx's reference evaluator, on the condition's ancestors alone) and replaced by the nodes of the branch it
takes, nested Ifs included.  Its opset-15 export also tests shapes (torch's ``squeeze(dim)`` becomes "If
this dim is 1", the LSTM's state handling "If the state has 2 rows"): with the inputs' shapes fixed at
conversion (``--input-shape input=1,576``), a ``Shape`` / ``Size`` of a value whose shape onnx's shape
inference then knows counts as stored, and inference is rerun after each round of inlining, since an inlined
branch's values get shapes only then.  Any other control flow (an If on data or unknown shapes, Loop, Scan)
stays, and the importer refuses it naming the node.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from tinyasr.errors import ConversionError

SAMPLE_RATE_INPUTS = ("sr", "sample_rate")  # scalar integer graph inputs that --sample-rate fixes


def _is_scalar_int(value_info) -> bool:
    import onnx

    kind = value_info.type.tensor_type
    return (kind.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
            and len(kind.shape.dim) <= 1 and all(d.dim_value in (0, 1) for d in kind.shape.dim))


def sample_rate_input(model) -> Optional[str]:
    """The graph input that carries the sample rate (a scalar integer named sr / sample_rate), if any."""
    for value in model.graph.input:
        if value.name in SAMPLE_RATE_INPUTS and _is_scalar_int(value):
            return value.name
    return None


def specialise(model, sample_rate: Optional[int], source_name: str,
               input_shapes: Optional[Dict[str, Sequence[int]]] = None):
    """``model`` with its sample-rate input fixed to ``sample_rate``, the inputs named in ``input_shapes``
    given those static shapes, and the Ifs that this decides inlined.  Unchanged when there is nothing to
    fix; ConversionError when the graph has a sample-rate input and no rate is given, or a shape does not
    fit its input."""
    import onnx
    from onnx import helper, numpy_helper

    name = sample_rate_input(model)
    if name is None and not input_shapes:
        _refuse_shape_tests(model.graph.node, source_name)
        return model
    if name is not None and sample_rate is None:
        raise ConversionError(f"{source_name}: the graph takes its sample rate as input {name!r}; give the rate "
                              "to fix it at conversion (--sample-rate, e.g. 16000)")
    model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's proto stays as it was
    _fix_input_shapes(model, input_shapes or {}, source_name)
    if name is not None:
        value = next(v for v in model.graph.input if v.name == name)
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = [1] * len(value.type.tensor_type.shape.dim)
        model.graph.initializer.append(numpy_helper.from_array(np.full(shape, sample_rate, dtype), name))
        kept = [v for v in model.graph.input if v.name != name]
        del model.graph.input[:]
        model.graph.input.extend(kept)
    while True:  # a round inlines what the known shapes decide; the inlined values' shapes may decide more
        ifs = sum(node.op_type == "If" for node in model.graph.node)
        constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        shapes = _static_shapes(model) if input_shapes else {}
        nodes = _inlined(list(model.graph.node), constants, shapes, model, source_name)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        left = sum(node.op_type == "If" for node in nodes)
        if not left or left == ifs or not input_shapes:
            if not input_shapes:
                _refuse_shape_tests(nodes, source_name)
            return model


def _refuse_shape_tests(nodes, source_name: str) -> None:
    """ConversionError for the first If whose condition reads a Shape or Size: fixing the input shapes decides it."""
    producers = {out: node for node in nodes for out in node.output}
    for node in nodes:
        if node.op_type != "If":
            continue
        stack, seen = [node.input[0]], set()
        while stack:
            value = stack.pop()
            producer = producers.get(value)
            if producer is None or value in seen:
                continue
            seen.add(value)
            if producer.op_type in ("Shape", "Size"):
                raise ConversionError(f"{source_name}: node {node.name!r} (If) tests the shape of "
                                      f"{producer.input[0]!r}; fix the graph inputs' shapes at conversion to decide "
                                      "it (--input-shape NAME=D1,D2,..., e.g. input=1,576 for Silero VAD)")
            stack.extend(producer.input)


def _fix_input_shapes(model, input_shapes: Dict[str, Sequence[int]], source_name: str) -> None:
    """Give the named graph inputs the static ``input_shapes`` (each must keep the declared rank and fixed dims)."""
    inputs = {v.name: v for v in model.graph.input}
    for name, dims in input_shapes.items():
        if name not in inputs:
            raise ConversionError(f"{source_name}: --input-shape names {name!r}, which is not a graph input "
                                  f"(inputs: {', '.join(sorted(inputs))})")
        declared = inputs[name].type.tensor_type.shape.dim
        if len(declared) != len(dims) or any(not 1 <= int(d) <= 2**31 - 1 for d in dims):
            raise ConversionError(f"{source_name}: --input-shape {name}={','.join(map(str, dims))}: the input has "
                                  f"rank {len(declared)}, and each dim must be 1 .. 2^31-1")
        for dim, size in zip(declared, dims):
            if dim.HasField("dim_value") and dim.dim_value not in (0, size):
                raise ConversionError(f"{source_name}: --input-shape {name}={','.join(map(str, dims))} disagrees "
                                      f"with the input's declared shape (a dim is fixed at {dim.dim_value})")
            dim.Clear()
            dim.dim_value = int(size)


def _static_shapes(model) -> Dict[str, tuple]:
    """Every value's shape that onnx shape inference (the importer's, in a forked child) fixes completely."""
    from tinyasr_convert.onnx_import import _infer_shapes

    shapes, _ = _infer_shapes(_folded(model))
    return {name: dims for name, dims in shapes.items() if all(isinstance(d, int) for d in dims)}


def _folded(model):
    """A copy of ``model`` whose nodes that read stored values only are replaced by their values, for shape
    inference alone: Silero computes its STFT padding from constants, and inference cannot see through that."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type in ("If", "Loop", "Scan") or not all(x in constants for x in node.input if x):
            kept.append(node)
            continue
        try:
            values = _reference_run([node], list(node.output), constants, model)
        except Exception:  # the reference evaluator raises many kinds: leave the node to inference
            kept.append(node)
            continue
        for name, value in zip(node.output, values):
            constants[name] = np.asarray(value)
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def _shape_value(node, shapes: Dict[str, tuple]) -> Optional[np.ndarray]:
    """What a Shape or Size node gives when its input's shape is known, else None."""
    if node.op_type not in ("Shape", "Size") or node.input[0] not in shapes:
        return None
    shape = np.array(shapes[node.input[0]], np.int64)
    if node.op_type == "Size":
        return np.array(shape.prod(), np.int64)
    attrs = {a.name: a.i for a in node.attribute}
    return shape[attrs.get("start", 0):attrs.get("end", len(shape))]


def _inlined(nodes: List, constants: Dict[str, np.ndarray], shapes: Dict[str, tuple], model,
             source_name: str) -> List:
    """``nodes`` with each If whose condition is computable from ``constants`` and the known ``shapes``
    replaced by its branch."""
    from onnx import helper, numpy_helper

    out = []
    for node in nodes:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        known = _shape_value(node, shapes)
        if known is not None:
            constants[node.output[0]] = known
        if node.op_type != "If":
            out.append(node)
            continue
        condition = _evaluate(node.input[0], out, constants, model)
        if condition is None:
            out.append(node)  # the importer refuses it, naming the node
            continue
        branch = next(a.g for a in node.attribute if a.name == ("then_branch" if condition else "else_branch"))
        for tensor in branch.initializer:
            constants[tensor.name] = numpy_helper.to_array(tensor)
            model.graph.initializer.append(tensor)
        out.extend(_inlined(list(branch.node), constants, shapes, model, source_name))
        for inner, outer in zip(branch.output, node.output):
            out.append(helper.make_node("Identity", [inner.name], [outer], name=f"{node.name}/{outer}"))
    return out


def _evaluate(name: str, nodes: List, constants: Dict[str, np.ndarray], model) -> Optional[bool]:
    """The value of ``name`` if it depends on constants only (computed on its ancestors), else None."""
    if name in constants:
        return bool(np.asarray(constants[name]).reshape(-1)[0])
    producers = {out: i for i, node in enumerate(nodes) for out in node.output}
    needed, stack = set(), [name]
    while stack:
        value = stack.pop()
        if not value or value in constants:
            continue
        if value not in producers or nodes[producers[value]].op_type == "If":
            return None  # a graph input, or a value an undecided If makes: data-dependent
        if producers[value] not in needed:
            needed.add(producers[value])
            stack.extend(nodes[producers[value]].input)
    try:
        (value,) = _reference_run([nodes[i] for i in sorted(needed)], [name], constants, model)
    except Exception as exc:  # the reference evaluator raises many kinds
        raise ConversionError(f"cannot evaluate the condition {name!r} of an If at conversion: {exc}") from None
    constants[name] = value
    return bool(np.asarray(value).reshape(-1)[0])


def _reference_run(nodes: List, outputs: List[str], constants: Dict[str, np.ndarray], model) -> List:
    """``outputs`` of ``nodes`` (in order) computed by onnx's reference evaluator from the stored ``constants``
    they read; raises whatever the evaluator raises."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    inputs = {x for node in nodes for x in node.input if x and x in constants}
    graph = helper.make_graph(nodes, "constants", [], [helper.make_tensor_value_info(o, 0, None) for o in outputs],
                              [numpy_helper.from_array(np.asarray(constants[x]), x) for x in sorted(inputs)])
    return ReferenceEvaluator(helper.make_model(graph, opset_imports=model.opset_import)).run(None, {})
