/* Dense packed matrices, AVX2 variant (AVX2 + FMA + BMI2; qk_isa.h): the float and int8
 * kernels for 2-, 4- and 8-bit codes in 128-column blocks, the 256-bit counterparts of
 * qk_dense_avx512.h with the same semantics and the same activation layouts (permuted
 * streams for 2 and 4 bits, natural order for 8 bits; docs/KERNELS.md), and the
 * any-width kernels (every width 1..8, groups of any multiple of 32, natural order).
 * Every function carries the AVX2 target attribute, so the build's -march does not
 * matter; qk_dense.h calls them only when the CPU has the instructions.
 *
 * Tiles are R weight rows x NB batch rows with R, NB, bits and the encoding all
 * compile-time constants at each call site (always_inline helpers, fixed-size arrays),
 * which is what keeps the accumulators in the 16 ymm registers (see qk_dense_avx512.h).
 */
#ifndef QK_DENSE_AVX2_H
#define QK_DENSE_AVX2_H

#include "qk_dense_ref.h"

#if QK_X86
QK_AVX2_INL float qk_hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Dispatch on (bits, kind) so that both are compile-time constants in the kernel. */
#define QK_AVX2_BK(CALL) \
    do { if (w->kind == 0) { if (w->bits == 4) CALL(4, 0); else if (w->bits == 2) CALL(2, 0); \
                             else CALL(8, 0); } \
         else { if (w->bits == 4) CALL(4, 1); else if (w->bits == 2) CALL(2, 1); \
                else CALL(8, 1); } } while (0)

/* ---- float mode ---------------------------------------------------------------- */
/* 16-entry float table in two registers (entries 0-7, 8-15): vpermps uses the low 3
   bits of each dword index and ignores the rest, and bit 3 shifted into the sign bit
   picks the half through vblendvps, so idx needs no masking (bits above 3 are dropped
   by both). */
QK_AVX2_INL __m256 qk_lut16_avx2(__m256i idx, __m256 lo, __m256 hi) {
    __m256 a = _mm256_permutevar8x32_ps(lo, idx);
    __m256 b = _mm256_permutevar8x32_ps(hi, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

/* A 128-column block is 16 vectors of 8 columns. Vector j takes its codes from bytes
   (j >> 1) * 8 (4 bits, stream j & 1), (j >> 2) * 8 (2 bits, stream j & 3) or j * 8
   (8 bits) of the block and pairs with activations at qk_xoff_avx2(bits, j). */
QK_AVX2_INL int qk_xoff_avx2(int bits, int j) {
    return bits == 4 ? 64 * (j & 1) + 8 * (j >> 1)
         : bits == 2 ? 32 * (j & 3) + 8 * (j >> 2) : 8 * j;
}

/* Weights of vector j: the table holds the dequantized values (i - z) * s of the group
   (or the codebook), so W_hat is exact; for 2 bits its 4 entries are repeated twice, so
   the stray third index bit does not matter. 8-bit linear: the reference formula. */
QK_AVX2_INL __m256
qk_w8_avx2(const uint8_t *bp, const int bits, const int j, const int kind, __m256 lo, __m256 hi,
           __m256 zv, __m256 sv, const float *cb) {
    if (bits == 4) {
        __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(bp + 8 * (j >> 1))));
        if (j & 1) v = _mm256_srli_epi32(v, 4);
        return qk_lut16_avx2(v, lo, hi);
    } else if (bits == 2) {
        __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(bp + 8 * (j >> 2))));
        return _mm256_permutevar8x32_ps(lo, _mm256_srli_epi32(v, 2 * (j & 3)));
    } else {
        __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(bp + 8 * j)));
        if (kind == 0) return _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(v), zv), sv);
        return _mm256_i32gather_ps(cb, v, 4);
    }
}

/* R rows x NB batch rows of y. Each decoded weight vector serves NB batch rows and each
   activation load R rows. With a single chain per accumulator (R * NB <= 2) two
   accumulators alternate to hide the FMA latency. */
QK_AVX2_INL void
qk_float_tile_avx2(const qk_dense *w, int64_t r0, const float *xp, int64_t b0, float *y,
                   const int R, const int NB, const int bits, const int kind) {
    const int64_t n = w->n_in, nblk = n / 128, bpb = 16 * bits;
    const int NA = R * NB <= 2 ? 2 : 1;
    const __m256 iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 iota8 = _mm256_setr_ps(8, 9, 10, 11, 12, 13, 14, 15);
    const __m256 iota2 = _mm256_setr_ps(0, 1, 2, 3, 0, 1, 2, 3);
    __m256 acc[2][8][2], lo[2], hi[2], zv[2], sv[2];   /* fixed sizes, not VLAs */
    const float *xb[8], *cb[2];
    const uint8_t *rowp[2];
    for (int t = 0; t < NB; t++) xb[t] = xp + (b0 + t) * n;
    for (int i = 0; i < R; i++) {
        for (int t = 0; t < NB; t++) acc[i][t][0] = acc[i][t][1] = _mm256_setzero_ps();
        cb[i] = w->codebook + (r0 + i) * w->cbrow;
        rowp[i] = w->packed + (r0 + i) * w->row_bytes;
        lo[i] = hi[i] = zv[i] = sv[i] = _mm256_setzero_ps();
        if (kind == 1) {
            if (bits == 4) { lo[i] = _mm256_loadu_ps(cb[i]); hi[i] = _mm256_loadu_ps(cb[i] + 8); }
            else if (bits == 2) {   /* the padded row has only 4 entries: no 8-float load */
                __m128 c4 = _mm_loadu_ps(cb[i]);
                lo[i] = _mm256_insertf128_ps(_mm256_castps128_ps256(c4), c4, 1);
            }
        }
    }
    const int64_t bpg = qk_blocks_per_group(w);
    int64_t g_next = 0, gpos = 0;
    for (int64_t blk = 0; blk < nblk; blk++) {
        const int64_t c0 = blk * 128;
        QK_GROUP_STEP(g, gpos, bpg, newg)
        if (kind == 0 && newg) {
            for (int i = 0; i < R; i++) {
                zv[i] = _mm256_set1_ps(w->zeros[(r0 + i) * w->prow + g]);
                sv[i] = _mm256_set1_ps(w->scales[(r0 + i) * w->prow + g]);
                if (bits == 4) {
                    lo[i] = _mm256_mul_ps(_mm256_sub_ps(iota, zv[i]), sv[i]);
                    hi[i] = _mm256_mul_ps(_mm256_sub_ps(iota8, zv[i]), sv[i]);
                } else if (bits == 2) lo[i] = _mm256_mul_ps(_mm256_sub_ps(iota2, zv[i]), sv[i]);
            }
        }
        #pragma GCC unroll 16
        for (int j = 0; j < 16; j++) {
            __m256 wv[2];
            for (int i = 0; i < R; i++)
                wv[i] = qk_w8_avx2(rowp[i] + blk * bpb, bits, j, kind, lo[i], hi[i], zv[i], sv[i], cb[i]);
            const int off = qk_xoff_avx2(bits, j);
            for (int t = 0; t < NB; t++) {
                __m256 xv = _mm256_loadu_ps(xb[t] + c0 + off);
                for (int i = 0; i < R; i++)
                    acc[i][t][j % NA] = _mm256_fmadd_ps(wv[i], xv, acc[i][t][j % NA]);
            }
        }
    }
    for (int i = 0; i < R; i++)
        for (int t = 0; t < NB; t++)
            y[(b0 + t) * w->n_out + r0 + i] =
                qk_hsum_avx2(NA == 2 ? _mm256_add_ps(acc[i][t][0], acc[i][t][1]) : acc[i][t][0]);
}

/* The whole batch for rows r0 .. r0+R in tiles of NBMAX, then 4, 2, 1 batch rows. */
QK_AVX2_INL void
qk_float_run_avx2(const qk_dense *w, int64_t r0, const float *xp, int64_t batch, float *y,
                  uint8_t *codes, const int R, const int NBMAX, const int bits, const int kind) {
    int64_t b0 = 0;
    if (NBMAX >= 8) for (; b0 + 8 <= batch; b0 += 8) qk_float_tile_avx2(w, r0, xp, b0, y, R, 8, bits, kind);
    if (NBMAX >= 4) for (; b0 + 4 <= batch; b0 += 4) qk_float_tile_avx2(w, r0, xp, b0, y, R, 4, bits, kind);
    for (; b0 + 2 <= batch; b0 += 2) qk_float_tile_avx2(w, r0, xp, b0, y, R, 2, bits, kind);
    if (b0 < batch) qk_float_tile_avx2(w, r0, xp, b0, y, R, 1, bits, kind);
    for (int i = 0; i < R; i++) qk_tail_float_rows(w, r0 + i, xp, batch, w->n_in / 128 * 128, y, codes);
}

/* One row, any batch: up to 8 batch rows per tile. */
QK_AVX2_FN void qk_row_float_avx2(const qk_dense *w, int64_t r, const float *xp, int64_t batch,
                                  float *y, uint8_t *codes) {
#define QK_CALL(B, K) qk_float_run_avx2(w, r, xp, batch, y, codes, 1, 8, B, K)
    QK_AVX2_BK(QK_CALL);
#undef QK_CALL
}

/* Rows r0 .. r0+nrows (nrows <= 4) for a batch of >= 4: 2 x 4 register tiles
   (8 accumulators, leaving room for the two rows' tables and the decoded weights). */
QK_AVX2_FN void qk_rows_float_avx2(const qk_dense *w, int64_t r0, int64_t nrows, const float *xp,
                                   int64_t batch, float *y, uint8_t *codes) {
    if (nrows < 4) {
        for (int64_t i = 0; i < nrows; i++) qk_row_float_avx2(w, r0 + i, xp, batch, y, codes);
        return;
    }
#define QK_CALL(B, K) do { qk_float_run_avx2(w, r0, xp, batch, y, codes, 2, 4, B, K); \
                           qk_float_run_avx2(w, r0 + 2, xp, batch, y, codes, 2, 4, B, K); } while (0)
    QK_AVX2_BK(QK_CALL);
#undef QK_CALL
}

/* Codebook values of n unpacked codes (as qk_cb_lookup_avx512): 8 per step, vpermps up
   to 8 entries, two vpermps and a blend up to 16 (qk_lut16_avx2), a gather beyond. */
QK_AVX2_FN void qk_cb_lookup_avx2(const float *cb, int bits, const uint8_t *codes,
                                  int64_t n, float *out) {
    int64_t k = 0;
    if (bits <= 4) {
        float t[16] = {0};
        for (int i = 0; i < (1 << bits); i++) t[i] = cb[i];
        const __m256 lo = _mm256_loadu_ps(t), hi = _mm256_loadu_ps(t + 8);
        for (; k + 8 <= n; k += 8) {
            const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + k)));
            _mm256_storeu_ps(out + k, bits == 4 ? qk_lut16_avx2(v, lo, hi)
                                                : _mm256_permutevar8x32_ps(lo, v));
        }
    } else {
        for (; k + 8 <= n; k += 8) {
            const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + k)));
            _mm256_storeu_ps(out + k, _mm256_i32gather_ps(cb, v, 4));
        }
    }
    for (; k < n; k++) out[k] = cb[codes[k]];
}

/* ---- int8 mode ------------------------------------------------------------------ */
/* Per 128-column block, integer dot products of weight bytes with the int8 activations,
   then one float multiply by scale_w * scale_x, as in qk_dense_avx512.h. AVX2 has no
   vpdpbusd; vpmaddubsw (u8 x s8 -> pairs summed to s16 with saturation) followed by
   vpmaddwd with ones (-> s32) replaces it, and the arithmetic stays exact only while no
   s16 pair sum can exceed 32767:
   - 2- and 4-bit linear codes (u <= 15, |q| <= 127): a pair is at most 2 * 15 * 127 =
     3810, so the four vpmaddubsw of a block (one per 32-column chunk) are even summed in
     s16 (<= 15240) before a single vpmaddwd;
   - codebooks (u = round(cb/s) + 128 up to 255) and 8-bit linear codes (up to 255) could
     reach 2 * 255 * 127 = 64770, so they use signed weights w' = u - 128 (exact in s8)
     with the sign moved to the other operand, |a| * (sign(a) * b) = a * b, which keeps
     every pair <= 2 * 128 * 127 = 32512. Then sum u q = sum w' q + 128 sum q, i.e. the
     zero-point term uses z - 128 (0 for codebooks, whose zero is 128).
     Codebooks: vpmaddubsw(|q|, sign(w', q)). This needs w' > -128 (else -w' wraps),
     which holds because qpack/matmul.py clips the int8 codebook to +-127, u in 1..255.
     8-bit linear codes (u = 0 gives w' = -128): vpmaddubsw(|w'|, sign(q, w')), where
     |-128| = 0x80 read as unsigned is 128, exact for every u. */

/* Groups of 32 or 64 columns (2- and 4-bit linear codes, x blocks = the group), as in
   qk_dense_avx512.h, on 8 dword lanes. In the permuted layout:
   - 2 bits: the four chunks of a block summed give lane l = natural columns 16l..16l+15,
     so lane l belongs to group 16l / group of the block;
   - 4 bits: chunks 0 and 2 (the low and high nibbles of bytes 0..31) give lane l =
     columns 8l..8l+7, chunks 1 and 3 columns 64 + 8l..; the two pairs are summed apart
     (one more vpmaddwd per block) and lane l of the first belongs to group 8l / group,
     of the second to group (64 + 8l) / group.
   The scale vector of a block is s[g] * xs[g] for its GPB = 128 / group groups, spread
   over the lanes by vpermps; the zero-point terms are summed once per (row, batch row)
   by qk_zero_terms_avx2. */
QK_AVX2_INL __m256i qk_gpb_lanes_avx2(const int bits, const int GPB, const int half) {
    int32_t idx[8];
    const int group = 128 / GPB;
    for (int l = 0; l < 8; l++)
        idx[l] = bits == 2 ? (16 * l) / group : (64 * half + 8 * l) / group;
    return _mm256_loadu_si256((const __m256i *)idx);
}

/* s[0..GPB) * xs[0..GPB) (GPB = 2 or 4) as one 256-bit vector (upper lanes zero). */
QK_AVX2_INL __m256 qk_gpb_prod_avx2(const float *s, const float *xs, const int GPB) {
    __m128 p;
    if (GPB == 4) p = _mm_mul_ps(_mm_loadu_ps(s), _mm_loadu_ps(xs));
    else p = _mm_mul_ps(_mm_castpd_ps(_mm_load_sd((const double *)s)),
                        _mm_castpd_ps(_mm_load_sd((const double *)xs)));
    return _mm256_castps128_ps256(p);
}

/* sum over groups k < ng of s[k] * z[k] * xs[k] * xsum[k] (see qk_zero_terms_avx512). */
QK_AVX2_INL float qk_zero_terms_avx2(const float *s, const float *z, const float *xs,
                                     const int32_t *xsum, int64_t ng) {
    __m256 acc = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= ng; k += 8) {
        const __m256 sz = _mm256_mul_ps(_mm256_loadu_ps(s + k), _mm256_loadu_ps(z + k));
        const __m256 zx = _mm256_mul_ps(_mm256_loadu_ps(xs + k),
                                        _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(xsum + k))));
        acc = _mm256_fmadd_ps(sz, zx, acc);
    }
    float t = qk_hsum_avx2(acc);
    for (; k < ng; k++) t += (s[k] * z[k]) * (xs[k] * (float)xsum[k]);
    return t;
}

QK_AVX2_INL void
qk_int8_tile_avx2(const qk_dense *w, int64_t r0, const qk_xq *q, int64_t b0, float *y,
                  uint8_t *codes, const int R, const int NB, const int bits, const int cbk,
                  const int GPB) {
    const int64_t n = w->n_in, nblk = n / 128, NBK = q->nblocks, bpb = 16 * bits;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03);
    const __m256i bias = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    __m256i tbl[2];
    float cbs[2];
    __m256 acc[2][8];
    float zacc[2][8];
    const int8_t *xb[8];
    const uint8_t *rowp[2];
    for (int t = 0; t < NB; t++) xb[t] = q->xq + (b0 + t) * n;
    for (int i = 0; i < R; i++) {
        rowp[i] = w->packed + (r0 + i) * w->row_bytes;
        tbl[i] = _mm256_setzero_si256();
        cbs[i] = 0.0f;
        if (cbk) {   /* signed table w' = u - 128, both 128-bit lanes (vpshufb is per lane) */
            const uint8_t *lut = w->cb_u8 + (r0 + i) * w->cbrow;
            uint8_t t16[16];
            for (int k = 0; k < 16; k++) t16[k] = (uint8_t)(lut[k & ((1 << bits) - 1)] ^ 0x80);
            tbl[i] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t16));
            cbs[i] = w->cb_scale[w->cbrow ? r0 + i : 0];
        }
        for (int t = 0; t < NB; t++) { acc[i][t] = _mm256_setzero_ps(); zacc[i][t] = 0.0f; }
    }
    if (GPB > 1) for (int t = 0; t < NB; t++) acc[1][t] = _mm256_setzero_ps();
    const int64_t bpg = qk_blocks_per_group(w);
    const __m256i lanes0 = GPB > 1 ? qk_gpb_lanes_avx2(bits, GPB, 0) : _mm256_setzero_si256();
    const __m256i lanes1 = GPB > 1 ? qk_gpb_lanes_avx2(bits, GPB, 1) : _mm256_setzero_si256();
    int64_t g_next = 0, gpos = 0;
    for (int64_t blk = 0; blk < nblk; blk++) {
        const int64_t c0 = blk * 128;
        QK_GROUP_STEP(g, gpos, bpg, newg)
        (void)newg;
        float s[2] = {0.0f, 0.0f}, z[2] = {0.0f, 0.0f};
        for (int i = 0; i < R && GPB == 1; i++) {
            if (cbk) { s[i] = cbs[i]; z[i] = 0.0f; }
            else {
                s[i] = w->scales[(r0 + i) * w->prow + g];
                z[i] = w->zeros[(r0 + i) * w->prow + g] - (bits == 8 ? 128.0f : 0.0f);
            }
        }
        /* chunk m (32 bytes of weights) pairs with activations c0 + 32 m .. c0 + 32 m + 31 */
        __m256i wv[2][4], aw[2][4];
        for (int i = 0; i < R; i++) {
            const uint8_t *p = rowp[i] + blk * bpb;
            if (bits == 4) {
                __m256i p0 = _mm256_loadu_si256((const __m256i *)p);
                __m256i p1 = _mm256_loadu_si256((const __m256i *)(p + 32));
                wv[i][0] = _mm256_and_si256(p0, m4);
                wv[i][1] = _mm256_and_si256(p1, m4);
                wv[i][2] = _mm256_and_si256(_mm256_srli_epi16(p0, 4), m4);
                wv[i][3] = _mm256_and_si256(_mm256_srli_epi16(p1, 4), m4);
            } else if (bits == 2) {
                __m256i pp = _mm256_loadu_si256((const __m256i *)p);
                for (int k = 0; k < 4; k++) wv[i][k] = _mm256_and_si256(_mm256_srli_epi16(pp, 2 * k), m2);
            } else {
                for (int k = 0; k < 4; k++) {
                    wv[i][k] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 32 * k)), bias);
                    aw[i][k] = _mm256_abs_epi8(wv[i][k]);
                }
            }
            if (cbk)
                for (int k = 0; k < 4; k++) wv[i][k] = _mm256_shuffle_epi8(tbl[i], wv[i][k]);
        }
        if (GPB > 1) {   /* 2/4-bit linear codes, R == 1 (qk_int8_run_avx2) */
            const float *srow = w->scales + r0 * w->prow + blk * GPB;
            for (int t = 0; t < NB; t++) {
                const __m256 d = qk_gpb_prod_avx2(srow, q->xs + (b0 + t) * NBK + blk * GPB, GPB);
                __m256i xv[4];
                for (int m = 0; m < 4; m++) xv[m] = _mm256_loadu_si256((const __m256i *)(xb[t] + c0 + 32 * m));
                if (bits == 2) {
                    __m256i s16 = _mm256_maddubs_epi16(wv[0][0], xv[0]);
                    for (int m = 1; m < 4; m++) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(wv[0][m], xv[m]));
                    acc[0][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones)),
                                                _mm256_permutevar8x32_ps(d, lanes0), acc[0][t]);
                } else {
                    const __m256i sa = _mm256_add_epi16(_mm256_maddubs_epi16(wv[0][0], xv[0]),
                                                        _mm256_maddubs_epi16(wv[0][2], xv[2]));
                    const __m256i sb = _mm256_add_epi16(_mm256_maddubs_epi16(wv[0][1], xv[1]),
                                                        _mm256_maddubs_epi16(wv[0][3], xv[3]));
                    acc[0][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(sa, ones)),
                                                _mm256_permutevar8x32_ps(d, lanes0), acc[0][t]);
                    acc[1][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(sb, ones)),
                                                _mm256_permutevar8x32_ps(d, lanes1), acc[1][t]);
                }
            }
            continue;
        }
        for (int t = 0; t < NB; t++) {
            __m256i ia[2];
            if (!cbk && bits != 8) {
                __m256i s16[2];
                for (int i = 0; i < R; i++) s16[i] = _mm256_setzero_si256();
                for (int m = 0; m < 4; m++) {
                    __m256i xv = _mm256_loadu_si256((const __m256i *)(xb[t] + c0 + 32 * m));
                    for (int i = 0; i < R; i++)
                        s16[i] = _mm256_add_epi16(s16[i], _mm256_maddubs_epi16(wv[i][m], xv));
                }
                for (int i = 0; i < R; i++) ia[i] = _mm256_madd_epi16(s16[i], ones);
            } else {
                for (int i = 0; i < R; i++) ia[i] = _mm256_setzero_si256();
                for (int m = 0; m < 4; m++) {
                    __m256i xv = _mm256_loadu_si256((const __m256i *)(xb[t] + c0 + 32 * m));
                    if (cbk) {
                        __m256i xa = _mm256_abs_epi8(xv);
                        for (int i = 0; i < R; i++)
                            ia[i] = _mm256_add_epi32(ia[i], _mm256_madd_epi16(
                                _mm256_maddubs_epi16(xa, _mm256_sign_epi8(wv[i][m], xv)), ones));
                    } else {
                        for (int i = 0; i < R; i++)
                            ia[i] = _mm256_add_epi32(ia[i], _mm256_madd_epi16(
                                _mm256_maddubs_epi16(aw[i][m], _mm256_sign_epi8(xv, wv[i][m])), ones));
                    }
                }
            }
            const int64_t k = (b0 + t) * NBK + blk;
            for (int i = 0; i < R; i++) {
                const float d = s[i] * q->xs[k];
                acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[i]), _mm256_set1_ps(d), acc[i][t]);
                if (!cbk) zacc[i][t] += d * (z[i] * (float)q->xsum[k]);
            }
        }
    }
    if (GPB > 1) {
        /* blocks past the vector part start at nblk * 128: the any-width tail adds their
           zero-point terms itself */
        const int64_t so = r0 * w->prow;
        for (int t = 0; t < NB; t++) {
            const int64_t o = (b0 + t) * NBK;
            const float zt = qk_zero_terms_avx2(w->scales + so, w->zeros + so, q->xs + o,
                                                q->xsum + o, nblk * GPB);
            const __m256 a = bits == 4 ? _mm256_add_ps(acc[0][t], acc[1][t]) : acc[0][t];
            y[(b0 + t) * w->n_out + r0] = (qk_hsum_avx2(a) - zt)
                + qk_tail_int8_any(w, r0, q, b0 + t, nblk * 128, codes);
        }
        return;
    }
    for (int i = 0; i < R; i++)
        for (int t = 0; t < NB; t++)
            y[(b0 + t) * w->n_out + r0 + i] = (qk_hsum_avx2(acc[i][t]) - zacc[i][t])
                + (nblk * 128 < n ? qk_tail_int8(w, r0 + i, q, b0 + t, codes) : 0.0f);
}

QK_AVX2_INL void
qk_int8_run_avx2(const qk_dense *w, int64_t r0, const qk_xq *q, int64_t batch, float *y,
                 uint8_t *codes, const int R, const int NBMAX, const int bits, const int cbk,
                 const int GPB) {
    int64_t b0 = 0;
    if (NBMAX >= 8) for (; b0 + 8 <= batch; b0 += 8) qk_int8_tile_avx2(w, r0, q, b0, y, codes, R, 8, bits, cbk, GPB);
    if (NBMAX >= 4) for (; b0 + 4 <= batch; b0 += 4) qk_int8_tile_avx2(w, r0, q, b0, y, codes, R, 4, bits, cbk, GPB);
    for (; b0 + 2 <= batch; b0 += 2) qk_int8_tile_avx2(w, r0, q, b0, y, codes, R, 2, bits, cbk, GPB);
    if (b0 < batch) qk_int8_tile_avx2(w, r0, q, b0, y, codes, R, 1, bits, cbk, GPB);
}

/* 8-bit codebooks never reach the int8 fast path (qk_int8_path); groups of 32/64 only
   2/4-bit linear codes (qk_int8_gpb). */
#define QK_AVX2_BK_INT8(CALL) \
    do { const int gpb_ = qk_int8_gpb(w); \
         if (w->kind == 0) { if (w->bits == 4) { if (gpb_ == 4) CALL(4, 0, 4); \
                                                  else if (gpb_ == 2) CALL(4, 0, 2); \
                                                  else CALL(4, 0, 1); } \
                             else if (w->bits == 2) { if (gpb_ == 4) CALL(2, 0, 4); \
                                                       else if (gpb_ == 2) CALL(2, 0, 2); \
                                                       else CALL(2, 0, 1); } \
                             else CALL(8, 0, 1); } \
         else { if (w->bits == 4) CALL(4, 1, 1); else CALL(2, 1, 1); } } while (0)

QK_AVX2_FN void qk_row_int8_avx2(const qk_dense *w, int64_t r, const qk_xq *q, int64_t batch,
                                 float *y, uint8_t *codes) {
#define QK_CALL(B, K, G) qk_int8_run_avx2(w, r, q, batch, y, codes, 1, 4, B, K, G)
    QK_AVX2_BK_INT8(QK_CALL);
#undef QK_CALL
}

/* Rows r0 .. r0+nrows (nrows <= 4) for a batch of >= 4, one row at a time in tiles of 4
   batch rows: the four weight chunks of a block (eight for 8-bit codes: w' and |w'|)
   and 4 accumulators fit in the 16 ymm registers. Two rows at once (2 x 2 tiles) spilled
   the decoded weights to the stack in every block (objdump, built without -march). */
QK_AVX2_FN void qk_rows_int8_avx2(const qk_dense *w, int64_t r0, int64_t nrows, const qk_xq *q,
                                  int64_t batch, float *y, uint8_t *codes) {
    if (nrows < 4) {
        for (int64_t i = 0; i < nrows; i++) qk_row_int8_avx2(w, r0 + i, q, batch, y, codes);
        return;
    }
#define QK_CALL(B, K, G) for (int64_t i = 0; i < 4; i++) \
                             qk_int8_run_avx2(w, r0 + i, q, batch, y, codes, 1, 4, B, K, G)
    QK_AVX2_BK_INT8(QK_CALL);
#undef QK_CALL
}
/* ---- any width 1..8, groups that are multiples of 32: natural column order ----------
   The AVX2 counterpart of the any-width section of qk_dense_avx512.h, with the same
   inputs, layouts and results (float mode up to rounding; int8 mode with the same
   integer sums). AVX2 has no byte permute across lanes and no vpmultishiftqb, so codes
   are not unpacked in registers: each quad of rows is unpacked once per call into the
   per-thread scratch by qpack.unpack's BMI2 / byte-loop unpacker (qk_unpack_any_avx2,
   one pdep per 8 codes) and the kernels read bytes from there. The unit of work is a
   32-column half (one ymm of bytes, four of floats): the smallest group these paths
   accept, so a group or an x block always starts on a half and is stepped with counters,
   never divided. Scratch ('codes', 5 * (n_in + 64) bytes): region 0 for the scalar tails
   (qk_tail_float_rows, qk_tail_int8_any), region 1 + i for row r0 + i; float mode from a batch
   of 4 also 'wrow', 4 * n_in floats (the dequantized rows). Every function here trusts
   qk_dense.h's caller (matmul.pyx) to have checked lengths and scratch sizes. */

QK_AVX2_INL int32_t qk_hsum_epi32_avx2(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* Row r's codes as natural-order bytes: unpacked into dst (n_in + 64 bytes), or the row
   itself for 8-bit codes. */
QK_AVX2_INL const uint8_t *qk_any_codes_avx2(const qk_dense *w, int64_t r, uint8_t *dst) {
    const uint8_t *row = w->packed + r * w->row_bytes;
    if (w->bits == 8) return row;
    qk_unpack_any_avx2(row, dst, w->n_in, w->bits);
    return dst;
}

/* Float mode: the value of 8 codes (bytes at p) as floats.
   - up to 3 bits: one vpermps from an 8-entry table (the codebook row, or (i - z) * s
     of the current group, which is exactly the reference value);
   - linear, 4-8 bits: (u - z) * s as the reference computes it; convert, sub, mul is one
     instruction fewer than the two-register table of 4 bits (vpermps x2 + shift + blend);
   - codebooks: 4 bits qk_lut16_avx2; 5 bits two of those and a blend on bit 4; 6-8 bits
     vgatherdps (measured against a four-table cascade for 6 bits: see KERNELS.md). */
typedef struct { __m256 t[4]; __m256 z, s; } qk_vtab_avx2;

QK_AVX2_INL void qk_vtab_linear_avx2(qk_vtab_avx2 *v, float z, float s, const int b) {
    v->z = _mm256_set1_ps(z);
    v->s = _mm256_set1_ps(s);
    if (b <= 3) v->t[0] = _mm256_mul_ps(_mm256_sub_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), v->z), v->s);
}

QK_AVX2_INL void qk_vtab_init_avx2(qk_vtab_avx2 *v, const float *cb, const int b, const int kind) {
    v->z = v->s = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) v->t[i] = _mm256_setzero_ps();
    if (kind == 1 && b <= 5)   /* the padded codebook row holds max(16, 2**b) floats */
        for (int i = 0; i < (b <= 3 ? 1 : b == 4 ? 2 : 4); i++) v->t[i] = _mm256_loadu_ps(cb + 8 * i);
}

QK_AVX2_INL __m256 qk_vtab_get_avx2(const qk_vtab_avx2 *v, const uint8_t *p, const int b,
                                    const int kind, const float *cb) {
    const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    if (b <= 3) return _mm256_permutevar8x32_ps(v->t[0], idx);
    if (kind == 0) return _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(idx), v->z), v->s);
    if (b == 4) return qk_lut16_avx2(idx, v->t[0], v->t[1]);
    if (b == 5)
        return _mm256_blendv_ps(qk_lut16_avx2(idx, v->t[0], v->t[1]), qk_lut16_avx2(idx, v->t[2], v->t[3]),
                                _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27)));
    return _mm256_i32gather_ps(cb, idx, 4);
}

/* One row x NB (1..3) batch rows from the row's bytes u: weights decoded per 8 columns
   and used NB times; NA accumulators per batch row keep 4 FMA chains in flight. Lengths
   (x rows of n_in, u of n_in bytes, y) checked by the wrapper. */
QK_AVX2_INL void
qk_float_any_tile_avx2(const qk_dense *w, int64_t r, const uint8_t *u, const float *x, int64_t b0,
                       float *y, const int NB, const int b, const int kind) {
    const int64_t n = w->n_in, nh = n / 32;
    const int NA = NB == 1 ? 4 : NB == 2 ? 2 : 1;
    const float *sc = w->scales + r * w->prow, *zz = w->zeros + r * w->prow;
    const float *cb = w->codebook + r * w->cbrow;
    qk_vtab_avx2 v;
    qk_vtab_init_avx2(&v, cb, b, kind);
    __m256 acc[3][4];   /* fixed sizes, not VLAs */
    const float *xb[3];
    for (int t = 0; t < NB; t++) {
        for (int a = 0; a < 4; a++) acc[t][a] = _mm256_setzero_ps();
        xb[t] = x + (b0 + t) * n;
    }
    const int64_t hpg = qk_halves_per_group(w);
    int64_t g = 0, gpos = 0;
    if (kind == 0) qk_vtab_linear_avx2(&v, zz[0], sc[0], b);
    for (int64_t h = 0; h < nh; h++) {
        if (kind == 0) {
            if (gpos == hpg) { gpos = 0; g++; qk_vtab_linear_avx2(&v, zz[g], sc[g], b); }
            gpos++;
        }
        #pragma GCC unroll 4
        for (int m = 0; m < 4; m++) {
            const __m256 wv = qk_vtab_get_avx2(&v, u + 32 * h + 8 * m, b, kind, cb);
            for (int t = 0; t < NB; t++)
                acc[t][m % NA] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xb[t] + 32 * h + 8 * m), acc[t][m % NA]);
        }
    }
    for (int t = 0; t < NB; t++) {
        __m256 s = acc[t][0];
        for (int a = 1; a < NA; a++) s = _mm256_add_ps(s, acc[t][a]);
        y[(b0 + t) * w->n_out + r] = qk_hsum_avx2(s);
    }
}

/* Dequantized values of row r's full halves (from its bytes u) into dst: the weights of
   the batched float tiles. dst holds n_in floats (scratch sized by the wrapper). */
QK_AVX2_INL void qk_float_any_dequant_avx2(const qk_dense *w, int64_t r, const uint8_t *u,
                                           float *dst, const int b, const int kind) {
    const int64_t nh = w->n_in / 32;
    const float *sc = w->scales + r * w->prow, *zz = w->zeros + r * w->prow;
    const float *cb = w->codebook + r * w->cbrow;
    qk_vtab_avx2 v;
    qk_vtab_init_avx2(&v, cb, b, kind);
    const int64_t hpg = qk_halves_per_group(w);
    int64_t g = 0, gpos = 0;
    if (kind == 0) qk_vtab_linear_avx2(&v, zz[0], sc[0], b);
    for (int64_t h = 0; h < nh; h++) {
        if (kind == 0) {
            if (gpos == hpg) { gpos = 0; g++; qk_vtab_linear_avx2(&v, zz[g], sc[g], b); }
            gpos++;
        }
        #pragma GCC unroll 4
        for (int m = 0; m < 4; m++)
            _mm256_storeu_ps(dst + 32 * h + 8 * m, qk_vtab_get_avx2(&v, u + 32 * h + 8 * m, b, kind, cb));
    }
}

/* Batched float tile: R (4 or 1) rows x NB (2 or 1) batch rows over the 8-column vectors
   v0 .. v1 of dequantized rows (wf, row stride wstride), added to y (set when first;
   the caller adds the scalar tail). Decoding stays out of the inner loop: per 8 columns
   R + NB loads and R * NB FMAs (4 x 2: 8 accumulators, 4 weights, 2 activations in 16
   ymm). The caller walks the columns in slices of QK_ANY_FSLICE so that the 4 rows'
   floats of a slice stay in L1 for every batch tile: whole 4096-column rows (64 KB for
   4) came from L2 in every tile and the loop was bound by L2 bandwidth. Lengths checked
   by the wrapper. */
#define QK_ANY_FSLICE 128   /* vectors of 8 columns: 4 rows x 1024 columns = 16 KB */
QK_AVX2_INL void
qk_float_any_rb_tile_avx2(const qk_dense *w, int64_t r0, const float *wf, int64_t wstride,
                          const float *x, int64_t b0, float *y, int64_t v0, int64_t v1,
                          int first, const int R, const int NB) {
    const int64_t n = w->n_in;
    __m256 acc[4][2];
    const float *xb[2];
    for (int t = 0; t < NB; t++) {
        xb[t] = x + (b0 + t) * n;
        for (int i = 0; i < R; i++) acc[i][t] = _mm256_setzero_ps();
    }
    for (int64_t j = v0; j < v1; j++) {
        __m256 wv[4], xv[2];
        for (int i = 0; i < R; i++) wv[i] = _mm256_loadu_ps(wf + i * wstride + 8 * j);
        for (int t = 0; t < NB; t++) xv[t] = _mm256_loadu_ps(xb[t] + 8 * j);
        for (int t = 0; t < NB; t++)
            for (int i = 0; i < R; i++) acc[i][t] = _mm256_fmadd_ps(wv[i], xv[t], acc[i][t]);
    }
    for (int t = 0; t < NB; t++)
        for (int i = 0; i < R; i++) {
            const float s = qk_hsum_avx2(acc[i][t]);
            float *yy = y + (b0 + t) * w->n_out + r0 + i;
            *yy = first ? s : *yy + s;
        }
}

QK_AVX2_INL void
qk_rows_float_any_bk_avx2(const qk_dense *w, int64_t r0, int64_t nrows, const float *x,
                          int64_t batch, float *y, uint8_t *codes, float *wrow, const int b,
                          const int kind) {
    const int64_t pstride = w->n_in + 64;
    if (batch < 4) {   /* weights decoded per 8 columns, once for the whole batch */
        for (int64_t i = 0; i < nrows; i++) {
            const uint8_t *u = qk_any_codes_avx2(w, r0 + i, codes + pstride);
            if (batch == 1) qk_float_any_tile_avx2(w, r0 + i, u, x, 0, y, 1, b, kind);
            else if (batch == 2) qk_float_any_tile_avx2(w, r0 + i, u, x, 0, y, 2, b, kind);
            else qk_float_any_tile_avx2(w, r0 + i, u, x, 0, y, 3, b, kind);
            qk_tail_float_rows(w, r0 + i, x, batch, w->n_in / 32 * 32, y, codes);
        }
        return;
    }
    /* From a batch of 4 every row is dequantized once per call into wrow: decoding costs
       more than the FMAs it feeds (4 instructions per 8 linear weights), so redoing it
       per batch tile would make the kernel decode-bound, as on AVX-512. */
    const int64_t wstride = w->n_in, nv = (w->n_in / 32) * 4;
    for (int64_t i = 0; i < nrows; i++)
        qk_float_any_dequant_avx2(w, r0 + i, qk_any_codes_avx2(w, r0 + i, codes + pstride),
                                  wrow + i * wstride, b, kind);
    int64_t v0 = 0;
    do {
        const int64_t v1 = v0 + QK_ANY_FSLICE < nv ? v0 + QK_ANY_FSLICE : nv;
        const int first = v0 == 0;
        if (nrows == 4) {
            int64_t b0 = 0;
            for (; b0 + 2 <= batch; b0 += 2)
                qk_float_any_rb_tile_avx2(w, r0, wrow, wstride, x, b0, y, v0, v1, first, 4, 2);
            if (b0 < batch)
                qk_float_any_rb_tile_avx2(w, r0, wrow, wstride, x, b0, y, v0, v1, first, 4, 1);
        } else {
            for (int64_t i = 0; i < nrows; i++) {
                int64_t b0 = 0;
                for (; b0 + 2 <= batch; b0 += 2)
                    qk_float_any_rb_tile_avx2(w, r0 + i, wrow + i * wstride, wstride, x, b0, y,
                                              v0, v1, first, 1, 2);
                if (b0 < batch)
                    qk_float_any_rb_tile_avx2(w, r0 + i, wrow + i * wstride, wstride, x, b0, y,
                                              v0, v1, first, 1, 1);
            }
        }
        v0 = v1;
    } while (v0 < nv);
    for (int64_t i = 0; i < nrows; i++) qk_tail_float_rows(w, r0 + i, x, batch, nv * 8, y, codes);
}

/* Each (width, kind) its own instantiation, so tables and tile sizes are constants. */
#define QK_AVX2_ANY_WIDTHS(CALL, K) switch (w->bits) { \
    case 1: CALL(1, K); break; case 2: CALL(2, K); break; case 3: CALL(3, K); break; \
    case 4: CALL(4, K); break; case 5: CALL(5, K); break; case 6: CALL(6, K); break; \
    case 7: CALL(7, K); break; default: CALL(8, K); break; }

/* Rows r0 .. r0+nrows (nrows <= 4) of the float product on the any-width path; the
   wrapper checked the shapes and sized codes (5 * (n_in + 64)) and wrow (4 * n_in). */
QK_AVX2_FN void qk_rows_float_any_avx2(const qk_dense *w, int64_t r0, int64_t nrows,
                                       const float *x, int64_t batch, float *y,
                                       uint8_t *codes, float *wrow) {
#define QK_CALL(B, K) qk_rows_float_any_bk_avx2(w, r0, nrows, x, batch, y, codes, wrow, B, K)
    if (w->kind == 0) QK_AVX2_ANY_WIDTHS(QK_CALL, 0) else QK_AVX2_ANY_WIDTHS(QK_CALL, 1)
#undef QK_CALL
}

/* int8 mode. The weights of a row become bytes once per call, in one of two forms:
   - linear codes up to 7 bits: u itself. vpmaddubsw(u, q) is exact, since a pair of
     products is at most 2 * 127 * 127 = 32258 < 32767;
   - 8-bit linear codes and codebooks: the signed w' = u - 128 (codebooks: u = cb_u8, so
     w' is the int8 entry itself), with the sign trick of the 128-column kernels above:
     vpmaddubsw(|w'|, sign(q, w')) for 8-bit codes (|-128| read as unsigned is 128),
     vpmaddubsw(|q|, sign(w', q)) for codebooks (w' >= -127: matmul.py clips the table).
     sum u q = sum w' q + 128 sum q, so at the end of every x block its integer sums get
     128 * xsum (16 * xsum in each of the 8 lanes) and are then exactly those of the
     AVX-512 kernel, scaled the same way with the same zero-point term.
   Per 32-column half: vpmaddubsw, vpmaddwd with ones, vpaddd; the int32 sums of a block
   are converted and scaled once at its end (x blocks are whole halves, so blocks of an
   odd number of halves, g32 and g96, need no special case). */

/* Codebook codes to w' by vpshufb from 16-entry slices of the table (each slice in both
   128-bit lanes), then a blend tree on code bits 4, 5, 6, 7 (vpblendvb reads bit 7 of
   each byte: a 16-bit shift by 7 - k moves bit k there). vpshufb zeroes bytes whose
   index has bit 7 set, so 8-bit codes index with their low nibble only. The padded
   table (max(16, 2**b) bytes) and the codes < 2**b were checked by the wrapper. */
QK_AVX2_INL void qk_cb_bytes_avx2(const qk_dense *w, int64_t r, const uint8_t *u, uint8_t *dst,
                                  const int b) {
    const int64_t nh = w->n_in / 32;
    const uint8_t *lut = w->cb_u8 + r * w->cbrow;   /* padded: max(16, 2**b) bytes */
    const int NS = b <= 4 ? 1 : 1 << (b - 4);
    const __m256i bias = _mm256_set1_epi8((char)0x80), lo4 = _mm256_set1_epi8(0x0F);
    __m256i t[16];
    for (int i = 0; i < NS; i++)
        t[i] = _mm256_xor_si256(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(lut + 16 * i))), bias);
    for (int64_t h = 0; h < nh; h++) {
        const __m256i c = _mm256_loadu_si256((const __m256i *)(u + 32 * h));
        const __m256i idx = b == 8 ? _mm256_and_si256(c, lo4) : c;
        __m256i s[16];
        for (int i = 0; i < NS; i++) s[i] = _mm256_shuffle_epi8(t[i], idx);
        for (int k = 4, m = NS; k < b; k++, m >>= 1) {
            const __m256i sel = _mm256_slli_epi16(c, 7 - k);
            for (int i = 0; i < m / 2; i++) s[i] = _mm256_blendv_epi8(s[2 * i], s[2 * i + 1], sel);
        }
        _mm256_storeu_si256((__m256i *)(dst + 32 * h), s[0]);
    }
}

/* Row r's full halves as the bytes the int8 tiles read (see above), in dst (n_in + 64
   bytes of scratch, sized by the wrapper). */
QK_AVX2_INL void qk_int8_any_bytes_avx2(const qk_dense *w, int64_t r, uint8_t *dst, const int b,
                                        const int kind) {
    const uint8_t *u = qk_any_codes_avx2(w, r, dst);
    if (kind == 1) { qk_cb_bytes_avx2(w, r, u, dst, b); return; }
    if (b == 8) {
        const __m256i bias = _mm256_set1_epi8((char)0x80);
        for (int64_t h = 0; h < w->n_in / 32; h++)
            _mm256_storeu_si256((__m256i *)(dst + 32 * h),
                                _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(u + 32 * h)), bias));
    }
}

/* R (4 or 1) rows x NB (2 or 1) batch rows from b0, weight bytes of row r0 + i at
   pre + i * pstride. Each activation load serves the R rows and each weight load the NB
   batch rows. The loops follow the x blocks (each inside one weight group, which the
   wrapper checked, with the lengths of x, its block scales and sums, and y), so the
   inner loop over a block's halves has no bookkeeping. */
QK_AVX2_INL void
qk_int8_any_tile_avx2(const qk_dense *w, int64_t r0, const uint8_t *pre, int64_t pstride,
                      const qk_xq *q, int64_t b0, float *y, uint8_t *codes, const int R,
                      const int NB, const int b, const int kind) {
    const int64_t n = w->n_in, nh = n / 32, NBK = q->nblocks;
    const int64_t hpb = q->block / 32, hpg = qk_halves_per_group(w);
    const int64_t bpg = hpg == INT64_MAX ? INT64_MAX : hpg / hpb;   /* blocks per group */
    const int sgn = kind == 1 || b == 8;   /* weights stored as w' = u - 128 */
    const __m256i ones = _mm256_set1_epi16(1);
    const int8_t *xb[2];
    const float *xsb[2];
    const int32_t *xsumb[2];
    const float *sc[4], *zz[4];
    float sw[4], z[4], zacc[4][2];
    __m256 facc[4][2];
    __m256i iacc[4][2];
    for (int t = 0; t < NB; t++) {
        xb[t] = q->xq + (b0 + t) * n; xsb[t] = q->xs + (b0 + t) * NBK; xsumb[t] = q->xsum + (b0 + t) * NBK;
    }
    for (int i = 0; i < R; i++) {
        sc[i] = w->scales + (r0 + i) * w->prow;
        zz[i] = w->zeros + (r0 + i) * w->prow;
        if (kind == 1) { sw[i] = w->cb_scale[w->cbrow ? r0 + i : 0]; z[i] = 128.0f; }
        else { sw[i] = sc[i][0]; z[i] = zz[i][0]; }
        for (int t = 0; t < NB; t++) {
            facc[i][t] = _mm256_setzero_ps(); iacc[i][t] = _mm256_setzero_si256(); zacc[i][t] = 0.0f;
        }
    }
    int64_t g = 0, gpos = 0, k = 0, h0 = 0;
    int cut = 0;   /* the last block started ends in the tail or is short */
    for (; h0 < nh; h0 += hpb, k++) {
        if (kind == 0 && gpos == bpg) {
            gpos = 0; g++;
            for (int i = 0; i < R; i++) { sw[i] = sc[i][g]; z[i] = zz[i][g]; }
        }
        gpos++;
        for (int t = 0; t < NB; t++)   /* block k starts here: its zero-point term, once */
            for (int i = 0; i < R; i++) zacc[i][t] += (sw[i] * xsb[t][k]) * (z[i] * (float)xsumb[t][k]);
        const int64_t he = h0 + hpb < nh ? h0 + hpb : nh;
        for (int64_t h = h0; h < he; h++) {
            __m256i wv[4];
            for (int i = 0; i < R; i++) wv[i] = _mm256_loadu_si256((const __m256i *)(pre + i * pstride + 32 * h));
            for (int t = 0; t < NB; t++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(xb[t] + 32 * h));
                const __m256i xa = kind == 1 ? _mm256_abs_epi8(xv) : xv;
                for (int i = 0; i < R; i++) {
                    __m256i p;
                    if (kind == 1) p = _mm256_maddubs_epi16(xa, _mm256_sign_epi8(wv[i], xv));
                    else if (b == 8) p = _mm256_maddubs_epi16(_mm256_abs_epi8(wv[i]), _mm256_sign_epi8(xv, wv[i]));
                    else p = _mm256_maddubs_epi16(wv[i], xv);
                    iacc[i][t] = _mm256_add_epi32(iacc[i][t], _mm256_madd_epi16(p, ones));
                }
            }
        }
        /* block k is complete unless it goes on into the tail (only the last can) */
        if (h0 + hpb <= nh || nh * 32 == n) {
            for (int t = 0; t < NB; t++) {   /* the block ends with this half: scale its sums */
                const __m256i corr = _mm256_set1_epi32(sgn ? 16 * xsumb[t][k] : 0);
                for (int i = 0; i < R; i++) {
                    const __m256i ia = sgn ? _mm256_add_epi32(iacc[i][t], corr) : iacc[i][t];
                    facc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia), _mm256_set1_ps(sw[i] * xsb[t][k]), facc[i][t]);
                    iacc[i][t] = _mm256_setzero_si256();
                }
            }
        } else cut = 1;
    }
    k--;
    for (int t = 0; t < NB; t++) {
        /* a block cut by the end of the vector part: its columns from nh * 32 on are in
           the tail (qk_tail_int8_any adds them as sum u q), so the vector part's share of
           128 * xsum is 128 * (xsum - the tail's sum of q) */
        int32_t corr = 0;
        if (sgn && cut) {
            corr = xsumb[t][k];
            for (int64_t c = nh * 32; c < n; c++) corr -= xb[t][c];
            corr *= 128;
        }
        for (int i = 0; i < R; i++) {
            float s = qk_hsum_avx2(facc[i][t]) - zacc[i][t];
            if (cut) s += sw[i] * xsb[t][k] * (float)(qk_hsum_epi32_avx2(iacc[i][t]) + corr);
            y[(b0 + t) * w->n_out + r0 + i] = s + (nh * 32 < n ? qk_tail_int8_any(w, r0 + i, q, b0 + t, nh * 32, codes) : 0.0f);
        }
    }
}

QK_AVX2_INL void
qk_rows_int8_any_bk_avx2(const qk_dense *w, int64_t r0, int64_t nrows, const qk_xq *q,
                         int64_t batch, float *y, uint8_t *codes, const int b, const int kind) {
    const int64_t pstride = w->n_in + 64;
    uint8_t *pre = codes + pstride;
    /* every row decoded once per call, whatever the batch (AVX2 cannot decode in the
       registers of the tile, see above) */
    for (int64_t i = 0; i < nrows; i++) qk_int8_any_bytes_avx2(w, r0 + i, pre + i * pstride, b, kind);
    int64_t b0 = 0;
    if (nrows == 4) {
        for (; b0 + 2 <= batch; b0 += 2) qk_int8_any_tile_avx2(w, r0, pre, pstride, q, b0, y, codes, 4, 2, b, kind);
        if (b0 < batch) qk_int8_any_tile_avx2(w, r0, pre, pstride, q, b0, y, codes, 4, 1, b, kind);
    } else
        for (int64_t i = 0; i < nrows; i++)
            for (b0 = 0; b0 < batch; b0++)
                qk_int8_any_tile_avx2(w, r0 + i, pre + i * pstride, pstride, q, b0, y, codes, 1, 1, b, kind);
}

/* Rows r0 .. r0+nrows (nrows <= 4) of the int8 product on the any-width path; the
   wrapper checked the shapes, the x blocks (multiples of 32 inside one group) and sized
   codes (5 * (n_in + 64)). */
QK_AVX2_FN void qk_rows_int8_any_avx2(const qk_dense *w, int64_t r0, int64_t nrows,
                                      const qk_xq *q, int64_t batch, float *y, uint8_t *codes) {
#define QK_CALL(B, K) qk_rows_int8_any_bk_avx2(w, r0, nrows, q, batch, y, codes, B, K)
    if (w->kind == 0) QK_AVX2_ANY_WIDTHS(QK_CALL, 0) else QK_AVX2_ANY_WIDTHS(QK_CALL, 1)
#undef QK_CALL
}
#endif /* QK_X86 */

#endif
