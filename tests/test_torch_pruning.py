"""qpack.torch.prune: magnitude pruning that holds through training."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="qpack.torch needs the torch extra")

import qpack  # noqa: E402
from qpack.torch import prune  # noqa: E402


def small_net(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5),
        torch.nn.Conv1d(1, 1, 1))  # never run: just one more prunable kind


def forward(net, x):
    for layer in list(net)[:-1]:
        x = layer(x)
    return x


def train(net, optimizer, steps: int = 15):
    torch.manual_seed(1)
    x = torch.randn(16, 1, 6, 6)
    y = torch.randint(0, 5, (16,))
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(forward(net, x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def magnitude_reference(w: np.ndarray, amount: float) -> np.ndarray:
    """Plain numpy: keep the round((1-amount)*n) largest |w|, ties by position."""
    flat = np.abs(w).reshape(-1)
    keep = flat.size - int(round(amount * flat.size))
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, bool)
    mask[order[:keep]] = True
    return mask.reshape(w.shape)


def test_masks_match_the_reference_and_show_in_state_dict():
    net = small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    masks = prune(net, 0.7)
    assert set(masks) == {"0.weight", "3.weight", "5.weight", "6.weight"}
    for name, mask in masks.items():
        ref = magnitude_reference(before[name].numpy(), 0.7)
        assert np.array_equal(mask.numpy(), ref)
        w = net.state_dict()[name]
        assert torch.equal(w[~mask], torch.zeros_like(w[~mask]))
        assert torch.equal(w[mask], before[name][mask])
    assert isinstance(net[3].weight, torch.nn.Parameter)


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    lambda p: torch.optim.AdamW(p, lr=1e-2),
    lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
], ids=["sgd", "sgd-momentum-wd", "nesterov", "adam-wd", "adamw", "rmsprop"])
def test_pruned_weights_stay_zero_through_training(make_optimizer):
    net = small_net()
    optimizer = make_optimizer(net.parameters())
    train(net, optimizer, steps=5)   # optimizer state from before the pruning
    masks = prune(net, 0.6)
    kept_before = {n: net.state_dict()[n][m].clone() for n, m in masks.items()}
    train(net, optimizer)
    for name, mask in masks.items():
        w = net.state_dict()[name]
        assert torch.count_nonzero(w[~mask]) == 0, name
    # the survivors did train
    moved = [not torch.equal(net.state_dict()[n][m], kept_before[n])
             for n, m in masks.items() if n != "6.weight"]
    assert all(moved)


def test_pruned_entries_get_no_gradient():
    net = small_net()
    masks = prune(net, 0.5)
    loss = forward(net, torch.randn(4, 1, 6, 6)).square().sum()
    loss.backward()
    g = net[3].weight.grad
    assert torch.count_nonzero(g[~masks["3.weight"]]) == 0
    assert torch.count_nonzero(g[masks["3.weight"]]) > 0


def test_repeated_calls_prune_further_among_survivors():
    net = small_net()
    first = prune(net, 0.5)["3.weight"]
    # a survivor that happens to be small must not bring a pruned entry back
    second = prune(net, 0.8)["3.weight"]
    assert not (second & ~first).any()
    assert int(second.sum()) == second.numel() - round(0.8 * second.numel())
    again = prune(net, 0.3)["3.weight"]           # smaller: nothing comes back
    assert torch.equal(again, second)


def test_amount_per_glob_and_include_exclude():
    net = small_net()
    masks = prune(net, {"*.weight": 0.5, "5.weight": 0.9}, exclude="6.*")
    assert set(masks) == {"0.weight", "3.weight", "5.weight"}
    assert 1 - masks["5.weight"].float().mean() == pytest.approx(0.9, abs=0.01)
    assert 1 - masks["3.weight"].float().mean() == pytest.approx(0.5, abs=0.01)
    only = prune(small_net(1), 0.4, include="0.*")
    assert set(only) == {"0.weight"}


def test_global_scope_uses_one_threshold():
    net = small_net()
    weights = {n: p.detach().clone() for n, p in net.named_parameters() if n.endswith("weight")}
    masks = prune(net, 0.75, scope="global")
    flat = torch.cat([w.abs().reshape(-1) for w in weights.values()])
    total_kept = sum(int(m.sum()) for m in masks.values())
    assert total_kept == flat.numel() - round(0.75 * flat.numel())
    threshold = min(float(weights[n].abs()[m].min()) for n, m in masks.items() if m.any())
    for n, m in masks.items():
        assert (weights[n].abs()[~m] <= threshold).all()


def test_masks_go_into_compress_exactly(tmp_path):
    net = small_net()
    masks = prune(net, 0.8)
    cm = qpack.compress(net, bits=4, min_numel=0, masks=masks)
    for name, mask in masks.items():
        assert cm[name].sparsity == pytest.approx(1 - mask.float().mean().item())
        out = cm[name].dequantize()
        assert np.count_nonzero(out[~mask.numpy()]) == 0


@pytest.mark.parametrize("call, match", [
    (lambda n: prune(n, 1.0), "amount"),
    (lambda n: prune(n, -0.1), "amount"),
    (lambda n: prune(n, True), "amount"),
    (lambda n: prune(n, {"nothing*": 0.5}), "matches no"),
    (lambda n: prune(n, 0.5, include="nothing*"), "matches no"),
    (lambda n: prune(n, 0.5, scope="model"), "scope"),
    (lambda n: prune(n, {"*": 0.5}, scope="global"), "one amount"),
    (lambda n: prune(torch.nn.Sequential(torch.nn.ReLU()), 0.5), "no nn.Linear"),
    (lambda n: prune({"w": 1}, 0.5), "nn.Module"),
])
def test_bad_arguments(call, match):
    net = small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        call(net)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
