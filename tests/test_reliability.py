"""Crash safety, resumable reruns, determinism, concurrency, read-only input, no network,
--mem-gb (issue 8)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_parcellate.demo import make_demo_dataset
from bids_parcellate.derivatives import naming, writers

from .conftest import run_cli, validate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    """Two participants, one 40-volume run each, 8 mm."""
    root = tmp_path_factory.mktemp("rel_small") / "bids"
    return make_demo_dataset(root, participants=("01", "02"), runs=(1,), resolution=8,
                             n_volumes=40, n_true_parcels=10, seed=1)


@pytest.fixture(scope="session")
def four(tmp_path_factory):
    """Four participants (array-job tests), one 40-volume run each, 8 mm."""
    root = tmp_path_factory.mktemp("rel_four") / "bids"
    return make_demo_dataset(root, participants=("01", "02", "03", "04"), runs=(1,),
                             resolution=8, n_volumes=40, n_true_parcels=10, seed=2)


def manifest(out: Path) -> list[dict]:
    with open(out / "logs" / "manifest.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def tree_state(root: Path) -> dict[str, tuple]:
    """(size, mtime_ns, sha256) of every file under ``root``: detects any write."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns,
                                             writers.sha256_file(p))
            for p in sorted(root.rglob("*")) if p.is_file()
            # reports carry wall times: not data outputs (see naming.is_report_file)
            and "figures" not in p.relative_to(root).parts and p.suffix != ".html"}


def check_every_file_is_valid(out: Path) -> int:
    """Every final-named file parses (NIfTI loads with its data, TSV/JSON parse);
    returns the number of files outside ``logs/``."""
    n = 0
    for path in sorted(out.rglob("*")):
        if not path.is_file() or writers.is_temp(path) or path.name == ".manifest.lock":
            continue
        if path.name.endswith(".nii.gz"):
            np.asarray(nib.load(path).dataobj)
        elif path.suffix == ".tsv":
            pd.read_csv(path, sep="\t", na_values="n/a")
        elif path.suffix == ".json":
            json.loads(path.read_text())
        rel = path.relative_to(out)
        n += "logs" not in rel.parts and not naming.is_report_file(rel)
    return n


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "bids_parcellate", *map(str, args)]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --------------------------------------------------------------------------- reruns
def test_rerun_skips_complete_units_and_overwrite_recomputes(small, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(small.root, out, "--n-parcels", "10") == 0
    capsys.readouterr()
    marker = json.loads((out / "sub-01" / "sub-01_completed.json").read_text())
    assert set(marker) >= {"ConfigHash", "Parameters", "Sources", "Files"}
    # dseg nii/tsv/json + timeseries tsv/json + quality tsv/json
    assert len(marker["Files"]) == 7
    for rel, record in marker["Files"].items():
        assert writers.sha256_file(out / rel) == record["sha256"]
    first = tree_state(out / "sub-01")

    assert run_cli(small.root, out, "--n-parcels", "10") == 0
    err = capsys.readouterr().err
    assert err.count("complete from an earlier run with the same parameters, skipped") == 2
    assert tree_state(out / "sub-01") == first  # not even rewritten

    assert run_cli(small.root, out, "--n-parcels", "10", "--overwrite") == 0
    again = tree_state(out / "sub-01")
    assert {k: v[2] for k, v in again.items()} == {k: v[2] for k, v in first.items()}
    assert {k: v[1] for k, v in again.items()} != {k: v[1] for k, v in first.items()}


def test_parameter_change_is_refused_then_overwrite_replaces(small, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(small.root, out, "--n-parcels", "10", "20") == 0
    before = tree_state(out)
    capsys.readouterr()
    assert run_cli(small.root, out, "--n-parcels", "10", "--smoothing-fwhm", "6") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bids_parcellate: error: ")
    assert "made with other parameters" in err[-1]
    assert "--n-parcels (10 20 -> 10)" in err[-1]
    assert "--smoothing-fwhm (4 -> 6)" in err[-1]
    assert tree_state(out) == before  # nothing new, not even a log

    assert run_cli(small.root, out, "--n-parcels", "10", "--smoothing-fwhm", "6",
                   "--overwrite") == 0
    files = sorted(p.name for p in out.rglob("*_scale-*"))
    assert files and not [f for f in files if "scale-20" in f]
    new_hash = json.loads((out / "sub-01" / "sub-01_completed.json").read_text())[
        "ConfigHash"]
    for sidecar in out.glob("sub-*/*/*.json"):
        assert json.loads(sidecar.read_text())["ConfigHash"] == new_hash


def test_parameter_change_is_refused_for_units_not_selected(small, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(small.root, out, "--participant-label", "01", "--n-parcels", "10") == 0
    capsys.readouterr()
    assert run_cli(small.root, out, "--participant-label", "02", "--n-parcels", "12") == 1
    assert "holds outputs of sub-01 made with other parameters" in capsys.readouterr().err
    assert not (out / "sub-02").exists()


def test_interrupted_unit_is_cleaned_and_recomputed(small, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(small.root, out, "--n-parcels", "10") == 0
    reference = {k: v[2] for k, v in tree_state(out / "sub-01").items()}
    sub02 = tree_state(out / "sub-02")
    # what a kill leaves: no marker, a stale output of other parameters, temporary
    # files (of a dead process), a truncated-looking output under a final name is
    # impossible (atomic writes) but a missing one is not
    (out / "sub-01" / "sub-01_completed.json").unlink()
    stale = out / "sub-01" / "anat" / ("sub-01_space-MNI152NLin2009cAsym_seg-ward_scale-99_"
                                       "dseg.nii.gz")
    stale.write_bytes(b"old")
    temp = out / "sub-01" / "func" / f".x.tsv.tmp-{writers.HOST}-999999999-abc.tsv"
    temp.write_text("partial")
    root_temp = out / f".README.md.tmp-{writers.HOST}-999999999-abc.md"
    root_temp.write_text("partial")
    next((out / "sub-01" / "func").glob("*_timeseries.tsv")).unlink()
    capsys.readouterr()
    assert run_cli(small.root, out, "--n-parcels", "10") == 0
    err = capsys.readouterr().err
    assert "sub-01: recomputing (left incomplete by an earlier run)" in err
    assert "sub-02: complete from an earlier run" in err
    assert not stale.exists() and not temp.exists() and not root_temp.exists()
    assert {k: v[2] for k, v in tree_state(out / "sub-01").items()} == reference
    assert tree_state(out / "sub-02") == sub02


def test_damaged_output_of_a_complete_unit_is_recomputed(small, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(small.root, out, "--participant-label", "01", "--n-parcels", "10") == 0
    ts = next((out / "sub-01" / "func").glob("*_timeseries.tsv"))
    good = ts.read_bytes()
    ts.write_bytes(good.replace(b"\t", b" ", 1))
    capsys.readouterr()
    assert run_cli(small.root, out, "--participant-label", "01", "--n-parcels", "10") == 0
    assert "has changed content" in capsys.readouterr().err
    assert ts.read_bytes() == good


def test_manifest_lists_every_output(small, tmp_path):
    out = tmp_path / "out"
    assert run_cli(small.root, out, "--n-parcels", "10") == 0
    rows = manifest(out)
    listed = [r["path"] for r in rows]
    present = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if p.is_file() and "logs" not in p.relative_to(out).parts
                     and not naming.is_report_file(p.relative_to(out)))
    # per participant: dseg .nii.gz/.tsv/.json, timeseries .tsv/.json, completion marker,
    # group-level summary .npz/.json, quality table .tsv/.json; the group quality table
    assert listed == present and len(listed) == 3 + 2 * 10 + 2
    # reports (wall times, generation time) exist but are not data outputs
    assert (out / "sub-01.html").is_file() and list(out.glob("sub-01/figures/*.svg"))
    for row in rows:
        path = out / row["path"]
        assert int(row["size"]) == path.stat().st_size
        assert row["sha256"] == writers.sha256_file(path)


def test_outputs_do_not_depend_on_nprocs(small, tmp_path):
    """Byte-identical outputs (every file of the manifest) with 1 and 2 BLAS threads."""
    for method in ("ward", "kmeans"):
        one, two = tmp_path / f"{method}1", tmp_path / f"{method}2"
        args = ("--n-parcels", "10", "30", "--method", method)
        assert run_cli(small.root, one, *args, "--nprocs", "1") == 0
        assert run_cli(small.root, two, *args, "--nprocs", "2") == 0
        assert manifest(one) == manifest(two)


# --------------------------------------------------------------------------- locations
@pytest.mark.parametrize("layout", ["raw", "fmriprep"])
def test_output_under_bids_derivatives_is_never_indexed(small, tmp_path, capsys, layout):
    """BIDS_DIR/derivatives/<name> works for a raw dataset and for the fMRIPrep dataset
    itself, and its files never enter the pybids index on a rerun."""
    root = tmp_path / "bids"
    shutil.copytree(small.root, root)
    bids_dir = root if layout == "raw" else root / "derivatives" / "fmriprep"
    out = bids_dir / "derivatives" / "bids_parcellate"
    work = tmp_path / "work"
    for _ in range(2):
        assert run_cli(bids_dir, out, "--n-parcels", "10", "-w", work) == 0
        shutil.rmtree(work / "bids_db")  # index afresh: a stale index would hide a leak
    assert "complete from an earlier run" in capsys.readouterr().err
    # a third run, keeping the index this time, to inspect it
    assert run_cli(bids_dir, out, "--n-parcels", "10", "-w", work) == 0
    databases = list((work / "bids_db").rglob("layout_index.sqlite"))
    assert databases
    for db in databases:
        with sqlite3.connect(db) as con:
            paths = [row[0] for row in con.execute("select path from files")]
        assert paths and not [p for p in paths if str(out) in p]
    assert validate(out)["errors"] == []


# --------------------------------------------------------------------------- isolation
def _unshare_prefix() -> list[str]:
    """New mount and network namespaces (as root; mapped to root for a normal user)."""
    unshare = shutil.which("unshare")
    assert unshare, "util-linux unshare is needed for the isolation test"
    return [unshare, "--mount", "--net"] + ([] if os.geteuid() == 0 else ["--map-root-user"])


def test_read_only_input_and_no_network(small, tmp_path):
    """The CLI runs with BIDS_DIR on a read-only mount (and chmod a-w) and without any
    network; the input tree is unchanged; a read-only OUTPUT_DIR gives a one-line error."""
    bids = tmp_path / "bids"
    shutil.copytree(small.root, bids)
    out, ro_out = tmp_path / "out", tmp_path / "ro_out"
    ro_out.mkdir()
    subprocess.run(["chmod", "-R", "a-w", str(bids)], check=True)
    before = tree_state(bids)
    probe = ("import socket,sys\n"
             "try:\n"
             "    socket.create_connection(('pypi.org', 443), timeout=3)\n"
             "except OSError:\n"
             "    sys.exit(0)\n"
             "sys.exit(42)\n")
    script = "\n".join([
        f"mount --bind '{bids}' '{bids}' && mount -o remount,bind,ro '{bids}' || exit 39",
        f"mount --bind '{ro_out}' '{ro_out}' && mount -o remount,bind,ro '{ro_out}' || exit 39",
        f"touch '{bids}/x' 2>/dev/null && exit 40",  # the input must really be read-only
        f"'{sys.executable}' -c \"{probe}\" || exit 41",  # and the network unreachable
        " ".join(cli_command(bids, ro_out, "participant", "--n-parcels", "10")) + " ; "
        "test $? -eq 1 || exit 43",
        "exec " + " ".join(cli_command(bids, out, "participant", "--n-parcels", "10")),
    ])
    proc = subprocess.run([*_unshare_prefix(), "sh", "-c", script], env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    assert "ro_out: OUTPUT_DIR is not writable (Read-only file system)" in proc.stderr
    assert tree_state(bids) == before
    assert (out / "sub-01" / "sub-01_completed.json").is_file()
    assert (out / "sub-02" / "sub-02_completed.json").is_file()
    assert not list(ro_out.iterdir())


def test_measured_peak_memory_stays_below_the_estimate(small, tmp_path):
    """The estimate checked against --mem-gb bounds the peak RSS of the same run, so a
    run given --mem-gb >= the estimate stays under it (below it, it stops early: see
    test_bad_input)."""
    out = tmp_path / "out"
    proc = subprocess.Popen(cli_command(small.root, out, "participant", "--n-parcels", "10"),
                            env=subprocess_env(), stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    peak_gb = usage.ru_maxrss * 1024 / 1e9
    log = next((out / "logs").glob("participant-*.log")).read_text()
    estimates = [float(x) for x in re.findall(r"estimated peak memory ([0-9.]+) GB", log)]
    assert len(estimates) == 2
    assert peak_gb < min(estimates), (peak_gb, estimates)
    # a bound, not a wild guess
    assert max(estimates) < 2 * peak_gb, (peak_gb, estimates)


# --------------------------------------------------------------------------- writes
def test_failed_write_leaves_neither_final_nor_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "sub-01" / "x_dseg.nii.gz"
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))

    def broken_save(image, filename):
        Path(filename).write_bytes(b"\x1f\x8b partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError):
        writers.write_nifti(target, img)
    assert list(target.parent.iterdir()) == []


def test_stale_temporary_files_of_dead_processes_only(tmp_path):
    dead = tmp_path / f".a.json.tmp-{writers.HOST}-999999999-x1.json"
    alive = tmp_path / f".b.json.tmp-{writers.HOST}-{os.getppid()}-x2.json"
    other_host = tmp_path / ".c.json.tmp-otherhost-999999999-x3.json"
    final = tmp_path / "d.json"
    for path in (dead, alive, other_host, final):
        path.write_text("{}")
    assert all(writers.is_temp(p) for p in (dead, alive, other_host))
    assert not writers.is_temp(final)
    assert writers.remove_temps(tmp_path) == [dead]
    assert sorted(writers.remove_temps(tmp_path, any_process=True)) == sorted([alive,
                                                                               other_host])
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"]


# --------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_four_concurrent_participant_processes(four, tmp_path):
    """Four array-job-like processes (one participant each) share OUTPUT_DIR and a
    pybids database folder; the result equals one serial run, byte for byte."""
    serial = tmp_path / "serial"
    assert run_cli(four.root, serial, "--n-parcels", "10") == 0
    out, db = tmp_path / "out", tmp_path / "db"
    procs = [subprocess.Popen(cli_command(four.root, out, "participant", "--n-parcels", "10",
                                          "--participant-label", sub,
                                          "--bids-database-dir", db),
                              env=subprocess_env(), stderr=subprocess.PIPE, text=True)
             for sub in ("01", "02", "03", "04")]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0, 0, 0, 0], [e[-2000:] for _, e in results]
    assert len(list((out / "logs").glob("participant-*.log"))) == 4
    assert not [p for p in out.rglob("*") if writers.is_temp(p)]
    assert len(list(db.iterdir())) == 1  # one shared database, no leftovers
    assert manifest(out) == manifest(serial)
    assert check_every_file_is_valid(out) == len(manifest(out))
    assert validate(out)["errors"] == []


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_no_partial_output(four, tmp_path):
    """SIGKILL a real run at several moments (while indexing, while writing the first
    files, in the middle, near the end); every final-named file is always complete, and
    a plain rerun finishes the job with the same bytes as an uninterrupted run."""
    reference = tmp_path / "reference"
    assert run_cli(four.root, reference, "--n-parcels", "10", "20") == 0
    expected = manifest(reference)
    out = tmp_path / "out"
    command = cli_command(four.root, out, "participant", "--n-parcels", "10", "20")
    scratch = tmp_path / "scratch"

    def files(pattern: str) -> set[Path]:
        return set(out.glob(pattern)) if out.exists() else set()

    def temps_of(pid: int) -> list[Path]:
        tag = f".tmp-{writers.HOST}-{pid}-"
        return [p for p in out.rglob("*") if tag in p.name] if out.exists() else []

    def kill_when(condition) -> dict:
        """Start a run, SIGKILL it as soon as ``condition(pid, files at start)`` holds."""
        start = files("**/*")
        # a killed run cannot remove its temporary work folder: keep it under tmp_path
        scratch.mkdir(exist_ok=True)
        proc = subprocess.Popen(command, env={**subprocess_env(), "TMPDIR": str(scratch)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not condition(proc.pid, start):
            time.sleep(0.001)
        alive = proc.poll() is None
        left = temps_of(proc.pid)
        proc.kill()
        proc.wait()
        check_every_file_is_valid(out)  # nothing truncated under a final name
        return {"killed": alive, "temps": len(left)}

    def new(pattern: str, n: int):
        return lambda pid, start: len(files(pattern) - start) >= n

    points = {
        "after indexing": lambda pid, start: bool(files(f"logs/*-{pid}.log")),
        "while writing a file": lambda pid, start: bool(temps_of(pid)),
        "among a unit's files": new("sub-*/*/*", 3),
        "after a unit": new("sub-*/*_completed.json", 1),
        "while writing a file, later": lambda pid, start: bool(temps_of(pid)),
        "among a unit's files, later": new("sub-*/*/*", 7),
    }
    results = {name: kill_when(condition) for name, condition in points.items()}
    assert all(r["killed"] for r in results.values()), results
    # at least one kill landed in the middle of writing a file (its temp was left)
    assert any(r["temps"] for r in results.values()), results

    # SIGTERM (a scheduler's time limit) while a file is written: a clean exit that
    # removes the temporary file and the interrupted unit's partial outputs
    (out / "sub-04" / "sub-04_completed.json").unlink(missing_ok=True)
    term_scratch = tmp_path / "scratch-term"
    term_scratch.mkdir()
    proc = subprocess.Popen([*command, "--overwrite", "--participant-label", "04"],
                            env={**subprocess_env(), "TMPDIR": str(term_scratch)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not [p for p in temps_of(proc.pid) if "sub-04" in p.parts]:
        time.sleep(0.001)
    assert proc.poll() is None, "the run ended before it wrote a file"
    proc.terminate()
    assert proc.wait(timeout=60) == 143
    assert "terminated (SIGTERM)" in proc.stderr.read()
    assert not temps_of(proc.pid)
    assert not list(term_scratch.iterdir())  # its temporary work folder is gone too
    assert not [p for p in (out / "sub-04").rglob("*") if p.is_file()]
    proc = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not [p for p in out.rglob("*") if writers.is_temp(p)]
    assert manifest(out) == expected
    assert check_every_file_is_valid(out) == len(expected)
