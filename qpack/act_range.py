"""Static activation ranges: a streaming histogram of |x| and the clip it implies.

The int8 mode of the packed kernels quantizes activations per block of 128 columns with
the block's own max|x| / 127 (dynamic). ``act_quant="int8-static"`` uses one scale per
layer instead, chosen once from calibration inputs and stored in the file (the tensor's
``act_scale``): no per-block maximum to find, and a scale that does not depend on the
batch. ``ActivationHistogram`` accumulates |x| over calibration batches in logarithmic
bins (mergeable, bounded memory whatever the range), and ``clip_value`` turns it into the
clipping threshold t (scale = t / 127) by one of:

- "minmax": the largest |x| seen (nothing clips);
- "percentile": the given percentile of |x|;
- "mse": the t minimizing the expected squared error of symmetric int8 rounding with
  clipping, sum over bins of count * ((|x| - t)^2 if |x| > t else (t/127)^2 / 12);
- "kl": the t minimizing KL(P || Q) between the |x| distribution clipped at t and its
  128-level quantization (the entropy calibration of TensorRT's int8 mode, on the
  histogram re-binned linearly).
"""

from __future__ import annotations

import math

import numpy as np

ACT_RANGE_METHODS = ("minmax", "percentile", "mse", "kl")
# Logarithmic bins: BINS_PER_OCTAVE per power of two over [2^MIN_EXP, 2^MAX_EXP); |x|
# below the range counts as 0 (it rounds to code 0 whatever the scale), above it in the
# last bin (float32 activations beyond 2^64 are not activations).
BINS_PER_OCTAVE = 32
MIN_EXP, MAX_EXP = -64, 64
NBINS = (MAX_EXP - MIN_EXP) * BINS_PER_OCTAVE
# Levels of the symmetric int8 grid on one side, and linear bins for the KL search.
LEVELS = 127
KL_BINS = 2048
_CHUNK = 1 << 20  # elements converted at a time (bounds the temporaries)


class ActivationHistogram:
    """Counts of |x| in logarithmic bins, plus the exact max|x|, over all batches added.

    Attributes: ``counts`` (int64 (NBINS,)), ``zeros`` (elements with |x| below the bin
    range), ``max_abs`` (float), ``n`` (elements seen).
    """

    def __init__(self):
        self.counts = np.zeros(NBINS, dtype=np.int64)
        self.zeros = 0
        self.max_abs = 0.0
        self.n = 0

    def update(self, x: np.ndarray) -> ActivationHistogram:
        """Add the elements of a finite float array x (checked by the caller); return self."""
        flat = np.asarray(x).reshape(-1)
        for i in range(0, flat.size, _CHUNK):
            a = np.abs(flat[i:i + _CHUNK].astype(np.float64))
            self.n += a.size
            if a.size:
                self.max_abs = max(self.max_abs, float(a.max()))
            tiny = a < 2.0 ** MIN_EXP
            self.zeros += int(np.count_nonzero(tiny))
            idx = np.floor((np.log2(a[~tiny]) - MIN_EXP) * BINS_PER_OCTAVE).astype(np.int64)
            np.clip(idx, 0, NBINS - 1, out=idx)
            self.counts += np.bincount(idx, minlength=NBINS)
        return self

    def combine(self, other: ActivationHistogram) -> ActivationHistogram:
        """A new histogram of both sets of elements."""
        out = ActivationHistogram()
        out.counts = self.counts + other.counts
        out.zeros = self.zeros + other.zeros
        out.max_abs = max(self.max_abs, other.max_abs)
        out.n = self.n + other.n
        return out

    def centers(self) -> np.ndarray:
        """Each bin's geometric centre, capped at max_abs (float64 (NBINS,))."""
        k = np.arange(NBINS, dtype=np.float64)
        return np.minimum(2.0 ** (MIN_EXP + (k + 0.5) / BINS_PER_OCTAVE), self.max_abs)


def check_act_range(method, percentile) -> tuple[str, float]:
    """Validated (method, percentile); ValueError naming the argument."""
    if method not in ACT_RANGE_METHODS:
        raise ValueError(f"act_range must be one of {ACT_RANGE_METHODS}, got {method!r}")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float, np.number)) \
            or not 50.0 < float(percentile) <= 100.0:
        raise ValueError(f"act_percentile must be a number in (50, 100], got {percentile!r}")
    return method, float(percentile)


def clip_value(hist: ActivationHistogram, method: str, percentile: float = 99.99) -> float:
    """The clipping threshold t (>= 0) for ``method`` (ACT_RANGE_METHODS); 0 when every
    element was 0. The static int8 scale is t / 127."""
    if hist.max_abs == 0.0 or not hist.counts.any():
        return 0.0
    if method == "minmax":
        return hist.max_abs
    centers = hist.centers()
    used = np.nonzero(hist.counts)[0]
    c = hist.counts[used].astype(np.float64)
    v = centers[used]
    if method == "percentile":
        cum = (hist.zeros + np.cumsum(c)) / hist.n
        j = int(np.searchsorted(cum, percentile / 100.0))
        return float(v[min(j, v.size - 1)])
    if method == "mse":
        # candidate thresholds: the used bins' centres (any t between two centres is
        # beaten by one of them up to the rounding-noise term), and max|x| itself
        cand = np.unique(np.append(v, hist.max_abs))
        over = np.maximum(v[None, :] - cand[:, None], 0.0)
        err = (c[None, :] * over ** 2).sum(axis=1)
        err += (hist.n * (cand / LEVELS) ** 2 / 12.0)
        return float(cand[int(np.argmin(err))])
    return _kl_clip(v, c, hist.max_abs)


def _kl_clip(v: np.ndarray, c: np.ndarray, max_abs: float) -> float:
    """The entropy-calibration threshold over KL_BINS linear bins of [0, max_abs]."""
    lin = np.zeros(KL_BINS)
    idx = np.minimum((v / max_abs * KL_BINS).astype(np.int64), KL_BINS - 1)
    np.add.at(lin, idx, c)
    width = max_abs / KL_BINS
    best_t, best_kl = max_abs, math.inf
    for i in range(LEVELS + 1, KL_BINS + 1, 8):
        p = lin[:i].copy()
        p[-1] += lin[i:].sum()  # what clips lands on the edge
        # Q: the unclipped first i bins merged into LEVELS+1 levels, each level's mass
        # spread over the bins it merged that are non-zero (so clipping costs: Q lacks
        # the mass P piles on the edge)
        body = lin[:i]
        starts = np.unique(np.linspace(0, i, LEVELS + 2).astype(np.int64)[:-1])
        nz = body > 0
        sums = np.add.reduceat(body, starts)
        counts = np.add.reduceat(nz.astype(np.float64), starts)
        per = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        q = np.repeat(per, np.diff(np.append(starts, i))) * nz
        mask = p > 0
        pn, qn = p[mask] / p.sum(), q[mask] / q.sum()
        # a bin of P that Q leaves empty (the edge, when nothing was there unclipped)
        # gets Q's smallest positive mass rather than an infinite divergence
        qn = np.where(qn > 0, qn, qn[qn > 0].min() if (qn > 0).any() else 1.0)
        kl = float(np.sum(pn * np.log(pn / qn)))
        if kl < best_kl:
            best_t, best_kl = (i + 0.5) * width, kl
    return float(min(best_t, max_abs))


def static_scale(hist: ActivationHistogram, method: str, percentile: float = 99.99) -> float:
    """The int8 activation scale t / 127 (float32-representable, > 0), or 0.0 when every
    calibration element was 0."""
    t = clip_value(hist, method, percentile)
    return float(np.float32(t / LEVELS)) if t > 0 else 0.0
