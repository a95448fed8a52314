"""Crossing between torch tensors and numpy arrays without copies where possible.

``activations`` turns a module input into the numpy array the kernels read (a view of the
tensor's memory for a float32 CPU tensor), ``result`` turns the kernels' float32 output
back into a tensor (``torch.from_numpy``: the same memory), and ``to_torch`` converts a
decoded array of any stored dtype, bfloat16 included.
"""

from __future__ import annotations

import numpy as np
import torch

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def activations(x, name: str = "x") -> tuple[np.ndarray, torch.dtype]:
    """(numpy array of x's values as float32, x's dtype) for a module's forward.

    A float32 CPU tensor is not copied: the array is a view of its memory (its strides
    too, so a non-contiguous tensor stays a strided view). float16, bfloat16 and float64
    are converted to float32 (one copy). Raises ValueError for a non-tensor, a tensor not
    on the CPU, a non-strided layout, a non-floating dtype, or a tensor that requires grad
    while grad mode is on (these modules have no backward; under torch.no_grad() or
    torch.inference_mode() such a tensor is read like any other, as torch layers do).
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"{name} is on device {x.device}; qpack's packed layers run on the "
                         "CPU only (move it with .cpu())")
    if x.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {x.layout}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must have a floating dtype (float32, float16, bfloat16 or "
                         f"float64), got {x.dtype}")
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name} requires grad, but qpack's packed layers are inference-only "
                         "(no backward): call them under torch.no_grad() or "
                         "torch.inference_mode(), or pass x.detach()")
    t = x.detach()
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t.numpy(), x.dtype


def result(y: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The kernels' float32 output as a tensor sharing its memory, cast to ``dtype`` (the
    input's; a copy only when that is not float32)."""
    out = torch.from_numpy(y)
    return out if dtype == torch.float32 else out.to(dtype)


def to_torch(arr) -> torch.Tensor:
    """A decoded numpy array as a CPU tensor of the same dtype and shape (bfloat16 kept,
    through its 16-bit pattern). Shares memory with a writeable C-contiguous array."""
    arr = np.asarray(arr)
    if not (arr.flags.c_contiguous and arr.flags.writeable):
        arr = np.array(arr, order="C")  # torch.from_numpy wants writeable memory
    if arr.dtype.name == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def bias_tensor(bias, out_features: int, name: str = "bias") -> torch.Tensor | None:
    """``bias`` (None, a tensor or an array-like of shape (out_features,)) as a new float32
    CPU tensor. Raises ValueError for a wrong shape or a non-numeric value."""
    if bias is None:
        return None
    if isinstance(bias, torch.Tensor):
        b = bias.detach().to(device="cpu", dtype=torch.float32).reshape(-1).clone()
    else:
        try:
            b = torch.from_numpy(np.array(bias, dtype=np.float32).reshape(-1))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be numeric, got {type(bias).__name__}") from exc
    if tuple(b.shape) != (out_features,):
        raise ValueError(f"{name} must have shape ({out_features},), got {tuple(b.shape)}")
    return b


def bias_array(bias: torch.Tensor | None) -> np.ndarray | None:
    """A bias buffer as float32 numpy (a view of it when it is a float32 CPU tensor)."""
    if bias is None:
        return None
    if bias.device.type != "cpu":
        raise ValueError(f"the bias buffer is on {bias.device}; packed layers run on the CPU")
    b = bias.detach()
    return (b if b.dtype == torch.float32 else b.to(torch.float32)).numpy()
