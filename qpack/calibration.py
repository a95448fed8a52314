"""Calibration statistics: the second moment X^T X of a layer's inputs, and its rules.

Error-compensated quantization (qpack/gptq.py) minimizes the output error of a layer
``y = x @ W.T`` on calibration inputs x, ||X W^T - X W_hat^T||^2, whose curvature is the
matrix X^T X of the inputs. ``HessianStats`` accumulates it batch by batch in float64, so a
large calibration set never has to sit in memory.

The inputs of a weight are the rows its matrix view (qpack._validate.matrix_shape) is
multiplied with: for a Linear weight (out, in), the activations (n, in) entering the
layer; for a conv weight (out, in, kh, kw), viewed as (out, in*kh*kw), the unfolded input
patches (n, in*kh*kw) with the columns ordered (in, kh, kw) like the weight's (one row per
output position of every image: torch's ``F.unfold(x, ...).transpose(1, 2).reshape(-1,
in*kh*kw)``).

Damping is relative everywhere in qpack: ``damping`` d adds d * mean(diag(X^T X / n)) to
the diagonal (GPTQ's "percdamp"), so one value means the same for any input scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qpack._validate import check_int
from qpack.act_range import ActivationHistogram, static_scale

# The largest in_features accepted: X^T X is in_features**2 float64, and choosing the
# damping on held-back rows holds about eight such matrices at its peak (statistics of
# the kept, held-back and all rows, the damped H, its factor and S): 4 GiB at 8192.
MAX_FEATURES = 8192
# Relative damping when it is not chosen on held-back rows (HessianStats given, or too
# few rows): in_features / n_samples, kept in [0.1, 1]. Measured on all-MiniLM-L6-v2
# (held-out output error of 8 Linear layers, 3-bit linear g128 and 4-bit K-means): the
# best damping falls as rows are added -- ~1.0 with 128 rows (fewer than in_features;
# 0.01 is 25% worse there, it overfits), 0.3 with 512, 0.1 with 2048, 0.03-0.1 with 9702
# -- and this rule stays within ~2% of the best at every size.
DEFAULT_DAMPING_RANGE = (0.1, 1.0)
# Candidates tried on held-back rows when raw inputs are given: the default times these.
DAMPING_STEPS = (1 / 3, 1.0, 3.0)
# Damping accepted from a caller: below 1e-6 the damped matrix may not be positive
# definite in float64; above 1e6 it is the identity for every purpose.
DAMPING_RANGE = (1e-6, 1e6)
# Rows are converted to float64 this many at a time (bounds the temporary copy).
_CHUNK_ROWS = 4096


def default_damping(n_samples: int, in_features: int) -> float:
    """The relative damping used without a held-back choice: in_features / n_samples
    clipped to DEFAULT_DAMPING_RANGE (more rows pin X^T X down better, so they need less)."""
    lo, hi = DEFAULT_DAMPING_RANGE
    return float(min(hi, max(lo, in_features / max(n_samples, 1))))


def damping_candidates(n_samples: int, in_features: int) -> tuple[float, ...]:
    """The relative dampings tried on held-back rows: default_damping times DAMPING_STEPS."""
    base = default_damping(n_samples, in_features)
    return tuple(base * step for step in DAMPING_STEPS)


def check_damping(damping, name: str = "damping") -> float | None:
    """``damping`` as a float (None passes): a real number in DAMPING_RANGE."""
    if damping is None:
        return None
    lo, hi = DAMPING_RANGE
    if isinstance(damping, bool) or not isinstance(damping, (int, float, np.integer,
                                                               np.floating)) \
            or not np.isfinite(damping) or not lo <= float(damping) <= hi:
        raise ValueError(f"{name} must be None or a number in [{lo:g}, {hi:g}] (a fraction "
                         f"of mean(diag(X^T X / n))), got {damping!r}")
    return float(damping)


def check_inputs(x, name: str = "x", in_features: int | None = None,
                 expected: str = "in_features") -> np.ndarray:
    """Return calibration inputs ``x`` as a floating (n, in_features) ndarray (no copy).

    Raises ValueError naming ``name`` for: not convertible, a non-floating dtype, not 2-D,
    no rows or no columns, more than MAX_FEATURES columns, a width other than
    ``in_features`` (when given; the message calls that width ``expected``), or NaN/Inf.
    """
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be convertible to a floating numpy array: {exc}") \
            from None
    if arr.dtype.kind != "f" or arr.dtype.itemsize > 8:
        raise ValueError(f"{name} must have a floating dtype (float16/32/64), got {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, in_features), got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape "
                         f"{arr.shape}")
    if in_features is not None and arr.shape[1] != in_features:
        raise ValueError(f"{name} has {arr.shape[1]} columns, but {expected} is "
                         f"{in_features}")
    if arr.shape[1] > MAX_FEATURES:
        raise ValueError(f"{name} has {arr.shape[1]} columns; at most {MAX_FEATURES} are "
                         "supported (X^T X would not fit in memory)")
    if not np.isfinite(arr).all():
        bad = "NaN" if np.isnan(arr).any() else "Inf"
        raise ValueError(f"{name} contains {bad}; calibration inputs must be finite")
    return arr


def _xtx(x: np.ndarray) -> np.ndarray:
    """X^T X of a checked (n, d) array in float64, converting a chunk of rows at a time."""
    d = x.shape[1]
    out = np.zeros((d, d))
    for r0 in range(0, x.shape[0], _CHUNK_ROWS):
        c = x[r0:r0 + _CHUNK_ROWS].astype(np.float64, copy=False)
        with np.errstate(over="ignore", invalid="ignore"):  # reported by the caller
            out += c.T @ c
    return out


class HessianStats:
    """Running statistics of a layer's calibration inputs: X^T X (float64) and row count.

    ``HessianStats(in_features)`` starts empty; ``update(x)`` adds a batch x of shape
    (n, in_features) (any float dtype; see the module doc for conv weights); ``hessian``
    gives the damped matrix the quantizer uses. Memory is in_features**2 float64 whatever
    the number of rows.

    Attributes: ``in_features`` (int), ``n_samples`` (rows seen so far), ``xtx`` (a
    read-only view of the accumulated float64 (in_features, in_features) X^T X),
    ``activations`` (an ActivationHistogram of |x|, for a static int8 activation scale).
    """

    def __init__(self, in_features: int):
        """Empty statistics for inputs of ``in_features`` columns (1..MAX_FEATURES).

        Raises ValueError for another in_features.
        """
        self.in_features = check_int(in_features, "in_features", 1, MAX_FEATURES)
        self._xtx = np.zeros((self.in_features, self.in_features))
        self._n = 0
        # the distribution of |x|, for a static int8 activation range (qpack/act_range.py)
        self.activations = ActivationHistogram()

    @classmethod
    def from_inputs(cls, x) -> HessianStats:
        """Statistics of one array of inputs x (n >= 1, in_features); errors as ``update``."""
        arr = check_inputs(x, "x")
        return cls(arr.shape[1]).update(arr)

    @property
    def n_samples(self) -> int:
        """Rows added so far."""
        return self._n

    @property
    def xtx(self) -> np.ndarray:
        """The accumulated X^T X, float64 (in_features, in_features), read-only."""
        view = self._xtx.view()
        view.flags.writeable = False
        return view

    def update(self, x) -> HessianStats:
        """Add a batch of inputs x (n, in_features) and return self.

        Raises ValueError (nothing is added) for inputs that ``check_inputs`` refuses, a
        width other than ``in_features``, or values so large that X^T X overflows float64.
        """
        arr = check_inputs(x, "x", self.in_features)
        add = _xtx(arr)
        if not np.isfinite(add).all():
            raise ValueError("x is too large: X^T X overflows float64")
        self._xtx += add
        self._n += arr.shape[0]
        self.activations.update(arr)
        return self

    def combine(self, other: HessianStats) -> HessianStats:
        """New statistics of both sets of rows (self's and other's, same in_features)."""
        if not isinstance(other, HessianStats):
            raise ValueError(f"other must be a HessianStats, got {type(other).__name__}")
        if other.in_features != self.in_features:
            raise ValueError(f"cannot combine statistics of {self.in_features} and "
                             f"{other.in_features} in_features")
        out = HessianStats(self.in_features)
        out._xtx = self._xtx + other._xtx
        out._n = self._n + other._n
        out.activations = self.activations.combine(other.activations)
        return out

    def hessian(self, damping: float | None = None) -> np.ndarray:
        """The damped second moment H = X^T X / n + damping * m * I, float64 (d, d).

        m = mean(diag(X^T X / n)), or 1 when every input was 0 (then H = damping * I and
        quantization falls back to rounding to nearest). damping None means
        ``default_damping(n_samples, in_features)``. The factor 2 of the squared-error
        Hessian is left out: GPTQ's updates do not change when H is scaled.

        Raises ValueError when no rows were added or ``damping`` is outside DAMPING_RANGE.
        """
        damping = check_damping(damping)
        if self._n < 1:
            raise ValueError("HessianStats has no samples: call update(x) first")
        if damping is None:
            damping = default_damping(self._n, self.in_features)
        h = self._xtx / self._n
        h = (h + h.T) * 0.5  # exactly symmetric, whatever BLAS did
        mean_diag = float(np.mean(np.diag(h)))
        idx = np.arange(self.in_features)
        h[idx, idx] += damping * (mean_diag if mean_diag > 0 else 1.0)
        return h

    def __repr__(self) -> str:
        return f"HessianStats(in_features={self.in_features}, n_samples={self._n})"


@dataclass
class Calibration:
    """One tensor's validated calibration, as ``compress`` plans it.

    source : the (n, in_features) inputs (a checked ndarray) or a HessianStats.
    damping : the caller's relative damping, or None (chosen on held-back rows for raw
        inputs, default_damping for HessianStats).
    act_range : how the static int8 activation scale is chosen (qpack/act_range.py), or
        None to store none; act_percentile : for act_range="percentile".
    chosen : the damping actually used, filled in by the encoder.
    """

    source: np.ndarray | HessianStats
    damping: float | None = None
    act_range: str | None = None
    act_percentile: float = 99.99
    chosen: float | None = None

    def act_scale(self) -> float:
        """The static int8 activation scale of the calibration inputs (0.0 if all zero)."""
        hist = self.source.activations if isinstance(self.source, HessianStats) \
            else ActivationHistogram().update(self.source)
        return static_scale(hist, self.act_range, self.act_percentile)


def check_source(value, in_features: int, where: str) -> np.ndarray | HessianStats:
    """A checked calibration value for a weight of ``in_features`` matrix columns.

    ``value`` is a HessianStats or (n, in_features) inputs (numpy, torch, ...; converted
    without copying numpy). Raises ValueError starting with ``where`` for a width other
    than ``in_features`` (naming both), empty statistics, non-finite or non-float inputs.
    """
    if isinstance(value, HessianStats):
        if value.in_features != in_features:
            raise ValueError(f"{where} has in_features={value.in_features}, but the weight's "
                             f"matrix-view column count is {in_features}")
        if value.n_samples < 1:
            raise ValueError(f"{where} is a HessianStats with no samples")
        return value
    from qpack.inputs import to_array

    return check_inputs(to_array(where, value), where, in_features,
                        "the weight's matrix-view column count")
