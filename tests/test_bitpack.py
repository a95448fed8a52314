"""qpack.pack / qpack.unpack against a plain-numpy reference of the documented layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qpack
from qpack._kernels import bitpack as _kernels

BITS = list(range(1, 9))
# Lengths around byte and 8-code group edges, plus rows longer than the 65536-code chunk
# that the kernels split across threads.
# Inputs of at least PARALLEL_MIN_CODES codes use the threads: a long row in chunks of
# CHUNK_SIZE_CODES, or many short rows one row per thread.
LENGTHS = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1001, 65535, 65536, 65537,
           2 * 65536 + 13, 4 * 65536 + 13]
SHAPES_2D = [(0, 0), (0, 5), (4, 0), (1, 1), (3, 7), (17, 9), (64, 33), (5, 64), (200, 1),
             (1, 4 * 65536 + 5), (4, 70001), (4100, 65)]
INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


# --- plain-numpy reference of docs/FORMAT.md section 1 ---------------------------------

def ref_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Reference packer: spell every code as ``bits`` LSB-first bits, then pack the rows."""
    codes = np.asarray(codes).astype(np.uint64)
    stream = ((codes[..., None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    stream = stream.reshape(*codes.shape[:-1], codes.shape[-1] * bits)
    return np.packbits(stream, axis=-1, bitorder="little")


def ref_unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Reference unpacker: read ``count`` codes of ``bits`` bits from each row's bitstream."""
    stream = np.unpackbits(packed, axis=-1, bitorder="little")[..., : count * bits]
    stream = stream.reshape(*packed.shape[:-1], count, bits).astype(np.uint16)
    return (stream << np.arange(bits, dtype=np.uint16)).sum(axis=-1).astype(np.uint8)


def random_codes(shape, bits: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << bits, size=shape, dtype=np.uint8)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    qpack.set_num_threads(request.param)
    yield request.param
    qpack.set_num_threads(None)


def test_large_cases_reach_the_parallel_chunked_path():
    assert 4 * 65536 + 13 >= _kernels.PARALLEL_MIN_CODES
    assert 4 * 65536 + 5 > 4 * _kernels.CHUNK_SIZE_CODES
    assert 4 * 70001 >= _kernels.PARALLEL_MIN_CODES and 70001 > _kernels.CHUNK_SIZE_CODES
    assert 4100 * 65 >= _kernels.PARALLEL_MIN_CODES and 65 < _kernels.CHUNK_SIZE_CODES


# --- the reference matches the layout spelled out in the docs ---------------------------

def test_reference_matches_documented_examples():
    c = random_codes(64, 4, seed=1)
    assert (ref_pack(c, 4) == (c[0::2] | (c[1::2] << 4))).all()
    c = random_codes(64, 2, seed=2)
    assert (ref_pack(c, 2) == (c[0::4] | c[1::4] << 2 | c[2::4] << 4 | c[3::4] << 6)).all()
    # 3 bits: codes 5, 3, 7 -> stream 101 110 111 (LSB first) -> bytes 0b11011101, 0b1
    assert ref_pack(np.array([5, 3, 7]), 3).tolist() == [0b11011101, 0b1]
    assert ref_unpack(np.array([0b11011101, 0b1], np.uint8), 3, 3).tolist() == [5, 3, 7]


@pytest.mark.parametrize("bits", BITS)
def test_documented_examples_directly(bits):
    # Code i at stream bits i*b..i*b+b-1: code 1 at index i sets exactly stream bit i*b.
    for i in range(17):
        codes = np.zeros(17, np.uint8)
        codes[i] = 1
        expect = np.zeros(qpack.packed_nbytes(17, bits), np.uint8)
        expect[(i * bits) // 8] = 1 << ((i * bits) % 8)
        assert (qpack.pack(codes, bits) == expect).all(), (bits, i)
    assert qpack.pack([1, 2, 3], 4).tolist() == [0x21, 0x03]


# --- exact equality with the reference ----------------------------------------------------

@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", LENGTHS)
def test_pack_unpack_1d_match_reference(bits, n, threads):
    codes = random_codes(n, bits, seed=n * 8 + bits)
    packed = qpack.pack(codes, bits)
    assert packed.dtype == np.uint8 and packed.shape == (qpack.packed_nbytes(n, bits),)
    assert (packed == ref_pack(codes, bits)).all()
    back = qpack.unpack(packed, bits, n)
    assert back.dtype == np.uint8 and back.shape == (n,)
    assert (back == codes).all()


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", SHAPES_2D, ids=str)
def test_pack_unpack_2d_match_reference(bits, shape, threads):
    codes = random_codes(shape, bits, seed=shape[0] * 31 + shape[1] + bits)
    packed = qpack.pack(codes, bits)
    stride = qpack.packed_nbytes(shape[1], bits)
    assert packed.dtype == np.uint8 and packed.shape == (shape[0], stride)
    assert (packed == ref_pack(codes, bits)).all()
    back = qpack.unpack(packed, bits, shape[1])
    assert back.shape == shape and (back == codes).all()


@pytest.mark.parametrize("bits", BITS)
def test_2d_rows_start_on_byte_boundaries(bits):
    codes = random_codes((6, 13), bits, seed=bits)
    packed = qpack.pack(codes, bits)
    for r in range(6):
        assert (packed[r] == qpack.pack(codes[r], bits)).all()


@pytest.mark.parametrize("bits", BITS)
def test_unpack_random_bytes_matches_reference(bits, threads):
    # Arbitrary bytes, including set padding bits, decode exactly like the reference.
    rng = np.random.default_rng(bits)
    for n in (1, 5, 8, 13, 1000, 70001):
        raw = rng.integers(0, 256, size=qpack.packed_nbytes(n, bits), dtype=np.uint8)
        assert (qpack.unpack(raw, bits, n) == ref_unpack(raw, bits, n)).all()
        rows = rng.integers(0, 256, size=(3, qpack.packed_nbytes(n, bits)), dtype=np.uint8)
        assert (qpack.unpack(rows, bits, n) == ref_unpack(rows, bits, n)).all()


@pytest.mark.parametrize("bits", [1, 3, 4, 7])
def test_unpack_ignores_padding_and_extra_bytes(bits):
    n = 13
    codes = random_codes(n, bits, seed=5)
    packed = qpack.pack(codes, bits)
    used = n * bits
    if used % 8:
        dirty = packed.copy()
        dirty[-1] |= np.uint8((0xFF << (used % 8)) & 0xFF)
        assert (qpack.unpack(dirty, bits, n) == codes).all()
        assert (qpack.unpack(np.tile(dirty, (4, 1)), bits, n) == codes).all()
    # A 1-D buffer may be longer than needed; the extra bytes are not read.
    longer = np.concatenate([packed, np.full(5, 0xFF, np.uint8)])
    assert (qpack.unpack(longer, bits, n) == codes).all()
    assert (qpack.unpack(longer, bits, 0) == np.zeros(0, np.uint8)).all()


# --- input dtypes and layouts -------------------------------------------------------------

@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("bits", BITS)
def test_every_integer_dtype(dtype, bits):
    codes = random_codes((5, 37), bits, seed=bits)
    if (1 << bits) - 1 > np.iinfo(dtype).max:  # int8 holds codes of at most 7 bits
        codes >>= 1
    expect = ref_pack(codes, bits)
    assert (qpack.pack(codes.astype(dtype), bits) == expect).all()
    assert (qpack.pack(codes[0].astype(dtype), bits) == expect[0]).all()


@pytest.mark.parametrize("dtype", [">u2", ">i4", ">u8"])
def test_big_endian_dtypes(dtype):
    codes = random_codes((3, 21), 5, seed=9)
    assert (qpack.pack(codes.astype(dtype), 5) == ref_pack(codes, 5)).all()


def test_read_only_inputs():
    codes = random_codes(1000, 3, seed=4)
    frozen = codes.copy()
    frozen.flags.writeable = False
    packed = qpack.pack(frozen, 3)
    assert (packed == ref_pack(codes, 3)).all()
    packed.flags.writeable = False
    assert (qpack.unpack(packed, 3, 1000) == codes).all()


def test_bool_and_list_inputs():
    flags = np.random.default_rng(0).random(77) < 0.5
    assert (qpack.pack(flags, 1) == np.packbits(flags, bitorder="little")).all()
    assert qpack.pack([3, 0, 1, 2], 2).tolist() == [3 | 0 << 2 | 1 << 4 | 2 << 6]
    assert qpack.unpack(b"\x21\x03", 4, 3).tolist() == [1, 2, 3]
    assert qpack.unpack(bytearray(b"\x21\x03\xff"), 4, 3).tolist() == [1, 2, 3]
    assert qpack.unpack(memoryview(b"\x21\x03"), 4, 4).tolist() == [1, 2, 3, 0]


@pytest.mark.parametrize("bits", BITS)
def test_non_contiguous_inputs(bits, threads):
    base = random_codes((40, 300), bits, seed=bits)
    views = [base[:, ::3], base[::2, 1::2], base.T, base[::-1, ::-1], base[7, ::5],
             base[:, 11], np.asfortranarray(base)]
    for v in views:
        assert (qpack.pack(v, bits) == ref_pack(np.ascontiguousarray(v), bits)).all()
    big = random_codes(600_001, bits, seed=bits)[::2]
    assert (qpack.pack(big, bits) == ref_pack(big, bits)).all()
    # Non-contiguous packed input for unpack: a strided 1-D buffer and column-sliced rows.
    n = 50
    stride = qpack.packed_nbytes(n, bits)
    wide = ref_pack(random_codes((9, n), bits, seed=1), bits)
    padded = np.zeros((9, stride + 3), np.uint8)
    padded[:, :stride] = wide
    assert (qpack.unpack(padded[:, :stride], bits, n) == ref_unpack(wide, bits, n)).all()
    spaced = np.zeros(2 * stride, np.uint8)
    spaced[::2] = wide[0]
    assert (qpack.unpack(spaced[::2], bits, n) == ref_unpack(wide[0], bits, n)).all()


def test_pack_does_not_modify_input():
    codes = random_codes((8, 100), 3, seed=3)
    keep = codes.copy()
    qpack.pack(codes, 3)
    assert (codes == keep).all()


# --- out= reuse ---------------------------------------------------------------------------

@pytest.mark.parametrize("bits", BITS)
def test_out_is_filled_and_returned(bits, threads):
    rng = np.random.default_rng(bits)
    for shape in [(300_001,), (7, 130), (3000, 99)]:
        ncols = shape[-1]
        pshape = shape[:-1] + (qpack.packed_nbytes(ncols, bits),)
        pout = np.full(pshape, 0xAA, np.uint8)
        cout = np.full(shape, 0xAA, np.uint8)
        for _ in range(2):  # reuse the same buffers for new data
            codes = rng.integers(0, 1 << bits, size=shape, dtype=np.uint8)
            got = qpack.pack(codes, bits, out=pout)
            assert got is pout and (pout == ref_pack(codes, bits)).all()
            back = qpack.unpack(pout, bits, ncols, out=cout)
            assert back is cout and (cout == codes).all()


@pytest.mark.parametrize(
    "bad_out, match",
    [
        (np.zeros(5, np.uint8), "shape"),
        (np.zeros(4, np.int8), "dtype uint8"),
        (np.zeros(8, np.uint8)[::2], "C-contiguous"),
        ([0, 0, 0, 0], "numpy array"),
    ],
)
def test_bad_out_rejected(bad_out, match):
    with pytest.raises(ValueError, match=match):
        qpack.pack(np.zeros(8, np.uint8), 4, out=bad_out)
    with pytest.raises(ValueError, match=match):
        qpack.unpack(np.zeros(2, np.uint8), 4, 4, out=bad_out)


def test_out_overlapping_input_rejected():
    buf = np.zeros(16, np.uint8)
    with pytest.raises(ValueError, match="overlap"):
        qpack.pack(buf[:8], 8, out=buf[4:12])
    with pytest.raises(ValueError, match="overlap"):
        qpack.unpack(buf[:4], 4, 8, out=buf[2:10])


def test_read_only_out_rejected():
    out = np.zeros(4, np.uint8)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        qpack.pack(np.zeros(8, np.uint8), 4, out=out)


# --- bad input: always a ValueError naming the problem ------------------------------------

@pytest.mark.parametrize("bits", [0, 9, -1, 16, 2.0, 4.5, "4", None, True, np.float32(3)])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        qpack.pack(np.zeros(8, np.uint8), bits)
    with pytest.raises(ValueError, match="bits"):
        qpack.unpack(np.zeros(8, np.uint8), bits, 8)


def test_numpy_integer_bits_accepted():
    assert (qpack.pack([1, 2], np.int64(4)) == [0x21]).all()


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.uint64])
@pytest.mark.parametrize("n", [1, 9, 70001, 300_001])
def test_code_too_large(bits, dtype, n, threads):
    if (1 << bits) > np.iinfo(dtype).max:
        pytest.skip("this dtype cannot hold 2**bits")
    for where in sorted({0, n // 2, n - 1}):  # first, middle and last thread's share
        codes = np.zeros(n, dtype)
        codes[where] = 1 << bits  # a single bad code anywhere must be found
        with pytest.raises(ValueError, match=rf"< 2\*\*{bits}"):
            qpack.pack(codes, bits)
        with pytest.raises(ValueError, match=rf"< 2\*\*{bits}"):
            qpack.pack(codes.reshape(1, n), bits)
    rows = np.zeros((5000, 61), dtype)  # many short rows, one row per thread
    rows[-1, -1] = (1 << bits) | 1
    with pytest.raises(ValueError, match=rf"< 2\*\*{bits}"):
        qpack.pack(rows, bits)


def test_code_too_large_for_uint8_in_last_partial_group():
    codes = np.zeros(13, np.uint8)
    codes[-1] = 200
    with pytest.raises(ValueError, match=r"< 2\*\*3"):
        qpack.pack(codes, 3)


def test_huge_values_in_wide_dtypes():
    with pytest.raises(ValueError, match="< 2"):
        qpack.pack(np.array([1, 2**40], np.int64), 8)
    with pytest.raises(ValueError, match="< 2"):
        qpack.pack(np.array([2**64 - 1], np.uint64), 8)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_negative_codes(dtype):
    with pytest.raises(ValueError, match="non-negative"):
        qpack.pack(np.array([0, 1, -1, 2], dtype), 4)
    with pytest.raises(ValueError, match="non-negative"):
        qpack.pack([[0, 1], [-3, 2]], 8)


@pytest.mark.parametrize(
    "codes",
    [np.array([0.0, 1.0]), np.array([1.0], np.float16), [0.5, 1], np.array([1 + 0j]),
     np.array(["1"]), np.array([1, 2], dtype=object), [None]],
    ids=["float64", "float16", "list-float", "complex", "str", "object", "none"],
)
def test_non_integer_codes(codes):
    with pytest.raises(ValueError, match="integer dtype"):
        qpack.pack(codes, 4)


@pytest.mark.parametrize("shape", [(), (2, 3, 4), (1, 1, 1, 8)])
def test_pack_wrong_ndim(shape):
    with pytest.raises(ValueError, match="1-D or 2-D"):
        qpack.pack(np.zeros(shape, np.uint8), 4)


@pytest.mark.parametrize("shape", [(), (2, 3, 4)])
def test_unpack_wrong_ndim(shape):
    with pytest.raises(ValueError, match="1-D or 2-D"):
        qpack.unpack(np.zeros(shape, np.uint8), 4, 2)


@pytest.mark.parametrize("bits", BITS)
def test_unpack_buffer_too_short(bits):
    for count in (1, 8, 9, 1000):
        need = qpack.packed_nbytes(count, bits)
        with pytest.raises(ValueError, match=f"need {need}"):
            qpack.unpack(np.zeros(need - 1, np.uint8), bits, count)
        with pytest.raises(ValueError, match="per row need exactly"):
            qpack.unpack(np.zeros((3, need - 1), np.uint8), bits, count)
        with pytest.raises(ValueError, match="per row need exactly"):
            qpack.unpack(np.zeros((3, need + 1), np.uint8), bits, count)


def test_unpack_huge_count_fails_before_allocating():
    with pytest.raises(ValueError, match="need"):
        qpack.unpack(np.zeros(16, np.uint8), 8, 2**62)
    with pytest.raises(ValueError, match="need"):
        qpack.unpack(np.zeros((0, 4), np.uint8), 8, 2**62)


@pytest.mark.parametrize("count", [-1, 2.0, "3", None, True])
def test_unpack_bad_count(count):
    with pytest.raises(ValueError, match="count"):
        qpack.unpack(np.zeros(8, np.uint8), 4, count)


@pytest.mark.parametrize("packed", [np.zeros(4, np.int8), np.zeros(4, np.uint16),
                                    np.zeros(4, np.float32), [1.5, 2], [33, 3]])
def test_unpack_packed_must_be_uint8(packed):
    with pytest.raises(ValueError, match="uint8"):
        qpack.unpack(packed, 4, 2)


# --- properties ---------------------------------------------------------------------------

@st.composite
def codes_and_bits(draw):
    bits = draw(st.integers(1, 8))
    shape = draw(st.one_of(hnp.array_shapes(min_dims=1, max_dims=1, min_side=0, max_side=300),
                           hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=40)))
    dtype = draw(st.sampled_from(INT_DTYPES))
    top = min((1 << bits) - 1, int(np.iinfo(dtype).max))  # int8 holds at most 127
    codes = draw(hnp.arrays(dtype, shape, elements=st.integers(0, top)))
    return codes, bits


@given(codes_and_bits())
def test_property_round_trip(case):
    codes, bits = case
    packed = qpack.pack(codes, bits)
    assert (packed == ref_pack(codes, bits)).all()
    back = qpack.unpack(packed, bits, codes.shape[-1])
    assert back.shape == codes.shape and (back == codes).all()


@given(st.integers(1, 8), st.integers(0, 200), st.integers(1, 4), st.data())
def test_property_repack_clears_only_padding(bits, count, rows, data):
    # Any byte string unpacks; packing the result back reproduces it with padding cleared.
    nbytes = qpack.packed_nbytes(count, bits)
    raw = data.draw(hnp.arrays(np.uint8, (rows, nbytes)))
    codes = qpack.unpack(raw, bits, count)
    assert (codes == ref_unpack(raw, bits, count)).all()
    repacked = qpack.pack(codes, bits)
    expect = raw.copy()
    if count * bits % 8:
        expect[:, -1] &= np.uint8((1 << (count * bits % 8)) - 1)
    assert (repacked == expect).all()
