"""Shared benchmark plumbing: timing by medians, optional peers, result files.

Every benchmark module ``benchmarks/bench_*.py`` defines ``run(quick: bool) -> dict`` that
returns ``{"title": str, "columns": [...], "rows": [[...], ...], "notes": [str, ...]}`` plus
any extra keys; ``run_all.py`` writes that to ``benchmarks/results/NAME.json`` and a
markdown table to ``docs/benchmarks/NAME.md``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "examples")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DOCS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                        "benchmarks")


def median_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def optional_peer(module: str, how: str | None = None):
    """Import and return a peer library, or print a skip line (with ``how`` to install
    it, by default the bench extra) and return None."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if how is None:
            how = ("pip install torch==2.13.0" if module == "torch"
                   else "pip install -e '.[bench]'")
        print(f"  [skip] peer '{module}' is not installed ({how})")
        return None


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only), or None with a printed skip
    line when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  [skip] plot: matplotlib is not installed (pip install -e '.[bench]')")
        return None
    return plt


def load_example(name: str):
    """examples/NAME.py imported as a module (the examples live outside the package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES_DIR,
                                                                     f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PeakRSS:
    """Peak resident memory of this process while the ``with`` block runs, in bytes.

    A thread samples /proc/self/statm every 20 ms (Linux); elsewhere ``peak`` is the
    process's lifetime maximum from getrusage, which can only overstate the block's peak.
    """

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = None

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        if os.path.exists("/proc/self/statm"):
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())
        else:
            import resource

            scale = 1 if platform.system() == "Darwin" else 1024  # bytes vs KiB
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def markdown_table(columns: list[str], rows: list[list]) -> str:
    """Render rows as a GitHub markdown table; floats get 3 significant decimals."""

    def fmt(v):
        if isinstance(v, float):
            if v == 0 or 0.01 <= abs(v) < 1e5:
                return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
            return f"{v:.3e}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info() -> dict:
    """A short description of where the figures were measured."""
    return {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def write_result(name: str, result: dict, quick: bool) -> str:
    """Write ``result`` as JSON and markdown; return the markdown text."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    os.makedirs(DOCS_DIR, exist_ok=True)
    payload = dict(result, name=name, quick=quick, machine=machine_info(),
                   date=time.strftime("%Y-%m-%d %H:%M:%S"))
    suffix = "_quick" if quick else ""
    with open(os.path.join(RESULTS_DIR, f"{name}{suffix}.json"), "w") as fh:
        json.dump(payload, fh, indent=1, default=str)
    md = [f"## {result.get('title', name)}", ""]
    if quick:
        md += ["*Quick mode: reduced sizes, indicative only.*", ""]
    md.append(markdown_table(result["columns"], result["rows"]))
    for extra in result.get("tables", []):
        md += ["", f"### {extra['title']}", "", markdown_table(extra["columns"], extra["rows"])]
    if result.get("notes"):
        md += [""] + [f"- {n}" for n in result["notes"]]
    text = "\n".join(md) + "\n"
    with open(os.path.join(DOCS_DIR, f"{name}{suffix}.md"), "w") as fh:
        fh.write(text)
    return text
