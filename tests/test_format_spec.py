"""docs/format.md against its test files: golden files decode to their expectations in tinyasr and in an
independent reader written from the spec (tests/format_reader.py), the files regenerate byte for byte,
old files still load, and every hostile file in invalid/ is refused with its own message."""

import importlib.util
import json
from pathlib import Path

import format_reader
import numpy as np
import pytest
from tasr_bytes import split

from tinyasr.errors import ModelFileError
from tinyasr.format.container import read_model
from tinyasr.format.encodings.sparse import ENCODED_TYPES
from tinyasr.format.encodings.ternary import TernaryWeight

FORMAT = Path(__file__).parent / "data" / "format"
GOLDEN = sorted(p.relative_to(FORMAT).with_suffix("").as_posix()
                for p in [*FORMAT.glob("*.tasr"), *FORMAT.glob("old/*.tasr")])
INVALID = json.loads((FORMAT / "invalid" / "cases.json").read_text())


def _expected(name):
    return json.loads((FORMAT / f"{name}.json").read_text())


def _reference(want) -> np.ndarray:
    return np.array(want["values"], dtype=want["dtype"]).reshape(want["shape"])


def _same(got: np.ndarray, want: dict, where: str) -> None:
    """Dense data bit for bit (-0.0 included); an encoding's decoding value for value (its zeros carry no sign)."""
    reference = _reference(want)
    assert got.dtype == reference.dtype and got.shape == reference.shape, where
    if want["encoding"] == "dense":
        assert got.tobytes() == reference.tobytes(), where
    else:
        np.testing.assert_array_equal(got, reference, err_msg=where)


def _logical(decoded) -> np.ndarray:
    """What ModelFile.tensor returns, as the logical tensor of the spec."""
    if isinstance(decoded, TernaryWeight):
        return decoded.dense()
    if isinstance(decoded, ENCODED_TYPES):
        return decoded.to_dense()
    return decoded


def test_the_golden_set_is_complete():
    assert {"basic", "dtypes", "csr", "bsr", "int8", "ternary_seed", "ternary_index", "minor_newer",
            "old/basic_1.0", "old/ternary_1.0", "old/csr_ternary_1.1"} <= set(GOLDEN)
    stored = set()
    for name in GOLDEN:
        with read_model(FORMAT / f"{name}.tasr") as mf:
            for tensor in mf.tensor_names():
                entry = mf.entry(tensor)
                stored |= {(entry.encoding, part.role, part.dtype) for part in entry.parts}
                stored |= {(entry.encoding, "params", key) for key in entry.params}
    dense = {("dense", "data", dtype) for dtype in
             ("float32", "float16", "int64", "int32", "int16", "int8", "uint16", "uint8", "bool")}
    sparse = {(encoding, role, dtype) for encoding in ("csr", "bsr")
              for role, dtype in [("values", "float32"), ("values", "float16"), ("indices", "uint16"),
                                  ("indices", "int32"), ("indptr", "int32")]}
    ternary = {("ternary_seed", "scales", "float32"), ("ternary_seed", "params", "scale"),
               ("ternary_index", "plus", "uint16"), ("ternary_index", "minus_ptr", "int32")}
    needed = dense | sparse | ternary | {("dense", "params", "upcast_to"), ("bsr", "params", "block"),
                                         ("int8", "values", "int8"), ("int8", "scales", "float32")}
    assert needed <= stored, sorted(needed - stored)


@pytest.mark.parametrize("name", GOLDEN)
def test_tinyasr_decodes_golden_file(name):
    expected = _expected(name)
    with read_model(FORMAT / f"{name}.tasr") as mf:
        assert list(mf.version) == expected["version"] and mf.opset == 17
        for key, value in expected["manifest"].items():
            assert mf.manifest[key] == value, key
        assert mf.tensor_names() == list(expected["tensors"])
        for tensor, want in expected["tensors"].items():
            assert (mf.entry(tensor).encoding, mf.entry(tensor).params) == (want["encoding"], want["params"])
            _same(_logical(mf.tensor(tensor)), want, f"{name}: {tensor}")


@pytest.mark.parametrize("name", GOLDEN)
def test_independent_reader_decodes_golden_file(name):
    expected = _expected(name)
    version, manifest, tensors = format_reader.read(FORMAT / f"{name}.tasr")
    assert list(version) == expected["version"]
    assert {k: manifest[k] for k in expected["manifest"]} == expected["manifest"]
    assert list(tensors) == list(expected["tensors"])
    for tensor, want in expected["tensors"].items():
        _same(tensors[tensor], want, f"{name}: {tensor}")


def test_independent_reader_checks_crcs(tmp_path):
    blob = bytearray((FORMAT / "csr.tasr").read_bytes())
    blob[-1] ^= 1
    (tmp_path / "damaged.tasr").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="tensor b part indptr"):
        format_reader.read(tmp_path / "damaged.tasr")


def test_each_file_declares_the_version_its_encodings_need():
    declared = {name: _expected(name)["version"] for name in ("basic", "csr", "bsr", "int8", "ternary_seed",
                                                              "ternary_index", "old/ternary_1.0",
                                                              "old/csr_ternary_1.1")}
    assert declared == {"basic": [1, 0], "csr": [1, 1], "bsr": [1, 1], "int8": [1, 1], "ternary_seed": [1, 2],
                        "ternary_index": [1, 2],
                        # written before ternary had a version of its own, and still read (version history)
                        "old/ternary_1.0": [1, 0], "old/csr_ternary_1.1": [1, 1]}
    assert "opset" not in split((FORMAT / "old" / "basic_1.0.tasr").read_bytes())[0]


def test_bundled_model_states_its_opset_and_the_oldest_version_that_reads_it():
    """Dense weights only: readers of 1.0 read it (they ignore the opset key); files from before 1.2 without
    the key are in tests/data/format/old/."""
    with read_model(Path(__file__).parents[1] / "tinyasr" / "models" / "digits.tasr") as mf:
        assert mf.version == (1, 0) and mf.manifest["opset"] == 17 and mf.opset == 17


def test_regenerate_reproduces_the_committed_files(tmp_path):
    spec = importlib.util.spec_from_file_location("regenerate_format", FORMAT / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(FORMAT).as_posix() for p in FORMAT.rglob("*")
                       if p.is_file() and p.parts[-2] != "old" and p.name != "regenerate.py"
                       and "__pycache__" not in p.parts)
    assert written == committed
    for name in written:
        assert (tmp_path / name).read_bytes() == (FORMAT / name).read_bytes(), name


def test_invalid_folder_holds_exactly_the_listed_cases():
    files = sorted(p.name for p in (FORMAT / "invalid").glob("*.tasr"))
    assert files == sorted(INVALID) and len(files) > 60
    assert all(p.stat().st_size <= 16 * 1024 for p in (FORMAT / "invalid").glob("*.tasr"))


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_file_is_refused_with_its_message(name):
    path = FORMAT / "invalid" / name
    with pytest.raises(ModelFileError) as info:
        read_model(path).close()
    assert INVALID[name] in info.value.problem
    assert str(path) in str(info.value)


def test_the_spec_lists_every_op_the_runtime_runs():
    from tinyasr.ops import SUPPORTED_OPS

    spec = (Path(__file__).parents[1] / "docs" / "format.md").read_text()
    listed = spec.split("Ops tinyasr runs (`tinyasr/ops/`): ", 1)[1].split(".  `Conv` is 1-D", 1)[0]
    assert sorted(op.strip() for op in listed.replace("\n", " ").split(",")) == sorted(SUPPORTED_OPS)
