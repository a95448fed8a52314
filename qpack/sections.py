"""Section codecs: how one array becomes the bytes of one ``.qpk`` section, and back.

Three codecs (docs/FORMAT.md, section 4):

- ``raw``: a little-endian array of a whitelisted dtype and a declared shape.
- ``packed``: ``rows`` rows of ``count`` b-bit codes, each row byte-aligned (qpack.pack).
- ``huffman``: a self-describing Huffman stream (qpack.huffman_encode) of ``rows * count``
  symbols < 2**bits, row-major.

Encoders return ``(descriptor, uint8 blob)``; the container adds offset, length and crc32.
Decoders take descriptors already validated by ``tensor_spec.check_section`` and check
that the blob's length agrees before touching it, so a damaged or hostile file raises
FormatError instead of allocating or reading out of bounds.
"""

from __future__ import annotations

import numpy as np

from qpack import dtypes
from qpack.bitpack import pack, packed_nbytes, unpack
from qpack.entropy import (
    huffman_decode,
    huffman_encode,
    huffman_encoded_nbytes,
    huffman_stream_info,
    symbol_histogram,
)
from qpack.errors import FormatError
from qpack.tensor_spec import check_section_length


def encode_raw(arr: np.ndarray) -> tuple[dict, np.ndarray]:
    """Store an array exactly: its dtype name, shape and little-endian bytes."""
    stored = dtypes.to_storage(arr)
    desc = {"codec": "raw", "dtype": dtypes.dtype_name(arr.dtype), "shape": list(arr.shape)}
    return desc, stored.reshape(-1).view(np.uint8)


def coded_nbytes(codes: np.ndarray, bits: int, entropy: bool) -> tuple[str, int]:
    """The cheaper codec for ``codes`` (rows, count) and its size in bytes."""
    rows, count = codes.shape
    packed = rows * packed_nbytes(count, bits)
    if not entropy or codes.size == 0:
        return "packed", packed
    coded = huffman_encoded_nbytes(symbol_histogram(codes, 1 << bits))
    return ("huffman", coded) if coded < packed else ("packed", packed)


def encode_codes(codes: np.ndarray, bits: int, entropy: bool,
                 codec: str | None = None) -> tuple[dict, np.ndarray]:
    """Store uint8 codes of shape (rows, count) as ``packed`` or, if smaller, ``huffman``.

    ``codec`` skips the size comparison when the caller already made it (coded_nbytes).
    """
    if codec is None:
        codec, _ = coded_nbytes(codes, bits, entropy)
    rows, count = codes.shape
    desc = {"codec": codec, "bits": bits, "rows": rows, "count": count}
    if codec == "packed":
        return desc, pack(codes, bits).reshape(-1)
    blob = np.frombuffer(huffman_encode(codes.reshape(-1), alphabet_size=1 << bits),
                         dtype=np.uint8)
    return desc, blob


def varint_bytes(values: np.ndarray) -> np.ndarray:
    """Unsigned LEB128 bytes of 1-D values < 2**32: 7 bits a byte, low group first, the
    high bit set on every byte but a value's last (docs/FORMAT.md, section 4.2)."""
    v = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1)
    nbytes = np.ones(v.size, dtype=np.int64)
    for k in range(1, 5):
        nbytes += v >= (1 << (7 * k))
    ends = np.cumsum(nbytes)
    out = np.empty(int(ends[-1]) if v.size else 0, dtype=np.uint8)
    starts = ends - nbytes
    for k in range(5):
        has = nbytes > k
        group = (v[has] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (nbytes[has] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[has] + k] = (group | more).astype(np.uint8)
    return out


def encode_varint(values: np.ndarray) -> tuple[dict, np.ndarray]:
    """Store 1-D non-negative integers < 2**32 (per-row counts) as LEB128 bytes."""
    return {"codec": "varint", "count": int(values.size)}, varint_bytes(values)


def decode_varint(desc: dict, blob: np.ndarray, where: str) -> np.ndarray:
    """The uint32 values of a validated ``varint`` section; FormatError unless the bytes
    hold exactly ``count`` values, each of at most 5 bytes and below 2**32."""
    check_section_length(desc, blob.nbytes, where)
    b = np.asarray(blob, dtype=np.uint8).reshape(-1)
    ends = np.flatnonzero(b < 0x80)
    if ends.size != desc["count"] or (b.size and ends[-1] != b.size - 1):
        raise FormatError(f"{where}: varint stream holds {ends.size} complete values, "
                          f"expected {desc['count']}")
    if not b.size:
        return np.zeros(0, dtype=np.uint32)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if int(lengths.max()) > 5:
        raise FormatError(f"{where}: a varint value is longer than 5 bytes")
    shift = (np.arange(b.size) - np.repeat(starts, lengths)) * 7
    values = np.add.reduceat((b & 0x7F).astype(np.uint64) << shift.astype(np.uint64), starts)
    if int(values.max()) >= 1 << 32:
        raise FormatError(f"{where}: a varint value exceeds 32 bits")
    return values.astype(np.uint32)


def decode_raw(desc: dict, blob: np.ndarray, where: str) -> np.ndarray:
    """The user-facing array of a validated ``raw`` section (a read-only view when no cast
    is needed). Raises FormatError if the blob's length disagrees with the descriptor."""
    check_section_length(desc, blob.nbytes, where)
    name = desc["dtype"]
    raw = blob.view(dtypes.storage_dtype(name)).reshape(desc["shape"])
    return dtypes.from_storage(raw, name)


def decode_codes(desc: dict, blob: np.ndarray, where: str) -> np.ndarray:
    """Unpacked uint8 codes (rows, count) from a validated ``packed``/``huffman`` section."""
    check_section_length(desc, blob.nbytes, where)
    bits, rows, count = desc["bits"], desc["rows"], desc["count"]
    if desc["codec"] == "packed":
        return unpack(blob.reshape(rows, packed_nbytes(count, bits)), bits, count)
    if huffman_stream_info(blob, max_count=rows * count).alphabet_size > 1 << bits:
        raise FormatError(f"{where}: Huffman alphabet is larger than 2**{bits}")
    symbols = huffman_decode(blob, max_count=rows * count)
    if symbols.size != rows * count:
        raise FormatError(f"{where}: Huffman stream holds {symbols.size} symbols, "
                          f"expected {rows * count}")
    if symbols.size and int(symbols.max()) >= 1 << bits:
        raise FormatError(f"{where}: a decoded code exceeds {bits} bits")
    return symbols.astype(np.uint8, copy=False).reshape(rows, count)


def packed_codes(desc: dict, blob: np.ndarray, where: str) -> np.ndarray:
    """Codes as packed rows (rows, ceil(count*bits/8)); zero-copy for a ``packed`` section."""
    if desc["codec"] == "packed":
        check_section_length(desc, blob.nbytes, where)
        return blob.reshape(desc["rows"], packed_nbytes(desc["count"], desc["bits"]))
    return pack(decode_codes(desc, blob, where), desc["bits"])
