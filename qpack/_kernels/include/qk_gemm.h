/* What the int8 GEMMs (qk_gemm_avx512.h, qk_gemm_avx2.h, qk_gemm_neon.h) share: when they run, and the
 * activations interleaved once per call so that vector lanes are batch rows.
 *
 * xi[bg][step][lane][4]: bg a group of QK_GEMM_LANES (16) batch rows, step 4 columns,
 * zero padded (no batch or column tails). Beside it, per (bg, x block, lane): the block
 * scale xs (xst) and xs * sum q (xzt). The AVX-512 GEMM reads a group as one zmm per
 * step, the AVX2 GEMM as two ymm halves of 8 lanes, the NEON GEMM as four quads of 4.
 */
#ifndef QK_GEMM_H
#define QK_GEMM_H

#include "qk_dense_ref.h"

#define QK_GEMM_LANES 16
/* From this batch the GEMM replaces the row kernels in int8 mode. */
#define QK_GEMM_MIN_BATCH 16

/* Whether a GEMM takes weights w with x blocks of `block` columns on variant isa: int32
   block sums are exact up to 4096 columns (255 * 127 * 4096 < 2**31). On AArch64 only
   with dotprod (qk_gemm_neon.h); the row kernels' vmull fallback is as fast per sum. */
static inline int qk_gemm_ok(const qk_dense *w, int isa, int64_t block) {
    (void)w;
    if (block % 4 || block > 4096) return 0;
#if QK_ARM64
    return isa == QK_ISA_NEON && qk_neon_dotprod();
#else
    return QK_X86 && (isa == QK_ISA_AVX512 || isa == QK_ISA_AVX2);
#endif
}

/* Interleave the int8 activations (see above): xi, xst and xzt must be
   zero-filled by the caller (padding lanes and columns stay zero); the caller sized them
   ceil(batch / 16) * n4 * 16 bytes (n4 = n rounded up to 4) and ceil(batch / 16) *
   nblocks * 16 entries. */
QK_FN void qk_gemm_pack_x(const qk_xq *q, int64_t batch, int64_t n, int8_t *xi, float *xst,
                          float *xzt) {
    const int64_t n4 = (n + 3) & ~(int64_t)3, nb = q->nblocks;
    for (int64_t b = 0; b < batch; b++) {
        const int64_t bg = b / QK_GEMM_LANES, lane = b % QK_GEMM_LANES;
        const int8_t *src = q->xq + b * n;
        int8_t *dst = xi + bg * n4 * QK_GEMM_LANES + lane * 4;
        int64_t s = 0;
        for (; 4 * s + 4 <= n; s++) memcpy(dst + s * 4 * QK_GEMM_LANES, src + 4 * s, 4);
        for (int64_t c = 4 * s; c < n; c++) dst[s * 4 * QK_GEMM_LANES + (c - 4 * s)] = src[c];
        for (int64_t k = 0; k < nb; k++) {
            const float xs = q->xs[b * nb + k];
            const int64_t o = (bg * nb + k) * QK_GEMM_LANES + lane;
            xst[o] = xs;
            xzt[o] = xs * (float)q->xsum[b * nb + k];
        }
    }
}

#endif
