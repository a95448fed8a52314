"""Magnitude pruning: keep-masks that remove the smallest weights.

Three flavours: one tensor (``prune_magnitude``), one threshold across many tensors
(``prune_global``), and N:M structured sparsity (``prune_n_m``) for hardware that skips
m - n of every m consecutive inputs. Every function returns boolean keep-masks (True =
kept) and never modifies the weights; apply a mask with ``w * mask``.

Counting rule: ``sparsity`` s of n elements removes exactly round(s * n) of them (halves
rounded up). Ties at the threshold magnitude are broken by position: among equal
magnitudes the earliest elements (C order; for prune_global, earlier tensors in the
dict's order first) are removed first, so the result is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qpack.quantize import check_weights


def _check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.number)) \
            or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _count_removed(sparsity: float, n: int) -> int:
    # floor(x + 0.5) rather than Python's round(): halves go up, not to the even neighbour.
    return min(n, int(np.floor(sparsity * n + 0.5)))


def _keep_largest(mag: np.ndarray, n_remove: int) -> np.ndarray:
    """1-D keep-mask removing the ``n_remove`` smallest of ``mag`` (earliest first on ties)."""
    keep = np.ones(mag.size, dtype=bool)
    if n_remove == 0:
        return keep
    thresh = np.partition(mag, n_remove - 1)[n_remove - 1]
    below = mag < thresh
    keep[below] = False
    need = n_remove - int(np.count_nonzero(below))
    keep[np.flatnonzero(mag == thresh)[:need]] = False
    return keep


def _magnitude(arr: np.ndarray) -> np.ndarray:
    # float16 magnitudes compare exactly as float32, and a float32 copy sorts faster.
    return np.abs(arr.reshape(-1)).astype(np.float32 if arr.dtype == np.float16 else arr.dtype,
                                          copy=False)


def prune_magnitude(w, sparsity: float) -> np.ndarray:
    """Keep-mask removing the ``sparsity`` fraction of ``w`` with the smallest |w|.

    Parameters
    ----------
    w : float array_like, any shape, finite, not empty.
    sparsity : fraction in [0, 1) to remove; exactly round(sparsity * w.size) elements are
        removed (halves rounded up), ties broken by position (earliest removed first).

    Returns bool ndarray of w's shape, True where the weight is kept.
    Raises ValueError naming ``w`` or ``sparsity``.
    """
    arr = check_weights(w)
    s = _check_sparsity(sparsity)
    keep = _keep_largest(_magnitude(arr), _count_removed(s, arr.size))
    return keep.reshape(arr.shape)


def prune_global(tensors: Mapping, sparsity: float) -> dict:
    """Keep-masks from one magnitude threshold shared by every tensor.

    Layers whose weights are small overall lose more than others, as in Deep Compression's
    global pruning. Exactly round(sparsity * total size) weights are removed in total.

    Parameters
    ----------
    tensors : mapping name -> float array_like (non-empty, finite).
    sparsity : fraction in [0, 1) of all weights to remove.

    Returns dict name -> bool keep-mask of that tensor's shape, in the mapping's order.
    Raises ValueError naming the bad argument (``tensors['name']`` for a bad tensor).
    """
    if not isinstance(tensors, Mapping):
        raise ValueError(f"tensors must be a mapping of name -> array, got "
                         f"{type(tensors).__name__}")
    if not tensors:
        raise ValueError("tensors must not be empty")
    s = _check_sparsity(sparsity)
    arrays = {name: check_weights(t, f"tensors[{name!r}]") for name, t in tensors.items()}
    wide = np.float64 if any(a.dtype == np.float64 for a in arrays.values()) else np.float32
    mags = np.concatenate([np.abs(a.reshape(-1)).astype(wide, copy=False)
                           for a in arrays.values()])
    keep = _keep_largest(mags, _count_removed(s, mags.size))
    out, start = {}, 0
    for name, a in arrays.items():
        out[name] = keep[start:start + a.size].reshape(a.shape)
        start += a.size
    return out


def prune_n_m(w, n: int = 2, m: int = 4) -> np.ndarray:
    """N:M structured keep-mask: the n largest |w| of every m consecutive inputs are kept.

    Groups run along the last dimension (the input dimension of an (out, in) matrix), which
    must be a multiple of m. Ties are broken by position (the earlier element is kept).

    Parameters
    ----------
    w : float array_like with at least one dimension, last dimension divisible by m.
    n, m : integers with 1 <= n <= m (2:4 is what sparse tensor cores accelerate).

    Returns bool ndarray of w's shape with exactly n True in each group of m.
    Raises ValueError naming ``w``, ``n`` or ``m``.
    """
    arr = check_weights(w)
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    n, m = int(n), int(m)
    if n > m:
        raise ValueError(f"n must be <= m, got n={n}, m={m}")
    if arr.shape[-1] % m:
        raise ValueError(f"the last dimension of w ({arr.shape[-1]}) must be a multiple of "
                         f"m={m}")
    mag = _magnitude(arr).reshape(-1, m)
    if n == m:
        return np.ones(arr.shape, dtype=bool)
    # Rank of each element inside its group: larger magnitudes first, earlier on ties.
    order = np.argsort(-mag, axis=1, kind="stable")[:, :n]
    keep = np.zeros(mag.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    return keep.reshape(arr.shape)
