"""qpack.metrics: float64 error figures with their documented edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from qpack import metrics


def test_known_values():
    a = np.array([3.0, 4.0])
    b = np.array([3.0, 3.0])
    assert metrics.mse(a, b) == pytest.approx(0.5)
    assert metrics.relative_error(a, b) == pytest.approx(1 / 5)
    assert metrics.sqnr_db(a, b) == pytest.approx(10 * np.log10(25.0))
    assert metrics.max_abs_error(a, b) == 1.0


def test_exact_and_zero_cases():
    a = np.array([[1.0, -2.0]], np.float32)
    assert metrics.mse(a, a) == 0.0
    assert metrics.relative_error(a, a) == 0.0
    assert metrics.sqnr_db(a, a) == float("inf")
    z = np.zeros(3)
    assert metrics.relative_error(z, z) == 0.0
    assert metrics.sqnr_db(z, z) == float("inf")
    assert metrics.relative_error(z, np.ones(3)) == float("inf")
    assert metrics.sqnr_db(z, np.ones(3)) == float("-inf")


def test_computed_in_float64():
    # float16 inputs whose difference would underflow if squared in float16.
    a = np.full(1000, 1e-3, np.float16)
    b = np.zeros(1000, np.float16)
    assert metrics.mse(a, b) == pytest.approx(float(np.float16(1e-3)) ** 2, rel=1e-12)
    big = np.full(10, 6e4, np.float16)
    assert np.isfinite(metrics.sqnr_db(big, big * np.float16(0.5)))
    assert isinstance(metrics.mse(a, b), float)


@pytest.mark.parametrize("fn", [metrics.mse, metrics.relative_error, metrics.sqnr_db,
                                metrics.max_abs_error])
def test_bad_input(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="a must not be empty"):
        fn(np.ones(0), np.ones(0))
    with pytest.raises(ValueError, match="b contains NaN"):
        fn(np.ones(2), [1.0, np.nan])
    with pytest.raises(ValueError, match="a must be a real numeric array"):
        fn(np.ones(2, complex), np.ones(2))
