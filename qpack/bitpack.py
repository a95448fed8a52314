"""Public bit packing: ``pack`` and ``unpack`` b-bit integer codes (1 <= b <= 8).

This module validates and allocates; the loops run in ``qpack._kernels.bitpack``.
The layout is the project's storage layout (docs/FORMAT.md): an LSB-first bitstream where
code i occupies stream bits i*b .. i*b+b-1 and stream bit k is bit (k mod 8) of byte
k div 8. A 2-D array is packed row by row; every row starts on a byte boundary.
"""

from __future__ import annotations

import numpy as np

from qpack._kernels import bitpack as _k
from qpack._validate import check_bits
from qpack.threads import get_num_threads


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes needed for ``count`` codes of ``bits`` bits: ceil(count * bits / 8)."""
    return (int(count) * int(bits) + 7) // 8


def _codes_as_uint8(codes, bits: int) -> np.ndarray:
    """Return integer codes as a C-contiguous 1-D or 2-D uint8 array (no copy if possible).

    Wider dtypes are range-checked here, before the narrowing cast could wrap them; uint8
    codes are range-checked by the packing kernel itself, which ORs every code it reads.
    """
    arr = np.asarray(codes)
    if arr.ndim not in (1, 2):
        raise ValueError(f"codes must be 1-D or 2-D, got {arr.ndim}-D with shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"codes must have an integer dtype, got {arr.dtype}")
    if arr.dtype != np.uint8:
        if arr.size:
            if arr.dtype.kind == "i":
                lo = int(arr.min())
                if lo < 0:
                    raise ValueError(f"codes must be non-negative, found {lo}")
            hi = int(arr.max())
            if hi >= 1 << bits:
                raise ValueError(f"codes must be < 2**{bits} = {1 << bits}, found {hi}")
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def _threads_for(ncodes: int) -> int:
    """Thread count for a call on ``ncodes`` codes: small calls stay on this thread (and
    skip get_num_threads, which costs a system call)."""
    return get_num_threads() if ncodes >= _k.PARALLEL_MIN_CODES else 1


def _check_out(out, shape: tuple, what: str, source: np.ndarray) -> np.ndarray:
    """Check a caller's ``out`` buffer: uint8, exactly ``shape``, C-contiguous, writeable,
    and not overlapping ``source`` (the kernels read and write through restrict pointers)."""
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != np.uint8:
        raise ValueError(f"out must have dtype uint8, got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape} for these {what}, got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    if np.may_share_memory(out, source):
        raise ValueError(f"out must not overlap the input {what}")
    return out


def pack(codes, bits: int, out: np.ndarray | None = None) -> np.ndarray:
    """Pack integer codes into an LSB-first bitstream of ``bits`` bits per code.

    Parameters
    ----------
    codes : array_like of integers, 1-D (n,) or 2-D (rows, ncols)
        Any integer dtype, any strides; every value must lie in [0, 2**bits).
    bits : int in 1..8
    out : optional uint8 C-contiguous array of the result's shape, reused for the output.

    Returns
    -------
    uint8 array of shape (ceil(n*bits/8),) or (rows, ceil(ncols*bits/8)).

    Raises
    ------
    ValueError: bits outside 1..8; float, negative or too-large codes; not 1-D or 2-D;
        an ``out`` of the wrong dtype, shape or layout. When uint8 codes turn out to be
        too large, ``out`` has already been written and its contents are unspecified.

    Example
    -------
    >>> pack([1, 2, 3], 4).tolist()
    [33, 3]
    """
    bits = check_bits(bits)
    arr = _codes_as_uint8(codes, bits)
    rows2d = arr.reshape(1, -1) if arr.ndim == 1 else arr
    nbytes = packed_nbytes(rows2d.shape[1], bits)
    shape = (nbytes,) if arr.ndim == 1 else (arr.shape[0], nbytes)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    else:
        _check_out(out, shape, "codes", arr)
    seen = _k.pack_rows(rows2d, out.reshape(rows2d.shape[0], nbytes), bits,
                        _threads_for(arr.size))
    if seen >> bits:
        hi = int(arr.max())
        raise ValueError(f"codes must be < 2**{bits} = {1 << bits}, found {hi}")
    return out


def unpack(packed, bits: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
    """Unpack ``count`` codes of ``bits`` bits from an LSB-first bitstream (inverse of ``pack``).

    Parameters
    ----------
    packed : uint8 array or bytes-like object, 1-D (at least ceil(count*bits/8) bytes;
        extra bytes are ignored) or 2-D (rows, ceil(count*bits/8)): then each row holds
        ``count`` codes.
    bits : int in 1..8
    count : number of codes (per row, for 2-D input).
    out : optional uint8 C-contiguous array of shape (count,) or (rows, count).

    Returns
    -------
    uint8 array of shape (count,) or (rows, count).

    Raises
    ------
    ValueError: bits outside 1..8, negative count, non-uint8 or >2-D input, a buffer too
        short for ``count`` codes, or a bad ``out``. Padding bits after a row's last code
        are ignored, whatever their value.
    """
    bits = check_bits(bits)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    count = int(count)
    if isinstance(packed, (bytes, bytearray, memoryview)):
        packed = np.frombuffer(packed, dtype=np.uint8)
    arr = np.asarray(packed)
    if arr.dtype != np.uint8:
        raise ValueError(f"packed must have dtype uint8, got {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"packed must be 1-D or 2-D, got {arr.ndim}-D with shape {arr.shape}")
    need = packed_nbytes(count, bits)
    if arr.ndim == 1:
        if arr.shape[0] < need:
            raise ValueError(
                f"packed buffer holds {arr.shape[0]} bytes, but {count} codes of {bits} bits "
                f"need {need}")
        rows2d = np.ascontiguousarray(arr[:need]).reshape(1, need)
        shape = (count,)
    else:
        if arr.shape[1] != need:
            raise ValueError(
                f"packed rows hold {arr.shape[1]} bytes, but {count} codes of {bits} bits "
                f"per row need exactly {need}")
        rows2d = np.ascontiguousarray(arr)
        shape = (arr.shape[0], count)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    else:
        _check_out(out, shape, "packed bytes", rows2d)
    _k.unpack_rows(rows2d, out.reshape(rows2d.shape[0], count), bits,
                   _threads_for(rows2d.shape[0] * count))
    return out
