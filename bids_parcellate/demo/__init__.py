"""Synthetic fMRIPrep-like datasets with a known ground-truth parcellation.

This module writes small but realistic BIDS datasets that look like the
output of fMRIPrep (preprocessed BOLD series in a template space, brain masks,
BOLD references and confound tables with their JSON sidecars) and whose
voxel time series are generated from a *known* parcellation.  They are used by
the test suite, by the ``--demo`` quick start and by benchmarks, and they can
be written from the command line::

    python -m bids_parcellate.demo /tmp/demo --participants 01 02 --resolution 4

Generative model
----------------
Every in-mask voxel ``v`` at volume ``t`` of a run is::

    y[t, v] = (1 + nss[t]) * (B[v] + B[v] * (0.01 * A[v] * P[t, parcel(v)]
                                             + (0.01 / snr) * E[t, v]
                                             + sum_k N[t, k] * W[k, v])
                              + spike[t, v])

* ``B`` is a smooth baseline around 1000 and ``A`` a smooth amplitude map
  around 1 (both fixed per participant).
* ``P`` holds one band-limited (0.01-0.1 Hz) unit-variance time course per
  parcel, drawn independently for every run, with a correlation between
  parcels ``i`` and ``j`` of ``exp(-d_ij / 70 mm)`` (``d_ij``: distance
  between their centroids; neighbouring parcels correlate at about 0.5).
* ``E`` is unit-variance Gaussian noise, lightly smoothed in space (Gaussian,
  sigma 0.5 voxel), so ``snr`` is the ratio of the standard deviation of the
  parcel signal to that of the noise (where ``A == 1``).
* ``N`` holds the confound sources: the six rigid-body motion parameters
  written to the confounds file (the *same* series; about 5 % of baseline per
  mm or per 20 mrad, with smooth spatial weights of both signs), a slow
  linear + quadratic scanner drift (2 %), a global band-limited fluctuation
  (1 %) and an aliased respiratory oscillation (0.6 %).  Left in the data
  they mislead clustering (Ward's ARI drops from about 0.9 to about 0.45).
* ``spike`` adds a large (about 10 % of baseline) artefact on ``n_spikes``
  volumes, on which the motion parameters jump, so that the framewise
  displacement (between 0.9 and 1.6 mm, below 0.35 mm elsewhere) and the
  standardised DVARS flag them for scrubbing.
* ``nss`` makes the first ``n_nonsteady`` volumes much brighter
  (+60 %, +30 %, +15 %, ...), the signature fMRIPrep uses to flag
  non-steady-state volumes.

Outside the brain mask (the preprocessed BOLD of fMRIPrep is not
skull-stripped) a shell of 8 mm around the brain holds low-intensity "scalp"
signal (about 200, integer valued) with temporal noise, and the rest of the
field of view is zero.

The confounds table is computed the way fMRIPrep computes it: the motion
parameters and their expansions, framewise displacement (Power), RMSD,
DVARS and standardised DVARS (nipype's algorithm, from the written data),
the global signal (from the written data), CSF / white-matter / combined
mean signals and aCompCor components (from two virtual noise regions of
interest that share the confound sources but carry no neural signal),
tCompCor components (from the 2 % most variable brain voxels), the DCT
high-pass basis (128 s), one-hot non-steady-state columns, and one-hot
``motion_outlier`` columns for volumes with FD > 0.5 mm or standardised
DVARS > 1.5 (fMRIPrep's default thresholds).

Ground truth
------------
The shared truth has ``n_true_parcels`` spatially compact parcels: k-means
on the voxel coordinates of the mask, after which every parcel is made a
single 6-connected component (stray pieces are given to the neighbouring
parcels by region growing).  Labels ``1..K`` are numbered by the first voxel
of each parcel in C order.  With ``jitter > 0`` each participant gets its
own truth: the given fraction of the boundary voxels (voxels with a
6-neighbour in another parcel) is moved to a random neighbouring parcel
(moves out of a parcel that would lose more than half of its voxels are
undone), after which the same repair as above makes every parcel exactly
6-connected again; the repair may move a few more voxels.

Everything is drawn from :class:`numpy.random.Generator` streams seeded from
``seed`` and from the entity labels (not from their position), so a given
run of a given participant is identical whatever the other participants,
and the same arguments give byte-identical files.

Modules
-------
- :mod:`~bids_parcellate.demo.model`: constants of the model and the random streams;
- :mod:`~bids_parcellate.demo.settings`: validation of the arguments;
- :mod:`~bids_parcellate.demo.grid`: the MNI152 grid, its scalp shell and smooth
  random fields;
- :mod:`~bids_parcellate.demo.truth`: the ground-truth parcellations;
- :mod:`~bids_parcellate.demo.timecourses`: parcel time courses, motion and the other
  confound sources;
- :mod:`~bids_parcellate.demo.simulate`: the data of one run;
- :mod:`~bids_parcellate.demo.confounds`: the fMRIPrep-like confounds table;
- :mod:`~bids_parcellate.demo.writers`: NIfTI, gzip, JSON and TSV writers;
- :mod:`~bids_parcellate.demo.files`: the BIDS files of the dataset;
- :mod:`~bids_parcellate.demo.dataset`: :func:`make_demo_dataset`, the driver;
- :mod:`~bids_parcellate.demo.command_line`: ``python -m bids_parcellate.demo``.
"""

from __future__ import annotations

from bids_parcellate.demo.command_line import main
from bids_parcellate.demo.dataset import DemoTruth, make_demo_dataset
from bids_parcellate.demo.model import (
    BASELINE,
    DVARS_THRESHOLD,
    FD_RADIUS,
    FD_THRESHOLD,
    HIGH_PASS_PERIOD,
    SIGNAL_FRACTION,
)

__all__ = [
    "DemoTruth",
    "make_demo_dataset",
    "main",
    "BASELINE",
    "DVARS_THRESHOLD",
    "FD_RADIUS",
    "FD_THRESHOLD",
    "HIGH_PASS_PERIOD",
    "SIGNAL_FRACTION",
]
