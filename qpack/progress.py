"""Progress on stderr: a one-line counter (what ``compress(progress=True)`` shows), and
``progress_bar``, tqdm's bar when tqdm is installed (``deep_compression(progress=True)``)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``desc: done/total unit (elapsed s)``, redrawn in place at most 10 times a second.

    Use as a context manager; ``update()`` counts one item. On close the final line is
    drawn and ended with a newline.
    """

    def __init__(self, total: int, desc: str, unit: str, stream: TextIO | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._start = time.perf_counter()
        self._drawn = 0.0
        self._drawn_count = -1

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done."""
        self.done += n
        now = time.perf_counter()
        if now - self._drawn >= 0.1 or self.done >= self.total:
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._drawn, self._drawn_count = now, self.done
        self.stream.write(f"\r{self.desc}: {self.done}/{self.total} {self.unit} "
                          f"({now - self._start:.1f} s)")
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
