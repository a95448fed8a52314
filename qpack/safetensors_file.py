"""Read and write ``.safetensors`` files with numpy, including bfloat16.

The safetensors layout: an 8-byte little-endian header length N, N bytes of JSON mapping
each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to
the end of the header) plus an optional "__metadata__" of strings, then the raw data.
qpack reads it itself (instead of the ``safetensors`` package's numpy API) so that bfloat16
tensors load too, and so every offset is checked before any byte is used.
"""

from __future__ import annotations

import json
import mmap
import os
import struct

import numpy as np

from qpack import dtypes
from qpack.format import parse_header, write_bytes_atomic
from qpack.stored_tensor import StoredTensor

_ST_TO_NAME = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
               "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64",
               "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
_NAME_TO_ST = {v: k for k, v in _ST_TO_NAME.items()}
MAX_HEADER = 100 << 20


class SafetensorsFile:
    """A ``.safetensors`` file opened for reading: its header checked, its data mapped.

    ``tensors`` maps each name to (dtype name, shape, begin, end) in file order;
    ``metadata`` is the file's ``__metadata__``. ``read(name)`` copies one tensor out
    (native byte order, bfloat16 as ml_dtypes.bfloat16), so a caller holding only the
    tensors it works on never holds the whole file in memory. Raises ValueError naming the
    file for a damaged or unsupported one.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = path = os.fspath(path)
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size < 8:
                raise ValueError(f"{path}: too short for a safetensors file")
            # mapped, not read: each tensor is copied out once when asked for
            self._data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        data = self._data
        (n,) = struct.unpack_from("<Q", data, 0)
        if n > MAX_HEADER or 8 + n > len(data):
            raise ValueError(f"{path}: bad safetensors header length {n}")
        header = parse_header(data[8:8 + n], f"{path}: safetensors")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError(f"{path}: safetensors __metadata__ must map strings to strings")
        self.metadata: dict[str, str] = meta
        self._body = memoryview(data)[8 + n:]
        self.data_offset = 8 + n  # file offset of the data that entries' offsets count from
        self.tensors: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            self.tensors[name] = self._check_entry(name, info)

    def _check_entry(self, name: str, info) -> tuple[str, tuple[int, ...], int, int]:
        path = self.path
        try:
            st_dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{path}: tensor {name!r} has a malformed entry") from None
        if st_dtype not in _ST_TO_NAME:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {st_dtype}")
        if (not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                           for d in shape)):
            raise ValueError(f"{path}: tensor {name!r} has a bad shape {shape!r}")
        dname = _ST_TO_NAME[st_dtype]
        need = int(np.prod(shape, dtype=object)) * dtypes.itemsize(dname)
        if not (isinstance(begin, int) and isinstance(end, int)
                and 0 <= begin <= end <= len(self._body) and end - begin == need):
            raise ValueError(f"{path}: tensor {name!r} has bad data offsets {[begin, end]}")
        return dname, tuple(shape), begin, end

    def stored(self, name: str) -> StoredTensor:
        """Tensor ``name`` as a StoredTensor (read by byte offset, later, anywhere)."""
        dname, shape, begin, _ = self.tensors[name]
        return StoredTensor(name, dname, shape, os.path.abspath(self.path),
                            offset=self.data_offset + begin)

    def read(self, name: str) -> np.ndarray:
        """A copy of tensor ``name`` (KeyError if the file has none of that name)."""
        dname, shape, begin, end = self.tensors[name]
        raw = np.frombuffer(self._body[begin:end], dtype=dtypes.storage_dtype(dname))
        return np.array(dtypes.from_storage(raw.reshape(shape), dname))


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor of a ``.safetensors`` file; return (arrays, metadata).

    Arrays are copies in native byte order (bfloat16 as ml_dtypes.bfloat16). Raises
    ValueError for a damaged or unsupported file.
    """
    f = SafetensorsFile(path)
    return {name: f.read(name) for name in f.tensors}, f.metadata


def write_safetensors(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """Write arrays to a ``.safetensors`` file atomically (bfloat16 supported)."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        stored = dtypes.to_storage(arr)
        header[name] = {"dtype": _NAME_TO_ST[dtypes.dtype_name(arr.dtype)],
                        "shape": list(arr.shape),
                        "data_offsets": [offset, offset + stored.nbytes]}
        blobs.append(stored.reshape(-1).view(np.uint8))
        offset += stored.nbytes
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # keep the data 8-byte aligned, as the format advises
    write_bytes_atomic(path, [struct.pack("<Q", len(head)), head] + blobs)
