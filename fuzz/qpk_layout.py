"""Split a .qpk file's bytes into preamble fields, stored header and data region, and join
them again with the header length, header CRC and (version 4) header offset recomputed.

Used by fuzz_qpk.py (CRC repair) and make_corpus.py (plain-JSON seeds). Written from
docs/FORMAT.md, not from qpack's reader, so that the harness does not inherit its bugs:

- versions 1-3: 24-byte preamble, header, zero padding to a multiple of 64, data region;
- version 4: 24-byte preamble, uint64 header offset, 32 reserved bytes, data region from
  byte 64, header as the last bytes of the file.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

PREAMBLE = struct.Struct("<8sIIII")  # magic, version, header length, header crc, flags
HEADER_OFFSET = struct.Struct("<Q")  # version 4, right after the preamble
DATA_START_V4 = 64
ZLIB_FLAG = 1  # flags bit 0 (versions >= 2): the stored header is zlib-compressed JSON


class QpkParts(NamedTuple):
    """The pieces of a .qpk file. ``reserved`` (version 4's bytes 32-63) and ``trailing``
    (bytes after a version-4 header) are kept as found, so that mutations of them still
    reach qpack's checks; both are empty for versions 1-3."""

    magic: bytes
    version: int
    flags: int
    header: bytes  # as stored: zlib-compressed when flags & ZLIB_FLAG
    data: bytes
    reserved: bytes = b""
    trailing: bytes = b""


def split(blob: bytes) -> QpkParts | None:
    """The parts of ``blob``, or None when the lengths and offset in its preamble do not fit
    inside it (nothing to repair: qpack must reject such a file as it is)."""
    if len(blob) < PREAMBLE.size:
        return None
    magic, version, head_len, _crc, flags = PREAMBLE.unpack_from(blob)
    if version >= 4:
        if len(blob) < DATA_START_V4:
            return None
        (start,) = HEADER_OFFSET.unpack_from(blob, PREAMBLE.size)
        if not DATA_START_V4 <= start <= len(blob) - head_len:
            return None
        return QpkParts(magic, version, flags, blob[start:start + head_len],
                        blob[DATA_START_V4:start],
                        blob[PREAMBLE.size + HEADER_OFFSET.size:DATA_START_V4],
                        blob[start + head_len:])
    end = PREAMBLE.size + head_len
    if end > len(blob):
        return None
    return QpkParts(magic, version, flags, blob[PREAMBLE.size:end], blob[-(-end // 64) * 64:])


def join(parts: QpkParts) -> bytes:
    """The file ``parts`` describe, with header length and CRC (and the version-4 header
    offset) set to match ``parts.header``; section offsets are unchanged because the data
    region starts where it did."""
    head = parts.header
    pre = PREAMBLE.pack(parts.magic, parts.version, len(head), zlib.crc32(head), parts.flags)
    if parts.version >= 4:
        offset = HEADER_OFFSET.pack(DATA_START_V4 + len(parts.data))
        return pre + offset + parts.reserved + parts.data + head + parts.trailing
    pad = bytes(-(PREAMBLE.size + len(head)) % 64)
    return pre + head + pad + parts.data
