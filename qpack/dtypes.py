"""The dtypes qpack stores, by name, including bfloat16.

Files name dtypes with the strings below (a whitelist: nothing else is ever turned into a
numpy dtype from a file). bfloat16 arrays are ``ml_dtypes.bfloat16`` (a runtime
dependency, the dtype PyTorch and JAX interoperate with). ml_dtypes takes over a second
to import, so it is imported only when a bfloat16 tensor is actually met.
"""

from __future__ import annotations

import numpy as np

_PLAIN = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "float32", "float64")
DTYPE_NAMES = frozenset(_PLAIN + ("bfloat16",))


def bfloat16() -> np.dtype:
    """The numpy bfloat16 dtype (imports ml_dtypes on first use)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def dtype_name(dtype) -> str:
    """Return the stored name of a numpy dtype; ValueError if qpack cannot store it."""
    dt = np.dtype(dtype)
    # an array can only have ml_dtypes' bfloat16 if ml_dtypes is loaded already, so the
    # name test needs no import; the identity test rules out a foreign dtype of that name
    if dt.name == "bfloat16" and dt == bfloat16():
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


def from_storage(raw: np.ndarray, name: str) -> np.ndarray:
    """Turn an array viewed with ``storage_dtype(name)`` into the user-facing array
    (bfloat16: a view of the uint16 bits as ml_dtypes.bfloat16)."""
    if name == "bfloat16":
        return raw.view(bfloat16())
    return raw.astype(np.dtype(name), copy=False)


def to_storage(arr: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian array whose bytes are what a file stores for ``arr``."""
    name = dtype_name(arr.dtype)
    if name == "bfloat16":
        return np.ascontiguousarray(arr).view(np.uint16).astype("<u2", copy=False)
    return np.ascontiguousarray(arr, dtype=storage_dtype(name))


def cast_to(arr: np.ndarray, name: str) -> np.ndarray:
    """Cast a float32 reconstruction to the stored dtype ``name`` (round to nearest even)."""
    return arr.astype(bfloat16() if name == "bfloat16" else np.dtype(name), copy=False)
