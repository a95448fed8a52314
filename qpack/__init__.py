"""qpack: compress neural-network weights (Deep Compression and sub-byte quantization)
and run inference straight from the packed form.

Public API is re-exported here; each name lives in a small module named for what it does.
"""

from qpack import metrics
from qpack._version import __version__
from qpack.bitpack import pack, packed_nbytes, unpack
from qpack.cluster import KMeansQuantized, codebook_gradient, kmeans_1d, quantize_kmeans
from qpack.entropy import HuffmanCode, huffman_decode, huffman_encode, huffman_stream_info
from qpack.errors import FormatError, QpackError
from qpack.inputs import read_model
from qpack.matmul import CodebookWeights, LinearWeights, SparseWeights
from qpack.model import CompressedModel, compress, load, save
from qpack.prune import prune_global, prune_magnitude, prune_n_m
from qpack.quantize import LinearQuantized, quantize_linear
from qpack.sparse import SparseIndex, encode_sparse_index
from qpack.tensor import CompressedTensor
from qpack.threads import get_num_threads, set_num_threads

__all__ = [
    "__version__",
    "CodebookWeights",
    "CompressedModel",
    "CompressedTensor",
    "FormatError",
    "HuffmanCode",
    "KMeansQuantized",
    "LinearQuantized",
    "LinearWeights",
    "QpackError",
    "SparseIndex",
    "SparseWeights",
    "codebook_gradient",
    "compress",
    "encode_sparse_index",
    "get_num_threads",
    "huffman_decode",
    "huffman_encode",
    "huffman_stream_info",
    "kmeans_1d",
    "load",
    "metrics",
    "pack",
    "packed_nbytes",
    "prune_global",
    "prune_magnitude",
    "prune_n_m",
    "quantize_kmeans",
    "quantize_linear",
    "read_model",
    "save",
    "set_num_threads",
    "unpack",
]
