"""An independent .tasr reader written from docs/format.md (and docs/ternary.md's generator) alone, without
tinyasr: where it and tinyasr disagree on a golden file, the spec or the code is wrong.  It checks the header,
layout and crc32s and decodes every encoding; the spec's other refusals are covered by tests/data/format/invalid/."""

import json
import math
import struct
import zlib

import numpy as np

DTYPES = {"float32": "<f4", "float16": "<f2", "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1",
          "uint16": "<u2", "uint8": "u1", "bool": "?"}
MASK64, GAMMA = 2**64 - 1, 0x9E3779B97F4A7C15


def _check(ok, what):  # a refusal
    if not ok:
        raise ValueError(what)


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def ternary_pattern(seed, layer_id, rows, columns, density):
    """generator "splitmix64-stratified-v1", transcribed from its pseudo-code with Python integers."""
    width = math.floor(1 / density + 0.5)
    blocks = -(-columns // width)
    key = mix64((seed + GAMMA * (layer_id + 1)) & MASK64)
    pattern = np.zeros((rows, columns), np.float32)
    for r in range(rows):
        for b in range(blocks):
            h = mix64((key + GAMMA * (r * blocks + b + 1)) & MASK64)
            span = min(width, columns - b * width)
            pattern[r, b * width + (((h >> 32) * span) >> 32)] = 1.0 if h & 1 == 0 else -1.0
    return pattern


def _csr(entry, parts, block=(1, 1)):
    m, (br, bc) = np.zeros((entry["shape"][0], math.prod(entry["shape"][1:])), np.float32), block
    values, indices, indptr = parts["values"], parts["indices"], parts["indptr"]
    for row in range(len(indptr) - 1):
        for column, value in zip(indices[indptr[row]:indptr[row + 1]].tolist(), values[indptr[row]:indptr[row + 1]]):
            m[row * br:(row + 1) * br, column * bc:(column + 1) * bc] = value
    return m.reshape(entry["shape"])


def _int8(entry, parts):
    view = [-1 if a == entry.get("params", {}).get("axis", 0) else 1 for a in range(len(entry["shape"]))]
    return parts["values"].astype(np.float32) * parts["scales"].reshape(view)


def _ternary_seed(entry, parts):
    (out, columns, _), p = entry["shape"], entry["params"]
    _check(p["generator"] == "splitmix64-stratified-v1", "unknown generator")
    scales = parts["scales"] if "scales" in parts else np.full(out, p.get("scale", 1.0), np.float32)
    return (ternary_pattern(p["seed"], p["layer_id"], out, columns, p["density"]) * scales[:, None])[:, :, None]


def _ternary_index(entry, parts):
    pattern = np.zeros(entry["shape"][:2], np.float32)
    for sign, role in ((1.0, "plus"), (-1.0, "minus")):
        lists, ptr = parts[role], parts[role + "_ptr"]
        for o in range(len(ptr) - 1):
            pattern[o, lists[ptr[o]:ptr[o + 1]]] = sign
    return (pattern * parts["scales"][:, None])[:, :, None]


DECODERS = {"dense": lambda e, p: p["data"], "csr": _csr, "bsr": lambda e, p: _csr(e, p, e["params"]["block"]),
            "int8": _int8, "ternary_seed": _ternary_seed, "ternary_index": _ternary_index}


def read(path):
    """((major, minor), manifest, {name: logical tensor as a numpy array}) of a .tasr file."""
    with open(path, "rb") as f:
        blob = f.read()
    magic, major, minor, bom, length, manifest_crc, _, data_offset, data_length, _, header_crc = struct.unpack(
        "<8sHHIQIIQQ12sI", blob[:64])
    _check(magic == b"TASR\r\n\x1a\n" and major == 1 and bom == 0x01020304, "not a version 1 .tasr file")
    _check(zlib.crc32(blob[:60]) == header_crc, "header crc32")
    _check(data_offset == (64 + length + 63) // 64 * 64 and data_offset + data_length == len(blob), "layout")
    text = blob[64:64 + length]
    _check(zlib.crc32(text) == manifest_crc and not any(blob[64 + length:data_offset]), "manifest crc32 or padding")
    manifest = json.loads(text.decode("utf-8"))
    _check(manifest["format"] == "tasr" and manifest["version"] == [major, minor]
           and manifest.get("opset", 17) == 17, "format, version or opset")
    data, tensors = blob[data_offset:], {}
    for entry in manifest["tensors"]:
        parts = {}
        for part in entry["parts"]:
            raw = data[part["offset"]:part["offset"] + part["nbytes"]]
            _check(part["offset"] % 64 == 0 and len(raw) == part["nbytes"] and zlib.crc32(raw) == part["crc32"],
                   f"tensor {entry['name']} part {part['role']}")
            parts[part["role"]] = np.frombuffer(raw, DTYPES[part["dtype"]]).reshape(part["shape"])
        tensors[entry["name"]] = DECODERS[entry["encoding"]](entry, parts)
    return (major, minor), manifest, tensors
