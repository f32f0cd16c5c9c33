"""Parcel mean timeseries for every scale in one pass over a run's cleaned data.

Means are taken over the cleaned, unsmoothed, unstandardised voxel timeseries and then
standardised per parcel. Cleaning is linear, so this equals nilearn's
``NiftiLabelsMasker`` (means of the raw signal, then cleaned and standardised) with the
same confounds and sample mask.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import sparse


def averaging_operator(labels_by_scale: Mapping[int, np.ndarray]) -> sparse.csc_matrix:
    """Sparse (n_voxels x sum of scales) matrix whose product gives parcel means."""
    blocks = []
    for scale in sorted(labels_by_scale):
        labels = labels_by_scale[scale]
        n = int(labels.max())
        counts = np.bincount(labels, minlength=n + 1)[1:]
        rows = np.flatnonzero(labels > 0)
        cols = labels[rows] - 1
        weights = 1.0 / counts[cols]
        blocks.append(
            sparse.csc_matrix((weights, (rows, cols)), shape=(labels.shape[0], n))
        )
    return sparse.hstack(blocks, format="csc")


def parcel_timeseries(data: np.ndarray, labels_by_scale: Mapping[int, np.ndarray],
                      standardize: str | bool) -> dict[int, np.ndarray]:
    """Mean timeseries of every parcel at every scale.

    Parameters
    ----------
    data : ndarray, shape (n_times, n_voxels)
        Cleaned voxel timeseries (kept volumes only).
    labels_by_scale : mapping
        scale -> labels 1..n over the voxels.
    standardize : str or False
        nilearn standardisation applied to each parcel signal.

    Returns
    -------
    dict
        scale -> ndarray (n_times, n_parcels), float64.
    """
    operator = averaging_operator(labels_by_scale)
    means = np.empty((data.shape[0], operator.shape[1]))
    # float64 products a few volumes at a time: no float64 copy of the whole run
    for start in range(0, data.shape[0], 32):
        means[start:start + 32] = data[start:start + 32].astype(np.float64) @ operator
    out = {}
    start = 0
    for scale in sorted(labels_by_scale):
        n = int(labels_by_scale[scale].max())
        block = means[:, start:start + n]
        start += n
        out[scale] = standardize_parcels(block, standardize)
    return out


def standardize_parcels(block: np.ndarray, standardize: str | bool) -> np.ndarray:
    """nilearn's ``standardize_signal(block, detrend=False, standardize=standardize)``.

    The default ``zscore_sample`` is computed here with the same operations (equal to
    the last bit, tested), and ``zscore`` too (the population standard deviation, as
    nilearn's ``zscore`` was before nilearn 0.14 removed it): importing
    ``nilearn.signal`` imports scikit-learn and scipy.signal (about 1 s), which the
    participant level otherwise leaves to its helper process
    (:mod:`bids_parcellate.runtime.helper_process`).

    Parameters
    ----------
    block : ndarray, shape (n_times, n_parcels), float64
        Parcel mean timeseries (kept volumes only); standardised in place by
        ``zscore_sample``.
    standardize : str or False
        nilearn standardisation (``zscore_sample``, ``zscore``, ``psc``); False leaves
        ``block`` as it is.

    Returns
    -------
    ndarray, shape (n_times, n_parcels)
    """
    if not standardize:
        return block
    if standardize in ("zscore_sample", "zscore") and block.shape[0] > 1:
        block = block - block.mean(axis=0)
        std = block.std(axis=0, ddof=1 if standardize == "zscore_sample" else 0)
        std[std < np.finfo(np.float64).eps] = 1.0
        block /= std
        return block
    from nilearn.signal import standardize_signal

    return standardize_signal(block, detrend=False, standardize=standardize)


def align_to_volumes(block: np.ndarray, sample_mask: np.ndarray, n_volumes: int) -> np.ndarray:
    """Rows for every BOLD volume; censored volumes are NaN (written as ``n/a``).

    Parameters
    ----------
    block : ndarray, shape (n_kept, n_parcels)
        Timeseries of the kept volumes.
    sample_mask : ndarray of int, shape (n_kept,)
        0-based indices of the kept volumes in the run.
    n_volumes : int
        Volumes of the run.

    Returns
    -------
    ndarray, shape (n_volumes, n_parcels), float64
    """
    full = np.full((n_volumes, block.shape[1]), np.nan)
    full[sample_mask] = block
    return full
