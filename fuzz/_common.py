"""Helpers shared by the fuzz harnesses: memory cap, instrumented import of qpack, launch
(optionally going on past findings), and the "expected rejection" wrapper.

Not a harness. Each harness runs as a script from this folder (``python fuzz/fuzz_qpk.py``),
which puts ``fuzz/`` first on ``sys.path``, so this module imports as ``_common``.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import sys
import traceback

# Address-space cap of a harness process. qpack promises that a hostile input fails with
# FormatError quickly and without a large allocation, so reaching this cap (a MemoryError,
# which the harnesses never catch) is a finding, not noise.
MEMORY_LIMIT = 2 << 30


def limit_memory(nbytes: int = MEMORY_LIMIT) -> None:
    """Cap this process's address space at ``nbytes`` (keeping any lower hard limit)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        nbytes = min(nbytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (nbytes, hard))


def _stop_compare_leak(atheris) -> None:
    """Route comparisons involving numpy arrays around ``atheris._trace_cmp``.

    atheris 3.0.0's native compare hook keeps a reference to every result it returns, so
    each instrumented ``array < x`` in qpack leaks the result array (64 KB for a 65536-entry
    histogram): RSS climbs ~3 KB per run and a long run ends in false MemoryErrors.
    Instrumented code looks the hook up on the module at each call, so replacing it works
    (once atheris.Fuzz() has installed its own). Array comparisons give libFuzzer no useful
    feedback anyway.
    """
    import dis
    import operator

    import numpy as np
    from atheris.version_dependent import CMP_OP_SHIFT_AMOUNT

    native = atheris._trace_cmp
    if getattr(native, "_qpack_wrapped", False):
        return
    ops = {"<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
           ">": operator.gt, ">=": operator.ge}

    def trace_cmp(obj1, obj2, opid, counter, is_const):
        if isinstance(obj1, np.ndarray) or isinstance(obj2, np.ndarray):
            return ops[dis.cmp_op[opid >> CMP_OP_SHIFT_AMOUNT]](obj1, obj2)
        return native(obj1, obj2, opid, counter, is_const)

    trace_cmp._qpack_wrapped = True
    atheris._trace_cmp = trace_cmp


def import_qpack():
    """Import and return qpack with atheris coverage instrumentation on qpack's modules."""
    import atheris
    import numpy  # noqa: F401  (imported first so numpy itself stays uninstrumented)

    with atheris.instrument_imports(include=["qpack"]):
        import qpack

        for name in qpack.__all__:  # qpack may import lazily: load it all while instrumenting
            getattr(qpack, name)
    # One thread: inputs are tiny, the machine is shared, and results stay deterministic.
    qpack.set_num_threads(1)
    return qpack


def _signature(exc: BaseException) -> str:
    """Exception type and the innermost qpack (else fuzz, else any) frame, e.g.
    ``KeyError-tensor.py_212``: what tells one finding from another. A harness's own
    failed check is told apart by the start of its message instead."""
    if isinstance(exc, AssertionError):
        return "AssertionError-" + re.sub(r"\W+", "_", str(exc).split(":")[0])[:48]
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}qpack{os.sep}" in f.filename] \
        or [f for f in frames if f"{os.sep}fuzz{os.sep}" in f.filename] or frames
    where = f"{os.path.basename(ours[-1].filename)}_{ours[-1].lineno}" if ours else "unknown"
    return f"{type(exc).__name__}-{where}"


def keep_going(test_one_input, folder: str):
    """Wrap ``test_one_input`` to record, not raise, unexpected exceptions: the first input
    of each distinct signature goes to ``folder`` (plus a line in findings.txt)."""
    os.makedirs(folder, exist_ok=True)
    seen: set[str] = set()

    def wrapped(data: bytes) -> None:
        try:
            test_one_input(data)
        except Exception as exc:  # recording every finding is the point
            sig = _signature(exc)
            if sig not in seen:
                seen.add(sig)
                name = f"{sig}-{hashlib.sha1(data).hexdigest()[:12]}"
                with open(os.path.join(folder, name), "wb") as fh:
                    fh.write(data)
                with open(os.path.join(folder, "findings.txt"), "a") as fh:
                    fh.write(f"{name}: {type(exc).__name__}: {str(exc)[:300]!r}\n")
                print(f"FINDING {name}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)

    return wrapped


def fuzz(test_one_input) -> None:
    """Cap memory, hand ``sys.argv`` (corpus dirs, crash files, libFuzzer flags) to atheris
    and fuzz ``test_one_input``; does not return.

    With QPACK_FUZZ_KEEP_GOING=FOLDER set, findings are recorded there and fuzzing goes on
    (libFuzzer's -fork/-ignore_crashes do not work with atheris); see README.md.
    """
    import atheris

    limit_memory()
    folder = os.environ.get("QPACK_FUZZ_KEEP_GOING")
    target = keep_going(test_one_input, folder) if folder else test_one_input

    def run(data: bytes) -> None:
        # atheris.Fuzz() installs its native hooks when it starts, so wrap from in here.
        if not getattr(atheris._trace_cmp, "_qpack_wrapped", False):
            _stop_compare_leak(atheris)
        target(data)

    atheris.Setup(sys.argv, run)
    atheris.Fuzz()


def attempt(expected: tuple[type[BaseException], ...], fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, or None if it raised one of ``expected`` (a clean rejection).

    Any other exception propagates, so atheris reports it. None of the fuzzed calls
    returns None on success.
    """
    try:
        return fn(*args, **kwargs)
    except expected:
        return None

