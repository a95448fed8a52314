"""Sparse relative-index encoding of a pruned tensor's keep-mask (docs/FORMAT.md section 3).

Rows are walked in CSR order. With F = 2**p - 1 (the filler symbol), a cursor c starts at
0 in every row; a symbol s < F means "skip s pruned columns, then a kept weight sits at
column c + s" (and c moves past it), and s == F means "skip F pruned columns" with no
weight. A gap g >= F is therefore written as g // F fillers followed by g % F. Trailing
pruned columns of a row need no symbols, and a row never ends with a filler, so every
mask has exactly one encoding for a given p (1 <= p <= 8).

Codes or values of the kept weights are stored elsewhere, one per kept weight in CSR
order; fillers carry none. This module validates and allocates; the loops run in
``qpack._kernels.sparse``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qpack._kernels import sparse as _k
from qpack._validate import check_bits
from qpack.entropy import huffman_encoded_nbytes
from qpack.errors import FormatError
from qpack.threads import get_num_threads

_MAX_COLS = 2**31 - 1  # kept columns are reported as int32
# Below this many mask cells (or symbols) one thread is faster: waking an OpenMP team
# costs more than the work on a busy machine.
_PARALLEL_MIN_WORK = 1 << 18


def _threads(work: int) -> int:
    return get_num_threads() if work >= _PARALLEL_MIN_WORK else 1


def _check_shape(shape) -> tuple[int, int]:
    try:
        vals = tuple(shape)
    except TypeError:
        raise FormatError(f"shape must be (rows, cols), got {shape!r}") from None
    if len(vals) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 for v in vals):
        raise FormatError(f"shape must be two non-negative integers, got {shape!r}")
    rows, cols = int(vals[0]), int(vals[1])
    if rows < 0 or cols < 0:
        raise FormatError(f"shape must be two non-negative integers, got {shape!r}")
    if cols > _MAX_COLS:
        raise FormatError(f"at most {_MAX_COLS} columns are supported, got {cols}")
    return rows, cols


@dataclass(frozen=True, eq=False)
class SparseIndex:
    """Positions of the kept weights of a (rows, cols) matrix as relative gap symbols.

    Fields
    ------
    shape : (rows, cols).
    p : gap width in bits, 1..8; the filler symbol is F = 2**p - 1.
    gaps : uint8 (nsym,), the symbols of all rows concatenated, each < 2**p.
    row_nsym : uint32 (rows,), how many symbols each row has; sums to nsym.

    Construction validates everything (FormatError on any inconsistency), so an instance
    always describes a real mask. Build one with ``encode_sparse_index`` (from a mask) or
    ``SparseIndex.from_arrays`` (from stored arrays).
    """

    shape: tuple[int, int]
    p: int
    gaps: np.ndarray
    row_nsym: np.ndarray

    def __post_init__(self):
        shape = _check_shape(self.shape)
        try:
            p = check_bits(self.p, "p")
        except ValueError as exc:
            raise FormatError(str(exc)) from None
        gaps, row_nsym = self.gaps, self.row_nsym
        if not isinstance(gaps, np.ndarray) or gaps.dtype != np.uint8 or gaps.ndim != 1:
            raise FormatError("gaps must be a 1-D uint8 array")
        if (not isinstance(row_nsym, np.ndarray) or row_nsym.dtype != np.uint32
                or row_nsym.ndim != 1):
            raise FormatError("row_nsym must be a 1-D uint32 array")
        if row_nsym.shape[0] != shape[0]:
            raise FormatError(f"row_nsym has {row_nsym.shape[0]} entries for {shape[0]} rows")
        gaps = np.ascontiguousarray(gaps)
        sym_off = np.zeros(shape[0] + 1, dtype=np.int64)
        np.cumsum(row_nsym, out=sym_off[1:])
        if int(sym_off[-1]) != gaps.shape[0]:
            raise FormatError(f"row_nsym sums to {int(sym_off[-1])} symbols but gaps holds "
                              f"{gaps.shape[0]}")
        row_nnz = np.empty(shape[0], dtype=np.int64)
        bad = _k.walk_count(gaps, sym_off, p, shape[1], row_nnz,
                             _threads(gaps.shape[0]))
        if bad:
            first = int(np.flatnonzero(row_nnz < 0)[0])
            raise FormatError(f"{bad} row(s) of the sparse index are inconsistent (first: row "
                              f"{first}: a symbol >= 2**{p}, a column >= {shape[1]}, or a "
                              "trailing filler)")
        row_ptr = np.zeros(shape[0] + 1, dtype=np.int64)
        np.cumsum(row_nnz, out=row_ptr[1:])
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "gaps", gaps)
        object.__setattr__(self, "_sym_off", sym_off)
        object.__setattr__(self, "_row_ptr", row_ptr)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_arrays(cls, shape, p, gaps, row_nsym) -> SparseIndex:
        """Build from stored arrays, validating everything (FormatError otherwise).

        ``gaps`` and ``row_nsym`` may be any 1-D integer array-likes (e.g. views of a
        mapped file); values are range-checked before conversion to uint8 / uint32.
        """
        g = np.asarray(gaps)
        r = np.asarray(row_nsym)
        for name, a in (("gaps", g), ("row_nsym", r)):
            if a.ndim != 1:
                raise FormatError(f"{name} must be 1-D, got shape {a.shape}")
            if a.size and a.dtype.kind not in "iu":
                raise FormatError(f"{name} must hold integers, got {a.dtype}")
        if g.dtype != np.uint8:
            if g.size and (int(g.min()) < 0 or int(g.max()) > 255):
                raise FormatError("gap symbols must be in 0..255")
            g = g.astype(np.uint8)
        if r.dtype != np.uint32:
            if r.size and (int(r.min()) < 0 or int(r.max()) > 2**32 - 1):
                raise FormatError("row_nsym values must be in 0..2**32-1")
            r = r.astype(np.uint32)
        return cls(shape, p, g, r)

    # -- derived figures --------------------------------------------------------------
    @property
    def filler(self) -> int:
        """The filler symbol F = 2**p - 1."""
        return (1 << self.p) - 1

    @property
    def nnz(self) -> int:
        """Number of kept weights (symbols other than the filler)."""
        return int(self._row_ptr[-1])

    @property
    def nsym(self) -> int:
        """Number of gap symbols, fillers included."""
        return int(self.gaps.shape[0])

    @property
    def nfill(self) -> int:
        """Number of filler symbols."""
        return self.nsym - self.nnz

    @property
    def nbytes(self) -> int:
        """Bytes of the raw arrays (gaps + row_nsym), before any entropy coding."""
        return int(self.gaps.nbytes + self.row_nsym.nbytes)

    @property
    def row_nnz(self) -> np.ndarray:
        """int64 (rows,): kept weights per row."""
        return np.diff(self._row_ptr)

    def __eq__(self, other) -> bool:
        if not isinstance(other, SparseIndex):
            return NotImplemented
        return (self.shape == other.shape and self.p == other.p
                and np.array_equal(self.gaps, other.gaps)
                and np.array_equal(self.row_nsym, other.row_nsym))

    __hash__ = None

    # -- decoding ---------------------------------------------------------------------
    def column_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR positions of the kept weights.

        Returns ``(row_ptr, cols)``: row_ptr int64 (rows + 1,) with row i's weights at
        cols[row_ptr[i]:row_ptr[i+1]]; cols int32 (nnz,), increasing within each row.
        Raises FormatError if the arrays have been altered into an inconsistent walk.
        """
        row_ptr = self._row_ptr.copy()
        col_idx = np.empty(int(row_ptr[-1]), dtype=np.int32)
        if self.gaps.shape[0] != int(self._sym_off[-1]):
            raise FormatError("gaps changed length since validation")
        bad = _k.walk_fill(self.gaps, self._sym_off, self.p, self.shape[1], row_ptr, col_idx,
                           _threads(self.gaps.shape[0]))
        if bad:
            raise FormatError(f"{bad} row(s) of the sparse index are inconsistent")
        return row_ptr, col_idx

    def to_mask(self) -> np.ndarray:
        """The keep-mask: bool (rows, cols), True where a weight is kept."""
        row_ptr, col_idx = self.column_indices()
        mask = np.zeros(self.shape, dtype=np.uint8)
        _k.fill_mask(row_ptr, col_idx, mask, _threads(mask.size))
        return mask.view(np.bool_)


def _mask_as_uint8(mask) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise ValueError(f"mask must be a bool array, got {arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(f"mask must be at least 2-D (rows, cols), got shape {arr.shape}")
    rows = arr.shape[0]
    cols = int(np.prod(arr.shape[1:], dtype=np.int64))
    if cols > _MAX_COLS:
        raise ValueError(f"mask rows may have at most {_MAX_COLS} columns, got {cols}")
    return np.ascontiguousarray(arr).reshape(rows, cols).view(np.uint8)


def gap_histogram(mask) -> np.ndarray:
    """int64 (cols,): how many kept weights follow exactly g pruned columns in their row.

    ``mask`` as in ``encode_sparse_index``. The histogram of the p-bit symbols follows
    from it for every p (see ``gap_symbol_histogram``).
    """
    m = _mask_as_uint8(mask)
    hist = np.zeros(max(m.shape[1], 1), dtype=np.int64)
    _k.gap_histogram(m, hist)
    return hist


def gap_symbol_histogram(gap_hist, p: int) -> np.ndarray:
    """int64 (2**p,): counts of the gap symbols for width p, from a raw gap histogram.

    A gap g becomes g // F fillers (symbol F = 2**p - 1) and one symbol g % F.
    """
    p = check_bits(p, "p")
    h = np.asarray(gap_hist, dtype=np.int64)
    F = (1 << p) - 1
    g = np.arange(h.shape[0], dtype=np.int64)
    freqs = np.zeros(1 << p, dtype=np.int64)
    np.add.at(freqs, g % F, h)
    freqs[F] += int(np.dot(h, g // F))
    return freqs


def choose_gap_bits(gap_hist, max_len: int = 15) -> int:
    """The p in 1..8 whose Huffman-coded gap stream is smallest (ties: smaller p)."""
    sizes = [huffman_encoded_nbytes(gap_symbol_histogram(gap_hist, p), max_len)
             for p in range(1, 9)]
    return 1 + int(np.argmin(sizes))


def encode_sparse_index(mask, p: int | None = None) -> SparseIndex:
    """Encode a keep-mask as relative gap symbols.

    Parameters
    ----------
    mask : bool array, 2-D (rows, cols); an N-D mask (N > 2) is viewed as
        (shape[0], prod(shape[1:])).
    p : gap width 1..8, or None to pick the width whose Huffman-coded gap stream
        (``huffman_encoded_nbytes``) is smallest.

    Returns
    -------
    SparseIndex with ``to_mask()`` equal to the (2-D view of the) mask.

    Raises
    ------
    ValueError: non-bool or < 2-D mask, p outside 1..8.
    """
    m = _mask_as_uint8(mask)
    if p is None:
        p = choose_gap_bits(gap_histogram(m.view(np.bool_)))
    else:
        p = check_bits(p, "p")
    rows = m.shape[0]
    row_nsym = np.empty(rows, dtype=np.uint32)
    _k.count_symbols(m, p, row_nsym, _threads(m.size))
    row_off = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(row_nsym, out=row_off[1:])
    gaps = np.empty(int(row_off[-1]), dtype=np.uint8)
    _k.fill_symbols(m, p, row_off, gaps, _threads(m.size))
    return SparseIndex(m.shape, p, gaps, row_nsym)
