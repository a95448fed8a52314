"""CompressedTensor.matmul and qpack.nn.PackedLinear, straight from a loaded .qpk."""

from __future__ import annotations

import numpy as np
import pytest

import qpack
from qpack.nn import PackedLinear


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    return {"w": rng.normal(0, 0.05, size=(40, 96)).astype(np.float32),
            "b": rng.normal(0, 0.01, size=40).astype(np.float32),
            "ids": np.arange(6, dtype=np.int64).reshape(2, 3)}


@pytest.mark.parametrize("kwargs", [
    dict(bits=4), dict(bits=4, prune=0.9), dict(bits=3, method="linear", group_size=32),
    dict(bits=8, method="linear", group_size=-1, prune=0.5, entropy=None),
    dict(bits=2, method="linear"),
])
def test_packed_linear_matches_dequantized(tmp_path, weights, kwargs):
    qpack.compress(weights, min_numel=0, **kwargs).save(tmp_path / "m.qpk")
    m = qpack.load(tmp_path / "m.qpk")
    w_hat = m["w"].dequantize().astype(np.float64)
    layer = PackedLinear(m["w"], bias=m["b"].dequantize())
    x = np.random.default_rng(1).standard_normal((2, 5, 96)).astype(np.float32)
    expect = x.astype(np.float64) @ w_hat.T + weights["b"]
    y = layer(x)
    assert y.shape == (2, 5, 40) and y.dtype == np.float32
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m["w"].matmul(x[0, 0]), x[0, 0] @ w_hat.T, rtol=1e-4, atol=1e-5)
    y8 = PackedLinear(m["w"], act_quant="int8")(x)
    # int8 activations: close, not exact (bound tested in test_matmul)
    assert np.abs(y8 - (expect - weights["b"])).max() < 0.05 * np.abs(expect).max()
    assert layer.nbytes > 0 and "PackedLinear" in repr(layer)


def test_raw_tensor_matmul(weights):
    cm = qpack.compress(weights, min_numel=10**9)  # nothing quantized
    assert cm["w"].method == "raw"
    x = np.ones((3, 96), np.float32)
    np.testing.assert_allclose(PackedLinear(cm["w"])(x), x @ weights["w"].T, rtol=1e-6)
    np.testing.assert_array_equal(cm["w"].take_rows([2, 0]), weights["w"][[2, 0]])
    with pytest.raises(ValueError, match="matmul needs a floating tensor"):
        cm["ids"].matmul(np.ones(3, np.float32))


def test_from_dense():
    w = np.random.default_rng(2).standard_normal((16, 256)).astype(np.float32)
    layer = PackedLinear.from_dense(w, bits=8, group_size=128, bias=np.ones(16))
    x = np.random.default_rng(3).standard_normal((4, 256)).astype(np.float32)
    w_hat = layer.tensor.dequantize().astype(np.float64)
    np.testing.assert_allclose(layer(x), x @ w_hat.T + 1, rtol=1e-4, atol=1e-4)
    assert np.abs(w_hat - w).max() < 0.02  # 8-bit codes, groups of 128
    assert layer.tensor.method == "linear" and layer.tensor.spec["group_size"] == 128
    kmeans = PackedLinear.from_dense(w, bits=4, method="kmeans")
    assert kmeans.tensor.method == "kmeans"


def test_bad_inputs(weights):
    t = qpack.compress(weights, min_numel=0)["w"]
    with pytest.raises(ValueError, match="CompressedTensor"):
        PackedLinear(weights["w"])
    with pytest.raises(ValueError, match="bias"):
        PackedLinear(t, bias=np.ones(39))
    with pytest.raises(ValueError, match="act_quant"):
        PackedLinear(t, act_quant="int4")
    with pytest.raises(ValueError, match="96"):
        PackedLinear(t)(np.ones((2, 95), np.float32))
    with pytest.raises(ValueError):
        t.matmul(np.ones(96), act_quant="fp8")
    with pytest.raises(ValueError, match="2-D"):
        PackedLinear.from_dense(np.ones(8))
