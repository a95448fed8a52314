"""qpack: compress neural-network weights (Deep Compression and sub-byte quantization)
and run inference straight from the packed form.

Public API is re-exported here; each name lives in a small module named for what it does.
"""

from qpack._version import __version__
from qpack.bitpack import pack, packed_nbytes, unpack
from qpack.entropy import HuffmanCode, huffman_decode, huffman_encode, huffman_stream_info
from qpack.errors import FormatError, QpackError
from qpack.sparse import SparseIndex, encode_sparse_index
from qpack.threads import get_num_threads, set_num_threads

__all__ = [
    "__version__",
    "FormatError",
    "HuffmanCode",
    "QpackError",
    "SparseIndex",
    "encode_sparse_index",
    "get_num_threads",
    "huffman_decode",
    "huffman_encode",
    "huffman_stream_info",
    "pack",
    "packed_nbytes",
    "set_num_threads",
    "unpack",
]
