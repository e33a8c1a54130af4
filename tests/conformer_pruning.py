"""Structured pruning by zeroing weights, as an L0-pruned NeMo Conformer arrives (Jiang et al. 2023: heads, FFN
units, whole modules), applied alike to a ``.nemo`` state dict and to the model's NeMo ONNX export, so that
onnxruntime on the pruned export is a reference for tinyasr's compacted conversion of the pruned archive.

A pruning is a list of ``Zero(path, part, indices)``: ``path`` a module under ``encoder.`` as NeMo names it
("layers.3.self_attn.linear_v", "layers.0.conv.pointwise_conv2"), ``part`` what is zeroed in it:
"rows" (output units), "columns" (input units), "bias" or "taps" (a depthwise conv's channel rows).
Used by tests/test_conformer_compaction.py and benchmarks/bench_conformer.py --pruned.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Callable, List, NamedTuple, Sequence

WEIGHTS_MEMBER = "model_weights.ckpt"


class Zero(NamedTuple):
    path: str
    part: str  # "rows" | "columns" | "bias" | "taps"
    indices: Sequence[int]


def prune_state(state, zeros: Sequence[Zero]) -> None:
    """Zero the parts in a state dict (numpy arrays or torch tensors), in place."""
    for path, part, indices in zeros:
        key = f"encoder.{path}.{'bias' if part == 'bias' else 'weight'}"
        index = list(indices)
        if part == "columns":
            state[key][:, index] = 0
        else:
            state[key][index] = 0


def prune_onnx(model, zeros: Sequence[Zero]) -> None:
    """Zero the same parts in a NeMo ONNX export, in place.  Biases and pointwise convs keep their state-dict names
    there; a Linear is a MatMul node ``/layers.3/self_attn/linear_v/MatMul`` on the transposed weight, a depthwise
    conv a Conv node ``/layers.2/conv/depthwise_conv/Conv`` on its BatchNorm-folded weight (zeroed taps stay 0)."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    for path, part, indices in zeros:
        key, transposed = f"encoder.{path}.{'bias' if part == 'bias' else 'weight'}", False
        if key not in initializers:
            scope = "/" + path.replace(".", "/").replace("layers/", "layers.", 1)  # /layers.3/self_attn/linear_v
            node = nodes.get(f"{scope}/MatMul") or nodes[f"{scope}/Conv"]
            key, transposed = node.input[1], node.op_type == "MatMul"
        value = numpy_helper.to_array(initializers[key]).copy()
        index = list(indices)
        if (part == "columns") != transposed:  # a column of the torch weight is a row of its transpose
            value[:, index] = 0
        else:
            value[index] = 0
        initializers[key].CopyFrom(numpy_helper.from_array(value, key))


def pruned_nemo(source: Path, out: Path, zeros: Sequence[Zero]) -> Path:
    """A copy of the .nemo archive ``source`` with the parts zeroed in its checkpoint (needs torch to write it)."""
    return rewritten_nemo(source, out, lambda state: prune_state(state, zeros))


def rewritten_nemo(source: Path, out: Path, change: Callable[[dict], None]) -> Path:
    """A copy of the .nemo archive ``source`` whose state dict (torch tensors) ``change`` edited in place."""
    import torch

    with tarfile.open(source) as tar_in, tarfile.open(out, "w") as tar_out:
        for member in tar_in.getmembers():
            data = tar_in.extractfile(member).read() if member.isfile() else None
            if member.name.endswith(WEIGHTS_MEMBER):
                state = torch.load(io.BytesIO(data), weights_only=True)
                change(state)
                buffer = io.BytesIO()
                torch.save(state, buffer)
                data = buffer.getvalue()
                member.size = len(data)
            tar_out.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


def head_columns(heads: Sequence[int], d_k: int) -> List[int]:
    return [h * d_k + j for h in heads for j in range(d_k)]


def half_pruned(layers: int, d_model: int, heads: int, ff_units: int, skipped: Sequence[str]) -> List[Zero]:
    """The speed target's pruning: in every layer the even heads silenced (their linear_out columns zeroed) and the
    odd FFN units (linear2 columns), and the modules in ``skipped`` ("layers.0.feed_forward1", "layers.15.conv",
    "layers.7.self_attn") silenced whole, output bias included."""
    d_k, zeros = d_model // heads, []
    outputs = {"feed_forward1": "feed_forward1.linear2", "feed_forward2": "feed_forward2.linear2",
               "self_attn": "self_attn.linear_out", "conv": "conv.pointwise_conv2"}
    for i in range(layers):
        zeros.append(Zero(f"layers.{i}.self_attn.linear_out", "columns", head_columns(range(0, heads, 2), d_k)))
        for ffn in ("feed_forward1", "feed_forward2"):
            zeros.append(Zero(f"layers.{i}.{ffn}.linear2", "columns", range(1, ff_units, 2)))
    for module in skipped:
        layer, name = module.rsplit(".", 1)
        width = ff_units if name.startswith("feed_forward") else d_model
        zeros += [Zero(f"{layer}.{outputs[name]}", "columns", range(width)),
                  Zero(f"{layer}.{outputs[name]}", "bias", range(d_model))]
    return zeros

