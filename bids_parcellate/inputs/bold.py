"""Reading a unit's brain masks and each run's BOLD: the only code that opens them.

:func:`load_unit_mask` intersects the runs' fMRIPrep brain masks into a
:class:`UnitMask`; :func:`open_bold` / :func:`read_bold` stream a run's in-mask voxels
(time x voxels, float32) in blocks, checking the header and the values on the way.
Errors name the file and the problem (:class:`RunError`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from bids_parcellate.config import UserError
from bids_parcellate.inputs.query import Run

LOGGER = logging.getLogger("bids_parcellate")

#: Bytes of BOLD decompressed per block while reading (bounds memory: the 4D image is
#: never held whole, only the in-mask voxels are kept). Below glibc's 32 MB mmap
#: threshold, so the blocks reuse freed heap memory instead of page-faulting fresh memory
#: (64 MB blocks cost 1.1 s of system time per 2 mm run).
READ_BLOCK_BYTES = 16 * 2**20


class RunError(UserError):
    """A run's files are unusable (wrong shape, NaNs, confounds mismatch, ...)."""


@dataclass
class UnitMask:
    """The brain mask shared by all runs of a processing unit (their intersection).

    ``reader``, when set, reads a run's BOLD instead of :func:`load_bold`'s plain
    masking: resampling to a target grid, or a mask computed from the BOLD itself (see
    :mod:`bids_parcellate.inputs.grids`, which also fills ``description`` and ``grid``).
    """

    mask: np.ndarray  # 3D bool
    affine: np.ndarray
    n_voxels_per_run: dict[str, int]
    description: str = "intersection of the runs' fMRIPrep brain masks"
    #: ``{"label": res label, "description": ...}`` when the grid was resampled
    grid: dict | None = None
    #: brain-mask voxels without signal (BOLD constant over a run): ``Count``,
    #: ``BoundingBox`` (mm), ``Kept`` (``--keep-flat-voxels``); None when there are none
    flat_voxels: dict | None = None
    reader: Callable | None = field(default=None, repr=False)

    @property
    def n_voxels(self) -> int:
        """Voxels in the mask."""
        return int(self.mask.sum())

    def to_img(self) -> nib.Nifti1Image:
        """The mask as a 3D uint8 image (0/1, units mm)."""
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

    Parameters
    ----------
    run : Run
    unit_mask : UnitMask
        The voxels kept; its ``reader``, when set, reads the run instead (resampling, or
        a mask computed from the BOLD: :class:`bids_parcellate.inputs.grids.BoldReader`).

    Returns
    -------
    series : ndarray, shape (n_volumes, n_voxels), float32
        The in-mask voxel timeseries, every volume.
    mean_img : ndarray, 3D float32
        Mean of the BOLD over time (on the analysis grid).

    Raises
    ------
    RunError
        When the file is unreadable, not 4D, not on the mask's grid, or holds NaN/Inf or
        only constant voxels.
    """
    if unit_mask.reader is not None:  # resampling / mask from the BOLD (masking.py)
        return unit_mask.reader(run, unit_mask)
    img, stream = open_bold(run, unit_mask)
    return read_bold(img, stream, run, unit_mask)


def open_bold(run: Run, unit_mask: UnitMask) -> tuple[nib.Nifti1Image, object]:
    """Open a run's BOLD and check its header (4D, on the mask's grid); data not read yet.

    Parameters
    ----------
    run : Run
    unit_mask : UnitMask
        The mask whose grid the BOLD must be on.

    Returns
    -------
    img : Nifti1Image
        The image, its data not read.
    stream : file object
        Its open stream, for :func:`read_bold` (which closes it).

    Raises
    ------
    RunError
        When the file cannot be read or its header is refused (:func:`check_bold_header`).
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
    """Refuse a BOLD that is not 4D or not on the grid ``shape``/``affine`` of its mask.

    Parameters
    ----------
    run : Run
        The run (its BOLD and mask paths name the files in the error).
    img : Nifti1Image
        The BOLD (header only is used).
    shape : tuple of int
        Shape of the mask (the first three dimensions are compared).
    affine : ndarray, shape (4, 4)
        Affine of the mask (compared to within 1e-3).

    Raises
    ------
    RunError
        When the BOLD is not 4D or its grid differs.
    """
    if len(img.shape) != 4:
        raise RunError(f"{run.bold}: BOLD must be 4D, got {len(img.shape)}D shape {img.shape}")
    if not _same_grid(img.shape, img.affine, shape, affine):
        raise RunError(f"{run.bold}: BOLD grid {img.shape[:3]} differs from its brain mask "
                       f"{tuple(shape[:3])} {run.mask.name}")


def read_bold(img: nib.Nifti1Image, stream, run: Run,
              unit_mask: UnitMask) -> tuple[np.ndarray, np.ndarray]:
    """The data of a BOLD opened by :func:`open_bold` (closes its stream).

    Parameters
    ----------
    img : Nifti1Image
        The image returned by :func:`open_bold`.
    stream : file object
        Its open stream, read once in order and closed.
    run : Run
    unit_mask : UnitMask
        The voxels kept.

    Returns
    -------
    series : ndarray, shape (n_volumes, n_voxels), float32
        The in-mask voxel timeseries.
    mean_img : ndarray, 3D float32
        Mean of the BOLD over time.

    Raises
    ------
    RunError
        When the data cannot be read (truncated or corrupt file) or are refused by
        :func:`check_series`.
    """
    with stream:
        try:
            series, total = _read_masked(img.dataobj, unit_mask.mask)
        except Exception as exc:  # truncated / corrupt gzip streams land here
            raise RunError(f"{run.bold}: cannot read NIfTI data ({first_line(exc)})") from exc
    check_series(run, series)
    return series, (total / img.shape[3]).astype(np.float32)


def check_series(run: Run, series: np.ndarray) -> None:
    """Refuse NaN/Inf and all-constant data inside the mask; warn about constant voxels.

    Parameters
    ----------
    run : Run
        The run ``series`` was read from (named in the messages).
    series : ndarray, shape (n_volumes, n_voxels)
        The in-mask voxels, as read (or resampled) from ``run.bold``.

    Raises
    ------
    RunError
        When a voxel holds NaN or Inf, or every voxel is constant in time.
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
        # left out of the unit's mask after cleaning unless --keep-flat-voxels
        # (bids_parcellate.denoise.drop_flat_voxels)
        LOGGER.warning("%s: %d of %d voxels inside the brain mask are constant in time "
                       "(zero variance: no signal)", run.bold.name, constant,
                       series.shape[1])


def _read_masked(proxy, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In-mask voxels (C order) of every volume of a 4D array proxy, and the voxelwise sum."""
    from concurrent.futures import ThreadPoolExecutor

    n_volumes = proxy.shape[3]
    # positions of the in-mask voxels (C order, as ``data[mask]``) in a volume stored
    # in the file's Fortran order
    where = np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F")
    block = max(1, READ_BLOCK_BYTES // (4 * mask.size))
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
