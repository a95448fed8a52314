"""Huffman coding of quantization codes: qpack vs bitarray, zstd-19 and zlib-9.

Symbols are drawn i.i.d. from the code histogram of a 50%-pruned Gaussian weight matrix
quantized with 1-D K-means to 2**b - 1 levels plus a zero code (b = 2, 4, 8). The
K-means is a small Lloyd iteration written here, so the benchmark does not depend on the
other qpack modules. 16M symbols (quick: 1M). Speeds are medians after a warm-up; every
speed also appears as a ratio to zstd level 19 measured in the same run. Peers store one
symbol per byte; bitarray uses its C Huffman (huffman_code + encode/decode with a
decodetree).
"""

from __future__ import annotations

import sys
import zlib

import numpy as np

import qpack

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from harness import median_time, optional_peer  # noqa: E402


def kmeans_code_histogram(bits: int, sample: int = 200_000, seed: int = 0) -> np.ndarray:
    """Histogram of the 2**bits codes: code 0 = pruned, 1.. = K-means levels of the rest."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(sample)
    kept = np.sort(w[np.abs(w) >= np.quantile(np.abs(w), 0.5)])
    k = (1 << bits) - 1
    centers = np.quantile(kept, (np.arange(k) + 0.5) / k)
    for _ in range(30):  # Lloyd iterations in 1-D: assign by midpoints, move to means
        edges = (centers[1:] + centers[:-1]) / 2
        assign = np.searchsorted(edges, kept)
        counts = np.bincount(assign, minlength=k)
        sums = np.bincount(assign, weights=kept, minlength=k)
        centers = np.where(counts > 0, sums / np.maximum(counts, 1), centers)
    counts = np.bincount(np.searchsorted((centers[1:] + centers[:-1]) / 2, kept), minlength=k)
    return np.concatenate([[sample - kept.size], counts]).astype(np.int64)


def draw(hist: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    cdf = np.cumsum(hist) / hist.sum()
    u = np.random.default_rng(seed).random(n)
    return np.minimum(np.searchsorted(cdf, u, side="right"), hist.size - 1).astype(np.uint8)


def entropy_bits(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / symbols.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def measure(name, encode, decode, n, repeat, warmup=1):
    blob = encode()
    t_enc = median_time(encode, repeat=repeat, warmup=warmup)
    t_dec = median_time(lambda: decode(blob), repeat=repeat, warmup=warmup)
    return name, 8 * len(blob) / n, n / t_enc / 1e6, n / t_dec / 1e6, blob


def run(quick: bool) -> dict:
    n = 1_000_000 if quick else 16_000_000
    fast_repeat = 5 if quick else 7
    slow_repeat = 1 if quick else 2
    bitarray = optional_peer("bitarray")
    zstd = optional_peer("zstandard")
    rows, notes = [], []
    for bits in (2, 4, 8):
        sym = draw(kmeans_code_histogram(bits), n, seed=bits)
        raw = sym.tobytes()
        h = entropy_bits(sym)
        label = f"{bits}-bit codes"
        results = []

        name, bps, enc, dec, blob = measure(
            "qpack huffman", lambda s=sym: qpack.huffman_encode(s), qpack.huffman_decode, n,
            fast_repeat)
        assert np.array_equal(qpack.huffman_decode(blob), sym)
        results.append((name, bps, enc, dec))

        if bitarray is not None:
            from bitarray.util import huffman_code

            freq = dict(enumerate(np.bincount(sym).tolist()))
            code = huffman_code({k: v for k, v in freq.items() if v})
            tree = bitarray.decodetree(code)
            sym_list = sym.tolist()

            def ba_encode(code=code, sym_list=sym_list):
                a = bitarray.bitarray(endian="little")
                a.encode(code, sym_list)
                return a

            # bitarray keeps a bit count; its size in bits is exact, so count len(a) bits.
            a = ba_encode()
            t_enc = median_time(ba_encode, repeat=slow_repeat, warmup=0)
            # bitarray 3 returns an iterator: materialize it, as qpack returns an array.
            t_dec = median_time(lambda a=a, tree=tree: list(a.decode(tree)),
                                repeat=slow_repeat, warmup=0)
            assert list(a.decode(tree)) == sym_list
            results.append(("bitarray huffman", len(a) / n, n / t_enc / 1e6, n / t_dec / 1e6))

        if zstd is not None:
            cctx = zstd.ZstdCompressor(level=19)
            dctx = zstd.ZstdDecompressor()
            blob = cctx.compress(raw)
            t_enc = median_time(lambda c=cctx, r=raw: c.compress(r), repeat=slow_repeat, warmup=0)
            t_dec = median_time(lambda d=dctx, b=blob: d.decompress(b), repeat=fast_repeat)
            results.append(("zstd -19", 8 * len(blob) / n, n / t_enc / 1e6, n / t_dec / 1e6))

        blob = zlib.compress(raw, 9)
        t_enc = median_time(lambda r=raw: zlib.compress(r, 9), repeat=slow_repeat, warmup=0)
        t_dec = median_time(lambda b=blob: zlib.decompress(b), repeat=fast_repeat)
        results.append(("zlib -9", 8 * len(blob) / n, n / t_enc / 1e6, n / t_dec / 1e6))

        ref = {r[0]: r for r in results}.get("zstd -19")
        rows.append([label, "Shannon entropy", round(h, 4), 1.0, "", "", "", ""])
        for name, bps, enc, dec in results:
            rows.append([label, name, round(bps, 4), round(bps / h, 4), round(enc, 1),
                         round(dec, 1),
                         round(enc / ref[2], 2) if ref else "",
                         round(dec / ref[3], 2) if ref else ""])
    notes.append(f"{n:,} symbols per histogram, drawn i.i.d.; one thread; medians of "
                 f"{fast_repeat} runs (qpack, decompression) or {slow_repeat} (bitarray, "
                 "compression at high levels) after a warm-up where affordable.")
    notes.append("bits/symbol counts the whole output (headers and tables included); "
                 "'x zstd' columns are speed ratios to zstd -19 in the same run.")
    return {
        "title": "Entropy coding of quantization codes (M symbols/s, bits/symbol)",
        "columns": ["histogram", "coder", "bits/symbol", "/ entropy", "encode M/s",
                    "decode M/s", "encode x zstd", "decode x zstd"],
        "rows": rows,
        "notes": notes,
    }


if __name__ == "__main__":
    from harness import markdown_table

    res = run(quick="--quick" in sys.argv)
    print(markdown_table(res["columns"], res["rows"]))
    for note in res["notes"]:
        print("-", note)
