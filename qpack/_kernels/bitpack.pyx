# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Bit-packing kernels: b-bit codes (1 <= b <= 8) <-> LSB-first packed bytes.

Layout (docs/FORMAT.md): code i occupies stream bits i*b .. i*b+b-1 and stream bit k is
bit (k mod 8) of byte k div 8. Eight codes of b bits fill exactly b bytes, so a row is a
run of b-byte groups of 8 codes plus a partial group of r codes in ceil(r*b/8) bytes.

Paths, per width (each compiled with b as a constant):
  8 bits          memcpy.
  1, 2, 4 bits    byte-at-a-time loops written so the compiler vectorizes them.
  3, 5, 6, 7 bits AVX-512 VBMI (64 codes a step) when the build targets it, else BMI2
                  pext/pdep (8 codes a step), else the simple loop.
  any             the simple 64-bit-accumulator loop: portable, the readable reference
                  for the others, and what finishes every run's partial group.

Every function here trusts its caller (qpack/bitpack.py) to have checked dtypes, shapes,
and that every buffer is long enough for the row lengths it passes. That is why bounds
checking and wraparound are off: the wrapper already proved each index is in range. Code
values are NOT trusted: ``pack_rows`` returns the OR of every code it read so the wrapper
can reject a code >= 2**bits without a separate pass over the input.

The per-run loops are plain C in the verbatim block below rather than Cython, because they
need things Cython does not express: ``restrict`` (without it the byte loops are not
vectorized as cleanly), unaligned word loads/stores (memcpy), the BMI2 bit-deposit/extract
instructions, and a compile-time switch between them and the portable simple version
(QPACK_PORTABLE=1 builds without BMI2, big-endian machines).
"""

from cython.parallel cimport prange
from libc.stdint cimport uint8_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define QP_LE 1
    #else
    #define QP_LE 0
    #endif
    /* The word paths move 8 codes as one little-endian 64-bit word through BMI2. */
    #if QP_LE && defined(__BMI2__) && defined(__x86_64__)
    #include <immintrin.h>
    #define QP_PDEP 1
    #else
    #define QP_PDEP 0
    #endif
    /* ... and 64 codes at a time through AVX-512 VBMI byte permutes when available. */
    #if QP_PDEP && defined(__AVX512VBMI__) && defined(__AVX512BW__)
    #define QP_VBMI 1
    #else
    #define QP_VBMI 0
    #endif

    /* ---- Simple version: one group of 8 codes <-> b bytes through a 64-bit accumulator.
       Portable, the reference for the fast paths below, and what handles every run's
       last, partial group. Pack returns the OR of the codes it read. */
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

    /* ---- 1, 2 and 4 bits: each byte holds per = 8/b whole codes. These loops are
       written so that GCC/Clang vectorize them (64 bytes per AVX-512 step; checked with
       objdump): pack builds byte j from codes per*j .. per*j+per-1; unpack spreads
       byte j into a per-byte word by shift-or-mask steps, each step moving the upper half
       of every field up to its own lane, then stores the word (little-endian, so
       lane t is code per*j+t). */
    static inline uint8_t qp_pack_bytes(const uint8_t *restrict src, uint8_t *restrict dst,
                                        Py_ssize_t n, const int b) {
        const int per = 8 / b;
        const Py_ssize_t nfull = n / per;
        uint8_t seen = 0;
        for (Py_ssize_t j = 0; j < nfull; j++) {
            uint8_t x = 0;
            for (int t = 0; t < per; t++) {
                const uint8_t c = src[per * j + t];
                seen |= c;
                x |= (uint8_t)(c << (t * b));
            }
            dst[j] = x;
        }
        return seen | qp_pack_simple(src + per * nfull, dst + nfull, n - per * nfull, b);
    }

    #if QP_LE
    static inline void qp_unpack_bytes(const uint8_t *restrict src, uint8_t *restrict dst,
                                       Py_ssize_t n, const int b) {
        const int per = 8 / b;
        const Py_ssize_t nfull = n / per;
        if (b == 4) {          /* byte -> 2 lanes */
            for (Py_ssize_t j = 0; j < nfull; j++) {
                uint16_t w = src[j];
                w = (w | w << 4) & 0x0F0F;
                memcpy(dst + 2 * j, &w, 2);
            }
        } else if (b == 2) {   /* byte -> 2 nibbles -> 4 lanes */
            for (Py_ssize_t j = 0; j < nfull; j++) {
                uint32_t w = src[j];
                w = (w | w << 12) & 0x000F000Fu;
                w = (w | w << 6) & 0x03030303u;
                memcpy(dst + 4 * j, &w, 4);
            }
        } else {               /* byte -> 2 nibbles -> 4 pairs -> 8 lanes */
            for (Py_ssize_t j = 0; j < nfull; j++) {
                uint64_t w = src[j];
                w = (w | w << 28) & 0x0000000F0000000FULL;
                w = (w | w << 14) & 0x0003000300030003ULL;
                w = (w | w << 7) & 0x0101010101010101ULL;
                memcpy(dst + 8 * j, &w, 8);
            }
        }
        qp_unpack_simple(src + nfull, dst + per * nfull, n - per * nfull, b);
    }
    #else
    #define qp_unpack_bytes qp_unpack_simple
    #endif

    #if QP_VBMI
    /* ---- 3, 5, 6 and 7 bits with AVX-512 VBMI, 64 codes (8 groups, 8*b bytes) per step.
       Unpack: vpermb copies the 8 bytes starting at group g's first byte (b*g) into
       64-bit lane g; vpmultishiftqb then extracts, for byte j of each lane, the 8 bits
       starting at bit j*b of that lane, and an AND keeps the low b. Pack runs the other
       way: within each 64-bit lane of 8 codes, merge neighbours pairwise (8 -> 16 -> 32
       -> 64-bit fields, each step shifting the upper field left by the lower field's
       width), which leaves the group's 8*b stream bits at the bottom of the lane; vpermb
       then gathers the low b bytes of each lane into 8*b consecutive bytes. Loads and
       stores are masked to exactly 8*b bytes, so nothing outside the run is touched.
       Each returns how many codes it handled (a multiple of 64); the caller finishes. */
    static inline Py_ssize_t qp_unpack_vbmi(const uint8_t *src, uint8_t *dst, Py_ssize_t n,
                                            const int b) {
        uint8_t gather[64], shifts[64];
        for (int i = 0; i < 64; i++) {
            gather[i] = (uint8_t)(b * (i >> 3) + (i & 7));
            shifts[i] = (uint8_t)(b * (i & 7));
        }
        const __m512i vgather = _mm512_loadu_si512(gather);
        const __m512i vshift = _mm512_loadu_si512(shifts);
        const __m512i vmask = _mm512_set1_epi8((char)((1 << b) - 1));
        const __mmask64 inmask = ((__mmask64)1 << (8 * b)) - 1;
        Py_ssize_t i = 0;
        for (; i + 64 <= n; i += 64) {
            __m512i v = _mm512_maskz_loadu_epi8(inmask, src + (i >> 3) * b);
            v = _mm512_permutexvar_epi8(vgather, v);
            v = _mm512_multishift_epi64_epi8(vshift, v);
            _mm512_storeu_si512(dst + i, _mm512_and_si512(v, vmask));
        }
        return i;
    }

    static inline Py_ssize_t qp_pack_vbmi(const uint8_t *src, uint8_t *dst, Py_ssize_t n,
                                          const int b, uint64_t *seen) {
        uint8_t compact[64];
        for (int k = 0; k < 64; k++)
            compact[k] = (uint8_t)(k < 8 * b ? 8 * (k / b) + k % b : 0);
        const __m512i vcompact = _mm512_loadu_si512(compact);
        const __mmask64 outmask = ((__mmask64)1 << (8 * b)) - 1;
        const __m512i lo8 = _mm512_set1_epi16(0x00FF), lo16 = _mm512_set1_epi32(0xFFFF);
        const __m512i lo32 = _mm512_set1_epi64(0xFFFFFFFFLL);
        __m512i vseen = _mm512_setzero_si512();
        Py_ssize_t i = 0;
        for (; i + 64 <= n; i += 64) {
            __m512i v = _mm512_loadu_si512(src + i);
            vseen = _mm512_or_si512(vseen, v);
            v = _mm512_or_si512(_mm512_and_si512(v, lo8),
                                _mm512_slli_epi16(_mm512_srli_epi16(v, 8), b));
            v = _mm512_or_si512(_mm512_and_si512(v, lo16),
                                _mm512_slli_epi32(_mm512_srli_epi32(v, 16), 2 * b));
            v = _mm512_or_si512(_mm512_and_si512(v, lo32),
                                _mm512_slli_epi64(_mm512_srli_epi64(v, 32), 4 * b));
            v = _mm512_permutexvar_epi8(vcompact, v);
            _mm512_mask_storeu_epi8(dst + (i >> 3) * b, outmask, v);
        }
        *seen |= (uint64_t)_mm512_reduce_or_epi64(vseen);
        return i;
    }
    #endif

    #if QP_PDEP
    /* ---- 3, 5, 6 and 7 bits on x86-64 with BMI2: with L = the low b bits of every byte
       lane (0x0707..07 for b = 3), pext(8 code bytes, L) squeezes 8 codes into the low
       8*b bits of a word, which are exactly the group's b packed bytes; pdep(b bytes, L)
       spreads them back, one code per byte. One instruction per 8 codes. Groups move as
       whole 64-bit words: a word store at dst + b*g also writes 8 - b bytes of the
       following groups, which the next iterations overwrite. Only groups whose 8-byte
       access stays inside this run's full groups do that (the run may be one chunk of a
       row that another thread is writing next to); the rest move b bytes, and the
       partial group goes through the simple version. Unrolling matters here: it roughly
       doubled the in-cache speed (loop overhead, not pdep, was the limit). */
    static inline uint64_t qp_lanes(const int b) {
        return 0x0101010101010101ULL * (((uint64_t)1 << b) - 1);
    }

    static inline uint8_t qp_pack_words(const uint8_t *src, uint8_t *dst, Py_ssize_t n,
                                        const int b) {
        const uint64_t lanes = qp_lanes(b);
        uint64_t seen = 0;
    #if QP_VBMI
        const Py_ssize_t done = qp_pack_vbmi(src, dst, n, b, &seen);
        src += done;
        dst += (done >> 3) * b;
        n -= done;
    #endif
        const Py_ssize_t ngroups = n >> 3;
        const Py_ssize_t nwide = ngroups - (7 + b) / b + 1;  /* b*g + 8 <= b*ngroups */
        Py_ssize_t g = 0;
        _Pragma("GCC unroll 4")
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

    static inline void qp_unpack_words(const uint8_t *src, uint8_t *dst, Py_ssize_t n,
                                       const int b) {
        const uint64_t lanes = qp_lanes(b);
    #if QP_VBMI
        const Py_ssize_t done = qp_unpack_vbmi(src, dst, n, b);
        src += (done >> 3) * b;
        dst += done;
        n -= done;
    #endif
        const Py_ssize_t ngroups = n >> 3;
        const Py_ssize_t nwide = ngroups - (7 + b) / b + 1;
        Py_ssize_t g = 0;
        _Pragma("GCC unroll 4")
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
    #define qp_pack_words qp_pack_simple
    #define qp_unpack_words qp_unpack_simple
    #endif

    /* One call per width, so each path is compiled with a constant b. At 8 bits packing
       is a copy, and every byte is a valid code, so there is nothing to OR. */
    static inline uint8_t qp_pack_any(const uint8_t *src, uint8_t *dst, Py_ssize_t n,
                                      int b) {
        switch (b) {
            case 1: return qp_pack_bytes(src, dst, n, 1);
            case 2: return qp_pack_bytes(src, dst, n, 2);
            case 3: return qp_pack_words(src, dst, n, 3);
            case 4: return qp_pack_bytes(src, dst, n, 4);
            case 5: return qp_pack_words(src, dst, n, 5);
            case 6: return qp_pack_words(src, dst, n, 6);
            case 7: return qp_pack_words(src, dst, n, 7);
            default: memcpy(dst, src, (size_t)n); return 0;
        }
    }

    static inline void qp_unpack_any(const uint8_t *src, uint8_t *dst, Py_ssize_t n, int b) {
        switch (b) {
            case 1: qp_unpack_bytes(src, dst, n, 1); break;
            case 2: qp_unpack_bytes(src, dst, n, 2); break;
            case 3: qp_unpack_words(src, dst, n, 3); break;
            case 4: qp_unpack_bytes(src, dst, n, 4); break;
            case 5: qp_unpack_words(src, dst, n, 5); break;
            case 6: qp_unpack_words(src, dst, n, 6); break;
            case 7: qp_unpack_words(src, dst, n, 7); break;
            default: memcpy(dst, src, (size_t)n); break;
        }
    }
    """
    int QP_PDEP
    int QP_VBMI
    uint8_t qp_pack_any(const uint8_t* src, uint8_t* dst, Py_ssize_t n, int b) noexcept nogil
    void qp_unpack_any(const uint8_t* src, uint8_t* dst, Py_ssize_t n, int b) noexcept nogil

# Rows shorter than this many codes are packed one row per thread; a long row (such as
# a 1-D array) is instead split into chunks of this many codes (a multiple of 8, so each
# chunk starts on a byte boundary) that threads take independently.
cdef enum:
    CHUNK_CODES = 65536

# Below this many codes in total the kernels run on the calling thread: the work takes
# microseconds, less than waking a second thread (and far less than waiting for a CPU
# when the machine is busy, which costs a scheduler time slice).
cdef enum:
    PARALLEL_MIN = 262144

PARALLEL_MIN_CODES = PARALLEL_MIN
CHUNK_SIZE_CODES = CHUNK_CODES

# Which path this build uses for 3/5/6/7 bits (reported by the benchmark).
ODD_WIDTH_PATH = ("avx512-vbmi + bmi2 tail" if QP_VBMI else "bmi2 pext/pdep" if QP_PDEP
                  else "portable simple loop")


# boundscheck/wraparound are off in both kernels below: qpack.bitpack.pack/unpack checked
# every shape and length they pass (see the module docstring).
def pack_rows(const uint8_t[:, ::1] codes, uint8_t[:, ::1] out, int bits, int num_threads=1):
    """Pack each row of ``codes`` (rows, ncols) into ``out`` (rows, ceil(ncols*bits/8)).

    Returns the bitwise OR of every code read (0 for bits == 8, where every byte is a valid
    code); the caller rejects the input if it has bits at or above ``bits``. Trusts the
    caller: 1 <= bits <= 8 and out has exactly that shape.
    """
    cdef Py_ssize_t rows = codes.shape[0], ncols = codes.shape[1]
    cdef Py_ssize_t i, c, task, nchunks, start, length
    cdef Py_ssize_t chunk_bytes = (CHUNK_CODES // 8) * bits
    cdef uint8_t seen = 0
    if rows == 0 or ncols == 0:
        return 0
    if rows * ncols < PARALLEL_MIN:
        num_threads = 1
    if num_threads == 1:  # skip the OpenMP region: it costs more than small inputs
        with nogil:
            for i in range(rows):
                seen |= qp_pack_any(&codes[i, 0], &out[i, 0], ncols, bits)
        return seen
    if ncols <= CHUNK_CODES:
        for i in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
            seen |= qp_pack_any(&codes[i, 0], &out[i, 0], ncols, bits)
        return seen
    # Long rows: every (row, chunk) pair is an independent task.
    nchunks = (ncols + CHUNK_CODES - 1) // CHUNK_CODES
    for task in prange(rows * nchunks, nogil=True, num_threads=num_threads,
                       schedule="static"):
        i = task // nchunks
        c = task % nchunks
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
    cdef Py_ssize_t i, c, task, nchunks, start, length
    cdef Py_ssize_t chunk_bytes = (CHUNK_CODES // 8) * bits
    if rows == 0 or ncols == 0:
        return
    if rows * ncols < PARALLEL_MIN:
        num_threads = 1
    if num_threads == 1:
        with nogil:
            for i in range(rows):
                qp_unpack_any(&packed[i, 0], &out[i, 0], ncols, bits)
        return
    if ncols <= CHUNK_CODES:
        for i in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
            qp_unpack_any(&packed[i, 0], &out[i, 0], ncols, bits)
        return
    nchunks = (ncols + CHUNK_CODES - 1) // CHUNK_CODES
    for task in prange(rows * nchunks, nogil=True, num_threads=num_threads,
                       schedule="static"):
        i = task // nchunks
        c = task % nchunks
        start = c * CHUNK_CODES
        length = min(CHUNK_CODES, ncols - start)
        qp_unpack_any(&packed[i, c * chunk_bytes], &out[i, start], length, bits)
