"""Putting a .qpk into a torch model: ``load_packed`` (packed layers) and ``state_dict``.

Rules of ``load_packed`` (everything is checked before the model is touched):

- Every submodule whose type is exactly ``nn.Linear`` or ``nn.Conv2d`` (subclasses may
  compute differently, e.g. MultiheadAttention's out_proj, so they load dense) and whose
  ``<prefix>.weight`` is in the file and quantized (method != "raw") is replaced by
  ``PackedLinear`` / ``PackedConv2d`` built from that tensor, the file's ``<prefix>.bias``
  when present (else the module's own bias, and the name is reported missing), and the
  module's stride / padding / dilation / groups. A module reachable under several names
  is replaced by one packed module at each of them.
- Every other tensor of the file (raw weights, biases of other modules, norms,
  embeddings, buffers) is dequantized and loaded into the model entry of that name (a
  parameter or persistent buffer), converted to that entry's dtype, through
  ``model.load_state_dict`` (so modules' own loading hooks run).
- Always ValueError, naming every case: a shape that differs from the model's, a
  Conv2d to be packed with padding_mode other than "zeros" (PackedConv2d pads with zeros
  only; store that weight raw to load it dense), or a module to be packed whose weight is
  not on the CPU.
- File names that match no model entry and model entries the file lacks: with
  strict=True a ValueError listing both, with strict=False a warning listing them.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from qpack.matmul import ACT_QUANT_MODES
from qpack.model import CompressedModel, load
from qpack.torch.convert import to_torch
from qpack.torch.modules import PackedConv2d, PackedLinear

_LIST_MAX = 20  # names shown per list in a message


def _open(source) -> CompressedModel:
    if isinstance(source, CompressedModel):
        return source
    if isinstance(source, (str, os.PathLike)):
        return load(source)
    raise ValueError(f"source must be a .qpk path or a qpack.CompressedModel, got "
                     f"{type(source).__name__}")


def state_dict(source) -> dict[str, torch.Tensor]:
    """Every tensor of ``source`` (a .qpk path or a CompressedModel) decoded to a CPU
    torch tensor, in file order, with its stored shape and dtype (bfloat16 stays
    torch.bfloat16, float16 float16, integers and bool as they were).

    ``model.load_state_dict(qpack.torch.state_dict(path))`` restores a model compressed
    from its state_dict (quantized tensors come back as their decoded approximations).
    Raises ValueError for a bad source, qpack.FormatError for a damaged file.
    """
    cm = _open(source)
    return {name: to_torch(cm[name].dequantize()) for name in cm}


def _names(items) -> str:
    items = sorted(items)
    more = f" ... and {len(items) - _LIST_MAX} more" if len(items) > _LIST_MAX else ""
    return ", ".join(items[:_LIST_MAX]) + more


def _prefix(name: str) -> str:
    return f"{name}." if name else ""


class _Plan:
    """What load_packed will do, worked out without touching the model."""

    def __init__(self, model: nn.Module, cm: CompressedModel):
        self.entries = model.state_dict(keep_vars=True)  # parameters + persistent buffers
        self.replace: dict[int, tuple[nn.Module, str, str | None, list[str]]] = {}
        self.errors: list[str] = []
        self.consumed: set[str] = set()
        self.missing: set[str] = set()
        for name, module in model.named_modules(remove_duplicate=False):
            self._consider(name, module, cm)
        self.load = {}
        for key in cm:
            if key in self.consumed or key not in self.entries:
                continue
            want, have = tuple(self.entries[key].shape), cm[key].shape
            if have != want:
                self.errors.append(f"{key}: file shape {have}, model shape {want}")
            self.load[key] = cm[key]
        handled = self.consumed | set(self.load)
        self.unexpected = [k for k in cm if k not in handled]
        self.missing |= {k for k in self.entries if k not in handled and k not in cm}

    def _consider(self, name: str, module: nn.Module, cm: CompressedModel) -> None:
        if type(module) not in (nn.Linear, nn.Conv2d):
            return
        key = _prefix(name) + "weight"
        if key not in cm or cm[key].method == "raw":
            return
        if id(module) in self.replace:  # the same module under another name
            self.replace[id(module)][3].append(name)
            self._consume(name, module, cm)
            return
        want, have = tuple(module.weight.shape), cm[key].shape
        if have != want:
            self.errors.append(f"{key}: file shape {have}, model shape {want}")
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            self.errors.append(f"{name}: padding_mode={module.padding_mode!r}; PackedConv2d "
                               "pads with zeros only (store this weight raw, e.g. compress "
                               f"with overrides={{{key!r}: {{'method': 'raw'}}}}, to load "
                               "it dense)")
        if module.weight.device.type != "cpu":
            self.errors.append(f"{name}: weight on {module.weight.device}; packed layers run "
                               "on the CPU")
        bias_key = _prefix(name) + "bias"
        bias = bias_key if module.bias is not None and bias_key in cm else None
        if bias is not None and cm[bias_key].shape != tuple(module.bias.shape):
            self.errors.append(f"{bias_key}: file shape {cm[bias_key].shape}, model shape "
                               f"{tuple(module.bias.shape)}")
        self.replace[id(module)] = (module, key, bias, [name])
        self._consume(name, module, cm)

    def _consume(self, name: str, module: nn.Module, cm: CompressedModel) -> None:
        self.consumed.add(_prefix(name) + "weight")
        if module.bias is not None:
            bias_key = _prefix(name) + "bias"
            (self.consumed if bias_key in cm else self.missing).add(bias_key)


def _packed_module(module: nn.Module, cm: CompressedModel, key: str, bias_key: str | None,
                   act_quant: str | None) -> nn.Module:
    if bias_key is not None:
        bias = to_torch(cm[bias_key].dequantize())
    else:
        bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Linear):
        return PackedLinear(cm[key], bias=bias, act_quant=act_quant)
    return PackedConv2d(cm[key], bias=bias, stride=module.stride, padding=module.padding,
                        dilation=module.dilation, groups=module.groups, act_quant=act_quant)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def load_packed(model: nn.Module, source, *, strict: bool = True,
                act_quant: str | None = None) -> nn.Module:
    """Load a .qpk into ``model``, running its quantized Linear / Conv2d layers packed.

    Parameters
    ----------
    model : the torch.nn.Module the file was compressed from (same names and shapes).
    source : a .qpk path or a qpack.CompressedModel.
    strict : True raises ValueError when a file name matches no model entry or a model
        entry is not in the file; False warns (warnings.warn, listing them) and goes on.
    act_quant : None, "int8" or "int8-static", for every packed layer (see
        qpack.nn.PackedLinear; "int8-static" needs every packed tensor calibrated).

    Returns ``model``, changed in place (the module rules are in this module's doc); if
    ``model`` itself is an nn.Linear / nn.Conv2d with a quantized weight, the packed module
    that stands for it is returned instead. Raises ValueError (before changing anything)
    for shape mismatches, a Conv2d to pack whose padding_mode is not "zeros", a module to
    pack that is not on the CPU, a bad model or source; qpack.FormatError for a damaged
    file.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(strict, bool):
        raise ValueError(f"strict must be True or False, got {strict!r}")
    if act_quant not in ACT_QUANT_MODES:
        raise ValueError(f"act_quant must be None, 'int8' or 'int8-static', got "
                         f"{act_quant!r}")
    cm = _open(source)
    plan = _Plan(model, cm)
    if plan.errors:
        raise ValueError("load_packed: the file does not fit the model:\n  "
                         + "\n  ".join(plan.errors))
    if plan.unexpected or plan.missing:
        text = "; ".join(part for part in (
            plan.unexpected and f"names in the file that match nothing in the model: "
                                f"{_names(plan.unexpected)}",
            plan.missing and f"model entries missing from the file: {_names(plan.missing)}")
            if part)
        if strict:
            raise ValueError(f"load_packed (strict=True): {text}")
        warnings.warn(f"load_packed: {text}", stacklevel=2)
    packed = {}
    for ident, (module, key, bias_key, _) in plan.replace.items():
        packed[ident] = _packed_module(module, cm, key, bias_key, act_quant)
    dense = {key: to_torch(t.dequantize()) for key, t in plan.load.items()}
    if dense:
        model.load_state_dict(dense, strict=False)
    for ident, (_, _, _, names) in plan.replace.items():
        for name in names:
            if not name:
                return packed[ident]  # the model is itself the layer being packed
            _set_submodule(model, name, packed[ident])
    return model
