"""The ``qpack`` command line."""

from __future__ import annotations

import argparse
import sys

from qpack._version import __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``qpack`` command."""
    parser = argparse.ArgumentParser(prog="qpack", description=__doc__)
    parser.add_argument("--version", action="version", version=f"qpack {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qpack`` console script; returns the process exit code."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
