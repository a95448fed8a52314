"""Kernel variant selection (QPACK_ISA, qpack.kernel_info), the kernel objects' own
checks, and the thread helper (OpenMP limit at call time, cores shared by workers)."""

import os
import platform
import subprocess
import sys
import threading

import numpy as np
import pytest

import qpack
import qpack.isa
from qpack._kernels import matmul as _k
from qpack.matmul import CodebookWeights, LinearWeights, SparseWeights
from qpack.threads import get_num_threads, share_cores


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, timeout=120)


def test_qpack_isa_forces_a_variant():
    out = _run("import qpack; print(qpack.kernel_info()['isa'])", QPACK_ISA="ref")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ref"


def test_qpack_isa_rejects_unknown_names():
    out = _run("import qpack; qpack.pack([1, 0], 1)", QPACK_ISA="sse9")
    assert out.returncode != 0
    assert "QPACK_ISA='sse9'" in out.stderr


def test_qpack_isa_rejects_variants_this_cpu_lacks():
    """Every known name the CPU cannot run (neon on x86-64, avx2/avx512 on AArch64, and
    whatever this x86 lacks) fails at import with the same clear message."""
    missing = [n for n in qpack.isa.ISA_NAMES if n not in qpack.isa.available_isas()]
    assert missing, "some variant is always foreign to this CPU"
    if platform.machine() in ("x86_64", "AMD64"):
        assert "neon" in missing
    for name in missing:
        out = _run("import qpack; qpack.pack([1, 0], 1)", QPACK_ISA=name)
        assert out.returncode != 0
        assert f"QPACK_ISA={name!r}: this CPU cannot run these kernels" in out.stderr
        with pytest.raises(ValueError, match="cannot run"):
            qpack.isa.set_isa(name)


def test_set_isa_none_picks_the_best_available():
    before = qpack.isa.get_isa()
    try:
        assert qpack.isa.set_isa(None) == qpack.isa.available_isas()[-1]
    finally:
        qpack.isa.set_isa(before)


def test_kernel_info_reports_the_build():
    info = qpack.kernel_info()
    assert info["isa"] in info["available"] and info["available"][0] == "ref"
    assert "-O3" in info["compile_flags"]
    assert info["threads"] == get_num_threads()


def test_set_isa_switches_bitpack_too():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 8, size=(3, 1000), dtype=np.uint8)
    before = qpack.isa.get_isa()
    try:
        for name in qpack.isa.available_isas():
            qpack.isa.set_isa(name)
            packed = qpack.pack(codes, 3)
            np.testing.assert_array_equal(qpack.unpack(packed, 3, 1000), codes)
    finally:
        qpack.isa.set_isa(before)


def test_weights_cannot_be_built_half_initialized():
    with pytest.raises(TypeError, match="from_packed"):
        LinearWeights()
    with pytest.raises(TypeError, match="from_packed"):
        CodebookWeights()
    with pytest.raises(TypeError, match="from_csr"):
        SparseWeights()


def test_dense_kernel_checks_its_arrays():
    packed = np.zeros((4, 16), dtype=np.uint8)   # 4 rows of 32 4-bit codes
    s = np.ones((4, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="does not hold"):
        _k.DenseKernel(packed, 4, 0, 33, s, s, 1, 33, None, 0, None, None)
    with pytest.raises(ValueError, match="groups"):
        _k.DenseKernel(packed, 4, 0, 32, s, s, 1, 8, None, 0, None, None)
    cb = np.zeros((1, 8), dtype=np.float32)       # shorter than the 16 the kernels read
    with pytest.raises(ValueError, match="entries"):
        _k.DenseKernel(packed, 4, 1, 32, None, None, 0, 1, cb, 0,
                       np.zeros((1, 8), np.uint8), np.ones(1, np.float32))
    k = _k.DenseKernel(packed, 4, 0, 32, s, s, 1, 32, None, 0, None, None)
    with pytest.raises(ValueError, match="columns"):
        k.matmul_float(np.zeros((1, 31), np.float32), np.zeros((1, 4), np.float32), 1)
    with pytest.raises(ValueError, match="shape"):
        k.matmul_float(np.zeros((2, 32), np.float32), np.zeros((1, 4), np.float32), 1)
    grouped = _k.DenseKernel(np.zeros((4, 32), np.uint8), 4, 0, 64, np.ones((4, 2), np.float32),
                             np.ones((4, 2), np.float32), 2, 32, None, 0, None, None)
    with pytest.raises(ValueError, match="block"):   # x blocks across weight groups
        grouped.matmul_int8(np.zeros((1, 64), np.float32), np.zeros((1, 4), np.float32), 64,
                            0.0, 1)
    with pytest.raises(ValueError, match="out of range"):
        k.gather_rows(np.array([4], np.int64), np.zeros((1, 32), np.float32), 1)


def test_sparse_kernel_checks_its_arrays():
    s = np.ones((1, 1), dtype=np.float32)
    ok = (np.array([0, 1, 2], np.int64), np.array([0, 3], np.int32), np.zeros(2, np.uint8))
    _k.SparseKernel(*ok, 4, 0, s, s, 0, 4, None, 0)
    for rp, cols in ((np.array([0, 2, 1], np.int64), ok[1]),   # decreasing
                     (np.array([0, 1, 3], np.int64), ok[1]),   # past the arrays
                     (ok[0], np.array([0, 4], np.int32))):     # column out of range
        with pytest.raises(ValueError, match="out of range"):
            _k.SparseKernel(rp, cols, ok[2], 4, 0, s, s, 0, 4, None, 0)
    cb = np.zeros((1, 16), np.float32)
    with pytest.raises(ValueError, match="out of range"):  # code beyond the table
        _k.SparseKernel(ok[0], ok[1], np.array([0, 16], np.uint8), 4, 1, None, None, 0, 1,
                        cb, 0)


def test_threads_follow_the_openmp_limit_at_call_time():
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl not installed")
    qpack.set_num_threads(None)
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert get_num_threads() == 1
        qpack.set_num_threads(8)   # asked for more: the limit still wins
        assert get_num_threads() == 1
    qpack.set_num_threads(None)
    assert get_num_threads() == _k.omp_max_threads()


def test_share_cores_divides_threads_per_worker():
    total = get_num_threads()
    seen = []

    def worker():
        with share_cores(2):
            seen.append(get_num_threads())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [max(1, total // 2)]
    assert get_num_threads() == total   # only the worker's thread was limited
    with pytest.raises(ValueError):
        qpack.set_num_threads(0)


@pytest.mark.parametrize("block", [32, 64, 128])
def test_codebook_int8_blocks_agree_across_variants(block):
    """A codebook kernel called with x blocks other than qpack.matmul's 128 gives the same
    product on every variant (the any-width kernel must not take blocks it cannot scale)."""
    rng = np.random.default_rng(block)
    codes = rng.integers(0, 32, size=(8, 320), dtype=np.uint8)
    w = CodebookWeights.from_packed(qpack.pack(codes, 5), 5,
                                    rng.standard_normal(32).astype(np.float32), (8, 320))
    x = rng.standard_normal((3, 320)).astype(np.float32)
    before = qpack.isa.get_isa()
    results = {}
    try:
        for name in qpack.isa.available_isas():
            qpack.isa.set_isa(name)
            y = np.empty((3, 8), np.float32)
            w._kernel.matmul_int8(x, y, block, 0.0, 1)
            results[name] = y
    finally:
        qpack.isa.set_isa(before)
    for y in results.values():
        np.testing.assert_allclose(y, results["ref"], rtol=1e-4, atol=1e-4)
