"""Progress on stderr: a one-line counter (what ``compress(progress=True)`` shows), and
``progress_bar``, tqdm's bar when tqdm is installed (``deep_compression(progress=True)``)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _size(n: float) -> str:
    """Bytes for people: 812 B, 3.4 MB, 6.71 GB (decimal units, as file managers show)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{int(n)} B"


class Progress:
    """``desc: done/total unit (elapsed s)``, redrawn in place at most 10 times a second.

    With ``total_bytes`` the line also counts bytes and estimates the time left from
    them (``compress: 12/291 tensors, 1.20 GB/6.71 GB, 10.1 s, ETA 46 s``), since
    tensors differ in size by orders of magnitude. Use as a context manager;
    ``update(n, nbytes)`` counts n more items of nbytes. On close the final line is drawn
    and ended with a newline.
    """

    def __init__(self, total: int, desc: str, unit: str, stream: TextIO | None = None,
                 total_bytes: int | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.total_bytes = total_bytes
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.done_bytes = 0
        self._start = time.perf_counter()
        self._drawn = 0.0
        self._drawn_count = -1

    def update(self, n: int = 1, nbytes: int = 0) -> None:
        """Count ``n`` more items done, holding ``nbytes`` bytes."""
        self.done += n
        self.done_bytes += nbytes
        now = time.perf_counter()
        if now - self._drawn >= 0.1 or self.done >= self.total:
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._drawn, self._drawn_count = now, self.done
        elapsed = now - self._start
        line = f"\r{self.desc}: {self.done}/{self.total} {self.unit}"
        if self.total_bytes:
            line += f", {_size(self.done_bytes)}/{_size(self.total_bytes)}, {elapsed:.1f} s"
            if 0 < self.done_bytes < self.total_bytes:
                left = elapsed * (self.total_bytes - self.done_bytes) / self.done_bytes
                line += f", ETA {left:.0f} s"
        else:
            line += f" ({elapsed:.1f} s)"
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        """Draw the final count (unless already shown) and end the line."""
        if self._drawn_count != self.done:
            self._draw(time.perf_counter())
        self.stream.write("\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int, desc: str, unit: str):
    """A tqdm bar on stderr when tqdm is installed (it comes with the ``torch`` extra),
    else a Progress counter; either has ``update(n=1)`` and ``close()``."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return Progress(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
