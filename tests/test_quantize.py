"""qpack.quantize_linear: exactness properties against a plain-numpy decode reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import qpack
from qpack import metrics


def outlier_weights(shape, seed=0, dtype=np.float32):
    """Normal(0, 0.02) weights with 0.1% outliers at 20-50x the std, random sign."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.02, size=shape)
    n_out = max(1, int(round(w.size * 0.001)))
    idx = rng.choice(w.size, size=n_out, replace=False)
    w.reshape(-1)[idx] = rng.uniform(20, 50, n_out) * 0.02 * rng.choice([-1, 1], n_out)
    return w.astype(dtype)


def ref_group_width(shape, group_size):
    rows, cols = (1, shape[0]) if len(shape) == 1 else (shape[0], int(np.prod(shape[1:])))
    if group_size is None:
        return rows, cols, rows * cols
    if group_size == -1:
        return rows, cols, cols
    return rows, cols, group_size


def ref_decode(q: qpack.LinearQuantized) -> np.ndarray:
    """The documented formula, element by element through explicit (row, col // G) indices."""
    rows, cols, g = ref_group_width(q.shape, q.group_size)
    if q.group_size is None:
        codes = q.codes.reshape(1, -1)
        gi = np.zeros(codes.shape, dtype=np.intp)
        ri = np.zeros(codes.shape, dtype=np.intp)
    else:
        codes = q.codes.reshape(rows, cols)
        ri, ci = np.indices(codes.shape)
        gi = ci // g
    z = q.zeros[ri, gi].astype(np.float32)
    s = q.scales[ri, gi].astype(np.float32)
    return ((codes.astype(np.float32) - z) * s).reshape(q.shape)


def ref_scale_per_element(q: qpack.LinearQuantized) -> np.ndarray:
    rows, cols, g = ref_group_width(q.shape, q.group_size)
    if q.group_size is None:
        return np.full(q.shape, float(q.scales[0, 0]))
    ri, ci = np.indices((rows, cols))
    return q.scales[ri, ci // g].astype(np.float64).reshape(q.shape)


def check_invariants(w, q, bits, symmetric):
    rows, cols, g = ref_group_width(w.shape, q.group_size)
    ngroups = 1 if q.group_size is None else -(-cols // g) if q.group_size != -1 else 1
    prows = 1 if q.group_size is None else rows
    assert q.codes.dtype == np.uint8 and q.codes.shape == w.shape
    assert q.scales.shape == (prows, ngroups) and q.zeros.shape == (prows, ngroups)
    assert q.zeros.dtype == np.uint8
    assert int(q.codes.max()) < (1 << bits)
    assert int(q.zeros.max()) < (1 << bits)
    if symmetric:
        half = 1 << (bits - 1)
        assert (q.zeros == half).all()
        assert int(q.codes.min()) >= 1 and int(q.codes.max()) <= 2 * half - 1
    deq = q.dequantize()
    assert deq.dtype == np.float32 and deq.shape == w.shape
    np.testing.assert_array_equal(deq, ref_decode(q))
    return deq


SHAPES = [(1,), (7,), (300,), (1, 1), (3, 5), (16, 128), (5, 130), (4, 3, 10), (2, 3, 4, 5)]
GROUPS = [None, -1, 1, 32, 64, 128, 1000]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_minmax_error_at_most_half_a_step(shape, group_size, symmetric):
    w = outlier_weights(shape, seed=len(shape) + (group_size or 0) % 7)
    for bits in (2, 3, 4, 8) if symmetric else (1, 2, 4, 5, 8):
        q = qpack.quantize_linear(w, bits, group_size=group_size, symmetric=symmetric)
        deq = check_invariants(w, q, bits, symmetric)
        step = ref_scale_per_element(q)
        err = np.abs(deq.astype(np.float64) - w.astype(np.float64))
        assert (err <= step / 2 * (1 + 1e-5) + 1e-12).all()


@pytest.mark.parametrize("clip", ["minmax", "percentile", "mse"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [None, -1, 32, 100])
def test_zero_is_exact_for_every_clip(clip, symmetric, group_size):
    w = outlier_weights((12, 250), seed=3)
    w[:, ::3] = 0.0
    w[5] = 0.0  # an all-zero row
    q = qpack.quantize_linear(w, 4, group_size=group_size, symmetric=symmetric, clip=clip)
    deq = check_invariants(w, q, 4, symmetric)
    assert (deq[w == 0] == 0).all()


def test_float16_scales_are_rounded_up_and_used_for_codes():
    w = outlier_weights((64, 256), seed=4)
    q = qpack.quantize_linear(w, 4, group_size=64)
    g = w.reshape(64, 4, 64).astype(np.float64)
    exact = (np.maximum(g.max(-1), 0) - np.minimum(g.min(-1), 0)) / 15
    assert q.scales.dtype == np.float16
    assert (q.scales.astype(np.float64) >= exact * (1 - 1e-6)).all()
    # Codes are computed against the stored float16 scale: re-deriving them from it agrees.
    s = q.scales.astype(np.float32)[..., None]
    z = q.zeros.astype(np.float32)[..., None]
    expect = np.clip(np.rint(w.reshape(64, 4, 64) / s) + z, 0, 15)
    mismatch = expect.reshape(64, 256) != q.codes
    assert mismatch.mean() < 1e-3  # only reciprocal-vs-division ties may differ


@pytest.mark.parametrize("scale_dtype", [np.float16, np.float32, np.float64])
def test_scale_dtype_is_kept(scale_dtype):
    w = outlier_weights((8, 64), seed=5)
    q = qpack.quantize_linear(w, 3, group_size=16, scale_dtype=scale_dtype)
    assert q.scales.dtype == np.dtype(scale_dtype)
    check_invariants(w, q, 3, False)


@pytest.mark.parametrize("value", [0.5, -3.0, 2.0 ** -10, 1.0])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [None, -1, 4])
def test_constant_tensors_are_exact(value, symmetric, group_size):
    w = np.full((3, 10), value, dtype=np.float32)
    for bits in (2, 4, 8):
        q = qpack.quantize_linear(w, bits, group_size=group_size, symmetric=symmetric)
        np.testing.assert_array_equal(q.dequantize(), w)
    if not symmetric:
        q = qpack.quantize_linear(w, 1, group_size=group_size)
        np.testing.assert_array_equal(q.dequantize(), w)


def test_non_float16_constant_is_exact_with_float32_scales():
    w = np.full((4, 8), 0.3, dtype=np.float32)
    q = qpack.quantize_linear(w, 4, group_size=-1, scale_dtype=np.float32)
    np.testing.assert_array_equal(q.dequantize(), w)


def test_all_zero_tensor_is_exact():
    w = np.zeros((5, 7))
    for symmetric in (False, True):
        q = qpack.quantize_linear(w, 4, group_size=3, symmetric=symmetric)
        assert (q.dequantize() == 0).all()


def test_mse_clip_beats_minmax_on_outliers():
    w = outlier_weights((256, 512), seed=6)
    for group_size in (None, -1, 128):
        for symmetric in (False, True):
            errs = {}
            for clip in ("minmax", "mse"):
                q = qpack.quantize_linear(w, 4, group_size=group_size, symmetric=symmetric,
                                          clip=clip)
                errs[clip] = metrics.mse(w, q.dequantize())
            assert errs["mse"] < errs["minmax"], (group_size, symmetric, errs)


def test_mse_clip_never_worse_per_group():
    w = outlier_weights((32, 256), seed=7)
    a = qpack.quantize_linear(w, 3, group_size=64, clip="minmax").dequantize()
    b = qpack.quantize_linear(w, 3, group_size=64, clip="mse").dequantize()
    ea = np.square(a - w, dtype=np.float64).reshape(32, 4, 64).sum(-1)
    eb = np.square(b - w, dtype=np.float64).reshape(32, 4, 64).sum(-1)
    assert (eb <= ea * (1 + 1e-9)).all()


def test_percentile_clip_narrows_the_range():
    w = outlier_weights((64, 1024), seed=8)
    a = qpack.quantize_linear(w, 4, group_size=-1, clip="minmax")
    b = qpack.quantize_linear(w, 4, group_size=-1, clip="percentile", percentile=99.0)
    assert (b.scales.astype(np.float32) <= a.scales.astype(np.float32)).all()
    assert (b.scales.astype(np.float32) < a.scales.astype(np.float32)).any()
    check_invariants(w, b, 4, False)
    c = qpack.quantize_linear(w, 4, clip="percentile", percentile=100.0)
    d = qpack.quantize_linear(w, 4, clip="minmax")
    np.testing.assert_array_equal(c.dequantize(), d.dequantize())


def test_group_layout_last_group_shorter_and_large_group():
    w = outlier_weights((3, 10), seed=9)
    q = qpack.quantize_linear(w, 4, group_size=4)
    assert q.scales.shape == (3, 3)
    # The short last group (columns 8, 9) has its own range.
    tail = w[:, 8:].astype(np.float64)
    exact = (np.maximum(tail.max(1), 0) - np.minimum(tail.min(1), 0)) / 15
    assert np.allclose(q.scales[:, 2].astype(np.float64), exact, rtol=1e-3)
    q = qpack.quantize_linear(w, 4, group_size=1000)
    assert q.scales.shape == (3, 1)
    np.testing.assert_array_equal(q.dequantize(),
                                  qpack.quantize_linear(w, 4, group_size=-1).dequantize())


def test_higher_dims_are_viewed_as_rows():
    w = outlier_weights((6, 4, 8), seed=10)
    q = qpack.quantize_linear(w, 4, group_size=16)
    assert q.scales.shape == (6, 2) and q.codes.shape == (6, 4, 8)
    flat = qpack.quantize_linear(w.reshape(6, 32), 4, group_size=16)
    np.testing.assert_array_equal(q.dequantize().reshape(6, 32), flat.dequantize())


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_input_dtypes_and_lists(dtype):
    w = outlier_weights((8, 32), seed=11).astype(dtype)
    q = qpack.quantize_linear(w, 4, group_size=8)
    deq = check_invariants(w, q, 4, False)
    assert metrics.relative_error(w, deq) < 0.2
    assert q.dequantize(np.float64).dtype == np.float64
    ql = qpack.quantize_linear(w.astype(np.float64).tolist(), 4, group_size=8)
    assert ql.codes.shape == (8, 32)


def test_bits_per_weight_counts_every_parameter():
    w = outlier_weights((16, 256), seed=12)
    q = qpack.quantize_linear(w, 4, group_size=32)
    # float16 scales, and 8 zero-points a row packed at 4 bits (format version 3)
    assert q.nbytes_params == 16 * 8 * 2 + 16 * 4
    assert q.bits_per_weight == pytest.approx(4 + 8 * q.nbytes_params / w.size)
    s = qpack.quantize_linear(w, 4, group_size=32, symmetric=True)
    # symmetric zero-points are 2**(bits-1) by definition: the file stores none
    assert s.nbytes_params == 16 * 8 * 2
    assert s.bits_per_weight == pytest.approx(4.5)
    f = qpack.quantize_linear(w, 4, group_size=32, symmetric=True, scale_dtype=np.float32)
    assert f.nbytes_params == 16 * 8 * 4


def test_result_is_frozen():
    q = qpack.quantize_linear(np.ones(4, np.float32), 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.bits = 3


def test_more_bits_less_error():
    w = outlier_weights((64, 256), seed=13)
    errs = [metrics.mse(w, qpack.quantize_linear(w, b, group_size=64).dequantize())
            for b in range(1, 9)]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(w=[[np.nan, 1.0]]), "w contains NaN"),
        (dict(w=[[np.inf, 1.0]]), "w contains Inf"),
        (dict(w=np.zeros((0, 3))), "w must not be empty"),
        (dict(w=np.arange(6).reshape(2, 3)), "w must have a floating dtype"),
        (dict(w=np.ones(3, np.complex64)), "w must have a floating dtype"),
        (dict(w=np.float32(1.0)), "w must be an array"),
        (dict(bits=0), "bits must be an integer in 1..8"),
        (dict(bits=9), "bits must be an integer in 1..8"),
        (dict(bits=2.0), "bits must be an integer"),
        (dict(group_size=0), "group_size"),
        (dict(group_size=-2), "group_size"),
        (dict(group_size=1.5), "group_size"),
        (dict(group_size=True), "group_size"),
        (dict(clip="max"), "clip must be one of"),
        (dict(clip="percentile", percentile=40), "percentile"),
        (dict(clip="percentile", percentile=101), "percentile"),
        (dict(symmetric=True, bits=1), "bits=1"),
        (dict(symmetric="yes"), "symmetric"),
        (dict(scale_dtype=np.int8), "scale_dtype"),
        (dict(scale_dtype="nonsense"), "scale_dtype"),
        (dict(w=np.array([1e9, -1e9])), "scale_dtype"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    args = dict(w=np.ones((2, 4), np.float32), bits=4)
    args.update(kwargs)
    w = args.pop("w")
    bits = args.pop("bits")
    with pytest.raises(ValueError, match=match):
        qpack.quantize_linear(w, bits, **args)


@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 70),
    bits=st.integers(1, 8),
    group=st.sampled_from([None, -1, 1, 3, 8, 16, 64, 100]),
    symmetric=st.booleans(),
    scale=st.sampled_from([1e-4, 0.02, 1.0, 300.0]),
    dist=st.sampled_from(["normal", "uniform", "positive", "sparse", "outliers"]),
    seed=st.integers(0, 2**31),
)
def test_property_minmax(rows, cols, bits, group, symmetric, scale, dist, seed):
    if symmetric and bits == 1:
        return
    rng = np.random.default_rng(seed)
    if dist == "normal":
        w = rng.normal(size=(rows, cols))
    elif dist == "uniform":
        w = rng.uniform(-1, 1, size=(rows, cols))
    elif dist == "positive":
        w = rng.uniform(0.5, 1, size=(rows, cols))
    elif dist == "sparse":
        w = rng.normal(size=(rows, cols)) * (rng.random((rows, cols)) < 0.2)
    else:
        w = outlier_weights((rows, cols), seed=seed % 1000).astype(np.float64) * 50
    w = (w * scale).astype(np.float32)
    q = qpack.quantize_linear(w, bits, group_size=group, symmetric=symmetric)
    deq = check_invariants(w, q, bits, symmetric)
    step = ref_scale_per_element(q)
    err = np.abs(deq.astype(np.float64) - w.astype(np.float64))
    assert (err <= step / 2 * (1 + 1e-5) + 1e-30).all()
    assert (deq[w == 0] == 0).all()


@pytest.mark.parametrize("group_size, clip", [(64, "mse"), (-1, "minmax"), (None, "mse"),
                                              (48, "percentile")])
def test_row_blocks_give_the_same_result(monkeypatch, group_size, clip):
    """quantize_linear works on blocks of rows (bounded temporaries): the same codes,
    scales and zero-points as one block."""
    import qpack.quantize as qz

    w = np.random.default_rng(5).standard_normal((37, 200)).astype(np.float32)
    whole = qpack.quantize_linear(w, 4, group_size=group_size, clip=clip)
    monkeypatch.setattr(qz, "ROW_BLOCK_ELEMENTS", 450)  # blocks of 2 rows, a ragged last
    blocks = qpack.quantize_linear(w, 4, group_size=group_size, clip=clip)
    for field in ("codes", "scales", "zeros"):
        np.testing.assert_array_equal(getattr(blocks, field), getattr(whole, field))
    for start, stop in ((0, 37), (3, 4), (30, 37)):
        np.testing.assert_array_equal(whole.dequantize_rows(start, stop),
                                      whole.dequantize()[start:stop])


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_round_scale_up_never_goes_below_and_is_the_next_value(dtype):
    """Scales round to the nearest ``dtype`` value at or above them: the same as
    np.nextafter(upward) on every value that rounded down, including a scale below the
    smallest subnormal (-> that subnormal) and 0 (stays 0)."""
    from qpack.quantize import round_scale_up

    rng = np.random.default_rng(int(np.dtype(dtype).itemsize))
    work = np.float32 if dtype == np.float16 else np.float64
    scale = np.concatenate([rng.random(5000) * 10.0 ** rng.integers(-9, 4, 5000),
                            # 1e-30 / 1e-46: below the smallest subnormal of dtype
                            [0.0, 1e-30 if dtype == np.float16 else 1e-46, 1.0, 0.1,
                             0.3]]).astype(work)
    got = round_scale_up(scale, np.dtype(dtype))
    assert got.dtype == dtype
    assert (got.astype(work) >= scale).all()
    near = scale.astype(dtype)
    want = np.where(near.astype(work) < scale, np.nextafter(near, dtype(np.inf)), near)
    np.testing.assert_array_equal(got, want)
    assert got[-5] == 0 and got[-4] == np.nextafter(dtype(0), dtype(1))


def test_round_scale_up_reports_overflow():
    from qpack.quantize import round_scale_up

    with pytest.raises(ValueError, match="cannot hold a scale"):
        round_scale_up(np.array([1.0, 65504.0 * 1.0001], np.float32), np.dtype(np.float16))
    with pytest.raises(ValueError, match="scales >= 0"):
        round_scale_up(np.array([0.5, -0.1], np.float32), np.dtype(np.float16))
