"""Hostile and damaged .qpk headers: every one is a FormatError, quickly, with no large
allocation (the defects found by fuzzing, as a table, plus a type sweep over every key)."""

from __future__ import annotations

import copy
import json
import resource
import zlib

import numpy as np
import pytest
from model_cases import build_file, small_model, split_file

import qpack

# a hostile file may not make a reader allocate more than this (the models here are KB)
ALLOCATION_CAP = 1 << 30


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Valid files to mutate: sparse kmeans, grouped linear, and one with an empty tensor
    written at the same offset as the next tensor's first section."""
    d = tmp_path_factory.mktemp("hostile")
    model = small_model()
    out = {}
    for key, kw in {"kmeans_sparse": dict(bits=4, prune=0.9),
                    "linear_group": dict(bits=4, method="linear", group_size=16,
                                         entropy=None)}.items():
        out[key] = d / f"{key}.qpk"
        qpack.compress(model, min_numel=0, **kw).save(out[key])
    empty_first = {"empty": np.zeros((0, 4), np.float32),
                   "w": np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)}
    out["empty_first"] = d / "empty_first.qpk"
    qpack.compress(empty_first, bits=4, min_numel=0).save(out["empty_first"])
    return out


split = split_file


def write(tmp_path, header_or_bytes, data: bytes, name="bad.qpk"):
    p = tmp_path / name
    p.write_bytes(build_file(header_or_bytes, data))
    return p


def touch_everything(path) -> None:
    """Everything a user can do with a loaded file: verify, decode, multiply, take rows."""
    m = qpack.load(path, verify=True)
    for t in m.values():
        t.dequantize()
        if t.method != "raw" or (t.dtype.kind == "f" and len(t.shape) >= 2):
            rows, cols = t.shape[0], int(np.prod(t.shape[1:]))
            t.matmul(np.ones((2, cols), np.float32))
            if rows and len(t.shape) >= 2:
                t.take_rows([0, rows - 1])


@pytest.fixture()
def capped_memory():
    """Run with the address space capped, so a huge allocation fails loudly."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = 0
    with open("/proc/self/statm") as fh:
        used = int(fh.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + ALLOCATION_CAP, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def tensor(header, method, layout=None):
    return next(t for t in header["tensors"].values() if t["method"] == method
                and (layout is None or t.get("layout") == layout))


def _extra_role_on_codes(h):
    t = tensor(h, "kmeans", "sparse")
    t["sections"]["padding"] = dict(t["sections"]["codes"])


def _second_tensor_on_same_bytes(h):
    t = tensor(h, "kmeans", "sparse")
    h["tensors"]["copy.weight"] = copy.deepcopy(t)


def _repeat_codes_under_known_role(h):
    # a tensor whose scales section is placed on top of its codes
    t = tensor(h, "linear")
    t["sections"]["scales"]["offset"] = t["sections"]["codes"]["offset"]


def _drop(key):
    def mutate(h):
        tensor(h, "linear").pop(key)
    return mutate


HOSTILE = [
    # A1: unknown roles and overlapping sections (each byte counts once)
    ("kmeans_sparse", _extra_role_on_codes, "unknown: 'padding'"),
    ("kmeans_sparse", _second_tensor_on_same_bytes, "overlaps"),
    ("linear_group", _repeat_codes_under_known_role, "overlaps"),
    # A2: zero-size dimensions cannot declare huge extents
    ("kmeans_sparse", lambda h: h["tensors"].update(big={
        "method": "raw", "shape": [2**30, 0], "dtype": "float32",
        "sections": {"data": {"codec": "raw", "dtype": "float32", "shape": [2**30, 0],
                              "offset": 0, "length": 0, "crc32": 0}}}), "extent"),
    ("kmeans_sparse", lambda h: h["tensors"].update(big={
        "method": "raw", "shape": [2**40, 0], "dtype": "float32",
        "sections": {"data": {"codec": "raw", "dtype": "float32", "shape": [2**40, 0],
                              "offset": 0, "length": 0, "crc32": 0}}}), "extent"),
    ("linear_group", lambda h: tensor(h, "linear").update(shape=[2**30, 0]),
     "extent|elements|needs"),
    # A5: missing keys and wrong JSON types
    ("linear_group", _drop("group_size"), "scales"),
    ("linear_group", _drop("layout"), "layout"),
    ("linear_group", _drop("bits"), "bits"),
    ("linear_group", lambda h: tensor(h, "linear").update(dtype=["float32"]), "dtype"),
    ("linear_group", lambda h: tensor(h, "linear").update(group_size="16"), "group_size"),
    ("linear_group", lambda h: tensor(h, "linear").update(symmetric="no"), "symmetric"),
    ("linear_group", lambda h: tensor(h, "linear").update(stats=[1]), "stats"),
    ("linear_group", lambda h: tensor(h, "linear")["stats"].update(sparsity="x"), "stats"),
    ("linear_group", lambda h: tensor(h, "linear").update(sections=[]), "sections"),
    ("linear_group", lambda h: tensor(h, "linear")["sections"]["scales"].update(
        shape="1,1"), "shape"),
    ("linear_group", lambda h: tensor(h, "linear")["sections"]["codes"].update(
        codec=3), "codec"),
    ("kmeans_sparse", lambda h: tensor(h, "kmeans").update(per_channel=1), "per_channel"),
    ("kmeans_sparse", lambda h: tensor(h, "kmeans", "sparse").update(zero_code=None),
     "zero_code"),
    ("kmeans_sparse", lambda h: tensor(h, "kmeans").update(zero_code=99), "zero_code"),
    # found by fuzz/fuzz_qpk.py: pruned weights decoded to codebook[zero_code] != 0 while
    # matmul took them as 0.0
    ("kmeans_sparse", lambda h: tensor(h, "kmeans", "sparse").update(zero_code=4),
     "zero_code=4 is not 0.0"),
    ("kmeans_sparse", lambda h: tensor(h, "kmeans", "sparse").update(nnz=-1), "nnz"),
    ("kmeans_sparse", lambda h: tensor(h, "kmeans")["sections"]["codebook"].update(
        offset=64.0), "offset"),
    ("kmeans_sparse", lambda h: tensor(h, "raw").update(method="linear"), "layout"),
    ("kmeans_sparse", lambda h: h.update(metadata=["a"]), "metadata"),
    ("kmeans_sparse", lambda h: h.update(source_metadata={"a": 1}), "source_metadata"),
    # A6: integers beyond 64 bits are refused by range, not by an OverflowError
    ("kmeans_sparse", lambda h: tensor(h, "kmeans").update(shape=[10**30, 1]), "shape"),
    ("kmeans_sparse", lambda h: tensor(h, "kmeans")["sections"]["codebook"].update(
        length=2**70), "length"),
]


@pytest.mark.parametrize("flavour, mutate, match", HOSTILE,
                         ids=[f"{i}-{m}" for i, (_, _, m) in enumerate(HOSTILE)])
def test_hostile_header(files, tmp_path, capped_memory, flavour, mutate, match):
    header, data = split(files[flavour].read_bytes())
    mutate(header)
    p = write(tmp_path, header, data)
    with pytest.raises(qpack.FormatError, match=match):
        touch_everything(p)


RAW_HEADERS = [
    # A4: deep nesting is a FormatError, not a RecursionError
    (b'{"format": "qpk", "tensors": {}, "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
     "nested"),
    # A6: a 5000-digit integer, and NaN/Infinity literals
    (b'{"format": "qpk", "tensors": {}, "n": ' + b"7" * 5000 + b"}", "JSON"),
    (b'{"format": "qpk", "tensors": {}, "n": NaN}', "NaN"),
    (b'{"format": "qpk", "tensors": {}, "n": -Infinity}', "Infinity"),
    # A7: duplicate keys anywhere
    (b'{"format": "qpk", "tensors": {"a": {}, "a": {}}}', "duplicate key 'a'"),
    (b'{"format": "qpk", "format": "qpk", "tensors": {}}', "duplicate key"),
    # A8: a lone surrogate cannot be written back
    (b'{"format": "qpk", "tensors": {}, "metadata": {"\\ud800": "x"}}', "surrogate"),
    (b'{"format": "qpk", "tensors": {"\\udfff": {}}}', "surrogate"),
]


@pytest.mark.parametrize("head, match", RAW_HEADERS,
                         ids=[f"{i}-{m}" for i, (_, m) in enumerate(RAW_HEADERS)])
def test_hostile_header_bytes(tmp_path, head, match):
    with pytest.raises(qpack.FormatError, match=match):
        qpack.load(write(tmp_path, head, b""))


def test_duplicate_section_role(files, tmp_path):
    header, data = split(files["kmeans_sparse"].read_bytes())
    t = tensor(header, "kmeans", "sparse")
    text = json.dumps(header)
    codes = json.dumps({"codes": t["sections"]["codes"]})[1:-1]
    assert text.count(codes) == 1
    head = text.replace(codes, codes + ", " + codes).encode()
    with pytest.raises(qpack.FormatError, match="duplicate key 'codes'"):
        qpack.load(write(tmp_path, head, data))


def test_each_byte_counts_once_against_the_element_limit(tmp_path, capped_memory):
    """The fuzzer's 72 KB -> 10 GB file: one real section listed under many extra roles
    let a sparse tensor declare 2**30 elements, which dequantize() then allocated."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((256, 1024)).astype(np.float32)
    src = tmp_path / "sparse.qpk"
    qpack.compress({"w": w}, bits=4, prune=0.95).save(src)
    header, data = split(src.read_bytes())
    t = header["tensors"]["w"]
    assert t["layout"] == "sparse"
    biggest = max(t["sections"], key=lambda r: t["sections"][r]["length"])
    t["shape"] = [256, 1 << 22]  # the kept positions stay valid in wider rows
    copies = (256 << 22) // (1024 * t["sections"][biggest]["length"]) + 1
    for i in range(copies):
        t["sections"][f"copy{i}"] = dict(t["sections"][biggest])
    with pytest.raises(qpack.FormatError, match="unknown"):
        touch_everything(write(tmp_path, header, data))


def test_verify_checks_a_section_sharing_an_empty_sections_offset(files, tmp_path):
    """A3: the empty tensor's section sits at the offset of the next tensor's first one;
    checking it must not mark that one as checked."""
    raw = files["empty_first"].read_bytes()
    header, data = split(raw)
    empty = header["tensors"]["empty"]["sections"]["data"]
    first_w = min(header["tensors"]["w"]["sections"].values(), key=lambda d: d["offset"])
    assert empty["offset"] == first_w["offset"] and empty["length"] == 0
    cb = header["tensors"]["w"]["sections"]["codebook"]
    bad = bytearray(data)
    bad[cb["offset"]] ^= 0x40
    p = write(tmp_path, header, bytes(bad))
    with pytest.raises(qpack.FormatError, match="checksum"):
        qpack.load(p, verify=True)
    m = qpack.load(p)
    m["empty"].dequantize()
    with pytest.raises(qpack.FormatError, match="checksum"):
        m["w"].dequantize()


@pytest.mark.parametrize("role, flavour", [("codebook", "kmeans_sparse"),
                                           ("scales", "linear_group")])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_parameters(files, tmp_path, role, flavour, value):
    """A6: NaN/Inf in a codebook or in scales fails verify=True and every decode, with the
    CRC made valid (so only the value check can catch it)."""
    header, data = split(files[flavour].read_bytes())
    t = tensor(header, "kmeans" if role == "codebook" else "linear")
    desc = t["sections"][role]
    dt = np.dtype(desc["dtype"]).newbyteorder("<")
    bad = bytearray(data)
    bad[desc["offset"]:desc["offset"] + dt.itemsize] = np.array([value], dt).tobytes()
    desc["crc32"] = zlib.crc32(bytes(bad[desc["offset"]:desc["offset"] + desc["length"]]))
    p = write(tmp_path, header, bytes(bad))
    with pytest.raises(qpack.FormatError, match="NaN or Inf"):
        qpack.load(p, verify=True)
    m = qpack.load(p)
    name = next(n for n, s in header["tensors"].items() if s is t)
    with pytest.raises(qpack.FormatError, match="NaN or Inf"):
        m[name].dequantize()
    with pytest.raises(qpack.FormatError, match="NaN or Inf"):
        m[name].matmul(np.ones(int(np.prod(m[name].shape[1:])), np.float32))


# -- a type sweep: every key of every entry, replaced by every JSON type ----------------

ODD_VALUES = [None, True, -1, 0, 3, 2**40, 2**64, 1.5, "x", [], [1], {}, {"a": 1}]


def _keys(header):
    """(path, value) of every key inside the tensor entries, sections included."""
    for name, t in header["tensors"].items():
        for key in t:
            yield ("tensors", name, key)
            if key in ("sections", "stats") and isinstance(t[key], dict):
                for sub in t[key]:
                    yield ("tensors", name, key, sub)
                    if key == "sections":
                        for field in t[key][sub]:
                            yield ("tensors", name, key, sub, field)


@pytest.mark.parametrize("flavour", ["kmeans_sparse", "linear_group"])
def test_type_sweep_never_raises_anything_but_format_error(files, tmp_path, capped_memory,
                                                           flavour):
    header, data = split(files[flavour].read_bytes())
    paths = list(_keys(header))
    # one tensor of each kind is enough: every entry shares the same validator
    kinds: dict = {}
    for path in paths:
        kind = (header["tensors"][path[1]]["method"],
                header["tensors"][path[1]].get("layout"))
        kinds.setdefault(kind, path[1])
    paths = [p for p in paths if p[1] in kinds.values()]
    for path in paths:
        for value in ODD_VALUES:
            h = copy.deepcopy(header)
            node = h
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            p = write(tmp_path, h, data)
            try:
                touch_everything(p)
            except qpack.FormatError:
                pass
