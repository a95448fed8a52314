"""Canonical, length-limited Huffman coding of integer symbol streams.

``huffman_encode`` turns symbols in [0, alphabet_size) (alphabet_size <= 65536) into a
self-describing byte string (docs/FORMAT.md section 2); ``huffman_decode`` inverts it and
treats its input as hostile: every field is checked before anything is allocated, and
every failure is a ``qpack.FormatError``.

Code lengths: an ordinary Huffman code (Moffat & Katajainen's in-place O(n) method, in
the kernel) when its longest code fits the limit, which makes it optimal; otherwise
package-merge (Larmore & Hirschberg 1990), the optimal prefix code under a maximum code
length. Both always satisfy Kraft's sum == 1 (checked).

This module validates and allocates; the loops run in ``qpack._kernels.huffman``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from qpack._kernels import huffman as _k
from qpack._validate import check_int
from qpack.errors import FormatError

MAGIC = b"QH"
VERSION = 1
MAX_CODE_LEN = 15
MAX_ALPHABET = 65536
#: Streams with at least this many symbols are cut into 4 interleaved segments.
INTERLEAVE_MIN_COUNT = 4096
_HEADER = struct.Struct("<2sBBIQI")  # magic, version, nstreams, alphabet_size, count, table_len
HEADER_NBYTES = _HEADER.size  # 20


# --------------------------------------------------------------------------- code lengths

def _check_freqs(freqs) -> np.ndarray:
    arr = np.asarray(freqs)
    if arr.ndim != 1:
        raise ValueError(f"freqs must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_ or (arr.dtype.kind not in "iu" and arr.size):
        raise ValueError(f"freqs must have an integer dtype, got {arr.dtype}")
    if arr.shape[0] > MAX_ALPHABET:
        raise ValueError(f"freqs may have at most {MAX_ALPHABET} entries, got {arr.shape[0]}")
    arr = arr.astype(np.int64)
    if arr.size and int(arr.min()) < 0:
        raise ValueError("freqs must be non-negative")
    if arr.size and int(arr.sum(dtype=np.float64)) >= 2**62:
        raise ValueError("freqs sum to more than 2**62")
    return arr


def huffman_code_lengths(freqs, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Optimal prefix-code lengths under a length limit (Huffman, or package-merge if it binds).

    Parameters
    ----------
    freqs : 1-D array_like of non-negative integers, at most 65536 entries (symbol counts).
    max_len : longest allowed code, 1..15.

    Returns
    -------
    uint8 array, same length as ``freqs``: 0 for unused symbols, else the code length.
    Lengths of two or more used symbols satisfy Kraft's sum == 1 exactly and minimize
    sum(freq * len) among prefix codes with lengths <= max_len. A single used symbol gets
    length 1 (the format needs at least one bit per symbol).

    Raises
    ------
    ValueError: bad ``freqs`` or ``max_len``, or more used symbols than 2**max_len.
    """
    f = _check_freqs(freqs)
    max_len = check_int(max_len, "max_len", 1, MAX_CODE_LEN)
    lengths = np.zeros(f.shape[0], dtype=np.uint8)
    used = np.flatnonzero(f)
    n = used.shape[0]
    if n == 0:
        return lengths
    if n == 1:
        lengths[used[0]] = 1
        return lengths
    if n > 1 << max_len:
        raise ValueError(f"{n} used symbols cannot have codes of at most {max_len} bits")
    order = used[np.argsort(f[used], kind="stable")]
    leaves = f[order]
    # An ordinary Huffman code is optimal whenever it already fits the limit (usual for
    # quantization codes); only when it does not is package-merge needed.
    depth = np.ascontiguousarray(leaves, dtype=np.int64).copy()
    _k.huffman_lengths_sorted(depth)
    if int(depth.max()) > max_len:
        depth = _package_merge(leaves, max_len)
    lengths[order] = depth
    kraft = int(np.sum(np.left_shift(1, MAX_CODE_LEN - depth.astype(np.int64))))
    if kraft != 1 << MAX_CODE_LEN or int(depth.max()) > max_len:  # cannot happen; guard
        raise AssertionError("code-length construction produced an invalid code")
    return lengths


def _package_merge(leaves: np.ndarray, max_len: int) -> np.ndarray:
    """Optimal code lengths <= max_len for ascending weights ``leaves`` (len >= 2)."""
    n = leaves.shape[0]
    # Package-merge: the list of the deepest level holds the leaves; each shallower level
    # merges the leaves with the pairs ("packages") of the level below. Taking the 2n-2
    # cheapest items of the top level, a leaf of rank r is taken once per level in which it
    # is selected, and that count is its code length. In every merged list the selected
    # leaves form a prefix of the sorted leaves, so we only keep each level's running
    # count of leaves.
    leaf_prefix = []  # per level (deepest first): cumulative number of leaves in the list
    prev = leaves
    leaf_prefix.append(None)  # the deepest list is leaves only
    for _ in range(max_len - 1):
        npk = prev.shape[0] // 2
        packages = prev[0:2 * npk:2] + prev[1:2 * npk:2]
        merged = np.concatenate([leaves, packages])
        idx = np.argsort(merged, kind="stable")  # leaves come first on ties
        leaf_prefix.append(np.cumsum(idx < n))
        prev = merged[idx]
    depth = np.zeros(n, dtype=np.int64)
    take = 2 * n - 2
    for level in range(max_len - 1, -1, -1):
        cum = leaf_prefix[level]
        nleaves = take if cum is None else int(cum[take - 1]) if take else 0
        depth[:nleaves] += 1
        take = 2 * (take - nleaves)
    return depth


def canonical_codes(lengths) -> np.ndarray:
    """Canonical code values (MSB-first, as in DEFLATE) for the given code lengths.

    Codes of the same length are consecutive in symbol order, and shorter codes come
    first. Returns uint32 codes (0 for unused symbols). ``lengths`` must satisfy Kraft
    <= 1 with every entry in 0..15 (ValueError otherwise).
    """
    lens = np.asarray(lengths)
    if lens.ndim != 1 or lens.dtype.kind not in "iu":
        raise ValueError("lengths must be a 1-D integer array")
    lens = lens.astype(np.int64)
    if lens.size and (int(lens.min()) < 0 or int(lens.max()) > MAX_CODE_LEN):
        raise ValueError(f"lengths must be in 0..{MAX_CODE_LEN}")
    used = lens > 0
    if int(np.sum(np.left_shift(1, MAX_CODE_LEN - lens[used]))) > 1 << MAX_CODE_LEN:
        raise ValueError("lengths violate Kraft's inequality")
    return _canonical(lens.astype(np.uint8))[0]


def _canonical(lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, encoder table) for uint8 lengths; see canonical_codes.

    Re-checks 0..15 and Kraft <= 1 because the kernel indexes a 16-entry count by length.
    """
    lens = np.ascontiguousarray(lens, dtype=np.uint8)
    if lens.ndim != 1:
        raise ValueError("lengths must be 1-D")
    if lens.size:
        top = int(lens.max())
        used = lens[lens > 0].astype(np.int64)
        if top > MAX_CODE_LEN or int(np.sum(np.left_shift(1, MAX_CODE_LEN - used))) > \
                1 << MAX_CODE_LEN:
            raise ValueError(f"lengths must be in 0..{MAX_CODE_LEN} and satisfy Kraft <= 1")
    codes = np.empty(lens.shape[0], dtype=np.uint32)
    table = np.empty(lens.shape[0], dtype=np.uint32)
    _k.canonical_table(lens, codes, table)
    return codes, table


@dataclass(frozen=True)
class HuffmanCode:
    """A canonical prefix code: ``lengths`` (uint8, per symbol) and ``codes`` (uint32).

    Build one with ``HuffmanCode.from_frequencies``; ``encoded_nbits`` prices a histogram.
    """

    lengths: np.ndarray
    codes: np.ndarray

    @classmethod
    def from_frequencies(cls, freqs, max_len: int = MAX_CODE_LEN) -> HuffmanCode:
        """Optimal length-limited code for the histogram ``freqs`` (see huffman_code_lengths)."""
        lengths = huffman_code_lengths(freqs, max_len)
        return cls(lengths, _canonical(lengths)[0])

    @property
    def table_len(self) -> int:
        """Number of table entries stored: highest used symbol + 1 (0 if none)."""
        used = np.flatnonzero(self.lengths)
        return int(used[-1]) + 1 if used.size else 0

    def encoded_nbits(self, freqs) -> int:
        """Payload bits for a histogram: sum(freq * length).

        ValueError if a symbol with a nonzero count has no code.
        """
        f = _check_freqs(freqs)
        lens = np.zeros(max(f.shape[0], self.lengths.shape[0]), dtype=np.int64)
        lens[: self.lengths.shape[0]] = self.lengths
        lens = lens[: f.shape[0]]
        if np.any(f[lens == 0]):
            raise ValueError("freqs has symbols that have no code")
        return int(np.dot(f, lens))

    def kernel_table(self) -> np.ndarray:
        """uint32 per symbol: bit-reversed code | length << 16 (the encoder's lookup)."""
        return _canonical(self.lengths)[1]


# ----------------------------------------------------------------------------- layout

def _nstreams(count: int) -> int:
    return 4 if count >= INTERLEAVE_MIN_COUNT else 1


def _segment_starts(count: int, nstreams: int) -> np.ndarray:
    """First symbol index of each segment, plus count: segment k has count//ns (+1 if k <
    count % ns) symbols."""
    base, extra = divmod(count, nstreams)
    sizes = [base + (1 if k < extra else 0) for k in range(nstreams)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _stream_nbytes(table_len: int, nstreams: int, total_bits: int) -> int:
    return HEADER_NBYTES + (table_len + 1) // 2 + 8 * nstreams + (total_bits + 7) // 8


def huffman_encoded_nbytes(freqs, max_len: int = MAX_CODE_LEN) -> int:
    """Exact size in bytes of ``huffman_encode`` output for symbols with histogram ``freqs``.

    ``freqs[s]`` counts symbol s (1-D non-negative integers). Computed from the code
    lengths only, without encoding; equal to len(huffman_encode(x, max_len=max_len)) for
    every x with that histogram, whatever its order and alphabet_size. ValueError as in
    ``huffman_code_lengths``.
    """
    f = _check_freqs(freqs)
    lengths = huffman_code_lengths(f, max_len)
    count = int(f.sum())
    used = np.flatnonzero(lengths)
    table_len = int(used[-1]) + 1 if used.size else 0
    total_bits = int(np.dot(f, lengths.astype(np.int64)))
    return _stream_nbytes(table_len, _nstreams(count), total_bits)


# ----------------------------------------------------------------------------- encode

def _symbols_for_kernel(symbols, alphabet_size) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate symbols; return (flat uint8/uint16 array, histogram, alphabet_size)."""
    arr = np.asarray(symbols)
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    elif arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind == "f":
            arr = arr.astype(np.uint8)  # np.asarray([]) is float64; an empty list is fine
        else:
            raise ValueError(f"symbols must have an integer dtype, got {arr.dtype}")
    arr = arr.reshape(-1)
    if alphabet_size is not None:
        if isinstance(alphabet_size, bool) or not isinstance(alphabet_size, (int, np.integer)):
            raise ValueError(f"alphabet_size must be an integer, got {alphabet_size!r}")
        if not 1 <= int(alphabet_size) <= MAX_ALPHABET:
            raise ValueError(f"alphabet_size must be in 1..{MAX_ALPHABET}, got {alphabet_size}")
        alphabet_size = int(alphabet_size)
    if arr.dtype not in (np.uint8, np.uint16):
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0:
                raise ValueError(f"symbols must be non-negative, found {lo}")
            limit = alphabet_size if alphabet_size is not None else MAX_ALPHABET
            if hi >= limit:
                raise ValueError(f"symbols must be < {limit}, found {hi}")
            arr = arr.astype(np.uint8 if hi < 256 else np.uint16)
        else:
            arr = arr.astype(np.uint8)
    arr = np.ascontiguousarray(arr)
    hist = np.zeros(256 if arr.dtype == np.uint8 else 65536, dtype=np.int64)
    _k.histogram(arr, hist)
    used = np.flatnonzero(hist)
    top = int(used[-1]) + 1 if used.size else 0
    if alphabet_size is None:
        alphabet_size = max(top, 1)
    elif top > alphabet_size:
        raise ValueError(f"symbols must be < alphabet_size={alphabet_size}, found {top - 1}")
    if alphabet_size > hist.shape[0]:  # uint8 symbols from an alphabet wider than 256
        hist = np.concatenate([hist, np.zeros(alphabet_size - hist.shape[0], np.int64)])
    return arr, hist[:alphabet_size], alphabet_size


def symbol_histogram(symbols, alphabet_size: int | None = None) -> np.ndarray:
    """Counts of each symbol value, int64 of length ``alphabet_size`` (default max + 1).

    ``symbols``: integer array_like of any shape. Validated as for ``huffman_encode``
    (ValueError for non-integer, negative or out-of-alphabet symbols); counted by the
    histogram kernel. The input of ``huffman_encoded_nbytes``.
    """
    return _symbols_for_kernel(symbols, alphabet_size)[1]


def huffman_encode(symbols, *, alphabet_size: int | None = None,
                   max_len: int = MAX_CODE_LEN) -> bytes:
    """Entropy-code integer symbols with a canonical, length-limited Huffman code.

    Parameters
    ----------
    symbols : integer array_like of any shape (flattened in C order), values in
        [0, alphabet_size).
    alphabet_size : 1..65536; default max(symbols) + 1 (1 for no symbols). Decoded
        output is uint8 when alphabet_size <= 256, else uint16.
    max_len : longest code, 1..15 (default 15). Needs 2**max_len >= number of distinct
        symbols.

    Returns
    -------
    bytes in the self-describing layout of docs/FORMAT.md section 2 (header, code-length
    table, stream bit lengths, payload); its length is ``huffman_encoded_nbytes(hist)``.

    Raises
    ------
    ValueError: non-integer, negative or out-of-range symbols, bad alphabet_size/max_len.
    """
    arr, hist, alphabet_size = _symbols_for_kernel(symbols, alphabet_size)
    max_len = check_int(max_len, "max_len", 1, MAX_CODE_LEN)
    code = HuffmanCode.from_frequencies(hist, max_len)
    count = arr.shape[0]
    table_len = code.table_len
    total_bits = int(np.dot(hist, code.lengths.astype(np.int64)))
    nstreams = _nstreams(count)
    nbytes = _stream_nbytes(table_len, nstreams, total_bits)
    out = np.zeros(nbytes + 8, dtype=np.uint8)  # 8 bytes of slack for 64-bit stores
    _HEADER.pack_into(out, 0, MAGIC, VERSION, nstreams, alphabet_size, count, table_len)
    lens = code.lengths[:table_len]
    if table_len % 2:
        lens = np.append(lens, np.uint8(0))
    table_off = HEADER_NBYTES
    out[table_off:table_off + lens.shape[0] // 2] = lens[0::2] | (lens[1::2] << 4)
    bits_off = table_off + (table_len + 1) // 2
    payload_off = bits_off + 8 * nstreams
    seg_bits = np.zeros(nstreams, dtype=np.int64)
    if count:
        written = _k.encode(arr, code.kernel_table(), out, payload_off,
                            _segment_starts(count, nstreams)[1:], seg_bits)
        if written != total_bits:  # cannot happen; guards the size promise
            raise AssertionError("encoder wrote an unexpected number of bits")
    out[bits_off:payload_off] = seg_bits.astype("<u8").view(np.uint8)
    return out[:nbytes].tobytes()


# ----------------------------------------------------------------------------- decode

@dataclass(frozen=True)
class HuffmanStreamInfo:
    """The header fields of an encoded stream (what a reader needs before decoding)."""

    alphabet_size: int
    count: int
    nstreams: int
    table_len: int
    nbytes: int

    @property
    def dtype(self) -> np.dtype:
        """dtype of the decoded symbols: uint8 if alphabet_size <= 256, else uint16."""
        return np.dtype(np.uint8 if self.alphabet_size <= 256 else np.uint16)


def _as_byte_array(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise ValueError(f"data must be a 1-D uint8 array, got {data.dtype} {data.shape}")
        return data if data.flags.c_contiguous else np.ascontiguousarray(data)
    if isinstance(data, (bytes, bytearray, memoryview)):
        mv = memoryview(data)
        if not mv.contiguous:
            raise ValueError("data must be a contiguous buffer")
        return np.frombuffer(mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv,
                             dtype=np.uint8)
    raise ValueError(f"data must be bytes, bytearray, memoryview or a uint8 array, "
                     f"got {type(data).__name__}")


def _parse(buf: np.ndarray, max_count):
    """Validate everything but the payload bits; return the pieces decode needs."""
    n = buf.shape[0]
    if n < HEADER_NBYTES:
        raise FormatError(f"Huffman stream truncated: {n} bytes, header needs {HEADER_NBYTES}")
    magic, version, nstreams, alphabet_size, count, table_len = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise FormatError(f"not a Huffman stream (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise FormatError(f"unsupported Huffman stream version {version}")
    if nstreams not in (1, 4):
        raise FormatError(f"stream count must be 1 or 4, got {nstreams}")
    if not 1 <= alphabet_size <= MAX_ALPHABET:
        raise FormatError(f"alphabet size {alphabet_size} outside 1..{MAX_ALPHABET}")
    if table_len > alphabet_size:
        raise FormatError(f"table has {table_len} entries for an alphabet of {alphabet_size}")
    if max_count is not None and count > max_count:
        raise FormatError(f"stream declares {count} symbols, more than the {max_count} expected")
    table_nbytes = (table_len + 1) // 2
    bits_off = HEADER_NBYTES + table_nbytes
    payload_off = bits_off + 8 * nstreams
    if n < payload_off:
        raise FormatError(f"Huffman stream truncated: {n} bytes, header and table need "
                          f"{payload_off}")
    packed = buf[HEADER_NBYTES:bits_off]
    lens = np.empty(2 * table_nbytes, dtype=np.uint8)
    lens[0::2] = packed & 15
    lens[1::2] = packed >> 4
    if table_len % 2 and lens[-1]:
        raise FormatError("nonzero padding nibble after the code-length table")
    lens = lens[:table_len]
    seg_bits = [int(v) for v in struct.unpack_from(f"<{nstreams}Q", buf, bits_off)]
    total_bits = sum(seg_bits)
    payload_nbytes = n - payload_off
    if payload_nbytes != (total_bits + 7) // 8:
        raise FormatError(f"payload holds {payload_nbytes} bytes, but the streams declare "
                          f"{total_bits} bits ({(total_bits + 7) // 8} bytes)")
    info = HuffmanStreamInfo(alphabet_size, count, nstreams, table_len, n)
    return info, lens, seg_bits, total_bits, payload_off


def huffman_stream_info(data, *, max_count: int | None = None) -> HuffmanStreamInfo:
    """Read and check the header of an encoded stream without decoding its payload.

    Accepts what ``huffman_decode`` accepts; raises FormatError for a damaged header or a
    length that does not match the declared streams.
    """
    info, *_ = _parse(_as_byte_array(data), _check_max_count(max_count))
    return info


def _check_max_count(max_count):
    if max_count is None:
        return None
    if isinstance(max_count, bool) or not isinstance(max_count, (int, np.integer)) \
            or max_count < 0:
        raise ValueError(f"max_count must be a non-negative integer or None, got {max_count!r}")
    return int(max_count)


def huffman_decode(data, *, max_count: int | None = None) -> np.ndarray:
    """Decode a stream written by ``huffman_encode``.

    Parameters
    ----------
    data : bytes, bytearray, memoryview or 1-D uint8 numpy array (e.g. a slice of a
        read-only np.memmap); contiguous input is read in place, never copied. It must be
        exactly one stream (no trailing bytes).
    max_count : if given, a stream declaring more symbols is rejected before allocating.

    Returns
    -------
    1-D array of the declared count of symbols: uint8 when the alphabet size <= 256, else
    uint16.

    Raises
    ------
    FormatError: anything wrong with the bytes (magic, version, sizes, a table that is not
        a complete prefix code, an implausible count, a stream that does not end exactly at
        its declared bit length, nonzero padding bits). ValueError: wrong argument types.
    """
    buf = _as_byte_array(data)
    info, lens, seg_bits, total_bits, payload_off = _parse(buf, _check_max_count(max_count))
    count, nstreams = info.count, info.nstreams
    payload = buf[payload_off:]
    if total_bits % 8 and int(payload[-1]) >> (total_bits % 8):
        raise FormatError("nonzero padding bits after the last stream")
    used = np.flatnonzero(lens)
    if count == 0:
        if used.size or total_bits:
            raise FormatError("an empty stream must have an empty table and no payload")
        return np.empty(0, dtype=info.dtype)
    if used.size == 0:
        raise FormatError(f"stream declares {count} symbols but its code table is empty")
    ulens = lens[used].astype(np.int64)
    min_len, max_len = int(ulens.min()), int(ulens.max())
    if used.size == 1:
        if min_len != 1:
            raise FormatError("a single-symbol table must give its symbol a 1-bit code")
    elif int(np.sum(np.left_shift(1, MAX_CODE_LEN - ulens))) != 1 << MAX_CODE_LEN:
        raise FormatError("code lengths do not form a complete prefix code (Kraft sum != 1)")
    starts = _segment_starts(count, nstreams)
    for k in range(nstreams):
        nk = int(starts[k + 1] - starts[k])
        if not nk * min_len <= seg_bits[k] <= nk * max_len:
            raise FormatError(f"stream {k} declares {seg_bits[k]} bits for {nk} symbols with "
                              f"codes of {min_len}..{max_len} bits")
    out = np.empty(count, dtype=info.dtype)
    if used.size == 1:  # every code is the single bit 0
        if payload.any():
            raise FormatError("a single-symbol stream must hold only zero bits")
        out.fill(int(used[0]))
        return out
    rc = _k.decode(payload, lens, starts, np.asarray(seg_bits, dtype=np.int64), out)
    if rc:
        raise FormatError(f"corrupt Huffman stream: {_k.ERROR_MESSAGES.get(rc, rc)}")
    return out
