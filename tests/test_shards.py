"""Sharded .qpk output: compress(out=folder, max_shard_size=...), load of a folder or
index, resumption, and the CLI's --max-shard-size / --resume / info / verify / decompress."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import qpack
from qpack.cli import main
from qpack.safetensors_file import read_safetensors, write_safetensors
from qpack.shards import INDEX_NAME, parse_size
from qpack.stored_tensor import StoredTensor


def _checkpoint(tmp_path, n_layers=5, rows=256, cols=512):
    rng = np.random.default_rng(11)
    arrays = {}
    for i in range(n_layers):
        arrays[f"layers.{i}.weight"] = rng.standard_normal((rows, cols)).astype(np.float32)
        arrays[f"layers.{i}.norm"] = rng.standard_normal(rows).astype(np.float16)
    path = tmp_path / "in.safetensors"
    write_safetensors(path, arrays, {"format": "pt"})
    return path, arrays


def _shard_files(folder) -> list[str]:
    return sorted(e for e in os.listdir(folder) if e.endswith(".qpk"))


def test_shards_split_by_size_and_load_as_one_model(tmp_path):
    path, arrays = _checkpoint(tmp_path)
    m = qpack.compress(path, bits=4, out=tmp_path / "out", max_shard_size=100_000)
    files = _shard_files(tmp_path / "out")
    n = len(files)
    assert n >= 3 and files == [f"model-{k:05d}-of-{n:05d}.qpk" for k in range(1, n + 1)]
    for f in files:  # each shard is a .qpk of its own, within the size (one tensor each
        shard = qpack.load(tmp_path / "out" / f)  # may exceed it alone)
        data = sum(t.nbytes for t in shard.values())
        assert data <= 100_000 or len(shard) == 1
    index = json.loads((tmp_path / "out" / INDEX_NAME).read_text())
    assert list(index["weight_map"]) == list(arrays)
    assert index["metadata"]["total_size"] == sum(
        os.path.getsize(tmp_path / "out" / f) for f in files)
    for source in (tmp_path / "out", tmp_path / "out" / INDEX_NAME):
        loaded = qpack.load(source, verify=True)
        assert list(loaded) == list(arrays) and len(loaded.shards) == n
        assert loaded.nbytes == index["metadata"]["total_size"] == m.nbytes
        assert loaded.source_metadata == {"format": "pt"}
    single = qpack.compress(arrays, bits=4)
    for name in arrays:
        np.testing.assert_array_equal(m[name].dequantize(), single[name].dequantize())
    x = np.ones((2, 512), np.float32)
    np.testing.assert_array_equal(m["layers.2.weight"].matmul(x),
                                  single["layers.2.weight"].matmul(x))


def test_sharded_output_is_the_same_on_worker_processes(tmp_path):
    path, _ = _checkpoint(tmp_path)
    qpack.compress(path, bits=4, out=tmp_path / "a", max_shard_size="100KiB")
    with qpack.local_workers(2) as pool:
        qpack.compress(path, bits=4, out=tmp_path / "b", max_shard_size="100KiB",
                       executor=pool)
    for f in os.listdir(tmp_path / "a"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_a_budget_can_be_sharded_too(tmp_path):
    _, arrays = _checkpoint(tmp_path)
    m = qpack.compress(arrays, target_bpw=3.0, out=tmp_path / "out", max_shard_size="100KB")
    assert len(m.shards) > 1
    assert m.nbytes <= 3.0 / 8 * sum(a.size for n, a in arrays.items() if a.ndim == 2) \
        + sum(a.nbytes for a in arrays.values() if a.ndim == 1)


def test_resume_keeps_finished_shards(tmp_path, monkeypatch):
    path, arrays = _checkpoint(tmp_path)
    out = tmp_path / "out"
    qpack.compress(path, bits=4, out=tmp_path / "whole", max_shard_size="100KB")
    reads: list[str] = []
    original = StoredTensor.read

    def read_until(self, stop_at=None):
        reads.append(self.name)
        if self.name == "layers.3.weight" and stop_at:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(StoredTensor, "read", lambda self: read_until(self, True))
    with pytest.raises(KeyboardInterrupt):
        qpack.compress(path, bits=4, out=out, max_shard_size="100KB")
    partial = sorted(os.listdir(out))
    assert partial and all(e.startswith(".partial-") for e in partial)  # no index yet
    with pytest.raises(qpack.FormatError, match="directory without model.qpk.index.json"):
        qpack.load(out)
    monkeypatch.setattr(StoredTensor, "read", lambda self: read_until(self, False))
    reads.clear()
    m = qpack.compress(path, bits=4, out=out, max_shard_size="100KB", resume=True)
    assert "layers.0.weight" not in reads and "layers.4.weight" in reads
    assert list(m) == list(arrays)
    assert sorted(os.listdir(out)) == sorted(os.listdir(tmp_path / "whole"))
    for f in os.listdir(out):
        assert (out / f).read_bytes() == (tmp_path / "whole" / f).read_bytes(), f


def test_resume_with_other_settings_starts_over(tmp_path, monkeypatch):
    path, _ = _checkpoint(tmp_path)
    out = tmp_path / "out"
    original = StoredTensor.read

    def stop(self):
        if self.name == "layers.3.weight":
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(StoredTensor, "read", stop)
    with pytest.raises(KeyboardInterrupt):
        qpack.compress(path, bits=4, out=out, max_shard_size="100KB")
    monkeypatch.setattr(StoredTensor, "read", original)
    m = qpack.compress(path, bits=3, out=out, max_shard_size="100KB", resume=True)
    assert {t.bits for t in m.values() if t.method != "raw"} == {3}


def test_a_new_run_replaces_an_older_shard_set(tmp_path):
    path, _ = _checkpoint(tmp_path)
    out = tmp_path / "out"
    qpack.compress(path, bits=4, out=out, max_shard_size="100KB")
    qpack.compress(path, bits=2, out=out, max_shard_size="1MB")
    assert _shard_files(out) == ["model-00001-of-00001.qpk"]
    assert {t.bits for t in qpack.load(out).values() if t.method != "raw"} == {2}


@pytest.mark.parametrize("value, expect", [(65536, 65536), ("5GB", 5 * 10**9),
                                           ("500 MB", 500 * 10**6), ("1.5GiB", 3 << 29),
                                           ("64kib", 65536)])
def test_parse_size(value, expect):
    assert parse_size(value) == expect


@pytest.mark.parametrize("kw, match", [
    (dict(max_shard_size="5GB"), "max_shard_size needs out="),
    (dict(out="OUT", max_shard_size="lots"), "max_shard_size must be bytes"),
    (dict(out="OUT", max_shard_size=100), "at least 4096"),
    (dict(out="OUT", max_shard_size=True), "max_shard_size must be bytes"),
    (dict(out="OUT.qpk", resume=True), "resume needs max_shard_size"),
    (dict(out="OUT", max_shard_size="5GB", resume=1), "resume must be True or False"),
    (dict(out="missing/OUT", max_shard_size="5GB"), "does not exist"),
])
def test_shard_arguments_are_checked_first(tmp_path, kw, match):
    kw = {k: str(tmp_path / v) if k == "out" else v for k, v in kw.items()}
    with pytest.raises(ValueError, match=match):
        qpack.compress({"w": np.ones((64, 64), np.float32)}, **kw)
    assert not (tmp_path / "OUT").exists()


def test_damaged_shard_sets_are_format_errors(tmp_path):
    path, _ = _checkpoint(tmp_path)
    out = tmp_path / "out"
    qpack.compress(path, bits=4, out=out, max_shard_size="100KB")
    index = json.loads((out / INDEX_NAME).read_text())
    first = next(iter(index["weight_map"]))

    def broken(edit) -> None:
        bad = json.loads(json.dumps(index))
        edit(bad)
        (out / INDEX_NAME).write_text(json.dumps(bad))
        with pytest.raises(qpack.FormatError):
            qpack.load(out)

    broken(lambda i: i["weight_map"].__setitem__(first, "model-00009-of-00009.qpk"))
    broken(lambda i: i["weight_map"].pop(first))
    broken(lambda i: i["weight_map"].__setitem__("ghost", i["weight_map"][first]))
    broken(lambda i: i["weight_map"].__setitem__(first, "../escape.qpk"))
    broken(lambda i: i.__setitem__("weight_map", {}))
    (out / INDEX_NAME).write_text("{not json")
    with pytest.raises(qpack.FormatError):
        qpack.load(out)


def test_cli_sharded_round_trip(tmp_path, capsys):
    path, arrays = _checkpoint(tmp_path)
    out = tmp_path / "out"
    assert main(["compress", str(path), "-o", str(out), "--max-shard-size", "100KB",
                 "-q", "--workers", "2"]) == 0
    assert main(["info", str(out)]) == 0
    assert "shards)" in capsys.readouterr().out
    assert main(["info", str(out / INDEX_NAME), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shards"] == len(_shard_files(out)) and info["format_version"] == 4
    assert main(["verify", str(out), "--decode"]) == 0
    assert main(["decompress", str(out), "-o", str(tmp_path / "st")]) == 0
    st_index = json.loads((tmp_path / "st" / "model.safetensors.index.json").read_text())
    assert list(st_index["weight_map"]) == list(arrays)
    assert st_index["metadata"]["format"] == "pt"
    shard_name = st_index["weight_map"]["layers.0.norm"]
    decoded, meta = read_safetensors(tmp_path / "st" / shard_name)
    assert meta == {"format": "pt"}
    np.testing.assert_array_equal(decoded["layers.0.norm"], arrays["layers.0.norm"])
    # the decompressed shard set is itself a checkpoint qpack reads
    assert main(["compress", str(tmp_path / "st"), "-o", str(tmp_path / "again.qpk"),
                 "-q"]) == 0
    assert main(["compress", str(path), "-o", str(tmp_path / "x.qpk"), "--resume"]) == 1
    assert "--resume needs --max-shard-size" in capsys.readouterr().err
