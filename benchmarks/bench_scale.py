"""Compressing a checkpoint larger than memory comfortably holds: throughput and peak RSS.

A synthetic Llama-shaped checkpoint (bf16; hidden 4096, intermediate 11008, vocab 32000;
16 layers = 3.5 B weights, 7.0 GB in 4 safetensors shards with an HF index) is built in
a temporary folder and compressed straight to a sharded .qpk (``out=``,
``max_shard_size``) at 4-bit K-means + Huffman and at linear 4-bit g64, on one process
(its threads), on 2 local worker processes (``qpack.local_workers(2)``) and on a 2-worker
Dask LocalCluster. Each run is a fresh child process, so its peak RSS is its own: the
main process is sampled every 20 ms; a worker's peak is its getrusage maximum (process
pool: the largest worker's; Dask: each worker's, via ``client.run``). A second, smaller
checkpoint (4 layers) shows that peak memory does not grow with the model. Finally the
sharded result is loaded (headers only) 5 times; the median is quoted.

Quick mode: the same pipeline at hidden 256, 2 and 1 layers (CI checks it runs).
Set QPACK_BENCH_TMP to build the checkpoints somewhere other than the system temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FULL = dict(hidden=4096, intermediate=11008, vocab=32000, layers=16, small_layers=4)
QUICK = dict(hidden=256, intermediate=688, vocab=2000, layers=2, small_layers=1)
SETTINGS = {"kmeans4+huffman": dict(bits=4), "linear4 g64": dict(bits=4, method="linear",
                                                                 group_size=64)}
MODES = ("1 thread", "1 process", "2 workers", "dask 2 workers")
CORES = {"1 thread": 1}  # cores a run uses (the others: the machine's 2)
N_SHARDS = 4


def llama_shapes(hidden: int, intermediate: int, vocab: int, layers: int
                 ) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of a Llama checkpoint's tensors, in Hugging Face's order."""
    out = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (hidden, hidden)),
                (p + "self_attn.k_proj.weight", (hidden, hidden)),
                (p + "self_attn.v_proj.weight", (hidden, hidden)),
                (p + "self_attn.o_proj.weight", (hidden, hidden)),
                (p + "mlp.gate_proj.weight", (intermediate, hidden)),
                (p + "mlp.up_proj.weight", (intermediate, hidden)),
                (p + "mlp.down_proj.weight", (hidden, intermediate)),
                (p + "input_layernorm.weight", (hidden,)),
                (p + "post_attention_layernorm.weight", (hidden,))]
    out += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return out


def build_checkpoint(folder: str, shapes, seed: int = 0) -> int:
    """Write bf16 N(0, 0.02) tensors (norms: 1.0) as N_SHARDS safetensors shards plus
    model.safetensors.index.json; return the bytes of tensor data."""
    from qpack import dtypes
    from qpack.format import write_bytes_atomic
    from qpack.safetensors_file import write_safetensors

    rng = np.random.default_rng(seed)
    total = sum(int(np.prod(s)) * 2 for _, s in shapes)
    per_shard = total / N_SHARDS
    groups: list[list] = [[]]
    filled = 0
    for name, shape in shapes:
        if filled >= per_shard * len(groups) and len(groups) < N_SHARDS:
            groups.append([])
        groups[-1].append((name, shape))
        filled += int(np.prod(shape)) * 2
    weight_map = {}
    for k, group in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        arrays = {}
        for name, shape in group:
            if len(shape) == 1:
                arrays[name] = np.ones(shape, dtypes.bfloat16())
            else:
                w = rng.standard_normal(shape, dtype=np.float32)
                w *= 0.02
                arrays[name] = w.astype(dtypes.bfloat16())
                del w
            weight_map[name] = fname
        write_safetensors(os.path.join(folder, fname), arrays, {"format": "pt"})
        del arrays
    write_bytes_atomic(os.path.join(folder, "model.safetensors.index.json"), [json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}).encode()])
    return total


def child(spec: dict) -> dict:
    """One compression in this (fresh) process; prints its figures as JSON."""
    import resource

    from harness import PeakRSS

    import qpack

    src, out, mode = spec["src"], spec["out"], spec["mode"]
    kw = SETTINGS[spec["setting"]]
    ckpt = qpack.open_checkpoint(src)
    weights = sum(int(np.prod(ckpt.shape_of(n))) for n in ckpt)
    largest = max(int(np.prod(ckpt.shape_of(n))) * 2 for n in ckpt)
    workers_rss: list[int] = []
    with PeakRSS() as main_rss:
        t0 = time.perf_counter()
        if mode in ("1 thread", "1 process"):
            if mode == "1 thread":
                qpack.set_num_threads(1)  # one encoding at a time, kernels on 1 thread
            qpack.compress(src, out=out, max_shard_size=spec["shard"], **kw)
            elapsed = time.perf_counter() - t0
        elif mode == "2 workers":
            with qpack.local_workers(2) as pool:
                t0 = time.perf_counter()
                qpack.compress(src, out=out, max_shard_size=spec["shard"], executor=pool,
                               **kw)
                elapsed = time.perf_counter() - t0
            workers_rss = [resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024]
        else:
            from distributed import Client, LocalCluster

            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                t0 = time.perf_counter()
                qpack.compress(src, out=out, max_shard_size=spec["shard"], executor=client,
                               **kw)
                elapsed = time.perf_counter() - t0
                peaks = client.run(lambda: resource.getrusage(
                    resource.RUSAGE_SELF).ru_maxrss * 1024)
                workers_rss = sorted(peaks.values())
    return {"elapsed": elapsed, "weights": weights, "largest_bytes": largest,
            "main_rss": main_rss.peak, "workers_rss": workers_rss}


def _run_child(spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [HERE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, os.path.join(HERE, "bench_scale.py"), "--child",
                           json.dumps(spec)], capture_output=True, text=True, env=env,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_scale child failed ({spec['mode']}, {spec['setting']}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _has_dask() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        print("  [skip] dask rows: dask.distributed is not installed "
              "(pip install -e '.[dask]')")
        return False
    return True


def run(quick: bool) -> dict:
    import qpack

    size = QUICK if quick else FULL
    root = tempfile.mkdtemp(prefix="qpack-bench-scale-", dir=os.environ.get("QPACK_BENCH_TMP"))
    modes = [m for m in MODES if m != "dask 2 workers" or _has_dask()]
    rows, memory_rows, load_ms = [], [], None
    shard = "100KB" if quick else "500MB"
    try:
        sources = {}
        for key, layers in (("big", size["layers"]), ("small", size["small_layers"])):
            sources[key] = os.path.join(root, key)
            os.makedirs(sources[key])
            t0 = time.perf_counter()
            nbytes = build_checkpoint(sources[key], llama_shapes(
                size["hidden"], size["intermediate"], size["vocab"], layers))
            print(f"  built {key} checkpoint: {layers} layers, {nbytes / 1e9:.2f} GB "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        base_rate = {}
        for setting in SETTINGS:
            for mode in modes:
                out = os.path.join(root, "out")
                r = _run_child({"src": sources["big"], "out": out, "mode": mode,
                                "setting": setting, "shard": shard})
                rate = r["weights"] / r["elapsed"] / 1e6
                base_rate.setdefault(setting, rate)
                workers = ", ".join(f"{w / 1e6:.0f}" for w in r["workers_rss"]) or "-"
                bound = 2.5 * r["largest_bytes"] + 300e6
                rows.append([setting, mode, round(r["elapsed"], 1), round(rate, 1),
                             round(rate / CORES.get(mode, 2), 1),
                             round(rate / base_rate[setting], 2),
                             round(r["main_rss"] / 1e6), workers, round(bound / 1e6)])
                print(f"  {setting:16s} {mode:15s} {r['elapsed']:7.1f} s {rate:6.1f} "
                      f"M weights/s, main {r['main_rss'] / 1e6:.0f} MB, workers "
                      f"{workers} MB", flush=True)
                if setting == "kmeans4+huffman" and mode == "1 process":
                    times = []
                    for _ in range(6):
                        t0 = time.perf_counter()
                        qpack.load(out)
                        times.append(time.perf_counter() - t0)
                    load_ms = 1000 * statistics.median(times[1:])
                    n_shards = len(qpack.load(out).shards)
                shutil.rmtree(out)
        for key in ("small", "big"):
            out = os.path.join(root, "out")
            r = _run_child({"src": sources[key], "out": out, "mode": "1 process",
                            "setting": "kmeans4+huffman", "shard": shard})
            shutil.rmtree(out)
            memory_rows.append([size["small_layers" if key == "small" else "layers"],
                                round(r["weights"] / 1e6, 1), round(r["main_rss"] / 1e6),
                                round(r["largest_bytes"] / 1e6)])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "title": "Compressing a sharded Llama-shaped bf16 checkpoint (bench_scale)",
        "columns": ["setting", "run", "s", "M weights/s", "per core", "vs 1 thread",
                    "peak RSS main MB", "peak RSS workers MB", "2.5x largest + 300 MB"],
        "rows": rows,
        "tables": [{"title": "Peak RSS against model size (kmeans4+huffman, 1 process)",
                    "columns": ["layers", "M weights", "peak RSS MB", "largest tensor MB"],
                    "rows": memory_rows}],
        "load_ms": load_ms,
        "notes": [
            f"Checkpoint: hidden {size['hidden']}, intermediate {size['intermediate']}, "
            f"vocab {size['vocab']}, {size['layers']} layers, bf16, {N_SHARDS} safetensors "
            f"shards; output: sharded .qpk (max_shard_size {shard}) written while encoding.",
            "Throughput counts every weight of the checkpoint over the compress call's wall "
            "time (reading, encoding, writing). 'per core' divides by the cores a run "
            "uses: '1 thread' is one process limited to one thread (qpack.set_num_threads"
            "(1)), the baseline of 'vs 1 thread'; '1 process' runs on both cores' threads; "
            "the workers get 1 thread each.",
            "Dask: LocalCluster(n_workers=2, threads_per_worker=1); workers read each "
            "tensor from the shards themselves by (path, byte offset), and undo the "
            "nanny's MALLOC_TRIM_THRESHOLD_ before their first task "
            "(qpack/malloc_limits.py).",
            f"qpack.load of the sharded result (headers of {n_shards if load_ms else '?'} "
            f"shards): median {load_ms:.1f} ms of 5 after one warm-up." if load_ms else
            "load not measured",
        ],
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.path.insert(0, HERE)
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        sys.path.insert(0, HERE)
        from harness import write_result

        quick = "--quick" in sys.argv
        print(write_result("scale", run(quick), quick))
