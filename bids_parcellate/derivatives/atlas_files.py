"""The group atlas's files: ``atlas-<label>_description.json``, the atlas dseg images,
tables and sidecars (``tpl-<space>/``), the group network maps, every run's timeseries
on the atlas, the connectomes on it (per run and the group mean), and the agreement
table of the participants' own parcellations with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_parcellate import __version__
from bids_parcellate.config import Config, UserError
from bids_parcellate.connectome import connectivity, group_connectomes
from bids_parcellate.derivatives import dataset, naming, writers
from bids_parcellate.derivatives.tables import (
    DSEG_COLUMNS,
    DSEG_COLUMNS_JSON,
    dseg_columns,
    dseg_table,
    parcel_names,
    processing_parameters,
    timeseries_sidecar,
    write_relmats,
    write_stability,
)
from bids_parcellate.extract import align_to_volumes
from bids_parcellate.inputs.query import Run, read_dataset_description
from bids_parcellate.learn.features import labels_to_volume
from bids_parcellate.learn.regions import RegionSet
from bids_parcellate.results import GroupMask, GroupResult
from bids_parcellate.words import plural

LOGGER = logging.getLogger("bids_parcellate")

UnitKey = tuple[str, str | None]

AGREEMENT_COLUMNS = {
    "participant_id": "Participant (sub-<label>).",
    "session_id": "Session (ses-<label>) when the participant level ran per session, "
                  "else n/a.",
    "scale": "Number of parcels.",
    "ari": "Adjusted Rand index between the participant's own parcellation and the "
           "group atlas, over the group mask (1: identical, about 0: chance).",
    "nmi": "Normalised mutual information (arithmetic mean normalisation) between the "
           "same two parcellations (1: identical).",
    "n_voxels": "Voxels compared (the group mask).",
}


def _dataset_name(config: Config) -> str:
    try:
        return str(read_dataset_description(config.bids_dir).get("Name", ""))
    except UserError:
        return ""


def _atlas_entities(label: str, space: str, res: str | None, scale: int) -> dict:
    return {"atlas": label, "space": space, "res": res, "scale": scale, "suffix": "dseg"}


def atlas_dseg_name(label: str, space: str, res: str | None, scale: int,
                    extension: str = ".nii.gz") -> str:
    """Relative path of the group atlas image (or table / sidecar) at one scale.

    Parameters
    ----------
    label : str
        The atlas label (``atlas-<label>``).
    space : str
    res : str or None
    scale : int
    extension : str
        ``.nii.gz``, ``.tsv`` or ``.json``.

    Returns
    -------
    str
        The path, relative to the output folder.
    """
    return naming.build_name("atlas_dseg", {**_atlas_entities(label, space, res, scale),
                                             "extension": extension})


def write_atlas(config: Config, result: GroupResult, gmask: GroupMask, labels: dict,
                space: str, res: str | None, regions: dict[int, RegionSet] | None = None,
                n_volumes: int = 0, stability: dict | None = None) -> list[Path]:
    """Write ``atlas-<label>_description.json`` and the dseg files of every scale (and
    the network maps, ``_probseg``, of dictlearning / canica; with ``--bootstrap``, the
    stability maps, ``stat-stability_boldmap``).

    Parameters
    ----------
    config : Config
    result : GroupResult
        The group level's record (atlas label, units, summaries).
    gmask : GroupMask
        The group mask and grid the atlas is on.
    labels : dict
        scale -> int labels (0..n) over the group mask's voxels.
    space : str
    res : str or None
        Entities of the atlas.
    regions : dict of int -> RegionSet, optional
        Each scale's regions (their ``origin`` column and network maps).
    n_volumes : int
        Kept volumes of every unit together (the automatic dictlearning alpha).
    stability : dict, optional
        scale -> per-voxel bootstrap stability over the group mask (``Learned.stability``).

    Returns
    -------
    list of Path
        The files written.
    """
    out = config.output_dir
    written = []
    regions = regions or {}
    sources = [f"bids::{path.relative_to(out).as_posix()}" for path in result.summaries]
    # every level records the same parameters (a plain clustering's included its
    # brain mask, standardisation, method knobs and bootstrap only since issue 16)
    parameters = {**processing_parameters(config, n_volumes),
                  "NumberOfComponents": config.n_components}
    columns, origin_column = dseg_columns(config)
    dataset_name = _dataset_name(config)
    written.append(writers.write_json(
        out / naming.build_name("atlas_description", {"atlas": result.label,
                                                       "suffix": "description",
                                                       "extension": ".json"}),
        {
            "Name": f"{result.label}: {config.method} group parcellation"
                    + (f" of {dataset_name}" if dataset_name else ""),
            "Description": f"Data-driven {config.method} parcellation learned by "
                           f"bids_parcellate from the cleaned BOLD runs of "
                           f"{plural(len(result.units), 'participant unit')}, at scales "
                           f"{', '.join(map(str, sorted(labels)))}.",
            "BIDSVersion": dataset.BIDS_VERSION,
            "SpatialReference": space,
            "DerivedFrom": "BOLD fMRI",
            "LevelType": "group",
            "ReferencesAndLinks": [dataset.CODE_URL],
            "Participants": result.units,
            "GroupMask": gmask.describe(),
            "Parameters": parameters,
            "ConfigHash": config.config_hash(),
            "GeneratedBy": [{"Name": "bids_parcellate", "Version": __version__,
                             "CodeURL": dataset.CODE_URL}],
            **({"Caution": result.caution} if result.caution else {}),
        }))
    for scale in sorted(labels):
        ents = _atlas_entities(result.label, space, res, scale)
        img = nib.Nifti1Image(labels_to_volume(labels[scale], gmask.mask), gmask.affine)
        img.header.set_xyzt_units("mm")
        img.header.set_intent("label")
        written.append(writers.write_nifti(
            out / naming.build_name("atlas_dseg", {**ents, "extension": ".nii.gz"}), img))
        written.append(writers.write_tsv(
            out / naming.build_name("atlas_dseg", {**ents, "extension": ".tsv"}),
            list(columns), dseg_table(labels[scale], gmask.mask, gmask.affine,
                                       regions[scale].origin if origin_column else None)))
        n_parcels = int(labels[scale].max())
        what = (f"{n_parcels} regions extracted from {scale} {config.method} network maps"
                if config.is_decomposition else
                f"{config.method} group parcellation with {scale} parcels"
                + (f" split into {n_parcels} connected pieces"
                   if config.split_disconnected else ""))
        sidecar = {
            "Name": f"{result.label}, " + (f"{scale} maps" if config.is_decomposition
                                           else f"{scale} parcels"),
            "Description": f"{what}, learned from {plural(len(result.units), 'unit')} on "
                           "the intersection of their brain masks.",
            "Method": config.method,
            "NumberOfParcels": int(labels[scale].max()),
            "SpatialReference": space,
            "Dimensions": 3,
            "CoordinateReportStrategy": "center_of_mass",
            "LevelType": "group",
            "Participants": result.units,
            "GroupMask": gmask.describe(),
            "Parameters": parameters,
            "Sources": sources,
            "ConfigHash": config.config_hash(),
            **DSEG_COLUMNS_JSON,
            **{name: {"Description": text} for name, text in columns.items()
               if name not in DSEG_COLUMNS},
        }
        if result.caution:  # fewer than 3 participants
            sidecar["Caution"] = result.caution
        if config.is_decomposition:
            sidecar["NumberOfMaps"] = scale
        if res is not None:
            sidecar["Resolution"] = (
                f"res-{res}: the input BOLD resampled to {res} voxels (nilearn "
                "resample_img: continuous interpolation for the BOLD, nearest neighbour "
                "for masks)" if config.resamples
                else f"res-{res}: the resolution of the input BOLD grid")
        written.append(writers.write_json(
            out / naming.build_name("atlas_dseg", {**ents, "extension": ".json"}), sidecar))
        if stability and scale in stability:
            written += write_stability(
                config, out / naming.build_name("atlas_stability", {
                    **ents, "stat": "stability", "suffix": "boldmap",
                    "extension": ".nii.gz"}),
                stability[scale], labels[scale], gmask.mask, gmask.affine,
                {"Parcellation": naming.build_name("atlas_dseg", {**ents,
                                                                  "extension": ".nii.gz"}),
                 "SpatialReference": space,
                 **({"Resolution": sidecar["Resolution"]} if res is not None else {})})
        maps = regions[scale].maps if scale in regions else None
        if maps is not None:
            written += write_atlas_maps(config, result, gmask, ents, maps,
                                         regions[scale].origin, sidecar)
    return written


def write_atlas_maps(config: Config, result: GroupResult, gmask: GroupMask, ents: dict,
                      maps: np.ndarray, origin: np.ndarray, dseg_sidecar: dict) -> list[Path]:
    """The group network maps as a 4D ``_probseg`` image next to the atlas dseg.

    Parameters
    ----------
    config : Config
    result : GroupResult
    gmask : GroupMask
    ents : dict
        Entities of the atlas dseg at this scale (``suffix`` is replaced).
    maps : ndarray, shape (n_maps, n_voxels)
        Map loadings over the group mask's voxels.
    origin : ndarray of int, shape (n_regions,)
        Map (1-based) each region was extracted from (counted into ``RegionsPerMap``).
    dseg_sidecar : dict
        The atlas dseg's sidecar, from which the shared keys are copied.

    Returns
    -------
    list of Path
        The image and its sidecar.
    """
    out = config.output_dir
    ents = {**ents, "suffix": "probseg"}
    volume = np.zeros(gmask.mask.shape + (maps.shape[0],), dtype=np.float32)
    volume[gmask.mask] = maps.T
    img = nib.Nifti1Image(volume, gmask.affine)
    img.header.set_xyzt_units("mm")
    counts = np.bincount(origin, minlength=maps.shape[0] + 1)[1:]
    keep = ("SpatialReference", "LevelType", "Participants", "GroupMask", "Parameters",
            "Sources", "ConfigHash", "Resolution", "Caution")
    sidecar = {
        "Name": f"{result.label}, {maps.shape[0]} network maps",
        "Description": f"{maps.shape[0]} {config.method} network maps of the group: volume "
                       "k is map k (the component column of the atlas dseg table). Values "
                       "are map loadings, not probabilities.",
        "Method": config.method,
        "NumberOfMaps": int(maps.shape[0]),
        "RegionsPerMap": counts.tolist(),
        **{k: dseg_sidecar[k] for k in keep if k in dseg_sidecar},
    }
    return [writers.write_nifti(
                out / naming.build_name("atlas_probseg", {**ents, "extension": ".nii.gz"}),
                img),
            writers.write_json(
                out / naming.build_name("atlas_probseg", {**ents, "extension": ".json"}),
                sidecar)]


def write_atlas_timeseries(config: Config, label: str, run: Run, clean, series: dict,
                           space: str, res: str | None, source_dirs: list[Path]) -> list[Path]:
    """One run's parcel timeseries on the group atlas at every scale (TSV + JSON).

    Parameters
    ----------
    config : Config
    label : str
        The atlas label.
    run : Run
    clean : CleanRun
        The run's cleaning record (volumes, kept volumes, confounds; data freed).
    series : dict
        scale -> (kept volumes x parcels) timeseries.
    space, res : str, str or None
        Entities of the atlas.
    source_dirs : list of Path

    Returns
    -------
    list of Path
    """
    written = []
    for scale in sorted(series):
        ents = {**run.entities, "space": space, "res": res, "atlas": label,
                "scale": scale, "stat": "mean", "suffix": "timeseries"}
        block = align_to_volumes(series[scale], clean.sample_mask, clean.n_volumes)
        written.append(writers.write_matrix_tsv(
            config.output_dir / naming.build_name("timeseries", {**ents, "extension": ".tsv"}),
            parcel_names(block.shape[1]), block))
        written.append(writers.write_json(
            config.output_dir / naming.build_name("timeseries", {**ents,
                                                                 "extension": ".json"}),
            timeseries_sidecar(config, clean, atlas_dseg_name(label, space, res, scale),
                               source_dirs, atlas=label)))
    return written


def write_group_connectomes(config: Config, result: GroupResult, collected: list,
                            labels: dict, space: str, res: str | None) -> list[Path]:
    """Connectomes on the group atlas: per run (``--connectivity`` measures, tangent
    included) and the group mean (nilearn ``ConnectivityMeasure.mean_``: the mean of the
    runs' matrices; for tangent the geometric mean of their covariances, the reference
    point of the tangent space). Every run counts once.

    Parameters
    ----------
    config : Config
    result : GroupResult
    collected : list
        ``(unit key, run, kept volumes, scale -> timeseries)`` of every run, as
        :func:`bids_parcellate.group.apply.apply_atlas` collects them.
    labels : dict
        scale -> labels of the atlas (the scales written).
    space : str
    res : str or None

    Returns
    -------
    list of Path
        The files written.

    ``tangent`` needs two runs: when runs were skipped at the group level (after
    :func:`bids_parcellate.group.checks.check_tangent` passed) and fewer remain, its
    files are left out with a warning, and the other measures are written.
    """
    written = []
    participants = sorted({naming.unit_prefix(*key) for key, *_ in collected})
    kinds = list(config.connectivity)
    if "tangent" in kinds and len(collected) < 2:
        LOGGER.warning("--connectivity tangent: no tangent-space matrices, since only %d "
                       "run is left at the group level (it needs two)", len(collected))
        kinds.remove("tangent")
    for scale in sorted(labels):
        series = [by_scale[scale] for *_, by_scale in collected]
        names = parcel_names(series[0].shape[1])
        dseg = atlas_dseg_name(result.label, space, res, scale)
        group = group_connectomes(series, kinds)
        for index, (_, run, n_kept, by_scale) in enumerate(collected):
            ents = {**run.entities, "space": space, "res": res, "atlas": result.label,
                    "scale": scale}
            per_run = {}
            for kind in kinds:
                tangent_runs = group[kind][0]
                per_run[kind] = (tangent_runs[index] if tangent_runs is not None else
                                 connectivity([by_scale[scale]], kind)[0])
            written += write_relmats(
                config, ents, names, per_run,
                {"Parcellation": dseg, "Atlas": result.label,
                 "Timeseries": naming.build_name("timeseries", {
                     **ents, "stat": "mean", "suffix": "timeseries", "extension": ".tsv"}),
                 "NumberOfVolumes": n_kept})
        common = {"Parcellation": dseg, "Atlas": result.label, "NumberOfRuns": len(series),
                  "Participants": participants}
        for kind in kinds:
            about = ({"Measure": "Geometric mean covariance",
                      "MeasureDescription": "Geometric (Riemannian) mean of the runs' "
                                            "Ledoit-Wolf covariances: the reference point "
                                            "of the tangent space of the per-run "
                                            "meas-tangent matrices (nilearn "
                                            "ConnectivityMeasure.mean_, kind 'tangent')."}
                     if kind == "tangent" else
                     {"Description": "Group mean: the mean of every run's matrix "
                                     "(nilearn ConnectivityMeasure.mean_)."})
            written += write_relmats(
                config, {"atlas": result.label, "scale": scale, "res": res}, names,
                {kind: group[kind][1]}, {**about, **common}, kind="group_relmat")
    return written


def write_agreement(config: Config, result: GroupResult, units: dict[UnitKey, list[Run]],
                    gmask: GroupMask, labels: dict, space: str,
                    res: str | None) -> list[Path]:
    """ARI and NMI of each unit's own parcellation (same method, scale) with the group's.

    Own parcellations are read from OUTPUT_DIR (written by the participant level); units
    and scales without one are left out, and no table is written when there is none.

    Parameters
    ----------
    config : Config
    result : GroupResult
    units : dict of (subject, session) -> list of Run
        The units of the atlas.
    gmask : GroupMask
    labels : dict
        scale -> int labels over the group mask's voxels.
    space : str
    res : str or None

    Returns
    -------
    list of Path
        The table and its sidecar, or nothing.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rows = []
    seg = naming.seg_label(config.method)
    for key in units:
        for scale in sorted(labels):
            own_path = config.output_dir / naming.build_name("dseg", {
                "subject": key[0], "session": key[1], "space": space, "res": res, "seg": seg,
                "scale": scale, "suffix": "dseg", "extension": ".nii.gz"})
            if not own_path.is_file():
                continue
            own_img = nib.load(own_path)
            if own_img.shape[:3] != gmask.mask.shape:
                continue
            own = np.asarray(own_img.dataobj)[gmask.mask]
            group = labels[scale]
            rows.append([f"sub-{key[0]}", f"ses-{key[1]}" if key[1] else None, scale,
                         round(float(adjusted_rand_score(own, group)), 6),
                         round(float(normalized_mutual_info_score(own, group)), 6),
                         int(own.size)])
    if not rows:
        LOGGER.info("no participant-level %s parcellation at scales %s in OUTPUT_DIR: no "
                    "agreement table", config.method, ", ".join(map(str, sorted(labels))))
        return []
    columns = list(AGREEMENT_COLUMNS)
    if not any(key[1] for key in units):  # no sessions: no session_id column
        columns.remove("session_id")
        rows = [row[:1] + row[2:] for row in rows]
    ents = {"atlas": result.label, "suffix": "agreement"}
    out = config.output_dir
    written = [writers.write_tsv(out / naming.build_name("group_table",
                                                          {**ents, "extension": ".tsv"}),
                                 columns, rows)]
    written.append(writers.write_json(
        out / naming.build_name("group_table", {**ents, "extension": ".json"}),
        {
            "Description": "Agreement of each participant's own parcellation (participant "
                           "level, same method and scale) with the group atlas "
                           f"atlas-{result.label}.",
            "Atlas": result.label,
            **{name: {"Description": AGREEMENT_COLUMNS[name]} for name in columns},
        }))
    at = columns.index("scale")
    summary = {scale: [r[at + 1] for r in rows if r[at] == scale] for scale in sorted(labels)}
    for scale, values in summary.items():
        if values:
            LOGGER.info("agreement with the group atlas at scale %d: median ARI %.3f over %s",
                        scale, float(np.median(values)), plural(len(values), "unit"))
    return written
