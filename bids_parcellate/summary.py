"""The map step of the group level: a compact summary of one unit's cleaned data.

A summary holds, for one unit (participant, or participant and session), the clustering
features built by :func:`bids_parcellate.learn.features.build_features` from its cleaned
runs: a (voxels x k) float32 matrix on the unit's brain mask, ``k <= --n-components``
(the top temporal components of the smoothed, z-scored, concatenated runs, scaled by
their singular values, so that distances between voxels are those of the data kept).
With the mask, the grid (affine), the number of volumes used and the parameters that
produced it (and their hash), it is everything the group level needs from a unit: the
reduce step (:mod:`bids_parcellate.group.reduce`) never opens a BOLD file when every unit has a
summary that matches the requested parameters.

The participant level writes the summary of every unit it processes (the features are
in memory anyway); the group level computes the missing ones (reading BOLD only then).
A summary is valid when its hash matches :func:`summary_hash` of the current parameters
and the unit's selected runs; otherwise it is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_parcellate import __version__
from bids_parcellate.config import Config, UserError
from bids_parcellate.denoise import clean_runs
from bids_parcellate.derivatives import dataset, naming, writers
from bids_parcellate.inputs.grids import build_unit_mask, output_res
from bids_parcellate.inputs.query import Run
from bids_parcellate.learn.features import build_features

LOGGER = logging.getLogger("bids_parcellate")

#: Hashed parameters that do not change a summary: selection (the runs themselves enter
#: the hash), clustering and output options. Everything else that is hashed (denoising,
#: smoothing, components, and any future option) invalidates summaries: a needless
#: recomputation is preferred to a stale summary.
_NOT_IN_SUMMARY = frozenset(
    {"method", "n_parcels", "random_seed", "standardize", "session_label", "task", "run",
     "bids_filters", "space", "res", "rena_scaling", "rena_n_iter", "kmeans_n_init",
     "kmeans_batch_size",
     # quality figures and the bootstrap consensus: computed from the features, never
     # part of them (a participant level run with --no-quality must not make the group
     # level recompute every summary)
     "quality", "split_half", "bootstrap",
     # region extraction and connectomes: applied to the features, not part of them
     "n_maps", "dictlearning_alpha", "region_threshold", "region_thresholding",
     "region_extractor", "min_region_size", "split_disconnected", "connectivity"}
)
FORMAT_VERSION = 1


@dataclass
class Summary:
    """A unit's summary (see the module docstring).

    Attributes
    ----------
    subject, session : str, str or None
        The unit.
    features : ndarray, shape (n_voxels, k), float32
        Clustering features over the in-mask voxels (C order of ``mask``).
    mask : ndarray of bool, 3D
        The unit's brain mask (intersection of its runs' masks).
    affine : ndarray (4, 4)
    n_volumes : int
        Kept volumes of all runs used (the features are divided by its square root when
        combined, so that every unit weighs the same in the group).
    parameters : dict
        Parameters and selected runs that produced it; ``hash`` is their digest.
    hash : str
    entities : dict
        ``space`` and ``res`` of the runs (for the file name).
    runs_used : list of str
        BOLD file names actually used (runs skipped for too few volumes are not).
    """

    subject: str
    session: str | None
    features: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    n_volumes: int
    parameters: dict
    hash: str
    entities: dict
    runs_used: list[str]

    @property
    def name(self) -> str:
        """The unit's name (``sub-<label>[_ses-<label>]``)."""
        return naming.unit_prefix(self.subject, self.session)


def summary_parameters(config: Config, runs: list[Run]) -> dict:
    """What determines a unit's summary: parameters, version and selected runs.

    Parameters
    ----------
    config : Config
    runs : list of Run
        The unit's selected runs.

    Returns
    -------
    dict
        ``format``, ``version`` (major.minor), ``parameters`` (the hashed parameters
        that change features: not those of :data:`_NOT_IN_SUMMARY`), ``runs`` (sorted
        BOLD file names).
    """
    params = {k: v for k, v in config.hashed_parameters().items() if k not in _NOT_IN_SUMMARY}
    return {
        "format": FORMAT_VERSION,
        "version": ".".join(__version__.split(".")[:2]),
        "parameters": params,
        "runs": sorted(run.bold.name for run in runs),
    }


def summary_hash(config: Config, runs: list[Run]) -> str:
    """Short stable digest of :func:`summary_parameters`.

    Parameters
    ----------
    config : Config
    runs : list of Run

    Returns
    -------
    str
        16 hexadecimal characters of the sha256 of the parameters as sorted JSON.
    """
    payload = json.dumps(summary_parameters(config, runs), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _entities(runs: list[Run], config: Config) -> dict:
    first = runs[0].entities
    return {"space": first.get("space", config.space), "res": output_res(config, runs)}


def make_summary(config: Config, runs: list[Run], used: list[Run], mask: np.ndarray,
                 affine: np.ndarray, features: np.ndarray, n_volumes: int) -> Summary:
    """Wrap features already computed (by the participant level) into a :class:`Summary`.

    Parameters
    ----------
    config : Config
    runs : list of Run
        The unit's selected runs (they enter the hash).
    used : list of Run
        The runs the features were built from.
    mask, affine : the unit's brain mask and its affine.
    features : ndarray (n_voxels, k)
    n_volumes : int
        Kept volumes in total.

    Returns
    -------
    Summary
    """
    subject, session = runs[0].unit
    return Summary(
        subject=subject, session=session,
        features=np.asarray(features, dtype=np.float32), mask=np.asarray(mask, dtype=bool),
        affine=np.asarray(affine, dtype=np.float64), n_volumes=int(n_volumes),
        parameters=summary_parameters(config, runs), hash=summary_hash(config, runs),
        entities=_entities(runs, config), runs_used=[r.bold.name for r in used],
    )


def compute_summary(config: Config, runs: list[Run]) -> Summary:
    """Denoise a unit's runs and build its summary (reads each BOLD once).

    Parameters
    ----------
    config : Config
    runs : list of Run
        The unit's complete runs.

    Returns
    -------
    Summary

    Raises
    ------
    UserError
        When a file is unusable or no run is left.
    """
    # the participant level's mask and grid (--mask-strategy, --mask, --target-*)
    unit_mask, cleaned, skipped = clean_runs(runs, build_unit_mask(runs, config), config)
    if not cleaned:
        name = naming.unit_prefix(*runs[0].unit)
        reasons = "; ".join(f"{s.bold.name}: {s.reason}" for s in skipped)
        raise UserError(f"{name}: no usable runs ({reasons})")
    data = [c.data for c in cleaned]
    used = [c.run for c in cleaned]
    del cleaned
    n_volumes = sum(d.shape[0] for d in data)
    features = build_features(data, unit_mask.mask, unit_mask.affine, config.smoothing_fwhm,
                              config.n_components, weighting=config.feature_weighting)
    del data
    return make_summary(config, runs, used, unit_mask.mask, unit_mask.affine, features,
                        n_volumes)


# --------------------------------------------------------------------------- files
def summary_path(config: Config, subject: str, session: str | None, entities: dict) -> Path:
    """Where a unit's summary lives in OUTPUT_DIR.

    Parameters
    ----------
    config : Config
    subject : str
    session : str or None
    entities : dict
        ``space`` and ``res`` of the unit's outputs.

    Returns
    -------
    Path
    """
    return config.output_dir / naming.build_name("summary", {
        "subject": subject, "session": session, **entities,
        "desc": "summary", "suffix": "features", "extension": ".npz"})


def write_summary(config: Config, summary: Summary, source_dirs: list[Path],
                  runs: list[Run]) -> list[Path]:
    """Write the summary (``.npz``) and a readable sidecar (``.json``).

    Parameters
    ----------
    config : Config
    summary : Summary
    source_dirs : list of Path
        The input datasets (BIDS URIs of the runs in the sidecar).
    runs : list of Run
        The unit's selected runs.

    Returns
    -------
    list of Path
        The two files.
    """
    path = summary_path(config, summary.subject, summary.session, summary.entities)
    header = {
        "hash": summary.hash,
        "parameters": summary.parameters,
        "runs_used": summary.runs_used,
        "n_volumes": summary.n_volumes,
    }
    written = [writers.write_npz(path, {
        "features": summary.features,
        "mask": summary.mask.astype(np.uint8),
        "affine": summary.affine,
        "header": np.array(json.dumps(header, sort_keys=True)),
    })]
    written.append(writers.write_json(path.with_name(path.name.replace(".npz", ".json")), {
        "Description": "Group-level input (map step): clustering features of this unit's "
                       "cleaned runs on its brain mask; read by the group level instead of "
                       "the BOLD files. Arrays: features (voxels x components, float32, "
                       "voxels in C order of mask), mask, affine, header (JSON).",
        "SummaryHash": summary.hash,
        "NumberOfVoxels": int(summary.mask.sum()),
        "NumberOfComponents": int(summary.features.shape[1]),
        "NumberOfVolumes": summary.n_volumes,
        "Parameters": summary.parameters["parameters"],
        "Sources": sorted(dataset.bids_uri(r.bold, source_dirs) for r in runs
                          if r.bold.name in summary.runs_used),
        "ConfigHash": config.config_hash(),
    }))
    return written


@dataclass(frozen=True)
class SummaryHeader:
    """What the reduce step reads of a summary file before its features."""

    path: Path
    hash: str
    n_volumes: int
    shape: tuple[int, ...]
    affine: np.ndarray


def read_header(path: Path) -> SummaryHeader | None:
    """Read a summary's header (not its features); ``None`` when unreadable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(str(npz["header"]))
            affine = np.asarray(npz["affine"], dtype=np.float64)
            shape = tuple(int(n) for n in npz["mask"].shape)
    except Exception as exc:  # a truncated or foreign file: recompute it
        LOGGER.warning("%s: unreadable summary, recomputing it (%s)", path.name, exc)
        return None
    return SummaryHeader(path=path, hash=header.get("hash", ""),
                         n_volumes=int(header.get("n_volumes", 0)), shape=shape, affine=affine)


def read_mask(path: Path) -> np.ndarray:
    """The brain mask stored in a summary (3D bool)."""
    with np.load(path, allow_pickle=False) as npz:
        return npz["mask"].astype(bool)


def read_features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The features (float32) and mask (bool) stored in a summary."""
    with np.load(path, allow_pickle=False) as npz:
        return np.asarray(npz["features"], dtype=np.float32), npz["mask"].astype(bool)
