"""Where ``compress`` runs its encodings when it is given an executor.

``compress(..., executor=...)`` takes a ``concurrent.futures.Executor`` (a process pool
here, or any other) or a ``dask.distributed.Client`` (a cluster). ``as_runner`` wraps
either into the two things ``encode_jobs.run_jobs`` needs: ``submit(fn, arg)`` returning
a future with ``result()`` / ``cancel()``, and ``workers``, how many tasks run at once
(which sizes the back-pressure window). ``local_workers(n)`` makes the process pool that
``qpack compress --workers N`` uses, each worker process with its share of the cores.

qpack never imports dask: a Client is recognized by its type's module.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor


class _FuturesRunner:
    def __init__(self, executor: Executor):
        self._executor = executor
        # ProcessPoolExecutor and ThreadPoolExecutor keep their size here; another
        # Executor gets the machine's core count (it only sizes the window)
        self.workers = max(1, int(getattr(executor, "_max_workers", None)
                                  or os.cpu_count() or 1))

    def submit(self, fn, arg):
        return self._executor.submit(fn, arg)


class _DaskRunner:
    def __init__(self, client):
        self._client = client
        try:
            threads = sum(client.nthreads().values())
        except Exception as exc:  # a closed client, no scheduler
            raise ValueError(f"executor: the Dask client cannot reach its scheduler "
                             f"({type(exc).__name__}: {exc})") from None
        if threads < 1:
            raise ValueError("executor: the Dask cluster has no workers")
        self.workers = threads

    def submit(self, fn, arg):
        # pure=False: every task runs (two equal tensors are still two tensors); one
        # retry when the worker running it dies
        return self._client.submit(_on_dask_worker, fn, arg, pure=False, retries=1)


def _on_dask_worker(fn, arg):
    # the nanny's MALLOC_TRIM_THRESHOLD_ makes every numpy temporary a fresh mmap
    # (qpack/malloc_limits.py): undo it once per worker process before the first task
    from qpack.malloc_limits import restore_dynamic_limits

    restore_dynamic_limits()
    return fn(arg)


def is_dask_client(executor) -> bool:
    """True for a ``dask.distributed.Client`` (by duck typing: dask is never imported)."""
    return type(executor).__module__.split(".")[0] == "distributed" and \
        callable(getattr(executor, "submit", None)) and hasattr(executor, "nthreads")


def as_runner(executor):
    """The runner of a ``concurrent.futures.Executor`` or ``dask.distributed.Client``.

    Raises ValueError for anything else, or for a Dask client without workers.
    """
    if isinstance(executor, Executor):
        return _FuturesRunner(executor)
    if is_dask_client(executor):
        return _DaskRunner(executor)
    raise ValueError("executor must be a concurrent.futures.Executor or a "
                     f"dask.distributed.Client, got {type(executor).__name__}")


def check_executor(executor) -> None:
    """ValueError unless ``executor`` is None or something ``as_runner`` accepts."""
    if executor is not None:
        as_runner(executor)


def _init_worker(threads: int) -> None:
    from qpack.threads import set_num_threads

    set_num_threads(threads)


def local_workers(n: int) -> ProcessPoolExecutor:
    """A pool of ``n`` worker processes for ``compress(executor=...)``, each using
    cores // n threads (at least 1) so that together they do not oversubscribe.

    Processes are started with "spawn": forking a process whose OpenMP runtime is
    already running can hang the child. Raises ValueError unless n is an int >= 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"workers must be a positive integer, got {n!r}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    return ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(max(1, cores // n),))
