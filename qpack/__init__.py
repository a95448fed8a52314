"""qpack: compress neural-network weights (Deep Compression and sub-byte quantization)
and run inference straight from the packed form.

Public API is re-exported here; each name lives in a small module named for what it does.
"""

from qpack._version import __version__
from qpack.bitpack import pack, packed_nbytes, unpack
from qpack.errors import FormatError, QpackError
from qpack.threads import get_num_threads, set_num_threads

__all__ = [
    "__version__",
    "FormatError",
    "QpackError",
    "get_num_threads",
    "pack",
    "packed_nbytes",
    "set_num_threads",
    "unpack",
]
