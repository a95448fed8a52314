"""Atheris harness: Huffman stream parsing and decoding (docs/FORMAT.md section 2).

Input layout, read with atheris.FuzzedDataProvider, which takes integers from the END of
the input and bytes from the front:

- last byte: how ``max_count`` is chosen (mod 3): 0 None, 1 a 16-bit bound in the next
  2 bytes from the end, 2 a 64-bit bound in the next 8;
- next byte from the end: the buffer type (mod 3): 0 bytes, 1 a numpy uint8 view at an odd
  address, 2 a memoryview of a bytearray;
- everything before that: the stream, passed to ``qpack.huffman_stream_info`` and
  ``qpack.huffman_decode``. So a seed is an encoded stream followed by these trailer bytes
  (fuzz/make_corpus.py writes them).

Expected: FormatError. Anything else, or a decoded result that contradicts the header or
does not survive re-encoding, is a finding.
"""

from __future__ import annotations

import _common
import atheris
import numpy as np

qpack = _common.import_qpack()
FormatError = qpack.FormatError


def parse(data: bytes):
    """Split a fuzz input into (buffer to decode, max_count) as the layout above says."""
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    max_count = None
    if mode == 1:
        max_count = fdp.ConsumeIntInRange(0, 0xFFFF)
    elif mode == 2:
        max_count = fdp.ConsumeIntInRange(0, 2**64 - 1)
    kind = fdp.ConsumeIntInRange(0, 2)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    if kind == 1:  # odd address: kernels must not assume an aligned buffer
        buf = np.empty(len(stream) + 1, dtype=np.uint8)[1:]
        buf[:] = np.frombuffer(stream, dtype=np.uint8)
        return buf, max_count
    return (stream if kind == 0 else memoryview(bytearray(stream))), max_count


def test_one_input(data: bytes) -> None:
    """Read the header, decode the stream, and check the result against the header."""
    buf, max_count = parse(data)
    nbytes = len(bytes(buf))
    info = _common.attempt((FormatError,), qpack.huffman_stream_info, buf, max_count=max_count)
    out = _common.attempt((FormatError,), qpack.huffman_decode, buf, max_count=max_count)
    if out is None:
        return
    assert info is not None, "huffman_decode accepted a stream huffman_stream_info rejects"
    assert out.ndim == 1 and out.dtype == info.dtype, f"decoded {out.dtype} {out.shape}"
    assert out.size == info.count, f"decoded {out.size} symbols, header says {info.count}"
    assert max_count is None or out.size <= max_count, f"{out.size} symbols > {max_count}"
    # No code is shorter than one bit, so the output is bounded by the input size.
    assert out.size <= 8 * nbytes, f"{out.size} symbols from {nbytes} bytes"
    if out.size:
        assert int(out.max()) < info.alphabet_size, "decoded a symbol outside the alphabet"
    again = qpack.huffman_decode(qpack.huffman_encode(out, alphabet_size=info.alphabet_size))
    assert np.array_equal(again, out), "re-encoding the decoded symbols changed them"


if __name__ == "__main__":
    _common.fuzz(test_one_input)
