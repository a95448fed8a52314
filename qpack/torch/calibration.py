"""``calibrate``: the inputs each Linear / Conv layer sees, collected by forward hooks as
``qpack.HessianStats`` (X^T X in float64), ready for ``qpack.compress(calibration=...)``."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from qpack.calibration import HessianStats
from qpack.torch.pruning import prunable_weights


def _conv_padding(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """``x`` padded as the conv pads it, and the padding left for unfold (zeros only)."""
    pad = module.padding
    if isinstance(pad, str):
        if pad == "valid":
            return x, (0,) * len(module.kernel_size)
        # "same" (stride 1): dilation * (k - 1) in all, the extra one on the right/bottom
        widths = []
        for k, d in reversed(list(zip(module.kernel_size, module.dilation, strict=True))):
            total = d * (k - 1)
            widths += [total // 2, total - total // 2]
        return nn.functional.pad(x, widths), (0,) * len(module.kernel_size)
    return x, tuple(pad)


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows (n, in_features) that ``module``'s weight, viewed as (out, in_features),
    multiplies: a Linear's inputs flattened over leading dimensions, or a conv's unfolded
    patches with columns ordered (in_channel, kh[, kw]) like ``weight.reshape(out, -1)``."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    conv1d = isinstance(module, nn.Conv1d)
    if conv1d:  # as a 2-D conv of height 1
        x = x.unsqueeze(-2)
    x, pad = _conv_padding(module, x)
    k, s, d = module.kernel_size, module.stride, module.dilation
    if conv1d:
        k, s, d, pad = (1, k[0]), (1, s[0]), (1, d[0]), (0, pad[0])
    patches = nn.functional.unfold(x, k, dilation=d, padding=pad, stride=s)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def _check_layer(name: str, module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        return
    if module.groups != 1:
        raise ValueError(f"{name}: a grouped conv (groups={module.groups}) multiplies each "
                         "group by other inputs; calibrate it with include/exclude left out")
    if module.padding_mode != "zeros":
        raise ValueError(f"{name}: padding_mode {module.padding_mode!r} is not supported "
                         "(only 'zeros')")


def calibrate(model: nn.Module, batches: Iterable, *, include=None, exclude=None,
              max_batches: int | None = None) -> dict[str, HessianStats]:
    """Run ``model`` over ``batches`` and collect every selected layer's input statistics.

    model : a torch nn.Module; its nn.Linear / nn.Conv1d / nn.Conv2d layers (chosen by the
        include/exclude globs on weight names, e.g. "encoder.*.weight") are hooked.
    batches : an iterable of model inputs: a tuple or list is an (x, y) pair and runs
        ``model(batch[0])``; a dict runs ``model(**batch)`` (e.g. tokenizer output);
        anything else runs ``model(batch)``.
    max_batches : stop after this many batches (None: all).

    Returns {weight name: HessianStats} for ``qpack.compress(model, calibration=...)``:
    X^T X of the layer's inputs accumulated in float64 (see ``layer_inputs`` for conv
    patches), one update per forward call. The model runs in eval mode under no_grad and
    is put back in its mode; the hooks are removed, also on error.

    Raises ValueError for a model without Linear/Conv layers, globs that match nothing,
    grouped convs or non-zero padding modes, a bad max_batches, no batch at all, a layer
    that never ran, or non-finite inputs (naming the layer).
    """
    if max_batches is not None and (isinstance(max_batches, bool) or
                                    not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be None or an integer >= 1, got {max_batches!r}")
    names = list(prunable_weights(model, include, exclude))
    modules = {n: model.get_submodule(n.rpartition(".")[0]) for n in names}
    for n, m in modules.items():
        _check_layer(n, m)
    # in_features of the weight's matrix view (out, in * kh * kw)
    stats = {n: HessianStats(m.weight[0].numel()) for n, m in modules.items()}

    def hook_for(name: str):
        def hook(module, args, output):
            rows = layer_inputs(module, args[0].detach())
            try:
                stats[name].update(rows.to(torch.float32).cpu().numpy())
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                if isinstance(batch, dict):
                    model(**batch)
                elif isinstance(batch, (tuple, list)):
                    model(batch[0])
                else:
                    model(batch)
                seen += 1
                if max_batches is not None and seen >= max_batches:
                    break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("batches yielded nothing")
    idle = [n for n, s in stats.items() if s.n_samples == 0]
    if idle:
        raise ValueError(f"these layers never ran on the batches: {', '.join(idle[:8])}")
    return stats
