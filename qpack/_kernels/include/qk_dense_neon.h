/* Dense packed matrices, NEON variant (AArch64 Advanced SIMD; qk_isa.h). Same semantics,
 * structures and column layouts as the generic kernels of qk_dense_ref.h: activations in
 * natural order (no permutation), one result per (batch row, weight row).
 *
 * Float mode (path "neon"): 2-, 4- and 8-bit codes, linear or codebook, groups a multiple
 * of 16 columns or none. Each 16 columns of a row become 16 code bytes in natural order
 * (one load and a nibble zip for 4 bits, a byte spread + per-lane shifts for 2 bits), and
 * their weights come from a 16-float table in four registers through vqtbl4q_u8 (4 bits:
 * the dequantized values (i - z) * s of the group, or the codebook), a 4-float table
 * through vqtbl1q_u8 (2 bits), (u - z) * s (8-bit linear) or a scalar lookup (8-bit
 * codebooks); vfmaq_f32 against up to 4 batch rows. The columns after the last multiple
 * of 16 go through the scalar tail of qk_dense_ref.h.
 *
 * int8 mode (path "neon"): every width and encoding, x blocks of any size. The row is
 * unpacked once (NEON unpack for 2 and 4 bits, qk_unpack.h), codebook codes become their
 * int8-mode bytes (vqtbl1q_u8 up to 4 bits), and each x block's integer sum is taken with
 * vdotq_s32 (sdot, when the CPU has dotprod) or vmull_s8 + vpadalq_s16 otherwise. sdot is
 * signed x signed, so bytes above 127 (8-bit codes, codebook entries + 128) are biased to
 * u - 128 and 128 * sum(x) is added back, exactly. Sums are the generic kernel's integers
 * bit for bit, and the block scaling is its formula. From a batch of 16, on a CPU with
 * dotprod, int8 products run the register-blocked GEMM of qk_gemm_neon.h instead.
 */
#ifndef QK_DENSE_NEON_H
#define QK_DENSE_NEON_H

#include "qk_dense_ref.h"

/* Path id of the NEON kernels (qk_dense.h numbers the others; 4 is taken by AVX2-any). */
enum { QK_PATH_NEON = 5 };

#if QK_ARM64
/* ---- float mode ---------------------------------------------------------------- */
/* Codes of columns c .. c+15 of a row (c a multiple of 16) as 16 bytes in natural order. */
QK_NEON_INL uint8x16_t qk_codes16_neon(const uint8_t *row, int64_t c, const int bits) {
    if (bits == 8) return vld1q_u8(row + c);
    if (bits == 4) {   /* code 2j is the low nibble of byte j, 2j+1 the high one */
        const uint8x8_t p = vld1_u8(row + c / 2);
        const uint8x8_t lo = vand_u8(p, vdup_n_u8(0x0F)), hi = vshr_n_u8(p, 4);
        return vcombine_u8(vzip1_u8(lo, hi), vzip2_u8(lo, hi));
    }
    /* 2 bits: code 4j + t is bits 2t..2t+1 of byte j; each byte to 4 lanes, shifted */
    static const uint8_t spread[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
    static const int8_t shifts[16] = {0, -2, -4, -6, 0, -2, -4, -6, 0, -2, -4, -6, 0, -2, -4, -6};
    uint32_t word;
    memcpy(&word, row + c / 4, 4);
    const uint8x16_t p = vqtbl1q_u8(vreinterpretq_u8_u32(vdupq_n_u32(word)), vld1q_u8(spread));
    return vandq_u8(vshlq_u8(p, vld1q_s8(shifts)), vdupq_n_u8(0x03));
}

/* The 16 weights of those codes as 4 vectors of 4 columns. tab: the row's or group's
   table of dequantized values as bytes (16 floats for 4 bits, 4 for 2 bits). */
QK_NEON_INL void qk_w16_neon(uint8x16_t u, float32x4_t wv[4], const int bits, const int kind,
                             const uint8x16x4_t *tab, float32x4_t zv, float32x4_t sv,
                             const float *cb) {
    if (bits <= 4) {
        /* float lane k of vector m holds entry u[4m + k]: its bytes 4u .. 4u+3 */
        static const uint8_t pick[4][16] = {
            {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
            {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7},
            {8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11},
            {12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15}};
        static const uint8_t byte_of[16] = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
        const uint8x16_t u4 = vshlq_n_u8(u, 2), bo = vld1q_u8(byte_of);
        for (int m = 0; m < 4; m++) {
            const uint8x16_t idx = vaddq_u8(vqtbl1q_u8(u4, vld1q_u8(pick[m])), bo);
            wv[m] = vreinterpretq_f32_u8(bits == 4 ? vqtbl4q_u8(*tab, idx)
                                                   : vqtbl1q_u8(tab->val[0], idx));
        }
    } else if (kind == 0) {   /* 8-bit linear: the reference formula (u - z) * s */
        const uint16x8_t lo = vmovl_u8(vget_low_u8(u)), hi = vmovl_high_u8(u);
        wv[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)));
        wv[1] = vcvtq_f32_u32(vmovl_high_u16(lo));
        wv[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)));
        wv[3] = vcvtq_f32_u32(vmovl_high_u16(hi));
        for (int m = 0; m < 4; m++) wv[m] = vmulq_f32(vsubq_f32(wv[m], zv), sv);
    } else {                  /* 8-bit codebook: 256 entries, looked up one by one */
        uint8_t c[16];
        float t[16];
        vst1q_u8(c, u);
        for (int k = 0; k < 16; k++) t[k] = cb[c[k]];
        for (int m = 0; m < 4; m++) wv[m] = vld1q_f32(t + 4 * m);
    }
}

QK_NEON_INL void qk_tab_load_neon(uint8x16x4_t *tab, const float *t16) {
    const uint8_t *p = (const uint8_t *)t16;
    tab->val[0] = vld1q_u8(p);
    tab->val[1] = vld1q_u8(p + 16);
    tab->val[2] = vld1q_u8(p + 32);
    tab->val[3] = vld1q_u8(p + 48);
}

/* Row r against NB batch rows b0 .. b0+NB (NB, bits and kind compile-time constants). */
QK_NEON_INL void qk_float_tile_neon(const qk_dense *w, int64_t r, const float *xp, int64_t b0,
                                    float *y, const int NB, const int bits,
                                    const int kind) {
    const int64_t n = w->n_in, n16 = n / 16 * 16;
    const uint8_t *row = w->packed + r * w->row_bytes;
    const float *cb = w->codebook + r * w->cbrow;
    float32x4_t acc[4][2], zv = vdupq_n_f32(0.0f), sv = zv;
    const float *xb[4];
    uint8x16x4_t tab;
    float t16[16] = {0};
    for (int t = 0; t < NB; t++) {
        acc[t][0] = acc[t][1] = vdupq_n_f32(0.0f);
        xb[t] = xp + (b0 + t) * n;
    }
    if (kind == 1 && bits <= 4)   /* the padded codebook row holds >= 16 entries */
        for (int k = 0; k < 16; k++) t16[k] = cb[k];
    qk_tab_load_neon(&tab, t16);
    /* linear: group g covers columns [g * G, (g + 1) * G), G a multiple of 16 or >= n */
    int64_t g = -1, gend = 0;
    for (int64_t c = 0; c < n16; c += 16) {
        if (kind == 0 && c >= gend) {
            g++;
            gend = (g + 1) * w->group;
            const float zf = w->zeros[r * w->prow + g], sf = w->scales[r * w->prow + g];
            zv = vdupq_n_f32(zf);
            sv = vdupq_n_f32(sf);
            if (bits <= 4) {
                for (int k = 0; k < 16; k++) t16[k] = ((float)k - zf) * sf;
                qk_tab_load_neon(&tab, t16);
            }
        }
        float32x4_t wv[4];
        qk_w16_neon(qk_codes16_neon(row, c, bits), wv, bits, kind, &tab, zv, sv, cb);
        for (int m = 0; m < 4; m++)
            for (int t = 0; t < NB; t++)
                acc[t][m & 1] = vfmaq_f32(acc[t][m & 1], wv[m], vld1q_f32(xb[t] + c + 4 * m));
    }
    for (int t = 0; t < NB; t++)
        y[(b0 + t) * w->n_out + r] = vaddvq_f32(vaddq_f32(acc[t][0], acc[t][1]));
}

QK_NEON_INL void qk_float_row_neon(const qk_dense *w, int64_t r, const float *xp, int64_t batch,
                                   float *y, uint8_t *codes, const int bits, const int kind) {
    int64_t b0 = 0;
    for (; b0 + 4 <= batch; b0 += 4) qk_float_tile_neon(w, r, xp, b0, y, 4, bits, kind);
    if (b0 + 2 <= batch) { qk_float_tile_neon(w, r, xp, b0, y, 2, bits, kind); b0 += 2; }
    if (b0 < batch) qk_float_tile_neon(w, r, xp, b0, y, 1, bits, kind);
    qk_tail_float_rows(w, r, xp, batch, w->n_in / 16 * 16, y, codes);
}

/* Rows r0 .. r0+nrows, float activations in natural order (qk_float_path_neon). */
QK_NEON_FN void qk_rows_float_neon(const qk_dense *w, int64_t r0, int64_t nrows, const float *xp,
                                   int64_t batch, float *y, uint8_t *codes) {
#define QK_NEON_FLOAT(B, K) \
    for (int64_t i = 0; i < nrows; i++) qk_float_row_neon(w, r0 + i, xp, batch, y, codes, B, K)
    if (w->kind == 0) {
        if (w->bits == 4) QK_NEON_FLOAT(4, 0); else if (w->bits == 2) QK_NEON_FLOAT(2, 0);
        else QK_NEON_FLOAT(8, 0);
    } else {
        if (w->bits == 4) QK_NEON_FLOAT(4, 1); else if (w->bits == 2) QK_NEON_FLOAT(2, 1);
        else QK_NEON_FLOAT(8, 1);
    }
#undef QK_NEON_FLOAT
}

/* ---- int8 mode ------------------------------------------------------------------ */
/* sum_i (wv[i] + 128 * biased) * xq[i] over n columns, exactly: int32 lanes (at most
   4096 columns of |w x| <= 128 * 127 each, so no lane can overflow) added to an int64
   every 4096 columns. biased: wv holds u - 128 and 128 * sum(xq) is added back. */
QK_NEON_DOT_FN int64_t qk_isum_neon_dot(const int8_t *wv, const int8_t *xq, int64_t n,
                                        int biased) {
    const int8x16_t ones = vdupq_n_s8(1);
    int64_t total = 0, i = 0;
    while (i < n) {
        const int64_t e = n - i > 4096 ? i + 4096 : n;
        int32x4_t a = vdupq_n_s32(0), s = a;
        for (; i + 16 <= e; i += 16) {
            const int8x16_t x = vld1q_s8(xq + i);
            a = vdotq_s32(a, vld1q_s8(wv + i), x);
            if (biased) s = vdotq_s32(s, ones, x);
        }
        int64_t part = (int64_t)vaddvq_s32(a) + (biased ? 128 * (int64_t)vaddvq_s32(s) : 0);
        for (; i < e; i++) part += ((int64_t)wv[i] + (biased ? 128 : 0)) * xq[i];
        total += part;
    }
    return total;
}

/* The same without dotprod: vmull_s8 (exact 16-bit products) and vpadalq_s16. */
QK_NEON_FN int64_t qk_isum_neon_plain(const int8_t *wv, const int8_t *xq, int64_t n,
                                      int biased) {
    int64_t total = 0, i = 0;
    while (i < n) {
        const int64_t e = n - i > 4096 ? i + 4096 : n;
        int32x4_t a = vdupq_n_s32(0), s = a;
        for (; i + 16 <= e; i += 16) {
            const int8x16_t x = vld1q_s8(xq + i), v = vld1q_s8(wv + i);
            a = vpadalq_s16(a, vmull_s8(vget_low_s8(v), vget_low_s8(x)));
            a = vpadalq_s16(a, vmull_high_s8(v, x));
            if (biased) s = vpadalq_s16(s, vpaddlq_s8(x));
        }
        int64_t part = (int64_t)vaddvq_s32(a) + (biased ? 128 * (int64_t)vaddvq_s32(s) : 0);
        for (; i < e; i++) part += ((int64_t)wv[i] + (biased ? 128 : 0)) * xq[i];
        total += part;
    }
    return total;
}

/* Row r as int8-mode bytes in codes[0 .. n_in) (n_in + 64 bytes of scratch): linear codes
   of up to 7 bits as they are, 8-bit codes and codebook entries (cb_u8) biased to u - 128
   so that sdot's signed x signed product takes them. Returns whether they are biased. */
QK_NEON_INL int qk_int8_bytes_neon(const qk_dense *w, int64_t r, uint8_t *codes) {
    const int64_t n = w->n_in;
    qk_unpack_any(w->packed + r * w->row_bytes, codes, n, w->bits, w->isa);
    int64_t c = 0;
    if (w->kind == 1) {        /* codebook: u = cb_u8[code] */
        const uint8_t *lut = w->cb_u8 + r * w->cbrow;
        if (w->bits <= 4) {    /* the padded row holds >= 16 entries */
            const uint8x16_t tbl = veorq_u8(vld1q_u8(lut), vdupq_n_u8(0x80));
            for (; c + 16 <= n; c += 16) vst1q_u8(codes + c, vqtbl1q_u8(tbl, vld1q_u8(codes + c)));
        }
        for (; c < n; c++) codes[c] = (uint8_t)(lut[codes[c]] ^ 0x80);
        return 1;
    }
    if (w->bits == 8) {        /* codes up to 255 */
        for (; c + 16 <= n; c += 16) vst1q_u8(codes + c, veorq_u8(vld1q_u8(codes + c), vdupq_n_u8(0x80)));
        for (; c < n; c++) codes[c] ^= 0x80;
        return 1;
    }
    return 0;
}

/* Row r: unpacked once into codes (n_in bytes), then every batch row, block by block,
   as qk_row_int8_generic. */
QK_NEON_INL void qk_int8_row_neon(const qk_dense *w, int64_t r, const qk_xq *q, int64_t batch,
                                  float *y, uint8_t *codes, int dot) {
    const int64_t n = w->n_in, B = q->block;
    const int biased = qk_int8_bytes_neon(w, r, codes);
    const int8_t *wv = (const int8_t *)codes;
    for (int64_t bi = 0; bi < batch; bi++) {
        const int8_t *xq = q->xq + bi * n;
        double acc = 0.0;
        for (int64_t k = 0; k < q->nblocks; k++) {
            const int64_t c0 = k * B, c1 = c0 + B < n ? c0 + B : n;
            const int64_t isum = dot ? qk_isum_neon_dot(wv + c0, xq + c0, c1 - c0, biased)
                                     : qk_isum_neon_plain(wv + c0, xq + c0, c1 - c0, biased);
            float s, z;
            qk_block_scale_zero(w, r, c0, &s, &z);
            float d = s * q->xs[bi * q->nblocks + k];
            acc += (double)(d * ((float)isum - z * (float)q->xsum[bi * q->nblocks + k]));
        }
        y[bi * w->n_out + r] = (float)acc;
    }
}

/* Rows r0 .. r0+nrows with int8 activations in natural order (qk_int8_path_neon). */
QK_NEON_FN void qk_rows_int8_neon(const qk_dense *w, int64_t r0, int64_t nrows, const qk_xq *q,
                                  int64_t batch, float *y, uint8_t *codes) {
    const int dot = qk_neon_dotprod();
    for (int64_t i = 0; i < nrows; i++) qk_int8_row_neon(w, r0 + i, q, batch, y, codes, dot);
}
#endif /* QK_ARM64 */

/* The path of a matrix when the NEON variant is selected; 0 is QK_PATH_GENERIC (and
   everything runs generic off AArch64, where the variant is never supported). */
QK_FN int qk_float_path_neon(const qk_dense *w) {
#if QK_ARM64
    const int b = w->bits;
    if ((b == 2 || b == 4 || b == 8)
        && (w->kind != 0 || w->group % 16 == 0 || w->group >= w->n_in))
        return QK_PATH_NEON;
#endif
    (void)w;
    return 0;
}

QK_FN int qk_int8_path_neon(const qk_dense *w, int64_t block) {
    (void)w; (void)block;
    return QK_ARM64 ? QK_PATH_NEON : 0;
}

#endif
