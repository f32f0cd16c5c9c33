"""Load each run once and denoise it: confounds, censoring, detrending, filtering.

The output of this stage is, per run, the cleaned voxel timeseries of the kept volumes
(time x voxels, float32, *not* standardised: the parcellation stage standardises its own
features and the extraction stage standardises parcel means, which is what nilearn's
``NiftiLabelsMasker`` does) and the indices of the kept volumes.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources

import numpy as np
from nibabel.affines import apply_affine

from bids_parcellate.config import Config, ConfigError
from bids_parcellate.derivatives.naming import source_prefix
from bids_parcellate.inputs.bold import (
    RunError,
    UnitMask,
    first_line,
    load_bold,
    open_bold,
    read_bold,
)
from bids_parcellate.inputs.confounds import lacks_message, missing_in_error, needed_columns
from bids_parcellate.inputs.grids import BoldReader
from bids_parcellate.inputs.query import Run, Skipped
from bids_parcellate.runtime import helper_process
from bids_parcellate.runtime.parallel import for_each_block

LOGGER = logging.getLogger("bids_parcellate")


class SkipRun(Exception):
    """A run is usable in principle but has too little data left; it is skipped."""


@lru_cache(maxsize=1)
def strategies() -> dict:
    """The denoising strategies (``data/denoise_strategies.json``)."""
    text = resources.files("bids_parcellate.data").joinpath("denoise_strategies.json")
    return json.loads(text.read_text())


def strategy_kwargs(config: Config) -> dict:
    """Keyword arguments for nilearn's ``load_confounds_strategy`` from the config."""
    options = strategies()[config.denoise_strategy]["options"]
    kwargs = {}
    for name in options:
        value = getattr(config, name)
        if value is not None:
            kwargs[name] = value
    return kwargs


def check_strategy_options(config: Config) -> None:
    """Reject denoising options that the chosen strategy does not use (a usage error:
    :class:`~bids_parcellate.config.ConfigError`)."""
    options = strategies()[config.denoise_strategy]["options"]
    for name in ("motion", "global_signal", "fd_threshold", "std_dvars_threshold"):
        if getattr(config, name) is not None and name not in options:
            raise ConfigError(
                f"--{name.replace('_', '-')} has no effect with --denoise-strategy "
                f"{config.denoise_strategy} (it applies to: "
                + ", ".join(k for k, v in strategies().items() if name in v["options"])
                + ")"
            )


@dataclass
class CleanRun:
    """A denoised run.

    Attributes
    ----------
    run : Run
        The input record.
    data : ndarray, shape (n_kept, n_voxels), float32
        Cleaned (not standardised) timeseries of the kept volumes.
    sample_mask : ndarray of int
        Indices of the kept volumes in the original series.
    n_volumes : int
        Volumes in the BOLD file.
    confounds : list of str
        The regressors actually used.
    mean_img : ndarray, 3D float32
        Mean of the raw BOLD over time (for figures).
    flat : ndarray of bool, shape (n_voxels,), optional
        Voxels whose BOLD is constant over the run (no signal).
    """

    run: Run
    data: np.ndarray
    sample_mask: np.ndarray
    n_volumes: int
    confounds: list[str]
    mean_img: np.ndarray
    framewise_displacement: np.ndarray | None = None
    flat: np.ndarray | None = None


def load_confounds(run: Run, n_volumes: int, config: Config
                   ) -> tuple[np.ndarray | None, list[str], np.ndarray, np.ndarray | None]:
    """Confounds and sample mask of a run via nilearn's ``load_confounds_strategy``.

    Parameters
    ----------
    run : Run
        The run (its BOLD, from which nilearn finds the confounds, and ``confounds``).
    n_volumes : int
        Volumes of the BOLD (the confounds TSV must have as many rows).
    config : Config
        ``denoise_strategy`` and its options (:func:`strategy_kwargs`).

    Returns
    -------
    confounds : ndarray, shape (n_volumes, n_confounds), float64, or None
        None with the ``none`` strategy or when nilearn selects no column.
    names : list of str
    sample_mask : ndarray of int
        0-based indices of the kept (uncensored) volumes; every volume when nothing is
        censored.
    fd : ndarray, shape (n_volumes,), or None
        Framewise displacement (for reports; n/a read as 0), when the confounds file
        has it.

    Raises
    ------
    RunError
        When the confounds TSV is unreadable, empty, of the wrong length, or unusable
        for the strategy.
    """
    everything = np.arange(n_volumes)
    nilearn_strategy = strategies()[config.denoise_strategy]["nilearn_strategy"]
    if nilearn_strategy is None:
        return None, [], everything, None
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    assert run.confounds is not None
    import pandas as pd

    try:
        table = pd.read_csv(run.confounds, sep="\t", na_values="n/a")
    except pd.errors.EmptyDataError:
        raise RunError(f"{run.confounds}: confounds TSV is empty") from None
    except Exception as exc:
        raise RunError(f"{run.confounds}: cannot read confounds TSV ({first_line(exc)})") from exc
    if len(table) == 0:
        raise RunError(f"{run.confounds}: confounds TSV is empty")
    if len(table) != n_volumes:
        raise RunError(
            f"{run.confounds}: {len(table)} rows but the BOLD has {n_volumes} volumes"
        )
    options = strategy_kwargs(config)
    columns = {str(c) for c in table.columns}
    missing = [c for c in needed_columns(nilearn_strategy, options) if c not in columns]
    if missing:
        raise RunError(lacks_message(run.confounds, missing, config.denoise_strategy, options))
    fd = None
    if "framewise_displacement" in table.columns:
        fd = table["framewise_displacement"].fillna(0).to_numpy(dtype=float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            confounds, sample_mask = load_confounds_strategy(
                str(run.bold), denoise_strategy=nilearn_strategy, **options
            )
    except Exception as exc:  # e.g. no CompCor components: nilearn names the group
        lacks = missing_in_error(exc)
        if lacks:
            raise RunError(lacks_message(run.confounds, lacks, config.denoise_strategy,
                                         options)) from exc
        raise RunError(
            f"{run.confounds}: unusable for --denoise-strategy {config.denoise_strategy} "
            f"({first_line(exc)})"
        ) from exc
    if sample_mask is None:
        sample_mask = everything
    names = [str(c) for c in confounds.columns] if confounds is not None else []
    values = confounds.to_numpy(dtype=np.float64) if confounds is not None and names else None
    return values, names, np.asarray(sample_mask, dtype=int), fd


def clean_run(run: Run, unit_mask: UnitMask, config: Config) -> CleanRun:
    """Load and denoise one run (BOLD read once).

    Parameters
    ----------
    run : Run
    unit_mask : UnitMask
        The voxels kept (and, through its ``reader``, resampling or a mask computed from
        the BOLD).
    config : Config
        Denoising options, ``min_volumes`` and ``nprocs`` (threads of the cleaning).

    Returns
    -------
    CleanRun

    Raises
    ------
    RunError
        When a file is unusable.
    SkipRun
        When fewer than ``config.min_volumes`` volumes are kept.
    """
    if run.tr is None or not np.isfinite(run.tr) or run.tr <= 0:
        raise RunError(
            f"{run.bold}: RepetitionTime missing or <= 0 in the sidecar and header"
        )
    if unit_mask.reader is not None:  # resampling / mask from the BOLD (masking.py)
        series, mean_img = load_bold(run, unit_mask)
        plan = denoising_plan(run, series.shape[0], config)
    else:
        img, stream = open_bold(run, unit_mask)
        n_volumes = img.shape[3]
        # the helper process loads the confounds (its nilearn import started with the
        # participant level) while this one reads the BOLD; else the BOLD is
        # decompressed by a thread (GIL released) while this one does it
        if helper_process.running():
            wait = helper_process.call(denoising_plan, run, n_volumes, config)
            series, mean_img = read_bold(img, stream, run, unit_mask)
            plan = wait()  # BOLD errors come first
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=1) as pool:
                bold = pool.submit(read_bold, img, stream, run, unit_mask)
                try:
                    plan = denoising_plan(run, n_volumes, config)
                except (RunError, SkipRun) as exc:
                    plan = exc
                finally:
                    series, mean_img = bold.result()  # BOLD errors come first
            if isinstance(plan, Exception):
                raise plan
    n_volumes = series.shape[0]
    confounds, names, sample_mask, fd, operator = plan
    flat = series.max(axis=0) == series.min(axis=0)  # no signal (two reductions, no copy)
    cleaned = apply_operator(operator, series, sample_mask, n_jobs=config.nprocs)
    del series
    return CleanRun(
        run=run,
        data=cleaned,
        sample_mask=sample_mask,
        n_volumes=n_volumes,
        confounds=names,
        mean_img=mean_img,
        framewise_displacement=fd,
        flat=flat,
    )


def denoising_plan(run: Run, n_volumes: int, config: Config
                   ) -> tuple[np.ndarray | None, list[str], np.ndarray, np.ndarray | None,
                              np.ndarray]:
    """What :func:`clean_run` needs besides the BOLD: confounds (values and names),
    sample mask, framewise displacement and the cleaning operator.

    Runs in the helper process when there is one (:mod:`bids_parcellate.runtime.helper_process`).

    Parameters
    ----------
    run : Run
    n_volumes : int
        Volumes of the BOLD.
    config : Config

    Returns
    -------
    confounds, names, sample_mask, fd
        As :func:`load_confounds`.
    operator : ndarray, shape (n_kept, n_volumes), float64
        :func:`cleaning_operator`.

    Raises
    ------
    RunError, SkipRun
        As :func:`clean_run`.
    """
    confounds, names, sample_mask, fd = load_confounds(run, n_volumes, config)
    if sample_mask.size == 0:
        raise RunError(f"{run.bold}: all {n_volumes} volumes are censored")
    if sample_mask.size < config.min_volumes:
        raise SkipRun(
            f"{sample_mask.size} of {n_volumes} volumes kept after censoring "
            f"(< --min-volumes {config.min_volumes})"
        )
    operator = cleaning_operator(n_volumes, confounds, sample_mask, config, run.tr)
    return confounds, names, sample_mask, fd, operator


def cleaning_operator(n_volumes: int, confounds: np.ndarray | None, sample_mask: np.ndarray,
                      config: Config, t_r: float) -> np.ndarray:
    """The (kept volumes x volumes) matrix that denoises every voxel of a run.

    ``nilearn.signal.clean`` (detrending, confound regression, Butterworth filtering,
    censoring with interpolation; no standardisation) is linear in the signal and the
    same for every voxel, so it is a matrix ``L`` and ``clean(X) == L @ X``. We let
    nilearn build ``L`` by cleaning the identity matrix, then apply it ourselves
    (:func:`apply_operator`): calling ``clean`` on the data directly copies it four times
    in float64 and forms ``Q Q^T X`` (2.8 s and about 2 GB for a 2 mm run, against 0.5 s
    and a few MB per block here), with the same result to 1e-6.

    Parameters
    ----------
    n_volumes : int
        Volumes of the run.
    confounds : ndarray, shape (n_volumes, n_confounds), or None
    sample_mask : ndarray of int
        0-based indices of the kept volumes.
    config : Config
        ``detrend``, ``high_pass`` and ``low_pass`` (Hz).
    t_r : float
        Repetition time (s).

    Returns
    -------
    ndarray, shape (n_kept, n_volumes), float64
        ``L``, C-contiguous.
    """
    from nilearn import signal

    filtering = config.high_pass is not None or config.low_pass is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        operator = signal.clean(
            np.eye(n_volumes),
            detrend=config.detrend,
            standardize=None,
            confounds=confounds,
            sample_mask=sample_mask,
            filter="butterworth" if filtering else False,
            low_pass=config.low_pass,
            high_pass=config.high_pass,
            t_r=t_r,
        )
    return np.ascontiguousarray(operator, dtype=np.float64)


def apply_operator(operator: np.ndarray, series: np.ndarray, sample_mask: np.ndarray,
                   n_jobs: int = 1) -> np.ndarray:
    """``operator @ series`` in float64, voxel block by voxel block; float32 result.

    A cleaning operator is the selection of the kept volumes plus a correction of low
    rank (removing the confounds and trends: rank 33 for ``simple``): ``L = S + U V^T``.
    When that rank is under a third of the volumes, ``S X + U (V^T X)`` is computed
    instead of ``L X`` (0.23 instead of 0.39 s of CPU at 2 mm, same result to
    rounding); Butterworth filtering makes ``L`` full rank, and then it is applied as is.
    Blocks run on ``n_jobs`` threads (numpy releases the GIL in matrix products).

    Parameters
    ----------
    operator : ndarray, shape (n_kept, n_volumes), float64
        From :func:`cleaning_operator`.
    series : ndarray, shape (n_volumes, n_voxels)
        The in-mask voxel timeseries, every volume.
    sample_mask : ndarray of int, shape (n_kept,)
        The kept volumes the operator was built with.
    n_jobs : int
        Threads.

    Returns
    -------
    ndarray, shape (n_kept, n_voxels), float32
    """
    kept, n_volumes = operator.shape
    correction = operator.copy()
    correction[np.arange(kept), sample_mask] -= 1.0
    u, sv, vt = np.linalg.svd(correction, full_matrices=False)
    tol = sv[0] * max(correction.shape) * np.finfo(np.float64).eps if sv.size else 0.0
    rank = int((sv > tol).sum())
    low_rank = rank < n_volumes / 3
    left = u[:, :rank] * sv[:rank]
    right = np.ascontiguousarray(vt[:rank])
    out = np.empty((kept, series.shape[1]), dtype=np.float32)
    width = 1024  # blocks that stay in cache

    def clean_block(start: int) -> None:
        part = series[:, start:start + width].astype(np.float64)
        if low_rank:
            block = left @ (right @ part)
            block += part[sample_mask]
        else:
            block = operator @ part
        out[:, start:start + width] = block

    for_each_block(clean_block, range(0, series.shape[1], width), n_jobs)
    return out


def clean_runs(runs: list[Run], unit_mask: UnitMask, config: Config,
               done: Callable[[str], None] | None = None
               ) -> tuple[UnitMask, list[CleanRun], list[Skipped]]:
    """Every run of a unit read once and cleaned on ``unit_mask`` (from
    :func:`bids_parcellate.inputs.grids.build_unit_mask`), runs with too few volumes
    skipped with a warning, then :func:`finish_unit_mask`.

    Parameters
    ----------
    runs : list of Run
        The unit's runs.
    unit_mask : UnitMask
    config : Config
    done : callable, optional
        ``done(message)`` after each run (progress lines).

    Returns
    -------
    unit_mask : UnitMask
        As :func:`finish_unit_mask` leaves it.
    cleaned : list of CleanRun
        The runs kept.
    skipped : list of Skipped
        The runs skipped (too few volumes kept).

    Raises
    ------
    RunError
        When a run's files are unusable (the unit fails).
    """
    cleaned: list[CleanRun] = []
    skipped: list[Skipped] = []
    for run in runs:
        start = time.monotonic()
        label = source_prefix(run.entities)
        try:
            clean = clean_run(run, unit_mask, config)
        except SkipRun as exc:
            LOGGER.warning("skipping %s: %s", run.bold.name, exc)
            skipped.append(Skipped(run.bold, str(exc)))
            message = f"{label}: skipped ({exc})"
        else:
            cleaned.append(clean)
            message = (f"{label}: {clean.sample_mask.size}/{clean.n_volumes} volumes kept, "
                       f"{len(clean.confounds)} regressors "
                       f"({time.monotonic() - start:.1f} s)")
        if done is not None:
            done(message)
    unit_mask, cleaned = finish_unit_mask(unit_mask, cleaned)
    unit_mask, cleaned = drop_flat_voxels(unit_mask, cleaned, keep=config.keep_flat_voxels)
    return unit_mask, cleaned, skipped


def finish_unit_mask(unit_mask: UnitMask, cleaned: list[CleanRun]
                     ) -> tuple[UnitMask, list[CleanRun]]:
    """With a mask computed from the BOLD: intersect the cleaned runs' masks and keep
    those voxels of every run. Otherwise return the arguments unchanged.

    Parameters
    ----------
    unit_mask : UnitMask
        The unit's mask; its ``reader`` holds each run's mask.
    cleaned : list of CleanRun
        The runs, each on its own mask.

    Returns
    -------
    unit_mask : UnitMask
        With the intersection as ``mask`` and the runs' voxel counts.
    cleaned : list of CleanRun
        The runs on the intersection (copies).

    Raises
    ------
    RunError
        When the intersection is empty.
    """
    reader = unit_mask.reader
    if not isinstance(reader, BoldReader) or not reader.from_data or not cleaned:
        return unit_mask, cleaned
    masks = [reader.run_masks[c.run.bold] for c in cleaned]
    final = np.logical_and.reduce(masks)
    if not final.any():
        raise RunError(f"{cleaned[0].run.bold}: the intersection of the runs' "
                       f"{reader.strategy} masks is empty")
    out = [replace(c, data=np.ascontiguousarray(c.data[:, final[m]]),
                   flat=None if c.flat is None else c.flat[final[m]])
           for c, m in zip(cleaned, masks, strict=True)]
    if reader.user_mask is not None:
        computed = np.logical_and.reduce([reader.computed_masks[c.run.bold] for c in cleaned])
        LOGGER.warning("--mask keeps %d of the %d voxels of the %s mask", int(final.sum()),
                       int(computed.sum()), reader.strategy)
    counts = {c.run.bold.name: int(m.sum()) for c, m in zip(cleaned, masks, strict=True)}
    LOGGER.info("%s mask: %d voxels (runs: %s)", reader.strategy, int(final.sum()),
                ", ".join(str(n) for n in counts.values()))
    return replace(unit_mask, mask=final, n_voxels_per_run=counts), out


def drop_flat_voxels(unit_mask: UnitMask, cleaned: list[CleanRun], *, keep: bool = False
                     ) -> tuple[UnitMask, list[CleanRun]]:
    """Leave out of the unit the brain-mask voxels without signal in any of its runs.

    A voxel whose BOLD is constant over a run (typically outside the acquired field of
    view: all zeros) carries no signal there; cleaning makes it zero, and a parcel made
    of such voxels has an all-zero timeseries. Like a voxel outside one run's brain mask
    (the runs' masks are intersected), it is left out of the unit's mask, and recorded in
    ``unit_mask.flat_voxels`` (count and bounding box in mm) for the sidecars and the
    report.

    Parameters
    ----------
    unit_mask : UnitMask
    cleaned : list of CleanRun
        The unit's cleaned runs, each with its ``flat`` voxels.
    keep : bool
        ``--keep-flat-voxels``: record them but keep them in the mask.

    Returns
    -------
    unit_mask : UnitMask
        Without the flat voxels (unless ``keep``), with ``flat_voxels`` set when any.
    cleaned : list of CleanRun
        Their data restricted to the kept voxels.

    Raises
    ------
    RunError
        When no voxel has signal in every run.
    """
    flags = [c.flat for c in cleaned if c.flat is not None]
    if not flags:
        return unit_mask, cleaned
    flat = np.logical_or.reduce(flags)
    n_flat = int(flat.sum())
    if not n_flat:
        return unit_mask, cleaned
    if n_flat == flat.size and not keep:
        raise RunError(f"{cleaned[0].run.bold}: no voxel of the brain mask has signal in "
                       "every run (each is constant over at least one run)")
    coords = np.argwhere(unit_mask.mask)[flat]
    corners = apply_affine(unit_mask.affine,
                           np.stack([coords.min(axis=0), coords.max(axis=0)]))
    record = {"Count": n_flat,
              "BoundingBox": [[round(float(v), 2) for v in corner]
                              for corner in np.sort(corners, axis=0)],
              "Kept": keep}
    where = "x {0:g} to {3:g}, y {1:g} to {4:g}, z {2:g} to {5:g} mm".format(
        *record["BoundingBox"][0], *record["BoundingBox"][1])
    if keep:
        LOGGER.warning("%d brain-mask voxels have no signal in some run (%s); kept "
                       "(--keep-flat-voxels)", n_flat, where)
        return replace(unit_mask, flat_voxels=record), cleaned
    LOGGER.warning("%d brain-mask voxels have no signal in some run (%s): left out of the "
                   "parcellation (--keep-flat-voxels keeps them)", n_flat, where)
    mask = unit_mask.mask.copy()
    mask[unit_mask.mask] = ~flat
    out = [replace(c, data=np.ascontiguousarray(c.data[:, ~flat]), flat=None)
           for c in cleaned]
    return replace(unit_mask, mask=mask, flat_voxels=record), out

