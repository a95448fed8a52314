/* Dense packed matrices, AVX-512 variant (F/BW/VL/DQ + VNNI; qk_isa.h): the float and
 * int8 kernels for 2-, 4- and 8-bit codes in 128-column blocks. docs/KERNELS.md gives the
 * column layout (permuted activations for 2 and 4 bits) and what the assembly showed.
 * Every function carries the AVX-512 target attribute, so the build's -march does not
 * matter; qk_dense.h calls them only when the CPU has the instructions.
 */
#ifndef QK_DENSE_AVX512_H
#define QK_DENSE_AVX512_H

#include "qk_dense_ref.h"

#if QK_X86
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
QK_AVX512_INL void
qk_float_tile_avx512(const qk_dense *w, int64_t r, const float *xp, int64_t b0, float *y,
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

QK_AVX512_FN void qk_row_float_avx512(const qk_dense *w, int64_t r, const float *xp, int64_t batch,
                              float *y, uint8_t *codes) {
    int64_t b0 = 0;
    for (; b0 + 8 <= batch; b0 += 8) qk_float_tile_avx512(w, r, xp, b0, y, codes, 8);
    if (b0 + 4 <= batch) { qk_float_tile_avx512(w, r, xp, b0, y, codes, 4); b0 += 4; }
    if (b0 + 2 <= batch) { qk_float_tile_avx512(w, r, xp, b0, y, codes, 2); b0 += 2; }
    if (b0 < batch) qk_float_tile_avx512(w, r, xp, b0, y, codes, 1);
}

/* Batched float kernel: a register tile of R rows x NB batch rows. Each decoded weight
   vector is used NB times and each activation load R times, which cuts the traffic
   from L2 (where a batch of activations lives) by R compared with row-at-a-time.
   A 128-column block is 8 vectors of 16 columns; sub-vector j of the block takes its
   codes from bytes (j >> 1) * 16 (4 bits, stream j & 1), (j >> 2) * 16 (2 bits,
   stream j & 3) or j * 16 (8 bits) and pairs with activations at qk_xoff_avx512(bits, j). */
QK_AVX512_INL int qk_xoff_avx512(int bits, int j) {
    return bits == 4 ? 64 * (j & 1) + 16 * (j >> 1)
         : bits == 2 ? 32 * (j & 3) + 16 * (j >> 2) : 16 * j;
}

QK_AVX512_INL __m512
qk_w16_avx512(const uint8_t *blockp, int bits, int j, int kind, __m512 lut, __m512 zv, __m512 sv,
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

QK_AVX512_INL void
qk_float_rb_tile_avx512(const qk_dense *w, int64_t r0, const float *xp, int64_t b0, float *y,
                 uint8_t *codes, const int R, const int NB, const int bits, const int kind) {
    const int64_t n = w->n_in, nblk = n / 128;
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 iota2 = _mm512_setr_ps(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
    const int64_t bpb = 16 * bits;  /* bytes per 128-column block */
    __m512 acc[4][4], lut[4], zv[4], sv[4];  /* fixed sizes: see qk_float_tile_avx512 */
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
                wv[i] = qk_w16_avx512(w->packed + (r0 + i) * w->row_bytes + blk * bpb, bits, j, kind,
                               lut[i], zv[i], sv[i], cb[i]);
            const int off = qk_xoff_avx512(bits, j);
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
QK_AVX512_FN void qk_rows_float_avx512(const qk_dense *w, int64_t r0, int64_t nrows, const float *xp,
                               int64_t batch, float *y, uint8_t *codes) {
    if (nrows < 4) {
        for (int64_t i = 0; i < nrows; i++) qk_row_float_avx512(w, r0 + i, xp, batch, y, codes);
        return;
    }
    /* bits and kind become compile-time constants in each instantiation, so the
       8 sub-vectors of a block unroll and the 16 accumulators stay in registers (with
       run-time bits GCC kept acc[][] and wv[] in memory: objdump showed vmovaps to
       and from the stack around every FMA, and it ran slower than row-at-a-time). */
    #define QK_FLOAT_RB(B, K) { int64_t b0 = 0; \
        for (; b0 + 4 <= batch; b0 += 4) qk_float_rb_tile_avx512(w, r0, xp, b0, y, codes, 4, 4, B, K); \
        for (; b0 < batch; b0++) qk_float_rb_tile_avx512(w, r0, xp, b0, y, codes, 4, 1, B, K); }
    if (w->kind == 0) {
        if (w->bits == 4) QK_FLOAT_RB(4, 0) else if (w->bits == 2) QK_FLOAT_RB(2, 0) else QK_FLOAT_RB(8, 0)
    } else {
        if (w->bits == 4) QK_FLOAT_RB(4, 1) else if (w->bits == 2) QK_FLOAT_RB(2, 1) else QK_FLOAT_RB(8, 1)
    }
    #undef QK_FLOAT_RB
}
#endif /* QK_X86 */

#if QK_X86
/* int8 row kernel (llama.cpp Q8_0 idea): per 128-column block, integer dot products of
   the unsigned weight bytes with the int8 activations (vpdpbusd: 4 products per dword
   lane), then one float multiply by scale_w * scale_x. The zero-point term
   z * sum(xq) is a scalar per block, precomputed sums of xq make it exact. Codebooks
   enter through a 16-byte table (vpshufb) mapping codes to round(cb/scale)+128. */
QK_AVX512_INL void
qk_int8_tile_avx512(const qk_dense *w, int64_t r, const qk_xq *q, int64_t b0, float *y,
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

QK_AVX512_FN void qk_row_int8_avx512(const qk_dense *w, int64_t r, const qk_xq *q, int64_t batch,
                             float *y, uint8_t *codes) {
    int64_t b0 = 0;
    for (; b0 + 8 <= batch; b0 += 8) qk_int8_tile_avx512(w, r, q, b0, y, codes, 8);
    if (b0 + 4 <= batch) { qk_int8_tile_avx512(w, r, q, b0, y, codes, 4); b0 += 4; }
    if (b0 + 2 <= batch) { qk_int8_tile_avx512(w, r, q, b0, y, codes, 2); b0 += 2; }
    if (b0 < batch) qk_int8_tile_avx512(w, r, q, b0, y, codes, 1);
}

/* Batched int8 kernel: R rows x NB batch rows per register tile (R = 4 for 4 and 8
   bits, 2 for 2 bits whose four code streams take more registers). Same arithmetic as
   qk_int8_tile_avx512; each activation load now serves R rows. */
QK_AVX512_INL void
qk_int8_rb_tile_avx512(const qk_dense *w, int64_t r0, const qk_xq *q, int64_t b0, float *y,
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

QK_AVX512_FN void qk_rows_int8_avx512(const qk_dense *w, int64_t r0, int64_t nrows, const qk_xq *q,
                              int64_t batch, float *y, uint8_t *codes) {
    if (nrows < 4) {
        for (int64_t i = 0; i < nrows; i++) qk_row_int8_avx512(w, r0 + i, q, batch, y, codes);
        return;
    }
    int64_t b0 = 0;
    const int cbk = w->kind == 1;
    if (w->bits == 2) {
        for (; b0 + 4 <= batch; b0 += 4) {
            if (cbk) {
                qk_int8_rb_tile_avx512(w, r0, q, b0, y, codes, 2, 4, 2, 1);
                qk_int8_rb_tile_avx512(w, r0 + 2, q, b0, y, codes, 2, 4, 2, 1);
            } else {
                qk_int8_rb_tile_avx512(w, r0, q, b0, y, codes, 2, 4, 2, 0);
                qk_int8_rb_tile_avx512(w, r0 + 2, q, b0, y, codes, 2, 4, 2, 0);
            }
        }
    } else if (w->bits == 4) {
        for (; b0 + 4 <= batch; b0 += 4) {
            if (cbk) qk_int8_rb_tile_avx512(w, r0, q, b0, y, codes, 4, 4, 4, 1);
            else qk_int8_rb_tile_avx512(w, r0, q, b0, y, codes, 4, 4, 4, 0);
        }
    } else {  /* 8-bit codebooks never reach the fast path */
        for (; b0 + 4 <= batch; b0 += 4) qk_int8_rb_tile_avx512(w, r0, q, b0, y, codes, 4, 4, 8, 0);
    }
    for (; b0 < batch; b0++)
        for (int64_t i = 0; i < 4; i++) qk_int8_tile_avx512(w, r0 + i, q, b0, y, codes, 1);
}
#endif /* QK_X86 */

#endif
