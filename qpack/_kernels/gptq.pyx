# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The column loop of error-compensated (GPTQ) quantization inside one block of columns.

For each row r, for each column i in [start, stop) of the block (in order):

    code      = the code of w[r, i], the current (error-updated) weight (linear:
                clip(rint(w * inv_scale) + zero, cmin, cmax); K-means: nearest codebook
                entry, ties to the lower index); a pruned position (keep[r, i] == 0) gets
                ``fixed_code`` and decodes to 0.0
    w_hat     = the decoded value exactly as the decoder computes it (float32 arithmetic)
    d         = w0[r, i] - w_hat        (w0: the original weights)
    w[r, j]  += d * s[i, j]             for every later column j of the block
    err[r, i] = d                       (the caller applies err @ s[block, later] lazily)

s is the block's diagonal block of S = R diag(R)^-1, R the upper-triangular factor with
H = R R^T (qpack/gptq.py). This is GPTQ's update (w_j -= e_i U[i, j] with U = R^-1 the
Cholesky factor of H^-1) rewritten without U: the errors e = (W - Q) R, so the current
weight of column j is w_j + sum_{i<j} (w_i - q_i) R[i, j] / R[j, j]. Rows never interact
(H couples columns only), so threads share the rows, R at a time; R rows of the block
(a few KiB) stay in L1 while their columns are processed.

Everything is float64: the updates accumulate over up to a block of columns and the lazy
matmul adds the rest, so float32 would let the blocked order drift from the column-by-
column order by ~1e-7 relative and flip codes that sit near a rounding boundary; in
float64 the two orders agree to ~1e-15 and produce the same codes. The row update is a
contiguous axpy that GCC vectorizes either way.

Bounds checking is off because the wrapper (qpack/gptq.py, _run_blocks and its column
loops) builds every array itself from checked arguments: w, w0, codes and err are
(rows, nb) C-contiguous; keep is too when use_keep (else it is never read); s is (nb, nb); the per-row parameters have ``rows`` entries; ``values`` has k entries
and ``bounds`` k-1, so a label is at most k-1; 0 <= start <= stop <= nb; all values
finite. Under those shapes every index below is in range.
"""

from cython.parallel cimport prange
from libc.math cimport rint

# Rows processed together: one column step of a row is a chain of dependent operations
# (quantize, divide, update the next column, load it); four independent rows overlap
# those chains, and their updates share each load of s's row. Measured on a 384 x 128
# block, one thread (paper's form, with a division per step): linear 1.9 ms one row at a
# time -> 1.1 ms four at a time (8 rows: no better) -> 0.8 ms in the R form (no
# division); K-means 3.1 ms -> 2.1 ms with a branch-free search written with ?: (GCC
# kept the branches) -> 1.2 ms with the arithmetic form below.
cdef enum:
    R = 4


cdef inline void _update_row(double* wr, const double* si, Py_ssize_t i, Py_ssize_t nb,
                             double d) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(i + 1, nb):
        wr[j] += d * si[j]


cdef inline void _update_rows(double** wp, const double* si, Py_ssize_t i, Py_ssize_t nb,
                              const double* d, Py_ssize_t nr) noexcept nogil:
    cdef Py_ssize_t j, t
    cdef double* w0
    cdef double* w1
    cdef double* w2
    cdef double* w3
    cdef double d0, d1, d2, d3, sj
    if nr < R:
        for t in range(nr):
            _update_row(wp[t], si, i, nb, d[t])
        return
    w0, w1, w2, w3 = wp[0], wp[1], wp[2], wp[3]
    d0, d1, d2, d3 = d[0], d[1], d[2], d[3]
    for j in range(i + 1, nb):
        sj = si[j]
        w0[j] += d0 * sj
        w1[j] += d1 * sj
        w2[j] += d2 * sj
        w3[j] += d3 * sj


cdef inline double _linear_value(double x, double inv, float scale, float zero, double cmin,
                                 double cmax, unsigned char* code) noexcept nogil:
    # the code of x and its decoded value, computed exactly as the decoder does (float32)
    cdef double q = rint(x * inv) + zero
    if q < cmin:
        q = cmin
    if q > cmax:
        q = cmax
    code[0] = <unsigned char>q
    return <double>((<float>code[0] - zero) * scale)


cdef inline Py_ssize_t _nearest(const double* bounds, Py_ssize_t nbnd, double x) noexcept nogil:
    # The number of bounds below x = the first j with x <= bounds[j] (bounds ascending):
    # the nearest centroid's index. Branch-free halving (the trip count depends on nbnd
    # only; the comparison feeds arithmetic, not a jump), since the comparisons on
    # weights are unpredictable.
    cdef Py_ssize_t base = 0, n = nbnd, half, below
    while n > 0:
        half = n >> 1
        below = bounds[base + half] < x
        base += below * (half + 1)
        n = half + below * (n - 2 * half - 1)
    return base


cdef void _linear_group(double[:, ::1] w, const double[:, ::1] w0, const double[:, ::1] s,
                        unsigned char[:, ::1] codes,
                        double[:, ::1] err, const unsigned char[:, ::1] keep, bint use_keep,
                        Py_ssize_t r0, Py_ssize_t nr, Py_ssize_t start, Py_ssize_t stop,
                        const double[::1] inv_scale, const float[::1] scale,
                        const float[::1] zero, double cmin, double cmax) noexcept nogil:
    """Rows r0 .. r0 + nr - 1 (nr <= R), columns [start, stop) of the block."""
    cdef double* wp[R]
    cdef double d[R]
    cdef Py_ssize_t i, t, r, nb = w.shape[1]
    cdef double x, xh
    for t in range(nr):
        wp[t] = &w[r0 + t, 0]
    for i in range(start, stop):
        for t in range(nr):
            r = r0 + t
            x = wp[t][i]
            if not use_keep or keep[r, i] != 0:
                xh = _linear_value(x, inv_scale[r], scale[r], zero[r], cmin, cmax,
                                   &codes[r, i])
            else:
                codes[r, i] = <unsigned char>zero[r]  # pruned: the zero-point, exactly 0.0
                xh = 0.0
            d[t] = w0[r, i] - xh
            err[r, i] = d[t]
        _update_rows(wp, &s[i, 0], i, nb, d, nr)


# boundscheck is off: every array comes from qpack/gptq.py with the shapes of the module doc
def linear_columns(double[:, ::1] w, const double[:, ::1] w0, const double[:, ::1] s,
                   unsigned char[:, ::1] codes,
                   double[:, ::1] err, const unsigned char[:, ::1] keep, bint use_keep,
                   Py_ssize_t start, Py_ssize_t stop, const double[::1] inv_scale,
                   const float[::1] scale, const float[::1] zero, int cmin, int cmax,
                   int num_threads=1):
    """Linear codes for columns [start, stop) of a block, with error feedback (module doc).

    inv_scale/scale/zero: each row's group parameters (1/scale in float64, 0 where the
    scale is 0; the stored scale and zero-point as float32). A pruned position
    (use_keep and keep[r, i] == 0) gets its row's zero-point as code.
    """
    cdef Py_ssize_t rows = w.shape[0], g, ngroups
    if rows == 0 or start >= stop:
        return
    ngroups = (rows + R - 1) // R
    for g in prange(ngroups, nogil=True, num_threads=num_threads, schedule="static"):
        _linear_group(w, w0, s, codes, err, keep, use_keep, g * R, min(R, rows - g * R), start,
                      stop, inv_scale, scale, zero, <double>cmin, <double>cmax)


cdef void _kmeans_group(double[:, ::1] w, const double[:, ::1] w0, const double[:, ::1] s,
                        unsigned char[:, ::1] codes,
                        double[:, ::1] err, const unsigned char[:, ::1] keep, bint use_keep,
                        Py_ssize_t r0, Py_ssize_t nr, Py_ssize_t start, Py_ssize_t stop,
                        const double* bounds, Py_ssize_t nbnd, const float[::1] values,
                        unsigned char offset, unsigned char fixed_code) noexcept nogil:
    """Rows r0 .. r0 + nr - 1 (nr <= R), columns [start, stop) of the block."""
    cdef double* wp[R]
    cdef double d[R]
    cdef Py_ssize_t i, t, r, label, nb = w.shape[1]
    cdef double x, xh
    for t in range(nr):
        wp[t] = &w[r0 + t, 0]
    for i in range(start, stop):
        for t in range(nr):
            r = r0 + t
            x = wp[t][i]
            if not use_keep or keep[r, i] != 0:
                label = _nearest(bounds, nbnd, x)
                codes[r, i] = <unsigned char>(label + offset)
                xh = <double>values[label]
            else:
                codes[r, i] = fixed_code  # pruned: the reserved exact 0.0 entry
                xh = 0.0
            d[t] = w0[r, i] - xh
            err[r, i] = d[t]
        _update_rows(wp, &s[i, 0], i, nb, d, nr)


# boundscheck is off: every array comes from qpack/gptq.py with the shapes of the module doc
def kmeans_columns(double[:, ::1] w, const double[:, ::1] w0, const double[:, ::1] s,
                   unsigned char[:, ::1] codes,
                   double[:, ::1] err, const unsigned char[:, ::1] keep, bint use_keep,
                   Py_ssize_t start, Py_ssize_t stop, const double[::1] bounds,
                   const float[::1] values, int offset, int fixed_code, int num_threads=1):
    """Codebook codes for columns [start, stop) of a block, with error feedback.

    values: the k learned float32 centroids (ascending); bounds: their k-1 decision
    boundaries (qpack.cluster's rule, ascending); a kept weight gets label + offset, a
    pruned one ``fixed_code`` (the reserved 0.0 entry).
    """
    cdef Py_ssize_t rows = w.shape[0], nbnd = bounds.shape[0], g, ngroups
    cdef const double* bp = &bounds[0] if nbnd > 0 else NULL
    if rows == 0 or start >= stop:
        return
    ngroups = (rows + R - 1) // R
    for g in prange(ngroups, nogil=True, num_threads=num_threads, schedule="static"):
        _kmeans_group(w, w0, s, codes, err, keep, use_keep, g * R, min(R, rows - g * R), start,
                      stop, bp, nbnd, values, <unsigned char>offset,
                      <unsigned char>fixed_code)
