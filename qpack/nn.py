"""``PackedLinear``: a linear layer whose weight stays packed, callable on numpy arrays."""

from __future__ import annotations

import numpy as np

from qpack._validate import matrix_shape
from qpack.tensor import CompressedTensor


class PackedLinear:
    """y = x @ W.T + bias, computed by the packed kernels straight from a CompressedTensor.

    Parameters
    ----------
    tensor : CompressedTensor of shape (out_features, in_features) (from ``compress`` or
        ``load``; a tensor of more dims is viewed as (shape[0], prod(rest))).
    bias : optional array of shape (out_features,), kept as float32.
    act_quant : None (float32 activations; matches x @ dequantize().T to ~1e-5 relative)
        or "int8" (activations quantized per block to int8, integer dot products).

    Calling it on x of shape (..., in_features) returns float32 of shape (..., out_features).
    Raises ValueError for a wrong inner size or bias shape.
    """

    def __init__(self, tensor: CompressedTensor, bias=None, act_quant: str | None = None):
        if not isinstance(tensor, CompressedTensor):
            raise ValueError(f"tensor must be a qpack.CompressedTensor, got "
                             f"{type(tensor).__name__}")
        if act_quant not in (None, "int8"):
            raise ValueError(f"act_quant must be None or 'int8', got {act_quant!r}")
        self.tensor = tensor
        self.out_features, self.in_features = matrix_shape(tensor.shape)
        self.act_quant = act_quant
        if bias is not None:
            bias = np.asarray(bias, dtype=np.float32).reshape(-1)
            if bias.shape != (self.out_features,):
                raise ValueError(f"bias must have shape ({self.out_features},), got "
                                 f"{bias.shape}")
        self.bias = bias
        tensor.kernel_weights()  # decode and prepare now, not on the first call

    @classmethod
    def from_dense(cls, w, bits: int = 4, method: str = "linear", group_size: int | None = 128,
                   act_quant: str | None = None, bias=None, **compress_kwargs) -> PackedLinear:
        """Quantize a dense (out, in) weight and wrap it (no entropy coding, kept packed).

        ``group_size`` applies to method="linear" only. Extra keyword arguments go to
        ``qpack.compress`` (e.g. prune=0.5, clip="mse").
        """
        from qpack.model import compress

        w = np.asarray(w)
        if w.ndim != 2:
            raise ValueError(f"w must be 2-D (out_features, in_features), got shape {w.shape}")
        kwargs = dict(compress_kwargs)
        if method == "linear":
            kwargs["group_size"] = group_size
        kwargs.setdefault("entropy", None)
        model = compress({"weight": w}, bits=bits, method=method, min_numel=0, **kwargs)
        return cls(model["weight"], bias=bias, act_quant=act_quant)

    @property
    def nbytes(self) -> int:
        """Bytes the layer holds in memory for inference (packed weight form + bias)."""
        bias = 0 if self.bias is None else self.bias.nbytes
        return int(self.tensor.kernel_weights().nbytes) + bias

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., {self.in_features}), got {x.shape}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = self.tensor.matmul(x2, act_quant=self.act_quant)
        if self.bias is not None:
            y += self.bias
        return y.reshape(*lead, self.out_features)

    def __repr__(self) -> str:
        return (f"PackedLinear(in_features={self.in_features}, out_features="
                f"{self.out_features}, method={self.tensor.method!r}, bits={self.tensor.bits}, "
                f"act_quant={self.act_quant!r})")
