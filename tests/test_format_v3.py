"""Format version 3: leaner side information (docs/FORMAT.md, sections 4.3-4.5).

Linear zero-points packed at the code width and absent for symmetric tensors; K-means
codebooks in float16 (when rounding costs at most FP16_CODEBOOK_TOLERANCE) or float32.
Every variant round-trips exactly, multiplies like its decoded matrix, is counted as the
file pays it, and is refused in any other shape.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib

import numpy as np
import pytest
from model_cases import build_file, split_file

import qpack
from qpack import format as qformat
from qpack.cluster import FP16_CODEBOOK_TOLERANCE
from qpack.quantize import zeros_storage
from qpack.tensor_spec import roles_of

DATA = os.path.join(os.path.dirname(__file__), "data")


def gaussian(shape, seed=0, scale=0.05):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def save_load(tmp_path, model, **kw):
    cm = qpack.compress(model, min_numel=0, **kw)
    cm.save(tmp_path / "v3.qpk")
    return cm, qpack.load(tmp_path / "v3.qpk", verify=True)


def check_products(t, dense: np.ndarray) -> None:
    """matmul is x @ W.T of the decoded matrix; take_rows are its rows, exactly."""
    rows, cols = dense.shape
    x = np.random.default_rng(1).standard_normal((3, cols)).astype(np.float32)
    np.testing.assert_allclose(t.matmul(x), x @ dense.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(t.take_rows([0, rows - 1]), dense[[0, rows - 1]])


# -- linear: packed and absent zero-points -------------------------------------------

@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("group_size", [None, -1, 7, 32])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("prune", [0.0, 0.9])
def test_linear_round_trip(tmp_path, bits, group_size, symmetric, prune):
    if symmetric and bits == 1:
        pytest.skip("bits=1 has no symmetric range")
    w = gaussian((24, 70), seed=bits)
    kw = dict(bits=bits, method="linear", group_size=group_size, symmetric=symmetric,
              clip="minmax")
    cm, m = save_load(tmp_path, {"w": w}, prune=prune, **kw)
    t = m["w"]
    assert t.layout == ("sparse" if prune else "dense")
    src = w if not prune else np.where(qpack.prune_magnitude(w, prune), w, 0).astype(w.dtype)
    want = qpack.quantize_linear(src, bits, group_size=group_size, symmetric=symmetric)
    got = t.quantized()
    np.testing.assert_array_equal(t.dequantize(), want.dequantize())
    np.testing.assert_array_equal(got.zeros, want.zeros)
    assert got.zeros.dtype == np.uint8 and got.symmetric == symmetric
    sections = t.spec["sections"]
    codec, nbytes = zeros_storage(want.zeros, bits, symmetric)
    if symmetric:
        assert "zeros" not in sections and codec is None
    else:
        assert sections["zeros"]["codec"] == codec
        assert sections["zeros"]["length"] == nbytes
        if codec == "packed":
            prow, ngroups = want.zeros.shape
            assert (sections["zeros"]["bits"], sections["zeros"]["rows"],
                    sections["zeros"]["count"]) == (bits, prow, ngroups)
    # the accounting is what the file pays, and the report agrees
    assert want.nbytes_params == sum(sections[r]["length"] for r in ("scales", "zeros")
                                     if r in sections)
    assert m.report()[0]["params_bytes"] == want.nbytes_params
    check_products(t, want.dequantize().reshape(24, 70))
    # in memory (before saving) the tensor is the same
    np.testing.assert_array_equal(cm["w"].dequantize(), want.dequantize())


def test_symmetric_4bit_g64_stores_no_zero_points(tmp_path):
    w = gaussian((384, 384))
    q = qpack.quantize_linear(w, 4, group_size=64, symmetric=True)
    assert q.nbytes_params == 384 * 6 * 2  # float16 scales only
    assert q.bits_per_weight == pytest.approx(4 + 8 * 384 * 6 * 2 / w.size)
    _, m = save_load(tmp_path, {"w": w}, bits=4, method="linear", group_size=64,
                     symmetric=True)
    assert set(m["w"].spec["sections"]) == {"scales", "codes"}
    assert m.report()[0]["params_bytes"] == 384 * 6 * 2


def test_asymmetric_3bit_zero_points_are_packed(tmp_path):
    w = gaussian((384, 384))
    q = qpack.quantize_linear(w, 3, group_size=64)
    _, m = save_load(tmp_path, {"w": w}, bits=3, method="linear", group_size=64,
                     clip="minmax")
    zeros = m["w"].spec["sections"]["zeros"]
    assert zeros["codec"] == "packed" and zeros["length"] == math.ceil(6 * 3 / 8) * 384
    assert q.nbytes_params == 384 * 6 * 2 + 3 * 384
    np.testing.assert_array_equal(m["w"].quantized().zeros, q.zeros)


@pytest.mark.parametrize("bits, shape, group_size, codec", [
    (8, (64, 256), 16, "raw"),       # 8-bit codes are bytes: packing saves nothing
    (4, (64, 256), -1, "raw"),       # one zero-point a row: still one byte a row
    (4, (4, 64), 16, "raw"),         # 8 bytes saved, less than the 64-byte alignment
    (4, (64, 256), 16, "packed"),    # 1024 -> 512 bytes
    (2, (16, 256), 8, "packed"),     # 512 -> 128 bytes
])
def test_zeros_storage_rule(bits, shape, group_size, codec):
    q = qpack.quantize_linear(gaussian(shape), bits, group_size=group_size)
    got, nbytes = zeros_storage(q.zeros, bits, False)
    prow, ngroups = q.zeros.shape
    assert got == codec
    assert nbytes == (prow * math.ceil(ngroups * bits / 8) if codec == "packed"
                      else prow * ngroups)


def test_zero_points_beyond_the_code_width_stay_raw(tmp_path):
    """A handed-over LinearQuantized may carry zero-points packing could not hold."""
    q = qpack.quantize_linear(gaussian((64, 256)), 2, group_size=8)
    zeros = q.zeros.copy()
    zeros[0, 0] = 7  # decodes fine, but is not a 2-bit value
    odd = qpack.LinearQuantized(codes=q.codes, scales=q.scales, zeros=zeros, bits=2,
                                group_size=8, symmetric=False, shape=q.shape)
    assert zeros_storage(zeros, 2, False)[0] == "raw"
    _, m = save_load(tmp_path, {"w": odd})
    assert m["w"].spec["sections"]["zeros"]["codec"] == "raw"
    np.testing.assert_array_equal(m["w"].dequantize(), odd.dequantize())


def test_symmetric_handover_needs_the_symmetric_zero_points():
    q = qpack.quantize_linear(gaussian((16, 64)), 4, group_size=16, symmetric=True)
    zeros = q.zeros.copy()
    zeros[0, 0] = 3
    bad = qpack.LinearQuantized(codes=q.codes, scales=q.scales, zeros=zeros, bits=4,
                                group_size=16, symmetric=True, shape=q.shape)
    with pytest.raises(ValueError, match=r"2\*\*\(bits-1\) = 8"):
        qpack.compress({"w": bad})
    cm = qpack.compress({"w": q})  # the real thing is stored exactly, without zeros
    assert "zeros" not in cm["w"].spec["sections"]
    np.testing.assert_array_equal(cm["w"].dequantize(), q.dequantize())


# -- K-means: float16 and float32 codebooks -------------------------------------------

@pytest.mark.parametrize("book_dtype", [np.float16, np.float32])
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("prune", [0.0, 0.9])
@pytest.mark.filterwarnings("ignore:.*per-channel codebooks take")
def test_kmeans_round_trip(tmp_path, book_dtype, bits, per_channel, prune):
    if prune and bits == 1:
        pytest.skip("a pruned 1-bit codebook is all zero_code")
    w = gaussian((32, 96), seed=bits)
    _, m = save_load(tmp_path, {"w": w}, bits=bits, prune=prune, per_channel=per_channel,
                     codebook_dtype=book_dtype)
    t = m["w"]
    mask = qpack.prune_magnitude(w, prune) if prune else None
    want = qpack.quantize_kmeans(w, bits, mask=mask, per_channel=per_channel,
                                 codebook_dtype=book_dtype)
    assert t.layout == ("sparse" if prune else "dense")
    assert want.codebook.dtype == book_dtype
    desc = t.spec["sections"]["codebook"]
    assert desc["dtype"] == np.dtype(book_dtype).name
    assert desc["length"] == want.nbytes_params == want.codebook.size * want.codebook.itemsize
    got = t.quantized()
    assert got.codebook.dtype == book_dtype
    np.testing.assert_array_equal(got.codebook, want.codebook)
    dense = want.dequantize()
    np.testing.assert_array_equal(t.dequantize(), dense)
    if mask is not None:
        assert (t.dequantize()[~mask] == 0.0).all()  # zero_code decodes to exactly 0.0
        assert (np.asarray(got.codebook)[..., got.zero_code] == 0).all()
    check_products(t, dense.reshape(32, 96))


def test_auto_codebook_is_float16_within_the_tolerance():
    w = gaussian((384, 384), seed=2)
    for bits in (2, 4, 8):
        q16 = qpack.quantize_kmeans(w, bits)
        q32 = qpack.quantize_kmeans(w, bits, codebook_dtype=np.float32)
        assert q16.codebook.dtype == np.float16 and q32.codebook.dtype == np.float32
        np.testing.assert_array_equal(q16.codebook, q32.codebook.astype(np.float64)
                                      .astype(np.float16))
        err16 = float(np.sum((q16.dequantize().astype(np.float64) - w) ** 2))
        err32 = float(np.sum((q32.dequantize().astype(np.float64) - w) ** 2))
        assert err16 <= err32 * (1 + FP16_CODEBOOK_TOLERANCE)
        # every weight takes its nearest stored (rounded) entry
        book = q16.codebook.astype(np.float64)
        dist = np.abs(w.reshape(-1, 1).astype(np.float64) - book[None, :])
        assert np.all(dist[np.arange(w.size), q16.codes.reshape(-1)] == dist.min(axis=1))
        assert q16.nbytes_params == 2 << bits


def test_auto_codebook_keeps_float32_where_float16_costs_more():
    # per channel with k >= cols: every row fits exactly in float32, not in float16
    w = gaussian((16, 96))
    q = qpack.quantize_kmeans(w, 8, per_channel=True)
    assert q.codebook.dtype == np.float32
    np.testing.assert_array_equal(q.dequantize(), w)
    # weights in float16's subnormal range lose most of their precision there
    tiny = gaussian((64, 64), scale=1e-6)
    assert qpack.quantize_kmeans(tiny, 4).codebook.dtype == np.float32
    assert qpack.quantize_kmeans(tiny, 4, codebook_dtype=np.float16).codebook.dtype == \
        np.float16


def test_float16_codebook_overflow():
    w = gaussian((64, 64), scale=1e5)
    q = qpack.quantize_kmeans(w, 4)  # auto falls back: no inf is ever stored
    assert q.codebook.dtype == np.float32 and np.isfinite(q.codebook).all()
    with pytest.raises(ValueError, match="codebook_dtype float16 cannot hold a centroid"):
        qpack.quantize_kmeans(w, 4, codebook_dtype=np.float16)
    with pytest.raises(ValueError, match="codebook_dtype float16 cannot hold"):
        qpack.compress({"w": w}, codebook_dtype=np.float16)
    cm = qpack.compress({"w": w})
    assert cm["w"].spec["sections"]["codebook"]["dtype"] == "float32"


@pytest.mark.parametrize("value", ["float64", np.int16, None, "fp16", 3])
def test_codebook_dtype_argument(value):
    with pytest.raises(ValueError, match="codebook_dtype must be 'auto', float16 or float32"):
        qpack.quantize_kmeans(gaussian((8, 8)), 2, codebook_dtype=value)


def test_calibrated_kmeans_codebook_is_float16_and_exact(tmp_path):
    w = gaussian((32, 64), seed=4)
    x = np.random.default_rng(5).standard_normal((256, 64)).astype(np.float32)
    cm, m = save_load(tmp_path, {"w": w}, bits=4, calibration={"w": x},
                      calibration_damping=0.1)
    want = qpack.quantize_kmeans_gptq(w, x, 4, damping=0.1)
    assert want.codebook.dtype == np.float16
    assert m["w"].spec["sections"]["codebook"]["dtype"] == "float16"
    np.testing.assert_array_equal(m["w"].dequantize(), want.dequantize())


# -- the per-channel warning ----------------------------------------------------------

def test_per_channel_codebooks_larger_than_codes_warn():
    w = gaussian((384, 384))
    with pytest.warns(UserWarning, match=r"tensor 'blocks.0.w': per-channel codebooks take "
                                         r"384.0 KB, more than the 144.0 KB of codes"):
        cm = qpack.compress({"blocks.0.w": w}, bits=8, per_channel=True, entropy=None)
    assert cm["blocks.0.w"].spec["sections"]["codebook"]["dtype"] == "float32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 4 bits: 32 bytes of codebook a row, 192 of codes
        qpack.compress({"w": w}, bits=4, per_channel=True, entropy=None)
        qpack.compress({"w": w}, bits=8)  # one codebook for the tensor


def test_prequantized_per_channel_codebooks_warn_too():
    q = qpack.quantize_kmeans(gaussian((64, 32)), 6, per_channel=True)
    with pytest.warns(UserWarning, match="tensor 'h': per-channel codebooks take"):
        qpack.compress({"h": q})


# -- roles and hostile headers --------------------------------------------------------

def test_roles_depend_on_symmetric_from_version_3():
    assert roles_of("linear", "dense", symmetric=True) == ("codes", "scales")
    assert roles_of("linear", "dense", symmetric=False) == ("codes", "scales", "zeros")
    assert roles_of("linear", "sparse", True, version=2) == ("gaps", "row_nsym", "codes",
                                                             "scales", "zeros")
    assert roles_of("kmeans", "dense", True) == ("codes", "codebook")


@pytest.fixture(scope="module")
def v3_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("v3")
    w = gaussian((384, 384))
    out = {}
    for key, kw in {"asym3": dict(method="linear", bits=3, group_size=64),
                    "sym4": dict(method="linear", bits=4, group_size=64, symmetric=True),
                    "book16": dict(bits=4, prune=0.5),
                    "book32": dict(bits=4, codebook_dtype=np.float32)}.items():
        qpack.compress({"w": w}, **kw).save(d / f"{key}.qpk")
        out[key] = d / f"{key}.qpk"
    return out


def _touch(path):
    m = qpack.load(path, verify=True)
    for t in m.values():
        t.dequantize()
        t.matmul(np.ones((1, 384), np.float32))


def _set(role, **fields):
    def mutate(t):
        t["sections"][role].update(fields)
    return mutate


def _as_symmetric(t):
    t["symmetric"] = True


HOSTILE_V3 = [
    # packed zeros of another width or layout, each of a consistent length
    ("asym3", _set("zeros", bits=6, count=4), "needs 384 x 6 3-bit zero-points"),
    ("asym3", _set("zeros", rows=192, count=16), "needs 384 x 6 3-bit zero-points"),
    ("asym3", _set("zeros", rows=1, count=3072, bits=3), "needs 384 x 6"),
    ("asym3", _set("zeros", count=7), "needs 384 x 6"),  # 3 bytes a row either way
    ("asym3", _set("zeros", count=20), "bytes stored"),
    ("asym3", _set("zeros", codec="huffman"), "must be raw uint8"),
    # symmetric tensors have no zero-points in version 3: a zeros section is refused
    ("asym3", _as_symmetric, "symmetric.*unknown: 'zeros'"),
    ("sym4", lambda t: t.update(symmetric=False), "missing: zeros"),
    # codebooks: float16 or float32 only
    ("book32", _set("codebook", dtype="float64", shape=[8]), "raw float16/float32"),
    ("book16", _set("codebook", dtype="int16"), "raw float16/float32"),
    ("book16", _set("codebook", dtype="bfloat16"), "raw float16/float32"),
    ("book16", _set("codebook", dtype="float32"), "bytes stored"),
]


@pytest.mark.parametrize("key, mutate, match", HOSTILE_V3,
                         ids=[f"{i}-{k}" for i, (k, _, _) in enumerate(HOSTILE_V3)])
def test_hostile_v3_headers(v3_files, tmp_path, key, mutate, match):
    header, data = split_file(v3_files[key].read_bytes())
    mutate(header["tensors"]["w"])
    p = tmp_path / "bad.qpk"
    p.write_bytes(build_file(header, data))
    with pytest.raises(qpack.FormatError, match=match):
        _touch(p)


def test_symmetric_1bit_is_refused(tmp_path):
    """A version-3 symmetric tensor needs bits >= 2 (2**(bits-1) = 1 leaves no range)."""
    w = gaussian((64, 64))
    qpack.compress({"w": w}, method="linear", bits=1, group_size=-1).save(tmp_path / "a.qpk")
    header, data = split_file((tmp_path / "a.qpk").read_bytes())
    t = header["tensors"]["w"]
    t["symmetric"] = True
    t["sections"].pop("zeros")
    (tmp_path / "b.qpk").write_bytes(build_file(header, data))
    with pytest.raises(qpack.FormatError, match="symmetric linear tensor needs bits >= 2"):
        qpack.load(tmp_path / "b.qpk")


@pytest.mark.parametrize("key, match", [("asym3", "must be raw uint8"),
                                        ("book16", "must be raw float32"),
                                        ("sym4", "missing: zeros")])
def test_version_3_content_in_a_version_2_file_is_refused(v3_files, tmp_path, key, match):
    header, data = split_file(v3_files[key].read_bytes())
    p = tmp_path / "v2.qpk"
    p.write_bytes(build_file(header, data, version=2))
    with pytest.raises(qpack.FormatError, match=match):
        qpack.load(p)


@pytest.mark.parametrize("key", ["book16", "book32"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_codebook_entries(v3_files, tmp_path, key, value):
    header, data = split_file(v3_files[key].read_bytes())
    desc = header["tensors"]["w"]["sections"]["codebook"]
    dt = np.dtype(desc["dtype"]).newbyteorder("<")
    bad = bytearray(data)
    at = desc["offset"] + dt.itemsize  # entry 1: entry 0 of book16 is the zero_code
    bad[at:at + dt.itemsize] = np.array([value], dt).tobytes()
    desc["crc32"] = zlib.crc32(bytes(bad[desc["offset"]:desc["offset"] + desc["length"]]))
    p = tmp_path / "nan.qpk"
    p.write_bytes(build_file(header, bytes(bad)))
    with pytest.raises(qpack.FormatError, match="NaN or Inf"):
        qpack.load(p, verify=True)
    with pytest.raises(qpack.FormatError, match="NaN or Inf"):
        qpack.load(p)["w"].matmul(np.ones(384, np.float32))


# -- older files ----------------------------------------------------------------------

LEGACY = sorted(f for f in os.listdir(DATA) if f.endswith(".qpk"))


@pytest.mark.parametrize("fname", LEGACY)
def test_older_files_save_as_the_current_version_and_decode_the_same(tmp_path, fname):
    """Version-1 to -3 fixtures re-saved: the current version, the same arrays;
    symmetric tensors lose their (constant) zero-points, and a second save is byte for
    byte the first."""
    old = qpack.load(os.path.join(DATA, fname), verify=True)
    expect = np.load(os.path.join(DATA, fname.replace(".qpk", ".expected.npz")))
    old.save(tmp_path / "a.qpk")
    new = qpack.load(tmp_path / "a.qpk", verify=True)
    assert int.from_bytes((tmp_path / "a.qpk").read_bytes()[8:12], "little") == \
        qformat.FORMAT_VERSION
    for name, t in new.items():
        np.testing.assert_array_equal(t.dequantize(), expect[name], err_msg=name)
        if t.method == "linear":
            assert ("zeros" in t.spec["sections"]) != t.spec["symmetric"]
            assert t.spec["symmetric"] == old[name].spec["symmetric"]
    assert any(t.method == "linear" and t.spec["symmetric"] for t in new.values()) == \
        fname.endswith("_sym.qpk")
    new.save(tmp_path / "b.qpk")
    assert (tmp_path / "b.qpk").read_bytes() == (tmp_path / "a.qpk").read_bytes()


def test_a_version_2_symmetric_entry_with_other_zero_points_keeps_them(tmp_path):
    """Before version 3, ``symmetric`` was informative: a file may say symmetric and
    store other zero-points. Saved again, the zero-points stay and the flag goes."""
    src = os.path.join(DATA, "format2_linear3_g16_packed.qpk")
    header, data = split_file(open(src, "rb").read())
    name = next(n for n, t in header["tensors"].items() if t["method"] == "linear")
    header["tensors"][name]["symmetric"] = True
    (tmp_path / "v2.qpk").write_bytes(build_file(header, data, version=2))
    m = qpack.load(tmp_path / "v2.qpk", verify=True)
    before = m[name].dequantize()
    m.save(tmp_path / "v3.qpk")
    again = qpack.load(tmp_path / "v3.qpk", verify=True)
    assert again[name].spec["symmetric"] is False
    assert "zeros" in again[name].spec["sections"]
    np.testing.assert_array_equal(again[name].dequantize(), before)
