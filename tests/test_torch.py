"""qpack.torch: the packed torch modules, load_packed and state_dict (needs torch)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install "
                                            "torch==2.13.0): qpack.torch tests skipped")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import qpack  # noqa: E402
import qpack.torch as qt  # noqa: E402


def compressed(arrays: dict, **kwargs):
    kwargs.setdefault("bits", 4)
    return qpack.compress(arrays, min_numel=0, **kwargs)


@pytest.fixture(scope="module")
def linear_tensor():
    w = np.random.default_rng(0).normal(0, 0.1, size=(24, 40)).astype(np.float32)
    return compressed({"w": w}, method="linear", group_size=8)["w"]


@pytest.fixture(scope="module")
def conv_tensor():
    w = np.random.default_rng(1).normal(0, 0.1, size=(8, 3, 3, 3)).astype(np.float32)
    return compressed({"w": w})["w"]


def dense(t) -> torch.Tensor:
    return torch.from_numpy(t.dequantize().astype(np.float32))


class Spy:
    """Stands in for a module's numpy layer and records the arrays it was given/returned."""

    def __init__(self, inner):
        self.inner = inner
        self.x = self.y = None

    def __call__(self, x):
        self.x, self.y = x, self.inner(x)
        return self.y

    def _forward(self, x, bias):
        self.x, self.y = x, self.inner._forward(x, bias)
        return self.y


# -- import rules ----------------------------------------------------------------------

def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_import_without_torch_names_the_install():
    proc = run_python("import sys\nsys.modules['torch'] = None\nimport qpack.torch")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr
    assert "pip install torch==2.13.0" in proc.stderr and "qpack[torch]" in proc.stderr


def test_qpack_and_qpack_nn_do_not_import_torch():
    proc = run_python("import qpack, qpack.nn, qpack.conv, sys\nqpack.compress\n"
                      "print('torch' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# -- PackedLinear ------------------------------------------------------------------------

@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_linear_matches_torch(linear_tensor, context):
    bias = torch.linspace(-1, 1, 24)
    layer = qt.PackedLinear(linear_tensor, bias=bias)
    x = torch.randn(2, 5, 40)
    with context():
        y = layer(x)
    want = F.linear(x, dense(linear_tensor), bias)
    assert y.shape == (2, 5, 24) and y.dtype == torch.float32 and not y.requires_grad
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    y8 = qt.PackedLinear(linear_tensor, bias=bias, act_quant="int8")(x)
    assert (y8 - want).abs().max() < 0.05 * want.abs().max()


def test_linear_shares_memory_both_ways(linear_tensor):
    layer = qt.PackedLinear(linear_tensor, bias=np.ones(24, np.float32))
    spy = layer.layer = Spy(layer.layer)
    x = torch.randn(7, 40)
    with torch.inference_mode():
        y = layer(x)
    assert spy.x.ctypes.data == x.data_ptr()      # the kernels read x's own memory
    assert spy.y.ctypes.data == y.data_ptr()      # and the output is theirs, not a copy
    assert np.shares_memory(spy.x, x.numpy())


def test_linear_non_contiguous_and_other_dtypes(linear_tensor):
    layer = qt.PackedLinear(linear_tensor)
    base = torch.randn(40, 6)
    x = base.t()  # (6, 40), not contiguous: copied once to contiguous rows
    assert not x.is_contiguous()
    torch.testing.assert_close(layer(x), layer(x.contiguous()), rtol=0, atol=0)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        y = layer(x.to(dtype))
        assert y.dtype == dtype
        want = layer(x.to(dtype).float()).to(dtype)
        torch.testing.assert_close(y, want, rtol=0, atol=0)


def test_linear_errors(linear_tensor):
    layer = qt.PackedLinear(linear_tensor)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 40\)"):
        layer(torch.randn(3, 41))
    with pytest.raises(ValueError, match="floating dtype"):
        layer(torch.ones(3, 40, dtype=torch.int64))
    with pytest.raises(ValueError, match="device meta"):
        layer(torch.empty(3, 40, device="meta"))
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        layer(np.ones((3, 40), np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(24,\)"):
        qt.PackedLinear(linear_tensor, bias=torch.ones(23))


def test_requires_grad_is_refused_unless_grad_is_off(linear_tensor, conv_tensor):
    x = torch.randn(2, 40, requires_grad=True)
    layer = qt.PackedLinear(linear_tensor)
    with pytest.raises(ValueError, match="requires grad.*inference-only.*no_grad"):
        layer(x)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer(x.detach()))
    conv = qt.PackedConv2d(conv_tensor)
    with pytest.raises(ValueError, match="requires grad"):
        conv(torch.randn(1, 3, 5, 5, requires_grad=True))


def test_linear_buffers_and_repr(linear_tensor):
    layer = qt.PackedLinear(linear_tensor, bias=np.arange(24))
    assert list(layer.state_dict()) == ["bias"] and layer.bias.dtype == torch.float32
    assert "in_features=40, out_features=24, bias=True, method='linear', bits=4" in repr(layer)
    layer.load_state_dict({"bias": torch.zeros(24)})  # in-place update is used by forward
    x = torch.randn(3, 40)
    torch.testing.assert_close(layer(x), qt.PackedLinear(linear_tensor)(x))
    assert qt.PackedLinear(linear_tensor).bias is None
    torch.testing.assert_close(layer.dequantized_weight(), dense(linear_tensor))


# -- PackedConv2d ------------------------------------------------------------------------

@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(stride=2, dilation=(1, 2)),
                                    dict(padding="same")])
def test_conv_matches_torch(conv_tensor, context, kwargs):
    bias = torch.randn(8)
    layer = qt.PackedConv2d(conv_tensor, bias=bias, **kwargs)
    x = torch.randn(3, 3, 9, 10)
    with context():
        y = layer(x)
        y3 = layer(x[0])
    want = F.conv2d(x, dense(conv_tensor), bias, **kwargs)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y3, want[0], rtol=1e-5, atol=1e-5)


def test_conv_grouped_matches_torch():
    w = np.random.default_rng(2).normal(0, 0.1, size=(6, 2, 3, 3)).astype(np.float32)
    t = compressed({"w": w}, bits=8)["w"]
    layer = qt.PackedConv2d(t, groups=3, padding=1)
    x = torch.randn(2, 6, 7, 7)
    torch.testing.assert_close(layer(x), F.conv2d(x, dense(t), groups=3, padding=1),
                               rtol=1e-5, atol=1e-5)


def test_conv_reads_strided_input_in_place(conv_tensor):
    layer = qt.PackedConv2d(conv_tensor, padding=1)
    spy = layer.layer = Spy(layer.layer)
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    with torch.inference_mode():
        y = layer(x)
    assert spy.x.ctypes.data == x.data_ptr()
    assert spy.x.strides == tuple(4 * s for s in x.stride())  # no contiguous copy
    assert spy.y.ctypes.data == y.data_ptr()
    torch.testing.assert_close(y, F.conv2d(x, dense(conv_tensor), padding=1),
                               rtol=1e-5, atol=1e-5)


def test_conv_other_dtypes(conv_tensor):
    layer = qt.PackedConv2d(conv_tensor)
    x = torch.randn(1, 3, 6, 6)
    for dtype in (torch.float64, torch.bfloat16):
        y = layer(x.to(dtype))
        assert y.dtype == dtype
        torch.testing.assert_close(y, layer(x.to(dtype).float()).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("x, message", [
    (torch.randn(1, 4, 6, 6), "x must have 3 channels"),
    (torch.randn(6, 6), r"x must have shape \(N, C, H, W\) or \(C, H, W\)"),
    (torch.randn(1, 3, 2, 6), "larger than the padded input height"),
    (torch.ones(1, 3, 6, 6, dtype=torch.int32), "floating dtype"),
    (torch.ones(1, 3, 6, 6, dtype=torch.complex64), "floating dtype"),
    (torch.empty(1, 3, 6, 6, device="meta"), "device meta"),
])
def test_conv_errors(conv_tensor, x, message):
    with pytest.raises(ValueError, match=message):
        qt.PackedConv2d(conv_tensor)(x)


def test_conv_repr_and_buffers(conv_tensor):
    layer = qt.PackedConv2d(conv_tensor, bias=np.zeros(8), stride=2, padding=(1, 0))
    text = repr(layer)
    assert "PackedConv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 0)" in text
    assert "method='kmeans', bits=4" in text and list(layer.state_dict()) == ["bias"]
    assert layer.dequantized_weight().shape == (8, 3, 3, 3)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        qt.PackedConv2d(conv_tensor, groups=3)


# -- load_packed -------------------------------------------------------------------------

class Net(nn.Module):
    """Conv (grouped, strided), BatchNorm, Linear layers, an embedding and a tiny Linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, groups=2, bias=False)
        self.fc = nn.Linear(16 * 3 * 3, 32)
        self.embed = nn.Embedding(10, 32)
        self.head = nn.Linear(32, 2)

    def forward(self, x, ids):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x)).flatten(1)
        return self.head(torch.relu(self.fc(x) + self.embed(ids)))


@pytest.fixture(scope="module")
def net_file(tmp_path_factory):
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.1, 0.1)
        net.bn.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("net") / "net.qpk"
    # head.weight (64 weights) is below min_numel: stored raw, loaded dense
    qpack.compress(net, bits=4, min_numel=100).save(path)
    return net, path


def inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, 3, 8, 8, generator=g), torch.tensor([1, 5, 0, 9])


def test_load_packed_replaces_and_loads(net_file):
    _, path = net_file
    expect = Net().eval()
    expect.load_state_dict(qt.state_dict(path))  # the decoded weights, dense
    model = Net().eval()
    assert qt.load_packed(model, str(path)) is model
    assert isinstance(model.conv1, qt.PackedConv2d) and isinstance(model.fc, qt.PackedLinear)
    assert isinstance(model.conv2, qt.PackedConv2d) and model.conv2.groups == 2
    assert model.conv2.stride == (2, 2) and model.conv2.bias is None
    assert type(model.head) is nn.Linear  # raw weight: stays dense
    for name in ("bn.running_mean", "bn.weight", "embed.weight", "head.weight"):
        torch.testing.assert_close(model.state_dict()[name], expect.state_dict()[name])
    x, ids = inputs()
    with torch.inference_mode():
        torch.testing.assert_close(model(x, ids), expect(x, ids), rtol=1e-5, atol=1e-5)


def test_load_packed_strict_lists_unmatched_names(net_file):
    net, _ = net_file
    state = dict(net.state_dict())
    state["extra.weight"] = torch.ones(40, 40)
    del state["bn.running_var"]
    cm = qpack.compress(state, bits=4, min_numel=100)
    model = Net().eval()
    with pytest.raises(ValueError, match=r"strict=True.*match nothing in the model: "
                                         r"extra\.weight.*missing from the file: "
                                         r"bn\.running_var"):
        qt.load_packed(model, cm)
    assert type(model.fc) is nn.Linear  # nothing was changed
    with pytest.warns(UserWarning, match=r"extra\.weight.*bn\.running_var"):
        qt.load_packed(model, cm, strict=False)
    assert isinstance(model.fc, qt.PackedLinear)


def test_load_packed_missing_bias_keeps_the_module_bias(net_file):
    net, _ = net_file
    state = {k: v for k, v in net.state_dict().items() if k != "fc.bias"}
    model = Net().eval()
    own_bias = model.fc.bias.detach().clone()
    with pytest.warns(UserWarning, match=r"missing from the file: fc\.bias"):
        qt.load_packed(model, qpack.compress(state, bits=4, min_numel=100), strict=False)
    torch.testing.assert_close(model.fc.bias, own_bias)


def test_load_packed_refuses_mismatches(net_file):
    _, path = net_file

    class Wider(Net):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16 * 3 * 3, 33)

    with pytest.raises(ValueError, match=r"fc\.weight: file shape \(32, 144\), model shape "
                                         r"\(33, 144\)"):
        qt.load_packed(Wider(), path, strict=False)

    class Reflect(Net):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")

    model = Reflect()
    with pytest.raises(ValueError, match="conv1: padding_mode='reflect'.*zeros only"):
        qt.load_packed(model, path)
    assert type(model.conv1) is nn.Conv2d
    with pytest.raises(ValueError, match="source must be a .qpk path"):
        qt.load_packed(Net(), 42)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        qt.load_packed({"a": 1}, path)
    with pytest.raises(ValueError, match="strict must be True or False"):
        qt.load_packed(Net(), path, strict="yes")


def test_load_packed_root_module_shared_modules_and_act_quant():
    lin = nn.Linear(64, 16)
    cm = compressed(lin.state_dict())
    packed = qt.load_packed(lin, cm, act_quant="int8")
    assert isinstance(packed, qt.PackedLinear) and packed.act_quant == "int8"

    shared = nn.Linear(32, 32)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    qt.load_packed(model, compressed(model.state_dict()))
    assert isinstance(model[0], qt.PackedLinear) and model[0] is model[2]

    class Sub(nn.Linear):  # a subclass may compute differently: loaded dense
        pass

    sub = nn.Sequential(Sub(32, 32))
    qt.load_packed(sub, compressed(sub.state_dict()))
    assert type(sub[0]) is Sub


# -- state_dict --------------------------------------------------------------------------

def test_state_dict_round_trip_keeps_dtypes(tmp_path, net_file):
    net, path = net_file
    sd = qt.state_dict(path)
    assert list(sd) == list(net.state_dict())
    arrays = qpack.load(path).decompress()
    for name, value in sd.items():
        assert value.dtype == net.state_dict()[name].dtype, name
        np.testing.assert_array_equal(value.numpy(), arrays[name])
    model = Net()
    model.load_state_dict(sd)
    assert sd["bn.num_batches_tracked"].dtype == torch.int64


def test_state_dict_bfloat16_and_float16_models(tmp_path):
    model = Net().to(torch.bfloat16)
    model.fc.half()
    qpack.compress(model, bits=8, min_numel=100).save(tmp_path / "bf16.qpk")
    sd = qt.state_dict(str(tmp_path / "bf16.qpk"))
    assert sd["conv1.weight"].dtype == torch.bfloat16 and sd["fc.weight"].dtype == torch.float16
    assert sd["head.weight"].dtype == torch.bfloat16
    torch.testing.assert_close(sd["head.weight"], model.head.weight.detach(), rtol=0, atol=0)
    err = (sd["conv1.weight"].float() - model.conv1.weight.detach().float()).abs().max()
    assert err < 0.02
    fresh = Net().to(torch.bfloat16)
    fresh.fc.half()
    fresh.load_state_dict(sd)
    assert fresh.conv1.weight.dtype == torch.bfloat16
    # and packed: bf16 activations in, bf16 out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qt.load_packed(fresh, tmp_path / "bf16.qpk")
    y = fresh.conv1(torch.randn(1, 3, 8, 8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
