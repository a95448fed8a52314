"""Turn what users hand to ``compress`` into an ordered dict of numpy arrays.

Accepted: a mapping of names to numpy arrays or array-likes (PyTorch tensors work through
duck typing: ``.detach()``, ``.cpu()``, ``.numpy()``; qpack never imports torch), or a path
to a ``.npz`` or ``.safetensors`` file (``read_model``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from qpack import dtypes


def read_model(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read all tensors of a ``.npz`` or ``.safetensors`` file into numpy arrays.

    Raises ValueError for a missing file, an unknown extension, or a damaged file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        from qpack.safetensors_file import read_safetensors

        return read_safetensors(path)[0]
    if ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read as .npz ({exc})") from None
    raise ValueError(f"{path}: unknown model file type {ext!r} (expected .safetensors or .npz)")


def _torch_bfloat16_to_numpy(value) -> np.ndarray:
    """A torch bfloat16 tensor as ml_dtypes.bfloat16 (or float32 without ml_dtypes)."""
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
    """Normalize ``model`` (mapping or path) to {name: ndarray}; ValueError if unusable."""
    if isinstance(model, (str, os.PathLike)):
        return read_model(model)
    if not isinstance(model, Mapping) and not hasattr(model, "items"):
        raise ValueError("model_dict must be a mapping of names to arrays or a path to a "
                         f".npz/.safetensors file, got {type(model).__name__}")
    out = {}
    for name, value in model.items():
        if not isinstance(name, str):
            raise ValueError(f"tensor names must be strings, got {name!r}")
        arr = to_array(name, value)
        dtypes.dtype_name(arr.dtype)  # raises ValueError naming unsupported dtypes
        out[name] = arr
    if not out:
        raise ValueError("model_dict is empty: nothing to compress")
    return out
