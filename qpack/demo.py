"""``qpack demo``: compress a trained MLP at several settings and run it from the packed file.

The model is scikit-learn's ``MLPClassifier(hidden_layer_sizes=(300, 100))`` (the
LeNet-300-100 shape of the Deep Compression paper) trained on the 8x8 digits that ship with
scikit-learn, so nothing is downloaded. Each setting compresses the whole model (three
weight matrices quantized, biases stored exactly), saves it to a ``.qpk``, loads it back
(memory-mapped) and classifies the test set with ``PackedLinear`` layers running straight
from the loaded file. The rows of the table:

- the float32 reference, then post-training ``qpack.compress`` at each of
  ``DEMO_SETTINGS`` (K-means and linear codes, 2 to 8 bits, with and without pruning);
- ``RETRAINED``: 90% pruned, retrained with scikit-learn, then compressed;
- ``TRAINED_LABEL``, when PyTorch (the ``torch`` extra) is installed: the same float model
  copied into torch and put through ``qpack.torch.deep_compression`` (prune and retrain,
  K-means sharing with fine-tuned centroids), saved, then run from the file like the
  others. Without torch the table ends with one line naming the extra.

Quick mode (``qpack demo --quick``, for tests) trains less and has neither retrained row.

The CLI (``qpack demo``), ``examples/digits_mlp.py`` and ``benchmarks/bench_models.py``
all call the functions here.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from qpack.model import CompressedModel, compress, load
from qpack.nn import PackedLinear

# Each setting: a label and the keyword arguments for qpack.compress (min_numel=0 is added
# so the 100x10 output layer is quantized too). "g32" is one scale and zero-point per 32
# inputs of a row (llama.cpp's block size), "/row" one per output row. Huffman coding is
# on everywhere (the compress default).
DEMO_SETTINGS: list[tuple[str, dict]] = [
    ("kmeans 8-bit", {"method": "kmeans", "bits": 8}),
    ("kmeans 4-bit", {"method": "kmeans", "bits": 4}),
    ("kmeans 2-bit", {"method": "kmeans", "bits": 2}),
    ("linear 8-bit g32", {"method": "linear", "bits": 8, "group_size": 32}),
    ("linear 4-bit g32", {"method": "linear", "bits": 4, "group_size": 32}),
    ("linear 2-bit g32", {"method": "linear", "bits": 2, "group_size": 32}),
    ("linear 4-bit/row", {"method": "linear", "bits": 4, "group_size": -1}),
    ("kmeans 4-bit, prune 0.5", {"method": "kmeans", "bits": 4, "prune": 0.5}),
    ("linear 4-bit g32, prune 0.5", {"method": "linear", "bits": 4, "group_size": 32,
                                     "prune": 0.5}),
    ("kmeans 4-bit, prune 0.9", {"method": "kmeans", "bits": 4, "prune": 0.9}),
]
QUICK_SETTINGS = ["kmeans 4-bit", "linear 8-bit g32", "kmeans 4-bit, prune 0.5"]
# Deep Compression retrains after pruning; this row prunes 90%, fine-tunes the survivors
# with the pruned weights held at zero, then compresses like "kmeans 4-bit, prune 0.9".
RETRAINED = ("kmeans 4-bit, prune 0.9 + retrain",
             {"method": "kmeans", "bits": 4, "prune": 0.9})
LAYERS = ("fc1", "fc2", "fc3")

# The same float model through qpack.torch.deep_compression (the torch extra): pruned to
# 90% in every layer in three rounds, each retrained, then 4-bit K-means sharing with
# fine-tuned centroids: the sparsity and bits of "kmeans 4-bit, prune 0.9", so the two
# rows differ only by the training. SGD (momentum 0.9) on shuffled batches of 32, one
# torch thread. Not in quick mode unless asked for, and then with half the epochs.
TRAINED_LABEL = "deep_compression (torch): kmeans 4-bit, prune 0.9"
TRAINED: dict = {"sparsity": 0.9, "allocate": "uniform", "bits": 4, "prune_rounds": 3,
                 "retrain_epochs": 4, "finetune_epochs": 2, "lr": 0.05}
TRAINED_QUICK: dict = {**TRAINED, "retrain_epochs": 2, "finetune_epochs": 1}
TRAINED_BATCH = 32
TORCH_EXTRA_INSTALL = 'pip install "qpack[torch]", in a source checkout pip install -e ".[torch]"'
TORCH_SKIPPED = f"deep_compression row skipped: torch is not installed ({TORCH_EXTRA_INSTALL})"

# scikit-learn (with scipy and threadpoolctl, which it installs) is not a dependency of
# qpack itself: the demo and the examples get it from the "demo" extra.
DEMO_EXTRA_INSTALL = 'pip install "qpack[demo]" (in a source checkout: pip install -e ".[demo]")'


class MissingExtraError(ImportError):
    """A library of the ``demo`` extra (scikit-learn) is not installed."""


def require_demo_extra() -> None:
    """Raise MissingExtraError, with the install command, unless scikit-learn is importable.

    The message is one line naming the missing module and the ``demo`` extra.
    """
    for module in ("sklearn", "threadpoolctl"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingExtraError(
                f"the demo needs scikit-learn ({exc}); install the 'demo' extra: "
                f"{DEMO_EXTRA_INSTALL}") from None


@dataclass
class DigitsSplit:
    """The digits data set, scaled to [0, 1] float32, split 75/25 stratified."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


@dataclass
class DemoResult:
    """What ``run_demo`` measured: one dict per row (see ``format_table``) plus context;
    ``notes`` are lines printed under the table (a row that was left out, and why)."""

    rows: list[dict] = field(default_factory=list)
    float_accuracy: float = 0.0
    train_seconds: float = 0.0
    n_test: int = 0
    threads: int = 1
    workdir: str = ""
    notes: list[str] = field(default_factory=list)


def load_digits_split(seed: int = 0) -> DigitsSplit:
    """sklearn's 1797 8x8 digits as float32 in [0, 1]; stratified 75/25 split by ``seed``.

    Raises MissingExtraError (an ImportError) when scikit-learn is not installed.
    """
    require_demo_extra()
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=seed)
    return DigitsSplit(x_train, x_test, y_train, y_test)


def _single_thread_blas():
    """A context limiting BLAS to one thread: on a busy 2-core machine, training this small
    MLP with two OpenBLAS threads is often 10x slower than with one."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


@contextlib.contextmanager
def same_threads(n: int):
    """Run numpy's BLAS and qpack's kernels with ``n`` threads each (restored on exit).

    Timing the float32 reference and the packed layers with equal thread counts keeps the
    comparison fair; and two thread pools that busy-wait (OpenBLAS and OpenMP) on a small
    or busy machine can slow each other down by orders of magnitude.
    """
    from threadpoolctl import threadpool_limits

    from qpack.threads import get_num_threads, set_num_threads

    before = get_num_threads()
    set_num_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        set_num_threads(before)


def train_mlp(data: DigitsSplit, seed: int = 0, max_iter: int = 200):
    """Train ``MLPClassifier(hidden_layer_sizes=(300, 100))`` (ReLU, Adam) on ``data``.

    Returns the fitted classifier. Convergence warnings (for a small ``max_iter``) are
    silenced: the demo reports the accuracy it reached either way.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    mlp = MLPClassifier(hidden_layer_sizes=(300, 100), random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings(), _single_thread_blas():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(data.x_train, data.y_train)
    return mlp


def mlp_state_dict(mlp) -> dict[str, np.ndarray]:
    """The classifier as a PyTorch-style state dict of float32 arrays.

    ``fcN.weight`` has shape (out, in) (sklearn's ``coefs_[i]`` is (in, out), so it is
    transposed) and ``fcN.bias`` shape (out,).
    """
    state = {}
    for name, w, b in zip(LAYERS, mlp.coefs_, mlp.intercepts_, strict=True):
        state[f"{name}.weight"] = np.ascontiguousarray(w.T, dtype=np.float32)
        state[f"{name}.bias"] = np.asarray(b, dtype=np.float32)
    return state


def mlp_forward(layers: Sequence[Callable[[np.ndarray], np.ndarray]], x: np.ndarray) -> np.ndarray:
    """Logits of the MLP: each layer maps (batch, in) -> (batch, out), ReLU between layers.

    (The classifier's softmax does not change the argmax, so it is left out.)
    """
    for i, layer in enumerate(layers):
        x = layer(x)
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def dense_layers(state: dict[str, np.ndarray]) -> list[Callable[[np.ndarray], np.ndarray]]:
    """Plain float32 numpy layers (x @ W.T + b) from a state dict: the reference."""
    def make(w: np.ndarray, b: np.ndarray):
        wt = np.ascontiguousarray(w.T)
        return lambda x: x @ wt + b

    return [make(state[f"{n}.weight"], state[f"{n}.bias"]) for n in LAYERS]


def packed_layers(model: CompressedModel, act_quant: str | None = None) -> list[PackedLinear]:
    """``PackedLinear`` layers over the weights of a (loaded) compressed MLP.

    The weights stay packed; the biases (stored exactly) are decoded to float32.
    """
    return [PackedLinear(model[f"{n}.weight"], bias=model[f"{n}.bias"].dequantize(),
                         act_quant=act_quant) for n in LAYERS]


def accuracy(layers, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows of ``x`` whose arg-max logit equals the label in ``y``."""
    return float(np.mean(mlp_forward(layers, x).argmax(axis=1) == y))


def prune_and_retrain(mlp, data: DigitsSplit, sparsity: float, epochs: int = 15,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Deep Compression's prune-then-retrain step, on a copy of ``mlp``.

    Removes the ``sparsity`` fraction of smallest-magnitude weights of every layer
    (``qpack.prune_magnitude``), then trains ``epochs`` more epochs with ``partial_fit``,
    putting the pruned weights back to zero after each one. Returns the state dict of the
    retrained, pruned model (``mlp`` is not modified).
    """
    import copy

    from sklearn.exceptions import ConvergenceWarning

    from qpack.prune import prune_magnitude

    net = copy.deepcopy(mlp)
    masks = [prune_magnitude(w, sparsity) for w in net.coefs_]
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings(), _single_thread_blas():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(epochs + 1):
            for w, keep in zip(net.coefs_, masks, strict=True):
                w *= keep
            order = rng.permutation(len(data.y_train))
            net.partial_fit(data.x_train[order], data.y_train[order])
    for w, keep in zip(net.coefs_, masks, strict=True):
        w *= keep
    return mlp_state_dict(net)


def paired_median_seconds(fn: Callable[[], object], reference: Callable[[], object],
                          repeat: int = 7, warmup: int = 2) -> tuple[float, float]:
    """Median wall times (seconds) of ``fn()`` and ``reference()``, run alternately.

    Alternating the two keeps their ratio fair when the machine's load drifts during the
    measurement (the usual case on a shared machine).
    """
    for _ in range(warmup):
        fn()
        reference()
    a, b = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        reference()
        t2 = time.perf_counter()
        a.append(t1 - t0)
        b.append(t2 - t1)
    return statistics.median(a), statistics.median(b)


def qpk_path(workdir: str, label: str) -> str:
    """``workdir/<label as a file name>.qpk`` (runs of other characters become ``_``)."""
    return os.path.join(workdir, re.sub(r"[^\w.-]+", "_", label).strip("_") + ".qpk")


def measure_file(label: str, path: str, data: DigitsSplit, float_accuracy: float,
                 float_layers: Sequence[Callable], repeat: int = 7) -> dict:
    """Load the saved MLP at ``path``, classify the test set with ``PackedLinear`` layers.

    ``float_layers``: the float32 reference layers, timed alternately with the packed ones.
    Returns a row: setting (``label``), file_bytes, ratio, accuracy, accuracy_delta (vs
    float32), time_ratio (packed inference time / float32 numpy time), path.
    """
    loaded = load(path)
    layers = packed_layers(loaded)
    acc = accuracy(layers, data.x_test, data.y_test)
    seconds, float_seconds = paired_median_seconds(
        lambda: mlp_forward(layers, data.x_test), lambda: mlp_forward(float_layers, data.x_test),
        repeat=repeat)
    return {"setting": label, "file_bytes": loaded.nbytes, "ratio": loaded.ratio,
            "accuracy": acc, "accuracy_delta": acc - float_accuracy,
            "time_ratio": seconds / float_seconds, "path": path}


def measure_setting(label: str, kwargs: dict, state: dict[str, np.ndarray],
                    data: DigitsSplit, workdir: str, float_accuracy: float,
                    float_layers: Sequence[Callable], repeat: int = 7) -> dict:
    """Compress ``state`` with ``kwargs``, save the ``.qpk`` to ``workdir``, then
    ``measure_file`` it (same arguments and row)."""
    path = qpk_path(workdir, label)
    model = compress(state, **{"min_numel": 0, **kwargs})
    model.save(path, metadata={"setting": label})
    return measure_file(label, path, data, float_accuracy, float_layers, repeat)


def torch_available() -> bool:
    """Whether PyTorch imports (it is imported here, so only call this when about to use it)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class ShuffledBatches:
    """(x, y) mini-batches of torch tensors, in a new seeded order on each pass (an epoch):
    what a DataLoader with shuffle=True gives, for ``deep_compression`` (any re-iterable)."""

    def __init__(self, x, y, batch_size: int, seed: int):
        import torch

        self.x, self.y, self.batch_size = x, y, batch_size
        self._randperm = torch.randperm
        self._generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        order = self._randperm(len(self.y), generator=self._generator)
        for i in range(0, len(order), self.batch_size):
            take = order[i:i + self.batch_size]
            yield self.x[take], self.y[take]


def torch_mlp(state: dict[str, np.ndarray]):
    """The MLP as a torch ``nn.Sequential`` (fc1, relu1, fc2, relu2, fc3) holding copies of
    ``state``'s float32 weights; its state_dict names are those of ``mlp_state_dict``."""
    from collections import OrderedDict

    import torch
    from torch import nn

    shapes = [state[f"{n}.weight"].shape for n in LAYERS]
    parts: list[tuple[str, nn.Module]] = []
    for i, (name, (out_features, in_features)) in enumerate(zip(LAYERS, shapes, strict=True)):
        parts.append((name, nn.Linear(in_features, out_features)))
        if i < len(LAYERS) - 1:
            parts.append((f"relu{i + 1}", nn.ReLU()))
    net = nn.Sequential(OrderedDict(parts))
    net.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    return net


def deep_compress_mlp(state: dict[str, np.ndarray], data: DigitsSplit, path: str,
                      settings: dict | None = None, seed: int = 0) -> CompressedModel:
    """Run ``qpack.torch.deep_compression`` on a torch copy of the MLP; save it to ``path``.

    Trains on ``data``'s training split in shuffled batches of ``TRAINED_BATCH`` (order
    seeded by ``seed``), with ``settings`` (default ``TRAINED``) as its keyword arguments
    and cross-entropy loss, on one torch thread (restored afterwards; on a small, busy
    machine two threads made this training over ten times slower) and under a forked RNG
    (the caller's random state is left as it was). Needs torch. Returns the
    CompressedModel (its ``history``: one dict per stage).
    """
    import torch

    from qpack.torch import deep_compression

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = torch_mlp(state)
            batches = ShuffledBatches(torch.from_numpy(data.x_train),
                                       torch.from_numpy(data.y_train).long(),
                                       TRAINED_BATCH, seed)
            model = deep_compression(net, batches, torch.nn.functional.cross_entropy,
                                     **(TRAINED if settings is None else settings))
    finally:
        torch.set_num_threads(threads)
    model.save(path, metadata={"setting": TRAINED_LABEL})
    return model


def run_demo(quick: bool = False, workdir: str | None = None, seed: int = 0,
             settings: Sequence[tuple[str, dict]] | None = None, retrain: bool | None = None,
             log: Callable[[str], None] | None = None, data: DigitsSplit | None = None,
             mlp=None, threads: int = 1, trained: bool | None = None) -> DemoResult:
    """Train the digits MLP, then compress, save, load and evaluate it at each setting.

    quick : fewer training iterations, three settings, no retraining rows (for tests).
    workdir : folder for the ``.qpk`` files (default: a fresh temporary folder, removed
        afterwards; a given folder is kept with its files).
    settings : (label, compress kwargs) pairs replacing the default list.
    retrain : add the prune-0.9-and-retrain row (default: not in quick mode).
    trained : add the ``qpack.torch.deep_compression`` row (default: not in quick mode;
        in quick mode with ``TRAINED_QUICK``'s fewer epochs) when torch is installed;
        without torch, ``TORCH_SKIPPED`` goes to the result's notes instead.
    log : called with progress lines (e.g. ``print``); None for silence.
    data, mlp : an existing split and classifier trained on it (skips the training).
    threads : threads for numpy's BLAS and qpack's kernels while timing inference (1:
        the test set is small, and single-threaded times are the most repeatable).

    Returns a DemoResult; its first row is the float32 reference. The deep_compression
    row also has train_seconds (its training, torch import included).
    """
    say = log or (lambda line: None)
    if settings is None:
        settings = ([s for s in DEMO_SETTINGS if s[0] in QUICK_SETTINGS] if quick
                    else list(DEMO_SETTINGS))
    if retrain is None:
        retrain = not quick
    if trained is None:
        trained = not quick
    repeat = 3 if quick else 7
    if data is None or mlp is None:
        data = load_digits_split(seed)
        say(f"training MLPClassifier(300, 100) on {len(data.y_train)} digits ...")
        t0 = time.perf_counter()
        mlp = train_mlp(data, seed=seed, max_iter=30 if quick else 200)
    else:
        t0 = time.perf_counter()
    result = DemoResult(train_seconds=time.perf_counter() - t0, n_test=len(data.y_test),
                        threads=threads)
    state = mlp_state_dict(mlp)
    float_layers = dense_layers(state)
    result.float_accuracy = accuracy(float_layers, data.x_test, data.y_test)

    own_dir = workdir is None
    tmp = tempfile.TemporaryDirectory(prefix="qpack-demo-") if own_dir else None
    folder = tmp.name if tmp else os.fspath(workdir)
    try:
        from qpack.safetensors_file import write_safetensors

        ref_path = os.path.join(folder, "float32.safetensors")
        write_safetensors(ref_path, state)
        ref_bytes = os.path.getsize(ref_path)
        original = sum(a.nbytes for a in state.values())
        result.rows.append({"setting": "float32 (numpy)", "file_bytes": ref_bytes,
                            "ratio": original / ref_bytes, "accuracy": result.float_accuracy,
                            "accuracy_delta": 0.0, "time_ratio": 1.0, "path": ref_path})
        jobs = list(settings) + ([RETRAINED] if retrain else [])
        for label, kwargs in jobs:
            say(f"  {label}")
            source = state
            if (label, kwargs) == RETRAINED:
                source = prune_and_retrain(mlp, data, kwargs["prune"], seed=seed)
            with same_threads(threads):
                result.rows.append(measure_setting(label, kwargs, source, data, folder,
                                                   result.float_accuracy, float_layers,
                                                   repeat))
        t0 = time.perf_counter()
        if trained and not torch_available():
            result.notes.append(TORCH_SKIPPED)
        elif trained:
            say(f"  {TRAINED_LABEL}")
            path = qpk_path(folder, TRAINED_LABEL)
            deep_compress_mlp(state, data, path, TRAINED_QUICK if quick else TRAINED, seed)
            train_seconds = time.perf_counter() - t0
            with same_threads(threads):
                row = measure_file(TRAINED_LABEL, path, data, result.float_accuracy,
                                   float_layers, repeat)
            result.rows.append({**row, "train_seconds": train_seconds})
    finally:
        if tmp is not None:
            tmp.cleanup()
    result.workdir = "" if own_dir else folder
    return result


def format_table(result: DemoResult) -> str:
    """The demo's table as aligned text (what ``qpack demo`` prints)."""
    header = ["setting", "file size", "ratio", "test accuracy", "vs float32", "inference time"]
    lines = [header]
    for r in result.rows:
        delta = r["accuracy_delta"]
        lines.append([r["setting"], f"{r['file_bytes']:,} B", f"{r['ratio']:.1f}x",
                      f"{100 * r['accuracy']:.2f}%",
                      "-" if r["setting"].startswith("float32") else f"{100 * delta:+.2f} pt",
                      f"{r['time_ratio']:.2f}x"])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for j, row in enumerate(lines):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append(f"test set: {result.n_test} digits; accuracy and time are relative to the "
               "float32 model run with numpy (x @ W.T + b), both on "
               f"{result.threads} thread{'s' if result.threads > 1 else ''}; "
               "ratio = float32 bytes / file size.")
    out.extend(result.notes)
    return "\n".join(out)


def main(quick: bool = False, out=None, trained: bool | None = None) -> int:
    """Run the demo and print its table to ``out`` (default stdout); return 0.

    ``trained``: as in ``run_demo``. Without torch the deep_compression row is left out
    and the table ends with one line naming the ``torch`` extra (still 0).
    """
    out = out or sys.stdout
    result = run_demo(quick=quick, trained=trained,
                      log=lambda line: print(line, file=out, flush=True))
    dc = [r["train_seconds"] for r in result.rows if r["setting"] == TRAINED_LABEL]
    dc_text = f" (the deep_compression row: {dc[0]:.1f} s more)" if dc else ""
    print(f"trained in {result.train_seconds:.1f} s{dc_text}; float32 test accuracy "
          f"{100 * result.float_accuracy:.2f}%\n", file=out)
    print(format_table(result), file=out)
    return 0
