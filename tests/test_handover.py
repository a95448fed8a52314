"""Exact hand-over into compress: keep-masks, pre-quantized tensors, modules."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import qpack


def weights(rng, shape=(48, 80)):
    return rng.standard_normal(shape).astype(np.float32)


def tie_heavy_mask(rng, shape):
    """A mask magnitude pruning could not reproduce: random, not by size."""
    return rng.random(shape) < 0.3


def round_trip(tmp_path, model, **kw):
    cm = qpack.compress(model, min_numel=0, **kw)
    cm.save(tmp_path / "h.qpk")
    return cm, qpack.load(tmp_path / "h.qpk", verify=True)


@pytest.mark.parametrize("method", ["kmeans", "linear"])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("entropy", ["huffman", None])
def test_mask_is_stored_exactly(tmp_path, method, bits, entropy):
    rng = np.random.default_rng(bits)
    w = weights(rng)
    mask = tie_heavy_mask(rng, w.shape)
    kw = {"group_size": 16} if method == "linear" else {}
    _, m = round_trip(tmp_path, {"w": w}, bits=bits, method=method, entropy=entropy,
                      masks={"w": mask}, **kw)
    out = m["w"].dequantize()
    assert np.array_equal(out[~mask], np.zeros((~mask).sum(), np.float32))
    assert m["w"].sparsity == pytest.approx(1 - mask.mean())
    # kept weights are quantized, not zeroed (at 2 bits a few may land on 0.0)
    assert np.count_nonzero(out[mask]) >= 0.7 * mask.sum()


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("entropy", ["huffman", None])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.filterwarnings("ignore:.*per-channel codebooks take")
def test_prequantized_kmeans_round_trip_is_bit_exact(tmp_path, bits, entropy, per_channel,
                                                     pruned):
    rng = np.random.default_rng(10 + bits)
    w = weights(rng)
    mask = tie_heavy_mask(rng, w.shape) if pruned else None
    if pruned and bits == 1:
        pytest.skip("1 bit leaves no centroid beside the zero code")
    q = qpack.quantize_kmeans(w, bits, mask=mask, per_channel=per_channel)
    _, m = round_trip(tmp_path, {"w": q, "b": np.ones(48, np.float32)}, entropy=entropy)
    t = m["w"]
    assert t.method == "kmeans" and t.bits == bits and t.dtype == np.float32
    assert np.array_equal(t.dequantize(), q.dequantize())
    if pruned:
        assert t.sparsity == pytest.approx(1 - mask.mean())
    # the codebook is the object's, not a refit
    assert np.array_equal(np.asarray(t.quantized().codebook), q.codebook)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("entropy", ["huffman", None])
@pytest.mark.parametrize("group_size", [None, -1, 16])
def test_prequantized_linear_round_trip_is_bit_exact(tmp_path, bits, entropy, group_size):
    rng = np.random.default_rng(20 + bits)
    w = weights(rng)
    q = qpack.quantize_linear(w, bits, group_size=group_size)
    _, m = round_trip(tmp_path, {"w": q}, entropy=entropy)
    assert m["w"].method == "linear" and m["w"].spec["group_size"] == group_size
    assert np.array_equal(m["w"].dequantize(), q.dequantize())


def test_prequantized_linear_with_a_mask(tmp_path):
    rng = np.random.default_rng(3)
    w = weights(rng)
    mask = tie_heavy_mask(rng, w.shape)
    q = qpack.quantize_linear(np.where(mask, w, 0), 4, group_size=16, symmetric=True)
    _, m = round_trip(tmp_path, {"w": q}, masks={"w": mask})
    assert m["w"].sparsity == pytest.approx(1 - mask.mean())
    assert np.array_equal(m["w"].dequantize(), q.dequantize())


def test_float_weights_give_prequantized_error_stats(tmp_path):
    rng = np.random.default_rng(4)
    w = weights(rng)
    q = qpack.quantize_kmeans(w, 4)
    cm = qpack.compress({"w": q}, float_weights={"w": w})
    want = np.linalg.norm(q.dequantize() - w) / np.linalg.norm(w)
    assert cm["w"].stats["rel_error"] == pytest.approx(want, rel=1e-5)
    assert qpack.compress({"w": q})["w"].stats["rel_error"] is None


def test_prequantized_settings_come_from_the_object(tmp_path):
    rng = np.random.default_rng(5)
    q = qpack.quantize_kmeans(weights(rng), 3)
    cm = qpack.compress({"w": q, "x": weights(rng)}, bits=8, min_numel=0)
    assert cm["w"].bits == 3 and cm["x"].bits == 8
    # entropy does apply to it
    assert qpack.compress({"w": q}, entropy=None)["w"].spec["sections"]["codes"]["codec"] \
        == "packed"


def _bad(**fields):
    rng = np.random.default_rng(6)
    return dataclasses.replace(qpack.quantize_kmeans(weights(rng), 4), **fields)


@pytest.mark.parametrize("make, kwargs, match", [
    (lambda w: w, dict(masks={"w": np.ones((48, 79), bool)}), "shape"),
    (lambda w: w, dict(masks={"w": np.ones((48, 80), np.uint8)}), "boolean"),
    (lambda w: w, dict(masks={"nope": np.ones((48, 80), bool)}), "not a tensor"),
    (lambda w: w, dict(masks={"w": np.ones((48, 80), bool)}, prune=0.5), "together with prune"),
    (lambda w: w, dict(masks={"w": np.ones((48, 80), bool)}, method="kmeans",
                       overrides={"w": {"method": "raw"}}), "stored exactly"),
    (lambda w: w, dict(masks=[1]), "masks must map"),
    (lambda w: w, dict(float_weights={"w": np.ones((48, 80))}), "only pre-quantized"),
    (lambda w: qpack.quantize_kmeans(w, 4),
     dict(masks={"w": np.zeros((48, 80), bool)}), "no zero_code"),
    (lambda w: qpack.quantize_kmeans(w, 4, mask=np.abs(w) > 0.5),
     dict(masks={"w": np.ones((48, 80), bool) & (np.arange(80) < 40)}), "not the zero_code"),
    (lambda w: qpack.quantize_linear(w, 4),
     dict(masks={"w": np.arange(48 * 80).reshape(48, 80) % 2 == 0}), "zero-point"),
    (lambda w: qpack.quantize_kmeans(w, 4), dict(overrides={"w": {"bits": 2}}), "does nothing"),
    (lambda w: qpack.quantize_kmeans(w, 4), dict(prune=0.5), "prune=0.5 reaches no tensor"),
    (lambda w: qpack.quantize_kmeans(w, 4),
     dict(float_weights={"w": np.ones((4, 4), np.float32)}), "shape"),
    (lambda w: _bad(codes=np.full((48, 80), 16, np.uint8)), {}, "codes must lie"),
    (lambda w: _bad(codebook=np.zeros(8, np.float32)), {}, "codebook must be"),
    (lambda w: _bad(codebook=np.full(16, np.nan, np.float32)), {}, "NaN"),
    (lambda w: _bad(bits=9), {}, "bits"),
    (lambda w: _bad(zero_code=3), {}, "is not 0.0"),
    (lambda w: dataclasses.replace(qpack.quantize_linear(w, 4, group_size=16),
                                   scales=np.ones((48, 4), np.float32)), {}, "scales"),
])
def test_bad_hand_over_is_refused_before_any_work(monkeypatch, make, kwargs, match):
    rng = np.random.default_rng(7)
    value = make(weights(rng))

    def boom(*a, **k):
        raise AssertionError("encoding started")
    monkeypatch.setattr("qpack.model._encode_all", boom)
    with pytest.raises(ValueError, match=match):
        qpack.compress({"w": value, "b": np.ones(48, np.float32)}, min_numel=0, **kwargs)


class FakeModule:
    """Duck-types nn.Module for compress: only state_dict() is used."""

    def __init__(self, tensors):
        self._tensors = tensors

    def state_dict(self):
        return dict(self._tensors)


def test_compress_accepts_anything_with_a_state_dict():
    rng = np.random.default_rng(8)
    module = FakeModule({"fc.weight": weights(rng), "fc.bias": np.zeros(48, np.float32)})
    cm = qpack.compress(module, min_numel=0)
    assert list(cm) == ["fc.weight", "fc.bias"] and cm["fc.weight"].method == "kmeans"


def test_compress_torch_module(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 6 * 6, 10))
    cm = qpack.compress(net, bits=8, min_numel=0)
    cm.save(tmp_path / "net.qpk")
    m = qpack.load(tmp_path / "net.qpk")
    assert m["0.weight"].shape == (8, 3, 3, 3) and m["0.weight"].method == "kmeans"
    w = net[0].weight.detach().numpy()
    assert np.abs(m["0.weight"].dequantize() - w).max() < 0.02 * np.abs(w).max()
