"""qpack.checkpoint: sharded Hugging Face checkpoints, folders, shard lists and torch files
as one mapping; compress and the CLI take them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import qpack
from qpack import cli, dtypes
from qpack.checkpoint import open_checkpoint
from qpack.safetensors_file import SafetensorsFile, write_safetensors


def tensors(rng):
    """Mixed dtypes across what will be two shards."""
    bf16 = dtypes.from_storage(rng.integers(0, 1 << 15, (64, 48), dtype=np.uint16) & 0x3FFF,
                               "bfloat16")
    return {
        "embed.weight": rng.standard_normal((100, 48)).astype(np.float32),
        "layer0.attn.weight": np.array(bf16),
        "layer0.attn.bias": rng.standard_normal(64).astype(np.float16),
        "layer1.mlp.weight": rng.standard_normal((96, 64)).astype(np.float16),
        "layer1.mlp.bias": rng.standard_normal(96).astype(np.float32),
    }


def write_shards(folder, arrays, split=2, index_name="model.safetensors.index.json"):
    """HF-style shards model-0000k-of-0000n.safetensors plus an index; returns its path."""
    names = list(arrays)
    per = -(-len(names) // split)
    weight_map = {}
    for k in range(split):
        shard = f"model-{k + 1:05d}-of-{split:05d}.safetensors"
        part = {n: arrays[n] for n in names[k * per:(k + 1) * per]}
        write_safetensors(os.path.join(folder, shard), part, {"format": "pt"})
        weight_map.update({n: shard for n in part})
    index = os.path.join(folder, index_name)
    with open(index, "w") as fh:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, fh)
    return index


def assert_same(ckpt, arrays):
    assert list(ckpt) == list(arrays)
    for name, want in arrays.items():
        got = ckpt[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(dtypes.to_storage(got), dtypes.to_storage(want))


def test_index_folder_and_shard_list_read_the_same(tmp_path):
    arrays = tensors(np.random.default_rng(0))
    index = write_shards(tmp_path, arrays)
    shards = sorted(str(p) for p in tmp_path.glob("*.safetensors"))
    for source in (index, str(tmp_path), tmp_path, shards):
        ckpt = open_checkpoint(source)
        assert_same(ckpt, arrays)
        assert ckpt.metadata == {"format": "pt"}
    ckpt = open_checkpoint(index)
    assert ckpt.dtype_of("layer0.attn.weight") == "bfloat16"
    assert ckpt.shape_of("embed.weight") == (100, 48)
    assert os.path.basename(ckpt.shard_of("layer1.mlp.bias")).startswith("model-00002")


def test_folder_with_safetensors_and_bin_indexes_prefers_safetensors(tmp_path):
    arrays = tensors(np.random.default_rng(6))
    write_shards(tmp_path, arrays)
    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"x": "pytorch_model-00001-of-00001.bin"}}))
    assert_same(open_checkpoint(tmp_path), arrays)
    (tmp_path / "extra.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match="several shard indexes"):
        open_checkpoint(tmp_path)


def test_folder_with_one_model_file(tmp_path):
    arrays = tensors(np.random.default_rng(1))
    write_safetensors(tmp_path / "model.safetensors", arrays)
    assert_same(open_checkpoint(tmp_path), arrays)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))  # a safetensors file is preferred
    assert_same(open_checkpoint(tmp_path), arrays)


def test_opening_reads_headers_only(tmp_path, monkeypatch):
    arrays = tensors(np.random.default_rng(2))
    index = write_shards(tmp_path, arrays)
    reads = []
    real = SafetensorsFile.read
    monkeypatch.setattr(SafetensorsFile, "read", lambda self, n: reads.append(n) or
                        real(self, n))
    ckpt = open_checkpoint(index)
    assert reads == [] and len(ckpt) == len(arrays)
    ckpt["layer1.mlp.weight"]
    assert reads == ["layer1.mlp.weight"]


@pytest.mark.parametrize("case, match", [
    ("missing shard", "names shard 'model-00002-of-00002.safetensors', which does not exist"),
    ("tensor in no shard", "puts tensor 'ghost' in"),
    ("unlisted tensor", "which the index model.safetensors.index.json does not list"),
    ("path outside", "shards must be file names beside the index"),
    ("not json", "not a JSON shard index"),
    ("no weight_map", "needs a non-empty 'weight_map'"),
])
def test_bad_indexes(tmp_path, case, match):
    arrays = tensors(np.random.default_rng(3))
    index = write_shards(tmp_path, arrays)
    data = json.load(open(index))
    wmap = data["weight_map"]
    if case == "missing shard":
        os.remove(tmp_path / "model-00002-of-00002.safetensors")
    elif case == "tensor in no shard":
        wmap["ghost"] = "model-00001-of-00002.safetensors"
    elif case == "unlisted tensor":
        del wmap["embed.weight"]
    elif case == "path outside":
        wmap["embed.weight"] = "../model-00001-of-00002.safetensors"
    elif case == "no weight_map":
        data = {"metadata": {}}
    if case == "not json":
        open(index, "w").write("{not json")
    else:
        json.dump(data, open(index, "w"))
    with pytest.raises(ValueError, match=match):
        open_checkpoint(index)


def test_duplicate_names_and_bad_sources(tmp_path):
    a = tmp_path / "a.safetensors"
    b = tmp_path / "b.safetensors"
    write_safetensors(a, {"w": np.ones((2, 2), np.float32), "x": np.ones(2, np.float32)})
    write_safetensors(b, {"w": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="tensor 'w' is in two files"):
        open_checkpoint([a, b])
    with pytest.raises(ValueError, match="no such file or folder"):
        open_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="no such file"):
        open_checkpoint([a, tmp_path / "nope.safetensors"])
    with pytest.raises(ValueError, match="no checkpoint files given"):
        open_checkpoint([])
    with pytest.raises(ValueError, match="several checkpoint files and no shard index"):
        open_checkpoint(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no checkpoint in this folder"):
        open_checkpoint(empty)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown model file type"):
        open_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="path or a list of paths"):
        open_checkpoint(3)


def test_torch_files_need_torch(tmp_path, monkeypatch):
    import builtins

    p = tmp_path / "model.bin"
    p.write_bytes(b"\x80\x02not really")
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("no torch here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ValueError, match=r"needs torch: pip install 'qpack\[torch\]'"):
        open_checkpoint(p)


def test_torch_state_dicts(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (the torch extra)")
    sd = {"fc.weight": torch.randn(8, 4, dtype=torch.bfloat16),
          "fc.bias": torch.randn(8, dtype=torch.float16)}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.dtype_of("fc.weight") == "bfloat16" and ckpt["fc.bias"].dtype == np.float16
    np.testing.assert_array_equal(ckpt["fc.bias"], sd["fc.bias"].numpy())
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pt")
    assert set(open_checkpoint(tmp_path / "ckpt.pt")) == set(sd)
    torch.save({"w": torch.ones(2), "step": 5}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="entry 'step' is not a tensor"):
        open_checkpoint(tmp_path / "mixed.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk" * 10)
    with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
        open_checkpoint(tmp_path / "junk.pt")


def test_compress_from_shards_equals_compress_from_arrays(tmp_path):
    arrays = tensors(np.random.default_rng(4))
    index = write_shards(tmp_path, arrays)
    from_shards = qpack.compress(index, bits=4, min_numel=16)
    from_dict = qpack.compress(arrays, bits=4, min_numel=16)
    a, b = from_shards.decompress(), from_dict.decompress()
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == arrays[name].dtype
        np.testing.assert_array_equal(dtypes.to_storage(a[name]), dtypes.to_storage(b[name]))
    assert from_shards.source_metadata == {"format": "pt"}


def test_cli_compresses_folders_indexes_and_shard_lists(tmp_path, capsys):
    arrays = tensors(np.random.default_rng(5))
    src = tmp_path / "src"
    src.mkdir()
    index = write_shards(src, arrays)
    shards = sorted(str(p) for p in src.glob("*.safetensors"))
    for k, inputs in enumerate(([str(src)], [index], shards)):
        out = tmp_path / f"out{k}.qpk"
        assert cli.main(["compress", *inputs, "-o", str(out), "--quiet"]) == 0
        assert set(qpack.load(out).decompress()) == set(arrays)
    capsys.readouterr()
    assert cli.main(["compress", str(src), str(src), "-o", str(tmp_path / "x.qpk")]) == 1
    assert "not a regular file" in capsys.readouterr().err
