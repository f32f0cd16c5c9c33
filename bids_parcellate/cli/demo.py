"""``bids_parcellate --demo OUT [options]``: the quick start on a generated dataset.

Writes a two-participant fMRIPrep-like dataset with a known ground-truth parcellation to
``OUT/bids``; :func:`bids_parcellate.cli.run.main` then runs the participant and group
levels into ``OUT/bids_parcellate`` (extra options are passed through) and
:func:`score` prints the adjusted Rand index of each participant's parcellation and of the
group atlas against the truth.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bids_parcellate.cli.parser import PROG

if TYPE_CHECKING:  # nibabel is imported when the demo runs, not at every start
    import nibabel as nib


@dataclass(frozen=True)
class DemoRun:
    """A demo dataset written, and the command line that processes it."""

    argv: list[str]
    output_dir: Path
    truth: nib.Nifti1Image
    n_true: int


def prepare(argv: list[str]) -> DemoRun | int:
    """Write the demo dataset; return the levels' command line (or a usage exit code).

    Parameters
    ----------
    argv : list of str
        ``OUT`` followed by options for the participant and group levels.

    Returns
    -------
    DemoRun or int
        The dataset and command line, or 2 when ``OUT`` is missing.
    """
    if not argv or argv[0].startswith("-"):
        print(f"usage: {PROG} --demo OUT [participant options]", file=sys.stderr)
        return 2
    from bids_parcellate.demo import make_demo_dataset

    out = Path(argv[0]).absolute()
    bids_dir, output_dir = out / "bids", out / "bids_parcellate"
    print(f"{PROG}: writing the demo dataset to {bids_dir}", file=sys.stderr)
    truth = make_demo_dataset(bids_dir, seed=0)
    n_true = int(truth.labels_img.get_fdata().max())
    extra = argv[1:]
    decomposition = any(m in extra for m in ("dictlearning", "canica"))
    if "--n-parcels" not in extra and not decomposition:
        extra = ["--n-parcels", str(n_true), "100", "200", *extra]
    return DemoRun([str(bids_dir), str(output_dir), "participant", "group", *extra],
                   output_dir, truth.labels_img, n_true)


def score(demo: DemoRun) -> int:
    """Print the adjusted Rand index of every dseg at the true scale; return 0.

    Parameters
    ----------
    demo : DemoRun
        What :func:`prepare` returned, after the levels ran.
    """
    import nibabel as nib
    from sklearn.metrics import adjusted_rand_score

    truth_data = demo.truth.get_fdata()
    output_dir = demo.output_dir
    for dseg in [*sorted(output_dir.glob(f"sub-*/anat/*_scale-{demo.n_true}_dseg.nii.gz")),
                 *sorted(output_dir.glob(f"tpl-*/*_scale-{demo.n_true}_dseg.nii.gz"))]:
        found = nib.load(dseg).get_fdata()
        inside = truth_data > 0
        ari = adjusted_rand_score(truth_data[inside], found[inside])
        print(f"{dseg.name}: adjusted Rand index vs ground truth = {ari:.3f}")
    print(f"outputs in {output_dir}", file=sys.stderr)
    return 0
