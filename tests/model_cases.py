"""Small models shared by the model, format and CLI tests (deterministic)."""

from __future__ import annotations

import numpy as np


def small_model(seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny transformer-like dict: matrices of odd sizes, a bias, a norm and an int buffer."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.02, size=(48, 70)).astype(np.float32)
    w1[rng.random(w1.shape) < 0.002] *= 30  # a few outliers
    return {
        "embed.weight": rng.normal(0, 0.05, size=(100, 32)).astype(np.float32),
        "fc1.weight": w1,
        "fc1.bias": rng.normal(0, 0.01, size=48).astype(np.float32),
        "fc2.weight": rng.normal(0, 0.02, size=(17, 48)).astype(np.float16),
        "conv.weight": rng.normal(0, 0.1, size=(8, 3, 5, 5)).astype(np.float64),
        "norm.weight": np.ones(32, np.float32),
        "step": np.array(7, dtype=np.int64),
        "position_ids": np.arange(12, dtype=np.int32).reshape(1, 12),
    }


# -- reading and building .qpk bytes by hand (an independent reader of FORMAT.md 4.1) ----

def split_file(raw: bytes) -> tuple[dict, bytes]:
    """(header dict, data region) of .qpk bytes: version 1 (plain JSON), 2-3 (zlib header
    after the preamble) or 4 (header at the offset stored at byte 24, data from 64)."""
    import json
    import zlib

    version = int.from_bytes(raw[8:12], "little")
    n = int.from_bytes(raw[12:16], "little")
    flags = int.from_bytes(raw[20:24], "little")
    if version >= 4:
        start = int.from_bytes(raw[24:32], "little")
        head, data = raw[start:start + n], raw[64:start]
    else:
        head, data = raw[24:24 + n], raw[-(-(24 + n) // 64) * 64:]
    if version >= 2 and flags & 1:
        head = zlib.decompress(head)
    return json.loads(head), data


def data_start(raw: bytes) -> int:
    """File offset of the data region: 64 in version 4, align64(24 + H) before."""
    if int.from_bytes(raw[8:12], "little") >= 4:
        return 64
    return -(-(24 + int.from_bytes(raw[12:16], "little")) // 64) * 64


def build_file(header, data: bytes, compress: bool = True, version: int = 3) -> bytes:
    """.qpk bytes of format ``version`` (2 or 3: the same container; 4: header at the end)
    with this header (a dict, or exact JSON bytes) and data."""
    import json
    import struct
    import zlib

    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    if compress:
        head = zlib.compress(head)
    if version >= 4:
        pre = struct.pack("<8sIIIIQ", b"\x89QPK\r\n\x1a\n", version, len(head),
                          zlib.crc32(head), 1 if compress else 0, 64 + len(data))
        return pre + b"\0" * 32 + data + head
    start = -(-(24 + len(head)) // 64) * 64
    pre = struct.pack("<8sIIII", b"\x89QPK\r\n\x1a\n", version, len(head), zlib.crc32(head),
                      1 if compress else 0)
    return pre + head + b"\0" * (start - 24 - len(head)) + data
