"""ONNX ``If`` whose condition is fixed at conversion time, replaced by the branch it takes.

Silero VAD switches on its sample-rate input ``sr``: converted with ``--sample-rate 16000``, that input
becomes the constant 16000, every ``If`` whose condition then depends on stored values only is evaluated
(onnx's reference evaluator, on the condition's ancestors alone) and replaced by the nodes of the branch it
takes, nested Ifs included.  Any other control flow (an If on data or shapes, Loop, Scan) stays, and the
importer refuses it naming the node.
"""

from __future__ import annotations

from typing import Dict, List, Optional

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


def specialise(model, sample_rate: Optional[int], source_name: str):
    """``model`` with its sample-rate input fixed to ``sample_rate`` and the Ifs that this decides inlined.
    Unchanged when the graph has no such input; ConversionError when it has one and no rate is given."""
    import onnx
    from onnx import helper, numpy_helper

    name = sample_rate_input(model)
    if name is None:
        return model
    if sample_rate is None:
        raise ConversionError(f"{source_name}: the graph takes its sample rate as input {name!r}; give the rate "
                              "to fix it at conversion (--sample-rate, e.g. 16000)")
    model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's proto stays as it was
    value = next(v for v in model.graph.input if v.name == name)
    dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    shape = [1] * len(value.type.tensor_type.shape.dim)
    model.graph.initializer.append(numpy_helper.from_array(np.full(shape, sample_rate, dtype), name))
    kept = [v for v in model.graph.input if v.name != name]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = _inlined(list(model.graph.node), constants, model, source_name)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _inlined(nodes: List, constants: Dict[str, np.ndarray], model, source_name: str) -> List:
    """``nodes`` with each If whose condition is computable from ``constants`` replaced by its branch."""
    from onnx import helper, numpy_helper

    out = []
    for node in nodes:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
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
        out.extend(_inlined(list(branch.node), constants, model, source_name))
        for inner, outer in zip(branch.output, node.output):
            out.append(helper.make_node("Identity", [inner.name], [outer], name=f"{node.name}/{outer}"))
    return out


def _evaluate(name: str, nodes: List, constants: Dict[str, np.ndarray], model) -> Optional[bool]:
    """The value of ``name`` if it depends on constants only (computed on its ancestors), else None."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

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
    ordered = [nodes[i] for i in sorted(needed)]
    inputs = {x for n in ordered for x in n.input if x and x in constants}
    graph = helper.make_graph(ordered, "condition", [], [helper.make_tensor_value_info(name, 0, None)],
                              [numpy_helper.from_array(np.asarray(constants[x]), x) for x in sorted(inputs)])
    try:
        (value,) = ReferenceEvaluator(helper.make_model(graph, opset_imports=model.opset_import)).run(None, {})
    except Exception as exc:  # the reference evaluator raises many kinds
        raise ConversionError(f"cannot evaluate the condition {name!r} of an If at conversion: {exc}") from None
    constants[name] = value
    return bool(np.asarray(value).reshape(-1)[0])
