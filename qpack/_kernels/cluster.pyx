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

from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY, nextafterf
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc

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
    with nogil:
        _prefix(&xs[0], xs.shape[0], shift, &out[0])


cdef inline void _prefix(const value_t* xs, Py_ssize_t n, double shift,
                         double* out) noexcept nogil:
    cdef Py_ssize_t i
    cdef double acc = 0.0
    out[0] = 0.0
    for i in range(n):
        acc += <double>xs[i] - shift
        out[i + 1] = acc


def prefix_sum_rows(const value_t[:, ::1] xs, const double[::1] shift, double[:, ::1] out,
                    int num_threads=1):
    """Row-wise prefix_sum_shifted: out[r] from xs[r] and shift[r], rows in parallel.

    Trusts the caller: out is (rows, cols + 1) and shift has one entry per row.
    """
    cdef Py_ssize_t r, rows = xs.shape[0], cols = xs.shape[1]
    if rows == 0 or cols == 0:
        return
    for r in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
        _prefix(&xs[r, 0], cols, shift[r], &out[r, 0])


# Status codes of lloyd_rows, per row.
cdef enum:
    LLOYD_CONVERGED = 0      # no assignment changed: centroids are the means of the labels
    LLOYD_MAX_ITER = 1       # iteration budget used up
    LLOYD_EMPTY = 2          # a cluster is empty: the caller relocates it, then resumes
    LLOYD_SKIP = 3           # row not processed (input and output)
    LLOYD_PENDING = 4        # input: process this row; left as is only if scratch malloc failed


cdef inline Py_ssize_t _count_le(const value_t* xs, Py_ssize_t n, value_t key) noexcept nogil:
    # Number of elements of ascending xs[0:n] that are <= key (upper bound).
    cdef Py_ssize_t lo = 0, half
    while n > 0:
        half = n >> 1
        if xs[lo + half] <= key:
            lo += half + 1
            n -= half + 1
        else:
            n = half
    return lo


cdef inline value_t _key_below(double b, value_t tag) noexcept nogil:
    # The largest value_t <= b, so "x <= b" is decided exactly in the data's own precision
    # (the same comparison qpack/cluster.py makes with its float64 boundaries).
    cdef float f
    if value_t is float:
        f = <float>b
        if <double>f > b:
            f = nextafterf(f, -INFINITY)
        return f
    else:
        return b


cdef int _lloyd_row(const value_t* xs, Py_ssize_t n, const double* P, double shift,
                    double* c, Py_ssize_t k, int64_t* iters, Py_ssize_t max_iter,
                    Py_ssize_t* edges, Py_ssize_t* prev) noexcept nogil:
    cdef Py_ssize_t j, cnt
    cdef double b, m, lo, hi
    cdef bint same
    cdef value_t tag = 0
    edges[0] = 0
    edges[k] = n
    prev[0] = -1  # no previous assignment yet
    while True:
        for j in range(k - 1):
            b = c[j] * 0.5 + c[j + 1] * 0.5
            edges[j + 1] = _count_le(xs, n, _key_below(b, tag))
        # Equal centroids tie for every point; the lowest index wins (as in an argmin), so
        # the later copies get no run (qpack/cluster.py: _boundaries does the same).
        j = k - 2
        while j >= 0:
            if c[j] == c[j + 1]:
                edges[j + 1] = edges[j + 2]
            j -= 1
        if prev[0] == 0:
            same = True
            for j in range(k + 1):
                if edges[j] != prev[j]:
                    same = False
                    break
            if same:
                return LLOYD_CONVERGED
        if iters[0] >= max_iter:
            return LLOYD_MAX_ITER
        for j in range(k):
            if edges[j + 1] == edges[j]:
                return LLOYD_EMPTY
        for j in range(k):
            cnt = edges[j + 1] - edges[j]
            m = (P[edges[j + 1]] - P[edges[j]]) / <double>cnt + shift
            # Clamp into the run's value range (an ulp of prefix-sum rounding can leave it),
            # so a run of one repeated value gets exactly that value and equal centroids
            # stay bit-equal for the tie rule above (qpack/cluster.py: _clamped_means).
            lo = <double>xs[edges[j]]
            hi = <double>xs[edges[j + 1] - 1]
            c[j] = min(max(m, lo), hi)
        for j in range(k + 1):
            prev[j] = edges[j]
        iters[0] += 1


def lloyd_rows(const value_t[:, ::1] xs, const double[:, ::1] P, const double[::1] shift,
               double[:, ::1] centroids, int32_t[::1] status, int64_t[::1] iters,
               Py_ssize_t max_iter, int num_threads=1):
    """Plain Lloyd iterations on every row whose status is LLOYD_PENDING (rows in parallel).

    xs: ascending rows (rows, n); P: their prefix sums of (x - shift[r]) (rows, n + 1);
    centroids: (rows, k) ascending, updated in place; iters: iterations done so far, updated.
    Stops a row at convergence (no edge moved), at max_iter, or when a cluster is empty
    (before updating, so the caller can relocate from the same state). Arithmetic matches
    the Python loop in qpack/cluster.py operation for operation.

    Trusts the caller: shapes agree, rows are ascending and finite, k >= 1, n >= 1.
    """
    cdef Py_ssize_t rows = xs.shape[0], n = xs.shape[1], k = centroids.shape[1]
    cdef Py_ssize_t r
    # NULL before the parallel block: Cython copies them into it (firstprivate)
    cdef Py_ssize_t* edges = NULL
    cdef Py_ssize_t* prev = NULL
    if rows == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        edges = <Py_ssize_t*>malloc((k + 1) * sizeof(Py_ssize_t))
        prev = <Py_ssize_t*>malloc((k + 1) * sizeof(Py_ssize_t))
        if edges != NULL and prev != NULL:
            for r in prange(rows, schedule="dynamic"):
                if status[r] == LLOYD_PENDING:
                    status[r] = _lloyd_row(&xs[r, 0], n, &P[r, 0], shift[r],
                                           &centroids[r, 0], k, &iters[r], max_iter,
                                           edges, prev)
        free(edges)
        free(prev)


# --- sorting float32 data (the one O(n log n)-ish step of the K-means fit) -------------
#
# LSD radix sort: four stable passes over 8-bit digits of an order-preserving uint32 key.
# A float's bits become its key by flipping the sign bit of positives and every bit of
# negatives, so unsigned key order is float order (-0.0 sorts just before +0.0; they are
# equal as floats, so the output is still non-decreasing). Pass 0 reads the floats and
# keys them on the fly; pass 3 writes float bits back. Passes ping-pong between a scratch
# buffer and ``out`` itself, so the only extra memory is one uint32 per value.

cdef inline uint32_t _to_key(uint32_t b) noexcept nogil:
    return b ^ (<uint32_t>(<int32_t>b >> 31) | <uint32_t>0x80000000)


cdef inline uint32_t _from_key(uint32_t k) noexcept nogil:
    return k ^ (((k >> 31) - <uint32_t>1) | <uint32_t>0x80000000)


def radix_sort_float32(const float[::1] x, float[::1] out, uint32_t[::1] scratch,
                       int num_threads=1):
    """Sort ``x`` ascending into ``out`` (radix sort, stable per pass, threads by chunk).

    Trusts the caller: out and scratch have len(x) elements, x holds no NaN, and none of
    the three buffers overlap.
    """
    cdef Py_ssize_t n = x.shape[0]
    cdef int T = num_threads if num_threads > 0 else 1
    cdef int t, p, d, shift
    cdef Py_ssize_t i, lo, hi, run, cnt
    cdef uint32_t key
    cdef const uint32_t* src
    cdef uint32_t* dst
    cdef uint32_t* xin = <uint32_t*>&x[0] if n else NULL
    cdef uint32_t* obuf = <uint32_t*>&out[0] if n else NULL
    cdef uint32_t* sbuf = &scratch[0] if n else NULL
    cdef Py_ssize_t* hist
    cdef Py_ssize_t* h
    if n == 0:
        return
    if n < 4096 * T:
        T = 1
    hist = <Py_ssize_t*>malloc(T * 256 * sizeof(Py_ssize_t))
    if hist == NULL:
        raise MemoryError()
    with nogil:
        for p in range(4):
            shift = 8 * p
            if p == 0:
                src, dst = xin, sbuf
            elif p == 1:
                src, dst = sbuf, obuf
            elif p == 2:
                src, dst = obuf, sbuf
            else:
                src, dst = sbuf, obuf
            for t in prange(T, num_threads=T, schedule="static"):
                _histogram(src, (n * t) // T, (n * (t + 1)) // T, shift, p == 0,
                           &hist[t * 256])
            # Exclusive offsets, digit-major then thread: keeps every pass stable.
            run = 0
            for d in range(256):
                for t in range(T):
                    cnt = hist[t * 256 + d]
                    hist[t * 256 + d] = run
                    run += cnt
            for t in prange(T, num_threads=T, schedule="static"):
                _scatter(src, dst, (n * t) // T, (n * (t + 1)) // T, shift, p == 0, p == 3,
                         &hist[t * 256])
    free(hist)


cdef void _histogram(const uint32_t* src, Py_ssize_t lo, Py_ssize_t hi, int shift,
                     bint keyed_in, Py_ssize_t* h) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint32_t key
    for i in range(256):
        h[i] = 0
    for i in range(lo, hi):
        key = _to_key(src[i]) if keyed_in else src[i]
        h[(key >> shift) & 255] += 1


cdef void _scatter(const uint32_t* src, uint32_t* dst, Py_ssize_t lo, Py_ssize_t hi,
                   int shift, bint keyed_in, bint unkey_out, Py_ssize_t* h) noexcept nogil:
    cdef Py_ssize_t i, pos
    cdef uint32_t key
    for i in range(lo, hi):
        key = _to_key(src[i]) if keyed_in else src[i]
        pos = h[(key >> shift) & 255]
        h[(key >> shift) & 255] = pos + 1
        dst[pos] = _from_key(key) if unkey_out else key


cdef bint _bf16_chunk(const uint32_t* bits, const uint8_t* keep, Py_ssize_t lo,
                      Py_ssize_t hi, int64_t* counts) noexcept nogil:
    # counts of one chunk's kept values by their upper 16 bits; False at the first value
    # with low bits set
    cdef Py_ssize_t i
    cdef uint32_t b
    for i in range(lo, hi):
        b = bits[i]
        if b & 0xFFFF:
            return False
        if keep == NULL or keep[i]:
            counts[b >> 16] += 1
    return True


def bf16_histogram(const uint32_t[::1] bits, const uint8_t[::1] keep,
                   int64_t[:, ::1] counts, int num_threads=1):
    """For float32 values (as uint32 ``bits``) that are all bfloat16 values (low 16 bits
    zero): counts[t, bits >> 16] counts the kept values (``keep`` of length 0: all) of
    thread t's chunk. Returns False, with counts partial, as soon as a value is not a
    bfloat16 value.

    Trusts the caller (qpack/cluster.py): keep has len(bits) elements or 0, counts is
    (T, 65536) zeroed with T >= num_threads.
    """
    cdef Py_ssize_t n = bits.shape[0]
    cdef int T = num_threads if num_threads > 0 else 1
    cdef int t
    cdef int bad = 0
    cdef const uint8_t* kp = &keep[0] if keep.shape[0] else NULL
    if n == 0:
        return True
    if n < 65536 * T:
        T = 1
    with nogil:
        for t in prange(T, num_threads=T, schedule="static"):
            # an in-place sum: prange makes it a reduction over the chunks
            bad += not _bf16_chunk(&bits[0], kp, (n * t) // T, (n * (t + 1)) // T,
                                   &counts[t, 0])
    return bad == 0


def bf16_codes(const uint32_t[::1] bits, const uint8_t[::1] lut, uint8_t[::1] out,
               int num_threads=1):
    """out[i] = lut[bits[i] >> 16]: the codes of bfloat16 values through a table indexed
    by their 16 bits (no key array beside the data).

    Trusts the caller: lut has 65536 entries and out len(bits).
    """
    cdef Py_ssize_t n = bits.shape[0], i
    if n == 0:
        return
    for i in prange(n, nogil=True, num_threads=num_threads if n >= 1 << 16 else 1,
                    schedule="static"):
        out[i] = lut[bits[i] >> 16]
