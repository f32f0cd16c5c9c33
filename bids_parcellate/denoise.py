"""Load each run once and denoise it: confounds, censoring, detrending, filtering.

The output of this stage is, per run, the cleaned voxel timeseries of the kept volumes
(time x voxels, float32, *not* standardised: the parcellation stage standardises its own
features and the extraction stage standardises parcel means, which is what nilearn's
``NiftiLabelsMasker`` does) and the indices of the kept volumes.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import nibabel as nib
import numpy as np

from bids_parcellate.config import Config, UserError
from bids_parcellate.inputs import Run

LOGGER = logging.getLogger("bids_parcellate")


class RunError(UserError):
    """A run's files are unusable (wrong shape, NaNs, confounds mismatch, ...)."""


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
    """Reject denoising options that the chosen strategy does not use."""
    options = strategies()[config.denoise_strategy]["options"]
    for name in ("motion", "global_signal", "fd_threshold", "std_dvars_threshold"):
        if getattr(config, name) is not None and name not in options:
            raise UserError(
                f"--{name.replace('_', '-')} has no effect with --denoise-strategy "
                f"{config.denoise_strategy} (it applies to: "
                + ", ".join(k for k, v in strategies().items() if name in v["options"])
                + ")"
            )


@dataclass
class UnitMask:
    """The brain mask shared by all runs of a processing unit (their intersection).

    ``reader``, when set, reads a run's BOLD instead of :func:`load_bold`'s plain
    masking: resampling to a target grid, or a mask computed from the BOLD itself (see
    :mod:`bids_parcellate.masking`, which also fills ``description`` and ``grid``).
    """

    mask: np.ndarray  # 3D bool
    affine: np.ndarray
    n_voxels_per_run: dict[str, int]
    description: str = "intersection of the runs' fMRIPrep brain masks"
    #: ``{"label": res label, "description": ...}`` when the grid was resampled
    grid: dict | None = None
    reader: Callable | None = field(default=None, repr=False)

    @property
    def n_voxels(self) -> int:
        return int(self.mask.sum())

    def to_img(self) -> nib.Nifti1Image:
        img = nib.Nifti1Image(self.mask.astype(np.uint8), self.affine)
        img.header.set_xyzt_units("mm")
        return img


def _same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(
        affine_a, affine_b, atol=1e-3
    )


def load_unit_mask(runs: list[Run]) -> UnitMask:
    """Intersect the brain masks of ``runs``; every run must be on the same grid."""
    mask = None
    affine = None
    counts = {}
    for run in runs:
        try:
            img = nib.load(run.mask)
            data = np.asanyarray(img.dataobj)
        except Exception as exc:
            raise RunError(f"{run.mask}: cannot read mask ({_short(exc)})") from exc
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise RunError(f"{run.mask}: mask must be 3D, got shape {data.shape}")
        current = data > 0
        counts[run.bold.name] = int(current.sum())
        if mask is None:
            mask, affine = current, img.affine
            first = run.mask
        elif not _same_grid(mask.shape, affine, current.shape, img.affine):
            raise RunError(
                f"{run.mask}: mask grid {current.shape} differs from {first.name} "
                f"{mask.shape} (all runs of a participant must share one grid)"
            )
        else:
            mask &= current
        if not current.any():
            raise RunError(f"{run.mask}: mask is empty")
    assert mask is not None
    if not mask.any():
        raise RunError(f"{runs[0].mask}: the intersection of the runs' brain masks is empty")
    return UnitMask(mask=mask, affine=affine, n_voxels_per_run=counts)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
    """

    run: Run
    data: np.ndarray
    sample_mask: np.ndarray
    n_volumes: int
    confounds: list[str]
    mean_img: np.ndarray
    framewise_displacement: np.ndarray | None = None


def load_bold(run: Run, unit_mask: UnitMask) -> tuple[np.ndarray, np.ndarray]:
    """Read a run's BOLD once; return (time x voxels float32 in the mask, mean image)."""
    if unit_mask.reader is not None:  # resampling / mask from the BOLD (masking.py)
        return unit_mask.reader(run, unit_mask)
    try:
        img = nib.load(run.bold)
    except Exception as exc:
        raise RunError(f"{run.bold}: cannot read NIfTI ({_short(exc)})") from exc
    shape = img.shape
    if len(shape) != 4:
        raise RunError(f"{run.bold}: BOLD must be 4D, got {len(shape)}D shape {shape}")
    if not _same_grid(shape, img.affine, unit_mask.mask.shape, unit_mask.affine):
        raise RunError(
            f"{run.bold}: BOLD grid {shape[:3]} differs from its brain mask "
            f"{unit_mask.mask.shape} {run.mask.name}"
        )
    try:
        data = img.get_fdata(dtype=np.float32)
    except Exception as exc:  # truncated / corrupt gzip streams land here
        raise RunError(f"{run.bold}: cannot read NIfTI data ({_short(exc)})") from exc
    mean_img = data.mean(axis=3, dtype=np.float64).astype(np.float32)
    series = np.ascontiguousarray(data[unit_mask.mask].T)  # (time, voxels)
    del data
    if not np.isfinite(series).all():
        bad = int((~np.isfinite(series)).any(axis=0).sum())
        raise RunError(f"{run.bold}: {bad} voxels inside the brain mask hold NaN or Inf")
    constant = int((series.min(axis=0) == series.max(axis=0)).sum())
    if constant == series.shape[1]:
        raise RunError(f"{run.bold}: every voxel inside the brain mask is constant in time")
    if constant:
        # kept: cleaning turns them into zeros, features and parcel means stay finite
        LOGGER.warning("%s: %d of %d voxels inside the brain mask are constant in time "
                       "(zero variance); kept with a zero signal", run.bold.name, constant,
                       series.shape[1])
    return series, mean_img


def load_confounds(run: Run, n_volumes: int, config: Config):
    """Confounds and sample mask of a run via nilearn's ``load_confounds_strategy``.

    Returns
    -------
    confounds : ndarray or None
    names : list of str
    sample_mask : ndarray of int
    fd : ndarray or None
        Framewise displacement (for reports), when the confounds file has it.
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
        raise RunError(f"{run.confounds}: cannot read confounds TSV ({_short(exc)})") from exc
    if len(table) == 0:
        raise RunError(f"{run.confounds}: confounds TSV is empty")
    if len(table) != n_volumes:
        raise RunError(
            f"{run.confounds}: {len(table)} rows but the BOLD has {n_volumes} volumes"
        )
    fd = None
    if "framewise_displacement" in table.columns:
        fd = table["framewise_displacement"].fillna(0).to_numpy(dtype=float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            confounds, sample_mask = load_confounds_strategy(
                str(run.bold), denoise_strategy=nilearn_strategy, **strategy_kwargs(config)
            )
    except Exception as exc:
        raise RunError(
            f"{run.confounds}: unusable for --denoise-strategy {config.denoise_strategy} "
            f"({_short(exc)})"
        ) from exc
    if sample_mask is None:
        sample_mask = everything
    names = [str(c) for c in confounds.columns] if confounds is not None else []
    values = confounds.to_numpy(dtype=np.float64) if confounds is not None and names else None
    return values, names, np.asarray(sample_mask, dtype=int), fd


def clean_run(run: Run, unit_mask: UnitMask, config: Config) -> CleanRun:
    """Load and denoise one run (BOLD read once).

    Raises
    ------
    RunError
        When a file is unusable.
    SkipRun
        When fewer than ``config.min_volumes`` volumes are kept.
    """
    from nilearn import signal

    if run.tr is None or not np.isfinite(run.tr) or run.tr <= 0:
        raise RunError(
            f"{run.bold}: RepetitionTime missing or <= 0 in the sidecar and header"
        )
    series, mean_img = load_bold(run, unit_mask)
    n_volumes = series.shape[0]
    confounds, names, sample_mask, fd = load_confounds(run, n_volumes, config)
    if sample_mask.size == 0:
        raise RunError(f"{run.bold}: all {n_volumes} volumes are censored")
    if sample_mask.size < config.min_volumes:
        raise SkipRun(
            f"{sample_mask.size} of {n_volumes} volumes kept after censoring "
            f"(< --min-volumes {config.min_volumes})"
        )
    filtering = config.high_pass is not None or config.low_pass is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        cleaned = signal.clean(
            series.astype(np.float64),
            detrend=config.detrend,
            standardize=None,
            confounds=confounds,
            sample_mask=sample_mask,
            filter="butterworth" if filtering else False,
            low_pass=config.low_pass,
            high_pass=config.high_pass,
            t_r=run.tr,
        )
    del series
    return CleanRun(
        run=run,
        data=np.ascontiguousarray(cleaned, dtype=np.float32),
        sample_mask=sample_mask,
        n_volumes=n_volumes,
        confounds=names,
        mean_img=mean_img,
        framewise_displacement=fd,
    )
