"""torch.nn.Module -> ONNX (in memory) -> .tasr.

torch 2.13 defaults to the dynamo exporter; we ask for the TorchScript-based one
(`dynamo=False`), which still exists and gives a plain opset-17 graph with
`dynamic_axes`, exactly what NeMo's exporter produces (so one import path covers both).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

from tinyasr.errors import ConversionError
from tinyasr_convert.conversion import convert_model

OPSET = 17


def from_torch(
    module,
    example_inputs,
    out,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Optional[Mapping[str, Dict[int, str]]] = None,
    onnx_path=None,
    **options,
) -> Path:
    """Export `module` (in eval mode) with example inputs, convert, write `out`; returns its path.

    dynamic_axes defaults to a dynamic batch (axis 0) and time (last axis) on
    every input and output of rank >= 2 in the example.  `onnx_path`, if given,
    also keeps the exported ONNX (tests compare against onnxruntime on it).
    Other options go to tinyasr_convert.convert_model (labels, decoder, float16, ...).
    """
    import onnx
    import torch
    from tinyasr_convert.ternary import add_ternary_metadata

    if not isinstance(module, torch.nn.Module):
        raise ConversionError(f"from_torch needs a torch.nn.Module, got {type(module).__name__}")
    example_inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if dynamic_axes is None:
        dynamic_axes = _default_dynamic_axes(module, example_inputs, input_names, output_names)
    was_training = module.training
    module.eval()
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice for the TorchScript exporter
            torch.onnx.export(
                module, example_inputs, buffer, dynamo=False, opset_version=OPSET, do_constant_folding=True,
                input_names=list(input_names), output_names=list(output_names), dynamic_axes=dict(dynamic_axes),
            )
    except Exception as exc:  # torch raises many types; the user needs the module and the reason
        raise ConversionError(f"torch.onnx.export of {type(module).__name__} failed: {exc}") from exc
    finally:
        module.train(was_training)
    model = onnx.load_from_string(buffer.getvalue())
    add_ternary_metadata(model, module)  # seeds of TernaryPointwiseConv1d layers, so they are stored as seeds
    if onnx_path is not None:
        onnx.save(model, str(onnx_path))
    options.setdefault("source_format", "torch")
    options.setdefault("source_name", type(module).__name__)
    return convert_model(model, out, **options).path


def _default_dynamic_axes(module, example_inputs, input_names, output_names) -> Dict[str, Dict[int, str]]:
    """Axis 0 (batch) of every tensor is dynamic; so is the last axis of every input of rank >= 2 (time), and every
    output axis whose size changes when that input time axis grows (found by two forward passes)."""
    import torch

    longer = tuple(
        torch.cat([t, t[..., : min(16, t.shape[-1])]], dim=-1) if isinstance(t, torch.Tensor) and t.dim() >= 2 else t
        for t in example_inputs
    )
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            outputs = [_as_tuple(module(*args)) for args in (example_inputs, longer)]
    except Exception as exc:  # the module's own error, whatever its type
        raise ConversionError(
            f"{type(module).__name__}: probing for dynamic axes (inputs' last axis = time) failed ({exc}); "
            "pass dynamic_axes explicitly"
        ) from exc
    finally:
        module.train(was_training)
    axes: Dict[str, Dict[int, str]] = {}
    for name, t in zip(input_names, example_inputs):
        if isinstance(t, torch.Tensor) and t.dim() >= 1:
            axes[name] = {0: "batch", **({t.dim() - 1: f"{name}_time"} if t.dim() >= 2 else {})}
    for name, a, b in zip(output_names, *outputs):
        if isinstance(a, torch.Tensor) and a.dim() >= 1:
            axes[name] = {0: "batch", **{i: f"{name}_time{i}" for i in range(1, a.dim()) if a.shape[i] != b.shape[i]}}
    return axes


def _as_tuple(outputs):
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
