"""Graph passes run after import: fold constants and static shapes, regenerate position tables, fold BatchNorm,
fuse Conv epilogues, drop dead code.

Each pass takes and returns an `Imported` (graph + stored tensors + inferred
shapes).  Folding runs nodes through `tinyasr.ops.run_op`, the same functions
the runtime executes, so a folded value is exactly what the runtime would compute.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

import numpy as np
from tinyasr_convert.onnx_import import CONV_ACTIVATIONS, Imported
from tinyasr_convert.ternary import rewrite_ternary

from tinyasr.errors import ConversionError, GraphError
from tinyasr.format.graph import Node
from tinyasr.kernels.rowwise import LINEAR_ACTIVATIONS

FLOAT32_MAX = float(np.finfo(np.float32).max)  # stands for +-inf in Clip bounds (JSON has no infinity)


def optimize(model: Imported) -> Imported:
    """All passes in order; the result contains only ops the runtime supports."""
    model = resolve_identities(model)
    model = fold_constants(model)
    model = merge_duplicates(model)
    model = regenerate_position_tables(model)
    model = fuse_rel_position_attention(model)
    model = fold_batchnorm(model)
    model = fold_pads_into_conv(model)
    model = fuse_swish(model)
    model = move_relu_before_masks(model)
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
            except (GraphError, ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError) as exc:
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


SMALL_CONSTANT = 64  # elements: stored tensors up to this size with equal dtype, shape and values are one input


def merge_duplicates(model: Imported) -> Imported:
    """Nodes that run the same op with the same attributes on the same inputs are run once, their readers reading
    the first one's outputs.  NeMo's Citrinet export rebuilds each block's frame mask from the lengths
    (Unsqueeze, Cast, Less, Unsqueeze, Not): 23 copies of 4 distinct masks, ~1.1 ms of a 10 s run.  Small stored
    tensors equal in dtype, shape and values count as one input (each block has its own Constant axes [1]); a
    node that makes a graph output stays as it is."""
    graph_outputs = {v.name for v in model.graph.outputs}
    same_as: Dict[str, str] = {}  # a small stored tensor -> the first one with its values
    first_of: Dict[tuple, str] = {}
    for name, value in model.tensors.items():
        if isinstance(value, np.ndarray) and value.dtype != object and value.size <= SMALL_CONSTANT:
            same_as[name] = first_of.setdefault((value.dtype.str, value.shape, value.tobytes()), name)
    computed: Dict[tuple, Node] = {}
    rename: Dict[str, str] = {}
    kept: List[Node] = []
    for node in model.graph.nodes:
        node = _renamed(node, rename, outputs=False)
        key = (node.op, tuple(same_as.get(x, x) for x in node.inputs), len(node.outputs),
               json.dumps(node.attrs, sort_keys=True, default=str))
        first = computed.get(key)
        if first is None or graph_outputs.intersection(node.outputs):
            computed.setdefault(key, node)
            kept.append(node)
            continue
        rename.update(zip(node.outputs, first.outputs))
    if not rename:
        return model
    return remove_dead(_with_nodes(model, kept))


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
# sinusoidal position tables

POSITION_TABLE_TOLERANCE = 1e-4  # stored vs regenerated table (NeMo's torch float32 sin differs by ~1 ulp of the angle)


def sinusoid_frequencies(dim: int) -> np.ndarray:
    """[dim / 2] float32 ``exp(2i * -ln(10000) / dim)`` as NeMo / ESPnet compute them (float32 argument)."""
    argument = np.arange(0, dim, 2, dtype=np.float32) * np.float32(-(np.log(10000.0) / dim))
    return np.exp(argument.astype(np.float64)).astype(np.float32)


def sinusoid_table(positions: np.ndarray, dim: int) -> np.ndarray:
    """[len(positions), dim] float32: sin at even, cos at odd columns, computed as the regenerating subgraph does."""
    angle = positions.astype(np.float32)[:, None] * sinusoid_frequencies(dim)[None, :]
    return np.stack((np.sin(angle), np.cos(angle)), axis=2).reshape(len(positions), dim)


def _table_origin(table: np.ndarray) -> Optional[tuple]:
    """(position of row 0, step per row) if ``table`` [1, n, d] is a sinusoid table: relative (NeMo rel_pos:
    positions (n-1)/2 down to -(n-1)/2) or absolute (0 up to n-1); None otherwise."""
    if table.dtype != np.float32 or table.ndim != 3 or table.shape[0] != 1 or table.shape[2] % 2:
        return None
    rows = table.shape[1]
    candidates = [(0, 1)] + ([((rows - 1) // 2, -1)] if rows % 2 else [])
    for origin, step in candidates:
        positions = origin + step * np.arange(rows)
        if np.abs(sinusoid_table(positions, table.shape[2]) - table[0]).max() <= POSITION_TABLE_TOLERANCE:
            return origin, step
    return None


def regenerate_position_tables(model: Imported, min_rows: int = 256) -> Imported:
    """A stored sinusoid table read by a run-time Slice along its rows becomes a subgraph that computes the rows.

    NeMo exports bake in ``pe`` [1, 2L-1, d] and slice the rows the input needs, so an input longer than L
    encoder frames fails (the slice is short).  The subgraph computes row r's position (origin + step * r) for
    the same start / end, so it equals the Slice wherever the table was long enough, continues past its ends, and
    the table is no longer stored.  Tables of fewer than ``min_rows`` rows are left alone.
    """
    tensors = dict(model.tensors)
    nodes: List[Node] = []
    for node in model.graph.nodes:
        table = tensors.get(node.inputs[0]) if node.op == "Slice" else None
        if table is None or not isinstance(table, np.ndarray) or table.ndim != 3 or table.shape[1] < min_rows:
            nodes.append(node)
            continue
        axes = tensors.get(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
        steps = tensors.get(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] else None
        origin = _table_origin(table)
        if (origin is None or axes is None or [int(a) % 3 for a in np.reshape(axes, -1)] != [1]
                or (steps is not None and [int(v) for v in np.reshape(steps, -1)] != [1])
                or node.inputs[1] in tensors or node.inputs[2] in tensors):
            nodes.append(node)
            continue
        nodes += position_rows(node.name, node.inputs[1], node.inputs[2], node.outputs[0], *origin, table.shape[2],
                               tensors, model.dtypes.get(node.inputs[1], "int64"))
    model = Imported(model.graph, tensors, model.shapes, model.dtypes, model.metadata)
    return _with_nodes(model, nodes)


def position_rows(name: str, starts: str, ends: str, output: str, origin: int, step: int, dim: int, tensors,
                  index_dtype: str = "int64") -> List[Node]:
    """Nodes computing rows ``starts .. ends`` ([1] integer values) of an unbounded sinusoid table whose row r
    holds position ``origin + step * r``, as ``output`` [1, ends - starts, dim]: sin / cos of positions times
    the frequencies, interleaved.  New stored tensors go into ``tensors``."""

    def const(suffix, value):
        tensors[f"{name}::{suffix}"] = np.asarray(value)
        return f"{name}::{suffix}"

    def v(suffix):
        return f"{name}::{suffix}"

    zero, one = const("axis0", np.array([0], np.int64)), const("one", np.array(1, index_dtype))
    axis2 = const("axis2", np.array([2], np.int64))
    return [
        Node(v("start"), "Squeeze", (starts, zero), (v("start"),)),
        Node(v("end"), "Squeeze", (ends, zero), (v("end"),)),
        Node(v("rows"), "Range", (v("start"), v("end"), one), (v("rows"),)),
        Node(v("rowsf"), "Cast", (v("rows"),), (v("rowsf"),), {"to": 1}),
        Node(v("scaled"), "Mul", (v("rowsf"), const("step", np.float32(step))), (v("scaled"),)),
        Node(v("positions"), "Add", (v("scaled"), const("origin", np.float32(origin))), (v("positions"),)),
        Node(v("column"), "Unsqueeze", (v("positions"), const("axis1", np.array([1], np.int64))), (v("column"),)),
        Node(v("angle"), "Mul", (v("column"), const("frequencies", sinusoid_frequencies(dim)[None, :])), (v("angle"),)),
        Node(v("sin"), "Sin", (v("angle"),), (v("sin"),)),
        Node(v("cos"), "Cos", (v("angle"),), (v("cos"),)),
        Node(v("sin3"), "Unsqueeze", (v("sin"), axis2), (v("sin3"),)),
        Node(v("cos3"), "Unsqueeze", (v("cos"), axis2), (v("cos3"),)),
        Node(v("pairs"), "Concat", (v("sin3"), v("cos3")), (v("pairs"),), {"axis": 2}),
        Node(name, "Reshape", (v("pairs"), const("shape", np.array([1, -1, dim], np.int64))), (output,)),
    ]


# ---------------------------------------------------------------------------------------------------------------------
# relative-position attention


def fuse_rel_position_attention(model: Imported) -> Imported:
    """NeMo's exported rel_pos attention weights become one RelPositionSoftmax node (tinyasr/ops/attention.py).

    The export computes Where(mask, 0, Softmax(Where(mask, -10000, (ac + rel_shift(bd)) / c))) with rel_shift as
    Pad(bd, one zero column in front) -> Reshape -> Slice(rows 1:) -> Reshape -> Slice(columns :T); ten passes
    and two copies of [B, H, T, 2T-1] arrays.  Matched from the Softmax back, every intermediate read only by
    the next node; the mask (True where padding) becomes the op's keep input through one Not.
    """
    tensors = dict(model.tensors)
    nodes = list(model.graph.nodes)
    consumers = _consumer_counts(model)
    producers = {o: n for n in nodes for o in n.outputs}
    fused: Dict[str, List[Node]] = {}  # Softmax name -> [replacement nodes]; removed nodes by name
    removed = set()
    for node in nodes:
        match = _rel_position_match(node, producers, consumers, tensors) if node.op == "Softmax" else None
        if match is None:
            continue
        final, mask, content, position, scale, masked, chain = match
        keep = f"{node.name}::keep"
        fused[final.name] = [
            Node(f"{node.name}::not", "Not", (mask,), (keep,)),
            Node(f"{node.name}::fused", "RelPositionSoftmax", (content, position, keep), tuple(final.outputs),
                 {"scale": scale, "masked_value": masked}),
        ]
        removed.update(n.name for n in chain)
    if not fused:
        return model
    out: List[Node] = []
    for node in nodes:
        if node.name in fused:
            out += fused[node.name]
        elif node.name not in removed:
            out.append(node)
    return _with_nodes(Imported(model.graph, tensors, model.shapes, model.dtypes, model.metadata), out)


def _rel_position_match(softmax: Node, producers, consumers, tensors):
    """(final Where, mask, content, position, scale, masked value, nodes replaced) or None."""
    def only(name, op):  # the producer of ``name`` if it is an ``op`` read by one node
        node = producers.get(name)
        return node if node is not None and node.op == op and consumers[name] == 1 else None

    def scalar(name):
        value = tensors.get(name)
        return float(np.asarray(value).reshape(())) if value is not None and np.size(value) == 1 else None

    def ints(name):
        value = tensors.get(name)
        return [int(v) for v in np.asarray(value).reshape(-1)] if value is not None else None

    if softmax.attrs.get("axis", -1) not in (-1, 3) or consumers[softmax.outputs[0]] != 1:
        return None
    final = next((n for n in producers.values() if n.op == "Where" and n.inputs[2:] == (softmax.outputs[0],)), None)
    pre = only(softmax.inputs[0], "Where")
    if final is None or pre is None or final.inputs[0] != pre.inputs[0] or scalar(final.inputs[1]) != 0.0:
        return None
    masked, div = scalar(pre.inputs[1]), only(pre.inputs[2], "Div")
    scale = scalar(div.inputs[1]) if div is not None else None
    add = only(div.inputs[0], "Add") if div is not None else None
    if masked is None or scale is None or not scale > 0 or add is None:
        return None
    for content, shifted in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        cut = only(shifted, "Slice")
        wide = only(cut.inputs[0], "Reshape") if cut is not None else None
        rows = only(wide.inputs[0], "Slice") if wide is not None else None
        tall = only(rows.inputs[0], "Reshape") if rows is not None else None
        pad = only(tall.inputs[0], "Pad") if tall is not None else None
        if pad is None or pad.attrs.get("mode", "constant") != "constant" or ints(pad.inputs[1]) != [0, 0, 0, 1, 0, 0, 0, 0]:
            continue
        if len(pad.inputs) > 2 and pad.inputs[2] and scalar(pad.inputs[2]) != 0.0:
            continue
        if (ints(rows.inputs[1]) != [1] or [a % 4 for a in ints(rows.inputs[3]) or [-1]] != [2]
                or ints(cut.inputs[1]) != [0] or [a % 4 for a in ints(cut.inputs[3]) or [-1]] != [3]
                or any(len(n.inputs) > 4 and n.inputs[4] and ints(n.inputs[4]) != [1] for n in (rows, cut))):
            continue
        chain = [pre, div, add, cut, wide, rows, tall, pad, softmax]
        return final, pre.inputs[0], content, pad.inputs[0], scale, masked, chain
    return None


def absorb_position_product(model: Imported) -> Imported:
    """RelPositionSoftmax(content, MatMul(q + v, p^T), keep), the MatMul read by it alone, becomes
    RelPositionSoftmax(content, q + v, p^T, keep) with ``position_product`` = 1: the op computes only the T of
    each row's 2T - 1 position scores that the rel-shift keeps, and no [B, H, T, 2T - 1] array is written.  Runs
    after structured compaction (like the MatMul epilogues), on both the ONNX and the .nemo graphs."""
    consumers, producers = _readers_and_producers(model)
    absorbed, removed = {}, set()
    for node in model.graph.nodes:
        if node.op != "RelPositionSoftmax" or node.attrs.get("position_product") or len(node.inputs) < 2:
            continue
        product = producers.get(node.inputs[1])
        if (product is None or product.op != "MatMul" or len(product.inputs) != 2 or product.attrs
                or consumers[node.inputs[1]] != 1 or any(x in model.tensors for x in product.inputs)):
            continue
        inputs = (node.inputs[0],) + tuple(product.inputs) + tuple(node.inputs[2:])
        absorbed[node.name] = replace(node, inputs=inputs, attrs=dict(node.attrs, position_product=1))
        removed.add(product.name)
    return _with_fused(model, absorbed, removed)


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
        scale, shift = _batchnorm_affine(node, tensors)
        conv = producers.get(node.inputs[0])
        if (conv is not None and conv.op == "Conv" and consumers[node.inputs[0]] == 1 and conv in out
                and _conv_is_plain(conv, tensors) and _folds_into(conv, tensors, len(scale))):
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


def _batchnorm_affine(node: Node, tensors):
    """(scale, shift) float64 [C] of an inference BatchNormalization; ConversionError naming the node when its
    parameters are not four numeric vectors of one length or epsilon is not a non-negative number."""
    params = [np.asarray(tensors[x]) for x in node.inputs[1:5]]
    epsilon = node.attrs.get("epsilon", 1e-5)
    if (any(p.ndim != 1 or p.dtype.kind not in "iuf" or p.shape != params[0].shape for p in params)
            or isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 <= epsilon < 1):
        raise ConversionError(f"node {node.name!r} (BatchNormalization): scale, bias, mean and var must be numeric "
                              f"vectors of one length and epsilon a small number; got shapes "
                              f"{[p.shape for p in params]}, epsilon {str(epsilon)[:20]}")
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    with np.errstate(all="ignore"):
        scale = gamma / np.sqrt(var + epsilon)
    if not np.isfinite(scale).all():
        raise ConversionError(f"node {node.name!r} (BatchNormalization): var + epsilon is not positive everywhere")
    return scale, beta - mean * scale


def _folds_into(conv: Node, tensors, channels: int) -> bool:
    """A Conv whose stored weight [C, ...] and bias [C] have the BatchNorm's channel count."""
    w = np.asarray(tensors[conv.inputs[1]])
    has_bias = len(conv.inputs) > 2 and conv.inputs[2]
    return (w.ndim >= 2 and w.dtype.kind == "f" and w.shape[0] == channels
            and (not has_bias or np.shape(tensors[conv.inputs[2]]) == (channels,)))


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
# Pad before a Conv, Swish


def fold_pads_into_conv(model: Imported) -> Imported:
    """A zero Pad of the spatial axes read only by a Conv becomes the Conv's own ``pads`` (added to them).

    NeMo's Conformer conv module pads the time axis with a separate Pad before its depthwise Conv (a copy of
    the activation per layer); the Conv kernels pad without copying.  Only constant-mode Pads with stored,
    non-negative pads, a zero (or omitted) value and nothing on the batch and channel axes qualify.
    """
    consumers = _consumer_counts(model)
    producers = {o: n for n in model.graph.nodes for o in n.outputs}
    folded: Dict[str, Node] = {}  # Conv name -> the Conv reading the Pad's input
    removed = set()
    for conv in model.graph.nodes:
        pad = producers.get(conv.inputs[0]) if conv.op == "Conv" and conv.inputs else None
        spatial = _spatial_zero_pads(pad, model.tensors) if pad is not None and pad.op == "Pad" else None
        if (spatial is None or consumers[conv.inputs[0]] != 1 or conv.attrs.get("auto_pad", "NOTSET") != "NOTSET"
                or len(spatial) != 2 * (len(model.shapes.get(conv.inputs[0]) or ()) - 2)):
            continue
        own = [int(p) for p in conv.attrs.get("pads", [0] * len(spatial))]
        if len(own) != len(spatial):
            continue
        pads = [a + b for a, b in zip(own, spatial)]
        folded[conv.name] = replace(conv, inputs=(pad.inputs[0],) + tuple(conv.inputs[1:]),
                                    attrs=dict(conv.attrs, pads=pads))
        removed.add(pad.name)
    if not folded:
        return model
    nodes = [folded.get(n.name, n) for n in model.graph.nodes if n.name not in removed]
    return _with_nodes(model, nodes)


def _spatial_zero_pads(pad: Node, tensors) -> Optional[List[int]]:
    """The Pad's [begin..., end...] over the axes after batch and channel, when it is a plain zero padding."""
    if pad.attrs.get("mode", "constant") != "constant" or len(pad.inputs) < 2 or pad.inputs[1] not in tensors:
        return None
    if len(pad.inputs) > 2 and pad.inputs[2] and (pad.inputs[2] not in tensors or np.any(tensors[pad.inputs[2]])):
        return None
    if len(pad.inputs) > 3 and pad.inputs[3]:  # opset 18 axes input
        return None
    pads = [int(p) for p in np.asarray(tensors[pad.inputs[1]]).reshape(-1)]
    rank = len(pads) // 2
    begins, ends = pads[:rank], pads[rank:]
    if rank < 3 or any(begins[:2]) or any(ends[:2]) or min(pads) < 0:
        return None
    return begins[2:] + ends[2:]


def fuse_swish(model: Imported) -> Imported:
    """Mul(x, Sigmoid(x)), the Sigmoid read by that Mul alone, becomes one Swish node (tinyasr/ops/elementwise.py):
    one pass instead of two and no intermediate buffer, at the Mul's place in the order."""
    consumers, producers = _readers_and_producers(model)
    fused: Dict[str, Node] = {}  # Mul name -> Swish node
    removed = set()
    for node, orders in _two_input_nodes(model, "Mul"):
        for x, gate in orders:
            sigmoid = producers.get(gate)
            if sigmoid is not None and sigmoid.op == "Sigmoid" and sigmoid.inputs[0] == x and consumers[gate] == 1:
                fused[node.name] = Node(f"{node.name}::swish", "Swish", (x,), tuple(node.outputs))
                removed.add(sigmoid.name)
                break
    return _with_fused(model, fused, removed)


# ---------------------------------------------------------------------------------------------------------------------
# after structured compaction (which reads the unfused feed-forward blocks and attention products): MatMul
# epilogues and the attention's position product


def fuse_after_compaction(model: Imported) -> Imported:
    """The fusions that run once compaction is done, on graphs from ONNX and from .nemo archives alike (the
    .nemo builder writes Swish as Sigmoid and Mul: fused here first, so the MatMul epilogues take it)."""
    linear = fuse_linear_residuals(fold_linear_scales(fuse_matmul_epilogues(fuse_glu(fuse_swish(model)))))
    return fuse_squeeze_excite(absorb_position_product(linear))


def fuse_glu(model: Imported) -> Imported:
    """Split(x) into two equal halves -> Sigmoid(second) -> Mul(first, sigmoid), each read once, becomes one Glu node
    (tinyasr/ops/nn.py) at the Mul's place: a Conformer conv module's gate.  Split's views, the Sigmoid of a
    strided half (numpy's path, not the row kernel) and the Mul were 1.3 ms of conformer_ctc_small's 10 s."""
    consumers, producers = _readers_and_producers(model)
    fused: Dict[str, Node] = {}
    removed, unread = set(), set()  # nodes; the split sizes no other node reads
    for node, orders in _two_input_nodes(model, "Mul"):
        for value, gate in orders:
            sigmoid = producers.get(gate)
            split = producers.get(value)
            if (sigmoid is None or sigmoid.op != "Sigmoid" or split is None or split.op != "Split"
                    or len(split.outputs) != 2 or split.outputs != (value, sigmoid.inputs[0])
                    or any(consumers[name] != 1 for name in (gate, value, sigmoid.inputs[0]))):
                continue
            sizes = split.attrs.get("split") or (model.tensors.get(split.inputs[1]) if len(split.inputs) > 1
                                                 and split.inputs[1] else None)
            if sizes is not None and len(set(int(v) for v in np.asarray(sizes).reshape(-1))) != 1:
                continue
            fused[node.name] = Node(f"{node.name}::glu", "Glu", (split.inputs[0],), tuple(node.outputs),
                                    {"axis": int(split.attrs.get("axis", 0))})
            removed.update({split.name, sigmoid.name})
            if len(split.inputs) > 1 and split.inputs[1] in model.tensors and consumers[split.inputs[1]] == 1:
                unread.add(split.inputs[1])
            break
    tensors = {name: value for name, value in model.tensors.items() if name not in unread}
    return _with_fused(Imported(model.graph, tensors, model.shapes, model.dtypes, model.metadata), fused, removed)


def fuse_squeeze_excite(model: Imported) -> Imported:
    """A Citrinet block's squeeze-excite (NeMo's SqueezeExcite, global context) becomes one SqueezeExcite node
    (tinyasr/ops/nn.py) at the place of its last node: the masked rows, their mean over the valid frames, the two
    small products with the hidden activation, the Sigmoid, the scale and a Relu that follows.  Two forms:

    * NeMo's ONNX export: Where(padded, 0, X) -> ReduceSum over time / Cast(ReduceSum(Cast(Not(padded)))) ->
      Transpose -> MatMul(W1) -> Relu -> MatMul(W2) -> Transpose -> Sigmoid -> Mul(masked, .);
    * tinyasr's .nemo builder (converters/nemo_blocks.py): Mul(X, mask) -> ReduceSum / ReduceSum(mask) ->
      Conv(W1, act) -> Conv(W2, Sigmoid) -> Mul(masked, .).

    Citrinet-256 at 10 s ran ~15 nodes a block, 23 blocks, ~3.5 ms of its 72 as nodes of their own (Zen 4).  The
    mask and count nodes other blocks share stay; what only the pattern read is dropped (remove_dead)."""
    consumers, producers = _readers_and_producers(model)
    readers = _readers_of(model)
    tensors = dict(model.tensors)
    fused: Dict[str, Node] = {}
    for node, orders in _two_input_nodes(model, "Mul"):
        for masked, gate in orders:
            match = _squeeze_excite_match(masked, gate, producers, consumers, readers, tensors, model)
            if match is None:
                continue
            inputs, attrs, new_tensors = match
            last = node
            after = _only_reader(node.outputs[0], ("Relu",), readers, consumers)
            if after is not None:
                last, attrs = after, dict(attrs, activation="Relu")
            tensors.update(new_tensors)
            fused[last.name] = Node(f"{node.name}::squeeze_excite", "SqueezeExcite", inputs, tuple(last.outputs),
                                    attrs)
            break
    if not fused:
        return model
    # the pattern's other nodes are read by nothing now
    return remove_dead(_with_fused(Imported(model.graph, tensors, model.shapes, model.dtypes, model.metadata), fused,
                                   set()))


def _squeeze_excite_match(masked: str, gate: str, producers, consumers, readers, tensors, model: Imported):
    """((X, mask, W1, W2), attrs, new tensors) when Mul(masked, gate) ends one of fuse_squeeze_excite's forms."""

    def made_by(name, op, readers=1):  # readers None: any number
        node = producers.get(name)
        return node if node is not None and node.op == op and readers in (None, consumers[name]) else None

    def stored(name, ndim):
        value = tensors.get(name)
        return value if isinstance(value, np.ndarray) and value.dtype == np.float32 and value.ndim == ndim else None

    def over_time(node):  # ReduceSum over the last of 3 axes, keeping it
        return node.attrs.get("keepdims", 1) == 1 and _axes_of(node, tensors) in ([2], [-1])

    def plain_conv(node, activation):  # a 1x1 Conv without bias on a stored weight
        if node is None or len(node.inputs) > 3 or (len(node.inputs) == 3 and node.inputs[2]):
            return None
        weight = stored(node.inputs[1], 3)
        attrs = node.attrs
        if (weight is None or weight.shape[2] != 1 or attrs.get("group", 1) != 1
                or attrs.get("activation", "") != activation
                or any(v != 1 for v in list(attrs.get("strides", [1])) + list(attrs.get("dilations", [1])))
                or any(attrs.get("pads", [0, 0]))):
            return None
        return weight[:, :, 0]

    sigmoid = producers.get(gate)
    if sigmoid is None or consumers[gate] != 1:
        return None
    masker = producers.get(masked)
    if masker is None or consumers[masked] != 2 or masker.op not in ("Where", "Mul"):
        return None
    total = next((n for n in readers.get(masked, ()) if n.op == "ReduceSum" and n.inputs[0] == masked), None)
    if total is None or not over_time(total):
        return None
    mean_div = _only_reader(total.outputs[0], ("Div",), readers, consumers, inputs=2)
    if mean_div is None or mean_div.inputs[0] != total.outputs[0]:
        return None
    mean, count = mean_div.outputs[0], mean_div.inputs[1]
    if sigmoid.op == "Sigmoid":  # the ONNX export
        back = made_by(sigmoid.inputs[0], "Transpose")
        second = back and made_by(back.inputs[0], "MatMul")
        act = second and producers.get(second.inputs[0])
        if act is None or act.op not in ("Relu", "Swish") or consumers[act.outputs[0]] != 1:
            return None
        first = made_by(act.inputs[0], "MatMul")
        forth = first and made_by(first.inputs[0], "Transpose")
        if (forth is None or forth.inputs[0] != mean or consumers[mean] != 1
                or any(list(t.attrs.get("perm", [])) != [0, 2, 1] for t in (back, forth))):
            return None
        squeeze, excite, hidden = stored(first.inputs[1], 2), stored(second.inputs[1], 2), act.op
        new = {}
    elif sigmoid.op == "Conv":  # tinyasr's .nemo builder
        excite_t = plain_conv(sigmoid, "Sigmoid")
        hidden_conv = producers.get(sigmoid.inputs[0])
        if excite_t is None or hidden_conv is None or consumers[sigmoid.inputs[0]] != 1 or hidden_conv.op != "Conv":
            return None
        hidden = hidden_conv.attrs.get("activation", "")
        squeeze_t = plain_conv(hidden_conv, hidden)
        if squeeze_t is None or hidden_conv.inputs[0] != mean or consumers[mean] != 1:
            return None
        squeeze, excite = np.ascontiguousarray(squeeze_t.T), np.ascontiguousarray(excite_t.T)
        new = {f"{sigmoid.name}::squeeze": squeeze, f"{sigmoid.name}::excite": excite}
    else:
        return None
    if (squeeze is None or excite is None or squeeze.shape[::-1] != excite.shape
            or hidden not in ("", "Relu", "Swish")):
        return None
    if masker.op == "Where":  # Where(padded, 0, X), count = Cast(ReduceSum(Cast(Not(padded))))
        padded, zero, x = masker.inputs
        value = tensors.get(zero)
        as_float = made_by(count, "Cast", readers=None)  # the count, like the mask, may serve several blocks
        frames = as_float and made_by(as_float.inputs[0], "ReduceSum", readers=None)
        to_int = frames and made_by(frames.inputs[0], "Cast", readers=None)
        valid = to_int and made_by(to_int.inputs[0], "Not", readers=None)
        if (not isinstance(value, np.ndarray) or value.size != 1 or float(value.reshape(-1)[0]) != 0.0
                or valid is None or valid.inputs[0] != padded or not over_time(frames)):
            return None
        mask, kind = padded, "padded"
    else:  # Mul(X, mask) with mask a cast of a boolean, count = ReduceSum(mask)
        x, mask = masker.inputs
        if not _zero_one(mask, producers, model):
            x, mask = mask, x
        frames = producers.get(count)
        if (not _zero_one(mask, producers, model) or frames is None or frames.op != "ReduceSum"
                or frames.inputs[0] != mask or not over_time(frames)):
            return None
        kind = "valid"
    if not _one_row_per_utterance(mask, producers, model):
        return None
    names = (f"{sigmoid.name}::squeeze", f"{sigmoid.name}::excite")
    w1, w2 = (names[0], names[1]) if new else (first.inputs[1], second.inputs[1])
    return (x, mask, w1, w2), {"mask": kind, "hidden_activation": hidden}, new


def _one_row_per_utterance(mask: str, producers, model: Imported) -> bool:
    """True when a frame mask is [B, 1, T], the shape SqueezeExcite takes: so the inferred shape says, or (a
    graph without inferred shapes, as the .nemo builder's) it is an Unsqueeze at axis 1, through Cast / Not."""
    shape = model.shapes.get(mask)
    if shape:
        return len(shape) == 3 and shape[1] == 1
    node = producers.get(mask)
    while node is not None and node.op in ("Cast", "Not"):
        node = producers.get(node.inputs[0])
    if node is None or node.op != "Unsqueeze":
        return False
    return _axes_of(node, model.tensors) == [1]


def _zero_one(name: str, producers, model: Imported) -> bool:
    """True when ``name`` is a float cast of a boolean (through ops that only reshape it): 1 or 0 everywhere."""
    node = _through_copies(name, producers)
    if node is None or node.op != "Cast" or node.attrs.get("to") != 1:
        return False
    source = _through_copies(node.inputs[0], producers)
    return model.dtypes.get(node.inputs[0]) == "bool" or (source is not None and source.op in _BOOLEAN_OPS)


def _through_copies(name: str, producers) -> Optional[Node]:
    """The node that makes ``name``'s values, past ops that only reshape or copy them (None: a graph input or a
    stored tensor)."""
    node = producers.get(name)
    while node is not None and node.op in _VALUE_PRESERVING:
        node = producers.get(node.inputs[0])
    return node


def fuse_matmul_epilogues(model: Imported) -> Imported:
    """MatMul(A, stored W [K, N]) -> Add(stored bias of N values over the last axis) -> [Relu | Swish] becomes one
    Linear node (tinyasr/ops/nn.py) with the bias as its third input and an ``activation`` attribute: the bias and
    the activation in one pass over the product while it is in cache, and two nodes fewer.

    A Conformer layer has eight such linear layers (q, k, v, out and two per feed-forward block); at 10 s
    conformer_ctc_small's 128 bias Adds and 32 Swishes cost 4.2 ms of 80 as nodes of their own."""
    consumers, producers = _readers_and_producers(model)
    tensors = dict(model.tensors)
    fused: Dict[str, Node] = {}  # name of the pattern's last node -> the Linear node
    removed, replaced = set(), set()  # nodes; stored biases now reshaped under another name
    readers = _readers_of(model)
    for node, orders in _two_input_nodes(model, "Add"):
        for product, bias in orders:
            matmul = producers.get(product)
            if (matmul is None or matmul.op != "MatMul" or len(matmul.inputs) != 2 or consumers[product] != 1
                    or matmul.inputs[0] in tensors or getattr(tensors.get(matmul.inputs[1]), "ndim", 0) != 2):
                continue
            values = tensors.get(bias)
            columns = tensors[matmul.inputs[1]].shape[1]
            if (not isinstance(values, np.ndarray) or values.dtype != np.float32 or values.size != columns
                    or any(d != 1 for d in values.shape[:-1])):
                continue
            last, activation = node, ""
            after = _only_reader(node.outputs[0], LINEAR_ACTIVATIONS, readers, consumers)
            if after is not None:
                last, activation = after, after.op
            if values.ndim != 1:  # a bias of shape [1, .., N] is stored as [N]
                if consumers[bias] == 1:
                    replaced.add(bias)
                bias = f"{matmul.name}::bias"
                tensors[bias] = values.reshape(-1)
            fused[last.name] = Node(matmul.name, "Linear", (matmul.inputs[0], matmul.inputs[1], bias),
                                    tuple(last.outputs), {"activation": activation} if activation else {})
            removed.update({matmul.name, node.name} - {last.name})
            break
    if not fused:
        return model
    tensors = {name: value for name, value in tensors.items() if name not in replaced}
    return _with_fused(Imported(model.graph, tensors, model.shapes, model.dtypes, model.metadata), fused, removed)


def fold_linear_scales(model: Imported) -> Imported:
    """Linear(A, W, C) without activation -> Mul(a stored power-of-two scalar s) becomes Linear(A, s W, s C), where
    W and C are stored float32 and read by that Linear only: a Conformer's half-step feed-forward blocks (NeMo's
    ``fc_factor`` 0.5), 32 Mul nodes at conformer_ctc_small's size.  Scaling by a power of two is exact, so the
    output is bit-identical (short of overflow or results below float32's normal range)."""
    consumers, producers = _readers_and_producers(model)
    tensors = dict(model.tensors)
    renamed: Dict[str, str] = {}  # a Linear's output -> the Mul's output it now writes
    removed = set()
    for node, orders in _two_input_nodes(model, "Mul"):
        for product, factor in orders:
            linear = producers.get(product)
            scale = tensors.get(factor)
            if (linear is None or linear.op != "Linear" or len(linear.inputs) != 3 or linear.attrs.get("activation")
                    or consumers[product] != 1 or not isinstance(scale, np.ndarray) or scale.size != 1
                    or scale.dtype != np.float32 or not _power_of_two(float(scale.reshape(-1)[0]))):
                continue
            weight, bias = (tensors.get(name) for name in linear.inputs[1:])
            if not all(isinstance(t, np.ndarray) and t.dtype == np.float32 and consumers[name] == 1
                       for t, name in zip((weight, bias), linear.inputs[1:])):
                continue
            tensors[linear.inputs[1]], tensors[linear.inputs[2]] = weight * scale.reshape(()), bias * scale.reshape(())
            renamed[product] = node.outputs[0]
            removed.add(node.name)
            break
    if not removed:
        return model
    nodes = [_renamed(n, renamed) for n in model.graph.nodes if n.name not in removed]
    return _with_nodes(Imported(model.graph, tensors, model.shapes, model.dtypes, model.metadata), nodes)


def _power_of_two(value: float) -> bool:
    mantissa, _ = np.frexp(value)
    return np.isfinite(value) and mantissa == 0.5


def fuse_linear_residuals(model: Imported) -> Imported:
    """Add(Linear(A, W, C) read only there, a computed value Z) becomes Linear(A, W, C, Z) at the Add's place (Z
    exists there, A before): a transformer block's residual connections after its attention output and its
    feed-forward blocks, added while the product is in cache (tinyasr/ops/nn.py; broadcasting as the Add did)."""
    consumers, producers = _readers_and_producers(model)
    fused: Dict[str, Node] = {}  # the Add's name -> the Linear with its residual
    removed = set()
    for node, orders in _two_input_nodes(model, "Add"):
        for product, residual in orders:
            linear = producers.get(product)
            if (linear is None or linear.op != "Linear" or len(linear.inputs) != 3 or consumers[product] != 1
                    or linear.name in removed or residual in model.tensors or residual == product):
                continue
            fused[node.name] = replace(linear, inputs=tuple(linear.inputs) + (residual,), outputs=tuple(node.outputs))
            removed.add(linear.name)
            break
    return _with_fused(model, fused, removed)


# ---------------------------------------------------------------------------------------------------------------------
# Conv epilogue fusion


# ops that pass their first input's values through unchanged (only the shape or layout changes)
_VALUE_PRESERVING = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Expand", "Flatten", "Transpose", "Tile", "Identity"})
_BOOLEAN_OPS = frozenset({"Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "Not", "And", "Or", "Xor"})


def move_relu_before_masks(model: Imported) -> Imported:
    """Conv -> Mul(mask) -> Relu becomes Conv -> Relu -> Mul(mask) where the mask is provably >= 0, so the Relu
    fuses into the Conv (``fuse_conv_epilogues``) instead of taking its own pass.

    NeMo's masked conv subsampling (Conformer, FastConformer) zeroes the padding frames after every conv, before
    the ReLU; the mask is a cast of a comparison (0 or 1), and relu(a * m) == relu(a) * m for every m >= 0.  The
    Relu goes right after the Conv, and Shape nodes that read the Conv's output read the Relu's (same shape).
    conformer_ctc_small, 10 s: a separate ReLU over the first conv's 88 x 500 x 40 output took 0.85 ms."""
    consumers, producers = _readers_and_producers(model)
    shape_readers: Dict[str, List[str]] = {}
    for node in model.graph.nodes:
        if node.op == "Shape":
            shape_readers.setdefault(node.inputs[0], []).append(node.name)
    shapes = dict(model.shapes)
    after_conv: Dict[str, Node] = {}  # Conv name -> its new Relu
    rewritten: Dict[str, Node] = {}  # node name -> replacement (the Mul, the Shape readers); None: removed
    for node in model.graph.nodes:
        if node.op != "Relu" or len(node.inputs) != 1:
            continue
        mul = producers.get(node.inputs[0])
        if mul is None or mul.op != "Mul" or len(mul.inputs) != 2 or consumers[node.inputs[0]] != 1:
            continue
        for value, mask in (mul.inputs, mul.inputs[::-1]):
            conv = producers.get(value)
            readers = shape_readers.get(value, [])
            if (conv is not None and conv.op == "Conv" and consumers[value] == 1 + len(readers)
                    and not conv.attrs.get("activation") and _never_negative(mask, producers, model)):
                rectified = f"{node.name}::before_mask"
                if value in model.shapes:
                    shapes[rectified] = model.shapes[value]
                after_conv[conv.name] = Node(node.name, "Relu", (value,), (rectified,))
                rewritten[mul.name] = Node(mul.name, "Mul", (rectified, mask), tuple(node.outputs))
                rewritten[node.name] = None
                for reader in readers:
                    rewritten[reader] = None  # rebuilt below with the new input
                break
    if not after_conv:
        return model
    renamed = {relu.inputs[0]: relu.outputs[0] for relu in after_conv.values()}
    nodes = []
    for node in model.graph.nodes:
        if node.name in rewritten:
            replacement = rewritten[node.name]
            if replacement is None and node.op == "Shape":
                replacement = replace(node, inputs=(renamed[node.inputs[0]],) + tuple(node.inputs[1:]))
            if replacement is not None:
                nodes.append(replacement)
            continue
        nodes.append(node)
        if node.name in after_conv:
            nodes.append(after_conv[node.name])
    return _with_nodes(Imported(model.graph, model.tensors, shapes, model.dtypes, model.metadata), nodes)


def _never_negative(name: str, producers, model: Imported) -> bool:
    """True when the value ``name`` is >= 0 everywhere: stored without negatives, or a cast of a boolean, through
    ops that only reshape or copy it."""
    for _ in range(16):
        if name in model.tensors:
            values = np.asarray(model.tensors[name])
            return values.dtype != object and bool(np.all(values >= 0))
        node = producers.get(name)
        if node is None:
            return False
        if node.op == "Cast":
            source = producers.get(node.inputs[0])
            return model.dtypes.get(node.inputs[0]) == "bool" or (source is not None and source.op in _BOOLEAN_OPS)
        if node.op not in _VALUE_PRESERVING:
            return False
        name = node.inputs[0]
    return False


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
            if any(b and (b not in tensors or np.size(tensors[b]) != 1) for b in bounds):
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


# ops whose trailing outputs are optional: unread ones are dropped (a streamed LSTM has no final states to give)
OPTIONAL_TRAILING_OUTPUTS = frozenset({"LSTM", "GRU"})


def remove_dead(model: Imported) -> Imported:
    """Drop nodes whose outputs nobody reads, unread trailing optional outputs, and tensors no node reads."""
    needed = {v.name for v in model.graph.outputs}
    kept: List[Node] = []
    for node in reversed(model.graph.nodes):
        if needed.intersection(node.outputs):
            if node.op in OPTIONAL_TRAILING_OUTPUTS:
                count = max(i for i, name in enumerate(node.outputs) if name in needed) + 1
                node = replace(node, outputs=tuple(node.outputs[:count]))
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


def _two_input_nodes(model: Imported, op: str):
    """(node, its two inputs in both orders) for every two-input ``op`` node: the pattern a fusion looks for may
    sit on either side."""
    for node in model.graph.nodes:
        if node.op == op and len(node.inputs) == 2:
            yield node, (node.inputs, node.inputs[::-1])


def _readers_of(model: Imported) -> Dict[str, List[Node]]:
    """The nodes reading each value, in graph order."""
    readers: Dict[str, List[Node]] = {}
    for node in model.graph.nodes:
        for name in node.inputs:
            if name:
                readers.setdefault(name, []).append(node)
    return readers


def _only_reader(name: str, ops, readers, consumers, inputs: int = 1) -> Optional[Node]:
    """The node reading ``name`` when it alone reads it (no graph output either), its op one of ``ops`` and with
    ``inputs`` inputs: the next step of a pattern a fusion may take in."""
    node = readers.get(name, [None])[0]
    if consumers[name] != 1 or node is None or node.op not in ops or len(node.inputs) != inputs:
        return None
    return node


def _axes_of(node: Node, tensors) -> Optional[List[int]]:
    """A reduction's or Unsqueeze's axes: its ``axes`` attribute (older opsets) or its stored second input."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        axes = tensors.get(node.inputs[1])
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


def _readers_and_producers(model: Imported):
    """(how many inputs read each value, the node producing each value)."""
    return _consumer_counts(model), {o: n for n in model.graph.nodes for o in n.outputs}


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


def _with_fused(model: Imported, fused: Dict[str, Node], removed) -> Imported:
    """``model`` with each node named in ``fused`` replaced by its fused node and the ``removed`` nodes dropped;
    ``model`` unchanged when nothing fused."""
    if not fused:
        return model
    return _with_nodes(model, [fused.get(n.name, n) for n in model.graph.nodes if n.name not in removed])


def _with_nodes(model: Imported, nodes: List[Node]) -> Imported:
    graph = replace(model.graph, nodes=list(nodes))
    return Imported(graph, model.tensors, model.shapes, model.dtypes, model.metadata)
