"""Per-layer pruning sensitivity, and per-layer sparsities chosen from it.

Han et al. chose each layer's sparsity from a sensitivity scan: prune one layer alone at a
range of amounts, without retraining, and see how much the model suffers (Learning both
Weights and Connections, NIPS 2015, Fig. 6; Deep Compression keeps ~8% of LeNet's weights
with the small last layers kept densest). ``sensitivity`` measures that curve with the
training loss on a few batches; ``allocate_sparsity`` turns the curves into per-layer
amounts that reach an overall sparsity while adding as little loss as the curves predict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qpack.torch.pruning import _fraction, _layer_mask, _mask, prunable_weights

DEFAULT_AMOUNTS = (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


@dataclass
class Sensitivity:
    """The result of ``sensitivity``: the loss with each layer alone pruned.

    base_loss : mean loss of the model as it was.
    amounts : the fractions tried, increasing.
    losses : {weight name: [mean loss with only that weight pruned to each amount]}.
    numel : {weight name: number of entries}.
    """

    base_loss: float
    amounts: tuple[float, ...]
    losses: dict[str, list[float]]
    numel: dict[str, int]

    def allocate(self, sparsity: float) -> dict[str, float]:
        """``allocate_sparsity(self, sparsity)``."""
        return allocate_sparsity(self, sparsity)


def _mean_loss(model: nn.Module, batches: list, loss_fn: Callable) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            total += float(loss_fn(model(x), y)) * len(y)
            count += len(y)
    return total / count


def sensitivity(model: nn.Module, data: Iterable, loss_fn: Callable, *,
                amounts: Sequence[float] = DEFAULT_AMOUNTS, include=None, exclude=None,
                max_batches: int = 8) -> Sensitivity:
    """Prune each selected Linear / Conv weight alone to each amount; record the loss.

    model : the trained nn.Module; left exactly as it was (weights restored, no masks
        added; weights pruned earlier keep their pruned entries in every trial).
    data : an iterable of (x, y) batches; the first ``max_batches`` are used, once.
    loss_fn : loss_fn(model(x), y) -> scalar tensor (a mean over the batch).
    amounts : fractions of each whole tensor, each in [0, 1), strictly increasing.

    Returns a Sensitivity. Raises ValueError for bad amounts, a max_batches < 1, globs
    that match nothing, or data without a batch.
    """
    amounts = tuple(_fraction(a, "amounts entry") for a in amounts)
    if not amounts or any(b <= a for a, b in zip(amounts, amounts[1:], strict=False)):
        raise ValueError(f"amounts must be a non-empty, strictly increasing sequence, got "
                         f"{amounts!r}")
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
        raise ValueError(f"max_batches must be an integer >= 1, got {max_batches!r}")
    weights = prunable_weights(model, include, exclude)
    batches = []
    for batch in data:
        batches.append(batch)
        if len(batches) == max_batches:
            break
    if not batches:
        raise ValueError("data yielded no (x, y) batch")
    was_training = model.training
    model.eval()
    try:
        base = _mean_loss(model, batches, loss_fn)
        losses: dict[str, list[float]] = {}
        for name, p in weights.items():
            saved = p.detach().clone()
            curve = []
            for a in amounts:
                keep = _layer_mask(saved, _mask(p), a)
                with torch.no_grad():
                    p.copy_(saved.masked_fill(~keep, 0))
                curve.append(_mean_loss(model, batches, loss_fn))
            with torch.no_grad():
                p.copy_(saved)
            losses[name] = curve
    finally:
        model.train(was_training)
    return Sensitivity(base, amounts, losses, {n: p.numel() for n, p in weights.items()})


def _lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower convex hull of (x, y) points sorted by x (monotone chain)."""
    hull: list[tuple[float, float]] = []
    for p in points:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def allocate_sparsity(scan: Sensitivity, sparsity: float,
                      fixed: Mapping[str, float] | None = None) -> dict[str, float]:
    """Per-layer amounts that prune ``sparsity`` of all scanned weights (by count) at the
    least predicted loss.

    Each layer's curve (loss increase against pruned entries, with (0, 0) added) is made
    convex by its lower hull; then pruned entries are handed out greedily where they cost
    the least loss per entry, the last segment taken in part, so that the total is met
    exactly (up to rounding). That is the optimum for the convexified curves if the
    layers' losses add up, which the scan (one layer at a time) assumes. A layer is never
    pruned beyond the largest amount scanned.

    scan : a Sensitivity; sparsity : overall fraction in [0, 1).
    fixed : {weight name: amount} for layers whose amount is given (counted in the total).

    Returns {weight name: amount}. Raises ValueError when the target needs more than the
    largest amount scanned in every layer, or for a bad sparsity.
    """
    sparsity = _fraction(sparsity, "sparsity")
    fixed = dict(fixed or {})
    total = sum(scan.numel.values())
    need = sparsity * total - sum(scan.numel[n] * a for n, a in fixed.items())
    free = [n for n in scan.losses if n not in fixed]
    reach = sum(scan.numel[n] * scan.amounts[-1] for n in free)
    if need > reach + 0.5:
        raise ValueError(f"sparsity {sparsity} needs more than the largest amount scanned "
                         f"({scan.amounts[-1]}) in every layer")
    segments = []  # (loss per pruned entry, name, entries from, entries to)
    for n in free:
        # a NaN/inf loss (the model blew up) ranks as the costliest, not as free
        pts = [(0.0, 0.0)] + [(a * scan.numel[n], max(0.0, loss - scan.base_loss)
                               if math.isfinite(loss) else 1e300)
                              for a, loss in zip(scan.amounts, scan.losses[n], strict=True)]
        hull = _lower_hull(pts)
        for (x0, y0), (x1, y1) in zip(hull, hull[1:], strict=False):
            segments.append(((y1 - y0) / (x1 - x0), n, x0, x1))
    segments.sort(key=lambda s: s[0])
    pruned = dict.fromkeys(free, 0.0)
    left = max(need, 0.0)
    for _, n, x0, x1 in segments:  # each layer's hull segments come in slope order
        if left <= 0:
            break
        take = min(x1 - x0, left)
        pruned[n] = x0 + take
        left -= take
    out = {n: pruned[n] / scan.numel[n] for n in free}
    out.update(fixed)
    return {n: out[n] for n in scan.losses}
