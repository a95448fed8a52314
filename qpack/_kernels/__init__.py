"""Compiled Cython kernels. Import them through the validating wrappers in ``qpack``."""

import os as _os

# Kernel variants (qpack/_kernels/include/qk_isa.h levels): the x86-64 ones weakest first,
# then NEON (AArch64). A CPU supports "ref" and either some x86 levels or "neon".
ISA_NAMES = ("ref", "avx2", "avx512", "neon")


def initial_isa(best: int, supported) -> int:
    """The variant a kernel module starts on: QPACK_ISA's when set, else ``best``.

    ``supported(level)`` tells whether this CPU runs a level. Raises ValueError for an
    unknown name or a variant the CPU lacks (at import, rather than a crash later).
    """
    forced = _os.environ.get("QPACK_ISA", "").strip()
    if not forced:
        return best
    if forced not in ISA_NAMES:
        raise ValueError(f"QPACK_ISA={forced!r}: choose from {list(ISA_NAMES)}")
    level = ISA_NAMES.index(forced)
    if not supported(level):
        raise ValueError(f"QPACK_ISA={forced!r}: this CPU cannot run these kernels")
    return level

