"""Turn what users hand to ``compress`` into an ordered dict of numpy arrays.

Accepted: a mapping of names to numpy arrays or array-likes (PyTorch tensors work through
duck typing: ``.detach()``, ``.cpu()``, ``.numpy()``; qpack never imports torch for
them), or a checkpoint on disk: a ``.npz`` / ``.safetensors`` / ``.pt`` / ``.bin`` file, a
Hugging Face shard index or folder, or a list of shard files (``qpack.checkpoint``).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from qpack import dtypes
from qpack.handover import is_prequantized


def read_model(path: str | os.PathLike | Sequence[str | os.PathLike]
               ) -> dict[str, np.ndarray]:
    """Read all tensors of a checkpoint into numpy arrays: a ``.npz``, ``.safetensors``,
    ``.pt`` / ``.bin`` / ``.pth`` file, a ``*.index.json`` shard index, a folder holding
    one of those, or a list of files (``qpack.checkpoint.open_checkpoint``).

    Every dtype is kept (bfloat16 as ml_dtypes.bfloat16). Raises ValueError naming the
    file for a missing file, an unknown extension, a damaged or truncated file, or an
    inconsistent shard set.
    """
    return read_model_file(path)[0]


def read_model_file(path: str | os.PathLike | Sequence[str | os.PathLike]
                    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(arrays, the files' own metadata) of a checkpoint, as ``read_model`` reads it.

    The metadata is the safetensors ``__metadata__`` ({} for other formats). Errors as
    ``read_model``.
    """
    from qpack.checkpoint import open_checkpoint

    ckpt = open_checkpoint(path)
    return {name: ckpt[name] for name in ckpt}, dict(ckpt.metadata)


def check_npz_signature(path: str) -> None:
    """ValueError unless ``path`` starts like a zip archive (a .npz).

    np.load takes anything that is not a zip for a pickle and suggests allow_pickle:
    refuse it here instead, by the zip signature (local file header or empty archive).
    """
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise ValueError(f"{path}: not a .npz file (no zip signature)")


def read_npz(path: str, member: str | None = None):
    """Every array of a ``.npz`` (a zip of ``.npy`` files) as a dict, or only ``member``'s
    array; never unpickling anything. ValueError naming the file when it is damaged."""
    check_npz_signature(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if member is not None:
                return npz[member]
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "allow_pickle" in reason:
            reason = "it holds object arrays, which qpack never unpickles"
        raise ValueError(f"{path}: damaged or unreadable .npz ({reason})") from None


def read_input(model) -> tuple[dict, dict[str, str]]:
    """(tensors, source metadata) of what ``compress`` was given: a mapping's arrays, or
    for a checkpoint on disk a ``StoredTensor`` per tensor (read when it is encoded)."""
    if isinstance(model, (str, os.PathLike)) or _is_path_list(model):
        from qpack.checkpoint import open_checkpoint

        ckpt = open_checkpoint(model)
        if not len(ckpt):
            raise ValueError(f"{model}: the checkpoint holds no tensors: nothing to compress")
        return {name: ckpt.stored(name) for name in ckpt}, dict(ckpt.metadata)
    return as_array_dict(model), {}


def _is_path_list(model) -> bool:
    """A list or tuple of paths (shard files), as opposed to a mapping of tensors."""
    return isinstance(model, (list, tuple)) and bool(model) and all(
        isinstance(p, (str, os.PathLike)) for p in model)


def _torch_bfloat16_to_numpy(value) -> np.ndarray:
    """A torch bfloat16 tensor as ml_dtypes.bfloat16 (its bits, unchanged)."""
    import torch  # already loaded: ``value`` is a torch tensor; qpack never requires it

    bits = value.contiguous().view(-1).view(torch.int16).numpy()
    bits = bits.view(np.uint16).reshape(tuple(value.shape))
    return dtypes.from_storage(bits, "bfloat16")


def to_array(name: str, value) -> np.ndarray:
    """Convert one tensor-like value to a numpy array (no copy when already numpy)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        value = value.detach()
    if hasattr(value, "cpu"):
        value = value.cpu()
    if str(getattr(value, "dtype", "")) == "torch.bfloat16":
        return _torch_bfloat16_to_numpy(value)
    try:
        arr = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    except Exception as exc:
        raise ValueError(f"tensor {name!r}: cannot convert {type(value).__name__} to a numpy "
                         f"array ({exc})") from None
    arr = np.asarray(arr)
    if arr.dtype == object:
        raise ValueError(f"tensor {name!r}: not a numeric array (got dtype object)")
    return arr


def as_array_dict(model) -> dict[str, np.ndarray]:
    """Normalize ``model`` (mapping, module with ``state_dict()``, or path) to {name:
    ndarray}; pre-quantized values (KMeansQuantized / LinearQuantized) pass through as they
    are. ValueError if unusable."""
    if isinstance(model, (str, os.PathLike)) or _is_path_list(model):
        return read_model(model)
    if not isinstance(model, Mapping) and callable(getattr(model, "state_dict", None)):
        model = model.state_dict()  # a torch nn.Module, duck-typed (torch is never imported)
    if not isinstance(model, Mapping) and not hasattr(model, "items"):
        raise ValueError("model_dict must be a mapping of names to arrays, or a checkpoint "
                         "path (.safetensors/.npz/.pt/.bin file, shard index or folder) or "
                         f"list of shard paths, got {type(model).__name__}")
    out = {}
    for name, value in model.items():
        if not isinstance(name, str):
            raise ValueError(f"tensor names must be strings, got {name!r}")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"tensor name {name!r} is not valid Unicode (lone "
                             "surrogate)") from None
        if is_prequantized(value):
            out[name] = value  # stored as given (qpack.handover)
            continue
        arr = to_array(name, value)
        dtypes.dtype_name(arr.dtype)  # raises ValueError naming unsupported dtypes
        out[name] = arr
    if not out:
        raise ValueError("model_dict is empty: nothing to compress")
    return out
