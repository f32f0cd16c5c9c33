"""Run processing units (participants, or participant x session) in parallel processes.

``--nprocs N`` splits N CPUs between up to N worker processes (joblib's loky backend),
one unit each at a time, and gives each worker ``N // workers`` BLAS/OpenMP threads.
With ``--mem-gb`` the number of workers is capped so that the estimated peak memory of
the largest unit times the number of workers fits. Units are independent and every
random step is seeded, so the outputs do not depend on the number of workers (tested
byte for byte against ``--nprocs 1``).

Runs of one unit are not spread over processes: the cleaned data of every run stay in
the unit's process for the features and for the timeseries, and shipping them between
processes would cost a copy of each run.

Workers log through a queue: their records (and one progress event per run) are handled
by the main process, so the progress lines and their ETA cover all workers and
everything lands in the main log file.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bids_parcellate.words import plural

if TYPE_CHECKING:
    from bids_parcellate.runtime.progress import Progress

LOGGER = logging.getLogger("bids_parcellate")


@dataclass(frozen=True)
class WorkerPlan:
    """How ``--nprocs`` CPUs are split: worker processes x BLAS threads each."""

    workers: int
    threads: int
    reason: str = ""

    def in_process(self, n_tasks: int) -> bool:
        """Whether :func:`map_units` runs ``n_tasks`` tasks in this process."""
        return self.workers <= 1 or n_tasks <= 1


def plan_workers(nprocs: int, n_units: int, unit_gb: float | None = None,
                 mem_gb: float | None = None) -> WorkerPlan:
    """Split ``nprocs`` CPUs between unit workers.

    Parameters
    ----------
    nprocs : int
        CPUs granted (``--nprocs``).
    n_units : int
        Units to process.
    unit_gb : float, optional
        Estimated peak memory of the largest unit (GB).
    mem_gb : float, optional
        Memory granted (``--mem-gb``).

    Returns
    -------
    WorkerPlan
        ``workers`` = min(nprocs, n_units, mem_gb // unit_gb) (at least 1) and
        ``threads`` = nprocs // workers (at least 1).
    """
    workers = max(1, min(nprocs, n_units))
    reason = ""
    if mem_gb is not None and unit_gb:
        fit = max(1, int(mem_gb // unit_gb))
        if fit < workers:
            workers = fit
            reason = (f"--mem-gb {mem_gb:g} holds {plural(fit, 'unit')} of about "
                      f"{unit_gb:.1f} GB at a time")
    return WorkerPlan(workers=workers, threads=max(1, nprocs // workers), reason=reason)


def for_each_block(function: Callable, starts: Iterable, n_jobs: int) -> None:
    """Call ``function(start)`` for every item of ``starts``, on ``n_jobs`` threads when
    more than one (work inside a unit: numpy and scipy release the GIL). Each call must
    write its own block of the result, so the result does not depend on ``n_jobs``.

    Parameters
    ----------
    function : callable
        ``function(start) -> None``: computes and writes one block in place.
    starts : iterable
        One item per block (a start index, or ``(start, stop)`` bounds).
    n_jobs : int
        Threads; 1 or less runs the blocks in order in this thread.
    """
    if n_jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            list(pool.map(function, starts))
    else:
        for start in starts:
            function(start)


class QueueProgress:
    """Stands in for the main process's progress counter inside a worker."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def run_done(self, message: str) -> None:
        """Send a progress event for one run to the main process's :class:`Progress`."""
        self.queue.put(("run_done", message))


def _route_logging(queue, verbosity: int) -> None:
    """In a worker: send the package's log records to the main process."""
    logger = logging.getLogger("bids_parcellate")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.addHandler(logging.handlers.QueueHandler(queue))
    logger.setLevel(logging.DEBUG if verbosity else logging.INFO)
    logger.propagate = False
    if verbosity < 2:
        for name in ("bids", "nilearn", "py.warnings"):
            logging.getLogger(name).setLevel(logging.ERROR)
    logging.captureWarnings(True)


def _call_in_worker(function: Callable, args: tuple, queue, threads: int, verbosity: int):
    from threadpoolctl import threadpool_limits

    _route_logging(queue, verbosity)
    with threadpool_limits(limits=threads):
        return function(*args, progress=QueueProgress(queue))


def _listen(queue, progress) -> None:
    """In the main process: handle worker records and progress events until ``None``."""
    while True:
        item = queue.get()
        if item is None:
            return
        if isinstance(item, tuple) and item[0] == "run_done":
            progress.run_done(item[1])
        elif isinstance(item, logging.LogRecord) and LOGGER.isEnabledFor(item.levelno):
            LOGGER.handle(item)


class WorkerDied(Exception):
    """A worker process ended abruptly (killed, e.g. by the out-of-memory killer)."""


def map_units(function: Callable, tasks: Sequence[tuple], plan: WorkerPlan,
              progress: Progress, verbosity: int = 0) -> list:
    """Call ``function(*task, progress=...)`` for every task; results in task order.

    With one worker the calls run in this process. Otherwise they run in ``plan.workers``
    loky processes with ``plan.threads`` BLAS threads each. When a worker dies, the
    tasks that had not returned yet get a :class:`WorkerDied` instead of a result (the
    others keep theirs, so that a rerun resumes).

    Parameters
    ----------
    function : callable
        Picklable (a module-level function) when run in workers; called as
        ``function(*task, progress=...)``.
    tasks : sequence of tuple
        The positional arguments of each call.
    plan : WorkerPlan
        From :func:`plan_workers`.
    progress : Progress
        The main process's counter: passed to the calls in this process; in workers a
        :class:`QueueProgress` forwards each run's event to it.
    verbosity : int
        ``-v`` count: the workers' log level (debug when > 0; third-party loggers quiet
        below 2).

    Returns
    -------
    list
        ``function``'s result for every task, in task order, or a :class:`WorkerDied`
        for the tasks lost with a worker. An exception raised by ``function`` itself is
        raised here.
    """
    if plan.in_process(len(tasks)):
        if plan.reason:
            LOGGER.info("running %s one at a time (%s)", plural(len(tasks), "unit"),
                        plan.reason)
        return [function(*task, progress=progress) for task in tasks]
    from joblib import Parallel, delayed, parallel_config
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    LOGGER.info("running %s in %d worker processes with %s each%s",
                plural(len(tasks), "unit"), plan.workers, plural(plan.threads, "BLAS thread"),
                f" ({plan.reason})" if plan.reason else "")
    results: dict[int, object] = {}
    # a spawned manager holds the queue (picklable proxies; no fork of this process)
    with multiprocessing.get_context("spawn").Manager() as manager:
        queue = manager.Queue()
        listener = threading.Thread(target=_listen, args=(queue, progress), daemon=True)
        listener.start()
        try:
            with parallel_config(backend="loky", inner_max_num_threads=plan.threads):
                jobs = Parallel(n_jobs=plan.workers, return_as="generator_unordered")(
                    delayed(_indexed)(i, function, task, queue, plan.threads, verbosity)
                    for i, task in enumerate(tasks))
                for index, result in jobs:
                    results[index] = result
        except TerminatedWorkerError as exc:
            LOGGER.debug("worker died", exc_info=True)
            died = WorkerDied(
                "a worker process died (out of memory? lower --nprocs or give --mem-gb): "
                f"{str(exc).splitlines()[0]}")
            for i in range(len(tasks)):
                results.setdefault(i, died)
        finally:
            queue.put(None)
            listener.join()
    return [results[i] for i in range(len(tasks))]


def _indexed(index: int, function: Callable, task: tuple, queue, threads: int,
             verbosity: int):
    return index, _call_in_worker(function, task, queue, threads, verbosity)
