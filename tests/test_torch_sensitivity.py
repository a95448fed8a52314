"""qpack.torch.sensitivity and allocate_sparsity, and deep_compression's per-layer defaults."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="qpack.torch needs the torch extra")

import qpack.torch as qt  # noqa: E402
from qpack.torch.sensitivity import Sensitivity, allocate_sparsity  # noqa: E402


def mlp(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def batches(n: int = 4, size: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 12, generator=g), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n)]


def reference_loss(net, data, loss_fn) -> float:
    """Mean loss per sample, computed directly."""
    with torch.no_grad():
        return float(sum(loss_fn(net(x), y) * len(y) for x, y in data) /
                     sum(len(y) for _, y in data))


def test_scan_prunes_one_layer_at_a_time_and_restores_the_model():
    net, data = mlp(), batches()
    loss_fn = torch.nn.functional.cross_entropy
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scan = qt.sensitivity(net, data, loss_fn, amounts=(0.25, 0.5, 0.75))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert qt.masks_of(net) == {}
    assert list(scan.losses) == ["0.weight", "2.weight", "4.weight"]
    assert scan.numel == {"0.weight": 192, "2.weight": 128, "4.weight": 24}
    assert scan.base_loss == pytest.approx(reference_loss(net, data, loss_fn), rel=1e-6)
    # the 2.weight entry at 0.5, recomputed by hand: half of its smallest |w| zeroed
    w = net[2].weight.detach().clone()
    order = torch.sort(w.abs().reshape(-1), descending=True, stable=True).indices
    keep = torch.zeros(w.numel(), dtype=torch.bool)
    keep[order[:64]] = True
    with torch.no_grad():
        net[2].weight.masked_fill_(~keep.reshape(w.shape), 0)
    assert scan.losses["2.weight"][1] == pytest.approx(reference_loss(net, data, loss_fn),
                                                       rel=1e-6)


def test_scan_keeps_earlier_pruning_in_every_trial():
    net, data = mlp(), batches()
    masks = qt.prune(net, 0.6, include="0.weight")
    scan = qt.sensitivity(net, data, torch.nn.functional.cross_entropy, amounts=(0.1, 0.6))
    assert torch.equal(qt.masks_of(net)["0.weight"], masks["0.weight"])
    # at or below the amount already pruned, the trial changes nothing
    assert scan.losses["0.weight"][0] == pytest.approx(scan.base_loss, rel=1e-6)
    assert scan.losses["0.weight"][1] == pytest.approx(scan.base_loss, rel=1e-6)


def test_scan_uses_at_most_max_batches_from_a_one_shot_iterator():
    net, data = mlp(), batches(6)
    scan = qt.sensitivity(net, iter(data), torch.nn.functional.cross_entropy,
                          amounts=(0.5,), max_batches=2)
    loss = reference_loss(net, data[:2], torch.nn.functional.cross_entropy)
    assert scan.base_loss == pytest.approx(loss, rel=1e-6)


def convex_scan(rng, numel: dict[str, int], amounts) -> Sensitivity:
    """A scan whose curves are convex and increasing (random per layer)."""
    losses = {}
    for n in numel:
        k = rng.uniform(0.1, 5.0)
        p = rng.uniform(1.5, 4.0)
        losses[n] = [1.0 + k * a ** p for a in amounts]
    return Sensitivity(1.0, tuple(amounts), losses, dict(numel))


def predicted(scan: Sensitivity, alloc: dict[str, float]) -> float:
    """Sum over layers of the piecewise-linear loss increase at each layer's amount."""
    total = 0.0
    for n, a in alloc.items():
        xs = [0.0, *scan.amounts]
        ys = [0.0, *(v - scan.base_loss for v in scan.losses[n])]
        total += float(np.interp(a, xs, ys))
    return total


@pytest.mark.parametrize("seed", range(5))
def test_allocation_meets_the_total_and_beats_every_grid_allocation(seed):
    rng = np.random.default_rng(seed)
    amounts = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95)
    numel = {"a": 1000, "b": 300, "c": 50}
    scan = convex_scan(rng, numel, amounts)
    target = 0.7
    alloc = allocate_sparsity(scan, target)
    pruned = sum(numel[n] * alloc[n] for n in numel)
    assert pruned == pytest.approx(target * sum(numel.values()), abs=1e-6)
    assert all(0 <= a <= amounts[-1] for a in alloc.values())
    best = predicted(scan, alloc)
    # brute force over a fine grid of per-layer amounts for two layers, the third solved
    fine = np.linspace(0, amounts[-1], 96)
    for a, b in itertools.product(fine, fine):
        c = (target * 1350 - 1000 * a - 300 * b) / 50
        if 0 <= c <= amounts[-1]:
            assert best <= predicted(scan, {"a": a, "b": b, "c": c}) + 1e-9


def test_allocation_prunes_the_insensitive_layer_first_and_respects_fixed():
    amounts = (0.5, 0.9)
    scan = Sensitivity(1.0, amounts, {"flat": [1.0, 1.01], "steep": [2.0, 9.0]},
                       {"flat": 100, "steep": 100})
    alloc = allocate_sparsity(scan, 0.45)
    assert alloc["flat"] == pytest.approx(0.9) and alloc["steep"] == pytest.approx(0.0)
    alloc = allocate_sparsity(scan, 0.45, fixed={"flat": 0.2})
    assert alloc == {"flat": 0.2, "steep": pytest.approx(0.7)}
    with pytest.raises(ValueError, match="largest amount scanned"):
        allocate_sparsity(scan, 0.95)


def test_a_diverged_trial_is_pruned_last():
    scan = Sensitivity(1.0, (0.5, 0.9), {"ok": [1.5, 3.0], "nan": [float("nan")] * 2},
                       {"ok": 10, "nan": 10})
    alloc = allocate_sparsity(scan, 0.4)
    assert alloc["ok"] == pytest.approx(0.8) and alloc["nan"] == 0.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(amounts=()), "strictly increasing"), (dict(amounts=(0.5, 0.3)), "strictly"),
    (dict(amounts=(0.5, 1.0)), r"\[0, 1\)"), (dict(max_batches=0), "max_batches"),
    (dict(include="nothing*"), "matches no"),
])
def test_scan_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        qt.sensitivity(mlp(), batches(), torch.nn.functional.cross_entropy, **kwargs)


def test_scan_without_data_is_an_error():
    with pytest.raises(ValueError, match="no .x, y. batch"):
        qt.sensitivity(mlp(), [], torch.nn.functional.cross_entropy)


def test_deep_compression_defaults_scan_allocation_and_paper_bits():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 3))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g))
            for _ in range(3)]
    cm = qt.deep_compression(net, data, torch.nn.functional.cross_entropy, sparsity=0.5,
                             prune_rounds=1, retrain_epochs=1, finetune_epochs=0)
    sched = cm.schedule
    assert sched["bits"] == {"0.weight": 8, "2.weight": 5}
    numel = {"0.weight": 36, "2.weight": 432}
    assert isinstance(sched["sensitivity"], Sensitivity)
    assert sum(numel[n] * a for n, a in sched["sparsity"].items()) == \
        pytest.approx(0.5 * 468, abs=1)
    assert cm.history[-1]["kept"] * 468 == pytest.approx(0.5 * 468, abs=2)
    assert cm["0.weight"].bits == 8 and cm["2.weight"].bits == 5


def test_deep_compression_uniform_allocation_and_bits_checked_before_training():
    net = mlp()
    cm = qt.deep_compression(net, batches(), torch.nn.functional.cross_entropy,
                             sparsity=0.5, allocate="uniform", bits=3, prune_rounds=1,
                             retrain_epochs=0, finetune_epochs=0)
    assert cm.schedule["sparsity"] == dict.fromkeys(["0.weight", "2.weight", "4.weight"], 0.5)
    assert "sensitivity" not in cm.schedule
    for bad, match in [(dict(bits=9), "bits"), (dict(bits={"nothing*": 4}), "matches no"),
                       (dict(allocate="greedy"), "allocate")]:
        fresh = mlp()
        before = {k: v.clone() for k, v in fresh.state_dict().items()}
        with pytest.raises(ValueError, match=match):
            qt.deep_compression(fresh, batches(), torch.nn.functional.cross_entropy, **bad)
        assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


def test_progress_bar_falls_back_without_tqdm(monkeypatch, capsys):
    import builtins
    import sys

    from qpack.progress import Progress, progress_bar

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    for key in [k for k in sys.modules if k.startswith("tqdm")]:
        monkeypatch.delitem(sys.modules, key)
    bar = progress_bar(2, "dc", "epochs")
    assert isinstance(bar, Progress)
    bar.update()
    bar.update()
    bar.close()
    assert "dc: 2/2 epochs" in capsys.readouterr().err


def test_progress_bar_is_tqdm_when_installed(capsys):
    tqdm = pytest.importorskip("tqdm", reason="tqdm comes with the torch extra")
    from qpack.progress import progress_bar

    bar = progress_bar(3, "dc", "epochs")
    assert isinstance(bar, tqdm.tqdm)
    bar.update(3)
    bar.close()
    assert "3/3" in capsys.readouterr().err
