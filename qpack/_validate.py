"""The argument rules shared by every module, each written once.

Python-side checks raise ``ValueError`` naming the argument. Checks of values read from a
file live in ``qpack.tensor_spec`` and raise ``FormatError``; both use the shape helpers
here, so the two sides cannot disagree about what a shape or a group means.
"""

from __future__ import annotations

import numpy as np


def check_int(value, name: str, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int after checking it is an integer in [low, high].

    Python ints and numpy integers are accepted; bools, floats and everything else raise
    ValueError naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer{_range_text(low, high)}, got {value!r}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{name} must be an integer{_range_text(low, high)}, got {v}")
    return v


def _range_text(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f" in {low}..{high}"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


def check_bits(bits, name: str = "bits") -> int:
    """A code width: an integer in 1..8."""
    return check_int(bits, name, 1, 8)


def check_group_size(group_size, name: str = "group_size") -> int | None:
    """A linear grouping: None (one group per tensor), -1 (one per row) or G > 0 columns."""
    if group_size is None:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) \
            or not (int(group_size) == -1 or int(group_size) > 0):
        raise ValueError(f"{name} must be None, -1 or a positive integer, got {group_size!r}")
    return int(group_size)


def group_layout(group_size: int | None, rows: int, cols: int) -> tuple[int, int, int]:
    """(parameter rows, groups per row, columns per group) of a validated ``group_size``.

    The scales and zero-points of a linear encoding have shape (parameter rows, groups per
    row); group g of a row covers columns [g*G, min((g+1)*G, cols)) with G the columns per
    group. Per tensor (None) is one (1, 1) group over all rows*cols weights; per row (-1)
    is one group of ``cols`` columns; a group wider than the row is one group per row.
    """
    if group_size is None:
        return 1, 1, max(rows * cols, 1)
    if group_size == -1:
        return rows, 1, max(cols, 1)
    width = min(group_size, cols) if cols else group_size
    return rows, max(1, -(-cols // width)), width


def column_group(group_size: int | None) -> int | None:
    """Columns per group when a row is cut into groups (G), None when it is not (per
    tensor or per row): what decides the int8 activation blocks of the matmul kernels."""
    return None if group_size is None or group_size == -1 else int(group_size)


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The (rows, cols) view qpack quantizes: (shape[0], prod(rest)); 1-D as (1, n); 0-D (1, 1)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))


def as_matrix(arr: np.ndarray) -> np.ndarray:
    """``arr`` reshaped to its ``matrix_shape`` (a view when the layout allows)."""
    return arr.reshape(matrix_shape(arr.shape))
