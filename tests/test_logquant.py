"""Logarithmic quantization (qpack.quantize_log, compress(method="log")): the grid, the
scale choice and the nearest assignment against a plain-numpy reference, masks, per
channel, the file round trip, matmul, calibration, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qpack
from qpack.errors import FormatError
from qpack.logquant import OCTAVES, STEPS_PER_OCTAVE
from qpack.tensor_spec import validate_spec

# -- the reference: every candidate scale, every split, nearest level by distance --------


def ref_splits(bits, zero):
    """(negative levels, positive levels): the sign alone for 1 bit without a zero."""
    if not zero:
        return [(1, 1)]
    half = 2 ** (bits - 1)
    return [(half, half - 1), (half - 1, half)]


def ref_book(m, n_neg, n_pos, zero, base=2.0):
    """float32 levels -m, -m/base, ..., [0,] ..., m/base, m, ascending."""
    neg = [-m * base ** -k for k in range(n_neg)]
    pos = [m * base ** -k for k in reversed(range(n_pos))]
    return np.array(neg + ([0.0] if zero else []) + pos).astype(np.float32) + np.float32(0)


def ref_nearest(x, book):
    """Index of the nearest entry of ascending ``book`` for every x (ties: lower index)."""
    x = np.asarray(x, np.float64)
    b = book.astype(np.float64)
    hi = np.clip(np.searchsorted(b, x), 0, b.size - 1)
    lo = np.clip(hi - 1, 0, b.size - 1)
    take_hi = np.abs(x - b[hi]) < np.abs(x - b[lo])
    return np.where(take_hi, hi, lo)


def ref_fit(rows, bits, zero, base=2.0):
    """Per row the least-squares (error, book) over the same candidates quantize_log uses;
    one split for all rows. rows: list of 1-D float arrays (the kept values)."""
    best_total, best = np.inf, None
    for n_neg, n_pos in ref_splits(bits, zero):
        total, books = 0.0, []
        for v in rows:
            v = np.asarray(v, np.float64)
            top = float(np.abs(v).max()) if v.size else 0.0
            errs = []
            for j in range(STEPS_PER_OCTAVE * OCTAVES + 1):
                book = ref_book(top * 2.0 ** (-j / STEPS_PER_OCTAVE), n_neg, n_pos, zero, base)
                errs.append((float(np.sum((v - book[ref_nearest(v, book)]) ** 2)), j, book))
            err, _, book = min(errs, key=lambda e: (e[0], e[1]))
            total += err
            books.append(book)
        if total < best_total:
            best_total, best = total, (total, books, n_neg if zero else None)
    return best


def ref_quantize_log(w, bits, mask=None, per_channel=False, base=2.0):
    """(codebook rows, codes, zero_code, squared error of the kept weights)."""
    w = np.asarray(w)
    w = w.astype(np.float64 if w.dtype == np.float64 else np.float32)  # quantize_log's
    mat = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.reshape(1, -1)
    keep = np.ones(mat.shape, bool) if mask is None else np.asarray(mask).reshape(mat.shape)
    zero = bits > 1 or mask is not None
    if per_channel:
        rows = [mat[r][keep[r]] for r in range(mat.shape[0])]
    else:
        rows = [mat[keep]]
    err, books, zero_code = ref_fit(rows, bits, zero, base)
    data = mat if per_channel else mat.reshape(1, -1)
    codes = np.stack([ref_nearest(data[r], books[r]) for r in range(data.shape[0])])
    codes = codes.reshape(mat.shape)
    if mask is not None:
        codes[~keep] = zero_code
    return np.stack(books), codes.reshape(w.shape), zero_code, err


def sq_error(q, w, mask=None):
    d = q.dequantize(np.float64) - np.asarray(w, np.float64)
    return float(np.sum(d[mask] ** 2 if mask is not None else d ** 2))


def gaussian(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# -- quantize_log against the reference --------------------------------------------------

@pytest.mark.parametrize("shape", [(1,), (1, 1), (3,), (2, 3), (7, 5), (3, 4, 5), (40, 97)])
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("per_channel", [False, True])
def test_matches_reference(shape, bits, per_channel):
    w = gaussian(shape, seed=bits) * 0.05
    q = qpack.quantize_log(w, bits, per_channel=per_channel)
    books, codes, zero_code, err = ref_quantize_log(w, bits, per_channel=per_channel)
    assert isinstance(q, qpack.KMeansQuantized)
    assert q.codebook.dtype == np.float32 and q.codes.dtype == np.uint8
    assert q.codes.shape == shape and q.bits == bits and q.per_channel == per_channel
    assert q.zero_code == zero_code
    np.testing.assert_array_equal(q.codebook, books if per_channel else books[0])
    np.testing.assert_array_equal(q.codes, codes)
    assert sq_error(q, w) == pytest.approx(err, rel=1e-9, abs=1e-30)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_masked_matches_reference(bits):
    w = gaussian((33, 21), seed=3)
    mask = qpack.prune_magnitude(w, 0.6)
    for per_channel in (False, True):
        q = qpack.quantize_log(w, bits, mask=mask, per_channel=per_channel)
        books, codes, zero_code, err = ref_quantize_log(w, bits, mask, per_channel)
        assert q.zero_code == zero_code
        np.testing.assert_array_equal(q.codebook, books if per_channel else books[0])
        np.testing.assert_array_equal(q.codes, codes)
        assert np.all(q.dequantize()[~mask] == 0.0)
        assert sq_error(q, w, mask) == pytest.approx(err, rel=1e-9)


@given(w=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                    elements=st.one_of(st.sampled_from([0.0, 1.0, -1.0, 0.5]),
                                       st.floats(-1e4, 1e4, width=32))),
       bits=st.integers(1, 8), per_channel=st.booleans(), masked=st.booleans(),
       seed=st.integers(0, 2**16))
def test_property_optimal_among_candidates(w, bits, per_channel, masked, seed):
    """Any data (ties, zeros, duplicates, mixed scales): the grid has the layout, every
    weight takes a nearest entry, and the error is the reference's optimum."""
    mask = np.random.default_rng(seed).random(w.shape) < 0.7 if masked else None
    q = qpack.quantize_log(w, bits, mask=mask, per_channel=per_channel)
    books, _, zero_code, err = ref_quantize_log(w, bits, mask, per_channel)
    assert q.zero_code == zero_code
    book = q.codebook.reshape(-1, 2 ** bits)
    assert np.all(np.diff(book, axis=1) >= 0)
    if zero_code is not None:
        assert np.all(book[:, zero_code] == 0)
        # a kept weight of exactly 0.0 decodes to exactly 0.0
        kept_zero = (w == 0) if mask is None else (w == 0) & mask
        assert np.all(q.dequantize()[kept_zero] == 0)
    # each kept weight's decoded value is as near as the nearest entry of its row
    mat = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.reshape(1, -1)
    dec = q.dequantize(np.float64).reshape(mat.shape)
    rows = book if per_channel else np.repeat(book, mat.shape[0], axis=0)
    nearest = np.abs(mat[..., None].astype(np.float64) - rows[:, None, :]).min(axis=2)
    keep = np.ones(mat.shape, bool) if mask is None else mask.reshape(mat.shape)
    np.testing.assert_array_equal(np.abs(dec - mat)[keep], nearest[keep])
    if mask is not None:
        assert np.all(q.codes.reshape(mat.shape)[~keep] == zero_code)
    assert sq_error(q, w, mask) == pytest.approx(err, rel=1e-7, abs=1e-30)


def test_grid_layout_and_scale():
    """3 bits: -m..-m/8 (four levels), 0, m/4..m (three); m a candidate below max|w|."""
    w = gaussian((64, 64))
    q = qpack.quantize_log(w, 3)
    m = q.codebook[-1]
    unit = {4: [-1, -0.5, -0.25, -0.125, 0, 0.25, 0.5, 1],
            3: [-1, -0.5, -0.25, 0, 0.125, 0.25, 0.5, 1]}[q.zero_code]
    np.testing.assert_array_equal(q.codebook, m * np.array(unit, np.float32))
    top = np.abs(w).max()
    # the least-squares scale clips the tails: 3 bits put m well below the largest weight
    assert m < 0.8 * top
    j = np.log2(top / m) * STEPS_PER_OCTAVE
    assert abs(j - round(j)) < 1e-3  # one of the candidates M * 2^(-j/16)
    # better than the grid anchored at the largest magnitude
    anchored = ref_book(float(top), 4, 3, True)
    err_anchored = np.sum((w - anchored[ref_nearest(w, anchored)]) ** 2)
    assert sq_error(q, w) < 0.8 * err_anchored


def test_one_bit_is_the_sign_without_a_mask():
    w = gaussian((16, 16))
    q = qpack.quantize_log(w, 1)
    assert q.zero_code is None and -q.codebook[0] == q.codebook[1] > 0
    np.testing.assert_array_equal(q.dequantize() > 0, w > 0)
    # the least-squares 1-bit scale is mean|w|, up to the candidate spacing
    assert q.codebook[1] == pytest.approx(np.abs(w).mean(), rel=0.03)
    qm = qpack.quantize_log(w, 1, mask=w > -0.5)
    assert qm.zero_code is not None and 0.0 in qm.codebook
    assert np.all(qm.dequantize()[w <= -0.5] == 0)


@pytest.mark.parametrize("bits", range(2, 9))
def test_zero_weights_stay_exactly_zero(bits):
    w = gaussian((20, 30))
    w[::3] = 0.0
    q = qpack.quantize_log(w, bits)
    assert np.all(q.dequantize()[w == 0] == 0.0)
    assert q.codebook[q.zero_code] == 0.0


def test_all_zero_and_constant_tensors():
    q = qpack.quantize_log(np.zeros((4, 4), np.float32), 3)
    assert np.all(q.dequantize() == 0)
    c = np.full((3, 5), -0.37, np.float32)
    np.testing.assert_array_equal(qpack.quantize_log(c, 2).dequantize(), c)
    q = qpack.quantize_log(c, 4, mask=np.zeros(c.shape, bool))  # everything pruned
    assert np.all(q.dequantize() == 0) and np.all(q.codes == q.zero_code)


def test_per_channel_rows_alone_when_the_split_agrees():
    """All-positive rows put the extra level on the positive side in every row, so each
    row's grid is the row quantized alone."""
    w = np.abs(gaussian((12, 40))) * np.linspace(0.1, 3, 12)[:, None].astype(np.float32)
    q = qpack.quantize_log(w, 3, per_channel=True)
    assert q.codebook.shape == (12, 8)
    for r in range(12):
        alone = qpack.quantize_log(w[r], 3)
        np.testing.assert_array_equal(q.codebook[r], alone.codebook)
        np.testing.assert_array_equal(q.codes[r], alone.codes)
    assert sq_error(q, w) < sq_error(qpack.quantize_log(w, 3), w)


def test_masked_values_take_no_part_in_the_fit():
    w = gaussian((24, 24))
    mask = np.abs(w) < 1.5
    other = np.where(mask, w, 100.0).astype(np.float32)
    a, b = qpack.quantize_log(w, 4, mask=mask), qpack.quantize_log(other, 4, mask=mask)
    np.testing.assert_array_equal(a.codebook, b.codebook)
    np.testing.assert_array_equal(a.codes, b.codes)


def test_dtypes_and_base():
    w64 = gaussian((10, 10), dtype=np.float64)
    q = qpack.quantize_log(w64, 4)
    assert q.codebook.dtype == np.float32
    books, codes, _, _ = ref_quantize_log(w64.astype(np.float32), 4)
    np.testing.assert_array_equal(qpack.quantize_log(w64.astype(np.float16), 3).codebook,
                                  ref_quantize_log(w64.astype(np.float16), 3)[0][0])
    for base in (np.sqrt(2.0), 4.0):
        q = qpack.quantize_log(w64, 5, base=base)
        books, codes, _, err = ref_quantize_log(w64, 5, base=base)
        np.testing.assert_array_equal(q.codebook, books[0])
        assert sq_error(q, w64) == pytest.approx(err, rel=1e-9)
    # a finer base helps at 5 bits, where base 2 has levels to spare
    assert sq_error(qpack.quantize_log(w64, 5, base=np.sqrt(2.0)), w64) \
        < sq_error(qpack.quantize_log(w64, 5), w64)


@pytest.mark.parametrize("kwargs, match", [
    (dict(w=np.arange(6).reshape(2, 3)), "floating"),
    (dict(w=np.array([[1.0, np.nan]])), "NaN"),
    (dict(w=np.array([[1.0, np.inf]])), "Inf"),
    (dict(w=np.zeros((0, 3))), "empty"),
    (dict(w=np.float32(1.0)), "scalar"),
    (dict(bits=0), "bits"), (dict(bits=9), "bits"), (dict(bits=2.0), "bits"),
    (dict(bits=True), "bits"),
    (dict(mask=np.ones((4, 4))), "mask.*boolean"),
    (dict(mask=np.ones((4, 5), bool)), "mask.*shape"),
    (dict(per_channel=1), "per_channel"),
    (dict(base=1.0), "base"), (dict(base=0.5), "base"), (dict(base=float("nan")), "base"),
    (dict(base=float("inf")), "base"), (dict(base="2"), "base"), (dict(base=True), "base"),
])
def test_bad_input(kwargs, match):
    args = {"w": gaussian((4, 4)), "bits": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        qpack.quantize_log(args.pop("w"), args.pop("bits"), **args)


# -- compress(method="log"): file, report, matmul, plan ---------------------------------

@pytest.mark.parametrize("bits, prune, per_channel, entropy", [
    (4, 0.0, False, "huffman"), (3, 0.7, False, "huffman"), (2, 0.0, True, None),
    (5, 0.5, True, "huffman"), (1, 0.0, False, None), (1, 0.5, False, "huffman"),
    (8, 0.9, False, "huffman"),
])
def test_compress_round_trip_decodes_to_quantize_log(tmp_path, bits, prune, per_channel,
                                                     entropy):
    w = gaussian((64, 48), seed=bits) * 0.1
    cm = qpack.compress({"w": w}, bits=bits, prune=prune, method="log",
                        per_channel=per_channel, entropy=entropy, min_numel=0)
    mask = qpack.prune_magnitude(w, prune) if prune else None
    expect = qpack.quantize_log(w, bits, mask=mask, per_channel=per_channel).dequantize()
    path = tmp_path / "m.qpk"
    cm.save(path)
    for t in (cm["w"], qpack.load(path)["w"]):
        assert t.method == "log" and t.spec["method"] == "kmeans" and t.spec["grid"] == "log"
        assert t.bits == bits and t.spec["per_channel"] == per_channel
        np.testing.assert_array_equal(t.dequantize(), expect)
        x = gaussian((5, 48), seed=9)
        np.testing.assert_allclose(t.matmul(x), x @ expect.T, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(t.matmul(x[0]), x[0] @ expect.T, rtol=1e-5, atol=1e-5)
    if prune >= 0.9:
        assert cm["w"].layout == "sparse"
    row = cm.report()[0]
    assert row["method"].startswith("log") and row["rel_error"] > 0
    assert "log" in str(cm.report())
    # a loaded file saves back byte for byte, "grid" included
    again = tmp_path / "again.qpk"
    qpack.load(path).save(again)
    assert again.read_bytes() == path.read_bytes()
    assert json.loads(cm.metadata["compress_args"])["method"] == "log"


def test_override_and_per_channel_reach_log_tensors():
    rng = np.random.default_rng(0)
    arrays = {"a.weight": rng.standard_normal((32, 32)).astype(np.float32),
              "b.weight": rng.standard_normal((32, 32)).astype(np.float32)}
    cm = qpack.compress(arrays, method="linear", min_numel=0,
                        overrides={"a.*": {"method": "log", "bits": 3, "per_channel": True}})
    assert (cm["a.weight"].method, cm["a.weight"].bits) == ("log", 3)
    assert cm["a.weight"].spec["per_channel"] and cm["b.weight"].method == "linear"
    np.testing.assert_array_equal(
        cm["a.weight"].dequantize(),
        qpack.quantize_log(arrays["a.weight"], 3, per_channel=True).dequantize())
    # per_channel at the top level reaches a tensor that an override makes "log"
    cm = qpack.compress(arrays, method="linear", per_channel=True, min_numel=0,
                        overrides={"b.*": {"method": "log"}})
    assert cm["b.weight"].spec["per_channel"] and cm["a.weight"].method == "linear"


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="log", init="density"), "init.*'kmeans'"),
    (dict(method="log", group_size=64), "group_size.*'linear'"),
    (dict(method="log", clip="minmax"), "clip.*'linear'"),
    (dict(method="linear", per_channel=True), "per_channel.*'kmeans' or 'log'"),
    (dict(method="logarithmic"), "method must be one of"),
    (dict(method="log", overrides={"w": {"init": "random"}}), "init applies only"),
    (dict(method="log", per_channel=True, calibration={"w": np.ones((20, 32))}),
     "per_channel log cannot be calibrated"),
])
def test_plan_refuses(monkeypatch, kwargs, match):
    def boom(*args, **kw):
        raise AssertionError("encoding started before the arguments were checked")
    monkeypatch.setattr("qpack.encode_jobs.encode_tensor", boom)
    with pytest.raises(ValueError, match=match):
        qpack.compress({"w": gaussian((16, 32))}, min_numel=0, **kwargs)


def test_spec_grid_key_is_checked_and_informative(tmp_path):
    cm = qpack.compress({"w": gaussian((16, 32))}, method="log", min_numel=0)
    spec = dict(cm["w"].spec)
    assert validate_spec("w", spec)["grid"] == "log"
    for bad in ("nf4", 3, None):
        with pytest.raises(FormatError, match="grid"):
            validate_spec("w", {**spec, "grid": bad})
    # absent: a plain kmeans tensor; on a linear tensor the key is unknown and dropped
    plain = {k: v for k, v in spec.items() if k != "grid"}
    assert "grid" not in validate_spec("w", plain)
    lin = dict(qpack.compress({"w": gaussian((16, 32))}, method="linear",
                              min_numel=0)["w"].spec)
    assert "grid" not in validate_spec("w", {**lin, "grid": "log"})


# -- calibration ------------------------------------------------------------------------

def correlated_layer(seed=0, rows=64, cols=96, n=1200):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    mix = rng.standard_normal((cols, cols)) * np.exp(-np.arange(cols) / 8.0)[None, :]
    x = (rng.standard_normal((n, cols)) @ mix.T + 0.1 * rng.standard_normal((n, cols)))
    return w, x.astype(np.float32)


@pytest.mark.parametrize("bits, prune", [(3, 0.0), (4, 0.0), (2, 0.0), (4, 0.5)])
def test_calibration_reduces_held_out_output_error(bits, prune):
    w, x = correlated_layer(bits)
    train, test = x[:900], x[900:]
    plain = qpack.compress({"w": w}, bits=bits, prune=prune, method="log", min_numel=0)
    cal = qpack.compress({"w": w}, bits=bits, prune=prune, method="log", min_numel=0,
                         calibration={"w": train})
    t = cal["w"]
    assert t.method == "log" and t.spec["grid"] == "log" and not t.spec["per_channel"]
    q = t.quantized()
    # still the log grid: 0 and +-m 2^-k
    book = q.codebook.astype(np.float64)
    m = np.abs(book).max()
    nz = book[book != 0]
    assert np.allclose(np.log2(np.abs(nz) / m), np.round(np.log2(np.abs(nz) / m)))
    if prune:
        assert np.all(t.dequantize()[~qpack.prune_magnitude(w, prune)] == 0)

    def out_err(tensor):
        return np.linalg.norm(test @ w.T - test @ tensor.dequantize().T)

    assert out_err(t) < 0.75 * out_err(plain["w"])
    damping = json.loads(cal.metadata["compress_args"])["calibrated"]["w"]
    assert damping > 0


def test_calibration_with_hessian_stats_round_trips(tmp_path):
    w, x = correlated_layer(1, rows=16, cols=40, n=200)
    stats = qpack.HessianStats(40).update(x)
    cm = qpack.compress({"w": w}, bits=3, method="log", min_numel=0,
                        calibration={"w": stats})
    cm.save(tmp_path / "c.qpk")
    back = qpack.load(tmp_path / "c.qpk")["w"]
    assert back.method == "log"
    np.testing.assert_array_equal(back.dequantize(), cm["w"].dequantize())
