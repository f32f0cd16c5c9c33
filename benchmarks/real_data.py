"""Feature weighting and smoothing against nilearn's ``Parcellations`` on real data (issue 17).

For each dataset, the unit's cleaned runs (the pipeline's own query, mask and denoising
stages with their defaults) are split in two halves as the quality figures split them
(:func:`bids_parcellate.quality.split_halves`: one run split in time at its middle with
:data:`~bids_parcellate.quality.GAP_SECONDS` left out around the cut; several runs dealt
alternately, runs 1+3 against 2+4). Each half is parcellated separately by

- **nilearn**: ``Parcellations(method, n_parcels, mask=the unit's mask,
  smoothing_fwhm=F, standardize="zscore_sample", detrend=False, random_state=0)`` (its
  200 components are fixed, as our default ``--n-components``) fit on the half's cleaned
  segments given as 4D images (one per segment). Both sides get the same cleaned data,
  so only the features and the clustering differ (the cleaned runs are already
  detrended, hence ``detrend=False``);
- **ours**: :func:`~bids_parcellate.learn.features.build_features` with
  ``weighting=alpha`` (features U·S^alpha; 1 is the product's U·S, 0 whitens as nilearn
  does) after smoothing F within the mask, then
  :func:`~bids_parcellate.learn.methods.parcellate` (seed 0, 200 components: the
  defaults).

and scored as :func:`bids_parcellate.quality.assess` scores it: split-half ARI between
the two halves' labels, held-out compression R² (``quality.Scorer(other half).accuracy``,
mean of both directions, on the cleaned unsmoothed data); for generated data also the
ARI to the generator's true parcels (mean over the two halves' labels).

Datasets (all on the 4 mm MNI grid):

- ``studyforrest``: ``../shared/data/studyforrest``, one real task run of 156 volumes;
- ``decnef``: ``../shared/data/decnef-training``, one real run of 298 volumes with real
  motion confounds;
- ``generated``: :func:`bids_parcellate.demo.make_demo_dataset`, four runs of
  ``--n-volumes`` volumes, ``--n-true`` true parcels, SNR ``--snr`` (voxel noise
  ``1/snr`` times the parcel signal, plus motion, drifts, physiological confounds).

Part 1 is Ward at ``--scales`` for every alpha in ``--alphas`` and F in ``--fwhms``, with
nilearn's Ward at every F. Part 2 (``--candidates alpha:F ...``) compares kmeans,
hierarchical_kmeans and rena (``--other-methods``) at ``--other-scales`` with nilearn's same
method at the same F. Prints one markdown table per dataset and part and writes every
figure to ``benchmarks/results/real_data.tsv`` (``--out``); ``--from-tsv PATH`` prints the
tables of such a file again without measuring.

A command, not a test (7.5 minutes of one CPU here with the defaults and three candidates)::

    python benchmarks/real_data.py [--datasets studyforrest decnef generated] \\
        [--alphas 1 0.75 0.5 0.25 0] [--fwhms 4 6 8] [--candidates 0.5:6 0.5:8]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from consensus_gain import cleaned_unit  # noqa: E402

from bids_parcellate import quality  # noqa: E402
from bids_parcellate.demo import make_demo_dataset  # noqa: E402
from bids_parcellate.learn.features import build_features, prepare_runs  # noqa: E402
from bids_parcellate.learn.methods import parcellate  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = {"studyforrest": DATA / "studyforrest", "decnef": DATA / "decnef-training"}
N_COMPONENTS = 200
SEED = 0
COLUMNS = ["dataset", "method", "side", "alpha", "fwhm", "scale", "ari", "r2_heldout",
           "ari_truth", "n_found", "fit_s", "n_voxels", "split", "n_volumes_half1",
           "n_volumes_half2"]


class Unit:
    """A dataset's cleaned runs cut in halves, with the scorers of the halves."""

    def __init__(self, name, unit_mask, cleaned, truth=None):
        self.name, self.truth = name, truth
        self.mask, self.affine = unit_mask.mask, unit_mask.affine
        self.halves = quality.split_halves([c.data for c in cleaned],
                                           [c.sample_mask for c in cleaned],
                                           [c.run.tr for c in cleaned])
        self.sides = (self.halves.first, self.halves.second)
        self.scorers = tuple(quality.Scorer(h) for h in self.sides)
        self.n_voxels = int(self.mask.sum())
        self.tr = cleaned[0].run.tr
        print(f"\n{name}: {len(cleaned)} run(s) x {[c.data.shape[0] for c in cleaned]} kept "
              f"volumes, {self.n_voxels} voxels, split by {self.halves.kind}, halves of "
              f"{self.halves.n_volumes} volumes", flush=True)

    def figures(self, fits, scale):
        """ARI, held-out R², ARI to the truth of the two halves' labels at a scale, and the
        fewer parcels found by the two."""
        first, second = fits[0][scale], fits[1][scale]
        r2 = 0.5 * (self.scorers[1].accuracy(first) + self.scorers[0].accuracy(second))
        truth = (0.5 * (adjusted_rand_score(self.truth, first)
                        + adjusted_rand_score(self.truth, second))
                 if self.truth is not None else float("nan"))
        found = min(len(np.unique(first)), len(np.unique(second)))
        return adjusted_rand_score(first, second), r2, truth, found

    def images(self, segments):
        """4D images (one per segment) of cleaned (time x voxels) data on the unit's grid."""
        import nibabel as nib

        out = []
        for seg in segments:
            volume = np.zeros((*self.mask.shape, seg.shape[0]), dtype=np.float32)
            volume[self.mask] = seg.T
            img = nib.Nifti1Image(volume, self.affine)
            if self.tr:
                img.header.set_zooms((*img.header.get_zooms()[:3], self.tr))
            out.append(img)
        return out


def fit_nilearn(unit, method, scales, fwhm, cache):
    """nilearn ``Parcellations`` on each half: ``({scale: labels}, {scale: labels}), s``."""
    import nibabel as nib
    from nilearn.regions import Parcellations

    mask_img = nib.Nifti1Image(unit.mask.astype(np.uint8), unit.affine)
    fits, seconds = [], 0.0
    for segments in unit.sides:
        imgs = unit.images(segments)
        labels = {}
        for k in scales:
            tic = time.monotonic()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # memory: the Ward tree (computed in full below 0.02 x voxels clusters)
                # is reused across scales, as our one tree cut at every scale
                est = Parcellations(method=method, n_parcels=k, mask=mask_img,
                                    smoothing_fwhm=fwhm or None,
                                    standardize="zscore_sample", detrend=False,
                                    random_state=SEED,
                                    memory=cache, memory_level=1, n_jobs=1, verbose=0)
                est.fit(imgs)
            seconds += time.monotonic() - tic
            labels[k] = np.asarray(est.labels_img_.dataobj)[unit.mask].astype(np.int32)
        fits.append(labels)
    return fits, seconds


def fit_ours(unit, method, scales, prepared, alpha):
    """Ours on each half from its smoothed, z-scored segments: ``(fits, seconds)``."""
    fits, seconds = [], 0.0
    for runs in prepared:
        tic = time.monotonic()
        features = build_features([], unit.mask, unit.affine, 0.0, N_COMPONENTS,
                                  prepared=runs, weighting=alpha)
        fits.append(parcellate(features, unit.mask, method, scales, SEED,
                               warn_pieces=False))
        seconds += time.monotonic() - tic
    return fits, seconds


def prepare(unit, fwhm):
    return [prepare_runs(segments, unit.mask, unit.affine, fwhm) for segments in unit.sides]


def row(unit, method, side, alpha, fwhm, scale, figures, seconds):
    ari, r2, truth, found = figures
    n1, n2 = unit.halves.n_volumes
    return {"dataset": unit.name, "method": method, "side": side, "alpha": alpha,
            "fwhm": fwhm, "scale": scale, "ari": round(ari, 4), "r2_heldout": round(r2, 4),
            "ari_truth": "n/a" if np.isnan(truth) else round(truth, 4), "n_found": found,
            "fit_s": round(seconds, 2), "n_voxels": unit.n_voxels,
            "split": unit.halves.kind, "n_volumes_half1": n1, "n_volumes_half2": n2}


def run_unit(unit, opts, cache, rows):
    scales = [k for k in opts.scales if k < unit.n_voxels // 10]
    others = [k for k in opts.other_scales if k < unit.n_voxels // 10]
    for fwhm in opts.fwhms:
        fits, seconds = fit_nilearn(unit, "ward", scales, fwhm, cache)
        for k in scales:
            rows.append(row(unit, "ward", "nilearn", "n/a", fwhm, k, unit.figures(fits, k),
                            seconds))
        prepared = prepare(unit, fwhm)
        for alpha in opts.alphas:
            fits, seconds = fit_ours(unit, "ward", scales, prepared, alpha)
            for k in scales:
                rows.append(row(unit, "ward", "ours", alpha, fwhm, k, unit.figures(fits, k),
                                seconds))
        del prepared
        print(f"  ward, {fwhm:g} mm: done", flush=True)
    candidates = [tuple(map(float, c.split(":"))) for c in opts.candidates]
    for fwhm in sorted({f for _, f in candidates}):
        prepared = prepare(unit, fwhm)
        for method in opts.other_methods:
            fits, seconds = fit_nilearn(unit, method, others, fwhm, cache)
            for k in others:
                rows.append(row(unit, method, "nilearn", "n/a", fwhm, k,
                                unit.figures(fits, k), seconds))
            for alpha in sorted({a for a, f in candidates if f == fwhm}, reverse=True):
                fits, seconds = fit_ours(unit, method, others, prepared, alpha)
                for k in others:
                    rows.append(row(unit, method, "ours", alpha, fwhm, k,
                                    unit.figures(fits, k), seconds))
            print(f"  {method}, {fwhm:g} mm: done", flush=True)
        del prepared


def other_cell(r):
    found = "" if int(r["n_found"]) == int(r["scale"]) else f" [{r['n_found']}]"
    return f"{r['ari']:.3f} / {r['r2_heldout']:.4f}{found}"


def read_rows(path):
    """Rows of a TSV written by this command, with the types :func:`tables` expects."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    for r in rows:
        for key in ("ari", "r2_heldout", "fwhm"):
            r[key] = float(r[key])
        r["scale"] = int(r["scale"])
        r["alpha"] = "n/a" if r["alpha"] == "n/a" else float(r["alpha"])
        r["ari_truth"] = "n/a" if r["ari_truth"] == "n/a" else float(r["ari_truth"])
    return rows


def tables(rows, name):
    """Markdown tables of one dataset: Ward by scale and smoothing, then other methods."""
    mine = [r for r in rows if r["dataset"] == name]
    ward = [r for r in mine if r["method"] == "ward"]
    if ward:
        alphas = sorted({r["alpha"] for r in ward if r["side"] == "ours"}, reverse=True)
        truth = any(r["ari_truth"] != "n/a" for r in ward)

        def cell(r, truth=truth):
            return (f"{r['ari']:.3f} / {r['r2_heldout']:.4f}"
                    + (f" / {r['ari_truth']:.3f}" if truth else ""))

        what = "split-half ARI / held-out R²" + (" / ARI to truth" if truth else "")
        print(f"\n**{name}**, Ward ({what}; **bold**: ours above nilearn on both)\n")
        print("| scale | FWHM | nilearn | " + " | ".join(f"α={a:g}" for a in alphas) + " |")
        print("|---" * (3 + len(alphas)) + "|")
        for k in sorted({r["scale"] for r in ward}):
            for fwhm in sorted({r["fwhm"] for r in ward}):
                sel = {(r["side"], r["alpha"]): r for r in ward
                       if r["scale"] == k and r["fwhm"] == fwhm}
                ref = sel[("nilearn", "n/a")]
                cells = []
                for a in alphas:
                    r = sel[("ours", a)]
                    both = r["ari"] > ref["ari"] and r["r2_heldout"] > ref["r2_heldout"]
                    cells.append(f"**{cell(r)}**" if both else cell(r))
                print(f"| {k} | {fwhm:g} | {cell(ref)} | " + " | ".join(cells) + " |")
    other = [r for r in mine if r["method"] != "ward"]
    if other:
        print(f"\n**{name}**, other methods (split-half ARI / held-out R²; [n]: only n "
              "parcels found, by the half with fewer)\n")
        print("| method | scale | FWHM | nilearn | ours (α: ARI / R²) |")
        print("|---|---|---|---|---|")
        for method in dict.fromkeys(r["method"] for r in other):
            for k in sorted({r["scale"] for r in other}):
                for fwhm in sorted({r["fwhm"] for r in other}):
                    sel = [r for r in other if r["method"] == method and r["scale"] == k
                           and r["fwhm"] == fwhm]
                    if not sel:
                        continue
                    ref = next(r for r in sel if r["side"] == "nilearn")
                    ours = "; ".join(f"α={r['alpha']:g}: {other_cell(r)}"
                                     for r in sel if r["side"] == "ours")
                    print(f"| {method} | {k} | {fwhm:g} | {other_cell(ref)} | {ours} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+",
                        default=["studyforrest", "decnef", "generated"])
    parser.add_argument("--scales", nargs="+", type=int, default=[100, 200, 400])
    parser.add_argument("--alphas", nargs="+", type=float, default=[1.0, 0.75, 0.5, 0.25, 0.0])
    parser.add_argument("--fwhms", nargs="+", type=float, default=[4.0, 6.0, 8.0])
    parser.add_argument("--candidates", nargs="*", default=[],
                        help="alpha:fwhm pairs for the other methods (none: skip them)")
    parser.add_argument("--other-methods", nargs="+",
                        default=["kmeans", "hierarchical_kmeans", "rena"])
    parser.add_argument("--other-scales", nargs="+", type=int, default=[100, 200])
    parser.add_argument("--resolution", type=int, default=4)
    parser.add_argument("--snr", type=float, default=0.3)
    parser.add_argument("--n-true", type=int, default=200)
    parser.add_argument("--n-volumes", type=int, default=150)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "real_data.tsv")
    parser.add_argument("--from-tsv", type=Path,
                        help="print the tables of a TSV written before, and measure nothing")
    opts = parser.parse_args()
    if opts.from_tsv:
        rows = read_rows(opts.from_tsv)
        for name in dict.fromkeys(r["dataset"] for r in rows):
            tables(rows, name)
        return
    start = time.monotonic()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in opts.datasets:
            if name == "generated":
                demo = make_demo_dataset(tmp / "demo", participants=("01",),
                                         runs=(1, 2, 3, 4), resolution=opts.resolution,
                                         n_volumes=opts.n_volumes,
                                         n_true_parcels=opts.n_true, snr=opts.snr, seed=1)
                _, unit_mask, cleaned = cleaned_unit(demo.root, tmp / "out", [])
                truth = np.asarray(demo.labels_img.dataobj)[unit_mask.mask]
                label = (f"generated ({opts.resolution} mm, 4 runs x {opts.n_volumes}, "
                         f"{opts.n_true} true parcels, snr {opts.snr})")
                unit = Unit(label, unit_mask, cleaned, truth)
            else:
                _, unit_mask, cleaned = cleaned_unit(REAL[name], tmp / f"out-{name}", [])
                unit = Unit(name, unit_mask, cleaned)
            cache = tmp / f"nilearn-cache-{name}"
            os.makedirs(cache, exist_ok=True)
            run_unit(unit, opts, str(cache), rows)
            tables(rows, unit.name)
            opts.out.parent.mkdir(parents=True, exist_ok=True)
            with open(opts.out, "w", newline="") as handle:  # rewritten after each dataset
                writer = csv.DictWriter(handle, COLUMNS, delimiter="\t", lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)
    print(f"\n{len(rows)} rows -> {opts.out}; {time.monotonic() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
