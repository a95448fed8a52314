"""From PyTorch: compress an nn.Module, save it, and run the .qpk inside a fresh model.

A small CNN (two 3x3 convolutions and two linear layers) is trained briefly on the 8x8
digits that ship with scikit-learn. Then:

1. ``qpack.compress(model, ...)`` takes the module itself (through its ``state_dict()``);
2. ``cm.save(path)`` writes the .qpk;
3. ``qpack.torch.load_packed(fresh_model, path)`` replaces every nn.Conv2d / nn.Linear
   whose weight is quantized by a packed module (``qpack.torch.PackedConv2d`` /
   ``PackedLinear``) that runs on the packed codes, and loads the rest (biases);
4. accuracy and latency of the packed model are compared with the float model's.

Run: ``python examples/torch_cnn.py`` (``--quick``: short training). Needs torch
(``pip install torch==2.13.0``; without it the example prints a line and exits 0) and the
``demo`` extra for the digits data (``pip install -e ".[demo]"``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def digits_cnn_class():
    """The example's model class (defined here so that torch is imported only when run)."""
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        """conv(1->16) -> conv(16->32) -> 2x2 max-pool -> linear(512->128) -> linear(->10)."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.fc1 = nn.Linear(32 * 4 * 4, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    return DigitsCNN


def train_digits_cnn(quick: bool):
    """(model class, trained model in eval mode, x_test, y_test) on the sklearn digits."""
    import torch
    from torch import nn

    from qpack import demo

    torch.manual_seed(0)
    data = demo.load_digits_split()
    x_train = torch.from_numpy(data.x_train.reshape(-1, 1, 8, 8))
    y_train = torch.from_numpy(data.y_train).long()
    x_test = torch.from_numpy(data.x_test.reshape(-1, 1, 8, 8))
    y_test = torch.from_numpy(data.y_test).long()
    cls = digits_cnn_class()
    model = cls()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(80 if quick else 500):
        idx = torch.randint(0, len(y_train), (128,))
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return cls, model.eval(), x_test, y_test


def compare(cls, model, x_test, y_test, repeats: int) -> tuple[list[tuple], list[str], object]:
    """Compress ``model``, save, load_packed into a fresh ``cls()``; return table rows
    (label, file bytes, ratio, accuracy %, ms batch 1, ms full batch), the packed module
    types and the CompressedModel."""
    import torch

    import qpack
    import qpack.torch

    def accuracy(net) -> float:
        with torch.inference_mode():
            return 100 * float((net(x_test).argmax(1) == y_test).float().mean())

    # every weight (conv kernels included: min_numel=0) gets 4-bit K-means, the 10-way
    # output layer 8 bits; biases stay exact
    cm = qpack.compress(model, bits=4, min_numel=0, overrides={"fc2.weight": {"bits": 8}})
    float_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    with tempfile.TemporaryDirectory(prefix="qpack-cnn-") as folder:
        path = os.path.join(folder, "cnn.qpk")
        size = cm.save(path)
        # a fresh instance (random weights) gets the file: packed layers + exact biases
        packed = qpack.torch.load_packed(cls(), path).eval()
        kinds = sorted({type(m).__name__ for m in packed.modules()
                        if type(m).__name__.startswith("Packed")})
        rows = []
        for label, net, nbytes in (("float32 (torch)", model, float_bytes),
                                   ("qpack 4-bit, load_packed", packed, size)):
            with torch.inference_mode():
                t1 = median_ms(lambda net=net: net(x_test[:1]), repeats)
                tb = median_ms(lambda net=net: net(x_test), repeats)
            rows.append((label, nbytes, float_bytes / nbytes, accuracy(net), t1, tb))
    return rows, kinds, cm


def main(argv: list[str] | None = None) -> int:
    """Train, compress, save, load_packed, compare; print the table; exit code 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short training, few timings")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("[skip] torch is not installed (pip install torch==2.13.0); nothing to do")
        return 0

    import qpack
    from qpack import demo

    try:
        demo.require_demo_extra()  # the digits data come from scikit-learn
    except demo.MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    torch.set_num_threads(1)  # a tiny model: one thread each for torch and qpack
    qpack.set_num_threads(1)

    cls, model, x_test, y_test = train_digits_cnn(args.quick)
    rows, kinds, cm = compare(cls, model, x_test, y_test, 5 if args.quick else 30)
    print(cm.report())
    print(f"\npacked modules in the loaded model: {', '.join(kinds)}")
    print(f"\n| model | file bytes | ratio | test accuracy % | ms batch 1 | "
          f"ms batch {len(y_test)} |")
    print("|---|---|---|---|---|---|")
    for label, nbytes, ratio, acc, t1, tb in rows:
        print(f"| {label} | {nbytes:,} | {ratio:.1f} | {acc:.2f} | {t1:.3f} | {tb:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
