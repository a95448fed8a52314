"""Run every benchmark in this folder (``bench_*.py``) and write results.

Usage: python benchmarks/run_all.py [--quick] [--only NAME ...]

Quick mode uses small sizes so CI can check that the benchmarks still run; full mode
produces the figures quoted in docs/ and the README. Results: JSON in benchmarks/results/,
markdown in docs/benchmarks/.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def discover() -> list[str]:
    """Names of the benchmark modules, e.g. ['bench_bitpack', ...]."""
    return sorted(os.path.splitext(os.path.basename(p))[0]
                  for p in glob.glob(os.path.join(HERE, "bench_*.py")))


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; return 0 when all ran, 1 if any raised."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--only", nargs="*", default=None,
                        help="benchmark names (with or without the bench_ prefix)")
    args = parser.parse_args(argv)
    sys.path.insert(0, HERE)
    from harness import write_result

    names = discover()
    if args.only:
        wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in args.only}
        unknown = wanted - set(names)
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        names = [n for n in names if n in wanted]
    failed = []
    for name in names:
        print(f"== {name} {'(quick)' if args.quick else ''}", flush=True)
        t0 = time.perf_counter()
        try:
            result = importlib.import_module(name).run(quick=args.quick)
        except Exception as exc:  # report and keep going, fail at the end
            import traceback

            traceback.print_exc()
            failed.append(f"{name}: {exc!r}")
            continue
        print(write_result(name[len("bench_"):], result, args.quick))
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
    if failed:
        print("FAILED benchmarks:\n  " + "\n  ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
