"""The pipeline, stage by stage: this module is the table of contents.

Participant level (:func:`run_participant_level`: every unit, in this process or in
worker processes; :func:`run_unit`: one unit and its completion marker), each unit
through :func:`process_unit`:

1. its complete runs (:func:`bids_parcellate.participant.complete_runs`);
2. mask, grid, reading and denoising (:func:`bids_parcellate.participant.denoise_unit`);
3. features, labels at every scale from the one learner, the group summary
   (:func:`bids_parcellate.participant.learn_unit`);
4. parcel timeseries (:func:`bids_parcellate.extract.parcel_timeseries`);
5. quality figures (:func:`bids_parcellate.participant.quality_figures`);
6. connectomes (:func:`bids_parcellate.connectome.run_connectomes`);
7. the unit's files, all or nothing (:func:`bids_parcellate.participant.write_unit`);
8. its report figures and record (:func:`bids_parcellate.report.write_unit_report_data`).

Group level (:func:`run_group_level`):

1. the units' complete runs, one voxel grid (:mod:`bids_parcellate.group.checks`);
2. every unit's summary, reused or computed (:func:`bids_parcellate.group.reduce.unit_summaries`)
   (a caution, logged and written with the atlas, under 3 participants:
   :func:`bids_parcellate.group.checks.small_group_caution`);
3. the group mask and the merged features (:mod:`bids_parcellate.group.reduce`);
4. the group atlas from the same learner as a unit's
   (:func:`bids_parcellate.learn.learner.learn` on
   :func:`bids_parcellate.group.reduce.group_training`), and its files
   (:mod:`bids_parcellate.derivatives.atlas_files`);
5. every run's timeseries on it (:func:`bids_parcellate.group.apply.apply_atlas`);
6. connectomes on it, and the agreement of each unit's own parcellation with it.

Then the command line writes ``logs/CITATION.*`` and ``group.html``
(:func:`bids_parcellate.report.finish_group_level`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bids_parcellate import participant, report
from bids_parcellate.config import Config, UserError
from bids_parcellate.connectome import run_connectomes
from bids_parcellate.derivatives import atlas_files, dataset, markers, naming, quality_tables
from bids_parcellate.extract import parcel_timeseries
from bids_parcellate.group import apply, checks, reduce
from bids_parcellate.inputs.grids import resampling_reader
from bids_parcellate.inputs.query import Run, Selection
from bids_parcellate.learn.learner import learn
from bids_parcellate.results import GroupResult, UnitResult
from bids_parcellate.runtime import cache, helper_process, parallel
from bids_parcellate.runtime.progress import Progress
from bids_parcellate.words import plural

LOGGER = logging.getLogger("bids_parcellate")

UnitKey = tuple[str, str | None]


# --------------------------------------------------------------------------- participant
def process_unit(config: Config, key: UnitKey, runs: list[Run], source_dirs: list[Path],
                 progress: Progress, plan_listed: tuple[str, ...] = (),
                 unit_log: report.UnitLog | None = None,
                 store: cache.Cache | None = None) -> UnitResult:
    """Denoise, learn, extract and write one unit; raise :class:`UserError` on failure.

    Parameters
    ----------
    config : Config
    key : (subject, session)
    runs : list of Run
        The unit's runs (those with an ``error`` are skipped and recorded).
    source_dirs : list of Path
        The input datasets.
    progress : Progress
    plan_listed : tuple of str
        Files of an earlier completion marker, removed before writing.
    unit_log : UnitLog, optional
        Warnings and skipped inputs of the unit: with it, the report figures and record
        are written too (not among the unit's files: see ``report_files``).
    store : Cache, optional
        Work-folder cache: the denoised runs, the features and the hierarchical trees are
        reused from an earlier invocation when their inputs and parameters are unchanged.

    Returns
    -------
    UnitResult
    """
    # each process (workers included) opens the shared cache folder: entries are written
    # and removed atomically, so concurrent units need no lock
    store = store if store is not None else cache.Cache.from_config(config)
    result = UnitResult(subject=key[0], session=key[1])
    runs = participant.complete_runs(runs, result)
    unit_mask, cleaned, denoised_key = participant.denoise_unit(config, runs, progress,
                                                                store, result)
    prepared = participant.PreparedRuns(config, cleaned, unit_mask)
    learned, summary = participant.learn_unit(config, runs, cleaned, unit_mask, result,
                                              store, denoised_key, prepared)
    tic = time.monotonic()
    series = {c.run.bold: parcel_timeseries(c.data, learned.labels, config.standardize_arg)
              for c in cleaned}
    result.timings["extract"] = time.monotonic() - tic
    figures = (participant.quality_figures(config, result, cleaned, learned.labels,
                                           unit_mask, prepared)
               if config.quality else None)  # while the cleaned runs are in memory
    tic = time.monotonic()
    matrices = {bold: run_connectomes(by_scale, config.connectivity)
                for bold, by_scale in series.items()} if config.connectivity else {}
    result.timings["connectome"] = time.monotonic() - tic
    result.files = participant.write_unit(config, result, unit_mask, learned, series,
                                          matrices, figures, summary, runs, source_dirs,
                                          plan_listed)
    LOGGER.debug("%s: stage times %s", result.name,
                 ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items()))
    if unit_log is not None:  # while the cleaned data are still in memory
        try:
            result.report_files, result.report = report.write_unit_report_data(
                config, result, unit_mask, cleaned, learned.labels, series, source_dirs,
                unit_log, learned.stability)
        except Exception as exc:  # a report problem must not lose the unit's data outputs
            LOGGER.error("%s: report data not written (%s: %s)", result.name,
                         type(exc).__name__, exc)
            LOGGER.debug("traceback", exc_info=True)
    LOGGER.info("%s: %s (%s) on %d voxels from %s, %s written", result.name,
                plural(len(learned.labels), "parcellation"),
                ", ".join(map(str, sorted(learned.labels))), unit_mask.n_voxels,
                plural(len(result.runs), "run"), plural(len(result.files), "file"))
    if learned.stability:
        LOGGER.info("%s: mean bootstrap stability %s", result.name, ", ".join(
            f"{float(v.mean()):.2f} at {k}" for k, v in sorted(learned.stability.items())))
    return result


def run_participant_level(config: Config, selection: Selection,
                          plans: dict | None = None, unit_gb: float | None = None, *,
                          selection_warnings: Sequence[str] = ()) -> list[UnitResult]:
    """Process every unit; a failing unit is reported and does not stop the others.

    Parameters
    ----------
    config : Config
    selection : Selection
    plans : dict, optional
        From :func:`bids_parcellate.derivatives.markers.plan_units`: which units are
        complete from an earlier run with the same parameters (not recomputed).
    unit_gb : float, optional
        Estimated peak memory of the largest unit: with ``--nprocs`` > 1 and several
        units to compute, units run in worker processes
        (:mod:`bids_parcellate.runtime.parallel`), as many at once as ``--mem-gb`` holds.
    selection_warnings : sequence of str
        Warnings logged while the inputs were queried: they go to the reports of the
        units whose files they name.

    Returns
    -------
    list of UnitResult
        In unit order.
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
        quality_tables.update_group_table(config.output_dir)
    return ordered


def run_unit(config: Config, key: UnitKey, runs: list[Run], source_dirs: list[Path],
             listed: tuple[str, ...], earlier_warnings: list[str],
             progress: Progress | parallel.QueueProgress) -> UnitResult:
    """:func:`process_unit` and the completion marker; an error becomes a failed result.

    Runs in the main process or in a worker (:func:`bids_parcellate.runtime.parallel.map_units`).
    The marker is written only when no run was skipped for a missing input.

    Parameters
    ----------
    config : Config
        With ``nprocs`` the unit's own threads.
    key : (subject, session)
    runs : list of Run
    source_dirs : list of Path
        The input datasets.
    listed : tuple of str
        Files of an earlier completion marker.
    earlier_warnings : list of str
        Warnings logged at selection about the unit's files (for its report).
    progress : Progress or QueueProgress
        The main process's counter, or its stand-in in a worker.

    Returns
    -------
    UnitResult
        With ``error`` set when the unit failed (``"internal error: ..."`` for an
        exception other than :class:`UserError`); nothing is raised.
    """
    # BLAS runs single-threaded here: the stages split their own work in blocks over
    # config.nprocs threads (reading, cleaning, smoothing, Ward costs), so results do not
    # depend on --nprocs, and multithreaded BLAS on this pipeline's small matrices mostly
    # spins (an SVD of 166 x 168 took 1.4 s on a busy 2-core machine). scikit-learn's
    # OpenMP loops (k-means) keep their threads.
    from threadpoolctl import threadpool_limits

    name = naming.unit_prefix(*key)
    try:
        unit_log = report.UnitLog(earlier=earlier_warnings)
        with unit_log, threadpool_limits(limits=1, user_api="blas"):
            result = process_unit(config, key, runs, source_dirs, progress, listed,
                                  unit_log)
        if not result.missing_inputs:
            # a unit with skipped incomplete runs is never marked complete: a rerun
            # recomputes it (and reports the missing file again) until it is fixed
            markers.write_marker(config, key[0], key[1], result.files,
                                markers.unit_sources(runs, source_dirs))
        return result
    except UserError as exc:  # bad input: its one-line reason, logged here only
        LOGGER.error("%s failed: %s", name, exc)
        if config.verbosity:
            LOGGER.debug("traceback", exc_info=True)
        return UnitResult(subject=key[0], session=key[1], error=str(exc))
    except Exception as exc:  # a bug or a system error: the other units still run
        LOGGER.error("%s failed with an internal error: %s: %s", name,
                     type(exc).__name__, exc)
        LOGGER.debug("traceback", exc_info=True)
        return UnitResult(subject=key[0], session=key[1],
                          error=f"internal error: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- group
def run_group_level(config: Config, selection: Selection,
                    exclude: set[UnitKey] | frozenset = frozenset()) -> GroupResult:
    """Learn the group atlas, write it, and apply it to every run.

    Parameters
    ----------
    config : Config
    selection : Selection
    exclude : set of (subject, session)
        Units left out (those that failed at the participant level of this invocation).

    Returns
    -------
    GroupResult

    Raises
    ------
    UserError
        When no unit is usable, the grids differ or the scales are too large.
    """
    result = GroupResult(label=checks.atlas_label(config))
    units = checks.complete_units(selection, exclude, result)
    checks.check_tangent(config, units)
    native = checks.check_grids(units)
    # --target-*: the participant level's summaries are on the resampled grid
    target, reader = resampling_reader(config, *native)
    grid = (target.shape, target.affine)
    source_dirs = selection.fmriprep_dirs

    tic = time.monotonic()
    summaries = reduce.unit_summaries(config, units, grid, source_dirs, result)
    if not summaries:
        raise UserError("group level: no usable participant ("
                        + "; ".join(f"{k}: {v}" for k, v in result.errors.items()) + ")")
    result.units = list(summaries)
    result.summaries = [h.path for h in summaries.values()]
    result.caution = checks.small_group_caution(
        [k for k in units if naming.unit_prefix(*k) in summaries])
    if result.caution:
        LOGGER.warning("group atlas atlas-%s: %s", result.label, result.caution)
    result.timings["summaries"] = time.monotonic() - tic

    tic = time.monotonic()
    gmask = reduce.group_mask(summaries, grid[1])
    features = reduce.reduce_summaries(summaries.values(), gmask.mask, config.n_components)
    result.timings["reduce"] = time.monotonic() - tic
    LOGGER.info("group features: %d voxels x %d components from %s (%.1f s)",
                features.shape[0], features.shape[1], plural(len(summaries), "unit"),
                result.timings["reduce"])

    tic = time.monotonic()
    learned = learn(config, reduce.group_training(config, summaries, gmask, features))
    del features
    result.timings["parcellate"] = time.monotonic() - tic
    n_volumes = sum(h.n_volumes for h in summaries.values())
    space, res = reduce.space_res(units, config)
    dataset.prepare_output_dir(config.output_dir, source_dirs)
    result.files += atlas_files.write_atlas(config, result, gmask, learned.labels, space,
                                            res, learned.regions, n_volumes,
                                            learned.stability)
    LOGGER.info("group atlas atlas-%s: %s %s from %s written (%.1f s)", result.label,
                "scale" if len(learned.labels) == 1 else "scales",
                ", ".join(map(str, sorted(learned.labels))),
                plural(len(summaries), "unit"), result.timings["parcellate"])

    tic = time.monotonic()
    kept = {k: v for k, v in units.items() if naming.unit_prefix(*k) in summaries}
    collected: list | None = [] if config.connectivity else None
    apply.apply_atlas(config, result, kept, gmask, learned.labels, space, res, source_dirs,
                      collected, reader)
    result.timings["apply"] = time.monotonic() - tic
    if collected:
        tic = time.monotonic()
        result.files += atlas_files.write_group_connectomes(config, result, collected,
                                                            learned.labels, space, res)
        result.timings["connectome"] = time.monotonic() - tic
    result.files += atlas_files.write_agreement(config, result, kept, gmask, learned.labels,
                                                space, res)
    return result
