"""Participant level: for each (participant, session) unit, denoise its runs, learn one
parcellation at every scale, extract parcel timeseries and write the outputs.

Data move forward only: each run's BOLD is read once (:mod:`bids_parcellate.denoise`),
features are built from the cleaned runs (:mod:`bids_parcellate.parcellate`), the same
cleaned runs give the timeseries (:mod:`bids_parcellate.extract`), and only
:mod:`bids_parcellate.outputs` names and writes files. A unit's outputs are written once
it has been fully computed, so a failing unit leaves nothing behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_parcellate import quality, report
from bids_parcellate.config import Config, UserError
from bids_parcellate.connectome import run_connectomes
from bids_parcellate.denoise import CleanRun, clean_runs, strategies
from bids_parcellate.derivatives import dataset, markers, naming, writers
from bids_parcellate.derivatives.tables import (
    DSEG_COLUMNS,
    ORIGIN_COLUMNS,
    dseg_table,
    kept_volumes,
    origin_column_name,
    parcel_names,
    processing_parameters,
    unit_entities,
    write_relmats,
)
from bids_parcellate.extract import align_to_volumes, parcel_timeseries
from bids_parcellate.inputs.bold import UnitMask
from bids_parcellate.inputs.grids import DATA_STRATEGIES, build_unit_mask
from bids_parcellate.inputs.query import Run, Selection, Skipped
from bids_parcellate.learn.consensus import consensus_parcellation
from bids_parcellate.learn.features import (
    build_features,
    grid_connectivity,
    labels_to_volume,
    prepare_runs,
)
from bids_parcellate.learn.methods import LabelsByScale, check_scales, parcellate
from bids_parcellate.learn.regions import RegionSet, learn_regions, split_disconnected
from bids_parcellate.results import RunSummary, UnitResult
from bids_parcellate.runtime import cache, helper_process, parallel
from bids_parcellate.runtime.progress import Progress
from bids_parcellate.summary import Summary, make_summary, write_summary

LOGGER = logging.getLogger("bids_parcellate")
























def _write_unit(config: Config, result: UnitResult, unit_mask, labels: dict,
                series: dict, source_dirs: list[Path],
                regions: dict[int, RegionSet] | None = None) -> list[Path]:
    """Write the dseg files of every scale and the timeseries of every run."""
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
        origin_column = origin_column_name(config)
        columns = dict(DSEG_COLUMNS)
        if origin_column:
            columns = {"index": columns.pop("index"), "name": columns.pop("name"),
                       origin_column: ORIGIN_COLUMNS[origin_column], **columns}
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

    strategy_text = strategies()[config.denoise_strategy]["description"]
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
            written.append(writers.write_json(
                out / naming.build_name("timeseries", {**ents, "extension": ".json"}),
                {
                    "Description": "Mean cleaned BOLD signal of each parcel; one row per "
                                   "BOLD volume, censored volumes are n/a.",
                    "RepetitionTime": run.tr,
                    "SamplingFrequency": 1.0 / run.tr,
                    "NumberOfVolumes": clean.n_volumes,
                    "CensoredVolumes": clean.censored,
                    "DenoiseStrategy": config.denoise_strategy,
                    "DenoiseStrategyDescription": strategy_text,
                    "Confounds": clean.confounds,
                    "Detrend": config.detrend,
                    "HighPass": config.high_pass,
                    "LowPass": config.low_pass,
                    "Standardize": config.standardize,
                    "Parcellation": naming.build_name(
                        "dseg", {"subject": result.subject, "session": result.session,
                                 "space": space, "res": res, "seg": seg,
                                 "scale": scale, "suffix": "dseg", "extension": ".nii.gz"}),
                    "Sources": [dataset.bids_uri(run.bold, source_dirs),
                                dataset.bids_uri(run.confounds, source_dirs)
                                if run.confounds else None],
                    "ConfigHash": config.config_hash(),
                }))
    return written




def denoise_unit(config: Config, runs: list[Run], progress: Progress
                 ) -> tuple[UnitMask, list[CleanRun], list[Skipped]]:
    """The unit's mask and grid (:mod:`bids_parcellate.inputs.grids`), then every run read
    once and cleaned; runs with too few volumes are skipped."""
    unit_mask = build_unit_mask(runs, config)
    if config.mask_strategy not in DATA_STRATEGIES:  # else the mask is known after reading
        check_scales(config.scales, unit_mask.n_voxels,
                     "--n-maps" if config.is_decomposition else "--n-parcels")
    return clean_runs(runs, unit_mask, config, progress.run_done)


def _dseg_description(config: Config, scale: int, n_regions: int,
                      result: UnitResult) -> str:
    learned = f"learned from {len(result.runs)} run(s) of {result.name}"
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


def _write_maps(config: Config, result: UnitResult, unit_mask,
                regions: dict[int, RegionSet], source_dirs: list[Path]) -> list[Path]:
    """Write the network maps of every scale as a 4D ``_probseg`` image."""
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
                           f"{len(result.runs)} run(s) of {result.name}: volume k is map "
                           "k (the component column of the dseg table). Values are map "
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




def _write_connectomes(config: Config, result: UnitResult, series: dict,
                       matrices: dict) -> list[Path]:
    """Write one ``_relmat`` (TSV + JSON) per run, scale and measure."""
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


def learn_parcellation(config: Config, runs_data: Sequence[np.ndarray], mask: np.ndarray,
                       affine: np.ndarray, *, prepared: Callable | None = None,
                       features: np.ndarray | None = None, memo: Callable | None = None,
                       warn_pieces: bool = True
                       ) -> tuple[LabelsByScale, dict[int, RegionSet]]:
    """Labels at every scale from cleaned runs, and the region sets of region-based
    methods: the unit's own procedure (one fit of ``--method`` with its knobs, its
    ``--bootstrap`` consensus, region extraction, ``--split-disconnected``). Also learns
    the halves of the quality figures.

    ``prepared()`` (returning :func:`prepare_runs` of ``runs_data``), ``features``
    (:func:`build_features`) and ``memo`` (tree cache, see :func:`parcellate`) are used
    when the caller has them. ``warn_pieces``: warn about a disconnected mask (the halves
    leave it to the unit's own fit).
    """
    def smoothed() -> list[np.ndarray]:
        if prepared is not None:
            return prepared()
        return prepare_runs(runs_data, mask, affine, config.smoothing_fwhm,
                            n_jobs=config.nprocs)

    if config.is_decomposition:
        regions = learn_regions(smoothed(), mask, affine, config)
        return {k: r.labels for k, r in regions.items()}, regions
    if config.bootstrap:
        # the prepared runs are smoothed and standardised: resample them as they are
        labels = consensus_parcellation(
            smoothed(), mask, affine, method=config.method, scales=config.n_parcels,
            n_resamples=config.bootstrap, fwhm=0.0, n_components=config.n_components,
            random_state=config.random_seed, features=features,
            options=config.method_options(), warn_pieces=warn_pieces)
    else:
        if features is None:
            features = build_features([], mask, affine, config.smoothing_fwhm,
                                      config.n_components, prepared=smoothed())
        labels = parcellate(features, mask, config.method, config.n_parcels,
                            config.random_seed, memo=memo, n_jobs=config.nprocs,
                            warn_pieces=warn_pieces, **config.method_options())
    regions: dict[int, RegionSet] = {}
    if config.split_disconnected:
        regions = {k: split_disconnected(lab, mask, affine, config.min_region_size)
                   for k, lab in labels.items()}
        labels = {k: r.labels for k, r in regions.items()}
    return labels, regions


class PreparedRuns:
    """A unit's smoothed, z-scored runs (:func:`prepare_runs`), computed on first use
    and held until :meth:`release`."""

    def __init__(self, config: Config, cleaned: list[CleanRun], unit_mask) -> None:
        self.config, self.cleaned, self.unit_mask = config, cleaned, unit_mask
        self.runs: list[np.ndarray] | None = None

    def __call__(self) -> list[np.ndarray]:
        if self.runs is None:
            self.runs = prepare_runs([c.data for c in self.cleaned], self.unit_mask.mask,
                                     self.unit_mask.affine, self.config.smoothing_fwhm,
                                     n_jobs=self.config.nprocs)
        return self.runs

    def release(self) -> None:
        self.runs = None


def _learn(config: Config, runs: list[Run], cleaned: list[CleanRun], unit_mask,
           result: UnitResult, store: cache.Cache, denoised_key: str,
           prepared: PreparedRuns
           ) -> tuple[dict[int, np.ndarray], dict[int, RegionSet], Summary]:
    """Labels at every scale, the region sets of region-based methods, and the unit's
    summary for the group level (built from the features, whatever the method).

    The features and the hierarchical trees come from ``store`` when an earlier
    invocation stored them (:mod:`bids_parcellate.runtime.cache`); the smoothed runs are only
    prepared when something needs them, and kept (for the split-half fits of the
    quality figures, which reuse them) only when the quality figures need them.
    """
    tic = time.monotonic()
    n_volumes = sum(c.data.shape[0] for c in cleaned)
    keep = config.quality and config.split_half
    features_key = cache.features_key(config, denoised_key) if store.enabled else ""
    features = store.array(
        "features", features_key,
        lambda: build_features([], unit_mask.mask, unit_mask.affine, config.smoothing_fwhm,
                               config.n_components, prepared=prepared()))
    result.timings["features"] = time.monotonic() - tic
    # the group level's input (map step), from the features already in memory
    summary = make_summary(config, runs, [c.run for c in cleaned], unit_mask.mask,
                           unit_mask.affine, features, n_volumes)
    tic = time.monotonic()
    # keep in memory only what the method needs
    if config.is_decomposition:
        del features
        features = None
    elif not config.bootstrap and not keep:
        prepared.release()  # the features are all a plain fit needs

    def memo(name: str, compute):
        return store.array("tree", cache.make_key(features_key, name), compute)

    labels, regions = learn_parcellation(
        config, [c.data for c in cleaned], unit_mask.mask, unit_mask.affine,
        prepared=prepared, features=features, memo=memo if store.enabled else None)
    del features
    if not keep:
        prepared.release()
    if config.split_disconnected:
        for k, r in regions.items():
            LOGGER.info("%s scale %d: %d connected pieces", config.method, k, r.n_regions)
    result.timings["parcellate"] = time.monotonic() - tic
    return labels, regions, summary


def _quality_figures(config: Config, result: UnitResult, cleaned: list[CleanRun],
                     labels: LabelsByScale, unit_mask, prepared: PreparedRuns
                     ) -> dict[int, dict] | None:
    """Quality figures of every scale (:mod:`bids_parcellate.quality`), or None when
    the data cannot be halved. The half fits take their halves of the full fit's
    smoothed runs (``prepared``, released at the end) rather than smoothing again."""
    data = [c.data for c in cleaned]
    connectivity = grid_connectivity(unit_mask.mask)
    if not config.split_half:
        return quality.fixed_figures(data, labels, connectivity, config.random_seed)
    try:
        return quality.assess(
            data, [c.sample_mask for c in cleaned], [c.run.tr for c in cleaned], labels,
            connectivity,
            lambda segments, take: learn_parcellation(
                config, segments, unit_mask.mask, unit_mask.affine,
                prepared=lambda: take(prepared()), warn_pieces=False)[0],
            config.random_seed)
    except quality.TooShort as exc:
        LOGGER.warning("%s: no quality figures (%s)", result.name, exc)
        return None
    finally:
        prepared.release()


def _write_quality(config: Config, result: UnitResult, figures: dict[int, dict]
                   ) -> list[Path]:
    ents = unit_entities(config, result)
    rows = quality.unit_rows(result.subject, result.session, config.method,
                             config.bootstrap, result.n_voxels, figures)
    extra = {scale: {"Parcellation": naming.build_name(
                         "dseg", {**ents, "scale": scale, "suffix": "dseg",
                                  "extension": ".nii.gz"}),
                     "RandomSeed": config.random_seed,
                     "ConfigHash": config.config_hash()}
             for scale in figures}
    return quality.write_unit_tables(config.output_dir, ents, rows, extra)


def process_unit(config: Config, key: tuple[str, str | None], runs: list[Run],
                 source_dirs: list[Path], progress: Progress,
                 plan_listed: tuple[str, ...] = (),
                 unit_log: report.UnitLog | None = None,
                 store: cache.Cache | None = None) -> UnitResult:
    """Denoise, parcellate, extract and write one unit; raise :class:`UserError` on failure.

    ``plan_listed``: files of an earlier completion marker, removed before writing.
    With ``unit_log`` (warnings and skipped inputs of the unit), the report figures and
    record are written too (they are not among the unit's files: see ``report_files``).
    With a ``store`` (:class:`bids_parcellate.runtime.cache.Cache`), the denoised runs, the
    features and the hierarchical trees are reused from an earlier invocation when
    their inputs and parameters are unchanged, and stored otherwise.
    """
    subject, session = key
    # each process (workers included) opens the shared cache folder: entries are written
    # and removed atomically, so concurrent units need no lock
    store = store if store is not None else cache.Cache.from_config(config)
    result = UnitResult(subject=subject, session=session)
    tic = time.monotonic()
    # a run missing a required piece (mask, confounds, readable sidecar) is skipped with
    # the reason recorded; the unit goes on with its complete runs and the invocation
    # exits non-zero (see cli.run), so an incomplete input never passes silently
    for run in runs:
        if run.error:
            LOGGER.error("skipping run: %s", run.error)
            result.skipped.append(Skipped(run.bold, run.error, missing_input=True))
    runs = [run for run in runs if not run.error]
    if not runs:
        raise UserError("; ".join(s.reason for s in result.skipped))
    denoised_key = cache.denoised_key(config, runs) if store.enabled else ""
    found = cache.load_denoised(store, denoised_key, runs)
    if found is not None:
        unit_mask, cleaned, skipped = found
        for clean in cleaned:
            progress.run_done(f"{naming.source_prefix(clean.run.entities)}: "
                              f"{clean.sample_mask.size}/{clean.n_volumes} volumes kept "
                              "(cleaned data from the cache)")
        for skip in skipped:
            progress.run_done(f"{skip.bold.name}: skipped ({skip.reason}) (from the cache)")
    else:
        unit_mask, cleaned, skipped = denoise_unit(config, runs, progress)
        if cleaned:
            cache.store_denoised(store, denoised_key, unit_mask, cleaned, skipped)
    result.n_voxels = unit_mask.n_voxels
    result.skipped.extend(skipped)
    result.runs.extend(RunSummary.of(c) for c in cleaned)
    result.timings["denoise"] = time.monotonic() - tic
    if not result.runs:
        reasons = "; ".join(f"{s.bold.name}: {s.reason}" for s in result.skipped)
        raise UserError(f"{result.name}: no usable runs ({reasons})")

    prepared = PreparedRuns(config, cleaned, unit_mask)
    labels, regions, summary = _learn(config, runs, cleaned, unit_mask, result, store,
                                      denoised_key, prepared)
    tic = time.monotonic()
    series = {c.run.bold: parcel_timeseries(c.data, labels, config.standardize_arg)
              for c in cleaned}
    result.timings["extract"] = time.monotonic() - tic
    figures = None
    if config.quality:  # while the cleaned runs are in memory
        tic = time.monotonic()
        figures = _quality_figures(config, result, cleaned, labels, unit_mask, prepared)
        result.timings["quality"] = time.monotonic() - tic
        if figures and config.split_half:
            LOGGER.info("%s: quality figures, split-half ARI %s (%.1f s)", result.name,
                        ", ".join(f"{f['ari']:.2f} at {k}" for k, f in sorted(figures.items())),
                        result.timings["quality"])
    tic = time.monotonic()
    matrices = {bold: run_connectomes(by_scale, config.connectivity)
                for bold, by_scale in series.items()} if config.connectivity else {}
    result.timings["connectome"] = time.monotonic() - tic
    tic = time.monotonic()
    dataset.prepare_output_dir(config.output_dir, source_dirs)
    # stale outputs of this unit (an interrupted run, or --overwrite) go first, the
    # completion marker before anything else; a failure while writing leaves nothing
    dataset.remove_unit_outputs(config.output_dir, subject, session, plan_listed)
    try:
        result.files = _write_unit(config, result, unit_mask, labels, series, source_dirs,
                                   regions)
        result.files += _write_maps(config, result, unit_mask, regions, source_dirs)
        if matrices:
            result.files += _write_connectomes(config, result, series, matrices)
        if figures:
            result.files += _write_quality(config, result, figures)
        # not in result.files: the summary is a cache validated by its own hash (the group
        # level may rewrite it for other parameters without touching this unit's marker)
        write_summary(config, summary, source_dirs, runs)
    except BaseException:
        dataset.remove_unit_outputs(config.output_dir, subject, session)
        raise
    result.timings["write"] = time.monotonic() - tic
    LOGGER.debug("%s: stage times %s", result.name,
                 ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items()))
    # report (figures + record) while the cleaned data are still in memory
    if unit_log is not None:
        try:
            result.report_files, result.report = report.write_unit_report_data(
                config, result, unit_mask, cleaned, labels, series, source_dirs, unit_log)
        except Exception as exc:  # a report problem must not lose the unit's data outputs
            LOGGER.error("%s: report data not written (%s: %s)", result.name,
                         type(exc).__name__, exc)
            LOGGER.debug("traceback", exc_info=True)
    LOGGER.info("%s: %d parcellation(s) (%s) on %d voxels from %d run(s), %d files written",
                result.name, len(labels), ", ".join(map(str, sorted(labels))),
                unit_mask.n_voxels, len(result.runs), len(result.files))
    return result


def run_participant_level(config: Config, selection: Selection,
                          plans: dict | None = None, unit_gb: float | None = None, *,
                          selection_warnings: Sequence[str] = ()) -> list[UnitResult]:
    """Process every unit; a failing unit is reported and does not stop the others.

    ``plans`` (from :func:`bids_parcellate.derivatives.markers.plan_units`) says which units are
    complete from an earlier run with the same parameters; those are not recomputed.
    A unit's completion marker is written after all of its files.
    ``selection_warnings`` (warnings logged while the inputs were queried) go to the
    reports of the units whose files they name.

    With ``--nprocs`` > 1 and several units to compute, units run in parallel worker
    processes (:mod:`bids_parcellate.runtime.parallel`), as many at once as ``--mem-gb`` holds
    given ``unit_gb``, the estimated peak memory of the largest unit. Results are in unit
    order either way.
    """
    units = selection.units()
    plans = plans if plans is not None else markers.plan_units(config, selection)
    todo = {k: r for k, r in units.items() if plans[k].action != "skip"}
    progress = Progress(sum(len(r) for r in todo.values()))
    store = cache.Cache.from_config(config)
    if store.enabled and todo:
        LOGGER.info("cache: %s (limit %.1f GB; --no-cache disables it)", store.root,
                    config.cache_limit_gb)
    results = {}
    for key in units:
        plan = plans[key]
        name = naming.unit_prefix(*key)
        if plan.action == "skip":
            LOGGER.info("%s: complete from an earlier run with the same parameters, skipped "
                        "(--overwrite recomputes it)", name)
            results[key] = UnitResult(subject=key[0], session=key[1], reused=True)
        elif plan.reason != "new":
            LOGGER.info("%s: recomputing (%s)", name, plan.reason)
    workers = parallel.plan_workers(config.nprocs, len(todo), unit_gb, config.mem_gb)
    if not workers.in_process(len(todo)):
        helper_process.stop()  # each worker process imports nilearn for itself
    # each unit's own threads (reading, cleaning, smoothing, Ward): the worker's share
    unit_config = replace(config, nprocs=workers.threads)
    tasks = [(unit_config, key, runs, selection.fmriprep_dirs, plans[key].listed,
              report.record.skipped_of_unit(selection.skipped, *key),
              report.record.warnings_of_unit(selection_warnings, *key))
             for key, runs in todo.items()]
    done = parallel.map_units(run_unit, tasks, workers, progress, config.verbosity)
    for key, result in zip(todo, done, strict=True):
        if isinstance(result, parallel.WorkerDied):
            LOGGER.error("%s failed: %s", naming.unit_prefix(*key), result)
            result = UnitResult(subject=key[0], session=key[1], error=str(result))
        results[key] = result
    ordered = [results[key] for key in units]
    # all participants' quality rows, rebuilt from their tables (safe for array jobs)
    if config.quality and any(not r.error for r in ordered):
        quality.update_group_table(config.output_dir)
    return ordered


def run_unit(config: Config, key: tuple[str, str | None], runs: list[Run],
             source_dirs: list[Path], listed: tuple[str, ...], skipped_inputs: list,
             earlier_warnings: list[str], progress) -> UnitResult:
    """:func:`process_unit` and the completion marker; an error becomes a failed result.

    Runs in the main process or in a worker (:func:`bids_parcellate.runtime.parallel.map_units`).
    ``listed``: files of an earlier completion marker; ``skipped_inputs`` and
    ``earlier_warnings``: the unit's runs skipped and warnings logged at selection (for
    its report).
    """
    # BLAS runs single-threaded here: the stages split their own work in blocks over
    # config.nprocs threads (reading, cleaning, smoothing, Ward costs), so results do not
    # depend on --nprocs, and multithreaded BLAS on this pipeline's small matrices mostly
    # spins (an SVD of 166 x 168 took 1.4 s on a busy 2-core machine). scikit-learn's
    # OpenMP loops (k-means) keep their threads.
    from threadpoolctl import threadpool_limits

    name = naming.unit_prefix(*key)
    try:
        unit_log = report.UnitLog(skipped_inputs=skipped_inputs, earlier=earlier_warnings)
        with unit_log, threadpool_limits(limits=1, user_api="blas"):
            result = process_unit(config, key, runs, source_dirs, progress, listed,
                                  unit_log)
        if not result.missing_inputs:
            # a unit with skipped incomplete runs is never marked complete: a rerun
            # recomputes it (and reports the missing file again) until it is fixed
            markers.write_marker(config, key[0], key[1], result.files,
                                markers.unit_sources(runs, source_dirs))
        return result
    except UserError as exc:
        LOGGER.error("%s failed: %s", name, exc)
        LOGGER.debug("traceback", exc_info=True)
        return UnitResult(subject=key[0], session=key[1], error=str(exc))
    except Exception as exc:  # a bug or a system error: the other units still run
        LOGGER.error("%s failed with an internal error: %s: %s", name,
                     type(exc).__name__, exc)
        LOGGER.debug("traceback", exc_info=True)
        return UnitResult(subject=key[0], session=key[1],
                          error=f"internal error: {type(exc).__name__}: {exc}")
