"""``deep_compression``: the paper's three stages in one call, on the building blocks.

0. unless given per layer, choose each layer's sparsity from a sensitivity scan
   (qpack.torch.sensitivity) and its bits as the paper did (8 for conv, 5 for fc);
1. prune by magnitude in ``prune_rounds`` rounds up to the target sparsity, retraining
   after each round with the pruned weights held at zero (qpack.torch.prune);
2. share weights by K-means and fine-tune the centroids (qpack.torch.share_weights);
3. export exactly and Huffman-code (qpack.torch.to_qpack).
"""

from __future__ import annotations

import copy
import glob
import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from qpack.progress import progress_bar
from qpack.torch.export import to_qpack
from qpack.torch.pruning import _amounts, _fraction, prunable_weights, prune
from qpack.torch.sensitivity import sensitivity
from qpack.torch.sharing import _bits_for, share_weights

REGULARIZERS = (None, "l1", "l2")
ALLOCATIONS = ("sensitivity", "uniform")
# Deep Compression's code widths: 8 bits for conv layers, 5 for fully connected ones
# (AlexNet, Table 4; LeNet-5, Table 3)
CONV_BITS, FC_BITS = 8, 5


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


def _exact(per_name: dict) -> dict:
    """{name: value} as globs that match just that name (a name may hold [, * or ?)."""
    return {glob.escape(n): v for n, v in per_name.items()}


def default_bits(model: nn.Module, names) -> dict[str, int]:
    """The paper's bits per weight name: CONV_BITS for conv layers, FC_BITS for Linear."""
    return {n: FC_BITS if isinstance(model.get_submodule(n.rpartition(".")[0]), nn.Linear)
            else CONV_BITS for n in names}


def _check(sparsity, prune_rounds, epochs: dict, lr, regularization, strength,
           distill_temperature, optimizer, allocate) -> None:
    if allocate not in ALLOCATIONS:
        raise ValueError(f"allocate must be one of {ALLOCATIONS}, got {allocate!r}")
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
                     sparsity=0.9, bits=None, allocate: str = "sensitivity",
                     prune_rounds: int = 3, retrain_epochs: int = 2,
                     finetune_epochs: int = 1, lr: float = 0.01,
                     finetune_lr: float | None = None,
                     optimizer: Callable = _sgd, regularization: str | None = "l2",
                     regularization_strength: float = 5e-5,
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
    allocate : for a float ``sparsity``: "sensitivity" (default) prunes that fraction of
        all selected weights together, split over the layers by a sensitivity scan
        (``qpack.torch.sensitivity`` on the first batches of ``data``, then
        ``allocate_sparsity``: layers that suffer least lose most); "uniform" prunes every
        layer by the same fraction. A dict ``sparsity`` is used as given.
    bits : K-means code width, an int or {glob: int}; None (default) is the paper's choice,
        8 bits for conv layers and 5 for Linear ones. ``finetune_epochs`` of centroid
        fine-tuning (at ``finetune_lr``, default lr / 10) follow the sharing.
    optimizer : optimizer(params, lr) -> torch optimizer (default SGD, momentum 0.9).
    regularization, regularization_strength : "l2" (as the paper retrains), "l1" or None,
        added to the loss on the pruned layers' weights while retraining: strength * sum
        of w**2 (L2; the default 5e-5 is SGD's weight_decay=1e-4) or of |w| (L1).
    distill_temperature : if set, retraining adds the KL divergence to the original
        model's softened logits (knowledge distillation) at that temperature.
    include, exclude : globs choosing the layers; entropy : as in qpack.compress.
    progress : a progress bar over the training epochs on stderr (tqdm's, which comes
        with the ``torch`` extra, or qpack's own one-line counter without tqdm).

    Returns the CompressedModel (``qpack.torch.to_qpack`` of the result), with a
    ``history`` attribute: one dict per stage (stage, kept, bits, bytes, metric; bytes is
    the .qpk size once weights are shared, None before; the stages are "float", one per
    prune round, "share weights (K-means)" and "fine-tune centroids, export"), and a
    ``schedule`` attribute: {"sparsity": {weight name: fraction pruned}, "bits": {weight
    name: bits}}, with the scan under "sensitivity" when one ran. Raises ValueError for
    bad arguments, before any training.
    """
    _check(sparsity, prune_rounds, {"retrain_epochs": retrain_epochs,
                                          "finetune_epochs": finetune_epochs},
           lr, regularization, regularization_strength, distill_temperature, optimizer,
           allocate)
    names = list(prunable_weights(model, include, exclude))
    # {weight name: bits} and, for a dict, {weight name: sparsity}: checked here, before
    # any training (globs naming no selected weight, bits outside 1..8)
    bits = _bits_for(default_bits(model, names) if bits is None else bits, names)
    scan = None
    if isinstance(sparsity, Mapping):
        sparsity = _amounts(sparsity, names)
    elif allocate == "sensitivity":
        scan = sensitivity(model, data, loss_fn, include=include, exclude=exclude)
        sparsity = scan.allocate(sparsity)
    else:
        sparsity = dict.fromkeys(names, float(sparsity))
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
    bar = progress_bar(total_epochs, "deep_compression", "epochs") if progress else None
    for r in range(1, prune_rounds + 1):
        prune(model, _exact(_scaled(sparsity, r / prune_rounds)), include=include,
              exclude=exclude)
        weights = [p for n, p in model.named_parameters() if n in names]
        opt = optimizer(model.parameters(), lr)
        for _ in range(retrain_epochs):
            _train(model, data, loss_fn, opt, 1, teacher, distill_temperature,
                   regularization, regularization_strength, weights)
            if bar is not None:
                bar.update()
        record(f"prune round {r}/{prune_rounds} + retrain", None, None)
    share_weights(model, _exact(bits), include=include, exclude=exclude)
    record("share weights (K-means)", bits, None)
    opt = optimizer(model.parameters(), finetune_lr if finetune_lr is not None else lr / 10)
    for _ in range(finetune_epochs):
        _train(model, data, loss_fn, opt, 1, None, None, None, 0.0, [])
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    cm = to_qpack(model, entropy=entropy)
    # fine-tuning moves centroids only, not codes or masks: the file before it is the
    # same size (the Huffman tables see the same codes)
    history[-1]["bytes"] = cm.nbytes
    record("fine-tune centroids, export", bits, cm.nbytes)
    cm.history = history
    cm.schedule = {"sparsity": sparsity, "bits": bits}
    if scan is not None:
        cm.schedule["sensitivity"] = scan
    return cm
