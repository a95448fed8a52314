"""fuzz/qpk_layout.py, which the fuzz harness uses to repair CRCs after a mutation: splitting
and joining must keep every format version loadable, whatever the new header length."""

from __future__ import annotations

import json
import os
import sys
import zlib

import numpy as np
import pytest

import qpack

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
sys.path.insert(0, os.path.join(ROOT, "fuzz"))
import qpk_layout  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")
FILES = ["v0.1.0_kmeans2_prune90.qpk"] + [f"format{v}_kmeans4_prune50_huffman.qpk"
                                          for v in (2, 3, 4)]


def _header_json(parts) -> dict:
    head = parts.header
    return json.loads(zlib.decompress(head) if parts.flags & qpk_layout.ZLIB_FLAG else head)


@pytest.mark.parametrize("name", FILES)
def test_split_join_round_trip_and_header_edit(name, tmp_path):
    """join(split(f)) == f; and a header grown by a metadata entry (so its length and, for
    version 4, the header offset change) still loads, with the same tensors."""
    with open(os.path.join(DATA, name), "rb") as fh:
        blob = fh.read()
    parts = qpk_layout.split(blob)
    assert parts is not None and parts.version == (1 if name.startswith("v0") else
                                                   int(name[6]))
    assert qpk_layout.join(parts) == blob
    header = _header_json(parts)
    header.setdefault("metadata", {})["fuzz"] = "x" * 300
    head = json.dumps(header).encode()
    if parts.flags & qpk_layout.ZLIB_FLAG:
        head = zlib.compress(head)
    edited = tmp_path / name
    edited.write_bytes(qpk_layout.join(parts._replace(header=head)))
    want, got = qpack.load(os.path.join(DATA, name)), qpack.load(edited, verify=True)
    assert got.metadata["fuzz"] == "x" * 300
    for key in want:
        np.testing.assert_array_equal(got[key].dequantize(), want[key].dequantize())


def test_split_refuses_what_does_not_fit():
    """A preamble whose header length or (version 4) offset reaches past the file: None."""
    with open(os.path.join(DATA, FILES[-1]), "rb") as fh:
        blob = fh.read()
    assert qpk_layout.split(blob[:20]) is None
    assert qpk_layout.split(blob[:-1]) is None  # the header now overruns the end
    bad_offset = blob[:24] + (len(blob)).to_bytes(8, "little") + blob[32:]
    assert qpk_layout.split(bad_offset) is None
    parts = qpk_layout.split(blob + b"junk")  # the header is found; the junk is kept
    assert parts.trailing == b"junk" and qpk_layout.join(parts) == blob + b"junk"
    with open(os.path.join(DATA, FILES[0]), "rb") as fh:
        v1 = fh.read()
    assert qpk_layout.split(v1[:100]) is None
