"""Matrix products straight from packed weights: ``y = x @ W_hat.T`` (float32 out).

Three weight objects, one per encoding of a matrix W viewed as (n_out, n_in):

- ``LinearWeights``: b-bit codes with scales and zero-points per tensor, channel or group:
  ``W_hat[r, c] = (float32(code) - float32(zero)) * float32(scale)``.
- ``CodebookWeights``: b-bit codes indexing a float32 codebook, shared or one per row.
- ``SparseWeights``: pruned weights in CSR form with one uint8 code per kept weight,
  decoded by a codebook or by linear scales and zero-points; pruned positions are 0.

This module validates every argument and allocates; the loops run in
``qpack._kernels.matmul``, which trusts what it is given. Layouts and error bounds are
documented in docs/KERNELS.md.

Accuracy modes of ``matmul``: ``act_quant=None`` keeps x in float32 (the result matches
``x @ W_hat.T`` to float32 rounding); ``act_quant="int8"`` quantizes x per block to int8
with one float scale per block and uses integer dot products, with the error bound
``|y - x @ W_hat.T| <= sum_c |W_hat[r, c]| * scale_x(c) / 2`` (+ the codebook term for
codebooks, see ``int8_error_bound``). ``act_quant="int8-static"`` is the int8 mode with
one scale for every block, the weight's ``act_scale`` calibrated beforehand
(qpack/act_range.py); activations beyond 127 * act_scale clip, so the bound holds only
for activations within that range.
"""

from __future__ import annotations

import math

import numpy as np

from qpack._kernels import matmul as _k
from qpack._validate import check_bits, check_group_size, column_group, group_layout
from qpack.bitpack import packed_nbytes, unpack
from qpack.dispatch import check_path, get_policy
from qpack.threads import get_num_threads

__all__ = ["CodebookWeights", "LinearWeights", "SparseWeights", "dequantized_activations",
           "int8_block_size"]

LINEAR, CODEBOOK = 0, 1
# Columns per int8 activation block when the weight grouping allows it.
INT8_BLOCK = 128
# From this batch size on, sparse products use the transposed-activation kernel.
SPARSE_BATCHED_MIN = 16
# Rows unpacked at a time when checking codes against a short codebook.
_CHECK_ROWS = 256



def _check_shape(shape) -> tuple[int, int]:
    try:
        n_out, n_in = shape
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair (n_out, n_in), got {shape!r}") from None
    for name, v in (("n_out", n_out), ("n_in", n_in)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"shape: {name} must be a non-negative integer, got {v!r}")
    if int(n_in) >= 2**31 or int(n_out) >= 2**40:
        raise ValueError(f"shape {shape} is too large")
    return int(n_out), int(n_in)


def _check_linear_params(scales, zeros, group_size, n_out: int, n_in: int):
    """Validate scales/zeros; return (scales f32, zeros f32, row stride, group columns)."""
    group_size = check_group_size(group_size)
    rows, ngroups, width = group_layout(group_size, n_out, n_in)
    want = (rows, ngroups)
    s = np.asarray(scales)
    if s.dtype.kind != "f":
        raise ValueError(f"scales must be float16 or float32, got dtype {s.dtype}")
    if s.shape != want:
        raise ValueError(f"scales must have shape {want} for group_size={group_size!r} and "
                         f"shape ({n_out}, {n_in}), got {s.shape}")
    s32 = np.ascontiguousarray(s, dtype=np.float32)
    if not np.isfinite(s32).all():
        raise ValueError("scales must be finite")
    z = np.asarray(zeros)
    if z.dtype.kind not in "iu":
        raise ValueError(f"zeros must be uint8, got dtype {z.dtype}")
    if z.shape != want:
        raise ValueError(f"zeros must have shape {want} (same as scales), got {z.shape}")
    if z.size and (int(z.min()) < 0 or int(z.max()) > 255):
        raise ValueError("zeros must lie in 0..255")
    z32 = np.ascontiguousarray(z, dtype=np.float32)
    prow = 0 if group_size is None else ngroups  # per tensor: every row reads row 0
    group = n_in if group_size is None else width
    return s32, z32, prow, max(group, 1)


def _check_packed(packed, bits: int, n_out: int, n_in: int) -> np.ndarray:
    arr = np.asarray(packed)
    if arr.dtype != np.uint8:
        raise ValueError(f"packed must have dtype uint8, got {arr.dtype}")
    want = (n_out, packed_nbytes(n_in, bits))
    if arr.shape != want:
        raise ValueError(f"packed must have shape {want} for shape ({n_out}, {n_in}) at "
                         f"{bits} bits, got {arr.shape}")
    # A C-contiguous input (a mapped file's section) is used in place, never written.
    return np.ascontiguousarray(arr)


def _check_codebook(codebook, n_out: int, name: str = "codebook") -> np.ndarray:
    cb = np.asarray(codebook)
    if cb.dtype.kind != "f":
        raise ValueError(f"{name} must be float32, got dtype {cb.dtype}")
    if cb.ndim == 1:
        cb = cb.reshape(1, -1)
    elif cb.ndim != 2 or cb.shape[0] != n_out:
        raise ValueError(f"{name} must have shape (k,) or ({n_out}, k), got {cb.shape}")
    if not 1 <= cb.shape[1] <= 256:
        raise ValueError(f"{name} must have 1..256 entries, got {cb.shape[1]}")
    cb = np.asarray(cb, dtype=np.float32)
    if not np.isfinite(cb).all():
        raise ValueError(f"{name} must be finite")
    return cb


def _pad_codebook(cb: np.ndarray, length: int) -> np.ndarray:
    """Copy of cb (R, k) padded with zeros to (R, length): vector kernels load whole tables."""
    out = np.zeros((cb.shape[0], length), dtype=np.float32)
    out[:, :cb.shape[1]] = cb
    return out


def _codebook_int8(cb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 form of a (R, L) codebook: u8 = round(cb/scale) + 128 and scale = max|cb|/127."""
    amax = np.abs(cb).max(axis=1)
    scale = (amax / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(cb / safe[:, None]), -127, 127)
    return np.ascontiguousarray((q + 128).astype(np.uint8)), np.ascontiguousarray(scale)


def int8_block_size(group_columns: int | None, n_in: int) -> int:
    """Columns per int8 activation block for weights grouped by ``group_columns``.

    128 when the weights are not grouped (None) or when every group is a multiple of 128
    columns (or covers the whole row); otherwise the group size itself, so that every
    activation block lies inside one weight group.
    """
    if group_columns is None or group_columns % INT8_BLOCK == 0 or group_columns >= n_in:
        return INT8_BLOCK
    return int(group_columns)


def _prepare_x(x, n_in: int) -> tuple[np.ndarray, tuple]:
    """Validate x; return it as C-contiguous float32 (batch, n_in) and the output shape."""
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise ValueError(f"x must have a floating dtype, got {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"x must have shape (in,) or (batch, in), got {arr.shape}")
    if arr.shape[-1] != n_in:
        raise ValueError(f"x must have {n_in} columns (the weights' n_in), got shape {arr.shape}")
    x2 = np.ascontiguousarray(arr.reshape(1, n_in) if arr.ndim == 1 else arr, dtype=np.float32)
    return x2, arr.shape[:-1]


def _prepare_out(out, shape: tuple) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != np.float32 or out.shape != shape:
        raise ValueError(f"out must be float32 of shape {shape}, got {out.dtype} {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    return out


def _tiled_product(x2: np.ndarray, y2: np.ndarray, shape: tuple[int, int],
                   fill_rows, rows: int) -> None:
    """y2 = x2 @ W_hat.T by dequantizing ``rows`` rows at a time (the plan's tile_rows)
    into one reused float32 buffer (``fill_rows(row0, tile)`` writes W_hat[row0 : row0 +
    len(tile)]) and calling BLAS (numpy matmul) on each tile: W_hat is never materialized
    whole. Both accuracy modes may take this path; it is exact in float32, so the int8
    bound holds a fortiori. The tiles are filled on one thread: BLAS brings its own
    pool, and two pools fight on a 2-core machine (qpack.dispatch)."""
    n_out, n_in = shape
    tile_buf = np.empty((min(rows, n_out), n_in), dtype=np.float32)
    for r0 in range(0, n_out, rows):
        r1 = min(n_out, r0 + rows)
        tile = tile_buf[: r1 - r0]
        fill_rows(r0, tile)
        if r1 - r0 == n_out and y2.flags.c_contiguous:
            np.matmul(x2, tile.T, out=y2)  # one tile: no temporary and copy of y
        else:
            y2[:, r0:r1] = x2 @ tile.T


def _row_indices(indices, n_out: int) -> tuple[np.ndarray, tuple]:
    """Validate row indices (any integer array-like; negatives count from the end).

    Returns (flat int64 indices in [0, n_out), the input's shape). ValueError otherwise.
    """
    idx = np.asarray(indices)
    if idx.size == 0:  # np.asarray([]) is float64: an empty list is still a valid index
        idx = idx.astype(np.int64)
    if idx.dtype.kind not in "iu":
        raise ValueError(f"row indices must be integers, got dtype {idx.dtype}")
    flat = idx.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < -n_out or flat.max() >= n_out):
        raise ValueError(f"row indices must lie in [-{n_out}, {n_out}), got "
                         f"{int(flat.min())}..{int(flat.max())}")
    return np.ascontiguousarray(np.where(flat < 0, flat + n_out, flat)), idx.shape


def _begin_product(x, out, shape: tuple[int, int]):
    """Validate x and out for y = x @ W.T with W of ``shape``; return (x2, y, y2).

    x2 is x as C-contiguous float32 (batch, n_in), y the result array in the caller's
    shape, y2 its (batch, n_out) view. y2 is None when the product is empty and y is
    already final (no rows, no outputs, or n_in == 0 where y is all zeros).
    """
    n_out, n_in = shape
    x2, lead = _prepare_x(x, n_in)
    y = _prepare_out(out, lead + (n_out,))
    if x2.shape[0] == 0 or n_out == 0:
        return x2, y, None
    y2 = y.reshape(x2.shape[0], n_out)
    if n_in == 0:
        y2[...] = 0
        return x2, y, None
    return x2, y, y2


ACT_QUANT_MODES = (None, "int8", "int8-static")


def _check_act_quant(act_quant) -> bool:
    """Whether ``act_quant`` is an int8 mode; ValueError for an unknown one."""
    if act_quant not in ACT_QUANT_MODES:
        raise ValueError(f"act_quant must be None, 'int8' or 'int8-static', got "
                         f"{act_quant!r}")
    return act_quant is not None


def check_act_scale(act_scale) -> float | None:
    """A static activation scale as the kernel takes it: None, or a number whose float32
    is finite and > 0 (ValueError otherwise: a NaN, 0 or negative scale would silently
    turn the static mode dynamic, an infinite one zero every activation)."""
    if act_scale is None:
        return None
    if isinstance(act_scale, bool) or not isinstance(act_scale, (int, float, np.floating)):
        raise ValueError(f"act_scale must be a finite number > 0, got {act_scale!r}")
    with np.errstate(over="ignore"):  # an overflow to inf is refused just below
        as32 = float(np.float32(act_scale))
    if not (math.isfinite(as32) and as32 > 0):
        raise ValueError(f"act_scale must be a finite number > 0 that float32 holds, got "
                         f"{act_scale!r}")
    return as32


def _static_scale(weights, act_quant) -> float:
    """The int8 scale every activation block uses: 0 (dynamic, per block) unless
    act_quant is "int8-static", which needs the weight's calibrated ``act_scale``."""
    if act_quant != "int8-static":
        return 0.0
    if weights.act_scale is None:
        raise ValueError("act_quant='int8-static' needs a static activation scale: compress "
                         "the tensor with calibration (its act_range is stored then), or "
                         "use act_quant='int8'")
    return check_act_scale(weights.act_scale)


def _quantize_x(x2: np.ndarray, block: int, nt: int, static_scale: float = 0.0):
    """int8 blocks of x2: (xq (batch, n_in) int8, scales (batch, nb) f32, sums (batch, nb)),
    every block at ``static_scale`` when it is > 0."""
    return _k.quantize(x2, block, 0, nt, static_scale)


def dequantized_activations(x, block: int, static_scale: float = 0.0) -> np.ndarray:
    """What the int8 mode sees instead of x: x quantized per ``block`` columns to int8 and
    scaled back (float32, same shape as x); with ``static_scale`` > 0 every block uses that
    scale (values beyond 127 * static_scale clip). For tests and error analysis."""
    arr = np.asarray(x)
    x2 = np.ascontiguousarray(arr.reshape(-1, arr.shape[-1]), dtype=np.float32)
    xq, xs, _ = _quantize_x(x2, block, 1, static_scale)
    per_col = np.repeat(xs, block, axis=1)[:, :x2.shape[1]]
    return (xq.astype(np.float32) * per_col).reshape(arr.shape)


class FloatWeights:
    """The matmul interface over a matrix stored unquantized: numpy BLAS on float32.

    Used for raw (not quantized) floating tensors, so every CompressedTensor offers the
    same matmul and take_rows.
    """

    def __init__(self, w: np.ndarray):
        self.w = np.ascontiguousarray(w, dtype=np.float32)
        if self.w.ndim != 2:
            raise ValueError(f"w must be 2-D (n_out, n_in), got shape {self.w.shape}")
        self.shape = self.w.shape
        self.nbytes = self.w.nbytes
        self.act_scale: float | None = None  # unused: float weights take float x

    def dequantize(self) -> np.ndarray:
        """The float32 matrix (a copy)."""
        return self.w.copy()

    def matmul(self, x, act_quant: str | None = None, out: np.ndarray | None = None
               ) -> np.ndarray:
        """y = x @ W.T in float32; ``act_quant`` is checked and ignored (no codes to pair
        int8 activations with). Shapes and errors as LinearWeights.matmul."""
        _check_act_quant(act_quant)
        x2, y, y2 = _begin_product(x, out, self.shape)
        if y2 is not None:
            np.matmul(x2, self.w.T, out=y2)
        return y

    def take_rows(self, indices) -> np.ndarray:
        """W[indices] as float32 of shape indices.shape + (n_in,)."""
        flat, lead = _row_indices(indices, self.shape[0])
        return self.w[flat].reshape(lead + (self.shape[1],))


class _DenseWeights:
    """Shared machinery of LinearWeights and CodebookWeights (dense packed rows)."""

    _kind = LINEAR

    def __init__(self, *args, **kwargs):
        raise TypeError(f"build {type(self).__name__} with its from_packed classmethod")

    def _init(self, packed, bits, n_out, n_in, *, scales=None, zeros=None, prow=0,
              group=1, group_columns=None, codebook=None, cbrow=0, cb_u8=None,
              cb_scale=None):
        self.shape = (n_out, n_in)
        self.bits = bits
        self._arrays = [a for a in (packed, scales, zeros, codebook, cb_u8, cb_scale)
                        if a is not None]
        self._cb_scale = cb_scale
        self._block = int8_block_size(group_columns, n_in)
        # the kernel object holds the C description of the matrix; an empty matrix has
        # none (no product ever reaches a kernel)
        self._kernel = _k.DenseKernel(packed, bits, self._kind, n_in, scales, zeros, prow,
                                      group, codebook, cbrow, cb_u8, cb_scale
                                      ) if n_out and n_in else None
        # static int8 activation scale (act_quant="int8-static"), set by the owner
        self.act_scale: float | None = None

    @property
    def kind(self) -> str:
        """The encoding: "linear" or "codebook"."""
        return "codebook" if self._kind == CODEBOOK else "linear"

    @property
    def nbytes(self) -> int:
        """Bytes of memory held: packed codes plus parameters (a mapped file's pages count)."""
        return int(sum(a.nbytes for a in self._arrays))

    def kernel_paths(self, batch: int = 1) -> dict:
        """Which kernel each mode runs on for ``batch`` rows with the current variant
        (qpack.kernel_info()) when the kernels run (not tiles, see qpack.dispatch):
        {"float": name, "int8": name}, names "generic" or the variant's ("avx512",
        "avx512-any", "avx512-gemm" / "avx2-gemm" / "neon-gemm" for int8 batches from
        16)."""
        if self._kernel is None:
            return {"float": "none", "int8": "none"}
        return {"float": self._kernel.float_path,
                "int8": self._kernel.int8_path(self._block, max(1, int(batch)))}

    @property
    def int8_block(self) -> int:
        """Columns per activation block in the int8 mode (see int8_block_size)."""
        return self._block

    def dequantize(self) -> np.ndarray:
        """The full float32 matrix W_hat of shape (n_out, n_in) (for tests and reference)."""
        n_out, n_in = self.shape
        out = np.zeros((n_out, n_in), dtype=np.float32)
        if self._kernel is not None:
            self._kernel.dequantize_rows(0, out, get_num_threads())
        return out

    def matmul(self, x, act_quant: str | None = None, out: np.ndarray | None = None,
               path: str | None = None) -> np.ndarray:
        """y = x @ W_hat.T in float32.

        Parameters
        ----------
        x : float array of shape (n_in,) or (batch, n_in), any float dtype and strides
            (converted to C-contiguous float32). NaN and inf propagate.
        act_quant : None (float32 activations) or "int8" (per-block int8 activations and
            integer dot products; error bound in docs/KERNELS.md and int8_error_bound).
        out : optional float32 C-contiguous array of shape (n_out,) or (batch, n_out).
        path : None (the current DispatchPolicy decides, qpack.dispatch), "kernel" (the
            packed kernels) or "tiles" (dequantized tiles + BLAS); results agree to
            float32 rounding.

        Returns
        -------
        float32 array of shape (n_out,) or (batch, n_out).

        Raises
        ------
        ValueError: x not floating, not 1-D/2-D or of the wrong inner size; bad act_quant,
            out or path.
        """
        int8 = _check_act_quant(act_quant)
        static = _static_scale(self, act_quant)
        path = check_path(path)
        policy = get_policy()
        x2, y, y2 = _begin_product(x, out, self.shape)
        if y2 is None:
            return y
        plan = policy.dense_plan(self, x2.shape[0], int8, path)
        if plan.path == "tiles":
            # the int8 mode means int8-rounded activations on every path, so results do not
            # depend on which kernels this CPU has
            kernel = self._kernel
            _tiled_product(dequantized_activations(x2, self._block, static) if int8 else x2,
                           y2, self.shape, lambda r0, t: kernel.dequantize_rows(r0, t, 1),
                           plan.tile_rows)
        elif int8:
            self._kernel.matmul_int8(x2, y2, self._block, static, plan.threads)
        else:
            self._kernel.matmul_float(x2, y2, plan.threads)
        return y

    def take_rows(self, indices) -> np.ndarray:
        """W_hat[indices] as float32 of shape indices.shape + (n_in,), decoded row by row
        from the packed codes (an embedding lookup without materializing W_hat)."""
        flat, lead = _row_indices(indices, self.shape[0])
        out = np.empty((flat.size, self.shape[1]), dtype=np.float32)
        if flat.size and self.shape[1]:
            nt = get_policy().threads_for(flat.size * self.shape[1])
            self._kernel.gather_rows(flat, out, nt)
        return out.reshape(lead + (self.shape[1],))

    def int8_error_bound(self, x) -> np.ndarray:
        """Upper bound on |matmul(x, "int8") - x @ W_hat.T| per output (float64).

        sum_c |W_hat[r, c]| * scale_x(c) / 2, plus for codebooks sum_c |x_hat_c| *
        scale_cb(r) / 2 (the codebook's own int8 rounding), plus float32 rounding slack of
        1e-5 * sum_c |W_hat[r, c]| * |x_c|. Materializes W_hat: for tests and analysis.
        """
        n_out, n_in = self.shape
        x2, lead = _prepare_x(x, n_in)
        w = np.abs(self.dequantize().astype(np.float64))
        xs_full = self._x_scale_per_column(x2)
        bound = (xs_full / 2) @ w.T * (1 + 1e-6)
        bound += 1e-5 * (np.abs(x2.astype(np.float64)) @ w.T)
        if self._kind == CODEBOOK:
            xhat = np.abs(dequantized_activations(x2, self._block).astype(np.float64))
            cbs = self._cb_scale.astype(np.float64)
            cbs = np.broadcast_to(cbs if cbs.size == n_out else cbs[:1], (n_out,))
            bound += xhat.sum(axis=1, keepdims=True) * (cbs[None, :] / 2) * (1 + 1e-6)
            bound += 1e-5 * (xhat @ w.T)
        return bound.reshape(lead + (n_out,))

    def _x_scale_per_column(self, x2):
        nt = get_num_threads()
        _, xs, _ = _quantize_x(x2, self._block, nt)
        return np.repeat(xs.astype(np.float64), self._block, axis=1)[:, :x2.shape[1]]


class LinearWeights(_DenseWeights):
    """Linearly quantized packed weights: W_hat = (code - zero) * scale.

    Build with ``LinearWeights.from_packed``.
    """

    _kind = LINEAR

    @classmethod
    def from_packed(cls, packed, bits: int, scales, zeros, group_size: int | None,
                    shape: tuple[int, int]) -> LinearWeights:
        """Wrap packed linear codes (used in place, never written).

        Parameters
        ----------
        packed : uint8 (n_out, ceil(n_in*bits/8)), rows as written by qpack.pack.
        bits : 1..8.
        scales : float16/float32 of shape (1, 1) when group_size is None (per tensor),
            (n_out, 1) when -1 (per channel), (n_out, ceil(n_in/G)) when G > 0.
        zeros : uint8 of the same shape as scales.
        group_size : None, -1 or G > 0 (group g covers columns [g*G, min((g+1)*G, n_in))).
        shape : (n_out, n_in).

        Raises ValueError naming the argument that does not fit.
        """
        bits = check_bits(bits)
        n_out, n_in = _check_shape(shape)
        s32, z32, prow, group = _check_linear_params(scales, zeros, group_size, n_out, n_in)
        arr = _check_packed(packed, bits, n_out, n_in)
        self = cls.__new__(cls)
        cols = column_group(group_size)
        self.group_size = group_size
        self._init(arr, bits, n_out, n_in, scales=s32, zeros=z32, prow=prow, group=group,
                   group_columns=cols)
        return self

    def __repr__(self) -> str:
        return (f"LinearWeights(shape={self.shape}, bits={self.bits}, "
                f"group_size={self.group_size!r})")


class CodebookWeights(_DenseWeights):
    """K-means (weight-shared) packed weights: W_hat[r, c] = codebook[code] (or [r, code]).

    Build with ``CodebookWeights.from_packed``.
    """

    _kind = CODEBOOK

    @classmethod
    def from_packed(cls, packed, bits: int, codebook, shape: tuple[int, int]
                    ) -> CodebookWeights:
        """Wrap packed codebook codes (used in place, never written).

        Parameters
        ----------
        packed : uint8 (n_out, ceil(n_in*bits/8)), rows as written by qpack.pack.
        bits : 1..8.
        codebook : float32 (k,) shared or (n_out, k) per row, k <= 2**bits (normally
            k == 2**bits; with fewer entries every code is checked to be < k).
        shape : (n_out, n_in).

        Raises ValueError naming the argument that does not fit (including a code >= k).
        """
        bits = check_bits(bits)
        n_out, n_in = _check_shape(shape)
        cb = _check_codebook(codebook, n_out)
        k = cb.shape[1]
        if k > 1 << bits:
            raise ValueError(f"codebook has {k} entries, more than 2**bits = {1 << bits}")
        arr = _check_packed(packed, bits, n_out, n_in)
        if k < 1 << bits:
            _check_codes_below(arr, bits, n_in, k)
        padded = _pad_codebook(cb, max(16, 1 << bits))
        cb_u8, cb_scale = _codebook_int8(padded)
        self = cls.__new__(cls)
        self._shared = cb.shape[0] == 1 and np.ndim(codebook) == 1
        self._init(arr, bits, n_out, n_in, codebook=padded,
                   cbrow=0 if self._shared else padded.shape[1], cb_u8=cb_u8,
                   cb_scale=cb_scale, group_columns=None)
        return self

    def __repr__(self) -> str:
        return (f"CodebookWeights(shape={self.shape}, bits={self.bits}, "
                f"{'shared' if self._shared else 'per-row'} codebook)")


def _check_codes_below(packed: np.ndarray, bits: int, n_in: int, k: int) -> None:
    for r0 in range(0, packed.shape[0], _CHECK_ROWS):
        codes = unpack(packed[r0:r0 + _CHECK_ROWS], bits, n_in)
        if codes.size and int(codes.max()) >= k:
            raise ValueError(f"packed holds code {int(codes.max())}, but the codebook has "
                             f"only {k} entries")


class SparseWeights:
    """Pruned weights in CSR form with one uint8 code per kept weight.

    Build with ``SparseWeights.from_csr``. In memory: row pointers (int64), column
    indices (int32) and codes (uint8), plus the codebook or scales/zeros.
    """

    @classmethod
    def from_csr(cls, shape: tuple[int, int], row_ptr, cols, codes, *, codebook=None,
                 scales=None, zeros=None, group_size: int | None = None) -> SparseWeights:
        """Wrap a CSR matrix of codes.

        Parameters
        ----------
        shape : (n_out, n_in).
        row_ptr : integers (n_out + 1,), row_ptr[0] == 0, non-decreasing, last == nnz.
        cols : integers (nnz,), each in [0, n_in), strictly increasing within a row.
        codes : uint8 (nnz,), the code of each kept weight.
        codebook : float32 (k,) or (n_out, k): W_hat[r, c] = codebook[(r,) code]; codes < k.
        scales, zeros, group_size : instead of a codebook, linear parameters exactly as in
            LinearWeights.from_packed; a kept weight at (r, c) uses the group of column c.

        Raises ValueError naming the argument that does not fit.
        """
        n_out, n_in = _check_shape(shape)
        rp = np.asarray(row_ptr)
        if rp.dtype.kind not in "iu" or rp.shape != (n_out + 1,):
            raise ValueError(f"row_ptr must be integers of shape ({n_out + 1},), got "
                             f"{rp.dtype} {rp.shape}")
        rp = np.ascontiguousarray(rp, dtype=np.int64)
        c = np.asarray(cols)
        if c.ndim != 1 or (c.dtype.kind not in "iu" and c.size):  # [] arrives as float64
            raise ValueError(f"cols must be a 1-D integer array, got {c.dtype} {c.shape}")
        q = np.asarray(codes)
        if q.dtype != np.uint8 or q.ndim != 1:
            raise ValueError(f"codes must be a 1-D uint8 array, got {q.dtype} {q.shape}")
        nnz = c.shape[0]
        if q.shape[0] != nnz:
            raise ValueError(f"codes has {q.shape[0]} entries but cols has {nnz}")
        if rp[0] != 0 or rp[-1] != nnz:
            raise ValueError(f"row_ptr must start at 0 and end at nnz = {nnz}, got "
                             f"{int(rp[0])} .. {int(rp[-1])}")
        if n_out and (np.diff(rp) < 0).any():
            raise ValueError("row_ptr must be non-decreasing")
        if nnz:
            if int(c.min()) < 0 or int(c.max()) >= n_in:
                raise ValueError(f"cols must lie in [0, {n_in}), found {int(c.min())} .. "
                                 f"{int(c.max())}")
            steps = np.diff(c.astype(np.int64))
            inner = np.ones(max(nnz - 1, 0), dtype=bool)
            starts = rp[1:-1]
            starts = starts[(starts > 0) & (starts < nnz)]
            inner[starts - 1] = False
            if (steps[inner] <= 0).any():
                raise ValueError("cols must be strictly increasing within each row")
        self = cls.__new__(cls)
        self.shape = (n_out, n_in)
        self.nnz = nnz
        # fraction of weights kept (1.0 for an empty matrix: nothing to skip)
        self.density = nnz / (n_out * n_in) if n_out * n_in else 1.0
        if (codebook is None) == (scales is None):
            raise ValueError("pass either codebook or scales/zeros (exactly one encoding)")
        scales32 = zeros32 = padded = None
        prow, group, cbrow = 0, 1, 0
        if codebook is not None:
            if zeros is not None or group_size is not None:
                raise ValueError("zeros and group_size apply only to linear (scales) encoding")
            cb = _check_codebook(codebook, n_out)
            k = cb.shape[1]
            if nnz and int(q.max()) >= k:
                raise ValueError(f"codes must be < {k} (codebook entries), found {int(q.max())}")
            self._kind = CODEBOOK
            padded = _pad_codebook(cb, 16 if k <= 16 else 256)
            cbrow = 0 if np.ndim(codebook) == 1 else padded.shape[1]
            self._block = INT8_BLOCK
        else:
            if zeros is None:
                raise ValueError("zeros is required with scales")
            self._kind = LINEAR
            scales32, zeros32, prow, group = _check_linear_params(scales, zeros, group_size,
                                                                  n_out, n_in)
            g = column_group(group_size)
            self._block = int8_block_size(g, n_in)
        self.act_scale: float | None = None  # as for dense weights
        cols32 = np.ascontiguousarray(c, dtype=np.int32)
        codes8 = np.ascontiguousarray(q)
        self._arrays = [a for a in (rp, cols32, codes8, scales32, zeros32, padded)
                        if a is not None]
        # an empty matrix has no kernel (no product reaches one); otherwise the kernel
        # checks the CSR arrays once more (cheap) and holds their C description.
        # Without kept weights the kernel still gets one valid element to point at.
        self._kernel = _k.SparseKernel(
            rp, cols32 if nnz else np.zeros(1, np.int32), codes8 if nnz else
            np.zeros(1, np.uint8), n_in, self._kind, scales32, zeros32, prow, group, padded,
            cbrow) if n_out and n_in else None
        return self

    def __init__(self, *args, **kwargs):
        raise TypeError("build SparseWeights with SparseWeights.from_csr")

    def __repr__(self) -> str:
        return f"SparseWeights(shape={self.shape}, nnz={self.nnz})"

    @property
    def nbytes(self) -> int:
        """Bytes of memory held by the CSR arrays and the decoding parameters."""
        return int(sum(a.nbytes for a in self._arrays))

    @property
    def int8_block(self) -> int:
        """Columns per activation block in the int8 mode."""
        return self._block

    def dequantize(self) -> np.ndarray:
        """The full float32 matrix W_hat (n_out, n_in), zeros at pruned positions."""
        out = np.zeros(self.shape, dtype=np.float32)
        if self._kernel is not None:
            self._kernel.dequantize_rows(0, out, get_num_threads())
        return out

    def take_rows(self, indices) -> np.ndarray:
        """W_hat[indices] as float32 of shape indices.shape + (n_in,) (zeros where pruned)."""
        flat, lead = _row_indices(indices, self.shape[0])
        out = np.empty((flat.size, self.shape[1]), dtype=np.float32)
        if flat.size and self.shape[1]:
            nt = get_policy().threads_for(flat.size * self.shape[1])
            self._kernel.gather_rows(flat, out, nt)
        return out.reshape(lead + (self.shape[1],))

    def matmul(self, x, act_quant: str | None = None, out: np.ndarray | None = None,
               path: str | None = None) -> np.ndarray:
        """y = x @ W_hat.T in float32; arguments, shapes and errors as LinearWeights.matmul.

        In the int8 mode x is quantized per block exactly as for dense weights (same error
        bound), then the sparse kernel runs on the rounded activations in float32: a
        sparse product is bound by gathering x, not by multiply width, so integer
        arithmetic would not make it faster.
        """
        int8 = _check_act_quant(act_quant)
        static = _static_scale(self, act_quant)
        path = check_path(path)
        policy = get_policy()
        x2, y, y2 = _begin_product(x, out, self.shape)
        if y2 is None:
            return y
        batch = x2.shape[0]
        if int8:  # before choosing a path: every path sees the same rounded activations
            x2 = dequantized_activations(x2, self._block, static)
        plan = policy.sparse_plan(self, batch, path)
        if plan.path == "tiles":
            kernel = self._kernel
            # the kernel writes every element of each row, zeros included
            _tiled_product(x2, y2, self.shape,
                           lambda r0, tile: kernel.dequantize_rows(r0, tile, 1), plan.tile_rows)
            return y
        nt = plan.threads
        if batch >= SPARSE_BATCHED_MIN:
            # columns of x contiguous over the batch: one AXPY per kept weight
            self._kernel.matmul_batched(np.ascontiguousarray(x2.T), y2, nt)
        else:
            self._kernel.matmul(x2, y2, nt)
        return y

    def int8_error_bound(self, x) -> np.ndarray:
        """Upper bound on |matmul(x, "int8") - x @ W_hat.T| per output (float64):
        sum_c |W_hat[r, c]| * scale_x(c) / 2 plus 1e-5 * sum_c |W_hat[r, c]| |x_c|."""
        n_out, n_in = self.shape
        x2, lead = _prepare_x(x, n_in)
        w = np.abs(self.dequantize().astype(np.float64))
        _, xs, _ = _quantize_x(x2, self._block, 1)
        xs_full = np.repeat(xs.astype(np.float64), self._block, axis=1)[:, :n_in]
        bound = (xs_full / 2) @ w.T * (1 + 1e-6) + 1e-5 * (np.abs(x2.astype(np.float64)) @ w.T)
        return bound.reshape(lead + (n_out,))
