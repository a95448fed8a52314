"""Error-compensated (GPTQ) quantization: linear and K-means codes fitted to calibration data.

GPTQ (Frantar et al., 2022) quantizes a weight matrix W (rows, cols) column by column and
pushes each column's quantization error onto the columns not yet quantized, so that the
layer's output on calibration inputs X, not the weights themselves, stays close:

    minimize ||X W^T - X W_hat^T||^2,  H = X^T X / n + damping      (calibration.py)

In the paper's form, with U the upper Cholesky factor of H^-1 (H^-1 = U^T U), column i's
error e_i = (w'_i - q_i) / U[i, i] (w' the current, updated weights) updates every later
column j by -e_i U[i, j]. Collecting those updates gives W - Q = E U, so E = (W - Q) R
with R = U^-1, the upper-triangular factor of H = R R^T; hence the current weight of
column j is w_j + sum_{i<j} (w_i - q_i) R[i, j] / R[j, j], with w the original weights.
qpack runs that form: one Cholesky factorization of H and no inverse (hessian_factor,
update_matrix), the same codes as the paper's form up to float64 rounding.

Rows are independent (H only couples columns). Columns are processed in blocks of
``block_size``: inside a block the Cython kernel (qpack/_kernels/gptq.pyx) runs the column
loop with the updates confined to the block; the updates of the later columns are
applied once per block as one matrix product (BLAS), GPTQ's lazy batch update.
tests/test_calibration.py checks the result against the paper's column-by-column
algorithm written plainly in numpy.

Linear codes: a group's scale and zero-point are fitted (quantize.group_params: the rules
of quantize_linear, every clip mode) on the group's error-updated weights at the moment
the column loop enters the group; per tensor / per row, on the weights before any update.
K-means codes: the codebook is an importance-weighted K-means of the weights (the weight
of w[r, c] is H[c, c]: how much its input moves the output), then each weight takes its
nearest centroid with error feedback. Log codes (qpack/logquant.py): the same, with the
codebook a log grid whose scale is fitted with the same importance weights. Pruned
weights (a keep-mask) are fixed at exactly 0.0 (the zero-point / the reserved zero code)
and their error is propagated like any other, so the kept weights compensate for the
pruning too.

The outputs are ordinary ``LinearQuantized`` / ``KMeansQuantized`` objects: files,
``dequantize`` and the packed matmul are exactly as without calibration.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qpack._kernels import gptq as _kg
from qpack._validate import (
    as_matrix,
    check_bits,
    check_group_size,
    check_int,
    group_layout,
    matrix_shape,
)
from qpack.calibration import (
    Calibration,
    HessianStats,
    check_damping,
    check_source,
    damping_candidates,
    default_damping,
)
from qpack.cluster import (
    KMeansQuantized,
    _boundaries,
    _check_init,
    _check_iter_tol,
    _rng,
    check_codebook_dtype,
    check_mask,
    kmeans_1d,
    stored_codebook,
)
from qpack.logquant import DEFAULT_BASE, log_codebook
from qpack.quantize import LinearQuantized, check_linear_options, check_weights, group_params
from qpack.threads import get_num_threads

# Columns per block. Measured on MiniLM's 1536x384 and 384x1536 layers (benchmarks/
# bench_gptq.py, docs/benchmarks/gptq.md): 32 and 64 are 5-15% slower, 256 within 7% of
# 128 either way; 128 keeps the block of S (128 KiB) in L2.
DEFAULT_BLOCK = 128
MAX_BLOCK = 4096
# Raw inputs with fewer rows than this are not split to choose the damping: a held-back
# set of one or two rows says nothing about unseen inputs.
MIN_SPLIT_ROWS = 10
# Fraction of the rows (the last ones, a contiguous tail: consecutive rows of a sequence
# are correlated, so an interleaved split would judge on near-copies) held back.
HOLDOUT_FRACTION = 0.2


def hessian_factor(h: np.ndarray) -> np.ndarray:
    """The upper-triangular R with h = R R^T (positive diagonal), float64 (d, d).

    The Cholesky factor of h with rows and columns reversed: if J h J = L L^T (J the
    reversal) then R = J L J. GPTQ's factor U (upper, h^-1 = U^T U) is R^-1; the updates
    are written with R itself (module doc), so no inverse is ever formed: one
    factorization, d^3/3 flops.

    Raises ValueError when h is not positive definite (damping too small).
    """
    try:
        low = np.linalg.cholesky(h[::-1, ::-1])
    except np.linalg.LinAlgError:
        raise ValueError("the damped Hessian is not positive definite; use a larger "
                         "damping") from None
    r = np.ascontiguousarray(low[::-1, ::-1])
    if not np.isfinite(r).all() or not (np.diag(r) > 0).all():
        raise ValueError("the damped Hessian is too ill-conditioned to factor; use a larger "
                         "damping")
    return r


def update_matrix(r: np.ndarray) -> np.ndarray:
    """S = R diag(R)^-1 for R from hessian_factor: upper triangular with a unit diagonal;
    quantizing column i adds (w_i - q_i) * S[i, j] to every later column j."""
    return r / np.diag(r)[None, :]


def _threads(work: int) -> int:
    return get_num_threads() if work >= 1 << 14 else 1


def _keep_block(keep: np.ndarray | None, i1: int, i2: int) -> tuple[np.ndarray, bool]:
    if keep is None:
        return np.ones((1, 1), np.uint8), False  # never read: use_keep is False
    return np.ascontiguousarray(keep[:, i1:i2], dtype=np.uint8), True


def _run_blocks(w: np.ndarray, w0: np.ndarray, s: np.ndarray, keep: np.ndarray | None,
                block: int, column_loop: Callable) -> np.ndarray:
    """Drive the blocked algorithm over float64 ``w`` (rows, cols), updated in place from
    the original weights ``w0`` (equal to w on entry) and S = update_matrix(R).

    ``column_loop(i1, w1, w01, s1, c1, d1, k1, use_keep)`` quantizes block [i1, i1 + nb)
    with error feedback inside the block (the kernel), given the block's current weights
    w1 (rows, nb), its original weights w01, its diagonal block s1 of S, and outputs for
    codes c1 and errors d1 (original minus decoded). Returns the uint8 codes (rows, cols).
    """
    rows, cols = w.shape
    codes = np.empty((rows, cols), np.uint8)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = np.ascontiguousarray(w[:, i1:i2])
        w01 = np.ascontiguousarray(w0[:, i1:i2])
        s1 = np.ascontiguousarray(s[i1:i2, i1:i2])
        c1 = np.empty((rows, i2 - i1), np.uint8)
        d1 = np.zeros((rows, i2 - i1))
        k1, use_keep = _keep_block(keep, i1, i2)
        column_loop(i1, w1, w01, s1, c1, d1, k1, use_keep)
        codes[:, i1:i2] = c1
        if i2 < cols:  # the lazy batch update of every later column
            w[:, i2:] += d1 @ s[i1:i2, i2:]
    return codes


def _row_params(s_store: np.ndarray, zero: np.ndarray, rows: int):
    """Per-row kernel parameters from (rows or 1,) stored scales and zero-points."""
    s64 = np.broadcast_to(s_store.astype(np.float64).reshape(-1), (rows,))
    inv = np.where(s64 > 0, 1.0 / np.where(s64 > 0, s64, 1.0), 0.0)
    return (np.ascontiguousarray(inv),
            np.ascontiguousarray(np.broadcast_to(s_store.astype(np.float32).reshape(-1),
                                                 (rows,))),
            np.ascontiguousarray(np.broadcast_to(zero.astype(np.float32).reshape(-1),
                                                 (rows,))))


def _linear_codes(w: np.ndarray, r: np.ndarray, keep: np.ndarray | None, bits: int,
                  group_size: int | None, symmetric: bool, clip: str, percentile: float,
                  sdt: np.dtype, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ with linear codes on float64 ``w`` (rows, cols), which it overwrites; ``r``
    from hessian_factor.

    Returns (codes uint8 (rows, cols), scales ``sdt`` and zeros uint8 of group_layout).
    """
    rows, cols = w.shape
    w0 = w.copy()
    s = update_matrix(r)
    r_diag = np.diag(r)
    prow, ngroups, g = group_layout(group_size, rows, cols)
    scales = np.empty((prow, ngroups), sdt)
    zeros = np.empty((prow, ngroups), np.uint8)
    cmin, cmax = (1 if symmetric else 0), (1 << bits) - 1
    fit = lambda blk: group_params(blk, bits, symmetric, clip, percentile, sdt)  # noqa: E731
    kept = w if keep is None else np.where(keep, w, 0.0)  # pruned weights decode to 0.0
    if group_size is None or group_size == -1:
        # one group per tensor or per row: fitted before any update, as GPTQ does
        sc, z = fit(kept.reshape(1, 1, -1) if group_size is None
                    else kept.reshape(rows, 1, -1))
        scales[:], zeros[:] = sc, z
        params = _row_params(sc, z, rows)
    del kept
    grouped = group_size is not None and group_size != -1
    nt = _threads(rows * min(block, cols))
    state = {}

    def column_loop(i1, w1, w01, s1, c1, d1, k1, use_keep):
        nb = w1.shape[1]
        i2 = i1 + nb
        starts = [i1]
        if grouped:
            starts = sorted({i1, *range(-(-i1 // g) * g, i2, g)})
        for c0, c_end in zip(starts, starts[1:] + [i2], strict=True):
            if grouped and c0 % g == 0:
                state["params"] = fit_group(c0 // g, c0, i1, w1, d1)
            p = state["params"] if grouped else params
            _kg.linear_columns(w1, w01, s1, c1, d1, k1, use_keep, c0 - i1, c_end - i1, *p,
                               cmin, cmax, nt)

    def fit_group(gi, c0, i1, w1, d1):
        """Fit group gi (columns [c0, end)) on its error-updated weights as GPTQ has them
        when its loop enters the group."""
        i2 = i1 + w1.shape[1]
        end = min(c0 + g, cols)
        cur = w1[:, c0 - i1:min(end, i2) - i1]
        if end > i2:  # the group runs past the block: add the block's pending update
            done = c0 - i1
            rest = w[:, i2:end] + d1[:, :done] @ s[i1:c0, i2:end]
            cur = np.concatenate([cur, rest], axis=1)
        if c0 > 0:
            # The pushes so far, acc = (cur - w0) * diag(R) = delta_{<c0} R[<c0, group],
            # give a column its final value but not GPTQ's partial one before the
            # group: that is w0 + acc R_gg^-1 (R_gg the group's diagonal block of R),
            # since the leading block of an upper-triangular inverse is the inverse of
            # the leading block.
            acc = (cur - w0[:, c0:end]) * r_diag[c0:end]
            cur = w0[:, c0:end] + np.linalg.solve(r[c0:end, c0:end].T, acc.T).T
        if keep is not None:
            cur = np.where(keep[:, c0:end], cur, 0.0)
        sc, z = fit(np.ascontiguousarray(cur).reshape(rows, 1, -1))
        scales[:, gi], zeros[:, gi] = sc[:, 0], z[:, 0]
        return _row_params(sc, z, rows)

    codes = _run_blocks(w, w0, s, keep, block, column_loop)
    return codes, scales, zeros


def _kmeans_codes(w: np.ndarray, r: np.ndarray, h_diag: np.ndarray, keep: np.ndarray | None,
                  bits: int, init, max_iter: int, random_state, block: int,
                  codebook_dtype: str = "auto"):
    """GPTQ with a shared codebook on float64 ``w`` (rows, cols), which it overwrites;
    ``r`` from hessian_factor. ``codebook_dtype`` (checked) is decided as quantize_kmeans
    decides it, on the nearest-centroid codes of the weights before compensation.

    Returns (codes, codebook float16/float32 (k,), zero_code or None).
    """
    rows, cols = w.shape
    k = 1 << bits
    k_fit = k if keep is None else k - 1
    importance = np.broadcast_to(h_diag, (rows, cols))
    vals = w.reshape(-1) if keep is None else w[keep]
    if vals.size == 0:
        cents = np.zeros(k_fit)
    else:
        sw = importance.reshape(-1) if keep is None else importance[keep]
        cents, _ = kmeans_1d(vals, k_fit, init=init, max_iter=max_iter, sample_weight=sw,
                             random_state=random_state)
    book = stored_codebook(cents.reshape(1, -1), w.reshape(1, -1),
                           None if keep is None else keep.reshape(1, -1), codebook_dtype)[0][0]
    offset = 0 if keep is None else 1
    # assign against the stored (possibly float16-rounded) values
    codes = _codebook_codes(w, r, keep, book.astype(np.float32), offset, 0, block)
    if keep is None:
        return codes, book, None
    return codes, np.concatenate([np.zeros(1, book.dtype), book]), 0


def _codebook_codes(w: np.ndarray, r: np.ndarray, keep: np.ndarray | None, book: np.ndarray,
                    offset: int, fixed_code: int, block: int) -> np.ndarray:
    """GPTQ's column loop against a fixed codebook on float64 ``w`` (rows, cols), which it
    overwrites; ``r`` from hessian_factor.

    ``book``: ascending float32 values a kept weight may take (code = index + ``offset``);
    a pruned one gets ``fixed_code`` and decodes to 0.0. Returns the uint8 codes.
    """
    rows, cols = w.shape
    # assign against the stored float32 codebook, with the K-means fit's tie rule
    bounds = np.ascontiguousarray(_boundaries(book.astype(np.float64)))
    nt = _threads(rows * min(block, cols))

    def column_loop(i1, w1, w01, s1, c1, d1, k1, use_keep):
        _kg.kmeans_columns(w1, w01, s1, c1, d1, k1, use_keep, 0, w1.shape[1], bounds, book,
                           offset, fixed_code, nt)

    return _run_blocks(w, w.copy(), update_matrix(r), keep, block, column_loop)


def _log_codes(w: np.ndarray, r: np.ndarray, h_diag: np.ndarray, keep: np.ndarray | None,
               bits: int, base: float, block: int) -> tuple[np.ndarray, np.ndarray, int | None]:
    """GPTQ with a log grid (qpack/logquant.py) on float64 ``w`` (rows, cols), which it
    overwrites: the grid's scale is fitted to the weights before any update, each weighted
    by its importance diag(H) like the K-means fit; then the column loop assigns to it.

    Returns (codes, codebook float32 (2**bits,), zero_code or None).
    """
    importance = np.broadcast_to(h_diag, w.shape)
    vals = w.reshape(-1) if keep is None else w[keep]
    sw = importance.reshape(-1) if keep is None else importance[keep]
    book, zero_code = log_codebook([vals], bits, base=base, zero=bits > 1 or keep is not None,
                                   weights=[sw])
    book = book[0]
    codes = _codebook_codes(w, r, keep, book, 0, 0 if zero_code is None else zero_code, block)
    return codes, book, zero_code


def _heldout_error(w: np.ndarray, w_hat: np.ndarray, h_val: np.ndarray) -> float:
    """tr(dW H_val dW^T): the output error on the held-back rows (times 1/n_val)."""
    dw = w - w_hat
    return float(np.einsum("ij,ij->", dw @ h_val, dw))


def _sources(calibration, cols: int):
    """(statistics of every row, (train, held-back) statistics or None) of a checked
    calibration value."""
    if isinstance(calibration, HessianStats):
        return calibration, None
    x = calibration
    n = x.shape[0]
    if n < MIN_SPLIT_ROWS:
        return HessianStats(cols).update(x), None
    n_val = max(1, int(np.ceil(n * HOLDOUT_FRACTION)))
    train = HessianStats(cols).update(x[:n - n_val])
    val = HessianStats(cols).update(x[n - n_val:])
    return train.combine(val), (train, val)


def calibrated(w: np.ndarray, calibration, damping: float | None,
               quantize: Callable[[np.ndarray], object]) -> tuple[object, float]:
    """Run ``quantize(h)`` (a GPTQ quantizer for the damped Hessian h) with the damping
    chosen for ``calibration`` (checked: inputs (n, cols) or HessianStats).

    damping given: used as is. Otherwise, with raw inputs of at least MIN_SPLIT_ROWS rows:
    the last HOLDOUT_FRACTION of the rows are held back, each of the
    ``calibration.damping_candidates`` (for the rows kept) quantizes with the statistics
    of the kept rows, and the one with the smallest held-back output error
    tr(dW H_val dW^T) wins (ties to the larger damping); then the quantizer runs again on
    all rows with it. Otherwise ``calibration.default_damping`` for all the rows.
    Returns (the quantized object, the damping used).
    """
    stats, split = _sources(calibration, matrix_shape(w.shape)[1])
    if damping is None and split is not None:
        train, val = split
        h_val = val.xtx / val.n_samples
        w64 = as_matrix(w).astype(np.float64)
        best, best_err = None, np.inf
        cands = damping_candidates(train.n_samples, train.in_features)
        for cand in sorted(cands, reverse=True):
            q = quantize(train.hessian(cand))
            err = _heldout_error(w64, as_matrix(q.dequantize(np.float64)), h_val)
            if err < best_err:
                best, best_err = cand, err
        damping = best
    elif damping is None:
        damping = default_damping(stats.n_samples, stats.in_features)
    return quantize(stats.hessian(damping)), damping


def _common(w, calibration, mask, damping, block_size):
    """Checked (weights, their (rows, cols), calibration, keep-mask matrix, damping, block)."""
    arr = check_weights(w)
    rows, cols = matrix_shape(arr.shape)
    source = check_source(calibration, cols, "calibration")
    keep = None if mask is None else as_matrix(check_mask(mask, arr.shape))
    damping = check_damping(damping)
    block = check_int(block_size, "block_size", 1, MAX_BLOCK)
    return arr, source, keep, damping, block


def quantize_linear_gptq(w, calibration, bits: int, *, group_size: int | None = None,
                         symmetric: bool = False, clip: str = "minmax",
                         percentile: float = 99.9, scale_dtype=np.float16, mask=None,
                         damping: float | None = None,
                         block_size: int = DEFAULT_BLOCK) -> LinearQuantized:
    """Linear codes with error compensation on calibration inputs (GPTQ; module doc).

    Parameters
    ----------
    w : float16/32/64 array_like, finite, not empty; viewed as (rows, cols) =
        (shape[0], prod(shape[1:])) (1-D: (1, n)), as in quantize_linear.
    calibration : the layer's inputs, float array (n_samples, cols) (n >= 1; fewer rows
        than cols is fine: damping keeps H invertible), or a ``HessianStats`` of them.
        For conv weights, the unfolded patches (qpack.calibration module doc).
    bits, group_size, symmetric, clip, percentile, scale_dtype : as in quantize_linear;
        each group's parameters are fitted on its error-updated weights.
    mask : optional boolean keep-mask of w's shape: removed weights get the zero-point
        (decode to exactly 0.0) and their error is compensated by the kept ones.
    damping : relative damping (a fraction of mean(diag(X^T X / n)), in [1e-6, 1e6]), or
        None: chosen on held-back rows for raw inputs, ``calibration.default_damping``
        (in_features / n_samples, clipped to [0.1, 1]) for HessianStats (``calibrated``).
    block_size : columns per block of the lazy batch update, 1..4096 (speed only).

    Returns
    -------
    LinearQuantized, stored by ``compress`` like any other.

    Raises
    ------
    ValueError naming the argument: anything quantize_linear refuses, calibration that is
    not 2-D, not float, non-finite or of a width other than cols (both sizes named), a bad
    mask, damping or block_size.

    Cost: O(cols^3) for the factorization plus O(rows * cols^2) for the updates, float64,
    four times over when the damping is chosen on held-back rows.
    """
    arr, source, keep, damping, block = _common(w, calibration, mask, damping, block_size)
    bits, symmetric, clip, percentile, sdt = check_linear_options(bits, symmetric, clip,
                                                                  percentile, scale_dtype)
    group_size = check_group_size(group_size)
    return _linear_calibrated(arr, source, keep, damping, block, bits, group_size,
                              symmetric, clip, percentile, sdt)[0]


def _linear_calibrated(arr, source, keep, damping, block, bits, group_size, symmetric, clip,
                       percentile, sdt) -> tuple[LinearQuantized, float]:
    """quantize_linear_gptq on checked arguments; also returns the damping used."""
    def run(h):
        codes, scales, zeros = _linear_codes(
            as_matrix(arr).astype(np.float64), hessian_factor(h), keep, bits,
            group_size, symmetric, clip, percentile, sdt, block)
        return LinearQuantized(codes=codes.reshape(arr.shape), scales=scales, zeros=zeros,
                               bits=bits, group_size=group_size, symmetric=symmetric,
                               shape=tuple(arr.shape))

    return calibrated(arr, source, damping, run)


def quantize_kmeans_gptq(w, calibration, bits: int, *, mask=None, init="linear",
                         max_iter: int = 300, random_state=0, damping: float | None = None,
                         block_size: int = DEFAULT_BLOCK,
                         codebook_dtype="auto") -> KMeansQuantized:
    """K-means weight sharing with error compensation on calibration inputs (GPTQ).

    The codebook (one for the tensor) is a K-means of the weights weighted by their
    importance diag(H) (the damped Hessian's diagonal entry of each weight's column);
    then every weight takes its nearest centroid, column by column, with the error pushed
    onto the later columns (module doc).

    Parameters
    ----------
    w : float16/32/64 array_like, finite, not empty; viewed as (rows, cols).
    calibration, damping, block_size : as in quantize_linear_gptq.
    bits : int in 1..8; k = 2**bits entries.
    mask : optional boolean keep-mask of w's shape: removed weights get ``zero_code`` = 0
        (an exact 0.0 entry, reserved as in quantize_kmeans) and take no part in the fit;
        their error is compensated by the kept weights.
    init, max_iter, random_state : as in quantize_kmeans (init arrays have k entries, or
        k-1 with a mask).
    codebook_dtype : "auto", np.float16 or np.float32, as in quantize_kmeans ("auto"
        decides on the nearest-centroid codes of the uncompensated weights); the
        compensated codes are assigned against the stored values.

    Returns a KMeansQuantized (per_channel=False; per-channel codebooks are not offered
    with calibration). Raises ValueError naming the argument, as quantize_kmeans and
    quantize_linear_gptq do.
    """
    arr, source, keep, damping, block = _common(w, calibration, mask, damping, block_size)
    bits, init, max_iter = check_kmeans_options(bits, keep is not None, init, max_iter,
                                                random_state)
    codebook_dtype = check_codebook_dtype(codebook_dtype)
    return _kmeans_calibrated(arr, source, keep, damping, block, bits, init, max_iter,
                              random_state, codebook_dtype)[0]


def check_kmeans_options(bits, masked: bool, init, max_iter,
                         random_state) -> tuple[int, str | np.ndarray, int]:
    """Validated (bits, init, max_iter) of quantize_kmeans_gptq (random_state checked too)."""
    bits = check_bits(bits)
    k_fit = (1 << bits) - (1 if masked else 0)
    if k_fit < 1:
        raise ValueError("bits must leave room for a learned centroid")
    init = _check_init(init, k_fit)
    max_iter, _ = _check_iter_tol(max_iter, 0.0)
    _rng(random_state)
    return bits, init, max_iter


def _kmeans_calibrated(arr, source, keep, damping, block, bits, init, max_iter,
                       random_state, codebook_dtype) -> tuple[KMeansQuantized, float]:
    """quantize_kmeans_gptq on checked arguments; also returns the damping used."""
    def run(h):
        # random_state as given: an int seeds every damping candidate's fit alike
        codes, book, zero_code = _kmeans_codes(
            as_matrix(arr).astype(np.float64), hessian_factor(h), np.diag(h).copy(),
            keep, bits, init, max_iter, random_state, block, codebook_dtype)
        return KMeansQuantized(codes=codes.reshape(arr.shape), codebook=book,
                               zero_code=zero_code, bits=bits, shape=tuple(arr.shape),
                               per_channel=False)

    return calibrated(arr, source, damping, run)


def _log_calibrated(arr, source, keep, damping, block, bits,
                    base) -> tuple[KMeansQuantized, float]:
    """Log quantization with error compensation on checked arguments; also returns the
    damping used."""
    def run(h):
        codes, book, zero_code = _log_codes(as_matrix(arr).astype(np.float64),
                                            hessian_factor(h), np.diag(h).copy(), keep,
                                            bits, base, block)
        return KMeansQuantized(codes=codes.reshape(arr.shape), codebook=book,
                               zero_code=zero_code, bits=bits, shape=tuple(arr.shape),
                               per_channel=False)

    return calibrated(arr, source, damping, run)


def quantize_calibrated(w: np.ndarray, settings, mask: np.ndarray | None,
                        calibration: Calibration) -> tuple[object, float]:
    """``compress``'s entry: quantize float ``w`` (rows, cols) with error compensation.

    ``settings`` is the tensor's TensorSettings (method "linear", "kmeans" or "log",
    checked by the plan, not per_channel); ``mask`` a keep-mask of w's shape or None;
    ``calibration`` the plan's checked Calibration. Takes the scale and codebook dtypes
    from ``settings`` and quantize_linear's / quantize_kmeans' / quantize_log's defaults
    for what compress does not set (percentile 99.9, max_iter 300, seed 0, base 2).
    Returns (LinearQuantized or KMeansQuantized, the damping used).
    """
    keep = None if mask is None else np.asarray(mask, dtype=bool).reshape(w.shape)
    if settings.method == "linear":
        return _linear_calibrated(w, calibration.source, keep, calibration.damping,
                                  DEFAULT_BLOCK, settings.bits, settings.group_size,
                                  settings.symmetric, settings.clip, 99.9,
                                  np.dtype(settings.scale_dtype))
    if settings.method == "log":
        return _log_calibrated(w, calibration.source, keep, calibration.damping,
                               DEFAULT_BLOCK, settings.bits, DEFAULT_BASE)
    return _kmeans_calibrated(w, calibration.source, keep, calibration.damping,
                              DEFAULT_BLOCK, settings.bits, settings.init, 300, 0,
                              settings.codebook_dtype)
