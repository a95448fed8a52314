"""compress → CompressedModel → save/load → decompress, against each transform's dequantize."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from model_cases import small_model, split_file

import qpack
from qpack import format as qformat


@pytest.fixture(scope="module")
def model():
    return small_model()


def _reference(arr, method, bits, prune, group_size=None):
    """What the transforms alone give for one tensor (the expected decompression)."""
    w = np.asarray(arr, dtype=np.float32).reshape(arr.shape[0], -1)
    mask = qpack.prune_magnitude(w, prune) if prune > 0 else None
    if method == "linear":
        src = w if mask is None else np.where(mask, w, 0).astype(np.float32)
        q = qpack.quantize_linear(src, bits, group_size=group_size)
    else:
        q = qpack.quantize_kmeans(w, bits, mask=mask)
    return q.dequantize(np.float32).reshape(arr.shape).astype(arr.dtype)


@pytest.mark.parametrize("method", ["kmeans", "linear"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("prune", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("entropy", ["huffman", None])
def test_round_trip_matches_transforms(tmp_path, model, method, bits, prune, entropy):
    gs = 32 if method == "linear" else None
    # clip="minmax": the transforms' own default, which _reference uses
    cm = qpack.compress(model, bits=bits, prune=prune, method=method, entropy=entropy,
                        min_numel=100,
                        **({"clip": "minmax", "group_size": gs} if method == "linear" else {}))
    path = tmp_path / "m.qpk"
    size = cm.save(path)
    assert size == os.path.getsize(path) == cm.nbytes
    loaded = qpack.load(path, verify=True)
    assert list(loaded) == list(model)
    out_mem, out_file = cm.decompress(), loaded.decompress()
    for name, arr in model.items():
        assert out_file[name].shape == arr.shape and out_file[name].dtype == arr.dtype
        np.testing.assert_array_equal(out_file[name], out_mem[name])
        t = loaded[name]
        if t.method == "raw":
            np.testing.assert_array_equal(out_file[name], arr)
        else:
            expect = _reference(arr, method, bits, prune, gs)
            np.testing.assert_array_equal(out_file[name], expect)
            if prune:
                zeros = np.mean(out_file[name] == 0)
                assert zeros >= prune - 0.01
    assert loaded.nbytes == cm.nbytes
    assert loaded.ratio == pytest.approx(loaded.original_nbytes / os.path.getsize(path))


def test_selection_rules(model):
    cm = qpack.compress(model, bits=4, min_numel=700)
    methods = {n: cm[n].method for n in cm}
    assert methods["fc1.weight"] == "kmeans" and methods["embed.weight"] == "kmeans"
    assert methods["fc2.weight"] == "kmeans"       # 816 elements
    assert methods["conv.weight"] == "raw"         # 600 elements < min_numel
    assert qpack.compress(model, min_numel=0)["conv.weight"].method == "kmeans"  # 4-D
    for name in ("fc1.bias", "norm.weight", "step", "position_ids"):
        assert methods[name] == "raw"
    cm2 = qpack.compress(model, bits=4, min_numel=0, include=["fc*"], exclude="*.bias")
    assert [n for n in cm2 if cm2[n].method != "raw"] == ["fc1.weight", "fc2.weight"]


def test_overrides_mixed_precision(tmp_path, model):
    cm = qpack.compress(model, bits=2, method="kmeans", min_numel=0,
                        overrides={"embed.*": {"bits": 8, "method": "linear",
                                               "group_size": -1},
                                   "conv.*": {"method": "raw"}})
    assert (cm["embed.weight"].method, cm["embed.weight"].bits) == ("linear", 8)
    assert cm["conv.weight"].method == "raw"
    assert (cm["fc1.weight"].method, cm["fc1.weight"].bits) == ("kmeans", 2)
    cm.save(tmp_path / "mixed.qpk")
    loaded = qpack.load(tmp_path / "mixed.qpk")
    np.testing.assert_array_equal(loaded["conv.weight"].dequantize(), model["conv.weight"])
    assert loaded["embed.weight"].spec["group_size"] == -1


def test_ratio_arithmetic_independent(tmp_path, model):
    cm = qpack.compress(model, bits=4, prune=0.5, min_numel=0)
    path = tmp_path / "r.qpk"
    cm.save(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    head_len = int.from_bytes(raw[12:16], "little")
    header, data = split_file(raw)
    sections = [d for t in header["tensors"].values() for d in t["sections"].values()]
    end = max(d["offset"] + d["length"] for d in sections)
    # version 4: 64 bytes of preamble, the data region, the header last
    assert 64 + end == len(data) + 64 == len(raw) - head_len
    assert len(raw) == cm.nbytes
    section_bytes = sum(d["length"] for d in sections)
    assert section_bytes == sum(cm[n].nbytes for n in cm)
    # padding is less than 64 bytes per section
    assert len(raw) - section_bytes - 64 - head_len < 64 * len(sections)
    original = sum(a.nbytes for a in model.values())
    assert cm.original_nbytes == original
    assert cm.ratio == pytest.approx(original / len(raw))


def test_report_rows_and_table(model):
    cm = qpack.compress(model, bits=4, prune=0.5, min_numel=0)
    rep = cm.report()
    assert [r["name"] for r in rep] == list(model)
    row = next(r for r in rep if r["name"] == "fc1.weight")
    assert 0.49 <= row["sparsity"] <= 0.51 and 0 < row["rel_error"] < 1 and row["bits"] == 4
    assert row["stored_bytes"] == cm["fc1.weight"].nbytes
    text = str(rep)
    assert "fc1.weight" in text and "total:" in text
    widths = {len(line) for line in text.splitlines()[2:-1]}
    assert len(widths) == 1


class FakeTorchTensor:
    """Duck-types the parts of torch.Tensor that compress uses (detach/cpu/numpy)."""

    def __init__(self, arr):
        self._arr = arr
        self.dtype = f"torch.{arr.dtype}"

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self._arr


def test_torch_style_inputs(model):
    fake = {k: FakeTorchTensor(v) for k, v in model.items()}
    a = qpack.compress(fake, bits=4, min_numel=0).decompress()
    b = qpack.compress(model, bits=4, min_numel=0).decompress()
    for k in model:
        np.testing.assert_array_equal(a[k], b[k])


def test_real_torch_state_dict():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    sd = net.state_dict()
    cm = qpack.compress(sd, bits=8, method="linear", group_size=-1, min_numel=0)
    out = cm.decompress()
    for k, v in sd.items():
        assert out[k].shape == tuple(v.shape)
        assert np.abs(out[k] - v.numpy()).max() < 0.01


def test_torch_bfloat16_state_dict():
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    w = torch.randn(32, 64).to(torch.bfloat16)
    cm = qpack.compress({"w": w, "b": w[0]}, bits=8, method="linear", group_size=-1)
    out = cm.decompress()
    assert out["b"].dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(out["b"].astype(np.float32), w[0].float().numpy())
    assert np.abs(out["w"].astype(np.float32) - w.float().numpy()).max() < 0.05


def test_paths_npz_and_safetensors(tmp_path, model):
    npz = tmp_path / "m.npz"
    np.savez(npz, **model)
    cm = qpack.compress(str(npz), bits=4, min_numel=0)
    assert set(cm) == set(model)
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "m.safetensors"
    st.save_file({k: np.ascontiguousarray(v) for k, v in model.items()}, str(path))
    cm2 = qpack.compress(path, bits=4, min_numel=0)
    for k in model:
        np.testing.assert_array_equal(cm2[k].dequantize(), cm[k].dequantize())


def test_global_prune_scope(model):
    cm = qpack.compress(model, bits=4, prune=0.5, prune_scope="global", min_numel=0)
    compressed = [n for n in cm if cm[n].method != "raw"]
    kept = sum((1 - cm[n].sparsity) * np.prod(cm[n].shape) for n in compressed)
    total = sum(np.prod(cm[n].shape) for n in compressed)
    assert kept / total == pytest.approx(0.5, abs=0.01)
    # one threshold: the large-std embedding keeps more than the small-std fc1
    assert cm["embed.weight"].sparsity < cm["fc1.weight"].sparsity


def test_bfloat16_round_trip(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.02, size=(64, 64)).astype(ml_dtypes.bfloat16)
    cm = qpack.compress({"w": w, "b": w[0]}, bits=8, method="linear", group_size=-1)
    cm.save(tmp_path / "bf.qpk")
    out = qpack.load(tmp_path / "bf.qpk").decompress()
    assert out["w"].dtype == w.dtype and out["b"].dtype == w.dtype
    np.testing.assert_array_equal(out["b"].view(np.uint16), w[0].view(np.uint16))
    assert np.abs(out["w"].astype(np.float32) - w.astype(np.float32)).max() < 2e-3


def test_metadata_and_save_alias(tmp_path, model):
    cm = qpack.compress(model, bits=4, metadata={"author": "me"})
    qpack.save(cm, tmp_path / "a.qpk", metadata={"note": "x"})
    m = qpack.load(tmp_path / "a.qpk")
    assert m.metadata["author"] == "me" and m.metadata["note"] == "x"
    assert m.metadata["qpack_version"] == qpack.__version__
    args = json.loads(m.metadata["compress_args"])
    assert args["bits"] == 4 and args["method"] == "kmeans"
    # a loaded model saves again to an identical file
    m.save(tmp_path / "b.qpk", metadata={"note": "x"})
    assert (tmp_path / "a.qpk").read_bytes() == (tmp_path / "b.qpk").read_bytes()


def test_load_is_lazy_and_zero_copy(tmp_path, model):
    cm = qpack.compress(model, bits=4, entropy=None, min_numel=0)
    cm.save(tmp_path / "z.qpk")
    m = qpack.load(tmp_path / "z.qpk")
    t = m["fc1.weight"]
    view = t._read_section("codes")
    assert not view.flags.owndata and not view.flags.writeable
    assert view.ctypes.data % 64 == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 9}, "bits"), ({"bits": 0}, "bits"), ({"prune": 1.0}, "prune"),
    ({"prune": -0.1}, "prune"), ({"method": "magic"}, "method"),
    ({"group_size": 0}, "group_size"), ({"clip": "no"}, "clip"),
    ({"entropy": "zstd"}, "entropy"), ({"include": "nomatch*"}, "matches no tensor"),
    ({"overrides": {"nomatch*": {"bits": 8}}}, "matches no tensor"),
    ({"overrides": {"fc1.*": {"bitz": 8}}}, "unknown keyword"),
    ({"overrides": {"fc1.*": {"bits": 12}}}, "bits"),
    ({"min_numel": -1}, "min_numel"), ({"prune_scope": "layer"}, "prune_scope"),
])
def test_bad_arguments(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        qpack.compress(model, **kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        qpack.compress({})
    w = np.ones((64, 64), np.float32)
    w[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        qpack.compress({"w": w}, min_numel=0)
    with pytest.raises(ValueError, match="no such file"):
        qpack.compress("/nonexistent/model.safetensors")
    with pytest.raises(ValueError, match="unknown model file type"):
        qpack.compress(__file__)
    with pytest.raises(ValueError, match="mapping"):
        qpack.compress(42)
    with pytest.raises(ValueError):
        qpack.compress({"w": np.array(["a", "b"])})


def test_save_into_missing_directory(tmp_path, model):
    cm = qpack.compress(model, bits=4)
    with pytest.raises(ValueError, match="does not exist"):
        cm.save(tmp_path / "missing" / "m.qpk")
    assert not (tmp_path / "missing").exists()


def test_save_is_atomic(tmp_path, model, monkeypatch):
    cm = qpack.compress(model, bits=4)
    path = tmp_path / "m.qpk"
    cm.save(path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(qformat.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        cm.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.qpk"]


def test_fixtures_still_load():
    """Files written by earlier versions load to the arrays stored beside them."""
    data = os.path.join(os.path.dirname(__file__), "data")
    fixtures = sorted(f for f in os.listdir(data) if f.endswith(".qpk"))
    assert fixtures, "no .qpk fixtures found in tests/data"
    for fname in fixtures:
        m = qpack.load(os.path.join(data, fname), verify=True)
        expect = np.load(os.path.join(data, fname.replace(".qpk", ".expected.npz")))
        for name in m:
            np.testing.assert_array_equal(m[name].dequantize(), expect[name], err_msg=name)


def test_exact_and_zero_tensors(tmp_path):
    """Tensors a quantizer reproduces exactly (SQNR inf) still save and report."""
    model = {"zeros": np.zeros((64, 64), np.float32),
             "const": np.full((64, 64), 0.25, np.float32),
             "two": np.tile(np.array([-1.0, 1.0], np.float32), (64, 32))}
    for method in ("kmeans", "linear"):
        if method == "linear":  # 2-bit asymmetric cannot hit both -1 and +1 with 0 exact
            model.pop("two")
        cm = qpack.compress(model, bits=2, method=method, min_numel=0)
        cm.save(tmp_path / "e.qpk")
        out = qpack.load(tmp_path / "e.qpk").decompress()
        for k, v in model.items():
            np.testing.assert_array_equal(out[k], v)
        assert "inf" in str(cm.report())


@pytest.mark.parametrize("kwargs", [dict(bits=4), dict(bits=3, prune=0.9),
                                    dict(bits=4, method="linear", group_size=32, entropy=None),
                                    dict(bits=8, method="linear", group_size=-1, prune=0.5)])
def test_take_rows_matches_dequantize(tmp_path, model, kwargs):
    """Embedding lookups decode only the asked rows, equal to the full decompression."""
    qpack.compress(model, min_numel=0, **kwargs).save(tmp_path / "t.qpk")
    m = qpack.load(tmp_path / "t.qpk")
    for name in ("embed.weight", "conv.weight", "fc2.weight"):
        # float32 values before the cast to the tensor's dtype (fc2 is float16)
        full = m[name].quantized().dequantize(np.float32).reshape(m[name].shape)
        idx = np.array([[3, 0, -1], [5, 5, 2]])
        got = m[name].take_rows(idx)
        assert got.shape == idx.shape + full.shape[1:] and got.dtype == np.float32
        np.testing.assert_array_equal(got, full[idx])
        assert m[name].take_rows(np.zeros(0, np.int64)).shape == (0,) + full.shape[1:]
    with pytest.raises(ValueError, match="row indices"):
        m["embed.weight"].take_rows([100])
    with pytest.raises(ValueError, match="integers"):
        m["embed.weight"].take_rows([1.5])
    with pytest.raises(ValueError, match="no float rows"):
        m["fc1.bias"].take_rows([0])
