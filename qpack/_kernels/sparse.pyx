# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Sparse relative-index kernels: keep-mask <-> per-row gap symbols (docs/FORMAT.md s. 3).

With F = 2**p - 1, a row is walked with a cursor c starting at 0: symbol F skips F
pruned columns (c += F); a symbol s < F skips s pruned columns and marks a kept weight
at column c + s (then c = c + s + 1). The encoder writes, for a gap g between kept
weights, g // F fillers and then g % F, and nothing for a row's trailing pruned columns.

Trust: the mask kernels trust qpack/sparse.py for shapes (out arrays sized from a
previous counting pass, 1 <= p <= 8); that is why bounds checking is off. The walk
kernels run on data read from files, so they check every symbol and column themselves
and never write past the sizes they were given; they report damage as a nonzero result.
"""

from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t

cdef extern from *:
    """
    /* Bit i of the result is set when byte p[i] (0 <= i < 16) is nonzero. With SSE2 one
       compare + movemask; the mask kernels then visit kept columns with count-trailing-
       zeros instead of one unpredictable branch per column (3x faster on random masks). */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    static inline unsigned qp_nonzero16(const uint8_t* p) {
        __m128i v = _mm_loadu_si128((const __m128i*)p);
        return (~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128()))) & 0xFFFFu;
    }
    #else
    static inline unsigned qp_nonzero16(const uint8_t* p) {
        unsigned m = 0;
        for (int i = 0; i < 16; i++) m |= (unsigned)(p[i] != 0) << i;
        return m;
    }
    #endif
    static inline int qp_ctz(unsigned x) { return __builtin_ctz(x); }
    """
    unsigned qp_nonzero16(const uint8_t* p) noexcept nogil
    int qp_ctz(unsigned x) noexcept nogil


def gap_histogram(const uint8_t[:, ::1] mask, int64_t[::1] hist):
    """hist[g] += number of kept weights preceded by g pruned columns (within a row).

    Trusts the caller: len(hist) >= number of columns (every gap is < cols).
    """
    cdef Py_ssize_t i, j, j0, rows = mask.shape[0], cols = mask.shape[1], c
    cdef unsigned m
    cdef const uint8_t* row
    with nogil:
        for i in range(rows):
            row = &mask[i, 0]
            c = 0
            j0 = 0
            while j0 + 16 <= cols:
                m = qp_nonzero16(row + j0)
                while m:
                    j = j0 + qp_ctz(m)
                    m &= m - 1
                    hist[j - c] += 1
                    c = j + 1
                j0 += 16
            for j in range(j0, cols):
                if row[j]:
                    hist[j - c] += 1
                    c = j + 1


def count_symbols(const uint8_t[:, ::1] mask, int p, uint32_t[::1] row_nsym,
                  int num_threads=1):
    """row_nsym[i] = number of gap symbols of row i (kept weights + fillers).

    Trusts the caller: 1 <= p <= 8, len(row_nsym) == rows, and every row's count fits
    in 32 bits (the wrapper checks cols * rows bound).
    """
    cdef Py_ssize_t i, j, j0, rows = mask.shape[0], cols = mask.shape[1], c
    cdef int64_t n
    cdef unsigned m
    cdef Py_ssize_t F = (1 << p) - 1
    for i in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
        c = 0
        n = 0
        j0 = 0
        while j0 + 16 <= cols:
            m = qp_nonzero16(&mask[i, j0])
            while m:
                j = j0 + qp_ctz(m)
                m = m & (m - 1)
                n = n + (j - c) // F + 1
                c = j + 1
            j0 = j0 + 16
        for j in range(j0, cols):
            if mask[i, j]:
                n = n + (j - c) // F + 1
                c = j + 1
        row_nsym[i] = <uint32_t>n


def fill_symbols(const uint8_t[:, ::1] mask, int p, const int64_t[::1] row_off,
                 uint8_t[::1] gaps, int num_threads=1):
    """Write each row's gap symbols at gaps[row_off[i]:row_off[i+1]].

    Trusts the caller: row_off comes from count_symbols with the same mask and p.
    """
    cdef Py_ssize_t i, j, j0, rows = mask.shape[0], cols = mask.shape[1], c, g, k
    cdef unsigned m
    cdef Py_ssize_t F = (1 << p) - 1
    for i in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
        c = 0
        k = row_off[i]
        j0 = 0
        while j0 + 16 <= cols:
            m = qp_nonzero16(&mask[i, j0])
            while m:
                j = j0 + qp_ctz(m)
                m = m & (m - 1)
                g = j - c
                while g >= F:
                    gaps[k] = <uint8_t>F
                    k = k + 1
                    g = g - F
                gaps[k] = <uint8_t>g
                k = k + 1
                c = j + 1
            j0 = j0 + 16
        for j in range(j0, cols):
            if mask[i, j]:
                g = j - c
                while g >= F:
                    gaps[k] = <uint8_t>F
                    k = k + 1
                    g = g - F
                gaps[k] = <uint8_t>g
                k = k + 1
                c = j + 1


def walk_count(const uint8_t[::1] gaps, const int64_t[::1] sym_off, int p, int64_t cols,
               int64_t[::1] row_nnz, int num_threads=1):
    """Validate every row's walk and count its kept weights into row_nnz.

    Needs only: len(sym_off) == len(row_nnz) + 1, sym_off non-decreasing from 0 to at
    most len(gaps) (checked by the wrapper). A row is bad (row_nnz[i] = -1) when a symbol
    is >= 2**p, a kept weight lands at a column >= cols, or the row ends with a filler.
    Returns the number of bad rows.
    """
    cdef Py_ssize_t i, k, rows = row_nnz.shape[0]
    cdef int64_t c, n, F = (1 << p) - 1
    cdef int s, last
    cdef Py_ssize_t bad = 0
    for i in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
        c = 0
        n = 0
        last = -1
        for k in range(sym_off[i], sym_off[i + 1]):
            s = gaps[k]
            last = s
            if s > F:
                n = -1
                break
            if s == F:
                c = c + F
            else:
                c = c + s
                if c >= cols:
                    n = -1
                    break
                n = n + 1
                c = c + 1
        if n >= 0 and last == F:
            n = -1
        row_nnz[i] = n
        if n < 0:
            bad += 1
    return bad


def walk_fill(const uint8_t[::1] gaps, const int64_t[::1] sym_off, int p, int64_t cols,
              const int64_t[::1] row_ptr, int32_t[::1] col_idx, int num_threads=1):
    """Write the column of every kept weight, row i into col_idx[row_ptr[i]:row_ptr[i+1]].

    Checks again what walk_count checked (the arrays may have changed since) and never
    writes outside a row's slice: returns the number of rows whose walk disagrees.
    Needs only: len(sym_off) == len(row_ptr) == rows + 1, both non-decreasing,
    sym_off[-1] <= len(gaps), row_ptr[-1] <= len(col_idx).
    """
    cdef Py_ssize_t i, k, rows = row_ptr.shape[0] - 1
    cdef int64_t c, F = (1 << p) - 1, w, wend
    cdef int s, last
    cdef Py_ssize_t bad = 0
    cdef int ok
    for i in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
        c = 0
        w = row_ptr[i]
        wend = row_ptr[i + 1]
        ok = 1
        last = -1
        for k in range(sym_off[i], sym_off[i + 1]):
            s = gaps[k]
            last = s
            if s > F:
                ok = 0
                break
            if s == F:
                c = c + F
            else:
                c = c + s
                if c >= cols or w >= wend:
                    ok = 0
                    break
                col_idx[w] = <int32_t>c
                w = w + 1
                c = c + 1
        if ok and (w != wend or last == F):
            ok = 0
        if not ok:
            bad += 1
    return bad


def fill_mask(const int64_t[::1] row_ptr, const int32_t[::1] col_idx, uint8_t[:, ::1] mask,
              int num_threads=1):
    """Set mask[i, col] = 1 for every kept weight.

    Trusts the caller: row_ptr and col_idx come from walk_fill (columns < mask.shape[1]).
    """
    cdef Py_ssize_t i, k, rows = mask.shape[0]
    for i in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
        for k in range(row_ptr[i], row_ptr[i + 1]):
            mask[i, col_idx[k]] = 1
