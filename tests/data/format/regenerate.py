"""Regenerate the golden .tasr files, their expected decodings and the invalid files (from the repository root).

    python3 tests/data/format/regenerate.py [OUT_DIR]

Golden files: ``NAME.tasr`` with ``NAME.json``, which holds the values the file was written from (not values
read back), as the logical tensor a dense decoding gives, so a test compares a reader with the source.
One file per encoding (dense in every dtype, float16 with upcast, csr, bsr, int8, ternary_seed,
ternary_index) and a hand-assembled file of a future minor version.  ``invalid/``: one hostile file per
refusal, and ``invalid/cases.json`` mapping each to the words its ModelFileError must contain.
``old/`` is never regenerated: files written by tinyasr before format 1.2, kept as they were.

The same inputs give the same bytes (tests/test_format_spec.py regenerates into a temporary folder and
compares).  Only change the outputs deliberately: the point is that old files keep decoding the same.
"""

import json
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE.parents[1]))

from tasr_bytes import assemble, entry_of, part_of, replace_part, split  # noqa: E402

from tinyasr.format.container import to_float16, write_model  # noqa: E402
from tinyasr.format.encodings.sparse import bsr_arrays, csr_arrays, int8_arrays  # noqa: E402
from tinyasr.format.encodings.ternary import GENERATOR, index_tensor, seed_tensor, ternary_matrix  # noqa: E402
from tinyasr.format.tensors import EncodedTensor  # noqa: E402

PROVENANCE = {"source": "handmade", "source_sha256": "0" * 64, "converter": "tinyasr 0.1.0", "source_format": "onnx"}


def _weights_graph(names):
    """One Conv per stored weight, all reading the input: a valid graph naming every tensor."""
    return {"inputs": [{"name": "x", "dtype": "float32", "shape": [1, "C", "T"]}],
            "outputs": [{"name": f"y_{n}", "dtype": "float32", "shape": [1, "C", "T"]} for n in names],
            "nodes": [{"name": f"conv_{n}", "op": "Conv", "inputs": ["x", n], "outputs": [f"y_{n}"]} for n in names]}


def _manifest(graph, decoder=None):
    return {"opset": 17, "graph": graph, "frontend": None, "decoder": decoder, "provenance": PROVENANCE}


# --------------------------------------------------------------------------- golden files
# Each builder returns (manifest, tensors to store, {name: (encoding, logical array, params)}).


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
    manifest = _manifest(graph, {"type": "classification", "output": "z", "labels": ["no", "yes"], "logits": "logits"})
    w = np.array([0.5, -1.25, 3.0, -0.0, 1e-3, 65504.0], np.float32).reshape(2, 3, 1)
    b = np.array([0.25, -2.0], np.float32)
    shape = np.array([2, -1], np.int64)
    stored = {"w": w, "b": to_float16(b, "b"), "shape": shape}
    return manifest, stored, {"w": ("dense", w, {}), "b": ("dense", b.astype(np.float16), {"upcast_to": "float32"}),
                              "shape": ("dense", shape, {})}


def _dtypes():
    """Every v1 dtype, a scalar and a zero-size tensor; the graph is one Identity node."""
    graph = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["T"]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["T"]}],
        "nodes": [{"name": "id", "op": "Identity", "inputs": ["x"], "outputs": ["y"]}],
    }
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
    return _manifest(graph), sources, {k: ("dense", v, {}) for k, v in sources.items()}


def _sparse_parts(arrays, index_dtype):
    values, indices, indptr = arrays
    return {"values": values, "indices": indices.astype(index_dtype), "indptr": indptr}


def _csr():
    """csr with float32 values and uint16 indices (an empty row included), and float16 values with int32 indices."""
    a = np.array([[0, 1.5, 0, 0, -2], [0, 0, 0, 0, 0], [3.25, 0, 0, 0.125, 0], [0, 0, -1, 0, 0]], np.float32)
    b = np.array([[0, 0.5, 0, -1.25], [1024, 0, 0, 0], [0, 0, 6.1035156e-05, 3]], np.float32)
    stored = {"a": EncodedTensor("csr", "float32", (4, 5, 1), _sparse_parts(csr_arrays(a), "<u2")),
              "b": EncodedTensor("csr", "float32", (3, 4, 1), _sparse_parts(csr_arrays(b, "float16"), "<i4"))}
    return (_manifest(_weights_graph(stored)), stored,
            {"a": ("csr", a[:, :, None], {}), "b": ("csr", b[:, :, None], {})})


def _bsr():
    """bsr with 2x1 blocks (float32, uint16) on a Conv weight, and 2x3 blocks (float16, int32) on a rank-2 weight."""
    a = np.array([[0, 1, 0], [0, -2, 0], [0.5, 0, 0], [4, 0, 0]], np.float32)
    b = np.array([[0, 0, 0, 1, 2, 0], [0, 0, 0, -3, 0, 0.25], [0.5, 0, 0, 0, 0, 0], [0, 0, -8, 0, 0, 0]], np.float32)
    stored = {"a": EncodedTensor("bsr", "float32", (4, 3, 1), _sparse_parts(bsr_arrays(a, (2, 1)), "<u2"),
                                 {"block": [2, 1]}),
              "b": EncodedTensor("bsr", "float32", (4, 6), _sparse_parts(bsr_arrays(b, (2, 3), "float16"), "<i4"),
                                 {"block": [2, 3]})}
    return (_manifest(_weights_graph(stored)), stored,
            {"a": ("bsr", a[:, :, None], {"block": [2, 1]}), "b": ("bsr", b, {"block": [2, 3]})})


def _int8():
    """int8 per output channel (axis 0, given and defaulted) and per input channel (axis 1)."""
    rng = np.random.default_rng(8)
    expected, stored = {}, {}
    for name, shape, axis, params in (("rows", (3, 4, 1), 0, {"axis": 0}), ("columns", (2, 3), 1, {"axis": 1}),
                                      ("default", (2, 2, 1), 0, {})):
        values, scales = int8_arrays(rng.standard_normal(shape).astype(np.float32), axis)
        stored[name] = EncodedTensor("int8", "float32", shape, {"values": values, "scales": scales}, params)
        view = [1] * len(shape)
        view[axis] = -1
        expected[name] = ("int8", values.astype(np.float32) * scales.reshape(view), params)
    return _manifest(_weights_graph(stored)), stored, expected


def _ternary_seed():
    """The three layers written out in docs/ternary.md (one scale, per-row scales, the default scale 1), and
    a wider one with several blocks per row."""
    layers = {"doc_a": ((0, 0, 4, 6, 1 / 3), np.full(4, 0.5, np.float32)),
              "doc_b": ((42, 1, 3, 8, 0.5), np.array([1.5, -0.25, 2.0], np.float32)),
              "doc_c": ((2**64 - 1, 7, 2, 10, 0.25), None),
              "wide": ((1234, 3, 6, 30, 0.1), np.linspace(-2, 2, 6).astype(np.float32))}
    stored, expected = {}, {}
    for name, (layer, scales) in layers.items():
        seed, layer_id, rows, columns, density = layer
        if scales is None:  # no 'scale' param: the default 1.0
            stored[name] = EncodedTensor("ternary_seed", "float32", (rows, columns, 1), {}, {
                "generator": GENERATOR, "seed": seed, "layer_id": layer_id, "density": density})
            scales = np.ones(rows, np.float32)
        else:
            stored[name] = seed_tensor(*layer, scales=scales)
        dense = ternary_matrix(*layer).astype(np.float32) * scales[:, None]
        expected[name] = ("ternary_seed", dense[:, :, None], stored[name].params)
    return _manifest(_weights_graph(stored)), stored, expected


def _ternary_index():
    """Index lists of a 3 x 5 pattern with a row that has no -1 and a row with no non-zero at all."""
    pattern = np.array([[1, 0, -1, 0, 1], [0, 1, 0, 1, 0], [0, 0, 0, 0, 0]], np.int8)
    scales = np.array([0.75, -3.0, 2.5], np.float32)
    stored = {"t": index_tensor(pattern, scales)}
    dense = (pattern.astype(np.float32) * scales[:, None])[:, :, None]
    return _manifest(_weights_graph(stored)), stored, {"t": ("ternary_index", dense, {})}


def _expected(version, manifest, expected):
    return {
        "version": list(version),
        "manifest": manifest,
        "tensors": {
            name: {"encoding": encoding, "dtype": array.dtype.name, "shape": list(array.shape), "params": params,
                   "values": array.reshape(-1).tolist()}
            for name, (encoding, array, params) in expected.items()
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
    blob = assemble(full, data, minor=7, flags=0x5, reserved=b"\x07" * 12)
    return blob, _expected((1, 7), manifest, {"c": ("dense", np.frombuffer(data, "<f4"), {})})


GOLDEN = {"basic": _basic, "dtypes": _dtypes, "csr": _csr, "bsr": _bsr, "int8": _int8,
          "ternary_seed": _ternary_seed, "ternary_index": _ternary_index}


# --------------------------------------------------------------------------- invalid files


def _written(manifest, tensors) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.tasr"
        write_model(path, manifest, tensors)
        return path.read_bytes()


def _changed(blob, change):
    """The file with ``change(manifest)`` applied to its manifest, re-assembled (lengths and crc32 made valid)."""
    manifest, data = split(blob)
    change(manifest)
    return assemble(manifest, data, minor=manifest["version"][1])


def _set(obj, **values):
    obj.update(values)


def _dense_cases():
    graph = {"inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3, "T"]}],
             "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 2, "T"]}],
             "nodes": [{"name": "conv", "op": "Conv", "inputs": ["x", "w", "b"], "outputs": ["y"]}]}
    base = _written(_manifest(graph), {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3, 1) - 2.5, "b": np.array([0.5, -1.0], np.float32),
        "idx": np.array([3, -4, 5], np.int64), "mask": np.array([True, False])})
    manifest, data = split(base)
    text = json.dumps(manifest).encode()

    def header(**fields):
        return assemble(manifest, data, **fields)

    def entry(tensor, **values):
        return _changed(base, lambda m: _set(entry_of(m, tensor), **values))

    def part(tensor, **values):
        return _changed(base, lambda m: _set(part_of(m, tensor, "data"), **values))

    huge_manifest = bytearray(header())
    huge_manifest[16:24] = struct.pack("<Q", 65 * 2**20)
    huge_manifest[60:64] = struct.pack("<I", zlib.crc32(huge_manifest[:60]))
    return {
        "empty": (b"", "too short (0 bytes)"),
        "too_short": (base[:10], "too short (10 bytes)"),
        "truncated": (base[:-1], "truncated"),
        "trailing_bytes": (base + b"\0", "trailing bytes"),
        "bad_magic": (b"GGUF" + base[4:], "wrong magic b'GGUF\\r\\n\\x1a\\n'"),
        "major_2": (header(major=2), "unknown format version 2.0: this reader reads version 1.x only"),
        "byte_order_mark": (header(bom=0x04030201), "byte-order mark is 0x04030201"),
        "header_crc": (base[:48] + b"\1" + base[49:], "header crc32 mismatch"),
        "flags": (header(flags=1), "non-zero flags or reserved header bytes in a version 1.0 file"),
        "reserved": (header(reserved=b"\1" + bytes(11)), "non-zero flags or reserved header bytes"),
        "manifest_too_long": (bytes(huge_manifest[:64]) + b"x" * 64, "manifest length 68157440 is outside"),
        "data_offset": (header(data_offset=len(text) + 64 + 128), "data offset"),
        "data_length_huge": (header(data_length=2**63), "truncated"),
        "manifest_crc": (header(manifest_crc=0), "manifest crc32 mismatch"),
        "manifest_bit_flip": (base[:100] + bytes([base[100] ^ 1]) + base[101:], "manifest crc32 mismatch"),
        "padding_after_manifest": (_padding_after_manifest(manifest, data), "non-zero padding between"),
        "data_crc": (base[:-1] + bytes([base[-1] ^ 0x40]), "tensor 'mask' part 'data': crc32 mismatch"),
        "bool_byte_2": (_with_part(base, "mask", "data", np.array([2, 0], "u1")),
                        "'mask' part 'data': bool bytes must be 0 or 1"),
        "format_gguf": (_changed(base, lambda m: _set(m, format="gguf")), "format 'gguf'"),
        "version_mismatch": (assemble({**manifest, "version": [1, 1]}, data, minor=0),
                             "header says 'tasr' [1, 0]"),
        "frontend_list": (_changed(base, lambda m: _set(m, frontend=[1])), "'frontend' must be an object or null"),
        "provenance_null": (_changed(base, lambda m: _set(m, provenance=None)),
                            "'provenance' must be an object"),
        "tensors_object": (_changed(base, lambda m: _set(m, tensors={})), "'tensors' must be a list"),
        "opset_18": (_changed(base, lambda m: _set(m, opset=18)),
                     "the graph uses ONNX opset 18 semantics; this reader implements opset 17 only"),
        "opset_string": (_changed(base, lambda m: _set(m, opset="17")), "'opset' must be an integer"),
        "duplicate_tensor": (_changed(base, lambda m: m["tensors"].append(dict(m["tensors"][0]))),
                             "duplicate tensor name 'w'"),
        "unknown_encoding": (entry("w", encoding="zstd"), "tensor 'w': unknown encoding 'zstd'"),
        "unknown_dtype": (entry("w", dtype="float64"), "tensor 'w': unknown dtype 'float64'"),
        "name_too_long": (entry("w", name="n" * 1025), "tensor name must be a string of 1 to 1024 characters"),
        "name_not_string": (entry("w", name=7), "tensor name must be a string"),
        "entry_without_parts": (_changed(base, lambda m: entry_of(m, "w").pop("parts")),
                                "tensor 'w' is missing key 'parts'"),
        "rank_9": (entry("w", shape=[1] * 9), "shape must be a list of at most 8 dims"),
        "negative_dim": (entry("w", shape=[2, -3, 1]), "shape dims must be integers"),
        "float_dim": (entry("w", shape=[2, 3.0, 1]), "shape dims must be integers"),
        "dense_shape_mismatch": (entry("w", shape=[2, 3, 2]),
                                 "dense part is float32[2, 3, 1] but the tensor is float32[2, 3, 2]"),
        "upcast_on_float32": (entry("w", params={"upcast_to": "float32"}), "upcast_to='float32' is only allowed"),
        "unknown_dense_params": (entry("w", params={"scale": 2}), "unknown dense params ['scale']"),
        "two_parts_one_role": (_changed(base, lambda m: entry_of(m, "w")["parts"].append(
            dict(entry_of(m, "w")["parts"][0]))), "two parts share a role"),
        "dense_wrong_role": (part("w", role="values"), "dense encoding stores exactly one part 'data'"),
        "part_dtype": (part("w", dtype="bfloat16"), "unknown dtype 'bfloat16'"),
        "nbytes_mismatch": (part("w", shape=[2, 3, 2]), "shape [2, 3, 2] of float32 needs 48 bytes but nbytes is 24"),
        "part_shape_huge": (part("w", shape=[2**31 - 1] * 8), "but nbytes is 24"),
        "dim_too_large": (part("w", shape=[2**31] * 3), "shape dims must be integers in [0, 2147483647]"),
        "offset_past_end": (part("w", offset=2**40), "lies outside the data section"),
        "nbytes_negative": (part("w", nbytes=-24), "lies outside the data section"),
        "offset_negative": (part("w", offset=-64), "lies outside the data section"),
        "offset_misaligned": (part("w", offset=8), "offset 8 is misaligned"),
        "crc_too_large": (part("w", crc32=2**32), "crc32 < 2**32"),
        "part_without_crc": (_changed(base, lambda m: part_of(m, "w", "data").pop("crc32")),
                             "a part is missing key 'crc32'"),
        "overlapping_parts": (_changed(base, lambda m: _set(part_of(m, "b", "data"), offset=0)),
                              "tensor 'w' part 'data' bytes [0, 24) overlap tensor 'b' part 'data'"),
        "padding_between_parts": (assemble(manifest, data[:40] + b"\1" + data[41:]),
                                  "non-zero padding bytes in the data section at [24, 64)"),
        "padding_at_end": (assemble(manifest, data + bytes(63) + b"\1"),  # a 64-byte block after the last part
                           "non-zero padding bytes at the end of the data section"),
        "graph_missing_tensor": (_changed(base, lambda m: m["graph"]["nodes"][0]["inputs"].__setitem__(
            1, "w_missing")), "invalid graph: node 'conv' (Conv) reads 'w_missing'"),
        "graph_not_object": (_changed(base, lambda m: _set(m, graph=[])),
                             "invalid graph: graph description must be an object"),
    }


def _padding_after_manifest(manifest, data):
    blob = bytearray(assemble(manifest, data))
    blob[64 + len(json.dumps(manifest).encode())] = 1  # the first byte between the manifest and the data
    return bytes(blob)


def _manifest_text_cases():
    return {
        "not_utf8": (assemble(b"\xff\xfe{}"), "manifest is not UTF-8"),
        "not_json": (assemble(b'{"graph": '), "manifest is not JSON"),
        "integer_5000_digits": (assemble(b'{"a": ' + b"9" * 5000 + b"}"), "manifest is not JSON: Exceeds the limit"),
        "not_object": (assemble(b"[1, 2]"), "manifest must be a JSON object, got list"),
        "duplicate_key": (assemble(b'{"a": 1, "a": 2}'), "manifest has a duplicate key 'a'"),
        "nan_literal": (assemble(b'{"a": NaN}'), "manifest contains NaN, which is not JSON"),
        "infinity_literal": (assemble(b'{"a": -Infinity}'), "manifest contains -Infinity, which is not JSON"),
        "number_1e400": (assemble(b'{"a": 1e400}'), "manifest number 1e400 is outside the range of a double"),
        "nested_5000": (assemble(b"[" * 5000 + b"]" * 5000), "manifest JSON is nested too deeply"),
        "nested_65": (assemble(b'{"a":' * 65 + b"1" + b"}" * 65), "manifest JSON is nested deeper than 64 levels"),
        "missing_keys": (assemble(b'{"format": "tasr"}'), "manifest is missing keys "
                         "['version', 'tensors', 'graph', 'frontend', 'decoder', 'provenance']"),
    }


def _encoding_cases():
    csr = _written(*_csr()[:2])
    indices = np.array([1, 4, 0, 3, 2], "<u2")  # of matrix 'a' in _csr, row by row
    manifest, data = split(csr)
    assert np.frombuffer(data, "<u2", 5, part_of(manifest, "a", "indices")["offset"]).tolist() == indices.tolist()

    bsr = _written(*_bsr()[:2])
    int8 = _written(*_int8()[:2])

    seed = _written(*_ternary_seed()[:2])
    index = _written(*_ternary_index()[:2])
    scales = np.array([0.75, np.nan, 2.5], "<f4")

    def seed_params(**params):
        return _changed(seed, lambda m: entry_of(m, "doc_a")["params"].update(params))

    return {
        "csr_column_out_of_range": (_with_part(csr, "a", "indices", np.array([1, 4, 0, 3, 7], "<u2")),
                                    "tensor 'a' (csr): column index 7 is outside [0, 5)"),
        "csr_indptr_decreasing": (_with_part(csr, "a", "indptr", np.array([0, 2, 1, 4, 5], "<i4")),
                                  "tensor 'a' (csr): indptr decreases at row 1 (2 -> 1)"),
        "csr_columns_not_increasing": (_with_part(csr, "a", "indices", indices[[1, 0, 2, 3, 4]]),
                                       "column indices must increase within a row; entry 1 does not"),
        "csr_in_a_1_0_file": (assemble({**manifest, "version": [1, 0]}, data),
                              "tensor 'a': encoding 'csr' needs format version 1.1, but the file says 1.0"),
        "bsr_block_not_tiling": (_changed(bsr, lambda m: entry_of(m, "a")["params"].update(block=[3, 1])),
                                 "tensor 'a' (bsr): block 3x1 does not tile the 4x3 matrix"),
        "int8_zero_scale": (_with_part(int8, "rows", "scales", np.zeros(3, "<f4")),
                            "tensor 'rows' (int8): scales must be finite and > 0"),
        "int8_axis_out_of_rank": (_changed(int8, lambda m: entry_of(m, "rows")["params"].update(axis=3)),
                                  "int8 takes params {'axis': 0 <= int < rank}"),
        "ternary_seed_huge_without_scales": (_changed(seed, lambda m: _set(entry_of(m, "doc_a"),
                                                                             shape=[2**31 - 1, 6, 1])),
                                             "tensor 'doc_a' (ternary_seed): out_channels 2147483647 is outside "
                                             "0..65535"),
        "ternary_seed_subnormal_density": (seed_params(density=5e-324), "density 5e-324 is too small"),
        "ternary_seed_block_too_wide": (seed_params(density=0.1), "gives blocks of 10 columns, more than the 6 input"),
        "ternary_seed_unknown_generator": (seed_params(generator="xorshift"), "unknown generator 'xorshift'"),
        "ternary_seed_scale_1e400": (_raw_scale_1e400(seed), "manifest number 1e400 is outside the range of a double"),
        "ternary_seed_scale_and_scales": (_changed(seed, lambda m: entry_of(m, "doc_b")["params"].update(scale=1.0)),
                                          "give either params 'scale' or part 'scales', not both"),
        "ternary_index_both_signs": (_with_part(index, "t", "minus", np.array([0], "<u2")),
                                     "a column appears under both +1 and -1 in the same row"),
        "ternary_index_nan_scale": (_with_part(index, "t", "scales", scales),
                                    "tensor 't' (ternary_index): part 'scales' holds non-finite values"),
        "ternary_index_pointer_past_list": (_with_part(index, "t", "plus_ptr", np.array([0, 2, 4, 5], "<i4")),
                                            "part 'plus_ptr' must start at 0, never decrease and end at 4"),
    }


def _with_part(blob, name, role, array):
    """The file with one part's bytes replaced (same size) and its crc32 updated: reaches the encoding's validator."""
    manifest, data = split(blob)
    return assemble(manifest, replace_part(manifest, data, name, role, np.asarray(array).tobytes()),
                    minor=manifest["version"][1])


def _raw_scale_1e400(seed_blob):
    """A ternary_seed whose 'scale' is the JSON number 1e400 (valid JSON, infinite as a double)."""
    manifest, data = split(seed_blob)
    text = json.dumps(manifest).encode().replace(b'"scale": 0.5', b'"scale": 1e400', 1)
    assert b"1e400" in text
    return assemble(text, data, minor=manifest["version"][1])


def main(out: Path = HERE) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, build in GOLDEN.items():
        manifest, stored, expected = build()
        write_model(out / f"{name}.tasr", manifest, stored)
        version = split((out / f"{name}.tasr").read_bytes())[0]["version"]
        (out / f"{name}.json").write_text(json.dumps(_expected(version, manifest, expected), indent=1) + "\n")
    blob, expected = _minor_newer()
    (out / "minor_newer.tasr").write_bytes(blob)
    (out / "minor_newer.json").write_text(json.dumps(expected, indent=1) + "\n")

    invalid = out / "invalid"
    invalid.mkdir(exist_ok=True)
    cases = {**_dense_cases(), **_manifest_text_cases(), **_encoding_cases()}
    for name, (blob, _) in cases.items():
        (invalid / f"{name}.tasr").write_bytes(blob)
    table = {f"{name}.tasr": message for name, (_, message) in cases.items()}
    (invalid / "cases.json").write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
