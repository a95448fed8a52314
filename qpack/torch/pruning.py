"""Magnitude pruning of a torch model that holds through training (Deep Compression, step 1).

``prune(model, amount)`` zeroes the smallest-magnitude weights of every nn.Linear /
nn.Conv1d / nn.Conv2d and keeps them zero while the model is retrained:

- a gradient hook on each pruned weight zeroes the gradient of pruned entries, so no
  optimizer sees a gradient there (momentum buffers and Adam moments stay 0 for them);
- one optimizer step post-hook (registered once, for every torch optimizer) writes the
  zeros back after each step, so weight decay, or momentum carried over from before the
  pruning, cannot move them either.

The weight stays an ordinary Parameter, so the pruning shows in ``model.parameters()`` and
``state_dict()``, and ``qpack.compress(model, masks=masks)`` stores exactly these masks.
"""

from __future__ import annotations

import fnmatch
import weakref
from collections.abc import Mapping

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from qpack.plan import patterns

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
SCOPES = ("layer", "global")

# id(parameter) -> its keep-mask (bool, the parameter's shape). Keyed by id, not by the
# tensor (a tensor's == is elementwise, which dict lookups cannot use); a finalizer drops
# the entry when the parameter is freed, so a dropped model frees its masks.
_MASKS: dict[int, torch.Tensor] = {}
_STEP_HOOK = None


def _mask(p: torch.Tensor) -> torch.Tensor | None:
    return _MASKS.get(id(p))


def _set_mask(p: torch.Tensor, mask: torch.Tensor) -> None:
    if id(p) not in _MASKS:
        weakref.finalize(p, _MASKS.pop, id(p), None)
        p.register_hook(_mask_gradient(p))
    _MASKS[id(p)] = mask


def _reapply_masks(optimizer, args, kwargs) -> None:
    """After any optimizer step: pruned entries of the parameters it stepped are 0 again."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                mask = _mask(p)
                if mask is not None:
                    p.masked_fill_(~mask, 0)


def _ensure_step_hook() -> None:
    global _STEP_HOOK
    if _STEP_HOOK is None:
        _STEP_HOOK = register_optimizer_step_post_hook(_reapply_masks)


def _mask_gradient(param: nn.Parameter):
    key = id(param)  # not the tensor itself: the hook must not keep the parameter alive

    def hook(grad: torch.Tensor) -> torch.Tensor:
        mask = _MASKS.get(key)
        return grad if mask is None else grad.masked_fill(~mask, 0)
    return hook


def prunable_weights(model: nn.Module, include=None, exclude=None) -> dict[str, nn.Parameter]:
    """{parameter name: weight} of the model's Linear / Conv1d / Conv2d layers that the
    include/exclude globs select. ValueError when a glob matches none of them, nothing is
    left, or a selected weight is already shared or under QAT (qpack.torch.sharing)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found, computed = {}, {}
    for name, module in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        kind = getattr(module, "_qpack_weight_kind", None)  # set by qpack.torch.sharing
        if isinstance(module, PRUNABLE) and kind is not None:
            found[key], computed[key] = None, kind
        elif isinstance(module, PRUNABLE) and isinstance(module.weight, nn.Parameter):
            found[key] = module.weight
    if not found:
        raise ValueError("the model has no nn.Linear / nn.Conv1d / nn.Conv2d weight to prune")
    inc, exc = patterns(include, "include"), patterns(exclude, "exclude")
    for pat in inc + exc:
        if not any(fnmatch.fnmatchcase(n, pat) for n in found):
            raise ValueError(f"pattern {pat!r} matches no Linear/Conv weight (they are: "
                             f"{', '.join(list(found)[:8])}{' ...' if len(found) > 8 else ''})")
    chosen = {n: p for n, p in found.items()
              if (not inc or any(fnmatch.fnmatchcase(n, g) for g in inc))
              and not any(fnmatch.fnmatchcase(n, g) for g in exc)}
    if not chosen:
        raise ValueError("include/exclude leave no weight to prune")
    for name in chosen:
        if name in computed:
            state = "shared" if computed[name] == "shared" else "under QAT"
            raise ValueError(f"{name} is already {state} (prune before share_weights / "
                             "quantize_aware; each runs once per weight)")
    return chosen


def _fraction(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{what} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def _amounts(amount, names: list[str]) -> dict[str, float]:
    """The fraction to prune of each selected weight (a dict: later globs win; weights no
    glob names are left as they are)."""
    if not isinstance(amount, Mapping):
        a = _fraction(amount, "amount")
        return {n: a for n in names}
    out: dict[str, float] = {}
    for pat, value in amount.items():
        if not isinstance(pat, str):
            raise ValueError(f"amount keys must be globs, got {pat!r}")
        hit = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hit:
            raise ValueError(f"amount pattern {pat!r} matches no selected weight")
        for n in hit:
            out[n] = _fraction(value, f"amount[{pat!r}]")
    return out


def _keep_count(numel: int, amount: float) -> int:
    return numel - int(round(amount * numel))


def _layer_mask(w: torch.Tensor, old: torch.Tensor | None, amount: float) -> torch.Tensor:
    """Keep the round((1 - amount) * n) largest |w|, never reviving a pruned entry.

    Already-pruned entries rank below every survivor, so a larger amount prunes further
    among the survivors; ties are broken by position (stable sort), as qpack.prune does.
    """
    score = w.detach().abs().reshape(-1).to(torch.float64)
    if old is not None:
        score = score.masked_fill(~old.reshape(-1), -1.0)
    keep = _keep_count(score.numel(), amount)
    order = torch.sort(score, descending=True, stable=True).indices
    mask = torch.zeros(score.numel(), dtype=torch.bool, device=w.device)
    mask[order[:keep]] = True
    if old is not None:
        mask &= old.reshape(-1)
    return mask.reshape(w.shape)


def _global_masks(weights: dict[str, nn.Parameter], amount: float) -> dict[str, torch.Tensor]:
    """One magnitude threshold over all selected weights (already pruned entries first)."""
    scores = []
    for p in weights.values():
        s = p.detach().abs().reshape(-1).to(torch.float64)
        old = _mask(p)
        scores.append(s if old is None else s.masked_fill(~old.reshape(-1), -1.0))
    flat = torch.cat(scores)
    keep = _keep_count(flat.numel(), amount)
    order = torch.sort(flat, descending=True, stable=True).indices
    keep_flat = torch.zeros(flat.numel(), dtype=torch.bool)
    keep_flat[order[:keep]] = True
    masks, start = {}, 0
    for name, p in weights.items():
        m = keep_flat[start:start + p.numel()].reshape(p.shape).to(p.device)
        old = _mask(p)
        masks[name] = m if old is None else m & old
        start += p.numel()
    return masks


def prune(model: nn.Module, amount, *, scope: str = "layer", include=None,
          exclude=None) -> dict[str, torch.Tensor]:
    """Prune the model's Linear / Conv1d / Conv2d weights by magnitude, for good.

    Parameters
    ----------
    model : the torch.nn.Module, pruned in place.
    amount : fraction in [0, 1) of each *whole* weight tensor to be zero afterwards, or
        {glob on parameter name: fraction} (later globs win; weights no glob names are left
        alone). Calling again with a larger amount prunes further among the survivors; a
        smaller one changes nothing (pruned weights never come back).
    scope : "layer" (each tensor loses ``amount`` of its entries) or "global" (one magnitude
        threshold across the selected tensors; ``amount`` must be a single fraction).
    include, exclude : glob(s) on parameter names ("fc1.weight", "features.0.weight")
        choosing which layers are pruned.

    Returns {parameter name: bool keep-mask} of every weight pruned so far by this call's
    selection, the masks that ``qpack.compress(model, masks=...)`` takes. The masks persist
    through training: pruned entries get zero gradients and are set back to exactly 0 after
    every optimizer step (any torch optimizer: momentum, weight decay, Adam, ...).

    Raises ValueError for an amount outside [0, 1), an unknown scope, a glob that matches
    no Linear/Conv weight, or a model without one.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    weights = prunable_weights(model, include, exclude)
    if scope == "global":
        if isinstance(amount, Mapping):
            raise ValueError("scope='global' takes one amount for all weights, not a dict")
        new = _global_masks(weights, _fraction(amount, "amount"))
    else:
        per = _amounts(amount, list(weights))
        new = {n: _layer_mask(weights[n], _mask(weights[n]), a) for n, a in per.items()}
    _ensure_step_hook()
    for name, mask in new.items():
        p = weights[name]
        _set_mask(p, mask)
        with torch.no_grad():
            p.masked_fill_(~mask, 0)
    return {n: _mask(p).clone() for n, p in weights.items() if _mask(p) is not None}


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """{parameter name: keep-mask} of every weight of ``model`` that ``prune`` pruned."""
    return {n: _mask(p).clone() for n, p in model.named_parameters() if _mask(p) is not None}
