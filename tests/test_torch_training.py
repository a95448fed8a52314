"""qpack.torch.share_weights, quantize_aware and to_qpack: training with the compression
in the loop, and an exact export."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="qpack.torch needs the torch extra")

import qpack  # noqa: E402
import qpack.torch as qt  # noqa: E402


def mlp(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 5))


def cnn(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 6, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(6 * 5 * 5, 4))


def batch(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.randint(0, 4, (shape[0],), generator=g)


def train(net, x, y, steps=10, lr=0.05):
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_shared_weight_is_codebook_of_fixed_codes():
    net = mlp()
    w0 = net[0].weight.detach().numpy().copy()
    books = qt.share_weights(net, 3)
    q = qpack.quantize_kmeans(w0, 3)
    assert np.array_equal(net[0].weight_codes.numpy(), q.codes)
    assert np.array_equal(books["0.weight"].detach().numpy(), q.codebook)
    assert torch.equal(net[0].weight, net[0].weight_codebook[net[0].weight_codes.long()])
    assert "0.weight" not in dict(net.named_parameters())


def test_centroid_gradient_is_the_sum_of_member_gradients():
    net = mlp()
    qt.share_weights(net, 2)
    x, _ = batch((8, 20))
    # autograd on the dense weight, summed per code by hand
    dense = net[0].weight.detach().clone().requires_grad_(True)
    out = torch.nn.functional.linear(x, dense, net[0].bias)
    out.square().sum().backward()
    codes = net[0].weight_codes.long()
    want = torch.zeros(4).index_add_(0, codes.reshape(-1), dense.grad.reshape(-1))
    net[0](x).square().sum().backward()
    assert torch.allclose(net[0].weight_codebook.grad, want, rtol=1e-5, atol=1e-6)


def test_fine_tuning_moves_centroids_not_codes_and_keeps_pruned_zeros():
    net = mlp()
    masks = qt.prune(net, 0.7)
    qt.share_weights(net, 4)
    codes = net[0].weight_codes.clone()
    book = net[0].weight_codebook.detach().clone()
    x, y = batch((32, 20))
    train(net, x, y % 5)
    assert torch.equal(net[0].weight_codes, codes)
    assert not torch.equal(net[0].weight_codebook.detach(), book)
    assert net[0].weight_codebook[0].item() == 0.0          # the zero code
    w = net[0].weight
    assert torch.count_nonzero(w[~masks["0.weight"]]) == 0


def test_qat_forward_equals_quantize_linear_and_gradient_passes_through():
    net = mlp()
    qt.quantize_aware(net, 4, group_size=8)
    w = net[0].weight_float.detach().numpy()
    want = qpack.quantize_linear(w, 4, group_size=8).dequantize()
    x, _ = batch((3, 20))
    net(x)  # forward recomputes the weight
    assert np.array_equal(net[0].weight.detach().numpy(), want)
    net[0].weight_float.grad = None
    net[0](x).sum().backward()
    # straight through: d/dW of sum(x @ W.T) is x summed over the batch, for every row
    assert torch.allclose(net[0].weight_float.grad, x.sum(0).expand(32, 20), atol=1e-5)


@pytest.mark.parametrize("make, shape", [(mlp, (16, 20)), (cnn, (16, 2, 5, 5))])
@pytest.mark.parametrize("mode", ["shared", "qat", "pruned-shared", "pruned-qat"])
def test_export_round_trip_matches_the_trained_logits(tmp_path, make, shape, mode):
    net = make()
    x, y = batch(shape)
    if mode.startswith("pruned"):
        qt.prune(net, 0.6)
    if mode.endswith("shared"):
        qt.share_weights(net, 4)
    else:
        qt.quantize_aware(net, 4, group_size=-1)
    train(net, x, y, steps=5)
    net.eval()
    with torch.no_grad():
        want = net(x)
    cm = qt.to_qpack(net)
    cm.save(tmp_path / "t.qpk")
    packed = qt.load_packed(make(seed=7), tmp_path / "t.qpk")
    with torch.inference_mode():
        got = packed(x)
    rel = float((got - want).norm() / want.norm())
    assert rel < 1e-5, rel
    m = qpack.load(tmp_path / "t.qpk")
    assert any(m[n].method != "raw" for n in m)
    assert all(m[n].method == "raw" for n in m if n.endswith("bias"))


@pytest.mark.parametrize("call, match", [
    (lambda n: qt.share_weights(n, 9), "bits"),
    (lambda n: qt.share_weights(n, 0), "bits"),
    (lambda n: qt.share_weights(n, {"nothing*": 4}), "matches no"),
    (lambda n: qt.share_weights(n, 4, init="kmeans++"), "init"),
    (lambda n: qt.quantize_aware(n, 4, group_size=0), "group_size"),
    (lambda n: qt.quantize_aware(n, 12), "bits"),
    (lambda n: qt.share_weights(torch.nn.Sequential(torch.nn.ReLU()), 4), "no nn.Linear"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call(mlp())


def test_share_twice_and_qat_on_shared_are_refused():
    net = mlp()
    qt.share_weights(net, 4)
    with pytest.raises(ValueError, match="already shared"):
        qt.share_weights(net, 4)
    with pytest.raises(ValueError, match="already shared"):
        qt.quantize_aware(net, 4)
    other = mlp()
    qt.quantize_aware(other, 4)
    with pytest.raises(ValueError, match="under QAT"):
        qt.share_weights(other, 4)
