"""Compress a PyTorch model's state_dict with qpack and load the result back into the model.

qpack never imports torch: ``qpack.compress`` accepts a state_dict directly (tensors are
converted through ``.detach().cpu().numpy()``), and ``CompressedModel.decompress()`` returns
numpy arrays that ``torch.from_numpy`` turns back into tensors for ``load_state_dict``.

Run: ``python examples/torch_state_dict.py`` (``--quick``: fewer training steps). Needs
torch (``pip install torch==2.13.0``; without it the example prints a line and exits 0) and
the ``demo`` extra for the digits data (``pip install -e ".[demo]"``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def main(argv: list[str] | None = None) -> int:
    """Train a small CNN briefly, compress its state_dict, reload it; exit code 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer training steps")
    args = parser.parse_args(argv)
    try:
        import torch
        from torch import nn
    except ImportError:
        print("[skip] torch is not installed (pip install torch==2.13.0); nothing to do")
        return 0
    import numpy as np

    import qpack
    from qpack import demo

    try:
        demo.require_demo_extra()  # the digits data come from scikit-learn
    except demo.MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny model: threads only add overhead on a busy machine

    class DigitsCNN(nn.Module):
        """A small conv net for the 8x8 digits: conv -> conv -> pool -> linear -> linear."""

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

    model = DigitsCNN()
    data = demo.load_digits_split()
    x_train = torch.from_numpy(data.x_train.reshape(-1, 1, 8, 8))
    y_train = torch.from_numpy(data.y_train).long()
    x_test = torch.from_numpy(data.x_test.reshape(-1, 1, 8, 8))
    y_test = torch.from_numpy(data.y_test).long()

    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = 60 if args.quick else 400
    for _ in range(steps):
        idx = torch.randint(0, len(y_train), (128,))
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def test_accuracy() -> float:
        with torch.no_grad():
            return float((model(x_test).argmax(1) == y_test).float().mean())

    float_acc = test_accuracy()
    state = model.state_dict()
    original = {k: v.detach().clone() for k, v in state.items()}

    # 1. Compress the state_dict as is. The conv kernels (16x1x3x3 = 144 weights) are
    #    below min_numel and stay exact, as do the biases; conv2 (4608 weights) and fc1
    #    get 4-bit K-means with half their weights pruned; the override keeps the 10-way
    #    output layer at 8 bits, unpruned.
    compressed = qpack.compress(state, bits=4, prune=0.5, method="kmeans", min_numel=512,
                                overrides={"fc2.weight": {"bits": 8, "prune": 0.0}})
    print(compressed.report())

    with tempfile.TemporaryDirectory(prefix="qpack-torch-") as folder:
        path = os.path.join(folder, "cnn.qpk")
        compressed.save(path)

        # 2. Load the file and decode every tensor back to numpy (shapes and dtypes as
        #    they were in the state_dict).
        restored = qpack.load(path).decompress()

    # 3. Back into the module: torch.from_numpy, then load_state_dict (strict, so a
    #    missing or misnamed tensor would raise).
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                           for k, v in restored.items()}, strict=True)
    packed_acc = test_accuracy()
    for name, tensor in model.state_dict().items():
        assert tensor.shape == original[name].shape and tensor.dtype == original[name].dtype
    exact = [n for n, t in compressed.items() if t.method == "raw"]
    assert all(torch.equal(model.state_dict()[n], original[n]) for n in exact)

    print(f"\nfloat32 test accuracy {100 * float_acc:.2f}%, after compress -> save -> load -> "
          f"load_state_dict {100 * packed_acc:.2f}% ({compressed.ratio:.1f}x smaller file, "
          f"{len(exact)} small tensors stored exactly)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
