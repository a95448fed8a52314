"""Whole-model compression on a BERT-base-shaped model: speed, ratio, save/load, memory.

Model: 12 layers x (4 x 768x768 + 768x3072 + 3072x768) plus a 30522x768 embedding (108M
float32 weights, normal std 0.02 with 0.1% outliers at 20-50x std), and per-layer biases
and norms. Quick mode: 2 layers of hidden size 256 and a 5000x256 embedding.

Peers in the same run: zstd level 19 and zlib level 9 on the float32 bytes (zstd-19 and
zlib-9 are slow, so they run on a sample of the weights; the ratio is the sample's).
"""

from __future__ import annotations

import os
import tempfile
import tracemalloc
import zlib

import numpy as np
from harness import median_time, optional_peer

import qpack


def make_model(quick: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """BERT-base-like float32 weights with 0.1% outliers."""
    rng = np.random.default_rng(seed)
    layers, hidden, vocab = (2, 256, 5000) if quick else (12, 768, 30522)
    ffn = 4 * hidden

    def weight(shape):
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= 0.02
        n = max(1, w.size // 1000)
        idx = rng.integers(0, w.size, n)
        w.reshape(-1)[idx] = (rng.uniform(20, 50, n) * rng.choice([-0.02, 0.02], n)).astype(
            np.float32)
        return w

    model = {"embeddings.word_embeddings.weight": weight((vocab, hidden))}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value", "output"):
            model[p + f"attention.{name}.weight"] = weight((hidden, hidden))
            model[p + f"attention.{name}.bias"] = np.zeros(hidden, np.float32)
        model[p + "intermediate.weight"] = weight((ffn, hidden))
        model[p + "output.weight"] = weight((hidden, ffn))
        model[p + "norm.weight"] = np.ones(hidden, np.float32)
    return model


CONFIGS = [
    ("kmeans", 4, 0.5), ("kmeans", 4, 0.0), ("kmeans", 2, 0.0), ("kmeans", 8, 0.0),
    ("kmeans", 2, 0.5), ("kmeans", 8, 0.5),
    ("linear", 4, 0.0), ("linear", 4, 0.5), ("linear", 2, 0.0), ("linear", 8, 0.0),
    ("linear", 2, 0.5), ("linear", 8, 0.5),
]
QUICK_CONFIGS = [("kmeans", 4, 0.5), ("linear", 4, 0.0)]


def _kwargs(method: str, bits: int, prune: float) -> dict:
    kw = {"bits": bits, "prune": prune, "method": method}
    if method == "linear":
        kw["group_size"] = 128
    return kw


def _measure(model, method, bits, prune, path, reps, probe, n_weights, original) -> list:
    """One table row: compress, save, load and first-matmul-ready figures for a setting."""
    kw = _kwargs(method, bits, prune)
    t_comp = median_time(lambda: qpack.compress(model, **kw), repeat=reps, warmup=0)
    cm = qpack.compress(model, **kw)
    t_save = median_time(lambda: cm.save(path), repeat=3, warmup=0)
    size = os.path.getsize(path)
    t_load = median_time(lambda: qpack.load(path), repeat=7, warmup=1)

    def first_ready():
        m = qpack.load(path)
        m[probe].kernel_weights()

    t_first = median_time(first_ready, repeat=5, warmup=1)
    rel = np.median([cm[n].stats["rel_error"] for n in cm if cm[n].method != "raw"])
    return [f"{method} {bits}-bit" + (f" prune {prune}" if prune else ""),
            round(size / 2**20, 2), round(original / size, 2),
            round(n_weights / t_comp / 1e6, 1), round(t_comp, 2),
            round(t_save * 1e3, 1), round(t_load * 1e3, 2), round(t_first * 1e3, 2),
            f"{rel:.4f}"]


def run(quick: bool) -> dict:
    """Compress the model at every setting; return the table of ratios and speeds."""
    model = make_model(quick)
    n_weights = sum(a.size for n, a in model.items() if a.ndim >= 2)
    largest = max(a.nbytes for a in model.values())
    original = sum(a.nbytes for a in model.values())
    probe = "encoder.layer.0.attention.query.weight"
    rows = []
    notes = []
    tmp = tempfile.mkdtemp(prefix="qpack-bench-")
    repeat = 1 if quick else 3
    try:
        for method, bits, prune in (QUICK_CONFIGS if quick else CONFIGS):
            reps = repeat if (method, bits, prune) == ("kmeans", 4, 0.5) else 1
            path = os.path.join(tmp, f"{method}{bits}_{prune}.qpk")
            rows.append(_measure(model, method, bits, prune, path, reps, probe, n_weights,
                                 original))
        # peak memory of the key configuration, beyond the input itself
        tracemalloc.start()
        qpack.compress(model, **_kwargs("kmeans", 4, 0.5))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        notes.append(f"peak traced memory of compress (kmeans 4-bit, prune 0.5): "
                     f"{peak / 2**20:.0f} MiB = {peak / largest:.2f}x the largest tensor "
                     f"({largest / 2**20:.0f} MiB); input itself {original / 2**20:.0f} MiB "
                     "not counted")
    finally:
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)

    # lossless peers on the float32 bytes (a sample: zstd-19 runs at a few MB/s)
    sample = np.concatenate([model[n].reshape(-1) for n in list(model)[:8]
                             if model[n].ndim >= 2])[: (1 << 20) if quick else (8 << 20)]
    raw = sample.tobytes()
    t_zlib = median_time(lambda: zlib.compress(raw, 9), repeat=1, warmup=0)
    zl = len(zlib.compress(raw, 9))
    rows.append(["zlib-9 on float32 (sample)", "-", round(len(raw) / zl, 3),
                 round(sample.size / t_zlib / 1e6, 2), "-", "-", "-", "-", "0"])
    zstd = optional_peer("zstandard")
    if zstd is not None:
        cctx = zstd.ZstdCompressor(level=19)
        t_z = median_time(lambda: cctx.compress(raw), repeat=1, warmup=0)
        zs = len(cctx.compress(raw))
        rows.append(["zstd-19 on float32 (sample)", "-", round(len(raw) / zs, 3),
                     round(sample.size / t_z / 1e6, 2), "-", "-", "-", "-", "0"])
    notes.append(f"model: {n_weights / 1e6:.1f} M weights in matrices, {original / 2**20:.0f} "
                 f"MiB float32; zlib/zstd on a {sample.nbytes / 2**20:.0f} MiB sample")
    notes.append("compress time: median of 3 runs for kmeans 4-bit prune 0.5, one run for "
                 "the others; load: median of 7 (memory map + header validation, nothing "
                 "decoded); first ready: load plus building the matmul form of one "
                 "768x768 tensor (Huffman decode + pack when entropy-coded)")
    notes.append("rel error: median over quantized tensors of ||W - W_hat||_F / ||W||_F")
    return {
        "title": "Whole-model compression (BERT-base-shaped, synthetic weights)",
        "columns": ["setting", "file MiB", "ratio", "M weights/s", "compress s", "save ms",
                    "load ms", "first ready ms", "rel error"],
        "rows": rows,
        "notes": notes,
    }
