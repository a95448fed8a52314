"""Write the backward-compatibility fixtures: small .qpk files plus the arrays they decode to.

Run once per format version (``python tests/data/make_fixtures.py``) and commit the output;
never regenerate an existing version's files: the tests check that today's qpack still
reads them to the same arrays. Format version 1 files are named ``v0.1.0_*`` (the qpack
release that wrote them); later ones ``format<N>_*``, by the .qpk format version they hold.
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from model_cases import small_model  # noqa: E402

import qpack  # noqa: E402
from qpack.format import FORMAT_VERSION  # noqa: E402

SETTINGS = {
    "kmeans4_prune50_huffman": dict(bits=4, prune=0.5),
    "linear3_g16_packed": dict(bits=3, method="linear", group_size=16, entropy=None),
    "linear8_channel_sym": dict(bits=8, method="linear", group_size=-1, symmetric=True),
    "kmeans2_prune90": dict(bits=2, prune=0.9),
    # the side information that format version 3 stores more narrowly
    "linear4_g64_sym": dict(bits=4, method="linear", group_size=64, symmetric=True),
    "linear2_row_asym_sparse": dict(bits=2, method="linear", group_size=-1, prune=0.6),
    "kmeans3_per_channel": dict(bits=3, per_channel=True, entropy=None),
}


def main() -> None:
    prefix = f"v{qpack.__version__}" if FORMAT_VERSION == 1 else f"format{FORMAT_VERSION}"
    model = small_model(seed=3)
    for key, kw in SETTINGS.items():
        base = os.path.join(HERE, f"{prefix}_{key}")
        if os.path.exists(base + ".qpk"):
            print(f"keep {base}.qpk")
            continue
        cm = qpack.compress(model, min_numel=0, **kw)
        cm.save(base + ".qpk", metadata={"fixture": key})
        np.savez(base + ".expected.npz", **qpack.load(base + ".qpk").decompress())
        print(f"wrote {base}.qpk ({cm.nbytes} bytes)")


if __name__ == "__main__":
    main()
