"""Connectivity matrices between parcels from their timeseries.

nilearn's ``ConnectivityMeasure`` (default covariance estimator: Ledoit-Wolf) on the
kept volumes of a run's parcel timeseries, the very values written to the
``_timeseries.tsv`` files. The measures, their BIDS labels and BEP017 sidecar fields are
data (``data/connectivity_measures.json``).

The tangent measure is defined relative to a group mean: it needs several
participants and is computed at the group level only.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources

import numpy as np

#: Measures that are defined per run (the tangent space needs a group).
PER_RUN = ("correlation", "partial correlation", "covariance", "precision")


@lru_cache(maxsize=1)
def measures() -> dict[str, dict]:
    """Measure name (nilearn kind) -> {label, Measure, MeasureDescription, ValidDiagonal}."""
    text = resources.files("bids_parcellate.data").joinpath("connectivity_measures.json")
    return {k: v for k, v in json.loads(text.read_text()).items() if not k.startswith("_")}


def measure_label(kind: str) -> str:
    """BIDS label of a measure for the ``meas-`` entity (``partialcorrelation``)."""
    return measures()[kind]["label"]


def connectivity(series: Sequence[np.ndarray], kind: str) -> np.ndarray:
    """Connectivity matrices of several timeseries with nilearn's defaults.

    Parameters
    ----------
    series : sequence of ndarray, shape (n_times, n_parcels)
        Kept volumes only (no NaN).
    kind : str
        A nilearn ``ConnectivityMeasure`` kind.

    Returns
    -------
    ndarray, shape (n_series, n_parcels, n_parcels), float64
    """
    from nilearn.connectome import ConnectivityMeasure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        return np.asarray(ConnectivityMeasure(kind=kind).fit_transform(list(series)))


def run_connectomes(series_by_scale: Mapping[int, np.ndarray],
                    kinds: Sequence[str]) -> dict[int, dict[str, np.ndarray]]:
    """Per-run matrices: scale -> kind -> (n_parcels, n_parcels) for the per-run kinds.

    Parameters
    ----------
    series_by_scale : mapping of int -> ndarray, shape (n_times, n_parcels)
        One run's parcel timeseries at every scale (kept volumes only).
    kinds : sequence of str
        nilearn ``ConnectivityMeasure`` kinds; those not in :data:`PER_RUN` (``tangent``)
        are left out.

    Returns
    -------
    dict
        scale -> kind -> ndarray, shape (n_parcels, n_parcels), float64.
    """
    return {scale: {kind: connectivity([series], kind)[0]
                    for kind in kinds if kind in PER_RUN}
            for scale, series in series_by_scale.items()}


def sidecar(kind: str) -> dict:
    """BEP017 fields of a ``_relmat.json``."""
    info = measures()[kind]
    return {
        "Measure": info["Measure"],
        "MeasureDescription": info["MeasureDescription"],
        "Weighted": True,
        "Directed": False,
        "ValidDiagonal": info["ValidDiagonal"],
        "StorageFormat": "Full",
        "CovarianceEstimator": "LedoitWolf",
    }


def group_connectomes(series: Sequence[np.ndarray], kinds: Sequence[str]
                      ) -> dict[str, tuple[np.ndarray | None, np.ndarray]]:
    """Group-level matrices of several runs (all on the same parcels).

    Parameters
    ----------
    series : sequence of ndarray, shape (n_times, n_parcels)
        Kept volumes of every run of every participant.
    kinds : sequence of str

    Returns
    -------
    dict
        kind -> (per-run matrices or None, group matrix). The group matrix is nilearn's
        ``ConnectivityMeasure.mean_``: the mean of the runs' matrices, or for
        ``tangent`` the geometric mean of their covariances, the reference point of the
        tangent space; ``tangent`` also gives each run's matrix in that space (the
        other kinds' per-run matrices are the participant-level ones).

    Raises
    ------
    ValueError
        ``tangent`` with fewer than two runs.
    """
    from nilearn.connectome import ConnectivityMeasure

    out = {}
    for kind in kinds:
        measure = ConnectivityMeasure(kind=kind)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            if kind == "tangent":
                if len(series) < 2:
                    raise ValueError("tangent needs at least two runs")
                per_run = np.asarray(measure.fit_transform(list(series)))
            else:
                measure.fit(list(series))
                per_run = None
        out[kind] = (per_run, np.asarray(measure.mean_))
    return out
