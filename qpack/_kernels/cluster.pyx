# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cluster-assignment kernel for 1-D K-means (qpack/cluster.py).

In one dimension the nearest of k ascending centroids is decided by the k-1 midpoints
between consecutive centroids, so a label is "how many midpoints lie strictly below x"
(a value exactly on a midpoint goes to the lower cluster, like an argmin that prefers the
lower index). The kernel finds that count with a branch-free binary search.

Every function here trusts its caller (qpack/cluster.py): the values are finite, the
boundary rows are ascending and padded with +inf to a length of 2**L - 1, ``step`` is
2**(L-1) (or 0 when there is no boundary), and ``out`` has the shape of ``values``.
Bounds checking and wraparound are off because the wrapper has proved every index used
below lies inside these arrays.
"""

from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t, uint8_t

ctypedef fused value_t:
    float
    double

ctypedef fused label_t:
    uint8_t
    int32_t
    int64_t


cdef inline Py_ssize_t _count_below(const double* bounds, Py_ssize_t step,
                                    double x) noexcept nogil:
    # Invariant: bounds[0 .. pos-1] < x. Each step halves the remaining window; the +inf
    # padding makes every probe in range, so no length test is needed.
    cdef Py_ssize_t pos = 0
    while step > 0:
        if bounds[pos + step - 1] < x:
            pos += step
        step >>= 1
    return pos


def assign_by_boundaries(const value_t[:, ::1] values, const double[:, ::1] bounds,
                         label_t[:, ::1] out, Py_ssize_t step, int num_threads=1):
    """out[r, i] = number of entries of bounds[r or 0] strictly below values[r, i].

    ``bounds`` has one row shared by every row of ``values`` or one row per row.
    Trusts the caller for shapes, padding, ``step`` and finiteness (see module docstring).
    """
    cdef Py_ssize_t rows = values.shape[0], cols = values.shape[1]
    cdef Py_ssize_t r, i, br
    cdef bint shared = bounds.shape[0] == 1
    if rows == 0 or cols == 0:
        return
    if rows >= num_threads and rows > 1:
        for r in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
            br = 0 if shared else r
            for i in range(cols):
                out[r, i] = <label_t>_count_below(&bounds[br, 0], step, values[r, i])
    else:
        for r in range(rows):
            br = 0 if shared else r
            for i in prange(cols, nogil=True, num_threads=num_threads, schedule="static"):
                out[r, i] = <label_t>_count_below(&bounds[br, 0], step, values[r, i])


def prefix_sum_shifted(const value_t[::1] xs, double shift, double[::1] out):
    """out[0] = 0, out[i + 1] = out[i] + (xs[i] - shift), accumulated in double.

    Sequential by nature; one pass with no temporary (numpy's cumsum of a float32 array
    into float64 converts and allocates first). Trusts the caller: len(out) == len(xs) + 1.
    """
    cdef Py_ssize_t i, n = xs.shape[0]
    cdef double acc = 0.0
    with nogil:
        out[0] = 0.0
        for i in range(n):
            acc += <double>xs[i] - shift
            out[i + 1] = acc
