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

    graph, tensors, removed = compact(graph, tensors)        # removed: {conv node name: channels dropped}
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from tinyasr.format.graph import Graph, Node
from tinyasr.kernels.epilogue import activate_reference

Plan = Dict[str, Any]  # what to change: {"rows": {node: channels}, "columns": {node: (channels, constants)}}


def compact(graph: Graph, tensors: Mapping[str, Any]) -> Tuple[Graph, Dict[str, Any], Dict[str, int]]:
    """Remove all-zero output channels of Conv nodes (see the module docstring); returns (graph, tensors, removed)."""
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
