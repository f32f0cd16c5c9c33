"""The helper process that imports nilearn and loads confounds
(:mod:`bids_parcellate.runtime.helper_process`)."""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import subprocess
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_parcellate import cli, denoise
from bids_parcellate.cli import run as cli_run
from bids_parcellate.inputs import bold
from bids_parcellate.inputs.query import collect_runs
from bids_parcellate.runtime import helper_process, resources

from .conftest import sha256_tree
from .test_reliability import cli_command, subprocess_env

LOGGER = logging.getLogger("bids_parcellate")


@pytest.fixture
def helper():
    helper_process.start(force=True)  # this test process has nilearn imported already
    assert helper_process.running()
    yield helper_process._helper
    helper_process.stop()


@pytest.fixture
def logged():
    """Messages logged by bids_parcellate during the test (whatever its handlers are:
    a command line run in-process earlier stops propagation to the root logger)."""
    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    messages: list[str] = []
    handler = Keep(logging.DEBUG)
    level = LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG)
    yield messages
    LOGGER.removeHandler(handler)
    LOGGER.setLevel(level)


def runs_and_config(root: Path, tmp_path: Path, *options: str):
    args = cli.build_parser().parse_args([str(root), str(tmp_path / "out"), "participant",
                                          "-w", str(tmp_path / "work"), *options])
    config = cli.config_from_args(args, ["bids_parcellate"])
    return collect_runs(config).runs, config


def noisy(value: int) -> int:
    """Warns, logs, and returns the id of the process it ran in."""
    warnings.warn(f"warned in the helper {value}", UserWarning, stacklevel=1)
    LOGGER.warning("logged in the helper %d", value)
    return os.getpid()


class Odd(Exception):
    """An exception that pickles but does not unpickle (two required arguments)."""

    def __init__(self, first, second):
        super().__init__(f"{first} and {second}")


def raise_odd() -> None:
    raise Odd("one", "two")


@pytest.mark.parametrize("strategy", ["simple", "scrubbing"])
def test_helper_plan_is_the_in_process_plan(demo8, tmp_path, helper, strategy):
    runs, config = runs_and_config(demo8.root, tmp_path, "--denoise-strategy", strategy)
    run = runs[0]
    n_volumes = nib.load(run.bold).shape[3]
    here = denoise.denoising_plan(run, n_volumes, config)
    there = helper_process.call(denoise.denoising_plan, run, n_volumes, config)()
    confounds, names, sample_mask, fd, operator = there
    assert names == here[1] and len(names) > 10
    assert operator.shape == (sample_mask.size, n_volumes)
    for mine, theirs in zip((here[0], here[2], here[3], here[4]),
                            (confounds, sample_mask, fd, operator), strict=True):
        assert theirs.dtype == mine.dtype and np.array_equal(theirs, mine)  # same bits


def test_call_runs_in_the_helper_and_replays_warnings_and_logs(helper, logged):
    with pytest.warns(UserWarning, match="warned in the helper 3"):
        pid = helper_process.call(noisy, 3)()
    assert pid == helper.process.pid != os.getpid()
    assert "logged in the helper 3" in logged


def test_errors_come_back_as_raised_in_process(demo8, tmp_path, helper):
    runs, config = runs_and_config(demo8.root, tmp_path)
    run = runs[0]
    wrong = nib.load(run.bold).shape[3] + 5  # the confounds have fewer rows
    with pytest.raises(bold.RunError) as in_process:
        denoise.denoising_plan(run, wrong, config)
    with pytest.raises(bold.RunError) as in_helper:
        helper_process.call(denoise.denoising_plan, run, wrong, config)()
    assert str(in_helper.value) == str(in_process.value)
    assert str(run.confounds) in str(in_helper.value)
    cause = in_helper.value.__cause__  # the helper's traceback, for -v
    assert isinstance(cause, helper_process.RemoteTraceback) and "denoising_plan" in str(cause)
    with pytest.raises(RuntimeError, match="^Odd: one and two$"):
        helper_process.call(raise_odd)()
    # the helper still serves after an error, and after a call that was never collected
    helper_process.call(noisy, 4)
    with pytest.warns(UserWarning, match="warned in the helper 5"):
        assert helper_process.call(noisy, 5)() == helper.process.pid


def test_a_dead_helper_means_in_process(helper, logged):
    os.kill(helper.process.pid, signal.SIGKILL)
    helper.process.join(timeout=30)
    with pytest.warns(UserWarning, match="warned in the helper 6"):
        pid = helper_process.call(noisy, 6)()
    assert pid == os.getpid()
    assert any(m.startswith("helper process failed") for m in logged), logged
    assert not helper_process.running()


def test_memory_estimate_counts_the_helper(helper):
    import resource

    held = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert resources.base_bytes() >= held + resources.MARGIN_BYTES + resources.HELPER_BYTES


def test_cli_with_the_helper_writes_what_one_process_writes(demo8, demo8_out, tmp_path):
    """A real command line (a fresh process, nilearn not imported: the helper starts):
    every NIfTI / TSV (dseg, timeseries, quality tables with scikit-learn's ARI and NMI
    computed in the helper) equals the single-process run byte for byte."""
    out = tmp_path / "out"
    proc = subprocess.run(cli_command(demo8.root, out, "participant", "--participant-label",
                                      "01", "--n-parcels", "20", "50", "--nprocs", "2", "-v"),
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "helper process" in proc.stderr
    helper = {k: v for k, v in sha256_tree(out).items() if k.startswith("sub-01/")}
    single = {k: v for k, v in sha256_tree(demo8_out).items() if k.startswith("sub-01/")}
    assert len(helper) == 10 and helper == single  # 2 dseg x (nii + tsv), 4 timeseries, 2 quality


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie waits for a reaper that may not exist here


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_helper_ends_with_the_run(demo8, tmp_path, how):
    """The run says which process is its helper (-v); the test signals the run as soon as
    that line is written, then reads stderr to its end, which comes only once every
    process holding it has exited: the helper, spawned with the run's stderr, included.
    No polling of /proc, no clock."""
    # one participant: processed in the main process, the helper serves it to the end
    # (with two, the units would go to workers and the helper would be stopped)
    proc = subprocess.Popen(cli_command(demo8.root, tmp_path / "out", "participant",
                                        "--participant-label", "01", "--n-parcels", "20",
                                        "--nprocs", "2", "-v"),
                            env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    before, helper = [], None
    for line in proc.stderr:  # blocks until the run writes a line, or ends
        before.append(line)
        if found := re.search(r"helper process (\d+) imports nilearn", line):
            helper = int(found.group(1))
            break
    assert helper is not None, "".join(before)
    proc.send_signal(how)
    _, rest = proc.communicate(timeout=120)  # stderr to its end: run and helper gone
    assert gone(helper)
    stderr = "".join(before) + rest
    if how == signal.SIGTERM:
        assert proc.returncode == 143 and "terminated (SIGTERM)" in stderr
    else:
        assert proc.returncode == -signal.SIGKILL


def test_console_entry_freezes_the_heap_after_main(monkeypatch):
    calls = []
    monkeypatch.setattr(cli_run, "main", lambda: calls.append("main") or 7)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    assert cli_run.console_main() == 7
    assert calls == ["main", "freeze"]
