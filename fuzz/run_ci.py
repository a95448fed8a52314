"""CI smoke run of every fuzz harness: a fixed number of executions from the seed corpus.

Usage: ``python fuzz/run_ci.py [RUNS]`` (default 2000 executions per harness). Exits non-zero
on any finding (crash, timeout, memory limit), keeping the crash input in a temp folder it
names, and when a harness starts with almost no coverage (qpack not instrumented). The
committed corpus is never written: libFuzzer adds new inputs to the first corpus folder,
so each harness gets an empty temp folder first and the seeds second.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESSES = ("qpk", "huffman", "sparse")
RUNS = 2000
MIN_COVERAGE = 20  # edges at startup; each harness sees 60-600 when qpack is instrumented
FLAGS = ("-seed=1",  # the same mutations every run: a CI failure reproduces
         "-timeout=30",  # seconds for one input; tiny inputs decode in milliseconds
         "-rss_limit_mb=3072",  # above the harnesses' own 2 GiB address-space cap
         "-max_total_time=120",  # a backstop: a slow machine stops early, it does not hang
         "-print_final_stats=1")


def main() -> int:
    """Run each harness in turn; return 0 when every one ran clean and instrumented."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("run_ci.py: atheris is not installed; install it with `pip install atheris`",
              file=sys.stderr)
        return 2
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else RUNS
    tmp = tempfile.mkdtemp(prefix="qpack-fuzz-ci-")
    env = dict(os.environ, TMPDIR=tmp)  # the harnesses' scratch files land here too
    env.pop("QPACK_FUZZ_KEEP_GOING", None)  # it would record findings instead of failing
    failed = []
    for name in HARNESSES:
        work = os.path.join(tmp, name)
        os.mkdir(work)
        cmd = [sys.executable, os.path.join(HERE, f"fuzz_{name}.py"), work,
               os.path.join(HERE, "corpus", name), f"-runs={runs}",
               f"-artifact_prefix={os.path.join(tmp, name)}-", *FLAGS]
        start = time.monotonic()
        proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace")
        sys.stdout.write(proc.stdout)
        print(f"fuzz_{name}: exit {proc.returncode} after {time.monotonic() - start:.1f} s",
              flush=True)
        # A harness that sees almost no coverage is not fuzzing qpack (instrumentation lost,
        # e.g. modules imported outside atheris' hook): fail rather than pass vacuously.
        cov = re.search(r"INITED cov: (\d+)", proc.stdout)
        if proc.returncode:
            failed.append(f"fuzz_{name}: a finding (exit {proc.returncode})")
        elif not cov or int(cov.group(1)) < MIN_COVERAGE:
            failed.append(f"fuzz_{name}: coverage {cov and cov.group(1)} < {MIN_COVERAGE}, "
                          "qpack is not instrumented")
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
        print(f"crash inputs are kept in {tmp} (replay: python fuzz/fuzz_<name>.py FILE)",
              file=sys.stderr)
        return 1
    shutil.rmtree(tmp)
    print(f"fuzz: {len(HARNESSES)} harnesses x {runs} runs, no finding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
