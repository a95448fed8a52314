"""``PackedLinear`` and ``PackedConv2d`` as torch.nn.Modules (inference only, CPU).

Each wraps the numpy layer of ``qpack.nn`` over a ``CompressedTensor``: the weight stays in
its packed form (it is not a parameter or buffer and does not appear in state_dict()); the
bias is a float32 buffer named ``bias`` (or None). forward() hands the kernels a numpy
view of the input's memory and returns ``torch.from_numpy`` of their output, so a float32
input is not copied on the way in and the output is not copied on the way out.
"""

from __future__ import annotations

import torch
from torch import nn

from qpack import nn as qnn
from qpack.tensor import CompressedTensor
from qpack.torch.convert import activations, bias_array, bias_tensor, result


def _describe(tensor: CompressedTensor) -> str:
    bits = f", bits={tensor.bits}" if tensor.bits else ""
    return f"method={tensor.method!r}{bits}"


class _PackedModule(nn.Module):
    """What both packed modules share: the numpy layer in ``self.layer`` and its tensor."""

    layer: qnn.PackedLinear | qnn.PackedConv2d

    @property
    def tensor(self) -> CompressedTensor:
        return self.layer.tensor

    @property
    def act_quant(self) -> str | None:
        return self.layer.act_quant


class PackedLinear(_PackedModule):
    """y = x @ W.T + bias from a packed CompressedTensor, as a torch module (inference).

    Parameters
    ----------
    tensor : CompressedTensor of shape (out_features, in_features) (more dims are viewed
        as (shape[0], prod(rest)), as qpack.nn.PackedLinear does).
    bias : optional tensor or array of shape (out_features,), stored as a float32 buffer.
    act_quant : None (float32 activations), "int8" or "int8-static" (see
        qpack.nn.PackedLinear).

    forward(x): x a CPU tensor of shape (..., in_features) and a floating dtype. float32
    is read in place (no copy when contiguous; a non-contiguous x is copied once, to
    contiguous rows); float16 / bfloat16 / float64 are converted to float32 and the
    result converted back. Returns (..., out_features) in x's dtype, on the CPU, with
    requires_grad False. Raises ValueError for a wrong last dimension, a non-CPU or
    non-floating x, or an x that requires grad while grad mode is on (no backward).
    """

    def __init__(self, tensor: CompressedTensor, bias=None, act_quant: str | None = None):
        super().__init__()
        self.layer = qnn.PackedLinear(tensor, act_quant=act_quant)
        self.in_features, self.out_features = self.layer.in_features, self.layer.out_features
        self.register_buffer("bias", bias_tensor(bias, self.out_features))

    def dequantized_weight(self) -> torch.Tensor:
        """The decoded weight as a new float32 tensor (out_features, in_features)."""
        return torch.from_numpy(self.tensor.kernel_weights().dequantize())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn, dtype = activations(x)
        y = self.layer(xn)
        bias = bias_array(self.bias)
        if bias is not None:
            y += bias
        return result(y, dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {_describe(self.tensor)}, "
                f"act_quant={self.act_quant!r}")


class PackedConv2d(_PackedModule):
    """2-D convolution (NCHW) from a packed CompressedTensor, as a torch module (inference).

    Parameters
    ----------
    tensor : CompressedTensor of shape (out_channels, in_channels // groups, kh, kw).
    bias : optional tensor or array of shape (out_channels,), stored as a float32 buffer.
    stride, padding, dilation, groups, act_quant : as qpack.nn.PackedConv2d (padding: an
        int, a pair, "valid" or "same"; zero padding only).

    forward(x): x a CPU tensor (N, C, H, W) or (C, H, W) with a floating dtype. A float32
    x is read in place through its strides, contiguous or not (channels_last included):
    no copy of the input is made besides the im2col patches themselves. float16 /
    bfloat16 / float64 are converted to float32 and the result converted back. Returns
    (N, out_channels, OH, OW) (or (out_channels, OH, OW)) in x's dtype. Raises ValueError
    for a wrong channel count or ndim, an input smaller than the kernel, a non-CPU or
    non-floating x, or an x that requires grad while grad mode is on (no backward).
    """

    def __init__(self, tensor: CompressedTensor, bias=None, stride=1, padding=0, dilation=1,
                 groups: int = 1, act_quant: str | None = None):
        super().__init__()
        self.layer = qnn.PackedConv2d(tensor, stride=stride, padding=padding,
                                      dilation=dilation, groups=groups, act_quant=act_quant)
        layer = self.layer
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size, self.stride, self.padding = (layer.kernel_size, layer.stride,
                                                       layer.padding)
        self.dilation, self.groups = layer.dilation, layer.groups
        self.register_buffer("bias", bias_tensor(bias, self.out_channels))

    def dequantized_weight(self) -> torch.Tensor:
        """The decoded weight as a new float32 tensor of the tensor's 4-D shape."""
        w = self.tensor.kernel_weights().dequantize()
        return torch.from_numpy(w.reshape(self.tensor.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn, dtype = activations(x)
        return result(self.layer._forward(xn, bias_array(self.bias)), dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, "
                f"{_describe(self.tensor)}, act_quant={self.act_quant!r}")
