#!/usr/bin/env python3
"""Fuzz tinyasr's untrusted inputs: .tasr model files, ONNX files through the converter, audio files.

    python3 tools/fuzz.py --tasr 100000 --onnx 10000 --audio --out fuzz-out --seed 1

A fork server: the parent imports tinyasr once, warms every seed (Numba kernels compiled, caches filled), then
forks children (``--jobs`` at once) with RLIMIT_AS at the parent's size plus ``--memory-mb``; each runs up to
``--batch`` cases and is killed when one passes ``--timeout``.  A fresh interpreter per case would spend ~1 s
importing, a fork ~15 ms, a small case ~3 ms: hence batches.  A child that dies blames the case it was running
and the rest of its batch goes to a new child; every finding is run again alone in a fresh child (``--batch 1``
runs everything so).  Each case is classified:

    refused     a TinyASRError (ModelFileError, GraphError, ConversionError, AudioError ...): the promise kept
    finite      it loaded, ran and gave finite output / text
    nonfinite   a raw Model.run (no decoder) returned NaN / Inf: allowed (weights may hold them), counted
    exception   any other Python exception                     -> a finding
    signal      the child died of a signal (segfault, abort)   -> a finding
    hang        the child passed --timeout                     -> a finding
    oom         MemoryError, or killed near the memory limit   -> a finding

Findings are de-duplicated by signature (exception type + innermost tinyasr / tinyasr_convert frame); the first
case of each signature is written to ``--out`` as ``<class>-<target>-<hash>.<ext>`` with a ``.txt`` holding the
mutations and the traceback (and ``-options.json`` for ONNX).  The exit status is 1 when there is a finding.
Mutators are structure-aware: .tasr mutations edit the manifest (JSON values, node attributes, the front end,
the decoder, tensor entries, graph inputs / outputs, node lists) or tensor bytes, then fix every length and
crc32 so that the mutation reaches the parser, the graph and the decoder instead of stopping at a checksum.
The threat model this tests is in SECURITY.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import faulthandler
import gc
import hashlib
import io
import json
import os
import random
import resource
import select
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tinyasr  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
import tinyasr.ops  # noqa: E402
from tinyasr.errors import TinyASRError  # noqa: E402
from tinyasr.format.container import ALIGNMENT, BYTE_ORDER_MARK, HEADER, HEADER_CRC_SPAN, MAGIC  # noqa: E402

OUTCOMES = ("refused", "finite", "nonfinite", "exception", "signal", "hang", "oom")
FINDINGS = ("exception", "signal", "hang", "oom")
CLIP_SECONDS = 0.5  # audio fed to every model case: short, so 100,000 cases fit in tens of minutes

# Values that break naive readers: int64 / int32 edges, a 1025-digit int, subnormals, float32 overflow, huge
# counts, wrong types.  "1e400" and "-1e400" are written as raw JSON number literals (JSON_INF below).
INTERESTING = [0, -1, 1, 2, 3, 7, 255, 65536, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, -(2**63), 10**1025,
               0.0, -0.0, 0.5, 1.5, 5e-324, 1e-310, 1e-30, 3.5e38, -3.5e38, 1e300, "JSON_INF", "JSON_NINF",
               "", "x", "float32", "int64", "1e-310", "ctc", "probs", "\u0000", "é" * 3, "a" * 5000,
               None, True, False, [], {}, [0], [1], [-1], [2**63 - 1], [1, 1], [0, 0], [2**31, 2**31],
               [2000000, 2000000], {"a": 1}, {"value": 1}, {"dtype": "float32", "value": 1e39}, [[1]], ["a"]]
ATTR_KEYS = ["strides", "dilations", "pads", "kernel_shape", "group", "auto_pad", "activation", "activation_params",
             "axis", "axes", "perm", "value", "to", "epsilon", "alpha", "beta", "mode", "keepdims", "split",
             "num_outputs", "start", "end", "direction", "hidden_size", "layout", "clip", "transA", "transB",
             "allowzero", "noop_with_empty_axes", "select_last_index", "scale", "masked_value", "min", "max"]
FRONTEND_KEYS = {"sample_rate": [1, 7, 999, 1000, 768000, 2**31], "n_fft": [1, 2, 32768, 32769, 2**31],
                 "hop_length": [1, 2, 0, 32768], "win_length": [1, 32768], "n_mels": [1, 512, 513, 2**20],
                 "pad_to": [0, 1, 1024, 2**40], "preemph": [0.97, 1e300, -1.0, 5e-324, None],
                 "lowfreq": [0.0, -1.0, 1e300, 5e-324], "highfreq": [None, 1e-300, 1e300, 10**1025, 8000.0],
                 "mag_power": [2.0, 0.0, 1e300, 5e-324], "dither": [0.0, 1e300],
                 "log_zero_guard_value": [5e-324, 1e300, 0.0], "pad_value": [0.0, 1e300, 3.5e38],
                 "n_mfcc": [None, 1, 2**31], "kind": ["mel", "mfcc", 1], "window": ["hann", "none", "x"],
                 "normalize": ["per_feature", "all_features", None, 7]}
DECODER_KEYS = {"type": ["ctc", "classification", "frame_classification", ["ctc"], None, 1],
                "logits": ["log_probs", "logits", "probs", 1], "frame_seconds": [5e-324, 1e-310, 1e300, 0.02, -1],
                "blank": [-1, 0, 2**63, 1.5, "0"], "sample_rate": [1, 7, 16000, 2**40],
                "output": ["", "nope", 1], "vocabulary": [[], [""], ["a"] * 5000, "abc", [1]],
                "labels": [[], ["a"], "x"], "vocabulary_type": ["chars", "x"]}


# ------------------------------------------------------------------------------------------------ .tasr bytes


def tasr_split(blob: bytes):
    """(manifest dict, data section) of a well-formed .tasr file."""
    fields = HEADER.unpack(blob[:HEADER.size])
    length, data_offset = fields[4], fields[7]
    return json.loads(blob[HEADER.size:HEADER.size + length]), blob[data_offset:]


def tasr_join(manifest, data: bytes, fix_crcs: bool = True) -> bytes:
    """A file with valid header, lengths, padding and (unless told not to) part crc32s: mutations reach the
    parser.  JSON_INF / JSON_NINF strings become the literals 1e400 / -1e400."""
    if fix_crcs:
        for entry in manifest.get("tensors", []) if isinstance(manifest, dict) else []:
            for part in entry.get("parts", []) if isinstance(entry, dict) else []:
                try:
                    part["crc32"] = zlib.crc32(data[part["offset"]:part["offset"] + part["nbytes"]])
                except (TypeError, KeyError, ValueError):
                    pass
    text = json.dumps(manifest, separators=(",", ":")).replace('"JSON_INF"', "1e400")
    text = text.replace('"JSON_NINF"', "-1e400").encode()
    offset = -(-(HEADER.size + len(text)) // ALIGNMENT) * ALIGNMENT
    version = manifest.get("version", [1, 0]) if isinstance(manifest, dict) else [1, 0]
    major, minor = (version + [0, 0])[:2] if isinstance(version, list) and all(
        isinstance(v, int) and 0 <= v < 65536 for v in version[:2]) else (1, 0)
    head = HEADER.pack(MAGIC, major, minor, BYTE_ORDER_MARK, len(text), zlib.crc32(text), 0, offset, len(data),
                       bytes(12), 0)[:HEADER_CRC_SPAN]
    head += struct.pack("<I", zlib.crc32(head))
    return head + text + bytes(offset - HEADER.size - len(text)) + data


def _paths(value, prefix=()):
    """Every (path, value) in a JSON tree, depth first."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _interesting(rng: random.Random, old=None):
    choice = rng.random()
    if choice < 0.15 and isinstance(old, (int, float)) and not isinstance(old, bool):
        return rng.choice([old * 2**31, -old, old + 1, old * 1e30 if isinstance(old, float) else old * 2**40])
    if choice < 0.25 and old is not None:
        return rng.choice([[old], str(old), {"v": old}])
    return copy.deepcopy(rng.choice(INTERESTING))


def mutate_tasr(rng: random.Random, manifest: dict, data: bytes):
    """1 to 3 structure-aware mutations; returns (manifest, data, list of what was done)."""
    manifest = copy.deepcopy(manifest)
    data = bytearray(data)
    done = []
    graph = manifest["graph"]
    for _ in range(rng.choice((1, 1, 2, 3))):
        kind = rng.choice(["json", "json", "attr", "attr", "attr", "frontend", "decoder", "tensor", "bytes",
                           "io", "nodes"])
        if kind == "json":
            path, old = rng.choice(list(_paths(manifest))[1:])
            new = _interesting(rng, old)
            _set(manifest, path, new)
        elif kind == "attr" and graph["nodes"]:
            node = rng.choice(graph["nodes"])
            attrs = node.setdefault("attrs", {})
            key = rng.choice(list(attrs) + ATTR_KEYS) if attrs and rng.random() < 0.5 else rng.choice(ATTR_KEYS)
            path, new = ("graph", node["name"], key), _interesting(rng, attrs.get(key))
            attrs[key] = new
        elif kind == "frontend":
            frontend = manifest.get("frontend") or {}
            if not isinstance(frontend, dict):
                continue
            changes = {k: rng.choice(FRONTEND_KEYS[k]) for k in rng.sample(list(FRONTEND_KEYS), rng.randint(1, 4))}
            frontend.update(changes)
            manifest["frontend"] = frontend
            path, new = ("frontend",), changes
        elif kind == "decoder":
            decoder = manifest.get("decoder") or {"type": "ctc"}
            if not isinstance(decoder, dict):
                continue
            key = rng.choice(list(DECODER_KEYS))
            decoder[key] = copy.deepcopy(rng.choice(DECODER_KEYS[key]))
            manifest["decoder"] = decoder
            path, new = ("decoder", key), decoder[key]
        elif kind == "tensor" and manifest["tensors"]:
            entry = rng.choice(manifest["tensors"])
            field = rng.choice(["shape", "params", "dtype", "encoding", "part_shape"])
            if field == "shape":
                new = [rng.choice([0, 1, 2, 3, 24, 65535, 65536, 2**31 - 1, 2**40]) for _ in entry["shape"]]
                entry["shape"] = new
            elif field == "params":
                params = entry.setdefault("params", {})
                key = rng.choice(list(params) + ["scale", "density", "seed", "layer_id", "upcast_to", "block"])
                params[key] = new = _interesting(rng, params.get(key))
            elif field == "dtype":
                entry["dtype"] = new = rng.choice(["float32", "float16", "int8", "int64", "uint8", "bool"])
            elif field == "encoding":
                entry["encoding"] = new = rng.choice(["dense", "csr", "bsr", "int8", "ternary_seed",
                                                      "ternary_index", "float16"])
            elif entry["parts"]:  # keep nbytes consistent so the entry passes the container's checks
                part = rng.choice(entry["parts"])
                size = np.dtype(part["dtype"]).itemsize if part["dtype"] != "bfloat16" else 2
                count = part["nbytes"] // size
                new = rng.choice([[count], [1, count], [count, 1], [0], [2**31 - 1]])
                part["shape"] = new
            else:
                continue
            path = ("tensors", entry["name"], field)
        elif kind == "bytes" and data:
            start = rng.randrange(0, len(data))
            pattern = rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\x7f\x7f", b"\xff\xff\xff\x7f",
                                  bytes([rng.randrange(256)])])
            data[start:start + len(pattern)] = pattern[:len(data) - start]
            path, new = ("data", start), pattern.hex()
        elif kind == "io":
            values = graph[rng.choice(["inputs", "outputs"])]
            if not values:
                continue
            value = rng.choice(values)
            key = rng.choice(["shape", "dtype", "name"])
            value[key] = new = rng.choice({"shape": [[], [1], [1, 1, 1, 1, 1, 1, 1, 1, 1], ["T"], [-1, 3, "T"],
                                                     ["T", "T", "T"], [1, 2**31, "T"]],
                                           "dtype": ["int64", "float64", "bool", "1e-310", "object", "S1"],
                                           "name": ["", "other", value["name"] + "x"]}[key])
            path = ("io", key)
        elif kind == "nodes" and graph["nodes"]:
            i = rng.randrange(len(graph["nodes"]))
            how = rng.choice(["drop", "duplicate", "swap", "op", "rewire"])
            nodes = graph["nodes"]
            if how == "drop":
                nodes.pop(i)
            elif how == "duplicate":
                nodes.insert(i, copy.deepcopy(nodes[i]))
            elif how == "swap" and i + 1 < len(nodes):
                nodes[i], nodes[i + 1] = nodes[i + 1], nodes[i]
            elif how == "op":
                nodes[i]["op"] = rng.choice(tinyasr.ops.SUPPORTED_OPS)
            elif how == "rewire" and nodes[i]["inputs"]:
                names = [t["name"] for t in manifest["tensors"]] + [v["name"] for v in graph["inputs"]]
                names += [o for n in nodes for o in n["outputs"]]
                nodes[i]["inputs"][rng.randrange(len(nodes[i]["inputs"]))] = rng.choice(names + [""])
            path, new = ("nodes", how), i
        else:
            continue
        done.append({"op": kind, "path": [str(p) for p in path], "new": str(new)[:120]})
    return manifest, bytes(data), done


# ------------------------------------------------------------------------------------------------ ONNX


def onnx_seeds():
    """Small ONNX models that cover what the converter folds and fuses: a CTC model on features (depthwise Conv,
    BatchNorm, Relu, Clip, residual Add), a shape-arithmetic model (Shape, Gather, Concat, Unsqueeze, Reshape,
    ConstantOfShape, MatMul, Softmax) and a clip classifier (GlobalAveragePool, Gemm).  (name, model, options)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    mel = {"kind": "mel", "sample_rate": 16000, "win_length": 400, "hop_length": 160, "n_fft": 512, "n_mels": 16,
           "normalize": "per_feature", "pad_to": 16}
    features = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, "T"])
    ctc = helper.make_graph(
        [helper.make_node("Conv", ["x", "dw"], ["a"], name="dw", group=16, pads=[1, 1], kernel_shape=[3]),
         helper.make_node("BatchNormalization", ["a", "g", "b", "m", "v"], ["bn"], name="bn", epsilon=1e-5),
         helper.make_node("Relu", ["bn"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "pw", "pb"], ["p"], name="pw"),
         helper.make_node("Add", ["p", "x"], ["s"], name="res"),
         helper.make_node("Clip", ["s", "lo", "hi"], ["c"], name="clip"),
         helper.make_node("Conv", ["c", "head"], ["h"], name="head"),
         helper.make_node("Transpose", ["h"], ["t"], name="tr", perm=[0, 2, 1]),
         helper.make_node("LogSoftmax", ["t"], ["y"], name="ls", axis=-1)],
        "ctc", [features], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T", 5])],
        [init("dw", 16, 1, 3), init("g", 16), init("b", 16), numpy_helper.from_array(np.zeros(16, np.float32), "m"),
         numpy_helper.from_array(np.ones(16, np.float32), "v"), init("pw", 16, 16, 1), init("pb", 16),
         numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi"),
         init("head", 5, 16, 1)])
    shape_ops = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["sh"], name="shape"),
         helper.make_node("Gather", ["sh", "i2"], ["t"], name="gather", axis=0),
         helper.make_node("Unsqueeze", ["t", "ax0"], ["t1"], name="unsq"),
         helper.make_node("Concat", ["c16", "t1"], ["s2"], name="concat", axis=0),
         helper.make_node("Reshape", ["x", "s2"], ["r"], name="reshape"),
         helper.make_node("ConstantOfShape", ["s2"], ["z"], name="co",
                          value=numpy_helper.from_array(np.array([0.5], np.float32))),
         helper.make_node("Add", ["r", "z"], ["rz"], name="add"),
         helper.make_node("Transpose", ["rz"], ["rt"], name="tr", perm=[1, 0]),
         helper.make_node("MatMul", ["rt", "w"], ["mm"], name="mm"),
         helper.make_node("Softmax", ["mm"], ["y"], name="sm", axis=-1)],
        "shape_ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 4])],
        [numpy_helper.from_array(np.array(2, np.int64), "i2"), numpy_helper.from_array(np.array([0], np.int64), "ax0"),
         numpy_helper.from_array(np.array([16], np.int64), "c16"), init("w", 16, 4)])
    classifier = helper.make_graph(
        [helper.make_node("Conv", ["x", "cw", "cb"], ["a"], name="conv", pads=[2, 2], strides=[2], dilations=[1]),
         helper.make_node("Relu", ["a"], ["r"], name="relu"),
         helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
         helper.make_node("Flatten", ["g"], ["f"], name="flat", axis=1),
         helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], name="gemm", transB=1)],
        "classifier", [features], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [init("cw", 8, 16, 5), init("cb", 8), init("gw", 3, 8), init("gb", 3)])
    opset = [helper.make_opsetid("", 17)]
    return [
        ("ctc", helper.make_model(ctc, opset_imports=opset),
         {"labels": ["a", "b", " ", "c"], "decoder": "ctc", "frontend": mel}),
        ("shape_ops", helper.make_model(shape_ops, opset_imports=opset), {}),
        ("classifier", helper.make_model(classifier, opset_imports=opset),
         {"labels": ["yes", "no", "other"], "decoder": "classification", "frontend": mel}),
    ]


def mutate_onnx(rng: random.Random, model, options: dict):
    """1 to 3 mutations of a ModelProto (copied) and the conversion options; returns (bytes, options, done)."""
    import onnx
    from onnx import AttributeProto, TensorProto, helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    options = copy.deepcopy(options)
    graph, done = model.graph, []
    for _ in range(rng.choice((1, 1, 2, 3))):
        kind = rng.choice(["attr", "attr", "attr_remove", "initializer", "initializer", "io", "op_type", "nodes",
                           "edges", "metadata", "options", "raw_flip"])
        node = rng.choice(graph.node) if len(graph.node) else None
        if kind == "attr" and node is not None:
            name = rng.choice([a.name for a in node.attribute] + ATTR_KEYS[:8])
            value = rng.choice([0, -1, 2**31, 2**63 - 1, 1.5, 1e39, b"\x00", b"\xff\xfe", "SAME_UPPER", [],
                                [0], [2**62], [1, 2, 3], [1.5], ["a"], [-5, -5]])
            kept = [a for a in node.attribute if a.name != name]
            del node.attribute[:]
            node.attribute.extend(kept)
            if isinstance(value, list) and not value:
                node.attribute.append(helper.make_attribute(name, value, attr_type=AttributeProto.INTS))
            else:
                node.attribute.append(helper.make_attribute(name, value))
            done.append({"op": kind, "node": node.name, "attr": name, "value": repr(value)})
        elif kind == "attr_remove" and node is not None and len(node.attribute):
            removed = node.attribute.pop(rng.randrange(len(node.attribute)))
            done.append({"op": kind, "node": node.name, "attr": removed.name})
        elif kind in ("initializer", "raw_flip") and len(graph.initializer):
            t = rng.choice(graph.initializer)
            how = "raw_flip" if kind == "raw_flip" else rng.choice(["dtype", "dims", "truncate", "nan", "dup_name",
                                                                     "rename_to_input"])
            if how == "dtype":
                t.data_type = rng.choice([0, 2, 7, 8, 9, 10, 11, 16, 1000])
            elif how == "dims" and len(t.dims):
                t.dims[rng.randrange(len(t.dims))] = rng.choice([0, 1, 5, -1, 2**31, 2**40])
            elif how == "truncate":
                t.raw_data = t.raw_data[:len(t.raw_data) // 2] if t.raw_data else b"\x00"
            elif how == "nan" and t.data_type == TensorProto.FLOAT and t.raw_data:
                t.raw_data = b"\x00\x00\xc0\x7f" * (len(t.raw_data) // 4)
            elif how == "dup_name":
                t.name = rng.choice(graph.initializer).name
            elif how == "rename_to_input" and len(graph.input):
                t.name = graph.input[0].name
            elif how == "raw_flip" and t.raw_data:
                raw = bytearray(t.raw_data)
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
                t.raw_data = bytes(raw)
            done.append({"op": kind, "tensor": t.name, "kind": how})
        elif kind == "io":
            values = graph.input if rng.random() < 0.5 else graph.output
            if not len(values):
                continue
            v = rng.choice(values)
            how = rng.choice(["dim", "dim_param", "rank", "elem", "remove", "rename"])
            dims = v.type.tensor_type.shape.dim
            if how == "dim" and len(dims):
                dims[rng.randrange(len(dims))].dim_value = rng.choice([-1, 0, 1, 3, 2**31, 2**62])
            elif how == "dim_param" and len(dims):
                dims[rng.randrange(len(dims))].dim_param = "Q"
            elif how == "rank":
                dims.add().dim_value = 1
            elif how == "elem":
                v.type.tensor_type.elem_type = rng.choice([0, 7, 8, 11, 1000])
            elif how == "remove":
                values.remove(v)
            elif how == "rename":
                v.name = "renamed"
            done.append({"op": kind, "value": v.name, "kind": how})
        elif kind == "op_type" and node is not None:
            old = node.op_type
            node.op_type = rng.choice(["Conv", "BatchNormalization", "Clip", "Add", "Gather", "Concat", "Unsqueeze",
                                       "Reshape", "GlobalAveragePool", "MatMul", "Relu", "Constant", "Pad", "Slice"])
            done.append({"op": kind, "node": node.name, "old": old, "new": node.op_type})
        elif kind == "nodes" and node is not None:
            i = rng.randrange(len(graph.node))
            how = rng.choice(["drop", "duplicate", "swap"])
            if how == "drop":
                del graph.node[i]
            elif how == "duplicate":
                graph.node.insert(i, graph.node[i])
            elif how == "swap" and i + 1 < len(graph.node):
                a, b = onnx.NodeProto(), onnx.NodeProto()
                a.CopyFrom(graph.node[i])
                b.CopyFrom(graph.node[i + 1])
                graph.node[i].CopyFrom(b)
                graph.node[i + 1].CopyFrom(a)
            done.append({"op": kind, "index": i, "kind": how})
        elif kind == "edges" and node is not None:
            names = [t.name for t in graph.initializer] + [v.name for v in graph.input]
            names += [o for n in graph.node for o in n.output]
            how = rng.choice(["drop", "add", "other", "no_outputs"])
            if how == "drop" and len(node.input):
                del node.input[rng.randrange(len(node.input))]
            elif how == "add":
                node.input.append(rng.choice(names))
            elif how == "other" and len(node.input):
                node.input[rng.randrange(len(node.input))] = rng.choice(names + [""])
            elif how == "no_outputs":
                del node.output[:]
            done.append({"op": kind, "node": node.name, "kind": how})
        elif kind == "metadata":
            key = rng.choice(["blank", "labels", "decoder", "frontend", "streaming"])
            value = rng.choice(["1.5", "junk", "[1, 2]", '{"type": 1}', "1e400", "-1", '"ctc"', "{}", "null"])
            helper.set_model_props(model, {key: value})
            done.append({"op": kind, "key": key, "value": value})
        elif kind == "options":
            key = rng.choice(["labels", "blank", "decoder", "frontend", "compact", "sparse"])
            options[key] = copy.deepcopy(rng.choice({
                "labels": [["a"], [], ["a", "b", " ", "c", "d"], [1]], "blank": [-1, 0, 99, 2**63],
                "decoder": ["ctc", "classification", "frame_classification", "x"],
                "frontend": [{"kind": "mel", "n_mels": 16, "hop_length": 1, "n_fft": 32768}, {"n_mels": 15}],
                "compact": [False, True], "sparse": ["csr", "bsr", "dense", "auto"]}[key]))
            done.append({"op": kind, "key": key, "value": str(options[key])[:80]})
    return model.SerializeToString(), options, done


# ------------------------------------------------------------------------------------------------ audio


def _wav(rate=16000, channels=1, bits=16, fmt=1, frames=1600, data_length=None, payload=None, extra=b""):
    """A RIFF WAV written field by field, so that any header field can lie."""
    block = channels * bits // 8
    if payload is None:
        payload = (np.sin(np.arange(frames * channels) / 7.0) * 8000).astype("<i2").tobytes() if bits == 16 \
            else bytes(frames * max(block, 1))
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate & 0xFFFFFFFF, (rate * block) & 0xFFFFFFFF,
                            block & 0xFFFF, bits)
    length = len(payload) if data_length is None else data_length
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + extra
    body += b"data" + struct.pack("<I", length & 0xFFFFFFFF) + payload
    return b"RIFF" + struct.pack("<I", len(body) & 0xFFFFFFFF) + body


def _encoded(fmt: str, subtype: str, samples: np.ndarray, rate: int) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def audio_cases():
    """(name, bytes, suffix): headers that lie (rates 0 .. 2**32-1, channel counts, data lengths, FLAC total
    samples, AIFF 80-bit rates), non-finite float samples, truncation, junk, and long files at low rates."""
    tone = (np.sin(np.arange(16000) / 5.0) * 0.3).astype(np.float32)
    cases = [("empty", b"", ".wav"), ("junk", bytes(range(256)) * 4, ".wav"), ("riff_only", b"RIFF", ".wav")]
    for rate in (0, 1, 7, 999, 1000, 8000, 16000, 44100, 768000, 768001, 2**31 - 1, 2**32 - 1):
        cases.append((f"wav_rate_{rate}", _wav(rate=rate), ".wav"))
    for channels in (0, 2, 255, 256, 257, 65535):
        cases.append((f"wav_channels_{channels}", _wav(channels=channels, frames=64), ".wav"))
    for bits, fmt in ((8, 1), (24, 1), (32, 1), (32, 3), (64, 3), (12, 1), (0, 1), (16, 85), (16, 0xFFFE)):
        cases.append((f"wav_bits_{bits}_fmt_{fmt}", _wav(bits=bits, fmt=fmt), ".wav"))
    for length in (0, 1, 3, 2**31, 2**32 - 1, 2**32 - 2):
        cases.append((f"wav_data_length_{length}", _wav(data_length=length), ".wav"))
    for value, name in ((np.nan, "nan"), (np.inf, "inf"), (3.4e38, "max"), (1e-45, "subnormal")):
        samples = tone.copy()
        samples[100] = value
        cases.append((f"float_{name}", _wav(bits=32, fmt=3, payload=samples.astype("<f4").tobytes()), ".wav"))
    flac = _encoded("FLAC", "PCM_16", tone, 16000)
    for total in (0, 1, 2**32 - 1, 2**36 - 1):
        blob = bytearray(flac)  # STREAMINFO starts at byte 8: total samples are the low 36 bits of bytes 21..25
        packed = int.from_bytes(blob[18:26], "big")
        packed = (packed & ~(2**36 - 1)) | total
        blob[18:26] = packed.to_bytes(8, "big")
        cases.append((f"flac_total_{total}", bytes(blob), ".flac"))
    for rate in (0, 1, 7, 655350):
        blob = bytearray(flac)
        packed = int.from_bytes(blob[18:26], "big")
        packed = (packed & ~(((1 << 20) - 1) << 44)) | ((rate & 0xFFFFF) << 44)
        blob[18:26] = packed.to_bytes(8, "big")
        cases.append((f"flac_rate_{rate}", bytes(blob), ".flac"))
    cases.append(("flac_truncated", flac[:len(flac) // 2], ".flac"))
    aiff = _encoded("AIFF", "PCM_16", tone, 16000)
    comm = aiff.index(b"COMM") + 8 + 8  # the 80-bit sample rate follows channels, frames and bits
    for exponent, name in ((0, "zero"), (0x3FFF, "one"), (0x7FFF, "inf"), (0x401E, "2e9"), (0x4003, "ten")):
        blob = bytearray(aiff)
        blob[comm:comm + 2] = struct.pack(">H", exponent)
        cases.append((f"aiff_rate_{name}", bytes(blob), ".aiff"))
    long_low = _wav(rate=1000, frames=1000 * 130, payload=np.zeros(1000 * 130, "<i2").tobytes())
    cases.append(("long_1khz_130s", long_low, ".wav"))
    cases.append(("long_claims_7hz", _wav(rate=7, frames=16000), ".wav"))
    cases.append(("ogg_junk", b"OggS" + bytes(200), ".ogg"))
    return cases


# ------------------------------------------------------------------------------------------------ oracles


def _clip(rate: int) -> np.ndarray:
    t = np.arange(int(CLIP_SECONDS * rate)) / rate
    return (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _raw_inputs(model):
    """Inputs for a model without decoder: symbolic dims become 16, a feature axis the first Conv's channels."""
    inputs = {}
    for info in model.inputs:
        shape = []
        for axis, dim in enumerate(info.shape):
            shape.append(dim if isinstance(dim, int) else 16)
        consumer = next((n for n in model.graph.nodes if info.name in n.inputs[:1] and n.op == "Conv"), None)
        weight = model.tensors.get(consumer.inputs[1]) if consumer and len(consumer.inputs) > 1 else None
        if len(getattr(weight, "shape", ())) >= 2 and len(shape) == 3 and not isinstance(info.shape[1], int):
            shape[1] = int(weight.shape[1]) * int(consumer.attrs.get("group", 1))  # group: checked at load
        if int(np.prod(shape)) > 1 << 22:
            raise TinyASRError(f"fuzz oracle: input {info.name} {shape} is too large to feed")
        rng = np.random.default_rng(0)
        inputs[info.name] = (rng.standard_normal(shape) * 3).astype(info.dtype) if np.dtype(info.dtype).kind == "f" \
            else np.ones(shape, info.dtype)
    return inputs


def _ran(text_or_outputs) -> str:
    if isinstance(text_or_outputs, dict):
        finite = all(np.isfinite(v).all() for v in text_or_outputs.values() if np.asarray(v).dtype.kind == "f")
        return "finite" if finite else "nonfinite"
    return "finite"


def oracle_tasr(path: str) -> str:
    """Describe, load and run a .tasr file the way users do: `tinyasr info`, load_model, the Recognizer call its
    decoder asks for (then `text` must not come from NaN), or Model.run on synthetic inputs."""
    from tinyasr.cli.info import summarize
    from tinyasr.engine.offline import load_model
    from tinyasr.format.container import read_model

    try:
        summarize(path)
    except TinyASRError:
        pass  # info may refuse what it cannot describe; loading must refuse it too (checked below)
    with read_model(path) as model_file:
        has_decoder = bool(model_file.manifest.get("decoder"))
    if not has_decoder:
        model = load_model(path)
        return _ran(model.run(_raw_inputs(model)))
    recognizer = tinyasr.Recognizer(path)
    clip = _clip(recognizer.sample_rate)
    kind = recognizer.decoder.type
    if kind == "ctc":
        result = recognizer.transcribe(clip, sample_rate=recognizer.sample_rate)
        finite = all(np.isfinite([t.start, t.end, t.confidence]).all() for t in result.tokens)
        return "finite" if finite and np.isfinite(result.confidence) else "nonfinite-text"
    if kind == "classification":
        result = recognizer.classify(clip, sample_rate=recognizer.sample_rate)
        return "finite" if all(np.isfinite(score) for _, score in result.labels) else "nonfinite-text"
    recognizer.classify_frames(clip, sample_rate=recognizer.sample_rate)
    return "finite"


def oracle_onnx(path: str, options: dict) -> str:
    """Convert, then load and run the result as oracle_tasr does."""
    from tinyasr_convert import convert

    out = path + ".tasr"
    convert(path, out, **options)
    return oracle_tasr(out)


def oracle_audio(path: str) -> str:
    """Transcribe with the bundled model, file path as users give it (short and long-file paths)."""
    result = tinyasr.Recognizer().transcribe(path)
    return "finite" if isinstance(result.text, str) else "nonfinite-text"


# ------------------------------------------------------------------------------------------------ fork server


def _signature(exc: BaseException) -> str:
    """Exception type + innermost frame in tinyasr or the converter (else the innermost frame at all)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/tinyasr/" in f.filename or "/converters/" in f.filename] or frames
    last = ours[-1] if ours else None
    where = f"{os.path.relpath(last.filename, ROOT)}:{last.name}:{last.lineno}" if last else "?"
    return f"{type(exc).__name__}@{where}"


ORACLES = {"tasr": lambda path, extra: oracle_tasr(path), "onnx": lambda path, extra: oracle_onnx(path, extra),
           "audio": lambda path, extra: oracle_audio(path)}


def _run_case(case: "Case", work: Path) -> dict:
    """One case in a child: its bytes written to a file of the child's own, the target's oracle run on it."""
    path = work / f"{os.getpid()}-{case.name.replace('/', '_')[:40]}{case.suffix}"
    path.write_bytes(case.blob)
    try:
        return {"outcome": ORACLES[case.target](str(path), case.options)}
    except TinyASRError as exc:
        return {"outcome": "refused", "signature": type(exc).__name__, "message": str(exc)[:300]}
    except MemoryError as exc:
        return {"outcome": "oom", "signature": _signature(exc), "traceback": traceback.format_exc()}
    except BaseException as exc:  # everything else is a finding
        return {"outcome": "exception", "signature": _signature(exc), "traceback": traceback.format_exc()}
    finally:
        for leftover in (path, Path(str(path) + ".tasr")):
            leftover.unlink(missing_ok=True)


def _child(cases, work: Path, write_fd: int, memory_bytes: int) -> None:
    """Runs in the forked child: its cases in order, one JSON line each to the parent, then _exit."""
    try:
        faulthandler.disable()  # a crash is reported by the parent; no thread dump on the shared terminal
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        for case in cases:
            os.write(write_fd, (json.dumps(_run_case(case, work)) + "\n").encode())
    finally:
        os._exit(0)


def _address_space() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * resource.getpagesize()


@dataclasses.dataclass
class Case:
    target: str  # tasr, onnx, audio
    name: str
    blob: bytes
    suffix: str
    mutations: list
    options: Optional[dict] = None  # ONNX conversion options


@dataclasses.dataclass
class _Worker:
    cases: list
    fd: int
    done: int = 0
    buffer: bytes = b""
    last: float = 0.0  # when the last case finished (or the child started)


class ForkServer:
    """Children forked from this warm process, ``jobs`` at once, each running up to ``batch`` cases (a fork costs
    ~15 ms, a small case ~3 ms).  A case that passes ``timeout`` is killed with its child; one whose child dies
    is blamed on the case running then; the cases after it go to a new child.  Every finding in a batch is
    run again alone in a fresh child, and that run is what ``record`` gets."""

    def __init__(self, work: Path, jobs: int, batch: int, timeout: float, memory_mb: int, record):
        self.work, self.jobs, self.batch, self.timeout, self.memory_mb = work, jobs, batch, timeout, memory_mb
        self.record = record
        self.pending: list = []  # cases not yet in a batch
        self.queue: list = []  # batches waiting for a child (new ones, the rest after a crash, confirmations)
        self.workers = {}  # pid -> _Worker

    def submit(self, case: Case) -> None:
        self.pending.append(case)
        if len(self.pending) >= self.batch:
            self.queue.append(self.pending)
            self.pending = []
        while self.queue:
            if len(self.workers) < self.jobs:
                self._start(self.queue.pop(0))
            else:
                self._reap()

    def drain(self) -> None:
        if self.pending:
            self.queue.append(self.pending)
            self.pending = []
        while self.queue or self.workers:
            while self.queue and len(self.workers) < self.jobs:
                self._start(self.queue.pop(0))
            if self.workers:
                self._reap()

    def _start(self, cases) -> None:
        read_fd, write_fd = os.pipe()
        limit = _address_space() + self.memory_mb * (1 << 20)
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _child(cases, self.work, write_fd, limit)
        os.close(write_fd)
        self.workers[pid] = _Worker(list(cases), read_fd, last=time.monotonic())

    def _reap(self) -> None:
        fds = {w.fd: pid for pid, w in self.workers.items()}
        ready, _, _ = select.select(list(fds), [], [], 0.05)
        for fd in ready:
            pid = fds[fd]
            worker = self.workers[pid]
            chunk = os.read(fd, 1 << 16)
            if chunk:
                worker.buffer += chunk
                *lines, worker.buffer = worker.buffer.split(b"\n")
                for line in lines:
                    self._report(worker.cases[worker.done], json.loads(line), len(worker.cases))
                    worker.done += 1
                    worker.last = time.monotonic()
                continue
            _, status = os.waitpid(pid, 0)  # end of file: the child exited
            self._ended(pid, status, None)
        now = time.monotonic()
        for pid, worker in list(self.workers.items()):
            if now - worker.last > self.timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                self._ended(pid, None, {"outcome": "hang", "signature": "hang"})

    def _ended(self, pid: int, status, report) -> None:
        worker = self.workers.pop(pid)
        os.close(worker.fd)
        if worker.done < len(worker.cases):  # the child died in the middle of this case
            if report is None:
                if status is not None and os.WIFSIGNALED(status):
                    sig = signal.Signals(os.WTERMSIG(status)).name
                    report = {"outcome": "oom" if sig == "SIGKILL" else "signal", "signature": sig}
                else:
                    report = {"outcome": "signal", "signature": "exit without a report"}
            self._report(worker.cases[worker.done], report, len(worker.cases))
            rest = worker.cases[worker.done + 1:]
            if rest:
                self.queue.append(rest)

    def _report(self, case: Case, report: dict, batch_size: int) -> None:
        if report["outcome"] in FINDINGS + ("nonfinite-text",) and batch_size > 1:
            self.queue.append([case])  # confirmed (or not) alone, in a fresh child
            return
        self.record(case, report)


# ------------------------------------------------------------------------------------------------ driver


class Campaign:
    """Counts per target and outcome; the first case of each finding signature written to ``out``."""

    def __init__(self, out: Path):
        self.out = out
        self.counts = {}
        self.signatures = {}

    def record(self, case: Case, report: dict) -> None:
        target = case.target
        outcome = report["outcome"]
        if outcome == "nonfinite-text":
            outcome = report["outcome"] = "exception"
            report["signature"] = "non-finite text"
        self.counts.setdefault(target, dict.fromkeys(OUTCOMES, 0))[outcome] += 1
        if outcome not in FINDINGS:
            return
        key = (target, report["signature"])
        self.signatures[key] = self.signatures.get(key, 0) + 1
        if self.signatures[key] > 1:
            return
        digest = hashlib.sha1(report["signature"].encode()).hexdigest()[:10]
        stem = self.out / f"{outcome}-{target}-{digest}"
        self.out.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(case.suffix).write_bytes(case.blob)
        if case.options is not None:
            Path(f"{stem}-options.json").write_text(json.dumps(case.options))
        stem.with_suffix(".txt").write_text(
            f"case {case.name}  mutations {json.dumps(case.mutations)}\noutcome {outcome}  "
            f"signature {report['signature']}\n\n{report.get('traceback', '')}")
        print(f"  finding: {outcome} {target} {report['signature']} -> {stem.name}", flush=True)

    def table(self) -> str:
        lines = ["| target | cases | " + " | ".join(OUTCOMES) + " |", "|---|---:|" + "---:|" * len(OUTCOMES)]
        for target, counts in self.counts.items():
            lines.append(f"| {target} | {sum(counts.values())} | " + " | ".join(str(counts[o]) for o in OUTCOMES)
                         + " |")
        return "\n".join(lines)


def tasr_seeds(work: Path):
    """(name, manifest, data) of the bundled model, the spec's golden files and the converted ONNX seeds."""
    from tinyasr_convert import convert

    files = [ROOT / "tinyasr" / "models" / "digits.tasr"] + sorted((ROOT / "tests" / "data" / "format").glob("*.tasr"))
    for name, model, options in onnx_seeds():
        path = work / f"seed_{name}.tasr"
        convert(model, path, **options)
        files.append(path)
    return [(f.name, *tasr_split(f.read_bytes())) for f in files]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasr", type=int, default=1000, help="mutated .tasr cases (default 1000)")
    parser.add_argument("--onnx", type=int, default=200, help="mutated ONNX cases (default 200)")
    parser.add_argument("--audio", action="store_true", help="run the crafted audio set")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--jobs", type=int, default=2, help="children at once (default 2)")
    parser.add_argument("--batch", type=int, default=32, help="cases per child (default 32; 1: one fork per case)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per case before it is a hang")
    parser.add_argument("--memory-mb", type=int, default=4096, help="address space a child may add (MiB)")
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"), help="folder for reproducers")
    parser.add_argument("--replay", type=Path, nargs="*", default=None,
                        help="run these files (.tasr, .onnx with -options.json, audio) instead of mutating")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    campaign = Campaign(args.out)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tinyasr-fuzz-") as tmp:
        work = Path(tmp)
        server = ForkServer(work, args.jobs, args.batch, args.timeout, args.memory_mb, campaign.record)
        if args.replay is not None:
            for path in args.replay:
                server.submit(_replayed(path))
            server.drain()
            print(campaign.table())
            return 1 if campaign.signatures else 0
        seeds = tasr_seeds(work)
        for name, manifest, data in seeds:  # warm: compile kernels once in the parent, not in every child
            path = work / name
            path.write_bytes(tasr_join(manifest, data))
            try:
                oracle_tasr(str(path))
            except TinyASRError:
                pass
        gc.freeze()  # the warm objects stay shared with the children instead of being copied by their collector
        print(f"{len(seeds)} .tasr seeds warm after {time.monotonic() - started:.0f} s; CPU: {cpu_model()}", flush=True)
        if args.audio:
            for name, raw, suffix in audio_cases():
                server.submit(Case("audio", name, raw, suffix, [name]))
        onnx = onnx_seeds() if args.onnx else []
        for i in range(args.onnx):
            name, model, options = rng.choice(onnx)
            raw, opts, done = mutate_onnx(rng, model, options)
            server.submit(Case("onnx", f"onnx-{i} seed {name}", raw, ".onnx", done, opts))
            if (i + 1) % 2000 == 0:
                print(f"onnx: {i + 1} cases submitted after {time.monotonic() - started:.0f} s\n{campaign.table()}",
                      flush=True)
        for i in range(args.tasr):
            name, manifest, data = rng.choice(seeds)
            try:  # a mutation may break what a later one in the same case expects: then the case is skipped
                mutated, blob, done = mutate_tasr(rng, manifest, data)
                raw = tasr_join(mutated, blob, fix_crcs=rng.random() > 0.02)
            except (TypeError, KeyError, IndexError, AttributeError, ValueError, OverflowError):
                continue
            server.submit(Case("tasr", f"tasr-{i} seed {name}", raw, ".tasr", done))
            if (i + 1) % 10000 == 0:
                print(f"tasr: {i + 1} cases submitted after {time.monotonic() - started:.0f} s\n{campaign.table()}",
                      flush=True)
        server.drain()
    print(f"done in {time.monotonic() - started:.0f} s (seed {args.seed}, {args.jobs} jobs, CPU: {cpu_model()})")
    print(campaign.table())
    for (target, signature), count in sorted(campaign.signatures.items()):
        print(f"  {target}: {signature}  x{count}")
    return 1 if campaign.signatures else 0


def _replayed(path: Path) -> Case:
    """A saved reproducer as a case: .tasr, .onnx (with its -options.json) or an audio file."""
    raw = path.read_bytes()
    if path.suffix == ".onnx":
        options_file = Path(str(path)[:-len(".onnx")] + "-options.json")
        options = json.loads(options_file.read_text()) if options_file.exists() else {}
        return Case("onnx", path.name, raw, ".onnx", [], options)
    return Case("tasr" if path.suffix == ".tasr" else "audio", path.name, raw, path.suffix, [])


if __name__ == "__main__":
    sys.exit(main())
