"""Peak memory of the group level with many vs few participants (the reduce streams).

    python benchmarks/group_memory.py [--work DIR] [--participants 40] [--few 5] \
        [--volumes 80] [--resolution 4] [--n-parcels 100 400] [--skip-nilearn]

Generates (once, cached in ``--work``) a demo dataset of ``--participants`` participants
with one run each and a shared ground truth with subject jitter, then runs, each in a
fresh process whose peak RSS (``ru_maxrss``) and wall time are recorded:

1. ``group`` on the first ``--few`` participants and on all of them in empty output
   folders: the summaries are missing, so the group level computes them (reading BOLD),
   then reduces, writes the atlas and the timeseries of every run;
2. ``group`` again on few and on all participants with the summaries present (the
   usual case after the participant level): the reduce opens no BOLD file;
3. nilearn's multi-subject ``Parcellations.fit(list_of_imgs)`` on the same few and all
   images (same method, first scale, smoothing, confounds; censored volumes dropped),
   for reference, with the ARI of both group parcellations to the shared truth.

Peak RSS is each child's own high-water mark (``VmHWM``). The target is a peak-RSS
ratio (all / few) of at most 1.2 for the group level. Prints a markdown table (and
writes it as JSON with ``--json FILE``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM``).

    ``ru_maxrss`` is not used: Linux carries it over ``fork`` + ``exec``, so a child
    started by a process that already holds 300 MB reports at least that.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_group(argv: list[str]) -> None:
    from bids_parcellate.cli import main

    tic = time.monotonic()
    code = main(argv)
    print(json.dumps({"rc": code, "wall_s": round(time.monotonic() - tic, 2),
                      "peak_rss_mb": _peak_rss_mb()}))


def _child_nilearn(argv: list[str]) -> None:
    import warnings

    import nibabel as nib
    from nilearn.image import index_img
    from nilearn.interfaces.fmriprep import load_confounds_strategy
    from nilearn.regions import Parcellations

    out, mask, n_parcels, *bolds = argv
    tic = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imgs, confounds = [], []
        for bold in bolds:
            conf, sample_mask = load_confounds_strategy(bold, denoise_strategy="simple")
            imgs.append(index_img(nib.load(bold), sample_mask))
            confounds.append(conf.to_numpy()[sample_mask])
        est = Parcellations(method="ward", n_parcels=int(n_parcels), mask=mask,
                            smoothing_fwhm=4.0, standardize="zscore_sample", detrend=True,
                            t_r=2.0, random_state=0, n_jobs=1)
        est.fit(imgs, confounds=confounds)
    est.labels_img_.to_filename(out)
    print(json.dumps({"rc": 0, "wall_s": round(time.monotonic() - tic, 2),
                      "peak_rss_mb": _peak_rss_mb()}))


def _measure(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"benchmark step failed: {' '.join(args[:4])}")
    result = json.loads(lines[-1])
    if result["rc"] != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"bids_parcellate exited {result['rc']}")
    return result


def _dataset(work: Path, n: int, volumes: int, resolution: int):
    import hashlib
    import inspect

    from bids_parcellate import demo

    root = work / "bids"
    params = {"participants": n, "volumes": volumes, "resolution": resolution, "jitter": 0.2,
              "n_true_parcels": 100, "seed": 0,  # and the generator's code:
              "generator": hashlib.sha256(inspect.getsource(demo).encode()).hexdigest()[:16]}
    marker = work / "dataset.json"
    subjects = [f"{i:02d}" for i in range(1, n + 1)]
    if not (marker.is_file() and json.loads(marker.read_text()) == params):
        shutil.rmtree(root, ignore_errors=True)
        marker.unlink(missing_ok=True)
        tic = time.monotonic()
        print(f"generating {n} participants at {resolution} mm ...", file=sys.stderr)
        demo.make_demo_dataset(root, participants=subjects, runs=(1,), n_volumes=volumes,
                               resolution=resolution, n_true_parcels=100, jitter=0.2,
                               seed=0)
        marker.write_text(json.dumps(params))
        print(f"generated in {time.monotonic() - tic:.0f} s", file=sys.stderr)
    return root, subjects


def _ari(labels: Path, truth: Path) -> float:
    import nibabel as nib
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    t = np.asarray(nib.load(truth).dataobj)
    found = np.asarray(nib.load(labels).dataobj)
    inside = t > 0
    return round(float(adjusted_rand_score(t[inside], found[inside])), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bids_parcellate_bench_group"))
    parser.add_argument("--participants", type=int, default=40)
    parser.add_argument("--few", type=int, default=5)
    parser.add_argument("--volumes", type=int, default=80)
    parser.add_argument("--resolution", type=int, default=4)
    parser.add_argument("--n-parcels", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--skip-nilearn", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    root, subjects = _dataset(work, args.participants, args.volumes, args.resolution)
    truth = next((root / "sourcedata" / "ground_truth").glob("space-*_desc-truth_dseg.nii.gz"))
    scales = [str(n) for n in args.n_parcels]
    few = subjects[:args.few]
    rows = []

    def group(label: str, out: Path, participants: list[str]) -> None:
        argv = [str(root), str(out), "group", "--n-parcels", *scales,
                "--participant-label", *participants]
        result = _measure(["_child_group", *argv])
        atlas = next(out.glob(f"tpl-*/*_scale-{scales[0]}_dseg.nii.gz"))
        result.update(step=label, n=len(participants), ari=_ari(atlas, truth))
        rows.append(result)
        print(json.dumps(result), file=sys.stderr)

    for name, participants in (("few", few), ("all", subjects)):
        out = work / f"out_{name}"
        shutil.rmtree(out, ignore_errors=True)
        group("group, computing summaries", out, participants)
    for participants in (few, subjects):
        group("group, summaries present", work / "out_all", participants)
    if not args.skip_nilearn:
        mask = next((root / "derivatives" / "fmriprep").glob(
            "sub-*/func/*_desc-brain_mask.nii.gz"))
        for participants in (few, subjects):
            bolds = [str(p) for s in participants for p in sorted(
                (root / "derivatives" / "fmriprep" / f"sub-{s}" / "func").glob(
                    "*_desc-preproc_bold.nii.gz"))]
            labels = work / f"nilearn_{len(participants)}.nii.gz"
            result = _measure(["_child_nilearn", str(labels), str(mask), scales[0], *bolds])
            result.update(step="nilearn Parcellations.fit(list)", n=len(participants),
                          ari=_ari(labels, truth))
            rows.append(result)
            print(json.dumps(result), file=sys.stderr)

    print(f"\n{args.participants} vs {args.few} participants, 1 run x {args.volumes} volumes "
          f"at {args.resolution} mm, scales {' '.join(scales)} (ARI at scale {scales[0]} "
          "to the shared truth)\n")
    print("| step | participants | peak RSS (MB) | wall (s) | ARI |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['step']} | {row['n']} | {row['peak_rss_mb']:.0f} | {row['wall_s']:.1f} "
              f"| {row['ari']:.3f} |")
    print()
    steps = dict.fromkeys(row["step"] for row in rows)
    for step in steps:
        by_n = {row["n"]: row for row in rows if row["step"] == step}
        ratio = by_n[len(subjects)]["peak_rss_mb"] / by_n[len(few)]["peak_rss_mb"]
        print(f"- {step}: peak RSS ratio {len(subjects)}/{len(few)} = {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child_group":
        _child_group(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_child_nilearn":
        _child_nilearn(sys.argv[2:])
    else:
        main()
