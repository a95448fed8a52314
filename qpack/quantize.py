"""Linear (uniform) quantization of a float tensor to 1-8-bit integer codes.

A weight tensor is viewed as a matrix (rows, cols): a >=2-D array as (shape[0],
prod(shape[1:])), a 1-D array as (1, n). Each row is cut into groups of ``group_size``
consecutive columns (the last group may be shorter); every group gets a scale and an
integer zero-point, and one formula decodes every variant:

    w_hat[r, c] = (float32(codes[r, c]) - float32(zeros[r, c // G])) * float32(scales[r, c // G])

Scales are stored in ``scale_dtype`` (float16 by default) and the codes are computed
against the stored, rounded scales, so the error the caller measures is the error the
decoder produces. A ``.qpk`` file (format version 3) stores asymmetric zero-points packed
at the code width and symmetric ones not at all (``zeros_storage``). This module also
holds ``check_weights``, the input validation shared by every transform (pruning, linear
and K-means quantization).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qpack._kernels import quantize as _kq
from qpack._validate import as_matrix, check_bits, check_group_size, group_layout, matrix_shape
from qpack.bitpack import packed_nbytes
from qpack.threads import get_num_threads

CLIP_METHODS = ("minmax", "percentile", "mse")
# Clipping ratios tried by clip="mse": the kept range is ratio * (min, max) of the group.
MSE_RATIOS = np.linspace(1.0, 0.3, 36)
# quantize_linear works on blocks of rows of about this many weights (bounded temporaries)
ROW_BLOCK_ELEMENTS = 1 << 20


def check_weights(w, name: str = "w") -> np.ndarray:
    """Return ``w`` as a floating ndarray after checking it is usable as weights.

    Accepts float16/float32/float64 arrays and anything numpy converts to a floating array
    (nested lists of floats, ...). Returns the array itself (no copy) when it already is one.

    Raises ValueError naming ``name`` for: a non-floating dtype (integers, bools, complex,
    objects), an empty array, a 0-d scalar, or any NaN or Inf.
    """
    try:
        arr = np.asarray(w)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be convertible to a floating numpy array: {exc}") from None
    if arr.dtype.kind != "f":
        raise ValueError(f"{name} must have a floating dtype (float16/32/64), got {arr.dtype}")
    if arr.dtype.itemsize > 8:
        raise ValueError(f"{name} must be float16, float32 or float64, got {arr.dtype}")
    if arr.ndim == 0:
        raise ValueError(f"{name} must be an array with at least one dimension, got a scalar")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = "NaN" if np.isnan(arr).any() else "Inf"
        raise ValueError(f"{name} contains {bad}; weights must be finite")
    return arr


# A packed section is 64-byte aligned (docs/FORMAT.md, 4.1), so packing zero-points pays
# only when it saves at least that much; else they stay raw uint8.
PACKED_ZEROS_MIN_SAVING = 64


def zeros_storage(zeros: np.ndarray, bits: int, symmetric: bool) -> tuple[str | None, int]:
    """How a version-3 ``.qpk`` stores these zero-points: (codec, bytes).

    ``(None, 0)`` when symmetric (the zero-points are 2**(bits-1) by definition);
    ``("packed", prow * ceil(ngroups * bits / 8))`` for (prow, ngroups) zero-points that
    all fit ``bits`` bits when that saves at least PACKED_ZEROS_MIN_SAVING bytes over raw;
    else ``("raw", prow * ngroups)`` (uint8). The one rule for the writer and the
    accounting (``LinearQuantized.nbytes_params``).
    """
    if symmetric:
        return None, 0
    z = np.asarray(zeros)
    prow, ngroups = z.shape
    raw = prow * ngroups
    packed = prow * packed_nbytes(ngroups, bits)
    if raw - packed >= PACKED_ZEROS_MIN_SAVING and (z.size == 0 or int(z.max()) < 1 << bits):
        return "packed", packed
    return "raw", raw


def _check_scale_dtype(scale_dtype) -> np.dtype:
    try:
        dt = np.dtype(scale_dtype)
    except TypeError:
        raise ValueError(
            f"scale_dtype must be float16, float32 or float64, got {scale_dtype!r}") from None
    if dt not in (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"scale_dtype must be float16, float32 or float64, got {dt}")
    return dt


@dataclass(frozen=True)
class LinearQuantized:
    """A linearly quantized tensor: uint8 codes, per-group scales and zero-points.

    Fields
    ------
    codes : uint8 ndarray of ``shape``; every code < 2**bits.
    scales : ndarray (rows, ngroups) of the scale dtype (float16 by default).
    zeros : uint8 ndarray (rows, ngroups): integer zero-points (2**(bits-1) everywhere when
        symmetric, which a .qpk file therefore does not store). 0.0 is always exactly
        representable: code == zero decodes to 0.0.
    bits : code width, 1..8.
    group_size : None (one group for the tensor), -1 (one per row) or G (groups of G
        consecutive columns; group g covers columns [g*G, min((g+1)*G, cols))).
    symmetric : whether the codes are q + 2**(bits-1) with |q| <= 2**(bits-1) - 1.
    shape : the original tensor shape.
    """

    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    bits: int
    group_size: int | None
    symmetric: bool
    shape: tuple

    @property
    def group_width(self) -> int:
        """Columns per group G in the decode formula (rows*cols per tensor, cols per row,
        else min(group_size, cols)): ``_validate.group_layout``, the one rule."""
        return group_layout(self.group_size, *matrix_shape(self.shape))[2]

    def dequantize_rows(self, start: int, stop: int, dtype=np.float32) -> np.ndarray:
        """Rows [start, stop) of the (rows, cols) matrix view, decoded as ``dequantize``
        decodes them (so large tensors can be decoded a block of rows at a time)."""
        rows, cols = matrix_shape(self.shape)
        codes = self.codes.reshape(rows, cols)[start:stop]
        if self.group_size is None:
            part = LinearQuantized(codes, self.scales, self.zeros, self.bits, None,
                                   self.symmetric, codes.shape)
        else:
            part = LinearQuantized(codes, self.scales[start:stop], self.zeros[start:stop],
                                   self.bits, self.group_size, self.symmetric, codes.shape)
        return part.dequantize(dtype)

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """Decode to an array of ``shape``: (codes - zeros) * scales in float32, then ``dtype``."""
        rows, cols = matrix_shape(self.shape)
        if self.group_size is None:
            # One group over the whole tensor: the (1, 1) parameters apply everywhere.
            c = self.codes.reshape(-1).astype(np.float32)
            out = (c - self.zeros.astype(np.float32)[0, 0]) * self.scales.astype(np.float32)[0, 0]
            return out.reshape(self.shape).astype(dtype, copy=False)
        g = self.group_width
        z = self.zeros.astype(np.float32)
        s = self.scales.astype(np.float32)
        codes = self.codes.reshape(rows, cols)
        if cols % g == 0:
            # Whole groups only: broadcast the parameters instead of repeating them.
            c = codes.reshape(rows, cols // g, g).astype(np.float32)
            out = (c - z[..., None]) * s[..., None]
        else:
            out = (codes.astype(np.float32) - np.repeat(z, g, axis=1)[:, :cols]) \
                * np.repeat(s, g, axis=1)[:, :cols]
        return out.reshape(self.shape).astype(dtype, copy=False)

    @property
    def nbytes_params(self) -> int:
        """Bytes a ``.qpk`` file (format version 3) pays for the parameters.

        The scales in their dtype (float16 or float32; a .qpk holds no float64 scales, which
        count their own 8 bytes here) plus the zero-points as ``zeros_storage`` stores them:
        packed at ``bits`` bits, raw uint8 when packing would not save a section's
        alignment, nothing when symmetric (their zero-points are the constant 2**(bits-1)).
        """
        return int(self.scales.nbytes + zeros_storage(self.zeros, self.bits,
                                                      self.symmetric)[1])

    @property
    def bits_per_weight(self) -> float:
        """Storage cost per weight: ``bits`` plus the parameters spread over every weight."""
        size = int(np.prod(self.shape))
        return self.bits + 8.0 * self.nbytes_params / size


_UINT_OF_SIZE = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def round_scale_up(scale: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round non-negative scales to ``dtype`` without ever going below the exact value
    (0 stays 0).

    A scale rounded down would shrink the representable range and clip the extreme value;
    rounding up keeps every value within half a step of a code. Raises ValueError when a
    scale overflows ``dtype`` (too wide a range for float16, say) or is negative (the
    rounding step below is only right for values >= 0).
    """
    if scale.size and not scale.min() >= 0:
        raise ValueError("round_scale_up takes scales >= 0")
    with np.errstate(over="ignore"):  # overflow is reported below, by name
        s = scale.astype(dtype)
    low = s.astype(scale.dtype) < scale
    if low.any():
        # the next value up: for s >= 0 (scale > s >= 0 here) that is the bit pattern
        # plus one (0 -> the smallest subnormal, the largest finite -> inf, reported
        # below); np.nextafter on float16 is emulated and masked indexing copies twice
        s.view(_UINT_OF_SIZE[s.dtype.itemsize])[...] += low
    if not np.isfinite(s).all():
        raise ValueError(
            f"scale_dtype {dtype} cannot hold a scale of {float(scale.max()):.4g}; the "
            "weight range is too wide (use scale_dtype=np.float32)")
    return s


def _group_params(gmin: np.ndarray, gmax: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  bits: int, symmetric: bool, sdt: np.dtype, work):
    """Scales (rounded up to ``sdt``) and zero-points for groups with ranges [lo, hi].

    gmin/gmax: each group's true min and max; lo <= 0 <= hi, with any extra trailing axes
    (one entry per clipping candidate). A group whose values are all one constant c != 0
    gets scale |c| and a code one step from the zero-point, so it decodes exactly when |c|
    is representable in ``sdt``; an all-zero group gets scale 0.
    Returns (stored scales in sdt, the same as ``work``, int32 zero-points).
    """
    extra = lo.ndim - gmin.ndim
    gmin = gmin.reshape(gmin.shape + (1,) * extra)
    gmax = gmax.reshape(gmax.shape + (1,) * extra)
    if symmetric:
        scale = np.maximum(-lo, hi) / ((1 << (bits - 1)) - 1)
    else:
        scale = (hi - lo) / ((1 << bits) - 1)
    const = (gmin == gmax) & (gmin != 0)
    scale = np.where(const, np.abs(gmin), scale).astype(work)
    # scale >= 0 (hi >= 0 >= lo): zeros stay 0, positive ones round up
    s_store = round_scale_up(scale, np.dtype(sdt))
    s = s_store.astype(work)
    if symmetric:
        zero = np.full(scale.shape, 1 << (bits - 1), dtype=np.int32)
    else:
        safe = np.where(s > 0, s, 1).astype(work)
        zero = np.clip(np.rint(-lo / safe), 0, (1 << bits) - 1).astype(np.int32)
        # A negative constant decodes as (0 - 1) * |c|: put its zero-point at 1.
        zero = np.where(const & (gmin < 0), 1, np.where(const, 0, zero)).astype(np.int32)
    return s_store, s, zero


def _codes_for(blk: np.ndarray, s: np.ndarray, zero: np.ndarray, bits: int,
               symmetric: bool) -> np.ndarray:
    """Integer codes of ``blk`` (..., G) against per-group scales ``s`` and zero-points."""
    work = blk.dtype
    inv = np.where(s > 0, 1 / np.where(s > 0, s, 1), 0).astype(work)
    q = np.rint(blk * inv[..., None])
    if symmetric:
        half = (1 << (bits - 1)) - 1
        np.clip(q, -half, half, out=q)
        q += zero[..., None].astype(work)
    else:
        q += zero[..., None].astype(work)
        np.clip(q, 0, (1 << bits) - 1, out=q)
    return q.astype(np.uint8)


def group_params(blk: np.ndarray, bits: int, symmetric: bool, clip: str,
                 percentile: float, sdt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Stored scales (``sdt``) and int32 zero-points of the groups of ``blk`` (..., G).

    The one rule for a group's parameters under every clip mode (arguments already
    validated): quantize_linear uses it, and so does error-compensated quantization
    (qpack/gptq.py), which fits each group on its error-updated weights.
    """
    work = blk.dtype
    gmin = blk.min(axis=-1)
    gmax = blk.max(axis=-1)
    if clip == "percentile":
        if symmetric:
            amax = np.percentile(np.abs(blk), percentile, axis=-1)
            lo, hi = -amax, amax
        else:
            lo = np.percentile(blk, 100.0 - percentile, axis=-1)
            hi = np.percentile(blk, percentile, axis=-1)
        lo = np.minimum(lo, 0).astype(work)
        hi = np.maximum(hi, 0).astype(work)
    else:
        lo = np.minimum(gmin, 0)
        hi = np.maximum(gmax, 0)
    if clip != "mse":
        s_store, _, zero = _group_params(gmin, gmax, lo, hi, bits, symmetric, sdt, work)
        return s_store, zero
    # Every clipping ratio of the min/max range is a candidate (scale, zero-point),
    # rounded exactly as it would be stored; the kernel measures each candidate's
    # decoded squared error and each group keeps its best (ratio 1.0 wins ties).
    ratios = MSE_RATIOS.astype(work)
    cand_s, _, cand_z = _group_params(gmin, gmax, lo[..., None] * ratios,
                                      hi[..., None] * ratios, bits, symmetric, sdt, work)
    nc = ratios.size
    err = np.empty((gmin.size, nc))
    groups = np.ascontiguousarray(blk).reshape(gmin.size, -1)
    cmin = 1 if symmetric else 0
    _kq.candidate_errors(groups, cand_s.astype(np.float32).reshape(-1, nc),
                         cand_z.astype(np.float32).reshape(-1, nc), err, cmin,
                         (1 << bits) - 1, get_num_threads() if blk.size >= 1 << 16 else 1)
    best = np.argmin(err, axis=1).reshape(gmin.shape)[..., None]
    s_store = np.take_along_axis(cand_s, best, axis=-1)[..., 0]
    zero = np.take_along_axis(cand_z, best, axis=-1)[..., 0]
    return s_store, zero


def _quantize_block(blk: np.ndarray, bits: int, symmetric: bool, clip: str,
                    percentile: float, sdt: np.dtype):
    """Quantize a block (rows, ngroups, G) group by group: returns codes, scales, zeros."""
    s_store, zero = group_params(blk, bits, symmetric, clip, percentile, sdt)
    return _codes_for(blk, s_store.astype(blk.dtype), zero, bits, symmetric), s_store, zero


def check_linear_options(bits, symmetric, clip, percentile, scale_dtype
                         ) -> tuple[int, bool, str, float, np.dtype]:
    """Validated (bits, symmetric, clip, percentile, scale dtype) of a linear quantizer.

    Raises ValueError naming the argument, with the rules of ``quantize_linear``.
    """
    bits = check_bits(bits)
    if symmetric not in (True, False):
        raise ValueError(f"symmetric must be a bool, got {symmetric!r}")
    symmetric = bool(symmetric)
    if symmetric and bits == 1:
        raise ValueError("bits=1 has no symmetric range +-(2**(bits-1)-1) = 0; use "
                         "symmetric=False or bits >= 2")
    if clip not in CLIP_METHODS:
        raise ValueError(f"clip must be one of {CLIP_METHODS}, got {clip!r}")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float, np.number)) \
            or not 50.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be a number in (50, 100], got {percentile!r}")
    return bits, symmetric, clip, float(percentile), _check_scale_dtype(scale_dtype)


def quantize_linear(w, bits: int, *, group_size: int | None = None, symmetric: bool = False,
                    clip: str = "minmax", percentile: float = 99.9,
                    scale_dtype=np.float16) -> LinearQuantized:
    """Quantize a float tensor to ``bits``-bit integer codes with per-group scales.

    Parameters
    ----------
    w : float16/32/64 array_like, any shape with at least one element; viewed as (rows, cols)
        = (shape[0], prod(shape[1:])) or (1, n) for 1-D.
    bits : int in 1..8.
    group_size : None = one scale for the whole tensor; -1 = one per row (output channel);
        G > 0 = one per G consecutive columns of a row (the last group of a row may be
        shorter; G > cols gives one group per row).
    symmetric : False: asymmetric, codes 0..2**bits-1 with an integer zero-point chosen so
        0.0 is exact. True: q in [-(2**(bits-1)-1), 2**(bits-1)-1] stored as q + 2**(bits-1)
        (bits=1 has no such range and raises ValueError).
    clip : "minmax" (range = [min, max] of the group, widened to include 0; the scale is
        rounded up so nothing is clipped and every element is within scale/2 of its decoded
        value), "percentile" (range from the ``percentile``-th percentile of each group, or of
        |w| when symmetric), "mse" (searches clipping ratios 1.0..0.3 of the minmax range per
        group and keeps the one with the smallest squared error).
    percentile : float in (50, 100], used by clip="percentile".
    scale_dtype : float16 (default), float32 or float64 (a .qpk file holds float16 or
        float32 scales only, so ``compress`` refuses float64).

    Returns
    -------
    LinearQuantized; ``.dequantize()`` decodes it.

    Raises
    ------
    ValueError naming the argument: non-float, empty, NaN/Inf weights; bits outside 1..8;
    symmetric with bits=1; bad group_size, clip, percentile or scale_dtype; a scale that
    overflows scale_dtype.

    Constant groups decode exactly when the constant is representable in ``scale_dtype``
    (for float16 scales, e.g. 0.5 or 3.0, not 0.3); all-zero groups always decode to 0.
    """
    arr = check_weights(w)
    bits, symmetric, clip, percentile, sdt = check_linear_options(bits, symmetric, clip,
                                                                  percentile, scale_dtype)
    rows, cols = matrix_shape(arr.shape)
    group_size = check_group_size(group_size)
    work = np.float64 if arr.dtype == np.float64 else np.float32
    mat = as_matrix(arr).astype(work, copy=False)
    _, _, g = group_layout(group_size, rows, cols)
    if group_size is None:
        mat = mat.reshape(1, -1)  # one group of rows*cols columns
    # Rows are quantized independently, so blocks of rows give the same result while the
    # temporaries (36 clipping candidates per group with clip="mse") stay a few MB.
    step = max(1, ROW_BLOCK_ELEMENTS // max(mat.shape[1], 1))
    codes = np.empty(mat.shape, dtype=np.uint8)
    params = []
    for r0 in range(0, mat.shape[0], step):
        block_codes, block_scales, block_zeros = _quantize_rows(
            mat[r0:r0 + step], g, bits, symmetric, clip, float(percentile), sdt)
        codes[r0:r0 + step] = block_codes
        params.append((block_scales, block_zeros))
    scales = np.concatenate([p[0] for p in params], axis=0).astype(sdt, copy=False)
    zeros = np.concatenate([p[1] for p in params], axis=0).astype(np.uint8)
    return LinearQuantized(codes=codes.reshape(arr.shape), scales=scales, zeros=zeros,
                           bits=bits, group_size=group_size, symmetric=symmetric,
                           shape=tuple(arr.shape))


def _quantize_rows(mat: np.ndarray, g: int, bits: int, symmetric: bool, clip: str,
                   percentile: float, sdt: np.dtype):
    """(codes (rows, cols) uint8, scales (rows, ngroups), zeros) of a block of rows in
    groups of g columns (the last group may be shorter)."""
    nfull = mat.shape[1] // g
    parts = []
    if nfull:
        blk = mat[:, :nfull * g].reshape(mat.shape[0], nfull, g)
        parts.append(_quantize_block(blk, bits, symmetric, clip, percentile, sdt))
    if nfull * g < mat.shape[1]:
        blk = mat[:, nfull * g:].reshape(mat.shape[0], 1, -1)
        parts.append(_quantize_block(blk, bits, symmetric, clip, percentile, sdt))
    if len(parts) == 1:
        return parts[0][0].reshape(mat.shape[0], -1), parts[0][1], parts[0][2]
    return (np.concatenate([p[0].reshape(mat.shape[0], -1) for p in parts], axis=1),
            np.concatenate([p[1] for p in parts], axis=1),
            np.concatenate([p[2] for p in parts], axis=1))
