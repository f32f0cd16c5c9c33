"""Table and sidecar schemas of the parcellation outputs, shared by both levels.

The dseg TSV columns (:data:`DSEG_COLUMNS`, :func:`dseg_table`), the processing
parameters recorded in every dseg sidecar (:func:`processing_parameters`), parcel names,
the timeseries sidecar (:func:`timeseries_sidecar`) and the connectivity matrices'
writer (:func:`write_relmats`).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bids_parcellate.config import Config
from bids_parcellate.connectome import measure_label
from bids_parcellate.connectome import sidecar as relmat_sidecar
from bids_parcellate.denoise import strategies
from bids_parcellate.derivatives import dataset, naming, writers
from bids_parcellate.inputs.grids import output_res
from bids_parcellate.learn.regions import auto_alpha
from bids_parcellate.results import UnitResult


def parcel_names(n: int) -> list[str]:
    """Column / table names of parcels 1..n (``parcel001``...)."""
    width = max(3, len(str(n)))
    return [f"parcel{i:0{width}d}" for i in range(1, n + 1)]


def dseg_table(labels: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                origin: np.ndarray | None = None) -> list[list]:
    """Rows of the dseg table; ``origin`` (map or original parcel of each region) is
    inserted as the third column when given.

    Parameters
    ----------
    labels : ndarray of int, shape (n_voxels,)
        Parcel labels 1..n over the in-mask voxels, in the order of ``np.argwhere(mask)``
        (0: no parcel).
    mask : ndarray of bool, 3D
        The mask ``labels`` are over.
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of the mask (centroids in mm).
    origin : ndarray of int, shape (n,), optional
        The ``component`` / ``original_parcel`` of each parcel.

    Returns
    -------
    list of list
        One row per parcel, in the order of :func:`dseg_columns`: index, name, origin
        (when given), voxel count and x, y, z centroid (mm, 2 decimals).
    """
    n = int(labels.max())
    coords = np.argwhere(mask).astype(np.float64)
    counts = np.bincount(labels, minlength=n + 1)[1:]
    centroid_vox = np.stack(
        [np.bincount(labels, weights=coords[:, d], minlength=n + 1)[1:] / counts
         for d in range(3)], axis=1)
    centroid_mm = nib.affines.apply_affine(affine, centroid_vox)
    names = parcel_names(n)
    return [
        [i + 1, names[i], *([int(origin[i])] if origin is not None else []),
         int(counts[i]), *(round(float(c), 2) for c in centroid_mm[i])]
        for i in range(n)
    ]


DSEG_COLUMNS = {
    "index": "Label value of the parcel in the dseg image.",
    "name": "Parcel name; also the column name in the timeseries files.",
    "n_voxels": "Number of voxels in the parcel.",
    "x": "Parcel centroid, x (mm, world coordinates of the image).",
    "y": "Parcel centroid, y (mm).",
    "z": "Parcel centroid, z (mm).",
}


#: Extra dseg column of region-based parcellations: what each region came from.
ORIGIN_COLUMNS = {
    "component": "Network map the region was extracted from (1-based volume of the "
                 "_probseg image of the same scale).",
    "original_parcel": "Parcel (1..scale) of the unsplit parcellation this connected "
                       "piece came from (--split-disconnected).",
}


def kept_volumes(result: UnitResult) -> int:
    """Kept (uncensored) volumes of the unit's runs, all runs together."""
    return sum(int(r.sample_mask.size) for r in result.runs)


def origin_column_name(config: Config) -> str | None:
    """The dseg column recording what each parcel came from: ``component`` (region-based
    methods), ``original_parcel`` (``--split-disconnected``), or None."""
    if config.is_decomposition:
        return "component"
    return "original_parcel" if config.split_disconnected else None


def dseg_columns(config: Config) -> tuple[dict[str, str], str | None]:
    """The dseg table's columns (name -> description) for ``config``'s method, and the
    origin column inserted third (``component`` or ``original_parcel``), if any."""
    origin_column = origin_column_name(config)
    columns = dict(DSEG_COLUMNS)
    if origin_column:
        columns = {"index": columns.pop("index"), "name": columns.pop("name"),
                   origin_column: ORIGIN_COLUMNS[origin_column], **columns}
    return columns, origin_column


def timeseries_sidecar(config: Config, clean, parcellation: str, source_dirs: list[Path],
                       atlas: str | None = None) -> dict:
    """The JSON sidecar of one run's parcel timeseries, at either level.

    Parameters
    ----------
    config : Config
    clean : CleanRun or RunSummary
        The run (``run``), its volumes (``n_volumes``), the kept ones (``sample_mask``)
        and the confounds regressed out (``confounds``).
    parcellation : str
        Relative path of the dseg image the parcels come from.
    source_dirs : list of Path
        The input datasets (BIDS URIs of the sources).
    atlas : str, optional
        The group atlas label (group level).

    Returns
    -------
    dict
    """
    run = clean.run
    kept = set(np.asarray(clean.sample_mask).tolist())
    return {
        "Description": "Mean cleaned BOLD signal of each parcel"
                       + (" of the group atlas" if atlas else "")
                       + "; one row per BOLD volume, censored volumes are n/a.",
        "RepetitionTime": run.tr,
        "SamplingFrequency": 1.0 / run.tr,
        "NumberOfVolumes": clean.n_volumes,
        "CensoredVolumes": sorted(set(range(clean.n_volumes)) - kept),
        "DenoiseStrategy": config.denoise_strategy,
        "DenoiseStrategyDescription": strategies()[config.denoise_strategy]["description"],
        "Confounds": clean.confounds,
        "Detrend": config.detrend,
        "HighPass": config.high_pass,
        "LowPass": config.low_pass,
        "Standardize": config.standardize,
        **({"Atlas": atlas} if atlas else {}),
        "Parcellation": parcellation,
        "Sources": [dataset.bids_uri(run.bold, source_dirs),
                    dataset.bids_uri(run.confounds, source_dirs) if run.confounds else None],
        "ConfigHash": config.config_hash(),
    }


def processing_parameters(config: Config, n_volumes: int = 0) -> dict:
    """The ``Parameters`` of every dseg (and probseg) sidecar, at either level.

    Parameters
    ----------
    config : Config
    n_volumes : int
        Kept volumes the parcellation was learned from, all runs together: the automatic
        ``DictLearningAlpha`` (:func:`bids_parcellate.learn.regions.auto_alpha`) depends
        on it when ``--dictlearning-alpha`` is not given.

    Returns
    -------
    dict
        BIDS-style keys (``Method``, ``SmoothingFWHM``, ``DenoiseStrategy``...), the mask
        and grid options given, and the method's knobs (``RenaScaling``...).
    """
    if config.is_decomposition:
        alpha = ({"DictLearningAlpha": config.dictlearning_alpha or auto_alpha(n_volumes)}
                 if config.method == "dictlearning" else {})
        params = {
            "Method": config.method,
            **alpha,
            "SmoothingFWHM": config.smoothing_fwhm,
            "RandomSeed": config.random_seed,
            "RegionThresholding": config.region_thresholding,
            "RegionThreshold": config.region_threshold,
            "RegionExtractor": config.region_extractor,
            "MinRegionSize": config.min_region_size,
            "DenoiseStrategy": config.denoise_strategy,
            "Standardize": config.standardize,
            "Detrend": config.detrend,
            "HighPass": config.high_pass,
            "LowPass": config.low_pass,
        }
    else:
        split = ({"SplitDisconnected": True, "MinRegionSize": config.min_region_size}
                 if config.split_disconnected else {})
        params = {
            "Method": config.method,
            "SmoothingFWHM": config.smoothing_fwhm,
            "NumberOfComponents": config.n_components,
            "FeatureWeighting": config.feature_weighting,
            **split,
            "RandomSeed": config.random_seed,
            "Bootstrap": config.bootstrap,
            "DenoiseStrategy": config.denoise_strategy,
            "Standardize": config.standardize,
            "Detrend": config.detrend,
            "HighPass": config.high_pass,
            "LowPass": config.low_pass,
        }
    # brain mask and grid (--mask-strategy, --mask, --target-*), method knobs
    params["MaskStrategy"] = config.mask_strategy
    params["KeepFlatVoxels"] = config.keep_flat_voxels
    if config.mask_args:
        params["MaskArgs"] = config.mask_args
    if config.mask is not None:
        params["Mask"] = config.mask.name
    if config.target_resolution is not None:
        params["TargetResolution"] = config.target_resolution
    if config.target_affine is not None:
        params["TargetAffine"] = [list(row) for row in config.target_affine]
    if config.target_shape is not None:
        params["TargetShape"] = list(config.target_shape)
    knobs = {"scaling": "RenaScaling", "n_iter": "RenaNIter", "n_init": "KMeansNInit",
             "batch_size": "KMeansBatchSize"}
    for name, value in config.method_options().items():
        params[knobs[name]] = value
    return params


#: Column descriptions for the dseg sidecar (``index`` and ``name`` are defined by BIDS).
DSEG_COLUMNS_JSON = {name: {"Description": text} for name, text in DSEG_COLUMNS.items()
                     if name not in ("index", "name")}


def write_relmats(config: Config, entities: dict, names: list[str],
                  by_kind: dict[str, np.ndarray], extra: dict,
                  kind: str = "relmat") -> list[Path]:
    """Write one ``_relmat`` TSV + JSON per measure (``kind``: the path pattern).

    Parameters
    ----------
    config : Config
    entities : dict
        Entities of the matrices (``meas`` and ``suffix`` are added).
    names : list of str
        Parcel names: the header and the ``node`` column.
    by_kind : dict of str -> ndarray, shape (n_parcels, n_parcels)
        Measure (nilearn kind) -> matrix.
    extra : dict
        Additional sidecar keys (parcellation, timeseries, number of volumes...).
    kind : str
        Path pattern of :func:`bids_parcellate.derivatives.naming.build_name`
        (``relmat`` or ``group_relmat``).

    Returns
    -------
    list of Path
        The files written.
    """
    out = config.output_dir
    written = []
    for measure, matrix in by_kind.items():
        ents = {**entities, "meas": measure_label(measure), "suffix": "relmat"}
        written.append(writers.write_matrix_tsv(
            out / naming.build_name(kind, {**ents, "extension": ".tsv"}),
            names, matrix, row_names=("node", names)))
        written.append(writers.write_json(
            out / naming.build_name(kind, {**ents, "extension": ".json"}),
            {**relmat_sidecar(measure),
             "NodeNames": "the node column and header: parcel names of the dseg table",
             **extra, "ConfigHash": config.config_hash()}))
    return written


def write_stability(config: Config, path: Path, stability: np.ndarray, labels: np.ndarray,
                    mask: np.ndarray, affine: np.ndarray, extra: dict) -> list[Path]:
    """Write a per-voxel bootstrap stability map (``stat-stability_boldmap``) and its JSON.

    Parameters
    ----------
    config : Config
        ``--bootstrap`` (the number of resamples) and the config hash.
    path : Path
        The ``.nii.gz`` path (the JSON is beside it).
    stability : ndarray, shape (n_voxels,), float32
        :func:`bids_parcellate.learn.consensus.voxel_stability` over the mask's voxels.
    labels : ndarray of int, shape (n_voxels,)
        The parcellation the stability is of (its parcels' mean stability is recorded).
    mask, affine : ndarray
        The grid of the map (0 outside the mask).
    extra : dict
        More sidecar keys (``Parcellation``, ``SpatialReference``, ``Resolution``...).

    Returns
    -------
    list of Path
        The image and its sidecar.
    """
    volume = np.zeros(mask.shape, dtype=np.float32)
    volume[mask] = stability
    img = nib.Nifti1Image(volume, affine)
    img.header.set_xyzt_units("mm")
    counts = np.bincount(labels)
    per_parcel = np.bincount(labels, weights=stability.astype(np.float64))[1:] / np.maximum(
        counts[1:], 1)
    sidecar = {
        "Description": "Per-voxel stability of the parcellation over the "
                       f"{config.bootstrap} --bootstrap resamples (the BASC stability of "
                       "a voxel with its parcel): the mean, over resamples, of the share "
                       "of the other voxels of its parcel that fell in the same parcel "
                       "as it in that resample. 1: always together with its parcel; low "
                       "values mark unstable borders. 0 outside the mask.",
        "NumberOfResamples": int(config.bootstrap),
        "MeanStability": round(float(stability.mean()), 4),
        "ParcelStability": [round(float(v), 4) for v in per_parcel],
        **extra,
        "ConfigHash": config.config_hash(),
    }
    json_path = path.with_name(path.name.removesuffix(".nii.gz") + ".json")
    return [writers.write_nifti(path, img), writers.write_json(json_path, sidecar)]


# --------------------------------------------------------------------------- record
def unit_entities(config: Config, result: UnitResult) -> dict:
    """Entities of the unit's outputs, as the participant level names its dseg files.

    ``res`` is that of the outputs (:func:`bids_parcellate.inputs.grids.output_res`): the
    ``--target-*`` grid's label when the data were resampled, else the input BOLD's.

    Parameters
    ----------
    config : Config
    result : UnitResult
        The unit (its subject, session and runs).

    Returns
    -------
    dict
        ``subject``, ``session``, ``space``, ``res`` (None when the outputs have none)
        and ``seg``.
    """
    runs = [r.run for r in result.runs]
    return {"subject": result.subject, "session": result.session,
            "space": runs[0].entities.get("space", config.space),
            "res": output_res(config, runs), "seg": naming.seg_label(config.method)}
