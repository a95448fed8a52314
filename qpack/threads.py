"""The one place that decides how many threads a kernel call uses.

Defaults follow ``omp_get_max_threads()`` at call time, so ``OMP_NUM_THREADS`` and
threadpoolctl's limits (which call ``omp_set_num_threads``) apply whenever they are set.
``set_num_threads(n)`` asks for n threads, still capped by that OpenMP limit. Code that
runs several kernel calls at once (the encode workers of ``compress``) declares its
share with ``share_cores(workers)``: each of its threads then gets ``allowed // workers``
(at least 1), so workers x threads never exceed the allowed cores.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_requested: int | None = None
_local = threading.local()


def _omp_limit() -> int:
    from qpack._kernels import matmul as _k  # late: `qpack --version` must not load numpy

    return max(1, int(_k.omp_max_threads()))


def set_num_threads(n: int | None) -> None:
    """Ask the kernels to use ``n`` threads (capped by the OpenMP limit in force at each
    call); ``None`` goes back to the default, the OpenMP limit itself.

    Raises ValueError if ``n`` is not a positive integer or None.
    """
    global _requested
    if n is None:
        _requested = None
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads must be a positive integer or None, got {n!r}")
    _requested = n


def threads_requested() -> int | None:
    """What set_num_threads last asked for (None: the default)."""
    return _requested


def get_num_threads() -> int:
    """Threads a kernel call started now on this thread may use (at least 1).

    min(set_num_threads value, omp_get_max_threads()), divided among the workers when
    this thread is one of ``share_cores``' workers.
    """
    limit = _omp_limit()
    n = limit if _requested is None else min(_requested, limit)
    workers = getattr(_local, "workers", 1)
    return max(1, n // workers)


@contextmanager
def share_cores(workers: int) -> Iterator[None]:
    """Within this block, kernel calls on the current thread take 1/``workers`` of the
    allowed threads (use in each of ``workers`` threads running kernels at once)."""
    previous = getattr(_local, "workers", 1)
    _local.workers = max(1, int(workers))
    try:
        yield
    finally:
        _local.workers = previous
