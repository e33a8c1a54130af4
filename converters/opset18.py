"""ONNX opset 18 -> 17 for the ops tinyasr runs, without onnx's version converter (it has no Pad adapter
down from 18, and Silero VAD's opset-18 export has a Pad).

Opset 18 changed, among the ops tinyasr runs: Pad (an optional ``axes`` input), the reductions other than
ReduceSum (``axes`` moved from an attribute to an input) and Split (a ``num_outputs`` attribute, which the
runtime's Split reads as it is).  A stored ``axes`` input goes back to the attribute; a Pad with ``axes``
or a reduction over computed axes is refused naming the node.
"""

from __future__ import annotations

import numpy as np

from tinyasr.errors import ConversionError

REDUCTIONS = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
              "ReduceLogSumExp", "ReduceSumSquare")


def from_opset_18(model, source_name: str):
    """A copy of ``model`` (default domain at opset 18) spelled in opset 17."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        if node.op_type == "Pad" and len(node.input) > 3 and node.input[3]:
            raise ConversionError(f"{source_name}: node {name!r} (Pad): padding only some axes (opset 18 'axes') "
                                  "is not supported")
        if node.op_type in REDUCTIONS and len(node.input) > 1 and node.input[1]:
            if node.input[1] not in constants:
                raise ConversionError(f"{source_name}: node {name!r} ({node.op_type}): its axes are computed, "
                                      "not stored; only stored axes are supported")
            axes = [int(a) for a in np.asarray(constants[node.input[1]]).reshape(-1)]
            del node.input[1:]
            node.attribute.append(helper.make_attribute("axes", axes))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 17
    return model
