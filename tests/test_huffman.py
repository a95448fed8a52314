"""qpack.huffman_encode / huffman_decode against a plain-Python reference of FORMAT.md s. 2."""

from __future__ import annotations

import heapq
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qpack
from qpack import FormatError
from qpack.entropy import (
    HuffmanCode,
    canonical_codes,
    huffman_code_lengths,
    huffman_encoded_nbytes,
    huffman_stream_info,
)

# --- plain-Python reference of docs/FORMAT.md section 2 --------------------------------


def ref_huffman_lengths(freqs) -> dict[int, int]:
    """Unlimited Huffman code lengths with heapq (symbol -> length; one symbol -> 1)."""
    heap = [(int(f), i, (s,)) for i, (s, f) in enumerate((s, f) for s, f in enumerate(freqs)
                                                          if f > 0)]
    if not heap:
        return {}
    if len(heap) == 1:
        return {heap[0][2][0]: 1}
    depth = {syms[0]: 0 for _, _, syms in heap}
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        f1, _, a = heapq.heappop(heap)
        f2, _, b = heapq.heappop(heap)
        for s in a + b:
            depth[s] += 1
        heapq.heappush(heap, (f1 + f2, tie, a + b))
        tie += 1
    return depth


def ref_canonical(lengths) -> dict[int, tuple[int, int]]:
    """symbol -> (code, length), codes assigned in (length, symbol) order as in DEFLATE."""
    items = sorted((int(l), s) for s, l in enumerate(lengths) if l > 0)
    out, code, prev = {}, 0, None
    for l, s in items:
        if prev is not None:
            code = (code + 1) << (l - prev)
        else:
            code = 0
        out[s] = (code, l)
        prev = l
    return out


def ref_encode(symbols, alphabet_size: int, lengths) -> bytes:
    """Spell the stream of FORMAT.md section 2 bit by bit."""
    symbols = [int(s) for s in np.asarray(symbols).reshape(-1)]
    count = len(symbols)
    used = [s for s, l in enumerate(lengths) if l > 0]
    table_len = used[-1] + 1 if used else 0
    nstreams = 4 if count >= 4096 else 1
    codes = ref_canonical(lengths)
    base, extra = divmod(count, nstreams)
    bits, seg_bits, pos = [], [], 0
    for k in range(nstreams):
        n_k = base + (1 if k < extra else 0)
        start = len(bits)
        for s in symbols[pos:pos + n_k]:
            code, l = codes[s]
            bits += [(code >> (l - 1 - i)) & 1 for i in range(l)]  # MSB of the code first
        seg_bits.append(len(bits) - start)
        pos += n_k
    out = bytearray(b"QH" + struct.pack("<BBIQI", 1, nstreams, alphabet_size, count,
                                        table_len))
    nib = [int(l) for l in lengths[:table_len]] + [0] * (table_len % 2)
    out += bytes(nib[i] | (nib[i + 1] << 4) for i in range(0, len(nib), 2))
    out += struct.pack(f"<{nstreams}Q", *seg_bits)
    bits += [0] * (-len(bits) % 8)
    out += bytes(sum(bits[i + j] << j for j in range(8)) for i in range(0, len(bits), 8))
    return bytes(out)


def ref_decode(data: bytes) -> list[int]:
    """Bit-by-bit decoder of a valid stream (no hostile-input checks)."""
    _, _, nstreams, _, count, table_len = struct.unpack_from("<2sBBIQI", data, 0)
    off = 20
    lengths = []
    for i in range(table_len):
        b = data[off + i // 2]
        lengths.append(b & 15 if i % 2 == 0 else b >> 4)
    off += (table_len + 1) // 2 + 8 * nstreams
    rev = {(c, l): s for s, (c, l) in ref_canonical(lengths).items()}
    bitpos, out = 0, []
    while len(out) < count:
        code, l = 0, 0
        while (code, l) not in rev:
            code = (code << 1) | ((data[off + bitpos // 8] >> (bitpos % 8)) & 1)
            l += 1
            bitpos += 1
        out.append(rev[(code, l)])
    return out


def cost(freqs, lengths) -> int:
    return int(sum(int(f) * int(l) for f, l in zip(freqs, lengths, strict=True)))


def geometric_symbols(n, alphabet, ratio, seed=0):
    rng = np.random.default_rng(seed)
    p = ratio ** np.arange(alphabet, dtype=np.float64)
    return rng.choice(alphabet, size=n, p=p / p.sum())


def fibonacci_symbols(nsym: int, scale: int = 1) -> np.ndarray:
    """Fibonacci frequencies give the deepest Huffman trees: forces long codes."""
    fib = [1, 1]
    while len(fib) < nsym:
        fib.append(fib[-1] + fib[-2])
    return np.repeat(np.arange(nsym), np.array(fib[:nsym]) * scale)


# --- code lengths ----------------------------------------------------------------------


@given(st.lists(st.integers(0, 10**6), min_size=0, max_size=300))
def test_lengths_optimal_when_limit_does_not_bind(freqs):
    ref = ref_huffman_lengths(freqs)
    got = huffman_code_lengths(np.array(freqs, dtype=np.int64), max_len=15)
    assert got.dtype == np.uint8 and got.shape == (len(freqs),)
    assert set(np.flatnonzero(got)) == set(ref)
    if ref and max(ref.values()) <= 15:
        assert cost(freqs, got) == sum(freqs[s] * l for s, l in ref.items())
    used = got[got > 0].astype(np.int64)
    if used.size >= 2:
        assert np.sum(2.0 ** -used) == 1.0


@given(st.lists(st.integers(1, 10**9), min_size=2, max_size=200), st.integers(8, 15))
def test_package_merge_matches_huffman_when_limit_does_not_bind(freqs, max_len):
    from qpack.entropy import _package_merge

    leaves = np.sort(np.array(freqs, dtype=np.int64))
    pm = _package_merge(leaves, max_len)
    assert pm.max() <= max_len and np.sum(2.0 ** -pm) == 1.0
    ref = ref_huffman_lengths(leaves)
    if max(ref.values()) <= max_len:
        assert cost(leaves, pm) == sum(leaves[s] * l for s, l in ref.items())
    else:
        assert cost(leaves, pm) >= sum(leaves[s] * l for s, l in ref.items())


@pytest.mark.parametrize("max_len", [2, 3, 4, 5, 7, 9, 12, 15])
def test_length_limit_respected_and_cost_monotone(max_len):
    freqs = np.bincount(fibonacci_symbols(30, 1))
    freqs = np.concatenate([freqs, np.zeros(3, np.int64)])
    if np.count_nonzero(freqs) > 1 << max_len:
        with pytest.raises(ValueError, match="used symbols"):
            huffman_code_lengths(freqs, max_len)
        return
    got = huffman_code_lengths(freqs, max_len).astype(np.int64)
    assert got.max() <= max_len
    assert np.sum(2.0 ** -got[got > 0]) == 1.0
    looser = huffman_code_lengths(freqs, min(max_len + 1, 15)).astype(np.int64)
    assert cost(freqs, looser) <= cost(freqs, got)
    assert cost(freqs, got) >= sum(freqs[s] * l for s, l in ref_huffman_lengths(freqs).items())


def test_length_limited_matches_bruteforce_small():
    # For 5 symbols and max_len 3, enumerate every complete code: package-merge is optimal.
    import itertools

    freqs = [100, 60, 7, 3, 1]
    best = min(cost(freqs, ls) for ls in itertools.product(range(1, 4), repeat=5)
               if sum(2.0 ** -l for l in ls) <= 1.0)
    assert cost(freqs, huffman_code_lengths(freqs, 3)) == best


def test_lengths_degenerate():
    assert huffman_code_lengths([]).shape == (0,)
    assert huffman_code_lengths([0, 0]).tolist() == [0, 0]
    assert huffman_code_lengths([0, 5, 0]).tolist() == [0, 1, 0]
    assert huffman_code_lengths([3, 3]).tolist() == [1, 1]
    assert huffman_code_lengths(np.ones(4096, np.int64), 12).tolist() == [12] * 4096
    for bad in ([-1, 2], [[1, 2]], [1.5, 2.0], np.ones(65537, np.int64)):
        with pytest.raises(ValueError):
            huffman_code_lengths(bad)
    for bad_len in (0, 16, 2.0, True):
        with pytest.raises(ValueError, match="max_len"):
            huffman_code_lengths([1, 2], bad_len)
    with pytest.raises(ValueError):
        huffman_code_lengths(np.ones(5, np.int64), 2)


def test_canonical_codes_match_reference():
    lengths = np.array([3, 0, 2, 3, 2, 3, 0, 0, 4, 4], np.uint8)
    ref = ref_canonical(lengths)
    got = canonical_codes(lengths)
    assert all(int(got[s]) == c for s, (c, _) in ref.items())
    with pytest.raises(ValueError, match="Kraft"):
        canonical_codes([1, 1, 1])


# --- round trips -----------------------------------------------------------------------

SYMBOL_ARRAYS = st.one_of(
    hnp.arrays(np.uint8, st.integers(0, 300), elements=st.integers(0, 255)),
    hnp.arrays(np.int64, st.integers(0, 300), elements=st.integers(0, 4095)),
    hnp.arrays(np.uint16, st.integers(0, 50), elements=st.integers(0, 65535)),
)


@given(SYMBOL_ARRAYS, st.integers(1, 15))
def test_roundtrip_matches_reference_bytes(symbols, max_len):
    nused = len(np.unique(symbols))
    if nused > 1 << max_len:
        with pytest.raises(ValueError):
            qpack.huffman_encode(symbols, max_len=max_len)
        return
    data = qpack.huffman_encode(symbols, max_len=max_len)
    alphabet = int(symbols.max()) + 1 if symbols.size else 1
    hist = np.bincount(symbols.astype(np.int64), minlength=alphabet)
    lengths = huffman_code_lengths(hist, max_len)
    assert data == ref_encode(symbols, alphabet, lengths)
    assert len(data) == huffman_encoded_nbytes(hist, max_len)
    out = qpack.huffman_decode(data)
    assert out.dtype == (np.uint8 if alphabet <= 256 else np.uint16)
    np.testing.assert_array_equal(out, symbols)
    assert out.tolist() == ref_decode(data)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 15, 16, 17, 100, 4095, 4096, 4097, 4099, 70001])
@pytest.mark.parametrize("alphabet", [1, 2, 3, 16, 255, 256, 257, 4096])
def test_roundtrip_sizes(n, alphabet):
    rng = np.random.default_rng(n * 7 + alphabet)
    x = rng.integers(0, alphabet, n)
    data = qpack.huffman_encode(x, alphabet_size=alphabet)
    out = qpack.huffman_decode(data)
    np.testing.assert_array_equal(out, x)
    assert out.dtype == (np.uint8 if alphabet <= 256 else np.uint16)
    info = huffman_stream_info(data)
    assert (info.alphabet_size, info.count, info.nbytes) == (alphabet, n, len(data))


@pytest.mark.parametrize("ratio", [0.3, 0.6, 0.9, 0.99])
@pytest.mark.parametrize("n", [5000, 200_000])
def test_roundtrip_skewed_and_size_is_sum_freq_len(ratio, n):
    x = geometric_symbols(n, 200, ratio, seed=n)
    data = qpack.huffman_encode(x.astype(np.uint8))
    np.testing.assert_array_equal(qpack.huffman_decode(data), x)
    hist = np.bincount(x)
    lengths = huffman_code_lengths(hist)
    info = huffman_stream_info(data)
    payload_bits = struct.unpack_from(f"<{info.nstreams}Q", data,
                                      20 + (info.table_len + 1) // 2)
    assert sum(payload_bits) == cost(hist, lengths)
    ref = ref_huffman_lengths(hist)
    if max(ref.values()) <= 15:
        assert cost(hist, lengths) == sum(hist[s] * l for s, l in ref.items())


@pytest.mark.parametrize("scale", [1, 3])
@pytest.mark.parametrize("alphabet", [None, 300])
@pytest.mark.parametrize("max_len", [11, 12, 13, 15])
def test_long_codes_both_output_types(scale, alphabet, max_len):
    # 22 Fibonacci-weighted symbols: unlimited Huffman would need 21 bits.
    x = fibonacci_symbols(22, scale)
    x = np.random.default_rng(scale).permutation(x)
    data = qpack.huffman_encode(x, alphabet_size=alphabet, max_len=max_len)
    lengths = huffman_code_lengths(np.bincount(x), max_len)
    assert lengths.max() == max_len
    out = qpack.huffman_decode(data)
    np.testing.assert_array_equal(out, x)
    assert out.dtype == (np.uint16 if alphabet == 300 else np.uint8)


def test_all_symbols_distinct_and_single_symbol():
    x = np.random.default_rng(1).permutation(4096)
    np.testing.assert_array_equal(qpack.huffman_decode(qpack.huffman_encode(x)), x)
    x = np.random.default_rng(2).permutation(65536)[:32768]  # 2**15 codes of 15 bits
    out = qpack.huffman_decode(qpack.huffman_encode(x, alphabet_size=65536, max_len=15))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, x)
    for n in (1, 7, 8, 9, 5000):
        x = np.full(n, 200)
        data = qpack.huffman_encode(x)
        assert len(data) == huffman_encoded_nbytes(np.bincount(x))
        np.testing.assert_array_equal(qpack.huffman_decode(data), x)


def test_empty_and_shapes_and_dtypes():
    for empty in ([], np.zeros((0, 3), np.int32), np.array([], np.uint16)):
        data = qpack.huffman_encode(empty)
        out = qpack.huffman_decode(data)
        assert out.shape == (0,) and out.dtype == np.uint8
    x = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(qpack.huffman_decode(qpack.huffman_encode(x)), x.ravel())
    strided = np.arange(100, dtype=np.int32)[::3]
    np.testing.assert_array_equal(qpack.huffman_decode(qpack.huffman_encode(strided)), strided)
    b = np.array([True, False, True])
    np.testing.assert_array_equal(qpack.huffman_decode(qpack.huffman_encode(b)), b)


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match="integer"):
        qpack.huffman_encode(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="non-negative"):
        qpack.huffman_encode([1, -1])
    with pytest.raises(ValueError, match="alphabet_size"):
        qpack.huffman_encode(np.array([5], np.uint8), alphabet_size=5)
    with pytest.raises(ValueError, match="< 3"):
        qpack.huffman_encode([5], alphabet_size=3)
    with pytest.raises(ValueError):
        qpack.huffman_encode([70000])
    for bad in (0, 65537, 2.0, True):
        with pytest.raises(ValueError, match="alphabet_size"):
            qpack.huffman_encode([0], alphabet_size=bad)
    with pytest.raises(ValueError, match="max_len"):
        qpack.huffman_encode([0, 1], max_len=16)
    with pytest.raises(ValueError):
        qpack.huffman_encode(np.arange(9), max_len=3)


# --- buffer types, no copies ------------------------------------------------------------


def test_decode_accepts_buffers_and_readonly_memmap(tmp_path):
    x = geometric_symbols(20000, 16, 0.7)
    data = qpack.huffman_encode(x)
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\xAA" * 13 + data + b"\x55" * 7)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    view = mm[13:13 + len(data)]
    arr = np.frombuffer(data, np.uint8)
    for buf in (data, bytearray(data), memoryview(data), arr, view):
        np.testing.assert_array_equal(qpack.huffman_decode(buf), x)
    from qpack.entropy import _as_byte_array

    assert np.shares_memory(_as_byte_array(view), mm)
    assert np.shares_memory(_as_byte_array(arr), arr)
    assert huffman_stream_info(view).count == 20000
    for bad in ("text", [1, 2], np.zeros(30, np.int16), np.zeros((2, 30), np.uint8)):
        with pytest.raises(ValueError):
            qpack.huffman_decode(bad)
    del view, mm


# --- hostile input ---------------------------------------------------------------------


def _valid_streams():
    return [
        qpack.huffman_encode(geometric_symbols(3000, 16, 0.7)),            # 1 stream
        qpack.huffman_encode(geometric_symbols(9000, 40, 0.8)),            # 4 streams
        qpack.huffman_encode(fibonacci_symbols(18), max_len=15),           # long codes
        qpack.huffman_encode(np.arange(600) % 300),                        # uint16 output
        qpack.huffman_encode([7, 7, 7, 7, 7]),                              # single symbol
        qpack.huffman_encode([]),
    ]


def test_truncated_at_every_byte_and_trailing_bytes():
    for data in _valid_streams():
        for cut in range(len(data)):
            with pytest.raises(FormatError):
                qpack.huffman_decode(data[:cut])
        with pytest.raises(FormatError):
            qpack.huffman_decode(data + b"\x00")


def test_random_bytes_never_crash():
    rng = np.random.default_rng(5)
    for trial in range(3000):
        n = int(rng.integers(0, 200))
        data = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        if trial % 2 and n >= 20:  # a plausible header so the deeper checks run
            data[0:4] = b"QH\x01" + bytes([1 if trial % 4 == 1 else 4])
        with pytest.raises(FormatError):
            qpack.huffman_decode(bytes(data))


def test_flipped_bits_end_cleanly():
    rng = np.random.default_rng(6)
    for data in _valid_streams()[:4]:
        count = huffman_stream_info(data).count
        for _ in range(300):
            buf = bytearray(data)
            pos = int(rng.integers(0, len(buf)))
            buf[pos] ^= 1 << int(rng.integers(0, 8))
            try:
                out = qpack.huffman_decode(bytes(buf), max_count=count)
            except FormatError:
                continue
            assert out.shape == (count,)


def _header(nstreams=1, alphabet=4, count=4, table_len=4, magic=b"QH", version=1):
    return magic + struct.pack("<BBIQI", version, nstreams, alphabet, count, table_len)


def test_bad_tables_and_counts():
    good = qpack.huffman_encode([0, 1, 2, 3] * 4)  # lengths 2,2,2,2; 32 payload bits
    np.testing.assert_array_equal(qpack.huffman_decode(good), [0, 1, 2, 3] * 4)
    payload = good[-4:]

    def stream(lens, seg_bits=(32,), count=16, payload=payload, **kw):
        nib = list(lens) + [0] * (len(lens) % 2)
        table = bytes(nib[i] | nib[i + 1] << 4 for i in range(0, len(nib), 2))
        head = _header(count=count, table_len=len(lens), nstreams=len(seg_bits), **kw)
        return head + table + struct.pack(f"<{len(seg_bits)}Q", *seg_bits) + payload

    assert stream([2, 2, 2, 2]) == good
    cases = {
        "Kraft": stream([1, 1, 2, 2]),                     # Kraft sum > 1
        "complete": stream([2, 2, 2, 0]),                  # incomplete prefix code
        "complete2": stream([2, 2, 3, 0]),
        "single": stream([0, 2, 0, 0]),                    # one symbol must have length 1
        "empty table": stream([0, 0, 0, 0]),
        "declares": stream([2, 2, 2, 2], count=1 << 40),  # count far above the data
        "bits": stream([2, 2, 2, 2], seg_bits=(1 << 62,)),
        "magic": stream([2, 2, 2, 2], magic=b"QX"),
        "version": stream([2, 2, 2, 2], version=2),
        "nstreams": stream([2, 2, 2, 2], seg_bits=(16, 16)),
        "alphabet": stream([2, 2, 2, 2], alphabet=3),
        "alphabet0": stream([2, 2, 2, 2], alphabet=0),
        "long": stream([2, 2, 2, 2], count=15),            # stream ends after its bits
        "short": stream([2, 2, 2, 2], count=17),
        "padding nibble": _header(table_len=3) + b"\x22\x22" + struct.pack("<Q", 32) + payload,
        "padding bits": stream([2, 2, 2, 2], seg_bits=(30,)),
        "empty with table": stream([1, 1, 0, 0], count=0, seg_bits=(0,), payload=b""),
    }
    for name, data in cases.items():
        with pytest.raises(FormatError):
            qpack.huffman_decode(data)
            pytest.fail(name)
    with pytest.raises(FormatError, match="more than"):
        qpack.huffman_decode(good, max_count=15)
    assert qpack.huffman_decode(good, max_count=16).shape == (16,)
    with pytest.raises(ValueError, match="max_count"):
        qpack.huffman_decode(good, max_count=-1)
    odd = bytearray(qpack.huffman_encode([0, 1, 2]))  # 5 payload bits
    qpack.huffman_decode(bytes(odd))
    odd[-1] |= 0x80
    with pytest.raises(FormatError, match="padding"):
        qpack.huffman_decode(bytes(odd))
    single = qpack.huffman_encode([3] * 9)
    with pytest.raises(FormatError, match="zero bits"):
        qpack.huffman_decode(single[:-1] + b"\x01")


def test_huffman_code_object():
    freqs = np.array([10, 0, 3, 1, 1])
    code = HuffmanCode.from_frequencies(freqs)
    assert code.table_len == 5
    assert code.encoded_nbits(freqs) == cost(freqs, code.lengths)
    assert code.encoded_nbits([1, 0, 0]) == int(code.lengths[0])
    for bad_lengths in ([16, 1], [1, 1, 1], [200]):
        with pytest.raises(ValueError, match="lengths"):
            HuffmanCode(np.array(bad_lengths, np.uint8), np.zeros(len(bad_lengths),
                                                                   np.uint32)).kernel_table()
    for bad in ([1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 2]):
        with pytest.raises(ValueError, match="no code"):
            code.encoded_nbits(bad)


def test_symbol_histogram_matches_bincount():
    from qpack.entropy import symbol_histogram

    rng = np.random.default_rng(5)
    for dtype, k in ((np.uint8, 16), (np.uint16, 3000), (np.int64, 7)):
        x = rng.integers(0, k, size=(37, 11)).astype(dtype)
        np.testing.assert_array_equal(symbol_histogram(x, k), np.bincount(x.ravel(), minlength=k))
    assert symbol_histogram([], 4).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="alphabet_size"):
        symbol_histogram(np.array([5], np.uint8), 4)
    with pytest.raises(ValueError, match="integer"):
        symbol_histogram([0.5], 4)
