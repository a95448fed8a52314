"""``PackedLinear`` and ``PackedConv2d``: layers whose weights stay packed, callable on numpy
arrays (the torch.nn.Module wrappers are in ``qpack.torch``)."""

from __future__ import annotations

import numpy as np

from qpack import conv as _conv
from qpack import dtypes
from qpack._validate import check_int, matrix_shape
from qpack.matmul import ACT_QUANT_MODES
from qpack.tensor import CompressedTensor


def check_layer_act_quant(tensor: CompressedTensor, act_quant) -> None:
    """ValueError unless ``act_quant`` is a mode of qpack.matmul (None, "int8",
    "int8-static") that ``tensor`` can run; "int8-static" needs its ``act_scale``."""
    if act_quant not in ACT_QUANT_MODES:
        raise ValueError(f"act_quant must be None, 'int8' or 'int8-static', got "
                         f"{act_quant!r}")
    if act_quant == "int8-static" and tensor.spec.get("act_scale") is None:
        raise ValueError(f"act_quant='int8-static' needs tensor {tensor.name!r} to have a "
                         "static activation scale (act_scale): compress it with calibration")


class PackedLinear:
    """y = x @ W.T + bias, computed by the packed kernels straight from a CompressedTensor.

    Parameters
    ----------
    tensor : CompressedTensor of shape (out_features, in_features) (from ``compress`` or
        ``load``; a tensor of more dims is viewed as (shape[0], prod(rest))).
    bias : optional array of shape (out_features,), kept as float32.
    act_quant : None (float32 activations; matches x @ dequantize().T to ~1e-5 relative),
        "int8" (activations quantized per block to int8, integer dot products) or
        "int8-static" (the same with the tensor's calibrated ``act_scale`` for every
        block; the tensor must have one).

    Calling it on x of shape (..., in_features) returns float32 of shape (..., out_features).
    Raises ValueError for a wrong inner size or bias shape.
    """

    def __init__(self, tensor: CompressedTensor, bias=None, act_quant: str | None = None):
        if not isinstance(tensor, CompressedTensor):
            raise ValueError(f"tensor must be a qpack.CompressedTensor, got "
                             f"{type(tensor).__name__}")
        check_layer_act_quant(tensor, act_quant)
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


class PackedConv2d:
    """2-D convolution of NCHW float32 activations, computed from a packed 4-D weight.

    y[n, o] = bias[o] + sum over the o's group's input channels c and kernel taps (i, j) of
    W[o, c, i, j] * x_padded[n, c, oh*sh + i*dh, ow*sw + j*dw] (cross-correlation, as
    torch.nn.functional.conv2d), with W the tensor's decoded weight. The weight is read
    from its packed form on every call (qpack.conv: im2col patches times row tiles of
    W decoded for the call, or the packed matmul kernels for small calls); no float copy
    of W outlives a call.

    Parameters
    ----------
    tensor : CompressedTensor of shape (out_channels, in_channels // groups, kh, kw) with a
        floating dtype (quantized or stored raw).
    bias : optional array of shape (out_channels,), kept as float32.
    stride : int or pair (sh, sw), each >= 1.
    padding : int or pair (ph, pw) >= 0 (zeros added on both sides), "valid" (none) or
        "same" (output as large as the input; stride 1 only; an odd total puts the extra
        row / column at the bottom / right, as torch does). Only zero padding exists.
    dilation : int or pair (dh, dw), each >= 1.
    groups : int >= 1 dividing out_channels; the input has groups * tensor.shape[1]
        channels, and output channels [g*out/groups, (g+1)*out/groups) see only input
        channels [g*C/groups, (g+1)*C/groups).
    act_quant : None (float32; matches conv2d on the decoded weight to ~1e-6 relative),
        "int8" (each patch row quantized per block to int8, as PackedLinear does with a
        row of x; needs groups == 1) or "int8-static" (with the tensor's calibrated
        ``act_scale``, as PackedLinear).

    Calling it on x of shape (N, C, H, W) or (C, H, W), any floating dtype (float16,
    bfloat16, float64 are converted to float32) and any strides, returns a new float32
    array (N, out_channels, OH, OW) (or (out_channels, OH, OW)) with
    OH = (H + pad_top + pad_bottom - dh*(kh-1) - 1) // sh + 1 and likewise OW.

    Raises ValueError naming the argument: a tensor that is not a 4-D floating
    CompressedTensor, a bad stride/padding/dilation/groups/act_quant/bias, and on a call an
    x that is not floating, not 3-D/4-D, has the wrong channel count, or is smaller than
    the (dilated) kernel after padding.
    """

    def __init__(self, tensor: CompressedTensor, bias=None, stride=1, padding=0, dilation=1,
                 groups: int = 1, act_quant: str | None = None):
        if not isinstance(tensor, CompressedTensor):
            raise ValueError(f"tensor must be a qpack.CompressedTensor, got "
                             f"{type(tensor).__name__}")
        if len(tensor.shape) != 4:
            raise ValueError(f"tensor must be 4-D (out_channels, in_channels/groups, kh, kw), "
                             f"got shape {tensor.shape}")
        if not dtypes.is_floating_name(tensor.spec["dtype"]):
            raise ValueError(f"tensor {tensor.name!r} has dtype {tensor.spec['dtype']}; a "
                             "convolution needs a floating weight")
        check_layer_act_quant(tensor, act_quant)
        out, cin_g, kh, kw = tensor.shape
        self.groups = check_int(groups, "groups", 1)
        if out % self.groups:
            raise ValueError(f"groups={self.groups} must divide out_channels={out}")
        if act_quant is not None and self.groups != 1:
            raise ValueError(f"act_quant={act_quant!r} needs groups=1, got groups="
                             f"{self.groups}")
        self.tensor = tensor
        self.out_channels, self.in_channels = out, cin_g * self.groups
        self.kernel_size = (kh, kw)
        self.stride = _conv.pair(stride, "stride", 1)
        self.dilation = _conv.pair(dilation, "dilation", 1)
        self._pads = _conv.resolve_padding(padding, self.kernel_size, self.stride,
                                           self.dilation)
        self.padding = padding if isinstance(padding, str) else _conv.pair(padding,
                                                                          "padding", 0)
        self.act_quant = act_quant
        if bias is not None:
            bias = np.asarray(bias, dtype=np.float32).reshape(-1)
            if bias.shape != (out,):
                raise ValueError(f"bias must have shape ({out},), got {bias.shape}")
        self.bias = bias
        tensor.kernel_weights()  # decode and prepare now, not on the first call

    @property
    def nbytes(self) -> int:
        """Bytes the layer holds in memory for inference (packed weight form + bias)."""
        bias = 0 if self.bias is None else self.bias.nbytes
        return int(self.tensor.kernel_weights().nbytes) + bias

    def output_shape(self, input_shape) -> tuple[int, ...]:
        """The shape a call on an input of ``input_shape`` returns (ValueError as a call)."""
        return self._geometry(tuple(input_shape))[1]

    def _geometry(self, shape: tuple) -> tuple[_conv.ConvGeometry, tuple[int, ...]]:
        if len(shape) not in (3, 4):
            raise ValueError(f"x must have shape (N, C, H, W) or (C, H, W), got {shape}")
        full = shape if len(shape) == 4 else (1,) + shape
        if full[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels (axis "
                             f"{len(shape) - 3}), got shape {shape}")
        g = _conv.ConvGeometry(full, self.kernel_size, self.stride, self._pads,
                               self.dilation, self.groups, self.out_channels)
        out = (g.n, g.out, g.oh, g.ow)
        return g, out if len(shape) == 4 else out[1:]

    def __call__(self, x) -> np.ndarray:
        return self._forward(x, self.bias)

    def _forward(self, x, bias: np.ndarray | None) -> np.ndarray:
        """The call with ``bias`` (float32 (out_channels,) or None) in place of self.bias
        (qpack.torch passes its bias buffer's memory)."""
        x = np.asarray(x)
        if x.dtype.kind != "f" and x.dtype.name != "bfloat16":
            raise ValueError(f"x must have a floating dtype, got {x.dtype}")
        g, out_shape = self._geometry(x.shape)
        x4 = x if x.ndim == 4 else x[None]
        y = _conv.conv2d(x4, self.tensor.kernel_weights(), g, bias, self.act_quant)
        return y.reshape(out_shape)

    def __repr__(self) -> str:
        return (f"PackedConv2d({self.in_channels}, {self.out_channels}, kernel_size="
                f"{self.kernel_size}, stride={self.stride}, padding={self.padding!r}, "
                f"dilation={self.dilation}, groups={self.groups}, method="
                f"{self.tensor.method!r}, bits={self.tensor.bits}, act_quant="
                f"{self.act_quant!r})")
