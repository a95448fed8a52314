"""qpack: compress neural-network weights (Deep Compression and sub-byte quantization)
and run inference straight from the packed form.

The public API is re-exported here; each name lives in a small module named for what it
does. Names are imported on first use (PEP 562), so ``import qpack`` and ``qpack
--version`` stay fast: numpy, the kernels and the rest load when something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from qpack._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "pack": "qpack.bitpack", "packed_nbytes": "qpack.bitpack", "unpack": "qpack.bitpack",
    "HessianStats": "qpack.calibration",
    "open_checkpoint": "qpack.checkpoint",
    "KMeansQuantized": "qpack.cluster", "codebook_gradient": "qpack.cluster",
    "kmeans_1d": "qpack.cluster", "quantize_kmeans": "qpack.cluster",
    "HuffmanCode": "qpack.entropy", "huffman_decode": "qpack.entropy",
    "huffman_encode": "qpack.entropy", "huffman_stream_info": "qpack.entropy",
    "FormatError": "qpack.errors", "QpackError": "qpack.errors",
    "local_workers": "qpack.executors",
    "quantize_kmeans_gptq": "qpack.gptq", "quantize_linear_gptq": "qpack.gptq",
    "read_model": "qpack.inputs",
    "quantize_log": "qpack.logquant",
    "CodebookWeights": "qpack.matmul", "LinearWeights": "qpack.matmul",
    "SparseWeights": "qpack.matmul",
    "CompressedModel": "qpack.model", "compress": "qpack.model", "load": "qpack.model",
    "save": "qpack.model",
    "prune_global": "qpack.prune", "prune_magnitude": "qpack.prune",
    "prune_n_m": "qpack.prune",
    "LinearQuantized": "qpack.quantize", "quantize_linear": "qpack.quantize",
    "SparseIndex": "qpack.sparse", "encode_sparse_index": "qpack.sparse",
    "CompressedTensor": "qpack.tensor",
    "get_num_threads": "qpack.threads", "set_num_threads": "qpack.threads",
    "kernel_info": "qpack.isa",
    "DispatchPolicy": "qpack.dispatch",
}
_SUBMODULES = ("metrics",)

__all__ = ["__version__", *sorted(_EXPORTS), *_SUBMODULES]


def __getattr__(name: str):
    """Import a public name's module on first access (then cache the name here)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"qpack.{name}")
    else:
        raise AttributeError(f"module 'qpack' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from qpack import metrics  # noqa: F401
    from qpack.bitpack import pack, packed_nbytes, unpack  # noqa: F401
    from qpack.calibration import HessianStats  # noqa: F401
    from qpack.checkpoint import open_checkpoint  # noqa: F401
    from qpack.cluster import (  # noqa: F401
        KMeansQuantized,
        codebook_gradient,
        kmeans_1d,
        quantize_kmeans,
    )
    from qpack.dispatch import DispatchPolicy  # noqa: F401
    from qpack.entropy import (  # noqa: F401
        HuffmanCode,
        huffman_decode,
        huffman_encode,
        huffman_stream_info,
    )
    from qpack.errors import FormatError, QpackError  # noqa: F401
    from qpack.executors import local_workers  # noqa: F401
    from qpack.gptq import quantize_kmeans_gptq, quantize_linear_gptq  # noqa: F401
    from qpack.inputs import read_model  # noqa: F401
    from qpack.isa import kernel_info  # noqa: F401
    from qpack.logquant import quantize_log  # noqa: F401
    from qpack.matmul import CodebookWeights, LinearWeights, SparseWeights  # noqa: F401
    from qpack.model import CompressedModel, compress, load, save  # noqa: F401
    from qpack.prune import prune_global, prune_magnitude, prune_n_m  # noqa: F401
    from qpack.quantize import LinearQuantized, quantize_linear  # noqa: F401
    from qpack.sparse import SparseIndex, encode_sparse_index  # noqa: F401
    from qpack.tensor import CompressedTensor  # noqa: F401
    from qpack.threads import get_num_threads, set_num_threads  # noqa: F401
