"""The .tasr reader and writer against docs/format.md.

Corrupted files are assembled here with ``struct`` straight from the spec's header table,
independently of the writer, so the reader is tested against the spec, not against itself.
"""

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyasr.errors import ConversionError, ModelFileError
from tinyasr.format.container import (ENCODINGS, EncodedTensor, Encoding, ModelFile, describe, read_model, to_float16, write_model)

GOLDEN = Path(__file__).parent / "data" / "format"
SPEC_HEADER = "<8sHHIQIIQQ12s"  # header bytes 0..59; bytes 60..63 are the crc32 of these
SPEC_MAGIC = b"TASR\r\n\x1a\n"
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


# --------------------------------------------------------------------------- spec-level assembly


def assemble(manifest, data=b"", *, magic=SPEC_MAGIC, major=1, minor=0, bom=0x01020304, flags=0,
             reserved=bytes(12), data_offset=None, data_length=None, manifest_crc=None, header_crc=None):
    """Build a file byte by byte from the header table in docs/format.md."""
    text = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    aligned = (64 + len(text) + 63) // 64 * 64
    head = struct.pack(SPEC_HEADER, magic, major, minor, bom, len(text),
                       zlib.crc32(text) if manifest_crc is None else manifest_crc, flags,
                       aligned if data_offset is None else data_offset,
                       len(data) if data_length is None else data_length, reserved)
    head += struct.pack("<I", zlib.crc32(head) if header_crc is None else header_crc)
    return head + text + bytes(aligned - 64 - len(text)) + data


def split(blob):
    """(manifest dict, data section bytes) of a file, parsed with struct from the spec."""
    fields = struct.unpack(SPEC_HEADER, blob[:60])
    length, data_offset = fields[4], fields[7]
    return json.loads(blob[64 : 64 + length]), blob[data_offset:]


def entry_of(manifest, name):
    return next(e for e in manifest["tensors"] if e["name"] == name)


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
        SPEC_HEADER, blob[:60])
    assert (magic, major, minor, bom, flags, reserved) == (SPEC_MAGIC, 1, 0, 0x01020304, 0, bytes(12))
    assert struct.unpack("<I", blob[60:64])[0] == zlib.crc32(blob[:60])
    assert crc == zlib.crc32(blob[64 : 64 + length])
    assert data_offset == math.ceil((64 + length) / 64) * 64 and data_offset + data_length == len(blob)
    manifest, _ = split(blob)
    assert manifest["format"] == "tasr" and manifest["version"] == [1, 0]
    assert [e["name"] for e in manifest["tensors"]] == list(BASE_TENSORS)


# --------------------------------------------------------------------------- golden files


@pytest.mark.parametrize("name", ["basic", "dtypes", "minor_newer"])
def test_golden_file_decodes_exactly(name):
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    with read_model(GOLDEN / f"{name}.tasr") as mf:
        assert list(mf.version) == expected["version"]
        for key, value in expected["manifest"].items():
            assert mf.manifest[key] == value
        assert mf.tensor_names() == list(expected["tensors"])
        for tensor_name, want in expected["tensors"].items():
            got, entry = mf.tensor(tensor_name), mf.entry(tensor_name)
            assert (entry.encoding, entry.params) == (want["encoding"], want["params"])
            assert got.dtype == np.dtype(want["dtype"]) and list(got.shape) == want["shape"]
            reference = np.array(want["values"], dtype=want["dtype"]).reshape(want["shape"])
            assert got.tobytes() == reference.tobytes()  # bit-exact, -0.0 included


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


@pytest.mark.parametrize("mutate, pattern", [
    (lambda b: b[:10], "too short"),
    (lambda b: b"", "too short"),
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\0", "trailing bytes"),
    (lambda b: b"GGUF" + b[4:], "wrong magic"),
    (lambda b: b[:48] + b"\1" + b[49:], "header crc32"),
    (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], "manifest crc32"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 0x40]), "tensor 'mask' part 'data': crc32"),
])
def test_refuses_damaged_bytes(tmp_path, valid, mutate, pattern):
    refused(tmp_path, mutate(valid.read_bytes()), pattern)


def test_refuses_bad_header_fields(tmp_path, valid):
    manifest, data = split(valid.read_bytes())
    text = json.dumps(manifest).encode()
    refused(tmp_path, assemble(manifest, data, major=2), "unknown format version 2.0")
    refused(tmp_path, assemble(manifest, data, bom=0x04030201), "byte-order mark")
    refused(tmp_path, assemble(manifest, data, flags=1), "non-zero flags or reserved")
    refused(tmp_path, assemble(manifest, data, reserved=b"\1" + bytes(11)), "non-zero flags or reserved")
    refused(tmp_path, assemble(manifest, data, data_offset=len(text) + 64 + 128), "data offset")
    refused(tmp_path, assemble(manifest, data, data_length=2**63), "truncated")
    refused(tmp_path, assemble(manifest, data, manifest_crc=0), "manifest crc32")
    huge = assemble(manifest, data)[:16] + struct.pack("<Q", 65 * 2**20)
    huge = huge + assemble(manifest, data)[24:60]
    refused(tmp_path, huge + struct.pack("<I", zlib.crc32(huge)) + b"x" * 64, "manifest length")


def test_newer_minor_version_is_read(tmp_path, valid):
    manifest, data = split(valid.read_bytes())
    manifest["version"] = [1, 3]
    path = tmp_path / "newer.tasr"
    path.write_bytes(assemble(manifest, data, minor=3, flags=8))
    with read_model(path) as mf:
        np.testing.assert_array_equal(mf.tensor("w"), BASE_TENSORS["w"])


@pytest.mark.parametrize("text, pattern", [
    (b"\xff\xfe{}", "not UTF-8"),
    (b"{\"graph\": ", "not JSON"),
    (b"{\"a\": " + b"9" * 5000 + b"}", "not JSON: Exceeds the limit"),
    (b"[1, 2]", "must be a JSON object, got list"),
    (b"{\"a\": 1, \"a\": 2}", "duplicate key 'a'"),
    (b"{\"a\": NaN}", "NaN, which is not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"{\"a\":" * 65 + b"1" + b"}" * 65, "nested deeper than 64"),
    (b"{\"format\": \"tasr\"}", r"missing keys \['version', 'tensors'"),
])
def test_refuses_bad_manifest_text(tmp_path, text, pattern):
    refused(tmp_path, assemble(text), pattern)


@pytest.mark.parametrize("change, pattern", [
    (lambda m, d: m.update(version=[1, 1]), r"header says 'tasr' \[1, 0\]"),
    (lambda m, d: m.update(format="gguf"), "format 'gguf'"),
    (lambda m, d: m.update(frontend=[1]), "'frontend' must be an object or null"),
    (lambda m, d: m.update(provenance=None), "'provenance' must be an object"),
    (lambda m, d: m.update(tensors={}), "'tensors' must be a list"),
    (lambda m, d: m.update(tensors=[{"name": f"t{i}"} for i in range(100_001)]), "at most 100000"),
    (lambda m, d: m["tensors"].append(dict(m["tensors"][0])), "duplicate tensor name 'w'"),
    (lambda m, d: entry_of(m, "w").update(encoding="zstd"), "tensor 'w': unknown encoding 'zstd'"),
    (lambda m, d: entry_of(m, "w").update(dtype="float64"), "tensor 'w': unknown dtype 'float64'"),
    (lambda m, d: entry_of(m, "w").update(name="n" * 1025), "1 to 1024 characters"),
    (lambda m, d: entry_of(m, "w").update(name=7), "tensor name must be a string"),
    (lambda m, d: entry_of(m, "w").pop("parts"), "'w' is missing key 'parts'"),
    (lambda m, d: entry_of(m, "w").update(shape=[1] * 9), "at most 8 dims"),
    (lambda m, d: entry_of(m, "w").update(shape=[2, -3, 1]), "dims must be integers"),
    (lambda m, d: entry_of(m, "w").update(shape=[2, 3.0, 1]), "dims must be integers"),
    (lambda m, d: entry_of(m, "w").update(shape=[2, 3, 2]), "dense part is float32"),
    (lambda m, d: entry_of(m, "w").update(params={"upcast_to": "float32"}), "upcast_to"),
    (lambda m, d: entry_of(m, "w").update(params={"scale": 2}), "unknown dense params"),
    (lambda m, d: entry_of(m, "w")["parts"].append(dict(entry_of(m, "w")["parts"][0])), "two parts share a role"),
    (lambda m, d: entry_of(m, "w")["parts"][0].update(role="values"), "exactly one part 'data'"),
    (lambda m, d: entry_of(m, "w")["parts"][0].update(dtype="bfloat16"), "unknown dtype 'bfloat16'"),
    (lambda m, d: entry_of(m, "w")["parts"][0].update(shape=[2, 3, 2]), "needs 48 bytes but nbytes is 24"),
    (lambda m, d: entry_of(m, "w")["parts"][0].update(shape=[2**31 - 1] * 8), "needs .* bytes but nbytes is 24"),
    (lambda m, d: entry_of(m, "w")["parts"][0].update(shape=[2**31] * 3), "dims must be integers"),
    (lambda m, d: entry_of(m, "w")["parts"][0].update(offset=2**40), "outside the data section"),
    (lambda m, d: entry_of(m, "w")["parts"][0].update(nbytes=-24), "outside the data section"),
    (lambda m, d: entry_of(m, "w")["parts"][0].update(offset=-64), "outside the data section"),
    (lambda m, d: entry_of(m, "w")["parts"][0].update(offset=8), "offset 8 is misaligned"),
    (lambda m, d: entry_of(m, "w")["parts"][0].update(crc32=2**32), "crc32 < 2"),
    (lambda m, d: entry_of(m, "b")["parts"][0].update(offset=0),
     "'w' part 'data' bytes \\[0, 24\\) overlap tensor 'b'"),
    (lambda m, d: d.__setitem__(40, 1), r"non-zero padding bytes in the data section at \[24, 64\)"),
    (lambda m, d: entry_of(m, "w")["parts"][0].pop("crc32"), "missing key 'crc32'"),
    (lambda m, d: m["graph"]["nodes"][0]["inputs"].__setitem__(1, "w_missing"), "invalid graph: .*'w_missing'"),
    (lambda m, d: m.update(graph=[]), "invalid graph: graph description must be an object"),
])
def test_refuses_inconsistent_manifest(tmp_path, valid, change, pattern):
    manifest, data = split(valid.read_bytes())
    data = bytearray(data)
    change(manifest, data)
    refused(tmp_path, assemble(manifest, bytes(data)), pattern)


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


def test_refuses_bool_bytes_other_than_0_1(tmp_path, valid):
    manifest, data = split(valid.read_bytes())
    part = entry_of(manifest, "mask")["parts"][0]
    data = bytearray(data)
    data[part["offset"]] = 2
    part["crc32"] = zlib.crc32(data[part["offset"] : part["offset"] + 2])
    refused(tmp_path, assemble(manifest, bytes(data)), "'mask' part 'data': bool bytes must be 0 or 1")


# --------------------------------------------------------------------------- fuzzing


def _same_as_base(path):
    with read_model(path) as mf:
        for name, original in BASE_TENSORS.items():
            assert mf.tensor(name).tobytes() == original.tobytes()


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_random_corruption_loads_identical_data_or_is_refused(tmp_path, valid, data):
    blob = bytearray(valid.read_bytes())
    if data.draw(st.booleans(), "truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), "length")]
    for _ in range(data.draw(st.integers(1, 4), "flips")):
        if blob:
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    path = tmp_path / "fuzz.tasr"
    path.write_bytes(bytes(blob))
    try:
        _same_as_base(path)
    except ModelFileError:
        pass


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
                mf.tensor(name)
            describe(mf)
    except ModelFileError:
        pass


def test_model_file_is_a_context_manager(valid):
    with read_model(valid) as mf:
        assert isinstance(mf, ModelFile)
        assert mf.graph.outputs[0].name == "y"
    assert mf._mm is None
