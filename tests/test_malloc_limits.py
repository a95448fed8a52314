"""qpack.malloc_limits: a worker started with MALLOC_TRIM_THRESHOLD_ (the Dask nanny)
gets glibc's dynamic limits back, so block-sized temporaries stop being fresh mmaps."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from qpack import malloc_limits

# Each case runs in a fresh interpreter: the limits are process-wide and set once.
PROBE = textwrap.dedent("""
    import ctypes, sys
    import numpy as np
    from qpack.malloc_limits import restore_dynamic_limits

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                    "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Mallinfo2

    def mapped_while_alive(nbytes):
        # mmapped blocks while a numpy array of nbytes is alive, minus before
        before = libc.mallinfo2().hblks
        a = np.empty(nbytes, np.uint8)
        during = libc.mallinfo2().hblks
        del a
        return during - before

    first = mapped_while_alive(4 << 20)
    now = restore_dynamic_limits()
    again = restore_dynamic_limits()
    print(first, int(now), int(again), mapped_while_alive(4 << 20),
          mapped_while_alive(64 << 20))
""")


def _probe(env_extra: dict) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=env, check=True)
    return [int(x) for x in out.stdout.split()]


needs_glibc = pytest.mark.skipif(not malloc_limits._is_glibc() or not sys.platform
                                 .startswith("linux"), reason="glibc malloc only")


@needs_glibc
def test_a_fixed_trim_threshold_is_undone_once():
    first, now, again, after, huge = _probe({"MALLOC_TRIM_THRESHOLD_": "65536"})
    assert first == 1  # the fixed 128 KiB mmap threshold maps a 4 MiB block
    assert (now, again) == (1, 0)  # set on the first call only
    assert after == 0  # served from the heap now
    assert huge == 1  # above 32 MiB blocks are still mapped (and returned when freed)


@needs_glibc
def test_an_untuned_process_is_left_alone():
    first, now, again, after, huge = _probe({})
    assert (now, again) == (0, 0)
    assert huge == 1
