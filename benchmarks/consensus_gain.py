"""Does ``--bootstrap B`` make parcels more reproducible? Plain fit against consensus.

For each dataset and scale prints, for the plain fit and for the consensus of B
resamples: split-half ARI (runs dealt alternately to two halves, each half learned with
the same procedure), held-out compression R², and for generated data the ARI to the
generator's ground truth. Issue target: split-half ARI at least 0.05 higher than the plain
fit at the same scale, with held-out accuracy no lower, on four-run resting-state-like data.

Datasets:

- ``generated``: :func:`bids_parcellate.demo.make_demo_dataset` with four runs, realistic
  noise (``--snr``, default 0.3, i.e. voxel noise three times the parcel signal) and
  ``--n-true`` parcels, at ``--resolution`` mm.
- ``studyforrest``: the one real run (4 mm, 156 volumes) cut into four pseudo-runs of
  consecutive volumes, leaving out ``quality.GAP_SECONDS`` around every cut. Not real
  multi-run data: there is none on this machine.

A command, not a test (minutes of CPU)::

    python benchmarks/consensus_gain.py [--bootstrap 10] [--resolution 8] [--n-parcels 50 100 200]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from bids_parcellate import quality
from bids_parcellate.cli import build_parser, config_from_args
from bids_parcellate.demo import make_demo_dataset
from bids_parcellate.denoise import clean_run
from bids_parcellate.inputs.bold import load_unit_mask
from bids_parcellate.inputs.query import collect_runs
from bids_parcellate.learn.features import grid_connectivity
from bids_parcellate.learn.learner import learn, runs_training

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "studyforrest"


def cleaned_unit(bids: Path, out: Path, extra: list[str]):
    """Config and cleaned runs of the first unit, through the pipeline's own stages."""
    config = config_from_args(
        build_parser().parse_args([str(bids), str(out), "participant", *extra]), [])
    runs = next(iter(collect_runs(config).units().values()))
    unit_mask = load_unit_mask(runs)
    return config, unit_mask, [clean_run(r, unit_mask, config) for r in runs]


def pseudo_runs(data: np.ndarray, tr: float, n: int = 4) -> list[np.ndarray]:
    """Cut one run in ``n`` consecutive pieces, dropping a gap around every cut."""
    half_gap = math.ceil(quality.GAP_SECONDS / tr / 2)
    edges = np.linspace(0, data.shape[0], n + 1).round().astype(int)
    return [data[a + (half_gap if i else 0): b - (half_gap if i < n - 1 else 0)]
            for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))]


def compare(name, config, unit_mask, runs, n_boot, truth=None):
    mask, affine = unit_mask.mask, unit_mask.affine
    conn = grid_connectivity(mask)
    halves = quality.split_halves(runs, [np.arange(r.shape[0]) for r in runs], [None] * 4)
    scorers = [quality.Scorer(h) for h in (halves.first, halves.second)]
    print(f"\n{name}: {len(runs)} runs x {[r.shape[0] for r in runs]} volumes, "
          f"{mask.sum()} voxels")
    for boot in (0, n_boot):
        cfg = config.__class__(**{**config.__dict__, "bootstrap": boot})
        tic = time.monotonic()
        full = learn(cfg, runs_training(cfg, runs, mask, affine)).labels
        fit_time = time.monotonic() - tic
        first = learn(cfg, runs_training(cfg, halves.first, mask, affine)).labels
        second = learn(cfg, runs_training(cfg, halves.second, mask, affine)).labels
        for k in sorted(full):
            shape = quality.shape_figures(full[k], conn)
            line = (f"  {'consensus B=' + str(boot) if boot else 'plain':14s} scale {k:4d}: "
                    f"split-half ARI {adjusted_rand_score(first[k], second[k]):.3f}, "
                    f"held-out R2 {(scorers[1].accuracy(first[k]) + scorers[0].accuracy(second[k])) / 2:.4f}, "  # noqa: E501
                    f"min size {shape['size_min']}, fragmented {shape['n_fragmented']}")
            if truth is not None:
                line += f", ARI to truth {adjusted_rand_score(truth, full[k]):.3f}"
            print(line + f" (fit {fit_time:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=8)
    parser.add_argument("--snr", type=float, default=0.3)
    parser.add_argument("--n-true", type=int, default=100)
    parser.add_argument("--n-volumes", type=int, default=150)
    parser.add_argument("--n-parcels", nargs="+", default=["50", "100", "200"])
    parser.add_argument("--datasets", nargs="+", default=["generated", "studyforrest"])
    opts = parser.parse_args()
    extra = ["--n-parcels", *opts.n_parcels]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "generated" in opts.datasets:
            demo = make_demo_dataset(tmp / "demo", participants=("01",), runs=(1, 2, 3, 4),
                                     resolution=opts.resolution, n_volumes=opts.n_volumes,
                                     n_true_parcels=opts.n_true, snr=opts.snr, seed=1)
            config, unit_mask, cleaned = cleaned_unit(demo.root, tmp / "out", extra)
            truth = np.asarray(demo.labels_img.dataobj)[unit_mask.mask]
            compare(f"generated ({opts.resolution} mm, snr {opts.snr}, {opts.n_true} true "
                    "parcels)", config, unit_mask, [c.data for c in cleaned],
                    opts.bootstrap, truth)
        if "studyforrest" in opts.datasets and SHARED.is_dir():
            config, unit_mask, cleaned = cleaned_unit(SHARED, tmp / "out", extra)
            compare("studyforrest (real, 4 mm, one run cut in 4 pseudo-runs)", config,
                    unit_mask, pseudo_runs(cleaned[0].data, cleaned[0].run.tr),
                    opts.bootstrap)


if __name__ == "__main__":
    main()
