"""benchmarks/bench_calibration.py's measuring helpers, on a tiny random BERT."""

from __future__ import annotations

import inspect
import os
import sys

import numpy as np
import pytest

import qpack

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import bench_calibration as bc  # noqa: E402

TEXTS = ["Return the number of items in the queue.", "Wrap a paragraph of text.",
         "Read the configuration file and return its sections as a mapping.",
         "Join two path components, inserting a separator between them.", "Stop now."]


@pytest.fixture(scope="module")
def model():
    weights, config = bc.ex.random_bert(layers=2, hidden=32, heads=4, vocab=64, seed=1)
    batches = bc.length_batches(bc.HashTokenizer(vocab=64, max_length=12), TEXTS,
                                batch_size=2)
    return weights, config, batches


def test_hash_tokenizer_and_length_batches():
    tok = bc.HashTokenizer(vocab=64, max_length=4)
    a, b = tok.encode_batch(["One two three four five", "one"])
    assert a.ids[0] == 1 and len(a.ids) == 4 and a.attention_mask == [1, 1, 1, 1]
    assert b.ids[:2] == a.ids[:2] and b.ids[2:] == [0, 0] and b.attention_mask == [1, 1, 0, 0]
    assert all(2 <= i < 64 for i in a.ids[1:])
    batches = bc.length_batches(bc.HashTokenizer(64, 12), TEXTS, batch_size=2)
    assert [len(ids) for ids, _ in batches] == [2, 2, 1]
    counts = [int(m.sum(1).max()) for _, m in batches]
    assert counts == sorted(counts)  # shortest texts first: little padding


def test_evaluate_is_zero_for_the_float_model_and_grows_with_error(model):
    weights, config, batches = model
    evaluate = bc.EmbeddingCosine(weights, config, batches)
    assert evaluate.sentences == len(TEXTS)
    assert evaluate({}) == pytest.approx(0.0, abs=1e-12)
    name = "encoder.layer.0.intermediate.dense.weight"
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(weights[name].shape).astype(np.float32)
    errors = [evaluate({name: weights[name] + s * noise}) for s in (0.01, 0.05, 0.2)]
    assert 0 < errors[0] < errors[1] < errors[2]
    worst = bc.EmbeddingCosine(weights, config, batches, statistic="min")
    assert worst({name: weights[name] + 0.05 * noise}) >= errors[1]
    with pytest.raises(ValueError, match="no tensor named"):
        evaluate({"nope": noise})
    with pytest.raises(ValueError, match="shape"):
        evaluate({name: noise.T})
    with pytest.raises(ValueError, match="statistic"):
        bc.EmbeddingCosine(weights, config, batches, statistic="max")


def test_evaluate_resuming_from_cached_layers_matches_a_full_forward(model):
    weights, config, batches = model
    evaluate = bc.EmbeddingCosine(weights, config, batches)
    rng = np.random.default_rng(1)
    for names in (["encoder.layer.1.output.dense.weight"],
                  ["encoder.layer.1.attention.self.key.weight",
                   "encoder.layer.0.attention.self.query.bias"],
                  ["embeddings.LayerNorm.weight"]):
        replaced = {n: weights[n] * (1 + 0.1 * rng.standard_normal(weights[n].shape))
                    .astype(np.float32) for n in names}
        full = bc.ex.BertEncoder.from_arrays({**weights, **replaced}, config)
        want = np.concatenate([full(ids, mask) for ids, mask in batches])
        np.testing.assert_allclose(evaluate.embed(replaced), want, atol=1e-6)
    np.testing.assert_array_equal(evaluate.embed({}), evaluate.reference)


def test_qpack_bpw_counts_disk_and_rest_bytes(model):
    weights, config, _ = model
    names = bc.linear_weight_names(config)
    assert len(names) == 12
    cm = qpack.compress(weights, include=names, min_numel=1, method="linear", bits=4,
                        group_size=32)
    disk, memory = bc.qpack_bpw(cm, names)
    numel = sum(weights[n].size for n in names)
    raw = sum(cm[n].nbytes for n in cm if cm[n].method == "raw")
    assert disk == pytest.approx(8 * (cm.nbytes - raw) / numel)
    # at rest: what compressing with entropy=None stores (packed 4-bit codes + the
    # groups' scales and zero-points, however the format lays those out)
    plain = qpack.compress(weights, include=names, min_numel=1, method="linear", bits=4,
                           group_size=32, entropy=None)
    assert memory == pytest.approx(8 * sum(plain[n].nbytes for n in names) / numel)
    assert 4 < memory < 4 + 8 * 8 / 32
    with pytest.raises(RuntimeError, match="differ"):
        bc.qpack_bpw(cm, names[:-1])


def test_pareto_front_and_targets():
    def row(name, bpw, cos, family="qpack linear"):
        return {"setting": name, "bpw_disk": bpw, "cos_min": cos, "family": family,
                "calibration": "none"}

    rows = [row("a", 2.5, 0.91), row("b", 3.0, 0.90), row("c", 3.4, 0.975, "GGUF"),
            row("d", 4.4, 0.97), row("e", 4.5, 0.995), row("f", 8, 0.999)]
    assert [r["setting"] for r in bc.pareto_front(rows)] == ["a", "c", "e", "f"]
    met = bc.targets_met(rows)
    assert [t["met"] for t in met] == [True, True, True]
    assert met[0]["qpack"]["setting"] == "e" and met[0]["peers"] is None
    assert met[1]["qpack"] is None and met[1]["peers"]["setting"] == "c"
    assert met[2]["qpack"]["setting"] == "a"
    assert [t["met"] for t in bc.targets_met(rows[1:2])] == [False, False, False]


def test_sentences_are_spread_and_distinct():
    texts = ["First sentence here is long enough. Short one. Another sentence of six "
             "words here. Another sentence of six words here.", "No ending punctuation "
             "in this text at all"]
    assert bc.sentences(texts, 2) == ["First sentence here is long enough.",
                                      "Another sentence of six words here."]
    with pytest.raises(RuntimeError, match="3 sentences wanted"):
        bc.sentences(texts, 3)


@pytest.mark.skipif("target_bpw" not in inspect.signature(qpack.compress).parameters,
                    reason="compress has no target_bpw yet")
def test_evaluate_drives_compress_target_bpw(model):
    weights, config, batches = model
    evaluate = bc.EmbeddingCosine(weights, config, batches)
    names = bc.linear_weight_names(config)
    cm = qpack.compress(weights, include=names, min_numel=1, method="linear",
                        group_size=32, target_bpw=3.5, evaluate=evaluate)
    disk, _ = bc.qpack_bpw(cm, names)
    assert disk <= 3.5
    assert 0 < evaluate({n: cm[n].dequantize() for n in names}) < 0.5
