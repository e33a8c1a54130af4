""".tasr bytes assembled straight from the header table of docs/format.md, without tinyasr.

The tests and tests/data/format/regenerate.py build damaged and hand-made files with these, so the
reader is tested against the spec rather than against its own writer.
"""

import json
import struct
import zlib

HEADER = "<8sHHIQIIQQ12s"  # header bytes 0..59; bytes 60..63 are the crc32 of these
MAGIC = b"TASR\r\n\x1a\n"


def assemble(manifest, data=b"", *, magic=MAGIC, major=1, minor=0, bom=0x01020304, flags=0,
             reserved=bytes(12), data_offset=None, data_length=None, manifest_crc=None, header_crc=None):
    """A file from a manifest (dict, or raw bytes) and a data section; any header field can be overridden.

    Lengths, offsets and crc32s are made valid unless given; ``minor`` must match the manifest's version.
    """
    text = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    aligned = (64 + len(text) + 63) // 64 * 64
    head = struct.pack(HEADER, magic, major, minor, bom, len(text),
                       zlib.crc32(text) if manifest_crc is None else manifest_crc, flags,
                       aligned if data_offset is None else data_offset,
                       len(data) if data_length is None else data_length, reserved)
    head += struct.pack("<I", zlib.crc32(head) if header_crc is None else header_crc)
    return head + text + bytes(aligned - 64 - len(text)) + data


def split(blob):
    """(manifest dict, data section bytes) of a well-formed file."""
    fields = struct.unpack(HEADER, blob[:60])
    length, data_offset = fields[4], fields[7]
    return json.loads(blob[64 : 64 + length]), blob[data_offset:]


def entry_of(manifest, name):
    return next(e for e in manifest["tensors"] if e["name"] == name)


def part_of(manifest, name, role):
    return next(p for p in entry_of(manifest, name)["parts"] if p["role"] == role)


def replace_part(manifest, data, name, role, raw: bytes):
    """Data with a part's bytes replaced (same length) and the manifest's crc32 of it updated."""
    part = part_of(manifest, name, role)
    assert len(raw) == part["nbytes"], (name, role)
    part["crc32"] = zlib.crc32(raw)
    return data[: part["offset"]] + raw + data[part["offset"] + len(raw):]
