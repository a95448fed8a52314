"""qpack.dispatch: the kernel-or-tiles cost model, policies, per-call paths, calibration
cache and cache sizes."""

from __future__ import annotations

import json
import os
import stat
import threading

import numpy as np
import pytest

import qpack
import qpack.isa
from qpack import dispatch
from qpack.dispatch import DispatchPolicy, KernelCosts, Plan, use_policy
from qpack.matmul import CodebookWeights, LinearWeights, SparseWeights


def linear(rng, n_out, n_in, bits=4, group=128):
    codes = rng.integers(0, 1 << bits, (n_out, n_in), dtype=np.uint8)
    ng = 1 if group == -1 else -(-n_in // group)
    scales = (rng.random((n_out, ng)) * 0.1 + 0.01).astype(np.float32)
    zeros = rng.integers(0, 1 << bits, (n_out, ng), dtype=np.uint8)
    return LinearWeights.from_packed(qpack.pack(codes, bits), bits, scales, zeros, group,
                                     (n_out, n_in))


def sparse(rng, n_out, n_in, density):
    mask = rng.random((n_out, n_in)) < density
    row_ptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))])
    return SparseWeights.from_csr((n_out, n_in), row_ptr, np.nonzero(mask)[1],
                                  rng.integers(0, 16, int(mask.sum()), dtype=np.uint8),
                                  codebook=np.linspace(-1, 1, 16, dtype=np.float32))


def costs(kernel_per_mac, blas_per_mac=0.02, fill=0.1, blas_fixed=0.0, generic=1.0):
    """Synthetic rates: every vector path at kernel_per_mac, the generic loop at generic."""
    table = {"vector/float": (0.0, kernel_per_mac), "vector/int8": (0.0, kernel_per_mac),
             "generic/float": (0.0, generic), "generic/int8": (0.0, generic)}
    return KernelCosts(table, (blas_fixed, blas_per_mac), fill, (0.0, 0.1), fill, "test")


# ---- the cost model ----------------------------------------------------------------------

def test_kernel_as_fast_as_blas_never_tiles():
    w = linear(np.random.default_rng(0), 256, 1024)
    policy = DispatchPolicy(costs=costs(0.02), threads=1, min_macs_per_thread=1)
    for batch in (1, 4, 64, 4096, 1 << 20):
        assert policy.dense_plan(w, batch, False).path == "kernel"


def test_tiles_from_the_batch_where_they_pay():
    """kernel 0.05 ns/MAC, BLAS 0.02, fill 0.3 ns/weight on one thread: tiles pay from
    batch * 0.03 > 0.3, i.e. batch > 10."""
    if qpack.isa.get_isa() == "ref":
        pytest.skip("the reference variant runs every weight on the generic loop")
    w = linear(np.random.default_rng(0), 256, 1024)
    policy = DispatchPolicy(costs=costs(0.05, fill=0.3), threads=1, min_macs_per_thread=1)
    paths = {b: policy.dense_plan(w, b, False).path for b in (1, 4, 9, 10, 11, 12, 500)}
    assert paths == {1: "kernel", 4: "kernel", 9: "kernel", 10: "kernel", 11: "tiles",
                     12: "tiles", 500: "tiles"}
    # two threads divide both the kernel and BLAS, not the fill: the crossover doubles
    policy2 = DispatchPolicy(costs=costs(0.05, fill=0.3), threads=2, min_macs_per_thread=1)
    assert policy2.dense_plan(w, 20, False).path == "kernel"
    assert policy2.dense_plan(w, 21, False).path == "tiles"


def test_never_tiles_below_four_rows():
    w = linear(np.random.default_rng(0), 64, 256)
    policy = DispatchPolicy(costs=costs(10.0, fill=0.0), threads=1, min_macs_per_thread=1)
    assert [policy.dense_plan(w, b, True).path for b in (1, 2, 3, 4)] == \
        ["kernel", "kernel", "kernel", "tiles"]


def test_row_tails_cost_the_generic_rate():
    """Same rates, but 1000 columns: the tail past the last vector block runs on the
    generic loop, which makes the kernel dearer and tiles pay at a smaller batch."""
    if qpack.isa.get_isa() == "ref":
        pytest.skip("no vector path on the reference variant")
    rng = np.random.default_rng(1)
    aligned, ragged = linear(rng, 64, 1024, group=32), linear(rng, 64, 1000, group=-1)
    policy = DispatchPolicy(costs=costs(0.03, fill=0.5, generic=0.5), threads=1,
                            min_macs_per_thread=1)
    first = {}
    for name, w in (("aligned", aligned), ("ragged", ragged)):
        first[name] = next(b for b in range(1, 200) if policy.dense_plan(w, b, False).path
                           == "tiles")
    assert first["ragged"] < first["aligned"] == 51  # 0.5 / (0.03 - 0.02) = 50


def test_sparse_plan_weighs_density():
    rng = np.random.default_rng(2)
    rare, dense = sparse(rng, 128, 512, 0.05), sparse(rng, 128, 512, 0.9)
    # per kept weight 0.1 ns/MAC against BLAS 0.02 per weight: tiles pay only when more
    # than a fifth of the weights are kept (and the batch pays the fill)
    policy = DispatchPolicy(costs=costs(0.05, fill=0.1), threads=1, min_macs_per_thread=1)
    assert policy.sparse_plan(rare, 10_000).path == "kernel"
    assert policy.sparse_plan(dense, 2).path == "kernel"
    assert policy.sparse_plan(dense, 64).path == "tiles"


def test_threads_for_small_products():
    policy = DispatchPolicy(min_macs_per_thread=1000, threads=4)
    assert [policy.threads_for(m) for m in (0, 999, 1000, 2500, 10**9)] == [1, 1, 1, 2, 4]
    qpack.set_num_threads(1)
    try:
        assert DispatchPolicy(min_macs_per_thread=1).threads_for(10**9) == 1
    finally:
        qpack.set_num_threads(None)


def test_tile_rows_follow_tile_bytes():
    w = linear(np.random.default_rng(3), 100, 256)
    plan = DispatchPolicy("tiles", tile_bytes=4 * 256 * 7).dense_plan(w, 8, False)
    assert plan == Plan("tiles", plan.threads, 7)
    assert DispatchPolicy("tiles", tile_bytes=1).dense_plan(w, 8, False).tile_rows == 1
    assert DispatchPolicy("tiles", tile_bytes=1 << 30).dense_plan(w, 8, False).tile_rows == 100


# ---- explicit paths ----------------------------------------------------------------------

@pytest.mark.parametrize("make", ["linear", "codebook", "sparse"])
def test_explicit_paths_agree(make):
    rng = np.random.default_rng(4)
    if make == "linear":
        w = linear(rng, 70, 300, bits=5, group=32)
    elif make == "codebook":
        w = CodebookWeights.from_packed(qpack.pack(rng.integers(0, 64, (70, 300),
                                                                dtype=np.uint8), 6),
                                        6, rng.standard_normal(64).astype(np.float32),
                                        (70, 300))
    else:
        w = sparse(rng, 70, 300, 0.3)
    w_hat = w.dequantize().astype(np.float64)
    x = rng.standard_normal((9, 300)).astype(np.float32)
    want = x.astype(np.float64) @ w_hat.T
    tol = 1e-5 * (np.abs(x) @ np.abs(w_hat).T) + 1e-6
    for path in ("kernel", "tiles", "auto", None):
        assert (np.abs(w.matmul(x, path=path) - want) <= tol).all(), path
        with use_policy(DispatchPolicy(path or "auto", tile_bytes=4 * 300 * 3)):
            assert (np.abs(w.matmul(x) - want) <= tol).all(), path
    bound = w.int8_error_bound(x)
    for path in ("kernel", "tiles"):  # (the kernels may round codebooks to int8 too)
        assert (np.abs(w.matmul(x, "int8", path=path) - want) <= bound).all(), path


def test_bad_paths_and_policies_are_refused():
    w = linear(np.random.default_rng(5), 8, 128)
    x = np.ones((2, 128), np.float32)
    for bad in ("Kernel", "blas", 1, ""):
        with pytest.raises(ValueError, match="path"):
            w.matmul(x, path=bad)
        with pytest.raises(ValueError, match="path"):
            DispatchPolicy(bad)
    with pytest.raises(ValueError, match="path"):  # refused on an empty product too
        w.matmul(np.ones((0, 128), np.float32), path="fast")
    with pytest.raises(ValueError, match="path"):  # before x is looked at
        w.matmul("not an array", path="fast")
    for kw in ({"tile_bytes": 0}, {"tile_bytes": 1.5}, {"min_macs_per_thread": -1},
               {"threads": 0}, {"threads": True}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            DispatchPolicy(**kw)
    with pytest.raises(ValueError, match="costs"):
        DispatchPolicy(costs={"blas": (0, 1)})
    with pytest.raises(ValueError, match="DispatchPolicy"):
        dispatch.set_policy("kernel")
    with pytest.raises(ValueError, match="DispatchPolicy"):
        with use_policy(None):
            pass


def test_policies_nest_per_thread():
    outer, inner = DispatchPolicy("tiles"), DispatchPolicy("kernel")
    default = dispatch.get_policy()
    seen = {}
    with use_policy(outer):
        with use_policy(inner):
            assert dispatch.get_policy() is inner
            t = threading.Thread(target=lambda: seen.setdefault("other", dispatch.get_policy()))
            t.start()
            t.join()
        assert dispatch.get_policy() is outer
    assert dispatch.get_policy() is default
    assert seen["other"] is default  # another thread keeps the process-wide policy
    try:
        dispatch.set_policy(outer)
        assert dispatch.get_policy() is outer
    finally:
        dispatch.set_policy(None)
    assert dispatch.get_policy() is not outer


# ---- costs, calibration and its cache ------------------------------------------------------

def test_costs_round_trip_and_validation():
    c = dispatch.DEFAULT_COSTS
    assert KernelCosts.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    d = c.to_dict()
    for key, bad in (("blas", [1.0]), ("blas", [-1.0, 0.0]), ("fill_ns_per_weight", "x"),
                     ("fill_ns_per_weight", float("nan")), ("sparse", None)):
        with pytest.raises(ValueError, match=key):
            KernelCosts.from_dict({**d, key: bad})
    with pytest.raises(ValueError, match="missing"):
        KernelCosts.from_dict({k: v for k, v in d.items() if k != "kernel"})
    # a vector path without figures of its own takes the vector median, never generic
    assert c.kernel_rate("neon", "int8", "linear", 4) == c.kernel["vector/int8"]
    assert c.kernel_rate("generic", "int8", "linear", 4) == c.kernel["generic/int8"]


def test_calibrate_saves_for_this_machine_only(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "dispatch.json"
    monkeypatch.setenv("QPACK_DISPATCH_CACHE", str(path))
    try:
        measured = dispatch.calibrate(n=128, repeat=1)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
        assert measured.source.startswith("calibrated")
        # (a two-point fit on a noisy machine may put all of a cost in one term)
        assert all(min(v) >= 0 and v[0] + 128 * v[1] > 0 for v in measured.kernel.values())
        isa = qpack.isa.get_isa()
        expect = "generic/float" if isa == "ref" else "vector/float"
        assert expect in measured.kernel
        assert DispatchPolicy().costs == measured
        assert dispatch.get_policy().costs == measured  # set_policy(None) after saving
        # an entry for another machine, variant or build is not used
        data = json.loads(path.read_text())
        path.write_text(json.dumps({"other cpu | avx2 | -O2 | qpack 0": data.popitem()[1]}))
        assert DispatchPolicy().costs == dispatch.DEFAULT_COSTS
        for junk in ("{", "[]", json.dumps({dispatch.machine_key(): {"blas": 1}})):
            path.write_text(junk)
            assert DispatchPolicy().costs == dispatch.DEFAULT_COSTS
        # saving again keeps other machines' entries
        path.write_text(json.dumps({"other": {}}))
        dispatch.calibrate(n=128, repeat=1)
        assert set(json.loads(path.read_text())) == {"other", dispatch.machine_key()}
    finally:
        dispatch.set_policy(None)
    with pytest.raises(ValueError, match="multiple of 128"):
        dispatch.calibrate(save=False, n=100)
    with pytest.raises(ValueError, match="repeat"):
        dispatch.calibrate(save=False, repeat=0)


@pytest.mark.skipif("avx2" not in qpack.isa.available_isas(), reason="needs AVX2")
def test_calibrate_measures_the_avx2_gemm():
    """Under the AVX2 variant the calibration's int8 products (batches 16 and 128) run on
    the AVX2 GEMM, so its rates are measured under that path's name."""
    before = qpack.isa.get_isa()
    try:
        qpack.isa.set_isa("avx2")
        measured = dispatch.calibrate(save=False, n=128, repeat=1)
    finally:
        qpack.isa.set_isa(before)
    assert "avx2-gemm/int8" in measured.kernel
    assert "avx2-gemm/int8/codebook-8" in measured.kernel
    assert "avx2-gemm/int8" in dispatch.DEFAULT_COSTS.kernel


def test_cache_sizes_are_read():
    sizes = dispatch.cache_sizes()
    assert set(sizes) == {"l1d", "l2", "l3"}
    assert all(isinstance(v, int) and v >= 4096 for v in sizes.values())
    assert DispatchPolicy().tile_bytes == dispatch.default_tile_bytes()
    assert dispatch.default_tile_bytes() == max(sizes["l2"], min(dispatch.TILE_BYTES_MAX,
                                                                   sizes["l3"] // 2))


def test_cli_calibrate_dry_run(tmp_path, monkeypatch, capsys):
    from qpack.cli import main

    monkeypatch.setenv("QPACK_DISPATCH_CACHE", str(tmp_path / "d.json"))
    monkeypatch.setattr(dispatch, "calibrate",
                        lambda save: dispatch.DEFAULT_COSTS if not save else 1 / 0)
    assert main(["calibrate", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "blas" in out and "built-in defaults" in out
    assert not (tmp_path / "d.json").exists()


def test_default_tile_is_capped_and_floored(monkeypatch):
    """A VM may report its host's whole L3: the tile stays at TILE_BYTES_MAX; a tiny L3
    still gives at least one L2."""
    monkeypatch.setattr(dispatch, "cache_sizes",
                        lambda: {"l1d": 48 << 10, "l2": 2 << 20, "l3": 480 << 20})
    assert dispatch.default_tile_bytes() == dispatch.TILE_BYTES_MAX
    monkeypatch.setattr(dispatch, "cache_sizes",
                        lambda: {"l1d": 32 << 10, "l2": 1 << 20, "l3": 1 << 20})
    assert dispatch.default_tile_bytes() == 1 << 20
    monkeypatch.setattr(dispatch, "cache_sizes",
                        lambda: {"l1d": 32 << 10, "l2": 1 << 20, "l3": 8 << 20})
    assert dispatch.default_tile_bytes() == 4 << 20
