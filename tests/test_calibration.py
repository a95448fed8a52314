"""Calibration statistics and error-compensated (GPTQ) quantization, against a plain,
unblocked numpy implementation of the column-by-column algorithm kept here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qpack
from qpack import calibration as cal
from qpack import gptq
from qpack._validate import as_matrix, group_layout, matrix_shape

# -- the oracle: GPTQ written as plainly as possible ----------------------------------------


def oracle_factor(h):
    """U upper with h^-1 = U^T U, the textbook way (explicit inverse, then Cholesky)."""
    return np.linalg.cholesky(np.linalg.inv(h)).T


def oracle_linear(w, h, bits, group_size=None, symmetric=False, clip="minmax", keep=None):
    """Column-by-column GPTQ with linear codes; group parameters from quantize_linear on
    the group's current (error-updated, pruned-zeroed) weights when the loop enters it."""
    W = as_matrix(np.asarray(w, np.float64)).copy()
    rows, cols = W.shape
    keep = np.ones((rows, cols), bool) if keep is None else as_matrix(keep)
    U = oracle_factor(h)
    prow, ngroups, g = group_layout(group_size, rows, cols)
    scales = np.zeros((prow, ngroups), np.float16)
    zeros = np.zeros((prow, ngroups), np.uint8)
    if group_size is None or group_size == -1:
        q = qpack.quantize_linear(np.where(keep, W, 0), bits, group_size=group_size,
                                  symmetric=symmetric, clip=clip)
        scales[:], zeros[:] = q.scales, q.zeros
    codes = np.zeros((rows, cols), np.uint8)
    cmin, cmax = (1 if symmetric else 0), (1 << bits) - 1
    for i in range(cols):
        gi = 0 if group_size in (None, -1) else i // g
        if group_size not in (None, -1) and i % g == 0:
            end = min(i + g, cols)
            q = qpack.quantize_linear(np.where(keep[:, i:end], W[:, i:end], 0), bits,
                                      group_size=-1, symmetric=symmetric, clip=clip)
            scales[:, gi], zeros[:, gi] = q.scales[:, 0], q.zeros[:, 0]
        s = np.broadcast_to(scales[:, gi].astype(np.float64), (rows,))
        z = np.broadcast_to(zeros[:, gi].astype(np.float64), (rows,))
        inv = np.where(s > 0, 1 / np.where(s > 0, s, 1), 0)
        c = np.clip(np.rint(W[:, i] * inv) + z, cmin, cmax)
        c = np.where(keep[:, i], c, z)
        w_hat = (c.astype(np.float32) - z.astype(np.float32)) * s.astype(np.float32)
        codes[:, i] = c
        e = (W[:, i] - w_hat) / U[i, i]
        W[:, i + 1:] -= np.outer(e, U[i, i + 1:])
    return codes, scales, zeros


def oracle_kmeans(w, h, centroids, keep=None):
    """Column-by-column GPTQ assignment to given learned centroids (ascending); pruned
    weights get code 0 (value 0.0) and the learned codes start at 1."""
    W = as_matrix(np.asarray(w, np.float64)).copy()
    rows, cols = W.shape
    U = oracle_factor(h)
    c64 = centroids.astype(np.float32).astype(np.float64)
    codes = np.zeros((rows, cols), np.uint8)
    for i in range(cols):
        label = np.argmin(np.abs(W[:, i][:, None] - c64[None, :]), axis=1)
        w_hat = c64[label]
        if keep is not None:
            k = as_matrix(keep)[:, i]
            label = np.where(k, label + 1, 0)
            w_hat = np.where(k, w_hat, 0.0)
        codes[:, i] = label
        e = (W[:, i] - w_hat) / U[i, i]
        W[:, i + 1:] -= np.outer(e, U[i, i + 1:])
    return codes


# -- data ----------------------------------------------------------------------------------


def correlated_inputs(rng, n, d, rank=None):
    """Strongly correlated inputs: low-rank mixing plus a little noise, uneven scales."""
    rank = rank or max(1, d // 4)
    z = rng.standard_normal((n, rank))
    a = rng.standard_normal((rank, d)) * rng.uniform(0.2, 3.0, d)
    return z @ a + 0.05 * rng.standard_normal((n, d))


def layer(rng, rows, cols, n=None):
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    x = correlated_inputs(rng, n or 4 * cols, cols)
    return w, x


def output_error(x, w, w_hat):
    x = np.asarray(x, np.float64)
    ref = x @ as_matrix(np.asarray(w, np.float64)).T
    return float(np.linalg.norm(ref - x @ as_matrix(np.asarray(w_hat, np.float64)).T)
                 / np.linalg.norm(ref))


# -- HessianStats --------------------------------------------------------------------------


def test_stats_accumulate_batches_in_float64():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 7)).astype(np.float32)
    stats = cal.HessianStats(7)
    for part in (x[:1], x[1:20], x[20:]):
        assert stats.update(part) is stats
    assert stats.n_samples == 50 and stats.in_features == 7
    ref = x.astype(np.float64).T @ x.astype(np.float64)
    np.testing.assert_allclose(stats.xtx, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cal.HessianStats.from_inputs(x).xtx, ref, rtol=1e-12,
                               atol=1e-12)
    with pytest.raises(ValueError):
        stats.xtx[0, 0] = 1.0  # read-only view
    h = stats.hessian(0.5)
    m = np.mean(np.diag(ref / 50))
    np.testing.assert_allclose(h, ref / 50 + 0.5 * m * np.eye(7), rtol=1e-12)
    both = cal.HessianStats.from_inputs(x[:10]).combine(cal.HessianStats.from_inputs(x[10:]))
    assert both.n_samples == 50
    np.testing.assert_allclose(both.xtx, ref, rtol=1e-12, atol=1e-12)


def test_stats_chunked_conversion_and_float16(monkeypatch):
    monkeypatch.setattr(cal, "_CHUNK_ROWS", 3)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((11, 4)).astype(np.float16)
    ref = x.astype(np.float64).T @ x.astype(np.float64)
    np.testing.assert_allclose(cal.HessianStats.from_inputs(x).xtx, ref, rtol=1e-12)


def test_all_zero_inputs_damp_to_identity():
    h = cal.HessianStats.from_inputs(np.zeros((3, 4))).hessian(0.1)
    np.testing.assert_array_equal(h, 0.1 * np.eye(4))


@pytest.mark.parametrize("x, match", [
    (np.ones((3, 4), np.int64), "floating dtype"),
    (np.ones(4), "2-D"),
    (np.ones((2, 3, 4)), "2-D"),
    (np.ones((0, 4)), "at least one row"),
    (np.array([[1.0, np.nan, 0, 0]]), "NaN"),
    (np.array([[1.0, np.inf, 0, 0]]), "Inf"),
    (np.full((2, 4), 1e200), "overflows"),
    (np.ones((2, 5)), "has 5 columns, but in_features is 4"),
])
def test_stats_bad_batches(x, match):
    stats = cal.HessianStats(4).update(np.ones((2, 4)))
    with pytest.raises(ValueError, match=match):
        stats.update(x)
    assert stats.n_samples == 2  # nothing was added


def test_stats_bad_construction_and_use():
    for bad in (0, -1, 2.5, True, cal.MAX_FEATURES + 1):
        with pytest.raises(ValueError, match="in_features"):
            cal.HessianStats(bad)
    with pytest.raises(ValueError, match="no samples"):
        cal.HessianStats(3).hessian()
    with pytest.raises(ValueError, match="in_features"):
        cal.HessianStats(3).combine(cal.HessianStats(4))
    with pytest.raises(ValueError, match="HessianStats"):
        cal.HessianStats(3).combine(np.ones((3, 3)))
    with pytest.raises(ValueError, match="columns; at most"):
        cal.check_inputs(np.zeros((1, cal.MAX_FEATURES + 1), np.float32))
    stats = cal.HessianStats.from_inputs(np.ones((2, 3)))
    for bad in (0, -0.1, np.nan, np.inf, "1", True, 1e-9, 1e9):
        with pytest.raises(ValueError, match="damping"):
            stats.hessian(bad)


def test_factor_is_the_inverse_of_the_textbook_factor():
    rng = np.random.default_rng(2)
    h = cal.HessianStats.from_inputs(correlated_inputs(rng, 30, 12)).hessian(0.01)
    r = gptq.hessian_factor(h)
    assert np.allclose(np.tril(r, -1), 0) and (np.diag(r) > 0).all()
    np.testing.assert_allclose(r @ r.T, h, rtol=1e-12, atol=1e-12)
    # GPTQ's U (h^-1 = U^T U) is R^-1
    np.testing.assert_allclose(np.linalg.inv(r), oracle_factor(h), rtol=1e-8, atol=1e-10)
    s = gptq.update_matrix(r)
    np.testing.assert_allclose(np.diag(s), 1.0)
    with pytest.raises(ValueError, match="positive definite"):
        gptq.hessian_factor(-np.eye(3))


# -- the blocked kernel against the oracle -------------------------------------------------

LINEAR_CASES = [  # (rows, cols, group_size, block_size)
    (24, 70, None, 16),
    (24, 70, -1, 32),
    (24, 70, 16, 32),    # groups aligned with blocks
    (24, 70, 10, 16),    # groups straddle blocks, ragged last group
    (24, 70, 48, 16),    # groups wider than a block
    (24, 70, 128, 16),   # one group wider than the row
    (1, 37, 8, 5),
    (9, 1, 4, 128),
]


@pytest.mark.parametrize("rows, cols, group_size, block", LINEAR_CASES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [3, 4])
def test_linear_matches_oracle(rows, cols, group_size, block, symmetric, bits):
    rng = np.random.default_rng(rows * 1000 + cols + bits)
    w, x = layer(rng, rows, cols)
    stats = cal.HessianStats.from_inputs(x)
    q = qpack.quantize_linear_gptq(w, stats, bits, group_size=group_size,
                                   symmetric=symmetric, damping=0.05, block_size=block)
    codes, scales, zeros = oracle_linear(w, stats.hessian(0.05), bits, group_size, symmetric)
    assert isinstance(q, qpack.LinearQuantized)
    assert q.codes.shape == w.shape and q.codes.dtype == np.uint8
    np.testing.assert_array_equal(q.codes, codes)
    assert q.scales.dtype == np.float16 and q.scales.shape == scales.shape
    np.testing.assert_allclose(q.scales.astype(np.float64), scales.astype(np.float64),
                               rtol=1e-3)  # one float16 step at most, if ever
    np.testing.assert_array_equal(q.zeros, zeros)


@pytest.mark.parametrize("clip", ["mse", "percentile"])
def test_linear_other_clips_match_oracle(clip):
    rng = np.random.default_rng(5)
    w, x = layer(rng, 16, 40)
    stats = cal.HessianStats.from_inputs(x)
    q = qpack.quantize_linear_gptq(w, stats, 3, group_size=12, clip=clip, damping=0.1,
                                   block_size=16)
    codes, scales, zeros = oracle_linear(w, stats.hessian(0.1), 3, 12, clip=clip)
    np.testing.assert_array_equal(q.codes, codes)
    np.testing.assert_array_equal(q.zeros, zeros)


@pytest.mark.parametrize("block", [7, 128])
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("book_dtype", [np.float32, np.float16])
def test_kmeans_matches_oracle_given_its_codebook(block, bits, book_dtype):
    rng = np.random.default_rng(bits + block)
    w, x = layer(rng, 20, 45)
    stats = cal.HessianStats.from_inputs(x)
    q = qpack.quantize_kmeans_gptq(w, stats, bits, damping=0.1, block_size=block,
                                   codebook_dtype=book_dtype)
    h = stats.hessian(0.1)
    assert isinstance(q, qpack.KMeansQuantized) and q.zero_code is None
    assert q.codebook.shape == (1 << bits,) and q.codebook.dtype == book_dtype
    # the codebook is K-means weighted by diag(H) of each weight's column, as stored;
    # the compensated codes are those of the stored (rounded) values
    cents, _ = qpack.kmeans_1d(w, 1 << bits,
                               sample_weight=np.broadcast_to(np.diag(h), w.shape))
    np.testing.assert_array_equal(q.codebook, cents.astype(book_dtype))
    keep = None
    codes = oracle_kmeans(w, h, q.codebook, keep)
    np.testing.assert_array_equal(q.codes, codes)


@pytest.mark.parametrize("method", ["linear", "kmeans"])
def test_pruned_weights_stay_zero_and_error_is_compensated(method):
    rng = np.random.default_rng(11)
    w, x = layer(rng, 30, 50)
    keep = qpack.prune_magnitude(w, 0.5)
    stats = cal.HessianStats.from_inputs(x)
    h = stats.hessian(0.1)
    if method == "linear":
        q = qpack.quantize_linear_gptq(w, stats, 4, group_size=16, mask=keep, damping=0.1,
                                       block_size=16)
        codes, _, _ = oracle_linear(w, h, 4, 16, keep=keep)
        plain = qpack.quantize_linear(np.where(keep, w, 0), 4, group_size=16)
    else:
        q = qpack.quantize_kmeans_gptq(w, stats, 4, mask=keep, damping=0.1, block_size=16)
        assert q.zero_code == 0 and q.codebook[0] == 0.0
        assert (q.codes[keep] != 0).all()  # the zero code stays reserved for pruned weights
        codes = oracle_kmeans(w, h, q.codebook[1:], keep)
        plain = qpack.quantize_kmeans(w, 4, mask=keep)
    np.testing.assert_array_equal(q.codes, codes)
    w_hat = q.dequantize()
    assert (w_hat[~keep] == 0.0).all()
    # the kept weights make up for the pruned ones on the calibration inputs
    assert output_error(x, w, w_hat) < 0.8 * output_error(x, w, plain.dequantize())


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [13, 4])  # a tail of 1 row after the groups of 4, none
def test_kernels_on_threads_with_row_tails_and_pruning(monkeypatch, threads, rows):
    monkeypatch.setattr(gptq, "_threads", lambda work: threads)
    rng = np.random.default_rng(rows + threads)
    w, x = layer(rng, rows, 30)
    keep = rng.random(w.shape) > 0.3
    stats = cal.HessianStats.from_inputs(x)
    h = stats.hessian(0.2)
    q = qpack.quantize_linear_gptq(w, stats, 3, group_size=8, mask=keep, damping=0.2,
                                   block_size=12)
    np.testing.assert_array_equal(q.codes, oracle_linear(w, h, 3, 8, keep=keep)[0])
    k = qpack.quantize_kmeans_gptq(w, stats, 3, mask=keep, damping=0.2, block_size=12)
    np.testing.assert_array_equal(k.codes, oracle_kmeans(w, h, k.codebook[1:], keep))
    k = qpack.quantize_kmeans_gptq(w, stats, 1, damping=0.2, block_size=12)  # k = 2
    np.testing.assert_array_equal(k.codes, oracle_kmeans(w, h, k.codebook))


def test_one_bit_kmeans_with_mask_has_one_learned_entry():
    rng = np.random.default_rng(6)
    w, x = layer(rng, 5, 9)
    keep = rng.random(w.shape) > 0.5
    q = qpack.quantize_kmeans_gptq(w, x, 1, mask=keep)
    assert q.codebook[0] == 0.0 and q.zero_code == 0
    assert (q.codes[keep] == 1).all() and (q.codes[~keep] == 0).all()


@settings(max_examples=25)
@given(rows=st.integers(1, 6), cols=st.integers(1, 40), n=st.integers(1, 60),
       group=st.sampled_from([None, -1, 1, 3, 8, 50]), block=st.integers(1, 20),
       bits=st.integers(2, 8), symmetric=st.booleans(), seed=st.integers(0, 2**16))
def test_property_linear_equals_oracle(rows, cols, n, group, block, bits, symmetric, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols))
    stats = cal.HessianStats.from_inputs(rng.standard_normal((n, cols)))
    q = qpack.quantize_linear_gptq(w, stats, bits, group_size=group, symmetric=symmetric,
                                   damping=0.1, block_size=block)
    codes, _, zeros = oracle_linear(w, stats.hessian(0.1), bits, group, symmetric)
    np.testing.assert_array_equal(q.codes, codes)
    np.testing.assert_array_equal(q.zeros, zeros)


# -- edge shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape, n", [
    ((1, 33), 80),        # one row
    ((17, 1), 5),         # one column
    ((12, 45), 6),        # n_samples < in_features: X^T X is singular, damping fixes it
    ((6, 2, 3, 3), 40),   # a conv weight, viewed as (6, 18)
])
@pytest.mark.parametrize("method", ["linear", "kmeans"])
def test_edge_shapes(shape, n, method):
    rng = np.random.default_rng(n)
    w = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    rows, cols = matrix_shape(shape)
    x = correlated_inputs(rng, n, cols)
    stats = cal.HessianStats.from_inputs(x)
    h = stats.hessian()  # the default damping, as used without held-back rows
    if method == "linear":
        q = qpack.quantize_linear_gptq(w, x, 3, group_size=7, block_size=16)
        codes, _, _ = oracle_linear(w, h, 3, 7)
    else:
        q = qpack.quantize_kmeans_gptq(w, x, 3, block_size=16)
        codes = oracle_kmeans(w, h, q.codebook)
    assert q.shape == shape and q.codes.shape == shape
    if n < gptq.MIN_SPLIT_ROWS:  # too few rows to hold some back: the default damping
        np.testing.assert_array_equal(as_matrix(q.codes), codes)
    assert np.isfinite(q.dequantize()).all()


def test_zero_inputs_fall_back_to_rounding():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 20)).astype(np.float32)
    q = qpack.quantize_linear_gptq(w, np.zeros((4, 20), np.float32), 4, group_size=-1)
    np.testing.assert_array_equal(q.codes, qpack.quantize_linear(w, 4, group_size=-1).codes)


# -- damping selection ---------------------------------------------------------------------


def test_damping_is_chosen_on_held_back_rows(monkeypatch):
    rng = np.random.default_rng(4)
    w, x = layer(rng, 32, 40, n=60)
    seen = []
    real = gptq.calibrated

    def spy(arr, source, damping, quantize):
        out = real(arr, source, damping, quantize)
        seen.append(out[1])
        return out

    monkeypatch.setattr(gptq, "calibrated", spy)
    q = qpack.quantize_linear_gptq(w, x, 3, group_size=-1)
    chosen = seen[-1]
    # recompute the selection by hand: last 20% of the rows held back
    n_val = int(np.ceil(60 * gptq.HOLDOUT_FRACTION))
    train = cal.HessianStats.from_inputs(x[:-n_val])
    xv = x[-n_val:]
    cands = cal.damping_candidates(60 - n_val, 40)
    assert len(cands) == 3 and chosen in cands
    errs = {}
    for d in cands:
        codes, scales, zeros = oracle_linear(w, train.hessian(d), 3, -1)
        w_hat = qpack.LinearQuantized(codes, scales, zeros, 3, -1, False, w.shape).dequantize()
        errs[d] = np.linalg.norm(xv @ (w.astype(np.float64) - w_hat).T) ** 2
    assert chosen == min(errs, key=lambda d: (errs[d], -d))
    final, _, _ = oracle_linear(w, cal.HessianStats.from_inputs(x).hessian(chosen), 3, -1)
    np.testing.assert_array_equal(q.codes, final)
    # an explicit damping is used as given, and HessianStats use the default
    qpack.quantize_linear_gptq(w, x, 3, group_size=-1, damping=0.3)
    assert seen[-1] == 0.3
    qpack.quantize_kmeans_gptq(w, cal.HessianStats.from_inputs(x), 3)
    assert seen[-1] == cal.default_damping(60, 40) == 40 / 60
    qpack.quantize_kmeans_gptq(w, x[:9], 3)  # too few rows to hold some back
    assert seen[-1] == 1.0


def test_default_damping_rule():
    assert cal.default_damping(10, 384) == 1.0       # fewer rows than features
    assert cal.default_damping(768, 384) == 0.5
    assert cal.default_damping(100_000, 384) == 0.1  # never below 0.1
    np.testing.assert_allclose(cal.damping_candidates(768, 384), (0.5 / 3, 0.5, 1.5))


# -- error reduction, and the file / packed matmul ---------------------------------------


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("method, extra", [
    ("linear", {"group_size": -1, "clip": "minmax"}),
    ("linear", {"group_size": 32, "symmetric": True, "clip": "mse"}),
    ("kmeans", {}),
])
def test_compress_reduces_output_error_and_stays_exact(tmp_path, bits, method, extra):
    rng = np.random.default_rng(bits)
    w, x_all = layer(rng, 96, 64, n=500)
    x, x_test = x_all[:400].astype(np.float32), x_all[400:]  # same distribution
    model = {"fc.weight": w, "fc.bias": np.zeros(96, np.float32)}
    plain = qpack.compress(model, bits=bits, method=method, **extra)
    calib = qpack.compress(model, bits=bits, method=method, **extra,
                           calibration={"fc.weight": x})
    # measured here: about 0.4x the plain error, on the calibration rows and on new ones
    for rows in (x, x_test):
        e_plain = output_error(rows, w, plain["fc.weight"].dequantize())
        e_cal = output_error(rows, w, calib["fc.weight"].dequantize())
        assert e_cal <= 0.8 * e_plain, (e_cal, e_plain)
    path = str(tmp_path / "m.qpk")
    calib.save(path)
    loaded = qpack.load(path, verify=True)
    t = loaded["fc.weight"]
    assert t.method == method and t.bits == bits
    w_hat = t.dequantize()
    np.testing.assert_array_equal(w_hat, calib["fc.weight"].dequantize())
    y = t.matmul(x[:7])
    ref = x[:7].astype(np.float64) @ w_hat.astype(np.float64).T
    scale = np.abs(x[:7].astype(np.float64)) @ np.abs(w_hat.astype(np.float64)).T
    assert (np.abs(y - ref) <= 1e-5 * scale + 1e-30).all()
    # the codes are the direct API's, bit for bit, with the damping compress chose
    chosen = json.loads(loaded.metadata["compress_args"])["calibrated"]["fc.weight"]
    assert chosen in cal.damping_candidates(320, 64)
    direct = (qpack.quantize_linear_gptq(w, x, bits, **extra, damping=chosen)
              if method == "linear" else qpack.quantize_kmeans_gptq(w, x, bits,
                                                                    damping=chosen))
    np.testing.assert_array_equal(w_hat, direct.dequantize())


def test_compress_with_stats_pruning_and_conv(tmp_path):
    rng = np.random.default_rng(9)
    conv = (rng.standard_normal((16, 4, 3, 3)) * 0.1).astype(np.float32)
    fc, x_fc = layer(rng, 40, 50, n=200)
    # unfolded 3x3 patches of smooth images (neighbouring pixels and the channels are
    # strongly correlated, as in real feature maps), columns ordered (in, kh, kw)
    walk = np.cumsum(np.cumsum(rng.standard_normal((6, 2, 10, 10)), axis=2), axis=3)
    imgs = np.einsum("nchw,cd->ndhw", walk, rng.standard_normal((2, 4)))
    patches = np.stack([imgs[:, :, i:i + 3, j:j + 3].reshape(6, -1)
                        for i in range(8) for j in range(8)], axis=1).reshape(-1, 36)
    ref_out = np.einsum("nchw,ochw->no", imgs[:, :, :3, :3], conv)
    np.testing.assert_allclose(patches.reshape(6, 64, 36)[:, 0] @ as_matrix(conv).T,
                               ref_out, rtol=1e-4, atol=1e-6)  # the column order claim
    stats = qpack.HessianStats(50).update(x_fc[:120]).update(x_fc[120:])
    model = {"conv.weight": conv, "fc.weight": fc}
    calib = qpack.compress(model, bits=3, method="kmeans", prune=0.3, min_numel=16,
                           calibration={"conv.weight": patches, "fc.weight": stats},
                           calibration_damping=0.1)
    plain = qpack.compress(model, bits=3, method="kmeans", prune=0.3, min_numel=16)
    for name, x in (("conv.weight", patches), ("fc.weight", x_fc)):
        t = calib[name]
        assert 0.29 < t.sparsity < 0.31
        w_hat = t.dequantize()
        keep = as_matrix(plain[name].dequantize()) != 0  # the same magnitude mask
        assert (as_matrix(w_hat)[~keep] == 0).all()
        assert output_error(x, model[name], w_hat) < 0.8 * output_error(
            x, model[name], plain[name].dequantize())
    path = str(tmp_path / "c.qpk")
    calib.save(path)
    np.testing.assert_array_equal(qpack.load(path)["conv.weight"].dequantize(),
                                  calib["conv.weight"].dequantize())


def test_compress_calibration_with_masks_and_global_prune():
    rng = np.random.default_rng(12)
    w, x = layer(rng, 32, 48, n=100)
    mask = qpack.prune_magnitude(w, 0.4)
    out = qpack.compress({"w": w}, bits=4, method="linear", group_size=16, masks={"w": mask},
                         calibration={"w": x})
    assert (out["w"].dequantize()[~mask] == 0).all()
    out = qpack.compress({"w": w, "v": w[::-1].copy()}, bits=4, prune=0.5,
                         prune_scope="global", calibration={"w": x})
    assert abs(out["w"].sparsity + out["v"].sparsity - 1.0) < 0.05


# -- bad arguments, all refused before any encoding ---------------------------------------


@pytest.fixture()
def arrays():
    rng = np.random.default_rng(0)
    return {"fc.weight": rng.standard_normal((48, 64)).astype(np.float32),
            "fc.bias": rng.standard_normal(48).astype(np.float32),
            "small.weight": rng.standard_normal((4, 4)).astype(np.float32)}


def no_encoding(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("encoding started before the arguments were checked")
    monkeypatch.setattr("qpack.encode_jobs.encode_tensor", boom)
    monkeypatch.setattr("qpack.encode_jobs.encode_raw_tensor", boom)


X64 = np.ones((10, 64), np.float32)


@pytest.mark.parametrize("kwargs, match", [
    (dict(calibration={"fc.weight": np.ones((10, 63), np.float32)}),
     r"calibration\['fc.weight'\] has 63 columns, but the weight's matrix-view column "
     "count is 64"),
    (dict(calibration={"fc.weight": cal.HessianStats(32).update(np.ones((2, 32)))}),
     r"in_features=32, but the weight's matrix-view column count is 64"),
    (dict(calibration={"fc.weight": cal.HessianStats(64)}), "no samples"),
    (dict(calibration={"fc.weight": np.where(X64 > 0, np.nan, 0)}), "NaN"),
    (dict(calibration={"fc.weight": np.ones((10, 64), np.int32)}), "floating dtype"),
    (dict(calibration={"fc.weight": np.ones(64, np.float32)}), "2-D"),
    (dict(calibration={"fc.wieght": X64}), "matches no tensor"),
    (dict(calibration={3: X64}), "matches no tensor"),
    (dict(calibration={"fc.bias": np.ones((10, 48))}), "stored exactly"),
    (dict(calibration={"small.weight": np.ones((10, 4))}), "stored exactly"),
    (dict(calibration={"fc.weight": X64}, exclude="fc.*"), "stored exactly"),
    (dict(calibration={"fc.weight": X64}, overrides={"fc.weight": {"method": "raw"}}),
     "stored exactly"),
    (dict(calibration={"fc.weight": X64}, per_channel=True), "per_channel"),
    (dict(calibration={"fc.weight": X64}, calibration_damping=0), "calibration_damping"),
    (dict(calibration={"fc.weight": X64}, calibration_damping=-1.0), "calibration_damping"),
    (dict(calibration={"fc.weight": X64}, calibration_damping="high"),
     "calibration_damping"),
    (dict(calibration_damping=0.1), "does nothing without calibration"),
    (dict(calibration=[X64]), "calibration must map"),
    (dict(calibration={}), "calibration is empty"),
])
def test_bad_calibration_fails_before_encoding(arrays, monkeypatch, kwargs, match):
    no_encoding(monkeypatch)
    with pytest.raises(ValueError, match=match):
        qpack.compress(arrays, **kwargs)


def test_prequantized_tensor_refuses_calibration(arrays, monkeypatch):
    no_encoding(monkeypatch)
    arrays["fc.weight"] = qpack.quantize_linear(arrays["fc.weight"], 4)
    with pytest.raises(ValueError, match="pre-quantized"):
        qpack.compress(arrays, calibration={"fc.weight": X64})


@pytest.mark.parametrize("call, kwargs, match", [
    ("linear", dict(calibration=np.ones((5, 9))), "9 columns, but the weight's matrix-view"),
    ("linear", dict(damping=0.0), "damping"),
    ("linear", dict(damping=float("nan")), "damping"),
    ("linear", dict(block_size=0), "block_size"),
    ("linear", dict(bits=9), "bits"),
    ("linear", dict(group_size=0), "group_size"),
    ("linear", dict(clip="max"), "clip"),
    ("linear", dict(mask=np.ones((4, 8), np.int8)), "boolean keep-mask"),
    ("kmeans", dict(init="kmeans++"), "init"),
    ("kmeans", dict(bits=0), "bits"),
    ("kmeans", dict(mask=np.ones((4, 8), bool), bits=1, init=np.zeros(2)), "init array"),
    ("kmeans", dict(calibration="x"), "floating dtype"),
    ("kmeans", dict(w=np.ones((4, 8), np.int32)), "floating dtype"),
])
def test_direct_api_bad_arguments(call, kwargs, match):
    args = {"w": np.ones((4, 8), np.float32), "calibration": np.ones((5, 8)), "bits": 3}
    args.update(kwargs)
    fn = qpack.quantize_linear_gptq if call == "linear" else qpack.quantize_kmeans_gptq
    with pytest.raises(ValueError, match=match):
        fn(args.pop("w"), args.pop("calibration"), args.pop("bits"), **args)
