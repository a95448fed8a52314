# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Bit-packing kernels: b-bit codes (1 <= b <= 8) <-> LSB-first packed bytes.

Layout (docs/FORMAT.md): code i occupies stream bits i*b .. i*b+b-1 and stream bit k is
bit (k mod 8) of byte k div 8. Eight codes of b bits fill exactly b bytes, so the kernels
work on groups of 8 codes; the last, partial group of a row writes ceil(r*b/8) bytes.

Every function here trusts its caller (qpack/bitpack.py) to have checked dtypes, shapes,
that each code is < 2**b, and that every buffer is long enough. That is why bounds
checking and wraparound are off: the wrapper already proved each index is in range.
"""

from cython.parallel cimport prange
from libc.stdint cimport uint8_t, uint64_t

# Rows shorter than this many codes are packed one row per thread; a long row (such as
# a 1-D array) is instead split into chunks of this many codes (a multiple of 8, so each
# chunk starts on a byte boundary) that threads take independently.
cdef enum:
    CHUNK_CODES = 65536


cdef inline void _pack_run(const uint8_t* src, uint8_t* dst, Py_ssize_t n,
                           const int b) noexcept nogil:
    """Pack n codes from src into ceil(n*b/8) bytes at dst. b is constant after inlining."""
    cdef Py_ssize_t g, ngroups = n >> 3
    cdef Py_ssize_t j, r, nbytes
    cdef uint64_t acc
    for g in range(ngroups):
        acc = 0
        for j in range(8):
            acc |= (<uint64_t>src[8 * g + j]) << (j * b)
        for j in range(b):
            dst[b * g + j] = <uint8_t>(acc >> (8 * j))
    r = n - (ngroups << 3)
    if r:
        acc = 0
        for j in range(r):
            acc |= (<uint64_t>src[8 * ngroups + j]) << (j * b)
        nbytes = (r * b + 7) >> 3
        for j in range(nbytes):
            dst[b * ngroups + j] = <uint8_t>(acc >> (8 * j))


cdef inline void _unpack_run(const uint8_t* src, uint8_t* dst, Py_ssize_t n,
                             const int b) noexcept nogil:
    """Unpack n codes from the ceil(n*b/8) bytes at src into dst."""
    cdef Py_ssize_t g, ngroups = n >> 3
    cdef Py_ssize_t j, r, nbytes
    cdef uint64_t acc
    cdef uint64_t mask = (<uint64_t>1 << b) - 1
    for g in range(ngroups):
        acc = 0
        for j in range(b):
            acc |= (<uint64_t>src[b * g + j]) << (8 * j)
        for j in range(8):
            dst[8 * g + j] = <uint8_t>((acc >> (j * b)) & mask)
    r = n - (ngroups << 3)
    if r:
        acc = 0
        nbytes = (r * b + 7) >> 3
        for j in range(nbytes):
            acc |= (<uint64_t>src[b * ngroups + j]) << (8 * j)
        for j in range(r):
            dst[8 * ngroups + j] = <uint8_t>((acc >> (j * b)) & mask)


cdef inline void _pack_any(const uint8_t* src, uint8_t* dst, Py_ssize_t n,
                           int b) noexcept nogil:
    # One call site per width, so the compiler specializes each with a constant b.
    if b == 1:
        _pack_run(src, dst, n, 1)
    elif b == 2:
        _pack_run(src, dst, n, 2)
    elif b == 3:
        _pack_run(src, dst, n, 3)
    elif b == 4:
        _pack_run(src, dst, n, 4)
    elif b == 5:
        _pack_run(src, dst, n, 5)
    elif b == 6:
        _pack_run(src, dst, n, 6)
    elif b == 7:
        _pack_run(src, dst, n, 7)
    else:
        _pack_run(src, dst, n, 8)


cdef inline void _unpack_any(const uint8_t* src, uint8_t* dst, Py_ssize_t n,
                             int b) noexcept nogil:
    if b == 1:
        _unpack_run(src, dst, n, 1)
    elif b == 2:
        _unpack_run(src, dst, n, 2)
    elif b == 3:
        _unpack_run(src, dst, n, 3)
    elif b == 4:
        _unpack_run(src, dst, n, 4)
    elif b == 5:
        _unpack_run(src, dst, n, 5)
    elif b == 6:
        _unpack_run(src, dst, n, 6)
    elif b == 7:
        _unpack_run(src, dst, n, 7)
    else:
        _unpack_run(src, dst, n, 8)


def or_reduce(const uint8_t[:, ::1] codes, int num_threads=1):
    """Bitwise OR of every element (used to check codes < 2**bits in one pass)."""
    cdef Py_ssize_t i, j, rows = codes.shape[0], cols = codes.shape[1]
    cdef uint8_t acc = 0, row_acc
    if rows == 0 or cols == 0:
        return 0
    for i in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
        row_acc = 0
        for j in range(cols):
            row_acc = row_acc | codes[i, j]
        acc |= row_acc
    return acc


def pack_rows(const uint8_t[:, ::1] codes, uint8_t[:, ::1] out, int bits, int num_threads=1):
    """Pack each row of ``codes`` (rows, ncols) into ``out`` (rows, ceil(ncols*bits/8)).

    Trusts the caller: 1 <= bits <= 8, every code < 2**bits, out has the exact shape.
    """
    cdef Py_ssize_t rows = codes.shape[0], ncols = codes.shape[1]
    cdef Py_ssize_t i, c, nchunks, start, length
    cdef Py_ssize_t chunk_bytes = (CHUNK_CODES // 8) * bits
    if rows == 0 or ncols == 0:
        return
    if ncols <= CHUNK_CODES:
        for i in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
            _pack_any(&codes[i, 0], &out[i, 0], ncols, bits)
        return
    nchunks = (ncols + CHUNK_CODES - 1) // CHUNK_CODES
    for i in range(rows):
        for c in prange(nchunks, nogil=True, num_threads=num_threads, schedule="static"):
            start = c * CHUNK_CODES
            length = min(CHUNK_CODES, ncols - start)
            _pack_any(&codes[i, start], &out[i, c * chunk_bytes], length, bits)


def unpack_rows(const uint8_t[:, ::1] packed, uint8_t[:, ::1] out, int bits,
                int num_threads=1):
    """Unpack each row of ``packed`` into ``out`` (rows, ncols).

    Trusts the caller: 1 <= bits <= 8 and each packed row holds >= ceil(ncols*bits/8) bytes.
    """
    cdef Py_ssize_t rows = out.shape[0], ncols = out.shape[1]
    cdef Py_ssize_t i, c, nchunks, start, length
    cdef Py_ssize_t chunk_bytes = (CHUNK_CODES // 8) * bits
    if rows == 0 or ncols == 0:
        return
    if ncols <= CHUNK_CODES:
        for i in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
            _unpack_any(&packed[i, 0], &out[i, 0], ncols, bits)
        return
    nchunks = (ncols + CHUNK_CODES - 1) // CHUNK_CODES
    for i in range(rows):
        for c in prange(nchunks, nogil=True, num_threads=num_threads, schedule="static"):
            start = c * CHUNK_CODES
            length = min(CHUNK_CODES, ncols - start)
            _unpack_any(&packed[i, c * chunk_bytes], &out[i, start], length, bits)
