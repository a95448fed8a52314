"""Undo a fixed glibc malloc trim threshold in a worker process, once.

The Dask nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``
(``distributed.nanny.pre-spawn-environ``) so that freed memory goes back to the OS.
Setting any malloc threshold turns off glibc's *dynamic* mmap threshold, which would
otherwise rise to the size of the temporaries an encoding frees (up to 32 MiB). With it
fixed at 128 KiB every block-sized numpy temporary becomes a fresh mmap that is zeroed
page by page and unmapped again: measured on the 2-core EPYC, a 2-worker LocalCluster
encoding linear 4-bit g64 ran at 17-19 M weights/s against 31-34 with the limits below
(and 21-31 for a plain 2-process pool) - see docs/benchmarks/scale.md.

``restore_dynamic_limits`` sets the mmap threshold to glibc's own dynamic maximum
(32 MiB on 64-bit) and the trim threshold to twice that, as the dynamic rule would. It
does so only on glibc, and only when ``MALLOC_TRIM_THRESHOLD_`` is set in the
environment: a process whose allocator nobody tuned is left alone. Allocations larger
than 32 MiB (whole tensors) are still mapped and returned to the OS when freed.
"""

from __future__ import annotations

import ctypes
import os
import threading

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD

_lock = threading.Lock()
_done = False


def _is_glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (AttributeError, ValueError, OSError):
        return False


def restore_dynamic_limits() -> bool:
    """Raise glibc's fixed malloc thresholds to the dynamic rule's limits, once per
    process, when ``MALLOC_TRIM_THRESHOLD_`` is set; True if they were set now.

    Never raises: on another C library, or if mallopt is missing, nothing changes.
    """
    global _done
    with _lock:
        if _done:
            return False
        _done = True
        if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not _is_glibc():
            return False
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        # mallopt returns 1 on success
        return (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
