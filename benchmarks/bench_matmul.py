"""Benchmark of qpack's packed matrix products y = x @ W_hat.T against peers.

For each shape (n_out x n_in), batch and thread count: qpack linear 4-bit g128, linear
2-bit g128, linear 8-bit per channel, codebook 4-bit, and 90%-pruned sparse + codebook
4-bit, each with float32 activations and with int8 activations; beside them, in the same
run, numpy float32 ``x @ W.T``, a plain-numpy unpack -> dequantize -> matmul of the 4-bit
g128 weights, and (when torch is installed) torch float32 nn.Linear and torch's dynamic
int8 quantized Linear.

Cold weights: before every timed call the benchmark reads a buffer of 4x the L3 size
(one load per cache line, not timed), so each call streams its weights from memory, as a
layer does in a model far larger than the cache. (Rotating through >4xL3 of weight copies
gives the same effect, but needs ~500 copies of the small layer and minutes of set-up.)
Times are medians over several cold calls after a warm-up call.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import optional_peer  # noqa: E402

import qpack  # noqa: E402
from qpack.matmul import CodebookWeights, LinearWeights, SparseWeights  # noqa: E402

GROUP = 128
# Seconds of idle time before each method, so other libraries' spinning threads go to sleep.
IDLE_BETWEEN_METHODS = 0.25


def l3_bytes() -> int:
    """L3 cache size from lscpu (32 MiB if it cannot be read)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        m = re.search(r"L3 cache:\s*([\d.]+)\s*([KMG])i?B", out)
        if m:
            return int(float(m.group(1)) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)])
    except (OSError, subprocess.CalledProcessError):
        pass
    return 32 << 20


class CacheEvictor:
    """Reads 4x L3 bytes, one load per 64-byte line, to push everything else out of cache."""

    def __init__(self, l3: int):
        self._buf = np.ones(4 * l3 // 8, dtype=np.int64)

    def __call__(self) -> None:
        self._buf[::8].sum()


def cold_median_ms(call, evict, repeat: int) -> tuple[float, float]:
    """(median, best) ms of call() over ``repeat`` runs, each after evict() (not timed),
    after one warm-up call (which also faults in lazily allocated pages)."""
    call()
    times = []
    for _ in range(repeat):
        evict()
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3


class BlasThreads:
    """Limit numpy's BLAS to n threads (threadpoolctl when available)."""

    def __init__(self):
        try:
            from threadpoolctl import ThreadpoolController
            self._ctl = ThreadpoolController()
        except ImportError:
            self._ctl = None

    def __call__(self, n: int):
        import contextlib
        if self._ctl is None:
            return contextlib.nullcontext()
        return self._ctl.limit(limits=n, user_api="blas")


def make_weights(rng, n_out, n_in):
    """Random encodings of one matrix: dict name -> factory returning a fresh copy."""
    codes4 = rng.integers(0, 16, size=(n_out, n_in), dtype=np.uint8)
    packed4 = qpack.pack(codes4, 4)
    ng = -(-n_in // GROUP)
    s4 = (rng.random((n_out, ng)) * 0.02 + 0.001).astype(np.float16)
    z4 = rng.integers(0, 16, size=(n_out, ng), dtype=np.uint8)
    packed2 = qpack.pack(codes4 & 3, 2)
    z2 = (z4 & 3).copy()
    packed8 = qpack.pack(rng.integers(0, 256, size=(n_out, n_in), dtype=np.uint8), 8)
    s8 = (rng.random((n_out, 1)) * 0.001 + 1e-4).astype(np.float16)
    z8 = rng.integers(100, 156, size=(n_out, 1), dtype=np.uint8)
    cb = np.sort(rng.standard_normal(16).astype(np.float32)) * 0.02
    mask = rng.random((n_out, n_in)) < 0.10
    row_ptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int64)
    cols = np.nonzero(mask)[1].astype(np.int32)
    sp_codes = codes4[mask]
    shape = (n_out, n_in)
    return {
        "linear 4-bit g128": lambda: LinearWeights.from_packed(
            packed4.copy(), 4, s4.copy(), z4.copy(), GROUP, shape),
        "linear 2-bit g128": lambda: LinearWeights.from_packed(
            packed2.copy(), 2, s4.copy(), z2.copy(), GROUP, shape),
        "linear 8-bit channel": lambda: LinearWeights.from_packed(
            packed8.copy(), 8, s8.copy(), z8.copy(), -1, shape),
        "codebook 4-bit": lambda: CodebookWeights.from_packed(packed4.copy(), 4, cb.copy(), shape),
        "sparse 90% + codebook 4-bit": lambda: SparseWeights.from_csr(
            shape, row_ptr.copy(), cols.copy(), sp_codes.copy(), codebook=cb.copy()),
    }, (packed4, s4, z4)


def torch_linears(torch, w32: np.ndarray):
    """(float32 nn.Linear, torch's dynamic int8 quantized Linear) holding the weights w32
    (n_out, n_in), bias-free: the torch peers of the packed products."""
    n_out, n_in = w32.shape
    lin = torch.nn.Linear(n_in, n_out, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w32))
    lin8 = torch.ao.quantization.quantize_dynamic(
        torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
    return lin, lin8


def numpy_dequant_matmul(packed, scales, zeros, n_in, x):
    """Plain-numpy baseline: unpack 4-bit codes, dequantize per group of 128, x @ W.T."""
    codes = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.uint8)
    codes[:, 0::2] = packed & 15
    codes[:, 1::2] = packed >> 4
    codes = codes[:, :n_in].reshape(packed.shape[0], -1, GROUP).astype(np.float32)
    w = (codes - zeros.astype(np.float32)[:, :, None]) * scales.astype(np.float32)[:, :, None]
    return x @ w.reshape(packed.shape[0], n_in).T


def measure_all(methods, x, xt, n_in, repeat, torch, evict) -> dict:
    """Cold-weight median ms of every method on activations x: {(method, activations): ms}."""
    times = {}
    for name, (obj, _) in methods.items():
        # OpenBLAS workers busy-wait ~0.1 s after a call; on 2 cores they would steal a
        # core from whatever is measured next (seen: 4x slower qpack right after numpy).
        time.sleep(IDLE_BETWEEN_METHODS)
        if name == "numpy float32":
            times[(name, "float32")] = cold_median_ms(lambda o=obj: x @ o.T, evict, repeat)
        elif name.startswith("numpy unpack"):
            times[(name, "float32")] = cold_median_ms(
                lambda o=obj: numpy_dequant_matmul(*o, n_in, x), evict, repeat)
        elif name.startswith("torch"):
            with torch.inference_mode():
                key = (name, "float32" if "float" in name else "int8 dyn")
                times[key] = cold_median_ms(lambda o=obj: o(xt), evict, repeat)
        else:
            for mode in (None, "int8"):
                times[(name, mode or "float32")] = cold_median_ms(
                    lambda o=obj, mode=mode: o.matmul(x, act_quant=mode), evict, repeat)
    return times



def run(quick: bool) -> dict:
    rng = np.random.default_rng(0)
    l3 = l3_bytes()
    torch = optional_peer("torch")
    blas = BlasThreads()
    evict = CacheEvictor(l3)
    if quick:
        plan = [((1536, 384), (1, 8, 64), (1, 2), None),
                ((4096, 4096), (1, 64), (2,), ("linear 4-bit g128", "codebook 4-bit"))]
        repeat = 5
    else:
        plan = [((1536, 384), (1, 8, 64), (1, 2), None),
                ((4096, 4096), (1, 8, 64), (1, 2), None),
                ((11008, 4096), (1, 8, 64), (1, 2), None)]
        repeat = 9
    rows = []
    notes = [f"cold weights: a {4 * l3 >> 20} MiB buffer (4x L3) is read before every timed "
             f"call; ms = median of {repeat} cold calls after a warm-up",
             "ratios > 1 mean the row's method is faster than the peer",
             "GB/s = bytes of weights held in memory (codes + scales/codebook, or float32/int8 "
             "for the peers) / time",
             "numpy and torch are limited to the same thread count (threadpoolctl, "
             "torch.set_num_threads)",
             f"{IDLE_BETWEEN_METHODS} s idle before each method: thread pools of the previous "
             "one (OpenBLAS spins ~0.1 s after a call) must not compete with the next",
             "ratios and GB/s use the medians; 'best' is the fastest cold call, shown because "
             "on a shared 2-core machine a second thread is often descheduled for 5-40 ms, "
             "which hits every 2-thread figure (all methods) at random"]
    for (n_out, n_in), batches, thread_counts, only in plan:
        factories, (packed4, s4, z4) = make_weights(rng, n_out, n_in)
        if only:
            factories = {k: v for k, v in factories.items() if k in only}
        w32 = (rng.standard_normal((n_out, n_in)) * 0.02).astype(np.float32)
        methods = {"numpy float32": (w32, w32.nbytes)}  # name -> (weights, bytes held)
        for name, make in factories.items():
            obj = make()
            methods[name] = (obj, obj.nbytes)
        methods["numpy unpack+dequant+matmul 4-bit"] = (
            (packed4, s4, z4), packed4.nbytes + s4.nbytes + z4.nbytes)
        if torch is not None:
            lin, lin8 = torch_linears(torch, w32)
            methods["torch float32 Linear"] = (lin, w32.nbytes)
            methods["torch dynamic int8 Linear"] = (lin8, n_out * n_in + 8 * n_out)
        for threads in thread_counts:
            qpack.set_num_threads(threads)
            if torch is not None:
                torch.set_num_threads(threads)
            for batch in batches:
                x = rng.standard_normal((batch, n_in)).astype(np.float32)
                xt = torch.from_numpy(x) if torch is not None else None
                with blas(threads):
                    times = measure_all(methods, x, xt, n_in, repeat, torch, evict)
                base = times[("numpy float32", "float32")][0]
                t8 = times.get(("torch dynamic int8 Linear", "int8 dyn"), (None,))[0]
                for (name, mode), (ms, best) in times.items():
                    nbytes = methods[name][1]
                    rows.append([f"{n_out}x{n_in}", batch, threads, name, mode, round(ms, 4),
                                 round(best, 4), round(base / ms, 2),
                                 round(t8 / ms, 2) if t8 else "n/a",
                                 round(nbytes / (ms * 1e-3) / 1e9, 1)])
                print(f"  {n_out}x{n_in} batch {batch} threads {threads}: done", flush=True)
        del methods
    qpack.set_num_threads(None)
    return {
        "title": "Packed matmul y = x @ W_hat.T (cold weights)",
        "columns": ["shape", "batch", "threads", "method", "activations", "ms (median)",
                    "ms (best)", "x vs numpy f32", "x vs torch int8", "weight GB/s"],
        "rows": rows,
        "notes": notes,
    }


if __name__ == "__main__":
    import json

    res = run(quick="--quick" in sys.argv)
    print(json.dumps(res["rows"][:5]))
