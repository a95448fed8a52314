"""Exact hand-over into ``compress``: keep-masks and pre-quantized tensors stored as given.

A caller that pruned or quantized a tensor itself (for example while retraining, as Deep
Compression does) passes ``masks={name: bool array}`` and/or a ``KMeansQuantized`` /
``LinearQuantized`` as the tensor's value. ``check_*`` validate them before any work;
``encode_prequantized`` stores the object's codes, codebook or scales and mask exactly, so
that the loaded tensor's ``dequantize()`` equals the object's bit for bit.
"""

from __future__ import annotations

import numpy as np

from qpack._validate import check_bits, group_layout, matrix_shape
from qpack.cluster import KMeansQuantized
from qpack.cluster import check_mask as cluster_check_mask  # the dtype/shape rule
from qpack.quantize import LinearQuantized

PREQUANTIZED = (KMeansQuantized, LinearQuantized)


def is_prequantized(value) -> bool:
    """True for the transform objects that ``compress`` stores as they are."""
    return isinstance(value, PREQUANTIZED)


def numel(value) -> int:
    """Element count of an array or a pre-quantized object."""
    if is_prequantized(value):
        return int(np.prod(value.shape, dtype=np.int64))
    return int(value.size)


def check_prequantized(name: str, q) -> None:
    """Check that a KMeansQuantized / LinearQuantized is internally consistent.

    Raises ValueError naming the tensor for: bad bits or shape, codes that are not
    integers below 2**bits or do not fill the shape, a codebook / scales / zeros of the
    wrong shape or dtype, non-finite parameters, or a symmetric LinearQuantized whose
    zero-points are not all 2**(bits-1) (a .qpk stores none for it: docs/FORMAT.md 4.3).
    """
    where = f"tensor {name!r} (a {type(q).__name__})"
    bits = check_bits(q.bits, f"{where}: bits")
    shape = tuple(q.shape)
    if len(shape) < 1 or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        raise ValueError(f"{where}: shape must be a tuple of non-negative ints, got {shape!r}")
    codes = np.asarray(q.codes)
    if codes.dtype.kind not in "iu" or codes.shape != shape:
        raise ValueError(f"{where}: codes must be an integer array of shape {shape}, got "
                         f"{codes.dtype} {codes.shape}")
    if codes.size == 0:
        raise ValueError(f"{where}: has no elements")
    if int(codes.min()) < 0 or int(codes.max()) >= 1 << bits:
        raise ValueError(f"{where}: codes must lie in 0..{(1 << bits) - 1}")
    rows, cols = matrix_shape(shape)
    if isinstance(q, KMeansQuantized):
        want = (rows, 1 << bits) if q.per_channel else (1 << bits,)
        cb = np.asarray(q.codebook)
        if cb.dtype.kind != "f" or cb.shape != want:
            raise ValueError(f"{where}: codebook must be floating of shape {want}, got "
                             f"{cb.dtype} {cb.shape}")
        if not np.isfinite(cb).all():
            raise ValueError(f"{where}: codebook holds NaN or Inf")
        if q.zero_code is not None:
            zc = q.zero_code
            if isinstance(zc, bool) or not isinstance(zc, (int, np.integer)) \
                    or not 0 <= zc < 1 << bits:
                raise ValueError(f"{where}: zero_code must be None or a code, got {zc!r}")
            zero_values = cb[..., int(zc)]
            if np.any(zero_values != 0):
                raise ValueError(f"{where}: codebook entry zero_code={zc} is not 0.0")
        return
    prow, ngroups, _ = group_layout(q.group_size, rows, cols)
    for field, kinds in (("scales", "f"), ("zeros", "u")):
        arr = np.asarray(getattr(q, field))
        if arr.dtype.kind not in kinds or arr.shape != (prow, ngroups):
            raise ValueError(f"{where}: {field} must be {'floating' if kinds == 'f' else 'uint8'}"
                             f" of shape {(prow, ngroups)}, got {arr.dtype} {arr.shape}")
    scales = np.asarray(q.scales)
    if scales.dtype not in (np.float16, np.float32):
        raise ValueError(f"{where}: scales must be float16 or float32, got {scales.dtype}")
    if not np.isfinite(scales).all():
        raise ValueError(f"{where}: scales hold NaN or Inf")
    if np.asarray(q.zeros).dtype != np.uint8:
        raise ValueError(f"{where}: zeros must be uint8, got {np.asarray(q.zeros).dtype}")
    if q.symmetric not in (True, False):
        raise ValueError(f"{where}: symmetric must be True or False, got {q.symmetric!r}")
    if q.symmetric:
        half = 1 << (bits - 1)
        if bits < 2 or np.any(np.asarray(q.zeros) != half):
            raise ValueError(f"{where}: a symmetric tensor's zero-points must all be "
                             f"2**(bits-1) = {half} with bits >= 2 (the file stores none); "
                             "use symmetric=False to store other zero-points")


def check_mask(name: str, mask, value) -> np.ndarray:
    """A keep-mask for tensor ``name``: bool, of the tensor's shape; for a pre-quantized
    tensor every removed position must already decode to exactly 0.0."""
    m = cluster_check_mask(mask, tuple(value.shape), f"masks[{name!r}]")
    if is_prequantized(value):
        removed = ~m
        if isinstance(value, KMeansQuantized):
            if value.zero_code is None:
                if removed.any():
                    raise ValueError(f"masks[{name!r}] removes weights, but the "
                                     "KMeansQuantized has no zero_code to decode them to 0")
            elif np.any(np.asarray(value.codes)[removed] != value.zero_code):
                raise ValueError(f"masks[{name!r}] removes weights whose code is not the "
                                 f"zero_code {value.zero_code}")
        elif removed.any() and np.any(np.asarray(value.dequantize(np.float32))[removed] != 0):
            raise ValueError(f"masks[{name!r}] removes weights that the LinearQuantized does "
                             "not decode to 0.0 (their code must be the zero-point)")
    return m


def implied_mask(q) -> np.ndarray | None:
    """The keep-mask a pre-quantized object carries by itself: a KMeansQuantized's
    positions coded ``zero_code`` are the pruned ones (None when nothing is pruned)."""
    if isinstance(q, KMeansQuantized) and q.zero_code is not None:
        mask = np.asarray(q.codes) != q.zero_code
        return None if mask.all() else mask
    return None
