"""2-D convolution (NCHW, float32) from a packed weight: argument rules, im2col, products.

``qpack.nn.PackedConv2d`` validates and holds the layer; this module does the work. A
weight of shape (out, in/groups, kh, kw) is stored as the matrix W of shape (out, K), with
K = in/groups * kh * kw in the order (channel, kernel row, kernel column), so the
convolution is a product of W with the "im2col" matrix of input patches. Two paths,
chosen per call:

- **columns** (the default): the patches are written by ``_kernels/conv.pyx`` (zero
  padding included: no padded copy of the input) into a (K, positions) matrix P per
  image (or per band of output rows when an image's patches exceed PATCH_BYTES), and the
  output is ``W @ P`` (numpy's BLAS), already in NCHW order. Small images go side by side
  into one P per chunk (one product, then one transpose of the output).
  The bias rides along as one more weight column against a row of ones in P, so it
  costs no pass over the output. W is decoded from the packed codes on every call
  (``dequantize()`` on one thread, ``take_rows`` otherwise), in tiles of at most
  WEIGHT_TILE_BYTES, and dropped afterwards: no float copy of the weights outlives a
  call. A 1x1, stride-1, unpadded convolution of a C-contiguous float32 input uses the
  input itself as P. Groups are one batched product (groups, out/groups, K) x
  (groups, K, positions).
- **rows**: patches as rows (positions, K) fed to the packed matmul
  (``kernel_weights().matmul``), then transposed to NCHW. Used when the whole call has
  fewer than ROWS_MAX_POSITIONS output positions, where matmul runs its packed kernels on
  every CPU instead of decoding the weights (a 512->512 3x3 convolution with a 1x1 output:
  2.6-3.8 ms against 4.0-5.1 ms for columns, 1.1 against 3.3 ms when 80% pruned), and
  always for ``act_quant="int8"`` (the activations are rounded per block of a patch row,
  exactly as PackedLinear rounds a row of x). Needs groups == 1. From 4 rows on, matmul
  decodes tiles for BLAS itself on CPUs without AVX-512 (and for rows that are not
  multiples of 128 columns), and the columns path did the same work 15-40% faster
  (49-196 positions).

Memory per call, whatever the batch: the output, one chunk of patches (PATCH_BYTES, or
PATCH_BYTES_THREADED with more than one qpack thread, or one output row of one image if
that is larger) and at most WEIGHT_TILE_BYTES of decoded weights. The measurements
behind the constants are in docs/benchmarks/conv.md.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from qpack._validate import check_int
from qpack.dispatch import TILES_MIN_BATCH
from qpack.threads import get_num_threads

# Bytes of one chunk of patches. Whole images are grouped up to this size; an image whose
# patches exceed it is split into bands of output rows. One thread: 2 MiB (about the L2
# of this machine; 5-10% faster than 8-16 MiB). More threads: every BLAS call wakes
# OpenBLAS's other threads, and on a busy machine each wake-up waits for a time slice,
# so fewer, larger products win (64->64 3x3 at batch 32, 2 threads: 656 ms with 32 MiB
# chunks, 2614 ms with 2 MiB).
PATCH_BYTES = 2 << 20
PATCH_BYTES_THREADED = 32 << 20
# Images with fewer output positions than this (any image, with more than one thread)
# share one wide patch matrix per chunk: one BLAS call instead of one per image. Same
# speed on one thread (LeNet conv2, batch 32: 4.06 vs 4.01 ms), far fewer thread
# wake-ups on more (2 threads: 24 ms, against 13-752 ms one image at a time).
WIDE_MAX_POSITIONS = 1024
# Bytes of float32 weights decoded at a time in the columns path.
WEIGHT_TILE_BYTES = 4 << 20
# Calls with fewer output positions (batch * OH * OW) than this take the rows path: the
# batch sizes at which matmul always runs its packed kernels (see the module doc).
ROWS_MAX_POSITIONS = TILES_MIN_BATCH
# Threads writing patches: one. The copy is bound by memory bandwidth, and a second
# OpenMP pool next to OpenBLAS's on a 2-core machine made it 8x slower (measured).
IM2COL_THREADS = 1

_F32 = np.dtype(np.float32)


def pair(value, name: str, low: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= low, as a pair (ValueError naming ``name``)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an integer or a pair of integers, got {value!r}")
        return (check_int(value[0], name, low), check_int(value[1], name, low))
    try:
        v = check_int(value, name, low)
    except ValueError:
        raise ValueError(f"{name} must be an integer >= {low} or a pair of them, got "
                         f"{value!r}") from None
    return v, v


def resolve_padding(padding, kernel: tuple[int, int], stride: tuple[int, int],
                    dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding from an int, a pair, "valid" or "same".

    "valid" is no padding. "same" keeps OH = H and OW = W: it needs stride 1 and pads
    dilation * (k - 1) in total per axis, the odd element at the bottom / right (the
    convention of torch.nn.functional.conv2d).
    """
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
            out = []
            for k, d in zip(kernel, dilation, strict=True):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return out[0], out[1], out[2], out[3]
        raise ValueError(f"padding must be an integer, a pair, 'valid' or 'same', got "
                         f"{padding!r}")
    ph, pw = pair(padding, "padding", 0)
    return ph, ph, pw, pw


def output_size(size: int, pad: int, kernel: int, stride: int, dilation: int,
                axis: str) -> int:
    """Output length along one axis; ValueError when the kernel exceeds the padded input."""
    span = dilation * (kernel - 1) + 1
    if size + pad < span:
        raise ValueError(f"x: kernel {axis} {kernel} (dilation {dilation}: spans {span}) is "
                         f"larger than the padded input {axis} {size + pad}")
    return (size + pad - span) // stride + 1


class ConvGeometry:
    """Shapes of one call: input (N, C, H, W), kernel, stride, padding, dilation, groups,
    and how the call is cut into chunks of patches."""

    def __init__(self, x_shape, kernel, stride, pads, dilation, groups, out_channels):
        self.n, self.c, self.h, self.w = (int(v) for v in x_shape)
        self.kh, self.kw = kernel
        self.sh, self.sw = stride
        self.pt, self.pb, self.pl, self.pr = pads
        self.dh, self.dw = dilation
        self.groups = groups
        self.out = out_channels
        self.oh = output_size(self.h, self.pt + self.pb, self.kh, self.sh, self.dh, "height")
        self.ow = output_size(self.w, self.pl + self.pr, self.kw, self.sw, self.dw, "width")
        self.cg = self.c // groups
        self.k = self.cg * self.kh * self.kw  # columns of W
        self.padded = any(pads)
        self.positions = self.oh * self.ow
        row_bytes = max(1, self.c * self.kh * self.kw * self.ow * 4)  # one output row
        self.threaded = get_num_threads() > 1
        budget = PATCH_BYTES_THREADED if self.threaded else PATCH_BYTES
        rows_fit = max(1, budget // row_bytes)
        if rows_fit >= self.oh:
            self.images_per_chunk, self.band = max(1, min(self.n, rows_fit // self.oh)), self.oh
        else:
            self.images_per_chunk, self.band = 1, rows_fit

    def chunks(self):
        """Yield (n0, n1, oh0, oh1): images n0..n1 and output rows oh0..oh1 of one chunk
        (at most PATCH_BYTES of patches, at least one output row of one image)."""
        per, band = self.images_per_chunk, self.band
        for n0 in range(0, self.n, per):
            for r0 in range(0, self.oh, band):
                yield n0, min(self.n, n0 + per), r0, min(self.oh, r0 + band)

    @property
    def plain_1x1(self) -> bool:
        return (self.kh, self.kw, self.sh, self.sw) == (1, 1, 1, 1) and not self.padded


def _float32_images(x: np.ndarray, n0: int, n1: int) -> np.ndarray:
    """Images n0..n1 of x as float32 with strides the kernel can step (a view if it can)."""
    xs = x[n0:n1]
    if xs.dtype != _F32 or any(s % 4 for s in xs.strides):
        xs = np.ascontiguousarray(xs, dtype=_F32)
    return xs


def _im2col(xs: np.ndarray, patches: np.ndarray, g: ConvGeometry, r0: int, r1: int,
            grp_rows: int, wide: bool) -> None:
    """Check what the kernel trusts, then write the patches of output rows r0..r1 of the
    images xs into ``patches``: (nb, groups, grp_rows, positions) or, ``wide``, the images
    side by side as (groups, grp_rows, nb * positions)."""
    nb, lb = xs.shape[0], (r1 - r0) * g.ow
    if (xs.dtype != _F32 or xs.shape[1:] != (g.c, g.h, g.w) or any(s % 4 for s in xs.strides)
            or patches.dtype != _F32 or not patches.flags.c_contiguous
            or patches.size != nb * g.groups * grp_rows * lb
            or not (0 <= r0 < r1 <= g.oh) or g.cg < 1 or grp_rows < g.k):
        raise ValueError("im2col: inconsistent patch buffer or input (internal error)")
    # imported here, not with the module: qpack.nn (PackedLinear) must keep working in a
    # build made before this kernel existed
    from qpack._kernels import conv as _k

    img_stride, row_stride = (lb, nb * lb) if wide else (g.groups * grp_rows * lb, lb)
    _k.im2col_columns(xs, patches.reshape(-1), g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt,
                      g.pl, r0, r1, g.ow, img_stride, row_stride, g.cg, grp_rows,
                      IM2COL_THREADS)


class _WeightTiles:
    """W decoded from the packed form in row tiles of <= WEIGHT_TILE_BYTES (whole groups
    when groups > 1), each (rows, K) or, with a bias to fold, (rows, K + 1) whose last
    column is the bias. With one tile it is decoded once per call, else once per chunk."""

    def __init__(self, kernel_weights, g: ConvGeometry, bias: np.ndarray | None):
        self.kw, self.g, self.bias = kernel_weights, g, bias
        og = g.out // g.groups
        unit = og if g.groups > 1 else 1
        per = max(unit, (WEIGHT_TILE_BYTES // max(1, 4 * g.k)) // unit * unit)
        self.tiles = [(r0, min(g.out, r0 + per)) for r0 in range(0, g.out, per)]
        self._single = self._decode(*self.tiles[0]) if len(self.tiles) == 1 else None

    def _decode(self, r0: int, r1: int) -> np.ndarray:
        if r1 - r0 == self.g.out and get_num_threads() == 1:
            # whole W on one thread: dequantize() is the cheaper call (measured 0.11 vs
            # 0.24 ms cold for 64x576); it runs on every qpack thread, though, and waking
            # a second one for a few thousand weights costs milliseconds on a busy machine,
            # while take_rows sizes its thread count to the work
            w = self.kw.dequantize()
        else:
            w = self.kw.take_rows(np.arange(r0, r1, dtype=np.int64))
        if self.bias is None:
            return w
        wb = np.empty((r1 - r0, self.g.k + 1), _F32)
        wb[:, :-1] = w
        wb[:, -1] = self.bias[r0:r1]
        return wb

    def __iter__(self):
        for r0, r1 in self.tiles:
            yield r0, r1, self._single if self._single is not None else self._decode(r0, r1)


def _product(weights: _WeightTiles, g: ConvGeometry, cols: np.ndarray, out: np.ndarray):
    """out[..., groups, og, L] = W @ cols[..., groups, K(+1), L], tile by tile."""
    og = g.out // g.groups
    for t0, t1, wt in weights:
        if g.groups == 1:
            np.matmul(wt, cols[..., 0, :, :], out=out[..., 0, t0:t1, :])
        else:
            ga, gb = t0 // og, t1 // og
            np.matmul(wt.reshape(gb - ga, og, wt.shape[1]), cols[..., ga:gb, :, :],
                      out=out[..., ga:gb, :, :])


def conv2d_columns(x: np.ndarray, kernel_weights, g: ConvGeometry, y: np.ndarray,
                   bias: np.ndarray | None) -> None:
    """y = conv(x, W) + bias through patch columns and BLAS on decoded weight tiles."""
    zero_copy = g.plain_1x1 and x.dtype == _F32 and x.flags.c_contiguous
    fold = bias is not None and not zero_copy
    weights = _WeightTiles(kernel_weights, g, bias if fold else None)
    og, grp_rows = g.out // g.groups, g.k + int(fold)
    y4 = y.reshape(g.n, g.groups, og, g.positions)
    buf = res_buf = None
    for n0, n1, r0, r1 in g.chunks():
        nb, lb = n1 - n0, (r1 - r0) * g.ow
        out = y4[n0:n1, :, :, r0 * g.ow:r1 * g.ow]
        if zero_copy:  # the input is its own patch matrix (OH, OW = H, W)
            cols = x[n0:n1].reshape(nb, g.groups, g.k, g.positions)[..., r0 * g.ow:r1 * g.ow]
            _product(weights, g, cols, out)
            if bias is not None:
                out += bias.reshape(g.groups, og, 1)
            continue
        if buf is None:
            buf = np.empty(g.images_per_chunk * g.groups * grp_rows * g.band * g.ow, _F32)
        wide = nb > 1 and (g.positions < WIDE_MAX_POSITIONS or g.threaded)
        shape = (g.groups, grp_rows, nb * lb) if wide else (nb, g.groups, grp_rows, lb)
        cols = buf[: nb * g.groups * grp_rows * lb].reshape(shape)
        if fold:
            cols[..., g.k, :] = 1.0  # the bias column's row of ones
        _im2col(_float32_images(x, n0, n1), cols, g, r0, r1, grp_rows, wide)
        if wide:  # one product for the chunk, then the images back to NCHW
            if res_buf is None:
                res_buf = np.empty(g.out * g.images_per_chunk * lb, _F32)
            res = res_buf[: g.out * nb * lb].reshape(g.groups, og, nb * lb)
            _product(weights, g, cols, res)
            out[...] = res.reshape(g.groups, og, nb, lb).transpose(2, 0, 1, 3)
        else:
            _product(weights, g, cols, out)


class _Padder:
    """Images n0..n1 of x as float32 with zero borders (one reused buffer), or as a view
    of x itself when no padding and no dtype conversion are needed (any strides)."""

    def __init__(self, x: np.ndarray, g: ConvGeometry):
        self.x, self.g = x, g
        self.buf = None
        if g.padded:
            # zeroed once; only the interior is ever written, so the borders stay zero
            self.buf = np.zeros((g.images_per_chunk, g.c, g.h + g.pt + g.pb,
                                 g.w + g.pl + g.pr), _F32)

    def __call__(self, n0: int, n1: int) -> np.ndarray:
        g = self.g
        if self.buf is None:
            return self.x[n0:n1] if self.x.dtype == _F32 else self.x[n0:n1].astype(_F32)
        xp = self.buf[: n1 - n0]
        xp[:, :, g.pt:g.pt + g.h, g.pl:g.pl + g.w] = self.x[n0:n1]
        return xp


def _row_patches(xp: np.ndarray, g: ConvGeometry, r0: int, r1: int) -> np.ndarray:
    """Read-only strided view (nb, rows, OW, C, kh, kw) of the patches of output rows
    r0..r1 of the padded images xp."""
    sn, sc, sy, sx = xp.strides
    base = xp[:, :, r0 * g.sh:, :]  # starts at the first input row the band reads
    shape = (xp.shape[0], r1 - r0, g.ow, g.c, g.kh, g.kw)
    strides = (sn, sy * g.sh, sx * g.sw, sc, sy * g.dh, sx * g.dw)
    return as_strided(base, shape, strides, writeable=False)


def conv2d_rows(x: np.ndarray, kernel_weights, g: ConvGeometry, y: np.ndarray,
                act_quant: str | None) -> None:
    """y = conv(x, W) through patch rows and the packed matmul kernels (groups == 1)."""
    pad = _Padder(x, g)
    y3 = y.reshape(g.n, g.out, g.positions)
    size = g.images_per_chunk * g.band * g.ow
    buf = np.empty(size * g.k, _F32)
    ybuf = np.empty(size * g.out, _F32)
    for n0, n1, r0, r1 in g.chunks():
        nb, lb = n1 - n0, (r1 - r0) * g.ow
        dst = buf[: nb * lb * g.k].reshape(nb, r1 - r0, g.ow, g.c, g.kh, g.kw)
        np.copyto(dst, _row_patches(pad(n0, n1), g, r0, r1))
        y2 = ybuf[: nb * lb * g.out].reshape(nb * lb, g.out)
        kernel_weights.matmul(dst.reshape(nb * lb, g.k), act_quant=act_quant, out=y2)
        y3[n0:n1, :, r0 * g.ow:r1 * g.ow] = y2.reshape(nb, lb, g.out).transpose(0, 2, 1)


def conv2d(x: np.ndarray, kernel_weights, g: ConvGeometry, bias: np.ndarray | None,
           act_quant: str | None) -> np.ndarray:
    """The float32 output (N, out, OH, OW) of a validated call (see the module doc)."""
    y = np.empty((g.n, g.out, g.oh, g.ow), _F32)
    if y.size == 0:
        return y
    if g.k == 0:
        y[...] = 0 if bias is None else bias[None, :, None, None]
    elif act_quant is not None or (g.groups == 1 and g.n * g.positions < ROWS_MAX_POSITIONS):
        conv2d_rows(x, kernel_weights, g, y, act_quant)
        if bias is not None:
            y += bias[None, :, None, None]
    else:
        conv2d_columns(x, kernel_weights, g, y, bias)
    return y
