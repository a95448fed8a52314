"""Thread count used by the OpenMP kernels.

The kernels take an explicit ``num_threads`` argument; this module holds the process-wide
default. It starts from ``OMP_NUM_THREADS`` when that is set, else the number of CPUs.
"""

from __future__ import annotations

import os

_num_threads: int | None = None


def _default_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n: int | None) -> None:
    """Set how many threads the kernels use; ``None`` re-reads the default.

    Raises ValueError if ``n`` is not a positive integer or None.
    """
    global _num_threads
    if n is None:
        _num_threads = None
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads must be a positive integer or None, got {n!r}")
    _num_threads = n


def get_num_threads() -> int:
    """Return the thread count the kernels will use (at least 1).

    The default is read once (from OMP_NUM_THREADS or the CPU affinity) and cached: the
    kernels ask on every call, and the affinity query costs microseconds.
    """
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_threads()
    return _num_threads
