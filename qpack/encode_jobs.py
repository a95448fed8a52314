"""Run many tensor encodings at once on a thread pool, with bounded memory.

``compress`` encodes each tensor once; bit allocation (qpack/allocate.py) encodes each
allocated tensor once per candidate bit width. Both hand ``run_jobs`` a list of jobs and
get each result in the calling thread, in the jobs' order, as soon as it and the jobs
before it are done. The jobs may also run on an executor (qpack/executors.py): worker
processes or a Dask cluster.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from qpack.calibration import Calibration
from qpack.encode import TensorSettings, encode_prequantized, encode_raw_tensor, encode_tensor
from qpack.executors import as_runner
from qpack.handover import is_prequantized, numel
from qpack.stored_tensor import StoredTensor
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
    """(header entry, blobs) of one job, by what its value is.

    A ``StoredTensor`` is read here, in whichever process runs the job; a tensor to be
    quantized must then be finite (ValueError naming it: the plan could not look at
    values it had not read).
    """
    value = job.value
    if isinstance(value, StoredTensor):
        if job.settings is not None:
            # read straight into float32, finite-checked block by block (the plan could
            # not look at values it had not read)
            return encode_tensor(value.read_float32(), job.settings, job.mask,
                                 job.calibration, dtype_name=value.dtype_name)
        value = value.read()
    if job.settings is None:
        return encode_raw_tensor(value)
    if is_prequantized(value):
        return encode_prequantized(value, job.settings.entropy, job.mask, job.reference)
    return encode_tensor(value, job.settings, job.mask, job.calibration)


def _encode_sharing_cores(job: EncodeJob, workers: int):
    # each of the pool's threads takes 1/workers of the cores: no oversubscription
    with share_cores(workers):
        return encode_job(job)


def run_jobs(jobs: Iterable[EncodeJob],
             on_done: Callable[[EncodeJob, tuple[dict, dict]], None],
             executor=None) -> None:
    """Encode every job, several at once, calling ``on_done(job, result)`` in this thread
    for each, **in the order of** ``jobs`` (so output is the same however they ran).

    ``executor`` None runs them on a thread pool here (the heavy steps release the GIL);
    else on the given ``concurrent.futures.Executor`` or ``dask.distributed.Client``
    (``qpack.executors``), one task per job.

    Memory stays bounded (back-pressure): a job is submitted only while the elements of
    the jobs submitted and not yet handed to ``on_done`` total at most the largest job's
    (times the executor's workers, twice, so that they stay busy while the oldest job
    finishes). Exact copies are encoded here, when their turn comes. A task that fails
    on an executor (a worker that died, a lost connection) raises RuntimeError naming the
    tensor; ValueError from a job (NaN or Inf in a tensor read there) passes as it is.
    """
    jobs = list(jobs)
    largest = max((numel(j.value) for j in jobs if j.settings is not None), default=0)
    quantized = sum(j.settings is not None for j in jobs)
    if executor is None:
        runner = None
        workers = max(1, min(get_num_threads(), MAX_WORKERS, quantized))
        pool = ThreadPoolExecutor(max_workers=workers)
        budget, window = largest, 2 * workers
    else:
        runner = as_runner(executor)
        workers, pool = runner.workers, None
        budget, window = 2 * workers * largest, 2 * workers
    pending: deque = deque()  # (job, future or None, elements), in the jobs' order
    in_flight = 0
    try:
        nxt = 0
        while nxt < len(jobs) or pending:
            # submit while the budget and window allow (always at least one job)
            while nxt < len(jobs):
                job = jobs[nxt]
                size = numel(job.value) if job.settings is not None else 0
                if pending and (in_flight + size > budget or len(pending) >= window):
                    break
                if job.settings is None:
                    fut = None
                elif runner is None:
                    fut = pool.submit(_encode_sharing_cores, job, workers)
                else:
                    fut = runner.submit(encode_job, job)
                pending.append((job, fut, size))
                in_flight += size
                nxt += 1
            job, fut, size = pending.popleft()
            result = encode_job(job) if fut is None else _result(job, fut, runner)
            in_flight -= size
            on_done(job, result)
    finally:
        for _, fut, _ in pending:
            if fut is not None:
                fut.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _result(job: EncodeJob, fut, runner):
    """A job's result from its future; a failure on an executor names the tensor."""
    try:
        return fut.result()
    except ValueError:
        raise
    except Exception as exc:
        if runner is None:
            raise
        raise RuntimeError(f"encoding tensor {job.key!r} failed on the executor "
                           f"({type(exc).__name__}: {exc})") from exc


def plan_jobs(arrays: dict, plan, names: Iterable[str] | None = None) -> list[EncodeJob]:
    """One job per tensor of ``arrays`` (or of ``names``), with the plan's settings, mask,
    float reference and calibration."""
    return [EncodeJob(name, arrays[name], plan.settings[name], plan.masks.get(name),
                      plan.references.get(name), plan.calibration.get(name))
            for name in (arrays if names is None else names)]
