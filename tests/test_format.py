"""The .qpk container under damage: truncation, flipped bytes, hostile headers."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from model_cases import build_file, data_start, small_model, split_file

import qpack
from qpack.format import MAGIC


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One file of each flavour: dense huffman, sparse huffman, packed (no entropy)."""
    d = tmp_path_factory.mktemp("qpk")
    model = small_model()
    paths = {}
    for key, kw in {"kmeans_sparse": dict(bits=4, prune=0.6),
                    "linear_packed": dict(bits=3, method="linear", group_size=16,
                                          entropy=None),
                    "kmeans_dense": dict(bits=2)}.items():
        path = d / f"{key}.qpk"
        qpack.compress(model, min_numel=0, **kw).save(path)
        paths[key] = path
    return paths


def _header(raw: bytes) -> tuple[dict, int]:
    return split_file(raw)[0], data_start(raw)


def _touch_all(path, verify):
    m = qpack.load(path, verify=verify)
    for name in m:
        m[name].dequantize()


def _with_header(raw: bytes, header: dict) -> bytes:
    """Re-serialize a header with a valid CRC (to test checks beyond the checksum)."""
    return build_file(header, split_file(raw)[1])


@pytest.mark.parametrize("flavour", ["kmeans_sparse", "linear_packed", "kmeans_dense"])
def test_truncated_at_every_section_boundary(tmp_path, saved, flavour):
    raw = saved[flavour].read_bytes()
    header, start = _header(raw)
    cuts = {0, 1, 7, 8, 16, 23, 24, 30, start - 1, start, len(raw) - 1}
    for t in header["tensors"].values():
        for d in t["sections"].values():
            cuts.update({start + d["offset"], start + d["offset"] + d["length"] // 2,
                         start + d["offset"] + d["length"] - 1})
    bad = tmp_path / "t.qpk"
    for cut in sorted(c for c in cuts if 0 <= c < len(raw)):
        bad.write_bytes(raw[:cut])
        with pytest.raises(qpack.FormatError):
            _touch_all(bad, verify=False)


@pytest.mark.parametrize("flavour", ["kmeans_sparse", "linear_packed", "kmeans_dense"])
def test_flipped_byte_in_every_section(tmp_path, saved, flavour):
    raw = saved[flavour].read_bytes()
    header, start = _header(raw)
    bad = tmp_path / "f.qpk"
    for name, t in header["tensors"].items():
        for role, d in t["sections"].items():
            if d["length"] == 0:
                continue
            for pos in {0, d["length"] // 2, d["length"] - 1}:
                b = bytearray(raw)
                b[start + d["offset"] + pos] ^= 0x5A
                bad.write_bytes(bytes(b))
                with pytest.raises(qpack.FormatError, match="checksum"):
                    qpack.load(bad, verify=True)
                m = qpack.load(bad)  # opening is fine; touching the section is not
                with pytest.raises(qpack.FormatError, match=f"{role}"):
                    m[name].dequantize()


def test_flipped_byte_in_header(tmp_path, saved):
    raw = saved["kmeans_dense"].read_bytes()
    n = int.from_bytes(raw[12:16], "little")
    start = int.from_bytes(raw[24:32], "little")  # version 4: the header is last
    assert start + n == len(raw)
    bad = tmp_path / "h.qpk"
    # the header's first, middle and last bytes, its length, CRC, offset and a reserved byte
    for pos in (start, start + n // 2, start + n - 1, 12, 16, 24, 28, 40):
        b = bytearray(raw)
        b[pos] ^= 0x01
        bad.write_bytes(bytes(b))
        with pytest.raises(qpack.FormatError):
            qpack.load(bad)


def test_not_a_qpk_file(tmp_path):
    for content in (b"", b"hello world, this is not a model file at all",
                    b"\x89QPK\r\n\x1a\n" + b"\xff" * 40):
        p = tmp_path / "x.qpk"
        p.write_bytes(content)
        with pytest.raises(qpack.FormatError):
            qpack.load(p)
    with pytest.raises(qpack.FormatError, match="no such file"):
        qpack.load(tmp_path / "missing.qpk")
    with pytest.raises(qpack.FormatError, match="directory"):
        qpack.load(tmp_path)


def test_unknown_version(tmp_path, saved):
    raw = bytearray(saved["kmeans_dense"].read_bytes())
    raw[8:12] = (99).to_bytes(4, "little")
    p = tmp_path / "v.qpk"
    p.write_bytes(bytes(raw))
    with pytest.raises(qpack.FormatError, match="version 99"):
        qpack.load(p)


def _mutated(saved, tmp_path, mutate):
    raw = saved["kmeans_sparse"].read_bytes()
    header, _ = _header(raw)
    mutate(header)
    p = tmp_path / "mut.qpk"
    p.write_bytes(_with_header(raw, header))
    return p


def _first(header, method):
    return next(t for t in header["tensors"].values() if t["method"] == method)


@pytest.mark.parametrize("mutate, match", [
    (lambda h: _first(h, "kmeans").update(method="lzma"), "'method' must be"),
    (lambda h: _first(h, "kmeans").update(bits=12), "bits"),
    (lambda h: _first(h, "kmeans").update(shape=[10**9, 10**9]), "elements|match"),
    (lambda h: _first(h, "kmeans").update(shape=[-1, 4]), "shape"),
    (lambda h: _first(h, "kmeans").update(dtype="object"), "dtype"),
    (lambda h: _first(h, "raw").update(dtype="complex128"), "dtype"),
    (lambda h: _first(h, "raw")["sections"]["data"].update(shape=[10**6]), "section 'data'"),
    (lambda h: _first(h, "kmeans")["sections"]["codebook"].update(offset=10**12),
     "truncated|ends"),
    (lambda h: _first(h, "kmeans")["sections"]["codebook"].update(offset=3), "aligned"),
    (lambda h: _first(h, "kmeans")["sections"]["codebook"].update(length=-5), "length"),
    (lambda h: _first(h, "kmeans")["sections"].pop("codebook"), "codebook"),
    (lambda h: _first(h, "kmeans")["sections"]["codes"].update(count=10**9), "codes|nnz"),
    (lambda h: _first(h, "kmeans").update(layout="diagonal"), "layout"),
    (lambda h: h.update(tensors=[]), "tensors"),
    (lambda h: h.update(metadata={"a": 1}), "metadata"),
])
def test_hostile_headers(saved, tmp_path, mutate, match):
    p = _mutated(saved, tmp_path, mutate)
    with pytest.raises(qpack.FormatError, match=match):
        _touch_all(p, verify=True)


def test_random_garbage_after_valid_preamble(tmp_path):
    rng = np.random.default_rng(0)
    for _ in range(20):
        head = rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        pre = struct.pack("<8sIIII", MAGIC, 2, len(head), zlib.crc32(head), 1)
        p = tmp_path / "g.qpk"
        p.write_bytes(pre + head + rng.bytes(100))
        with pytest.raises(qpack.FormatError):
            _touch_all(p, verify=True)


# -- version 4: the header is the file's last H bytes, at the offset stored at byte 24 ----

def _v4_cases(raw: bytes) -> dict[str, bytes]:
    n = int.from_bytes(raw[12:16], "little")
    start = int.from_bytes(raw[24:32], "little")

    def with_offset(p: int) -> bytes:
        return raw[:24] + p.to_bytes(8, "little") + raw[32:]

    reserved = bytearray(raw)
    reserved[50] = 1
    return {"trailing bytes": raw + b"\0",
            "truncated": raw[:-1],
            "offset before the data": with_offset(8),
            "offset past the end": with_offset(len(raw)),
            "offset inside the header": with_offset(start + 1),
            "offset far away": with_offset(1 << 62),
            "reserved byte": bytes(reserved),
            "too short": raw[:40],
            "header only": raw[:64] + raw[start:start + n]}


@pytest.mark.parametrize("case", list(_v4_cases(b"\0" * 200)))
def test_version4_header_placement_is_checked(tmp_path, saved, case):
    raw = saved["kmeans_dense"].read_bytes()
    assert int.from_bytes(raw[8:12], "little") == 4
    bad = tmp_path / "v4.qpk"
    bad.write_bytes(_v4_cases(raw)[case])
    with pytest.raises(qpack.FormatError):
        qpack.load(bad, verify=True)


def test_version4_section_may_not_reach_into_the_header(tmp_path, saved):
    raw = saved["kmeans_dense"].read_bytes()
    header, data = split_file(raw)
    desc = max((d for t in header["tensors"].values() for d in t["sections"].values()),
               key=lambda d: d["offset"] + d["length"])
    # the data region ends where the header starts: a section past it overlaps the header
    desc["offset"] += 64
    bad = tmp_path / "v4.qpk"
    bad.write_bytes(build_file(header, data, version=4))
    with pytest.raises(qpack.FormatError, match="truncated"):
        qpack.load(bad)
