# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Bit-packing kernels: b-bit codes (1 <= b <= 8) <-> LSB-first packed bytes.

Layout (docs/FORMAT.md): code i occupies stream bits i*b .. i*b+b-1 and stream bit k is
bit (k mod 8) of byte k div 8. Eight codes of b bits fill exactly b bytes, so the kernels
work on groups of 8 codes; the last, partial group of a row writes ceil(r*b/8) bytes.

Every function here trusts its caller (qpack/bitpack.py) to have checked dtypes, shapes,
and that every buffer is long enough for the row lengths it passes. That is why bounds
checking and wraparound are off: the wrapper already proved each index is in range. Code
values are NOT trusted: ``pack_rows`` returns the OR of every code it read so the wrapper
can reject a code >= 2**bits without a separate pass over the input.

The per-run loops are plain C in the verbatim block below rather than Cython, because they
need three things Cython does not express: unaligned 64-bit loads/stores (memcpy), the BMI2
bit-deposit/extract instructions, and a compile-time switch between them and a portable
fallback (QPACK_PORTABLE=1 builds, big-endian machines).
"""

from cython.parallel cimport prange
from libc.stdint cimport uint8_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    /* The word paths read 8 packed codes as one little-endian 64-bit word. */
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ \
        && defined(__BMI2__) && defined(__x86_64__)
    #include <immintrin.h>
    #define QP_PDEP 1
    #else
    #define QP_PDEP 0
    #endif

    /* ---- Simple version: one group of 8 codes <-> b bytes through a 64-bit accumulator.
       Portable and the reference for the fast path; also handles every row's last,
       partial group. Returns (for pack) the OR of the codes it read. */
    static inline uint8_t qp_pack_simple(const uint8_t *src, uint8_t *dst, Py_ssize_t n,
                                         const int b) {
        uint8_t seen = 0;
        for (Py_ssize_t g = 0; g < n; g += 8) {
            const int m = n - g < 8 ? (int)(n - g) : 8;
            uint64_t acc = 0;
            for (int j = 0; j < m; j++) {
                seen |= src[g + j];
                acc |= (uint64_t)src[g + j] << (j * b);
            }
            const int nb = (m * b + 7) >> 3;
            for (int j = 0; j < nb; j++)
                dst[(g >> 3) * b + j] = (uint8_t)(acc >> (8 * j));
        }
        return seen;
    }

    static inline void qp_unpack_simple(const uint8_t *src, uint8_t *dst, Py_ssize_t n,
                                        const int b) {
        const uint64_t mask = ((uint64_t)1 << b) - 1;
        for (Py_ssize_t g = 0; g < n; g += 8) {
            const int m = n - g < 8 ? (int)(n - g) : 8;
            const int nb = (m * b + 7) >> 3;
            uint64_t acc = 0;
            for (int j = 0; j < nb; j++)
                acc |= (uint64_t)src[(g >> 3) * b + j] << (8 * j);
            for (int j = 0; j < m; j++)
                dst[g + j] = (uint8_t)((acc >> (j * b)) & mask);
        }
    }

    #if QP_PDEP
    /* ---- Fast version (x86-64 with BMI2): with L = the low b bits of every byte lane
       (0x0707..07 for b = 3), pext(8 code bytes, L) squeezes 8 codes into the low 8*b bits
       of a word, which are exactly the group's b packed bytes; pdep(b bytes, L) spreads them
       back, one code per byte. One instruction per 8 codes, 1 per cycle on current cores.
       Groups move as whole 64-bit words. A word store at dst + b*g also writes 8 - b bytes
       of the following groups, which the next iterations overwrite; only groups whose
       8-byte access stays inside this run's full groups use it (the run may be one chunk
       of a row that another thread is writing next to). The rest go through memcpy of b
       bytes, and the partial group through the simple version. */
    static inline uint64_t qp_lanes(const int b) {
        return 0x0101010101010101ULL * (((uint64_t)1 << b) - 1);
    }

    static inline uint8_t qp_pack_run(const uint8_t *src, uint8_t *dst, Py_ssize_t n,
                                      const int b) {
        const uint64_t lanes = qp_lanes(b);
        const Py_ssize_t ngroups = n >> 3;
        const Py_ssize_t nwide = ngroups - (7 + b) / b + 1;  /* b*g + 8 <= b*ngroups */
        uint64_t seen = 0;
        Py_ssize_t g = 0;
        for (; g < nwide; g++) {
            uint64_t w, p;
            memcpy(&w, src + 8 * g, 8);
            seen |= w;
            p = _pext_u64(w, lanes);
            memcpy(dst + b * g, &p, 8);
        }
        for (; g < ngroups; g++) {
            uint64_t w, p;
            memcpy(&w, src + 8 * g, 8);
            seen |= w;
            p = _pext_u64(w, lanes);
            memcpy(dst + b * g, &p, b);
        }
        seen |= seen >> 32;
        seen |= seen >> 16;
        seen |= seen >> 8;
        return (uint8_t)seen | qp_pack_simple(src + 8 * ngroups, dst + b * ngroups,
                                              n - 8 * ngroups, b);
    }

    static inline void qp_unpack_run(const uint8_t *src, uint8_t *dst, Py_ssize_t n,
                                     const int b) {
        const uint64_t lanes = qp_lanes(b);
        const Py_ssize_t ngroups = n >> 3;
        const Py_ssize_t nwide = ngroups - (7 + b) / b + 1;
        Py_ssize_t g = 0;
        for (; g < nwide; g++) {
            uint64_t w, c;
            memcpy(&w, src + b * g, 8);
            c = _pdep_u64(w, lanes);
            memcpy(dst + 8 * g, &c, 8);
        }
        for (; g < ngroups; g++) {
            uint64_t w = 0, c;
            memcpy(&w, src + b * g, b);
            c = _pdep_u64(w, lanes);
            memcpy(dst + 8 * g, &c, 8);
        }
        qp_unpack_simple(src + b * ngroups, dst + 8 * ngroups, n - 8 * ngroups, b);
    }
    #else
    #define qp_pack_run qp_pack_simple
    #define qp_unpack_run qp_unpack_simple
    #endif

    /* 8 bits: packing is a copy; every byte is a valid code, so no OR is needed. */
    static inline uint8_t qp_pack_any(const uint8_t *src, uint8_t *dst, Py_ssize_t n,
                                      int b) {
        /* One call per width so each is compiled with a constant b. */
        switch (b) {
            case 1: return qp_pack_run(src, dst, n, 1);
            case 2: return qp_pack_run(src, dst, n, 2);
            case 3: return qp_pack_run(src, dst, n, 3);
            case 4: return qp_pack_run(src, dst, n, 4);
            case 5: return qp_pack_run(src, dst, n, 5);
            case 6: return qp_pack_run(src, dst, n, 6);
            case 7: return qp_pack_run(src, dst, n, 7);
            default: memcpy(dst, src, (size_t)n); return 0;
        }
    }

    static inline void qp_unpack_any(const uint8_t *src, uint8_t *dst, Py_ssize_t n, int b) {
        switch (b) {
            case 1: qp_unpack_run(src, dst, n, 1); break;
            case 2: qp_unpack_run(src, dst, n, 2); break;
            case 3: qp_unpack_run(src, dst, n, 3); break;
            case 4: qp_unpack_run(src, dst, n, 4); break;
            case 5: qp_unpack_run(src, dst, n, 5); break;
            case 6: qp_unpack_run(src, dst, n, 6); break;
            case 7: qp_unpack_run(src, dst, n, 7); break;
            default: memcpy(dst, src, (size_t)n); break;
        }
    }
    """
    int QP_PDEP
    uint8_t qp_pack_any(const uint8_t* src, uint8_t* dst, Py_ssize_t n, int b) noexcept nogil
    void qp_unpack_any(const uint8_t* src, uint8_t* dst, Py_ssize_t n, int b) noexcept nogil

# Rows shorter than this many codes are packed one row per thread; a long row (such as
# a 1-D array) is instead split into chunks of this many codes (a multiple of 8, so each
# chunk starts on a byte boundary) that threads take independently.
cdef enum:
    CHUNK_CODES = 65536

# True when the BMI2 word path was compiled in (reported by the benchmark).
FAST_PATH = bool(QP_PDEP)


def pack_rows(const uint8_t[:, ::1] codes, uint8_t[:, ::1] out, int bits, int num_threads=1):
    """Pack each row of ``codes`` (rows, ncols) into ``out`` (rows, ceil(ncols*bits/8)).

    Returns the bitwise OR of every code read (0 for bits == 8, where every byte is a valid
    code); the caller rejects the input if it has bits at or above ``bits``. Trusts the
    caller: 1 <= bits <= 8 and out has exactly that shape.
    """
    cdef Py_ssize_t rows = codes.shape[0], ncols = codes.shape[1]
    cdef Py_ssize_t i, c, nchunks, start, length
    cdef Py_ssize_t chunk_bytes = (CHUNK_CODES // 8) * bits
    cdef uint8_t seen = 0
    if rows == 0 or ncols == 0:
        return 0
    if ncols <= CHUNK_CODES:
        for i in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
            seen |= qp_pack_any(&codes[i, 0], &out[i, 0], ncols, bits)
        return seen
    nchunks = (ncols + CHUNK_CODES - 1) // CHUNK_CODES
    for i in range(rows):
        for c in prange(nchunks, nogil=True, num_threads=num_threads, schedule="static"):
            start = c * CHUNK_CODES
            length = min(CHUNK_CODES, ncols - start)
            seen |= qp_pack_any(&codes[i, start], &out[i, c * chunk_bytes], length, bits)
    return seen


def unpack_rows(const uint8_t[:, ::1] packed, uint8_t[:, ::1] out, int bits,
                int num_threads=1):
    """Unpack each row of ``packed`` into ``out`` (rows, ncols).

    Trusts the caller: 1 <= bits <= 8 and each packed row holds >= ceil(ncols*bits/8) bytes.
    Padding bits after the last code of a row are never read into a code.
    """
    cdef Py_ssize_t rows = out.shape[0], ncols = out.shape[1]
    cdef Py_ssize_t i, c, nchunks, start, length
    cdef Py_ssize_t chunk_bytes = (CHUNK_CODES // 8) * bits
    if rows == 0 or ncols == 0:
        return
    if ncols <= CHUNK_CODES:
        for i in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
            qp_unpack_any(&packed[i, 0], &out[i, 0], ncols, bits)
        return
    nchunks = (ncols + CHUNK_CODES - 1) // CHUNK_CODES
    for i in range(rows):
        for c in prange(nchunks, nogil=True, num_threads=num_threads, schedule="static"):
            start = c * CHUNK_CODES
            length = min(CHUNK_CODES, ncols - start)
            qp_unpack_any(&packed[i, c * chunk_bytes], &out[i, start], length, bits)
