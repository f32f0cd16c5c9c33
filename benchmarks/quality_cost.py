"""Cost of the quality figures against the rest of the participant level.

Runs the participant level in-process on (a) the real studyforrest run (4 mm, 156
volumes; ``../shared/data/studyforrest``) and (b) a generated 4 mm dataset (one
participant, two runs), several times, and prints the median wall time of every stage
and the ratio ``quality / (everything else)`` -- the issue's target is below 0.5 with the
default settings. A command, not a test::

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
from bids_parcellate.inputs import collect_runs
from bids_parcellate.participant import run_participant_level

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
            print(f"  CPU:  quality / rest = {stages['cpu_quality']:.2f} / {cpu_rest:.2f} s "
                  f"= {stages['cpu_quality'] / cpu_rest:.2f}; without the split-half fits "
                  f"(quality.fixed_figures alone) {stages['cpu_fixed']:.2f} s = "
                  f"{stages['cpu_fixed'] / cpu_rest:.2f}")


if __name__ == "__main__":
    main()
