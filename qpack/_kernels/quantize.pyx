# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Error of candidate (scale, zero-point) pairs per group: the inner loop of clip="mse".

For every group g (a contiguous row of ``groups``) and candidate r, the kernel quantizes
the group exactly as qpack/quantize.py does,

    code = clip(rint(x * inv_scale) + zero, cmin, cmax),  inv_scale = 1 / scale (value_t)
    x_hat = (float32(code) - float32(zero)) * float32(scale)

and stores sum((x_hat - x)**2) in double. Candidates are independent, so threads share
the (group, candidate) pairs; consecutive pairs reuse the same group while it is in cache.

Trusts the caller (qpack/quantize.py): scales/zeros/err are (ngroups, ncand), scales are
float32 values of the stored scales (0 allowed: then every code is the zero-point),
0 <= cmin <= cmax <= 255, and the values are finite. Bounds checking is off because
those shapes make every index below valid.
"""

from cython.parallel cimport prange
from libc.math cimport rintf, rint

ctypedef fused value_t:
    float
    double


cdef double _group_error(const value_t* x, Py_ssize_t n, float scale, float zero,
                         float cmin, float cmax) noexcept nogil:
    cdef Py_ssize_t i
    cdef value_t inv = (<value_t>1) / scale if scale > 0 else 0
    cdef value_t q
    cdef float code, d
    # Eight partial sums in a fixed order: GCC turns the unrolled body into vector code
    # (checked with objdump: vrndscaleps / vcvtps2pd / vfmadd231pd on packed registers).
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0
    i = 0
    while i + 8 <= n:
        a0 += _sq(x[i], inv, scale, zero, cmin, cmax)
        a1 += _sq(x[i + 1], inv, scale, zero, cmin, cmax)
        a2 += _sq(x[i + 2], inv, scale, zero, cmin, cmax)
        a3 += _sq(x[i + 3], inv, scale, zero, cmin, cmax)
        a4 += _sq(x[i + 4], inv, scale, zero, cmin, cmax)
        a5 += _sq(x[i + 5], inv, scale, zero, cmin, cmax)
        a6 += _sq(x[i + 6], inv, scale, zero, cmin, cmax)
        a7 += _sq(x[i + 7], inv, scale, zero, cmin, cmax)
        i += 8
    while i < n:
        a0 += _sq(x[i], inv, scale, zero, cmin, cmax)
        i += 1
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


cdef inline double _sq(value_t x, value_t inv, float scale, float zero, float cmin,
                       float cmax) noexcept nogil:
    cdef value_t q
    cdef float code, xh
    cdef double d
    if value_t is float:
        q = rintf(x * inv) + zero
    else:
        q = rint(x * inv) + zero
    code = <float>q
    if code < cmin:
        code = cmin
    if code > cmax:
        code = cmax
    xh = (code - zero) * scale
    d = <double>xh - <double>x
    return d * d


def candidate_errors(const value_t[:, ::1] groups, const float[:, ::1] scales,
                     const float[:, ::1] zeros, double[:, ::1] err, int cmin, int cmax,
                     int num_threads=1):
    """err[g, r] = squared error of group g quantized with candidate r (see module doc)."""
    cdef Py_ssize_t ng = groups.shape[0], n = groups.shape[1], nc = scales.shape[1]
    cdef Py_ssize_t p, g, r
    if ng == 0 or nc == 0:
        return
    for p in prange(ng * nc, nogil=True, num_threads=num_threads, schedule="static"):
        g = p // nc
        r = p - g * nc
        err[g, r] = _group_error(&groups[g, 0], n, scales[g, r], zeros[g, r],
                                 <float>cmin, <float>cmax)
