"""Structured compaction: drop Conv output channels whose weights are all zero, and the matching inputs downstream.

A Conv output channel c with an all-zero weight row is not zero: it is ``act(bias[c] + Z[c])`` (the fused
BatchNorm bias, the fused residual Z).  Without a residual that is a constant k_c over time, so the channel
can go if every reader of the output can absorb the constant exactly:

* a group-1 Conv reading it as input X drops weight column c and adds ``k_c * sum_k V[:, c, k]`` to its bias
  (exact when it has no padding; with padding only when k_c == 0, since padded frames see 0, not k_c);
* a depthwise Conv (group = channels) drops its channel c too; fed zeros (k_c == 0, or no padding with
  k_c * sum of taps folded in) its channel c is again a constant, act(bias + ...), passed on to its readers.

With a fused residual, channel c is constant only if the residual branch's channel c is constant too: the
residual must come from a Conv read by nothing else whose weight row c is also zero (both branches agree);
then both lose channel c.  Anything else reading the output (graph outputs, other ops, a residual input Z)
keeps every channel.  Outputs are unchanged up to float32 rounding of the folded biases.

Feed-forward blocks (x @ W1 (+ b1) -> Swish / Relu -> @ W2 (+ b2), MatMul nodes) lose their zero hidden units by
the same rule (next section).

    graph, tensors, removed = compact(graph, tensors)   # removed: {Conv or first MatMul node: channels / units}

Conformer blocks (the section at the end) are compacted on their weights instead, before the graph is built from
a NeMo config (nemo_blocks.py, where the structure is known): attention heads, FFN hidden units and conv-module
channels (GLU pairs) by the same rule, a module with nothing left reduced to its constant output.  What gets
removed and what stays is described for users in docs/pruned-conformers.md.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from tinyasr.format.graph import Graph, Node
from tinyasr.kernels.epilogue import activate_reference

Plan = Dict[str, Any]  # what to change: {"rows": {node: channels}, "columns": {node: (channels, constants)}}


def compact(graph: Graph, tensors: Mapping[str, Any]) -> Tuple[Graph, Dict[str, Any], Dict[str, int]]:
    """Remove all-zero output channels of Conv nodes and zero hidden units of feed-forward MatMul blocks (see the
    module docstring); returns (graph, tensors, removed)."""
    nodes, tensors, removed = list(graph.nodes), dict(tensors), Counter()
    changed = True
    while changed:
        changed = False
        for node in list(nodes):
            plan = _removal_plan(node, nodes, tensors, graph)
            if plan:
                nodes = _apply(plan, nodes, tensors)
                for name, channels in plan["rows"].items():
                    removed[name] += len(channels)
                changed = True
                break
    for node in list(nodes):  # one pass: dropping units creates no new zero ones
        chain = _feed_forward_chain(node, nodes, tensors, graph)
        if chain is not None:
            nodes, dropped = _drop_hidden_units(chain, nodes, tensors)
            if dropped:
                removed[node.name] += dropped
    return Graph(graph.inputs, graph.outputs, nodes), tensors, dict(removed)


# --------------------------------------------------------------------------- planning


def _stored(node: Node, index: int, tensors) -> Optional[np.ndarray]:
    name = node.inputs[index] if len(node.inputs) > index else ""
    value = tensors.get(name) if name else None
    return value if isinstance(value, np.ndarray) and value.dtype == np.float32 else None


def _input(node: Node, index: int) -> str:
    return node.inputs[index] if len(node.inputs) > index else ""


def _readers(value: str, nodes: List[Node]) -> List[Tuple[Node, int]]:
    return [(n, i) for n in nodes for i, x in enumerate(n.inputs) if x == value]


def _uses(name: str, nodes: List[Node]) -> int:
    return sum(x == name for n in nodes for x in n.inputs)


def _activate(values: np.ndarray, node: Node) -> np.ndarray:
    params = np.asarray(node.attrs.get("activation_params", ()), np.float32)
    return activate_reference(values.astype(np.float32), node.attrs.get("activation", ""), params).astype(np.float32)


def _own_weights(node: Node, nodes, tensors) -> bool:
    """A Conv with stored float32 weight (and bias) used by no other node, so they can be edited."""
    if node.op != "Conv" or _stored(node, 1, tensors) is None or tensors[node.inputs[1]].ndim != 3:
        return False
    if _input(node, 2) and (_stored(node, 2, tensors) is None or _uses(node.inputs[2], nodes) > 1):
        return False
    return _uses(node.inputs[1], nodes) == 1


def _bias(node: Node, tensors) -> np.ndarray:
    weight = tensors[node.inputs[1]]
    return tensors[node.inputs[2]] if _input(node, 2) else np.zeros(weight.shape[0], np.float32)


def _is_depthwise(node: Node, tensors) -> bool:
    weight = tensors[node.inputs[1]]
    return node.attrs.get("group", 1) == weight.shape[0] > 1 and weight.shape[1] == 1


def _removal_plan(node: Node, nodes: List[Node], tensors, graph: Graph) -> Optional[Plan]:
    """The edits that drop every removable all-zero output channel of a group-1 Conv, or None."""
    if not _own_weights(node, nodes, tensors) or node.attrs.get("group", 1) != 1:
        return None
    weight = tensors[node.inputs[1]]
    zero = np.flatnonzero(~weight.reshape(weight.shape[0], -1).any(axis=1))
    if zero.size == 0 or zero.size == weight.shape[0]:
        return None
    rows = {node.name: zero}
    summed = _bias(node, tensors)[zero].astype(np.float32)
    if _input(node, 3):  # fused residual: its producer must be a Conv with the same rows zero, read only here
        branch = next((n for n in nodes if node.inputs[3] in n.outputs), None)
        if (branch is None or not _own_weights(branch, nodes, tensors) or branch.attrs.get("group", 1) != 1
                or _input(branch, 3) or branch.attrs.get("activation") or len(_readers(branch.outputs[0], nodes)) != 1):
            return None
        branch_weight = tensors[branch.inputs[1]]
        if branch_weight.reshape(branch_weight.shape[0], -1)[zero].any():
            return None
        rows[branch.name] = zero
        summed = summed + _bias(branch, tensors)[zero]  # ((0 + bias) + (0 + branch bias)), as the kernel adds
    plan: Plan = {"rows": rows, "columns": {}}
    if not _absorb(node.outputs[0], zero, _activate(summed, node), nodes, tensors, graph, plan):
        return None
    return plan


def _absorb(value: str, channels, constants, nodes, tensors, graph: Graph, plan: Plan) -> bool:
    """Plan how every reader of ``value`` absorbs its constant channels; False if one cannot."""
    readers = _readers(value, nodes)
    if not readers or any(value == v.name for v in graph.outputs):
        return False
    for reader, index in readers:
        if index != 0 or not _own_weights(reader, nodes, tensors) or reader.name in plan["columns"]:
            return False
        padded = any(reader.attrs.get("pads", [0, 0]))
        if padded and constants.any():
            return False
        if reader.attrs.get("group", 1) == 1:
            plan["columns"][reader.name] = (channels, constants)
        elif _is_depthwise(reader, tensors) and not _input(reader, 3):
            taps = tensors[reader.inputs[1]][channels, 0, :].astype(np.float64).sum(axis=1)
            passed = (constants * taps + _bias(reader, tensors)[channels]).astype(np.float32)
            plan["rows"][reader.name] = channels
            plan["columns"][reader.name] = (channels, None)
            if not _absorb(reader.outputs[0], channels, _activate(passed, reader), nodes, tensors, graph, plan):
                return False
        else:
            return False
    return True


# --------------------------------------------------------------------------- applying


def _apply(plan: Plan, nodes: List[Node], tensors: Dict[str, Any]) -> List[Node]:
    """Edit weights and biases under new names (the old tensors may be shared with nothing, but stay intact)."""
    result = []
    for node in nodes:
        rows = plan["rows"].get(node.name)
        columns = plan["columns"].get(node.name)
        if rows is None and columns is None:
            result.append(node)
            continue
        weight, bias = tensors[node.inputs[1]], _bias(node, tensors).astype(np.float64)
        attrs = dict(node.attrs)
        if columns is not None and columns[1] is not None:  # a group-1 reader: fold the constants, drop columns
            channels, constants = columns
            bias = bias + weight[:, channels, :].astype(np.float64).sum(axis=2) @ constants.astype(np.float64)
            weight = np.delete(weight, channels, axis=1)
        if rows is not None:
            weight, bias = np.delete(weight, rows, axis=0), np.delete(bias, rows)
            if attrs.get("group", 1) > 1:
                attrs["group"] = weight.shape[0]
        for old in {node.inputs[1], _input(node, 2)} - {""}:
            if _uses(old, nodes) == 1:
                del tensors[old]
        w_name, b_name = _fresh(tensors, f"{node.name}::weight"), _fresh(tensors, f"{node.name}::bias")
        tensors[w_name], tensors[b_name] = np.ascontiguousarray(weight, np.float32), bias.astype(np.float32)
        inputs = (node.inputs[0], w_name, b_name) + tuple(node.inputs[3:])
        result.append(replace(node, inputs=inputs, attrs=attrs))
    return result


def _fresh(tensors, base: str) -> str:
    """``base``, or ``base.1``, ``base.2`` ...: a tensor name not yet taken."""
    name, i = base, 0
    while name in tensors:
        i += 1
        name = f"{base}.{i}"
    return name


# --------------------------------------------------------------------------- hidden units: the rule
#
# A unit (an FFN's hidden unit, an attention head, a conv-module channel) goes if the projection after it reads it
# with zero weights (silent), or if it is a constant on every frame (zero input weights): the constant times those
# weights is folded into the projection's bias.  A module with no unit left outputs that bias alone.


@dataclass(frozen=True)
class Kept:
    """What is left of one module: the indices kept (hidden units, heads or channels, ascending) and the output
    bias [n_out] with the constants of the removed ones folded in (float64).  No index left: the module's output
    is ``bias`` on every frame."""

    indices: np.ndarray
    bias: np.ndarray

    @property
    def skipped(self) -> bool:
        return self.indices.size == 0


def _folded(w_out: np.ndarray, b_out: np.ndarray, silent: np.ndarray, constant: np.ndarray,
            values: np.ndarray) -> Kept:
    """Keep what is neither silent (its output-projection column is zero) nor constant; fold the constants
    (``values`` for every unit, read where ``constant``) into the output bias."""
    constant = constant & ~silent
    bias = np.asarray(b_out, np.float64) + w_out[:, constant].astype(np.float64) @ values[constant].astype(np.float64)
    return Kept(np.flatnonzero(~(silent | constant)), bias)


def _swish(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) overflows for x << 0: x / inf = -0, which swish is there
        return x / (1.0 + np.exp(-np.asarray(x, np.float64)))


# --------------------------------------------------------------------------- MatMul hidden units
#
# A feed-forward block in an ONNX graph (a Conformer's macaron FFN, a transformer's): x @ W1 (+ b1) -> activation
# -> @ W2 (+ b2).  Hidden unit j goes if W2's row j is zero, or if W1's column j is zero (its activation is then
# the constant act(b1[j]), folded into b2).

FFN_ACTIVATIONS = ("Swish", "Relu")


@dataclass(frozen=True)
class _Chain:
    first: Node  # MatMul x @ W1 [n_in, H]
    bias: Optional[Tuple[Node, int]]  # Add of b1 [H], and which input is b1
    second: Node  # MatMul act(...) @ W2 [H, n_out]
    out_bias: Optional[Tuple[Node, int]]  # Add of b2 [n_out]
    activation: str


def _stored_matrix(node: Node, nodes, tensors) -> Optional[np.ndarray]:
    value = _stored(node, 1, tensors)
    return value if value is not None and value.ndim == 2 and _uses(node.inputs[1], nodes) == 1 else None


def _bias_add(value: str, width: int, nodes, tensors, graph: Graph) -> Optional[Tuple[Node, int]]:
    """The Add that is the only reader of ``value`` and adds a stored [width] vector used nowhere else."""
    readers = _readers(value, nodes)
    if len(readers) != 1 or readers[0][0].op != "Add" or any(value == v.name for v in graph.outputs):
        return None
    add, index = readers[0]
    other = 1 - index
    vector = _stored(add, other, tensors)
    if vector is None or vector.shape != (width,) or _uses(add.inputs[other], nodes) != 1:
        return None
    return add, other


def _only_reader(value: str, nodes, graph: Graph) -> Optional[Node]:
    readers = _readers(value, nodes)
    if len(readers) != 1 or readers[0][1] != 0 or any(value == v.name for v in graph.outputs):
        return None
    return readers[0][0]


def _feed_forward_chain(node: Node, nodes, tensors, graph: Graph) -> Optional[_Chain]:
    """The feed-forward block starting at MatMul ``node``, or None if it is not one whose weights can be edited."""
    if node.op != "MatMul" or _stored_matrix(node, nodes, tensors) is None:
        return None
    hidden = tensors[node.inputs[1]].shape[1]
    bias = _bias_add(node.outputs[0], hidden, nodes, tensors, graph)
    act = _only_reader((bias[0] if bias else node).outputs[0], nodes, graph)
    if act is None or act.op not in FFN_ACTIVATIONS or len(act.inputs) != 1:
        return None
    second = _only_reader(act.outputs[0], nodes, graph)
    if second is None or second.op != "MatMul" or _stored_matrix(second, nodes, tensors) is None:
        return None
    w2 = tensors[second.inputs[1]]
    if w2.shape[0] != hidden:
        return None
    return _Chain(node, bias, second, _bias_add(second.outputs[0], w2.shape[1], nodes, tensors, graph), act.op)


def _drop_hidden_units(chain: _Chain, nodes: List[Node], tensors: Dict[str, Any]) -> Tuple[List[Node], int]:
    """Remove the chain's removable hidden units; returns (nodes, how many).  A block with none left keeps one:
    skipping it would mean rewiring its readers, which the .nemo path (nemo_blocks.py) does instead."""
    w1, w2 = tensors[chain.first.inputs[1]], tensors[chain.second.inputs[1]]
    b1 = tensors[chain.bias[0].inputs[chain.bias[1]]] if chain.bias else np.zeros(w1.shape[1], np.float32)
    b2 = tensors[chain.out_bias[0].inputs[chain.out_bias[1]]] if chain.out_bias else np.zeros(w2.shape[1], np.float32)
    values = _swish(b1) if chain.activation == "Swish" else activate_reference(b1.astype(np.float64), chain.activation)
    constant = ~w1.any(axis=0)
    if chain.out_bias is None:  # nowhere to fold: only constants that are exactly 0 go
        constant &= values == 0
    silent = ~w2.any(axis=1)
    if (silent | constant).all():  # the graph keeps the block, so one unit (0) stays computed
        silent[0] = constant[0] = False
    kept = _folded(w2.T, b2, silent, constant, values)
    keep = kept.indices
    if keep.size == w1.shape[1]:
        return nodes, 0
    edits = {chain.first.name: (1, w1[:, keep]), chain.second.name: (1, w2[keep])}
    if chain.bias:
        edits[chain.bias[0].name] = (chain.bias[1], b1[keep])
    if chain.out_bias:
        edits[chain.out_bias[0].name] = (chain.out_bias[1], kept.bias)
    result = []
    for node in nodes:
        if node.name in edits:
            index, value = edits[node.name]
            old = node.inputs[index]
            del tensors[old]
            name = _fresh(tensors, f"{node.name}::compacted")
            tensors[name] = np.ascontiguousarray(value, np.float32)
            node = replace(node, inputs=node.inputs[:index] + (name,) + node.inputs[index + 1:])
        result.append(node)
    return result, int(w1.shape[1] - keep.size)


# --------------------------------------------------------------------------- Conformer blocks
#
# A Conformer built from its NeMo config (nemo_blocks.py) has a known structure, so what L0 structured pruning
# zeroed (Jiang et al. 2023: attention heads, FFN units, whole modules) is found on the weights themselves and
# removed before the graph is built; nemo_blocks.py skips a module with nothing left.


def feed_forward_units(w_in: np.ndarray, b_in: np.ndarray, w_out: np.ndarray, b_out: np.ndarray) -> Kept:
    """linear1 [units, d] -> Swish -> linear2 [d_out, units]: unit j goes if linear2's column j is zero, or if
    linear1's row j is zero (its output is then the constant swish(b_in[j]), folded)."""
    silent = ~w_out.any(axis=0)
    return _folded(w_out, b_out, silent, ~w_in.any(axis=1), _swish(b_in))


def attention_heads(w_v: np.ndarray, b_v: np.ndarray, w_out: np.ndarray, b_out: np.ndarray, heads: int) -> Kept:
    """Multi-head attention, values linear_v [d, d] and output linear_out [d_out, d], heads of d // heads rows:
    head h goes if linear_out's columns of h are zero, or if its value rows and value biases are zero (its
    values are 0, so is whatever the attention weights mix of them).  Zero query / key rows alone do not
    silence a head (the scores still vary with the keys and positions), so such a head stays."""
    d_k = w_v.shape[0] // heads
    silent = ~w_out.reshape(w_out.shape[0], heads, d_k).any(axis=(0, 2))
    no_values = ~w_v.reshape(heads, -1).any(axis=1) & ~b_v.reshape(heads, d_k).any(axis=1)
    return Kept(np.flatnonzero(~(silent | no_values)), np.asarray(b_out, np.float64))


def head_rows(heads: np.ndarray, d_k: int) -> np.ndarray:
    """The projection rows (or columns) of the given heads, d_k each."""
    return (np.asarray(heads)[:, None] * d_k + np.arange(d_k)).ravel()


def glu_channels(w_value: np.ndarray, b_value: np.ndarray, w_depthwise: np.ndarray, b_depthwise: np.ndarray,
                 w_out: np.ndarray, b_out: np.ndarray) -> Kept:
    """The conv module's channels: pointwise_conv1's value half [C, d] -> GLU -> depthwise [C, k] (BatchNorm
    folded) -> Swish -> pointwise_conv2 [d_out, C].  Channel c goes (both rows of its GLU pair) if pointwise_conv2's
    column c is zero, or if the depthwise conv sees only zeros (value row c and its bias zero) or has zero taps:
    its output is then the constant swish(b_depthwise[c]) on every frame, padded ones included, folded."""
    silent = ~w_out.any(axis=0)
    no_input = ~w_value.any(axis=1) & (b_value == 0)
    return _folded(w_out, b_out, silent, no_input | ~w_depthwise.any(axis=1), _swish(b_depthwise))
