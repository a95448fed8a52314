/* Sparse CSR matrices of codes: y = x @ W_hat.T row by row (a gather of x per kept
 * weight), the batched variant on x transposed (one AXPY over the batch per kept weight),
 * and dequantization. The AVX-512 variant gathers 16 kept weights a step for codebooks of
 * up to 16 entries; everything else is portable C. Trusts its caller as qk_dense_ref.h.
 */
#ifndef QK_SPARSE_H
#define QK_SPARSE_H

#include <stdint.h>
#include "qk_isa.h"


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
    int isa;                  /* variant (qk_isa.h) */
} qk_sparse;

#if QK_X86
/* 16 kept weights per step of a codebook row of at most 16 entries: the codebook sits in
   one register (vpermps), the activations come by a gather. Advances *j past what it did. */
QK_AVX512_FN float qk_sparse_cb16_avx512(const float *cb, const uint8_t *codes,
                                         const int32_t *cols, const float *xb, int64_t *j,
                                         int64_t j1) {
    __m512 lut = _mm512_loadu_ps(cb);
    __m512 acc = _mm512_setzero_ps();
    int64_t i = *j;
    for (; i + 16 <= j1; i += 16) {
        __m512i cv = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + i)));
        __m512i ci = _mm512_loadu_si512((const void *)(cols + i));
        __m512 xv = _mm512_i32gather_ps(ci, xb, 4);
        acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(cv, lut), xv, acc);
    }
    *j = i;
    return _mm512_reduce_add_ps(acc);
}
#else
QK_FN float qk_sparse_cb16_avx512(const float *cb, const uint8_t *codes, const int32_t *cols,
                                   const float *xb, int64_t *j, int64_t j1) {
    (void)cb; (void)codes; (void)cols; (void)xb; (void)j; (void)j1;
    return 0.0f;  /* never called: qk_isa_supported(QK_ISA_AVX512) is 0 off x86-64 */
}
#endif

QK_FN void qk_sparse_row(const qk_sparse *w, int64_t r, const float *x, int64_t batch,
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
            if (w->isa == QK_ISA_AVX512 && w->k <= 16)
                s = qk_sparse_cb16_avx512(cb, codes, cols, xb, &j, j1);
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
QK_FN void qk_sparse_row_batched(const qk_sparse *w, int64_t r, const float *xt,
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

QK_FN void qk_sparse_dequant_row(const qk_sparse *w, int64_t r, float *out) {
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

#endif
