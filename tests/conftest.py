"""Shared fixtures: generated fMRIPrep-like datasets with a known ground truth."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bids_parcellate.cli import main
from bids_parcellate.demo import make_demo_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "studyforrest"


@pytest.fixture(autouse=True)
def _propagating_logger():
    """pytest's ``caplog`` listens on the root logger; a command line run in-process
    earlier in the same worker stops the package logger's propagation (its own
    handlers). Each test starts with propagation on and the CLI's setting restored."""
    logger = logging.getLogger("bids_parcellate")
    before = logger.propagate
    logger.propagate = True
    yield
    logger.propagate = before


@pytest.fixture(scope="session")
def demo8(tmp_path_factory):
    """Two participants x two runs at 8 mm (3,666 voxels), raw + derivatives layout."""
    root = tmp_path_factory.mktemp("demo8") / "bids"
    return make_demo_dataset(root, participants=("01", "02"), runs=(1, 2), resolution=8,
                             n_volumes=80, n_true_parcels=20, seed=0)


@pytest.fixture(scope="session")
def demo8_clean(tmp_path_factory):
    """One participant x two runs at 8 mm with a high signal-to-noise ratio (snr 1.0).

    At the default snr (0.4) average and complete linkage collapse into one giant cluster
    (ARI ~0.06), which says nothing about whether they are wired correctly; at snr 1.0
    every method separates the parcels, so a broken method shows.
    """
    root = tmp_path_factory.mktemp("demo8_clean") / "bids"
    return make_demo_dataset(root, participants=("01",), runs=(1, 2), resolution=8,
                             n_volumes=80, n_true_parcels=20, seed=1, snr=1.0)


@pytest.fixture(scope="session")
def demo8_out(demo8, tmp_path_factory):
    """Participant level (ward, scales 20 and 50) on :func:`demo8`."""
    out = tmp_path_factory.mktemp("demo8_out") / "out"
    code = run_cli(demo8.root, out, "--n-parcels", "20", "50")
    assert code == 0
    return out


def run_cli(bids_dir, out, *args, level="participant"):
    """Run the CLI in-process; returns the exit code."""
    return main([str(bids_dir), str(out), level, *map(str, args)])


def sha256_tree(root: Path, patterns=("*.nii.gz", "*.tsv")) -> dict[str, str]:
    """sha256 of every file matching ``patterns`` under ``root`` (relative paths)."""
    out = {}
    for pattern in patterns:
        for path in sorted(root.rglob(pattern)):
            if "logs" in path.relative_to(root).parts:
                continue
            out[path.relative_to(root).as_posix()] = hashlib.sha256(
                path.read_bytes()).hexdigest()
    return out


def find_tool(name: str) -> str | None:
    """A command installed beside the running interpreter (the test environment's
    ``bin/``, whether or not it is activated), else the first one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return shutil.which(name)


def validate(path: Path) -> dict:
    """Run bids-validator-deno on ``path``; return its JSON report (exit code included)."""
    exe = find_tool("bids-validator-deno")
    assert exe, "bids-validator-deno is not installed (pip install bids-validator-deno)"
    proc = subprocess.run([exe, "--no-color", "--format", "json", str(path)],
                          capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    report["returncode"] = proc.returncode
    report["errors"] = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    return report
