"""K-means weight sharing (Deep Compression): exact 1-D Lloyd iterations on sorted data.

In one dimension every cluster of a Lloyd assignment is a contiguous run of the sorted
values, delimited by the midpoints between consecutive ascending centroids. So the data is
sorted once, and each iteration finds the k-1 run boundaries by binary search
(np.searchsorted) and the cluster means from prefix sums: O(k log n) per iteration instead
of the O(nk) distance matrix of a general K-means. The result is the same Lloyd fixed
point a general implementation reaches from the same initial centroids.

``quantize_kmeans`` turns a weight tensor into uint8 codes plus a codebook (float16 when
rounding the centroids to it costs at most FP16_CODEBOOK_TOLERANCE of the squared error,
else float32; the codes are assigned against the stored values); with a pruning mask,
pruned weights map to a reserved exact 0.0 entry and take no part in the fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qpack._kernels import cluster as _k
from qpack._validate import as_matrix, check_bits
from qpack.quantize import check_weights
from qpack.threads import get_num_threads

INIT_METHODS = ("linear", "density", "random")
MAX_K = 1 << 16
CODEBOOK_DTYPES = ("auto", "float16", "float32")
# codebook_dtype="auto" stores float16 centroids when, with every weight re-assigned to its
# nearest rounded centroid, the squared error of the kept weights grows by at most this
# fraction over float32 centroids. Measured on N(0, 0.05) matrices 384x384 and 1536x384
# (docs/FORMAT.md, 4.3): at most 4.3e-4 with one codebook per tensor (bits 2..8), 7.7e-4
# per channel up to 7 bits, 1.4e-2 per channel at 8 bits (which so stays float32).
FP16_CODEBOOK_TOLERANCE = 1e-3


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
    return int(k)


def check_codebook_dtype(codebook_dtype, name: str = "codebook_dtype") -> str:
    """``codebook_dtype`` as one of CODEBOOK_DTYPES ("auto", "float16", "float32").

    Accepts "auto" and anything numpy reads as float16 or float32 (np.float16, "float32",
    ...). Raises ValueError naming ``name`` otherwise (float64 included: a .qpk file holds
    float16 or float32 codebooks only).
    """
    if isinstance(codebook_dtype, str) and codebook_dtype == "auto":
        return "auto"
    try:
        dt = None if codebook_dtype is None else np.dtype(codebook_dtype)
    except (TypeError, ValueError):
        dt = None
    if dt not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise ValueError(f"{name} must be 'auto', float16 or float32, got {codebook_dtype!r}")
    return dt.name


def _squared_error(data: np.ndarray, book: np.ndarray, codes: np.ndarray,
                   keep: np.ndarray | None, weights: np.ndarray | None = None) -> float:
    """Sum over kept elements of (book[r, codes[r, c]] - data[r, c])**2 in float64, each
    term times ``weights[r, c]`` when given (a histogram's counts).

    data, codes, keep, weights: (R, n); book (R, k). Runs in slices of about 2**20
    elements, so it needs no tensor-sized float64 temporaries.
    """
    if weights is not None:
        dec = np.take_along_axis(book.astype(np.float64), codes.astype(np.intp), axis=1)
        return float(np.dot(np.square(dec - data).reshape(-1), weights.reshape(-1)))
    rows, n = data.shape
    step_c = 1 << 20
    step_r = max(1, step_c // max(n, 1))
    total = 0.0
    for r0 in range(0, rows, step_r):
        b = book[r0:r0 + step_r].astype(np.float64)
        for c0 in range(0, n, step_c):
            part = (slice(r0, r0 + step_r), slice(c0, c0 + step_c))
            dec = np.take_along_axis(b, codes[part].astype(np.intp), axis=1)
            err = np.square(dec - data[part])
            total += float(err.sum() if keep is None else err[keep[part]].sum())
    return total


def stored_codebook(cents: np.ndarray, data: np.ndarray, keep: np.ndarray | None,
                    codebook_dtype: str, weights: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The codebook as stored and the uint8 codes of ``data`` against it.

    cents : float64 (R, k) ascending centroids per row (R = 1: one codebook for all data).
    data : float32/float64 (R, n), finite; keep : bool (R, n) or None, the elements whose
        error counts (pruned ones are coded apart by the caller). weights : (R, n) or None,
        how many times each element counts (``data`` the distinct values of a histogram).
    codebook_dtype : checked ("auto", "float16" or "float32"). "float16": the rounded
        centroids; ValueError if one exceeds float16's range (65504). "auto": float16
        unless a centroid overflows it or the kept elements' squared error, each element
        re-assigned to its nearest rounded centroid, exceeds float32's by more than
        FP16_CODEBOOK_TOLERANCE (relative); then float32.

    Returns (codebook (R, k) float16/float32, codes (R, n) uint8). The codes are always
    those of the returned values (nearest entry, ties to the lower index), so decoding the
    stored codebook reproduces what was measured.
    """
    book32 = cents.astype(np.float32)
    if codebook_dtype == "float32":
        return book32, assign_nearest(data, book32.astype(np.float64), dtype=np.uint8)
    with np.errstate(over="ignore"):  # reported below
        book16 = cents.astype(np.float16)
    if not np.isfinite(book16).all():
        if codebook_dtype == "float16":
            raise ValueError(f"codebook_dtype float16 cannot hold a centroid of "
                             f"{float(np.abs(cents).max()):.6g} (float16 stops at 65504); "
                             "use codebook_dtype='auto' or np.float32")
        return book32, assign_nearest(data, book32.astype(np.float64), dtype=np.uint8)
    codes16 = assign_nearest(data, book16.astype(np.float64), dtype=np.uint8)
    if codebook_dtype == "float16":
        return book16, codes16
    codes32 = assign_nearest(data, book32.astype(np.float64), dtype=np.uint8)
    err32 = _squared_error(data, book32, codes32, keep, weights)
    err16 = _squared_error(data, book16, codes16, keep, weights)
    if err16 <= err32 * (1.0 + FP16_CODEBOOK_TOLERANCE):
        return book16, codes16
    return book32, codes32


def _check_init(init, k: int):
    """Return an init method name or a sorted float64 array of k initial centroids."""
    if isinstance(init, str):
        if init not in INIT_METHODS:
            raise ValueError(f"init must be one of {INIT_METHODS} or an array of {k} "
                             f"centroids, got {init!r}")
        return init
    try:
        arr = np.asarray(init, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"init must be one of {INIT_METHODS} or an array of {k} centroids, "
                         f"got {type(init).__name__}") from None
    if arr.ndim != 1 or arr.shape[0] != k:
        raise ValueError(f"init array must have shape ({k},), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("init array must be finite")
    return np.sort(arr)


# From this many values, 16-bit weights are clustered as a histogram (sixteen_bit_keys).
HISTOGRAM_MIN = 1 << 16


def _threads_for(work: int) -> int:
    # Small jobs run on one thread: waking an OpenMP team costs more than it saves.
    return get_num_threads() if work >= 1 << 16 else 1


def sort_values(v: np.ndarray) -> np.ndarray:
    """Ascending copy of 1-D float32/float64 ``v`` (finite).

    Large float32 inputs go through the radix-sort kernel (four linear passes, several
    times faster than np.sort here); the rest use np.sort.
    """
    if v.dtype != np.float32 or v.size < 1 << 15:
        return np.sort(v)
    src = np.ascontiguousarray(v)
    out = np.empty_like(src)
    scratch = np.empty(src.size, dtype=np.uint32)
    _k.radix_sort_float32(src, out, scratch, get_num_threads() if v.size >= 1 << 20 else 1)
    return out


def _midpoints(c: np.ndarray) -> np.ndarray:
    # Written as a half-sum so huge centroids cannot overflow.
    return c[:-1] * 0.5 + c[1:] * 0.5


def _bounds_below(b: np.ndarray, dtype) -> np.ndarray:
    """The largest ``dtype`` values <= b, so that x <= b <=> x <= result for x of ``dtype``.

    Lets np.searchsorted run on the data's own dtype (no float64 copy of the data) with
    exactly the comparisons the float64 boundaries define.
    """
    if dtype == np.float64:
        return b
    r = b.astype(dtype)
    up = r.astype(np.float64) > b
    if up.any():
        r[up] = np.nextafter(r[up], dtype.type(-np.inf))
    return r


def _pad_distinct(distinct: np.ndarray, k: int) -> np.ndarray:
    """k ascending centroids from at most k distinct values: repeat the largest at the end."""
    out = np.empty(k, dtype=np.float64)
    out[:distinct.size] = distinct
    out[distinct.size:] = distinct[-1]
    return out


def _initial_centroids(xs, ws, wcum, k, init, rng) -> np.ndarray:
    if not isinstance(init, str):
        return init.copy()
    n = xs.size
    if init == "linear":
        return np.linspace(float(xs[0]), float(xs[-1]), k)
    if init == "density":
        # Evenly spaced levels of the (weighted) cumulative distribution.
        levels = (np.arange(k) + 0.5) / k
        if ws is None:
            idx = np.minimum((levels * n).astype(np.intp), n - 1)
        else:
            idx = np.minimum(np.searchsorted(wcum[1:], levels * wcum[-1], side="right"), n - 1)
        return xs[idx].astype(np.float64)
    return np.sort(xs[rng.choice(n, size=k, replace=False)].astype(np.float64))


def _relocate_empty(xs, ws, edges, c, S, W, lo, hi, shift):
    """Move empty clusters onto the points farthest from their centroids (in place on S, W).

    As in scikit-learn's Lloyd: the e empty clusters take the e points with the largest
    distance to the centroid they were assigned to, and those points leave their old
    clusters. Within a contiguous run, distance to a centroid is largest at the ends, so
    the e first and e last points of each run hold every candidate. A cluster that takes
    point x gets lo = hi = x (its mean clamps to x exactly: see _clamped_means).
    """
    empty = np.flatnonzero(W <= 0)
    cnt = np.diff(edges)
    ne = empty.size
    own = np.flatnonzero(cnt > 0)
    m = np.minimum(ne, cnt[own])
    tot = int(m.sum())
    owner = np.repeat(own, m)
    offs = np.arange(tot) - np.repeat(np.cumsum(m) - m, m)
    idx = np.concatenate([edges[owner] + offs, edges[owner + 1] - 1 - offs])
    owner = np.concatenate([owner, owner])
    idx, first = np.unique(idx, return_index=True)
    owner = owner[first]
    dist = np.square(xs[idx].astype(np.float64) - c[owner])
    far = np.argsort(-dist, kind="stable")[:ne]
    new_j, pts, old = empty[:far.size], idx[far], owner[far]
    wt = np.ones(far.size) if ws is None else ws[pts]
    xw = (xs[pts].astype(np.float64) - shift) * wt
    # Unbuffered and in order, so an old cluster giving up several points subtracts
    # them one by one in the same order as a loop would.
    np.subtract.at(S, old, xw)
    np.subtract.at(W, old, wt)
    S[new_j] = xw
    W[new_j] = wt
    lo[new_j] = hi[new_j] = xs[pts]


# Row states reported by the lloyd_rows kernel (see qpack/_kernels/cluster.pyx).
_CONVERGED, _MAX_ITER, _EMPTY, _SKIP, _PENDING = 0, 1, 2, 3, 4


def _boundaries(c: np.ndarray) -> np.ndarray:
    """The k-1 decision boundaries of ascending centroids c: x <= b[j] means "left of j+1".

    Midpoints, except that equal centroids are a tie for every point, which goes to the
    lowest index (like an argmin): the boundary after a repeated centroid moves up to the
    next one (+inf at the end), leaving the later copies empty so they get relocated.
    """
    b = _midpoints(c)
    for j in np.flatnonzero(c[:-1] == c[1:])[::-1]:
        b[j] = b[j + 1] if j + 1 < b.size else np.inf
    return b


def _edges_for(xs: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Run boundaries [0, e_1, ..., e_{k-1}, n] of the assignment to ascending centroids c."""
    edges = np.empty(c.size + 1, dtype=np.intp)
    edges[0], edges[-1] = 0, xs.size
    edges[1:-1] = np.searchsorted(xs, _bounds_below(_boundaries(c), xs.dtype), side="right")
    return edges


def _clamped_means(S, W, shift, lo, hi, c):
    """Cluster means S / W + shift, each clamped into its cluster's value range [lo, hi].

    A true mean lies in [lo, hi]; computed from prefix-sum differences and the shift it can
    miss by an ulp. The clamp makes the mean of a run of one repeated value exactly that
    value, so clusters on the same duplicated value get bit-equal centroids and the tie rule
    of _boundaries gives their points to the lowest index and leaves the copies empty for
    relocation, as an argmin (scikit-learn) does. Unclamped, centroids an ulp apart put a
    boundary between them and a copy could keep a lone neighbour for good (the duplicate
    cases in tests/test_cluster.py ended at up to 2.1x sklearn's inertia). Clusters with
    W <= 0 keep c. The kernel's _lloyd_row makes the same operations.
    """
    filled = W > 0
    means = np.minimum(np.maximum(S / np.where(filled, W, 1.0) + shift, lo), hi)
    return np.where(filled, means, c)


def _lloyd_step(xs, ws, P, wcum, shift, c):
    """One Lloyd update from centroids c (with empty-cluster relocation).

    Returns (edges of the assignment to c, new centroids, whether a relocation happened).
    """
    edges = _edges_for(xs, c)
    if ws is None:
        W = np.diff(edges).astype(np.float64)
    else:
        W = wcum[edges[1:]] - wcum[edges[:-1]]
    S = P[edges[1:]] - P[edges[:-1]]
    # Value range of each run: its first and last value (mode="clip" only keeps empty runs'
    # indices in range; those entries are unused unless a relocation sets them).
    lo = xs.take(edges[:-1], mode="clip")
    hi = xs.take(edges[1:] - 1, mode="clip")
    relocated = bool((W <= 0).any())
    if relocated:
        _relocate_empty(xs, ws, edges, c, S, W, lo, hi, shift)
    new_c = _clamped_means(S, W, shift, lo, hi, c)
    if relocated:
        new_c.sort()
    return edges, new_c, relocated


def _lloyd_python(xs, ws, P, wcum, shift, c, max_iter, tol_abs):
    """The reference loop: used with sample weights or tol > 0. Returns (centroids, iters)."""
    prev = None
    it = 0
    while True:
        if prev is not None and np.array_equal(_edges_for(xs, c), prev):
            break  # assignments unchanged: c already holds the means of this assignment
        if it >= max_iter:
            break
        edges, new_c, relocated = _lloyd_step(xs, ws, P, wcum, shift, c)
        it += 1
        # After a relocation the new centroids are not the means of this assignment.
        prev = None if relocated else edges
        shift_sq = float(np.square(new_c - c).sum())
        c = new_c
        if tol_abs > 0 and shift_sq <= tol_abs:
            break
    return c, it


def _lloyd_rows(srt: np.ndarray, P: np.ndarray, shifts: np.ndarray, cents: np.ndarray,
                todo: np.ndarray, max_iter: int) -> None:
    """Run Lloyd to convergence on the rows flagged in ``todo`` (centroids in place).

    The kernel runs plain iterations for all rows at once; a row that meets an empty
    cluster comes back here for one Python step with relocation, then resumes.
    """
    status = np.where(todo, _PENDING, _SKIP).astype(np.int32)
    iters = np.zeros(srt.shape[0], dtype=np.int64)
    nt = _threads_for(srt.shape[0] * 64)
    _k.lloyd_rows(srt, P, shifts, cents, status, iters, max_iter, nt)
    if (status == _PENDING).any():
        raise MemoryError("kmeans: could not allocate per-thread scratch")
    for r in np.flatnonzero(status == _EMPTY):
        one = status[r:r + 1].copy()
        it = iters[r:r + 1].copy()
        while one[0] == _EMPTY and it[0] < max_iter:
            _, cents[r], _ = _lloyd_step(srt[r], None, P[r], None, float(shifts[r]), cents[r])
            it[0] += 1
            one[0] = _PENDING
            _k.lloyd_rows(srt[r:r + 1], P[r:r + 1], shifts[r:r + 1], cents[r:r + 1], one, it,
                          max_iter, 1)


def _lloyd_sorted(xs: np.ndarray, ws: np.ndarray | None, k: int, init, max_iter: int,
                  tol: float, rng) -> np.ndarray:
    """k ascending float64 centroids of ascending ``xs`` (weights ``ws`` alike, or None)."""
    n = xs.size
    change = xs[1:] != xs[:-1]
    ndistinct = 1 + int(np.count_nonzero(change))
    if ndistinct <= k:
        # Every distinct value gets its own centroid: zero error, nothing to iterate.
        distinct = xs[np.concatenate(([True], change))].astype(np.float64)
        return _pad_distinct(distinct, k)
    # Prefix sums of values centred on the median keep the float64 sums well conditioned.
    shift = float(xs[n // 2])
    P = np.empty(n + 1, dtype=np.float64)
    wcum = None
    if ws is None:
        _k.prefix_sum_shifted(xs, shift, P)
    else:
        P[0] = 0.0
        np.cumsum((xs.astype(np.float64) - shift) * ws, out=P[1:])
        wcum = np.concatenate(([0.0], np.cumsum(ws)))
    c = _initial_centroids(xs, ws, wcum, k, init, rng)
    if ws is None and tol == 0:
        cents = c.reshape(1, -1).astype(np.float64)  # a copy, updated in place
        _lloyd_rows(xs.reshape(1, -1), P.reshape(1, -1), np.array([shift]), cents,
                    np.ones(1, dtype=bool), max_iter)
        return cents[0]
    tol_abs = tol * float(np.var(xs.astype(np.float64))) if tol > 0 else 0.0
    return _lloyd_python(xs, ws, P, wcum, shift, c, max_iter, tol_abs)[0]


def _rng(random_state):
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None or (isinstance(random_state, (int, np.integer))
                                and not isinstance(random_state, bool) and random_state >= 0):
        return np.random.default_rng(random_state)
    raise ValueError(f"random_state must be None, a non-negative int or a numpy Generator, "
                     f"got {random_state!r}")


def _check_iter_tol(max_iter, tol) -> tuple[int, float]:
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) \
            or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.number)) \
            or not np.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    return int(max_iter), float(tol)


def assign_nearest(values: np.ndarray, centroids: np.ndarray, dtype=np.intp) -> np.ndarray:
    """Index of the nearest centroid for every element (ties to the lower index).

    values : float32/float64 array (rows, cols), finite. centroids : float64 (1, k) shared by
    all rows or (rows, k), each row ascending. Returns ``dtype`` labels of values' shape.
    """
    rows, cols = values.shape
    k = centroids.shape[1]
    nb = k - 1
    levels = int(nb).bit_length()          # 2**levels - 1 >= nb
    width = max(1, (1 << levels) - 1)
    bounds = np.full((centroids.shape[0], width), np.inf)
    for r in range(centroids.shape[0]):
        # Compare like the fit did: a float32 value is <= b iff it is <= the float32 below b.
        bounds[r, :nb] = _bounds_below(_boundaries(centroids[r]), values.dtype)
    step = (1 << (levels - 1)) if levels else 0
    out = np.empty((rows, cols), dtype=dtype)
    _k.assign_by_boundaries(np.ascontiguousarray(values), bounds, out, step,
                            _threads_for(values.size))
    return out


def _work_dtype(arr: np.ndarray):
    return np.float64 if arr.dtype == np.float64 else np.float32


def kmeans_1d(values, k: int, *, init="linear", max_iter: int = 300, tol: float = 0.0,
              sample_weight=None, random_state=0) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-D K-means (Lloyd) of every element of ``values``.

    Parameters
    ----------
    values : float16/32/64 array_like of any shape, finite, not empty.
    k : number of centroids, 1..65536.
    init : "linear" (evenly spaced from min to max; keeps the rare large weights, the best
        choice in Deep Compression), "density" (evenly spaced quantiles of the weighted
        distribution), "random" (k distinct data points drawn with ``random_state``), or an
        array of k initial centroids (any order).
    max_iter : cap on Lloyd iterations (safety; by default iteration runs to convergence,
        i.e. until no assignment changes).
    tol : 0.0 = stop only at convergence; > 0 = also stop once the summed squared centroid
        shift is <= tol * variance(values) (scikit-learn's rule).
    sample_weight : optional non-negative finite weights of values' shape (positive sum).
        Points of weight 0 take no part in the fit (nor in empty-cluster relocation);
        they still get labels.
    random_state : None, int >= 0 or numpy Generator (used by init="random").

    Returns
    -------
    (centroids, labels): centroids float64 (k,) ascending; labels intp of values' shape,
    labels[i] = index of the centroid nearest to values[i] (ties to the lower index).

    Empty clusters are relocated each iteration to the points farthest from their centroids
    (as scikit-learn does), so every centroid ends up owning data. With at most k distinct
    values the centroids are exactly the distinct values, ascending, with the largest one
    repeated to fill k entries (labels point at the first copy); the inertia is then 0.

    Computation: values are sorted once (float32 data stays float32); centroids, prefix sums
    and boundaries are float64.

    Raises ValueError naming the argument for bad values, k, init, max_iter, tol,
    sample_weight or random_state.
    """
    arr = check_weights(values, "values")
    k = _check_k(k)
    init = _check_init(init, k)
    max_iter, tol = _check_iter_tol(max_iter, tol)
    rng = _rng(random_state)
    flat = arr.reshape(-1).astype(_work_dtype(arr), copy=False)
    if sample_weight is None:
        xs = sort_values(flat)
        ws = None
    else:
        sw = np.asarray(sample_weight)
        if sw.dtype.kind not in "fiu":
            raise ValueError(f"sample_weight must be numeric, got {sw.dtype}")
        sw = sw.astype(np.float64)
        if sw.shape != arr.shape and sw.shape != flat.shape:
            raise ValueError(f"sample_weight must have shape {arr.shape}, got {sw.shape}")
        sw = sw.reshape(-1)
        if not np.isfinite(sw).all() or (sw < 0).any() or sw.sum() <= 0:
            raise ValueError("sample_weight must be finite, >= 0 and have a positive sum")
        # Zero-weight points change no mean and no inertia; fitting without them keeps an
        # empty cluster from being relocated onto one (where it would stay empty).
        pos = sw > 0
        fit, fit_w = (flat, sw) if pos.all() else (flat[pos], sw[pos])
        order = np.argsort(fit, kind="stable")
        xs, ws = fit[order], fit_w[order]
    centroids = _lloyd_sorted(xs, ws, k, init, max_iter, tol, rng)
    labels = assign_nearest(flat.reshape(1, -1), centroids.reshape(1, -1))
    return centroids, labels.reshape(arr.shape)


@dataclass(frozen=True)
class KMeansQuantized:
    """A tensor stored as codes into a shared codebook (Deep Compression weight sharing).

    Fields
    ------
    codes : uint8 ndarray of ``shape``; codes < k = 2**bits.
    codebook : float16 or float32 (k,), or (rows, k) when ``per_channel`` (rows as in
        quantize_linear). A .qpk file stores a float16 codebook as float16, any other as
        float32.
    zero_code : index of the reserved exact 0.0 codebook entry when a pruning mask was given
        (pruned positions have this code; the same index in every row), else None.
    bits : code width, 1..8.
    shape : original tensor shape.
    per_channel : one codebook per row.
    """

    codes: np.ndarray
    codebook: np.ndarray
    zero_code: int | None
    bits: int
    shape: tuple
    per_channel: bool

    def dequantize_rows(self, start: int, stop: int, dtype=np.float32) -> np.ndarray:
        """Rows [start, stop) of the (rows, cols) matrix view, decoded as ``dequantize``
        decodes them (so large tensors can be decoded a block of rows at a time)."""
        codes = as_matrix(self.codes)[start:stop]
        book = np.asarray(self.codebook).astype(dtype, copy=False)
        if not self.per_channel:
            return book[codes]
        return np.take_along_axis(book[start:stop], codes.astype(np.intp), axis=1)

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """codebook[codes] (per row: codebook[r, codes[r, :]]) as ``dtype``, of ``shape``."""
        # the (small) codebook is converted, not the gathered weights: the same values, and
        # numpy's float16 -> float32 cast of a whole tensor costs more than the gather
        book = np.asarray(self.codebook).astype(dtype, copy=False)
        if not self.per_channel:
            return book[self.codes]
        codes = as_matrix(self.codes)
        return np.take_along_axis(book, codes.astype(np.intp), axis=1).reshape(self.shape)

    @property
    def nbytes_params(self) -> int:
        """Bytes a ``.qpk`` file pays for the codebook(s): 2 per entry for a float16
        codebook, else 4 (the file stores any other dtype as float32)."""
        book = np.asarray(self.codebook)
        return int(book.size * (2 if book.dtype == np.float16 else 4))

    @property
    def bits_per_weight(self) -> float:
        """``bits`` plus the codebook bytes spread over every weight."""
        return self.bits + 8.0 * self.nbytes_params / int(np.prod(self.shape))


def check_mask(mask, shape: tuple, name: str = "mask") -> np.ndarray:
    """Return ``mask`` as a bool ndarray after checking its dtype and shape."""
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise ValueError(f"{name} must be a boolean keep-mask, got dtype {m.dtype}")
    if m.shape != tuple(shape):
        raise ValueError(f"{name} must have the weights' shape {tuple(shape)}, got {m.shape}")
    return m


def sixteen_bit_histogram(flat: np.ndarray, keep: np.ndarray | None = None):
    """When each value of float32 ``flat`` is exactly a bfloat16 or a float16 value
    (weights that were stored in 16 bits): (the float32 value of each of the 65536 keys,
    the count of each key among the kept elements, ``codes_of(lut)`` giving each
    element's ``lut[key]`` as uint8 of flat's shape). None otherwise, or for fewer than
    HISTOGRAM_MIN values. ``keep``: bool mask of flat's shape, or None (all).

    bfloat16 values are their float32 bits' upper half: one pass counts them, another
    codes them, with no key array. float16 is tried on a first block before the whole
    array, so genuine float32 data costs little.
    """
    if flat.dtype != np.float32 or flat.size < HISTOGRAM_MIN:
        return None
    bits = flat.view(np.uint32)
    threads = _threads_for(flat.size)
    if not (bits[:4096] & 0xFFFF).any():
        counts = np.zeros((threads, 1 << 16), dtype=np.int64)
        mask = np.empty(0, np.uint8) if keep is None else keep.view(np.uint8)
        if _k.bf16_histogram(bits, mask, counts, threads):
            def bf16_codes(lut: np.ndarray) -> np.ndarray:
                out = np.empty(flat.size, dtype=np.uint8)
                _k.bf16_codes(bits, lut, out, threads)
                return out

            table = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
            return table, counts.sum(axis=0), bf16_codes
    head = flat[:4096]
    with np.errstate(over="ignore"):
        if (head.astype(np.float16).astype(np.float32) == head).all():
            half = flat.astype(np.float16)
            if (half.astype(np.float32) == flat).all():
                keys = half.view(np.uint16)

                def half_codes(lut: np.ndarray) -> np.ndarray:
                    out = np.empty(flat.size, dtype=np.uint8)
                    for i in range(0, keys.size, 1 << 20):  # blocks: a small index cast
                        np.take(lut, keys[i:i + (1 << 20)], out=out[i:i + (1 << 20)])
                    return out

                table = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
                return table, np.bincount(keys if keep is None else keys[keep],
                                          minlength=1 << 16), half_codes
    return None


def _fit_histogram(counts: np.ndarray, table: np.ndarray, k: int, init, max_iter: int, rng
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k ascending centroids, the keys present, their counts) of the values ``table``
    whose 16-bit keys occur ``counts`` times: the same K-means as on the values
    themselves, on at most 65536 weighted points."""
    present = np.flatnonzero(counts)
    values = table[present].astype(np.float64)
    order = np.argsort(values, kind="stable")
    xs, ws = values[order], counts[present][order].astype(np.float64)
    return _lloyd_sorted(xs, ws, k, init, max_iter, 0.0, rng), present[order], ws


def _fit_values(vals: np.ndarray, k: int, init, max_iter: int, rng) -> np.ndarray:
    """k ascending centroids of unsorted 1-D ``vals`` (all zeros when vals is empty)."""
    if vals.size == 0:
        return np.zeros(k)
    return _lloyd_sorted(sort_values(vals), None, k, init, max_iter, 0.0, rng)


def _fit_sorted_rows(srt: np.ndarray, k: int, init, max_iter: int, rng) -> np.ndarray:
    """k ascending centroids per ascending row of ``srt`` (rows, n), all rows in one kernel."""
    rows, n = srt.shape
    cents = np.empty((rows, k))
    change = srt[:, 1:] != srt[:, :-1]
    ndistinct = 1 + np.count_nonzero(change, axis=1)
    few = ndistinct <= k
    for r in np.flatnonzero(few):
        distinct = srt[r][np.concatenate(([True], change[r]))].astype(np.float64)
        cents[r] = _pad_distinct(distinct, k)
    todo = ~few
    if not todo.any():
        return cents
    shifts = srt[:, n // 2].astype(np.float64)
    P = np.empty((rows, n + 1))
    _k.prefix_sum_rows(srt, shifts, P, _threads_for(srt.size))
    if isinstance(init, str) and init == "linear":
        t = np.linspace(0.0, 1.0, k)
        lo, hi = srt[:, 0].astype(np.float64), srt[:, -1].astype(np.float64)
        cents[todo] = (lo[:, None] + (hi - lo)[:, None] * t)[todo]
    else:
        for r in np.flatnonzero(todo):
            cents[r] = _initial_centroids(srt[r], None, None, k, init, rng)
    _lloyd_rows(srt, P, shifts, cents, todo, max_iter)
    return cents


def quantize_kmeans(w, bits: int, *, mask=None, init="linear", per_channel: bool = False,
                    max_iter: int = 300, random_state=0,
                    codebook_dtype="auto") -> KMeansQuantized:
    """Weight sharing: cluster the weights into 2**bits shared values (exact 1-D K-means).

    Parameters
    ----------
    w : float16/32/64 array_like, finite, not empty; viewed as (rows, cols) like
        quantize_linear when ``per_channel``.
    bits : int in 1..8; k = 2**bits codebook entries.
    mask : optional boolean keep-mask of w's shape (e.g. from prune_magnitude). Pruned
        weights get code ``zero_code`` = 0, whose codebook entry is exactly 0.0, and are left
        out of the fit, so the k-1 other centroids describe the kept weights only.
    init : "linear", "density", "random" or an array of initial centroids (k, or k-1 with a
        mask), as in kmeans_1d.
    per_channel : fit one codebook per row instead of one for the tensor (a codebook of
        2**bits entries per row can outweigh the codes: compress warns when it does).
    max_iter, random_state : as in kmeans_1d.
    codebook_dtype : "auto" (default): float16 when rounding the centroids to float16
        raises the squared error of the kept weights by at most FP16_CODEBOOK_TOLERANCE =
        1e-3 (relative; measured increase on Gaussian weights: <= 4.3e-4 with one codebook,
        <= 7.7e-4 per channel up to 7 bits), else float32; np.float16 or np.float32 to
        force one (float16 raises ValueError for a centroid beyond 65504).

    Returns
    -------
    KMeansQuantized. Codes are assigned against the codebook values that are stored (the
    rounded ones when float16), so decoding reproduces exactly what was measured.

    Raises ValueError naming the argument for bad w, bits, mask, init, max_iter,
    codebook_dtype.
    """
    arr = check_weights(w)
    bits = check_bits(bits)
    k = 1 << bits
    if mask is not None:
        mask = check_mask(mask, arr.shape)
    if per_channel not in (True, False):
        raise ValueError(f"per_channel must be a bool, got {per_channel!r}")
    k_fit = k if mask is None else k - 1
    if k_fit < 1:
        raise ValueError("bits must leave room for a learned centroid")
    init = _check_init(init, k_fit)
    max_iter, _ = _check_iter_tol(max_iter, 0.0)
    rng = _rng(random_state)
    codebook_dtype = check_codebook_dtype(codebook_dtype)
    mat = as_matrix(arr).astype(_work_dtype(arr), copy=False)
    mmat = None if mask is None else as_matrix(mask)
    if per_channel:
        if mmat is None:
            # One batched sort for every row, then per-row Lloyd on the sorted rows.
            srt = np.sort(mat, axis=1)
            cents = _fit_sorted_rows(srt, k_fit, init, max_iter, rng)
        else:
            cents = np.stack([_fit_values(mat[r][mmat[r]], k_fit, init, max_iter, rng)
                              for r in range(mat.shape[0])])
        data = mat
    else:
        data = mat.reshape(1, -1)
    keep = None if mmat is None else mmat.reshape(data.shape)
    hist = None
    if not per_channel and not (isinstance(init, str) and init == "random") and (
            keep is None or keep.any()):
        # weights that were bfloat16/float16 take at most 65536 values: cluster and code
        # their histogram (random init draws data points, so it keeps the direct path)
        hist = sixteen_bit_histogram(data[0], None if keep is None else keep[0])
    if hist is not None:
        table, key_counts, codes_of = hist
        cents, present, counts = _fit_histogram(key_counts, table, k_fit, init, max_iter,
                                                rng)
        book, present_codes = stored_codebook(cents.reshape(1, -1),
                                              table[present].reshape(1, -1), None,
                                              codebook_dtype, counts.reshape(1, -1))
        lut = np.zeros(1 << 16, dtype=np.uint8)  # keys of pruned weights: recoded below
        lut[present] = present_codes[0]
        codes = codes_of(lut).reshape(data.shape)
        del hist, codes_of
    elif not per_channel:
        vals = data[0] if keep is None else data[keep]
        cents = _fit_values(vals, k_fit, init, max_iter, rng).reshape(1, -1)
        book, codes = stored_codebook(cents, data, keep, codebook_dtype)
    else:
        # the codes are those of the stored (possibly float16-rounded) codebook
        book, codes = stored_codebook(cents, data, keep, codebook_dtype)
    zero_code = None
    if keep is not None:
        zero_code = 0
        codes += 1
        codes[~keep] = zero_code
        book = np.concatenate([np.zeros((book.shape[0], 1), book.dtype), book], axis=1)
    if not per_channel:
        book = book[0]
    return KMeansQuantized(codes=codes.reshape(arr.shape), codebook=np.ascontiguousarray(book),
                           zero_code=zero_code, bits=bits, shape=tuple(arr.shape),
                           per_channel=bool(per_channel))


def codebook_gradient(codes, grad, k: int, *, per_channel: bool = False,
                      zero_code: int | None = None) -> np.ndarray:
    """Gradient of the loss with respect to the shared centroids (Deep Compression, eq. 3).

    Each centroid's gradient is the sum of the gradients of the weights that share it:
    g[c] = sum over i with codes[i] == c of grad[i].

    Parameters
    ----------
    codes : integer array_like, values in [0, k).
    grad : float array_like of codes' shape (dL/dw of the decoded weights), finite.
    k : codebook size.
    per_channel : codes viewed as (rows, cols) (like quantize_kmeans); one gradient row per
        codebook row.
    zero_code : optional reserved code (a pruned 0.0 entry) whose gradient is set to 0 so a
        training step keeps it exactly zero.

    Returns float64 (k,) or (rows, k). Raises ValueError naming the bad argument.
    """
    k = _check_k(k)
    c = np.asarray(codes)
    if c.dtype.kind not in "iu":
        raise ValueError(f"codes must have an integer dtype, got {c.dtype}")
    if c.size == 0:
        raise ValueError("codes must not be empty")
    if int(c.min()) < 0 or int(c.max()) >= k:
        raise ValueError(f"codes must lie in [0, {k}), found {int(c.min())}..{int(c.max())}")
    g = check_weights(grad, "grad")
    if g.shape != c.shape:
        raise ValueError(f"grad must have codes' shape {c.shape}, got {g.shape}")
    if zero_code is not None and (isinstance(zero_code, bool)
                                  or not isinstance(zero_code, (int, np.integer))
                                  or not 0 <= zero_code < k):
        raise ValueError(f"zero_code must be None or an integer in [0, {k}), got {zero_code!r}")
    g = g.astype(np.float64, copy=False)
    if per_channel:
        if c.ndim < 2:
            raise ValueError("per_channel needs codes with at least 2 dimensions")
        cm = as_matrix(c).astype(np.intp)
        rows = cm.shape[0]
        flat = (cm + (np.arange(rows, dtype=np.intp) * k)[:, None]).reshape(-1)
        out = np.bincount(flat, weights=g.reshape(-1), minlength=rows * k).reshape(rows, k)
    else:
        out = np.bincount(c.reshape(-1).astype(np.intp), weights=g.reshape(-1), minlength=k)
    if zero_code is not None:
        out[..., zero_code] = 0.0
    return out
