"""Cost of the quality figures against the rest of the participant level.

Two measures. End to end: the participant-level command as a user runs it (a fresh
process: imports, pybids, every stage, outputs and report), with and without
``--no-quality``, alternating, medians; the cost is the difference over the time
without. In-process: the participant level run in-process, median wall time of every
stage and the ratio ``quality / (everything else)``. Both on (a) the real studyforrest
run (4 mm, 156 volumes; ``../shared/data/studyforrest``) and (b) a generated 4 mm
dataset (one participant, two runs). The issue's target: below 0.5 with the default
settings. A command, not a test::

    python benchmarks/quality_cost.py [--repeats 3] [--n-parcels 100 200 400] [--bootstrap B]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bids_parcellate import quality
from bids_parcellate.cli import build_parser, config_from_args
from bids_parcellate.demo import make_demo_dataset
from bids_parcellate.inputs.query import collect_runs
from bids_parcellate.pipeline import run_participant_level

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "studyforrest"


def one_run(bids: Path, out: Path, extra: list[str]) -> dict[str, float]:
    """Participant level once: stage wall times (s) of the first unit, and the CPU time
    of the process with and without the quality stage (``cpu_total``, ``cpu_quality``)."""
    args = build_parser().parse_args([str(bids), str(out), "participant", *extra])
    config = config_from_args(args, [])
    cpu = {"quality": 0.0, "fixed": 0.0}
    assess, fixed = quality.assess, quality.fixed_figures

    def timed(function, key):
        def wrapper(*a, **k):
            start = time.process_time()
            try:
                return function(*a, **k)
            finally:
                cpu[key] += time.process_time() - start
        return wrapper

    quality.assess = timed(assess, "quality")
    quality.fixed_figures = timed(fixed, "fixed")
    try:
        cpu_start, tic = time.process_time(), time.monotonic()
        selection = collect_runs(config)
        collect = time.monotonic() - tic
        result = run_participant_level(config, selection)[0]
        cpu_total = time.process_time() - cpu_start
    finally:
        quality.assess, quality.fixed_figures = assess, fixed
    assert not result.error, result.error
    return {"collect": collect, **result.timings, "cpu_total": cpu_total,
            "cpu_quality": cpu["quality"], "cpu_fixed": cpu["fixed"]}


def end_to_end(bids: Path, out: Path, extra: list[str], repeats: int) -> tuple[float, float]:
    """Median wall times (s) of the participant-level command with and without quality."""
    import shutil
    import subprocess
    import sys

    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(repeats):
        for with_quality in (True, False):
            target = out / f"cli-{i}-{with_quality}"
            shutil.rmtree(target, ignore_errors=True)
            cmd = [sys.executable, "-m", "bids_parcellate", str(bids), str(target),
                   "participant", "-w", str(out / f"work-{i}-{with_quality}"), *extra,
                   *([] if with_quality else ["--no-quality"])]
            tic = time.monotonic()
            subprocess.run(cmd, check=True, capture_output=True)
            times[with_quality].append(time.monotonic() - tic)
    return statistics.median(times[True]), statistics.median(times[False])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-parcels", nargs="+", default=["100", "200", "400"])
    parser.add_argument("--bootstrap", default="0")
    opts = parser.parse_args()
    extra = ["--n-parcels", *opts.n_parcels, "--bootstrap", opts.bootstrap]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        datasets = {}
        if SHARED.is_dir():
            datasets["studyforrest (real, 1 run x 156 vol, 4 mm)"] = SHARED
        demo = make_demo_dataset(tmp / "demo4", participants=("01",), runs=(1, 2),
                                 resolution=4, n_volumes=150, n_true_parcels=200, snr=0.3,
                                 seed=0)
        datasets["generated (2 runs x 150 vol, 4 mm, snr 0.3)"] = demo.root
        for name, bids in datasets.items():
            runs = [one_run(bids, tmp / f"out{i}", extra) for i in range(opts.repeats)]
            stages = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            wall = {k: v for k, v in stages.items() if not k.startswith("cpu_")}
            rest = sum(v for k, v in wall.items() if k != "quality")
            cpu_rest = stages["cpu_total"] - stages["cpu_quality"]
            print(f"{name}: median of {opts.repeats}, wall: "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in wall.items()))
            print(f"  wall: quality / rest of the participant level = "
                  f"{wall['quality']:.2f} / {rest:.2f} s = {wall['quality'] / rest:.2f}; "
                  f"quality / parcellate stage = {wall['quality'] / wall['parcellate']:.2f}")
            on, off = end_to_end(bids, tmp / "cli", extra, opts.repeats)
            print(f"  end to end (command wall time): {on:.2f} s with, {off:.2f} s without "
                  f"the quality figures: cost {(on - off) / off:.2f} of the time without")
            print(f"  CPU:  quality / rest = {stages['cpu_quality']:.2f} / {cpu_rest:.2f} s "
                  f"= {stages['cpu_quality'] / cpu_rest:.2f}; without the split-half fits "
                  f"(quality.fixed_figures alone) {stages['cpu_fixed']:.2f} s = "
                  f"{stages['cpu_fixed'] / cpu_rest:.2f}")


if __name__ == "__main__":
    main()
