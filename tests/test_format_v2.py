"""Format version 2: compressed header, per-codec alignment, varint per-row counts, and the
fixed overhead they buy (docs/FORMAT.md, section 4)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from model_cases import build_file, split_file

import qpack
from qpack import format as qformat
from qpack.sections import decode_varint, varint_bytes


def lenet_300_100(rng, kept=0.08):
    """LeNet-300-100's shapes with about ``kept`` of each weight matrix kept."""
    shapes = {"fc1": (300, 784), "fc2": (100, 300), "fc3": (10, 100)}
    model = {}
    for name, shape in shapes.items():
        model[f"{name}.weight"] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        model[f"{name}.bias"] = np.zeros(shape[0], np.float32)
    return model


def test_lenet_overhead_beyond_the_tensor_payload(tmp_path):
    """Issue target: an 8%-kept LeNet-300-100 .qpk carries <= 1.5 KB beyond its payload
    (version 1 carried 5.1 KB: 3 KB of JSON, 1.6 KB of uint32 row counts, padding)."""
    rng = np.random.default_rng(0)
    cm = qpack.compress(lenet_300_100(rng), bits=5, prune=0.92, min_numel=0,
                        overrides={"fc3.*": {"prune": 0.74}})
    size = cm.save(tmp_path / "lenet.qpk")
    m = qpack.load(tmp_path / "lenet.qpk")
    payload = sum(d["length"] for t in m.values() for role, d in t.spec["sections"].items()
                  if role != "row_nsym")
    assert all(m[f"fc{i}.weight"].layout == "sparse" for i in (1, 2, 3))
    assert size - payload <= 1536, size - payload


def test_written_files_are_the_current_version_with_a_zlib_header(tmp_path):
    qpack.compress({"w": np.ones((64, 64), np.float32)}).save(tmp_path / "a.qpk")
    raw = (tmp_path / "a.qpk").read_bytes()
    _, version, n, crc, flags = struct.unpack_from("<8sIIII", raw)
    assert version == qformat.FORMAT_VERSION == 4
    start = int.from_bytes(raw[24:32], "little")
    assert flags == 1 and crc == zlib.crc32(raw[start:start + n]) and start + n == len(raw)
    header, _ = split_file(raw)
    assert header["format"] == "qpk"


def test_sections_are_aligned_by_codec(tmp_path):
    rng = np.random.default_rng(1)
    model = {"a.weight": rng.standard_normal((40, 50)).astype(np.float32),
             "a.bias": rng.standard_normal(40).astype(np.float16),
             "big": rng.standard_normal((64, 64)).astype(np.float32)}
    qpack.compress(model, min_numel=0, overrides={"big": {"method": "raw"}},
                   prune=0.9, entropy=None).save(tmp_path / "a.qpk")
    m = qpack.load(tmp_path / "a.qpk", verify=True)
    for t in m.values():
        for d in t.spec["sections"].values():
            need = qformat.section_alignment(d)
            assert d["offset"] % need == 0
            if d["codec"] == "raw" and d["length"] >= qformat.RAW_ALIGN64_FROM:
                assert d["offset"] % 64 == 0
    assert m["a.weight"].spec["sections"]["row_nsym"]["codec"] == "varint"


@pytest.mark.parametrize("values", [[], [0], [127, 128, 16383, 16384], [2**32 - 1] * 3,
                                    list(range(0, 5000, 7))])
def test_varint_round_trip(values):
    v = np.array(values, dtype=np.uint32)
    b = varint_bytes(v)
    assert np.array_equal(decode_varint({"codec": "varint", "count": v.size}, b, "x"), v)


@pytest.mark.parametrize("blob, count, match", [
    ([0x80], 1, "complete values"),             # truncated value
    ([1, 2, 0x80], 3, "complete values"),       # last value unfinished
    ([1, 2], 3, "cannot hold"),                 # too few bytes for the count
    ([0x80, 0x80, 0x80, 0x80, 0x80, 0x01], 1, "cannot hold|longer than 5"),
    ([0xFF, 0xFF, 0xFF, 0xFF, 0x7F], 1, "exceeds 32 bits"),
])
def test_damaged_varint(blob, count, match):
    with pytest.raises(qpack.FormatError, match=match):
        decode_varint({"codec": "varint", "count": count}, np.array(blob, np.uint8), "x")


@pytest.fixture(scope="module")
def sparse_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("v2") / "s.qpk"
    rng = np.random.default_rng(2)
    qpack.compress({"w": rng.standard_normal((64, 256)).astype(np.float32),
                    "b": rng.standard_normal(64).astype(np.float32)},
                   prune=0.95, min_numel=0).save(p)
    return p


def _write(tmp_path, raw: bytes):
    p = tmp_path / "bad.qpk"
    p.write_bytes(raw)
    return p


def test_header_bomb_is_refused(tmp_path):
    """A few KB that inflate past the 64 MiB header cap stop at the cap."""
    bomb = zlib.compress(b"{" + b" " * (qformat.MAX_HEADER_BYTES + 10) + b"}", 9)
    assert len(bomb) < 100_000
    with pytest.raises(qpack.FormatError, match="cap"):
        qpack.load(_write(tmp_path, _preamble(bomb) + bomb))


def _preamble(head: bytes, version: int = 2, flags: int = 1) -> bytes:
    return struct.pack("<8sIIII", qformat.MAGIC, version, len(head), zlib.crc32(head), flags)


@pytest.mark.parametrize("head, version, flags, match", [
    (zlib.compress(b'{"format": "qpk", "tensors": {}}')[:-3], 2, 1, "truncated"),
    (zlib.compress(b'{"format": "qpk", "tensors": {}}') + b"xx", 2, 1, "trailing"),
    (b"\x78\x9c not deflate at all", 2, 1, "damaged"),
    (b'{"format": "qpk", "tensors": {}}', 2, 4, "flags"),
    (b'{"format": "qpk", "tensors": {}}', 1, 1, "flags"),
])
def test_bad_compressed_headers(tmp_path, head, version, flags, match):
    with pytest.raises(qpack.FormatError, match=match):
        qpack.load(_write(tmp_path, _preamble(head, version, flags) + head))


def test_an_uncompressed_version_2_header_is_read(tmp_path, sparse_file):
    header, data = split_file(sparse_file.read_bytes())
    m = qpack.load(_write(tmp_path, build_file(header, data, compress=False)))
    assert m["w"].layout == "sparse"


def _mutate(sparse_file, tmp_path, mutate, version=3):
    header, data = split_file(sparse_file.read_bytes())
    mutate(header["tensors"])
    raw = build_file(header, data, compress=version >= 2, version=max(version, 2))
    if version == 1:
        raw = raw[:8] + struct.pack("<I", 1) + raw[12:20] + struct.pack("<I", 0) + raw[24:]
    return _write(tmp_path, raw)


@pytest.mark.parametrize("mutate, version, match", [
    (lambda t: t["b"]["sections"]["data"].update(offset=t["b"]["sections"]["data"]["offset"]
                                                 + 2), 3, "4-byte aligned"),
    (lambda t: t["w"]["sections"]["row_nsym"].update(count=63), 3, "row_nsym|must be"),
    (lambda t: t["w"]["sections"]["row_nsym"].update(count=10**6), 3, "cannot hold"),
    (lambda t: None, 1, "varint|aligned"),       # a version-1 file has no varint codec
])
def test_version_rules(sparse_file, tmp_path, mutate, version, match):
    p = _mutate(sparse_file, tmp_path, mutate, version)
    with pytest.raises(qpack.FormatError, match=match):
        m = qpack.load(p, verify=True)
        for t in m.values():
            t.dequantize()
