"""The .tasr reader and writer: the Python API, writing, and damage found at random.

Files are taken apart and assembled with tests/tasr_bytes.py, straight from the spec's header table,
so the reader is tested against the spec, not against its own writer.  The spec's test files (golden,
old and invalid ones) are checked in tests/test_format_spec.py.
"""

import math
import re
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tasr_bytes import HEADER, MAGIC, assemble, entry_of, split

from tinyasr.errors import ConversionError, ModelFileError
from tinyasr.format.container import (ENCODINGS, EncodedTensor, Encoding, ModelFile, describe, read_model, to_float16, write_model)

GOLDEN = Path(__file__).parent / "data" / "format"
PROVENANCE = {"source": "t.onnx", "source_sha256": "ab" * 32, "converter": "tinyasr 0.1.0", "source_format": "onnx"}


def conv_graph(weight="w", bias="b"):
    return {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3, "T"]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 2, "T"]}],
        "nodes": [{"name": "conv", "op": "Conv", "inputs": ["x", weight, bias], "outputs": ["y"]}],
    }


def base_manifest(graph=None):
    return {"graph": graph or conv_graph(), "frontend": None, "decoder": None, "provenance": PROVENANCE}


BASE_TENSORS = {
    "w": np.arange(6, dtype=np.float32).reshape(2, 3, 1) - 2.5,
    "b": np.array([0.5, -1.0], np.float32),
    "idx": np.array([3, -4, 5], np.int64),
    "mask": np.array([True, False]),
}


@pytest.fixture
def valid(tmp_path):
    path = tmp_path / "valid.tasr"
    write_model(path, base_manifest(), BASE_TENSORS)
    return path


# --------------------------------------------------------------------------- spec-level files


def refused(tmp_path, blob, pattern):
    path = tmp_path / "bad.tasr"
    path.write_bytes(blob)
    with pytest.raises(ModelFileError, match=pattern) as info:
        read_model(path)
    assert str(path) in str(info.value)
    return info.value


def test_hand_assembled_file_is_accepted(tmp_path):
    values = np.array([[1.5, -2.0, 0.0], [4.25, 8.0, -0.5]], "<f4")
    data = values.tobytes() + bytes(64 - values.nbytes) + np.array([7, -9], "<i8").tobytes()
    tensors = [
        {"name": "w", "encoding": "dense", "dtype": "float32", "shape": [2, 3, 1],
         "parts": [{"role": "data", "dtype": "float32", "shape": [2, 3, 1], "offset": 0, "nbytes": 24,
                    "crc32": zlib.crc32(data[:24])}]},
        {"name": "b", "encoding": "dense", "dtype": "int64", "shape": [2],
         "parts": [{"role": "data", "dtype": "int64", "shape": [2], "offset": 64, "nbytes": 16,
                    "crc32": zlib.crc32(data[64:])}]},
    ]
    manifest = {"format": "tasr", "version": [1, 0], "tensors": tensors, **base_manifest()}
    path = tmp_path / "hand.tasr"
    path.write_bytes(assemble(manifest, data))
    with read_model(path) as mf:
        np.testing.assert_array_equal(mf.tensor("w"), values.reshape(2, 3, 1))
        np.testing.assert_array_equal(mf.tensor("b"), [7, -9])
        assert mf.graph.nodes[0].inputs == ("x", "w", "b")


def test_hex_dump_in_the_spec_is_the_golden_file():
    spec = (Path(__file__).parents[1] / "docs" / "format.md").read_text()
    rows = [line for line in spec.splitlines() if line.startswith("000000")]
    blob = (GOLDEN / "basic.tasr").read_bytes()
    assert len(rows) == 5
    for row in rows:
        offset = int(row[:8], 16)
        assert bytes.fromhex(row[10:49].replace(" ", "")) == blob[offset : offset + 16], row


def test_writer_header_matches_spec(valid):
    blob = valid.read_bytes()
    magic, major, minor, bom, length, crc, flags, data_offset, data_length, reserved = struct.unpack(
        HEADER, blob[:60])
    assert (magic, major, minor, bom, flags, reserved) == (MAGIC, 1, 0, 0x01020304, 0, bytes(12))
    assert struct.unpack("<I", blob[60:64])[0] == zlib.crc32(blob[:60])
    assert crc == zlib.crc32(blob[64 : 64 + length])
    assert data_offset == math.ceil((64 + length) / 64) * 64 and data_offset + data_length == len(blob)
    manifest, _ = split(blob)
    assert manifest["format"] == "tasr" and manifest["version"] == [1, 0] and manifest["opset"] == 17
    assert [e["name"] for e in manifest["tensors"]] == list(BASE_TENSORS)


# --------------------------------------------------------------------------- round trip, alignment, zero copy

DTYPE_NAMES = ["float32", "float16", "int64", "int32", "int16", "int8", "uint16", "uint8", "bool"]
SHAPES = [(), (0,), (1,), (7,), (3, 0, 2), (2, 3, 5), (1, 1, 1, 1, 1, 1, 1, 2)]


def sample(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def test_round_trip_every_dtype_and_shape(tmp_path):
    tensors = {f"{d}_{i}": sample(d, s, i) for d in DTYPE_NAMES for i, s in enumerate(SHAPES)}
    tensors.update(BASE_TENSORS)
    path = tmp_path / "all.tasr"
    write_model(path, base_manifest(), tensors)
    with read_model(path) as mf:
        assert mf.tensor_names() == list(tensors)
        for name, original in tensors.items():
            got = mf.tensor(name)
            assert got.dtype == original.dtype and got.shape == original.shape, name
            assert got.tobytes() == original.tobytes(), name


def test_every_part_is_64_byte_aligned_and_zero_copy(tmp_path):
    tensors = {f"t{i}": np.ones(n, np.float32) for i, n in enumerate([1, 3, 16, 17, 100])}
    tensors.update(BASE_TENSORS)
    path = tmp_path / "a.tasr"
    write_model(path, base_manifest(), tensors)
    manifest, _ = split(path.read_bytes())
    assert all(p["offset"] % 64 == 0 for e in manifest["tensors"] for p in e["parts"])
    with read_model(path) as mf:
        whole = np.frombuffer(mf._mm, np.uint8)
        for name in tensors:
            view = mf.tensor(name)
            assert view.ctypes.data % 64 == 0
            assert not view.flags.owndata and not view.flags.writeable
            assert np.shares_memory(view, whole), name
            with pytest.raises(ValueError):
                view[...] = 0


def test_arrays_stay_valid_after_close(valid):
    mf = read_model(valid)
    w = mf.tensor("w")
    mf.close()
    np.testing.assert_array_equal(w, BASE_TENSORS["w"])
    with pytest.raises(ModelFileError, match="closed"):
        mf.tensor("b")
    with pytest.raises(ModelFileError, match="no tensor named 'nope'"):
        mf.entry("nope")


def test_float16_storage(tmp_path):
    weights = np.array([[0.1, -3.5, 1000.0]], np.float32)
    path = tmp_path / "h.tasr"
    write_model(path, base_manifest(), {**BASE_TENSORS, "w": to_float16(weights)})
    with read_model(path) as mf:
        got = mf.tensor("w")
        assert got.dtype == np.float16 and mf.entry("w").params == {"upcast_to": "float32"}
        np.testing.assert_array_equal(got, weights.astype(np.float16))
        assert mf.entry("w").nbytes == weights.size * 2
    with pytest.raises(ConversionError, match="'big'.*float16 range"):
        to_float16(np.array([1e6], np.float32), "big")
    with pytest.raises(ConversionError, match="only float32"):
        to_float16(np.array([1], np.int32))


def test_writer_is_deterministic_and_atomic(tmp_path, valid):
    again = tmp_path / "again.tasr"
    write_model(again, base_manifest(), BASE_TENSORS)
    assert again.read_bytes() == valid.read_bytes()
    before = valid.read_bytes()
    with pytest.raises(ModelFileError, match="invalid graph"):  # 'w' missing: the re-read refuses it
        write_model(valid, base_manifest(), {"b": BASE_TENSORS["b"]})
    assert valid.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.tasr", "valid.tasr"]


@pytest.mark.parametrize("manifest, tensors, pattern", [
    ({**base_manifest(), "tensors": []}, BASE_TENSORS, r"keys \['tensors'\] are written by the writer"),
    ({"graph": conv_graph()}, BASE_TENSORS, r"keys \['frontend', 'decoder', 'provenance'\] are missing"),
    (base_manifest(), {**BASE_TENSORS, "w": np.zeros(2)}, "'w' part 'data': dtype float64 cannot be stored"),
    ({**base_manifest(), "extra": float("nan")}, BASE_TENSORS, "cannot be written as JSON"),
    (base_manifest(), {**BASE_TENSORS, "w": EncodedTensor("zstd", "float32", (2,), {})}, "unknown encoding 'zstd'"),
])
def test_writer_refuses_bad_input(tmp_path, manifest, tensors, pattern):
    with pytest.raises(ModelFileError, match=pattern):
        write_model(tmp_path / "x.tasr", manifest, tensors)
    assert list(tmp_path.iterdir()) == []


def test_describe_counts_bytes_parameters_and_zeros(tmp_path):
    w = np.array([[0.0, 1.0, 0.0, 2.0]], np.float32).reshape(1, 4, 1)
    path = tmp_path / "d.tasr"
    write_model(path, base_manifest(), {**BASE_TENSORS, "w": w, "b": to_float16(np.zeros(3, np.float32))})
    info = describe(path)
    rows = {r["name"]: r for r in info["tensors"]}
    assert rows["w"] == {"name": "w", "encoding": "dense", "dtype": "float32", "shape": [1, 4, 1],
                         "bytes": w.nbytes, "parameters": w.size, "sparsity": 0.5}
    assert rows["b"]["bytes"] == 6 and rows["b"]["sparsity"] == 1.0
    assert rows["idx"]["sparsity"] is None and rows["mask"]["bytes"] == 2
    assert info["tensor_count"] == 4 and info["version"] == "1.0"
    assert info["parameters"] == 4 + 3 + 3 + 2
    assert info["tensor_bytes"] == sum(r["bytes"] for r in info["tensors"])


def _validate_scaled(entry, parts):
    if parts["values"].shape != entry.shape or parts["scales"].shape != entry.shape[:1]:
        raise ValueError("values must have the tensor's shape and scales one value per row")


def test_new_encoding_needs_only_a_validator_and_a_decoder(tmp_path, monkeypatch):
    """A per-row int8 encoding, registered here only: the container and the writer need no change."""
    scaled = Encoding("scaled_int8", _validate_scaled,
                      lambda entry, parts: parts["values"] * parts["scales"][:, None, None],
                      lambda entry, parts: int(np.count_nonzero(parts["values"])))
    monkeypatch.setitem(ENCODINGS, "scaled_int8", scaled)
    values, scales = np.array([[[1], [0], [-3]], [[0], [0], [2]]], np.int8), np.array([0.5, 4.0], np.float32)
    weight = EncodedTensor("scaled_int8", "float32", (2, 3, 1), {"values": values, "scales": scales})
    path = tmp_path / "s.tasr"
    write_model(path, base_manifest(), {**BASE_TENSORS, "w": weight})
    with read_model(path) as mf:
        np.testing.assert_array_equal(mf.tensor("w"), values.astype(np.float32) * scales[:, None, None])
        assert [p.role for p in mf.entry("w").parts] == ["values", "scales"]
    assert {r["name"]: r["sparsity"] for r in describe(path)["tensors"]}["w"] == 0.5
    with pytest.raises(ModelFileError, match="'w' \\(scaled_int8\\): values must have"):
        write_model(path, base_manifest(), {**BASE_TENSORS, "w": EncodedTensor(
            "scaled_int8", "float32", (2, 3, 1), {"values": values, "scales": scales[:1]})})
    monkeypatch.delitem(ENCODINGS, "scaled_int8")
    with pytest.raises(ModelFileError, match="unknown encoding 'scaled_int8'.*newer tinyasr"):
        read_model(path)


# --------------------------------------------------------------------------- refusals


def test_refuses_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelFileError, match="cannot open"):
        read_model(tmp_path / "missing.tasr")
    with pytest.raises(ModelFileError, match="cannot open"):
        read_model(tmp_path)


def test_verify_false_skips_only_the_crc_pass(tmp_path, valid):
    manifest, data = split(valid.read_bytes())
    entry_of(manifest, "w")["parts"][0]["crc32"] ^= 1
    path = tmp_path / "nocrc.tasr"
    path.write_bytes(assemble(manifest, data))
    with read_model(path, verify=False) as mf:
        np.testing.assert_array_equal(mf.tensor("w"), BASE_TENSORS["w"])
    refused(tmp_path, assemble(manifest, data), "'w' part 'data': crc32 mismatch")
    entry_of(manifest, "w")["parts"][0]["offset"] = 8
    path.write_bytes(assemble(manifest, data))
    with pytest.raises(ModelFileError, match="misaligned"):
        read_model(path, verify=False)


def test_refuses_more_than_100000_tensors(tmp_path, valid):
    """The one refusal too big (1.3 MB) for tests/data/format/invalid/."""
    manifest, data = split(valid.read_bytes())
    manifest["tensors"] = [{"name": f"t{i}"} for i in range(100_001)]
    refused(tmp_path, assemble(manifest, data), "'tensors' must be a list of at most 100000 entries")


def test_opset_is_written_and_checked(tmp_path, valid):
    with read_model(valid) as mf:
        assert mf.manifest["opset"] == mf.opset == 17
    with pytest.raises(ModelFileError, match="opset 18 semantics; this reader implements opset 17 only"):
        write_model(tmp_path / "o.tasr", {**base_manifest(), "opset": 18}, BASE_TENSORS)
    manifest, data = split(valid.read_bytes())
    del manifest["opset"]  # as in files written before 1.2
    path = tmp_path / "old.tasr"
    path.write_bytes(assemble(manifest, data))
    with read_model(path) as mf:
        assert mf.opset == 17 and "opset" not in mf.manifest


# --------------------------------------------------------------------------- fuzzing


def _expected_refusal(original: bytes, blob: bytes) -> Optional[str]:
    """What the reader must say of ``blob``, ``original`` truncated and/or with bytes changed (None: unchanged).

    The reader's order of checks (docs/format.md): the size against the header, then the header fields and
    its crc32, the file size, the manifest crc32, the padding before the data, the padding between parts,
    then each tensor's crc32 in table order.  So the first damaged region decides the message.
    """
    if blob == original:
        return None
    if len(blob) < 64:
        return "too short"
    changed = [i for i, (a, b) in enumerate(zip(blob, original)) if a != b]
    header = [i for i in changed if i < 64]
    for first, stop, message in ((0, 8, "wrong magic"), (8, 10, "unknown format version"),
                                 (12, 16, "byte-order mark"), (0, 64, "header crc32 mismatch")):
        if any(first <= i < stop for i in header):
            return message
    if len(blob) < len(original):
        return "truncated"
    fields = struct.unpack(HEADER, original[:60])
    manifest_end, data_offset = 64 + fields[4], fields[7]
    if any(i < manifest_end for i in changed):
        return "manifest crc32 mismatch"
    if any(i < data_offset for i in changed):
        return "non-zero padding between manifest and data section"
    entries = split(original)[0]["tensors"]

    def inside(i, entry):
        return any(0 <= i - data_offset - p["offset"] < p["nbytes"] for p in entry["parts"])

    if any(not any(inside(i, e) for e in entries) for i in changed):
        return "non-zero padding bytes"
    name = next(e["name"] for e in entries if any(inside(i, e) for i in changed))
    return f"tensor {name!r} part 'data': crc32 mismatch"


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_random_corruption_loads_identical_data_or_is_refused_for_its_reason(tmp_path, valid, data):
    """Damage anywhere is refused with the message naming what was damaged; an undamaged file loads as written."""
    original = valid.read_bytes()
    blob = bytearray(original)
    if data.draw(st.booleans(), "truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), "length")]
    for _ in range(data.draw(st.integers(1, 4), "flips")):
        if blob:
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    path = tmp_path / "fuzz.tasr"
    path.write_bytes(bytes(blob))
    expected = _expected_refusal(original, bytes(blob))
    if expected is None:
        with read_model(path) as mf:
            assert mf.manifest == split(original)[0]
            assert {name: mf.tensor(name).tobytes() for name in mf.tensor_names()} == {
                name: array.tobytes() for name, array in BASE_TENSORS.items()}
    else:
        refused(tmp_path, bytes(blob), re.escape(expected))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(data=st.data())
def test_random_manifest_values_load_or_are_refused(tmp_path, valid, data):
    """Structure-aware fuzzing: replace one manifest value with random JSON, crcs made valid."""
    manifest, section = split(valid.read_bytes())
    containers = [manifest]
    holders = []
    while containers:
        node = containers.pop()
        keys = node.keys() if isinstance(node, dict) else range(len(node))
        for key in keys:
            holders.append((node, key))
            if isinstance(node[key], (dict, list)):
                containers.append(node[key])
    node, key = data.draw(st.sampled_from(holders), "target")
    node[key] = data.draw(JSON_VALUES, "value")
    path = tmp_path / "fuzz.tasr"
    path.write_bytes(assemble(manifest, section))
    try:
        with read_model(path) as mf:
            for name in mf.tensor_names():
                entry = entry_of(mf.manifest, name)
                if name in BASE_TENSORS and entry == entry_of(split(valid.read_bytes())[0], name):
                    assert mf.tensor(name).tobytes() == BASE_TENSORS[name].tobytes()  # an untouched entry
                else:
                    mf.tensor(name)
            describe(mf)
    except ModelFileError:
        pass


def test_model_file_is_a_context_manager(valid):
    with read_model(valid) as mf:
        assert isinstance(mf, ModelFile)
        assert mf.graph.outputs[0].name == "y"
    assert mf._mm is None
