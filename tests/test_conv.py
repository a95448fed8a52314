"""qpack.nn.PackedConv2d against a plain-numpy reference convolution (and torch when it is
installed): geometry, encodings, both computation paths, dtypes and strides, errors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import qpack
import qpack.conv as qconv
from qpack.nn import PackedConv2d

ENCODINGS = {
    "kmeans4": dict(bits=4),
    "kmeans2": dict(bits=2),
    "kmeans8-pruned": dict(bits=8, prune=0.8),
    "linear4-g32": dict(bits=4, method="linear", group_size=32),
    "linear8-row": dict(bits=8, method="linear", group_size=-1),
    "linear2-tensor": dict(bits=2, method="linear"),
    "linear4-g8-pruned": dict(bits=4, method="linear", group_size=8, prune=0.8, entropy=None),
}


@functools.cache
def packed(shape: tuple, encoding: str = "kmeans4", seed: int = 0):
    """A CompressedTensor of a random weight of ``shape`` (cached: tests share them)."""
    w = np.random.default_rng(seed).normal(0, 0.1, size=shape).astype(np.float32)
    return qpack.compress({"w": w}, min_numel=0, **ENCODINGS[encoding])["w"]


def reference_conv(x, w, bias=None, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1),
                   groups=1):
    """Cross-correlation in float64, one kernel tap at a time (independent of qpack.conv)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    pt, pb, pl, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, _, hp, wp = xp.shape
    out, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    og = out // groups
    y = np.zeros((n, out, oh, ow))
    for g in range(groups):
        xg, wg = xp[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                tap = xg[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh,
                         j * dw:j * dw + (ow - 1) * sw + 1:sw]
                y[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", tap, wg[:, :, i, j])
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y


def assert_close(y, ref, rel=1e-5):
    """Max error relative to the largest reference value (the brief's 1e-5 criterion)."""
    assert y.shape == ref.shape, (y.shape, ref.shape)
    assert y.dtype == np.float32
    scale = max(float(np.abs(ref).max()), 1e-30) if ref.size else 1.0
    err = float(np.abs(y.astype(np.float64) - ref).max()) if ref.size else 0.0
    assert err <= rel * scale, f"max error {err:.3g} > {rel} * {scale:.3g}"


def dense(t):
    return t.dequantize().astype(np.float32)


@pytest.fixture(params=["auto", "columns", "rows", "tiny-chunks", "two-threads"])
def path(request, monkeypatch):
    """Run a test through each computation path: the automatic choice, the columns path
    (small images side by side), the rows path (groups == 1 only), the columns path in
    tiny chunks and tiles, and on two threads with one patch matrix per image."""
    if request.param == "two-threads":
        monkeypatch.setattr(qconv, "ROWS_MAX_POSITIONS", 0)
        monkeypatch.setattr(qconv, "WIDE_MAX_POSITIONS", 0)
        qpack.set_num_threads(2)
        yield request.param
        qpack.set_num_threads(None)
        return
    if request.param == "columns":
        monkeypatch.setattr(qconv, "ROWS_MAX_POSITIONS", 0)
    elif request.param == "rows":
        monkeypatch.setattr(qconv, "ROWS_MAX_POSITIONS", 1 << 40)
    elif request.param == "tiny-chunks":  # bands of output rows, one weight group per tile
        monkeypatch.setattr(qconv, "ROWS_MAX_POSITIONS", 0)
        monkeypatch.setattr(qconv, "PATCH_BYTES", 1)
        monkeypatch.setattr(qconv, "WEIGHT_TILE_BYTES", 1)
    yield request.param


# (weight shape, input (N, C, H, W), keyword arguments, pads the reference uses)
GEOMETRIES = [
    ((6, 3, 3, 3), (2, 3, 7, 8), {}, (0, 0, 0, 0)),
    ((5, 4, 1, 1), (3, 4, 5, 6), {}, (0, 0, 0, 0)),                      # 1x1, no copy
    ((5, 4, 1, 1), (2, 4, 7, 7), dict(stride=2), (0, 0, 0, 0)),          # strided 1x1
    ((4, 2, 3, 5), (1, 2, 9, 11), dict(padding=(1, 2)), (1, 1, 2, 2)),   # odd kernel
    ((6, 3, 3, 3), (2, 3, 9, 10), dict(stride=(2, 3), padding=1), (1, 1, 1, 1)),
    ((4, 3, 3, 3), (1, 3, 11, 9), dict(dilation=(2, 3), padding=2), (2, 2, 2, 2)),
    ((4, 2, 2, 4), (2, 2, 6, 7), dict(padding="same"), (0, 1, 1, 2)),    # asymmetric
    ((4, 2, 3, 3), (1, 2, 5, 5), dict(padding="same", dilation=2), (2, 2, 2, 2)),
    ((4, 2, 3, 3), (1, 2, 5, 6), dict(padding="valid"), (0, 0, 0, 0)),
    ((6, 2, 3, 3), (2, 6, 7, 7), dict(groups=3, padding=1), (1, 1, 1, 1)),
    ((8, 1, 3, 3), (1, 8, 6, 6), dict(groups=8, stride=2), (0, 0, 0, 0)),  # depthwise
    ((6, 3, 5, 5), (1, 3, 5, 5), {}, (0, 0, 0, 0)),                      # 1x1 output
    ((3, 2, 3, 3), (1, 2, 1, 2), dict(padding=(1, 1)), (1, 1, 1, 1)),   # tiny input
]


@pytest.mark.parametrize("wshape, xshape, kwargs, pads", GEOMETRIES)
def test_geometry_matches_reference(path, wshape, xshape, kwargs, pads):
    groups = kwargs.get("groups", 1)
    if path == "rows" and groups > 1:
        pytest.skip("the rows path needs groups == 1")
    t = packed(wshape)
    bias = np.linspace(-1, 1, wshape[0]).astype(np.float32)
    x = np.random.default_rng(1).standard_normal(xshape).astype(np.float32)
    layer = PackedConv2d(t, bias=bias, **kwargs)
    ref = reference_conv(x, dense(t), bias, qconv.pair(kwargs.get("stride", 1), "s", 1), pads,
                         qconv.pair(kwargs.get("dilation", 1), "d", 1), groups)
    assert_close(layer(x), ref)
    assert layer.output_shape(xshape) == ref.shape
    assert_close(PackedConv2d(t, **kwargs)(x), ref - bias[None, :, None, None])


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_encodings_match_reference(path, encoding):
    t = packed((12, 8, 3, 3), encoding)
    x = np.random.default_rng(2).standard_normal((3, 8, 10, 9)).astype(np.float32)
    bias = np.arange(12, dtype=np.float32) / 7
    ref = reference_conv(x, dense(t), bias, (1, 2), (1, 1, 1, 1))
    assert_close(PackedConv2d(t, bias=bias, stride=(1, 2), padding=1)(x), ref)
    if t.sparsity:
        assert t.layout == "sparse" and t.sparsity >= 0.75


def test_grouped_encodings_and_bits(path):
    if path == "rows":
        pytest.skip("the rows path needs groups == 1")
    for encoding in ("kmeans2", "linear4-g32", "kmeans8-pruned"):
        t = packed((8, 2, 3, 3), encoding)
        x = np.random.default_rng(3).standard_normal((2, 8, 6, 6)).astype(np.float32)
        ref = reference_conv(x, dense(t), None, (1, 1), (1, 1, 1, 1), groups=4)
        assert_close(PackedConv2d(t, padding=1, groups=4)(x), ref)


@given(n=st.integers(0, 3), cg=st.integers(1, 3), groups=st.sampled_from([1, 2]),
       og=st.integers(1, 4), kh=st.integers(1, 4), kw=st.integers(1, 4),
       h=st.integers(1, 9), w=st.integers(1, 9), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 2), pw=st.integers(0, 2), dh=st.integers(1, 2), dw=st.integers(1, 2),
       rows=st.booleans())
def test_random_geometry(n, cg, groups, og, kh, kw, h, w, sh, sw, ph, pw, dh, dw, rows):
    t = packed((og * groups, cg, kh, kw), "linear8-row")
    x = np.random.default_rng(h * 31 + w).standard_normal((n, cg * groups, h, w))
    layer = PackedConv2d(t, stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw),
                         groups=groups)
    if h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1:
        with pytest.raises(ValueError, match="larger than the padded input"):
            layer(x)
        return
    old = qconv.ROWS_MAX_POSITIONS
    qconv.ROWS_MAX_POSITIONS = 1 << 40 if rows else 0
    try:
        y = layer(x)
    finally:
        qconv.ROWS_MAX_POSITIONS = old
    ref = reference_conv(x.astype(np.float32), dense(t), None, (sh, sw), (ph, ph, pw, pw),
                         (dh, dw), groups)
    assert_close(y, ref)


def test_empty_batch_and_three_dim_input():
    t = packed((6, 3, 3, 3))
    layer = PackedConv2d(t, bias=np.ones(6), padding=1)
    y0 = layer(np.zeros((0, 3, 5, 4), np.float32))
    assert y0.shape == (0, 6, 5, 4) and y0.dtype == np.float32
    x = np.random.default_rng(4).standard_normal((3, 5, 4)).astype(np.float32)
    y = layer(x)
    assert y.shape == (6, 5, 4)
    np.testing.assert_array_equal(y, layer(x[None])[0])


def test_input_dtypes_and_strides(path):
    import ml_dtypes

    t = packed((6, 4, 3, 3))
    layer = PackedConv2d(t, padding=1, stride=(2, 1))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    want = layer(x)
    for other in (x.astype(np.float64), x.astype(np.float16), x.astype(ml_dtypes.bfloat16)):
        expect = layer(other.astype(np.float32))
        np.testing.assert_array_equal(layer(other), expect)
    # channels-last memory, a transposed view, negative strides, a strided slice
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert not nhwc.flags.c_contiguous
    np.testing.assert_allclose(layer(nhwc), want, rtol=1e-6, atol=1e-6)
    flipped = np.ascontiguousarray(x[:, :, ::-1, ::-1])[:, :, ::-1, ::-1]
    np.testing.assert_allclose(layer(flipped), want, rtol=1e-6, atol=1e-6)
    wide = np.zeros((2, 8, 7, 12), np.float32)
    wide[:, ::2, :, ::2] = x
    np.testing.assert_allclose(layer(wide[:, ::2, :, ::2]), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(x, nhwc)  # inputs are never written


def test_one_by_one_reads_input_in_place():
    t = packed((5, 4, 1, 1))
    x = np.random.default_rng(6).standard_normal((2, 4, 16, 16)).astype(np.float32)
    ref = reference_conv(x, dense(t), np.ones(5))
    layer = PackedConv2d(t, bias=np.ones(5, np.float32))
    assert_close(layer(x), ref)                        # contiguous: the input is P
    assert_close(layer(np.asfortranarray(x)), ref)     # strided: patches copied


def test_act_quant_int8_close_to_float():
    t = packed((16, 8, 3, 3), "kmeans4")
    x = np.random.default_rng(7).standard_normal((2, 8, 9, 9)).astype(np.float32)
    ref = reference_conv(x, dense(t), None, (1, 1), (1, 1, 1, 1))
    y8 = PackedConv2d(t, padding=1, act_quant="int8")(x)
    assert y8.shape == ref.shape
    err = np.abs(y8 - ref).max() / np.abs(ref).max()
    assert 0 < err < 0.03  # per-block int8 rounding of each patch row (docs/KERNELS.md)


def test_raw_and_loaded_tensors(tmp_path):
    w = np.random.default_rng(8).standard_normal((4, 3, 3, 3)).astype(np.float32)
    raw = qpack.compress({"w": w}, min_numel=10**9)["w"]
    assert raw.method == "raw"
    x = np.random.default_rng(9).standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert_close(PackedConv2d(raw, stride=2)(x), reference_conv(x, w, stride=(2, 2)))
    for entropy in ("huffman", None):
        qpack.compress({"w": w}, bits=4, min_numel=0, entropy=entropy).save(tmp_path / "c.qpk")
        t = qpack.load(tmp_path / "c.qpk")["w"]
        assert_close(PackedConv2d(t, padding=1)(x), reference_conv(x, dense(t), None, (1, 1),
                                                                     (1, 1, 1, 1)))


def test_attributes_and_repr():
    t = packed((6, 3, 3, 3))
    layer = PackedConv2d(t, bias=np.zeros(6), stride=2, padding=1, dilation=(1, 2))
    assert (layer.in_channels, layer.out_channels, layer.kernel_size) == (3, 6, (3, 3))
    assert layer.stride == (2, 2) and layer.padding == (1, 1) and layer.dilation == (1, 2)
    assert layer.nbytes > 0 and "PackedConv2d(3, 6" in repr(layer)
    assert PackedConv2d(t, padding="same").padding == "same"


@pytest.mark.parametrize("kwargs, message", [
    (dict(stride=0), "stride must be an integer >= 1"),
    (dict(stride=(1, 2, 3)), "stride must be an integer or a pair"),
    (dict(stride=1.5), "stride"),
    (dict(stride=True), "stride"),
    (dict(padding=-1), "padding must be an integer >= 0"),
    (dict(padding="full"), "padding must be an integer, a pair, 'valid' or 'same'"),
    (dict(padding="same", stride=2), "padding='same' needs stride 1"),
    (dict(dilation=(1, 0)), "dilation must be an integer >= 1"),
    (dict(groups=0), "groups must be an integer >= 1"),
    (dict(groups=4), "groups=4 must divide out_channels=6"),
    (dict(groups=2.0), "groups must be an integer"),
    (dict(act_quant="int4"), "act_quant must be None, 'int8' or 'int8-static'"),
    (dict(act_quant="int8", groups=2), "act_quant='int8' needs groups=1"),
    (dict(bias=np.ones(5)), r"bias must have shape \(6,\)"),
])
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PackedConv2d(packed((6, 3, 3, 3)), **kwargs)


def test_tensor_errors():
    with pytest.raises(ValueError, match="tensor must be a qpack.CompressedTensor"):
        PackedConv2d(np.ones((2, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="tensor must be 4-D"):
        PackedConv2d(packed((6, 27)))
    ints = qpack.compress({"w": np.ones((2, 2, 3, 3), np.int32)}, min_numel=0)["w"]
    with pytest.raises(ValueError, match="needs a floating weight"):
        PackedConv2d(ints)


@pytest.mark.parametrize("x, message", [
    (np.ones((3, 5, 5), np.int32), "x must have a floating dtype"),
    (np.ones((3, 5, 5), np.complex64), "x must have a floating dtype"),
    (np.ones((5, 5), np.float32), r"x must have shape \(N, C, H, W\) or \(C, H, W\)"),
    (np.ones((1, 1, 3, 5, 5), np.float32), r"x must have shape \(N, C, H, W\)"),
    (np.ones((1, 4, 5, 5), np.float32), "x must have 3 channels"),
    (np.ones((4, 5, 5), np.float32), "x must have 3 channels"),
    (np.ones((1, 3, 2, 5), np.float32), "kernel height 3 .* larger than the padded input "
                                        "height 2"),
    (np.ones((1, 3, 5, 1), np.float32), "kernel width 3 .* larger than the padded input"),
])
def test_call_errors(x, message):
    layer = PackedConv2d(packed((6, 3, 3, 3)))
    with pytest.raises(ValueError, match=message):
        layer(x)
    if x.dtype.kind == "f":  # the shape rules are the same without data
        with pytest.raises(ValueError, match=message):
            layer.output_shape(x.shape)


def test_padding_can_make_a_small_input_fit():
    t = packed((6, 3, 3, 3))
    x = np.ones((1, 3, 1, 1), np.float32)
    y = PackedConv2d(t, padding=1)(x)
    assert_close(y, reference_conv(x, dense(t), None, (1, 1), (1, 1, 1, 1)))
    with pytest.raises(ValueError, match="dilation 2: spans 5"):
        PackedConv2d(t, padding=1, dilation=2)(x)


# -- against torch.nn.functional.conv2d, when torch is installed -------------------------

TORCH_CASES = [
    ((50, 20, 5, 5), (2, 20, 12, 12), {}),
    ((16, 16, 3, 3), (2, 16, 14, 14), dict(padding=1)),
    ((8, 4, 3, 3), (3, 8, 9, 10), dict(stride=2, padding=(1, 2), dilation=(2, 1), groups=2)),
    ((6, 3, 2, 4), (2, 3, 7, 8), dict(padding="same")),
    ((6, 3, 3, 3), (2, 3, 8, 8), dict(padding="same", dilation=3)),
    ((8, 1, 3, 3), (2, 8, 9, 9), dict(groups=8, padding=1)),
    ((7, 5, 1, 1), (3, 5, 6, 6), dict(stride=(1, 2))),
    ((4, 3, 3, 3), (0, 3, 5, 5), {}),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's note on its own copy
@pytest.mark.parametrize("encoding", ["kmeans4", "linear4-g32", "kmeans8-pruned",
                                      "linear2-tensor"])
@pytest.mark.parametrize("wshape, xshape, kwargs", TORCH_CASES)
def test_matches_torch_conv2d(path, encoding, wshape, xshape, kwargs):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install "
                                                "torch==2.13.0): comparison skipped")
    if path == "rows" and kwargs.get("groups", 1) > 1:
        pytest.skip("the rows path needs groups == 1")
    t = packed(wshape, encoding)
    bias = np.random.default_rng(10).standard_normal(wshape[0]).astype(np.float32)
    x = np.random.default_rng(11).standard_normal(xshape).astype(np.float32)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(dense(t)),
                                      torch.from_numpy(bias), **kwargs).numpy()
    assert_close(PackedConv2d(t, bias=bias, **kwargs)(x), want.astype(np.float64))
