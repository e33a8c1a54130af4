"""Graph passes run after import: fold constants and static shapes, fold BatchNorm, fuse Conv epilogues, drop dead code.

Each pass takes and returns an `Imported` (graph + stored tensors + inferred
shapes).  Folding runs nodes through `tinyasr.ops.run_op`, the same functions
the runtime executes, so a folded value is exactly what the runtime would compute.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

import numpy as np
from tinyasr_convert.onnx_import import CONV_ACTIVATIONS, Imported
from tinyasr_convert.ternary import rewrite_ternary

from tinyasr.errors import ConversionError, GraphError
from tinyasr.format.graph import Node

FLOAT32_MAX = float(np.finfo(np.float32).max)  # stands for +-inf in Clip bounds (JSON has no infinity)


def optimize(model: Imported) -> Imported:
    """All passes in order; the result contains only ops the runtime supports."""
    model = resolve_identities(model)
    model = fold_constants(model)
    model = fold_batchnorm(model)
    model = fuse_conv_epilogues(model)
    model = remove_dead(model)
    model = rewrite_ternary(model)
    check_supported(model)
    return model


# ---------------------------------------------------------------------------------------------------------------------
# identities and constant folding


def resolve_identities(model: Imported) -> Imported:
    """Remove Identity nodes left because their output is a graph output, by renaming the producer's output."""
    graph_outputs = {v.name for v in model.graph.outputs}
    producers = {o: n for n in model.graph.nodes for o in n.outputs}
    rename: Dict[str, str] = {}
    kept: List[Node] = []
    for node in model.graph.nodes:
        src = node.inputs[0] if node.op == "Identity" else None
        if src is not None and src in producers and src not in graph_outputs and src not in rename:
            rename[src] = node.outputs[0]
        else:
            kept.append(node)
    return _with_nodes(model, [_renamed(n, rename) for n in kept])


def fold_constants(model: Imported) -> Imported:
    """Evaluate every node whose inputs are all stored tensors, and shape arithmetic on static dims.

    `Shape` of a value whose inferred dims are partly static becomes an object
    array of ints and `_Dim`s (run-time dims); Gather/Slice/Concat/Unsqueeze/
    Squeeze/Reshape/Cast over such arrays are followed, and one that becomes
    fully known turns into a tensor.  Time axes stay unknown, so their arithmetic
    stays in the graph.  Same-dtype Casts are dropped.
    """
    from tinyasr.ops import run_op

    tensors = dict(model.tensors)
    partial: Dict[str, np.ndarray] = {}
    rename: Dict[str, str] = {}
    graph_outputs = {v.name for v in model.graph.outputs}
    kept: List[Node] = []
    for node in model.graph.nodes:
        node = _renamed(node, rename, outputs=False)
        if node.op == "Reshape" and node.inputs[1] in partial:
            node = _reshape_with_copied_dims(node, partial[node.inputs[1]], tensors, model)
        present = [x for x in node.inputs if x]
        out = node.outputs[0]
        if out in graph_outputs:
            kept.append(node)
            continue
        if node.op == "Cast" and _is_noop_cast(node, model):
            rename[out] = node.inputs[0]
            continue
        if present and all(x in tensors for x in present):
            args = [tensors[x] if x else None for x in node.inputs]
            try:
                results = run_op(node.op, args, node.attrs, num_outputs=len(node.outputs))
            except GraphError as exc:
                raise ConversionError(f"node {node.name!r} ({node.op}): constant folding failed: {exc}") from None
            for name, value in zip(node.outputs, results):
                tensors[name] = np.asarray(value, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
            continue
        value = _partial_value(node, partial, tensors, model)
        if value is not None:
            if all(isinstance(v, int) for v in value.reshape(-1)):
                tensors[out] = value.astype(model.dtypes.get(out, "int64"))
                continue
            partial[out] = value
        kept.append(node)
    folded = Imported(model.graph, tensors, model.shapes, model.dtypes, model.metadata)
    return _with_nodes(folded, kept)


def _is_noop_cast(node: Node, model: Imported) -> bool:
    from onnx import helper

    src = model.dtypes.get(node.inputs[0])
    return src is not None and src == np.dtype(helper.tensor_dtype_to_np_dtype(node.attrs["to"])).name


def _partial_value(node: Node, partial, tensors, model: Imported) -> Optional[np.ndarray]:
    """The output of a shape-arithmetic node as an object array of ints and `_Dim`s, or None if not tracked."""
    if node.op == "Shape":
        dims = model.shapes.get(node.inputs[0])
        if dims is None:
            return None
        known = np.empty(len(dims), dtype=object)
        known[:] = [d if isinstance(d, int) else _Dim.of(node.inputs[0], i, d) for i, d in enumerate(dims)]
        return known[node.attrs.get("start", 0) : node.attrs.get("end", len(dims))]
    tracked = node.inputs if node.op == "Concat" else node.inputs[:1]
    if node.op not in _PARTIAL_OPS or not any(x in partial for x in tracked):
        return None
    if any(x not in tensors for x in node.inputs[1:] if x) and node.op != "Concat":
        return None
    const = [np.asarray(tensors[x]) if x in tensors else None for x in node.inputs[1:]]
    value = _PARTIAL_OPS[node.op](partial.get(node.inputs[0]), const, node, partial, tensors)
    return None if value is None else np.asarray(value, dtype=object)


@dataclass(frozen=True)
class _Dim:
    """A dim known only at run time, named by its symbol from shape inference (equal symbols: equal sizes)."""

    symbol: str

    @staticmethod
    def of(value: str, axis: int, inferred) -> "_Dim":
        return _Dim(inferred if isinstance(inferred, str) else f"{value}[{axis}]")


def _reshape_with_copied_dims(node: Node, target: np.ndarray, tensors, model: Imported) -> Node:
    """Reshape(x, [dim 0 of x, -1]) built from Shape arithmetic -> Reshape(x, [0, -1]) with a stored shape.

    ONNX Reshape copies the input's dim where the target says 0, so a run-time
    dim known (by its inferred symbol) to equal the same axis of the Reshape's own
    input needs no Shape arithmetic.
    """
    dims = model.shapes.get(node.inputs[0])
    if target.ndim != 1 or node.attrs.get("allowzero", 0) or dims is None or len(target) > len(dims):
        return node
    shape = []
    for i, d in enumerate(target):
        if isinstance(d, int) and d != 0:
            shape.append(d)
        elif d == _Dim.of(node.inputs[0], i, dims[i]):
            shape.append(0)
        else:
            return node
    name = f"{node.name}::shape"
    tensors[name] = np.array(shape, np.int64)
    return replace(node, inputs=(node.inputs[0], name))


def _partial_slice(data, const, node, partial, tensors):
    if data.ndim != 1 or (len(const) > 2 and const[2] is not None and int(const[2].reshape(-1)[0]) != 0):
        return None
    step = int(const[3].reshape(-1)[0]) if len(const) > 3 and const[3] is not None else 1
    return data[int(const[0].reshape(-1)[0]) : int(const[1].reshape(-1)[0]) : step]


def _partial_concat(data, const, node, partial, tensors):
    parts = []
    for x in node.inputs:
        if x in partial:
            parts.append(partial[x])
        elif x in tensors:
            parts.append(np.asarray(tensors[x]).astype(object))
        else:
            return None
    return np.concatenate(parts, axis=node.attrs.get("axis", 0)) if all(p.ndim == 1 for p in parts) else None


def _partial_unsqueeze(data, const, node, partial, tensors):
    axes = sorted(int(a) % (data.ndim + len(const[0])) for a in const[0].reshape(-1))
    for axis in axes:
        data = np.expand_dims(data, axis)
    return data


_PARTIAL_OPS = {
    "Gather": lambda d, c, node, *_: np.take(d, c[0].astype(np.int64), axis=node.attrs.get("axis", 0)),
    "Slice": _partial_slice,
    "Concat": _partial_concat,
    "Unsqueeze": _partial_unsqueeze,
    "Squeeze": lambda d, c, *_: np.squeeze(d, axis=tuple(int(a) for a in c[0].reshape(-1))) if c and c[0] is not None else np.squeeze(d),
    "Reshape": lambda d, c, *_: d.reshape([int(v) for v in c[0].reshape(-1)]) if 0 not in c[0] else None,
    "Cast": lambda d, c, *_: d,
}


# ---------------------------------------------------------------------------------------------------------------------
# BatchNorm


def fold_batchnorm(model: Imported) -> Imported:
    """BatchNorm after a Conv (sole consumer) is folded into its weights; any other BN becomes Mul + Add."""
    tensors = dict(model.tensors)
    consumers = _consumer_counts(model)
    producers = {o: n for n in model.graph.nodes for o in n.outputs}
    out: List[Node] = []
    for node in model.graph.nodes:
        if node.op != "BatchNormalization":
            out.append(node)
            continue
        if len(node.outputs) > 1 and any(node.outputs[1:]):
            raise ConversionError(f"node {node.name!r} (BatchNormalization): training-mode outputs are not supported")
        missing = [x for x in node.inputs[1:5] if x not in tensors]
        if missing:
            raise ConversionError(f"node {node.name!r} (BatchNormalization): parameter {missing[0]!r} is not constant")
        gamma, beta, mean, var = (tensors[x].astype(np.float64) for x in node.inputs[1:5])
        scale = gamma / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
        shift = beta - mean * scale
        conv = producers.get(node.inputs[0])
        if conv is not None and conv.op == "Conv" and consumers[node.inputs[0]] == 1 and _conv_is_plain(conv, tensors):
            w = tensors[conv.inputs[1]]
            b = tensors[conv.inputs[2]] if len(conv.inputs) > 2 and conv.inputs[2] else np.zeros(w.shape[0])
            w_name, b_name = f"{conv.name}::weight", f"{conv.name}::bias"
            tensors[w_name] = (w * scale.reshape(-1, *[1] * (w.ndim - 1))).astype(w.dtype)
            tensors[b_name] = (b * scale + shift).astype(w.dtype)
            out[out.index(conv)] = replace(conv, inputs=(conv.inputs[0], w_name, b_name), outputs=node.outputs[:1])
            continue
        rank = len(model.shapes.get(node.inputs[0], ())) or 3
        dtype = model.dtypes.get(node.inputs[0], "float32")
        bshape = (-1,) + (1,) * (rank - 2)
        s_name, h_name, mid = f"{node.name}::scale", f"{node.name}::shift", f"{node.name}::scaled"
        tensors[s_name] = scale.reshape(bshape).astype(dtype)
        tensors[h_name] = shift.reshape(bshape).astype(dtype)
        out.append(Node(f"{node.name}::mul", "Mul", (node.inputs[0], s_name), (mid,)))
        out.append(Node(f"{node.name}::add", "Add", (mid, h_name), node.outputs[:1]))
    model = Imported(model.graph, tensors, model.shapes, model.dtypes, model.metadata)
    return _with_nodes(model, out)


def _conv_is_plain(conv: Node, tensors) -> bool:
    """A Conv whose weights are stored and that has no fused epilogue yet (BN must apply before any of that)."""
    has_bias = len(conv.inputs) > 2 and conv.inputs[2]
    return (
        conv.inputs[1] in tensors
        and (not has_bias or conv.inputs[2] in tensors)
        and len(conv.inputs) <= 3
        and not conv.attrs.get("activation")
    )


# ---------------------------------------------------------------------------------------------------------------------
# Conv epilogue fusion


def fuse_conv_epilogues(model: Imported) -> Imported:
    """Conv -> [Add(residual)] -> [activation] becomes one Conv with a Z input and an `activation` attribute.

    The fused node takes the place of the last node of the pattern: its inputs
    (the Conv's input and the residual) both exist there, so no reordering is needed.
    """
    nodes = list(model.graph.nodes)
    changed = True
    while changed:
        changed = False
        consumers = _consumer_counts(model, nodes)
        producers = {o: n for n in nodes for o in n.outputs}
        order = {o: i for i, n in enumerate(nodes) for o in n.outputs}
        for i, node in enumerate(nodes):
            fused = _fuse_at(node, producers, consumers, order, model)
            if fused is None:
                continue
            conv, new = fused
            nodes[i] = new
            nodes.remove(conv)
            changed = True
            break
    return _with_nodes(model, nodes)


def _fuse_at(node: Node, producers, consumers, order, model: Imported):
    """If `node` (an Add or an activation) completes a fusable pattern, return (conv node, fused node)."""
    tensors = model.tensors
    if node.op == "Add":
        # Prefer the Conv computed later, so the residual already exists when the fused Conv would have run.
        pairs = sorted(((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])),
                       key=lambda pair: -order.get(pair[0], -1))
        for conv_in, z in pairs:
            conv = producers.get(conv_in)
            if (
                conv is not None and conv.op == "Conv" and consumers[conv_in] == 1 and len(conv.inputs) <= 3
                and not conv.attrs.get("activation") and z not in tensors and _same_shape(conv_in, z, model)
            ):
                inputs = tuple(conv.inputs) + ("",) * (3 - len(conv.inputs)) + (z,)
                return conv, replace(conv, inputs=inputs, outputs=node.outputs)
        return None
    if node.op in CONV_ACTIVATIONS:
        conv = producers.get(node.inputs[0])
        if conv is None or conv.op != "Conv" or consumers[node.inputs[0]] != 1 or conv.attrs.get("activation"):
            return None
        params = []
        if node.op == "Clip":
            bounds = [node.inputs[i] if len(node.inputs) > i else "" for i in (1, 2)]
            if any(b and b not in tensors for b in bounds):
                return None
            lo, hi = (float(tensors[b]) if b else d for b, d in zip(bounds, (-FLOAT32_MAX, FLOAT32_MAX)))
            params = [max(lo, -FLOAT32_MAX), min(hi, FLOAT32_MAX)]
        attrs = dict(conv.attrs, activation=node.op, activation_params=params)
        return conv, replace(conv, outputs=node.outputs, attrs=attrs)
    return None


def _same_shape(a: str, b: str, model: Imported) -> bool:
    """True when a residual `b` has the Conv output `a`'s rank and channels and is not a broadcast [.., 1] tensor."""
    sa, sb = model.shapes.get(a), model.shapes.get(b)
    if not sa or not sb or len(sa) != 3 or len(sb) != 3 or model.dtypes.get(b, "float32") != "float32":
        return False
    if not isinstance(sa[1], int) or sa[1] != sb[1]:
        return False
    for da, db in ((sa[0], sb[0]), (sa[2], sb[2])):
        if (isinstance(da, int) or isinstance(db, int)) and da != db:
            return False
    return True


# ---------------------------------------------------------------------------------------------------------------------
# dead code, support check, helpers


def remove_dead(model: Imported) -> Imported:
    """Drop nodes whose outputs nobody reads and tensors no node reads."""
    needed = {v.name for v in model.graph.outputs}
    kept: List[Node] = []
    for node in reversed(model.graph.nodes):
        if needed.intersection(node.outputs):
            kept.append(node)
            needed.update(x for x in node.inputs if x)
    tensors = {k: v for k, v in model.tensors.items() if k in needed}
    model = Imported(model.graph, tensors, model.shapes, model.dtypes, model.metadata)
    return _with_nodes(model, kept[::-1])


def check_supported(model: Imported) -> None:
    """ConversionError naming the first node whose op the runtime cannot execute."""
    from tinyasr.ops import SUPPORTED_OPS

    for node in model.graph.nodes:
        if node.op not in SUPPORTED_OPS:
            raise ConversionError(
                f"node {node.name!r}: op {node.op!r} could not be folded away and is not supported at run time; "
                f"runtime ops: {', '.join(SUPPORTED_OPS)}"
            )


def _consumer_counts(model: Imported, nodes=None) -> Counter:
    """How many node inputs (plus graph outputs) read each value."""
    counts: Counter = Counter(v.name for v in model.graph.outputs)
    for node in nodes if nodes is not None else model.graph.nodes:
        counts.update(x for x in node.inputs if x)
    return counts


def _renamed(node: Node, rename: Dict[str, str], outputs: bool = True) -> Node:
    if not rename:
        return node
    inputs = tuple(rename.get(x, x) for x in node.inputs)
    outs = tuple(rename.get(x, x) for x in node.outputs) if outputs else node.outputs
    return replace(node, inputs=inputs, outputs=outs)


def _with_nodes(model: Imported, nodes: List[Node]) -> Imported:
    graph = replace(model.graph, nodes=list(nodes))
    return Imported(graph, model.tensors, model.shapes, model.dtypes, model.metadata)
