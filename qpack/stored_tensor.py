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

# read_float32 converts this many elements at a time
READ_BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class StoredTensor:
    """Tensor ``name`` of ``path``: ``dtype_name`` ("bfloat16", "float32", ...) and
    ``shape``, its little-endian bytes at ``offset`` in the file, a ``.npz``'s ``member``,
    or (torch files, which qpack cannot read by offset) the array itself in ``array``.

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
    member: str | None = None  # a .npz member (compressed or not: read by name)

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

    def _raw_blocks(self, block: int):
        """Yield (start element, raw storage-dtype array) of the tensor's bytes at
        ``offset``, ``block`` elements at a time. ValueError naming the file when it
        cannot be read or is shorter than the tensor (changed since it was opened)."""
        storage = dtypes.storage_dtype(self.dtype_name)
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                for start in range(0, self.size, block):
                    count = min(block, self.size - start)
                    raw = np.fromfile(fh, dtype=storage, count=count)
                    if raw.size != count:
                        raise ValueError(f"{self.path}: tensor {self.name!r} needs "
                                         f"{self.nbytes} bytes at offset {self.offset}; the "
                                         "file is shorter (changed since it was opened?)")
                    yield start, raw
        except OSError as exc:
            raise ValueError(f"{self.path}: cannot read tensor {self.name!r} "
                             f"({exc.strerror or exc})") from None

    def read_float32(self) -> np.ndarray:
        """The values of a floating tensor as float32 (what compress quantizes), converted
        block by block: no copy in the stored dtype beside it. Raises ValueError naming
        the tensor when a value is NaN or Inf, or as ``read``."""
        if self.offset is None or self.dtype_name == "float32":
            out = np.asarray(self.read(), dtype=np.float32)
            if not np.isfinite(out).all():
                raise ValueError(f"tensor {self.name!r} contains NaN or Inf")
            return out
        out = np.empty(self.size, dtype=np.float32)
        for start, raw in self._raw_blocks(READ_BLOCK_ELEMENTS):
            part = out[start:start + raw.size]
            if self.dtype_name == "bfloat16":  # its bits are float32's upper half
                np.left_shift(raw.astype(np.uint32), 16, out=part.view(np.uint32))
            else:
                part[...] = raw
            if not np.isfinite(part).all():
                raise ValueError(f"tensor {self.name!r} contains NaN or Inf")
        return out.reshape(self.shape)

    def read(self) -> np.ndarray:
        """The tensor's values, read from the file now (see the class docstring)."""
        if self.array is not None:
            return self.array
        if self.member is not None:
            from qpack.inputs import read_npz

            arr = read_npz(self.path, self.member)
            if arr.shape != self.shape or dtypes.dtype_name(arr.dtype) != self.dtype_name:
                raise ValueError(f"{self.path}: tensor {self.name!r} changed since the file "
                                 "was opened")
            return arr
        if self.size == 0:
            raw = np.empty(0, dtype=dtypes.storage_dtype(self.dtype_name))
        else:
            ((_, raw),) = self._raw_blocks(self.size)
        return dtypes.from_storage(raw.reshape(self.shape), self.dtype_name)


def read_value(value):
    """``value`` itself, or for a ``StoredTensor`` the array it reads."""
    return value.read() if isinstance(value, StoredTensor) else value
