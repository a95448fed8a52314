"""Model checkpoints on disk as one mapping of tensor names to arrays.

Accepted (``open_checkpoint``):

- one file: ``.safetensors``, ``.npz``, or a PyTorch state dict ``.pt`` / ``.bin`` / ``.pth``
  (read with ``torch.load(weights_only=True)``: the ``torch`` extra);
- a Hugging Face shard index ``*.safetensors.index.json`` (its ``weight_map`` names the
  shard of every tensor; shards are files beside the index) or ``*.bin.index.json``;
- a folder holding one index (a safetensors index is preferred to a ``.bin`` one), or one
  single-file checkpoint (``model.safetensors``, preferred to other formats);
- several files (a list of paths), merged; a tensor name in two of them is an error.

Safetensors shards are memory-mapped and only their headers are read when the checkpoint
is opened (``.npz``: each member's .npy header); each tensor is copied out when it is
asked for (``Checkpoint[name]``), so a caller that keeps only the tensors it works on
never holds a whole shard in memory.
Every dtype is kept (bfloat16, float16, float32, ...). Errors are ValueError naming the
file, the shard or the tensor.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from qpack.stored_tensor import StoredTensor

SINGLE_FILE_EXTENSIONS = (".safetensors", ".npz", ".pt", ".bin", ".pth")
TORCH_EXTENSIONS = (".pt", ".bin", ".pth")
INDEX_SUFFIX = ".index.json"
# An index file is JSON of at most this many bytes (a 70B model's is ~100 KB).
MAX_INDEX_BYTES = 64 << 20


class Checkpoint(Mapping):
    """Read-only mapping {tensor name: numpy array} over one or more checkpoint files.

    ``Checkpoint[name]`` reads that tensor (a fresh array each time); iteration follows
    the files' order. ``metadata`` is the safetensors ``__metadata__`` of the files (the
    first file's value wins for a key two files set), ``shard_of(name)`` the file that
    holds a tensor, ``shape_of`` / ``dtype_of`` its shape and dtype name without reading
    it, and ``files`` the files in order.
    """

    def __init__(self, sources: list[tuple[str, object]]):
        # sources: (path, reader) with reader.tensors: {name: (dtype, shape, ...)} and
        # reader.read(name)
        self.files = [path for path, _ in sources]
        self._where: dict[str, object] = {}
        self.metadata: dict[str, str] = {}
        for path, reader in sources:
            for name in reader.tensors:
                if name in self._where:
                    raise ValueError(f"tensor {name!r} is in two files: "
                                     f"{self._where[name].path} and {path}")
                self._where[name] = reader
            for k, v in getattr(reader, "metadata", {}).items():
                self.metadata.setdefault(k, v)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._where[name].read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def stored(self, name: str) -> StoredTensor:
        """Tensor ``name`` as a StoredTensor: read later, by byte offset for safetensors
        shards (by any process that sees the file), held in memory for other formats."""
        return self._where[name].stored(name)

    def shard_of(self, name: str) -> str:
        """The file holding tensor ``name``."""
        return self._where[name].path

    def dtype_of(self, name: str) -> str:
        """Tensor ``name``'s dtype name (e.g. "bfloat16"), read from the header."""
        return self._where[name].tensors[name][0]

    def shape_of(self, name: str) -> tuple[int, ...]:
        """Tensor ``name``'s shape, read from the header."""
        return tuple(self._where[name].tensors[name][1])


class _ArraysReader:
    """Reader interface over arrays already in memory (``.npz``, torch state dicts)."""

    def __init__(self, path: str, arrays: dict[str, np.ndarray]):
        from qpack import dtypes

        self.path = path
        self._arrays = arrays
        self.tensors = {n: (dtypes.dtype_name(a.dtype), a.shape) for n, a in arrays.items()}

    def read(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def stored(self, name: str) -> StoredTensor:
        dname, shape = self.tensors[name]
        return StoredTensor(name, dname, tuple(shape), os.path.abspath(self.path),
                            array=self._arrays[name])


class _NpzReader:
    """A ``.npz`` read member by member: every member's dtype and shape from its .npy
    header now, each array only when asked for (a worker elsewhere reads it by member
    name). Nothing is ever unpickled."""

    def __init__(self, path: str):
        from qpack import dtypes
        from qpack.inputs import check_npz_signature

        self.path = path
        check_npz_signature(path)
        self.tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.filename.endswith(".npy"):
                        raise ValueError(f"member {info.filename!r} is not a .npy array")
                    with zf.open(info) as fh:
                        version = np.lib.format.read_magic(fh)
                        read_header = (np.lib.format.read_array_header_1_0 if version ==
                                       (1, 0) else np.lib.format.read_array_header_2_0)
                        shape, _, dtype = read_header(fh)
                    if dtype.hasobject:
                        raise ValueError("it holds object arrays, which qpack never "
                                         "unpickles")
                    self.tensors[info.filename[:-4]] = (dtypes.dtype_name(dtype),
                                                        tuple(shape))
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{path}: damaged or unreadable .npz ({reason})") from None

    def read(self, name: str) -> np.ndarray:
        return self.stored(name).read()

    def stored(self, name: str) -> StoredTensor:
        dname, shape = self.tensors[name]
        return StoredTensor(name, dname, shape, os.path.abspath(self.path), member=name)


def _torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch checkpoint, through torch.load(weights_only=True)."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path}: reading a PyTorch checkpoint needs torch: pip install "
                         "'qpack[torch]'") from None
    from qpack.inputs import to_array

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for damaged or hostile files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable PyTorch state dict ({reason})") from None
    if isinstance(obj, Mapping) and set(obj) & {"state_dict", "model"} and not any(
            hasattr(v, "shape") for v in obj.values()):
        obj = obj.get("state_dict", obj.get("model"))  # a training checkpoint's weights
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    out = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not hasattr(value, "shape"):
            raise ValueError(f"{path}: entry {name!r} is not a tensor")
        out[name] = to_array(name, value)
    return out


def _open_file(path: str) -> tuple[str, object]:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        from qpack.safetensors_file import SafetensorsFile

        return path, SafetensorsFile(path)
    if ext == ".npz":
        return path, _NpzReader(path)
    if ext in TORCH_EXTENSIONS:
        return path, _ArraysReader(path, _torch_state_dict(path))
    raise ValueError(f"{path}: unknown model file type {ext!r} (expected .safetensors, "
                     f".npz, .pt, .bin, .pth or a *{INDEX_SUFFIX} shard index)")


def read_index(path: str) -> tuple[list[tuple[str, list[str]]], dict]:
    """([(shard path, [tensor names])] in the shards' first-use order, the whole index
    object) of a Hugging Face style shard index (safetensors, .bin or .qpk shards).

    Raises ValueError naming the index for bad JSON, a missing or empty weight_map, a
    shard that is not a bare file name beside the index, or one that does not exist.
    """
    if os.path.getsize(path) > MAX_INDEX_BYTES:
        raise ValueError(f"{path}: shard index larger than {MAX_INDEX_BYTES >> 20} MiB")
    try:
        with open(path, encoding="utf-8") as fh:
            index = json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON shard index ({exc})") from None
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not wmap:
        raise ValueError(f"{path}: a shard index needs a non-empty 'weight_map' object")
    folder = os.path.dirname(os.path.abspath(path))
    shards: dict[str, list[str]] = {}
    for name, shard in wmap.items():
        if not isinstance(shard, str) or not shard or os.path.basename(shard) != shard \
                or shard in (".", ".."):
            raise ValueError(f"{path}: tensor {name!r} names shard {shard!r}; shards must "
                             "be file names beside the index")
        shards.setdefault(os.path.join(folder, shard), []).append(name)
    for shard in shards:
        if not os.path.isfile(shard):
            raise ValueError(f"{path}: the weight_map names shard "
                             f"{os.path.basename(shard)!r}, which does not exist")
    return list(shards.items()), index


def _open_index(path: str) -> Checkpoint:
    sources = []
    for shard, names in read_index(path)[0]:
        shard_path, reader = _open_file(shard)
        missing = [n for n in names if n not in reader.tensors]
        if missing:
            raise ValueError(f"{path}: the weight_map puts tensor {missing[0]!r} in "
                             f"{os.path.basename(shard)}, which does not hold it")
        extra = [n for n in reader.tensors if n not in set(names)]
        if extra:
            raise ValueError(f"{shard}: holds tensor {extra[0]!r}, which the index "
                             f"{os.path.basename(path)} does not list")
        sources.append((shard_path, reader))
    return Checkpoint(sources)


def _open_folder(path: str) -> Checkpoint:
    entries = sorted(os.listdir(path))
    indexes = [e for e in entries if e.endswith(INDEX_SUFFIX)]
    # Hugging Face repositories often carry both a safetensors and a .bin shard set
    indexes = [e for e in indexes if e.endswith(".safetensors" + INDEX_SUFFIX)] or indexes
    if len(indexes) == 1:
        return _open_index(os.path.join(path, indexes[0]))
    if len(indexes) > 1:
        raise ValueError(f"{path}: holds several shard indexes ({', '.join(indexes)}); "
                         "give the one to use")
    singles = [e for e in entries if os.path.splitext(e)[1].lower() in
               SINGLE_FILE_EXTENSIONS and os.path.isfile(os.path.join(path, e))]
    preferred = [e for e in singles if e.endswith(".safetensors")] or singles
    if len(preferred) == 1:
        return open_checkpoint(os.path.join(path, preferred[0]))
    if not preferred:
        raise ValueError(f"{path}: no checkpoint in this folder (expected a "
                         f"*{INDEX_SUFFIX} or one .safetensors/.npz/.pt/.bin file)")
    raise ValueError(f"{path}: holds several checkpoint files and no shard index "
                     f"({', '.join(preferred[:4])}{', ...' if len(preferred) > 4 else ''}); "
                     "give the files to use")


def open_checkpoint(source: str | os.PathLike | Sequence[str | os.PathLike]) -> Checkpoint:
    """Open a checkpoint (module docstring: a file, an index, a folder, or several files).

    Only headers are read here; tensors are read on access. Raises ValueError for a path
    that does not exist, an unknown file type, a damaged file, an index naming a missing
    shard or a tensor its shard lacks, a shard holding a tensor the index does not list,
    or one tensor name in two files.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            return _open_folder(path)
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such file or folder")
        if path.endswith(INDEX_SUFFIX):
            return _open_index(path)
        return Checkpoint([_open_file(path)])
    if isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
        paths = [os.fspath(p) for p in source]
        if not paths:
            raise ValueError("no checkpoint files given")
        if len(paths) == 1:
            return open_checkpoint(paths[0])
        sources = []
        for p in paths:
            if os.path.isdir(p) or p.endswith(INDEX_SUFFIX):
                raise ValueError(f"{p}: give a folder or an index on its own, not among "
                                 "several files")
            if not os.path.isfile(p):
                raise ValueError(f"{p}: no such file")
            sources.append(_open_file(p))
        return Checkpoint(sources)
    raise ValueError(f"a checkpoint is a path or a list of paths, got {type(source).__name__}")
