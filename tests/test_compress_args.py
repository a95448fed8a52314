"""compress: arguments checked before any work, options that would do nothing refused,
dtypes and the input's metadata kept, damaged inputs named."""

from __future__ import annotations

import json
import zipfile

import ml_dtypes
import numpy as np
import pytest

import qpack
from qpack import _validate
from qpack.safetensors_file import read_safetensors, write_safetensors


@pytest.fixture()
def arrays():
    rng = np.random.default_rng(0)
    return {"emb.weight": rng.standard_normal((64, 32)).astype(np.float32),
            "fc.weight": rng.standard_normal((48, 64)).astype(np.float32),
            "fc.bias": rng.standard_normal(48).astype(np.float32),
            "step": np.arange(3)}


def no_encoding(monkeypatch):
    """Make any encoding work fail loudly: the checks under test must come first."""
    def boom(*args, **kwargs):
        raise AssertionError("encoding started before the arguments were checked")
    monkeypatch.setattr("qpack.encode_jobs.encode_tensor", boom)
    monkeypatch.setattr("qpack.encode_jobs.encode_raw_tensor", boom)


# -- C16: every argument before any work --------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(metadata={"a": 1}), "metadata"),
    (dict(metadata={1: "a"}), "metadata"),
    (dict(metadata=["a"]), "metadata"),
    (dict(metadata={"\ud800": "x"}), "surrogate"),
    (dict(progress="yes"), "progress"),
    (dict(bits=9), "bits"),
    (dict(include="nothing*"), "matches no tensor"),
    # a .qpk holds float16/float32 scales and codebooks only
    (dict(method="linear", scale_dtype=np.float64), "scale_dtype must be float16 or float32"),
    (dict(method="linear", scale_dtype="half-ish"), "scale_dtype"),
    (dict(method="linear", scale_dtype=None), "scale_dtype"),
    (dict(method="linear", scale_dtype=np.int8), "scale_dtype"),
    (dict(codebook_dtype=np.float64), "codebook_dtype must be 'auto', float16 or float32"),
    (dict(codebook_dtype="float"), "codebook_dtype"),
    (dict(codebook_dtype=None), "codebook_dtype"),
    (dict(method="linear", overrides={"emb.*": {"scale_dtype": "float64"}}),
     "override for 'emb.weight': scale_dtype"),
])
def test_bad_arguments_fail_before_any_encoding(arrays, monkeypatch, kwargs, match):
    no_encoding(monkeypatch)
    with pytest.raises(ValueError, match=match):
        qpack.compress(arrays, **kwargs)


def test_save_metadata_checked(arrays, tmp_path):
    cm = qpack.compress(arrays, min_numel=0)
    with pytest.raises(ValueError, match="metadata"):
        cm.save(tmp_path / "m.qpk", metadata={"k": 3})
    assert not (tmp_path / "m.qpk").exists()


# -- C15: options that would do nothing ---------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(method="kmeans", group_size=64), "group_size.*linear"),
    (dict(method="kmeans", symmetric=True), "symmetric.*linear"),
    (dict(method="kmeans", clip="minmax"), "clip.*linear"),
    (dict(method="linear", per_channel=True), "per_channel.*kmeans"),
    (dict(method="linear", init="density"), "init.*kmeans"),
    (dict(method="kmeans", scale_dtype=np.float32), "scale_dtype.*linear"),
    (dict(method="linear", codebook_dtype=np.float16), "codebook_dtype.*'kmeans'"),
    (dict(overrides={"emb.*": {"scale_dtype": "float32"}}), "override 'emb.\\*': scale_dtype"),
    (dict(method="log", init="density"), "init.*kmeans"),
    (dict(method="log", symmetric=True), "symmetric.*linear"),
    (dict(overrides={"emb.*": {"method": "linear", "per_channel": True}}),
     "override 'emb.\\*': per_channel applies only to method='kmeans' or 'log'"),
    (dict(include="fc.bias"), r"include pattern 'fc.bias'.*1-D"),
    (dict(include="step"), "include pattern 'step'.*not floating"),
    (dict(include="emb.weight", min_numel=10**6), "fewer than min_numel"),
    (dict(overrides={"fc.bias": {"bits": 8}}), "override pattern 'fc.bias'.*1-D"),
    (dict(overrides={"*.bias": {"method": "linear"}}), "stored exactly"),
    (dict(overrides={"emb.*": {"group_size": 32}}), "override 'emb.\\*': group_size"),
    (dict(overrides={"emb.*": {"method": "raw", "bits": 8}}), "do nothing with method='raw'"),
    (dict(overrides={"emb.*": {"bits": 8}}, exclude="emb.*"), "does nothing"),
    (dict(prune_scope="global"), "prune=0"),
])
def test_options_that_do_nothing_are_refused(arrays, monkeypatch, kwargs, match):
    no_encoding(monkeypatch)
    kwargs.setdefault("min_numel", 0)
    with pytest.raises(ValueError, match=match):
        qpack.compress(arrays, **kwargs)


def test_options_that_reach_some_tensor_are_accepted(arrays):
    # group_size reaches emb.weight through the override that makes it linear
    cm = qpack.compress(arrays, method="kmeans", group_size=16, min_numel=0,
                        overrides={"emb.*": {"method": "linear"}})
    assert cm["emb.weight"].method == "linear" and cm["emb.weight"].spec["group_size"] == 16
    assert cm["fc.weight"].method == "kmeans"
    # a pattern that matches quantizable tensors and biases alike is fine
    cm = qpack.compress(arrays, min_numel=0, include="*", overrides={"fc.*": {"bits": 8}})
    assert cm["fc.weight"].bits == 8 and cm["fc.bias"].method == "raw"
    # per_channel reaches a tensor made "log" by an override
    cm = qpack.compress(arrays, method="linear", per_channel=True, min_numel=0,
                        overrides={"fc.weight": {"method": "log"}})
    assert cm["fc.weight"].method == "log" and cm["fc.weight"].spec["per_channel"]
    # method=raw may name anything
    cm = qpack.compress(arrays, min_numel=0, overrides={"fc.*": {"method": "raw"}})
    assert cm["fc.weight"].method == "raw"


def test_scale_dtype_is_stored_and_recorded(arrays, tmp_path):
    """scale_dtype reaches the file (top level and per tensor) and compress_args."""
    cm = qpack.compress(arrays, method="linear", bits=4, group_size=16, min_numel=0,
                        clip="minmax", scale_dtype=np.float32,
                        overrides={"fc.*": {"scale_dtype": "float16"}})
    cm.save(tmp_path / "s.qpk")
    m = qpack.load(tmp_path / "s.qpk", verify=True)
    assert m["emb.weight"].spec["sections"]["scales"]["dtype"] == "float32"
    assert m["fc.weight"].spec["sections"]["scales"]["dtype"] == "float16"
    for name in ("emb.weight", "fc.weight"):
        want = qpack.quantize_linear(arrays[name], 4, group_size=16,
                                     scale_dtype=np.float32 if name == "emb.weight"
                                     else np.float16)
        np.testing.assert_array_equal(m[name].dequantize(), want.dequantize())
    args = json.loads(m.metadata["compress_args"])
    assert args["scale_dtype"] == "float32" and args["codebook_dtype"] == "auto"
    assert args["overrides"] == {"fc.*": {"scale_dtype": "float16"}}
    # the defaults are not "options that do nothing", whatever the method
    qpack.compress(arrays, method="kmeans", min_numel=0, scale_dtype=np.float16)
    qpack.compress(arrays, method="linear", min_numel=0, codebook_dtype="auto")


@pytest.mark.parametrize("book", [np.float16, "float32", "auto"])
def test_codebook_dtype_is_stored(arrays, tmp_path, book):
    cm = qpack.compress(arrays, bits=4, min_numel=0, codebook_dtype=book)
    cm.save(tmp_path / "c.qpk")
    m = qpack.load(tmp_path / "c.qpk", verify=True)
    want = qpack.quantize_kmeans(arrays["fc.weight"], 4, codebook_dtype=book)
    stored = m["fc.weight"].spec["sections"]["codebook"]["dtype"]
    assert stored == want.codebook.dtype.name == ("float32" if book == "float32"
                                                   else "float16")
    np.testing.assert_array_equal(m["fc.weight"].dequantize(), want.dequantize())
    recorded = json.loads(m.metadata["compress_args"])["codebook_dtype"]
    assert recorded == ("auto" if book == "auto" else np.dtype(book).name)


def test_scale_dtype_with_calibration(arrays):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 64)).astype(np.float32)
    cm = qpack.compress(arrays, method="linear", bits=4, group_size=16, min_numel=0,
                        scale_dtype=np.float32, calibration={"fc.weight": x},
                        calibration_damping=0.1)
    assert cm["fc.weight"].spec["sections"]["scales"]["dtype"] == "float32"
    want = qpack.quantize_linear_gptq(arrays["fc.weight"], x, 4, group_size=16, clip="mse",
                                      scale_dtype=np.float32, damping=0.1)
    np.testing.assert_array_equal(cm["fc.weight"].dequantize(), want.dequantize())


def test_empty_tensor_with_a_huge_extent_is_refused(monkeypatch):
    no_encoding(monkeypatch)
    with pytest.raises(ValueError, match="extent"):
        qpack.compress({"e": np.zeros((1 << 25, 0), np.float32),
                        "w": np.ones((64, 64), np.float32)})


# -- B9: bfloat16 stays bfloat16 ----------------------------------------------------

def test_bfloat16_round_trip_keeps_dtype_and_size(tmp_path):
    rng = np.random.default_rng(1)
    bf = rng.standard_normal((128, 64)).astype(ml_dtypes.bfloat16)
    src = tmp_path / "bf.safetensors"
    write_safetensors(src, {"w": bf, "b": bf[0]}, metadata={"format": "pt"})
    arrays, meta = read_safetensors(src)
    assert arrays["w"].dtype == ml_dtypes.bfloat16 and meta == {"format": "pt"}
    cm = qpack.compress(src, bits=8)
    assert cm.original_nbytes == 2 * bf.size + 2 * 64
    cm.save(tmp_path / "bf.qpk")
    m = qpack.load(tmp_path / "bf.qpk")
    assert m["w"].dtype == ml_dtypes.bfloat16
    out = m.decompress()
    assert out["w"].dtype == ml_dtypes.bfloat16 and out["b"].dtype == ml_dtypes.bfloat16
    assert np.array_equal(out["b"].view(np.uint16), bf[0].view(np.uint16))
    err = np.abs(out["w"].astype(np.float32) - bf.astype(np.float32)).max()
    assert 0 < err < 0.05


# -- B12: the input's own metadata --------------------------------------------------

def test_source_metadata_is_kept_through_save_and_load(tmp_path, arrays):
    src = tmp_path / "m.safetensors"
    write_safetensors(src, arrays, metadata={"format": "pt", "note": "hello"})
    cm = qpack.compress(src, min_numel=0)
    assert cm.source_metadata == {"format": "pt", "note": "hello"}
    cm.save(tmp_path / "m.qpk")
    m = qpack.load(tmp_path / "m.qpk")
    assert m.source_metadata == {"format": "pt", "note": "hello"}
    assert "format" not in m.metadata  # qpack's own metadata stays separate
    # a loaded model saves it again
    m.save(tmp_path / "again.qpk")
    assert qpack.load(tmp_path / "again.qpk").source_metadata == cm.source_metadata


# -- C14: damaged .npz inputs -------------------------------------------------------

def _npz(tmp_path, arrays):
    p = tmp_path / "m.npz"
    np.savez(p, **arrays)
    return p


def test_truncated_npz(tmp_path, arrays):
    p = _npz(tmp_path, arrays)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(ValueError, match=f"{p}: damaged or unreadable .npz"):
        qpack.compress(p)


def test_npz_with_a_bad_crc(tmp_path, arrays):
    p = _npz(tmp_path, arrays)
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("fc.weight.npy")
    start = info.header_offset + 30 + len(info.filename) + 200  # inside the array bytes
    raw[start] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="damaged or unreadable .npz") as exc:
        qpack.read_model(p)
    assert "CRC" in str(exc.value)


def test_text_file_named_npz_is_not_sent_to_pickle(tmp_path):
    p = tmp_path / "notes.npz"
    p.write_text("just some text\n" * 10)
    with pytest.raises(ValueError, match="not a .npz file") as exc:
        qpack.read_model(p)
    assert "pickle" not in str(exc.value)


# -- E: one rule in one place -------------------------------------------------------

def test_group_layout_is_the_one_rule():
    assert _validate.group_layout(None, 4, 10) == (1, 1, 40)
    assert _validate.group_layout(-1, 4, 10) == (4, 1, 10)
    assert _validate.group_layout(4, 4, 10) == (4, 3, 4)
    assert _validate.group_layout(16, 4, 10) == (4, 1, 10)
    for bad in (0, -2, 1.5, True, "8"):
        with pytest.raises(ValueError, match="group_size"):
            _validate.check_group_size(bad)
    assert _validate.matrix_shape((3, 4, 5)) == (3, 20)
    assert _validate.matrix_shape((7,)) == (1, 7)
    assert _validate.check_int(np.int64(3), "n", 0, 5) == 3
    with pytest.raises(ValueError, match="max_len must be an integer in 1..15"):
        qpack.huffman_encode(np.zeros(4, np.uint8), max_len=99)


def test_progress_counts_tensors_on_stderr(arrays, capsys):
    qpack.compress(arrays, min_numel=0, progress=True)
    err = capsys.readouterr().err
    assert err.endswith("\n") and f"compress: {len(arrays)}/{len(arrays)} tensors" in err
