"""Write the seed corpus: fuzz/corpus/{qpk,huffman,sparse}/ (deterministic: fixed seeds).

Usage: ``python fuzz/make_corpus.py``. Each folder is emptied and refilled, so the corpus is
exactly what this script makes. With atheris installed, every seed is then run through its
harness once, so a seed that the harness would reject or report cannot be committed.
"""

from __future__ import annotations

import os
import sys
import tempfile
import zlib

import numpy as np
import qpk_layout

import qpack

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "corpus")
FIXTURES = os.path.join(HERE, os.pardir, "tests", "data")
V1_FIXTURES = ("kmeans2_prune90", "kmeans4_prune50_huffman")  # the two smallest, ~6 KB each
# format-2 and -3 files (2: raw zero-points, symmetric ones included; float32 codebooks;
# 3: packed zero-points), ~3-6 KB each
OLD_FIXTURES = ("kmeans2_prune90", "linear4_g64_sym")


class Provided:
    """Builds input for atheris.FuzzedDataProvider, which reads integers from the end of the
    input (the first byte it reads is the most significant) and bytes from the front."""

    def __init__(self):
        self.front = bytearray()
        self.back = bytearray()  # integer bytes in the order the provider reads them

    def int(self, value: int, low: int, high: int) -> Provided:
        """Append what ``ConsumeIntInRange(low, high)`` reads back as ``value``."""
        assert low <= value <= high
        self.back += (value - low).to_bytes(((high - low).bit_length() + 7) // 8, "big")
        return self

    def data(self) -> bytes:
        """The finished input."""
        return bytes(self.front) + bytes(reversed(self.back))


def qpk_seeds(rng) -> dict[str, bytes]:
    """Tiny .qpk files, one per storage method/layout the loader has to handle."""
    def w(*shape, dtype=np.float32):
        return rng.standard_normal(shape).astype(dtype)

    v3_rng = np.random.default_rng(3)
    raw = {"emb": w(6, 4), "half": w(3, 2, dtype=np.float16), "scalar": np.float64(2.5),
           "ids": np.arange(5, dtype=np.int32), "flag": np.array([True, False]),
           "empty": np.zeros((0, 8), np.float32)}
    cases = {
        "raw": (raw, {"min_numel": 10**9}),
        # Huffman-coded codes; pruned 30%, so dense with a zero code.
        "kmeans_dense_huffman": ({"fc.weight": w(64, 96), "fc.bias": w(64)},
                                 {"bits": 4, "prune": 0.3, "min_numel": 0}),
        "kmeans_dense_conv": ({"conv.weight": w(6, 3, 3, 3)},
                              {"bits": 4, "per_channel": True, "entropy": None,
                               "min_numel": 0}),
        "kmeans_sparse": ({"fc.weight": w(24, 32)},
                          {"bits": 4, "prune": 0.7, "min_numel": 0, "entropy": None}),
        # Huffman-coded gaps and codes of a float16 tensor.
        "kmeans_sparse_huffman": ({"fc.weight": w(64, 128, dtype=np.float16)},
                                  {"bits": 2, "prune": 0.9, "min_numel": 0}),
        "linear_group": ({"w": w(12, 40)}, {"method": "linear", "bits": 4, "group_size": 8,
                                            "entropy": None, "min_numel": 0}),
        "linear_row_sym": ({"w": rng.laplace(size=(48, 64))},  # float64, Huffman codes
                           {"method": "linear", "bits": 6, "group_size": -1,
                            "symmetric": True, "min_numel": 0}),
        "linear_sparse": ({"w": w(8, 30)}, {"method": "linear", "bits": 8, "prune": 0.5,
                                            "min_numel": 0, "entropy": None}),
        # format 3: zero-points packed at the code width, and none for a symmetric tensor
        # (their own generator, so that the seeds drawn after these stay as they were)
        "linear_packed_zeros": ({"w": v3_rng.standard_normal((32, 256)).astype(np.float32)},
                                {"method": "linear", "bits": 3, "group_size": 16,
                                 "entropy": None, "min_numel": 0}),
        "linear_group_sym": ({"w": v3_rng.standard_normal((16, 64)).astype(np.float32)},
                             {"method": "linear", "bits": 4, "group_size": 16,
                              "symmetric": True, "entropy": None, "min_numel": 0}),
    }
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (tensors, kwargs) in cases.items():
            path = os.path.join(tmp, f"{name}.qpk")
            qpack.compress(tensors, **kwargs).save(path)
            with open(path, "rb") as fh:
                out[f"{name}.qpk"] = data = fh.read()
            if qpk_layout.split(data).flags & qpk_layout.ZLIB_FLAG:
                out[f"{name}.plain.qpk"] = plain_header(data)
    for name in V1_FIXTURES:  # version-1 files, which qpack keeps reading
        with open(os.path.join(FIXTURES, f"v0.1.0_{name}.qpk"), "rb") as fh:
            out[f"v1_{name}.qpk"] = fh.read()
    for version in (2, 3):  # and version-2 and -3 ones (qpack itself now writes version 4)
        for name in OLD_FIXTURES:
            with open(os.path.join(FIXTURES, f"format{version}_{name}.qpk"), "rb") as fh:
                out[f"v{version}_{name}.qpk"] = fh.read()
    return out


def plain_header(data: bytes) -> bytes:
    """The same .qpk with its zlib-compressed header stored as plain JSON (flags 0), so
    that mutations reach the JSON text itself rather than only break the zlib stream."""
    parts = qpk_layout.split(data)
    return qpk_layout.join(parts._replace(header=zlib.decompress(parts.header),
                                          flags=parts.flags & ~qpk_layout.ZLIB_FLAG))


def huffman_seeds(rng) -> dict[str, bytes]:
    """Encoded streams, each followed by the harness's trailer (max_count mode, buffer kind)."""
    streams = {
        "empty": (np.zeros(0, np.uint8), None),
        "single": (np.full(50, 7, np.uint8), 16),
        "skewed": (np.minimum(rng.geometric(0.4, 300) - 1, 15), 16),
        "four_streams": (rng.integers(0, 256, 5000), 256),  # count >= 4096: 4 streams
        "wide_alphabet": (rng.integers(0, 300, 1000), 65536),  # uint16 output
        "short_codes": (rng.integers(0, 4, 200), 4),
    }
    out = {}
    trailers = [(0, None, 0), (1, 0xFFFF, 1), (2, 2**64 - 1, 2), (1, None, 0), (0, None, 2),
                (2, None, 1)]
    for (name, (symbols, alphabet)), (mode, bound, kind) in zip(streams.items(), trailers,
                                                                  strict=True):
        p = Provided()
        p.front += qpack.huffman_encode(symbols, alphabet_size=alphabet)
        p.int(mode, 0, 2)
        if mode == 1:  # a bound equal to the count when none is given: the tightest legal
            p.int(len(symbols) if bound is None else bound, 0, 0xFFFF)
        elif mode == 2:
            p.int(len(symbols) if bound is None else bound, 0, 2**64 - 1)
        out[f"{name}.bin"] = p.int(kind, 0, 2).data()
    return out


def sparse_input(shape_kind, rows, cols, p, gaps, row_nsym, gap_dtype=0, nsym_dtype=0,
                 clip=0) -> bytes:
    """The fuzz_sparse input that parses to these arguments (layout: fuzz_sparse.py)."""
    wide = shape_kind == 8
    s = Provided().int(shape_kind, 0, 15).int(rows, 0, 4 if wide else 32)
    s.int(cols, 0, 2**32 if wide else 512).int(p, 0, 9)
    s.int(gap_dtype, 0, 7).int(nsym_dtype, 0, 7).int(clip, 0, 1)
    for n in row_nsym:
        s.int(int(n), -1, 254)
    s.front += bytes(np.asarray(gaps, dtype=np.uint8))
    return s.data()


def sparse_seeds(rng) -> dict[str, bytes]:
    """Valid sparse indexes from masks of several densities, p, dtypes and shape kinds."""
    masks = [((8, 40), 0.3, 2, 0, 0, 0), ((16, 100), 0.05, None, 0, 0, 0),
             ((4, 16), 0.7, 1, 0, 0, 1), ((0, 10), 0.5, 3, 0, 0, 0), ((5, 0), 0.5, 8, 0, 0, 0),
             ((3, 300), 0.01, 8, 0, 6, 2), ((6, 50), 0.2, 4, 9, 4, 3), ((7, 33), 0.5, 5, 10, 0, 4)]
    out = {}
    for i, (shape, density, p, kind, gd, nd) in enumerate(masks):
        index = qpack.encode_sparse_index(rng.random(shape) < density, p=p)
        clip = int(gd in (3, 4, 6))  # signed GAP_DTYPES: clipping keeps symbols 128..255
        out[f"mask{i}_p{index.p}.bin"] = sparse_input(kind, *shape, index.p, index.gaps,
                                                      index.row_nsym, gd, nd, clip)
    # The example of docs/FORMAT.md 3.1: p = 2, kept columns 1, 5, 6, 13 of 16.
    out["format_example.bin"] = sparse_input(0, 1, 16, 2, [1, 3, 0, 0, 3, 3, 0], [7])
    # Wide: 2**31 - 1 columns (the most supported), one weight at column 2553 of row 0.
    out["wide.bin"] = sparse_input(8, 2, 2**31 - 1, 8, [255] * 10 + [3], [11, 0])
    return out


def check_with_harnesses(corpus: dict[str, dict[str, bytes]]) -> None:
    """Run every seed once through its harness (atheris needed, else skipped)."""
    try:
        sys.path.insert(0, HERE)
        import fuzz_huffman
        import fuzz_qpk
        import fuzz_sparse
    except ImportError as exc:
        print(f"seeds not checked by the harnesses ({exc}); pip install atheris to check")
        return
    for name, data in corpus["sparse"].items():  # every sparse seed is a valid index
        assert qpack.SparseIndex.from_arrays(*fuzz_sparse.parse(data)) is not None, name
    harness = {"qpk": fuzz_qpk, "huffman": fuzz_huffman, "sparse": fuzz_sparse}
    for kind, seeds in corpus.items():
        for data in seeds.values():
            harness[kind].test_one_input(data)
    print("every seed passes its harness")


def main() -> None:
    """Regenerate the three corpus folders and report their sizes."""
    qpack.set_num_threads(1)  # the same bytes whatever the machine
    rng = np.random.default_rng(20240601)
    corpus = {"qpk": qpk_seeds(rng), "huffman": huffman_seeds(rng), "sparse": sparse_seeds(rng)}
    for kind, seeds in corpus.items():
        folder = os.path.join(ROOT, kind)
        os.makedirs(folder, exist_ok=True)
        for old in os.listdir(folder):
            os.unlink(os.path.join(folder, old))
        for name, data in seeds.items():
            with open(os.path.join(folder, name), "wb") as fh:
                fh.write(data)
        print(f"{kind}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")
    check_with_harnesses(corpus)


if __name__ == "__main__":
    main()
