"""The kernel headers tested from C (tests/c/test_kernels.c), without Python in between.

Each leg compiles the test with -Wall -Wextra -Werror (so a warning in a header fails it)
and runs it; the program compares every variant the CPU supports (pack/unpack, dense float
and int8 rows) against plain reference code and prints "ALL OK". Legs:

- x86-64 (or whatever the host is) with -march=native, and with the portable flags of
  setup.py (QPACK_PORTABLE=1: no -march); the first with -fopenmp as well;
- aarch64, when aarch64-linux-gnu-gcc and qemu-aarch64 are installed: -march=armv8.2-a
  +dotprod run on qemu's "max" CPU (NEON with sdot: also the int8 GEMM), and -march=armv8-a
  run as a Cortex-A53 (no dotprod: the vmull/vpadal fallback, and no sdot instruction may
  run).

Compiling the headers takes most of a minute per leg on a loaded 2-core machine, so each
binary is kept in the pytest cache under a key made of the compiler's version, the flags
and the bytes of every source; any change to them compiles afresh.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "c" / "test_kernels.c"
INCLUDE = ROOT / "qpack" / "_kernels" / "include"
WARN = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
# setup.py's flags without -march=native (QPACK_PORTABLE=1)
PORTABLE = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
QEMU_SYSROOT = "/usr/aarch64-linux-gnu"

HOST_LEGS = {
    "native": ["-march=native", "-fopenmp"],
    "portable": PORTABLE,
}
# name: (flags, qemu -cpu, whether the C program must report dotprod)
ARM_LEGS = {
    "aarch64-dotprod": (["-march=armv8.2-a+dotprod"], "max", True),
    "aarch64-armv8": (["-march=armv8-a"], "cortex-a53", False),
}


def _build(cc: str, flags: list[str], cache_dir: Path) -> Path:
    """Compile the test with ``cc`` and ``flags`` (cached by content); fail on any warning."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256()
    key.update(version.encode())
    key.update("\0".join([cc] + WARN + flags).encode())
    for path in [SOURCE] + sorted(INCLUDE.glob("*.h")):
        key.update(path.name.encode())
        key.update(path.read_bytes())
    exe = cache_dir / f"test_kernels-{key.hexdigest()[:20]}"
    if exe.exists():
        return exe
    tmp = exe.with_suffix(f".tmp{os.getpid()}")
    cmd = [cc] + WARN + flags + [f"-I{INCLUDE}", str(SOURCE), "-o", str(tmp), "-lm"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout}{out.stderr}"
    tmp.replace(exe)
    return exe


def _check_output(out: subprocess.CompletedProcess) -> str:
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "ALL OK" in out.stdout, text
    return out.stdout


@pytest.fixture(scope="module")
def cache_dir(request, tmp_path_factory) -> Path:
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    if cache is None:
        return tmp_path_factory.mktemp("qpack-c-kernels")
    return Path(cache.mkdir("qpack-c-kernels"))


@pytest.mark.parametrize("leg", sorted(HOST_LEGS))
def test_headers_on_this_cpu(leg, cache_dir):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: the C-level kernel test needs it")
    exe = _build(gcc, HOST_LEGS[leg], cache_dir)
    stdout = _check_output(subprocess.run([str(exe)], capture_output=True, text=True,
                                          timeout=300))
    # the C program and the extension agree on which variants this CPU runs
    import qpack.isa

    tested = [line.split()[1].rstrip(":") for line in stdout.splitlines()
              if line.startswith("variant ") and ": tested" in line]
    assert tested == qpack.isa.available_isas(), stdout


@pytest.mark.parametrize("leg", sorted(ARM_LEGS))
def test_headers_on_aarch64_under_qemu(leg, cache_dir):
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if cc is None or qemu is None:
        pytest.skip("aarch64-linux-gnu-gcc or qemu-aarch64 not found (apt-get install "
                    "gcc-aarch64-linux-gnu qemu-user): NEON C test not run")
    if not os.path.isdir(QEMU_SYSROOT):
        pytest.skip(f"{QEMU_SYSROOT} (the aarch64 C library for qemu) not found")
    flags, cpu, dotprod = ARM_LEGS[leg]
    exe = _build(cc, flags, cache_dir)
    stdout = _check_output(subprocess.run([qemu, "-L", QEMU_SYSROOT, "-cpu", cpu, str(exe)],
                                          capture_output=True, text=True, timeout=600))
    assert "variant neon: tested (ok)" in stdout, stdout
    assert f"neon dotprod: {'yes' if dotprod else 'no'}" in stdout, stdout
    neon_line = stdout.split("variant neon:")[1].splitlines()[0]
    assert "neon=" in neon_line, stdout
    # the int8 GEMM runs exactly when the CPU has sdot
    assert ("neon-gemm=" in neon_line) == dotprod, stdout
