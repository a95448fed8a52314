# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Inference kernels: y = x @ W_hat.T straight from packed weights (float32 out).

Every function here trusts its caller (qpack/matmul.py) to have checked dtypes, shapes,
C-contiguity, that every code indexes inside its look-up table, that row pointers are
monotone and columns in range, and that each scratch buffer is as large as stated. That is
why bounds checking and wraparound are off: the wrapper already proved each index valid.

The inner loops are small C functions in the verbatim block below. Cython's own loops over
typed memoryviews compile to scalar code here (float reductions are not reassociated
without -ffast-math, and table look-ups become scalar loads), so the hot paths are written
with AVX-512 intrinsics behind ``#if`` guards, each with a portable C path that any CPU
runs (QPACK_PORTABLE=1 builds, or CPUs without AVX-512). docs/KERNELS.md describes the
layouts and what the assembly showed.

Column layout of the "fast" paths: x (or its int8 version) is permuted once per call so
that each 128-column block holds S = 8/bits streams of 128/S values, stream k holding
columns k, k+S, k+2S, ... of the block. Byte j of a packed row block then carries, in its
bit field k, the code of the column paired with position j of stream k, so one shift and
one mask per stream yield codes that line up with contiguous activations. The weights stay
in the storage layout (zero copies from a mapped file); only the activations move.
Columns past the last full 128-column block are left in natural order and handled by the
scalar tail code.
"""

from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <math.h>
    #if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
    #include <immintrin.h>
    #define QK_AVX512 1
    #if defined(__AVX512VNNI__)
    #define QK_VNNI 1
    #endif
    #endif

    /* Description of a dense packed matrix (linear or codebook encoding). */
    typedef struct {
        const uint8_t *packed;   /* n_out rows of row_bytes bytes, LSB-first codes */
        int64_t row_bytes, n_out, n_in;
        int bits, kind;          /* kind 0: linear, 1: codebook */
        const float *scales;     /* linear: (R, ngroups) float32 */
        const float *zeros;      /* linear: (R, ngroups) zero-points as float32 */
        int64_t prow;            /* row stride of scales/zeros: ngroups, or 0 per tensor */
        int64_t group;           /* columns per group (n_in when not grouped) */
        const float *codebook;   /* codebook: (Rc, 2**bits) float32, padded */
        int64_t cbrow;           /* row stride of codebook: 2**bits, or 0 when shared */
        const uint8_t *cb_u8;    /* int8 mode: round(codebook / cb_scale) + 128 */
        const float *cb_scale;   /* int8 mode: one scale per codebook row */
    } qk_dense;

    /* int8-quantized activations: xq (batch, n_in) in the kernel's column layout, one
       float scale and one integer sum per 'block' columns. */
    typedef struct {
        const int8_t *xq;
        const float *xs;
        const int32_t *xsum;
        int64_t block, nblocks;
    } qk_xq;

    static inline int qk_min64(int64_t a, int64_t b) { return (int)(a < b ? a : b); }

    /* ---- generic unpacking: codes [0, n) of one LSB-first row --------------------- */
    static inline void qk_unpack_b(const uint8_t *src, uint8_t *dst, int64_t n, const int b) {
        const uint64_t mask = (1u << b) - 1;
        int64_t g, ng = n >> 3;
        for (g = 0; g < ng; g++) {
            uint64_t acc = 0;
            for (int j = 0; j < b; j++) acc |= (uint64_t)src[b * g + j] << (8 * j);
            for (int j = 0; j < 8; j++) dst[8 * g + j] = (uint8_t)((acc >> (j * b)) & mask);
        }
        int64_t r = n - (ng << 3);
        if (r) {
            uint64_t acc = 0;
            int64_t nb = (r * b + 7) >> 3;
            for (int64_t j = 0; j < nb; j++) acc |= (uint64_t)src[b * ng + j] << (8 * j);
            for (int64_t j = 0; j < r; j++) dst[8 * ng + j] = (uint8_t)((acc >> (j * b)) & mask);
        }
    }

    static void qk_unpack(const uint8_t *src, uint8_t *dst, int64_t n, int b) {
        /* one call per width so each is compiled with a constant b */
        switch (b) {
            case 1: qk_unpack_b(src, dst, n, 1); break;
            case 2: qk_unpack_b(src, dst, n, 2); break;
            case 3: qk_unpack_b(src, dst, n, 3); break;
            case 4: qk_unpack_b(src, dst, n, 4); break;
            case 5: qk_unpack_b(src, dst, n, 5); break;
            case 6: qk_unpack_b(src, dst, n, 6); break;
            case 7: qk_unpack_b(src, dst, n, 7); break;
            default: qk_unpack_b(src, dst, n, 8); break;
        }
    }

    /* Dequantize columns [c0, c1) of row r from its unpacked codes (codes[c] for column c)
       into out[c]: exactly the reference formula, in float32. */
    static void qk_dequant_cols(const qk_dense *w, int64_t r, const uint8_t *codes,
                                int64_t c0, int64_t c1, float *out) {
        if (w->kind == 0) {
            const float *s = w->scales + r * w->prow, *z = w->zeros + r * w->prow;
            int64_t G = w->group;
            int64_t c = c0;
            while (c < c1) {
                int64_t g = c / G, e = (g + 1) * G;
                if (e > c1) e = c1;
                const float sf = s[g], zf = z[g];
                for (int64_t k = c; k < e; k++) out[k] = ((float)codes[k] - zf) * sf;
                c = e;
            }
        } else {
            const float *cb = w->codebook + r * w->cbrow;
            for (int64_t k = c0; k < c1; k++) out[k] = cb[codes[k]];
        }
    }

    /* Dot product with 16 independent partial sums: the fixed-size inner loop is what lets
       GCC turn it into vector FMAs without -ffast-math. */
    static inline float qk_dot(const float *a, const float *b, int64_t n) {
        float acc[16] = {0};
        int64_t i = 0;
        for (; i + 16 <= n; i += 16)
            for (int k = 0; k < 16; k++) acc[k] += a[i + k] * b[i + k];
        float s = 0.0f;
        for (; i < n; i++) s += a[i] * b[i];
        for (int k = 0; k < 8; k++) acc[k] += acc[k + 8];
        for (int k = 0; k < 4; k++) acc[k] += acc[k + 4];
        return s + ((acc[0] + acc[2]) + (acc[1] + acc[3]));
    }

    /* ---- generic float row: any bits, any grouping ------------------------------- */
    /* y[bi, r] = sum_c W_hat[r, c] x[bi, c]; scratch: n_in codes + n_in floats. */
    static void qk_row_float_generic(const qk_dense *w, int64_t r, const float *x, int64_t batch,
                                     float *y, uint8_t *codes, float *wrow) {
        int64_t n = w->n_in;
        qk_unpack(w->packed + r * w->row_bytes, codes, n, w->bits);
        qk_dequant_cols(w, r, codes, 0, n, wrow);
        for (int64_t bi = 0; bi < batch; bi++)
            y[bi * w->n_out + r] = qk_dot(wrow, x + bi * n, n);
    }

    /* Dequantize whole row r into out[0 .. n_in). */
    static void qk_dequant_row(const qk_dense *w, int64_t r, uint8_t *codes, float *out) {
        qk_unpack(w->packed + r * w->row_bytes, codes, w->n_in, w->bits);
        qk_dequant_cols(w, r, codes, 0, w->n_in, out);
    }

    /* ---- generic int8 row -------------------------------------------------------- */
    /* Weight value as an unsigned byte u with W_hat = (u - zero) * scale:
       linear: u = code, zero = zero-point; codebook: u = cb_u8[code], zero = 128. */
    static void qk_row_int8_generic(const qk_dense *w, int64_t r, const qk_xq *q, int64_t batch,
                                    float *y, uint8_t *codes) {
        int64_t n = w->n_in, B = q->block;
        qk_unpack(w->packed + r * w->row_bytes, codes, n, w->bits);
        if (w->kind == 1) {
            const uint8_t *lut = w->cb_u8 + r * w->cbrow;
            for (int64_t c = 0; c < n; c++) codes[c] = lut[codes[c]];
        }
        for (int64_t bi = 0; bi < batch; bi++) {
            const int8_t *xq = q->xq + bi * n;
            double acc = 0.0;
            for (int64_t k = 0; k < q->nblocks; k++) {
                int64_t c0 = k * B, c1 = c0 + B < n ? c0 + B : n;
                int64_t isum = 0;
                int32_t part = 0;
                for (int64_t c = c0; c < c1; c++) {
                    part += (int32_t)codes[c] * (int32_t)xq[c];
                    if (((c - c0) & 4095) == 4095) { isum += part; part = 0; }
                }
                isum += part;
                float s, z;
                if (w->kind == 0) {
                    int64_t g = c0 / w->group;
                    s = w->scales[r * w->prow + g]; z = w->zeros[r * w->prow + g];
                } else {
                    s = w->cb_scale[r * (w->cbrow ? 1 : 0)]; z = 128.0f;
                }
                float d = s * q->xs[bi * q->nblocks + k];
                acc += (double)(d * ((float)isum - z * (float)q->xsum[bi * q->nblocks + k]));
            }
            y[bi * w->n_out + r] = (float)acc;
        }
    }

    /* ---- activations: permutation and int8 quantization -------------------------- */
    /* Stream layout of the fast paths (see module docstring); identity for bits 8 and for
       the columns after the last full 128-column block. */
    static void qk_permute_row(const float *x, float *xp, int64_t n, int bits) {
        int S = 8 / bits, L = 128 / S;
        int64_t nb = n / 128;
        for (int64_t blk = 0; blk < nb; blk++) {
            const float *src = x + blk * 128;
            float *dst = xp + blk * 128;
            for (int k = 0; k < S; k++)
                for (int j = 0; j < L; j++) dst[k * L + j] = src[j * S + k];
        }
        for (int64_t c = nb * 128; c < n; c++) xp[c] = x[c];
    }

    /* Quantize one row of x to int8 per block of B columns: scale = max|x| / 127,
       xq = round(x / scale). A block holding NaN or +-inf gets a NaN scale so the
       result is NaN (the float mode would give NaN or +-inf). Writes xq in the layout of
       'bits' (permuted when bits is 2 or 4 and the caller asked for the fast layout). */
    /* static_scale > 0: every block uses it (a range calibrated beforehand; values
       beyond 127 * static_scale clip), else each block its own max|x| / 127. */
    static void qk_quantize_row(const float *x, int64_t n, int64_t B, int8_t *xq, float *xs,
                                int32_t *xsum, int permute_bits, int8_t *tmp,
                                float static_scale) {
        int64_t nblocks = (n + B - 1) / B;
        int8_t *dst = permute_bits ? tmp : xq;
        for (int64_t k = 0; k < nblocks; k++) {
            int64_t c0 = k * B, c1 = c0 + B < n ? c0 + B : n;
            float amax = 0.0f;
            int bad = 0;
            for (int64_t c = c0; c < c1; c++) {
                float a = fabsf(x[c]);
                bad |= !(a <= 3.4028234663852886e38f);   /* NaN or inf */
                amax = a > amax ? a : amax;
            }
            if (static_scale > 0.0f && amax != 0.0f) amax = static_scale * 127.0f;
            int32_t sum = 0;
            if (bad || amax == 0.0f) {
                for (int64_t c = c0; c < c1; c++) dst[c] = 0;
                xs[k] = bad ? NAN : 0.0f;
            } else {
                float inv = 127.0f / amax;
                for (int64_t c = c0; c < c1; c++) {
                    float v = nearbyintf(x[c] * inv);
                    v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
                    dst[c] = (int8_t)v;
                    sum += (int32_t)v;
                }
                xs[k] = static_scale > 0.0f ? static_scale : amax / 127.0f;
            }
            xsum[k] = sum;
        }
        if (permute_bits) {
            int S = 8 / permute_bits, L = 128 / S;
            int64_t nb = n / 128;
            for (int64_t blk = 0; blk < nb; blk++)
                for (int k = 0; k < S; k++)
                    for (int j = 0; j < L; j++)
                        xq[blk * 128 + k * L + j] = tmp[blk * 128 + j * S + k];
            for (int64_t c = nb * 128; c < n; c++) xq[c] = tmp[c];
        }
    }

    /* ---- fast paths --------------------------------------------------------------- */
    /* Blocks of 128 columns per weight group on the fast paths, where the group is a
       multiple of 128 or covers the row. The kernels step the group index with a counter:
       a division per block (64-bit idiv) was the hottest instruction in the profile of
       the grouped batch-1 kernel. */
    static inline int64_t qk_blocks_per_group(const qk_dense *w) {
        return (w->kind != 0 || w->group >= w->n_in) ? INT64_MAX : w->group / 128;
    }
    #define QK_GROUP_STEP(g, gpos, bpg, newg) \
        const int newg = (gpos) == 0; const int64_t g = g##_next; \
        if (++(gpos) == (bpg)) { (gpos) = 0; g##_next++; }
    /* Which (bits, kind, int8) combinations have a vector kernel in this build, given that
       the caller checked the grouping is 128-aligned (group % 128 == 0 or not grouped). */
    static int qk_fast_float_available(int bits, int kind) {
    #ifdef QK_AVX512
        return bits == 2 || bits == 4 || bits == 8;
    #else
        (void)bits; (void)kind; return 0;
    #endif
    }
    static int qk_fast_int8_available(int bits, int kind) {
    #ifdef QK_VNNI
        return bits == 2 || bits == 4 || (bits == 8 && kind == 0);
    #else
        (void)bits; (void)kind; return 0;
    #endif
    }

    /* Scalar tail shared by the fast paths: columns [c0, n) in natural order. */
    static inline float qk_tail_float(const qk_dense *w, int64_t r, const float *x, int64_t c0,
                               uint8_t *codes) {
        int64_t n = w->n_in;
        if (c0 >= n) return 0.0f;
        /* c0 is a multiple of 128, so the tail starts on a byte boundary */
        qk_unpack(w->packed + r * w->row_bytes + c0 * w->bits / 8, codes, n - c0, w->bits);
        float s = 0.0f;
        if (w->kind == 0) {
            const float *sc = w->scales + r * w->prow, *z = w->zeros + r * w->prow;
            for (int64_t c = c0; c < n; c++) {
                int64_t g = c / w->group;
                s += (((float)codes[c - c0] - z[g]) * sc[g]) * x[c];
            }
        } else {
            const float *cb = w->codebook + r * w->cbrow;
            for (int64_t c = c0; c < n; c++) s += cb[codes[c - c0]] * x[c];
        }
        return s;
    }

    #ifdef QK_AVX512
    /* Float row kernel, bits 2/4/8, up to 4 batch rows at once (weights decoded once per
       16 columns and reused). Per 16 bytes of a 4-bit row: one zero-extending load to 16
       dword lanes, then vpermps picks table entries with the low 4 bits of each lane
       directly (the other nibble is ignored by the instruction), and a 4-bit shift exposes
       the next code. The 16-entry table holds the dequantized values (i - z) * s of the
       current group (or the codebook), so W_hat is exact and costs no arithmetic. For
       2 bits the 4-entry table is repeated 4 times so that the stray upper index bits do
       not matter. */
    /* The batch tile NB is a compile-time constant at each call site (always_inline), so
       the accumulators stay in registers: with a run-time tile size GCC kept them on the
       stack and every FMA waited on a store/reload (objdump showed vmovaps to (%rsp) after
       each vfmadd; 8-bit rows ran 10x slower). Two accumulators per batch row break the
       FMA latency chain when NB is small. */
    static inline __attribute__((always_inline)) void
    qk_float_fast_tile(const qk_dense *w, int64_t r, const float *xp, int64_t b0, float *y,
                       uint8_t *codes, const int NB) {
        const int64_t n = w->n_in, nblk = n / 128, bits = w->bits;
        const uint8_t *row = w->packed + r * w->row_bytes;
        const float *sc = w->scales + r * w->prow, *zz = w->zeros + r * w->prow;
        const float *cb = w->codebook + r * w->cbrow;
        const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512 iota2 = _mm512_setr_ps(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
        __m512 acc[8][2];   /* fixed sizes, not VLAs: GCC keeps fixed arrays in registers */
        const float *xb[8];
        for (int t = 0; t < NB; t++) {
            acc[t][0] = _mm512_setzero_ps(); acc[t][1] = _mm512_setzero_ps();
            xb[t] = xp + (b0 + t) * n;
        }
        __m512 lut = _mm512_setzero_ps(), zv = lut, sv = lut;
        if (w->kind == 1) {
            if (bits == 4) lut = _mm512_loadu_ps(cb);
            else if (bits == 2) lut = _mm512_permutexvar_ps(_mm512_cvtps_epi32(iota2),
                                                            _mm512_loadu_ps(cb));
        }
        const int64_t bpg = qk_blocks_per_group(w);
        int64_t g_next = 0, gpos = 0;
        for (int64_t blk = 0; blk < nblk; blk++) {
            const int64_t c0 = blk * 128;
            QK_GROUP_STEP(g, gpos, bpg, newg)
            if (w->kind == 0) {
                if (newg) {
                    zv = _mm512_set1_ps(zz[g]); sv = _mm512_set1_ps(sc[g]);
                    if (bits == 4) lut = _mm512_mul_ps(_mm512_sub_ps(iota, zv), sv);
                    else if (bits == 2) lut = _mm512_mul_ps(_mm512_sub_ps(iota2, zv), sv);
                }
            }
            if (bits == 4) {
                const uint8_t *p = row + blk * 64;
                for (int m = 0; m < 4; m++) {
                    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 16 * m)));
                    __m512 w0 = _mm512_permutexvar_ps(v, lut);
                    __m512 w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
                    for (int t = 0; t < NB; t++) {
                        acc[t][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xb[t] + c0 + 16 * m), acc[t][0]);
                        acc[t][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb[t] + c0 + 64 + 16 * m), acc[t][1]);
                    }
                }
            } else if (bits == 2) {
                const uint8_t *p = row + blk * 32;
                for (int m = 0; m < 2; m++) {
                    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 16 * m)));
                    for (int k = 0; k < 4; k++) {
                        __m512 wk = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 2 * k), lut);
                        for (int t = 0; t < NB; t++)
                            acc[t][k & 1] = _mm512_fmadd_ps(wk, _mm512_loadu_ps(xb[t] + c0 + 32 * k + 16 * m), acc[t][k & 1]);
                    }
                }
            } else { /* 8 bits: natural column order */
                const uint8_t *p = row + blk * 128;
                for (int m = 0; m < 8; m++) {
                    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 16 * m)));
                    __m512 wv;
                    if (w->kind == 0) wv = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(v), zv), sv);
                    else wv = _mm512_i32gather_ps(v, cb, 4);
                    for (int t = 0; t < NB; t++)
                        acc[t][m & 1] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xb[t] + c0 + 16 * m), acc[t][m & 1]);
                }
            }
        }
        for (int t = 0; t < NB; t++)
            y[(b0 + t) * w->n_out + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]))
                                         + (nblk * 128 < n ? qk_tail_float(w, r, xb[t], nblk * 128, codes) : 0.0f);
    }

    static void qk_row_float_fast(const qk_dense *w, int64_t r, const float *xp, int64_t batch,
                                  float *y, uint8_t *codes) {
        int64_t b0 = 0;
        for (; b0 + 8 <= batch; b0 += 8) qk_float_fast_tile(w, r, xp, b0, y, codes, 8);
        if (b0 + 4 <= batch) { qk_float_fast_tile(w, r, xp, b0, y, codes, 4); b0 += 4; }
        if (b0 + 2 <= batch) { qk_float_fast_tile(w, r, xp, b0, y, codes, 2); b0 += 2; }
        if (b0 < batch) qk_float_fast_tile(w, r, xp, b0, y, codes, 1);
    }

    /* Batched float kernel: a register tile of R rows x NB batch rows. Each decoded weight
       vector is used NB times and each activation load R times, which cuts the traffic
       from L2 (where a batch of activations lives) by R compared with row-at-a-time.
       A 128-column block is 8 vectors of 16 columns; sub-vector j of the block takes its
       codes from bytes (j >> 1) * 16 (4 bits, stream j & 1), (j >> 2) * 16 (2 bits,
       stream j & 3) or j * 16 (8 bits) and pairs with activations at qk_xoff(bits, j). */
    static inline __attribute__((always_inline)) int qk_xoff(int bits, int j) {
        return bits == 4 ? 64 * (j & 1) + 16 * (j >> 1)
             : bits == 2 ? 32 * (j & 3) + 16 * (j >> 2) : 16 * j;
    }

    static inline __attribute__((always_inline)) __m512
    qk_w16(const uint8_t *blockp, int bits, int j, int kind, __m512 lut, __m512 zv, __m512 sv,
           const float *cb) {
        if (bits == 4) {
            __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blockp + 16 * (j >> 1))));
            return _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4 * (j & 1)), lut);
        } else if (bits == 2) {
            __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blockp + 16 * (j >> 2))));
            return _mm512_permutexvar_ps(_mm512_srli_epi32(v, 2 * (j & 3)), lut);
        } else {
            __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blockp + 16 * j)));
            if (kind == 0) return _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(v), zv), sv);
            return _mm512_i32gather_ps(v, cb, 4);
        }
    }

    static inline __attribute__((always_inline)) void
    qk_float_rb_tile(const qk_dense *w, int64_t r0, const float *xp, int64_t b0, float *y,
                     uint8_t *codes, const int R, const int NB, const int bits, const int kind) {
        const int64_t n = w->n_in, nblk = n / 128;
        const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512 iota2 = _mm512_setr_ps(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
        const int64_t bpb = 16 * bits;  /* bytes per 128-column block */
        __m512 acc[4][4], lut[4], zv[4], sv[4];  /* fixed sizes: see qk_float_fast_tile */
        const float *xb[4], *cb[4];
        for (int t = 0; t < NB; t++) xb[t] = xp + (b0 + t) * n;
        for (int i = 0; i < R; i++) {
            for (int t = 0; t < NB; t++) acc[i][t] = _mm512_setzero_ps();
            cb[i] = w->codebook + (r0 + i) * w->cbrow;
            lut[i] = zv[i] = sv[i] = _mm512_setzero_ps();
            if (kind == 1) {
                if (bits == 4) lut[i] = _mm512_loadu_ps(cb[i]);
                else if (bits == 2) lut[i] = _mm512_permutexvar_ps(_mm512_cvtps_epi32(iota2),
                                                                   _mm512_loadu_ps(cb[i]));
            }
        }
        const int64_t bpg = qk_blocks_per_group(w);
        int64_t g_next = 0, gpos = 0;
        for (int64_t blk = 0; blk < nblk; blk++) {
            const int64_t c0 = blk * 128;
            QK_GROUP_STEP(g, gpos, bpg, newg)
            if (kind == 0 && newg) {
                for (int i = 0; i < R; i++) {
                    zv[i] = _mm512_set1_ps(w->zeros[(r0 + i) * w->prow + g]);
                    sv[i] = _mm512_set1_ps(w->scales[(r0 + i) * w->prow + g]);
                    if (bits == 4) lut[i] = _mm512_mul_ps(_mm512_sub_ps(iota, zv[i]), sv[i]);
                    else if (bits == 2) lut[i] = _mm512_mul_ps(_mm512_sub_ps(iota2, zv[i]), sv[i]);
                }
            }
            #pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                __m512 wv[4];
                for (int i = 0; i < R; i++)
                    wv[i] = qk_w16(w->packed + (r0 + i) * w->row_bytes + blk * bpb, bits, j, kind,
                                   lut[i], zv[i], sv[i], cb[i]);
                const int off = qk_xoff(bits, j);
                for (int t = 0; t < NB; t++) {
                    __m512 xv = _mm512_loadu_ps(xb[t] + c0 + off);
                    for (int i = 0; i < R; i++) acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
                }
            }
        }
        for (int i = 0; i < R; i++)
            for (int t = 0; t < NB; t++)
                y[(b0 + t) * w->n_out + r0 + i] = _mm512_reduce_add_ps(acc[i][t])
                                                  + (nblk * 128 < n ? qk_tail_float(w, r0 + i, xb[t], nblk * 128, codes) : 0.0f);
    }

    /* Rows r0 .. r0+nrows (nrows <= 4) for a batch of >= 4: 4x4 register tiles. */
    static void qk_rows_float_fast(const qk_dense *w, int64_t r0, int64_t nrows, const float *xp,
                                   int64_t batch, float *y, uint8_t *codes) {
        if (nrows < 4) {
            for (int64_t i = 0; i < nrows; i++) qk_row_float_fast(w, r0 + i, xp, batch, y, codes);
            return;
        }
        /* bits and kind become compile-time constants in each instantiation, so the
           8 sub-vectors of a block unroll and the 16 accumulators stay in registers (with
           run-time bits GCC kept acc[][] and wv[] in memory: objdump showed vmovaps to
           and from the stack around every FMA, and it ran slower than row-at-a-time). */
        #define QK_FLOAT_RB(B, K) { int64_t b0 = 0; \
            for (; b0 + 4 <= batch; b0 += 4) qk_float_rb_tile(w, r0, xp, b0, y, codes, 4, 4, B, K); \
            for (; b0 < batch; b0++) qk_float_rb_tile(w, r0, xp, b0, y, codes, 4, 1, B, K); }
        if (w->kind == 0) {
            if (w->bits == 4) QK_FLOAT_RB(4, 0) else if (w->bits == 2) QK_FLOAT_RB(2, 0) else QK_FLOAT_RB(8, 0)
        } else {
            if (w->bits == 4) QK_FLOAT_RB(4, 1) else if (w->bits == 2) QK_FLOAT_RB(2, 1) else QK_FLOAT_RB(8, 1)
        }
        #undef QK_FLOAT_RB
    }
    #else
    static void qk_row_float_fast(const qk_dense *w, int64_t r, const float *xp, int64_t batch,
                                  float *y, uint8_t *codes) {
        (void)w; (void)r; (void)xp; (void)batch; (void)y; (void)codes;  /* never selected */
    }
    static void qk_rows_float_fast(const qk_dense *w, int64_t r0, int64_t nrows, const float *xp,
                                   int64_t batch, float *y, uint8_t *codes) {
        (void)w; (void)r0; (void)nrows; (void)xp; (void)batch; (void)y; (void)codes;
    }
    #endif

    /* Scalar tail of the int8 fast path: the columns after the last full 128-block lie in
       one x block (block = 128) and one weight group. */
    static inline float qk_tail_int8(const qk_dense *w, int64_t r, const qk_xq *q, int64_t bi,
                              uint8_t *codes) {
        int64_t n = w->n_in, c0 = (n / 128) * 128;
        if (c0 >= n) return 0.0f;
        qk_unpack(w->packed + r * w->row_bytes + c0 * w->bits / 8, codes, n - c0, w->bits);
        const int8_t *xq = q->xq + bi * n;
        int32_t isum = 0;
        float s, z;
        if (w->kind == 0) {
            for (int64_t c = c0; c < n; c++) isum += (int32_t)codes[c - c0] * xq[c];
            int64_t g = c0 / w->group;
            s = w->scales[r * w->prow + g]; z = w->zeros[r * w->prow + g];
        } else {
            const uint8_t *lut = w->cb_u8 + r * w->cbrow;
            for (int64_t c = c0; c < n; c++) isum += (int32_t)lut[codes[c - c0]] * xq[c];
            s = w->cb_scale[w->cbrow ? r : 0]; z = 128.0f;
        }
        int64_t k = c0 / 128;
        float d = s * q->xs[bi * q->nblocks + k];
        return d * ((float)isum - z * (float)q->xsum[bi * q->nblocks + k]);
    }

    #ifdef QK_VNNI
    /* int8 row kernel (llama.cpp Q8_0 idea): per 128-column block, integer dot products of
       the unsigned weight bytes with the int8 activations (vpdpbusd: 4 products per dword
       lane), then one float multiply by scale_w * scale_x. The zero-point term
       z * sum(xq) is a scalar per block, precomputed sums of xq make it exact. Codebooks
       enter through a 16-byte table (vpshufb) mapping codes to round(cb/scale)+128. */
    static inline __attribute__((always_inline)) void
    qk_int8_fast_tile(const qk_dense *w, int64_t r, const qk_xq *q, int64_t b0, float *y,
                      uint8_t *codes, const int NB) {
        const int64_t n = w->n_in, nblk = n / 128, bits = w->bits, NBK = q->nblocks;
        const uint8_t *row = w->packed + r * w->row_bytes;
        const int cbk = w->kind == 1;
        const float *sc = w->scales + r * w->prow, *zz = w->zeros + r * w->prow;
        float cbs = cbk ? w->cb_scale[w->cbrow ? r : 0] : 0.0f;
        __m512i tbl = _mm512_setzero_si512();
        if (cbk) {
            const uint8_t *lut = w->cb_u8 + r * w->cbrow;
            uint8_t t16[16];
            for (int i = 0; i < 16; i++) t16[i] = lut[i & ((1 << bits) - 1)];
            tbl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)t16));
        }
        const __m512i m4 = _mm512_set1_epi8(0x0F);
        const __m256i m2 = _mm256_set1_epi8(0x03);
        __m512 acc[8];
        float zacc[8];
        const int8_t *xb[8];
        for (int t = 0; t < NB; t++) {
            acc[t] = _mm512_setzero_ps(); zacc[t] = 0.0f; xb[t] = q->xq + (b0 + t) * n;
        }
        const int64_t bpg = qk_blocks_per_group(w);
        int64_t g_next = 0, gpos = 0;
        for (int64_t blk = 0; blk < nblk; blk++) {
            const int64_t c0 = blk * 128;
            QK_GROUP_STEP(g, gpos, bpg, newg)
            (void)newg;
            float s, z;
            if (cbk) { s = cbs; z = 128.0f; }
            else { s = sc[g]; z = zz[g]; }
            __m512i ia[8];
            if (bits == 4) {
                __m512i p = _mm512_loadu_si512((const void *)(row + blk * 64));
                __m512i lo = _mm512_and_si512(p, m4);
                __m512i hi = _mm512_and_si512(_mm512_srli_epi16(p, 4), m4);
                if (cbk) { lo = _mm512_shuffle_epi8(tbl, lo); hi = _mm512_shuffle_epi8(tbl, hi); }
                for (int t = 0; t < NB; t++) {
                    __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo,
                                                    _mm512_loadu_si512((const void *)(xb[t] + c0)));
                    ia[t] = _mm512_dpbusd_epi32(a, hi, _mm512_loadu_si512((const void *)(xb[t] + c0 + 64)));
                }
            } else if (bits == 2) {
                __m256i p = _mm256_loadu_si256((const __m256i *)(row + blk * 32));
                __m256i v[4];
                for (int k = 0; k < 4; k++) {
                    v[k] = _mm256_and_si256(_mm256_srli_epi16(p, 2 * k), m2);
                    if (cbk) v[k] = _mm256_shuffle_epi8(_mm512_castsi512_si256(tbl), v[k]);
                }
                for (int t = 0; t < NB; t++) {
                    __m256i a = _mm256_setzero_si256();
                    for (int k = 0; k < 4; k++)
                        a = _mm256_dpbusd_epi32(a, v[k], _mm256_loadu_si256((const __m256i *)(xb[t] + c0 + 32 * k)));
                    ia[t] = _mm512_inserti64x4(_mm512_setzero_si512(), a, 0);
                }
            } else { /* 8-bit linear codes, natural order */
                __m512i p0 = _mm512_loadu_si512((const void *)(row + blk * 128));
                __m512i p1 = _mm512_loadu_si512((const void *)(row + blk * 128 + 64));
                for (int t = 0; t < NB; t++) {
                    __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), p0,
                                                    _mm512_loadu_si512((const void *)(xb[t] + c0)));
                    ia[t] = _mm512_dpbusd_epi32(a, p1, _mm512_loadu_si512((const void *)(xb[t] + c0 + 64)));
                }
            }
            for (int t = 0; t < NB; t++) {
                const int64_t k = (b0 + t) * NBK + blk;
                const float d = s * q->xs[k];
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[t]), _mm512_set1_ps(d), acc[t]);
                zacc[t] += d * (z * (float)q->xsum[k]);
            }
        }
        for (int t = 0; t < NB; t++)
            y[(b0 + t) * w->n_out + r] = (_mm512_reduce_add_ps(acc[t]) - zacc[t])
                                         + (nblk * 128 < n ? qk_tail_int8(w, r, q, b0 + t, codes) : 0.0f);
    }

    static void qk_row_int8_fast(const qk_dense *w, int64_t r, const qk_xq *q, int64_t batch,
                                 float *y, uint8_t *codes) {
        int64_t b0 = 0;
        for (; b0 + 8 <= batch; b0 += 8) qk_int8_fast_tile(w, r, q, b0, y, codes, 8);
        if (b0 + 4 <= batch) { qk_int8_fast_tile(w, r, q, b0, y, codes, 4); b0 += 4; }
        if (b0 + 2 <= batch) { qk_int8_fast_tile(w, r, q, b0, y, codes, 2); b0 += 2; }
        if (b0 < batch) qk_int8_fast_tile(w, r, q, b0, y, codes, 1);
    }

    /* Batched int8 kernel: R rows x NB batch rows per register tile (R = 4 for 4 and 8
       bits, 2 for 2 bits whose four code streams take more registers). Same arithmetic as
       qk_int8_fast_tile; each activation load now serves R rows. */
    static inline __attribute__((always_inline)) void
    qk_int8_rb_tile(const qk_dense *w, int64_t r0, const qk_xq *q, int64_t b0, float *y,
                    uint8_t *codes, const int R, const int NB, const int bits, const int cbk) {
        const int64_t n = w->n_in, nblk = n / 128, NBK = q->nblocks;
        const __m512i m4 = _mm512_set1_epi8(0x0F);
        const __m256i m2 = _mm256_set1_epi8(0x03);
        __m512i tbl[4];
        float cbs[4];
        __m512 acc[4][4];
        float zacc[4][4];
        const int8_t *xb[4];
        for (int t = 0; t < NB; t++) xb[t] = q->xq + (b0 + t) * n;
        for (int i = 0; i < R; i++) {
            tbl[i] = _mm512_setzero_si512();
            cbs[i] = 0.0f;
            if (cbk) {
                const uint8_t *lut = w->cb_u8 + (r0 + i) * w->cbrow;
                uint8_t t16[16];
                for (int k = 0; k < 16; k++) t16[k] = lut[k & ((1 << bits) - 1)];
                tbl[i] = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)t16));
                cbs[i] = w->cb_scale[w->cbrow ? r0 + i : 0];
            }
            for (int t = 0; t < NB; t++) { acc[i][t] = _mm512_setzero_ps(); zacc[i][t] = 0.0f; }
        }
        const int64_t bpg = qk_blocks_per_group(w);
        int64_t g_next = 0, gpos = 0;
        for (int64_t blk = 0; blk < nblk; blk++) {
            const int64_t c0 = blk * 128;
            QK_GROUP_STEP(g, gpos, bpg, newg)
            (void)newg;
            float s[4], z[4];
            for (int i = 0; i < R; i++) {
                if (cbk) { s[i] = cbs[i]; z[i] = 128.0f; }
                else { s[i] = w->scales[(r0 + i) * w->prow + g]; z[i] = w->zeros[(r0 + i) * w->prow + g]; }
            }
            __m512i ia[4][4];
            if (bits == 4 || bits == 8) {
                __m512i a0[4], a1[4];
                for (int i = 0; i < R; i++) {
                    const uint8_t *row = w->packed + (r0 + i) * w->row_bytes;
                    if (bits == 4) {
                        __m512i p = _mm512_loadu_si512((const void *)(row + blk * 64));
                        a0[i] = _mm512_and_si512(p, m4);
                        a1[i] = _mm512_and_si512(_mm512_srli_epi16(p, 4), m4);
                        if (cbk) { a0[i] = _mm512_shuffle_epi8(tbl[i], a0[i]); a1[i] = _mm512_shuffle_epi8(tbl[i], a1[i]); }
                    } else {
                        a0[i] = _mm512_loadu_si512((const void *)(row + blk * 128));
                        a1[i] = _mm512_loadu_si512((const void *)(row + blk * 128 + 64));
                    }
                }
                for (int t = 0; t < NB; t++) {
                    __m512i x0 = _mm512_loadu_si512((const void *)(xb[t] + c0));
                    __m512i x1 = _mm512_loadu_si512((const void *)(xb[t] + c0 + 64));
                    for (int i = 0; i < R; i++)
                        ia[i][t] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), a0[i], x0), a1[i], x1);
                }
            } else { /* 2 bits */
                __m256i v[4][4];
                for (int i = 0; i < R; i++) {
                    __m256i p = _mm256_loadu_si256((const __m256i *)(w->packed + (r0 + i) * w->row_bytes + blk * 32));
                    for (int k = 0; k < 4; k++) {
                        v[i][k] = _mm256_and_si256(_mm256_srli_epi16(p, 2 * k), m2);
                        if (cbk) v[i][k] = _mm256_shuffle_epi8(_mm512_castsi512_si256(tbl[i]), v[i][k]);
                    }
                }
                for (int t = 0; t < NB; t++) {
                    __m512i xx0 = _mm512_loadu_si512((const void *)(xb[t] + c0));
                    __m512i xx1 = _mm512_loadu_si512((const void *)(xb[t] + c0 + 64));
                    __m256i xk[4] = {_mm512_castsi512_si256(xx0), _mm512_extracti64x4_epi64(xx0, 1),
                                     _mm512_castsi512_si256(xx1), _mm512_extracti64x4_epi64(xx1, 1)};
                    for (int i = 0; i < R; i++) {
                        __m256i a = _mm256_setzero_si256();
                        for (int k = 0; k < 4; k++) a = _mm256_dpbusd_epi32(a, v[i][k], xk[k]);
                        ia[i][t] = _mm512_inserti64x4(_mm512_setzero_si512(), a, 0);
                    }
                }
            }
            for (int t = 0; t < NB; t++) {
                const float xs = q->xs[(b0 + t) * NBK + blk];
                const float zx = xs * (float)q->xsum[(b0 + t) * NBK + blk];
                for (int i = 0; i < R; i++) {
                    const float d = s[i] * xs;
                    acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[i][t]), _mm512_set1_ps(d), acc[i][t]);
                    zacc[i][t] += s[i] * z[i] * zx;
                }
            }
        }
        for (int i = 0; i < R; i++)
            for (int t = 0; t < NB; t++)
                y[(b0 + t) * w->n_out + r0 + i] = (_mm512_reduce_add_ps(acc[i][t]) - zacc[i][t])
                                                  + (nblk * 128 < n ? qk_tail_int8(w, r0 + i, q, b0 + t, codes) : 0.0f);
    }

    static void qk_rows_int8_fast(const qk_dense *w, int64_t r0, int64_t nrows, const qk_xq *q,
                                  int64_t batch, float *y, uint8_t *codes) {
        if (nrows < 4) {
            for (int64_t i = 0; i < nrows; i++) qk_row_int8_fast(w, r0 + i, q, batch, y, codes);
            return;
        }
        int64_t b0 = 0;
        const int cbk = w->kind == 1;
        if (w->bits == 2) {
            for (; b0 + 4 <= batch; b0 += 4) {
                if (cbk) {
                    qk_int8_rb_tile(w, r0, q, b0, y, codes, 2, 4, 2, 1);
                    qk_int8_rb_tile(w, r0 + 2, q, b0, y, codes, 2, 4, 2, 1);
                } else {
                    qk_int8_rb_tile(w, r0, q, b0, y, codes, 2, 4, 2, 0);
                    qk_int8_rb_tile(w, r0 + 2, q, b0, y, codes, 2, 4, 2, 0);
                }
            }
        } else if (w->bits == 4) {
            for (; b0 + 4 <= batch; b0 += 4) {
                if (cbk) qk_int8_rb_tile(w, r0, q, b0, y, codes, 4, 4, 4, 1);
                else qk_int8_rb_tile(w, r0, q, b0, y, codes, 4, 4, 4, 0);
            }
        } else {  /* 8-bit codebooks never reach the fast path */
            for (; b0 + 4 <= batch; b0 += 4) qk_int8_rb_tile(w, r0, q, b0, y, codes, 4, 4, 8, 0);
        }
        for (; b0 < batch; b0++)
            for (int64_t i = 0; i < 4; i++) qk_int8_fast_tile(w, r0 + i, q, b0, y, codes, 1);
    }
    #else
    static void qk_row_int8_fast(const qk_dense *w, int64_t r, const qk_xq *q, int64_t batch,
                                 float *y, uint8_t *codes) {
        (void)w; (void)r; (void)q; (void)batch; (void)y; (void)codes;  /* never selected */
    }
    static void qk_rows_int8_fast(const qk_dense *w, int64_t r0, int64_t nrows, const qk_xq *q,
                                  int64_t batch, float *y, uint8_t *codes) {
        (void)w; (void)r0; (void)nrows; (void)q; (void)batch; (void)y; (void)codes;
    }
    #endif

    /* ---- sparse CSR rows ----------------------------------------------------------- */
    typedef struct {
        const int64_t *row_ptr;
        const int32_t *cols;
        const uint8_t *codes;
        int64_t n_out, n_in;
        int kind;                 /* 0 linear, 1 codebook */
        const float *scales, *zeros;
        int64_t prow, group;
        const float *codebook;    /* (Rc, k_pad) */
        int64_t cbrow, k;         /* k: padded table length */
    } qk_sparse;

    static void qk_sparse_row(const qk_sparse *w, int64_t r, const float *x, int64_t batch,
                              float *y) {
        const int64_t j0 = w->row_ptr[r], j1 = w->row_ptr[r + 1];
        const int32_t *cols = w->cols;
        const uint8_t *codes = w->codes;
        for (int64_t bi = 0; bi < batch; bi++) {
            const float *xb = x + bi * w->n_in;
            float s = 0.0f;
            int64_t j = j0;
            if (w->kind == 1) {
                const float *cb = w->codebook + r * w->cbrow;
    #ifdef QK_AVX512
                if (w->k <= 16) {
                    /* 16 kept weights per step: codebook in one register (vpermps),
                       activations fetched with a gather */
                    __m512 lut = _mm512_loadu_ps(cb);
                    __m512 acc = _mm512_setzero_ps();
                    for (; j + 16 <= j1; j += 16) {
                        __m512i cv = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + j)));
                        __m512i ci = _mm512_loadu_si512((const void *)(cols + j));
                        __m512 xv = _mm512_i32gather_ps(ci, xb, 4);
                        acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(cv, lut), xv, acc);
                    }
                    s = _mm512_reduce_add_ps(acc);
                }
    #endif
                for (; j < j1; j++) s += cb[codes[j]] * xb[cols[j]];
            } else {
                const float *sc = w->scales + r * w->prow, *zz = w->zeros + r * w->prow;
                for (; j < j1; j++) {
                    int64_t c = cols[j], g = c / w->group;
                    s += (((float)codes[j] - zz[g]) * sc[g]) * xb[c];
                }
            }
            y[bi * w->n_out + r] = s;
        }
    }

    /* Batched sparse row: xt is x transposed, (n_in, batch), so the batch values of one
       column are contiguous; each kept weight then costs one AXPY over the batch (GCC
       vectorizes it: no reduction), instead of one gather per batch row. acc: batch floats. */
    static void qk_sparse_row_batched(const qk_sparse *w, int64_t r, const float *xt,
                                      int64_t batch, float *y, float *acc) {
        for (int64_t b = 0; b < batch; b++) acc[b] = 0.0f;
        const float *cb = w->codebook + r * w->cbrow;
        const float *sc = w->scales + r * w->prow, *zz = w->zeros + r * w->prow;
        for (int64_t j = w->row_ptr[r]; j < w->row_ptr[r + 1]; j++) {
            const int64_t c = w->cols[j];
            float v;
            if (w->kind == 1) v = cb[w->codes[j]];
            else { int64_t g = c / w->group; v = ((float)w->codes[j] - zz[g]) * sc[g]; }
            const float *xc = xt + c * batch;
            for (int64_t b = 0; b < batch; b++) acc[b] += v * xc[b];
        }
        for (int64_t b = 0; b < batch; b++) y[b * w->n_out + r] = acc[b];
    }

    static void qk_sparse_dequant_row(const qk_sparse *w, int64_t r, float *out) {
        for (int64_t c = 0; c < w->n_in; c++) out[c] = 0.0f;
        for (int64_t j = w->row_ptr[r]; j < w->row_ptr[r + 1]; j++) {
            int64_t c = w->cols[j];
            if (w->kind == 1) out[c] = w->codebook[r * w->cbrow + w->codes[j]];
            else {
                int64_t g = c / w->group;
                out[c] = ((float)w->codes[j] - w->zeros[r * w->prow + g]) * w->scales[r * w->prow + g];
            }
        }
    }
    """
    ctypedef struct qk_dense:
        const uint8_t *packed
        int64_t row_bytes, n_out, n_in
        int bits, kind
        const float *scales
        const float *zeros
        int64_t prow, group
        const float *codebook
        int64_t cbrow
        const uint8_t *cb_u8
        const float *cb_scale

    ctypedef struct qk_xq:
        const int8_t *xq
        const float *xs
        const int32_t *xsum
        int64_t block, nblocks

    ctypedef struct qk_sparse:
        const int64_t *row_ptr
        const int32_t *cols
        const uint8_t *codes
        int64_t n_out, n_in
        int kind
        const float *scales
        const float *zeros
        int64_t prow, group
        const float *codebook
        int64_t cbrow, k

    int qk_fast_float_available(int bits, int kind) nogil
    int qk_fast_int8_available(int bits, int kind) nogil
    void qk_row_float_generic(const qk_dense *w, int64_t r, const float *x, int64_t batch,
                              float *y, uint8_t *codes, float *wrow) nogil
    void qk_row_float_fast(const qk_dense *w, int64_t r, const float *xp, int64_t batch,
                           float *y, uint8_t *codes) nogil
    void qk_rows_float_fast(const qk_dense *w, int64_t r0, int64_t nrows, const float *xp,
                            int64_t batch, float *y, uint8_t *codes) nogil
    void qk_rows_int8_fast(const qk_dense *w, int64_t r0, int64_t nrows, const qk_xq *q,
                           int64_t batch, float *y, uint8_t *codes) nogil
    void qk_row_int8_generic(const qk_dense *w, int64_t r, const qk_xq *q, int64_t batch,
                             float *y, uint8_t *codes) nogil
    void qk_row_int8_fast(const qk_dense *w, int64_t r, const qk_xq *q, int64_t batch,
                          float *y, uint8_t *codes) nogil
    void qk_dequant_row(const qk_dense *w, int64_t r, uint8_t *codes, float *out) nogil
    void qk_permute_row(const float *x, float *xp, int64_t n, int bits) nogil
    void qk_quantize_row(const float *x, int64_t n, int64_t B, int8_t *xq, float *xs,
                         int32_t *xsum, int permute_bits, int8_t *tmp,
                         float static_scale) nogil
    void qk_sparse_row(const qk_sparse *w, int64_t r, const float *x, int64_t batch,
                       float *y) nogil
    void qk_sparse_row_batched(const qk_sparse *w, int64_t r, const float *xt, int64_t batch,
                               float *y, float *acc) nogil
    void qk_sparse_dequant_row(const qk_sparse *w, int64_t r, float *out) nogil


# Rows handed to a thread at a time: enough to amortize scheduling, small enough that two
# threads stay balanced on 1536-row matrices.
cdef enum:
    ROW_CHUNK = 16


def fast_float_available(int bits, int kind):
    """1 if this build has a vector float kernel for (bits, kind); kind 0 linear, 1 codebook."""
    return qk_fast_float_available(bits, kind)


def fast_int8_available(int bits, int kind):
    """1 if this build has a VNNI int8 kernel for (bits, kind)."""
    return qk_fast_int8_available(bits, kind)


cdef qk_dense _dense(const uint8_t[:, ::1] packed, int bits, int kind, int64_t n_in,
                     const float[:, ::1] scales, const float[:, ::1] zeros, int64_t prow,
                     int64_t group, const float[:, ::1] codebook, int64_t cbrow,
                     const uint8_t[:, ::1] cb_u8, const float[::1] cb_scale):
    cdef qk_dense w
    w.packed = &packed[0, 0]
    w.row_bytes = packed.shape[1]
    w.n_out = packed.shape[0]
    w.n_in = n_in
    w.bits = bits
    w.kind = kind
    w.scales = &scales[0, 0]
    w.zeros = &zeros[0, 0]
    w.prow = prow
    w.group = group
    w.codebook = &codebook[0, 0]
    w.cbrow = cbrow
    w.cb_u8 = &cb_u8[0, 0]
    w.cb_scale = &cb_scale[0]
    return w


def dense_matmul_float(const uint8_t[:, ::1] packed, int bits, int kind, int64_t n_in,
                       const float[:, ::1] scales, const float[:, ::1] zeros, int64_t prow,
                       int64_t group, const float[:, ::1] codebook, int64_t cbrow,
                       const uint8_t[:, ::1] cb_u8, const float[::1] cb_scale,
                       const float[:, ::1] x, float[:, ::1] y, bint fast,
                       uint8_t[:, ::1] code_scratch, float[:, ::1] float_scratch,
                       int num_threads):
    """y (batch, n_out) = x (batch, n_in) @ W_hat.T in float32.

    Trusts the caller (qpack/matmul.py): packed is (n_out, ceil(n_in*bits/8)); every
    parameter array matches the encoding; x is in the fast layout (qk_permute_row) when
    ``fast`` is set; scratch arrays have num_threads rows of >= n_in entries.
    """
    cdef qk_dense w = _dense(packed, bits, kind, n_in, scales, zeros, prow, group, codebook,
                             cbrow, cb_u8, cb_scale)
    cdef int64_t r, batch = x.shape[0]
    cdef int tid
    if fast and batch >= 4:
        # batched: 4-row register tiles, one quad of rows per iteration
        with nogil, parallel(num_threads=num_threads):
            tid = threadid()
            for r in prange((w.n_out + 3) // 4, schedule="dynamic", chunksize=ROW_CHUNK // 4):
                qk_rows_float_fast(&w, 4 * r, min(4, w.n_out - 4 * r), &x[0, 0], batch,
                                   &y[0, 0], &code_scratch[tid, 0])
        return
    with nogil, parallel(num_threads=num_threads):
        tid = threadid()
        for r in prange(w.n_out, schedule="dynamic", chunksize=ROW_CHUNK):
            if fast:
                qk_row_float_fast(&w, r, &x[0, 0], batch, &y[0, 0], &code_scratch[tid, 0])
            else:
                qk_row_float_generic(&w, r, &x[0, 0], batch, &y[0, 0], &code_scratch[tid, 0],
                                     &float_scratch[tid, 0])


def dense_matmul_int8(const uint8_t[:, ::1] packed, int bits, int kind, int64_t n_in,
                      const float[:, ::1] scales, const float[:, ::1] zeros, int64_t prow,
                      int64_t group, const float[:, ::1] codebook, int64_t cbrow,
                      const uint8_t[:, ::1] cb_u8, const float[::1] cb_scale,
                      const int8_t[:, ::1] xq, const float[:, ::1] xs, const int32_t[:, ::1] xsum,
                      int64_t block, float[:, ::1] y, bint fast, uint8_t[:, ::1] code_scratch,
                      int num_threads):
    """y = x @ W_hat.T with x given as int8 blocks (quantize_activations).

    Trusts the caller: as dense_matmul_float, plus xs/xsum of shape (batch, ceil(n_in/block))
    and every x block inside one weight group; block == 128 when ``fast`` is set.
    """
    cdef qk_dense w = _dense(packed, bits, kind, n_in, scales, zeros, prow, group, codebook,
                             cbrow, cb_u8, cb_scale)
    cdef qk_xq q
    q.xq = &xq[0, 0]
    q.xs = &xs[0, 0]
    q.xsum = &xsum[0, 0]
    q.block = block
    q.nblocks = xs.shape[1]
    cdef int64_t r, batch = xq.shape[0]
    cdef int tid
    if fast and batch >= 4:
        with nogil, parallel(num_threads=num_threads):
            tid = threadid()
            for r in prange((w.n_out + 3) // 4, schedule="dynamic", chunksize=ROW_CHUNK // 4):
                qk_rows_int8_fast(&w, 4 * r, min(4, w.n_out - 4 * r), &q, batch, &y[0, 0],
                                  &code_scratch[tid, 0])
        return
    with nogil, parallel(num_threads=num_threads):
        tid = threadid()
        for r in prange(w.n_out, schedule="dynamic", chunksize=ROW_CHUNK):
            if fast:
                qk_row_int8_fast(&w, r, &q, batch, &y[0, 0], &code_scratch[tid, 0])
            else:
                qk_row_int8_generic(&w, r, &q, batch, &y[0, 0], &code_scratch[tid, 0])


def dense_dequantize_rows(const uint8_t[:, ::1] packed, int bits, int kind, int64_t n_in,
                          const float[:, ::1] scales, const float[:, ::1] zeros, int64_t prow,
                          int64_t group, const float[:, ::1] codebook, int64_t cbrow,
                          const uint8_t[:, ::1] cb_u8, const float[::1] cb_scale,
                          int64_t row0, float[:, ::1] out, uint8_t[:, ::1] code_scratch,
                          int num_threads):
    """out[i] = W_hat[row0 + i] for i < out.shape[0].

    Trusts the caller: row0 + out.shape[0] <= n_out, out has n_in columns, scratch as above.
    """
    cdef qk_dense w = _dense(packed, bits, kind, n_in, scales, zeros, prow, group, codebook,
                             cbrow, cb_u8, cb_scale)
    cdef int64_t i, nrows = out.shape[0]
    cdef int tid
    with nogil, parallel(num_threads=num_threads):
        tid = threadid()
        for i in prange(nrows, schedule="dynamic", chunksize=ROW_CHUNK):
            qk_dequant_row(&w, row0 + i, &code_scratch[tid, 0], &out[i, 0])


def dense_gather_rows(const uint8_t[:, ::1] packed, int bits, int kind, int64_t n_in,
                      const float[:, ::1] scales, const float[:, ::1] zeros, int64_t prow,
                      int64_t group, const float[:, ::1] codebook, int64_t cbrow,
                      const uint8_t[:, ::1] cb_u8, const float[::1] cb_scale,
                      const int64_t[::1] rows, float[:, ::1] out, uint8_t[:, ::1] code_scratch,
                      int num_threads):
    """out[i] = W_hat[rows[i]] (an embedding lookup straight from the packed rows).

    Trusts the caller: every rows[i] in [0, n_out), out is (len(rows), n_in), scratch as
    for dense_dequantize_rows.
    """
    cdef qk_dense w = _dense(packed, bits, kind, n_in, scales, zeros, prow, group, codebook,
                             cbrow, cb_u8, cb_scale)
    cdef int64_t i, n = rows.shape[0]
    cdef int tid
    with nogil, parallel(num_threads=num_threads):
        tid = threadid()
        for i in prange(n, schedule="static"):
            qk_dequant_row(&w, rows[i], &code_scratch[tid, 0], &out[i, 0])


def permute_activations(const float[:, ::1] x, float[:, ::1] xp, int bits, int num_threads):
    """Copy x into the fast-path column layout for ``bits`` (2, 4 or 8; 8 is a copy)."""
    cdef int64_t i
    with nogil:
        for i in prange(x.shape[0], num_threads=num_threads, schedule="static"):
            qk_permute_row(&x[i, 0], &xp[i, 0], x.shape[1], bits)


def quantize_activations(const float[:, ::1] x, int64_t block, int8_t[:, ::1] xq,
                         float[:, ::1] xs, int32_t[:, ::1] xsum, int permute_bits,
                         int8_t[:, ::1] tmp, int num_threads, float static_scale=0.0):
    """int8 per-block quantization of each row of x: scale max|x|/127 per block, or
    ``static_scale`` for every block when > 0 (values beyond 127 * static_scale clip).

    Trusts the caller: xq (batch, n_in); xs, xsum (batch, ceil(n_in/block)); tmp
    (batch, n_in) scratch used only when permute_bits is 2 or 4 (then block == 128);
    static_scale finite and >= 0.
    """
    cdef int64_t i
    with nogil:
        for i in prange(x.shape[0], num_threads=num_threads, schedule="static"):
            qk_quantize_row(&x[i, 0], x.shape[1], block, &xq[i, 0], &xs[i, 0], &xsum[i, 0],
                            permute_bits, &tmp[i, 0], static_scale)


cdef qk_sparse _sparse(const int64_t[::1] row_ptr, const int32_t[::1] cols,
                       const uint8_t[::1] codes, int64_t n_in, int kind,
                       const float[:, ::1] scales, const float[:, ::1] zeros, int64_t prow,
                       int64_t group, const float[:, ::1] codebook, int64_t cbrow):
    cdef qk_sparse w
    w.row_ptr = &row_ptr[0]
    w.cols = &cols[0]
    w.codes = &codes[0]
    w.n_out = row_ptr.shape[0] - 1
    w.n_in = n_in
    w.kind = kind
    w.scales = &scales[0, 0]
    w.zeros = &zeros[0, 0]
    w.prow = prow
    w.group = group
    w.codebook = &codebook[0, 0]
    w.cbrow = cbrow
    w.k = codebook.shape[1]
    return w


def sparse_matmul(const int64_t[::1] row_ptr, const int32_t[::1] cols, const uint8_t[::1] codes,
                  int64_t n_in, int kind, const float[:, ::1] scales, const float[:, ::1] zeros,
                  int64_t prow, int64_t group, const float[:, ::1] codebook, int64_t cbrow,
                  const float[:, ::1] x, float[:, ::1] y, int num_threads):
    """y = x @ W_hat.T for a CSR matrix of codes.

    Trusts the caller: row_ptr monotone from 0 to nnz, cols in [0, n_in), codes below the
    padded codebook length (>= 16 entries, so the vector path may index 0..15); cols and
    codes hold at least one element (padded when nnz == 0).
    """
    cdef qk_sparse w = _sparse(row_ptr, cols, codes, n_in, kind, scales, zeros, prow, group,
                               codebook, cbrow)
    cdef int64_t r, batch = x.shape[0]
    with nogil:
        for r in prange(w.n_out, num_threads=num_threads, schedule="dynamic", chunksize=64):
            qk_sparse_row(&w, r, &x[0, 0], batch, &y[0, 0])


def sparse_matmul_batched(const int64_t[::1] row_ptr, const int32_t[::1] cols,
                          const uint8_t[::1] codes, int64_t n_in, int kind,
                          const float[:, ::1] scales, const float[:, ::1] zeros, int64_t prow,
                          int64_t group, const float[:, ::1] codebook, int64_t cbrow,
                          const float[:, ::1] xt, float[:, ::1] y, float[:, ::1] acc_scratch,
                          int num_threads):
    """y (batch, n_out) = x @ W_hat.T with x given transposed, xt (n_in, batch).

    Trusts the caller as sparse_matmul, plus acc_scratch of shape (num_threads, >= batch).
    """
    cdef qk_sparse w = _sparse(row_ptr, cols, codes, n_in, kind, scales, zeros, prow, group,
                               codebook, cbrow)
    cdef int64_t r, batch = xt.shape[1]
    cdef int tid
    with nogil, parallel(num_threads=num_threads):
        tid = threadid()
        for r in prange(w.n_out, schedule="dynamic", chunksize=16):
            qk_sparse_row_batched(&w, r, &xt[0, 0], batch, &y[0, 0], &acc_scratch[tid, 0])


def sparse_dequantize(const int64_t[::1] row_ptr, const int32_t[::1] cols,
                      const uint8_t[::1] codes, int64_t n_in, int kind,
                      const float[:, ::1] scales, const float[:, ::1] zeros, int64_t prow,
                      int64_t group, const float[:, ::1] codebook, int64_t cbrow,
                      int64_t row0, float[:, ::1] out, int num_threads):
    """out[i] = W_hat[row0 + i] for i < out.shape[0] (out has n_in columns).

    Trusts the caller as sparse_matmul, and row0 + out.shape[0] <= n_out.
    """
    cdef qk_sparse w = _sparse(row_ptr, cols, codes, n_in, kind, scales, zeros, prow, group,
                               codebook, cbrow)
    cdef int64_t r
    with nogil:
        for r in prange(out.shape[0], num_threads=num_threads, schedule="static"):
            qk_sparse_dequant_row(&w, row0 + r, &out[r, 0])


def sparse_gather_rows(const int64_t[::1] row_ptr, const int32_t[::1] cols,
                       const uint8_t[::1] codes, int64_t n_in, int kind,
                       const float[:, ::1] scales, const float[:, ::1] zeros, int64_t prow,
                       int64_t group, const float[:, ::1] codebook, int64_t cbrow,
                       const int64_t[::1] rows, float[:, ::1] out, int num_threads):
    """out[i] = W_hat[rows[i]]. Trusts the caller as sparse_matmul, and every rows[i] in
    [0, n_out) with out of shape (len(rows), n_in)."""
    cdef qk_sparse w = _sparse(row_ptr, cols, codes, n_in, kind, scales, zeros, prow, group,
                               codebook, cbrow)
    cdef int64_t i
    with nogil:
        for i in prange(rows.shape[0], num_threads=num_threads, schedule="static"):
            qk_sparse_dequant_row(&w, rows[i], &out[i, 0])
