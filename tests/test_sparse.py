"""qpack.encode_sparse_index / SparseIndex against a plain-Python reference of FORMAT.md s. 3."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qpack
from qpack import FormatError, SparseIndex, encode_sparse_index
from qpack.entropy import huffman_encode, huffman_encoded_nbytes
from qpack.sparse import choose_gap_bits, gap_histogram, gap_symbol_histogram

# --- plain-Python reference of docs/FORMAT.md section 3 --------------------------------


def ref_encode(mask: np.ndarray, p: int) -> tuple[list[int], list[int]]:
    """Gap symbols and per-row symbol counts, written straight from the rules."""
    F = (1 << p) - 1
    gaps, row_nsym = [], []
    for row in mask:
        syms, c = [], 0
        for j in np.flatnonzero(row):
            g = int(j) - c
            while g >= F:
                syms.append(F)
                g -= F
            syms.append(g)
            c = int(j) + 1
        gaps += syms
        row_nsym.append(len(syms))
    return gaps, row_nsym


def ref_walk(gaps, row_nsym, p: int, cols: int) -> list[list[int]]:
    """Kept columns of every row by walking the symbols with the cursor rule."""
    F = (1 << p) - 1
    out, k = [], 0
    for n in row_nsym:
        c, kept = 0, []
        for s in gaps[k:k + n]:
            if s == F:
                c += F
            else:
                c += s
                kept.append(c)
                c += 1
        k += n
        assert all(col < cols for col in kept)
        out.append(kept)
    return out


def check_roundtrip(mask: np.ndarray, p):
    idx = encode_sparse_index(mask, p)
    mask2d = mask.reshape(mask.shape[0], int(np.prod(mask.shape[1:])))
    ref_gaps, ref_nsym = ref_encode(mask2d, idx.p)
    assert idx.gaps.dtype == np.uint8 and idx.row_nsym.dtype == np.uint32
    assert idx.gaps.tolist() == ref_gaps
    assert idx.row_nsym.tolist() == ref_nsym
    assert idx.shape == mask2d.shape
    assert idx.nnz == int(mask.sum())
    assert idx.nfill == idx.nsym - idx.nnz
    np.testing.assert_array_equal(idx.to_mask(), mask2d)
    row_ptr, cols = idx.column_indices()
    assert row_ptr.dtype == np.int64 and cols.dtype == np.int32
    rows_ref = ref_walk(ref_gaps, ref_nsym, idx.p, mask2d.shape[1])
    assert np.diff(row_ptr).tolist() == [len(r) for r in rows_ref]
    assert cols.tolist() == [c for r in rows_ref for c in r]
    again = SparseIndex.from_arrays(idx.shape, idx.p, idx.gaps.astype(np.int64),
                                    idx.row_nsym.astype(np.int64))
    assert again == idx
    return idx


# --- round trips -----------------------------------------------------------------------

MASKS = hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=3, min_side=0, max_side=40))


@given(MASKS, st.integers(1, 8))
def test_roundtrip_random_masks(mask, p):
    check_roundtrip(mask, p)


@given(st.integers(1, 30), st.integers(1, 300), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_roundtrip_density_and_auto_p(rows, cols, density, seed):
    mask = np.random.default_rng(seed).random((rows, cols)) < density
    idx = check_roundtrip(mask, None)
    ghist = gap_histogram(mask)
    sizes = [huffman_encoded_nbytes(gap_symbol_histogram(ghist, p)) for p in range(1, 9)]
    assert sizes[idx.p - 1] == min(sizes)
    # The chosen size is what actually encoding the gap stream costs.
    assert len(huffman_encode(idx.gaps, alphabet_size=1 << idx.p)) == sizes[idx.p - 1]


@pytest.mark.parametrize("shape", [(0, 0), (0, 7), (5, 0), (1, 1), (3, 1000), (64, 65)])
@pytest.mark.parametrize("fill", ["none", "all", "empty_rows"])
def test_degenerate_masks(shape, fill):
    if fill == "none":
        mask = np.zeros(shape, bool)
    elif fill == "all":
        mask = np.ones(shape, bool)
    else:
        mask = np.random.default_rng(0).random(shape) < 0.3
        mask[::2] = False
    for p in range(1, 9):
        idx = check_roundtrip(mask, p)
        if fill == "none":
            assert idx.nsym == 0 and idx.nnz == 0
        if fill == "all":
            assert idx.nfill == 0 and not idx.gaps.any()


@pytest.mark.parametrize("p", range(1, 9))
def test_gaps_at_filler_edges(p):
    F = (1 << p) - 1
    for gap in sorted({F - 1, F, F + 1, 2 * F, 2 * F + 1, 0, 1}):
        if gap < 0:
            continue
        mask = np.zeros((2, gap + 3), bool)
        mask[0, gap] = True          # first kept weight after `gap` pruned columns
        mask[1, 0] = True
        mask[1, gap + 1] = True      # a gap between two kept weights
        idx = check_roundtrip(mask, p)
        expect = [F] * (gap // F) + [gap % F]
        assert idx.gaps.tolist() == expect + [0] + expect


def test_filler_semantics_hand_written():
    # p = 2, F = 3. Row 0: kept at 1, 5, 6, 13 (cols 16). Row 1: empty. Row 2: kept at 3.
    mask = np.zeros((3, 16), bool)
    mask[0, [1, 5, 6, 13]] = True
    mask[2, 3] = True
    idx = encode_sparse_index(mask, p=2)
    # Row 0: gap 1 -> [1]; gap 3 -> [F, 0]; gap 0 -> [0]; gap 6 -> [F, F, 0]. Row 2: [F, 0].
    assert idx.gaps.tolist() == [1, 3, 0, 0, 3, 3, 0, 3, 0]
    assert idx.row_nsym.tolist() == [7, 0, 2]
    row_ptr, cols = idx.column_indices()
    assert row_ptr.tolist() == [0, 4, 4, 5]
    assert cols.tolist() == [1, 5, 6, 13, 3]
    # Decoding the hand-written stream of the same rules gives the same mask back.
    hand = SparseIndex.from_arrays((3, 16), 2, [1, 3, 0, 0, 3, 3, 0, 3, 0], [7, 0, 2])
    np.testing.assert_array_equal(hand.to_mask(), mask)
    assert hand.filler == 3 and hand.nnz == 5 and hand.nfill == 4
    assert hand.nbytes == 9 + 3 * 4
    np.testing.assert_array_equal(hand.row_nnz, [4, 0, 1])


def test_nd_mask_and_choose_p():
    mask = np.random.default_rng(3).random((8, 4, 5)) < 0.5
    idx = check_roundtrip(mask, None)
    assert idx.shape == (8, 20)
    very_sparse = np.zeros((4, 5000), bool)
    very_sparse[:, ::700] = True  # long gaps favour wide p
    dense = np.random.default_rng(4).random((64, 64)) < 0.9  # short gaps favour small p
    assert choose_gap_bits(gap_histogram(very_sparse)) > choose_gap_bits(gap_histogram(dense))


def test_gap_symbol_histogram_matches_reference():
    mask = np.random.default_rng(7).random((20, 300)) < 0.1
    for p in range(1, 9):
        gaps, _ = ref_encode(mask, p)
        np.testing.assert_array_equal(gap_symbol_histogram(gap_histogram(mask), p),
                                      np.bincount(gaps, minlength=1 << p))


# --- bad arguments and hostile arrays -------------------------------------------------


def test_encode_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bool"):
        encode_sparse_index(np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        encode_sparse_index(np.zeros(5, bool))
    for p in (0, 9, 2.0, True):
        with pytest.raises(ValueError, match="p"):
            encode_sparse_index(np.zeros((2, 2), bool), p)


def test_from_arrays_rejects_inconsistent_streams():
    ok = SparseIndex.from_arrays((2, 8), 2, [1, 3, 0, 0], [3, 1])
    assert ok.to_mask().sum() == 3
    bad_cases = [
        ((2, 8), 2, [1, 3, 0, 0], [3, 2]),        # sum(row_nsym) != len(gaps)
        ((2, 8), 2, [1, 3, 0, 0], [4]),           # row_nsym length != rows
        ((2, 8), 2, [1, 4, 0, 0], [3, 1]),        # symbol >= 2**p
        ((2, 8), 2, [1, 3, 3, 0], [3, 1]),        # walk passes cols (1 + 1 + 3 + 3 = 8)
        ((2, 8), 2, [1, 3, 0, 3], [3, 1]),        # row ends with a filler
        ((2, 3), 1, [0, 0, 0, 0], [4, 0]),        # four kept weights in 3 columns
        ((2, 8), 0, [0], [1, 0]),                 # p out of range
        ((2, 8), 9, [0], [1, 0]),
        ((2, 8), 2, [-1], [1, 0]),
        ((2, 8), 2, [256], [1, 0]),
        ((2, 8), 2, [0], [-1, 2]),
        ((2, 8), 2, [[0]], [1, 0]),
        ((2, 8), 2, [0.0], [1, 0]),
        ((2,), 2, [0], [1]),
        ((-1, 8), 2, [], []),
        ((2, 8.0), 2, [0], [1, 0]),
        (5, 2, [0], [1]),
    ]
    for shape, p, gaps, nsym in bad_cases:
        with pytest.raises(FormatError):
            SparseIndex.from_arrays(shape, p, gaps, nsym)
            pytest.fail(repr((shape, p, gaps, nsym)))
    with pytest.raises(FormatError):
        SparseIndex((2, 8), 2, np.array([1, 3, 0, 0], np.int64), np.array([3, 1], np.uint32))


def test_column_indices_detects_arrays_altered_after_validation():
    idx = encode_sparse_index(np.eye(6, dtype=bool), 3)
    idx.gaps[-1] = 6  # now walks to column 5 + 6 = 11 >= 6
    with pytest.raises(FormatError):
        idx.column_indices()
    with pytest.raises(FormatError):
        idx.to_mask()


def test_random_hostile_arrays_never_crash():
    rng = np.random.default_rng(9)
    accepted = 0
    for _ in range(2000):
        rows, cols, p = int(rng.integers(0, 6)), int(rng.integers(0, 20)), int(rng.integers(1, 9))
        n = int(rng.integers(0, 12))
        gaps = rng.integers(0, 1 << p, n)
        nsym = rng.multinomial(n, np.ones(rows) / rows) if rows else np.zeros(0, int)
        try:
            idx = SparseIndex.from_arrays((rows, cols), p, gaps, nsym)
        except FormatError:
            continue
        accepted += 1
        mask = idx.to_mask()
        assert encode_sparse_index(mask, p) == idx  # one encoding per mask
    assert accepted > 50


def test_exports():
    assert qpack.SparseIndex is SparseIndex and qpack.encode_sparse_index is encode_sparse_index


def test_large_mask_uses_threads_and_roundtrips():
    # Above the size where the kernels run rows in parallel.
    mask = np.random.default_rng(11).random((700, 500)) < 0.3
    mask[5] = False
    mask[9] = True
    for p in (None, 1, 8):
        check_roundtrip(mask, p)
