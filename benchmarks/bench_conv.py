"""Benchmark of qpack.nn.PackedConv2d (NCHW float32 convolution from 4-bit packed weights).

Layers: LeNet-5's conv2 (50x20x5x5 on 20x12x12 inputs, no padding) and a ResNet-style
3x3 convolution of 64 -> 64 channels on 56x56 inputs (padding 1), each at batch 1 and 32,
with bias. qpack runs 4-bit K-means and 4-bit linear weights with groups of 32 inputs;
beside them, in the same run: torch.nn.functional.conv2d in float32 (when torch is
installed) and a plain-numpy float32 im2col + matmul (always).

Timing: medians after a warm-up call. On one thread the methods' calls are interleaved
round by round (background load on the shared machine then hits all alike); on two,
each method runs in blocks after an idle pause (so no library's spinning thread pool
steals a core from the next), forward then reverse order.
Weights are warm (a convolution's weights are small and reused across positions).
numpy's BLAS, torch and qpack are limited to the same thread count.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import sys
import time

import numpy as np
from numpy.lib.stride_tricks import as_strided

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import qpack  # noqa: E402
import qpack.conv as qconv  # noqa: E402
from qpack.nn import PackedConv2d  # noqa: E402

IDLE_BETWEEN_METHODS = 0.2
# (label, weight shape, input (C, H, W), padding)
LAYERS = [("LeNet-5 conv2 50x20x5x5, 20x12x12", (50, 20, 5, 5), (20, 12, 12), 0),
          ("3x3 conv 64->64, 64x56x56, pad 1", (64, 64, 3, 3), (64, 56, 56), 1)]
ENCODINGS = [("kmeans 4-bit", dict(bits=4, method="kmeans")),
             ("linear 4-bit g32", dict(bits=4, method="linear", group_size=32))]


# Measured while qpack.conv was written (same machine, same harness idea); kept here so
# the figures live next to the ones this benchmark re-measures.
HISTORY = [
    ["im2col in a Cython kernel, zero padding written in place (was np.pad + strided "
     "numpy copy); a plain 7.2 MB memcpy takes 1.0 ms here", "64->64 patches, b1", 1.37,
     1.04, "yes"],
    ["bias as one more weight column against a row of ones (was a pass over the output)",
     "64->64, b1", 5.59, 5.20, "yes"],
    ["", "LeNet, b32", 3.06, 2.99, ""],
    ["patch chunks of 2 MiB (was 4 MiB; 8 MiB: 4.64 / 178.9)", "64->64, b1", 4.40, 4.23,
     "yes"],
    ["", "64->64, b32", 162.6, 150.9, ""],
    ["2+ threads: 32 MiB chunks (2 MiB: one BLAS call per band, each waking a thread)",
     "64->64, b32, 2 threads", 2614.0, 656.0, "yes"],
    ["small images side by side in one product (was one product per image)",
     "LeNet, b32", 4.01, 4.06, "yes"],
    ["", "LeNet, b32, 2 threads", 752.0, 24.0, ""],
    ["2+ threads: large images side by side too", "64->64, b32, 2 threads", 784.0, 350.0,
     "yes"],
    ["whole W decoded with dequantize() on 1 thread (was take_rows)", "LeNet, b1 (kmeans)",
     0.267, 0.196, "1 thread"],
    ["", "LeNet, b1, 2 threads", 0.64, 7.4, "no: wakes OpenMP"],
    ["rows path (patch rows into the packed matmul) instead of columns", "64->64, b1", 5.0,
     12.8, "no"],
    ["", "256->256 3x3 on 7x7, b1", 2.65, 3.06, "no"],
    ["", "512->512 3x3 on 3x3 (1 position)", 5.12, 3.79, "yes, < 4 positions"],
    ["", "same, 80% pruned", 3.34, 1.12, "yes, < 4 positions"],
    ["im2col on 2 OpenMP threads (next to OpenBLAS's pool)", "64->64 patches, b1", 1.04,
     8.5, "no"],
    ["implicit GEMM, no im2col: 9 shifted-view products (stride 1 only)", "64->64, b1",
     5.55, 5.31, "no (<5%)"],
    ["", "3 products on a 3x partial im2col", 5.55, 5.09, "no (<9%)"],
]


def blas_threads(n: int):
    """Limit numpy's BLAS to n threads (threadpoolctl when installed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def numpy_conv(x: np.ndarray, w2: np.ndarray, bias: np.ndarray, kh: int, kw: int,
               pad: int) -> np.ndarray:
    """Plain-numpy float32 baseline: zero-pad, strided patch view, copy, one matmul."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    n, c, h, w = xp.shape
    oh, ow = h - kh + 1, w - kw + 1
    sn, sc, sy, sx = xp.strides
    patches = as_strided(xp, (n, c, kh, kw, oh, ow), (sn, sc, sy, sx, sy, sx))
    cols = np.ascontiguousarray(patches).reshape(n, c * kh * kw, oh * ow)
    y = np.matmul(w2, cols)
    y += bias[None, :, None]
    return y.reshape(n, -1, oh, ow)


def measure(methods: dict, repeat: int, passes: int, interleave: bool) -> dict:
    """{name: (median ms, best ms)} of ``repeat * passes`` calls per method.

    interleave=True (one thread): rounds that call every method once, in rotating order,
    so background load on the shared machine hits all methods alike. False (threads > 1):
    ``passes`` blocks of ``repeat`` calls per method, forward then reverse order, each
    after a warm-up call and an idle pause, so no library's spinning pool steals a core
    from the next one.
    """
    samples = {name: [] for name in methods}
    order = list(methods)
    if interleave:
        for fn in methods.values():
            fn()
        for r in range(repeat * passes):
            shift = r % len(order)
            for name in order[shift:] + order[:shift]:
                t0 = time.perf_counter()
                methods[name]()
                samples[name].append(time.perf_counter() - t0)
    else:
        for p in range(passes):
            for name in (order if p % 2 == 0 else order[::-1]):
                time.sleep(IDLE_BETWEEN_METHODS)
                fn = methods[name]
                fn()
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - t0)
    return {k: (statistics.median(v) * 1e3, min(v) * 1e3) for k, v in samples.items()}


@contextlib.contextmanager
def conv_setting(**values):
    """Temporarily change qpack.conv's tuning constants (for the ablation rows)."""
    old = {k: getattr(qconv, k) for k in values}
    for k, v in values.items():
        setattr(qconv, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(qconv, k, v)


def with_setting(fn, **values):
    def call():
        with conv_setting(**values):
            fn()
    return call


def make_methods(torch, layers: dict, x: np.ndarray, w_hat: np.ndarray, bias: np.ndarray,
                 wshape: tuple, pad: int, ablate: bool) -> dict:
    """name -> call for one input: the baselines, each qpack layer, and the ablations."""
    kh, kw = wshape[2:]
    methods = {"numpy": functools.partial(numpy_conv, x, w_hat, bias, kh, kw, pad)}
    if torch is not None:
        xt, wt = torch.from_numpy(x), torch.from_numpy(w_hat.reshape(wshape))
        bt = torch.from_numpy(bias)

        def torch_conv():
            with torch.inference_mode():
                return torch.nn.functional.conv2d(xt, wt, bt, padding=pad)
        methods["torch"] = torch_conv
    for enc, layer in layers.items():
        methods[enc] = functools.partial(layer, x)
    if ablate:
        base = functools.partial(layers["kmeans 4-bit"], x)
        methods["ablation: rows path"] = with_setting(base, ROWS_MAX_POSITIONS=1 << 40)
        methods["ablation: 8 MiB patch chunks"] = with_setting(base, PATCH_BYTES=8 << 20)
    return methods


def run(quick: bool) -> dict:
    try:
        import torch
    except ImportError:
        torch = None
        print("  [skip] torch is not installed (pip install torch==2.13.0): no torch rows; "
              "ratios are against the numpy im2col + matmul baseline")
    rng = np.random.default_rng(0)
    thread_counts = (1,) if quick else (1, 2)
    batches = (1, 8) if quick else (1, 32)
    repeat = {1: 3 if quick else 15}
    passes = 1 if quick else 2
    rows, ablation = [], []
    ref = "torch" if torch is not None else "numpy"
    for label, wshape, xshape, pad in LAYERS:
        out, cin, kh, kw = wshape
        w = rng.normal(0, 0.05, size=wshape).astype(np.float32)
        bias = rng.normal(0, 0.01, size=out).astype(np.float32)
        layers = {}
        for enc, kwargs in ENCODINGS:
            t = qpack.compress({"w": w}, min_numel=0, entropy=None, **kwargs)["w"]
            layers[enc] = PackedConv2d(t, bias=bias, padding=pad)
        w_hat = layers["kmeans 4-bit"].tensor.dequantize().reshape(out, -1)
        for threads in thread_counts:
            qpack.set_num_threads(threads)
            if torch is not None:
                torch.set_num_threads(threads)
            for batch in batches:
                x = rng.standard_normal((batch,) + xshape).astype(np.float32)
                methods = make_methods(torch, layers, x, w_hat, bias, wshape, pad,
                                       ablate=batch == 1 and threads == 1)
                reps = repeat.get(batch, 3 if quick else 5)
                with blas_threads(threads):
                    times = measure(methods, reps, passes, interleave=threads == 1)
                peer = times[ref][0]
                row = [label, batch, threads,
                       round(times["torch"][0], 3) if torch is not None else "n/a",
                       round(times["numpy"][0], 3)]
                for enc, _ in ENCODINGS:
                    ms, best = times[enc]
                    row += [round(ms, 3), round(best, 3), round(ms / peer, 2)]
                rows.append(row)
                for name, (ms, best) in times.items():
                    if name.startswith("ablation"):
                        ablation.append([label, name[len("ablation: "):], round(ms, 3),
                                         round(best, 3), round(ms / peer, 2)])
                print(f"  {label} batch {batch} threads {threads}: done", flush=True)
        packed_bytes = {enc: layer.nbytes for enc, layer in layers.items()}
        print(f"  {label}: float32 weights {w.nbytes} B, packed {packed_bytes}", flush=True)
    qpack.set_num_threads(None)
    columns = ["layer", "batch", "threads", "torch f32 ms", "numpy im2col ms"]
    for enc, _ in ENCODINGS:
        columns += [f"{enc} ms", f"{enc} best ms", f"{enc} x {ref}"]
    notes = [
        f"ms = median of {passes} x {repeat[1]} calls per method at batch 1, {passes} x "
        f"{3 if quick else 5} at larger batches, after a warm-up call; 'best' = fastest "
        "call. 1 thread: the calls of all methods interleaved round by round; 2 threads: "
        f"blocks per method with {IDLE_BETWEEN_METHODS} s idle before each (thread pools "
        "spin after a call and would steal a core from the next library)",
        f"'x {ref}' = qpack time / {ref} float32 time: below 1 is faster, above 1 slower",
        "numpy's BLAS (threadpoolctl), torch.set_num_threads and qpack.set_num_threads get "
        "the same thread count; a shared, busy 2-core VM: 2-thread figures vary by "
        "several x between runs for every method (a descheduled second thread)",
        "qpack path in every row (>= 4 output positions): im2col patches "
        "(qpack/_kernels/conv.pyx, zero padding written in place) times the weights "
        "decoded for the call, numpy BLAS, bias folded in as one more weight column; "
        "the ablation table forces the rows path (patch rows into the packed matmul)",
        "numpy im2col = np.pad + a strided patch view copied + one matmul with the float32 "
        "weights held decoded (no decoding per call)",
    ]
    tables = [{"title": "Ablations at batch 1, 1 thread (kmeans 4-bit; same run)",
               "columns": ["layer", "variant", "ms", "best ms", f"x {ref}"],
               "rows": ablation},
              {"title": "What each design choice bought (A/B runs during development, "
                        "1 thread unless noted, interleaved medians; not re-run here)",
               "columns": ["change", "layer / batch", "before ms", "after ms", "kept"],
               "rows": HISTORY}]
    return {"title": "PackedConv2d: NCHW float32 convolution from 4-bit packed weights",
            "columns": columns, "rows": rows, "tables": tables, "notes": notes}


if __name__ == "__main__":
    from harness import write_result

    quick = "--quick" in sys.argv
    print(write_result("conv", run(quick=quick), quick))
