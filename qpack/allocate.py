"""Bit allocation to a size budget: each tensor's bits chosen to minimize a summed error.

``compress(..., target_bpw=...)`` or ``target_bytes=...`` encodes every tensor it may
allocate at each candidate bit width, scores each encoding, and picks one per tensor so
that the summed score is least while the file fits the budget. The score of a candidate
(``score_candidates``), in order of preference:

- ``evaluate`` given: the increase of the caller's model-output error when that one
  tensor is replaced by its decoded approximation (others as given). Measured on
  all-MiniLM-L6-v2 (issue #13), this output-side measure is what makes mixed precision
  beat uniform bits; a per-layer output error does not (it spends bits on query/key
  weights, whose large inputs dominate it while the embedding barely depends on them);
- the tensor has calibration: its relative output error on the calibration inputs,
  tr(dW H dW^T) / tr(W H W^T) with H = X^T X;
- otherwise its relative weight error ||dW||^2 / ||W||^2.

Scores are assumed to add up over tensors (each is measured alone). The choice is an exact
multiple-choice knapsack (``choose``) over byte costs rounded *up* to a fixed resolution,
so the chosen encodings never exceed the budget, and a larger budget can only lower the
summed score (its feasible set contains the smaller budget's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from qpack._validate import as_matrix
from qpack.calibration import HessianStats
from qpack.encode_jobs import EncodeJob, plan_jobs, run_jobs
from qpack.tensor import memory_tensor

# At most this many cost bins in the knapsack: fine enough that rounding costs up wastes
# under 1/BINS of the largest total, small enough that the table costs nothing.
BINS = 1 << 15
# The largest target_bpw: no encoding costs more than a float32 weight.
MAX_BPW = 32.0


@dataclass
class Candidate:
    """One encoding of a tensor considered by the allocation.

    bits : the code width. nbytes : bytes of its sections (what it adds to the file).
    score : its error score (see the module doc). damping : the calibration damping its
    encoding used (None without calibration). encoded : (spec, blobs), or None when not
    kept, to bound memory (the chosen one is then encoded again).
    """

    bits: int
    nbytes: int
    score: float = math.nan
    damping: float | None = None
    encoded: tuple[dict, dict] | None = None


def check_targets(target_bpw, target_bytes, evaluate) -> tuple[str, float] | None:
    """The validated budget as ("bpw", value) or ("bytes", value), or None.

    Raises ValueError for both targets given, a target_bpw outside [1, 32] (1-bit codes
    cost at least 1 bit per weight unless pruned, see ``check_feasible``), a target_bytes
    that is not a positive integer, or an ``evaluate`` that is not callable or is given
    without a target.
    """
    if evaluate is not None and not callable(evaluate):
        raise ValueError(f"evaluate must be a callable, got {type(evaluate).__name__}")
    if target_bpw is not None and target_bytes is not None:
        raise ValueError("give target_bpw or target_bytes, not both")
    if target_bpw is None and target_bytes is None:
        if evaluate is not None:
            raise ValueError("evaluate scores bit allocations; it does nothing without "
                             "target_bpw or target_bytes")
        return None
    if target_bpw is not None:
        if isinstance(target_bpw, bool) or not isinstance(target_bpw, (int, float,
                                                                       np.number)) \
                or not math.isfinite(float(target_bpw)) or not 0 < target_bpw <= MAX_BPW:
            raise ValueError(f"target_bpw must be a number in (0, {MAX_BPW:g}] bits per "
                             f"weight, got {target_bpw!r}")
        return "bpw", float(target_bpw)
    if isinstance(target_bytes, bool) or not isinstance(target_bytes, (int, np.integer)) \
            or target_bytes <= 0:
        raise ValueError(f"target_bytes must be a positive integer, got {target_bytes!r}")
    return "bytes", float(target_bytes)


def candidate_bits(method: str, symmetric: bool) -> tuple[int, ...]:
    """The code widths the allocation tries for a tensor: 1..8 (2..8 for symmetric linear
    codes, which have no 1-bit range)."""
    return tuple(range(2 if method == "linear" and symmetric else 1, 9))


def relative_error(w: np.ndarray, w_hat: np.ndarray, xtx: np.ndarray | None) -> float:
    """||dW||^2 / ||W||^2, or with the inputs' X^T X (cols, cols) the relative output error
    tr(dW X^T X dW^T) / tr(W X^T X W^T); 0 for an all-zero W reproduced exactly.

    w, w_hat : float arrays of the same shape, viewed as (rows, cols) matrices.
    """
    a = as_matrix(w).astype(np.float64)
    d = a - as_matrix(w_hat).astype(np.float64)
    if xtx is None:
        num, den = float(np.vdot(d, d)), float(np.vdot(a, a))
    else:
        num = float(np.einsum("ij,ij->", d @ xtx, d))
        den = float(np.einsum("ij,ij->", a @ xtx, a))
    if den <= 0:
        return 0.0 if num <= 0 else math.inf
    return num / den


def call_evaluate(evaluate: Callable, replaced: Mapping[str, np.ndarray]) -> float:
    """``evaluate(replaced)`` as a float; ValueError unless it returns a finite number."""
    value = evaluate(dict(replaced))
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not math.isfinite(float(value)):
        what = ", ".join(replaced) or "no tensor replaced"
        raise ValueError(f"evaluate must return a finite number (the model's output error), "
                         f"got {value!r} for {what}")
    return float(value)


def choose(options: Mapping[str, list[tuple[int, float]]], budget: float
           ) -> dict[str, int] | None:
    """The option index per name minimizing the summed score with summed cost <= budget.

    options : {name: [(cost in bytes, score), ...]} (each list non-empty, costs >= 0);
    budget : bytes. Exact for costs rounded up to a resolution of the largest total / BINS
    (fixed by the options alone, so a larger budget never scores worse). Returns None when
    even the cheapest choice exceeds the budget. Ties go to the cheaper option.
    """
    names = list(options)
    if not names:
        return {}
    top = sum(max(c for c, _ in opts) for opts in options.values())
    res = max(1.0, top / BINS)
    nbins = int(min(math.floor(budget / res), math.ceil(top / res) + len(names)))
    if nbins < 0:
        return None
    # dp[b] = least summed score of the tensors so far with rounded cost <= b bins
    dp = np.zeros(nbins + 1)
    picks = []
    for name in names:
        new = np.full(nbins + 1, np.inf)
        pick = np.full(nbins + 1, -1, dtype=np.int16)
        # cheaper options first, so that on equal scores the cheaper one is kept
        for j in sorted(range(len(options[name])), key=lambda i: options[name][i][0]):
            cost, score = options[name][j]
            c = int(math.ceil(cost / res - 1e-9))
            if c > nbins:
                continue
            cand = np.full(nbins + 1, np.inf)
            cand[c:] = dp[:nbins + 1 - c] + score
            better = cand < new
            new[better] = cand[better]
            pick[better] = j
        dp = new
        picks.append(pick)
    if not np.isfinite(dp[nbins]):
        return None
    out = {}
    b = nbins
    for name, pick in zip(reversed(names), reversed(picks), strict=True):
        j = int(pick[b])
        out[name] = j
        b -= int(math.ceil(options[name][j][0] / res - 1e-9))
    return {n: out[n] for n in names}


def budget_bytes(target: tuple[str, float], quantized_numel: int, raw_nbytes: int) -> float:
    """The file size a target allows: target_bytes itself, or for target_bpw the bytes
    that make 8 * (file bytes - bytes of tensors stored exactly) / quantized weights equal
    target_bpw (so the header and padding are paid from the budget)."""
    kind, value = target
    if kind == "bytes":
        return value
    return value * quantized_numel / 8.0 + raw_nbytes


# Candidate encodings are kept in memory while their blobs total at most this many bytes;
# beyond it only their sizes and scores are kept and the chosen ones are encoded again.
KEEP_CANDIDATE_BYTES = 512 << 20
# Rounds of choosing again when the header pushed the file over the budget (one or two
# are the rule: the header changes by bytes between choices).
MAX_ROUNDS = 16


@dataclass
class Allocation:
    """What a budgeted ``compress`` chose, and what it weighed.

    target : ("bpw", bits per weight) or ("bytes", file bytes). budget : the file bytes
    it allows. candidates : {name: [Candidate, ...]} for each allocated tensor.
    measures : {name: "evaluate" | "output" | "weight"}, how its scores were measured.
    chosen : {name: bits}.
    """

    target: tuple[str, float]
    budget: float
    candidates: dict[str, list[Candidate]]
    measures: dict[str, str]
    chosen: dict[str, int]

    def rows(self) -> list[dict]:
        """One dict per (tensor, candidate): name, bits, nbytes, score, measure, chosen."""
        return [{"name": n, "bits": c.bits, "nbytes": c.nbytes, "score": c.score,
                 "measure": self.measures[n], "chosen": c.bits == self.chosen[n]}
                for n, cands in self.candidates.items() for c in cands]

    def as_json(self) -> dict:
        """The choice as stored in compress_args: target, and per tensor [bits, score]."""
        chosen = {n: next(c for c in cands if c.bits == self.chosen[n])
                  for n, cands in self.candidates.items()}
        return {"target": {f"target_{self.target[0]}": self.target[1]},
                "tensors": {n: [c.bits, float(f"{c.score:.4g}")]
                            for n, c in chosen.items()}}


def _calibration_xtx(calibration) -> np.ndarray:
    """X^T X (float64) of a plan's Calibration (HessianStats or raw inputs)."""
    source = calibration.source
    if isinstance(source, HessianStats):
        return np.asarray(source.xtx)
    return np.asarray(HessianStats.from_inputs(source).xtx)


def allocate_bits(arrays: Mapping, plan, names: list[str], target: tuple[str, float],
                  evaluate: Callable | None,
                  file_size: Callable[[dict, Allocation], int],
                  on_encoded: Callable[[], None] | None = None, executor=None
                  ) -> tuple[dict[str, tuple[dict, dict]], Allocation]:
    """Encode every tensor, choosing the bits of ``names`` to fit ``target``.

    arrays, plan : compress's inputs and checked plan. names : the tensors whose bits are
    chosen (quantized here, bits not fixed by an override). evaluate : the caller's
    output-error callback or None. file_size(encoded, allocation) : the exact size of the
    file the encodings and this allocation make (the allocation is in its metadata).
    on_encoded : called after each encoding (a progress bar). executor : where the
    encodings run (compress's ``executor``, qpack/encode_jobs.run_jobs).

    Returns ({name: (header entry, blobs)} for every tensor, the Allocation). Raises
    ValueError when even the cheapest candidates exceed the budget (naming what the
    smallest encoding needs), or when ``evaluate`` fails to return a finite number.
    """
    allocated = set(names)
    results: dict[str, tuple[dict, dict]] = {}
    candidates: dict[str, list[Candidate]] = {n: [] for n in names}
    measures = {n: "evaluate" if evaluate is not None else
                "output" if n in plan.calibration else "weight" for n in names}
    base = call_evaluate(evaluate, {}) if evaluate is not None else 0.0
    xtx_cache: dict[str, np.ndarray] = {}
    kept = 0

    def score(name: str, decoded: np.ndarray) -> float:
        if evaluate is not None:
            return call_evaluate(evaluate, {name: decoded}) - base
        if name in plan.calibration and name not in xtx_cache:
            if len(xtx_cache) >= 2:  # candidates come tensor by tensor, two overlapping
                del xtx_cache[next(iter(xtx_cache))]
            xtx_cache[name] = _calibration_xtx(plan.calibration[name])
        return relative_error(arrays[name], decoded, xtx_cache.get(name))

    def done(job: EncodeJob, result) -> None:
        nonlocal kept
        if on_encoded is not None:
            on_encoded()
        if not isinstance(job.key, tuple):  # a tensor whose bits are not chosen
            results[job.key] = result
            return
        name, bits = job.key
        spec, blobs = result
        nbytes = sum(int(b.nbytes) for b in blobs.values())
        decoded = memory_tensor(name, spec, blobs).dequantize()
        cand = Candidate(bits, nbytes, score(name, decoded),
                         damping=None if job.calibration is None else job.calibration.chosen)
        if kept + nbytes <= KEEP_CANDIDATE_BYTES:
            cand.encoded, kept = result, kept + nbytes
        candidates[name].append(cand)

    jobs = plan_jobs(arrays, plan, [n for n in arrays if n not in allocated])
    for name in names:
        s = plan.settings[name]
        for b in candidate_bits(s.method, s.symmetric):
            # each candidate records its own damping in its own Calibration
            calib = plan.calibration.get(name)
            jobs.append(EncodeJob((name, b), arrays[name], replace(s, bits=b),
                                  plan.masks.get(name), None,
                                  None if calib is None else replace(calib)))
    run_jobs(jobs, done, executor)

    numel_q = sum(int(np.prod(np.shape(arrays[n]))) for n, s in plan.settings.items()
                  if s is not None)
    raw_bytes = sum(sum(int(b.nbytes) for b in results[n][1].values())
                    for n, s in plan.settings.items() if s is None)
    fixed = sum(sum(int(b.nbytes) for b in blobs.values())
                for n, (_, blobs) in results.items())
    budget = budget_bytes(target, numel_q, raw_bytes)
    for cands in candidates.values():
        cands.sort(key=lambda c: c.bits)
    options = {n: [(c.nbytes, c.score) for c in cands] for n, cands in candidates.items()}
    # The header's size depends on the choice (its metadata records it): choose for the
    # sections' budget, measure the whole file, and when the header pushed it over,
    # choose again under the chosen sections' cost less the excess (a strictly cheaper
    # choice each round).
    limit = budget - fixed
    for _ in range(MAX_ROUNDS):
        picks = choose(options, limit)
        if picks is None:
            break
        allocation = Allocation(target, budget, candidates, measures,
                                {n: candidates[n][j].bits for n, j in picks.items()})
        encoded = dict(results)
        _chosen_encodings(arrays, plan, allocation, encoded, executor)
        size = file_size(encoded, allocation)
        if size <= budget:
            return encoded, allocation
        limit = sum(options[n][j][0] for n, j in picks.items()) - (size - budget)
    cheapest = fixed + sum(min(c for c, _ in opts) for opts in options.values())
    need = (f"{8.0 * (cheapest - raw_bytes) / numel_q:.3f} bits per weight"
            if target[0] == "bpw" else f"{cheapest:,} bytes")
    raise ValueError(f"target_{target[0]}={target[1]:g} is below what this model's "
                     f"smallest encodings allow: 1-bit codes for every allocated tensor "
                     f"need at least {need} (before the header)")


def _chosen_encodings(arrays: Mapping, plan, allocation: Allocation, encoded: dict,
                      executor=None) -> None:
    """Put each allocated tensor's chosen encoding into ``encoded``, encoding again the
    ones whose blobs were not kept."""
    again = []
    for name, bits in allocation.chosen.items():
        cand = next(c for c in allocation.candidates[name] if c.bits == bits)
        if name in plan.calibration:
            plan.calibration[name].chosen = cand.damping
        if cand.encoded is not None:
            encoded[name] = cand.encoded
        else:
            s = plan.settings[name]
            again.append(EncodeJob(name, arrays[name], replace(s, bits=bits),
                                   plan.masks.get(name), None, plan.calibration.get(name)))
    if again:
        run_jobs(again, lambda job, result: encoded.__setitem__(job.key, result), executor)
