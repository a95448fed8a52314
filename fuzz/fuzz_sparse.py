"""Atheris harness: the sparse relative index (docs/FORMAT.md section 3).

Builds ``qpack.SparseIndex.from_arrays(shape, p, gaps, row_nsym)`` from an input read with
atheris.FuzzedDataProvider, integers from the END of the input, in this order:

1. shape kind, 0..15: below 8 a plain ``(rows, cols)`` tuple; 8 ``wide`` (cols up to 2**32);
   9..15 a variant of the shape (list, numpy ints, or malformed: 1 or 3 dims, negative,
   float, bool);
2. rows 0..32 (0..4 when wide), then cols 0..512 (0..2**32 when wide);
3. p 0..9 (0 and 9 invalid); 4. gaps dtype index; 5. row_nsym dtype index (GAP_DTYPES,
   NSYM_DTYPES below);
6. ``clip`` 0..1: 1 reduces every gap byte to p bits (always a valid symbol);
7. row_nsym: one integer -1..254 (one byte) per row, cast to its dtype (-1 wraps when
   unsigned);

then ``sum(row_nsym)`` gap bytes from the FRONT (fewer if the input runs out). Unclipped,
a signed gap dtype reads each byte as int8. fuzz/make_corpus.py encodes seeds this way.

Expected: FormatError. A valid index must give ``column_indices()`` and ``to_mask()`` that
agree with each other and re-encode to the same index; anything else is a finding.
"""

from __future__ import annotations

import _common
import atheris
import numpy as np

qpack = _common.import_qpack()
FormatError = qpack.FormatError

GAP_DTYPES = (np.uint8, np.uint8, np.uint8, np.int8, np.int16, np.uint16, np.int64, np.float32)
NSYM_DTYPES = (np.uint32, np.uint32, np.int64, np.int32, np.uint64, np.uint16, np.int8,
               np.float64)
MASK_MAX = 1 << 22  # largest rows * cols the harness materializes as a mask
SHAPES = (
    lambda r, c: [r, c],
    lambda r, c: (np.int64(r), np.uint32(c)),
    lambda r, c: (r,),
    lambda r, c: (r, c, 1),
    lambda r, c: (-1 - r, c),
    lambda r, c: (r, float(c)),
    lambda r, c: (True, c),
)


def parse(data: bytes):
    """The (shape, p, gaps, row_nsym) arguments an input encodes (layout above)."""
    fdp = atheris.FuzzedDataProvider(data)
    kind = fdp.ConsumeIntInRange(0, 15)
    wide = kind == 8
    rows = fdp.ConsumeIntInRange(0, 4 if wide else 32)
    cols = fdp.ConsumeIntInRange(0, 2**32 if wide else 512)
    shape = (rows, cols) if kind <= 8 else SHAPES[kind - 9](rows, cols)
    p = fdp.ConsumeIntInRange(0, 9)
    gap_dtype = GAP_DTYPES[fdp.ConsumeIntInRange(0, len(GAP_DTYPES) - 1)]
    nsym_dtype = NSYM_DTYPES[fdp.ConsumeIntInRange(0, len(NSYM_DTYPES) - 1)]
    clip = fdp.ConsumeIntInRange(0, 1)
    counts = [fdp.ConsumeIntInRange(-1, 254) for _ in range(rows)]
    raw = np.frombuffer(fdp.ConsumeBytes(max(0, sum(counts))), dtype=np.uint8)
    if clip and 1 <= p <= 8:
        raw = raw & np.uint8((1 << p) - 1)
    elif np.dtype(gap_dtype).kind == "i":  # unclipped bytes give a signed dtype negatives
        raw = raw.view(np.int8)
    gaps = raw.astype(gap_dtype)
    row_nsym = np.array(counts, dtype=np.int64).astype(nsym_dtype)
    return shape, p, gaps, row_nsym


def test_one_input(data: bytes) -> None:
    """Validate the index; if accepted, decode it both ways and check them against it."""
    shape, p, gaps, row_nsym = parse(data)
    index = _common.attempt((FormatError,), qpack.SparseIndex.from_arrays, shape, p, gaps,
                            row_nsym)
    if index is None:
        return
    rows, cols = index.shape
    row_ptr, col_idx = index.column_indices()
    assert row_ptr.shape == (rows + 1,) and row_ptr[0] == 0, f"row_ptr {row_ptr.shape}"
    assert np.all(np.diff(row_ptr) >= 0) and row_ptr[-1] == index.nnz == col_idx.size
    assert col_idx.size == 0 or (col_idx.min() >= 0 and col_idx.max() < cols), "column range"
    for r in range(rows):
        assert np.all(np.diff(col_idx[row_ptr[r]:row_ptr[r + 1]]) > 0), f"row {r} not sorted"
    if rows * cols > MASK_MAX:
        return
    mask = index.to_mask()
    assert mask.shape == (rows, cols) and mask.dtype == np.bool_, f"mask {mask.shape}"
    assert int(mask.sum()) == index.nnz, "mask disagrees with nnz"
    # FORMAT.md: every mask has exactly one encoding for a given p.
    again = qpack.encode_sparse_index(mask, p=index.p)
    assert again == index, "re-encoding the mask gave a different index"


if __name__ == "__main__":
    _common.fuzz(test_one_input)
