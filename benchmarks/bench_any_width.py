"""Any-width dense kernels: 4096x4096, batch 1 and 64, float and int8 activations.

Run once per thread count (the env var also sizes numpy's BLAS pool), e.g.
    OMP_NUM_THREADS=1 QPACK_ISA=avx2 python benchmarks/bench_any_width.py
Cold weights: each timed call uses the next of 8 distinct copies of the matrix (48-64 MB
in all, more than the L3). Median of REPS calls after one warm-up call per copy; numpy
float32 x @ W.T is measured in the same run as the peer. Prints a markdown table (ms).
"""

import os
import sys
import time

import numpy as np

import qpack
from qpack.matmul import CodebookWeights, LinearWeights

N = 4096
COPIES = 8
REPS = int(os.environ.get("REPS", "15"))
CASES = [("linear 3-bit g128", "lin", 3, 128), ("linear 5-bit g128", "lin", 5, 128),
         ("linear 6-bit g128", "lin", 6, 128), ("linear 4-bit g32", "lin", 4, 32),
         ("linear 4-bit g64", "lin", 4, 64), ("codebook 5-bit", "cb", 5, None),
         ("codebook 8-bit", "cb", 8, None)]


def build(rng, kind, bits, group):
    codes = rng.integers(0, 1 << bits, size=(N, N), dtype=np.uint8)
    packed = qpack.pack(codes, bits)
    if kind == "lin":
        shape = (N, N // group)
        s = (rng.random(shape) * 0.05 + 0.001).astype(np.float16)
        z = rng.integers(0, 1 << bits, size=shape, dtype=np.uint8)
        return LinearWeights.from_packed(packed, bits, s, z, group, (N, N))
    cb = rng.standard_normal(1 << bits).astype(np.float32)
    return CodebookWeights.from_packed(packed, bits, cb, (N, N))


def median_ms(fn, ws, x):
    for w in ws:
        fn(w, x)
    ts = []
    for i in range(REPS):
        w = ws[i % len(ws)]
        t0 = time.perf_counter()
        fn(w, x)
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


def main():
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    qpack.set_num_threads(threads)
    rng = np.random.default_rng(0)
    only = sys.argv[1:]
    xs = {b: rng.standard_normal((b, N)).astype(np.float32) for b in (1, 64)}
    dense = [rng.standard_normal((N, N)).astype(np.float32) for _ in range(4)]
    peer = {b: median_ms(lambda W, x: x @ W.T, dense, xs[b]) for b in xs}
    del dense
    print(f"isa {qpack.kernel_info()['isa']}, threads {threads}, "
          f"numpy float32 b1 {peer[1]:.2f} ms, b64 {peer[64]:.2f} ms")
    print("| weights | path f/i8 | b1 float | b1 int8 | b64 float | b64 int8 |")
    print("|---|---|---|---|---|---|")
    for name, kind, bits, group in CASES:
        if only and not any(o in name for o in only):
            continue
        ws = [build(rng, kind, bits, group) for _ in range(COPIES)]
        p = ws[0].kernel_paths()
        row = []
        for b in (1, 64):
            row.append(median_ms(lambda w, x: w.matmul(x), ws, xs[b]))
            row.append(median_ms(lambda w, x: w.matmul(x, act_quant="int8"), ws, xs[b]))
        print(f"| {name} | {p['float']}/{p['int8']} | " + " | ".join(f"{t:.2f}" for t in row)
              + " |", flush=True)
        del ws


if __name__ == "__main__":
    main()
