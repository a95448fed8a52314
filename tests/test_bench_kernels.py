"""benchmarks/bench_kernels.py on a tiny matrix: rows, paths and ratios, no timing claims."""

from __future__ import annotations

import os
import sys

import pytest

import qpack
from qpack.dispatch import DEFAULT_COSTS, DispatchPolicy, use_policy
from qpack.isa import get_isa

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import bench_kernels as bk  # noqa: E402

NAMES = ["linear 4-bit g128", "linear 3-bit g128", "linear 4-bit g32", "codebook 4-bit",
         "codebook 8-bit"]


def test_encoding_names():
    assert bk.parse_encoding("linear 5-bit g128") == ("linear", 5, 128)
    assert bk.parse_encoding("linear 4-bit channel") == ("linear", 4, -1)
    assert bk.parse_encoding("codebook 7-bit") == ("codebook", 7, None)
    assert set(bk.QUICK_ENCODINGS) <= set(bk.ALL_ENCODINGS)
    assert {bk.reference_of(n) for n in bk.ALL_ENCODINGS} == {bk.LINEAR_REF, bk.CODEBOOK_REF}
    assert bk.LINEAR_REF in bk.QUICK_ENCODINGS and bk.CODEBOOK_REF in bk.QUICK_ENCODINGS


def test_bench_rows_cover_every_variant_and_restore_the_default():
    default = get_isa()
    variants = qpack.kernel_info()["available"]
    # the built-in rates, not a calibration cached on this machine: the path is asserted
    with use_policy(DispatchPolicy(costs=DEFAULT_COSTS)):
        rows = bk.bench((64, 256), [(1, 1), (16, 1)], NAMES, 1, lambda: None, variants,
                        idle=0.0, log=lambda _: None)
    assert get_isa() == default
    per_config = 1 + len(variants) * len(NAMES) * 2  # numpy row + qpack rows
    assert len(rows) == 2 * per_config
    for row in rows:
        assert len(row) == 12 and row[7] > 0
    peers = [r for r in rows if r[3] == "-"]
    assert [r[4] for r in peers] == ["numpy float32 x @ W.T"] * 2
    assert all(r[9] == 1.0 for r in peers)
    qrows = [r for r in rows if r[3] != "-"]
    assert {r[3] for r in qrows} == set(variants)
    assert all(r[11] == 1.0 for r in qrows if r[4] in (bk.LINEAR_REF, bk.CODEBOOK_REF))
    # the reference variant has no vector kernels: generic at batch 1, tiles from batch 4
    ref = [r for r in qrows if r[3] == "ref"]
    assert {r[6] for r in ref if r[1] == 1} == {"generic"}
    assert {r[6] for r in ref if r[1] == 16} == {"tiles+BLAS"}


def test_size_table_counts_bits_held():
    table = bk.size_table((64, 256), ["linear 4-bit g128", "codebook 4-bit"])
    bits = {r[1]: r[3] for r in table["rows"]}
    assert bits["linear 4-bit g128"] == pytest.approx(4.5)  # + float32 scale, zero per 128
    assert 4 < bits["codebook 4-bit"] < 4.1
    if "Q4_0" in bits:
        assert bits["Q4_0"] == pytest.approx(4.5)
