"""A participant unit's files: its dseg images, tables and sidecars at every scale, the
network maps of region-based methods, the parcel timeseries and connectomes of every
run, and the quality tables. Names come from :mod:`.naming`, schemas from :mod:`.tables`,
every write goes through :mod:`.writers` (atomic).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from bids_parcellate.config import Config
from bids_parcellate.derivatives import dataset, naming, quality_tables, writers
from bids_parcellate.derivatives.tables import (
    dseg_columns,
    dseg_table,
    kept_volumes,
    parcel_names,
    processing_parameters,
    timeseries_sidecar,
    unit_entities,
    write_relmats,
    write_stability,
)
from bids_parcellate.extract import align_to_volumes
from bids_parcellate.learn.features import labels_to_volume
from bids_parcellate.learn.regions import RegionSet
from bids_parcellate.results import UnitResult
from bids_parcellate.words import plural

if TYPE_CHECKING:  # annotations only
    from bids_parcellate.inputs.bold import UnitMask


def write_unit_files(config: Config, result: UnitResult, unit_mask: UnitMask, labels: dict,
                series: dict, source_dirs: list[Path],
                regions: dict[int, RegionSet] | None = None,
                stability: dict | None = None) -> list[Path]:
    """Write the dseg files of every scale (with ``--bootstrap``, their stability maps)
    and the timeseries of every run.

    Parameters
    ----------
    config : Config
    result : UnitResult
        The unit (its subject, session and runs: volumes, kept volumes, confounds).
    unit_mask : UnitMask
        The unit's mask and grid (the dseg images are on it).
    labels : dict
        scale -> int labels (0..n) over the in-mask voxels.
    series : dict
        BOLD path -> scale -> parcel timeseries, ndarray (n_kept, n_parcels).
    source_dirs : list of Path
        The input datasets (BIDS URIs of the sources).
    regions : dict of int -> RegionSet, optional
        Each scale's regions; needed for their ``origin`` column with region-based
        methods and ``--split-disconnected``.
    stability : dict, optional
        scale -> per-voxel bootstrap stability (``Learned.stability``): written as
        ``stat-stability_boldmap`` beside the dseg.

    Returns
    -------
    list of Path
        The files written.
    """
    out = config.output_dir
    first = result.runs[0].run
    space = first.entities.get("space", config.space)
    res = unit_entities(config, result)["res"]
    resolution = _resolution(unit_mask, res)
    seg = naming.seg_label(config.method)
    inputs = [p for c in result.runs for p in (c.run.bold, c.run.mask)]
    if config.mask is not None:
        inputs.append(config.mask)
    sources = sorted({dataset.bids_uri(p, source_dirs) for p in inputs})
    written: list[Path] = []
    for scale in sorted(labels):
        ents = {"subject": result.subject, "session": result.session, "space": space,
                "res": res, "seg": seg, "scale": scale, "suffix": "dseg"}
        volume = labels_to_volume(labels[scale], unit_mask.mask)
        img = nib.Nifti1Image(volume, unit_mask.affine)
        img.header.set_xyzt_units("mm")
        img.header.set_intent("label")
        written.append(writers.write_nifti(
            out / naming.build_name("dseg", {**ents, "extension": ".nii.gz"}), img))
        columns, origin_column = dseg_columns(config)
        table = dseg_table(labels[scale], unit_mask.mask, unit_mask.affine,
                            regions[scale].origin if origin_column else None)
        written.append(writers.write_tsv(
            out / naming.build_name("dseg", {**ents, "extension": ".tsv"}),
            list(columns), table))
        sidecar = {
            "Description": _dseg_description(config, scale, int(labels[scale].max()),
                                             result),
            "Method": config.method,
            "NumberOfParcels": int(labels[scale].max()),
            "Parameters": processing_parameters(config, kept_volumes(result)),
            "Sources": sources,
            "SpatialReference": space,
            "BrainMask": f"{unit_mask.description}: {unit_mask.n_voxels} voxels",
            **({"VoxelsWithoutSignal": unit_mask.flat_voxels} if unit_mask.flat_voxels
               else {}),
            "ConfigHash": config.config_hash(),
            **{name: {"Description": text} for name, text in columns.items()
               if name not in ("index", "name")},
        }
        if config.is_decomposition:
            sidecar["NumberOfMaps"] = scale
        if res is not None:
            sidecar["Resolution"] = resolution
        written.append(writers.write_json(
            out / naming.build_name("dseg", {**ents, "extension": ".json"}), sidecar))
        if stability and scale in stability:
            written += write_stability(
                config, out / naming.build_name("stability", {
                    **ents, "stat": "stability", "suffix": "boldmap",
                    "extension": ".nii.gz"}),
                stability[scale], labels[scale], unit_mask.mask, unit_mask.affine,
                {"Parcellation": naming.build_name("dseg", {**ents, "extension": ".nii.gz"}),
                 "SpatialReference": space, **({"Resolution": resolution} if res else {})})

    for clean in result.runs:
        run = clean.run
        for scale in sorted(labels):
            ents = {**run.entities, "space": space, "res": res, "seg": seg,
                    "scale": scale, "stat": "mean", "suffix": "timeseries"}
            block = align_to_volumes(series[run.bold][scale], clean.sample_mask,
                                     clean.n_volumes)
            names = parcel_names(block.shape[1])
            written.append(writers.write_matrix_tsv(
                out / naming.build_name("timeseries", {**ents, "extension": ".tsv"}),
                names, block))
            dseg = naming.build_name("dseg", {
                "subject": result.subject, "session": result.session, "space": space,
                "res": res, "seg": seg, "scale": scale, "suffix": "dseg",
                "extension": ".nii.gz"})
            written.append(writers.write_json(
                out / naming.build_name("timeseries", {**ents, "extension": ".json"}),
                timeseries_sidecar(config, clean, dseg, source_dirs)))
    return written


def _dseg_description(config: Config, scale: int, n_regions: int,
                      result: UnitResult) -> str:
    learned = f"learned from {plural(len(result.runs), 'run')} of {result.name}"
    if config.is_decomposition:
        return (f"{n_regions} regions extracted from {scale} {config.method} network maps "
                f"{learned}; voxels in no region are 0")
    if config.split_disconnected:
        return (f"{config.method} parcellation with {scale} parcels {learned}, split into "
                f"{n_regions} connected pieces")
    return f"{config.method} parcellation with {scale} parcels {learned}"


def _resolution(unit_mask, res: str) -> str:
    """The ``Resolution`` sidecar value that BIDS requires with ``res-``."""
    if unit_mask.grid is not None:  # resampled: the label names the new grid
        return f"res-{res}: {unit_mask.grid['description']}"
    return f"res-{res}: the resolution of the input BOLD grid"


def write_maps(config: Config, result: UnitResult, unit_mask: UnitMask,
                regions: dict[int, RegionSet], source_dirs: list[Path]) -> list[Path]:
    """Write the network maps of every scale as a 4D ``_probseg`` image.

    Parameters
    ----------
    config : Config
    result : UnitResult
    unit_mask : UnitMask
    regions : dict of int -> RegionSet
        Each scale's regions; scales without maps (clustering methods) write nothing.
    source_dirs : list of Path

    Returns
    -------
    list of Path
        The files written (none for clustering methods).
    """
    out = config.output_dir
    base = unit_entities(config, result)
    written = []
    for scale in sorted(regions):
        maps = regions[scale].maps
        if maps is None:
            continue
        ents = {**base, "scale": scale, "suffix": "probseg"}
        volume = np.zeros(unit_mask.mask.shape + (maps.shape[0],), dtype=np.float32)
        volume[unit_mask.mask] = maps.T
        img = nib.Nifti1Image(volume, unit_mask.affine)
        img.header.set_xyzt_units("mm")
        written.append(writers.write_nifti(
            out / naming.build_name("probseg", {**ents, "extension": ".nii.gz"}), img))
        counts = np.bincount(regions[scale].origin, minlength=maps.shape[0] + 1)[1:]
        sidecar = {
            "Description": f"{maps.shape[0]} {config.method} network maps learned from "
                           f"{plural(len(result.runs), 'run')} of {result.name}: volume k "
                           "is map k (the component column of the dseg table). Values are map "
                           "loadings, not probabilities.",
            "Method": config.method,
            "NumberOfMaps": int(maps.shape[0]),
            "RegionsPerMap": counts.tolist(),
            "Parameters": processing_parameters(config, kept_volumes(result)),
            "Sources": sorted({dataset.bids_uri(p, source_dirs)
                               for c in result.runs for p in (c.run.bold, c.run.mask)}),
            "SpatialReference": base["space"],
            "ConfigHash": config.config_hash(),
        }
        if base["res"] is not None:
            sidecar["Resolution"] = _resolution(unit_mask, base["res"])
        written.append(writers.write_json(
            out / naming.build_name("probseg", {**ents, "extension": ".json"}), sidecar))
    return written


def write_connectomes(config: Config, result: UnitResult, series: dict,
                       matrices: dict) -> list[Path]:
    """Write one ``_relmat`` (TSV + JSON) per run, scale and measure.

    Parameters
    ----------
    config : Config
    result : UnitResult
    series : dict
        BOLD path -> scale -> parcel timeseries, ndarray (n_kept, n_parcels) (the parcel
        names).
    matrices : dict
        BOLD path -> scale -> measure -> ndarray (n_parcels, n_parcels)
        (:func:`bids_parcellate.connectome.run_connectomes`).

    Returns
    -------
    list of Path
        The files written.
    """
    base = unit_entities(config, result)
    written = []
    for summary in result.runs:
        run = summary.run
        for scale, by_kind in sorted(matrices[run.bold].items()):
            ents = {**run.entities, "space": base["space"], "res": base["res"],
                    "seg": base["seg"], "scale": scale}
            timeseries = naming.build_name(
                "timeseries", {**ents, "stat": "mean", "suffix": "timeseries",
                               "extension": ".tsv"})
            dseg = naming.build_name("dseg", {**base, "scale": scale, "suffix": "dseg",
                                               "extension": ".nii.gz"})
            written += write_relmats(
                config, ents, parcel_names(series[run.bold][scale].shape[1]), by_kind,
                {"Parcellation": dseg, "Timeseries": timeseries,
                 "NumberOfVolumes": int(summary.sample_mask.size)})
    return written


def write_quality(config: Config, result: UnitResult, figures: dict[int, dict]
                   ) -> list[Path]:
    """Write the unit's quality table (TSV + JSON) beside the dseg of every scale.

    Parameters
    ----------
    config : Config
    result : UnitResult
    figures : dict of int -> dict
        scale -> quality figures (:mod:`bids_parcellate.quality`), by column name.

    Returns
    -------
    list of Path
        The files written.
    """
    ents = unit_entities(config, result)
    rows = quality_tables.unit_rows(result.subject, result.session, config.method,
                             config.bootstrap, result.n_voxels, figures)
    extra = {scale: {"Parcellation": naming.build_name(
                         "dseg", {**ents, "scale": scale, "suffix": "dseg",
                                  "extension": ".nii.gz"}),
                     "RandomSeed": config.random_seed,
                     "ConfigHash": config.config_hash()}
             for scale in figures}
    return quality_tables.write_unit_tables(config.output_dir, ents, rows, extra)
