/* Dense packed matrices: which kernel runs, and the entry points matmul.pyx calls.
 *
 * A "path" is the variant whose vector kernel handles a weight matrix in one accuracy
 * mode; QK_PATH_GENERIC is the reference loop (any width, any grouping). The path depends
 * on the selected variant (qk_isa.h), the code width, the encoding and the grouping, and
 * fixes the column layout the activations must be in (qk_path_permute_bits).
 */
#ifndef QK_DENSE_H
#define QK_DENSE_H

#include "qk_dense_ref.h"
#include "qk_dense_avx512.h"
#include "qk_dense_avx2.h"
#include "qk_gemm_avx512.h"
#include "qk_gemm_avx2.h"
#include "qk_dense_neon.h"  /* QK_PATH_NEON = 5 */
#include "qk_gemm_neon.h"

/* AVX512: 2/4/8-bit codes in 128-column blocks (permuted activations for 2 and 4 bits);
   AVX512_ANY: any width, groups of any multiple of 32, natural order; AVX2 and AVX2_ANY
   the same on AVX2. AVX512_GEMM, AVX2_GEMM and NEON_GEMM: int8 mode from a batch of
   QK_GEMM_MIN_BATCH, any width (qk_gemm_avx512.h, qk_gemm_avx2.h, qk_gemm_neon.h);
   chosen per call by qk_int8_batch_path, never by qk_int8_path. */
enum { QK_PATH_GENERIC = 0, QK_PATH_AVX2 = 1, QK_PATH_AVX512 = 2, QK_PATH_AVX512_ANY = 3,
       QK_PATH_AVX512_GEMM = 6, QK_PATH_AVX2_GEMM = 7, QK_PATH_NEON_GEMM = 8 };
enum { QK_PATH_AVX2_ANY = 4 };

/* Rows the 128-column block kernels handle: groups a multiple of 128 (or none), and a
   scalar tail (n_in % 128 columns, decoded again for every batch row) no longer than the
   any-width kernels' (n_in % 64). A shorter row, or one ending in 64-127 extra columns,
   runs the any-width kernels: a 4-bit 300x64 matrix took 17 ms at batch 450 on the block
   kernel's tail against 0.2 ms for numpy. */
static inline int qk_groups_aligned(const qk_dense *w) {
    return (w->kind != 0 || w->group % 128 == 0 || w->group >= w->n_in)
           && w->n_in >= 128 && w->n_in % 128 < 64;
}

/* Groups that the any-width kernels handle: a multiple of 32, or none. */
static inline int qk_groups_halves(const qk_dense *w) {
    return w->kind != 0 || w->group % 32 == 0 || w->group >= w->n_in;
}

QK_FN int qk_float_path(const qk_dense *w, int isa) {
    if (isa == QK_ISA_NEON) return qk_float_path_neon(w);
    const int b = w->bits;
    if (isa == QK_ISA_AVX512 && qk_groups_aligned(w) && (b == 2 || b == 4 || b == 8))
        return QK_PATH_AVX512;
    if (isa == QK_ISA_AVX512 && qk_groups_halves(w)) return QK_PATH_AVX512_ANY;
    if (isa == QK_ISA_AVX2 && qk_groups_aligned(w) && (b == 2 || b == 4 || b == 8))
        return QK_PATH_AVX2;
    if (isa == QK_ISA_AVX2 && qk_groups_halves(w)) return QK_PATH_AVX2_ANY;
    return QK_PATH_GENERIC;
}

/* block: columns per int8 activation block (each inside one weight group). The any-width
   kernel sums at most 4096 products per int32 lane (255 * 127 * 4096 < 2**31). */
QK_FN int qk_int8_path(const qk_dense *w, int isa, int64_t block) {
    if (isa == QK_ISA_NEON) return qk_int8_path_neon(w, block);
    const int b = w->bits;
    if (isa == QK_ISA_AVX512 && qk_groups_aligned(w) && block == 128
        && (b == 2 || b == 4 || (b == 8 && w->kind == 0)))
        return QK_PATH_AVX512;
    /* 2/4-bit linear codes in groups of 32 or 64 with x blocks of one group: the same
       kernels, scaling each group's lanes (qk_int8_gpb) */
    if (isa == QK_ISA_AVX512 && qk_int8_gpb(w) > 1 && block == w->group)
        return QK_PATH_AVX512;
    /* codebooks: the any-width kernel scales whole 64-column chunks (their x blocks are
       128 columns from qpack.matmul; other multiples of 64 work too) */
    if (isa == QK_ISA_AVX512 && qk_groups_halves(w) && block % 32 == 0 && block <= 4096
        && (w->kind == 0 || block % 64 == 0))
        return QK_PATH_AVX512_ANY;
    if (isa == QK_ISA_AVX2 && qk_groups_aligned(w) && block == 128
        && (b == 2 || b == 4 || (b == 8 && w->kind == 0)))
        return QK_PATH_AVX2;
    if (isa == QK_ISA_AVX2 && qk_int8_gpb(w) > 1 && block == w->group)
        return QK_PATH_AVX2;
    /* the same conditions as AVX512_ANY (the AVX2 kernel works per 32-column half and
       could take codebook blocks of an odd number of halves, but the two any-width paths
       accept the same calls) */
    if (isa == QK_ISA_AVX2 && qk_groups_halves(w) && block % 32 == 0 && block <= 4096
        && (w->kind == 0 || block % 64 == 0))
        return QK_PATH_AVX2_ANY;
    return QK_PATH_GENERIC;
}

/* The int8 path for a product of `batch` rows: the GEMM where it applies, else the
   row kernels' path. */
QK_FN int qk_int8_batch_path(const qk_dense *w, int isa, int64_t block, int64_t batch) {
    if (batch >= QK_GEMM_MIN_BATCH && qk_gemm_ok(w, isa, block))
        return isa == QK_ISA_AVX512 ? QK_PATH_AVX512_GEMM
               : isa == QK_ISA_AVX2 ? QK_PATH_AVX2_GEMM : QK_PATH_NEON_GEMM;
    return qk_int8_path(w, isa, block);
}

/* Per-thread scratch of the float rows (qk_dense_float_rows) on a path: bytes of codes,
   and floats of wrow for a batch of `batch` rows. The wrapper and the C test allocate
   exactly this; the AVX2 any-width kernel keeps the codes of 4 rows besides the tail's,
   and from a batch of 4 their float values. */
static inline int64_t qk_float_scratch_codes(int path, int64_t n_in) {
    return (path == QK_PATH_AVX2_ANY ? 5 : 1) * (n_in + 64);
}
static inline int64_t qk_float_scratch_wrow(int path, int64_t n_in, int64_t batch) {
    if (path == QK_PATH_GENERIC) return n_in;
    return path == QK_PATH_AVX2_ANY && batch >= 4 ? 4 * n_in : 1;
}

/* Per-thread scratch bytes of the int8 rows and of the GEMMs (every int8 path): the
   any-width kernels and the AVX-512 GEMM use 5 * (n_in + 64) (a tail region and 4 rows
   of bytes), the AVX2 GEMM 9 * (n_in + 64) (4 rows of up to 16-bit codes). */
static inline int64_t qk_int8_scratch_codes(int64_t n_in) { return 9 * (n_in + 64); }

/* Column layout of the activations for a path: 2 or 4 when each 128-column block must be
   split into 8/bits streams (qk_permute_row), 0 for natural order. */
static inline int qk_path_permute_bits(int path, int bits) {
    return (path == QK_PATH_AVX512 || path == QK_PATH_AVX2) && (bits == 2 || bits == 4) ? bits : 0;
}

/* Dequantize whole row r into out[0 .. n_in) (codes: n_in + 64 bytes of scratch); the
   same values as qk_dequant_cols on every variant (a table lookup is exact). */
QK_FN void qk_dequant_row(const qk_dense *w, int64_t r, uint8_t *codes, float *out) {
    qk_unpack_any(w->packed + r * w->row_bytes, codes, w->n_in, w->bits, w->isa);
#if QK_X86
    if (w->kind == 1 && w->isa == QK_ISA_AVX512) {
        qk_cb_lookup_avx512(w->codebook + r * w->cbrow, w->bits, codes, w->n_in, out);
        return;
    }
    if (w->kind == 1 && w->isa == QK_ISA_AVX2) {
        qk_cb_lookup_avx2(w->codebook + r * w->cbrow, w->bits, codes, w->n_in, out);
        return;
    }
#endif
    qk_dequant_cols(w, r, codes, 0, w->n_in, out);
}

/* Rows r0 .. r0+nrows (nrows <= 4) of y = x @ W_hat.T, float activations (xp in the
   path's layout). Scratch: codes n_in + 64 bytes (AVX2_ANY: 5 * (n_in + 64)), wrow n_in
   floats (generic path; AVX2_ANY from a batch of 4: 4 * n_in). */
QK_FN void qk_dense_float_rows(const qk_dense *w, int path, int64_t r0, int64_t nrows,
                                const float *xp, int64_t batch, float *y, uint8_t *codes,
                                float *wrow) {
#if QK_ARM64
    if (path == QK_PATH_NEON) { qk_rows_float_neon(w, r0, nrows, xp, batch, y, codes); return; }
#endif
#if QK_X86
    if (path == QK_PATH_AVX512) {
        if (batch >= 4) qk_rows_float_avx512(w, r0, nrows, xp, batch, y, codes);
        else
            for (int64_t i = 0; i < nrows; i++) qk_row_float_avx512(w, r0 + i, xp, batch, y, codes);
        return;
    }
    if (path == QK_PATH_AVX512_ANY) { qk_rows_float_any_avx512(w, r0, nrows, xp, batch, y, codes); return; }
    if (path == QK_PATH_AVX2_ANY) { qk_rows_float_any_avx2(w, r0, nrows, xp, batch, y, codes, wrow); return; }
    if (path == QK_PATH_AVX2) {
        if (batch >= 4) qk_rows_float_avx2(w, r0, nrows, xp, batch, y, codes);
        else
            for (int64_t i = 0; i < nrows; i++) qk_row_float_avx2(w, r0 + i, xp, batch, y, codes);
        return;
    }
#endif
    (void)path;
    for (int64_t i = 0; i < nrows; i++) qk_row_float_generic(w, r0 + i, xp, batch, y, codes, wrow);
}

/* The same with int8 activations (q in the path's layout). Scratch: codes 5 * (n_in + 64)
   bytes. */
QK_FN void qk_dense_int8_rows(const qk_dense *w, int path, int64_t r0, int64_t nrows,
                               const qk_xq *q, int64_t batch, float *y, uint8_t *codes) {
#if QK_ARM64
    if (path == QK_PATH_NEON) { qk_rows_int8_neon(w, r0, nrows, q, batch, y, codes); return; }
#endif
#if QK_X86
    if (path == QK_PATH_AVX512) {
        if (batch >= 4) qk_rows_int8_avx512(w, r0, nrows, q, batch, y, codes);
        else
            for (int64_t i = 0; i < nrows; i++) qk_row_int8_avx512(w, r0 + i, q, batch, y, codes);
        return;
    }
    if (path == QK_PATH_AVX512_ANY) { qk_rows_int8_any_avx512(w, r0, nrows, q, batch, y, codes); return; }
    if (path == QK_PATH_AVX2_ANY) { qk_rows_int8_any_avx2(w, r0, nrows, q, batch, y, codes); return; }
    if (path == QK_PATH_AVX2) {
        if (batch >= 4) qk_rows_int8_avx2(w, r0, nrows, q, batch, y, codes);
        else
            for (int64_t i = 0; i < nrows; i++) qk_row_int8_avx2(w, r0 + i, q, batch, y, codes);
        return;
    }
#endif
    (void)path;
    for (int64_t i = 0; i < nrows; i++) qk_row_int8_generic(w, r0 + i, q, batch, y, codes);
}

#endif
