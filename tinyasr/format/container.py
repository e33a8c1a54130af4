"""The .tasr model file: a strict reader and an atomic writer (spec: docs/format.md).

Layout: a 64-byte little-endian header, a UTF-8 JSON manifest (graph, frontend,
decoder, provenance, tensor table), then tensor parts each aligned to 64 bytes,
so the reader hands out zero-copy views of a read-only memory map.  The reader
trusts nothing: every size is checked against the file before it is used, and
every problem becomes a ModelFileError naming the file and the fault.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import secrets
import struct
import zlib
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from tinyasr.errors import ConversionError, GraphError, ModelFileError
from tinyasr.format.encodings import ENCODINGS
from tinyasr.format.graph import Graph
from tinyasr.format.values import is_int  # noqa: F401  (re-exported: readers of manifest keys use it)
from tinyasr.format.tensors import DTYPES, FLOAT_DTYPES, EncodedTensor, Encoding, PartEntry, TensorEntry  # noqa: F401  (re-exported)

MAGIC = b"TASR\r\n\x1a\n"
VERSION = (1, 3)  # (major, newest minor) this module knows; it reads any 1.x, writes 1.<newest feature used>
DECODER_MINORS = {"transducer": 3}  # decoder types newer than 1.0, by the minor version that added them
ROW_AXES_MINOR = 3  # the csr / bsr param row_axes (a sparse LSTM / GRU R) came with 1.3
OPSET = 17  # the ONNX (default domain) opset whose semantics graph ops follow: the only one the runtime implements
BYTE_ORDER_MARK = 0x01020304
HEADER = struct.Struct("<8sHHIQIIQQ12sI")  # see the header table in docs/format.md
HEADER_CRC_SPAN = 60  # header_crc32 covers bytes 0..59
ALIGNMENT = 64  # bytes; every part's offset is a multiple of this

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_TENSORS = 100_000
MAX_PARTS = 16
MAX_RANK = 8
MAX_DIM = 2**31 - 1
MAX_NAME_CHARS = 1024
MAX_ROLE_CHARS = 64

REQUIRED_KEYS = ("format", "version", "tensors", "graph", "frontend", "decoder", "provenance")
CALLER_KEYS = ("graph", "frontend", "decoder", "provenance")


class _Refusal(Exception):
    """Internal: a problem found while reading; read_model adds the path and raises ModelFileError."""


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


# --------------------------------------------------------------------------- reading


def _no_duplicate_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _Refusal(f"manifest has a duplicate key {key!r}")
        obj[key] = value
    return obj


def _refuse_constant(name):
    raise _Refusal(f"manifest contains {name}, which is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e400: valid JSON that would become inf
        raise _Refusal(f"manifest number {text[:40]} is outside the range of a double")
    return value


def _json_depth(value) -> int:
    """Deepest nesting of lists/objects, computed without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _parse_shape(raw, what: str) -> Tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_RANK:
        raise _Refusal(f"{what}: shape must be a list of at most {MAX_RANK} dims, got {str(raw)[:80]}")
    if not all(is_int(d) and 0 <= d <= MAX_DIM for d in raw):
        raise _Refusal(f"{what}: shape dims must be integers in [0, {MAX_DIM}], got {str(raw)[:80]}")
    return tuple(raw)


def _parse_dtype(raw, what: str) -> str:
    if not isinstance(raw, str) or raw not in DTYPES:
        raise _Refusal(f"{what}: unknown dtype {str(raw)[:40]!r} (known: {', '.join(DTYPES)})")
    return raw


def _parse_part(raw, tensor: str, data_length: int) -> PartEntry:
    if not isinstance(raw, dict):
        raise _Refusal(f"tensor {tensor!r}: a part must be an object")
    try:
        role, dtype, shape, offset, nbytes, crc = (
            raw[k] for k in ("role", "dtype", "shape", "offset", "nbytes", "crc32")
        )
    except KeyError as exc:
        raise _Refusal(f"tensor {tensor!r}: a part is missing key {exc}") from None
    if not isinstance(role, str) or not 0 < len(role) <= MAX_ROLE_CHARS:
        raise _Refusal(f"tensor {tensor!r}: part role must be a string of 1 to {MAX_ROLE_CHARS} characters")
    what = f"tensor {tensor!r} part {role!r}"
    dtype = _parse_dtype(dtype, what)
    shape = _parse_shape(shape, what)
    if not (is_int(offset) and is_int(nbytes) and is_int(crc) and 0 <= crc < 2**32):
        raise _Refusal(f"{what}: offset, nbytes and crc32 must be non-negative integers (crc32 < 2**32)")
    if offset < 0 or nbytes < 0 or offset + nbytes > data_length:
        raise _Refusal(
            f"{what}: byte range [{offset}, {offset + nbytes}) lies outside the data section "
            f"({data_length} bytes): truncated or corrupted file"
        )
    if offset % ALIGNMENT:
        raise _Refusal(f"{what}: offset {offset} is misaligned (not a multiple of {ALIGNMENT})")
    expected = DTYPES[dtype].itemsize
    for d in shape:  # checked against the file size at each step, so the product stays small
        expected *= d
        if expected > data_length:
            break
    if expected != nbytes:
        raise _Refusal(f"{what}: shape {list(shape)} of {dtype} needs {expected} bytes but nbytes is {nbytes}")
    return PartEntry(role, dtype, shape, offset, nbytes, crc)


def _parse_entry(raw, data_length: int) -> TensorEntry:
    if not isinstance(raw, dict):
        raise _Refusal("every tensor table entry must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
        raise _Refusal(f"tensor name must be a string of 1 to {MAX_NAME_CHARS} characters, got {str(name)[:80]!r}")
    for key in ("encoding", "dtype", "shape", "parts"):
        if key not in raw:
            raise _Refusal(f"tensor {name!r} is missing key {key!r}")
    encoding = raw["encoding"]
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise _Refusal(
            f"tensor {name!r}: unknown encoding {str(encoding)[:40]!r} (this reader knows "
            f"{', '.join(ENCODINGS)}; the file may need a newer tinyasr)"
        )
    dtype = _parse_dtype(raw["dtype"], f"tensor {name!r}")
    shape = _parse_shape(raw["shape"], f"tensor {name!r}")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise _Refusal(f"tensor {name!r}: params must be an object")
    parts_raw = raw["parts"]
    if not isinstance(parts_raw, list) or len(parts_raw) > MAX_PARTS:
        raise _Refusal(f"tensor {name!r}: parts must be a list of at most {MAX_PARTS}")
    parts = tuple(_parse_part(p, name, data_length) for p in parts_raw)
    if len({p.role for p in parts}) != len(parts):
        raise _Refusal(f"tensor {name!r}: two parts share a role")
    return TensorEntry(name, encoding, dtype, shape, parts, params)


def _parse_header(mm, path_size: int) -> Tuple[Tuple[int, int], int, int, int]:
    """Check the header; return (version, manifest_length, data_offset, data_length)."""
    head = mm[: HEADER.size]
    magic, major, minor, bom, man_len, man_crc, flags, data_offset, data_length, reserved, head_crc = (
        HEADER.unpack(head)
    )
    if magic != MAGIC:
        raise _Refusal(f"wrong magic {magic!r} (expected {MAGIC!r}): not a .tasr file")
    if major != VERSION[0]:
        raise _Refusal(
            f"unknown format version {major}.{minor}: this reader reads version {VERSION[0]}.x only"
        )
    if bom != BYTE_ORDER_MARK:
        raise _Refusal(f"byte-order mark is {bom:#010x}, expected {BYTE_ORDER_MARK:#010x} (little-endian)")
    if zlib.crc32(head[:HEADER_CRC_SPAN]) != head_crc:
        raise _Refusal("header crc32 mismatch: the header is corrupted")
    if minor <= VERSION[1] and (flags or any(reserved)):
        raise _Refusal(f"non-zero flags or reserved header bytes in a version 1.{minor} file: corrupted")
    if not 0 < man_len <= MAX_MANIFEST_BYTES:
        raise _Refusal(f"manifest length {man_len} is outside 1..{MAX_MANIFEST_BYTES} bytes")
    if data_offset != _align(HEADER.size + man_len):
        raise _Refusal(f"data offset {data_offset} should be {_align(HEADER.size + man_len)}")
    if data_offset + data_length != path_size:
        raise _Refusal(
            f"file is {path_size} bytes but the header declares {data_offset + data_length}: "
            + ("truncated" if path_size < data_offset + data_length else "trailing bytes")
        )
    if zlib.crc32(mm[HEADER.size : HEADER.size + man_len]) != man_crc:
        raise _Refusal("manifest crc32 mismatch: the manifest is corrupted")
    if any(mm[HEADER.size + man_len : data_offset]):
        raise _Refusal("non-zero padding between manifest and data section")
    return (major, minor), man_len, data_offset, data_length


def _parse_manifest(raw: bytes, version: Tuple[int, int]) -> Dict[str, Any]:
    try:
        text = raw.decode("utf-8")
        manifest = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_refuse_constant,
                              parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise _Refusal(f"manifest is not UTF-8: {exc}") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4300 digits
        raise _Refusal(f"manifest is not JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise _Refusal("manifest JSON is nested too deeply") from None
    if not isinstance(manifest, dict):
        raise _Refusal(f"manifest must be a JSON object, got {type(manifest).__name__}")
    if _json_depth(manifest) > MAX_JSON_DEPTH:
        raise _Refusal(f"manifest JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise _Refusal(f"manifest is missing keys {missing}")
    declared = manifest["version"]
    if manifest["format"] != "tasr" or not (isinstance(declared, list) and all(map(is_int, declared))
                                            and declared == list(version)):
        raise _Refusal(
            f"manifest says format {str(manifest['format'])[:20]!r} version {str(manifest['version'])[:20]}, "
            f"header says 'tasr' {list(version)}"
        )
    for key in ("frontend", "decoder"):
        if manifest[key] is not None and not isinstance(manifest[key], dict):
            raise _Refusal(f"manifest key {key!r} must be an object or null")
    if not isinstance(manifest["provenance"], dict):
        raise _Refusal("manifest key 'provenance' must be an object")
    opset = manifest.get("opset", OPSET)  # files written before 1.2 have no opset: their graphs use opset 17
    if not is_int(opset):
        raise _Refusal(f"manifest key 'opset' must be an integer, got {str(opset)[:20]!r}")
    if opset != OPSET:
        raise _Refusal(f"the graph uses ONNX opset {opset} semantics; this reader implements opset {OPSET} only")
    tensors = manifest["tensors"]
    if not isinstance(tensors, list) or len(tensors) > MAX_TENSORS:
        raise _Refusal(f"manifest 'tensors' must be a list of at most {MAX_TENSORS} entries")
    return manifest


def _check_layout(entries: List[TensorEntry], data: np.ndarray) -> None:
    """Refuse overlapping parts and non-zero bytes between parts."""
    ranges = sorted((p.offset, p.offset + p.nbytes, e.name, p.role) for e in entries for p in e.parts if p.nbytes)
    end, owner = 0, None
    for start, stop, name, role in ranges:
        if start < end:
            raise _Refusal(f"tensor {name!r} part {role!r} bytes [{start}, {stop}) overlap {owner}")
        if data[end:start].any():
            raise _Refusal(f"non-zero padding bytes in the data section at [{end}, {start})")
        end, owner = stop, f"tensor {name!r} part {role!r}"
    if data[end:].any():
        raise _Refusal(f"non-zero padding bytes at the end of the data section, from {end}")


class ModelFile:
    """An open .tasr file: the manifest, the graph and zero-copy tensor views of a read-only memory map.

    Use as a context manager or call close().  Arrays handed out stay valid after close(): the map
    is released when the last view is gone.
    """

    def __init__(self, path: str, mm: mmap.mmap, manifest: Dict[str, Any], entries: Dict[str, TensorEntry],
                 data_offset: int, graph: Graph):
        self.path = path
        self.manifest = manifest
        self.graph = graph
        self.version: Tuple[int, int] = tuple(manifest["version"])
        self.opset: int = manifest.get("opset", OPSET)
        self._mm: Optional[mmap.mmap] = mm
        self._entries = entries
        self._data_offset = data_offset
        self._decoded: Dict[str, Any] = {}

    def tensor_names(self) -> List[str]:
        return list(self._entries)

    def entry(self, name: str) -> TensorEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise ModelFileError(self.path, f"no tensor named {name!r}") from None

    def part_arrays(self, name: str) -> Dict[str, np.ndarray]:
        """The raw parts of a tensor as read-only views, keyed by role."""
        if self._mm is None:
            raise ModelFileError(self.path, "the model file is closed")
        return _part_views(self._mm, self._data_offset, self.entry(name))

    def tensor(self, name: str):
        """The decoded tensor: a read-only np.ndarray view for dense, an encoding's object otherwise."""
        if name not in self._decoded:
            entry = self.entry(name)
            self._decoded[name] = ENCODINGS[entry.encoding].decode(entry, self.part_arrays(name))
        return self._decoded[name]

    def close(self) -> None:
        mm, self._mm = self._mm, None
        self._decoded.clear()
        if mm is not None:
            _close_map(mm)

    def __enter__(self) -> "ModelFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close_map(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:
        pass  # arrays handed out still use the map; it is unmapped when the last one is freed


def _part_views(mm: mmap.mmap, data_offset: int, entry: TensorEntry) -> Dict[str, np.ndarray]:
    views = {}
    for p in entry.parts:
        dtype = DTYPES[p.dtype]
        views[p.role] = np.frombuffer(
            mm, dtype=dtype, count=p.nbytes // dtype.itemsize, offset=data_offset + p.offset
        ).reshape(p.shape)
    return views


def _check_parts(mm: mmap.mmap, data_offset: int, entry: TensorEntry, verify: bool) -> None:
    views = _part_views(mm, data_offset, entry)
    for p in entry.parts:
        raw = views[p.role].reshape(-1).view(np.uint8)
        if verify and zlib.crc32(raw) != p.crc32:
            raise _Refusal(f"tensor {entry.name!r} part {p.role!r}: crc32 mismatch, the data is corrupted")
        if p.dtype == "bool" and raw.max(initial=0) > 1:
            raise _Refusal(f"tensor {entry.name!r} part {p.role!r}: bool bytes must be 0 or 1")
    try:
        ENCODINGS[entry.encoding].validate(entry, views)
    except ValueError as exc:
        raise _Refusal(f"tensor {entry.name!r} ({entry.encoding}): {exc}") from None


def _load(path: str, mm: mmap.mmap, size: int, verify: bool) -> ModelFile:
    version, man_len, data_offset, data_length = _parse_header(mm, size)
    manifest = _parse_manifest(mm[HEADER.size : HEADER.size + man_len], version)
    entries: Dict[str, TensorEntry] = {}
    for raw in manifest["tensors"]:
        entry = _parse_entry(raw, data_length)
        if entry.name in entries:
            raise _Refusal(f"duplicate tensor name {entry.name!r}")
        encoding = ENCODINGS[entry.encoding]
        if encoding.oldest_file_minor > version[1]:
            raise _Refusal(f"tensor {entry.name!r}: encoding {entry.encoding!r} needs format version "
                           f"1.{encoding.minor}, but the file says 1.{version[1]}")
        entries[entry.name] = entry
    _check_layout(list(entries.values()), np.frombuffer(mm, np.uint8, data_length, data_offset))
    for entry in entries.values():
        _check_parts(mm, data_offset, entry, verify)
    try:
        graph = Graph.from_dict(manifest["graph"])
        graph.validate(entries)
    except GraphError as exc:
        raise _Refusal(f"invalid graph: {exc}") from None
    return ModelFile(path, mm, manifest, entries, data_offset, graph)


def read_model(path, verify: bool = True) -> ModelFile:
    """Open and check a .tasr file; raise ModelFileError naming the file and the problem.

    ``verify=False`` skips only the crc32 pass over the tensor data (about 0.5 ms per MB).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < HEADER.size:
                raise ModelFileError(path, f"file is too short ({size} bytes) for the {HEADER.size}-byte header: "
                                           "truncated or not a .tasr file")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise ModelFileError(path, f"cannot open: {exc.strerror or exc}") from None
    try:
        return _load(path, mm, size, verify)
    except _Refusal as exc:
        problem = str(exc)  # leaving the except block frees the traceback and with it the views of mm
    except BaseException:
        _close_map(mm)
        raise
    _close_map(mm)
    raise ModelFileError(path, problem)


# --------------------------------------------------------------------------- writing


def to_float16(array: np.ndarray, name: str = "") -> EncodedTensor:
    """Store a float32 weight as float16 (half the bytes); the runtime upcasts it to float32 at load."""
    array = np.asarray(array)
    if array.dtype != np.float32:
        raise ConversionError(f"tensor {name!r}: only float32 tensors can be stored as float16, got {array.dtype}")
    with np.errstate(over="ignore"):
        half = array.astype("<f2")
    overflow = np.isinf(half) & np.isfinite(array)
    if overflow.any():
        raise ConversionError(
            f"tensor {name!r}: values up to {np.abs(array[overflow]).max():g} exceed the float16 range (65504)"
        )
    return EncodedTensor("dense", "float16", half.shape, {"data": half}, {"upcast_to": "float32"})


def _layout(path: str, tensors: Mapping[str, Any]) -> Tuple[List[dict], List[Tuple[int, np.ndarray]], int]:
    """Assign 64-aligned offsets; return (tensor table, [(offset, little-endian bytes)], data length)."""
    table, blobs, cursor = [], [], 0
    for name, value in tensors.items():
        if isinstance(value, EncodedTensor):
            enc = value
        else:
            array = np.asarray(value)
            enc = EncodedTensor("dense", array.dtype.name, array.shape, {"data": array})
        parts = []
        for role, array in enc.parts.items():
            array = np.asarray(array)
            if array.dtype.name not in DTYPES:
                raise ModelFileError(path, f"tensor {name!r} part {role!r}: dtype {array.dtype} cannot be stored "
                                           f"(storable: {', '.join(DTYPES)})")
            raw = np.ascontiguousarray(array, dtype=DTYPES[array.dtype.name]).reshape(-1).view(np.uint8)
            cursor = _align(cursor)
            parts.append({"role": role, "dtype": array.dtype.name, "shape": list(array.shape),
                          "offset": cursor, "nbytes": raw.size, "crc32": zlib.crc32(raw)})
            blobs.append((cursor, raw))
            cursor += raw.size
        table.append({"name": name, "encoding": enc.encoding, "dtype": enc.dtype,
                      "shape": [int(d) for d in enc.shape], "params": enc.params, "parts": parts})
    return table, blobs, cursor


def write_model(path, manifest: Mapping[str, Any], tensors: Mapping[str, Union[np.ndarray, EncodedTensor]]) -> None:
    """Write a .tasr file atomically (temp file, strict re-read, rename).

    ``manifest`` holds graph, frontend, decoder, provenance (and optional keys: opset, default OPSET;
    streaming, sample_rate, user metadata); the writer adds format, version and the tensor table.
    Plain arrays are stored dense in their own dtype.
    """
    path = os.fspath(path)
    clash = [k for k in ("format", "version", "tensors") if k in manifest]
    missing = [k for k in CALLER_KEYS if k not in manifest]
    if clash or missing:
        raise ModelFileError(
            path, f"write_model manifest: keys {clash} are written by the writer, keys {missing} are missing"
        )
    table, blobs, data_length = _layout(path, tensors)
    # The oldest version that has every encoding and decoder type used, so readers of that version can read the
    # file.  The opset needs none: readers before 1.2 ignore the key and run opset 17, the only opset written so far.
    decoder = manifest.get("decoder")
    kind = decoder.get("type") if isinstance(decoder, Mapping) else None
    decoder_minor = DECODER_MINORS.get(kind, 0) if isinstance(kind, str) else 0
    version = (VERSION[0], max([ENCODINGS[t["encoding"]].minor for t in table if t["encoding"] in ENCODINGS]
                               + [decoder_minor]
                               + [ROW_AXES_MINOR for t in table if "row_axes" in t.get("params", {})]))
    full = {"format": "tasr", "version": list(version), "opset": OPSET, **manifest, "tensors": table}
    try:
        text = json.dumps(full, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ModelFileError(path, f"manifest cannot be written as JSON: {exc}") from None
    data_offset = _align(HEADER.size + len(text))
    head = HEADER.pack(MAGIC, *version, BYTE_ORDER_MARK, len(text), zlib.crc32(text), 0,
                       data_offset, data_length, bytes(12), 0)
    head = head[:HEADER_CRC_SPAN] + struct.pack("<I", zlib.crc32(head[:HEADER_CRC_SPAN]))

    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            f.write(text)
            f.write(bytes(data_offset - f.tell()))
            for offset, raw in blobs:
                f.write(bytes(data_offset + offset - f.tell()))
                f.write(raw.data)
            f.flush()
            os.fsync(f.fileno())
        try:
            read_model(tmp).close()
        except ModelFileError as exc:
            raise ModelFileError(path, exc.problem) from None
        os.replace(tmp, path)
    except OSError as exc:
        raise ModelFileError(path, f"cannot write: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------- inspection


def describe(model_file: Union[ModelFile, str, os.PathLike]) -> Dict[str, Any]:
    """Sizes, encodings and sparsity per tensor, for `tinyasr info`.

    ``sparsity`` is the fraction of zero weights (None where the encoding does not define it).
    """
    if not isinstance(model_file, ModelFile):
        with read_model(model_file) as opened:
            return describe(opened)
    rows = []
    for name in model_file.tensor_names():
        entry = model_file.entry(name)
        nonzero = ENCODINGS[entry.encoding].count_nonzero(entry, model_file.part_arrays(name))
        size = entry.size
        rows.append({
            "name": name, "encoding": entry.encoding, "dtype": entry.dtype, "shape": list(entry.shape),
            "bytes": entry.nbytes, "parameters": size,
            "sparsity": None if nonzero is None or size == 0 else (size - nonzero) / size,
        })
    return {
        "path": model_file.path,
        "version": ".".join(map(str, model_file.version)),
        "tensor_count": len(rows),
        "tensor_bytes": sum(r["bytes"] for r in rows),
        "parameters": sum(r["parameters"] for r in rows),
        "tensors": rows,
    }
