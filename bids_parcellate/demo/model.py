"""Constants of the generative model and the seeding of its random streams.

The model itself is described in :mod:`bids_parcellate.demo`.
"""

from __future__ import annotations

import zlib

import numpy as np

#: Baseline intensity of brain voxels.
BASELINE = 1000.0
#: Standard deviation of the neural signal, as a fraction of the baseline.
SIGNAL_FRACTION = 0.01
#: Framewise displacement (mm) above which a volume is a motion outlier.
FD_THRESHOLD = 0.5
#: Standardised DVARS above which a volume is a motion outlier.
DVARS_THRESHOLD = 1.5
#: Period (s) of the DCT high-pass basis written as ``cosineXX``.
HIGH_PASS_PERIOD = 128.0
#: Radius (mm) used by fMRIPrep's framewise displacement for rotations.
FD_RADIUS = 50.0
#: Length scale (mm) of the correlation between parcel time courses,
#: ``corr(P_i, P_j) = exp(-distance(centroid_i, centroid_j) / length)``.
PARCEL_CORR_MM = 70.0
#: Spatial smoothing (Gaussian sigma, in voxels) of the voxel noise.
NOISE_SIGMA_VOX = 0.5
#: Thickness (mm) of the "scalp" shell written around the brain mask.
SHELL_MM = 8.0
# Confound weights, as fractions of the baseline per unit of the source
# (mm for translations, 1/50 rad for rotations, unit-variance series for the
# global and physiological sources, half the run for the drift).
W_MOTION = 0.05
W_DRIFT = 0.02
W_GLOBAL = 0.01
W_PHYSIO = 0.006
#: Size of the intensity spikes, as a fraction of the baseline.
SPIKE = 0.1

# Stream tags, so that the random streams of different purposes never overlap.
TAG_TRUTH = 1
TAG_JITTER = 2
TAG_SUBJECT = 3
TAG_RUN = 4


def stream_key(label: str) -> int:
    """Return a stable non-negative integer for a label (for seeding).

    Parameters
    ----------
    label : str
        Entity label (``""`` for an absent entity).

    Returns
    -------
    int
        CRC-32 of the UTF-8 encoded label.
    """
    return zlib.crc32(label.encode("utf-8"))


def stream_rng(seed: int, *keys: int) -> np.random.Generator:
    """Return the generator of the stream identified by ``seed`` and ``keys``.

    Parameters
    ----------
    seed : int
        Seed of the dataset.
    *keys : int
        Stream tag (``TAG_*``) and entity keys (:func:`stream_key`).

    Returns
    -------
    numpy.random.Generator
        Generator seeded with ``[seed, *keys]``.
    """
    return np.random.default_rng([int(seed), *(int(k) for k in keys)])
