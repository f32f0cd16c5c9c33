"""Unit tests of bids_parcellate.parallel: worker plans, blocks on threads, map_units."""

from __future__ import annotations

import logging
import os
import queue
import threading

import numpy as np
import pytest

from bids_parcellate.runtime import parallel


# --------------------------------------------------------------------------- plans
@pytest.mark.parametrize("args, workers, threads", [
    ((8, 3), 3, 2),        # one worker per unit, CPUs shared out (8 // 3)
    ((4, 10), 4, 1),       # no more workers than CPUs
    ((1, 5), 1, 1),
    ((6, 1), 1, 6),        # one unit: all CPUs as BLAS threads
    ((8, 0), 1, 8),        # at least one worker
    ((4, 2, 1.0, 64.0), 2, 2),   # memory to spare: no cap
    ((4, 4, None, 8.0), 4, 1),   # no estimate: no cap
    ((4, 4, 0.0, 8.0), 4, 1),
])
def test_plan_workers_without_a_memory_cap(args, workers, threads):
    plan = parallel.plan_workers(*args)
    assert (plan.workers, plan.threads, plan.reason) == (workers, threads, "")


def test_plan_workers_capped_by_memory():
    plan = parallel.plan_workers(16, 8, unit_gb=3.0, mem_gb=10.0)
    assert (plan.workers, plan.threads) == (3, 5)  # 10 // 3 units at a time, 16 // 3 threads
    assert plan.reason == "--mem-gb 10 holds 3 units of about 3.0 GB at a time"

    plan = parallel.plan_workers(4, 4, unit_gb=20.0, mem_gb=8.0)
    assert (plan.workers, plan.threads) == (1, 4)  # still one, even if it does not fit
    assert plan.reason == "--mem-gb 8 holds 1 unit of about 20.0 GB at a time"


def test_in_process():
    assert parallel.WorkerPlan(1, 4).in_process(10)
    assert parallel.WorkerPlan(3, 1).in_process(1)
    assert parallel.WorkerPlan(3, 1).in_process(0)
    assert not parallel.WorkerPlan(3, 1).in_process(2)


# --------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("n_jobs", [1, 3])
def test_for_each_block_fills_every_block(n_jobs):
    x = np.arange(100.0)
    out = np.zeros_like(x)
    calls = []
    lock = threading.Lock()

    def square(start):
        with lock:
            calls.append(start)
        out[start:start + 7] = x[start:start + 7] ** 2

    parallel.for_each_block(square, range(0, 100, 7), n_jobs)
    assert sorted(calls) == list(range(0, 100, 7))
    np.testing.assert_array_equal(out, x ** 2)


def test_for_each_block_propagates_errors():
    def fail(start):
        if start == 2:
            raise ValueError("block 2")

    for n_jobs in (1, 2):
        with pytest.raises(ValueError, match="block 2"):
            parallel.for_each_block(fail, range(4), n_jobs)


# --------------------------------------------------------------------------- map_units
class Progress:
    def __init__(self):
        self.messages = []

    def run_done(self, message):
        self.messages.append(message)


def unit_task(subject, n_runs, progress):
    """A unit: reports each run, logs, and returns what it did and where."""
    for run in range(1, n_runs + 1):
        progress.run_done(f"sub-{subject} run {run}")
    logging.getLogger("bids_parcellate").warning("sub-%s done", subject)
    return subject, n_runs, os.getpid()


def test_map_units_in_process_keeps_task_order(caplog):
    progress = Progress()
    tasks = [("03", 1), ("01", 2), ("02", 0)]
    plan = parallel.WorkerPlan(workers=1, threads=4, reason="--mem-gb 4 holds 1 unit")
    with caplog.at_level(logging.INFO, logger="bids_parcellate"):
        results = parallel.map_units(unit_task, tasks, plan, progress)
    pid = os.getpid()
    assert results == [("03", 1, pid), ("01", 2, pid), ("02", 0, pid)]
    assert progress.messages == ["sub-03 run 1", "sub-01 run 1", "sub-01 run 2"]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "running 3 units one at a time (--mem-gb 4 holds 1 unit)"
    assert messages[1:] == ["sub-03 done", "sub-01 done", "sub-02 done"]


def test_map_units_one_task_runs_here_whatever_the_workers():
    progress = Progress()
    plan = parallel.WorkerPlan(workers=4, threads=1)
    assert parallel.map_units(unit_task, [("01", 1)], plan, progress) == [
        ("01", 1, os.getpid())]
    assert parallel.map_units(unit_task, [], plan, progress) == []


def test_map_units_in_process_errors_propagate():
    def broken(subject, progress):
        raise RuntimeError(f"sub-{subject} failed")

    with pytest.raises(RuntimeError, match="sub-01 failed"):
        parallel.map_units(broken, [("01",)], parallel.WorkerPlan(1, 1), Progress())


def test_queue_progress_sends_events():
    q = queue.Queue()
    parallel.QueueProgress(q).run_done("sub-01 run 1")
    assert q.get_nowait() == ("run_done", "sub-01 run 1")


def test_map_units_in_worker_processes(caplog):
    """Two loky workers: results in task order, progress events and log records relayed
    to this process."""
    progress = Progress()
    tasks = [("01", 2), ("02", 1), ("03", 1)]
    plan = parallel.WorkerPlan(workers=2, threads=1)
    with caplog.at_level(logging.INFO, logger="bids_parcellate"):
        results = parallel.map_units(unit_task, tasks, plan, progress)
    assert [r[:2] for r in results] == [("01", 2), ("02", 1), ("03", 1)]
    assert all(r[2] != os.getpid() for r in results)
    assert sorted(progress.messages) == ["sub-01 run 1", "sub-01 run 2", "sub-02 run 1",
                                         "sub-03 run 1"]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "running 3 units in 2 worker processes with 1 BLAS thread each"
    assert sorted(messages[1:]) == ["sub-01 done", "sub-02 done", "sub-03 done"]
