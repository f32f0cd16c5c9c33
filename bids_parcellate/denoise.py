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
            raise RunError(f"{run.mask}: cannot read mask ({first_line(exc)})") from exc
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


def first_line(exc: Exception) -> str:
    """The first line of an exception's message (its type when it has none)."""
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


#: Bytes of BOLD decompressed per block while reading (bounds memory: the 4D image is
#: never held whole, only the in-mask voxels are kept). Below glibc's 32 MB mmap
#: threshold, so the blocks reuse freed heap memory instead of page-faulting fresh memory
#: (64 MB blocks cost 1.1 s of system time per 2 mm run).
_READ_BLOCK_BYTES = 16 * 2**20


def _open_image(path) -> tuple[nib.Nifti1Image, object]:
    """Open a NIfTI file for one sequential pass; return (image, stream to close).

    ``.nii.gz`` streams are decompressed with ISA-L (``isal``) when it is installed:
    2x faster than zlib here (0.8 vs 1.6 s CPU for a 2 mm run), and decompression is
    the largest single cost of a run. nibabel parses the header and scales the data
    from that stream (``from_file_map``); volume blocks are read in order, so the
    stream is never rewound.
    """
    path = str(path)
    if path.endswith(".gz"):
        try:
            from isal import igzip as gzip_module
        except ImportError:  # pragma: no cover - optional accelerator
            import gzip as gzip_module
        stream = gzip_module.open(path, "rb")
    else:
        stream = open(path, "rb")  # closed by the caller
    try:
        holder = nib.FileHolder(filename=path, fileobj=stream)
        img = nib.Nifti1Image.from_file_map({"image": holder})
    except Exception:
        stream.close()
        raise
    return img, stream


def load_bold(run: Run, unit_mask: UnitMask) -> tuple[np.ndarray, np.ndarray]:
    """Read a run's BOLD once; return (time x voxels float32 in the mask, mean image).

    The file is decompressed in blocks of volumes by a reader thread while the calling
    thread keeps the in-mask voxels of the previous block, so the full 4D array
    (880 MB as float32 at 2 mm) is never built.
    """
    if unit_mask.reader is not None:  # resampling / mask from the BOLD (masking.py)
        return unit_mask.reader(run, unit_mask)
    img, stream = open_bold(run, unit_mask)
    return read_bold(img, stream, run, unit_mask)


def open_bold(run: Run, unit_mask: UnitMask) -> tuple[nib.Nifti1Image, object]:
    """Open a run's BOLD and check its header (4D, on the mask's grid); data not read yet.

    Returns the image and its open stream, for :func:`read_bold`.
    """
    try:
        img, stream = _open_image(run.bold)
    except Exception as exc:
        raise RunError(f"{run.bold}: cannot read NIfTI ({first_line(exc)})") from exc
    try:
        check_bold_header(run, img, unit_mask.mask.shape, unit_mask.affine)
    except RunError:
        stream.close()
        raise
    return img, stream


def check_bold_header(run: Run, img: nib.Nifti1Image, shape: tuple[int, ...],
                      affine: np.ndarray) -> None:
    """Refuse a BOLD that is not 4D or not on the grid ``shape``/``affine`` of its mask."""
    if len(img.shape) != 4:
        raise RunError(f"{run.bold}: BOLD must be 4D, got {len(img.shape)}D shape {img.shape}")
    if not _same_grid(img.shape, img.affine, shape, affine):
        raise RunError(f"{run.bold}: BOLD grid {img.shape[:3]} differs from its brain mask "
                       f"{tuple(shape[:3])} {run.mask.name}")


def read_bold(img: nib.Nifti1Image, stream, run: Run,
              unit_mask: UnitMask) -> tuple[np.ndarray, np.ndarray]:
    """The data of a BOLD opened by :func:`open_bold` (closes its stream)."""
    with stream:
        try:
            series, total = _read_masked(img.dataobj, unit_mask.mask)
        except Exception as exc:  # truncated / corrupt gzip streams land here
            raise RunError(f"{run.bold}: cannot read NIfTI data ({first_line(exc)})") from exc
    check_series(run, series)
    return series, (total / img.shape[3]).astype(np.float32)


def check_series(run: Run, series: np.ndarray) -> None:
    """Refuse NaN/Inf and all-constant data inside the mask; warn about constant voxels.

    ``series``: (time x voxels) in the mask, as read (or resampled) from ``run.bold``.
    """
    # one pass: NaN propagates into the minimum and maximum, and so does Inf into one
    low, high = series.min(axis=0), series.max(axis=0)
    bad = int((~(np.isfinite(low) & np.isfinite(high))).sum())
    if bad:
        raise RunError(f"{run.bold}: {bad} voxels inside the brain mask hold NaN or Inf")
    constant = int((low == high).sum())
    if constant == series.shape[1]:
        raise RunError(f"{run.bold}: every voxel inside the brain mask is constant in time")
    if constant:
        # kept: cleaning turns them into zeros, features and parcel means stay finite
        LOGGER.warning("%s: %d of %d voxels inside the brain mask are constant in time "
                       "(zero variance); kept with a zero signal", run.bold.name, constant,
                       series.shape[1])


def _read_masked(proxy, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In-mask voxels (C order) of every volume of a 4D array proxy, and the voxelwise sum."""
    from concurrent.futures import ThreadPoolExecutor

    n_volumes = proxy.shape[3]
    # positions of the in-mask voxels (C order, as ``data[mask]``) in a volume stored
    # in the file's Fortran order
    where = np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F")
    block = max(1, _READ_BLOCK_BYTES // (4 * mask.size))
    series = np.empty((n_volumes, where.size), dtype=np.float32)
    total = np.zeros(mask.shape, dtype=np.float64)

    def read(start: int) -> np.ndarray:
        return np.asarray(proxy[..., start:start + block], dtype=np.float32)

    # decompression releases the GIL: read block i+1 while block i is masked
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read, 0)
        for start in range(0, n_volumes, block):
            volumes = pending.result()
            if start + block < n_volumes:
                pending = reader.submit(read, start + block)
            total += volumes.sum(axis=3, dtype=np.float64)
            flat = volumes.reshape((-1, volumes.shape[3]), order="F").T
            # mode="clip" lets numpy write straight into ``out`` (no buffering)
            np.take(flat, where, axis=1, out=series[start:start + volumes.shape[3]],
                    mode="clip")
            del volumes, flat
    return series, total


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
        raise RunError(f"{run.confounds}: cannot read confounds TSV ({first_line(exc)})") from exc
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
            f"({first_line(exc)})"
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
    if run.tr is None or not np.isfinite(run.tr) or run.tr <= 0:
        raise RunError(
            f"{run.bold}: RepetitionTime missing or <= 0 in the sidecar and header"
        )
    from bids_parcellate.runtime import helper_process

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
    )


def denoising_plan(run: Run, n_volumes: int, config: Config):
    """What :func:`clean_run` needs besides the BOLD: confounds (values and names),
    sample mask, framewise displacement and the cleaning operator.

    Runs in the helper process when there is one (:mod:`bids_parcellate.runtime.helper_process`).

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
    """
    from bids_parcellate.runtime.parallel import for_each_block

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
