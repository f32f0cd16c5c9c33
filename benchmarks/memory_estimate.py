"""Measured peak memory vs the ``--mem-gb`` estimate (bids_parcellate.runtime.resources).

    python benchmarks/memory_estimate.py [--workdir DIR] [--resolutions 8 4 2]

Generates demo datasets (one participant; 1 and 3 runs of 150 volumes at each
resolution, 1 run of 100 volumes at 2 mm), runs the participant level under
``/usr/bin/time -v`` with ward and kmeans, and prints the peak resident memory next to
the estimate that ``--mem-gb`` is checked against. The estimate should stay above every
measurement (ratio > 1) without being far above it (ratio < 1.5).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bids_parcellate.demo import make_demo_dataset


def peak_rss_gb(command: list[str]) -> float:
    proc = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-2000:])
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1])
    return kb * 1024 / 1e9


def logged_estimate_gb(out: Path) -> float:
    """The estimate the run itself made (and would check --mem-gb against)."""
    log = max((out / "logs").glob("participant-*.log"), key=lambda p: p.stat().st_mtime)
    return float(re.findall(r"estimated peak memory ([0-9.]+) GB", log.read_text())[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[8, 4])
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bp_mem_"))
    print(f"{'data':<22}{'method':<9}{'measured GB':>12}{'estimate GB':>12}{'ratio':>7}")
    for res in args.resolutions:
        volumes, runs = (100, (1,)) if res <= 2 else (150, (1, 2, 3))
        root = work / f"res{res}"
        if not (root / "dataset_description.json").is_file():
            make_demo_dataset(root, participants=("01",), runs=runs, resolution=res,
                              n_volumes=volumes, n_true_parcels=50, seed=0)
        selections = [["--run", "1"]] + ([["--run", "1", "2", "3"]] if len(runs) > 1 else [])
        for select in selections:
            for method in ("ward", "kmeans"):
                out = work / f"out{res}_{len(select) - 1}_{method}"
                cli = [sys.executable, "-m", "bids_parcellate", str(root), str(out),
                       "participant", "--n-parcels", "100", "--method", method,
                       "--overwrite", *select]
                measured = peak_rss_gb(cli)
                estimate = logged_estimate_gb(out)
                label = f"{res} mm, {len(select) - 1} run(s)"
                print(f"{label:<22}{method:<9}{measured:>12.3f}{estimate:>12.3f}"
                      f"{estimate / measured:>7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
