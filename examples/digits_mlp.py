"""Tutorial: compress a trained network with qpack and run it from the compressed file.

This is ``qpack demo`` spelled out. It trains scikit-learn's MLPClassifier with the
LeNet-300-100 shape of the Deep Compression paper (64 -> 300 -> 100 -> 10 here, on the 8x8
digits that ship with scikit-learn: nothing is downloaded), then walks through the API:

1. ``qpack.compress``   prune, quantize (K-means or linear), pack, Huffman-code;
2. ``.report()``        what happened to each tensor;
3. ``.save`` / ``qpack.load``   the .qpk file, memory-mapped on load, decoded lazily;
4. ``qpack.nn.PackedLinear``    inference straight from the packed weights;
5. the demo's table over many settings (``qpack.demo.run_demo``).

Run: ``python examples/digits_mlp.py`` (``--quick``: short training, few settings). Needs
the ``demo`` extra (scikit-learn): ``pip install -e ".[demo]"``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

import qpack
from qpack import demo
from qpack.nn import PackedLinear


def main(argv: list[str] | None = None) -> int:
    """Run the tutorial; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short training, few settings")
    args = parser.parse_args(argv)
    try:
        demo.require_demo_extra()
    except demo.MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    # -- 0. A trained model -----------------------------------------------------------
    # 1797 digits, 64 pixels each scaled to [0, 1]; stratified 75/25 split.
    data = demo.load_digits_split(seed=0)
    mlp = demo.train_mlp(data, seed=0, max_iter=30 if args.quick else 200)
    # qpack works on a mapping of names to arrays (a PyTorch state_dict works as is).
    # sklearn keeps each weight as (in, out); we store the usual (out, in) layout:
    #   fc1.weight (300, 64)  fc1.bias (300,)
    #   fc2.weight (100, 300) fc2.bias (100,)
    #   fc3.weight (10, 100)  fc3.bias (10,)
    state = demo.mlp_state_dict(mlp)
    float_layers = demo.dense_layers(state)  # x @ W.T + b in float32 numpy
    float_acc = demo.accuracy(float_layers, data.x_test, data.y_test)
    print(f"float32 MLP: {sum(a.nbytes for a in state.values()):,} bytes, "
          f"test accuracy {100 * float_acc:.2f}%\n")

    # -- 1. Compress --------------------------------------------------------------------
    # Deep Compression: drop the 50% smallest weights of each matrix, share the remaining
    # values through a 16-entry K-means codebook (4-bit codes), Huffman-code the codes and
    # the gaps between kept weights. min_numel=0 quantizes even the small 10x100 output
    # layer (by default tensors under 1024 elements are stored exactly); 1-D tensors
    # (the biases) are always stored exactly.
    model = qpack.compress(state, bits=4, prune=0.5, method="kmeans", min_numel=0)

    # -- 2. Inspect ---------------------------------------------------------------------
    # One row per tensor: encoding, sparsity, bytes, ratio, and the error measured at
    # compression time (relative L2 error and signal-to-quantization-noise ratio).
    print(model.report())

    with tempfile.TemporaryDirectory(prefix="qpack-tutorial-") as folder:
        # -- 3. Save and load -----------------------------------------------------------
        path = os.path.join(folder, "digits_mlp.qpk")
        model.save(path, metadata={"model": "digits MLP 300-100"})  # atomic write
        # load() reads only the header (validated); sections are memory-mapped and each
        # is decoded (and its CRC32 checked) when first used.
        loaded = qpack.load(path)
        print(f"\n{path}: {os.path.getsize(path):,} bytes ({loaded.ratio:.1f}x smaller), "
              f"metadata model={loaded.metadata['model']!r}")

        # -- 4. Packed inference ----------------------------------------------------------
        # PackedLinear computes x @ W.T + b from the packed codes (codebook lookups inside
        # the kernel; a pruned layer runs as a sparse product): W is never materialized.
        layers = [PackedLinear(loaded[f"{name}.weight"],
                               bias=loaded[f"{name}.bias"].dequantize())
                  for name in ("fc1", "fc2", "fc3")]
        logits = demo.mlp_forward(layers, data.x_test)  # ReLU between the layers
        packed_acc = float(np.mean(logits.argmax(axis=1) == data.y_test))
        print(f"packed test accuracy {100 * packed_acc:.2f}% "
              f"(float32: {100 * float_acc:.2f}%)")

        # The same numbers through the dense route: decompress() gives numpy arrays again
        # (e.g. to load into another framework); the products agree to float rounding.
        weights = loaded.decompress()
        dense = data.x_test @ weights["fc1.weight"].T + weights["fc1.bias"]
        assert np.allclose(layers[0](data.x_test), dense, rtol=1e-4, atol=1e-4)
        del layers, loaded  # release the file mapping before the folder is removed

    # -- 5. Many settings -------------------------------------------------------------------
    # What `qpack demo` prints: every setting compressed, saved, loaded and run as above.
    print()
    result = demo.run_demo(quick=args.quick, data=data, mlp=mlp)
    print(demo.format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
