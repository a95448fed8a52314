/* Batched int8 products ("GEMM"), AVX-512 VNNI variant: for a batch of 16 rows or more.
 *
 * The row kernels (qk_dense_avx512.h) put columns in the vector lanes, so every output
 * needs a horizontal reduction and every 32-128 columns a float conversion per (row,
 * batch row): at batch 64 that overhead weighs as much as the dot products. Here the 16
 * lanes are 16 batch rows instead. The activations are interleaved once per call into
 * xi[bg][step][lane][4] (bg: group of 16 batch rows, step: 4 columns), so one vpdpbusd
 * takes 4 codes of one weight row, broadcast to every lane, against the same 4 columns
 * of 16 batch rows: 64 multiply-adds, no reduction, and each weight row is read once per
 * tile of 64 batch rows. Codes are decoded once per call (any width, natural order, the
 * codebook's int8 entries for codebooks) into the thread's scratch.
 *
 * Per x block (block columns, each inside one weight group):
 *   y[b, r] += s_r * xs[b, blk] * dot_blk(code, xq[b]) - s_r * z_r * xs[b, blk] * xsum[b, blk]
 * with s, z the linear scale and zero-point, or cb_scale and 128 for codebooks: the same
 * arithmetic as the row kernels, so results agree to float rounding. int32 sums are
 * exact for blocks of up to 4096 columns (255 * 127 * 4096 < 2**31).
 *
 * The interleave (qk_gemm_pack_x) and the conditions (qk_gemm_ok) are in qk_gemm.h.
 * Trusts its caller (matmul.pyx) for every length: xi holds ceil(batch / 16) * n4 * 16
 * bytes (n4 = n_in rounded up to 4, zero padded), xst and xzt ceil(batch / 16) *
 * nblocks * 16 floats, the scratch 5 * (n_in + 64) bytes, block % 4 == 0.
 */
#ifndef QK_GEMM_AVX512_H
#define QK_GEMM_AVX512_H

#include "qk_gemm.h"
#include "qk_dense_avx512.h"

#if QK_X86

/* Row r as int8-ready bytes (codes, or codebook entries + 128) in dst[0 .. n4), zero
   past n_in; tmp: 64 bytes. */
QK_AVX512_FN void qk_gemm_decode_row(const qk_dense *w, int64_t r, uint8_t *dst, uint8_t *tmp) {
    const int64_t n = w->n_in, nch = n / 64, c0 = nch * 64, n4 = (n + 3) & ~(int64_t)3;
    const int b = w->bits;
    qk_predecode_row_avx512(w, r, nch, dst);
    if (c0 < n) {  /* a 64-code chunk is 8 * b bytes, so the tail starts on a byte */
        qk_unpack_any(w->packed + r * w->row_bytes + nch * 8 * b, tmp, n - c0, b, QK_ISA_AVX512);
        if (w->kind == 1) {
            const uint8_t *lut = w->cb_u8 + r * w->cbrow;
            for (int64_t k = 0; k < n - c0; k++) dst[c0 + k] = lut[tmp[k]];
        } else {
            memcpy(dst + c0, tmp, (size_t)(n - c0));
        }
    }
    for (int64_t c = n; c < n4; c++) dst[c] = 0;
}

/* The dot products of one block for a tile of 4 weight rows x NB = 1, 2 or 4 groups of 16
   batch rows: nsteps >= 1 steps of 4 columns. The rows' codes are at w, w + ws, w + 2 ws,
   w + 3 ws; the lane groups' activations at x, x + xgs, x + 2 xgs, x + 3 xgs (both from
   the block's first step). Written in assembly because GCC 12 keeps each loop-carried
   intrinsic accumulator in two registers (a copy each way per step, seen in the
   disassembly): 32 registers for 16 sums, so it folded the activation loads into every
   vpdpbusd (16 loads of 64 bytes per step instead of 4) and the loads, not the dot
   products, set the pace (0.4 against 1 vpdpbusd per cycle, measured). Here each step
   loads NB activation vectors once (zmm28..31) and broadcasts one weight word per row
   (zmm26/27, alternating). */
#define QK_ASM_ROW1(W, B, A0) \
    "vpbroadcastd " W ", %%zmm" B "\n\t" "vpdpbusd %%zmm28, %%zmm" B ", %[" A0 "]\n\t"
#define QK_ASM_ROW2(W, B, A0, A1) \
    QK_ASM_ROW1(W, B, A0) "vpdpbusd %%zmm29, %%zmm" B ", %[" A1 "]\n\t"
#define QK_ASM_ROW4(W, B, A0, A1, A2, A3) QK_ASM_ROW2(W, B, A0, A1) \
    "vpdpbusd %%zmm30, %%zmm" B ", %[" A2 "]\n\t" "vpdpbusd %%zmm31, %%zmm" B ", %[" A3 "]\n\t"
#define QK_ASM_ZERO(A) "vpxord %[" A "], %[" A "], %[" A "]\n\t"
#define QK_ASM_W0 "(%[w])"
#define QK_ASM_W1 "(%[w],%[ws],1)"
#define QK_ASM_W2 "(%[w],%[ws],2)"
#define QK_ASM_W3 "(%[w3])"
#define QK_ASM_NEXT "add $64, %[x]\n\t" "add $4, %[w]\n\t" "add $4, %[w3]\n\t" \
    "dec %[k]\n\t" "jnz 1b\n\t"
#define QK_ASM_IN [xgs] "r"(xgs), [ws] "r"(ws)
#define QK_ASM_CLOBBERS "zmm26", "zmm27", "zmm28", "zmm29", "zmm30", "zmm31", "cc", "memory"

QK_AVX512_INL void qk_gemm_dots_4x4(const uint8_t *w, int64_t ws, const int8_t *x,
                                    int64_t xgs, int64_t nsteps, __m512i out[16]) {
    __m512i a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15;
    const uint8_t *w3 = w + 3 * ws;
    const int8_t *x2 = x + 2 * xgs;
    __asm__(
        QK_ASM_ZERO("a0") QK_ASM_ZERO("a1") QK_ASM_ZERO("a2") QK_ASM_ZERO("a3")
        QK_ASM_ZERO("a4") QK_ASM_ZERO("a5") QK_ASM_ZERO("a6") QK_ASM_ZERO("a7")
        QK_ASM_ZERO("a8") QK_ASM_ZERO("a9") QK_ASM_ZERO("a10") QK_ASM_ZERO("a11")
        QK_ASM_ZERO("a12") QK_ASM_ZERO("a13") QK_ASM_ZERO("a14") QK_ASM_ZERO("a15")
        "1:\n\t"
        "vmovdqu64 (%[x]), %%zmm28\n\t"
        "vmovdqu64 (%[x],%[xgs],1), %%zmm29\n\t"
        "vmovdqu64 (%[x2]), %%zmm30\n\t"
        "vmovdqu64 (%[x2],%[xgs],1), %%zmm31\n\t"
        QK_ASM_ROW4(QK_ASM_W0, "26", "a0", "a1", "a2", "a3")
        QK_ASM_ROW4(QK_ASM_W1, "27", "a4", "a5", "a6", "a7")
        QK_ASM_ROW4(QK_ASM_W2, "26", "a8", "a9", "a10", "a11")
        QK_ASM_ROW4(QK_ASM_W3, "27", "a12", "a13", "a14", "a15")
        "add $64, %[x2]\n\t"
        QK_ASM_NEXT
        : [a0] "=&v"(a0), [a1] "=&v"(a1), [a2] "=&v"(a2), [a3] "=&v"(a3), [a4] "=&v"(a4),
          [a5] "=&v"(a5), [a6] "=&v"(a6), [a7] "=&v"(a7), [a8] "=&v"(a8), [a9] "=&v"(a9),
          [a10] "=&v"(a10), [a11] "=&v"(a11), [a12] "=&v"(a12), [a13] "=&v"(a13),
          [a14] "=&v"(a14), [a15] "=&v"(a15), [x] "+r"(x), [x2] "+r"(x2), [w] "+r"(w),
          [w3] "+r"(w3), [k] "+r"(nsteps)
        : QK_ASM_IN
        : QK_ASM_CLOBBERS);
    out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3; out[4] = a4; out[5] = a5;
    out[6] = a6; out[7] = a7; out[8] = a8; out[9] = a9; out[10] = a10; out[11] = a11;
    out[12] = a12; out[13] = a13; out[14] = a14; out[15] = a15;
}

QK_AVX512_INL void qk_gemm_dots_4x2(const uint8_t *w, int64_t ws, const int8_t *x,
                                    int64_t xgs, int64_t nsteps, __m512i out[8]) {
    __m512i a0, a1, a2, a3, a4, a5, a6, a7;
    const uint8_t *w3 = w + 3 * ws;
    __asm__(
        QK_ASM_ZERO("a0") QK_ASM_ZERO("a1") QK_ASM_ZERO("a2") QK_ASM_ZERO("a3")
        QK_ASM_ZERO("a4") QK_ASM_ZERO("a5") QK_ASM_ZERO("a6") QK_ASM_ZERO("a7")
        "1:\n\t"
        "vmovdqu64 (%[x]), %%zmm28\n\t"
        "vmovdqu64 (%[x],%[xgs],1), %%zmm29\n\t"
        QK_ASM_ROW2(QK_ASM_W0, "26", "a0", "a1")
        QK_ASM_ROW2(QK_ASM_W1, "27", "a2", "a3")
        QK_ASM_ROW2(QK_ASM_W2, "26", "a4", "a5")
        QK_ASM_ROW2(QK_ASM_W3, "27", "a6", "a7")
        QK_ASM_NEXT
        : [a0] "=&v"(a0), [a1] "=&v"(a1), [a2] "=&v"(a2), [a3] "=&v"(a3), [a4] "=&v"(a4),
          [a5] "=&v"(a5), [a6] "=&v"(a6), [a7] "=&v"(a7), [x] "+r"(x), [w] "+r"(w),
          [w3] "+r"(w3), [k] "+r"(nsteps)
        : QK_ASM_IN
        : QK_ASM_CLOBBERS);
    /* out[i * 4 + j]: row i, lane group j (the 4x4 tile's order) */
    out[0] = a0; out[1] = a1; out[4] = a2; out[5] = a3;
    out[8] = a4; out[9] = a5; out[12] = a6; out[13] = a7;
}

QK_AVX512_INL void qk_gemm_dots_4x1(const uint8_t *w, int64_t ws, const int8_t *x,
                                    int64_t xgs, int64_t nsteps, __m512i out[4]) {
    __m512i a0, a1, a2, a3;
    const uint8_t *w3 = w + 3 * ws;
    __asm__(
        QK_ASM_ZERO("a0") QK_ASM_ZERO("a1") QK_ASM_ZERO("a2") QK_ASM_ZERO("a3")
        "1:\n\t"
        "vmovdqu64 (%[x]), %%zmm28\n\t"
        QK_ASM_ROW1(QK_ASM_W0, "26", "a0")
        QK_ASM_ROW1(QK_ASM_W1, "27", "a1")
        QK_ASM_ROW1(QK_ASM_W2, "26", "a2")
        QK_ASM_ROW1(QK_ASM_W3, "27", "a3")
        QK_ASM_NEXT
        : [a0] "=&v"(a0), [a1] "=&v"(a1), [a2] "=&v"(a2), [a3] "=&v"(a3), [x] "+r"(x),
          [w] "+r"(w), [w3] "+r"(w3), [k] "+r"(nsteps)
        : QK_ASM_IN
        : QK_ASM_CLOBBERS);
    (void)xgs;
    out[0] = a0; out[4] = a1; out[8] = a2; out[12] = a3;
}

/* 4 weight rows x NB (1, 2 or 4) groups of 16 batch rows; row i's decoded codes at
   wrows + i * wstride. Rows past nrows repeat row 0 and are not stored. */
QK_AVX512_INL void
qk_gemm_tile_avx512(const qk_dense *w, int64_t r0, int64_t nrows, const uint8_t *wrows,
                    int64_t wstride, const int8_t *xi, const float *xst, const float *xzt, int64_t bg0,
                    int64_t batch, int64_t block, int64_t nb, float *y, float *accf,
                    const int NB) {
    const int64_t n = w->n_in, n4 = (n + 3) & ~(int64_t)3;
    const int64_t xgs = n4 * QK_GEMM_LANES;
    /* accf[(i * 4 + j) * 16 ..]: the float sums, in memory (the caller's buffer) so that
       the int32 sums, the activations and the weights keep all 32 registers */
    for (int k = 0; k < 16 * QK_GEMM_LANES; k++) accf[k] = 0.0f;
    int64_t g = 0, gend = w->kind == 1 ? n : w->group;
    for (int64_t blk = 0; blk < nb; blk++) {
        const int64_t c0 = blk * block, c1 = c0 + block < n ? c0 + block : n;
        const int64_t s0 = c0 / 4, s1 = (c1 + 3) / 4;
        /* d[i * 4 + j]: the int32 sums of row i, lane group j over this block */
        __m512i d[16];
        const int8_t *xp = xi + bg0 * xgs + s0 * 64;
        const uint8_t *wp = wrows + 4 * s0;
        if (NB == 4) qk_gemm_dots_4x4(wp, wstride, xp, xgs, s1 - s0, d);
        else if (NB == 2) qk_gemm_dots_4x2(wp, wstride, xp, xgs, s1 - s0, d);
        else qk_gemm_dots_4x1(wp, wstride, xp, xgs, s1 - s0, d);
        /* the weight group of this block (blocks never straddle groups) */
        if (c0 >= gend) { g++; gend += w->group; }
        /* the lane groups' scales, loaded once per block (the stores to accf below may
           alias them as far as the compiler knows, so it would reload them per row) */
        __m512 vxs[4], vxz[4];
        for (int j = 0; j < NB; j++) {
            const int64_t o = ((bg0 + j) * nb + blk) * QK_GEMM_LANES;
            vxs[j] = _mm512_loadu_ps(xst + o);
            vxz[j] = _mm512_loadu_ps(xzt + o);
        }
        for (int i = 0; i < 4; i++) {
            const int64_t r = r0 + (i < nrows ? i : 0);
            float s, z;
            if (w->kind == 1) { s = w->cb_scale[w->cbrow ? r : 0]; z = 128.0f; }
            else { s = w->scales[r * w->prow + g]; z = w->zeros[r * w->prow + g]; }
            const __m512 vs = _mm512_set1_ps(s), vsz = _mm512_set1_ps(s * z);
            for (int j = 0; j < NB; j++) {
                float *a = accf + (i * 4 + j) * QK_GEMM_LANES;
                const __m512 xs = _mm512_mul_ps(vs, vxs[j]);
                __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[i * 4 + j]), xs, _mm512_loadu_ps(a));
                _mm512_storeu_ps(a, _mm512_fnmadd_ps(vsz, vxz[j], f));
            }
        }
    }
    for (int i = 0; i < nrows; i++)
        for (int j = 0; j < NB; j++) {
            const float *out = accf + (i * 4 + j) * QK_GEMM_LANES;
            const int64_t b0 = (bg0 + j) * QK_GEMM_LANES;
            const int64_t m = batch - b0 < QK_GEMM_LANES ? batch - b0 : QK_GEMM_LANES;
            for (int64_t l = 0; l < m; l++) y[(b0 + l) * w->n_out + r0 + i] = out[l];
        }
}

/* Rows r0 .. r0+nrows (nrows <= 4) of y for the whole batch. scratch: 5 * (n_in + 64). */
QK_AVX512_FN void qk_gemm_rows_avx512(const qk_dense *w, int64_t r0, int64_t nrows,
                                      const int8_t *xi, const float *xst, const float *xzt,
                                      int64_t batch, int64_t block, int64_t nb, float *y,
                                      uint8_t *scratch) {
    const int64_t stride = w->n_in + 64;
    /* rows at a fixed stride (the assembly addresses them so); a quad's missing rows
       repeat row r0 and are never stored */
    uint8_t *rows = scratch + stride;
    for (int64_t i = 0; i < 4; i++)
        qk_gemm_decode_row(w, r0 + (i < nrows ? i : 0), rows + i * stride, scratch);
    const int64_t nbg = (batch + QK_GEMM_LANES - 1) / QK_GEMM_LANES;
    float accf[16 * QK_GEMM_LANES] __attribute__((aligned(64)));
    for (int64_t bg = 0; bg < nbg;) {
        /* tiles of 4 lane groups, then 2, then 1 (the assembly has those three) */
        const int64_t left = nbg - bg, nb_tile = left >= 4 ? 4 : left >= 2 ? 2 : 1;
        if (nb_tile == 4) qk_gemm_tile_avx512(w, r0, nrows, rows, stride, xi, xst, xzt, bg, batch, block, nb, y, accf, 4);
        else if (nb_tile == 2) qk_gemm_tile_avx512(w, r0, nrows, rows, stride, xi, xst, xzt, bg, batch, block, nb, y, accf, 2);
        else qk_gemm_tile_avx512(w, r0, nrows, rows, stride, xi, xst, xzt, bg, batch, block, nb, y, accf, 1);
        bg += nb_tile;
    }
}

#else
static inline void qk_gemm_rows_avx512(const qk_dense *w, int64_t r0, int64_t nrows,
                                       const int8_t *xi, const float *xst, const float *xzt,
                                       int64_t batch, int64_t block, int64_t nb, float *y,
                                       uint8_t *scratch) {
    (void)w; (void)r0; (void)nrows; (void)xi; (void)xst; (void)xzt; (void)batch;
    (void)block; (void)nb; (void)y; (void)scratch;
}
#endif /* QK_X86 */

#endif
