"""qpack.prune_magnitude / prune_global / prune_n_m: exact counts, thresholds, ties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import qpack


def weights(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(0, 0.02, shape).astype(dtype)


def n_removed(sparsity, n):
    return int(np.floor(sparsity * n + 0.5))


def assert_threshold(mag, keep):
    """Every removed magnitude is <= every kept magnitude."""
    if keep.all() or not keep.any():
        return
    assert mag[~keep].max() <= mag[keep].min()


@pytest.mark.parametrize("shape", [(1,), (10,), (7, 13), (4, 5, 6), (100, 100)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.29, 0.5, 0.75, 0.9, 0.999])
def test_magnitude_exact_count_and_threshold(shape, sparsity):
    w = weights(shape, seed=len(shape))
    keep = qpack.prune_magnitude(w, sparsity)
    assert keep.dtype == np.bool_ and keep.shape == w.shape
    assert int((~keep).sum()) == n_removed(sparsity, w.size)
    assert_threshold(np.abs(w), keep)


def test_magnitude_ties_remove_earliest_first():
    w = np.array([0.5, -0.5, 0.5, 1.0, -0.5, 0.5])
    keep = qpack.prune_magnitude(w, 0.5)
    np.testing.assert_array_equal(keep, [False, False, False, True, True, True])
    keep = qpack.prune_magnitude(np.ones((2, 5)), 0.3)
    np.testing.assert_array_equal(keep.reshape(-1), [False] * 3 + [True] * 7)


def test_magnitude_half_rounds_up_and_dtypes():
    assert int((~qpack.prune_magnitude(np.arange(1.0, 5.0), 0.125)).sum()) == 1  # 0.5 -> 1
    for dtype in (np.float16, np.float32, np.float64):
        w = weights((20, 20), seed=3, dtype=dtype)
        keep = qpack.prune_magnitude(w, 0.6)
        assert int((~keep).sum()) == 240
        assert_threshold(np.abs(w.astype(np.float64)), keep)
    keep = qpack.prune_magnitude([[0.1, -0.3], [0.2, 0.0]], 0.5)
    np.testing.assert_array_equal(keep, [[False, True], [True, False]])


def test_global_uses_one_threshold():
    tensors = {"a": weights((30, 40), seed=1) * 5, "b": weights((100,), seed=2),
               "c": weights((3, 4, 5), seed=3, dtype=np.float64)}
    masks = qpack.prune_global(tensors, 0.7)
    assert list(masks) == ["a", "b", "c"]
    total = sum(t.size for t in tensors.values())
    assert sum(int((~m).sum()) for m in masks.values()) == n_removed(0.7, total)
    removed = np.concatenate([np.abs(t[~masks[n]]).astype(np.float64).ravel()
                              for n, t in tensors.items()])
    kept = np.concatenate([np.abs(t[masks[n]]).astype(np.float64).ravel()
                           for n, t in tensors.items()])
    assert removed.max() <= kept.min()
    # The scaled-up tensor keeps more than the others: the threshold is global.
    assert masks["a"].mean() > masks["b"].mean()
    for n, t in tensors.items():
        assert masks[n].shape == np.shape(t)


def test_global_single_tensor_equals_magnitude():
    w = weights((50, 20), seed=4)
    np.testing.assert_array_equal(qpack.prune_global({"w": w}, 0.4)["w"],
                                  qpack.prune_magnitude(w, 0.4))


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (1, 2), (3, 3), (1, 1)])
def test_n_m_structure(n, m):
    w = weights((16, 8 * m), seed=m)
    keep = qpack.prune_n_m(w, n, m)
    groups = keep.reshape(-1, m)
    assert (groups.sum(axis=1) == n).all()
    mag = np.abs(w).reshape(-1, m)
    for g in range(0, mag.shape[0], 7):
        assert_threshold(mag[g], groups[g])


def test_n_m_ties_keep_earliest_and_higher_dims():
    keep = qpack.prune_n_m(np.ones((2, 8)), 2, 4)
    np.testing.assert_array_equal(keep[0], [True, True, False, False] * 2)
    w = weights((3, 5, 8), seed=5)
    keep = qpack.prune_n_m(w, 2, 4)
    assert keep.shape == w.shape and (keep.reshape(-1, 4).sum(1) == 2).all()


@pytest.mark.parametrize("clip", ["minmax", "mse", "percentile"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_pruned_positions_stay_exactly_zero_after_quantizers(clip, symmetric):
    w = weights((32, 96), seed=6)
    for keep in (qpack.prune_magnitude(w, 0.8), qpack.prune_n_m(w, 2, 4)):
        pruned = w * keep
        for group_size in (None, -1, 32):
            q = qpack.quantize_linear(pruned, 3, group_size=group_size, symmetric=symmetric,
                                      clip=clip)
            assert (q.dequantize()[~keep] == 0).all()
        for per_channel in (False, True):
            k = qpack.quantize_kmeans(w, 3, mask=keep, per_channel=per_channel)
            assert (k.dequantize()[~keep] == 0).all()


@pytest.mark.parametrize(
    "fn, args, match",
    [
        (qpack.prune_magnitude, ([1.0, np.nan], 0.5), "w contains NaN"),
        (qpack.prune_magnitude, ([1, 2], 0.5), "w must have a floating dtype"),
        (qpack.prune_magnitude, (np.zeros(0), 0.5), "w must not be empty"),
        (qpack.prune_magnitude, ([1.0, 2.0], 1.0), "sparsity"),
        (qpack.prune_magnitude, ([1.0, 2.0], -0.1), "sparsity"),
        (qpack.prune_magnitude, ([1.0, 2.0], "0.5"), "sparsity"),
        (qpack.prune_magnitude, ([1.0, 2.0], np.nan), "sparsity"),
        (qpack.prune_global, ({}, 0.5), "tensors must not be empty"),
        (qpack.prune_global, ([np.ones(3)], 0.5), "tensors must be a mapping"),
        (qpack.prune_global, ({"x": np.ones(2), "bad": [np.inf]}, 0.5), r"tensors\['bad'\]"),
        (qpack.prune_n_m, (np.ones((2, 6)), 2, 4), "multiple of m=4"),
        (qpack.prune_n_m, (np.ones((2, 8)), 5, 4), "n must be <= m"),
        (qpack.prune_n_m, (np.ones((2, 8)), 0, 4), "n must be a positive integer"),
        (qpack.prune_n_m, (np.ones((2, 8)), 2, 4.0), "m must be a positive integer"),
    ],
)
def test_bad_input(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


@given(
    size=st.integers(1, 500),
    sparsity=st.floats(0.0, 0.999),
    dup=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_property_magnitude(size, sparsity, dup, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=size)
    if dup:
        w = np.round(w, 1)
    keep = qpack.prune_magnitude(w, sparsity)
    assert int((~keep).sum()) == min(size, n_removed(sparsity, size))
    assert_threshold(np.abs(w), keep)
