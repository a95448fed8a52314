"""Batched int8 products (batches 16 and 64) on the variant selected by QPACK_ISA, against
torch's dynamic int8 Linear and numpy float32 in the same run.

4096x4096 (--n), cold weights: every method cycles through distinct weight matrices
(qpack and torch 16, numpy float32 4: 64 MB each, so any 2 exceed the 32 MB L3), the
median of every call after one warm-up pass. One thread: thread CPU time (what the
calling thread used: the shared 2-core machine's other jobs do not count); two threads:
wall time. The qpack row shows the default policy's choice (kernel path, or tiles) and,
with --kernel-too, the packed kernels forced (path="kernel"); "x torch" and "x numpy" are
their times over qpack's (above 1: qpack is faster).

Not a bench_*.py (run_all.py's interface): a standalone timing script, run once per
build to compare builds, e.g. before/after a kernel change:
    QPACK_ISA=avx2 PYTHONPATH=<tree> python benchmarks/time_int8_gemm.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_matmul import torch_linears  # noqa: E402

import qpack  # noqa: E402
from qpack.dispatch import get_policy  # noqa: E402
from qpack.matmul import CodebookWeights, LinearWeights  # noqa: E402

ENCODINGS = ("linear 4-bit g128", "linear 3-bit g128", "codebook 5-bit", "codebook 8-bit",
             "linear 4-bit g32")
CONFIGS = ((16, 1), (64, 1), (16, 2), (64, 2))


def make(rng, name: str, n: int):
    """LinearWeights / CodebookWeights of random codes for a name like "linear 3-bit g128"."""
    parts = name.split()
    bits = int(parts[1].split("-")[0])
    codes = rng.integers(0, 1 << bits, size=(n, n), dtype=np.uint8)
    packed = qpack.pack(codes, bits)
    if parts[0] == "codebook":
        cb = (np.sort(rng.standard_normal(1 << bits)) * 0.02).astype(np.float32)
        return CodebookWeights.from_packed(packed, bits, cb, (n, n))
    group = int(parts[2][1:])
    scales = (rng.random((n, n // group)) * 0.02 + 0.001).astype(np.float16)
    zeros = rng.integers(0, 1 << bits, size=(n, n // group), dtype=np.uint8)
    return LinearWeights.from_packed(packed, bits, scales, zeros, group, (n, n))


def median_ms(calls, threads: int) -> float:
    """Median ms of every call in `calls` after one warm-up pass over them."""
    clock = time.thread_time_ns if threads == 1 else time.perf_counter_ns
    for c in calls:
        c()
    times = []
    for _ in range(3):
        for c in calls:
            t0 = clock()
            c()
            times.append((clock() - t0) / 1e6)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--copies", type=int, default=16)
    ap.add_argument("--kernel-too", action="store_true")
    args = ap.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    n = args.n
    rng = np.random.default_rng(0)
    print(f"qpack {qpack.__file__}: {qpack.kernel_info()}")
    xs = {b: rng.standard_normal((b, n)).astype(np.float32) for b in (16, 64)}
    # peers first, on the same activations: numpy float32 and torch dynamic int8
    w32 = [rng.standard_normal((n, n)).astype(np.float32) * 0.02 for _ in range(4)]
    lin8 = [torch_linears(torch, w32[i % 4])[1] for i in range(args.copies)]
    peers = {}
    for batch, threads in CONFIGS:
        x, xt = xs[batch], torch.from_numpy(xs[batch])
        with threadpool_limits(limits=threads, user_api="blas"):
            peers[("numpy", batch, threads)] = median_ms([lambda w=w, x=x: x @ w.T for w in w32],
                                                         threads)
        torch.set_num_threads(threads)
        with torch.inference_mode():
            peers[("torch", batch, threads)] = median_ms([lambda m=m, xt=xt: m(xt) for m in lin8],
                                                         threads)
        time.sleep(0.3)  # let BLAS / torch workers stop spinning
    del w32, lin8
    print("| weights | batch | threads | path | qpack int8 ms | kernel ms | torch int8 ms |"
          " numpy f32 ms | x torch | x numpy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ENCODINGS:
        ws = [make(rng, name, n) for _ in range(args.copies)]
        for batch, threads in CONFIGS:
            x = xs[batch]
            out = np.empty((batch, n), np.float32)
            qpack.set_num_threads(threads)
            plan = get_policy().dense_plan(ws[0], batch, True)
            path = ws[0].kernel_paths(batch)["int8"] if plan.path == "kernel" else "tiles"
            with threadpool_limits(limits=threads, user_api="blas"):
                ms = median_ms([lambda w=w, x=x, out=out: w.matmul(x, "int8", out=out)
                                for w in ws], threads)
                kms = (median_ms([lambda w=w, x=x, out=out: w.matmul(x, "int8", out=out,
                                                                     path="kernel")
                                  for w in ws], threads) if args.kernel_too else float("nan"))
            t, npy = peers[("torch", batch, threads)], peers[("numpy", batch, threads)]
            print(f"| {name} | {batch} | {threads} | {path} | {ms:.2f} | {kms:.2f} | {t:.2f} |"
                  f" {npy:.2f} | {t / ms:.2f} | {npy / ms:.2f} |", flush=True)
            time.sleep(0.3)
        del ws
    qpack.set_num_threads(None)


if __name__ == "__main__":
    main()
