/* Batched int8 products ("GEMM"), NEON variant with dotprod: the counterpart of
 * qk_gemm_avx512.h / qk_gemm_avx2.h for a batch of 16 rows or more on an AArch64 CPU
 * with sdot, with the same inputs (qk_gemm.h's interleave), coverage (every width, linear
 * and codebook, x blocks a multiple of 4 up to 4096) and the same formula. Without
 * dotprod the row kernels of qk_dense_neon.h run instead (qk_gemm_ok).
 *
 * Lanes are batch rows. A 16-lane group of the interleave holds, per step of 4 columns,
 * 64 bytes: quad q (lanes 4q .. 4q+3) is one 16-byte register of 4 batch rows x 4
 * columns. Each weight row is decoded once per call into the thread's scratch as int8
 * bytes (qk_int8_bytes_neon: linear codes of up to 7 bits as they are, 8-bit codes and
 * codebook entries biased to u - 128), so one 16-byte load holds 4 steps of a row, and
 * sdot by element (vdotq_laneq_s32) multiplies step l's 4 weights, lane l of that
 * register, against the 4 columns of every batch row of a quad:
 *     acc[row i][quad q] += x[step s + l][quad q] . w_i[s .. s+3][lane l]
 * Register tile: 4 weight rows x up to 4 quads (16 batch rows) = 16 int32x4
 * accumulators, plus 4 weight and 4 activation registers, of NEON's 32.
 *
 * The integer sums are exact (a block has at most 4096 columns of |w x| <= 128 * 127).
 * Biased bytes give sum (u - 128) x = sum u x - 128 sum x, so the block fold uses the
 * zero-point z - 128 in place of z (codebooks: z = 128, so none), with the
 * other GEMMs' float operations: acc += d * (s * xs) - (s * z') * (xs * sum x).
 * Trusts its caller (matmul.pyx) for every length, as the x86 GEMMs do.
 */
#ifndef QK_GEMM_NEON_H
#define QK_GEMM_NEON_H

#include "qk_gemm.h"
#include "qk_dense_neon.h"

#if QK_ARM64

/* Step l of the 4 in w0..w3: quads 0 .. NQ-1 of the activations at xs_ (64 bytes per step)
   against lane l of each weight row's 16 bytes. */
#define QK_NG_STEP(L)                                                              \
    do {                                                                           \
        const int8_t *xl = x + (s + (L)) * 64;                                     \
        for (int q = 0; q < NQ; q++) {                                             \
            const int8x16_t xv = vld1q_s8(xl + 16 * q);                            \
            a[0 * 4 + q] = vdotq_laneq_s32(a[0 * 4 + q], xv, w0, L);               \
            a[1 * 4 + q] = vdotq_laneq_s32(a[1 * 4 + q], xv, w1, L);               \
            a[2 * 4 + q] = vdotq_laneq_s32(a[2 * 4 + q], xv, w2, L);               \
            a[3 * 4 + q] = vdotq_laneq_s32(a[3 * 4 + q], xv, w3, L);               \
        }                                                                          \
    } while (0)

/* The int32 sums of one block, nsteps >= 1 steps of 4 columns: a[i * 4 + q] for row i
   (bytes at wr[i], from this block's first column; readable and zero for 16 bytes past
   the block's last step) and quad q < NQ (x: the group's activations at the block's first
   step). */
QK_NEON_DOT_INL void qk_gemm_dots_neon(const int8_t *const wr[4], const int8_t *x,
                                       int64_t nsteps, int32x4_t a[16], const int NQ) {
    for (int k = 0; k < 16; k++) a[k] = vdupq_n_s32(0);
    int64_t s = 0;
    for (; s + 4 <= nsteps; s += 4) {
        const int8x16_t w0 = vld1q_s8(wr[0] + 4 * s), w1 = vld1q_s8(wr[1] + 4 * s);
        const int8x16_t w2 = vld1q_s8(wr[2] + 4 * s), w3 = vld1q_s8(wr[3] + 4 * s);
        QK_NG_STEP(0);
        QK_NG_STEP(1);
        QK_NG_STEP(2);
        QK_NG_STEP(3);
    }
    if (s < nsteps) {   /* 1 to 3 steps left: the loads' later lanes are not used */
        const int8x16_t w0 = vld1q_s8(wr[0] + 4 * s), w1 = vld1q_s8(wr[1] + 4 * s);
        const int8x16_t w2 = vld1q_s8(wr[2] + 4 * s), w3 = vld1q_s8(wr[3] + 4 * s);
        const int64_t left = nsteps - s;
        QK_NG_STEP(0);
        if (left > 1) QK_NG_STEP(1);
        if (left > 2) QK_NG_STEP(2);
    }
}
#undef QK_NG_STEP

/* 4 weight rows (wr, decoded; rows past nrows repeat row r0 and are not stored) x the
   NQ quads of batch group bg, every block, then the stores. */
QK_NEON_DOT_INL void
qk_gemm_tile_neon(const qk_dense *w, int64_t r0, int64_t nrows, const int8_t *const wr[4],
                  int biased, const int8_t *xi, const float *xst, const float *xzt, int64_t bg,
                  int64_t batch, int64_t block, int64_t nb, float *y, const int NQ) {
    const int64_t n = w->n_in, n4 = (n + 3) & ~(int64_t)3, xgs = n4 * QK_GEMM_LANES;
    float32x4_t acc[16];
    for (int k = 0; k < 16; k++) acc[k] = vdupq_n_f32(0.0f);
    for (int64_t blk = 0; blk < nb; blk++) {
        const int64_t c0 = blk * block, c1 = c0 + block < n ? c0 + block : n;
        const int64_t s0 = c0 / 4, s1 = (c1 + 3) / 4;
        const int8_t *wb[4] = {wr[0] + c0, wr[1] + c0, wr[2] + c0, wr[3] + c0};
        int32x4_t d[16];
        qk_gemm_dots_neon(wb, xi + bg * xgs + s0 * 64, s1 - s0, d, NQ);
        for (int i = 0; i < 4; i++) {
            float s, z;
            qk_block_scale_zero(w, r0 + (i < nrows ? i : 0), c0, &s, &z);
            if (biased) z -= 128.0f;
            const float32x4_t vs = vdupq_n_f32(s), vsz = vdupq_n_f32(s * z);
            for (int q = 0; q < NQ; q++) {
                const int64_t o = (bg * nb + blk) * QK_GEMM_LANES + 4 * q;
                const float32x4_t xs = vmulq_f32(vs, vld1q_f32(xst + o));
                const float32x4_t f = vfmaq_f32(acc[i * 4 + q], vcvtq_f32_s32(d[i * 4 + q]), xs);
                acc[i * 4 + q] = vfmsq_f32(f, vsz, vld1q_f32(xzt + o));
            }
        }
    }
    for (int i = 0; i < nrows; i++)
        for (int q = 0; q < NQ; q++) {
            float out[4];
            vst1q_f32(out, acc[i * 4 + q]);
            const int64_t b0 = bg * QK_GEMM_LANES + 4 * q;
            const int64_t m = batch - b0 < 4 ? batch - b0 : 4;
            for (int64_t l = 0; l < m; l++) y[(b0 + l) * w->n_out + r0 + i] = out[l];
        }
}

/* Rows r0 .. r0+nrows (nrows <= 4) of y for the whole batch. scratch:
   qk_int8_scratch_codes(n_in) bytes, of which 4 rows of n_in + 64 are used; xi, xst, xzt
   from qk_gemm_pack_x. */
QK_NEON_DOT_FN void qk_gemm_rows_neon(const qk_dense *w, int64_t r0, int64_t nrows,
                                      const int8_t *xi, const float *xst, const float *xzt,
                                      int64_t batch, int64_t block, int64_t nb, float *y,
                                      uint8_t *scratch) {
    const int64_t n = w->n_in, stride = n + 64;
    const int8_t *wr[4];
    int biased = 0;
    for (int64_t i = 0; i < 4; i++) {
        if (i >= nrows) { wr[i] = wr[0]; continue; }
        uint8_t *row = scratch + i * stride;
        biased = qk_int8_bytes_neon(w, r0 + i, row);   /* the same for every row */
        /* zero past n_in for the last step's column tail and the 16-byte loads after it
           (at most n4 + 16 <= n_in + 19 bytes of the row's n_in + 64) */
        memset(row + n, 0, 20);
        wr[i] = (const int8_t *)row;
    }
    const int64_t nbg = (batch + QK_GEMM_LANES - 1) / QK_GEMM_LANES;
    for (int64_t bg = 0; bg < nbg; bg++) {
        const int64_t left = batch - bg * QK_GEMM_LANES;
        const int nq = left >= QK_GEMM_LANES ? 4 : (int)((left + 3) / 4);
#define QK_TILE(NQ) qk_gemm_tile_neon(w, r0, nrows, wr, biased, xi, xst, xzt, bg, batch, \
                                      block, nb, y, NQ)
        if (nq == 4) QK_TILE(4); else if (nq == 3) QK_TILE(3);
        else if (nq == 2) QK_TILE(2); else QK_TILE(1);
#undef QK_TILE
    }
}

#else
static inline void qk_gemm_rows_neon(const qk_dense *w, int64_t r0, int64_t nrows,
                                     const int8_t *xi, const float *xst, const float *xzt,
                                     int64_t batch, int64_t block, int64_t nb, float *y,
                                     uint8_t *scratch) {
    (void)w; (void)r0; (void)nrows; (void)xi; (void)xst; (void)xzt; (void)batch;
    (void)block; (void)nb; (void)y; (void)scratch;
}
#endif /* QK_ARM64 */

#endif
