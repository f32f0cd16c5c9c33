"""nilearn's ``Parcellations`` fit + transform on one fMRIPrep run: the reference side.

Run as a whole process by ``benchmarks/run.py`` (so that its wall time and peak memory
are measured like ours)::

    python benchmarks/nilearn_parcellations.py BOLD MASK OUT_LABELS --method ward \
        --n-parcels 1000 --smoothing-fwhm 4

Same settings as the bids_parcellate participant level with its defaults: the
fMRIPrep brain mask, nilearn's ``simple`` denoising strategy (``load_confounds_strategy``;
``Parcellations.fit`` and ``transform`` take no sample mask, so non-steady-state volumes
stay in), linear detrending, ``zscore_sample`` standardisation, 4 mm smoothing, seed 0.
Writes the label image (for the ARI against the ground truth) and prints the fit and
transform times as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bold")
    parser.add_argument("mask")
    parser.add_argument("out_labels")
    parser.add_argument("--method", default="ward")
    parser.add_argument("--n-parcels", type=int, default=1000)
    parser.add_argument("--smoothing-fwhm", type=float, default=4.0)
    parser.add_argument("--t-r", type=float, default=2.0)
    args = parser.parse_args()

    start = time.monotonic()
    from nilearn.interfaces.fmriprep import load_confounds_strategy
    from nilearn.regions import Parcellations

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        confounds, _ = load_confounds_strategy(args.bold, denoise_strategy="simple")
        parcellation = Parcellations(
            method=args.method, n_parcels=args.n_parcels, mask=args.mask,
            smoothing_fwhm=args.smoothing_fwhm, standardize="zscore_sample", detrend=True,
            t_r=args.t_r, random_state=0, n_jobs=1, verbose=0)
        tic = time.monotonic()
        parcellation.fit([args.bold], confounds=[confounds])
        fit_s = time.monotonic() - tic
        tic = time.monotonic()
        signals = parcellation.transform(args.bold, confounds=[confounds])
        transform_s = time.monotonic() - tic
    parcellation.labels_img_.to_filename(args.out_labels)
    print(json.dumps({"fit_s": round(fit_s, 3), "transform_s": round(transform_s, 3),
                      "total_s": round(time.monotonic() - start, 3),
                      "n_parcels": int(signals.shape[1])}))


if __name__ == "__main__":
    main()
