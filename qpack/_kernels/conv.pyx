# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""im2col for 2-D convolution: patches of an NCHW float32 input, zero padding included.

``im2col_columns`` writes, for images n of a chunk and output rows r0..r1, the patch
values x[n, c, oh*sh - pt + i*dh, ow*sw - pl + j*dw] (0 where the index falls in the
padding) into a patch matrix whose rows are the convolution weight's columns (channel,
kernel row, kernel column) and whose columns are output positions, so ``W @ P`` is the
output. Strides say where each value goes, so one kernel serves both layouts of
qpack/conv.py: one matrix per image (img_stride = rows * positions, row_stride =
positions) or the images side by side in one matrix (img_stride = positions,
row_stride = images * positions):

    out[n*img_stride + row*row_stride + (oh - r0)*ow + o],
    row = (c // cg) * grp_rows + (c % cg)*kh*kw + i*kw + j

``grp_rows`` may exceed cg*kh*kw: the rows in between (one row of ones per group, which
turns the bias into one more weight column) are never written here. Writing the zeros
of the padding here replaces a padded copy of the input.

The wrapper (qpack/conv.py) checks shapes, that strides are multiples of 4 bytes, and
that ``out`` holds exactly nb*groups*grp_rows*(r1 - r0)*ow floats with the strides
above; bounds checks are off because every
index is derived from those checked extents: the copied span [lo, hi) of each output row
is clipped to the input width and the input row iy to [0, H).
"""

from cython.parallel cimport prange

cdef extern from *:
    """
    #include <string.h>

    /* One output row of ow patch values: zeros outside [lo, hi), else src[(x0 + o*sw)*sx].
       Short rows are copied by a loop (a memcpy call costs more than it moves). */
    static inline void qp_patch_row(const float *src, Py_ssize_t sx, Py_ssize_t x0,
                                    Py_ssize_t sw, float *restrict dst, Py_ssize_t lo,
                                    Py_ssize_t hi, Py_ssize_t ow) {
        for (Py_ssize_t o = 0; o < lo; o++) dst[o] = 0.0f;
        for (Py_ssize_t o = hi; o < ow; o++) dst[o] = 0.0f;
        if (sw == 1 && sx == 1) {
            const float *restrict s = src + x0;
            if (hi - lo >= 32) {
                memcpy(dst + lo, s + lo, (size_t)(hi - lo) * sizeof(float));
            } else {
                for (Py_ssize_t o = lo; o < hi; o++) dst[o] = s[o];
            }
        } else {
            for (Py_ssize_t o = lo; o < hi; o++) dst[o] = src[(x0 + o * sw) * sx];
        }
    }

    /* First o >= 0 with x0 + o*sw >= 0, and first o with x0 + o*sw >= w, both <= ow. */
    static inline Py_ssize_t qp_lo(Py_ssize_t x0, Py_ssize_t sw, Py_ssize_t ow) {
        Py_ssize_t l = x0 >= 0 ? 0 : (-x0 + sw - 1) / sw;
        return l < ow ? l : ow;
    }
    static inline Py_ssize_t qp_hi(Py_ssize_t x0, Py_ssize_t sw, Py_ssize_t w,
                                   Py_ssize_t ow) {
        Py_ssize_t h = w - x0 <= 0 ? 0 : (w - x0 + sw - 1) / sw;
        return h < ow ? h : ow;
    }
    """
    void qp_patch_row(const float *src, Py_ssize_t sx, Py_ssize_t x0, Py_ssize_t sw,
                      float *dst, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t ow) noexcept nogil
    Py_ssize_t qp_lo(Py_ssize_t x0, Py_ssize_t sw, Py_ssize_t ow) noexcept nogil
    Py_ssize_t qp_hi(Py_ssize_t x0, Py_ssize_t sw, Py_ssize_t w, Py_ssize_t ow) noexcept nogil


# boundscheck=False is safe only because qpack.conv._im2col has checked every shape, stride,
# row range and buffer size against the geometry before calling this kernel.
def im2col_columns(const float[:, :, :, :] x, float[::1] out, int kh, int kw, int sh,
                   int sw, int dh, int dw, int pt, int pl, int r0, int r1, int ow,
                   Py_ssize_t img_stride, Py_ssize_t row_stride, int cg, int grp_rows,
                   int num_threads=1):
    """Write the patches of x (nb, C, H, W) for output rows r0..r1 into out (see module)."""
    cdef Py_ssize_t nb = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t sn = x.strides[0] // 4, sc = x.strides[1] // 4
    cdef Py_ssize_t sy = x.strides[2] // 4, sx = x.strides[3] // 4
    cdef Py_ssize_t taps = kh * kw
    cdef Py_ssize_t rows = nb * c * taps
    cdef Py_ssize_t q, n, ch, i, j, t, oh, iy, x0, lo, hi, row
    cdef const float *base
    cdef float *dst
    if rows == 0 or r1 <= r0 or ow <= 0:
        return
    base = &x[0, 0, 0, 0] if h * w > 0 else NULL
    # rows in the order they lie in ``out``: image-major for one matrix per image,
    # image-minor when the images sit side by side (consecutive writes stay adjacent)
    for q in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
        if img_stride < row_stride:
            n = q % nb
            t = q // nb
        else:
            n = q // (c * taps)
            t = q % (c * taps)
        j = t % kw
        t = t // kw
        i = t % kh
        ch = t // kh
        row = (ch // cg) * grp_rows + (ch % cg) * taps + i * kw + j
        x0 = j * dw - pl
        lo = qp_lo(x0, sw, ow)
        hi = qp_hi(x0, sw, w, ow)
        if hi < lo:
            hi = lo
        for oh in range(r0, r1):
            dst = &out[n * img_stride + row * row_stride + (oh - r0) * ow]
            iy = oh * sh - pt + i * dh
            if iy < 0 or iy >= h or base == NULL:
                qp_patch_row(base, sx, 0, sw, dst, ow, ow, ow)  # all padding: zeros
            else:
                qp_patch_row(base + n * sn + ch * sc + iy * sy, sx, x0, sw, dst, lo, hi, ow)
