"""Consensus parcellation from bootstrap resamples (``--bootstrap B``).

The unit's parcellation method is applied to ``B`` resamples of its cleaned runs. The
co-assignment of two voxels is the share of the resamples in which they fall in the same
parcel; it is never formed as a voxel x voxel matrix. Instead it acts on the voxel
features: for every scale, each voxel is described by the mean, over the resamples, of
the feature centroid of the parcel it fell in,

    bagged[v] = 1/B * sum_b mean(features[u] for u in parcel_b(v)),

which is the product of the (size-normalised) co-assignment matrix with the features,
computed resample by resample with one ``bincount`` per feature block (memory: the
resample labels, B x voxels integers, and one feature-sized array). Voxels that always
fall together get identical descriptions and merge first; voxels on unstable borders get
a mixture and join the side they fell on most often. The final parcellation is a Ward
tree of these bagged features under the 6-neighbour connectivity of the mask, cut at the
scale, whatever ``--method`` learned the resamples: it is spatially contiguous.

Why not agglomerate the co-assignment frequencies of neighbouring voxels directly
(evidence accumulation, average linkage on ``1 - frequency`` along the grid edges)? On
generated data with realistic noise it *lowered* split-half agreement and held-out
accuracy: where the co-assignment is ambiguous (scales finer than the data support)
average linkage leaves single voxels as parcels. The bagged-feature Ward cut raised both
(see docs/quality.md for the figures).

Stability (:func:`voxel_stability`): how consistently a voxel stays with its final
parcel across the resamples, the per-voxel stability of BASC (Bellec et al. 2010): the
mean over resamples of the share of the other voxels of its final parcel that fell in
its parcel in that resample (1: always together; near ``1/k``-like values: a border
voxel that goes with another parcel as often as with its own). It is computed from one
contingency table per resample (final parcel x resample parcel), never voxel x voxel.

Resampling: circular block bootstrap of the kept volumes within each run (Bellec et al.
2010, NeuroImage 51:1126), with blocks of ``round(sqrt(n_volumes))`` consecutive volumes
so that the autocorrelation within blocks is kept; every resample has as many volumes per
run as the original. Each resample is smoothed, standardised and reduced exactly as the
full data (:func:`~bids_parcellate.learn.features.build_features`). At the group level a
resample draws participants with replacement instead
(:func:`bids_parcellate.group.reduce.group_training`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bids_parcellate.learn.features import build_features
from bids_parcellate.learn.methods import LabelsByScale, parcellate, warn_disconnected

LOGGER = logging.getLogger("bids_parcellate")


def block_length(n_volumes: int) -> int:
    """Block length of the circular block bootstrap: ``round(sqrt(n_volumes))``, >= 1."""
    return max(1, int(round(math.sqrt(n_volumes))))


def block_bootstrap(n_volumes: int, rng: np.random.Generator,
                    length: int | None = None) -> np.ndarray:
    """Indices of a circular block bootstrap resample of ``n_volumes`` volumes.

    Blocks of ``length`` consecutive volumes (wrapping around the end) start at
    uniformly drawn volumes until ``n_volumes`` indices are drawn.

    Parameters
    ----------
    n_volumes : int
    rng : numpy.random.Generator
    length : int, optional
        Block length; default :func:`block_length`.

    Returns
    -------
    ndarray of int, shape (n_volumes,)
    """
    length = min(length or block_length(n_volumes), n_volumes)
    n_blocks = -(-n_volumes // length)
    starts = rng.integers(0, n_volumes, size=n_blocks)
    idx = (starts[:, None] + np.arange(length)[None, :]) % n_volumes
    return idx.ravel()[:n_volumes]


def bagged_features(features: np.ndarray, resample_labels: np.ndarray) -> np.ndarray:
    """Mean over resamples of the feature centroid of each voxel's parcel.

    Parameters
    ----------
    features : ndarray, shape (n_voxels, n_features)
    resample_labels : ndarray of int, shape (n_resamples, n_voxels)
        Labels 1..n of every resample's parcellation.

    Returns
    -------
    ndarray, shape (n_voxels, n_features), float32
        The size-normalised co-assignment matrix applied to ``features``.
    """
    features64 = np.asarray(features, dtype=np.float64)
    out = np.zeros(features.shape, dtype=np.float64)
    for labels in resample_labels:
        index = labels - 1
        counts = np.bincount(index)
        centroids = np.empty((counts.size, features.shape[1]))
        for j in range(features.shape[1]):
            centroids[:, j] = np.bincount(index, weights=features64[:, j],
                                          minlength=counts.size)
        centroids /= np.maximum(counts, 1)[:, None]
        out += centroids[index]
    out /= len(resample_labels)
    return out.astype(np.float32)


def voxel_stability(resample_labels: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-voxel stability of a parcellation over bootstrap resamples (see module doc).

    Parameters
    ----------
    resample_labels : ndarray of int, shape (n_resamples, n_voxels)
        Labels 1..n of every resample's parcellation.
    labels : ndarray of int, shape (n_voxels,)
        The final labels 1..k (0: no parcel, stability 0).

    Returns
    -------
    ndarray, shape (n_voxels,), float32
        In [0, 1]: for voxel v in final parcel P, the mean over resamples of
        ``|{u in P, u != v, same resample parcel as v}| / (|P| - 1)``; 1 for a parcel
        of one voxel.
    """
    labels = np.asarray(labels, dtype=np.int64)
    sizes = np.bincount(labels)[labels]
    others = np.maximum(sizes - 1, 1).astype(np.float64)
    total = np.zeros(labels.size, dtype=np.float64)
    for resample in resample_labels:
        pair = labels * (int(resample.max()) + 1) + resample  # one cell per voxel
        total += (np.bincount(pair)[pair] - 1) / others
    out = total / len(resample_labels)
    out[sizes == 1] = 1.0
    out[labels == 0] = 0.0
    return out.astype(np.float32)


@dataclass
class Consensus:
    """A consensus parcellation and the resamples it was built from."""

    labels: LabelsByScale
    #: scale -> (n_resamples, n_voxels) labels of every resample
    #: (for :func:`voxel_stability` of the final labels)
    resamples: dict[int, np.ndarray]


def volume_resampler(prepared: Sequence[np.ndarray], mask: np.ndarray, affine: np.ndarray,
                     n_components: int, weighting: float = 1.0
                     ) -> Callable[[np.random.Generator], np.ndarray]:
    """The bootstrap resamples of a unit's runs, as features.

    Parameters
    ----------
    prepared : sequence of ndarray, shape (n_kept, n_voxels)
        The runs, smoothed and z-scored (:func:`~bids_parcellate.learn.features.prepare_runs`):
        smoothing is spatial, volume by volume, so the smoothed volumes are resampled.
    mask : ndarray of bool, 3D
    affine : ndarray, shape (4, 4)
    n_components : int
        Feature components (see :func:`~bids_parcellate.learn.features.build_features`).
    weighting : float
        Exponent of the singular values in the features (``--feature-weighting``).

    Returns
    -------
    callable
        ``resample(rng)``: the features of a circular block bootstrap of every run
        (:func:`block_bootstrap`), reduced exactly as the full data.
    """
    def resample(rng: np.random.Generator) -> np.ndarray:
        # fancy indexing copies, so build_features may standardise the resample in place
        return build_features([x[block_bootstrap(x.shape[0], rng)] for x in prepared], mask,
                              affine, 0.0, n_components, weighting=weighting)

    return resample


def consensus_parcellation(features: Callable[[], np.ndarray],
                           resample: Callable[[np.random.Generator], np.ndarray],
                           mask: np.ndarray, *, method: str, scales: Sequence[int],
                           n_resamples: int, random_state: int,
                           options: dict | None = None,
                           warn_pieces: bool = True) -> Consensus:
    """Consensus of ``method`` over ``n_resamples`` bootstrap resamples.

    Parameters
    ----------
    features : callable
        ``features()``: the full data's features (n_voxels, n_features), asked for once
        the resamples are learned (they are what the consensus averages).
    resample : callable
        ``resample(rng)``: the features of one resample, drawn with ``rng`` (e.g.
        :func:`volume_resampler`, or the group level's resampling of participants).
    mask : ndarray of bool, 3D
    method : str
        The :data:`~bids_parcellate.learn.methods.METHODS` name that learns each resample.
    scales : sequence of int
    n_resamples : int
    random_state : int
        Seed of the resampling and of every fit.
    options : dict, optional
        Keyword knobs of ``method`` (see :func:`~bids_parcellate.learn.methods.parcellate`).
    warn_pieces : bool
        Warn (once) when the mask is disconnected.

    Returns
    -------
    Consensus
        ``labels``: scale -> int32 labels 1..n over the in-mask voxels (ordered by
        centroid); ``resamples``: the labels of every resample, by scale.
    """
    scales = sorted(scales)
    n_voxels = int(mask.sum())
    if warn_pieces:  # once here rather than at every resample and final cut
        warn_disconnected(mask, method)
    labels = {k: np.empty((n_resamples, n_voxels), dtype=np.int32) for k in scales}
    seeds = np.random.SeedSequence(random_state).spawn(n_resamples)
    tic = time.monotonic()
    for b, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        fit = parcellate(resample(rng), mask, method, scales,
                         int(rng.integers(0, 2**31 - 1)), warn_pieces=False,
                         **(options or {}))
        for k in scales:
            labels[k][b] = fit[k]
        LOGGER.debug("bootstrap resample %d/%d (%.1f s)", b + 1, n_resamples,
                     time.monotonic() - tic)
    full = features()
    out = {}
    for k in scales:
        bagged = bagged_features(full, labels[k])
        out[k] = parcellate(bagged, mask, "ward", [k], random_state, warn_pieces=False)[k]
    return Consensus(out, labels)
