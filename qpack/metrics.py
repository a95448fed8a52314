"""Error metrics between a reference tensor ``a`` and its reconstruction ``b``.

Every metric is computed in float64, whatever the input dtypes. Both arrays must have the
same shape, be non-empty and finite; a ValueError names the argument otherwise.
"""

from __future__ import annotations

import numpy as np


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for name, v in (("a", a), ("b", b)):
        try:
            arr = np.asarray(v)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be convertible to a numeric array: {exc}") from None
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
        if arr.size == 0:
            raise ValueError(f"{name} must not be empty")
        arr = arr.astype(np.float64, copy=False)
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or Inf")
        out.append(arr)
    if out[0].shape != out[1].shape:
        raise ValueError(f"a and b must have the same shape, got {out[0].shape} and "
                         f"{out[1].shape}")
    return out[0], out[1]


def mse(a, b) -> float:
    """Mean squared error mean((a - b)**2)."""
    x, y = _pair(a, b)
    return float(np.mean(np.square(x - y)))


def relative_error(a, b) -> float:
    """||a - b||_F / ||a||_F; 0.0 when both are all zero, inf when only ``a`` is."""
    x, y = _pair(a, b)
    err = float(np.linalg.norm((x - y).reshape(-1)))
    ref = float(np.linalg.norm(x.reshape(-1)))
    if err == 0.0:
        return 0.0
    return err / ref if ref > 0 else float("inf")


def sqnr_db(a, b) -> float:
    """Signal-to-quantization-noise ratio 10*log10(sum a**2 / sum (a-b)**2) in dB.

    inf for an exact reconstruction; -inf when ``a`` is all zero but ``b`` is not.
    """
    x, y = _pair(a, b)
    noise = float(np.square(x - y).sum())
    signal = float(np.square(x).sum())
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


def max_abs_error(a, b) -> float:
    """max |a - b| over every element."""
    x, y = _pair(a, b)
    return float(np.max(np.abs(x - y)))
