"""How well qpack.dispatch chooses between the packed kernels and tiles + BLAS.

For each shape, encoding, batch and activation mode, both paths are timed on the same
weights and activations (path="kernel" and path="tiles"), together with numpy float32
``x @ W.T`` and the product as the default policy runs it. The figure of merit is the
regret: time of the chosen path / time of the faster path (1.00 = the right choice).
Warm weights (the choice is about compute, not cold reads: both paths read the codes
once per call), medians after a warm-up, on the thread count given.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import median_time  # noqa: E402

import qpack  # noqa: E402
from qpack import dispatch  # noqa: E402
from qpack.matmul import CodebookWeights, LinearWeights, SparseWeights  # noqa: E402


def encodings(rng, n_out: int, n_in: int) -> dict:
    """name -> weights for one shape: linear 4-bit g128 and 5-bit g32, codebook 4 and 8
    bits, and 50%-pruned sparse with a 4-bit codebook."""
    out = {}
    for name, bits, group in (("linear 4-bit g128", 4, 128), ("linear 5-bit g32", 5, 32)):
        ng = -(-n_in // group)
        out[name] = LinearWeights.from_packed(
            qpack.pack(rng.integers(0, 1 << bits, (n_out, n_in), dtype=np.uint8), bits), bits,
            (rng.random((n_out, ng)) * 0.01 + 1e-3).astype(np.float32),
            rng.integers(0, 1 << bits, (n_out, ng), dtype=np.uint8), group, (n_out, n_in))
    for bits in (4, 8):
        out[f"codebook {bits}-bit"] = CodebookWeights.from_packed(
            qpack.pack(rng.integers(0, 1 << bits, (n_out, n_in), dtype=np.uint8), bits), bits,
            np.sort(rng.standard_normal(1 << bits)).astype(np.float32), (n_out, n_in))
    mask = rng.random((n_out, n_in)) < 0.5
    out["sparse 50% + codebook 4-bit"] = SparseWeights.from_csr(
        (n_out, n_in), np.concatenate([[0], np.cumsum(mask.sum(axis=1))]), np.nonzero(mask)[1],
        rng.integers(0, 16, int(mask.sum()), dtype=np.uint8),
        codebook=np.linspace(-1, 1, 16, dtype=np.float32))
    return out


def run(quick: bool) -> dict:
    rng = np.random.default_rng(0)
    if quick:
        shapes, batches, repeat = [(300, 64), (768, 768)], (8, 128), 3
    else:
        shapes = [(300, 64), (100, 300), (1536, 384), (768, 768), (4096, 4096)]
        batches, repeat = (8, 32, 128, 450), 5
    threads = 1
    qpack.set_num_threads(threads)
    policy = dispatch.get_policy()
    rows = []
    regrets = []
    try:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(limits=threads, user_api="blas")
    except ImportError:
        limit = None
    try:
        for n_out, n_in in shapes:
            w32 = rng.standard_normal((n_out, n_in)).astype(np.float32)
            for name, w in encodings(rng, n_out, n_in).items():
                for batch in batches:
                    x = rng.standard_normal((batch, n_in)).astype(np.float32)
                    t_np = median_time(lambda x=x, w32=w32: x @ w32.T, repeat)
                    for mode in (None, "int8"):
                        t = {p: median_time(lambda p=p, x=x, w=w, m=mode: w.matmul(x, m, path=p),
                                            repeat) for p in ("kernel", "tiles")}
                        if isinstance(w, SparseWeights):
                            chosen = policy.sparse_plan(w, batch).path
                        else:
                            chosen = policy.dense_plan(w, batch, mode is not None).path
                        best = min(t.values())
                        regret = t[chosen] / best
                        regrets.append(regret)
                        rows.append([f"{n_out}x{n_in}", name, batch, mode or "float32",
                                     round(t["kernel"] * 1e3, 3), round(t["tiles"] * 1e3, 3),
                                     chosen, round(regret, 2), round(t_np / t[chosen], 2)])
                print(f"  {n_out}x{n_in} {name}: done", flush=True)
    finally:
        qpack.set_num_threads(None)
        if limit is not None:
            limit.restore_original_limits()
    regrets.sort()
    worst = rows[max(range(len(rows)), key=lambda i: rows[i][7])]
    notes = [f"policy: {policy!r}",
             f"variant {qpack.kernel_info()['isa']}, {threads} thread (qpack and BLAS)",
             "regret = time of the chosen path / time of the faster path (1.00: right "
             "choice); x vs numpy = numpy float32 time / chosen path's time",
             f"median regret {regrets[len(regrets) // 2]:.2f}, 90th percentile "
             f"{regrets[int(len(regrets) * 0.9)]:.2f}, worst {regrets[-1]:.2f} "
             f"({worst[0]} {worst[1]} batch {worst[2]} {worst[3]})",
             f"ms = median of {repeat} warm calls after a warm-up; shared noisy 2-core "
             "machine"]
    return {"title": "Kernel-or-tiles dispatch: chosen path against the faster one",
            "columns": ["shape", "encoding", "batch", "activations", "kernel ms", "tiles ms",
                        "chosen", "regret", "x vs numpy f32"],
            "rows": rows, "notes": notes}


if __name__ == "__main__":
    res = run(quick="--quick" in sys.argv)
    for note in res["notes"]:
        print(note)
