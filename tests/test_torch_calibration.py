"""qpack.torch.calibrate: per-layer X^T X from forward hooks, for compress(calibration=)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="qpack.torch needs the torch extra")

import qpack  # noqa: E402
import qpack.torch as qt  # noqa: E402
from qpack.torch.calibration import layer_inputs  # noqa: E402


def reference_patches(x: np.ndarray, k: tuple, stride: tuple, pad: tuple,
                      dil: tuple) -> np.ndarray:
    """Conv2d patches by plain loops: rows (n, oh, ow), columns (c, kh, kw)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // stride[1] + 1
    rows = []
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                patch = [xp[b, ch, i * stride[0] + a * dil[0], j * stride[1] + e * dil[1]]
                         for ch in range(c) for a in range(k[0]) for e in range(k[1])]
                rows.append(patch)
    return np.array(rows, dtype=np.float64).reshape(-1, c * k[0] * k[1])


@pytest.mark.parametrize("k, stride, pad, dil", [
    ((3, 3), (1, 1), (1, 1), (1, 1)), ((2, 3), (2, 1), (0, 2), (1, 2)),
    ((1, 1), (1, 1), (0, 0), (1, 1)), ((5, 5), (3, 3), (2, 2), (1, 1)),
])
def test_conv_patches_match_loops_and_the_weight_view(k, stride, pad, dil):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, k, stride=stride, padding=pad, dilation=dil, bias=False)
    x = torch.randn(2, 3, 9, 8)
    rows = layer_inputs(conv, x)
    ref = reference_patches(x.numpy(), k, stride, pad, dil)
    np.testing.assert_allclose(rows.numpy(), ref, rtol=1e-6, atol=1e-6)
    # the patches times the weight's matrix view are the conv's outputs
    out = conv(x).permute(0, 2, 3, 1).reshape(-1, 4)
    np.testing.assert_allclose((rows @ conv.weight.reshape(4, -1).T).detach().numpy(),
                               out.detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
@pytest.mark.parametrize("padding", ["same", "valid", 2])
def test_conv1d_and_string_padding(padding):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(2, 3, 4, padding=padding, bias=False)
    x = torch.randn(2, 2, 11)
    rows = layer_inputs(conv, x)
    out = conv(x).permute(0, 2, 1).reshape(-1, 3)
    np.testing.assert_allclose((rows @ conv.weight.reshape(3, -1).T).detach().numpy(),
                               out.detach().numpy(), rtol=1e-4, atol=1e-5)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5),
                               torch.nn.ReLU(), torch.nn.Linear(5, 3))


def test_calibrate_accumulates_exact_xtx_and_restores_the_model():
    net = model().train()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(7, 1, 6, 6, generator=g) for _ in range(3)]
    stats = qt.calibrate(net, [(x, None) for x in xs])
    assert net.training and all(not m._forward_hooks for m in net.modules())
    assert set(stats) == {"0.weight", "3.weight", "5.weight"}
    # the Linear in the middle sees the flattened ReLU(conv) output
    with torch.no_grad():
        h = torch.cat([torch.nn.functional.relu(net[0](x)).flatten(1) for x in xs])
        h2 = torch.cat([torch.nn.functional.relu(net[3](net[2](net[1](net[0](x)))))
                        for x in xs])
    ref = h.double().T @ h.double()
    np.testing.assert_allclose(stats["3.weight"].xtx, ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["5.weight"].xtx, (h2.double().T @ h2.double()).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert stats["0.weight"].n_samples == 3 * 7 * 36 and stats["0.weight"].in_features == 9
    assert stats["3.weight"].n_samples == 21


def test_calibrated_compress_of_a_module_lowers_output_error():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 48))
    g = torch.Generator().manual_seed(2)
    basis = torch.randn(8, 64, generator=g)
    def inputs(n):
        return torch.randn(n, 8, generator=g) @ basis + 0.05 * torch.randn(n, 64, generator=g)
    stats = qt.calibrate(net, [inputs(256) for _ in range(4)], max_batches=3)
    assert stats["0.weight"].n_samples == 768
    plain = qpack.compress(net, method="linear", bits=3, group_size=16, min_numel=0)
    cal = qpack.compress(net, method="linear", bits=3, group_size=16, min_numel=0,
                         calibration=stats)
    x = inputs(512).numpy()
    w = net[0].weight.detach().numpy()
    def err(cm):
        return float(np.linalg.norm(x @ (w - cm["0.weight"].dequantize()).T))
    assert err(cal) < 0.8 * err(plain), (err(cal), err(plain))


def test_dict_batches_and_bad_inputs():
    class Keyword(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, input_ids):
            return self.fc(input_ids)

    stats = qt.calibrate(Keyword(), [{"input_ids": torch.randn(3, 4)}])
    assert stats["fc.weight"].n_samples == 3
    with pytest.raises(ValueError, match="max_batches"):
        qt.calibrate(model(), [], max_batches=0)
    with pytest.raises(ValueError, match="yielded nothing"):
        qt.calibrate(model(), [])
    with pytest.raises(ValueError, match="matches no"):
        qt.calibrate(model(), [torch.randn(1, 1, 6, 6)], include="nothing*")
    bad = torch.randn(2, 1, 6, 6)
    bad[0, 0, 0, 0] = float("nan")
    net = model()
    with pytest.raises(ValueError, match=r"0\.weight: .*NaN"):
        qt.calibrate(net, [bad])
    assert all(not m._forward_hooks for m in net.modules())
    grouped = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="grouped"):
        qt.calibrate(grouped, [torch.randn(1, 4, 5, 5)])

    class Branch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ValueError, match="never ran.*unused"):
        qt.calibrate(Branch(), [torch.randn(2, 3)])
