/* Bit packing of b-bit codes (1 <= b <= 8) <-> LSB-first packed bytes, the one
 * implementation used by qpack.bitpack (pack/unpack) and by the matmul kernels (rows of
 * codes for the generic paths and tails).
 *
 * Layout (docs/FORMAT.md): code i occupies stream bits i*b .. i*b+b-1 and stream bit k is
 * bit (k mod 8) of byte k div 8. Eight codes of b bits fill exactly b bytes, so a run is
 * b-byte groups of 8 codes plus a partial group of r codes in ceil(r*b/8) bytes.
 *
 * Paths, per width (each compiled with b as a constant), chosen by the caller's ISA level:
 *   8 bits          memcpy.
 *   1, 2, 4 bits    byte-at-a-time loops the compiler vectorizes (one clone per ISA).
 *   3, 5, 6, 7 bits AVX-512 VBMI (64 codes a step), else BMI2 pext/pdep (8 codes a step),
 *                   else the simple loop.
 *   2, 4 bits       NEON (AArch64) vld2q/vld4q and vst2q/vst4q, 32 or 64 codes a step.
 *   any             the simple 64-bit-accumulator loop: portable, the readable reference for
 *                   the others, and what finishes every run's partial group.
 * Callers guarantee that src holds ceil(n*b/8) bytes and dst n codes (unpack), and the
 * reverse for pack; no path reads or writes outside them (the VBMI loads and stores are
 * masked; the 8-byte word moves stay inside the run's full groups). Pack returns the OR
 * of every code it read so the caller can reject codes >= 2**b without another pass.
 */
#ifndef QK_UNPACK_H
#define QK_UNPACK_H

#include <stdint.h>
#include <string.h>
#include "qk_isa.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define QK_LE 1
#else
#define QK_LE 0
#endif

/* ---- simple version -------------------------------------------------------------- */
static inline uint8_t qk_pack_simple(const uint8_t *src, uint8_t *dst, int64_t n, const int b) {
    uint8_t seen = 0;
    for (int64_t g = 0; g < n; g += 8) {
        const int m = n - g < 8 ? (int)(n - g) : 8;
        uint64_t acc = 0;
        for (int j = 0; j < m; j++) {
            seen |= src[g + j];
            acc |= (uint64_t)src[g + j] << (j * b);
        }
        const int nb = (m * b + 7) >> 3;
        for (int j = 0; j < nb; j++) dst[(g >> 3) * b + j] = (uint8_t)(acc >> (8 * j));
    }
    return seen;
}

static inline void qk_unpack_simple(const uint8_t *src, uint8_t *dst, int64_t n, const int b) {
    const uint64_t mask = ((uint64_t)1 << b) - 1;
    for (int64_t g = 0; g < n; g += 8) {
        const int m = n - g < 8 ? (int)(n - g) : 8;
        const int nb = (m * b + 7) >> 3;
        uint64_t acc = 0;
        for (int j = 0; j < nb; j++) acc |= (uint64_t)src[(g >> 3) * b + j] << (8 * j);
        for (int j = 0; j < m; j++) dst[g + j] = (uint8_t)((acc >> (j * b)) & mask);
    }
}

/* ---- 1, 2 and 4 bits: each byte holds per = 8/b whole codes. Written so that GCC and
   Clang vectorize them (checked with objdump): pack builds byte j from codes per*j ..
   per*j+per-1; unpack spreads byte j into a per-byte word by shift-or-mask steps, each
   moving the upper half of every field up to its own lane, then stores the word
   (little-endian, so lane t is code per*j+t). The bodies are always_inline so that each
   ISA clone below vectorizes them with its own registers. */
/* The bodies are instantiated once per ISA (QK_BYTES_BODIES below) rather than written
   as one always_inline function: GCC refuses to inline a function compiled for the
   command line's ISA into one whose target leaves some of it out (the AVX2 variant is
   built with no-avx512f). */
#define QK_BYTES_BODIES(SUFFIX, INL)                                                                         \
INL uint8_t                                                                                                  \
qk_pack_bytes_body_##SUFFIX(const uint8_t *restrict src, uint8_t *restrict dst, int64_t n, const int b) {    \
    const int per = 8 / b;                                                                                   \
    const int64_t nfull = n / per;                                                                           \
    uint8_t seen = 0;                                                                                        \
    for (int64_t j = 0; j < nfull; j++) {                                                                    \
        uint8_t x = 0;                                                                                       \
        for (int t = 0; t < per; t++) {                                                                      \
            const uint8_t c = src[per * j + t];                                                              \
            seen |= c;                                                                                       \
            x |= (uint8_t)(c << (t * b));                                                                    \
        }                                                                                                    \
        dst[j] = x;                                                                                          \
    }                                                                                                        \
    return seen | qk_pack_simple(src + per * nfull, dst + nfull, n - per * nfull, b);                        \
}                                                                                                            \
                                                                                                             \
INL void                                                                                                     \
qk_unpack_bytes_body_##SUFFIX(const uint8_t *restrict src, uint8_t *restrict dst, int64_t n, const int b) {  \
    if (QK_LE) {                                                                                                    \
    const int per = 8 / b;                                                                                   \
    const int64_t nfull = n / per;                                                                           \
    if (b == 4) {          /* byte -> 2 lanes */                                                             \
        for (int64_t j = 0; j < nfull; j++) {                                                                \
            uint16_t w = src[j];                                                                             \
            w = (w | w << 4) & 0x0F0F;                                                                       \
            memcpy(dst + 2 * j, &w, 2);                                                                      \
        }                                                                                                    \
    } else if (b == 2) {   /* byte -> 2 nibbles -> 4 lanes */                                                \
        for (int64_t j = 0; j < nfull; j++) {                                                                \
            uint32_t w = src[j];                                                                             \
            w = (w | w << 12) & 0x000F000Fu;                                                                 \
            w = (w | w << 6) & 0x03030303u;                                                                  \
            memcpy(dst + 4 * j, &w, 4);                                                                      \
        }                                                                                                    \
    } else {               /* byte -> 2 nibbles -> 4 pairs -> 8 lanes */                                     \
        for (int64_t j = 0; j < nfull; j++) {                                                                \
            uint64_t w = src[j];                                                                             \
            w = (w | w << 28) & 0x0000000F0000000FULL;                                                       \
            w = (w | w << 14) & 0x0003000300030003ULL;                                                       \
            w = (w | w << 7) & 0x0101010101010101ULL;                                                        \
            memcpy(dst + 8 * j, &w, 8);                                                                      \
        }                                                                                                    \
    }                                                                                                        \
    qk_unpack_simple(src + nfull, dst + per * nfull, n - per * nfull, b);                                    \
    } else {                                                                                                        \
    qk_unpack_simple(src, dst, n, b);                                                                        \
    }                                                                                                       \
}                                                                                                            \
    /* end of QK_BYTES_BODIES */
QK_BYTES_BODIES(ref, static inline __attribute__((always_inline)))

QK_FN uint8_t qk_pack_bytes_ref(const uint8_t *restrict src, uint8_t *restrict dst, int64_t n,
                                 int b) {
    return b == 1 ? qk_pack_bytes_body_ref(src, dst, n, 1)
         : b == 2 ? qk_pack_bytes_body_ref(src, dst, n, 2) : qk_pack_bytes_body_ref(src, dst, n, 4);
}
QK_FN void qk_unpack_bytes_ref(const uint8_t *restrict src, uint8_t *restrict dst, int64_t n,
                                int b) {
    if (b == 1) qk_unpack_bytes_body_ref(src, dst, n, 1);
    else if (b == 2) qk_unpack_bytes_body_ref(src, dst, n, 2);
    else qk_unpack_bytes_body_ref(src, dst, n, 4);
}

#if QK_X86
#define QK_BYTES_CLONES(SUFFIX, FN)                                                          \
    FN uint8_t qk_pack_bytes_##SUFFIX(const uint8_t *restrict src, uint8_t *restrict dst,   \
                                      int64_t n, int b) {                                    \
        return b == 1 ? qk_pack_bytes_body_##SUFFIX(src, dst, n, 1)                                   \
             : b == 2 ? qk_pack_bytes_body_##SUFFIX(src, dst, n, 2) : qk_pack_bytes_body_##SUFFIX(src, dst, n, 4); \
    }                                                                                        \
    FN void qk_unpack_bytes_##SUFFIX(const uint8_t *restrict src, uint8_t *restrict dst,    \
                                     int64_t n, int b) {                                     \
        if (b == 1) qk_unpack_bytes_body_##SUFFIX(src, dst, n, 1);                                    \
        else if (b == 2) qk_unpack_bytes_body_##SUFFIX(src, dst, n, 2);                               \
        else qk_unpack_bytes_body_##SUFFIX(src, dst, n, 4);                                           \
    }
QK_BYTES_BODIES(avx2, QK_AVX2_INL)
QK_BYTES_BODIES(avx512, QK_AVX512_INL)
QK_BYTES_CLONES(avx2, QK_AVX2_FN)
QK_BYTES_CLONES(avx512, QK_AVX512_FN)
#undef QK_BYTES_CLONES

/* ---- 3, 5, 6 and 7 bits with AVX-512 VBMI, 64 codes (8 groups, 8*b bytes) per step.
   Unpack: vpermb copies the 8 bytes starting at group g's first byte (b*g) into 64-bit
   lane g; vpmultishiftqb then extracts, for byte j of each lane, the 8 bits starting at
   bit j*b of that lane, and an AND keeps the low b. Pack runs the other way: within each
   64-bit lane of 8 codes, merge neighbours pairwise (8 -> 16 -> 32 -> 64-bit fields, each
   step shifting the upper field left by the lower field's width), which leaves the
   group's 8*b stream bits at the bottom of the lane; vpermb then gathers the low b bytes
   of each lane into 8*b consecutive bytes. Loads and stores are masked to exactly 8*b
   bytes. Each returns how many codes it handled (a multiple of 64). */
QK_AVX512_INL __m512i qk_vbmi_unpack64(const uint8_t *src, const int b) {
    /* The 64 codes of 8*b bytes at src as 64 bytes: the register form used by the matmul
       kernels too. The constants fold when b is a compile-time constant. */
    const __m512i vgather = _mm512_set_epi64(
        0x0706050403020100LL + 0x0101010101010101LL * (7 * b),
        0x0706050403020100LL + 0x0101010101010101LL * (6 * b),
        0x0706050403020100LL + 0x0101010101010101LL * (5 * b),
        0x0706050403020100LL + 0x0101010101010101LL * (4 * b),
        0x0706050403020100LL + 0x0101010101010101LL * (3 * b),
        0x0706050403020100LL + 0x0101010101010101LL * (2 * b),
        0x0706050403020100LL + 0x0101010101010101LL * (1 * b),
        0x0706050403020100LL);
    const long long sh = (long long)(
        ((uint64_t)(7 * b) << 56) | ((uint64_t)(6 * b) << 48) | ((uint64_t)(5 * b) << 40)
        | ((uint64_t)(4 * b) << 32) | ((uint64_t)(3 * b) << 24) | ((uint64_t)(2 * b) << 16)
        | ((uint64_t)b << 8));
    const __m512i vshift = _mm512_set1_epi64(sh);
    const __m512i vmask = _mm512_set1_epi8((char)((1 << b) - 1));
    const __mmask64 inmask = b == 8 ? ~(__mmask64)0 : ((__mmask64)1 << (8 * b)) - 1;
    __m512i v = _mm512_maskz_loadu_epi8(inmask, src);
    v = _mm512_permutexvar_epi8(vgather, v);
    v = _mm512_multishift_epi64_epi8(vshift, v);
    return _mm512_and_si512(v, vmask);
}

QK_AVX512_INL int64_t qk_unpack_vbmi(const uint8_t *src, uint8_t *dst, int64_t n, const int b) {
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        _mm512_storeu_si512(dst + i, qk_vbmi_unpack64(src + (i >> 3) * b, b));
    return i;
}

QK_AVX512_INL int64_t qk_pack_vbmi(const uint8_t *src, uint8_t *dst, int64_t n, const int b,
                                   uint64_t *seen) {
    uint8_t compact[64];
    for (int k = 0; k < 64; k++) compact[k] = (uint8_t)(k < 8 * b ? 8 * (k / b) + k % b : 0);
    const __m512i vcompact = _mm512_loadu_si512(compact);
    const __mmask64 outmask = ((__mmask64)1 << (8 * b)) - 1;
    const __m512i lo8 = _mm512_set1_epi16(0x00FF), lo16 = _mm512_set1_epi32(0xFFFF);
    const __m512i lo32 = _mm512_set1_epi64(0xFFFFFFFFLL);
    __m512i vseen = _mm512_setzero_si512();
    int64_t i = 0;
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

/* ---- 3, 5, 6 and 7 bits with BMI2: with L = the low b bits of every byte lane
   (0x0707..07 for b = 3), pext(8 code bytes, L) squeezes 8 codes into the low 8*b bits of
   a word, which are exactly the group's b packed bytes; pdep(b bytes, L) spreads them
   back, one code per byte. One instruction per 8 codes. Groups move as whole 64-bit
   words: a word store at dst + b*g also writes 8 - b bytes of the following groups, which
   the next iterations overwrite. Only groups whose 8-byte access stays inside this run's
   full groups do that (the run may be one chunk of a row that another thread is writing
   next to); the rest move b bytes, and the partial group goes through the simple version.
   Unrolling roughly doubled the in-cache speed (loop overhead, not pdep, was the limit).
   The VBMI variant runs its 64-code loop first (vbmi = 1). */
static inline uint64_t qk_lanes(const int b) {
    return 0x0101010101010101ULL * (((uint64_t)1 << b) - 1);
}

#define QK_WORDS_BODY_PACK(VBMI_STEP)                                                        \
    const uint64_t lanes = qk_lanes(b);                                                      \
    uint64_t seen = 0;                                                                       \
    VBMI_STEP                                                                                \
    const int64_t ngroups = n >> 3;                                                          \
    const int64_t nwide = ngroups - (7 + b) / b + 1; /* b*g + 8 <= b*ngroups */              \
    int64_t g = 0;                                                                           \
    _Pragma("GCC unroll 4")                                                                  \
    for (; g < nwide; g++) {                                                                 \
        uint64_t w, p;                                                                       \
        memcpy(&w, src + 8 * g, 8);                                                          \
        seen |= w;                                                                           \
        p = _pext_u64(w, lanes);                                                             \
        memcpy(dst + b * g, &p, 8);                                                          \
    }                                                                                        \
    for (; g < ngroups; g++) {                                                               \
        uint64_t w, p;                                                                       \
        memcpy(&w, src + 8 * g, 8);                                                          \
        seen |= w;                                                                           \
        p = _pext_u64(w, lanes);                                                             \
        memcpy(dst + b * g, &p, b);                                                          \
    }                                                                                        \
    seen |= seen >> 32;                                                                      \
    seen |= seen >> 16;                                                                      \
    seen |= seen >> 8;                                                                       \
    return (uint8_t)seen | qk_pack_simple(src + 8 * ngroups, dst + b * ngroups,             \
                                          n - 8 * ngroups, b);

#define QK_WORDS_BODY_UNPACK(VBMI_STEP)                                                      \
    const uint64_t lanes = qk_lanes(b);                                                      \
    VBMI_STEP                                                                                \
    const int64_t ngroups = n >> 3;                                                          \
    const int64_t nwide = ngroups - (7 + b) / b + 1;                                         \
    int64_t g = 0;                                                                           \
    _Pragma("GCC unroll 4")                                                                  \
    for (; g < nwide; g++) {                                                                 \
        uint64_t w, c;                                                                       \
        memcpy(&w, src + b * g, 8);                                                          \
        c = _pdep_u64(w, lanes);                                                             \
        memcpy(dst + 8 * g, &c, 8);                                                          \
    }                                                                                        \
    for (; g < ngroups; g++) {                                                               \
        uint64_t w = 0, c;                                                                   \
        memcpy(&w, src + b * g, b);                                                          \
        c = _pdep_u64(w, lanes);                                                             \
        memcpy(dst + 8 * g, &c, 8);                                                          \
    }                                                                                        \
    qk_unpack_simple(src + b * ngroups, dst + 8 * ngroups, n - 8 * ngroups, b);

#define QK_VBMI_PACK_STEP                                                                    \
    { const int64_t done = qk_pack_vbmi(src, dst, n, b, &seen);                              \
      src += done; dst += (done >> 3) * b; n -= done; }
#define QK_VBMI_UNPACK_STEP                                                                  \
    { const int64_t done = qk_unpack_vbmi(src, dst, n, b);                                   \
      src += (done >> 3) * b; dst += done; n -= done; }

QK_AVX2_INL uint8_t qk_pack_words_avx2(const uint8_t *src, uint8_t *dst, int64_t n, const int b) {
    QK_WORDS_BODY_PACK()
}
QK_AVX2_INL void qk_unpack_words_avx2(const uint8_t *src, uint8_t *dst, int64_t n, const int b) {
    QK_WORDS_BODY_UNPACK()
}
QK_AVX512_INL uint8_t qk_pack_words_avx512(const uint8_t *src, uint8_t *dst, int64_t n,
                                           const int b) {
    QK_WORDS_BODY_PACK(QK_VBMI_PACK_STEP)
}
QK_AVX512_INL void qk_unpack_words_avx512(const uint8_t *src, uint8_t *dst, int64_t n,
                                          const int b) {
    QK_WORDS_BODY_UNPACK(QK_VBMI_UNPACK_STEP)
}

/* One function per ISA holding the per-width switch, so each width is compiled with a
   constant b inside the right target. */
#define QK_ANY_CLONES(SUFFIX, FN)                                                            \
    FN uint8_t qk_pack_any_##SUFFIX(const uint8_t *src, uint8_t *dst, int64_t n, int b) {   \
        switch (b) {                                                                         \
            case 3: return qk_pack_words_##SUFFIX(src, dst, n, 3);                           \
            case 5: return qk_pack_words_##SUFFIX(src, dst, n, 5);                           \
            case 6: return qk_pack_words_##SUFFIX(src, dst, n, 6);                           \
            case 7: return qk_pack_words_##SUFFIX(src, dst, n, 7);                           \
            case 8: memcpy(dst, src, (size_t)n); return 0;                                   \
            default: return qk_pack_bytes_##SUFFIX(src, dst, n, b);                          \
        }                                                                                    \
    }                                                                                        \
    FN void qk_unpack_any_##SUFFIX(const uint8_t *src, uint8_t *dst, int64_t n, int b) {    \
        switch (b) {                                                                         \
            case 3: qk_unpack_words_##SUFFIX(src, dst, n, 3); break;                         \
            case 5: qk_unpack_words_##SUFFIX(src, dst, n, 5); break;                         \
            case 6: qk_unpack_words_##SUFFIX(src, dst, n, 6); break;                         \
            case 7: qk_unpack_words_##SUFFIX(src, dst, n, 7); break;                         \
            case 8: memcpy(dst, src, (size_t)n); break;                                      \
            default: qk_unpack_bytes_##SUFFIX(src, dst, n, b); break;                        \
        }                                                                                    \
    }
QK_ANY_CLONES(avx2, QK_AVX2_FN)
QK_ANY_CLONES(avx512, QK_AVX512_FN)
#undef QK_ANY_CLONES
#endif /* QK_X86 */

QK_FN uint8_t qk_pack_any_ref(const uint8_t *src, uint8_t *dst, int64_t n, int b);
QK_FN void qk_unpack_any_ref(const uint8_t *src, uint8_t *dst, int64_t n, int b);

#if QK_ARM64
/* ---- 2 and 4 bits with NEON: the structured loads and stores (de)interleave the fields.
   Pack: vld2q/vld4q split 32 or 64 codes into the 2 or 4 fields of 16 bytes, shifted and
   ORed into one byte each (the same expression as the byte loop, also for codes out of
   range); unpack masks and shifts 16 bytes into their fields and vst2q/vst4q writes
   them back in code order. Other widths, and the codes after the last full step, take
   the reference paths. */
QK_NEON_INL uint8_t qk_or_bytes_neon(uint8x16_t v) {
    uint64_t x = vgetq_lane_u64(vreinterpretq_u64_u8(v), 0) | vgetq_lane_u64(vreinterpretq_u64_u8(v), 1);
    x |= x >> 32;
    x |= x >> 16;
    x |= x >> 8;
    return (uint8_t)x;
}

QK_NEON_FN uint8_t qk_pack_any_neon(const uint8_t *src, uint8_t *dst, int64_t n, int b) {
    uint8x16_t seen = vdupq_n_u8(0);
    int64_t i = 0;
    if (b == 4) {
        for (; i + 32 <= n; i += 32) {
            const uint8x16x2_t v = vld2q_u8(src + i);
            seen = vorrq_u8(seen, vorrq_u8(v.val[0], v.val[1]));
            vst1q_u8(dst + i / 2, vorrq_u8(v.val[0], vshlq_n_u8(v.val[1], 4)));
        }
        return qk_or_bytes_neon(seen) | qk_pack_bytes_ref(src + i, dst + i / 2, n - i, 4);
    }
    if (b == 2) {
        for (; i + 64 <= n; i += 64) {
            const uint8x16x4_t v = vld4q_u8(src + i);
            seen = vorrq_u8(seen, vorrq_u8(vorrq_u8(v.val[0], v.val[1]), vorrq_u8(v.val[2], v.val[3])));
            const uint8x16_t lo = vorrq_u8(v.val[0], vshlq_n_u8(v.val[1], 2));
            const uint8x16_t hi = vorrq_u8(vshlq_n_u8(v.val[2], 4), vshlq_n_u8(v.val[3], 6));
            vst1q_u8(dst + i / 4, vorrq_u8(lo, hi));
        }
        return qk_or_bytes_neon(seen) | qk_pack_bytes_ref(src + i, dst + i / 4, n - i, 2);
    }
    return qk_pack_any_ref(src, dst, n, b);
}

QK_NEON_FN void qk_unpack_any_neon(const uint8_t *src, uint8_t *dst, int64_t n, int b) {
    int64_t i = 0;
    if (b == 4) {
        const uint8x16_t m4 = vdupq_n_u8(0x0F);
        for (; i + 32 <= n; i += 32) {
            const uint8x16_t p = vld1q_u8(src + i / 2);
            uint8x16x2_t v;
            v.val[0] = vandq_u8(p, m4);
            v.val[1] = vshrq_n_u8(p, 4);
            vst2q_u8(dst + i, v);
        }
        qk_unpack_bytes_ref(src + i / 2, dst + i, n - i, 4);
        return;
    }
    if (b == 2) {
        const uint8x16_t m2 = vdupq_n_u8(0x03);
        for (; i + 64 <= n; i += 64) {
            const uint8x16_t p = vld1q_u8(src + i / 4);
            uint8x16x4_t v;
            v.val[0] = vandq_u8(p, m2);
            v.val[1] = vandq_u8(vshrq_n_u8(p, 2), m2);
            v.val[2] = vandq_u8(vshrq_n_u8(p, 4), m2);
            v.val[3] = vshrq_n_u8(p, 6);
            vst4q_u8(dst + i, v);
        }
        qk_unpack_bytes_ref(src + i / 4, dst + i, n - i, 2);
        return;
    }
    qk_unpack_any_ref(src, dst, n, b);
}
#endif /* QK_ARM64 */

QK_FN uint8_t qk_pack_any_ref(const uint8_t *src, uint8_t *dst, int64_t n, int b) {
    switch (b) {
        case 3: return qk_pack_simple(src, dst, n, 3);
        case 5: return qk_pack_simple(src, dst, n, 5);
        case 6: return qk_pack_simple(src, dst, n, 6);
        case 7: return qk_pack_simple(src, dst, n, 7);
        case 8: memcpy(dst, src, (size_t)n); return 0;
        default: return qk_pack_bytes_ref(src, dst, n, b);
    }
}

QK_FN void qk_unpack_any_ref(const uint8_t *src, uint8_t *dst, int64_t n, int b) {
    switch (b) {
        case 3: qk_unpack_simple(src, dst, n, 3); break;
        case 5: qk_unpack_simple(src, dst, n, 5); break;
        case 6: qk_unpack_simple(src, dst, n, 6); break;
        case 7: qk_unpack_simple(src, dst, n, 7); break;
        case 8: memcpy(dst, src, (size_t)n); break;
        default: qk_unpack_bytes_ref(src, dst, n, b); break;
    }
}

/* Entry points: isa is the caller's selected level (qk_isa.h). */
static inline uint8_t qk_pack_any(const uint8_t *src, uint8_t *dst, int64_t n, int b, int isa) {
#if QK_X86
    if (isa == QK_ISA_AVX512) return qk_pack_any_avx512(src, dst, n, b);
    if (isa == QK_ISA_AVX2) return qk_pack_any_avx2(src, dst, n, b);
#endif
#if QK_ARM64
    if (isa == QK_ISA_NEON) return qk_pack_any_neon(src, dst, n, b);
#endif
    (void)isa;
    return qk_pack_any_ref(src, dst, n, b);
}

static inline void qk_unpack_any(const uint8_t *src, uint8_t *dst, int64_t n, int b, int isa) {
#if QK_X86
    if (isa == QK_ISA_AVX512) { qk_unpack_any_avx512(src, dst, n, b); return; }
    if (isa == QK_ISA_AVX2) { qk_unpack_any_avx2(src, dst, n, b); return; }
#endif
#if QK_ARM64
    if (isa == QK_ISA_NEON) { qk_unpack_any_neon(src, dst, n, b); return; }
#endif
    (void)isa;
    qk_unpack_any_ref(src, dst, n, b);
}

#endif
