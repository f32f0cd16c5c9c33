"""Time and peak memory of the region route (dictlearning / canica) against nilearn.

    python benchmarks/regions.py [--data DIR] [--work DIR] [--method dictlearning canica]
        [--n-maps 20] [--json FILE]

``--data`` is an fMRIPrep-like dataset with one participant (default: the real 4 mm
studyforrest run in ../shared/data/studyforrest). Each measurement runs in a fresh
process whose wall time and peak RSS (``VmHWM``) are recorded:

1. ours: ``bids_parcellate DATA OUT participant --method M --n-maps K`` (reads the BOLD
   once, denoises, decomposes, extracts regions, writes maps, dseg and timeseries);
2. nilearn, as its user guide does it: ``DictLearning`` / ``CanICA`` fitted on the BOLD
   file with the same confounds (``load_confounds_strategy``), mask, smoothing and
   alpha, then ``RegionExtractor`` (same options) and its ``transform`` on the same file.

Prints a markdown table with the ratios ours / nilearn and the number of regions each
found.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDYFORREST = ROOT.parent / "shared" / "data" / "studyforrest"


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child_ours(data: str, out: str, method: str, n_maps: int) -> None:
    import nibabel as nib
    import numpy as np

    from bids_parcellate.cli import main

    tic = time.monotonic()
    code = main([data, out, "participant", "--method", method, "--n-maps", str(n_maps),
                 "-w", str(Path(out).parent / "work")])
    wall = time.monotonic() - tic
    dseg = next(Path(out).rglob(f"*_seg-{method}_scale-{n_maps}_dseg.nii.gz"))
    regions = int(np.asarray(nib.load(dseg).dataobj).max())
    print(json.dumps({"rc": code, "wall_s": round(wall, 2), "peak_rss_mb": _peak_rss_mb(),
                      "regions": regions}))


def _child_nilearn(data: str, method: str, n_maps: int) -> None:
    import warnings

    import nibabel as nib
    import numpy as np
    from nilearn.decomposition import CanICA, DictLearning
    from nilearn.interfaces.fmriprep import load_confounds_strategy
    from nilearn.regions import RegionExtractor

    from bids_parcellate.learn.regions import auto_alpha

    warnings.simplefilter("ignore")
    bold = next(Path(data).rglob("*_desc-preproc_bold.nii.gz"))
    mask = next(Path(data).rglob("*_desc-brain_mask.nii.gz"))
    tr = json.loads(bold.with_name(bold.name.replace(".nii.gz", ".json")).read_text())[
        "RepetitionTime"]
    tic = time.monotonic()
    confounds, sample_mask = load_confounds_strategy(str(bold), denoise_strategy="simple")
    n_volumes = len(sample_mask) if sample_mask is not None else nib.load(bold).shape[3]
    common = dict(n_components=n_maps, mask=str(mask), smoothing_fwhm=4.0,
                  standardize="zscore_sample", detrend=True, t_r=tr, random_state=0)
    if method == "dictlearning":
        estimator = DictLearning(alpha=auto_alpha(n_volumes), **common)
    else:
        estimator = CanICA(**common)
    estimator.fit(str(bold), confounds=[confounds])
    extractor = RegionExtractor(estimator.components_img_, mask_img=str(mask),
                                threshold=0.5, thresholding_strategy="ratio_n_voxels",
                                extractor="local_regions", min_region_size=1350,
                                standardize="zscore_sample", detrend=True, t_r=tr)
    extractor.fit()
    extractor.transform(str(bold), confounds=confounds, sample_mask=sample_mask)
    wall = time.monotonic() - tic
    print(json.dumps({"rc": 0, "wall_s": round(wall, 2), "peak_rss_mb": _peak_rss_mb(),
                      "regions": int(np.asarray(extractor.index_).size)}))


def _run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args],
                          capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind, *rest = argv[1:]
        if kind == "ours":
            _child_ours(rest[0], rest[1], rest[2], int(rest[3]))
        else:
            _child_nilearn(rest[0], rest[1], int(rest[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=STUDYFORREST)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--method", nargs="+", default=["dictlearning", "canica"])
    parser.add_argument("--n-maps", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_regions_"))
    rows = []
    for method in args.method:
        out = work / f"out_{method}"
        ours = _run_child("ours", str(args.data), str(out), method, str(args.n_maps))
        ref = _run_child("nilearn", str(args.data), method, str(args.n_maps))
        rows.append({"method": method, "ours": ours, "nilearn": ref})
    print("| method | ours s | nilearn s | time ratio | ours MB | nilearn MB | memory ratio "
          "| regions ours / nilearn |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, n = r["ours"], r["nilearn"]
        print(f"| {r['method']} | {o['wall_s']:.1f} | {n['wall_s']:.1f} | "
              f"{o['wall_s'] / n['wall_s']:.2f} | {o['peak_rss_mb']:.0f} | "
              f"{n['peak_rss_mb']:.0f} | {o['peak_rss_mb'] / n['peak_rss_mb']:.2f} | "
              f"{o['regions']} / {n['regions']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
