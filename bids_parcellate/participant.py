"""The stages of one participant unit, in the order :func:`bids_parcellate.pipeline.process_unit`
calls them: its complete runs (:func:`complete_runs`), their denoising, reused from the
work-folder cache when unchanged (:func:`denoise_unit`), the learner's labels and the
group level's summary (:func:`learn_unit`), the quality figures (:func:`quality_figures`)
and the unit's files, all or nothing (:func:`write_unit`).

Data move forward only: each run's BOLD is read once (:mod:`bids_parcellate.inputs`,
:mod:`bids_parcellate.denoise`), features are built from the cleaned runs
(:mod:`bids_parcellate.learn`), the same cleaned runs give the timeseries
(:mod:`bids_parcellate.extract`), and only :mod:`bids_parcellate.derivatives` names and
writes files.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from bids_parcellate import quality
from bids_parcellate.config import Config, UserError
from bids_parcellate.denoise import CleanRun, clean_runs
from bids_parcellate.derivatives import dataset, naming, unit_files
from bids_parcellate.inputs.bold import UnitMask
from bids_parcellate.inputs.grids import DATA_STRATEGIES, build_unit_mask
from bids_parcellate.inputs.query import Run, Skipped
from bids_parcellate.learn.features import build_features, grid_connectivity, prepare_runs
from bids_parcellate.learn.learner import Learned, learn, runs_training
from bids_parcellate.learn.methods import LabelsByScale, check_scales
from bids_parcellate.results import RunSummary, UnitResult
from bids_parcellate.runtime import cache
from bids_parcellate.runtime.progress import Progress
from bids_parcellate.summary import Summary, make_summary, write_summary

LOGGER = logging.getLogger("bids_parcellate")


def complete_runs(runs: list[Run], result: UnitResult) -> list[Run]:
    """The runs with every required file; the others are recorded as skipped.

    A run missing a required piece (mask, confounds, readable sidecar) is skipped with
    the reason recorded in ``result.skipped`` and logged (once: the end-of-run summary
    names the unit only); the unit goes on with its complete runs and the invocation
    exits non-zero (see :mod:`bids_parcellate.cli.run`), so an incomplete input never
    passes silently.

    Parameters
    ----------
    runs : list of Run
        The unit's runs; those with an ``error`` are incomplete.
    result : UnitResult
        The unit's record: the incomplete runs are appended to ``result.skipped``.

    Returns
    -------
    list of Run
        The runs without an ``error``, in their order.

    Raises
    ------
    UserError
        When no run is complete.
    """
    incomplete = [run for run in runs if run.error]
    result.skipped += [Skipped(run.bold, run.error, missing_input=True) for run in incomplete]
    complete = [run for run in runs if not run.error]
    if not complete:  # the unit fails with the reasons (logged once, by the caller)
        raise UserError("; ".join(run.error for run in incomplete))
    for run in incomplete:
        LOGGER.error("%s: skipping run: %s", result.name, run.error)
    return complete


def denoise_unit(config: Config, runs: list[Run], progress: Progress, store: cache.Cache,
                 result: UnitResult) -> tuple[UnitMask, list[CleanRun], str]:
    """The unit's mask and grid (:mod:`bids_parcellate.inputs.grids`), then every run read
    once and cleaned (runs with too few volumes are skipped), or all of it from ``store``.

    Parameters
    ----------
    config : Config
    runs : list of Run
        The unit's complete runs (:func:`complete_runs`).
    progress : Progress
        Told when each run is done (or skipped).
    store : Cache
        Work-folder cache: the denoised runs are reused from it when their inputs and
        parameters are unchanged, and stored in it otherwise.
    result : UnitResult
        Filled here: ``n_voxels``, ``skipped``, ``runs`` and the ``denoise`` timing.

    Returns
    -------
    unit_mask : UnitMask
    cleaned : list of CleanRun
    denoised_key : str
        The cache key of the cleaned runs ("" without a cache).

    Raises
    ------
    UserError
        When no run is left, or (mask known before reading) a scale is not below the
        mask's voxels.
    """
    tic = time.monotonic()
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
        unit_mask = build_unit_mask(runs, config)
        if config.mask_strategy not in DATA_STRATEGIES:  # else known after reading
            check_scales(config.scales, unit_mask.n_voxels,
                         "--n-maps" if config.is_decomposition else "--n-parcels")
        unit_mask, cleaned, skipped = clean_runs(runs, unit_mask, config, progress.run_done)
        if cleaned:
            cache.store_denoised(store, denoised_key, unit_mask, cleaned, skipped)
    result.n_voxels = unit_mask.n_voxels
    result.skipped.extend(skipped)
    result.runs.extend(RunSummary.of(c) for c in cleaned)
    result.timings["denoise"] = time.monotonic() - tic
    if not result.runs:
        reasons = "; ".join(f"{s.bold.name}: {s.reason}" for s in result.skipped)
        raise UserError(f"{result.name}: no usable runs ({reasons})")
    return unit_mask, cleaned, denoised_key


class PreparedRuns:
    """A unit's smoothed, z-scored runs (:func:`prepare_runs`), computed on first use
    and held until :meth:`release`."""

    def __init__(self, config: Config, cleaned: list[CleanRun], unit_mask: UnitMask) -> None:
        self.config, self.cleaned, self.unit_mask = config, cleaned, unit_mask
        self.runs: list[np.ndarray] | None = None

    def __call__(self) -> list[np.ndarray]:
        if self.runs is None:
            self.runs = prepare_runs([c.data for c in self.cleaned], self.unit_mask.mask,
                                     self.unit_mask.affine, self.config.smoothing_fwhm,
                                     n_jobs=self.config.nprocs)
        return self.runs

    def release(self) -> None:
        """Drop the prepared runs (computed again if asked for later)."""
        self.runs = None


def learn_unit(config: Config, runs: list[Run], cleaned: list[CleanRun], unit_mask: UnitMask,
               result: UnitResult, store: cache.Cache, denoised_key: str,
               prepared: PreparedRuns) -> tuple[Learned, Summary]:
    """The learner's labels at every scale (:func:`bids_parcellate.learn.learner.learn`),
    and the unit's summary for the group level (built from the features, whatever the
    method).

    The features and the hierarchical trees come from ``store`` when an earlier
    invocation stored them (:mod:`bids_parcellate.runtime.cache`); the smoothed runs are
    only prepared when something needs them, and kept (for the split-half fits of the
    quality figures, which reuse them) only when the quality figures need them.

    Parameters
    ----------
    config : Config
    runs : list of Run
        The unit's complete runs (named in its summary).
    cleaned : list of CleanRun
        The runs left after denoising (:func:`denoise_unit`).
    unit_mask : UnitMask
    result : UnitResult
        Filled here: the ``features`` and ``parcellate`` timings.
    store : Cache
        Work-folder cache of the features and the hierarchical trees.
    denoised_key : str
        The cache key of the cleaned runs ("" without a cache): the features' key
        derives from it.
    prepared : PreparedRuns
        The smoothed, z-scored runs, computed on first use; released here unless the
        split-half quality figures will reuse them.

    Returns
    -------
    learned : Learned
    summary : Summary
    """
    tic = time.monotonic()
    n_volumes = sum(c.data.shape[0] for c in cleaned)
    keep = config.quality and config.split_half
    features_key = cache.features_key(config, denoised_key) if store.enabled else ""
    features = store.array(
        "features", features_key,
        lambda: build_features([], unit_mask.mask, unit_mask.affine, config.smoothing_fwhm,
                               config.n_components, prepared=prepared(),
                               weighting=config.feature_weighting))
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

    learned = learn(config, runs_training(
        config, [c.data for c in cleaned], unit_mask.mask, unit_mask.affine,
        prepared=prepared, features=features, memo=memo if store.enabled else None))
    del features
    if not keep:
        prepared.release()
    if config.split_disconnected:
        for k, r in learned.regions.items():
            LOGGER.info("%s scale %d: %d connected pieces", config.method, k, r.n_regions)
    result.timings["parcellate"] = time.monotonic() - tic
    return learned, summary


def quality_figures(config: Config, result: UnitResult, cleaned: list[CleanRun],
                    labels: LabelsByScale, unit_mask: UnitMask, prepared: PreparedRuns
                    ) -> dict[int, dict] | None:
    """Quality figures of every scale (:mod:`bids_parcellate.quality`), or None when
    the data cannot be halved. The half fits are the same learner as the unit's, and take
    their halves of the full fit's smoothed runs (``prepared``, released at the end)
    rather than smoothing again.

    Parameters
    ----------
    config : Config
        ``--split-half`` (without it, only the figures of the fitted parcellation:
        :func:`bids_parcellate.quality.fixed_figures`) and the learner's parameters.
    result : UnitResult
        Filled here: the ``quality`` timing.
    cleaned : list of CleanRun
        The unit's cleaned runs (kept volumes only).
    labels : dict
        scale -> int32 labels 1..n over the in-mask voxels: the unit's parcellation.
    unit_mask : UnitMask
    prepared : PreparedRuns
        The full fit's smoothed runs, halved for the split-half fits.

    Returns
    -------
    dict or None
        scale -> {column: value} (:func:`bids_parcellate.quality.assess`); None when the
        halves are too short (a warning is logged).
    """
    tic = time.monotonic()
    data = [c.data for c in cleaned]
    connectivity = grid_connectivity(unit_mask.mask)
    try:
        if not config.split_half:
            return quality.fixed_figures(data, labels, connectivity, config.random_seed)
        figures = quality.assess(
            data, [c.sample_mask for c in cleaned], [c.run.tr for c in cleaned], labels,
            connectivity,
            lambda segments, take: learn(config, runs_training(
                config, segments, unit_mask.mask, unit_mask.affine,
                prepared=lambda: take(prepared())), warn_pieces=False).labels,
            config.random_seed)
        LOGGER.info("%s: quality figures, split-half ARI %s (%.1f s)", result.name,
                    ", ".join(f"{f['ari']:.2f} at {k}" for k, f in sorted(figures.items())),
                    time.monotonic() - tic)
        return figures
    except quality.TooShort as exc:
        LOGGER.warning("%s: no quality figures (%s)", result.name, exc)
        return None
    finally:
        prepared.release()
        result.timings["quality"] = time.monotonic() - tic


def write_unit(config: Config, result: UnitResult, unit_mask: UnitMask, learned: Learned,
               series: dict, matrices: dict, figures: dict[int, dict] | None,
               summary: Summary, runs: list[Run], source_dirs: list[Path],
               listed: tuple[str, ...]) -> list[Path]:
    """Every file of the unit (:mod:`bids_parcellate.derivatives.unit_files`), all or
    nothing, and its summary for the group level.

    Stale outputs of this unit (an interrupted run, or ``--overwrite``; ``listed``: the
    files of an earlier completion marker) go first, the completion marker before
    anything else; a failure while writing removes what was written.

    Parameters
    ----------
    config : Config
    result : UnitResult
        The unit's record (named and described in the files); the ``write`` timing is
        added.
    unit_mask : UnitMask
    learned : Learned
        Labels at every scale, and the region sets behind them.
    series : dict
        BOLD path -> scale -> parcel timeseries, shape (n_kept, n_parcels).
    matrices : dict
        BOLD path -> scale -> kind -> per-run connectivity matrix (empty without
        ``--connectivity``).
    figures : dict or None
        From :func:`quality_figures`: scale -> {column: value}.
    summary : Summary
        The unit's summary for the group level.
    runs : list of Run
        The unit's complete runs (the sources named in the summary's sidecar).
    source_dirs : list of Path
        The input datasets (``DatasetDescription`` sources).
    listed : tuple of str
        Files of an earlier completion marker, removed first.

    Returns
    -------
    list of Path
        The unit's data outputs (the summary is not among them: it is a cache validated
        by its own hash, which the group level may rewrite for other parameters without
        touching this unit's marker).
    """
    tic = time.monotonic()
    dataset.prepare_output_dir(config.output_dir, source_dirs)
    dataset.remove_unit_outputs(config.output_dir, result.subject, result.session, listed)
    try:
        files = unit_files.write_unit_files(config, result, unit_mask, learned.labels,
                                            series, source_dirs, learned.regions,
                                            learned.stability)
        files += unit_files.write_maps(config, result, unit_mask, learned.regions,
                                       source_dirs)
        if matrices:
            files += unit_files.write_connectomes(config, result, series, matrices)
        if figures:
            files += unit_files.write_quality(config, result, figures)
        write_summary(config, summary, source_dirs, runs)
    except BaseException:
        dataset.remove_unit_outputs(config.output_dir, result.subject, result.session)
        raise
    result.timings["write"] = time.monotonic() - tic
    return files
