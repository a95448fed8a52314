"""Section codecs: how one array becomes the bytes of one ``.qpk`` section, and back.

Three codecs (docs/FORMAT.md, section 4):

- ``raw``: a little-endian array of a whitelisted dtype and a declared shape.
- ``packed``: ``rows`` rows of ``count`` b-bit codes, each row byte-aligned (qpack.pack).
- ``huffman``: a self-describing Huffman stream (qpack.huffman_encode) of ``rows * count``
  symbols < 2**bits, row-major.

Encoders return ``(descriptor, uint8 blob)``; the container adds offset, length and crc32.
Decoders check that the descriptor agrees with the blob before touching it, so a damaged
or hostile file raises FormatError instead of allocating or reading out of bounds.
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


def _int_field(desc: dict, key: str, where: str, low: int = 0, high: int | None = None) -> int:
    v = desc.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise FormatError(f"{where}: '{key}' must be an integer {bound}, got {v!r}")
    return v


def check_shape(shape, where: str) -> tuple[int, ...]:
    """Validate a JSON shape (list of non-negative ints, at most 32 dims) and return it."""
    if not isinstance(shape, list) or len(shape) > 32:
        raise FormatError(f"{where}: shape must be a list of at most 32 integers, got {shape!r}")
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise FormatError(f"{where}: shape entries must be non-negative integers, "
                              f"got {shape!r}")
    return tuple(shape)


def decode_raw(desc: dict, blob: np.ndarray, where: str) -> np.ndarray:
    """The user-facing array of a ``raw`` section (a read-only view when no cast is needed)."""
    if desc.get("codec") != "raw":
        raise FormatError(f"{where}: expected codec 'raw', got {desc.get('codec')!r}")
    name = desc.get("dtype")
    if name not in dtypes.DTYPE_NAMES:
        raise FormatError(f"{where}: unsupported dtype {name!r}")
    shape = check_shape(desc.get("shape"), where)
    need = int(np.prod(shape, dtype=object)) * dtypes.itemsize(name)
    if blob.nbytes != need:
        raise FormatError(f"{where}: {blob.nbytes} bytes stored, shape {list(shape)} of "
                          f"{name} needs {need}")
    raw = blob.view(dtypes.storage_dtype(name)).reshape(shape)
    return dtypes.from_storage(raw, name)


def check_codes_desc(desc: dict, blob_nbytes: int, where: str) -> tuple[str, int, int, int]:
    """Validate a ``packed``/``huffman`` descriptor; return (codec, bits, rows, count)."""
    codec = desc.get("codec")
    if codec not in ("packed", "huffman"):
        raise FormatError(f"{where}: codec must be 'packed' or 'huffman', got {codec!r}")
    bits = _int_field(desc, "bits", where, 1, 8)
    rows = _int_field(desc, "rows", where)
    count = _int_field(desc, "count", where)
    if codec == "packed" and blob_nbytes != rows * packed_nbytes(count, bits):
        raise FormatError(f"{where}: {blob_nbytes} bytes stored, {rows} rows of {count} "
                          f"{bits}-bit codes need {rows * packed_nbytes(count, bits)}")
    if codec == "huffman" and rows * count > 8 * blob_nbytes:
        # every symbol costs at least one bit: a larger count cannot be in this blob
        raise FormatError(f"{where}: declares {rows * count} symbols but holds only "
                          f"{blob_nbytes} bytes")
    return codec, bits, rows, count


def decode_codes(desc: dict, blob: np.ndarray, where: str) -> np.ndarray:
    """Unpacked uint8 codes of shape (rows, count) from a ``packed`` or ``huffman`` section."""
    codec, bits, rows, count = check_codes_desc(desc, blob.nbytes, where)
    if codec == "packed":
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
    codec, bits, rows, count = check_codes_desc(desc, blob.nbytes, where)
    if codec == "packed":
        return blob.reshape(rows, packed_nbytes(count, bits))
    return pack(decode_codes(desc, blob, where), bits)
