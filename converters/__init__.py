"""Converters: ONNX files, torch modules and NeMo archives -> .tasr model files (the `convert` extra).

    from tinyasr_convert import convert, from_torch
    convert("model.onnx", "model.tasr", labels=[...], decoder="ctc")

ONNX: conversion.py; torch: torch_export.py (exports to ONNX, then converts); NeMo .nemo archives: nemo.py.
"""

from tinyasr_convert.conversion import DECODER_TYPES, Conversion, convert, convert_model
from tinyasr_convert.torch_export import from_torch

__all__ = ["convert", "convert_model", "from_torch", "Conversion", "DECODER_TYPES"]
