"""pybids indexing at 1,000 participants: full index, one participant fresh and reused.

    python benchmarks/indexing.py [--work DIR] [--participants 1000] [--runs 2]
                                  [--label 0500] [--repeat 3] [--json out.json]

Builds (once, cached in ``--work``) an fMRIPrep 23-style derivatives tree with real
file names and empty placeholder files (the BOLD sidecars are real JSON with
``RepetitionTime``): per participant the usual ``anat/`` outputs (T1w, masks, tissue
probabilities, transforms, surfaces), ``figures/``, ``log/`` and per run of
``task-rest`` every ``func/`` output of fMRIPrep (boldrefs, masks, preprocessed BOLD in
two volumetric spaces, confounds, transforms, fsaverage GIFTI and fsLR CIFTI BOLD,
aseg/aparc segmentations). Then, each in a fresh Python process (interpreter start and
imports included in the process wall time):

1. ``full index``: every participant indexed into a new ``--bids-database-dir`` (what the
   job that prepares an array does once);
2. ``one participant, fresh index``: ``--participant-label LABEL`` with a private
   database under the work directory (a job without ``--bids-database-dir``);
3. ``one participant, reused database``: ``--participant-label LABEL`` with the
   database of step 1 (every array task);
4. ``all participants, reused database``: the query of every run (what
   ``--print-slurm`` and the group level do).

Steps 2-4 run :func:`bids_parcellate.inputs.query.collect_runs`, exactly what the participant
level does before its first unit starts. Targets: step 3 within 5 s of process start;
step 1 within 60 s on 2 cores. Prints a markdown table (and JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SPACE = "MNI152NLin2009cAsym"
SOURCE_BOLD_JSON = {"RepetitionTime": 2.0, "SkullStripped": False, "TaskName": "rest",
                    "StartTime": 0.0}

ANAT = [
    "desc-preproc_T1w.nii.gz", "desc-preproc_T1w.json", "desc-brain_mask.nii.gz",
    "desc-brain_mask.json", "dseg.nii.gz", "label-GM_probseg.nii.gz",
    "label-WM_probseg.nii.gz", "label-CSF_probseg.nii.gz",
    "desc-aparcaseg_dseg.nii.gz", "desc-aseg_dseg.nii.gz",
    f"space-{SPACE}_res-2_desc-preproc_T1w.nii.gz",
    f"space-{SPACE}_res-2_desc-preproc_T1w.json",
    f"space-{SPACE}_res-2_desc-brain_mask.nii.gz",
    f"space-{SPACE}_res-2_desc-brain_mask.json",
    f"space-{SPACE}_res-2_dseg.nii.gz",
    *(f"space-{SPACE}_res-2_label-{t}_probseg.nii.gz" for t in ("GM", "WM", "CSF")),
    f"from-{SPACE}_to-T1w_mode-image_xfm.h5", f"from-T1w_to-{SPACE}_mode-image_xfm.h5",
    "from-T1w_to-fsnative_mode-image_xfm.txt", "from-fsnative_to-T1w_mode-image_xfm.txt",
    "from-orig_to-T1w_mode-image_xfm.txt",
    *(f"hemi-{h}_{s}.surf.gii" for h in "LR"
      for s in ("white", "pial", "midthickness", "inflated", "sphere", "desc-reg_sphere",
                "space-fsLR_desc-reg_sphere", "space-fsLR_desc-msmsulc_sphere")),
    *(f"hemi-{h}_{m}.shape.gii" for h in "LR" for m in ("thickness", "sulc", "curv")),
    *(f"space-fsLR_den-91k_{m}.dscalar.nii" for m in ("thickness", "sulc", "curv")),
]

FUNC_PER_RUN = [
    "desc-confounds_timeseries.tsv", "desc-confounds_timeseries.json",
    "desc-coreg_boldref.nii.gz", "desc-coreg_boldref.json",
    "desc-hmc_boldref.nii.gz", "desc-hmc_boldref.json",
    "desc-brain_mask.nii.gz", "desc-brain_mask.json",
    "from-boldref_to-T1w_mode-image_desc-coreg_xfm.txt",
    "from-boldref_to-T1w_mode-image_desc-coreg_xfm.json",
    "from-orig_to-boldref_mode-image_desc-hmc_xfm.txt",
    "from-orig_to-boldref_mode-image_desc-hmc_xfm.json",
    *(f"space-{sp}_{f}" for sp in ("T1w", f"{SPACE}_res-2")
      for f in ("boldref.nii.gz", "boldref.json", "desc-brain_mask.nii.gz",
                "desc-brain_mask.json", "desc-preproc_bold.nii.gz",
                "desc-preproc_bold.json", "desc-aparcaseg_dseg.nii.gz",
                "desc-aseg_dseg.nii.gz")),
    *(f"hemi-{h}_space-fsaverage5_bold.func.gii" for h in "LR"),
    *(f"hemi-{h}_space-fsaverage5_bold.json" for h in "LR"),
    "space-fsLR_den-91k_bold.dtseries.nii", "space-fsLR_den-91k_bold.json",
]

FIGURES = ["desc-about_T1w.html", "desc-summary_T1w.html", "desc-conform_T1w.html",
           "dseg.svg", f"space-{SPACE}_T1w.svg", "desc-reconall_T1w.svg"]
FIGURES_PER_RUN = ["desc-summary_bold.html", "desc-validation_bold.html",
                   "desc-coreg_bold.svg", "desc-rois_bold.svg", "desc-carpetplot_bold.svg",
                   "desc-confoundcorr_bold.svg", "desc-compcorvar_bold.svg"]


def participant_labels(n: int) -> list[str]:
    width = max(4, len(str(n)))
    return [f"{i:0{width}d}" for i in range(1, n + 1)]


def build_tree(root: Path, n_participants: int, n_runs: int) -> int:
    """Write the derivatives tree; return the number of files."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "fMRIPrep - indexing benchmark", "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.1"}]}))
    for name in ("desc-aparcaseg_dseg.tsv", "desc-aseg_dseg.tsv"):
        (root / name).touch(exist_ok=True)
    (root / "logs").mkdir()
    (root / "logs" / "CITATION.md").touch()
    bold_json = json.dumps(SOURCE_BOLD_JSON)
    count = 4
    for label in participant_labels(n_participants):
        sub = f"sub-{label}"
        (root / f"{sub}.html").touch()
        for folder in ("anat", "func", "figures", "log/20240101-000000_abcd"):
            (root / sub / folder).mkdir(parents=True)
        (root / sub / "log/20240101-000000_abcd/fmriprep.toml").touch()
        for name in ANAT:
            (root / sub / "anat" / f"{sub}_{name}").touch()
        for name in FIGURES:
            (root / sub / "figures" / f"{sub}_{name}").touch()
        count += 2 + len(ANAT) + len(FIGURES)
        for run in range(1, n_runs + 1):
            source = f"{sub}_task-rest_run-{run}"
            for name in FUNC_PER_RUN:
                path = root / sub / "func" / f"{source}_{name}"
                if name.endswith("desc-preproc_bold.json"):
                    path.write_text(bold_json)
                else:
                    path.touch()
            for name in FIGURES_PER_RUN:
                (root / sub / "figures" / f"{source}_{name}").touch()
            count += len(FUNC_PER_RUN) + len(FIGURES_PER_RUN)
    return count


# --------------------------------------------------------------------------- children
def _child(argv: list[str]) -> None:
    """Time one step in this (fresh) process; print a JSON line."""
    step, root, out, db, work, label = argv
    start = time.monotonic()
    cpu_start = time.process_time()
    from bids_parcellate.config import Config
    from bids_parcellate.inputs.query import collect_runs, index_layout

    imported = time.monotonic()
    cpu_imported = time.process_time()
    kwargs = {"bids_dir": Path(root), "output_dir": Path(out), "work_dir": Path(work)}
    if step == "full":
        config = Config(**kwargs, bids_database_dir=Path(db))
        layout = index_layout(config, Path(root))
        result = {"participants": len(layout.get_subjects())}
    else:
        config = Config(**kwargs, bids_database_dir=Path(db) if db != "-" else None,
                        participant_label=(label,) if label != "-" else ())
        selection = collect_runs(config)
        result = {"runs": len(selection.runs), "units": len(selection.units())}
    done = time.monotonic()
    print(json.dumps({**result, "import_s": round(imported - start, 3),
                      "step_s": round(done - imported, 3),
                      "step_cpu_s": round(time.process_time() - cpu_imported, 3),
                      "import_cpu_s": round(cpu_imported - cpu_start, 3)}))


def _run_child(*argv: str) -> dict:
    tic = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--child", *argv],
                          capture_output=True, text=True)
    wall = time.monotonic() - tic
    if proc.returncode:
        sys.exit(f"step {argv[0]} failed:\n{proc.stderr}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_s": round(wall, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_indexing"))
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--label", default="0500", help="the participant of steps 2 and 3")
    parser.add_argument("--repeat", type=int, default=3,
                        help="repetitions of the one-participant steps (median reported)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    root = args.work / f"fmriprep-{args.participants}x{args.runs}"
    if not (root / "dataset_description.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        tic = time.monotonic()
        n_files = build_tree(root, args.participants, args.runs)
        print(f"built {root}: {n_files} files in {time.monotonic() - tic:.1f} s",
              file=sys.stderr)
    n_files = sum(len(f) for _, _, f in os.walk(root))
    out = args.work / "out"
    rows = []

    def record(name: str, result: dict) -> None:
        rows.append({"step": name, **result})
        print(f"{name}: {json.dumps(result)}", file=sys.stderr)

    db = args.work / "db"
    shutil.rmtree(db, ignore_errors=True)
    record("full index (all participants)",
           _run_child("full", str(root), str(out), str(db), str(args.work / "w0"), "-"))

    def median_of(step_args: list[str], fresh_work: bool) -> dict:
        results = []
        for i in range(args.repeat):
            work = args.work / f"w{i + 1}"
            if fresh_work:
                shutil.rmtree(work, ignore_errors=True)
            results.append(_run_child("query", str(root), str(out), *step_args[:1],
                                      str(work), *step_args[1:]))
        results.sort(key=lambda r: r["process_s"])
        return results[len(results) // 2]

    record(f"one participant, fresh index (sub-{args.label})",
           median_of(["-", args.label], fresh_work=True))
    record(f"one participant, reused database (sub-{args.label})",
           median_of([str(db), args.label], fresh_work=False))
    record("all participants, reused database", median_of([str(db), "-"], fresh_work=False))

    load = os.getloadavg()[0]
    print(f"\n{args.participants} participants x {args.runs} runs, {n_files} files; "
          f"{os.cpu_count()} CPUs, load average {load:.1f}\n")
    print("| step | found | index + query: wall (s) | CPU (s) | process wall, imports "
          "included (s) |")
    print("|---|---|---|---|---|")
    for row in rows:
        found = (f"{row['runs']} runs" if "runs" in row
                 else f"{row['participants']} participants")
        print(f"| {row['step']} | {found} | {row['step_s']:.2f} | {row['step_cpu_s']:.2f} | "
              f"{row['process_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"participants": args.participants,
                                         "runs": args.runs, "files": n_files,
                                         "load_average": load, "rows": rows}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
    else:
        main()
