/* Dense packed matrices, reference variant: the structures every variant shares, the
 * generic kernels for any width and grouping, dequantization, the activation layouts
 * (permutation, int8 quantization) and the scalar tails of the vector paths.
 *
 * Everything here trusts its caller (qpack/_kernels/matmul.pyx, behind qpack/matmul.py)
 * to have checked dtypes, shapes, C-contiguity, that every code indexes inside its
 * look-up table, and that each scratch buffer is as large as stated.
 */
#ifndef QK_DENSE_REF_H
#define QK_DENSE_REF_H

#include <stdint.h>
#include <string.h>
#include <math.h>
#include "qk_isa.h"
#include "qk_unpack.h"

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
    int isa;                 /* variant that unpacks rows (qk_isa.h) */
} qk_dense;

/* int8-quantized activations: xq (batch, n_in) in the kernel's column layout, one
   float scale and one integer sum per 'block' columns. */
typedef struct {
    const int8_t *xq;
    const float *xs;
    const int32_t *xsum;
    int64_t block, nblocks;
} qk_xq;


/* Dequantize columns [c0, c1) of row r from its unpacked codes (codes[c - c0] for column
   c) into out[c - c0]: exactly the reference formula, in float32, group by group. */
QK_FN void qk_dequant_cols(const qk_dense *w, int64_t r, const uint8_t *codes,
                            int64_t c0, int64_t c1, float *out) {
    if (w->kind == 0) {
        const float *s = w->scales + r * w->prow, *z = w->zeros + r * w->prow;
        int64_t G = w->group;
        int64_t c = c0;
        while (c < c1) {
            int64_t g = c / G, e = (g + 1) * G;
            if (e > c1) e = c1;
            const float sf = s[g], zf = z[g];
            for (int64_t k = c; k < e; k++) out[k - c0] = ((float)codes[k - c0] - zf) * sf;
            c = e;
        }
    } else {
        const float *cb = w->codebook + r * w->cbrow;
        for (int64_t k = 0; k < c1 - c0; k++) out[k] = cb[codes[k]];
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
QK_FN void qk_row_float_generic(const qk_dense *w, int64_t r, const float *x, int64_t batch,
                                 float *y, uint8_t *codes, float *wrow) {
    int64_t n = w->n_in;
    qk_unpack_any(w->packed + r * w->row_bytes, codes, n, w->bits, w->isa);
    qk_dequant_cols(w, r, codes, 0, n, wrow);
    for (int64_t bi = 0; bi < batch; bi++)
        y[bi * w->n_out + r] = qk_dot(wrow, x + bi * n, n);
}

/* ---- generic int8 row -------------------------------------------------------- */
/* The int8 mode's weight scale and zero-point for row r's block starting at column c0:
   the linear group's, or the codebook's int8 scale and 128. */
static inline void qk_block_scale_zero(const qk_dense *w, int64_t r, int64_t c0, float *s,
                                       float *z) {
    if (w->kind == 0) {
        const int64_t g = c0 / w->group;
        *s = w->scales[r * w->prow + g];
        *z = w->zeros[r * w->prow + g];
    } else {
        *s = w->cb_scale[w->cbrow ? r : 0];
        *z = 128.0f;
    }
}

/* Weight value as an unsigned byte u with W_hat = (u - zero) * scale:
   linear: u = code, zero = zero-point; codebook: u = cb_u8[code], zero = 128. */
QK_FN void qk_row_int8_generic(const qk_dense *w, int64_t r, const qk_xq *q, int64_t batch,
                                float *y, uint8_t *codes) {
    int64_t n = w->n_in, B = q->block;
    qk_unpack_any(w->packed + r * w->row_bytes, codes, n, w->bits, w->isa);
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
            qk_block_scale_zero(w, r, c0, &s, &z);
            float d = s * q->xs[bi * q->nblocks + k];
            acc += (double)(d * ((float)isum - z * (float)q->xsum[bi * q->nblocks + k]));
        }
        y[bi * w->n_out + r] = (float)acc;
    }
}

/* ---- activations: permutation and int8 quantization -------------------------- */
/* Stream layout of the fast paths (see module docstring); identity for bits 8 and for
   the columns after the last full 128-column block. */
QK_FN void qk_permute_row(const float *x, float *xp, int64_t n, int bits) {
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
QK_FN void qk_quantize_row(const float *x, int64_t n, int64_t B, int8_t *xq, float *xs,
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
/* Groups per 128-column block on the 128-column int8 kernels: 2 or 4 for linear 2/4-bit
   codes in groups of 64 or 32 (qk_int8_path admits those with x blocks equal to the
   group; the AVX-512 kernels scale each group's lanes), else 1. */
static inline int qk_int8_gpb(const qk_dense *w) {
    return (w->kind == 0 && w->group < w->n_in && (w->group == 32 || w->group == 64)
            && (w->bits == 2 || w->bits == 4)) ? (int)(128 / w->group) : 1;
}
#define QK_GROUP_STEP(g, gpos, bpg, newg) \
    const int newg = (gpos) == 0; const int64_t g = g##_next; \
    if (++(gpos) == (bpg)) { (gpos) = 0; g##_next++; }
/* Scalar tail shared by the fast float paths: columns [c0, n) of row r (c0 a multiple of
   8) added to y[b, r] for every batch row b. The kernels leave these columns out of their
   vector sums and call this once per row after the row's batch tiles, so the tail is
   decoded once per row, not once per batch row (which, with a division per column, had
   made a 1024x784 4-bit product 2.7x slower than 1024x768 at batch 8), then one qk_dot
   per batch row. Columns go 128 at a time through a stack buffer (the fast paths' tails
   are shorter: at most 127, 63, 31 or 15 columns). */
static inline void qk_tail_float_rows(const qk_dense *w, int64_t r, const float *x,
                                      int64_t batch, int64_t c0, float *y, uint8_t *codes) {
    const int64_t n = w->n_in;
    float tw[128];
    for (; c0 < n; c0 += 128) {
        const int64_t len = n - c0 < 128 ? n - c0 : 128;
        /* c0 is a multiple of 8, so the columns start on a byte */
        qk_unpack_any(w->packed + r * w->row_bytes + c0 * w->bits / 8, codes, len, w->bits,
                      w->isa);
        qk_dequant_cols(w, r, codes, c0, c0 + len, tw);
        for (int64_t b = 0; b < batch; b++) y[b * w->n_out + r] += qk_dot(tw, x + b * n + c0, len);
    }
}


/* Scalar tail of the int8 fast path: the columns after the last full 128-block lie in
   one x block (block = 128) and one weight group. */
static inline float qk_tail_int8(const qk_dense *w, int64_t r, const qk_xq *q, int64_t bi,
                          uint8_t *codes) {
    int64_t n = w->n_in, c0 = (n / 128) * 128;
    if (c0 >= n) return 0.0f;
    qk_unpack_any(w->packed + r * w->row_bytes + c0 * w->bits / 8, codes, n - c0, w->bits, w->isa);
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


/* ---- shared by the any-width paths (qk_dense_avx512.h, qk_dense_avx2.h) ---------- */
/* Halves (32 columns) per weight group; a huge number when the row is one group. */
static inline int64_t qk_halves_per_group(const qk_dense *w) {
    return (w->kind != 0 || w->group >= w->n_in) ? INT64_MAX : w->group / 32;
}

/* Columns [c0, n) of row r in natural order against int8 activations, for any width and
   x blocks of any multiple of 32 columns: the integer sums of each x block inside the
   range, scaled; the zero-point term only for blocks that start at or after c0 (the
   vector part adds it for the blocks it starts). */
static inline float qk_tail_int8_any(const qk_dense *w, int64_t r, const qk_xq *q, int64_t bi,
                                     int64_t c0, uint8_t *codes) {
    const int64_t n = w->n_in, B = q->block;
    if (c0 >= n) return 0.0f;
    qk_unpack_any(w->packed + r * w->row_bytes + c0 * w->bits / 8, codes, n - c0, w->bits, w->isa);
    const int8_t *xq = q->xq + bi * n;
    const uint8_t *lut = w->kind == 1 ? w->cb_u8 + r * w->cbrow : 0;
    float s = 0.0f;
    for (int64_t c = c0; c < n;) {
        const int64_t k = c / B, e = (k + 1) * B < n ? (k + 1) * B : n;
        int32_t isum = 0;
        for (int64_t j = c; j < e; j++)
            isum += (int32_t)(lut ? lut[codes[j - c0]] : codes[j - c0]) * xq[j];
        float sw, z;
        if (w->kind == 0) { const int64_t g = c / w->group; sw = w->scales[r * w->prow + g]; z = w->zeros[r * w->prow + g]; }
        else { sw = w->cb_scale[w->cbrow ? r : 0]; z = 128.0f; }
        const float d = sw * q->xs[bi * q->nblocks + k];
        /* as the generic kernel: an all-zero row of weights gives exactly 0 */
        if (c == k * B) s += d * ((float)isum - z * (float)q->xsum[bi * q->nblocks + k]);
        else s += d * (float)isum;
        c = e;
    }
    return s;
}


#endif
