"""Large datasets and HPC: what pybids indexes, the shared database, --nprocs, --print-slurm.

The real SLURM cluster check is ``scripts/slurm_test.sh`` (run by ``.ci/run``); the
indexing speed at 1,000 participants is ``benchmarks/indexing.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_parcellate.cli import build_parser
from bids_parcellate.cli.slurm import processing_options
from bids_parcellate.config import Config
from bids_parcellate.inputs.query import collect_runs, index_layout
from bids_parcellate.runtime.parallel import WorkerDied, WorkerPlan, map_units, plan_workers

from .conftest import run_cli, sha256_tree

SPACE = "space-MNI152NLin2009cAsym"

#: Every file fMRIPrep 23 writes for one run under func/ (names from its outputs).
FMRIPREP_FUNC = [
    "desc-confounds_timeseries.tsv", "desc-confounds_timeseries.json",
    "desc-coreg_boldref.nii.gz", "desc-hmc_boldref.nii.gz", "desc-brain_mask.nii.gz",
    "from-boldref_to-T1w_mode-image_desc-coreg_xfm.txt",
    "from-orig_to-boldref_mode-image_desc-hmc_xfm.txt",
    *(f"space-{sp}_{f}" for sp in ("T1w", "MNI152NLin2009cAsym_res-2")
      for f in ("boldref.nii.gz", "desc-brain_mask.nii.gz", "desc-brain_mask.json",
                "desc-preproc_bold.nii.gz", "desc-preproc_bold.json",
                "desc-aparcaseg_dseg.nii.gz")),
    "hemi-L_space-fsaverage5_bold.func.gii", "space-fsLR_den-91k_bold.dtseries.nii",
]


def fmriprep_tree(root: Path, participants=("01", "02", "03")) -> Path:
    """An fMRIPrep-style derivatives tree of empty files with real names."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        '{"Name": "fMRIPrep", "BIDSVersion": "1.9.0", "DatasetType": "derivative"}')
    (root / "logs").mkdir()
    (root / "logs" / "CITATION.md").touch()
    for label in participants:
        sub = root / f"sub-{label}"
        (root / f"sub-{label}.html").touch()
        for folder in ("anat", "func", "figures"):
            (sub / folder).mkdir(parents=True)
        (sub / "anat" / f"sub-{label}_desc-preproc_T1w.nii.gz").touch()
        (sub / "anat" / f"sub-{label}_{SPACE}_res-2_desc-brain_mask.nii.gz").touch()
        (sub / "figures" / f"sub-{label}_task-rest_run-1_desc-carpetplot_bold.svg").touch()
        for run in (1, 2):
            for name in FMRIPREP_FUNC:
                path = sub / "func" / f"sub-{label}_task-rest_run-{run}_{name}"
                path.write_text('{"RepetitionTime": 2.0}' if name.endswith("bold.json")
                                else "")
    return root


@pytest.fixture
def package_log():
    """Records of the ``bids_parcellate`` logger (the CLI turns its propagation off, so
    pytest's caplog misses them once a test in this process has run the CLI)."""
    logger = logging.getLogger("bids_parcellate")
    saved = logger.handlers[:], logger.level
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger.handlers[:] = [Collect(logging.DEBUG)]
    logger.setLevel(logging.DEBUG)
    yield records
    logger.handlers[:], logger.level = saved[0], saved[1]


def indexed_names(layout) -> set[str]:
    return {Path(p).name for p in layout.get(return_type="file")}


def test_indexer_keeps_only_the_requested_participants_and_the_files_used(tmp_path):
    root = fmriprep_tree(tmp_path / "fmriprep")
    config = Config(bids_dir=root, output_dir=tmp_path / "out", work_dir=tmp_path / "work",
                    participant_label=("02",))
    names = indexed_names(index_layout(config, root))
    used = {f"sub-02_task-rest_run-{run}_{name}" for run in (1, 2) for name in (
        "desc-confounds_timeseries.tsv", "desc-brain_mask.nii.gz",
        f"{SPACE}_res-2_desc-brain_mask.nii.gz", f"{SPACE}_res-2_desc-preproc_bold.nii.gz",
        "space-T1w_desc-brain_mask.nii.gz", "space-T1w_desc-preproc_bold.nii.gz")}
    assert names == used
    # the database sits in the work directory, keyed by the participants indexed
    databases = list((tmp_path / "work" / "bids_db").glob("*/layout_index.sqlite"))
    assert len(databases) == 1
    # ... saved from the in-memory index and reused by the next invocation
    stamp = databases[0].stat().st_mtime_ns
    assert indexed_names(index_layout(config, root)) == used
    assert databases[0].stat().st_mtime_ns == stamp
    # a file removed since: the dataset's fingerprint changed, it is indexed again
    removed = next((root / "sub-02").rglob("*space-T1w_desc-brain_mask.nii.gz"))
    removed.unlink()
    assert indexed_names(index_layout(config, root)) == used - {removed.name}
    assert len(list((tmp_path / "work" / "bids_db").glob("*/layout_index.sqlite"))) == 2


def test_an_index_that_cannot_be_saved_still_serves_the_run(tmp_path, monkeypatch):
    """Saving the private index is for later invocations only: a database error while
    saving it (here sqlite's, which is not an OSError) leaves this run its index."""
    import sqlite3

    from bids.layout import BIDSLayout

    def refuse(self, *args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(BIDSLayout, "save", refuse)
    root = fmriprep_tree(tmp_path / "fmriprep")
    config = Config(bids_dir=root, output_dir=tmp_path / "out", work_dir=tmp_path / "work",
                    participant_label=("02",))
    assert len(indexed_names(index_layout(config, root))) == 12
    assert not list((tmp_path / "work").rglob("layout_index.sqlite"))


def test_shared_database_indexes_everyone_once_and_is_reused(tmp_path, package_log):
    root = fmriprep_tree(tmp_path / "fmriprep")
    db = tmp_path / "db"
    first = collect_runs(Config(bids_dir=root, output_dir=tmp_path / "out", bids_database_dir=db,
                                participant_label=("01",)))
    assert any(m.startswith("indexing every participant") for m in package_log)
    (sqlite,) = db.glob("*/layout_index.sqlite")
    built = sqlite.stat().st_mtime_ns, sqlite.stat().st_size
    package_log.clear()
    second = collect_runs(Config(bids_dir=root, output_dir=tmp_path / "out",
                                 bids_database_dir=db, participant_label=("03",)))
    everyone = collect_runs(Config(bids_dir=root, output_dir=tmp_path / "out",
                                   bids_database_dir=db))
    assert not any(m.startswith("indexing every") for m in package_log), package_log
    assert any("reuse=True" in m for m in package_log)
    assert (sqlite.stat().st_mtime_ns, sqlite.stat().st_size) == built
    assert list(db.iterdir()) == [sqlite.parent]
    assert [r.bold.name for r in first.runs] == [
        f"sub-01_task-rest_run-{r}_{SPACE}_res-2_desc-preproc_bold.nii.gz" for r in (1, 2)]
    assert [r.unit for r in second.runs] == [("03", None)] * 2
    assert [r.unit for r in everyone.runs] == [(s, None) for s in ("01", "02", "03")
                                               for _ in (1, 2)]
    run = second.runs[1]
    assert run.mask.name == f"sub-03_task-rest_run-2_{SPACE}_res-2_desc-brain_mask.nii.gz"
    assert run.confounds.name == "sub-03_task-rest_run-2_desc-confounds_timeseries.tsv"
    assert run.tr == 2.0 and run.entities["res"] == "2"


def test_database_of_another_dataset_path_is_not_reused_and_says_why(tmp_path,
                                                                     package_log):
    root = fmriprep_tree(tmp_path / "host" / "fmriprep")
    db = tmp_path / "db"
    collect_runs(Config(bids_dir=root, output_dir=tmp_path / "out", bids_database_dir=db))
    moved = tmp_path / "container" / "fmriprep"
    shutil.copytree(root, moved)
    selection = collect_runs(Config(bids_dir=moved, output_dir=tmp_path / "out",
                                    bids_database_dir=db))
    assert all(moved in r.bold.parents for r in selection.runs)
    (warning,) = [m for m in package_log if "the dataset path differs" in m]
    assert str(root) in warning and str(moved) in warning
    assert len(list(db.glob("*/layout_index.sqlite"))) == 2


# --------------------------------------------------------------------------- --nprocs
@pytest.mark.parametrize("args, expected", [
    ((1, 5), (1, 1)),
    ((4, 3), (3, 1)),
    ((8, 2), (2, 4)),
    ((4, 1), (1, 4)),
    ((4, 10, 3.0, 7.0), (2, 2)),    # 7 GB hold two units of 3 GB
    ((4, 10, 3.0, 100.0), (4, 1)),
    ((4, 10, 9.0, 4.0), (1, 4)),    # one at a time even if it does not fit
    ((4, 10, None, 4.0), (4, 1)),   # no estimate: no cap
])
def test_plan_workers(args, expected):
    plan = plan_workers(*args)
    assert (plan.workers, plan.threads) == expected
    assert bool(plan.reason) == (expected[0] < min(args[0], args[1]))


def test_nprocs_outputs_identical_progress_in_one_log(demo8, demo8_out, tmp_path):
    out = tmp_path / "out"
    assert run_cli(demo8.root, out, "--n-parcels", "20", "50", "--nprocs", "2") == 0
    assert sha256_tree(out) == sha256_tree(demo8_out)
    (log,) = (out / "logs").glob("participant-*.log")
    text = log.read_text()
    assert "2 worker processes with 1 BLAS thread each" in text
    # every run's progress line, counted across workers, in the main log
    for i in range(1, 5):
        assert f"[{i}/4 runs] sub-0" in text
    assert text.count("2 parcellations (20, 50) on 3666 voxels") == 2
    # the reports are assembled from the workers' records
    assert sorted(p.name for p in out.glob("sub-*.html")) == ["sub-01.html", "sub-02.html"]


def test_mem_gb_runs_fewer_units_at_once(demo8, demo8_out, tmp_path):
    from bids_parcellate.runtime.resources import check_memory

    config = Config(bids_dir=demo8.root, output_dir=tmp_path / "x",
                    work_dir=tmp_path / "work", n_parcels=(20, 50))
    unit_gb = check_memory(config, collect_runs(config).units())
    out = tmp_path / "out"
    # room for one participant at a time, not two
    assert run_cli(demo8.root, out, "--n-parcels", "20", "50", "--nprocs", "2",
                   "--mem-gb", f"{1.5 * unit_gb:.3f}") == 0
    assert sha256_tree(out) == sha256_tree(demo8_out)
    (log,) = (out / "logs").glob("participant-*.log")
    assert "running 2 units one at a time (--mem-gb" in log.read_text()
    assert "holds 1 unit of about" in log.read_text()


def test_a_failing_unit_in_a_worker_does_not_stop_the_others(demo8, demo8_out, tmp_path,
                                                              capsys):
    root = tmp_path / "bids"
    shutil.copytree(demo8.root, root)
    for mask in (root / "derivatives").rglob(f"sub-02_*{SPACE}_desc-brain_mask.nii.gz"):
        img = nib.load(mask)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), mask)
    out = tmp_path / "out"
    assert run_cli(root, out, "--n-parcels", "20", "50", "--nprocs", "2") == 1
    assert not (out / "sub-02").exists()
    ours = {k: v for k, v in sha256_tree(demo8_out).items() if k.startswith("sub-01")}
    tree = sha256_tree(out)
    # the group quality table gathers the participants of this folder: sub-01 only
    tree.pop("group_quality.tsv")
    assert tree == ours
    assert "sub-02" not in (out / "group_quality.tsv").read_text()
    err = capsys.readouterr().err
    assert err.count("desc-brain_mask.nii.gz: mask is empty") == 1
    assert "1 unit failed: sub-02 (see above)" in err


def _exit_on_two(value: int, handshake: Path, progress) -> int:
    """Task 2 kills its worker once task 1 has returned (task 1 leaves a file)."""
    import time

    if value == 2:
        while not handshake.exists():
            time.sleep(0.05)
        time.sleep(1.0)  # let task 1's result reach the main process
        os._exit(1)
    progress.run_done(f"value {value}")
    handshake.touch()
    return value * 10


class _Collect:
    def __init__(self):
        self.messages = []

    def run_done(self, message):
        self.messages.append(message)


def test_a_worker_that_dies_fails_only_its_own_tasks(tmp_path):
    progress = _Collect()
    done = tmp_path / "task1-done"
    results = map_units(_exit_on_two, [(1, done), (2, done)],
                        WorkerPlan(workers=2, threads=1), progress)
    assert results[0] == 10
    assert isinstance(results[1], WorkerDied) and "out of memory?" in str(results[1])
    assert progress.messages == ["value 1"]


# --------------------------------------------------------------------------- --print-slurm
def test_processing_options_round_trip():
    parser = build_parser()
    argv = ["/d", "/o", "participant", "--n-parcels", "20", "50", "--no-detrend",
            "--derivatives", "/a", "--derivatives", "/b", "-vv", "--fd-threshold", "0.3",
            "--participant-label", "01", "--nprocs", "4", "--method", "kmeans",
            "--kmeans-n-init", "2", "--no-cache", "--cache-limit-gb", "5",
            "--mask-strategy", "epi", "--mask-args", '{"opening": 1}', "--mask", "/m.nii.gz",
            "--target-affine", "4,0,0,0,4,0,0,0,4"]
    args = parser.parse_args(argv)
    words = processing_options(args, parser)
    assert "--participant-label" not in words and "--nprocs" not in words
    again = parser.parse_args(["/d", "/o", "participant", "--participant-label", "01",
                               "--nprocs", "4", *words])
    assert vars(again) == vars(args)


def test_print_slurm_script_runs_one_participant_per_task(demo8, demo8_out, tmp_path,
                                                          capsys):
    out, db = tmp_path / "out", tmp_path / "db"
    code = run_cli(demo8.root, out, "--n-parcels", "20", "50", "--bids-database-dir", db,
                   "--mem-gb", "2", "--print-slurm")
    script = capsys.readouterr().out
    assert code == 0
    assert not out.exists()  # printing writes no output
    assert list(db.glob("*/layout_index.sqlite"))  # the database was built once, here
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --mem=2G" in lines and "#SBATCH --cpus-per-task=1" in lines
    assert "LABELS=(01 02)" in lines
    assert "jid=$(sbatch --parsable --array=0-1 THIS_SCRIPT)" in script
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    # task 1 of the array, run by bash as slurmd would (no SLURM here: scripts/slurm_test.sh)
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_CPUS_PER_TASK": "1"}
    proc = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "in 1 unit (sub-02)" in proc.stderr
    assert "indexing" not in proc.stderr  # reused the database
    expected = {k: v for k, v in sha256_tree(demo8_out).items() if k.startswith("sub-02")}
    tree = sha256_tree(out)
    tree.pop("group_quality.tsv")  # this folder's participants only (sub-02)
    assert tree == expected
