"""Atheris harness: the .qpk loader and everything a loaded tensor can be asked to do.

Each input is a whole .qpk file (version 1 to 4, header plain or zlib-compressed). libFuzzer
cannot forge CRC-32s, so the harness first repairs them (``repair``): the header CRC always,
and any section whose stored integer crc32 does not match its bytes (by rewriting the
header JSON). A crash file therefore reproduces through this harness; ``python
fuzz/fuzz_qpk.py --repair CRASH OUT.qpk`` writes the repaired file, which reproduces with
plain ``qpack.load``.

Expected: FormatError from load/dequantize; also ValueError from matmul/take_rows on shapes
they refuse. Anything else, MemoryError under the 2 GiB cap included, or a failed check that
the results agree with ``dequantize()`` is a finding.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import zlib

import _common
import numpy as np
import qpk_layout

qpack = _common.import_qpack()
FormatError = qpack.FormatError

FLOATING = ("float16", "float32", "float64", "bfloat16")
X_MAX = 1 << 16  # widest x the harness allocates; wider tensors get a 1-element x (refused)
PATH = os.path.join(tempfile.gettempdir(), f"qpack-fuzz-{os.getpid()}.qpk")


def _fixed_header(head: bytes, data: bytes) -> bytes | None:
    """Header JSON with every mismatching integer section crc32 set right; None if unchanged."""
    try:
        header = json.loads(head.decode("utf-8"))
        tensors = header.get("tensors") if isinstance(header, dict) else None
        changed = False
        for spec in tensors.values() if isinstance(tensors, dict) else ():
            sections = spec.get("sections") if isinstance(spec, dict) else None
            for desc in sections.values() if isinstance(sections, dict) else ():
                fields = [desc.get(k) for k in ("offset", "length", "crc32")] \
                    if isinstance(desc, dict) else [None]
                # Only integers are fixed: a missing or mistyped crc32 must still be rejected.
                if all(type(v) is int and v >= 0 for v in fields) \
                        and fields[0] + fields[1] <= len(data):
                    crc = zlib.crc32(data[fields[0]:fields[0] + fields[1]])
                    changed |= desc["crc32"] != crc
                    desc["crc32"] = crc
        return json.dumps(header).encode() if changed else None
    except (ValueError, RecursionError):  # unreadable here too: qpack gets the bytes as they are
        return None


def _inflate(stored: bytes) -> bytes | None:
    """A zlib header inflated (at most 64 MiB, as qpack allows), or None if it is not one."""
    inflater = zlib.decompressobj()
    try:
        head = inflater.decompress(stored, 64 << 20)
    except zlib.error:
        return None
    ok = inflater.eof and not inflater.unused_data and not inflater.unconsumed_tail
    return head if ok else None


def repair(data: bytes) -> bytes:
    """``data`` with its header CRC, and section CRCs where possible, made to match.

    A zlib-compressed header (flag bit 0) is inflated to fix section CRCs and compressed
    again; one that does not inflate keeps its bytes (and gets its CRC fixed). A file whose
    preamble lengths or header offset do not fit its size is returned unchanged.
    """
    parts = qpk_layout.split(data)
    if parts is None:
        return data
    zlib_header = parts.flags & qpk_layout.ZLIB_FLAG
    head = _inflate(parts.header) if zlib_header else parts.header
    new = None if head is None else _fixed_header(head, parts.data)
    if new is not None:
        parts = parts._replace(header=zlib.compress(new, 9) if zlib_header else new)
    return qpk_layout.join(parts)


def check_close(what: str, got: np.ndarray, want: np.ndarray, scale: np.ndarray) -> None:
    """Assert ``got`` matches ``want`` to 1% of ``scale`` (elementwise plus overall).

    Only finite, moderate references are compared: float32 kernels legitimately overflow or
    round differently from the dtype cast of dequantize() on extreme weights.
    """
    if not (np.isfinite(want).all() and np.isfinite(scale).all()) or np.any(scale > 1e30):
        return
    tol = 1e-2 * (scale + scale.max(initial=0.0)) + 1e-30
    bad = ~(np.abs(got.astype(np.float64) - want) <= tol)
    assert not bad.any(), f"{what} disagrees with dequantize(): {got[bad][:4]} vs {want[bad][:4]}"


def touch(t) -> None:
    """Decode one tensor every way the API offers and check the answers agree."""
    w = _common.attempt((FormatError,), t.dequantize)
    assert w is None or (w.shape == t.shape and w.dtype == t.dtype), "dequantize shape/dtype"
    if t.spec["dtype"] not in FLOATING or len(t.shape) < 2:
        return
    rows, cols = t.shape[0], math.prod(t.shape[1:])
    ref = None if w is None else w.reshape(rows, cols).astype(np.float64)
    # x depends only on the shape, so a replayed input computes exactly the same thing
    x = np.random.default_rng(cols).uniform(-1, 1, cols if cols <= X_MAX else 1)
    x = x.astype(np.float32)
    y = _common.attempt((ValueError,), t.matmul, x)
    if y is not None:
        assert cols <= X_MAX and y.shape == (rows,), f"matmul gave {y.shape} for x {x.shape}"
        if ref is not None:
            check_close("matmul", y, ref @ x, np.abs(ref) @ np.abs(x.astype(np.float64)))
    if rows:
        r = _common.attempt((ValueError,), t.take_rows, [0])
        if r is not None:
            assert r.shape == (1,) + t.shape[1:], f"take_rows([0]) gave shape {r.shape}"
            if ref is not None:
                check_close("take_rows", r.reshape(cols), ref[0], np.abs(ref[0]))


def test_one_input(data: bytes) -> None:
    """Write the repaired input to PATH, load it lazily and touch every tensor, then load it
    again with verify=True."""
    with open(PATH, "wb") as fh:
        fh.write(repair(data))
    try:
        model = _common.attempt((FormatError,), qpack.load, PATH)
        for name in model or ():
            touch(model[name])
        _common.attempt((FormatError,), qpack.load, PATH, verify=True)
    finally:
        os.unlink(PATH)  # mappings of it stay valid; nothing is left when libFuzzer exits


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--repair":
        with open(sys.argv[2], "rb") as src, open(sys.argv[3], "wb") as dst:
            dst.write(repair(src.read()))
    else:
        _common.fuzz(test_one_input)
