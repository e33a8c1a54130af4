"""ONNX -> tinyasr graph: load, normalise to opset 17, translate nodes, learn static shapes.

The result (`Imported`) is the source graph almost node for node, in tinyasr
IR: constants are stored tensors, Identity/Dropout are gone, attributes are
JSON, a 1-D Conv carries explicit pads, and `com.microsoft` FusedConv is spelled
out as Conv (+ Add) + activation so the fusion passes can rebuild it from
standard pieces.  Folding and fusion happen afterwards in `passes.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from tinyasr.errors import ConversionError, GraphError
from tinyasr.format.graph import Graph, Node, ValueInfo
from tinyasr.ops.attributes import CONV_ATTRS
from tinyasr_convert.opset18 import from_opset_18
from tinyasr_convert.onnx_safety import ONNX_NUMPY as _ONNX_NUMPY, check_proto, in_child

TARGET_OPSET = 17


def onnx_ops() -> frozenset:
    """ONNX ops (default domain) the converter accepts: the runtime's ops plus Constant, which becomes a stored tensor."""
    from tinyasr.ops import SUPPORTED_OPS

    return frozenset(SUPPORTED_OPS) | {"Constant"}


CONV_ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "Clip")
_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})

Shape = Tuple[Optional[Union[int, str]], ...]  # int: static, str: symbolic, None: unknown


@dataclass
class Imported:
    """A translated graph, its stored tensors, and what shape inference learnt about every value."""

    graph: Graph
    tensors: Dict[str, np.ndarray]
    shapes: Dict[str, Shape] = field(default_factory=dict)
    dtypes: Dict[str, str] = field(default_factory=dict)
    metadata: Dict[str, str] = field(default_factory=dict)


def load_onnx(src) -> Tuple["object", str, str]:
    """Return (ModelProto, source name, sha256 of the serialized model) for a path or a ModelProto."""
    import onnx

    if isinstance(src, onnx.ModelProto):
        data = src.SerializeToString()
        return src, getattr(src.graph, "name", "") or "<ModelProto>", hashlib.sha256(data).hexdigest()
    path = Path(src)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read the ONNX file: {exc.strerror or exc}") from None
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ConversionError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:
        raise ConversionError(f"{path}: the ONNX model has no nodes (not an ONNX model?)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        try:  # onnx refuses missing files and locations outside the model's folder (ValidationError)
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise ConversionError(f"{path}: cannot load the model's external tensor data: {exc}") from None
    return model, path.name, hashlib.sha256(data).hexdigest()


def import_onnx(model, source_name: str) -> Imported:
    """Translate a ModelProto into tinyasr IR (no folding or fusion yet)."""
    from onnx import numpy_helper

    check_proto(model, source_name)  # every initializer, node and value the code below reads
    model = _normalise(model, source_name)
    shapes, dtypes = _infer_shapes(model)
    tensors: Dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    rename: Dict[str, str] = {}
    graph_outputs = {o.name for o in model.graph.output}
    nodes: List[Node] = []
    seen = set()
    for i, pn in enumerate(model.graph.node):
        name = pn.name or f"{pn.op_type}_{i}"
        name = name if name not in seen else f"{name}_{i}"  # unique: passes derive tensor names from node names
        seen.add(name)
        try:
            node = _translated(pn, name, tensors, shapes, graph_outputs, rename)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as exc:
            raise ConversionError(f"{source_name}: node {name!r} ({pn.op_type}) cannot be read: "
                                  f"{type(exc).__name__}: {str(exc)[:160]}") from None
        if node is not None:
            nodes.append(node)

    inputs = [_value_info(v, shapes) for v in model.graph.input if v.name not in tensors]
    outputs = [_value_info(v, shapes) for v in model.graph.output]
    metadata = {p.key: p.value for p in model.metadata_props}
    return Imported(Graph(inputs, outputs, nodes), tensors, shapes, dtypes, metadata)


def _translated(pn, name: str, tensors: dict, shapes: dict, graph_outputs, rename: Dict[str, str]) -> Optional[Node]:
    """One ONNX node as a tinyasr Node, or None when it becomes a stored tensor or a renaming."""
    import onnx
    from onnx import numpy_helper

    def src(name: str) -> str:
        return rename.get(name, name)

    attrs = {a.name: _attr_value(a, name, pn.op_type) for a in pn.attribute if a.type != onnx.AttributeProto.TENSOR}
    inputs = [src(x) for x in pn.input]
    outputs = list(pn.output)
    op = pn.op_type
    if op == "Constant":
        tensors[outputs[0]] = _constant_value(pn, name)
        return None
    if op in ("Identity", "Dropout"):
        if len(outputs) > 1 and outputs[1]:
            raise ConversionError(f"node {name!r} ({op}): the dropout mask output is not supported")
        if outputs[0] in graph_outputs:
            return Node(name, "Identity", (inputs[0],), (outputs[0],))
        rename[outputs[0]] = inputs[0]
        return None
    if op == "ConstantOfShape":
        # ConstantOfShape(s) == Expand(value, s) with a 0-d value: no tensor-valued attribute needed.
        value = next((numpy_helper.to_array(a.t) for a in pn.attribute if a.name == "value"), np.zeros(1, np.float32))
        if value.size != 1:
            raise ConversionError(f"node {name!r} (ConstantOfShape): value must hold one number, got {value.shape}")
        tensors[f"{outputs[0]}::value"] = value.reshape(())
        return Node(name, "Expand", (f"{outputs[0]}::value", inputs[0]), tuple(outputs))
    if op == "Conv":
        attrs = _conv_attrs(name, attrs, inputs, tensors, shapes)
    return Node(name, op, tuple(inputs), tuple(outputs), attrs)


# ---------------------------------------------------------------------------------------------------------------------
# normalisation on the ModelProto (before shape inference, so inference sees only standard ops)


def _normalise(model, source_name: str):
    """Check domains/opsets/ops, expand FusedConv, and bring the default domain to opset 17."""
    import onnx

    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    default = opsets.get("ai.onnx", 0)
    supported = onnx_ops()
    weight_ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    for i, pn in enumerate(model.graph.node):
        name = pn.name or f"{pn.op_type}_{i}"
        domain = pn.domain or "ai.onnx"
        if pn.op_type in _CONTROL_FLOW or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in pn.attribute):
            raise ConversionError(
                f"{source_name}: node {name!r} ({domain}:{pn.op_type}) has subgraphs: "
                "control flow (If/Loop/Scan) is not supported; export the model without data-dependent branches"
            )
        if domain == "com.microsoft" and pn.op_type == "FusedConv":
            continue
        if domain != "ai.onnx" or pn.op_type not in supported:
            raise ConversionError(
                f"{source_name}: node {name!r}: op {pn.op_type!r} of domain {domain!r} (opset {opsets.get(domain, '?')}) "
                f"is not supported. Supported: {', '.join(sorted(supported))}, com.microsoft:FusedConv"
            )
        if pn.op_type == "Conv" and weight_ranks.get(pn.input[1], 3) not in (3, 4):
            raise ConversionError(
                f"{source_name}: node {name!r} (Conv) is a {weight_ranks[pn.input[1]] - 2}-D convolution; only 1-D "
                "(input [batch, channels, time]) and 2-D convolutions are supported"
            )
    model = _expand_fused_conv(model)
    if default == 18 and TARGET_OPSET == 17:  # onnx's converter has no Pad adapter down from 18
        model, default = from_opset_18(model, source_name), TARGET_OPSET
    if default != TARGET_OPSET:
        try:
            converted = in_child(_converted_to_target_opset, model.SerializeToString(), "version converter")
            model = onnx.ModelProto.FromString(converted)
        except Exception as exc:
            raise ConversionError(
                f"{source_name}: cannot bring the model from ONNX opset {default} to {TARGET_OPSET}: {exc}"
            ) from None
    return model


def _expand_fused_conv(model):
    """Rewrite com.microsoft FusedConv (Conv + optional Z + activation) as standard Conv, Add, activation nodes."""
    import onnx
    from onnx import helper, numpy_helper

    if not any(n.domain == "com.microsoft" for n in model.graph.node):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    new_nodes = []
    for i, pn in enumerate(model.graph.node):
        if pn.domain != "com.microsoft":
            new_nodes.append(pn)
            continue
        name = pn.name or f"FusedConv_{i}"
        attrs = {a.name: helper.get_attribute_value(a) for a in pn.attribute}
        activation = attrs.pop("activation", b"").decode()
        params = list(attrs.pop("activation_params", []))
        if activation not in CONV_ACTIVATIONS + ("",):
            raise ConversionError(
                f"node {name!r} (com.microsoft:FusedConv): activation {activation!r} is not supported; "
                f"supported: {', '.join(CONV_ACTIVATIONS)}"
            )
        out = pn.output[0]
        conv_out = f"{out}::conv" if (activation or len(pn.input) > 3) else out
        new_nodes.append(helper.make_node("Conv", list(pn.input[:3]), [conv_out], name=name, **attrs))
        if len(pn.input) > 3 and pn.input[3]:
            add_out = f"{out}::sum" if activation else out
            new_nodes.append(helper.make_node("Add", [conv_out, pn.input[3]], [add_out], name=f"{name}::add"))
            conv_out = add_out
        if activation:
            act_inputs = [conv_out]
            if activation == "Clip":
                lo, hi = params if len(params) == 2 else (-np.inf, np.inf)
                for suffix, v in (("min", lo), ("max", hi)):
                    t = numpy_helper.from_array(np.array(v, np.float32), f"{name}::{suffix}")
                    model.graph.initializer.append(t)
                    act_inputs.append(t.name)
            new_nodes.append(helper.make_node(activation, act_inputs, [out], name=f"{name}::{activation.lower()}"))
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    kept = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def _infer_shapes(model) -> Tuple[Dict[str, Shape], Dict[str, str]]:
    """Static shapes and dtypes of every value onnx shape inference can tell (unknown dims are None)."""
    import onnx

    try:  # in a child: onnx's C++ inference aborts the process on some malformed models
        inferred = onnx.ModelProto.FromString(in_child(_inferred, model.SerializeToString(), "shape inference"))
    except Exception:  # a model that defeats inference still converts; fusions just stay conservative
        inferred = model
    shapes: Dict[str, Shape] = {}
    dtypes: Dict[str, str] = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = v.type.tensor_type
        if tt.elem_type in _ONNX_NUMPY:
            dtypes[v.name] = _ONNX_NUMPY[tt.elem_type]
        if tt.HasField("shape"):
            shapes[v.name] = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
            )
    for t in inferred.graph.initializer:
        shapes[t.name] = tuple(t.dims)
        dtypes[t.name] = _ONNX_NUMPY[t.data_type]  # check_proto refused unknown ones
    return shapes, dtypes


def _inferred(model_bytes: bytes) -> bytes:
    import onnx

    model = onnx.ModelProto.FromString(model_bytes)
    return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True).SerializeToString()


def _converted_to_target_opset(model_bytes: bytes) -> bytes:
    import onnx

    model = onnx.ModelProto.FromString(model_bytes)
    return onnx.version_converter.convert_version(model, TARGET_OPSET).SerializeToString()


# ---------------------------------------------------------------------------------------------------------------------
# node translation


def _attr_value(a, node_name: str, op: str):
    """An ONNX attribute as a JSON value (strings decoded)."""
    from onnx import AttributeProto, helper

    if a.type in (AttributeProto.TENSORS, AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS):
        raise ConversionError(f"node {node_name!r} ({op}): tensor-list attribute {a.name!r} is not supported")
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list):
        return [x.decode() if isinstance(x, bytes) else x for x in v]
    return v


def _constant_value(pn, name: str) -> np.ndarray:
    from onnx import helper, numpy_helper

    for a in pn.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            v = helper.get_attribute_value(a)
            return np.array(v, np.float32 if "float" in a.name else np.int64)
    raise ConversionError(f"node {name!r} (Constant): only tensor, float and int values are supported")


def _conv_attrs(name: str, attrs: dict, inputs: List[str], tensors: dict, shapes: dict) -> dict:
    """Normalise Conv attributes to 1-D explicit form: group, strides, dilations, pads [left, right].  They are
    first checked by the rules the runtime loads them with (tinyasr.ops.attributes.CONV_ATTRS)."""
    for key, value in attrs.items():
        if key in CONV_ATTRS:
            try:
                CONV_ATTRS[key](value, f"node {name!r} (Conv) attribute {key!r}")
            except GraphError as exc:
                raise ConversionError(str(exc)) from None
    w_shape = tensors[inputs[1]].shape if inputs[1] in tensors else shapes.get(inputs[1])
    kernel = attrs.get("kernel_shape") or (list(w_shape[2:]) if w_shape else None)
    x_shape = shapes.get(inputs[0])
    rank = len(kernel) if kernel is not None else (len(x_shape) - 2 if x_shape else None)
    if rank == 2:  # the Conformer subsampling: explicit attributes; the op resolves auto_pad from the input
        keep = {k: attrs[k] for k in ("auto_pad", "pads") if k in attrs}
        return {"group": int(attrs.get("group", 1)), "strides": [int(s) for s in attrs.get("strides", [1, 1])],
                "dilations": [int(d) for d in attrs.get("dilations", [1, 1])], **keep}
    if rank != 1:
        raise ConversionError(
            f"node {name!r} (Conv): only 1-D (input [batch, channels, time]) and 2-D convolutions are supported; "
            f"this one is {rank}-D (kernel {kernel})"
        )
    k = int(kernel[0])
    stride = int(attrs.get("strides", [1])[0])
    dilation = int(attrs.get("dilations", [1])[0])
    pads = [int(p) for p in attrs.get("pads", [0, 0])]
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad == "VALID":
        pads = [0, 0]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        length = x_shape[2] if x_shape and len(x_shape) == 3 else None
        if stride == 1:
            total = dilation * (k - 1)
        elif isinstance(length, int):
            total = max((-(-length // stride) - 1) * stride + dilation * (k - 1) + 1 - length, 0)
        else:
            raise ConversionError(
                f"node {name!r} (Conv): auto_pad {auto_pad} with stride {stride} on a time axis of unknown length "
                "cannot be turned into fixed pads; export with explicit pads"
            )
        small, large = total // 2, total - total // 2
        pads = [small, large] if auto_pad == "SAME_UPPER" else [large, small]
    return {"group": int(attrs.get("group", 1)), "strides": [stride], "dilations": [dilation], "pads": pads}


def _value_info(v, shapes) -> ValueInfo:
    tt = v.type.tensor_type
    if tt.elem_type not in _ONNX_NUMPY:
        raise ConversionError(f"graph value {v.name!r}: only tensor inputs and outputs of a numeric type are "
                              f"supported (element type {tt.elem_type})")
    dtype = _ONNX_NUMPY[tt.elem_type]
    dims = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or f"{v.name}_dim{i}")
    return ValueInfo(v.name, dtype, tuple(dims))
