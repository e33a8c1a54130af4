"""Regenerate the golden .tasr files and their expected decodings (run from the repository root).

    python3 tests/data/format/regenerate.py

Only run this for a deliberate format change: the point of the golden files is that
old files keep decoding the same.  Each ``NAME.json`` holds the values the ``NAME.tasr``
was written from (not values read back), so the test compares the reader with the source.
"""

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tinyasr.format.container import to_float16, write_model  # noqa: E402

PROVENANCE = {"source": "handmade", "source_sha256": "0" * 64, "converter": "tinyasr 0.1.0", "source_format": "onnx"}


def _basic():
    """A 2-node graph (Conv, Reshape) with one float32, one float16 (upcast) and one int64 tensor."""
    graph = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3, "T"]}],
        "outputs": [{"name": "z", "dtype": "float32", "shape": [2, "T"]}],
        "nodes": [
            {"name": "conv", "op": "Conv", "inputs": ["x", "w", "b"], "outputs": ["y"],
             "attrs": {"group": 1, "pads": [0, 0], "activation": "Relu"}},
            {"name": "flat", "op": "Reshape", "inputs": ["y", "shape"], "outputs": ["z"]},
        ],
    }
    manifest = {"graph": graph, "frontend": None,
                "decoder": {"type": "classification", "output": "z", "labels": ["no", "yes"], "logits": "logits"},
                "provenance": PROVENANCE}
    sources = {
        "w": np.array([0.5, -1.25, 3.0, -0.0, 1e-3, 65504.0], np.float32).reshape(2, 3, 1),
        "b": np.array([0.25, -2.0], np.float32),
        "shape": np.array([2, -1], np.int64),
    }
    stored = {"w": sources["w"], "b": to_float16(sources["b"], "b"), "shape": sources["shape"]}
    expected = {"w": (sources["w"], {}), "b": (sources["b"].astype(np.float16), {"upcast_to": "float32"}),
                "shape": (sources["shape"], {})}
    return manifest, stored, expected


def _dtypes():
    """Every v1 dtype, a scalar and a zero-size tensor; the graph is one Identity node."""
    graph = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["T"]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["T"]}],
        "nodes": [{"name": "id", "op": "Identity", "inputs": ["x"], "outputs": ["y"]}],
    }
    manifest = {"graph": graph, "frontend": None, "decoder": None, "provenance": PROVENANCE}
    sources = {
        "f32_scalar": np.array(-7.5, np.float32),
        "f16": np.array([[1.0, -0.5], [6.1035156e-05, 2048.0]], np.float16),
        "i64": np.array([-(2**62), 2**62 + 5, 0], np.int64),
        "i32": np.array([-(2**31), 2**31 - 1], np.int32),
        "i16": np.array([[-32768], [32767]], np.int16),
        "i8": np.array([-128, 127, 0], np.int8),
        "u16": np.array([0, 65535, 300], np.uint16),
        "u8": np.array([0, 255], np.uint8),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 4), np.float32),
    }
    return manifest, sources, {k: (v, {}) for k, v in sources.items()}


def _expected(version, manifest, expected):
    return {
        "version": list(version),
        "manifest": manifest,
        "tensors": {
            name: {"encoding": "dense", "dtype": array.dtype.name, "shape": list(array.shape), "params": params,
                   "values": array.reshape(-1).tolist()}
            for name, (array, params) in expected.items()
        },
    }


def _minor_newer():
    """Version 1.7, assembled by hand: a newer minor version may set flags and add manifest keys."""
    data = np.array([1.5, -3.0], "<f4").tobytes()
    graph = {"inputs": [{"name": "x", "dtype": "float32", "shape": [2]}],
             "outputs": [{"name": "y", "dtype": "float32", "shape": [2]}],
             "nodes": [{"name": "add", "op": "Add", "inputs": ["x", "c"], "outputs": ["y"]}]}
    manifest = {"graph": graph, "frontend": None, "decoder": None, "provenance": PROVENANCE}
    full = {"format": "tasr", "version": [1, 7], **manifest, "future_key": {"anything": [1, 2]},
            "tensors": [{"name": "c", "encoding": "dense", "dtype": "float32", "shape": [2], "future": True,
                         "parts": [{"role": "data", "dtype": "float32", "shape": [2], "offset": 0,
                                    "nbytes": 8, "crc32": zlib.crc32(data)}]}]}
    text = json.dumps(full).encode()
    data_offset = (64 + len(text) + 63) // 64 * 64
    head = struct.pack("<8sHHIQIIQQ12s", b"TASR\r\n\x1a\n", 1, 7, 0x01020304, len(text), zlib.crc32(text),
                       0x5, data_offset, len(data), b"\x07" * 12)
    blob = head + struct.pack("<I", zlib.crc32(head)) + text + bytes(data_offset - 64 - len(text)) + data
    expected = {"c": (np.frombuffer(data, "<f4"), {})}
    return blob, _expected((1, 7), manifest, expected)


def main():
    for name, build in [("basic", _basic), ("dtypes", _dtypes)]:
        manifest, stored, expected = build()
        write_model(HERE / f"{name}.tasr", manifest, stored)
        (HERE / f"{name}.json").write_text(json.dumps(_expected((1, 0), manifest, expected), indent=1) + "\n")
    blob, expected = _minor_newer()
    (HERE / "minor_newer.tasr").write_bytes(blob)
    (HERE / "minor_newer.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
