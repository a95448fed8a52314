# Declarations of the C kernels in qpack/_kernels/include (one block per header). The
# functions trust their callers: every .pyx that calls them checks shapes first.
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t


cdef extern from "qk_isa.h" nogil:
    enum:
        QK_ISA_REF
        QK_ISA_AVX2
        QK_ISA_AVX512
        QK_ISA_NEON
        QK_ISA_COUNT
    int qk_isa_supported(int isa)
    int qk_isa_best()
    const char *qk_build_flags()
    int qk_omp_max_threads()


cdef extern from "qk_unpack.h" nogil:
    uint8_t qk_pack_any(const uint8_t *src, uint8_t *dst, int64_t n, int b, int isa)
    void qk_unpack_any(const uint8_t *src, uint8_t *dst, int64_t n, int b, int isa)


cdef extern from "qk_dense.h" nogil:
    ctypedef struct qk_dense:
        const uint8_t *packed
        int64_t row_bytes, n_out, n_in
        int bits, kind
        const float *scales
        const float *zeros
        int64_t prow, group
        const float *codebook
        int64_t cbrow
        const uint8_t *cb_u8
        const float *cb_scale
        int isa

    ctypedef struct qk_xq:
        const int8_t *xq
        const float *xs
        const int32_t *xsum
        int64_t block, nblocks

    enum:
        QK_PATH_GENERIC
        QK_PATH_AVX2
        QK_PATH_AVX512
        QK_PATH_AVX512_ANY
        QK_PATH_AVX512_GEMM
        QK_PATH_AVX2_GEMM
        QK_PATH_NEON_GEMM
        QK_GEMM_LANES
        QK_PATH_NEON
        QK_PATH_AVX2_ANY
    int qk_float_path(const qk_dense *w, int isa)
    int qk_int8_path(const qk_dense *w, int isa, int64_t block)
    int qk_int8_batch_path(const qk_dense *w, int isa, int64_t block, int64_t batch)
    void qk_gemm_pack_x(const qk_xq *q, int64_t batch, int64_t n, int8_t *xi, float *xst,
                        float *xzt)
    void qk_gemm_rows_avx512(const qk_dense *w, int64_t r0, int64_t nrows, const int8_t *xi,
                             const float *xst, const float *xzt, int64_t batch,
                             int64_t block, int64_t nb, float *y, uint8_t *scratch)
    void qk_gemm_rows_avx2(const qk_dense *w, int64_t r0, int64_t nrows, const int8_t *xi,
                           const float *xst, const float *xzt, int64_t batch,
                           int64_t block, int64_t nb, float *y, uint8_t *scratch)
    void qk_gemm_rows_neon(const qk_dense *w, int64_t r0, int64_t nrows, const int8_t *xi,
                           const float *xst, const float *xzt, int64_t batch,
                           int64_t block, int64_t nb, float *y, uint8_t *scratch)
    int qk_path_permute_bits(int path, int bits)
    int64_t qk_float_scratch_codes(int path, int64_t n_in)
    int64_t qk_float_scratch_wrow(int path, int64_t n_in, int64_t batch)
    int64_t qk_int8_scratch_codes(int64_t n_in)
    void qk_dense_float_rows(const qk_dense *w, int path, int64_t r0, int64_t nrows,
                             const float *xp, int64_t batch, float *y, uint8_t *codes,
                             float *wrow)
    void qk_dense_int8_rows(const qk_dense *w, int path, int64_t r0, int64_t nrows,
                            const qk_xq *q, int64_t batch, float *y, uint8_t *codes)
    void qk_dequant_row(const qk_dense *w, int64_t r, uint8_t *codes, float *out)
    void qk_permute_row(const float *x, float *xp, int64_t n, int bits)
    void qk_quantize_row(const float *x, int64_t n, int64_t B, int8_t *xq, float *xs,
                         int32_t *xsum, int permute_bits, int8_t *tmp, float static_scale)


cdef extern from "qk_sparse.h" nogil:
    ctypedef struct qk_sparse:
        const int64_t *row_ptr
        const int32_t *cols
        const uint8_t *codes
        int64_t n_out, n_in
        int kind
        const float *scales
        const float *zeros
        int64_t prow, group
        const float *codebook
        int64_t cbrow, k
        int isa

    void qk_sparse_row(const qk_sparse *w, int64_t r, const float *x, int64_t batch, float *y)
    void qk_sparse_row_batched(const qk_sparse *w, int64_t r, const float *xt, int64_t batch,
                               float *y, float *acc)
    void qk_sparse_dequant_row(const qk_sparse *w, int64_t r, float *out)
