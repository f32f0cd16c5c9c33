"""The one learner: labels at every scale from training data, the same procedure at
every level.

:func:`learn` runs ``--method`` with its knobs, its ``--bootstrap`` consensus
(:mod:`.consensus`), the region extraction of dictlearning / canica (:mod:`.regions`)
and ``--split-disconnected``, on a :class:`Training`: what the data offer the learner.

- :func:`runs_training`: a participant's cleaned runs (the unit's own fit, and each half
  of the quality figures). Features are the smoothed, z-scored runs reduced by an SVD
  (:func:`.features.build_features`); a bootstrap resample is a circular block bootstrap
  of each run's volumes.
- The group level builds its own :class:`Training` from the participants' summaries
  (:func:`bids_parcellate.group.reduce.group_training`): features are the merged
  summaries; a bootstrap resample draws participants with replacement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bids_parcellate.learn.consensus import (
    consensus_parcellation,
    volume_resampler,
    voxel_stability,
)
from bids_parcellate.learn.features import build_features, prepare_runs
from bids_parcellate.learn.methods import LabelsByScale, parcellate
from bids_parcellate.learn.regions import RegionSet, learn_regions, split_disconnected

LOGGER = logging.getLogger("bids_parcellate")


@dataclass
class Training:
    """What the learner learns from, each piece computed only when the method needs it.

    Attributes
    ----------
    mask : ndarray of bool, 3D
        The voxels to label.
    affine : ndarray, shape (4, 4)
    features : callable
        ``features() -> ndarray (n_voxels, n_features)``: the clustering features.
    resampler : callable
        ``resampler() -> resample``, where ``resample(rng) -> ndarray (n_voxels,
        n_features)`` gives the features of one bootstrap resample (``--bootstrap``).
    decomposition_input : callable
        ``decomposition_input() -> (runs, n_volumes)``: (time x voxels) arrays that
        dictlearning / canica decompose, and the kept volumes they stand for (None: the
        rows of ``runs``).
    memo : callable, optional
        Tree cache of hierarchical methods (see :func:`.methods.parcellate`).
    """

    mask: np.ndarray
    affine: np.ndarray
    features: Callable[[], np.ndarray]
    resampler: Callable[[], Callable[[np.random.Generator], np.ndarray]]
    decomposition_input: Callable[[], tuple[list[np.ndarray], int | None]]
    memo: Callable | None = None


@dataclass
class Learned:
    """Labels at every scale, and the region sets behind them (region-based methods and
    ``--split-disconnected``; empty otherwise)."""

    labels: LabelsByScale
    regions: dict[int, RegionSet]
    #: scale -> per-voxel stability over the ``--bootstrap`` resamples (float32, 0..1,
    #: :func:`~bids_parcellate.learn.consensus.voxel_stability`); empty without bootstrap
    stability: dict[int, np.ndarray] = field(default_factory=dict)


def runs_training(config, runs_data: Sequence[np.ndarray], mask: np.ndarray,
                  affine: np.ndarray, *, prepared: Callable[[], list[np.ndarray]] | None = None,
                  features: np.ndarray | None = None, memo: Callable | None = None
                  ) -> Training:
    """A :class:`Training` from cleaned runs (kept volumes only).

    Parameters
    ----------
    config : Config
        Smoothing, components and threads.
    runs_data : sequence of ndarray, shape (n_kept, n_voxels)
        Cleaned runs; not modified.
    mask : ndarray of bool, 3D
    affine : ndarray, shape (4, 4)
    prepared : callable, optional
        ``prepared()`` returns :func:`.features.prepare_runs` of ``runs_data`` (the
        caller's copy, computed once).
    features : ndarray, optional
        :func:`.features.build_features` of ``runs_data`` when the caller has it.
    memo : callable, optional
        Tree cache (see :func:`.methods.parcellate`).

    Returns
    -------
    Training
    """
    own: list[list[np.ndarray]] = []  # prepared here once, when the caller has none

    def smoothed() -> list[np.ndarray]:
        if prepared is not None:
            return prepared()
        if not own:
            own.append(prepare_runs(runs_data, mask, affine, config.smoothing_fwhm,
                                    n_jobs=config.nprocs))
        return own[0]

    def full_features() -> np.ndarray:
        if features is not None:
            return features
        return build_features([], mask, affine, config.smoothing_fwhm,
                              config.n_components, prepared=smoothed(),
                              weighting=config.feature_weighting)

    return Training(
        mask=mask, affine=affine, features=full_features,
        # the prepared runs are smoothed and standardised: resample them as they are
        resampler=lambda: volume_resampler(smoothed(), mask, affine, config.n_components,
                                           config.feature_weighting),
        decomposition_input=lambda: (smoothed(), None), memo=memo)


def learn(config, training: Training, *, warn_pieces: bool = True) -> Learned:
    """Labels at every scale: one fit of ``--method`` (or its ``--bootstrap`` consensus,
    or the regions of its network maps), then ``--split-disconnected``.

    Parameters
    ----------
    config : Config
        Method, scales, knobs, seed, bootstrap, region and split options.
    training : Training
    warn_pieces : bool
        Warn about a disconnected mask (False for the extra fits, e.g. quality halves).

    Returns
    -------
    Learned
    """
    mask, affine = training.mask, training.affine
    if config.is_decomposition:
        runs, n_volumes = training.decomposition_input()
        regions = learn_regions(runs, mask, affine, config, n_volumes=n_volumes)
        return Learned({k: r.labels for k, r in regions.items()}, regions)
    resamples: dict[int, np.ndarray] = {}
    if config.bootstrap:
        consensus = consensus_parcellation(
            training.features, training.resampler(), mask, method=config.method,
            scales=config.n_parcels, n_resamples=config.bootstrap,
            random_state=config.random_seed, options=config.method_options(),
            warn_pieces=warn_pieces)
        labels, resamples = consensus.labels, consensus.resamples
    else:
        labels = parcellate(training.features(), mask, config.method, config.n_parcels,
                            config.random_seed, memo=training.memo, n_jobs=config.nprocs,
                            warn_pieces=warn_pieces, **config.method_options())
    regions: dict[int, RegionSet] = {}
    if config.split_disconnected:
        regions = {k: split_disconnected(lab, mask, affine, config.min_region_size)
                   for k, lab in labels.items()}
        labels = {k: r.labels for k, r in regions.items()}
    # the stability of the final parcels (after --split-disconnected)
    stability = {k: voxel_stability(resamples[k], labels[k]) for k in resamples}
    return Learned(labels, regions, stability)
