"""qpack.torch.deep_compression on the digits: the recipe beats post-training pruning."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="qpack.torch needs the torch extra")
pytest.importorskip("sklearn", reason="the digits come with the demo extra")

import qpack  # noqa: E402
import qpack.torch as qt  # noqa: E402
from qpack import demo  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    d = demo.load_digits_split()
    return (torch.from_numpy(d.x_train), torch.from_numpy(d.y_train).long(),
            torch.from_numpy(d.x_test), torch.from_numpy(d.y_test).long())


def trained_mlp(digits):
    """LeNet-300-100's shape on the 8x8 digits, trained to ~97%."""
    x, y, _, _ = digits
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 300), torch.nn.ReLU(),
                              torch.nn.Linear(300, 100), torch.nn.ReLU(),
                              torch.nn.Linear(100, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(40):
        for i in range(0, len(y), 64):
            loss = torch.nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def accuracy(net, digits) -> float:
    _, _, xt, yt = digits
    with torch.inference_mode():
        return 100 * float((net(xt).argmax(1) == yt).float().mean())


def test_deep_compression_beats_post_training_pruning(digits, tmp_path):
    x, y, _, _ = digits
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(y), 64)]
    float_acc = accuracy(trained_mlp(digits), digits)

    # post-training: prune 90% and 3-bit K-means, no retraining
    post = trained_mlp(digits)
    cm_post = qpack.compress(post, bits=3, prune=0.9, min_numel=0,
                             overrides={"*.bias": {"method": "raw"}})
    cm_post.save(tmp_path / "post.qpk")
    post_acc = accuracy(qt.load_packed(trained_mlp(digits), tmp_path / "post.qpk"), digits)

    net = trained_mlp(digits)
    cm = qt.deep_compression(net, batches, torch.nn.functional.cross_entropy,
                             evaluate=lambda m: accuracy(m, digits), sparsity=0.9, bits=3,
                             prune_rounds=3, retrain_epochs=3, finetune_epochs=2, lr=0.05)
    cm.save(tmp_path / "dc.qpk")
    dc_acc = accuracy(qt.load_packed(trained_mlp(digits), tmp_path / "dc.qpk"), digits)

    assert float_acc > 93
    # post-training pruning this hard collapses; the recipe keeps the model working
    print(f"float {float_acc:.1f}%, post-training {post_acc:.1f}%, recipe {dc_acc:.1f}%")
    assert dc_acc > post_acc + 20, (dc_acc, post_acc, float_acc)
    assert dc_acc > float_acc - 3
    stages = [h["stage"] for h in cm.history]
    assert stages[0] == "float" and len(stages) == 6
    assert cm.history[-2]["bytes"] == cm.nbytes  # fine-tuning moves no code
    assert cm.history[-1]["kept"] == pytest.approx(0.1, abs=0.01)
    assert cm.history[-1]["bytes"] == cm.nbytes
    assert cm.history[-1]["metric"] == pytest.approx(dc_acc, abs=1e-6)
    assert cm.ratio > 20


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparsity=1.0), "sparsity"), (dict(sparsity={"*": -0.1}), "sparsity"),
    (dict(prune_rounds=0), "prune_rounds"), (dict(retrain_epochs=-1), "retrain_epochs"),
    (dict(lr=-1.0), "lr"), (dict(regularization="l3"), "regularization"),
    (dict(distill_temperature=0), "distill_temperature"), (dict(optimizer=3), "optimizer"),
    (dict(include="nothing*"), "matches no"),
])
def test_bad_arguments_fail_before_training(kwargs, match):
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        qt.deep_compression(net, [], torch.nn.functional.cross_entropy, **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
