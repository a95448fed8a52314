# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""One-pass error sums between a reference and its reconstruction (float32 inputs).

Used to measure every compressed tensor without float64 temporaries the size of the
tensor. The caller (qpack.encode._stats) checks that both arrays are C-contiguous
float32 of the same length, so the loops index without bounds checks.
"""

import numpy as np

from cython.parallel cimport prange
from libc.math cimport fabs


def error_sums(const float[::1] ref, const float[::1] approx, int num_threads=1):
    """Return (sum (ref-approx)^2, sum ref^2, max |ref-approx|), accumulated in float64.

    Each chunk of 65536 elements is summed on its own and the chunk sums are added in
    chunk order, so the result does not depend on the thread count or on scheduling
    (compress's output is the same bytes on any number of threads or workers).
    """
    cdef Py_ssize_t n = ref.shape[0], i, c, start, stop
    cdef Py_ssize_t chunk = 1 << 16
    cdef Py_ssize_t nchunks = (n + chunk - 1) // chunk
    cdef double err = 0.0, sig = 0.0, mx = 0.0
    cdef double e_c, s_c, m_c, d
    if nchunks == 0:
        return err, sig, mx
    partial = np.zeros((nchunks, 3), dtype=np.float64)
    cdef double[:, ::1] part = partial
    for c in prange(nchunks, nogil=True, num_threads=num_threads, schedule="static"):
        e_c = 0.0
        s_c = 0.0
        m_c = 0.0
        start = c * chunk
        stop = min(start + chunk, n)
        for i in range(start, stop):
            d = <double>ref[i] - <double>approx[i]
            e_c = e_c + d * d
            s_c = s_c + <double>ref[i] * <double>ref[i]
            m_c = max(m_c, fabs(d))
        part[c, 0] = e_c
        part[c, 1] = s_c
        part[c, 2] = m_c
    for c in range(nchunks):
        err = err + part[c, 0]
        sig = sig + part[c, 1]
        mx = max(mx, part[c, 2])
    return err, sig, mx
