"""Which instruction-set variant of the kernels runs, and what the build holds.

Every vector kernel is compiled into every build for its own instruction set (function
target attributes, qpack/_kernels/include/qk_isa.h); at import the best variant the CPU
supports is chosen. ``QPACK_ISA=ref|avx2|avx512|neon`` in the environment forces one (for tests
and benchmarks; a variant the CPU lacks raises when the kernels are imported rather than
crash later: qpack/_kernels/__init__.py), and ``set_isa`` switches at run time.
``kernel_info()`` reports the choice.
"""

from __future__ import annotations

import os

from qpack._kernels import bitpack as _bitpack
from qpack._kernels import matmul as _matmul

ISA_NAMES = tuple(_matmul.ISA_NAMES)  # ("ref", "avx2", "avx512", "neon")
_MODULES = (_matmul, _bitpack)


def available_isas() -> list[str]:
    """The variants this CPU can run, weakest first (always starts with "ref"; then
    avx2/avx512 on x86-64, or neon on AArch64)."""
    return [name for i, name in enumerate(ISA_NAMES) if _matmul.isa_supported(i)]


def set_isa(name: str | None) -> str:
    """Run the kernels of variant ``name`` ("ref", "avx2", "avx512", "neon") from now on; None
    picks the best this CPU supports. Returns the name in force.

    Raises ValueError for an unknown name or one this CPU cannot run.
    """
    if name is None:
        level = ISA_NAMES.index(available_isas()[-1])
    else:
        if name not in ISA_NAMES:
            raise ValueError(f"unknown kernel variant {name!r}; choose from {list(ISA_NAMES)}")
        level = ISA_NAMES.index(name)
        if not _matmul.isa_supported(level):
            raise ValueError(f"this CPU cannot run the {name!r} kernels; it can run "
                             f"{available_isas()}")
    for mod in _MODULES:
        mod.set_isa(level)
    return ISA_NAMES[level]


def get_isa() -> str:
    """The name of the variant the kernels run."""
    return ISA_NAMES[_matmul.get_isa()]


def kernel_info() -> dict:
    """What the kernels run on: {"isa": chosen variant, "available": variants this CPU
    supports, "forced": QPACK_ISA or None, "compile_flags": the build's flags,
    "openmp": whether the build has OpenMP, "threads": qpack.get_num_threads() now}."""
    from qpack.threads import get_num_threads

    flags = _matmul.build_flags()
    return {"isa": get_isa(), "available": available_isas(),
            "forced": os.environ.get("QPACK_ISA") or None, "compile_flags": flags,
            "openmp": "-fopenmp" in flags.split(), "threads": get_num_threads()}
