"""Run many tensor encodings at once on a thread pool, with bounded memory.

``compress`` encodes each tensor once; bit allocation (qpack/allocate.py) encodes each
allocated tensor once per candidate bit width. Both hand ``run_jobs`` a list of jobs and
get each result, in the calling thread, as soon as it is done.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from qpack.calibration import Calibration
from qpack.encode import TensorSettings, encode_prequantized, encode_raw_tensor, encode_tensor
from qpack.handover import is_prequantized, numel
from qpack.threads import get_num_threads, share_cores

# Encodings run concurrently on at most this many threads: each heavy step already uses
# the OpenMP team, so more would only add memory.
MAX_WORKERS = 4


@dataclass(frozen=True)
class EncodeJob:
    """One encoding: ``value`` (array or pre-quantized object) with ``settings`` (None:
    stored exactly), an optional keep-mask, float reference and calibration."""

    key: Hashable
    value: object
    settings: TensorSettings | None
    mask: np.ndarray | None = None
    reference: np.ndarray | None = None
    calibration: Calibration | None = None


def encode_job(job: EncodeJob) -> tuple[dict, dict[str, np.ndarray]]:
    """(header entry, blobs) of one job, by what its value is."""
    if job.settings is None:
        return encode_raw_tensor(job.value)
    if is_prequantized(job.value):
        return encode_prequantized(job.value, job.settings.entropy, job.mask, job.reference)
    return encode_tensor(job.value, job.settings, job.mask, job.calibration)


def run_jobs(jobs: Iterable[EncodeJob],
             on_done: Callable[[EncodeJob, tuple[dict, dict]], None]) -> None:
    """Encode every job, several at once (the heavy steps release the GIL), calling
    ``on_done(job, result)`` in this thread as each finishes.

    Memory stays bounded: quantizing jobs run concurrently only while the elements in
    flight total at most the largest of them, so the peak is about that of encoding the
    largest tensor alone (plus whatever ``on_done`` keeps). Exact copies run inline.
    """
    jobs = list(jobs)
    budget = max((numel(j.value) for j in jobs if j.settings is not None), default=0)
    pending: dict = {}
    in_flight = 0

    def collect_one() -> None:
        """Wait for at least one pending job and hand over what finished."""
        nonlocal in_flight
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            job, size = pending.pop(fut)
            in_flight -= size
            on_done(job, fut.result())

    workers = max(1, min(get_num_threads(), MAX_WORKERS,
                         sum(j.settings is not None for j in jobs)))

    def encode_sharing_cores(job: EncodeJob):
        # each worker's kernels take 1/workers of the threads: no oversubscription
        with share_cores(workers):
            return encode_job(job)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for job in jobs:
                if job.settings is None:
                    on_done(job, encode_job(job))
                    continue
                size = numel(job.value)
                while pending and in_flight + size > budget:
                    collect_one()
                pending[pool.submit(encode_sharing_cores, job)] = (job, size)
                in_flight += size
            while pending:
                collect_one()
        finally:
            for fut in pending:
                fut.cancel()


def plan_jobs(arrays: dict, plan, names: Iterable[str] | None = None) -> list[EncodeJob]:
    """One job per tensor of ``arrays`` (or of ``names``), with the plan's settings, mask,
    float reference and calibration."""
    return [EncodeJob(name, arrays[name], plan.settings[name], plan.masks.get(name),
                      plan.references.get(name), plan.calibration.get(name))
            for name in (arrays if names is None else names)]
