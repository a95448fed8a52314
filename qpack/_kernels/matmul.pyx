# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Inference kernels: y = x @ W_hat.T straight from packed weights (float32 out).

Two kernel objects, built once per weight matrix by qpack/matmul.py:

- ``DenseKernel``: packed rows of b-bit codes with linear parameters or a codebook;
- ``SparseKernel``: a CSR matrix of codes.

Each holds the C description of its matrix (and references to the arrays behind it), so a
product is one call with the activations and the output. The constructors check every
shape and length the C code relies on, and each method checks its own arguments, which is
why bounds checking and wraparound are off: the indices the loops use were proven valid
before any loop runs. Values the wrapper must still check (finite scales, codes below a
short codebook's length) do not affect memory safety: codebooks are padded to
max(16, 2**bits) entries, so every code of a row indexes inside its table.

The loops are C in qpack/_kernels/include (qk_dense*.h, qk_sparse.h); the variant they
run (reference, AVX2, AVX-512, NEON) is chosen at import from the CPU and can be forced with
``set_isa`` (qpack/kernel_info.py reads QPACK_ISA). docs/KERNELS.md describes the layouts
and the selection.
"""

import numpy as np

from qpack._kernels import ISA_NAMES, initial_isa

from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t

from qpack._kernels.qk cimport (
    QK_ISA_AVX2,
    QK_ISA_AVX512,
    QK_ISA_REF,
    QK_PATH_AVX2,
    QK_PATH_AVX512,
    QK_PATH_AVX512_ANY,
    QK_PATH_AVX512_GEMM,
    QK_PATH_AVX2_ANY,
    QK_PATH_AVX2_GEMM,
    QK_PATH_GENERIC,
    QK_GEMM_LANES,
    QK_PATH_NEON,
    QK_PATH_NEON_GEMM,
    qk_dense,
    qk_dense_float_rows,
    qk_dense_int8_rows,
    qk_dequant_row,
    qk_float_path,
    qk_int8_path,
    qk_int8_batch_path,
    qk_gemm_pack_x,
    qk_gemm_rows_avx512,
    qk_gemm_rows_avx2,
    qk_gemm_rows_neon,
    qk_build_flags,
    qk_isa_best,
    qk_isa_supported,
    qk_omp_max_threads,
    qk_path_permute_bits,
    qk_float_scratch_codes,
    qk_float_scratch_wrow,
    qk_int8_scratch_codes,
    qk_permute_row,
    qk_quantize_row,
    qk_sparse,
    qk_sparse_dequant_row,
    qk_sparse_row,
    qk_sparse_row_batched,
    qk_xq,
)

# Rows handed to a thread at a time: enough to amortize scheduling, small enough that two
# threads stay balanced on 1536-row matrices. Dense kernels take rows in quads (their
# register tiles are 4 rows tall), so a chunk is ROW_CHUNK // 4 quads.
cdef enum:
    ROW_CHUNK = 16

PATH_NAMES = {QK_PATH_GENERIC: "generic", QK_PATH_AVX2: "avx2", QK_PATH_AVX512: "avx512",
              QK_PATH_AVX512_ANY: "avx512-any", QK_PATH_AVX512_GEMM: "avx512-gemm",
              QK_PATH_AVX2_ANY: "avx2-any", QK_PATH_AVX2_GEMM: "avx2-gemm",
              QK_PATH_NEON: "neon", QK_PATH_NEON_GEMM: "neon-gemm"}

def isa_supported(int isa):
    """1 if this CPU can run variant ``isa`` (0 ref, 1 avx2, 2 avx512, 3 neon)."""
    return qk_isa_supported(isa) if 0 <= isa < len(ISA_NAMES) else 0


# The variant the kernels run (qk_isa.h levels), chosen at import.
cdef int _isa = initial_isa(qk_isa_best(), isa_supported)


def build_flags():
    """The compiler flags this extension was built with."""
    return qk_build_flags().decode()


def omp_max_threads():
    """omp_get_max_threads() now (1 without OpenMP): follows OMP_NUM_THREADS, and
    omp_set_num_threads as called by threadpoolctl."""
    return qk_omp_max_threads()


def set_isa(int isa):
    """Run variant ``isa`` from now on; ValueError if this CPU cannot."""
    global _isa
    if not isa_supported(isa):
        raise ValueError(f"this CPU cannot run kernel variant {isa}")
    _isa = isa


def get_isa():
    """The variant the kernels run (0 ref, 1 avx2, 2 avx512, 3 neon)."""
    return _isa


cdef float _ONE_F[1]
cdef uint8_t _ONE_U8[1]
_ONE_F[0] = 0.0
_ONE_U8[0] = 0


def _f32_2d(a, str name):
    arr = np.asarray(a)
    if arr.dtype != np.float32 or arr.ndim != 2 or not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous 2-D float32 array")
    return arr


cdef _check_gather(const int64_t[::1] rows, float[:, ::1] out, int64_t n_out, int64_t n_in):
    """ValueError unless out is (len(rows), n_in) and every row index lies in [0, n_out)."""
    cdef int64_t i, n = rows.shape[0]
    if out.shape[0] != n or out.shape[1] != n_in:
        raise ValueError(f"out must have shape ({n}, {n_in})")
    for i in range(n):
        if not 0 <= rows[i] < n_out:
            raise ValueError(f"row index {rows[i]} out of range")


cdef class DenseKernel:
    """A dense packed matrix ready for products: the C description and its arrays.

    DenseKernel(packed, bits, kind, n_in, scales, zeros, prow, group, codebook, cbrow,
    cb_u8, cb_scale): packed uint8 (n_out, ceil(n_in*bits/8)) C-contiguous; kind 0
    (linear: scales and zeros float32 (R, ngroups), prow = ngroups or 0 when every row
    reads row 0, group = columns per group) or 1 (codebook: float32 (Rc, L) with
    L >= max(16, 2**bits), cbrow = L or 0 when shared, cb_u8 uint8 (Rc, L) and cb_scale
    float32 (Rc,) for the int8 mode). Arguments of the other kind are None. Raises
    ValueError for any shape that does not fit; n_out and n_in must be positive.
    """

    cdef qk_dense w
    cdef readonly object packed, scales, zeros, codebook, cb_u8, cb_scale
    cdef readonly int64_t n_out, n_in

    def __cinit__(self, packed, int bits, int kind, int64_t n_in, scales, zeros, int64_t prow,
                  int64_t group, codebook, int64_t cbrow, cb_u8, cb_scale):
        if not 1 <= bits <= 8 or kind not in (0, 1):
            raise ValueError(f"bits must be 1..8 and kind 0 or 1, got {bits}, {kind}")
        p = np.asarray(packed)
        if p.dtype != np.uint8 or p.ndim != 2 or not p.flags.c_contiguous:
            raise ValueError("packed must be a C-contiguous 2-D uint8 array")
        if n_in < 1 or p.shape[0] < 1 or p.shape[1] != (n_in * bits + 7) // 8:
            raise ValueError(f"packed of shape {p.shape} does not hold rows of {n_in} "
                             f"{bits}-bit codes")
        cdef const uint8_t[:, ::1] pv = p
        self.w.packed = &pv[0, 0]
        self.w.row_bytes = p.shape[1]
        self.w.n_out = p.shape[0]
        self.w.n_in = n_in
        self.w.bits = bits
        self.w.kind = kind
        self.w.scales = self.w.zeros = self.w.codebook = self.w.cb_scale = _ONE_F
        self.w.cb_u8 = _ONE_U8
        self.w.prow = self.w.cbrow = 0
        self.w.group = n_in
        self.w.isa = QK_ISA_REF
        cdef const float[:, ::1] sv, zv, cv
        cdef const uint8_t[:, ::1] uv
        cdef const float[::1] csv
        if kind == 0:
            s = _f32_2d(scales, "scales")
            z = _f32_2d(zeros, "zeros")
            if group < 1 or s.shape != z.shape:
                raise ValueError("scales and zeros must have one shape and group must be >= 1")
            ngroups = (n_in + group - 1) // group
            if s.shape[1] < ngroups or (prow != 0 and (prow != s.shape[1]
                                                       or s.shape[0] != p.shape[0])):
                raise ValueError(f"scales of shape {s.shape} do not cover {ngroups} groups "
                                 f"of {p.shape[0]} rows (prow {prow})")
            sv, zv = s, z
            self.w.scales, self.w.zeros = &sv[0, 0], &zv[0, 0]
            self.w.prow, self.w.group = prow, group
            self.scales, self.zeros = s, z
        else:
            c = _f32_2d(codebook, "codebook")
            u = np.asarray(cb_u8)
            cs = np.asarray(cb_scale)
            L = c.shape[1]
            if L < max(16, 1 << bits) or (cbrow != 0 and (cbrow != L or c.shape[0] != p.shape[0])):
                raise ValueError(f"codebook of shape {c.shape} must hold >= {max(16, 1 << bits)} "
                                 f"entries per row and one row per output when cbrow != 0")
            if (u.dtype != np.uint8 or u.shape != c.shape or not u.flags.c_contiguous
                    or cs.dtype != np.float32 or cs.shape != (c.shape[0],)
                    or not cs.flags.c_contiguous):
                raise ValueError("cb_u8 must be uint8 like codebook, cb_scale float32 (rows,)")
            cv, uv, csv = c, u, cs
            self.w.codebook, self.w.cb_u8, self.w.cb_scale = &cv[0, 0], &uv[0, 0], &csv[0]
            self.w.cbrow = cbrow
            self.codebook, self.cb_u8, self.cb_scale = c, u, cs
        self.packed = p
        self.n_out, self.n_in = p.shape[0], n_in

    cdef qk_dense _current(self):
        cdef qk_dense w = self.w
        w.isa = _isa
        return w

    @property
    def float_path(self):
        """Name of the kernel that float products run on with the current variant."""
        cdef qk_dense w = self._current()
        return PATH_NAMES[qk_float_path(&w, w.isa)]

    def int8_path(self, int64_t block=128, int64_t batch=1):
        """Name of the kernel that int8 products of ``batch`` rows with activation blocks
        of ``block`` columns run on with the current variant."""
        cdef qk_dense w = self._current()
        return PATH_NAMES[self._int8_path(&w, block, batch)]

    cdef int _int8_path(self, qk_dense *w, int64_t block, int64_t batch):
        return qk_int8_batch_path(w, w.isa, block, batch)

    def _check_out(self, y, int64_t batch):
        if y.shape[0] != batch or y.shape[1] != self.n_out:
            raise ValueError(f"y must have shape ({batch}, {self.n_out})")

    def matmul_float(self, const float[:, ::1] x, float[:, ::1] y, int num_threads):
        """y (batch, n_out) = x (batch, n_in) @ W_hat.T with float32 activations."""
        if x.shape[1] != self.n_in:
            raise ValueError(f"x must have {self.n_in} columns")
        self._check_out(y, x.shape[0])
        cdef qk_dense w = self._current()
        cdef int path = qk_float_path(&w, w.isa)
        cdef int perm = qk_path_permute_bits(path, w.bits)
        cdef int64_t i, r, batch = x.shape[0], n_in = self.n_in
        cdef int tid = 0, nt = max(1, num_threads)  # 0: Cython copies it into the parallel block
        cdef const float[:, ::1] xin = x
        cdef float[:, ::1] xp
        if perm:
            xp = np.empty((batch, n_in), dtype=np.float32)
            with nogil:
                for i in prange(batch, num_threads=min(nt, batch), schedule="static"):
                    qk_permute_row(&x[i, 0], &xp[i, 0], n_in, perm)
            xin = xp
        # scratch per thread (qk_dense.h): the AVX2 any-width kernel keeps the unpacked
        # codes of 4 rows besides the tail's, and from a batch of 4 their float values
        cdef uint8_t[:, ::1] codes = np.empty((nt, qk_float_scratch_codes(path, n_in)),
                                              dtype=np.uint8)
        cdef float[:, ::1] wrow = np.empty((nt, qk_float_scratch_wrow(path, n_in, batch)),
                                           dtype=np.float32)
        with nogil, parallel(num_threads=nt):
            tid = threadid()
            for r in prange((w.n_out + 3) // 4, schedule="dynamic", chunksize=ROW_CHUNK // 4):
                qk_dense_float_rows(&w, path, 4 * r, min(4, w.n_out - 4 * r), &xin[0, 0],
                                    batch, &y[0, 0], &codes[tid, 0], &wrow[tid, 0])

    def matmul_int8(self, const float[:, ::1] x, float[:, ::1] y, int64_t block,
                    float static_scale, int num_threads):
        """y = x @ W_hat.T with x quantized to int8 per ``block`` columns (scale
        max|x_block| / 127, or ``static_scale`` for every block when > 0).

        Every activation block must lie in one weight group: block divides the group size
        (or the groups cover the row, or the weights are a codebook).
        """
        if x.shape[1] != self.n_in:
            raise ValueError(f"x must have {self.n_in} columns")
        self._check_out(y, x.shape[0])
        if block < 1 or not (self.w.kind == 1 or self.w.group >= self.n_in
                             or self.w.group % block == 0):
            raise ValueError(f"activation block {block} does not divide the weight group "
                             f"{self.w.group}")
        if not static_scale >= 0 or static_scale == float("inf"):
            raise ValueError("static_scale must be finite and >= 0")
        cdef qk_dense w = self._current()
        cdef int64_t r, batch = x.shape[0], n_in = self.n_in
        cdef int path = self._int8_path(&w, block, batch)
        cdef int perm = qk_path_permute_bits(path, w.bits)
        cdef int tid = 0, nt = max(1, num_threads)  # 0: Cython copies it into the parallel block
        xq, xs, xsum = quantize(x, block, perm, nt, static_scale)
        cdef const int8_t[:, ::1] xqv = xq
        cdef const float[:, ::1] xsv = xs
        cdef const int32_t[:, ::1] xsumv = xsum
        cdef qk_xq q
        q.xq = &xqv[0, 0]
        q.xs = &xsv[0, 0]
        q.xsum = &xsumv[0, 0]
        q.block = block
        q.nblocks = xs.shape[1]
        cdef uint8_t[:, ::1] codes = np.empty((nt, qk_int8_scratch_codes(n_in)), dtype=np.uint8)
        cdef int64_t nbg = (batch + QK_GEMM_LANES - 1) // QK_GEMM_LANES
        cdef int8_t[:, ::1] xi
        cdef float[:, ::1] xst, xzt
        if path == QK_PATH_AVX512_GEMM or path == QK_PATH_AVX2_GEMM or path == QK_PATH_NEON_GEMM:
            # the GEMMs' interleaved activations (qk_gemm.h), sized here as the kernels
            # assume (qk_int8_batch_path admitted block % 4 == 0, block <= 4096): zero
            # padding lanes and columns, so the kernels need no batch or column tails.
            # With y's shape checked above and codes sized by qk_int8_scratch_codes,
            # these are all the lengths the kernels index (boundscheck is off for that)
            if block % 4 or block > 4096 or q.nblocks != (n_in + block - 1) // block:
                raise RuntimeError(f"internal: a GEMM path chosen for x blocks of {block}")
            xi = np.zeros((nbg, ((n_in + 3) // 4) * 4 * QK_GEMM_LANES), dtype=np.int8)
            xst = np.zeros((nbg, q.nblocks * QK_GEMM_LANES), dtype=np.float32)
            xzt = np.zeros((nbg, q.nblocks * QK_GEMM_LANES), dtype=np.float32)
            with nogil:
                qk_gemm_pack_x(&q, batch, n_in, &xi[0, 0], &xst[0, 0], &xzt[0, 0])
                with parallel(num_threads=nt):
                    tid = threadid()
                    for r in prange((w.n_out + 3) // 4, schedule="dynamic",
                                    chunksize=ROW_CHUNK // 4):
                        if path == QK_PATH_AVX512_GEMM:
                            qk_gemm_rows_avx512(&w, 4 * r, min(4, w.n_out - 4 * r), &xi[0, 0],
                                                &xst[0, 0], &xzt[0, 0], batch, block,
                                                q.nblocks, &y[0, 0], &codes[tid, 0])
                        elif path == QK_PATH_AVX2_GEMM:
                            qk_gemm_rows_avx2(&w, 4 * r, min(4, w.n_out - 4 * r), &xi[0, 0],
                                              &xst[0, 0], &xzt[0, 0], batch, block,
                                              q.nblocks, &y[0, 0], &codes[tid, 0])
                        else:
                            qk_gemm_rows_neon(&w, 4 * r, min(4, w.n_out - 4 * r), &xi[0, 0],
                                              &xst[0, 0], &xzt[0, 0], batch, block,
                                              q.nblocks, &y[0, 0], &codes[tid, 0])
            return
        with nogil, parallel(num_threads=nt):
            tid = threadid()
            for r in prange((w.n_out + 3) // 4, schedule="dynamic", chunksize=ROW_CHUNK // 4):
                qk_dense_int8_rows(&w, path, 4 * r, min(4, w.n_out - 4 * r), &q, batch,
                                   &y[0, 0], &codes[tid, 0])

    def dequantize_rows(self, int64_t row0, float[:, ::1] out, int num_threads):
        """out[i] = W_hat[row0 + i] for i < out.shape[0]."""
        if row0 < 0 or row0 + out.shape[0] > self.n_out or out.shape[1] != self.n_in:
            raise ValueError("rows out of range or out of the wrong width")
        cdef qk_dense w = self._current()
        cdef int64_t i, nrows = out.shape[0]
        cdef int tid = 0, nt = max(1, num_threads)  # 0: Cython copies it into the parallel block
        cdef uint8_t[:, ::1] codes = np.empty((nt, self.n_in + 64), dtype=np.uint8)
        with nogil, parallel(num_threads=nt):
            tid = threadid()
            for i in prange(nrows, schedule="dynamic", chunksize=ROW_CHUNK):
                qk_dequant_row(&w, row0 + i, &codes[tid, 0], &out[i, 0])

    def gather_rows(self, const int64_t[::1] rows, float[:, ::1] out, int num_threads):
        """out[i] = W_hat[rows[i]] (an embedding lookup straight from the packed rows)."""
        cdef int64_t i, n = rows.shape[0]
        _check_gather(rows, out, self.n_out, self.n_in)
        cdef qk_dense w = self._current()
        cdef int tid = 0, nt = max(1, num_threads)  # 0: Cython copies it into the parallel block
        cdef uint8_t[:, ::1] codes = np.empty((nt, self.n_in + 64), dtype=np.uint8)
        with nogil, parallel(num_threads=nt):
            tid = threadid()
            for i in prange(n, schedule="static"):
                qk_dequant_row(&w, rows[i], &codes[tid, 0], &out[i, 0])


def quantize(const float[:, ::1] x, int64_t block, int permute_bits, int num_threads,
             float static_scale=0.0):
    """int8 blocks of x (batch, n_in): (xq int8 (batch, n_in), xs float32 (batch, nb),
    xsum int32 (batch, nb)) with nb = ceil(n_in / block), scale max|x_block| / 127 per
    block or ``static_scale`` for every block when > 0 (values beyond 127 * static_scale
    clip). ``permute_bits`` 2 or 4 writes xq in that stream layout (then block is 32, 64
    or 128: the blocks are quantized in natural order, each 128-column span permuted
    after). ValueError for a block < 1, a bad layout or a negative or non-finite
    static_scale.
    """
    cdef int64_t i, batch = x.shape[0], n_in = x.shape[1]
    if block < 1 or permute_bits not in (0, 2, 4) or (permute_bits and block not in (32, 64, 128)):
        raise ValueError("block must be >= 1, permute_bits 0/2/4 (with block 32, 64 or 128)")
    if not static_scale >= 0 or static_scale == float("inf"):
        raise ValueError("static_scale must be finite and >= 0")
    cdef int64_t nb = (n_in + block - 1) // block
    xq_a = np.empty((batch, n_in), dtype=np.int8)
    xs_a = np.empty((batch, nb), dtype=np.float32)
    xsum_a = np.empty((batch, nb), dtype=np.int32)
    if batch == 0 or n_in == 0:
        return xq_a, xs_a, xsum_a
    cdef int8_t[:, ::1] xq = xq_a
    cdef float[:, ::1] xs = xs_a
    cdef int32_t[:, ::1] xsum = xsum_a
    cdef int8_t[:, ::1] tmp = np.empty((batch, n_in), dtype=np.int8) if permute_bits else xq_a
    with nogil:
        for i in prange(batch, num_threads=max(1, min(num_threads, batch)), schedule="static"):
            qk_quantize_row(&x[i, 0], n_in, block, &xq[i, 0], &xs[i, 0], &xsum[i, 0],
                            permute_bits, &tmp[i, 0], static_scale)
    return xq_a, xs_a, xsum_a


cdef class SparseKernel:
    """A CSR matrix of codes ready for products.

    SparseKernel(row_ptr, cols, codes, n_in, kind, scales, zeros, prow, group, codebook,
    cbrow): row_ptr int64 (n_out + 1,), cols int32 and codes uint8 of at least
    max(nnz, 1) entries; linear parameters as for DenseKernel (kind 0) or a float32
    codebook (Rc, L) with L >= 16 (kind 1). The constructor checks that row_ptr runs from 0
    up to at most len(cols) without decreasing, that every column lies in [0, n_in) and
    every codebook code below L (one pass over the arrays), so no product can index
    outside them; ValueError otherwise.
    """

    cdef qk_sparse w
    cdef readonly object row_ptr, cols, codes, scales, zeros, codebook
    cdef readonly int64_t n_out, n_in

    def __cinit__(self, row_ptr, cols, codes, int64_t n_in, int kind, scales, zeros,
                  int64_t prow, int64_t group, codebook, int64_t cbrow):
        rp = np.asarray(row_ptr)
        cl = np.asarray(cols)
        cd = np.asarray(codes)
        if (rp.dtype != np.int64 or rp.ndim != 1 or rp.shape[0] < 2 or cl.dtype != np.int32
                or cl.ndim != 1 or cd.dtype != np.uint8 or cd.shape != cl.shape
                or cl.shape[0] < 1 or not (rp.flags.c_contiguous and cl.flags.c_contiguous
                                           and cd.flags.c_contiguous)):
            raise ValueError("row_ptr int64 (n_out+1,), cols int32 and codes uint8 of one "
                             "length >= 1, all C-contiguous")
        if kind not in (0, 1) or n_in < 1:
            raise ValueError("kind must be 0 or 1 and n_in >= 1")
        cdef const int64_t[::1] rpv = rp
        cdef const int32_t[::1] clv = cl
        cdef const uint8_t[::1] cdv = cd
        cdef int64_t i, n_out = rp.shape[0] - 1, ncap = cl.shape[0], bad = 0
        cdef int64_t kmax = 256
        self.w.scales = self.w.zeros = self.w.codebook = _ONE_F
        self.w.prow = self.w.cbrow = 0
        self.w.group = n_in
        self.w.k = 0
        cdef const float[:, ::1] sv, zv, cv
        if kind == 0:
            s = _f32_2d(scales, "scales")
            z = _f32_2d(zeros, "zeros")
            if group < 1 or s.shape != z.shape:
                raise ValueError("scales and zeros must have one shape and group must be >= 1")
            ngroups = (n_in + group - 1) // group
            if s.shape[1] < ngroups or (prow != 0 and (prow != s.shape[1] or s.shape[0] != n_out)):
                raise ValueError(f"scales of shape {s.shape} do not cover {ngroups} groups")
            sv, zv = s, z
            self.w.scales, self.w.zeros = &sv[0, 0], &zv[0, 0]
            self.w.prow, self.w.group = prow, group
            self.scales, self.zeros = s, z
        else:
            c = _f32_2d(codebook, "codebook")
            if c.shape[1] < 16 or (cbrow != 0 and (cbrow != c.shape[1] or c.shape[0] != n_out)):
                raise ValueError(f"codebook of shape {c.shape} must hold >= 16 entries per "
                                 "row and one row per output when cbrow != 0")
            cv = c
            self.w.codebook, self.w.cbrow, self.w.k = &cv[0, 0], cbrow, c.shape[1]
            kmax = c.shape[1]
            self.codebook = c
        with nogil:
            bad = rpv[0] != 0 or rpv[n_out] > ncap
            for i in range(n_out):
                bad |= rpv[i + 1] < rpv[i]
            if not bad:
                for i in range(rpv[n_out]):
                    bad |= clv[i] < 0 or clv[i] >= n_in or cdv[i] >= kmax
        if bad:
            raise ValueError("row_ptr, cols or codes out of range")
        self.w.row_ptr, self.w.cols, self.w.codes = &rpv[0], &clv[0], &cdv[0]
        self.w.n_out, self.w.n_in, self.w.kind = n_out, n_in, kind
        self.w.isa = QK_ISA_REF
        self.row_ptr, self.cols, self.codes = rp, cl, cd
        self.n_out, self.n_in = n_out, n_in

    cdef qk_sparse _current(self):
        cdef qk_sparse w = self.w
        w.isa = _isa
        return w

    def matmul(self, const float[:, ::1] x, float[:, ::1] y, int num_threads):
        """y (batch, n_out) = x (batch, n_in) @ W_hat.T, one gather of x per kept weight."""
        if x.shape[1] != self.n_in or y.shape[0] != x.shape[0] or y.shape[1] != self.n_out:
            raise ValueError("x or y of the wrong shape")
        cdef qk_sparse w = self._current()
        cdef int64_t r, batch = x.shape[0]
        with nogil:
            for r in prange(w.n_out, num_threads=max(1, num_threads), schedule="dynamic",
                            chunksize=64):
                qk_sparse_row(&w, r, &x[0, 0], batch, &y[0, 0])

    def matmul_batched(self, const float[:, ::1] xt, float[:, ::1] y, int num_threads):
        """y (batch, n_out) = x @ W_hat.T with x given transposed, xt (n_in, batch): one
        AXPY over the batch per kept weight."""
        if xt.shape[0] != self.n_in or y.shape[0] != xt.shape[1] or y.shape[1] != self.n_out:
            raise ValueError("xt or y of the wrong shape")
        cdef qk_sparse w = self._current()
        cdef int64_t r, batch = xt.shape[1]
        cdef int tid = 0, nt = max(1, num_threads)  # 0: Cython copies it into the parallel block
        cdef float[:, ::1] acc = np.empty((nt, max(batch, 1)), dtype=np.float32)
        with nogil, parallel(num_threads=nt):
            tid = threadid()
            for r in prange(w.n_out, schedule="dynamic", chunksize=16):
                qk_sparse_row_batched(&w, r, &xt[0, 0], batch, &y[0, 0], &acc[tid, 0])

    def dequantize_rows(self, int64_t row0, float[:, ::1] out, int num_threads):
        """out[i] = W_hat[row0 + i] for i < out.shape[0] (zeros where pruned)."""
        if row0 < 0 or row0 + out.shape[0] > self.n_out or out.shape[1] != self.n_in:
            raise ValueError("rows out of range or out of the wrong width")
        cdef qk_sparse w = self._current()
        cdef int64_t r
        with nogil:
            for r in prange(out.shape[0], num_threads=max(1, num_threads), schedule="static"):
                qk_sparse_dequant_row(&w, row0 + r, &out[r, 0])

    def gather_rows(self, const int64_t[::1] rows, float[:, ::1] out, int num_threads):
        """out[i] = W_hat[rows[i]] (zeros where pruned)."""
        cdef int64_t i, n = rows.shape[0]
        _check_gather(rows, out, self.n_out, self.n_in)
        cdef qk_sparse w = self._current()
        with nogil:
            for i in prange(n, num_threads=max(1, num_threads), schedule="static"):
                qk_sparse_dequant_row(&w, rows[i], &out[i, 0])
