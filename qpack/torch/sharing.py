"""Trained weight sharing and quantization-aware training (Deep Compression, step 2; QAT).

Both replace a layer's ``weight`` Parameter by a weight computed before every forward (a
forward pre-hook, as torch.nn.utils.prune does):

- ``share_weights``: ``weight = codebook[codes]``, with the codes (and so the pruning
  mask, through the reserved zero code) fixed and ``<name>_codebook`` a trainable
  Parameter. Autograd of the lookup sums each centroid's members' gradients, the paper's
  centroid fine-tuning; the zero code's entry gets no gradient and stays exactly 0.0.
- ``quantize_aware``: ``weight = w + (Q(w) - w).detach()`` with ``<name>_float`` the
  trainable float Parameter and Q exactly ``qpack.quantize_linear(w, ...).dequantize()``
  (straight-through estimator: the gradient reaches w unchanged).

``qpack.torch.to_qpack`` exports either form exactly.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from qpack._validate import check_bits, check_group_size
from qpack.cluster import INIT_METHODS, quantize_kmeans
from qpack.quantize import quantize_linear
from qpack.torch.pruning import _mask, prunable_weights

SHARED, QAT = "shared", "qat"


def _layer_and_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, attr = name.rpartition(".")
    return (model.get_submodule(prefix) if prefix else model), attr


def reparametrized(module: nn.Module) -> str | None:
    """SHARED, QAT or None: how a layer's weight is computed."""
    return getattr(module, "_qpack_weight_kind", None)


def _bits_for(bits, names: list[str]) -> dict[str, int]:
    """Bits per selected weight: an int for all, or {glob: int} (later globs win; weights no
    glob names are left alone)."""
    if not isinstance(bits, Mapping):
        b = check_bits(bits)
        return {n: b for n in names}
    out: dict[str, int] = {}
    for pat, value in bits.items():
        hit = [n for n in names if isinstance(pat, str) and fnmatch.fnmatchcase(n, pat)]
        if not hit:
            raise ValueError(f"bits pattern {pat!r} matches no selected weight")
        for n in hit:
            out[n] = check_bits(value, f"bits[{pat!r}]")
    return out


def _install(module: nn.Module, attr: str, kind: str, compute) -> None:
    """Replace ``module.<attr>`` (a Parameter) by ``compute(module)`` before each forward."""
    delattr(module, attr)
    setattr(module, attr, compute(module))  # so the attribute exists outside forward too

    def pre_hook(mod, args):
        setattr(mod, attr, compute(mod))

    module._qpack_weight_kind = kind
    module._qpack_weight_hook = module.register_forward_pre_hook(pre_hook)


def share_weights(model: nn.Module, bits, *, include=None, exclude=None,
                  init: str = "linear") -> dict[str, nn.Parameter]:
    """K-means weight sharing with trainable centroids, in place.

    Each selected nn.Linear / nn.Conv1d / nn.Conv2d weight (its surviving entries, when
    ``qpack.torch.prune`` pruned it) is clustered into 2**bits shared values by
    ``qpack.quantize_kmeans`` (``init``: "linear", as in the paper, "density" or
    "random"); a pruned weight reserves code 0 for an exact 0.0, so it has 2**bits - 1
    trained centroids. Afterwards the layer computes ``weight = codebook[codes]``: the
    buffer ``<name>_codes`` (uint8, the weight's shape) and zero code stay fixed, and
    ``<name>_codebook`` (float32 (2**bits,)) is a Parameter whose gradient is the sum of
    its members' gradients; train it with any optimizer.

    bits : int in 1..8, or {glob on parameter name: int}. Returns {parameter name: its
    codebook Parameter}. Raises ValueError for bad bits or init, globs that match nothing,
    a weight already shared or under QAT, or a model without Linear/Conv layers.
    """
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
    weights = prunable_weights(model, include, exclude)
    per = _bits_for(bits, list(weights))
    plans = {}
    for name, b in per.items():  # cluster everything first: fail before changing anything
        p = weights[name]
        mask = _mask(p)
        w = p.detach().cpu().numpy().astype(np.float32)
        if mask is not None and b < 2:
            raise ValueError(f"{name}: a pruned weight needs bits >= 2 (code 0 is reserved "
                             "for the pruned zeros)")
        q = quantize_kmeans(w, b, mask=None if mask is None else mask.cpu().numpy(),
                            init=init)
        plans[name] = (p, q)
    books = {}
    for name, (p, q) in plans.items():
        module, attr = _layer_and_attr(model, name)
        book = nn.Parameter(torch.from_numpy(np.array(q.codebook, np.float32)).to(p.device))
        module.register_parameter(f"{attr}_codebook", book)
        module.register_buffer(f"{attr}_codes",
                               torch.from_numpy(np.array(q.codes, np.uint8)).to(p.device))
        module._qpack_zero_code = q.zero_code
        module._qpack_bits = q.bits
        if q.zero_code is not None:
            zc = q.zero_code
            book.register_hook(lambda g, zc=zc: g.index_fill(0, torch.tensor([zc]), 0))
        _install(module, attr, SHARED, lambda mod, attr=attr: getattr(
            mod, f"{attr}_codebook")[getattr(mod, f"{attr}_codes").long()])
        books[name] = book
    return books


class _FakeQuantize(torch.autograd.Function):
    """Q(w) = qpack.quantize_linear(w).dequantize() forward; identity backward (STE)."""

    @staticmethod
    def forward(ctx, w, bits, group_size, symmetric):
        q = quantize_linear(w.detach().cpu().numpy(), bits, group_size=group_size,
                            symmetric=symmetric)
        return torch.from_numpy(np.asarray(q.dequantize(np.float32))).to(w.device, w.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


def quantize_aware(model: nn.Module, bits, *, group_size: int | None = 128,
                   symmetric: bool = False, include=None, exclude=None
                   ) -> dict[str, nn.Parameter]:
    """Quantization-aware training for the linear method, in place.

    Each selected Linear / Conv weight moves to the trainable Parameter ``<name>_float``;
    forward uses Q(weight) = ``qpack.quantize_linear(weight, bits, group_size=...,
    symmetric=...).dequantize()`` of the *current* float weights (the scales and
    zero-points are recomputed from them at every forward, not learned), with a
    straight-through gradient (d Q(w) / dw taken as 1). Pruned entries (qpack.torch.prune)
    stay pruned: zero weights decode to exactly 0.0.

    bits : int in 1..8 or {glob: int}; group_size : None (per tensor), -1 (per row) or G.
    Returns {parameter name: its float Parameter}. Raises ValueError for bad arguments, a
    weight already shared or under QAT, or a model without Linear/Conv layers.
    """
    group_size = check_group_size(group_size)
    if not isinstance(symmetric, bool):
        raise ValueError(f"symmetric must be True or False, got {symmetric!r}")
    weights = prunable_weights(model, include, exclude)
    per = _bits_for(bits, list(weights))
    for name, b in per.items():
        if symmetric and b < 2:
            raise ValueError(f"bits[{name}]: symmetric quantization needs bits >= 2")
    out = {}
    for name, b in per.items():
        p = weights[name]
        module, attr = _layer_and_attr(model, name)
        module.register_parameter(f"{attr}_float", p)  # the same Parameter: masks hold
        module._qpack_bits, module._qpack_group_size = b, group_size
        module._qpack_symmetric = symmetric
        _install(module, attr, QAT, lambda mod, attr=attr: _FakeQuantize.apply(
            getattr(mod, f"{attr}_float"), mod._qpack_bits, mod._qpack_group_size,
            mod._qpack_symmetric))
        out[name] = p
    return out
