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
                     const int NB) {
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
        y[(b0 + t) * w->n_out + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
}

QK_AVX512_FN void qk_row_float_avx512(const qk_dense *w, int64_t r, const float *xp, int64_t batch,
                              float *y, uint8_t *codes) {
    int64_t b0 = 0;
    for (; b0 + 8 <= batch; b0 += 8) qk_float_tile_avx512(w, r, xp, b0, y, 8);
    if (b0 + 4 <= batch) { qk_float_tile_avx512(w, r, xp, b0, y, 4); b0 += 4; }
    if (b0 + 2 <= batch) { qk_float_tile_avx512(w, r, xp, b0, y, 2); b0 += 2; }
    if (b0 < batch) qk_float_tile_avx512(w, r, xp, b0, y, 1);
    qk_tail_float_rows(w, r, xp, batch, w->n_in / 128 * 128, y, codes);
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
                        const int R, const int NB, const int bits, const int kind) {
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
            y[(b0 + t) * w->n_out + r0 + i] = _mm512_reduce_add_ps(acc[i][t]);
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
        for (; b0 + 4 <= batch; b0 += 4) qk_float_rb_tile_avx512(w, r0, xp, b0, y, 4, 4, B, K); \
        for (; b0 < batch; b0++) qk_float_rb_tile_avx512(w, r0, xp, b0, y, 4, 1, B, K); \
        for (int i = 0; i < 4; i++) \
            qk_tail_float_rows(w, r0 + i, xp, batch, w->n_in / 128 * 128, y, codes); }
    if (w->kind == 0) {
        if (w->bits == 4) QK_FLOAT_RB(4, 0) else if (w->bits == 2) QK_FLOAT_RB(2, 0) else QK_FLOAT_RB(8, 0)
    } else {
        if (w->bits == 4) QK_FLOAT_RB(4, 1) else if (w->bits == 2) QK_FLOAT_RB(2, 1) else QK_FLOAT_RB(8, 1)
    }
    #undef QK_FLOAT_RB
}
#endif /* QK_X86 */

#if QK_X86
/* Codebook values of n unpacked codes (the tiles' fill, qk_dequant_row): 16 per step,
   by vpermps from a register table up to 16 entries, vpermt2ps up to 32, a gather
   beyond (the scalar loop it replaces took ~1.1 ns per weight, 7x the linear fill). */
QK_AVX512_FN void qk_cb_lookup_avx512(const float *cb, int bits, const uint8_t *codes,
                                      int64_t n, float *out) {
    int64_t k = 0;
    if (bits <= 5) {
        float t[32] = {0};
        for (int i = 0; i < (1 << bits); i++) t[i] = cb[i];
        const __m512 t0 = _mm512_loadu_ps(t), t1 = _mm512_loadu_ps(t + 16);
        for (; k + 16 <= n; k += 16) {
            const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + k)));
            _mm512_storeu_ps(out + k, bits == 5 ? _mm512_permutex2var_ps(t0, v, t1)
                                                : _mm512_permutexvar_ps(v, t0));
        }
    } else {
        for (; k + 16 <= n; k += 16) {
            const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + k)));
            _mm512_storeu_ps(out + k, _mm512_i32gather_ps(v, cb, 4));
        }
    }
    for (; k < n; k++) out[k] = cb[codes[k]];
}

/* ---- groups of 32 or 64 columns on the 128-column int8 kernels (2- and 4-bit linear
   codes; x blocks = the group). In the permuted layout dword lane i of a block's integer
   sums covers natural columns i * 32/bits .. +32/bits (qk_permute_row), so a block's
   GPB = 128 / group groups sit in fixed lanes: one int32 vector per block still holds
   every product, and one float multiply by a per-lane scale vector replaces the scalar
   broadcast. The scale vector is s[g] * xs[g] for the block's GPB groups, loaded as
   one short vector and spread to the lanes by vpermps. The zero-point terms do not
   depend on the codes: qk_zero_terms_avx512 sums them over all groups in one pass. */

/* Lane -> group-in-block index for `bits` (2 or 4) and GPB groups per 128 columns (the
   2-bit sums fill 8 lanes; the upper 8 are zero and take group 0). */
QK_AVX512_INL __m512i qk_gpb_lanes_avx512(const int bits, const int GPB) {
    int32_t idx[16];
    const int cols = 32 / bits, group = 128 / GPB;
    for (int i = 0; i < 16; i++) idx[i] = i * cols < 128 ? (i * cols) / group : 0;
    return _mm512_loadu_si512((const void *)idx);
}

/* Per-lane scale of one block: s[0..GPB) * xs[0..GPB) spread over the lanes. */
QK_AVX512_INL __m512 qk_gpb_scale_avx512(__m128 s4, const float *xs, __m512i lanes,
                                         const int GPB) {
    const __m128 x4 = _mm_maskz_loadu_ps((__mmask8)((1 << GPB) - 1), xs);
    return _mm512_permutexvar_ps(lanes, _mm512_zextps128_ps512(_mm_mul_ps(s4, x4)));
}

/* sum over groups k < ng of s[k] * z[k] * xs[k] * xsum[k]: the zero-point terms of one
   (row, batch row) when x blocks are the groups. */
QK_AVX512_INL float qk_zero_terms_avx512(const float *s, const float *z, const float *xs,
                                         const int32_t *xsum, int64_t ng) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t k = 0; k < ng; k += 16) {
        const __mmask16 m = ng - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (ng - k)) - 1);
        const __m512 sz = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + k), _mm512_maskz_loadu_ps(m, z + k));
        const __m512 zx = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xs + k),
                                        _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, xsum + k)));
        acc = _mm512_fmadd_ps(sz, zx, acc);
    }
    return _mm512_reduce_add_ps(acc);
}

/* int8 row kernel (llama.cpp Q8_0 idea): per 128-column block, integer dot products of
   the unsigned weight bytes with the int8 activations (vpdpbusd: 4 products per dword
   lane), then one float multiply by scale_w * scale_x. The zero-point term
   z * sum(xq) is a scalar per block, precomputed sums of xq make it exact. Codebooks
   enter through a 16-byte table (vpshufb) mapping codes to round(cb/scale)+128. */
QK_AVX512_INL void
qk_int8_tile_avx512(const qk_dense *w, int64_t r, const qk_xq *q, int64_t b0, float *y,
                  uint8_t *codes, const int NB, const int GPB) {
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
    const __m512i lanes = GPB > 1 ? qk_gpb_lanes_avx512((int)bits, GPB) : _mm512_setzero_si512();
    int64_t g_next = 0, gpos = 0;
    for (int64_t blk = 0; blk < nblk; blk++) {
        const int64_t c0 = blk * 128;
        QK_GROUP_STEP(g, gpos, bpg, newg)
        (void)newg;
        float s = 0.0f, z = 0.0f;   /* GPB > 1: per-lane scales below, zero-points after */
        if (GPB == 1) {
            if (cbk) { s = cbs; z = 128.0f; }
            else { s = sc[g]; z = zz[g]; }
        }
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
        if (GPB > 1) {
            const __m128 s4 = _mm_maskz_loadu_ps((__mmask8)((1 << GPB) - 1), sc + blk * GPB);
            for (int t = 0; t < NB; t++) {
                const __m512 dv = qk_gpb_scale_avx512(s4, q->xs + (b0 + t) * NBK + blk * GPB, lanes, GPB);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[t]), dv, acc[t]);
            }
            continue;
        }
        for (int t = 0; t < NB; t++) {
            const int64_t k = (b0 + t) * NBK + blk;
            const float d = s * q->xs[k];
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[t]), _mm512_set1_ps(d), acc[t]);
            zacc[t] += d * (z * (float)q->xsum[k]);
        }
    }
    for (int t = 0; t < NB; t++) {
        float tail = 0.0f;
        if (GPB > 1) {
            /* blocks past the vector part start at nblk * 128: the any-width tail adds
               their zero-point terms itself */
            const int64_t o = (b0 + t) * NBK;
            zacc[t] = qk_zero_terms_avx512(sc, zz, q->xs + o, q->xsum + o, nblk * GPB);
            tail = qk_tail_int8_any(w, r, q, b0 + t, nblk * 128, codes);
        } else if (nblk * 128 < n) {
            tail = qk_tail_int8(w, r, q, b0 + t, codes);
        }
        y[(b0 + t) * w->n_out + r] = (_mm512_reduce_add_ps(acc[t]) - zacc[t]) + tail;
    }
}

#define QK_INT8_ROW_TILES(G) { int64_t b0 = 0; \
    for (; b0 + 8 <= batch; b0 += 8) qk_int8_tile_avx512(w, r, q, b0, y, codes, 8, G); \
    if (b0 + 4 <= batch) { qk_int8_tile_avx512(w, r, q, b0, y, codes, 4, G); b0 += 4; } \
    if (b0 + 2 <= batch) { qk_int8_tile_avx512(w, r, q, b0, y, codes, 2, G); b0 += 2; } \
    if (b0 < batch) qk_int8_tile_avx512(w, r, q, b0, y, codes, 1, G); }

QK_AVX512_FN void qk_row_int8_avx512(const qk_dense *w, int64_t r, const qk_xq *q, int64_t batch,
                             float *y, uint8_t *codes) {
    switch (qk_int8_gpb(w)) {
        case 4: QK_INT8_ROW_TILES(4) break;
        case 2: QK_INT8_ROW_TILES(2) break;
        default: QK_INT8_ROW_TILES(1) break;
    }
}
#undef QK_INT8_ROW_TILES

/* Batched int8 kernel: R rows x NB batch rows per register tile (R = 4 for 4 and 8
   bits, 2 for 2 bits whose four code streams take more registers). Same arithmetic as
   qk_int8_tile_avx512; each activation load now serves R rows. */
QK_AVX512_INL void
qk_int8_rb_tile_avx512(const qk_dense *w, int64_t r0, const qk_xq *q, int64_t b0, float *y,
                uint8_t *codes, const int R, const int NB, const int bits, const int cbk,
                const int GPB) {
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
    const __m512i lanes = GPB > 1 ? qk_gpb_lanes_avx512(bits, GPB) : _mm512_setzero_si512();
    int64_t g_next = 0, gpos = 0;
    for (int64_t blk = 0; blk < nblk; blk++) {
        const int64_t c0 = blk * 128;
        QK_GROUP_STEP(g, gpos, bpg, newg)
        (void)newg;
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f}, z[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int i = 0; i < R && GPB == 1; i++) {
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
        if (GPB > 1) {
            __m128 s4[4];
            for (int i = 0; i < R; i++)
                s4[i] = _mm_maskz_loadu_ps((__mmask8)((1 << GPB) - 1),
                                           w->scales + (r0 + i) * w->prow + blk * GPB);
            for (int t = 0; t < NB; t++)
                for (int i = 0; i < R; i++) {
                    const __m512 dv = qk_gpb_scale_avx512(s4[i], q->xs + (b0 + t) * NBK + blk * GPB, lanes, GPB);
                    acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[i][t]), dv, acc[i][t]);
                }
            continue;
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
        for (int t = 0; t < NB; t++) {
            float tail = 0.0f;
            if (GPB > 1) {   /* as in qk_int8_tile_avx512 */
                const int64_t o = (b0 + t) * NBK, so = (r0 + i) * w->prow;
                zacc[i][t] = qk_zero_terms_avx512(w->scales + so, w->zeros + so, q->xs + o,
                                                  q->xsum + o, nblk * GPB);
                tail = qk_tail_int8_any(w, r0 + i, q, b0 + t, nblk * 128, codes);
            } else if (nblk * 128 < n) {
                tail = qk_tail_int8(w, r0 + i, q, b0 + t, codes);
            }
            y[(b0 + t) * w->n_out + r0 + i] = (_mm512_reduce_add_ps(acc[i][t]) - zacc[i][t]) + tail;
        }
}

QK_AVX512_FN void qk_rows_int8_avx512(const qk_dense *w, int64_t r0, int64_t nrows, const qk_xq *q,
                              int64_t batch, float *y, uint8_t *codes) {
    if (nrows < 4) {
        for (int64_t i = 0; i < nrows; i++) qk_row_int8_avx512(w, r0 + i, q, batch, y, codes);
        return;
    }
    int64_t b0 = 0;
    const int cbk = w->kind == 1, gpb = qk_int8_gpb(w);
    /* (rows, batch rows, bits, codebook, groups per block) of the tiles */
    #define QK_RB2(K, G) { qk_int8_rb_tile_avx512(w, r0, q, b0, y, codes, 2, 4, 2, K, G); \
                           qk_int8_rb_tile_avx512(w, r0 + 2, q, b0, y, codes, 2, 4, 2, K, G); }
    if (w->bits == 2) {
        for (; b0 + 4 <= batch; b0 += 4) {
            if (cbk) QK_RB2(1, 1)
            else if (gpb == 4) QK_RB2(0, 4)
            else if (gpb == 2) QK_RB2(0, 2)
            else QK_RB2(0, 1)
        }
    } else if (w->bits == 4) {
        for (; b0 + 4 <= batch; b0 += 4) {
            if (cbk) qk_int8_rb_tile_avx512(w, r0, q, b0, y, codes, 4, 4, 4, 1, 1);
            else if (gpb == 4) qk_int8_rb_tile_avx512(w, r0, q, b0, y, codes, 4, 4, 4, 0, 4);
            else if (gpb == 2) qk_int8_rb_tile_avx512(w, r0, q, b0, y, codes, 4, 4, 4, 0, 2);
            else qk_int8_rb_tile_avx512(w, r0, q, b0, y, codes, 4, 4, 4, 0, 1);
        }
    } else {  /* 8-bit codebooks never reach the fast path */
        for (; b0 + 4 <= batch; b0 += 4) qk_int8_rb_tile_avx512(w, r0, q, b0, y, codes, 4, 4, 8, 0, 1);
    }
    #undef QK_RB2
    /* the batch rows left (fewer than 4), row by row: the row kernel's tiles */
    if (b0 < batch) {
        qk_xq rest = *q;
        rest.xq += b0 * w->n_in; rest.xs += b0 * q->nblocks; rest.xsum += b0 * q->nblocks;
        for (int64_t i = 0; i < 4; i++) qk_row_int8_avx512(w, r0 + i, &rest, batch - b0, y + b0 * w->n_out, codes);
    }
}

/* ---- any width 1..8, groups that are multiples of 32: natural column order ----------
   The paths above exist for 2, 4 and 8 bits in 128-column blocks. These cover the rest
   (1/3/5/6/7-bit codes, 8-bit codebooks in the int8 mode, and groups of 32, 64, 96...):
   each 64-column chunk of a row is unpacked in registers by the VBMI unpacker that
   qpack.unpack uses (vpermb + vpmultishiftqb + and: 64 codes of any width, in natural
   order, from 8*b bytes), so the activations stay in natural order too. Scales are
   handled per 32-column half, the smallest group these paths accept; a group or an x
   block index is stepped with counters, never divided. */

/* Codes 16m .. 16m+15 of a 64-code register as dword lanes (m a constant). */
QK_AVX512_INL __m512i qk_quarter_avx512(__m512i u, const int m) {
    switch (m) {
        case 0: return _mm512_cvtepu8_epi32(_mm512_castsi512_si128(u));
        case 1: return _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(u, 1));
        case 2: return _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(u, 2));
        default: return _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(u, 3));
    }
}

/* 64 codes of chunk ch of a row as bytes. */
QK_AVX512_INL __m512i qk_codes64_avx512(const uint8_t *row, int64_t ch, const int b) {
    if (b == 8) return _mm512_loadu_si512((const void *)(row + ch * 64));
    return qk_vbmi_unpack64(row + ch * 8 * b, b);
}

/* Float mode: the value of each code, looked up in registers. Up to 5 bits a table of
   2**b floats (the codebook row, or (i - z) * s of the current group) in one or two
   registers (vpermps / vpermt2ps); 6 and 7 bits: four or eight registers, a vpermt2ps
   per pair and blends on bits 5 (and 6) for codebooks (a gather took 3.9 ms for 7-bit
   4096x4096 at batch 1, 0.6x numpy); 6-8 bit linear codes convert and dequantize
   ((u - z) * s, as the reference); 8-bit codebooks gather (16 table registers and
   15 shuffles per vector would leave too few for the accumulators). */
typedef struct { __m512 t[8]; __m512 z, s; } qk_vtab;

QK_AVX512_INL void qk_vtab_linear(qk_vtab *v, float z, float s, const int b) {
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    v->z = _mm512_set1_ps(z);
    v->s = _mm512_set1_ps(s);
    if (b <= 5) {
        v->t[0] = _mm512_mul_ps(_mm512_sub_ps(iota, v->z), v->s);
        if (b == 5)
            v->t[1] = _mm512_mul_ps(_mm512_sub_ps(_mm512_add_ps(iota, _mm512_set1_ps(16.0f)), v->z), v->s);
    }
}

QK_AVX512_INL __m512 qk_vtab_get(const qk_vtab *v, __m512i idx, const int b, const int kind,
                                 const float *cb) {
    if (b <= 4) return _mm512_permutexvar_ps(idx, v->t[0]);
    if (b == 5) return _mm512_permutex2var_ps(v->t[0], idx, v->t[1]);
    if (kind == 0) return _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(idx), v->z), v->s);
    if (b == 6) {
        __m512 lo = _mm512_permutex2var_ps(v->t[0], idx, v->t[1]);
        __m512 hi = _mm512_permutex2var_ps(v->t[2], idx, v->t[3]);
        return _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(32)), lo, hi);
    }
    if (b == 7) {
        const __mmask16 b5 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(32));
        const __m512 q0 = _mm512_permutex2var_ps(v->t[0], idx, v->t[1]);
        const __m512 q1 = _mm512_permutex2var_ps(v->t[2], idx, v->t[3]);
        const __m512 q2 = _mm512_permutex2var_ps(v->t[4], idx, v->t[5]);
        const __m512 q3 = _mm512_permutex2var_ps(v->t[6], idx, v->t[7]);
        return _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(64)),
                                    _mm512_mask_blend_ps(b5, q0, q1),
                                    _mm512_mask_blend_ps(b5, q2, q3));
    }
    return _mm512_i32gather_ps(idx, cb, 4);
}

QK_AVX512_INL void
qk_float_any_tile_avx512(const qk_dense *w, int64_t r, const float *x, int64_t b0, float *y,
                         const int NB, const int b, const int kind) {
    const int64_t n = w->n_in, nch = n / 64;
    const uint8_t *row = w->packed + r * w->row_bytes;
    const float *sc = w->scales + r * w->prow, *zz = w->zeros + r * w->prow;
    const float *cb = w->codebook + r * w->cbrow;
    qk_vtab v;
    v.z = v.s = _mm512_setzero_ps();
    for (int i = 0; i < 8; i++) v.t[i] = _mm512_setzero_ps();
    if (kind == 1 && b <= 7)   /* the padded codebook row holds max(16, 2**b) floats */
        for (int i = 0; i < (b <= 4 ? 1 : 1 << (b - 4)); i++) v.t[i] = _mm512_loadu_ps(cb + 16 * i);
    __m512 acc[8][2];
    const float *xb[8];
    for (int t = 0; t < NB; t++) {
        acc[t][0] = acc[t][1] = _mm512_setzero_ps();
        xb[t] = x + (b0 + t) * n;
    }
    const int64_t hpg = qk_halves_per_group(w);
    int64_t g = 0, gpos = 0;
    if (kind == 0) qk_vtab_linear(&v, zz[0], sc[0], b);
    for (int64_t ch = 0; ch < nch; ch++) {
        const __m512i u = qk_codes64_avx512(row, ch, b);
        #pragma GCC unroll 4
        for (int m = 0; m < 4; m++) {
            if (kind == 0 && (m & 1) == 0) {   /* a new half: step the group counter */
                if (gpos == hpg) { gpos = 0; g++; qk_vtab_linear(&v, zz[g], sc[g], b); }
                gpos++;
            }
            const __m512i idx = qk_quarter_avx512(u, m);
            const __m512 wv = qk_vtab_get(&v, idx, b, kind, cb);
            for (int t = 0; t < NB; t++)
                acc[t][m & 1] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xb[t] + ch * 64 + 16 * m), acc[t][m & 1]);
        }
    }
    for (int t = 0; t < NB; t++)
        y[(b0 + t) * w->n_out + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
}

#define QK_ANY_ROW_TILES(TILE, ...) { int64_t b0 = 0; \
    for (; b0 + 8 <= batch; b0 += 8) TILE(__VA_ARGS__, b0, 8); \
    if (b0 + 4 <= batch) { TILE(__VA_ARGS__, b0, 4); b0 += 4; } \
    if (b0 + 2 <= batch) { TILE(__VA_ARGS__, b0, 2); b0 += 2; } \
    if (b0 < batch) TILE(__VA_ARGS__, b0, 1); }

#define QK_FLOAT_ANY(B, K) { \
    for (int64_t i = 0; i < nrows; i++) { const int64_t r = r0 + i; \
        QK_ANY_ROW_TILES(QK_FLOAT_ANY_CALL, B, K) \
        qk_tail_float_rows(w, r, xp, batch, w->n_in / 64 * 64, y, codes); } }
#define QK_FLOAT_ANY_CALL(B, K, b0, NB) qk_float_any_tile_avx512(w, r, xp, b0, y, NB, B, K)

/* Rows r0 .. r0+nrows of the float product on the any-width path; each (width, kind) is
   its own instantiation so the table and the tile sizes are compile-time constants. */
QK_AVX512_FN void qk_rows_float_any_avx512(const qk_dense *w, int64_t r0, int64_t nrows,
                                           const float *xp, int64_t batch, float *y,
                                           uint8_t *codes) {
    const int b = w->bits;
    if (w->kind == 0) {
        switch (b) {
            case 1: QK_FLOAT_ANY(1, 0) break; case 2: QK_FLOAT_ANY(2, 0) break;
            case 3: QK_FLOAT_ANY(3, 0) break; case 4: QK_FLOAT_ANY(4, 0) break;
            case 5: QK_FLOAT_ANY(5, 0) break; case 6: QK_FLOAT_ANY(6, 0) break;
            case 7: QK_FLOAT_ANY(7, 0) break; default: QK_FLOAT_ANY(8, 0) break;
        }
    } else {
        switch (b) {
            case 1: QK_FLOAT_ANY(1, 1) break; case 2: QK_FLOAT_ANY(2, 1) break;
            case 3: QK_FLOAT_ANY(3, 1) break; case 4: QK_FLOAT_ANY(4, 1) break;
            case 5: QK_FLOAT_ANY(5, 1) break; case 6: QK_FLOAT_ANY(6, 1) break;
            case 7: QK_FLOAT_ANY(7, 1) break; default: QK_FLOAT_ANY(8, 1) break;
        }
    }
}

/* int8 mode: codebook codes map to their int8 entries (u8 = round(cb / s) + 128) by byte
   permutes: vpshufb for up to 16 entries, vpermb for 64, vpermi2b for 128, two vpermi2b
   and a blend on bit 7 for 256. */
typedef struct { __m512i t[4]; } qk_btab;

QK_AVX512_INL void qk_btab_load(qk_btab *bt, const uint8_t *lut, const int b) {
    for (int i = 0; i < 4; i++) bt->t[i] = _mm512_setzero_si512();
    if (b <= 4) { bt->t[0] = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)lut)); return; }
    const int L = 1 << b;   /* the padded table holds 2**b bytes */
    for (int i = 0; i < 4 && 64 * i < L; i++)
        bt->t[i] = _mm512_maskz_loadu_epi8(L - 64 * i >= 64 ? ~(__mmask64)0
                                           : (((__mmask64)1 << (L - 64 * i)) - 1), lut + 64 * i);
}

QK_AVX512_INL __m512i qk_btab_get(const qk_btab *bt, __m512i u, const int b) {
    if (b <= 4) return _mm512_shuffle_epi8(bt->t[0], u);
    if (b <= 6) return _mm512_permutexvar_epi8(u, bt->t[0]);
    if (b == 7) return _mm512_permutex2var_epi8(bt->t[0], u, bt->t[1]);
    __m512i lo = _mm512_permutex2var_epi8(bt->t[0], u, bt->t[1]);
    __m512i hi = _mm512_permutex2var_epi8(bt->t[2], u, bt->t[3]);
    return _mm512_mask_blend_epi8(_mm512_movepi8_mask(u), lo, hi);
}

/* SPLIT = 0 when x blocks are multiples of 64 columns (a chunk never straddles two: the
   integer sums run over the whole block and are scaled once), 1 for blocks of an odd
   number of 32-column halves (each chunk is scaled per half). */
QK_AVX512_INL void
qk_int8_any_tile_avx512(const qk_dense *w, int64_t r, const qk_xq *q, int64_t b0, float *y,
                        uint8_t *codes, const uint8_t *pre, const int NB, const int b,
                        const int kind, const int SPLIT) {
    const int64_t n = w->n_in, nch = n / 64, NBK = q->nblocks;
    const int64_t hpb = q->block / 32, hpg = qk_halves_per_group(w);
    const uint8_t *row = w->packed + r * w->row_bytes;
    const float *sc = w->scales + r * w->prow, *zz = w->zeros + r * w->prow;
    const float cbs = kind == 1 ? w->cb_scale[w->cbrow ? r : 0] : 0.0f;
    qk_btab bt;
    if (kind == 1 && !pre) qk_btab_load(&bt, w->cb_u8 + r * w->cbrow, b);
    else for (int i = 0; i < 4; i++) bt.t[i] = _mm512_setzero_si512();
    __m512 facc[8];
    __m512i iacc[8];
    float zacc[8];
    const int8_t *xb[8];
    const float *xsb[8];
    const int32_t *xsumb[8];
    for (int t = 0; t < NB; t++) {
        facc[t] = _mm512_setzero_ps(); iacc[t] = _mm512_setzero_si512(); zacc[t] = 0.0f;
        xb[t] = q->xq + (b0 + t) * n; xsb[t] = q->xs + (b0 + t) * NBK; xsumb[t] = q->xsum + (b0 + t) * NBK;
    }
    int64_t g = 0, gpos = 0, k = 0, kpos = 0;   /* group and x block of the next half */
    float sw = kind == 1 ? cbs : sc[0], z = kind == 1 ? 128.0f : zz[0];
    for (int64_t ch = 0; ch < nch; ch++) {
        __m512i u;
        if (pre) u = _mm512_loadu_si512((const void *)(pre + ch * 64));
        else {
            u = qk_codes64_avx512(row, ch, b);
            if (kind == 1) u = qk_btab_get(&bt, u, b);
        }
        /* the two halves of this chunk: group, block, and whether a block starts */
        int64_t kh[2];
        float swh[2];
        for (int h = 0; h < 2; h++) {
            if (kind == 0 && gpos == hpg) { gpos = 0; g++; sw = sc[g]; z = zz[g]; }
            if (kpos == hpb) { kpos = 0; k++; }
            if (kpos == 0)   /* block k starts here: its zero-point term, once */
                for (int t = 0; t < NB; t++) zacc[t] += (sw * xsb[t][k]) * (z * (float)xsumb[t][k]);
            kh[h] = k; swh[h] = sw;
            gpos++; kpos++;
        }
        if (SPLIT) {
            for (int t = 0; t < NB; t++) {
                const __m512i ia = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u,
                                                       _mm512_loadu_si512((const void *)(xb[t] + ch * 64)));
                const __m512 dv = _mm512_mask_blend_ps((__mmask16)0xFF00,
                                                       _mm512_set1_ps(swh[0] * xsb[t][kh[0]]),
                                                       _mm512_set1_ps(swh[1] * xsb[t][kh[1]]));
                facc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia), dv, facc[t]);
            }
        } else {
            for (int t = 0; t < NB; t++)
                iacc[t] = _mm512_dpbusd_epi32(iacc[t], u, _mm512_loadu_si512((const void *)(xb[t] + ch * 64)));
            if (kpos == hpb) {   /* the block ends with this chunk: scale its sums */
                for (int t = 0; t < NB; t++) {
                    facc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[t]), _mm512_set1_ps(sw * xsb[t][k]), facc[t]);
                    iacc[t] = _mm512_setzero_si512();
                }
            }
        }
    }
    for (int t = 0; t < NB; t++) {
        float s = _mm512_reduce_add_ps(facc[t]) - zacc[t];
        if (!SPLIT && kpos != hpb)   /* a block cut by the end of the vector part */
            s += sw * xsb[t][k] * (float)_mm512_reduce_add_epi32(iacc[t]);
        y[(b0 + t) * w->n_out + r] = s + (nch * 64 < n ? qk_tail_int8_any(w, r, q, b0 + t, nch * 64, codes) : 0.0f);
    }
}

/* Batched int8 on the any-width path (x blocks of a multiple of 64 columns): a register
   tile of 4 rows x 2 batch rows. Each activation load serves the 4 rows and each decoded
   chunk the 2 batch rows; the integer sums of a block are scaled once at its end. (4 x 4
   would need 32 accumulators: two sets of 16, integer and float, do not fit in 32 zmm.) */
QK_AVX512_INL void
qk_int8_any_rb_tile_avx512(const qk_dense *w, int64_t r0, const qk_xq *q, int64_t b0, float *y,
                           uint8_t *codes, const uint8_t *pre, int64_t pstride, const int NB,
                           const int b, const int kind) {
    const int64_t n = w->n_in, nch = n / 64, NBK = q->nblocks;
    const int64_t hpb = q->block / 32, hpg = qk_halves_per_group(w);
    qk_btab bt[4];
    const uint8_t *row[4];
    const float *sc[4], *zz[4];
    float sw[4], z[4];
    for (int i = 0; i < 4; i++) {
        row[i] = w->packed + (r0 + i) * w->row_bytes;
        sc[i] = w->scales + (r0 + i) * w->prow;
        zz[i] = w->zeros + (r0 + i) * w->prow;
        if (kind == 1) {
            if (!pre) qk_btab_load(&bt[i], w->cb_u8 + (r0 + i) * w->cbrow, b);
            sw[i] = w->cb_scale[w->cbrow ? r0 + i : 0]; z[i] = 128.0f;
        } else { sw[i] = sc[i][0]; z[i] = zz[i][0]; }
    }
    __m512 facc[4][2];
    __m512i iacc[4][2];
    float zacc[4][2];
    const int8_t *xb[2];
    const float *xsb[2];
    const int32_t *xsumb[2];
    for (int t = 0; t < NB; t++) {
        xb[t] = q->xq + (b0 + t) * n; xsb[t] = q->xs + (b0 + t) * NBK; xsumb[t] = q->xsum + (b0 + t) * NBK;
        for (int i = 0; i < 4; i++) {
            facc[i][t] = _mm512_setzero_ps(); iacc[i][t] = _mm512_setzero_si512(); zacc[i][t] = 0.0f;
        }
    }
    int64_t g = 0, gpos = 0, k = 0, kpos = 0;
    for (int64_t ch = 0; ch < nch; ch++) {
        for (int h = 0; h < 2; h++) {   /* step group and block per 32-column half */
            if (kind == 0 && gpos == hpg) {
                gpos = 0; g++;
                for (int i = 0; i < 4; i++) { sw[i] = sc[i][g]; z[i] = zz[i][g]; }
            }
            if (kpos == hpb) { kpos = 0; k++; }
            if (kpos == 0)
                for (int t = 0; t < NB; t++) {
                    const float zx = (float)xsumb[t][k];
                    for (int i = 0; i < 4; i++) zacc[i][t] += (sw[i] * xsb[t][k]) * (z[i] * zx);
                }
            gpos++; kpos++;
        }
        __m512i u[4];
        for (int i = 0; i < 4; i++) {
            if (pre) u[i] = _mm512_loadu_si512((const void *)(pre + i * pstride + ch * 64));
            else {
                u[i] = qk_codes64_avx512(row[i], ch, b);
                if (kind == 1) u[i] = qk_btab_get(&bt[i], u[i], b);
            }
        }
        for (int t = 0; t < NB; t++) {
            const __m512i xv = _mm512_loadu_si512((const void *)(xb[t] + ch * 64));
            for (int i = 0; i < 4; i++) iacc[i][t] = _mm512_dpbusd_epi32(iacc[i][t], u[i], xv);
        }
        if (kpos == hpb)
            for (int t = 0; t < NB; t++)
                for (int i = 0; i < 4; i++) {
                    facc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[i][t]),
                                                 _mm512_set1_ps(sw[i] * xsb[t][k]), facc[i][t]);
                    iacc[i][t] = _mm512_setzero_si512();
                }
    }
    for (int t = 0; t < NB; t++)
        for (int i = 0; i < 4; i++) {
            float s = _mm512_reduce_add_ps(facc[i][t]) - zacc[i][t];
            if (kpos != hpb) s += sw[i] * xsb[t][k] * (float)_mm512_reduce_add_epi32(iacc[i][t]);
            y[(b0 + t) * w->n_out + r0 + i] = s + (nch * 64 < n ? qk_tail_int8_any(w, r0 + i, q, b0 + t, nch * 64, codes) : 0.0f);
        }
}

#define QK_INT8_ANY_RB(B, K) { int64_t b0 = 0; \
    for (; b0 + 2 <= batch; b0 += 2) \
        qk_int8_any_rb_tile_avx512(w, r0, q, b0, y, codes, pre, pstride, 2, B, K); \
    if (b0 < batch) qk_int8_any_rb_tile_avx512(w, r0, q, b0, y, codes, pre, pstride, 1, B, K); }
#define QK_INT8_ANY_RB_WIDTHS(K) switch (w->bits) { \
    case 1: QK_INT8_ANY_RB(1, K) break; case 2: QK_INT8_ANY_RB(2, K) break; \
    case 3: QK_INT8_ANY_RB(3, K) break; case 4: QK_INT8_ANY_RB(4, K) break; \
    case 5: QK_INT8_ANY_RB(5, K) break; case 6: QK_INT8_ANY_RB(6, K) break; \
    case 7: QK_INT8_ANY_RB(7, K) break; default: QK_INT8_ANY_RB(8, K) break; }

/* Row r's full chunks as int8-ready bytes: codes, or codebook entries + 128. */
QK_AVX512_FN void qk_predecode_row_avx512(const qk_dense *w, int64_t r, int64_t nch, uint8_t *dst) {
    const uint8_t *row = w->packed + r * w->row_bytes;
    const int b = w->bits;
    qk_btab bt;   /* zeroed for linear codes, which never read it (-Wmaybe-uninitialized) */
    for (int i = 0; i < 4; i++) bt.t[i] = _mm512_setzero_si512();
    if (w->kind == 1) qk_btab_load(&bt, w->cb_u8 + r * w->cbrow, b);
    #define QK_PREDECODE(B) for (int64_t ch = 0; ch < nch; ch++) { \
        __m512i u = qk_codes64_avx512(row, ch, B); \
        if (w->kind == 1) u = qk_btab_get(&bt, u, B); \
        _mm512_storeu_si512((void *)(dst + ch * 64), u); }
    switch (b) {
        case 1: QK_PREDECODE(1) break; case 2: QK_PREDECODE(2) break;
        case 3: QK_PREDECODE(3) break; case 4: QK_PREDECODE(4) break;
        case 5: QK_PREDECODE(5) break; case 6: QK_PREDECODE(6) break;
        case 7: QK_PREDECODE(7) break; default: QK_PREDECODE(8) break;
    }
    #undef QK_PREDECODE
}

#define QK_INT8_ANY(B, K, S) { \
    for (int64_t i = 0; i < nrows; i++) { const int64_t r = r0 + i; \
        QK_ANY_ROW_TILES(QK_INT8_ANY_CALL, B, K, S) } }
#define QK_INT8_ANY_CALL(B, K, S, b0, NB) \
    qk_int8_any_tile_avx512(w, r, q, b0, y, codes, predecode ? pre + i * pstride : 0, NB, B, K, S)
#define QK_INT8_ANY_WIDTHS(K, S) switch (w->bits) { \
    case 1: QK_INT8_ANY(1, K, S) break; case 2: QK_INT8_ANY(2, K, S) break; \
    case 3: QK_INT8_ANY(3, K, S) break; case 4: QK_INT8_ANY(4, K, S) break; \
    case 5: QK_INT8_ANY(5, K, S) break; case 6: QK_INT8_ANY(6, K, S) break; \
    case 7: QK_INT8_ANY(7, K, S) break; default: QK_INT8_ANY(8, K, S) break; }

QK_AVX512_FN void qk_rows_int8_any_avx512(const qk_dense *w, int64_t r0, int64_t nrows,
                                          const qk_xq *q, int64_t batch, float *y,
                                          uint8_t *codes) {
    const int split = (q->block / 32) % 2;
    /* From a batch of 4 the rows are decoded once into the scratch (natural-order bytes,
       codebook codes already mapped to int8 entries) and every batch tile reads them
       there: decoding a 64-code chunk (masked load, vpermb, vpmultishiftqb, and, plus a
       table permute) costs several times one vpdpbusd, so redoing it per batch tile made
       the batched kernel decode-bound. codes: 5 * (n_in + 64) bytes, region 0 for tails. */
    const int predecode = batch >= 4;
    const int64_t pstride = w->n_in + 64;
    uint8_t *pre = codes + pstride;
    if (predecode) {
        const int64_t nch = w->n_in / 64;
        for (int64_t i = 0; i < nrows; i++)
            qk_predecode_row_avx512(w, r0 + i, nch, pre + i * pstride);
    }
    if (nrows == 4 && batch >= 2 && !split) {   /* batched: 4 x 2 register tiles */
        if (!predecode) pre = 0;
        if (w->kind == 1) QK_INT8_ANY_RB_WIDTHS(1) else QK_INT8_ANY_RB_WIDTHS(0)
        return;
    }
    if (w->kind == 1) QK_INT8_ANY_WIDTHS(1, 0)   /* codebooks: 128-column blocks */
    else if (split) QK_INT8_ANY_WIDTHS(0, 1)
    else QK_INT8_ANY_WIDTHS(0, 0)
}

#endif /* QK_X86 */

#endif
