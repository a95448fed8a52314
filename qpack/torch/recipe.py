"""``deep_compression``: the paper's three stages in one call, on the building blocks.

1. prune by magnitude in ``prune_rounds`` rounds up to the target sparsity, retraining
   after each round with the pruned weights held at zero (qpack.torch.prune);
2. share weights by K-means and fine-tune the centroids (qpack.torch.share_weights);
3. export exactly and Huffman-code (qpack.torch.to_qpack).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from qpack.progress import Progress
from qpack.torch.export import to_qpack
from qpack.torch.pruning import _fraction, prunable_weights, prune
from qpack.torch.sharing import share_weights

REGULARIZERS = (None, "l1", "l2")


def _sgd(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def _scaled(sparsity, fraction: float):
    """The round's amount, ``fraction`` of the way to the target: the kept fraction falls
    geometrically (kept_r = kept_final ** fraction), so every round removes the same share
    of the survivors; a linear schedule leaves a last step too large to retrain from."""
    def one(s: float) -> float:
        return 1.0 - (1.0 - s) ** fraction
    if isinstance(sparsity, Mapping):
        return {k: one(v) for k, v in sparsity.items()}
    return one(sparsity)


def _check(sparsity, bits, prune_rounds, epochs: dict, lr, regularization, strength,
           distill_temperature, optimizer) -> None:
    values = sparsity.values() if isinstance(sparsity, Mapping) else [sparsity]
    for v in values:
        _fraction(v, "sparsity")
    for name, n in [("prune_rounds", prune_rounds), *epochs.items()]:
        low = 1 if name == "prune_rounds" else 0
        if isinstance(n, bool) or not isinstance(n, int) or n < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {n!r}")
    for name, v in (("lr", lr), ("regularization_strength", strength)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < 0:
            raise ValueError(f"{name} must be a non-negative number, got {v!r}")
    if regularization not in REGULARIZERS:
        raise ValueError(f"regularization must be one of {REGULARIZERS}, got "
                         f"{regularization!r}")
    if distill_temperature is not None and (isinstance(distill_temperature, bool) or not
                                            isinstance(distill_temperature, (int, float))
                                            or not distill_temperature > 0):
        raise ValueError(f"distill_temperature must be None or > 0, got "
                         f"{distill_temperature!r}")
    if not callable(optimizer):
        raise ValueError("optimizer must be a callable (params, lr) -> torch optimizer")
    del bits  # checked by share_weights before any training


def _train(model, data, loss_fn, opt, epochs, teacher, temperature, reg, strength,
           weights: list[nn.Parameter]) -> None:
    model.train()
    for _ in range(epochs):
        for x, y in data:
            out = model(x)
            loss = loss_fn(out, y)
            if teacher is not None:  # distillation: KL to the float model's soft logits
                with torch.no_grad():
                    soft = torch.softmax(teacher(x) / temperature, dim=-1)
                loss = loss + temperature ** 2 * nn.functional.kl_div(
                    torch.log_softmax(out / temperature, dim=-1), soft,
                    reduction="batchmean")
            if reg == "l2":
                loss = loss + strength * sum(w.square().sum() for w in weights)
            elif reg == "l1":
                loss = loss + strength * sum(w.abs().sum() for w in weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def deep_compression(model: nn.Module, data: Iterable, loss_fn: Callable, *,
                     evaluate: Callable[[nn.Module], float] | None = None,
                     sparsity=0.9, bits=5, prune_rounds: int = 3, retrain_epochs: int = 2,
                     finetune_epochs: int = 1, lr: float = 0.01,
                     finetune_lr: float | None = None,
                     optimizer: Callable = _sgd, regularization: str | None = "l2",
                     regularization_strength: float = 1e-5,
                     distill_temperature: float | None = None, include=None, exclude=None,
                     entropy: str | None = "huffman", progress: bool = False):
    """Deep Compression of a trained torch model: prune + retrain, share + fine-tune, export.

    Parameters
    ----------
    model : a trained nn.Module, compressed in place (its Linear / Conv weights end up
        shared: ``weight = codebook[codes]``).
    data : any re-iterable of (x, y) batches (a DataLoader, a list), one pass an epoch.
    loss_fn : loss_fn(model(x), y) -> scalar tensor.
    evaluate : optional evaluate(model) -> float (e.g. test accuracy), recorded per stage.
    sparsity : final fraction pruned, a float or {glob on parameter name: float}; reached
        in ``prune_rounds`` rounds that each remove the same share of the survivors, each
        followed by ``retrain_epochs`` of training.
    bits : K-means code width, an int or {glob: int}; ``finetune_epochs`` of centroid
        fine-tuning (at ``finetune_lr``, default lr / 10) follow the sharing.
    optimizer : optimizer(params, lr) -> torch optimizer (default SGD, momentum 0.9).
    regularization, regularization_strength : "l2" (as the paper retrains), "l1" or None,
        added to the loss on the pruned layers' weights while retraining.
    distill_temperature : if set, retraining adds the KL divergence to the original
        model's softened logits (knowledge distillation) at that temperature.
    include, exclude : globs choosing the layers; entropy : as in qpack.compress.
    progress : count the training epochs on stderr.

    Returns the CompressedModel (``qpack.torch.to_qpack`` of the result), with a
    ``history`` attribute: one dict per stage (stage, kept, bits, bytes, metric; bytes is
    the .qpk size once weights are shared, None before). Raises ValueError for bad
    arguments, before any training.
    """
    _check(sparsity, bits, prune_rounds, {"retrain_epochs": retrain_epochs,
                                          "finetune_epochs": finetune_epochs},
           lr, regularization, regularization_strength, distill_temperature, optimizer)
    names = list(prunable_weights(model, include, exclude))
    teacher = copy.deepcopy(model).eval() if distill_temperature else None
    history: list[dict] = []

    def record(stage: str, bits_now, nbytes) -> None:
        # nonzero entries of the layers' weights as forward uses them (pruned entries are
        # exactly 0, shared or not)
        ws = [model.get_submodule(n.rpartition(".")[0]).weight.detach() for n in names]
        kept = sum(int(torch.count_nonzero(w)) for w in ws) / max(sum(w.numel() for w in ws), 1)
        history.append({"stage": stage, "kept": kept, "bits": bits_now, "bytes": nbytes,
                        "metric": evaluate(model) if evaluate is not None else None})

    record("float", None, None)
    total_epochs = prune_rounds * retrain_epochs + finetune_epochs
    bar = Progress(total_epochs, "deep_compression", "epochs") if progress else None
    for r in range(1, prune_rounds + 1):
        prune(model, _scaled(sparsity, r / prune_rounds), include=include, exclude=exclude)
        weights = [p for n, p in model.named_parameters() if n in names]
        opt = optimizer(model.parameters(), lr)
        for _ in range(retrain_epochs):
            _train(model, data, loss_fn, opt, 1, teacher, distill_temperature,
                   regularization, regularization_strength, weights)
            if bar is not None:
                bar.update()
        record(f"prune round {r}/{prune_rounds} + retrain", None, None)
    share_weights(model, bits, include=include, exclude=exclude)
    opt = optimizer(model.parameters(), finetune_lr if finetune_lr is not None else lr / 10)
    for _ in range(finetune_epochs):
        _train(model, data, loss_fn, opt, 1, None, None, None, 0.0, [])
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    cm = to_qpack(model, entropy=entropy)
    record("share weights + fine-tune centroids, export", bits, cm.nbytes)
    cm.history = history
    return cm
