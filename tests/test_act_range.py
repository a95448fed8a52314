"""Static activation ranges (qpack/act_range.py) and act_quant="int8-static"."""

from __future__ import annotations

import json

import numpy as np
import pytest

import qpack
from qpack import act_range, format
from qpack.calibration import HessianStats
from qpack.nn import PackedLinear

# one logarithmic bin: the histogram's resolution
BIN = 2.0 ** (1.0 / act_range.BINS_PER_OCTAVE)


def static_reference(x: np.ndarray, scale: float) -> np.ndarray:
    """x rounded to int8 at one scale, as a plain reference: the kernel multiplies by
    127 / (127 * scale) in float32, rounds half to even and clips to +-127."""
    s = np.float32(scale)
    inv = np.float32(127.0) / (s * np.float32(127.0))
    q = np.clip(np.rint(x.astype(np.float32) * inv), -127, 127)
    return q.astype(np.float32) * s


def int8_mse(x: np.ndarray, t: float) -> float:
    return float(np.mean((static_reference(x, t / 127) - x) ** 2))


@pytest.fixture
def outlier_inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 96)).astype(np.float32)
    x[:, 5] *= 30  # one outlier channel, as transformers have
    return x


def test_histogram_counts_every_element_and_merges(outlier_inputs):
    x = outlier_inputs
    x[0, :10] = 0.0
    h = act_range.ActivationHistogram().update(x)
    assert h.n == x.size and h.zeros == 10 and h.counts.sum() + h.zeros == x.size
    assert h.max_abs == float(np.abs(x).max())
    a = act_range.ActivationHistogram().update(x[:1000])
    b = act_range.ActivationHistogram().update(x[1000:])
    m = a.combine(b)
    np.testing.assert_array_equal(m.counts, h.counts)
    assert (m.zeros, m.max_abs, m.n) == (h.zeros, h.max_abs, h.n)


def test_minmax_and_percentile_against_numpy(outlier_inputs):
    x = outlier_inputs
    h = act_range.ActivationHistogram().update(x)
    assert act_range.clip_value(h, "minmax") == float(np.abs(x).max())
    for p in (90.0, 99.0, 99.99):
        ref = float(np.percentile(np.abs(x), p))
        got = act_range.clip_value(h, "percentile", p)
        assert ref / BIN <= got <= ref * BIN


def test_mse_choice_is_near_the_best_clip_measured_on_the_data(outlier_inputs):
    x = outlier_inputs
    h = act_range.ActivationHistogram().update(x)
    t = act_range.clip_value(h, "mse")
    grid = np.linspace(0.05, 1.0, 200) * float(np.abs(x).max())
    best = min(int8_mse(x, g) for g in grid)
    assert int8_mse(x, t) <= 1.05 * best
    # and it beats not clipping at all, by far, on these inputs
    assert int8_mse(x, t) < 0.7 * int8_mse(x, float(np.abs(x).max()))


def test_kl_keeps_the_body_of_a_gaussian():
    x = np.random.default_rng(1).standard_normal(200_000).astype(np.float32)
    t = act_range.clip_value(act_range.ActivationHistogram().update(x), "kl")
    assert 2.5 < t <= float(np.abs(x).max())


def test_all_zero_inputs_have_no_range():
    h = act_range.ActivationHistogram().update(np.zeros((4, 8), np.float32))
    for m in act_range.ACT_RANGE_METHODS:
        assert act_range.clip_value(h, m) == 0.0
        assert act_range.static_scale(h, m) == 0.0


def weights_and_inputs(seed=0, rows=200, cols=320):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    x = (rng.standard_normal((1500, cols)) * 2.0).astype(np.float32)
    return w, x


@pytest.mark.parametrize("kwargs", [
    dict(method="linear", bits=4, group_size=128), dict(method="linear", bits=3, group_size=64),
    dict(method="linear", bits=8, group_size=-1), dict(method="kmeans", bits=4),
    dict(method="kmeans", bits=5), dict(method="kmeans", bits=4, prune=0.8),
    dict(method="linear", bits=4, group_size=32, prune=0.9)])
@pytest.mark.parametrize("batch", [1, 3, 70])
def test_static_int8_matmul_matches_the_reference(kwargs, batch):
    w, x = weights_and_inputs()
    cm = qpack.compress({"w": w}, calibration={"w": HessianStats.from_inputs(x)}, **kwargs)
    t = cm["w"]
    scale = t.spec["act_scale"]
    xt = (np.random.default_rng(5).standard_normal((batch, w.shape[1])) * 2.5
          ).astype(np.float32)
    xt[0, :3] = [1e3, -1e3, 0.0]  # beyond the range: clipped to +-127 * scale
    w_hats = [t.dequantize().astype(np.float64)]
    if t.method == "kmeans" and t.layout == "dense":
        # the packed kernels multiply by the codebook rounded to int8 too (docs/KERNELS.md);
        # the tiled path (large batches) by the float codebook
        q = t.quantized()
        cb = np.asarray(q.codebook, dtype=np.float32)
        cb_scale = np.abs(cb).max() / np.float32(127)
        cb_int8 = np.rint(cb / cb_scale).astype(np.float64) * float(cb_scale)
        w_hats.append(cb_int8[np.asarray(q.codes).reshape(w.shape)])
    xq = static_reference(xt, scale).astype(np.float64)
    got = t.matmul(xt, act_quant="int8-static")
    assert any(np.all(np.abs(got - xq @ w_hat.T) <= 1e-5 * (np.abs(xq) @ np.abs(w_hat).T)
                      + 1e-6) for w_hat in w_hats)
    # the dynamic mode is a different product (per-block scales)
    assert not np.allclose(t.matmul(xt, act_quant="int8"), got, rtol=0, atol=1e-7)


def test_1d_input_and_empty_batch():
    w, x = weights_and_inputs(rows=17, cols=130)
    t = qpack.compress({"w": w}, bits=4, calibration={"w": x})["w"]
    v = x[0]
    np.testing.assert_allclose(t.matmul(v, act_quant="int8-static"),
                               t.matmul(v[None], act_quant="int8-static")[0], rtol=0, atol=0)
    assert t.matmul(np.zeros((0, 130), np.float32), act_quant="int8-static").shape == (0, 17)


def test_act_range_rules_and_storage(tmp_path):
    w, x = weights_and_inputs()
    stats = HessianStats(x.shape[1])
    for i in range(0, len(x), 400):  # streamed
        stats.update(x[i:i + 400])
    scales = {}
    for rule in act_range.ACT_RANGE_METHODS:
        raw = qpack.compress({"w": w}, calibration={"w": x}, act_range=rule)
        streamed = qpack.compress({"w": w}, calibration={"w": stats}, act_range=rule)
        assert raw["w"].spec["act_scale"] == streamed["w"].spec["act_scale"]
        scales[rule] = raw["w"].spec["act_scale"]
        assert scales[rule] == pytest.approx(
            act_range.clip_value(act_range.ActivationHistogram().update(x), rule) / 127,
            rel=1e-6)
    assert scales["minmax"] == pytest.approx(float(np.abs(x).max()) / 127, rel=1e-6)
    # minmax is the default: nothing seen in calibration clips
    default = qpack.compress({"w": w}, calibration={"w": stats})["w"].spec["act_scale"]
    assert default == scales["minmax"]
    assert scales["mse"] < scales["minmax"]
    cm = qpack.compress({"w": w}, calibration={"w": x}, act_range="percentile",
                        act_percentile=99.0)
    cm.save(tmp_path / "m.qpk")
    loaded = qpack.load(tmp_path / "m.qpk")
    assert loaded["w"].spec["act_scale"] == cm["w"].spec["act_scale"]
    np.testing.assert_array_equal(loaded["w"].matmul(x[:5], act_quant="int8-static"),
                                  cm["w"].matmul(x[:5], act_quant="int8-static"))
    none = qpack.compress({"w": w}, calibration={"w": x}, act_range=None)["w"]
    assert "act_scale" not in none.spec


def test_int8_static_needs_a_calibrated_tensor():
    w, _ = weights_and_inputs()
    t = qpack.compress({"w": w})["w"]
    with pytest.raises(ValueError, match="needs a static activation scale"):
        t.matmul(np.ones((2, w.shape[1]), np.float32), act_quant="int8-static")
    with pytest.raises(ValueError, match="act_scale"):
        PackedLinear(t, act_quant="int8-static")
    with pytest.raises(ValueError, match="act_quant must be None, 'int8' or 'int8-static'"):
        t.matmul(np.ones((2, w.shape[1]), np.float32), act_quant="int4")


@pytest.mark.parametrize("kwargs,match", [
    (dict(act_range="kl"), "does nothing without calibration"),
    (dict(act_range="mse"), "does nothing without calibration"),
    (dict(act_range="max"), "act_range must be one of"),
    (dict(act_percentile=99.0), "does nothing without calibration"),
    (dict(act_range="mse", act_percentile=99.0, calib=True), "act_percentile does nothing"),
    (dict(act_range="percentile", act_percentile=40, calib=True), "act_percentile must be"),
])
def test_bad_act_range_arguments(kwargs, match):
    w, x = weights_and_inputs()
    extra = {"calibration": {"w": x}} if kwargs.pop("calib", False) else {}
    with pytest.raises(ValueError, match=match):
        qpack.compress({"w": w}, **kwargs, **extra)


@pytest.mark.parametrize("value", [0, -1.0, 1e300, 1e-60, "0.1", True, None, [1.0]])
def test_hostile_act_scale_is_a_format_error(tmp_path, value):
    w, x = weights_and_inputs(rows=8, cols=32)
    path = tmp_path / "m.qpk"
    qpack.compress({"w": w}, calibration={"w": x}, min_numel=0).save(path)
    mapped = format.MappedFile(path)
    header = json.loads(json.dumps(mapped.header))
    header["tensors"]["w"]["act_scale"] = value
    blobs = [(desc, mapped.section(desc, "x"))
             for desc in header["tensors"]["w"]["sections"].values()]
    del mapped
    format.layout_sections(blobs)
    format.write_file(str(path), header, blobs)
    with pytest.raises(qpack.FormatError, match="act_scale"):
        qpack.load(path)


@pytest.mark.parametrize("value", [0.0, -0.5, float("nan"), float("inf"), 1e39, 1e-50, "1"])
def test_a_bad_static_scale_on_kernel_weights_is_refused(value):
    w, x = weights_and_inputs(rows=8, cols=128)
    kernel = qpack.compress({"w": w}, calibration={"w": x}, min_numel=0)["w"].kernel_weights()
    kernel.act_scale = value  # set by hand: the kernel must never see it
    with pytest.raises(ValueError, match="act_scale must be a finite number > 0"):
        kernel.matmul(x[:2], act_quant="int8-static")
