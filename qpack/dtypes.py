"""The dtypes qpack stores, by name, including bfloat16 when ``ml_dtypes`` is installed.

Files name dtypes with the strings below (a whitelist: nothing else is ever turned into a
numpy dtype from a file). bfloat16 needs the optional ``ml_dtypes`` package to be returned
as such; without it a bfloat16 tensor is widened losslessly to float32.
"""

from __future__ import annotations

import numpy as np

try:  # optional: only to hand bfloat16 arrays back as bfloat16
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - depends on the environment
    _ml_dtypes = None

_PLAIN = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "float32", "float64")
DTYPE_NAMES = frozenset(_PLAIN + ("bfloat16",))


def has_bfloat16() -> bool:
    """True when ml_dtypes is importable, so bfloat16 arrays can be represented."""
    return _ml_dtypes is not None


def dtype_name(dtype) -> str:
    """Return the stored name of a numpy dtype; ValueError if qpack cannot store it."""
    dt = np.dtype(dtype)
    if _ml_dtypes is not None and dt == np.dtype(_ml_dtypes.bfloat16):
        return "bfloat16"
    if dt.name in _PLAIN:
        return dt.name
    raise ValueError(f"dtype {dt} is not supported (supported: {', '.join(sorted(DTYPE_NAMES))})")


def is_floating_name(name: str) -> bool:
    """True for the floating dtypes (the ones compress may quantize)."""
    return name in ("float16", "float32", "float64", "bfloat16")


def itemsize(name: str) -> int:
    """Bytes per element of a stored dtype name."""
    return 2 if name == "bfloat16" else np.dtype(name).itemsize


def storage_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype used to view stored bytes (bfloat16 as raw uint16)."""
    if name == "bfloat16":
        return np.dtype("<u2")
    if name not in _PLAIN:
        raise ValueError(f"unknown dtype name {name!r}")
    return np.dtype(name).newbyteorder("<") if np.dtype(name).itemsize > 1 else np.dtype(name)


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bit patterns (uint16) to float32 exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def from_storage(raw: np.ndarray, name: str) -> np.ndarray:
    """Turn an array viewed with ``storage_dtype(name)`` into the user-facing array.

    bfloat16 comes back as ml_dtypes.bfloat16 when installed, else widened to float32.
    """
    if name == "bfloat16":
        if _ml_dtypes is not None:
            return raw.view(_ml_dtypes.bfloat16)
        return bfloat16_bits_to_float32(raw)
    return raw.astype(np.dtype(name), copy=False)


def to_storage(arr: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian array whose bytes are what a file stores for ``arr``."""
    name = dtype_name(arr.dtype)
    if name == "bfloat16":
        return np.ascontiguousarray(arr).view(np.uint16).astype("<u2", copy=False)
    return np.ascontiguousarray(arr, dtype=storage_dtype(name))


def cast_to(arr: np.ndarray, name: str) -> np.ndarray:
    """Cast a float32 reconstruction to the stored dtype ``name`` (bfloat16 rounds to nearest)."""
    if name == "bfloat16":
        if _ml_dtypes is not None:
            return arr.astype(_ml_dtypes.bfloat16)
        return arr.astype(np.float32, copy=False)
    return arr.astype(np.dtype(name), copy=False)
