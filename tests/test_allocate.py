"""Bit allocation to a size budget: compress(target_bpw=/target_bytes=/evaluate=)."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qpack
from qpack import allocate
from qpack.calibration import HessianStats


def brute_force(options, budget):
    """Least summed score over every combination whose summed cost fits (None if none)."""
    best = None
    for combo in itertools.product(*[range(len(o)) for o in options.values()]):
        cost = sum(o[j][0] for o, j in zip(options.values(), combo, strict=True))
        score = sum(o[j][1] for o, j in zip(options.values(), combo, strict=True))
        if cost <= budget and (best is None or score < best):
            best = score
    return best


option_lists = st.lists(
    st.lists(st.tuples(st.integers(0, 60), st.floats(0, 10, allow_nan=False)),
             min_size=1, max_size=4),
    min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(option_lists, st.integers(0, 250))
def test_choose_is_exact_against_brute_force(lists, budget):
    options = {f"t{i}": o for i, o in enumerate(lists)}
    picks = allocate.choose(options, budget)
    best = brute_force(options, budget)
    if best is None:
        assert picks is None
        return
    assert picks is not None
    assert sum(options[n][j][0] for n, j in picks.items()) <= budget
    assert sum(options[n][j][1] for n, j in picks.items()) == pytest.approx(best, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(option_lists)
def test_choose_never_scores_worse_with_a_larger_budget(lists):
    options = {f"t{i}": o for i, o in enumerate(lists)}
    last = math.inf
    for budget in range(0, 260, 7):
        picks = allocate.choose(options, budget)
        if picks is None:
            continue
        score = sum(options[n][j][1] for n, j in picks.items())
        assert score <= last + 1e-12
        last = score


def test_choose_rounds_large_costs_up_and_stays_within_budget():
    rng = np.random.default_rng(0)
    options = {f"t{i}": [(int(c), float(s)) for c, s in
                         zip(rng.integers(10**6, 10**8, 8), rng.random(8), strict=True)]
               for i in range(30)}
    budget = 30 * 3 * 10**7
    picks = allocate.choose(options, budget)
    assert sum(options[n][j][0] for n, j in picks.items()) <= budget


def layers(seed=0, n=4, rows=128, cols=256):
    """A small model: n weight matrices of growing scale, and a bias stored exactly."""
    rng = np.random.default_rng(seed)
    m = {f"l{i}.weight": (rng.standard_normal((rows, cols)) * 0.02 * (i + 1))
         .astype(np.float32) for i in range(n)}
    m["bias"] = np.ones(rows, np.float32)
    return m


def on_disk_bpw(cm, model, raw=("bias",)):
    numel = sum(v.size for k, v in model.items() if k not in raw)
    return 8.0 * (cm.nbytes - sum(cm[k].nbytes for k in raw)) / numel


@pytest.mark.parametrize("method,extra,lowest", [
    ("kmeans", {}, 1.4), ("linear", {"group_size": 32}, 2.1),
    ("linear", {"group_size": 64, "symmetric": True}, 3.1)])
def test_budget_is_never_exceeded_and_more_budget_never_costs_error(tmp_path, method, extra,
                                                                    lowest):
    model = layers()
    totals = []
    for target in sorted({lowest, 2.4, 3.3, 4.1, 5.5, 7.0}):
        cm = qpack.compress(model, method=method, target_bpw=target, **extra)
        assert on_disk_bpw(cm, model) <= target
        path = tmp_path / f"m{target}.qpk"
        assert cm.save(path) == cm.nbytes == path.stat().st_size
        chosen = cm.allocation.chosen
        assert set(chosen) == {k for k in model if k != "bias"}
        for name, bits in chosen.items():
            assert cm[name].bits == bits
        totals.append(sum(c.score for n, cands in cm.allocation.candidates.items()
                          for c in cands if c.bits == chosen[n]))
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(totals))
    assert totals[-1] < totals[0]


def test_target_bytes_bounds_the_whole_file():
    model = layers()
    for target in (20000, 40000, 80000):
        cm = qpack.compress(model, target_bytes=target)
        assert cm.nbytes <= target
    # a budget just below what the chosen file needed gives a smaller file
    smaller = qpack.compress(model, target_bytes=cm.nbytes - 1)
    assert smaller.nbytes <= cm.nbytes - 1


def test_scores_measure_the_relative_weight_error_without_calibration():
    model = layers()
    cm = qpack.compress(model, target_bpw=3.0)
    for name, cands in cm.allocation.candidates.items():
        assert cm.allocation.measures[name] == "weight"
        for c in cands:
            one = qpack.compress({name: model[name]}, bits=c.bits)
            w_hat = one[name].dequantize()
            err = np.sum((model[name].astype(np.float64) - w_hat) ** 2) \
                / np.sum(model[name].astype(np.float64) ** 2)
            assert c.score == pytest.approx(err, rel=1e-9)
            assert c.nbytes == one[name].nbytes
        # more bits, less error
        assert [c.score for c in cands] == sorted((c.score for c in cands), reverse=True)


def test_evaluate_is_called_once_per_candidate_and_decides():
    model = layers(n=3)
    x = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    seen = []

    def evaluate(replaced):
        # the output only depends on l0 and l1; l2 does not matter at all
        seen.append(sorted(replaced))
        w = {n: replaced.get(n, model[n]) for n in ("l0.weight", "l1.weight")}
        ref = x @ model["l0.weight"].T + x @ model["l1.weight"].T
        out = x @ w["l0.weight"].T + x @ w["l1.weight"].T
        return float(np.sum((out - ref) ** 2) / np.sum(ref ** 2))

    cm = qpack.compress(model, target_bpw=3.0, evaluate=evaluate)
    assert seen[0] == []
    assert sorted(map(tuple, seen[1:])) == sorted([(n,) for n in ("l0.weight", "l1.weight",
                                                                   "l2.weight")] * 8)
    assert cm.allocation.chosen["l2.weight"] == 1  # costs nothing in the output
    # the bits it saves go to the two that matter
    assert cm.allocation.chosen["l0.weight"] + cm.allocation.chosen["l1.weight"] > 6
    assert set(cm.allocation.measures.values()) == {"evaluate"}
    rows = cm.allocation.rows()
    assert len(rows) == 3 * 8
    assert {(r["name"], r["bits"]) for r in rows if r["chosen"]} == set(
        cm.allocation.chosen.items())
    assert all(r["measure"] == "evaluate" and r["nbytes"] > 0 for r in rows)


def test_calibrated_tensors_are_scored_by_their_output_error():
    rng = np.random.default_rng(2)
    model = layers(n=2)
    # correlated inputs: a few directions carry most of the energy
    x = (rng.standard_normal((512, 8)) @ rng.standard_normal((8, 256))
         + 0.05 * rng.standard_normal((512, 256))).astype(np.float32)
    calib = {"l0.weight": x, "l1.weight": HessianStats.from_inputs(x)}
    cm = qpack.compress(model, method="linear", group_size=32, calibration=calib,
                        target_bpw=3.5)
    assert set(cm.allocation.measures.values()) == {"output"}
    xtx = x.astype(np.float64).T @ x.astype(np.float64)
    for name in calib:
        chosen = [c for c in cm.allocation.candidates[name]
                  if c.bits == cm.allocation.chosen[name]][0]
        w = model[name].astype(np.float64)
        d = w - cm[name].dequantize()
        expect = np.trace(d @ xtx @ d.T) / np.trace(w @ xtx @ w.T)
        assert chosen.score == pytest.approx(expect, rel=1e-6)
    args = json.loads(cm.metadata["compress_args"])
    chosen_damping = {n: [c.damping for c in cm.allocation.candidates[n]
                          if c.bits == cm.allocation.chosen[n]][0] for n in calib}
    assert args["calibrated"] == chosen_damping


def test_bits_set_by_an_override_are_kept():
    model = layers()
    cm = qpack.compress(model, target_bpw=3.0, overrides={"l0.*": {"bits": 8}})
    assert cm["l0.weight"].bits == 8
    assert "l0.weight" not in cm.allocation.chosen
    assert on_disk_bpw(cm, model) <= 3.0


def test_report_and_saved_file_show_the_choice(tmp_path):
    model = layers()
    cm = qpack.compress(model, target_bpw=3.0)
    text = str(cm.report())
    assert "alloc score" in text
    cm.save(tmp_path / "m.qpk")
    loaded = qpack.load(tmp_path / "m.qpk")
    rows = {r["name"]: r for r in loaded.report()}
    for name, bits in cm.allocation.chosen.items():
        assert rows[name]["bits"] == bits
        assert rows[name]["score"] == pytest.approx(
            [c.score for c in cm.allocation.candidates[name] if c.bits == bits][0], rel=1e-3)
    assert rows["bias"]["score"] is None
    args = json.loads(loaded.metadata["compress_args"])
    assert args["allocation"]["target"] == {"target_bpw": 3.0}
    for name in model:
        np.testing.assert_array_equal(loaded[name].dequantize(), cm[name].dequantize())
    # a plain compress has no score column
    assert "alloc score" not in str(qpack.compress(model).report())


def test_dropping_candidate_encodings_gives_the_same_file(monkeypatch, tmp_path):
    model = layers()
    kept = qpack.compress(model, target_bpw=3.2)
    monkeypatch.setattr(allocate, "KEEP_CANDIDATE_BYTES", 0)
    again = qpack.compress(model, target_bpw=3.2)
    assert all(c.encoded is None for cands in again.allocation.candidates.values()
               for c in cands)
    kept.save(tmp_path / "a.qpk")
    again.save(tmp_path / "b.qpk")
    assert (tmp_path / "a.qpk").read_bytes() == (tmp_path / "b.qpk").read_bytes()


def test_pruned_tensors_may_go_below_one_bit_per_weight():
    model = layers()
    cm = qpack.compress(model, prune=0.9, target_bpw=0.8)
    assert on_disk_bpw(cm, model) <= 0.8


@pytest.mark.parametrize("kwargs,match", [
    ({"target_bpw": 0}, "target_bpw must be a number in"),
    ({"target_bpw": -1.0}, "target_bpw must be a number in"),
    ({"target_bpw": 33}, "target_bpw must be a number in"),
    ({"target_bpw": float("nan")}, "target_bpw must be a number in"),
    ({"target_bpw": True}, "target_bpw must be a number in"),
    ({"target_bpw": "4"}, "target_bpw must be a number in"),
    ({"target_bytes": 0}, "target_bytes must be a positive integer"),
    ({"target_bytes": 1000.5}, "target_bytes must be a positive integer"),
    ({"target_bpw": 4, "target_bytes": 10**6}, "not both"),
    ({"evaluate": lambda r: 0.0}, "does nothing without target_bpw"),
    ({"target_bpw": 4, "evaluate": 3}, "evaluate must be a callable"),
    ({"target_bpw": 0.5}, "below what 1-bit codes allow"),
    ({"target_bytes": 2000}, "below what 1-bit codes allow"),
    ({"target_bpw": 4, "overrides": {"l*": {"bits": 4}}}, "no tensor whose bits"),
])
def test_bad_budgets_are_refused_before_any_encoding(monkeypatch, kwargs, match):
    def boom(*a, **k):
        raise AssertionError("encoding started")
    monkeypatch.setattr("qpack.allocate.allocate_bits", boom)
    monkeypatch.setattr("qpack.model.allocate_bits", boom)
    monkeypatch.setattr("qpack.model._encode_all", boom)
    with pytest.raises(ValueError, match=match):
        qpack.compress(layers(), **kwargs)


def test_a_budget_the_smallest_encodings_exceed_names_what_they_need():
    # 1.0 bpw passes the 1-bit floor, but codebooks and the header cost more
    with pytest.raises(ValueError, match=r"smallest encodings allow.*bits per weight"):
        qpack.compress(layers(), target_bpw=1.0)


@pytest.mark.parametrize("value", [float("nan"), "x", None, float("inf")])
def test_evaluate_must_return_a_finite_number(value):
    with pytest.raises(ValueError, match="evaluate must return a finite number"):
        qpack.compress(layers(n=1), target_bpw=4, evaluate=lambda r: value)


def test_cli_target_bpw(tmp_path):
    model = layers()
    src = tmp_path / "m.npz"
    np.savez(src, **model)
    out = tmp_path / "m.qpk"
    run = subprocess.run([sys.executable, "-m", "qpack.cli", "compress", str(src), "-o", str(out),
                          "--target-bpw", "2.5"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "alloc score" in run.stdout
    loaded = qpack.load(out)
    assert on_disk_bpw(loaded, model) <= 2.5
    bad = subprocess.run([sys.executable, "-m", "qpack.cli", "compress", str(src), "-o",
                          str(tmp_path / "x.qpk"), "--target-bpw", "40"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--target-bpw" in bad.stderr
