"""A tensor of a checkpoint that has not been read yet.

``compress`` plans from names, shapes and dtypes alone and reads each tensor only when it
is encoded, so a model larger than memory streams through one tensor at a time. A
``StoredTensor`` is small and picklable: a worker process or a Dask worker on another
machine reads it itself from the file (same path on shared storage), by byte offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qpack import dtypes


@dataclass(frozen=True)
class StoredTensor:
    """Tensor ``name`` of ``path``: ``dtype_name`` ("bfloat16", "float32", ...) and
    ``shape``, its little-endian bytes at ``offset`` in the file, or (formats qpack cannot
    read by offset: ``.npz``, torch files) the array itself in ``array``.

    ``read()`` returns a fresh numpy array of that dtype and shape (bfloat16 as
    ml_dtypes.bfloat16). Raises ValueError naming the file when it has changed since it
    was opened (shorter than the tensor's bytes).
    """

    name: str
    dtype_name: str
    shape: tuple[int, ...]
    path: str
    offset: int | None = None
    array: np.ndarray | None = None

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype ``read()`` returns."""
        return dtypes.bfloat16() if self.dtype_name == "bfloat16" else np.dtype(self.dtype_name)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor as stored in the checkpoint."""
        return self.size * dtypes.itemsize(self.dtype_name)

    def read(self) -> np.ndarray:
        """The tensor's values, read from the file now (see the class docstring)."""
        if self.array is not None:
            return self.array
        storage = dtypes.storage_dtype(self.dtype_name)
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                raw = np.fromfile(fh, dtype=storage, count=self.size)
        except OSError as exc:
            raise ValueError(f"{self.path}: cannot read tensor {self.name!r} "
                             f"({exc.strerror or exc})") from None
        if raw.size != self.size:
            raise ValueError(f"{self.path}: tensor {self.name!r} needs {self.nbytes} bytes "
                             f"at offset {self.offset}; the file is shorter (changed since "
                             "it was opened?)")
        return dtypes.from_storage(raw.reshape(self.shape), self.dtype_name)


def read_value(value):
    """``value`` itself, or for a ``StoredTensor`` the array it reads."""
    return value.read() if isinstance(value, StoredTensor) else value
