"""Benchmark of qpack's dense kernels per code width, grouping and ISA variant.

For one matrix (4096x4096; quick mode 1024x1024 and fewer encodings), batches 1, 16 and
64 on 2 threads and batch 64 on 1 thread, both activation modes (float32, int8): linear
codes of 2..8 bits in groups of 128, linear 4-bit in groups of 32 / 64 and per channel,
and codebook codes of 2..8 bits (one shared codebook of 2**bits entries). Every row runs
once per kernel variant this CPU supports (``qpack.isa.set_isa``), and records the path
the product actually took. Beside them, in the same run: numpy float32 ``x @ W.T`` and
(batches 16 and 64, when torch is installed) torch's dynamic int8 Linear, on the same
thread count. llama.cpp's formats (``gguf``) appear only in a size table: the package
has no fast matmul to time.

Timing as in bench_matmul (whose helpers are imported): cold weights (a 4x L3 buffer is
read before every timed call), median of several cold calls after a warm-up call, an
idle pause before each encoding so no spinning thread pool steals a core.

Portable vs native builds cannot be compared in one process (the compile flags are fixed
at build time); run this script once per build, e.g. ``--out-suffix portable`` under a
``QPACK_PORTABLE=1`` build, and compare docs/benchmarks/kernels.md with kernels_portable.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_matmul import (  # noqa: E402
    IDLE_BETWEEN_METHODS,
    BlasThreads,
    CacheEvictor,
    cold_median_ms,
    l3_bytes,
    torch_linears,
)
from harness import optional_peer  # noqa: E402

import qpack  # noqa: E402
from qpack.dispatch import get_policy  # noqa: E402
from qpack.isa import get_isa, set_isa  # noqa: E402
from qpack.matmul import CodebookWeights, LinearWeights  # noqa: E402

LINEAR_REF = "linear 4-bit g128"
CODEBOOK_REF = "codebook 4-bit"
ALL_ENCODINGS = ([f"linear {b}-bit g128" for b in range(2, 9)]
                 + ["linear 4-bit g32", "linear 4-bit g64", "linear 4-bit channel"]
                 + [f"codebook {b}-bit" for b in range(2, 9)])
# quick mode: the fixed-width paths (2/4/8 bits), the any-width ones (3, 5 bits, g32)
# and an 8-bit codebook (float gather, any-width int8): every path kind, few rows
QUICK_ENCODINGS = ["linear 2-bit g128", "linear 3-bit g128", "linear 4-bit g128",
                   "linear 5-bit g128", "linear 8-bit g128", "linear 4-bit g32",
                   "codebook 4-bit", "codebook 5-bit", "codebook 8-bit"]
# (batch, threads)
FULL_CONFIGS = [(1, 2), (16, 2), (64, 2), (64, 1)]
QUICK_CONFIGS = [(1, 2), (16, 2), (64, 1)]
TORCH_BATCHES = (16, 64)
MODES = (None, "int8")
# llama.cpp formats for the size table (bits per weight from gguf's block sizes)
GGUF_FORMATS = ("Q2_K", "Q3_K", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
# Cold calls for a product on the generic kernel at a batch of SLOW_BATCH or more (full
# mode; the dispatch policy normally sends those to tiles, but a calibration may not).
SLOW_BATCH = 16
SLOW_REPEAT = 3


def parse_encoding(name: str) -> tuple[str, int, int | None]:
    """("linear" | "codebook", bits, group) from a name such as "linear 5-bit g128";
    group is -1 for "channel" and None for codebooks."""
    parts = name.split()
    kind, bits = parts[0], int(parts[1].split("-")[0])
    if kind == "codebook":
        return kind, bits, None
    return kind, bits, -1 if parts[2] == "channel" else int(parts[2][1:])


def reference_of(name: str) -> str:
    """The row each encoding is compared with: 4-bit g128 for linear codes, 4-bit for
    codebooks (the fixed-width kernels the other widths and groupings should approach)."""
    return CODEBOOK_REF if name.startswith("codebook") else LINEAR_REF


def make_encoding(rng, name: str, n_out: int, n_in: int):
    """LinearWeights / CodebookWeights of random codes for ``name`` (speed does not depend
    on the code values, so no clustering is run for the codebook rows)."""
    kind, bits, group = parse_encoding(name)
    codes = rng.integers(0, 1 << bits, size=(n_out, n_in), dtype=np.uint8)
    packed = qpack.pack(codes, bits)
    if kind == "codebook":
        cb = np.sort(rng.standard_normal(1 << bits).astype(np.float32)) * 0.02
        return CodebookWeights.from_packed(packed, bits, cb, (n_out, n_in))
    ng = 1 if group == -1 else -(-n_in // group)
    scales = (rng.random((n_out, ng)) * 0.02 + 0.001).astype(np.float16)
    zeros = rng.integers(0, 1 << bits, size=(n_out, ng), dtype=np.uint8)
    return LinearWeights.from_packed(packed, bits, scales, zeros, group, (n_out, n_in))


def product_path(weights, batch: int, mode: str | None) -> str:
    """The path ``weights.matmul`` takes for this batch and mode with the current variant:
    kernel_paths()'s name, or "tiles+BLAS" when the dispatch policy hands the batch to
    dequantized tiles (kernel_paths alone would hide that)."""
    if get_policy().dense_plan(weights, batch, mode is not None).path == "tiles":
        return "tiles+BLAS"
    return weights.kernel_paths(batch)["int8" if mode else "float"]


def build_info() -> dict:
    """Build description from qpack.kernel_info(), with "build": native or portable."""
    info = qpack.kernel_info()
    flags = info["compile_flags"]
    info["build"] = "native (-march=native)" if "-march=native" in flags.split() \
        else "portable (no -march)"
    return info


def measure_peers(w32, x, xt, torch_lin8, repeat, evict, idle) -> dict:
    """Cold median/best ms of numpy float32 (and torch dynamic int8 when given)."""
    times = {}
    time.sleep(idle)
    times["numpy"] = cold_median_ms(lambda: x @ w32.T, evict, repeat)
    if torch_lin8 is not None:
        import torch

        time.sleep(idle)
        with torch.inference_mode():
            times["torch"] = cold_median_ms(lambda: torch_lin8(xt), evict, repeat)
    return times


def bench(shape, configs, names, repeat, evict, variants, *, torch=None,
          idle: float = IDLE_BETWEEN_METHODS, slow_repeat: int | None = None, seed: int = 0,
          log=print) -> list[list]:
    """Rows of the main table for one matrix shape: peers first, then every encoding in
    ``names`` in both activation modes on every variant in ``variants``, per (batch,
    threads) in ``configs``; ``repeat`` cold calls per product (``slow_repeat`` for the
    generic kernel at a batch >= SLOW_BATCH, when given). Restores the variant in force
    before and the thread counts."""
    previous_isa = get_isa()  # restored afterwards (QPACK_ISA may have forced one)
    torch_threads = torch.get_num_threads() if torch is not None else None
    rng = np.random.default_rng(seed)
    n_out, n_in = shape
    blas = BlasThreads()
    encodings = {name: make_encoding(rng, name, n_out, n_in) for name in names}
    w32 = (rng.standard_normal((n_out, n_in)) * 0.02).astype(np.float32)
    lin8 = None
    if torch is not None:
        lin8 = torch_linears(torch, w32)[1]
    engine = torch.backends.quantized.engine if torch is not None else ""
    label = f"{n_out}x{n_in}"
    rows = []
    try:
        for batch, threads in configs:
            qpack.set_num_threads(threads)
            if torch is not None:
                torch.set_num_threads(threads)
            x = rng.standard_normal((batch, n_in)).astype(np.float32)
            xt = torch.from_numpy(x) if torch is not None else None
            use_torch = lin8 if batch in TORCH_BATCHES else None
            with blas(threads):  # the tiles+BLAS path uses numpy's BLAS too
                peers = measure_peers(w32, x, xt, use_torch, repeat, evict, idle)
                base = peers["numpy"][0]
                t8 = peers["torch"][0] if "torch" in peers else None

                def ratios(ms, base=base, t8=t8):
                    return round(base / ms, 2), round(t8 / ms, 2) if t8 else "n/a"

                ms, best = peers["numpy"]
                rows.append([label, batch, threads, "-", "numpy float32 x @ W.T", "float32",
                             "BLAS", round(ms, 4), round(best, 4), *ratios(ms), "n/a"])
                if "torch" in peers:
                    ms, best = peers["torch"]
                    rows.append([label, batch, threads, "-", "torch dynamic int8 Linear",
                                 "int8 dyn", engine, round(ms, 4), round(best, 4),
                                 *ratios(ms), "n/a"])
                for variant in variants:
                    set_isa(variant)
                    times, paths = {}, {}
                    for name, w in encodings.items():
                        for mode in MODES:
                            # idle before every product: a float product at a large batch
                            # runs tiles + numpy's BLAS, whose threads spin ~0.1 s after
                            # it and took a core from the next product's OpenMP team (the
                            # int8 GEMM's 2-thread medians were 2x its best calls)
                            time.sleep(idle)
                            path = paths[(name, mode)] = product_path(w, batch, mode)
                            slow = (slow_repeat is not None and path == "generic"
                                    and batch >= SLOW_BATCH)
                            times[(name, mode)] = cold_median_ms(
                                lambda w=w, mode=mode, x=x: w.matmul(x, act_quant=mode),
                                evict, slow_repeat if slow else repeat)
                    for (name, mode), (ms, best) in times.items():
                        ref = times.get((reference_of(name), mode))
                        rows.append([label, batch, threads, variant, name,
                                     mode or "float32", paths[(name, mode)],
                                     round(ms, 4), round(best, 4), *ratios(ms),
                                     round(ms / ref[0], 2) if ref else "n/a"])
                    log(f"  {label} batch {batch} threads {threads} {variant}: done")
    finally:
        set_isa(previous_isa)
        qpack.set_num_threads(None)
        if torch is not None:
            torch.set_num_threads(torch_threads)
    return rows


def size_table(shape, names, seed: int = 0) -> dict:
    """Bits per weight held in memory by each qpack encoding (codes + scales/zeros or
    codebook) and, when gguf is installed, by llama.cpp's formats for the same shape."""
    n_out, n_in = shape
    rng = np.random.default_rng(seed)
    n = n_out * n_in
    rows = []
    for name in names:
        nbytes = make_encoding(rng, name, n_out, n_in).nbytes
        rows.append(["qpack", name, nbytes, round(8 * nbytes / n, 3)])
    gguf = optional_peer("gguf")
    if gguf is not None:
        for fmt in GGUF_FORMATS:
            qtype = getattr(gguf.GGMLQuantizationType, fmt)
            nbytes = int(np.prod(gguf.quant_shape_to_byte_shape((n_out, n_in), qtype)))
            rows.append(["llama.cpp (gguf)", fmt, nbytes, round(8 * nbytes / n, 3)])
    return {"title": f"Size reference ({n_out}x{n_in}): bytes held, bits per weight",
            "columns": ["library", "encoding", "bytes", "bits per weight"], "rows": rows}


def run(quick: bool) -> dict:
    """The benchmark's result dict (see module docstring); quick: 1024x1024, a subset."""
    torch = optional_peer("torch")
    l3 = l3_bytes()
    evict = CacheEvictor(l3)
    info = build_info()
    variants = info["available"]
    # which build is measured matters here (an editable install elsewhere can shadow it)
    print(f"  qpack from {os.path.dirname(qpack.__file__)}: {info['build']}, variants "
          f"{', '.join(variants)}", flush=True)
    if quick:
        shape, configs, names, repeat = (1024, 1024), QUICK_CONFIGS, QUICK_ENCODINGS, 3
    else:
        shape, configs, names, repeat = (4096, 4096), FULL_CONFIGS, ALL_ENCODINGS, 9
    slow_repeat = None if quick else SLOW_REPEAT
    rows = bench(shape, configs, names, repeat, evict, variants, torch=torch,
                 slow_repeat=slow_repeat)
    build_rows = [["build", info["build"]], ["compile flags", info["compile_flags"]],
                  ["variants available", ", ".join(variants)],
                  ["default variant", info["isa"]], ["QPACK_ISA", info["forced"] or "unset"],
                  ["OpenMP", info["openmp"]]]
    if torch is not None:
        build_rows.append(["torch quantized engine", torch.backends.quantized.engine])
    notes = [
        f"build: {info['build']}, compile flags `{info['compile_flags']}`; a second run "
        "under a QPACK_PORTABLE=1 build (`--out-suffix portable`) writes kernels_portable.md "
        "beside this table, which is how portable and native builds are compared",
        "each qpack row ran once per variant this CPU supports (qpack.isa.set_isa); 'path' "
        "is the kernel the product took (weights.kernel_paths()), or 'tiles+BLAS' when "
        "matmul's dispatch rule handed the batch to dequantized row tiles and numpy's BLAS "
        "(from batch 4 when the float path is 'generic'; float mode of small matrices at "
        "large batches; see docs/KERNELS.md)",
        f"cold weights: a {4 * l3 >> 20} MiB buffer (4x L3) is read before every timed "
        f"call; ms = median of {repeat} cold calls after a warm-up; 'best' = fastest call"
        + (f"; products on the generic kernel at batch >= {SLOW_BATCH} (seconds per call) "
           f"get {slow_repeat} cold calls, nothing is skipped" if slow_repeat else ""),
        "x vs numpy f32 / x vs torch int8: peer ms / row ms (> 1: the row is faster); "
        "torch dynamic int8 Linear only at batches "
        f"{'/'.join(map(str, TORCH_BATCHES))} (batch 1 figures: docs/benchmarks/matmul.md)",
        "ms / 4-bit ms: this row's median over the median of linear 4-bit g128 (codebook "
        "rows: codebook 4-bit) in the same variant, batch, threads and activations, so "
        "<= 1.5 meets the 3/5/6/7-bit target and <= 1.3 the g32/g64 target",
        "numpy's BLAS (threadpoolctl), torch (set_num_threads) and qpack use the same "
        "thread count; products under 2M multiply-adds per thread use fewer qpack threads "
        "(the dispatch policy's min_macs_per_thread), e.g. 1024x1024 batch 1 runs on one",
        f"{IDLE_BETWEEN_METHODS} s idle before each product (each mode of each "
        "encoding) and peer: OpenBLAS spins ~0.1 s after a call, and the float mode's "
        "tiles+BLAS products call it",
        "codes are random (speed does not depend on their values); codebook rows share one "
        "codebook of 2**bits entries; scales float16, zero-points uint8 (matmul holds them "
        "as float32 copies, which the size table's bytes include)",
        "figures are medians on a shared, noisy 2-core machine: compare rows of one run, "
        "not across runs",
    ]
    if quick:
        notes.append("quick mode: 1024x1024, encodings " + ", ".join(names))
    return {
        "title": "Dense kernels per width, grouping and variant (cold weights)",
        "columns": ["shape", "batch", "threads", "variant", "encoding", "activations",
                    "path", "ms (median)", "ms (best)", "x vs numpy f32", "x vs torch int8",
                    "ms / 4-bit ms"],
        "rows": rows,
        "tables": [{"title": "Build", "columns": ["key", "value"], "rows": build_rows},
                   size_table(shape, names)],
        "notes": notes,
        "kernel_info": info,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its result (name "kernels" or "kernels_SUFFIX")."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--out-suffix", default="",
                        help="write kernels_SUFFIX.{json,md}, e.g. 'portable' for a run "
                             "under a QPACK_PORTABLE=1 build")
    args = parser.parse_args(argv)
    from harness import write_result

    name = "kernels" + (f"_{args.out_suffix}" if args.out_suffix else "")
    flags = qpack.kernel_info()["compile_flags"]
    if "-march=native" not in flags.split() and not args.out_suffix:
        print("  note: this is a portable build; consider --out-suffix portable")
    t0 = time.perf_counter()
    result = run(quick=args.quick)
    print(write_result(name, result, args.quick))
    print(f"   ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
