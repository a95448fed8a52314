"""Logarithmic quantization: sign plus power-of-two magnitude levels, stored as a codebook.

A log grid is a fixed codebook, so a log-quantized tensor is an ordinary
``KMeansQuantized``: the file format, the Huffman coding, the sparse layout and the
codebook matmul kernels are the ones K-means uses. Only the codebook differs. For b bits
and a scale m (per tensor, or per row with ``per_channel``) it holds, in ascending order,

    -m, -m/B, ..., -m/B^(n_neg-1),  0,  m/B^(n_pos-1), ..., m/B, m        (B = base, 2)

with n_neg + n_pos = 2^b - 1: an exact 0.0 (the code of pruned and zero weights) and the
2^b - 1 other codes split between the signs, one side getting one level more (2^(b-1)
levels against 2^(b-1) - 1). The side is the one that gives the smaller squared error
(the same side for every row: the zero's index must be the same in each row). That
extra level is worth having at low widths: on 768x768 Gaussian weights a symmetric grid
(one code unused) has relative error 0.436 at 2 bits and 0.218 at 3, this one 0.383 and
0.210.
Exception: 1 bit without a mask is the sign alone, {-m, +m} (no zero level; a weight of
exactly 0.0 decodes to -m, the tie going to the lower code); with a mask, 1 bit is
{0, +m} or {-m, 0}.

The scale is not simply the largest magnitude M: with few levels, a grid that starts at
M wastes its top level on a handful of outliers and its bottom on nothing. m is chosen
among M * 2^(-j/16), j = 0 .. 16 * OCTAVES (from M down to M / 2^OCTAVES), as the one with
the smallest squared error; each candidate's error is computed exactly from the sorted
magnitudes and their prefix sums (O(levels log n) per candidate, no pass over the data).

Every weight takes its nearest level in the linear domain, the smallest squared error;
rounding the exponent (nearest level in the log domain) would put the decision boundary
between m/2^(k+1) and m/2^k at their geometric mean instead of the midpoint, and cost
error for the values in between.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from qpack._validate import as_matrix, check_bits
from qpack.cluster import (
    KMeansQuantized,
    _midpoints,
    _work_dtype,
    assign_nearest,
    check_mask,
    sort_values,
)
from qpack.quantize import check_weights

DEFAULT_BASE = 2.0
# the informative spec key "grid" of a log-quantized tensor (docs/FORMAT.md, 4.3)
GRID = "log"
# the scale candidates: M * 2**(-j / STEPS_PER_OCTAVE), j = 0 .. STEPS_PER_OCTAVE * OCTAVES.
# 16 steps per octave leave the best candidate within 2.2% of the best scale, where the
# error is flat (64 or 256 steps change the relative error by < 3e-4 on 768x768 Gaussian
# and Laplacian weights at 1-4 bits); 10 octaves let 1-3-bit grids reach the bulk of the
# weights ~1000x below an outlier.
STEPS_PER_OCTAVE = 16
OCTAVES = 10


def check_base(base) -> float:
    """The ratio between consecutive levels: a finite real number > 1."""
    if isinstance(base, bool) or not isinstance(base, (int, float, np.integer, np.floating)) \
            or not math.isfinite(base) or not base > 1:
        raise ValueError(f"base must be a finite number > 1, got {base!r}")
    return float(base)


def layouts(bits: int, zero: bool) -> list[tuple[int, int]]:
    """The (negative levels, positive levels) splits of the 2**bits codes to choose from.

    ``zero``: the grid has a 0.0 level (always, except 1 bit without a mask: the sign
    alone, one level per side).
    """
    if not zero:
        return [(1, 1)]
    half = 1 << (bits - 1)
    return [(half, half - 1), (half - 1, half)]


def scale_candidates(top: float) -> np.ndarray:
    """The scales tried for a row whose largest magnitude is ``top``, largest first."""
    return top * np.exp2(-np.arange(STEPS_PER_OCTAVE * OCTAVES + 1) / STEPS_PER_OCTAVE)


def grid(m: float, n_neg: int, n_pos: int, base: float, zero: bool) -> np.ndarray:
    """The ascending float64 levels of scale m: n_neg negative, the 0.0, n_pos positive."""
    neg = -m * base ** -np.arange(n_neg, dtype=np.float64)
    pos = m * base ** -np.arange(n_pos - 1, -1, -1, dtype=np.float64)
    return np.concatenate([neg, [0.0] if zero else [], pos])


def _unit(n: int, base: float, zero: bool) -> np.ndarray:
    """One side's magnitudes for m = 1, ascending: [0,] base^-(n-1), ..., 1."""
    return np.concatenate([[0.0] if zero else [], base ** -np.arange(n - 1, -1, -1.0)])


def _prefix(a: np.ndarray, wt: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Prefix sums (n + 1 entries, float64) of the weight, weight * a and weight * a^2."""
    w = np.ones_like(a) if wt is None else wt
    return tuple(np.concatenate([[0.0], np.cumsum(t)]) for t in (w, w * a, w * a * a))


def _side_errors(a: np.ndarray, sums: tuple[np.ndarray, ...], unit: np.ndarray,
                 scales: np.ndarray) -> np.ndarray:
    """Squared error of ascending magnitudes ``a`` (prefix sums ``sums``) rounded to the
    nearest of the levels scale * unit, for every scale: float64 (candidates,)."""
    p0, p1, p2 = sums
    if a.size == 0:
        return np.zeros(scales.size)
    first = int(np.searchsorted(a, 0.0, side="right"))
    if unit[0] == 0 and unit.size > 2 and first < a.size:
        # The nonzero levels whose bins lie wholly below the smallest nonzero magnitude
        # (at the largest scale, so at every scale) receive no value: drop all but the
        # highest of them, which keeps the 0.0 level's bin where it was. Exact, and it
        # keeps 8-bit grids (127 levels a side, most far below any weight) cheap.
        empty = np.flatnonzero(_midpoints(unit)[1:] * scales.max() < a[first]) + 1
        if empty.size > 1:
            unit = np.concatenate([unit[:1], unit[empty[-1]:]])
    levels = scales[:, None] * unit[None, :]
    cut = np.searchsorted(a, (scales[:, None] * _midpoints(unit)[None, :]).reshape(-1),
                          side="right").reshape(scales.size, unit.size - 1)
    edges = np.concatenate([np.zeros((scales.size, 1), np.intp), cut,
                            np.full((scales.size, 1), a.size, np.intp)], axis=1)
    s0, s1, s2 = (p[edges[:, 1:]] - p[edges[:, :-1]] for p in (p0, p1, p2))
    # sum over a bin of w (a - L)^2 = S2 - 2 L S1 + L^2 S0
    return np.maximum(s2 - 2.0 * levels * s1 + levels * levels * s0, 0.0).sum(axis=1)


def _sides(v: np.ndarray, wt: np.ndarray | None):
    """(ascending negative magnitudes, their sums), the same for v >= 0, and max |v|."""
    if wt is None:
        srt = sort_values(v).astype(np.float64)
        swt = None
    else:
        order = np.argsort(v, kind="stable")
        srt, swt = v[order].astype(np.float64), wt[order].astype(np.float64)
    split = int(np.searchsorted(srt, 0.0, side="left"))
    neg, pos = -srt[:split][::-1], srt[split:]
    wneg = None if swt is None else swt[:split][::-1]
    wpos = None if swt is None else swt[split:]
    top = max(float(neg[-1]) if neg.size else 0.0, float(pos[-1]) if pos.size else 0.0)
    return (neg, _prefix(neg, wneg)), (pos, _prefix(pos, wpos)), top


def log_codebook(values: Sequence[np.ndarray], bits: int, *, base: float = DEFAULT_BASE,
                 zero: bool = True, weights: Sequence[np.ndarray] | None = None
                 ) -> tuple[np.ndarray, int | None]:
    """The least-squares log grid of every row of ``values`` (module doc).

    values : one finite float 1-D array per codebook row, the weights that take part in
        the fit (an empty row gets an all-zero grid). bits : 1..8 (checked by the caller).
    base, zero : as in ``grid`` (zero=False only makes sense for 1 bit: the sign alone).
    weights : optional non-negative importance of each value (values' shapes): the error
        minimized is sum(weight * (v - level)^2).

    Returns (codebook float32 (rows, 2**bits), each row ascending; zero_code: the index of
    the 0.0 entry, the same in every row, or None without a zero level).
    """
    splits = layouts(bits, zero)
    rows = []
    for r, v in enumerate(values):
        neg, pos, top = _sides(v, None if weights is None else weights[r])
        scales = scale_candidates(top)
        err = {}
        for n_neg, n_pos in splits:
            for side, (a, sums), n in (("neg", neg, n_neg), ("pos", pos, n_pos)):
                if (side, n) not in err:
                    err[side, n] = _side_errors(a, sums, _unit(n, base, zero), scales)
        rows.append((scales, [err["neg", a] + err["pos", b] for a, b in splits]))
    # one split for every row (the zero code's index), each row its own best scale
    total = [sum(float(err[i].min()) for _, err in rows) for i in range(len(splits))]
    choice = int(np.argmin(total))
    n_neg, n_pos = splits[choice]
    book = np.stack([grid(float(scales[int(np.argmin(err[choice]))]), n_neg, n_pos, base,
                          zero) for scales, err in rows])
    # float32 levels; + 0.0 turns an underflowed -0.0 into 0.0
    return book.astype(np.float32) + np.float32(0.0), (n_neg if zero else None)


def quantize_log(w, bits: int, *, mask=None, per_channel: bool = False,
                 base: float = DEFAULT_BASE) -> KMeansQuantized:
    """Logarithmic quantization: every weight becomes 0 or ±m·base^-k (module doc).

    Parameters
    ----------
    w : float16/32/64 array_like, finite, not empty; viewed as (rows, cols) =
        (shape[0], prod(shape[1:])) when ``per_channel``, as quantize_kmeans does.
    bits : int in 1..8: 2**bits codes. 1 bit is {-m, +m} without a mask, {0, ±m} with one;
        from 2 bits on: an exact 0.0, 2**(bits-1) levels on one side of it and
        2**(bits-1) - 1 on the other (e.g. 3 bits: -m, -m/2, -m/4, -m/8, 0, m/4, m/2, m).
    mask : optional boolean keep-mask of w's shape (e.g. from prune_magnitude): removed
        weights get ``zero_code`` (the 0.0 entry) and take no part in the scale's fit.
    per_channel : one scale (one grid) per row instead of one for the tensor; the sign
        with the extra level is the same in every row.
    base : ratio between consecutive levels, a finite number > 1 (2: powers of two).

    Returns
    -------
    KMeansQuantized with a float32 codebook of 2**bits ascending entries ((rows, 2**bits)
    per channel) and ``zero_code`` the index of its 0.0 (None for 1 bit without a mask).
    The scale m is the least-squares choice among M * 2^(-j/16) (M: the largest kept
    magnitude, j = 0..160); each weight takes its nearest entry of the stored float32
    codebook (ties to the lower code), so a weight of exactly 0.0 decodes to exactly 0.0.

    Raises ValueError naming the argument for bad w (non-floating, empty, NaN/Inf), bits,
    mask, per_channel or base.
    """
    arr = check_weights(w)
    bits = check_bits(bits)
    if mask is not None:
        mask = check_mask(mask, arr.shape)
    if not isinstance(per_channel, (bool, np.bool_)):
        raise ValueError(f"per_channel must be a bool, got {per_channel!r}")
    base = check_base(base)
    mat = as_matrix(arr).astype(_work_dtype(arr), copy=False)
    mmat = None if mask is None else as_matrix(mask)
    if per_channel:
        values = [mat[r] if mmat is None else mat[r][mmat[r]] for r in range(mat.shape[0])]
        data = mat
    else:
        values = [mat.reshape(-1) if mmat is None else mat[mmat]]
        data = mat.reshape(1, -1)
    book, zero_code = log_codebook(values, bits, base=base, zero=bits > 1 or mmat is not None)
    # assign against the stored float32 codebook, so decoding reproduces the error measured
    codes = assign_nearest(data, book.astype(np.float64), dtype=np.uint8)
    if mmat is not None:
        codes[~mmat.reshape(codes.shape)] = zero_code
    if not per_channel:
        book = book[0]
    return KMeansQuantized(codes=codes.reshape(arr.shape), codebook=np.ascontiguousarray(book),
                           zero_code=zero_code, bits=bits, shape=tuple(arr.shape),
                           per_channel=bool(per_channel))
