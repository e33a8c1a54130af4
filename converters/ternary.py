"""Ternary 1x1 convolutions on the training and conversion side (needs torch for the module, onnx for export).

* ``TernaryPointwiseConv1d``: a torch 1x1 conv whose weight is a constant random ternary pattern
  (tinyasr.format.encodings.ternary's generator, so training and runtime use the same matrix bit for bit) times a
  trainable per-channel scale.  The pattern is a buffer built by the numpy reference at module init
  (simplest correct choice: torch has no uint64, so no wrap-around emulation to get wrong) and is
  not saved in the state_dict: the module's (seed, layer_id, density) regenerate it.
* ``add_ternary_metadata(onnx_model, module)``: records every ternary layer's generator parameters
  in the ONNX ``metadata_props`` (key ``tinyasr.ternary``), since the exported Conv carries only
  the product pattern * scale.
* ``rewrite_ternary(imported)``: the converter pass.  A 1x1 Conv whose weight is exactly a ternary
  pattern times a per-channel scale becomes ``ternary_seed`` (generator parameters only) when a
  recorded layer regenerates that pattern, else ``ternary_index`` (packed +1 / -1 lists) when that
  is smaller than the dense weight.  ``detect_ternary`` is the exactness test.
"""

from __future__ import annotations

import json
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
from tinyasr_convert.onnx_import import Imported

from tinyasr.errors import ConversionError
from tinyasr.format.encodings.ternary import (
    block_width,
    check_layer,
    index_tensor,
    is_plain_pointwise,
    seed_tensor,
    ternary_matrix,
)

METADATA_KEY = "tinyasr.ternary"


# --------------------------------------------------------------------------- torch module


def _torch_module():
    import torch
    from torch import nn

    class TernaryPointwiseConv1d(nn.Module):
        """1x1 Conv1d with weight ``pattern * scale[:, None]``: pattern fixed (regenerated), scale trained.

        ``scale=False`` keeps the pattern unscaled (a following BatchNorm then carries the scale).
        The initial scale 1/sqrt(non-zeros per row) keeps the output variance near the input's.
        """

        def __init__(self, in_channels: int, out_channels: int, density: float = 1 / 3, seed: int = 0,
                     layer_id: int = 0, scale: bool = True):
            super().__init__()
            try:
                check_layer(seed, layer_id, out_channels, in_channels, density)
            except ValueError as exc:
                raise ConversionError(f"TernaryPointwiseConv1d({in_channels}, {out_channels}): {exc}") from None
            self.in_channels, self.out_channels = in_channels, out_channels
            self.density, self.seed, self.layer_id = float(density), int(seed), int(layer_id)
            pattern = ternary_matrix(seed, layer_id, out_channels, in_channels, density)
            self.register_buffer("pattern", torch.from_numpy(pattern.astype(np.float32))[:, :, None],
                                 persistent=False)
            nonzero_per_row = -(-in_channels // block_width(density))
            self.scale = (nn.Parameter(torch.full((out_channels,), 1.0 / math.sqrt(nonzero_per_row)))
                          if scale else None)

        def weight(self):
            return self.pattern if self.scale is None else self.pattern * self.scale[:, None, None]

        def forward(self, x):
            return torch.nn.functional.conv1d(x, self.weight())

        def generator_params(self) -> Dict[str, object]:
            return {"seed": self.seed, "layer_id": self.layer_id, "density": self.density,
                    "out_channels": self.out_channels, "in_channels": self.in_channels}

        def extra_repr(self) -> str:
            return (f"{self.in_channels}, {self.out_channels}, density={self.density:.4g}, seed={self.seed}, "
                    f"layer_id={self.layer_id}, scale={self.scale is not None}")

    return TernaryPointwiseConv1d


def _module_class():
    """The torch module class, built once on first use (importing this module does not import torch)."""
    if "TernaryPointwiseConv1d" not in globals():
        globals()["TernaryPointwiseConv1d"] = _torch_module()
    return globals()["TernaryPointwiseConv1d"]


def __getattr__(name):
    if name == "TernaryPointwiseConv1d":
        return _module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ternary_layers(module) -> List[Dict[str, object]]:
    """Generator parameters of every TernaryPointwiseConv1d inside a torch module, in module order."""
    return [m.generator_params() for m in module.modules() if isinstance(m, _module_class())]


def add_ternary_metadata(onnx_model, module) -> None:
    """Record the module's ternary layers in onnx_model.metadata_props[METADATA_KEY] (JSON list)."""
    layers = ternary_layers(module)
    for prop in list(onnx_model.metadata_props):
        if prop.key == METADATA_KEY:
            onnx_model.metadata_props.remove(prop)
    if layers:
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(layers)


# --------------------------------------------------------------------------- detection and the pass


def detect_ternary(weight: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(pattern int8 [out, in], scales float32 [out] >= 0) if ``weight`` [out, in(, 1)] is exactly
    pattern * scales[:, None] with pattern in {-1, 0, +1}; else None.  An all-zero row gets scale 0."""
    w = np.asarray(weight)
    if w.dtype != np.float32 or w.ndim not in (2, 3) or (w.ndim == 3 and w.shape[2] != 1) or w.size == 0:
        return None
    w = w.reshape(w.shape[0], w.shape[1])
    magnitude = np.abs(w)
    scales = magnitude.max(axis=1)
    if not np.all(np.isfinite(scales)) or np.any((magnitude != 0) & (magnitude != scales[:, None])):
        return None
    return np.sign(w).astype(np.int8), scales.astype(np.float32)


def _scales_for_pattern(weight: np.ndarray, pattern: np.ndarray) -> Optional[np.ndarray]:
    """Per-row s with weight == pattern * s exactly (s may be negative, e.g. a folded BN with gamma < 0)."""
    w = weight.reshape(pattern.shape)
    first = np.argmax(pattern != 0, axis=1)
    rows = np.arange(pattern.shape[0])
    scales = w[rows, first] * pattern[rows, first]
    if np.array_equal(w, pattern * scales[:, None]):  # float32 * {-1, 0, 1} is exact
        return scales.astype(np.float32)
    return None


def _declared_layers(metadata: Dict[str, str]) -> List[Dict[str, object]]:
    if METADATA_KEY not in metadata:
        return []
    try:
        layers = json.loads(metadata[METADATA_KEY])
        for layer in layers:
            check_layer(layer["seed"], layer["layer_id"], layer["out_channels"], layer["in_channels"],
                        layer["density"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConversionError(f"model metadata {METADATA_KEY!r} is malformed: {exc}") from None
    return layers


def encode_ternary(weight: np.ndarray, layers: List[Dict[str, object]]):
    """The compact EncodedTensor for a 1x1 Conv weight [out, in, 1], or None if it is not ternary x scale
    or a dense float32 weight would be smaller."""
    if not (isinstance(weight, np.ndarray) and weight.dtype == np.float32 and weight.ndim == 3
            and weight.shape[2] == 1 and weight.shape[1] <= 65535):
        return None
    out_channels, in_channels, _ = weight.shape
    for layer in layers:
        if (layer["out_channels"], layer["in_channels"]) != (out_channels, in_channels):
            continue
        pattern = ternary_matrix(layer["seed"], layer["layer_id"], out_channels, in_channels, layer["density"])
        scales = _scales_for_pattern(weight, pattern)
        if scales is not None:
            return seed_tensor(layer["seed"], layer["layer_id"], out_channels, in_channels, layer["density"], scales)
    found = detect_ternary(weight)
    if found is None:
        return None
    encoded = index_tensor(*found)
    return encoded if sum(p.nbytes for p in encoded.parts.values()) < weight.nbytes else None


def rewrite_ternary(model: Imported) -> Imported:
    """Store every ternary 1x1 Conv weight compactly (run after BatchNorm folding, when weights are final)."""
    layers = _declared_layers(model.metadata)
    uses: Dict[str, int] = {}
    for node in model.graph.nodes:
        for name in node.inputs:
            uses[name] = uses.get(name, 0) + 1
    tensors = dict(model.tensors)
    for node in model.graph.nodes:
        name = node.inputs[1] if node.op == "Conv" and len(node.inputs) > 1 else ""
        if name in tensors and uses[name] == 1 and is_plain_pointwise(node.attrs):
            encoded = encode_ternary(tensors[name], layers)
            if encoded is not None:
                tensors[name] = encoded
    return Imported(model.graph, tensors, model.shapes, model.dtypes, model.metadata)
