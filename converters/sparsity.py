"""Magnitude pruning: make the weights that the sparse kernels run (tinyasr/kernels/sparse.py) sparse.

Two entry points share one plan and one mask function:

* ``prune(module, sparsity, ...) -> masks`` for a torch model: zeroes the weights now and returns the
  masks; call ``apply_masks(module, masks)`` after every optimizer step while fine-tuning so pruned
  weights stay zero (``sparsity_schedule`` ramps the sparsity up over training, Zhu & Gupta 2017).
* ``prune_onnx(model, sparsity, ...)`` prunes the initializers of an ONNX model directly (no training).
* ``prune_recurrent(r, sparsity, block)`` prunes one LSTM / GRU recurrent weight R (converters/sparse_choice.py
  stores it csr or as 8 x 1 blocks, which kernels/recurrent.py runs one frame at a time).

Which layers: weights of dense 1x1 convs (group 1, kernel 1) and of Gemm / Linear / MatMul, the layers
with a sparse kernel.  The first and the last of those layers (the input projection and the output
layer, the most sensitive) stay dense by default.  With ``depthwise=True`` the depthwise convs (one
input channel per group, kernel > 1) are pruned too, unstructured: they stay stored dense (they are
small), but the depthwise kernel skips zero taps, so in a QuartzNet, where they are 10-15 % of the
multiply-adds, their share of the time no longer caps the speed-up.  ``overrides`` maps layer names or
fnmatch patterns to their own sparsity (0 keeps one dense).

Blocks: ``block=4`` or ``8`` prunes whole blocks of 4 / 8 consecutive output channels x 1 input column
(scored by their L2 norm), the pattern the BSR kernel runs about twice as fast as unstructured.
torch is imported only inside the torch functions; onnx only inside prune_onnx.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tinyasr.errors import ConversionError

BLOCKS = (1, 4, 8)


def magnitude_mask(matrix: np.ndarray, sparsity: float, block: int = 1) -> np.ndarray:
    """Boolean keep-mask of a [rows, columns] matrix with ``round(sparsity * n)`` of its n blocks pruned.

    Blocks are ``block`` consecutive rows x 1 column (1: single weights), scored by L2 norm; the smallest
    go (ties broken by position, so the count is exact).  Rows must be a multiple of ``block``.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ConversionError(f"magnitude_mask needs a 2-D matrix, got shape {matrix.shape}")
    if not 0.0 <= sparsity <= 1.0:
        raise ConversionError(f"sparsity must be in [0, 1], got {sparsity}")
    if block not in BLOCKS:
        raise ConversionError(f"block must be one of {BLOCKS}, got {block}")
    rows, columns = matrix.shape
    if rows % block:
        raise ConversionError(f"{rows} output channels are not a multiple of the block of {block}")
    scores = np.square(matrix.astype(np.float64)).reshape(rows // block, block, columns).sum(axis=1).ravel()
    pruned = int(round(sparsity * scores.size))
    keep = np.ones(scores.size, bool)
    keep[np.argsort(scores, kind="stable")[:pruned]] = False
    return np.repeat(keep.reshape(rows // block, 1, columns), block, axis=1).reshape(rows, columns)


def prune_recurrent(r: np.ndarray, sparsity: float, block: int = 1) -> np.ndarray:
    """A copy of a recurrent weight R (ONNX [directions, G*H, P], or a prediction network's [G*H, P]) with
    ``sparsity`` of each direction's weights zeroed by magnitude: single weights (``block`` 1: stored csr) or
    blocks of 8 consecutive gate rows x 1 column (``block`` 8: the column-blocked form the recurrent kernel runs
    fastest).  Gates are pruned together, so a direction's smallest weights go whichever gate holds them."""
    r = np.asarray(r, np.float32)
    if r.ndim not in (2, 3):
        raise ConversionError(f"prune_recurrent needs R of rank 2 or 3, got shape {r.shape}")
    if block not in (1, 8):
        raise ConversionError(f"recurrent weights are pruned unstructured (block 1) or in 8 x 1 blocks, got {block}")
    directions = r if r.ndim == 3 else r[None]
    pruned = np.stack([d * magnitude_mask(d, sparsity, block) for d in directions])
    return pruned if r.ndim == 3 else pruned[0]


@dataclass(frozen=True)
class LayerPlan:
    """One prunable weight: its name, sparsity and whether it is stored [in, out] (MatMul B) rather than [out, in]."""

    name: str
    sparsity: float
    transposed: bool = False


def plan(names: Sequence[str], sparsity: float, overrides: Optional[Mapping[str, float]] = None,
         keep_first: bool = True, keep_last: bool = True, depthwise: Sequence[str] = ()) -> Dict[str, float]:
    """The sparsity of each prunable layer: ``names`` the matrix layers in graph / module order, then the
    ``depthwise`` layers.  Overrides win (exact names, then the first matching pattern); the first and last
    matrix layers get 0 when kept dense; the rest ``sparsity``."""
    overrides = dict(overrides or {})
    every = list(names) + list(depthwise)
    unused = [k for k in overrides if k not in every and not fnmatch.filter(every, k)]
    if unused:
        raise ConversionError(f"sparsity overrides {unused} match no prunable layer; prunable: {every}")
    result = {}
    for i, name in enumerate(every):
        edge = i < len(names) and ((keep_first and i == 0) or (keep_last and i == len(names) - 1))
        level = 0.0 if edge else sparsity
        if name in overrides:
            level = overrides[name]
        else:
            level = next((v for k, v in overrides.items() if fnmatch.fnmatchcase(name, k)), level)
        result[name] = float(level)
    return result


def sparsity_schedule(step: int, total_steps: int, final: float, initial: float = 0.0, start: int = 0) -> float:
    """Gradual pruning (Zhu & Gupta 2017): ``final + (initial - final) * (1 - progress)**3``, progress in [0, 1]."""
    progress = min(max((step - start) / max(total_steps - start, 1), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


# --------------------------------------------------------------------------- torch


def prunable_modules(module) -> List[Tuple[str, object]]:
    """(parameter name, module) of every nn.Conv1d with groups 1 and kernel 1, and every nn.Linear, in order."""
    from torch import nn

    found = []
    for name, m in module.named_modules():
        if (isinstance(m, nn.Conv1d) and m.groups == 1 and m.kernel_size == (1,)) or isinstance(m, nn.Linear):
            found.append((f"{name}.weight" if name else "weight", m))
    return found


def depthwise_modules(module) -> List[Tuple[str, object]]:
    """(parameter name, module) of every nn.Conv1d with one input channel per group and a kernel over 1."""
    from torch import nn

    return [(f"{name}.weight" if name else "weight", m) for name, m in module.named_modules()
            if isinstance(m, nn.Conv1d) and m.groups > 1 and m.groups == m.in_channels and m.kernel_size[0] > 1]


def prune(module, sparsity: float, block: int = 1, overrides: Optional[Mapping[str, float]] = None,
          keep_first: bool = True, keep_last: bool = True, depthwise: bool = False) -> Dict[str, "object"]:
    """Zero the smallest weights of each prunable layer of a torch module; return {parameter name: bool mask}.

    Call again with a higher sparsity (``sparsity_schedule``) to prune gradually; masks only shrink if the
    pruned weights stayed zero (apply_masks after each optimizer step).
    """
    import torch

    modules = dict(prunable_modules(module))
    depthwise_layers = dict(depthwise_modules(module)) if depthwise else {}
    levels = plan(list(modules), sparsity, overrides, keep_first, keep_last, list(depthwise_layers))
    modules.update(depthwise_layers)
    masks = {}
    with torch.no_grad():
        for name, level in levels.items():
            weight = modules[name].weight
            matrix = weight.detach().cpu().numpy().reshape(weight.shape[0], -1)
            keep = magnitude_mask(matrix, level, _block_for(matrix, block, name in depthwise_layers))
            masks[name] = torch.from_numpy(keep.reshape(tuple(weight.shape))).to(weight.device)
            weight.mul_(masks[name])
    return masks


def _block_for(matrix: np.ndarray, block: int, depthwise: bool) -> int:
    """Blocks run across output channels of a matrix layer; a depthwise layer's taps are pruned one by one."""
    return 1 if depthwise or matrix.shape[0] % block else block


def apply_masks(module, masks: Mapping[str, "object"]) -> None:
    """Zero the pruned weights again (call after each optimizer step while fine-tuning)."""
    import torch

    parameters = dict(module.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            parameters[name].mul_(mask)


# --------------------------------------------------------------------------- onnx


def onnx_prunable(model) -> List[LayerPlan]:
    """Initializer weights of pointwise group-1 Conv, Gemm and MatMul nodes, in node order (sparsity unset)."""
    from onnx import helper

    initializers = {t.name: t for t in model.graph.initializer}
    found: List[LayerPlan] = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = node.input[1] if len(node.input) > 1 else ""
        if weight not in initializers or any(p.name == weight for p in found):
            continue
        dims = list(initializers[weight].dims)
        if node.op_type == "Conv" and attrs.get("group", 1) == 1 and dims[2:] == [1]:
            found.append(LayerPlan(weight, 0.0))
        elif node.op_type == "Gemm" and len(dims) == 2:
            found.append(LayerPlan(weight, 0.0, transposed=not attrs.get("transB", 0)))
        elif node.op_type == "MatMul" and len(dims) == 2:
            found.append(LayerPlan(weight, 0.0, transposed=True))
    return found


def onnx_depthwise(model) -> List[LayerPlan]:
    """Initializer weights of depthwise Conv nodes (one input channel per group, kernel > 1), in node order."""
    from onnx import helper

    initializers = {t.name: t for t in model.graph.initializer}
    found: List[LayerPlan] = []
    for node in model.graph.node:
        weight = node.input[1] if node.op_type == "Conv" and len(node.input) > 1 else ""
        if weight not in initializers or any(p.name == weight for p in found):
            continue
        group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        dims = list(initializers[weight].dims)
        if group > 1 and len(dims) == 3 and dims[1] == 1 and dims[2] > 1:
            found.append(LayerPlan(weight, 0.0))
    return found


# Node-name patterns of the FFN and attention projections (q, k, v, out and the rel-pos linear) in NeMo's
# Conformer / FastConformer ONNX exports: the linears the time-major sparse kernel runs.
NEMO_CONFORMER_LINEARS = ("*/feed_forward*/linear*", "*/self_attn/linear_*")


def onnx_weights_of_nodes(model, node_pattern: str) -> List[str]:
    """Names of the prunable weights (onnx_prunable) read by nodes whose name matches the fnmatch ``node_pattern``,
    for ``overrides``: exporters often name MatMul weights ``onnx::MatMul_<n>``, so a NeMo Conformer's FFN and
    attention linears are found by their nodes ('*/feed_forward*', '*/self_attn/linear_*')."""
    prunable = {layer.name for layer in onnx_prunable(model)}
    names: List[str] = []
    for node in model.graph.node:
        weight = node.input[1] if len(node.input) > 1 else ""
        if weight in prunable and weight not in names and fnmatch.fnmatchcase(node.name, node_pattern):
            names.append(weight)
    return names


def prune_onnx(model, sparsity: float, block: int = 1, overrides: Optional[Mapping[str, float]] = None,
               keep_first: bool = True, keep_last: bool = True, depthwise: bool = False):
    """Prune an onnx.ModelProto (or a path to one) in place by weight magnitude; returns (model, {weight: sparsity})."""
    import onnx
    from onnx import numpy_helper

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    layers = onnx_prunable(model)
    depthwise_layers = onnx_depthwise(model) if depthwise else []
    levels = plan([layer.name for layer in layers], sparsity, overrides, keep_first, keep_last,
                  [layer.name for layer in depthwise_layers])
    depthwise_names = {layer.name for layer in depthwise_layers}
    initializers = {t.name: t for t in model.graph.initializer}
    for layer in layers + depthwise_layers:
        weight = numpy_helper.to_array(initializers[layer.name])
        matrix = weight.T if layer.transposed else weight.reshape(weight.shape[0], -1)
        keep = magnitude_mask(matrix, levels[layer.name], _block_for(matrix, block, layer.name in depthwise_names))
        pruned = (matrix * keep).astype(weight.dtype)
        pruned = pruned.T if layer.transposed else pruned.reshape(weight.shape)
        initializers[layer.name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(pruned), layer.name))
    return model, levels
