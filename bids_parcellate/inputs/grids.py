"""The brain mask and voxel grid of a unit: mask strategies, user masks, resampling.

This stage runs before denoising and decides which voxels, on which grid, every later
stage sees:

- ``--target-resolution`` / ``--target-affine`` / ``--target-shape``: the BOLD
  (continuous interpolation) and every mask (nearest neighbour) are resampled with
  nilearn's ``resample_img`` before anything else, as nilearn's ``Parcellations`` does
  with its ``target_affine`` / ``target_shape``.
- ``--mask-strategy``: ``fmriprep`` (the intersection of the runs' ``desc-brain``
  masks), nilearn's template masks (``compute_brain_mask``: MNI152 whole brain, grey or
  white matter bundled with nilearn, intersected with fMRIPrep's masks so that voxels
  outside the acquired field of view are never used), or masks computed from each run's
  mean image (``compute_epi_mask``, ``compute_background_mask``), intersected across runs.
- ``--mask``: a user mask, resampled to the grid (nearest neighbour) and intersected with
  the brain mask.

Masks computed from the BOLD need the BOLD: :class:`BoldReader` computes a run's mask
from the data it reads for denoising (the file is still read once), and
:func:`finish_unit_mask` intersects the runs' masks once every run is cleaned (cleaning
is voxelwise, so cleaning a superset and then selecting voxels is the same as cleaning
the selection).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_parcellate.config import Config, UserError
from bids_parcellate.inputs.bold import (
    RunError,
    UnitMask,
    check_bold_header,
    check_series,
    first_line,
    load_unit_mask,
)
from bids_parcellate.inputs.query import Run
from bids_parcellate.words import value_text

LOGGER = logging.getLogger("bids_parcellate")

#: Strategies whose mask is computed from each run's mean BOLD image.
DATA_STRATEGIES = {"epi": "compute_epi_mask", "background": "compute_background_mask"}
#: Template strategies and nilearn's ``compute_brain_mask`` ``mask_type``.
TEMPLATE_STRATEGIES = {"whole-brain-template": "whole-brain", "gm-template": "gm",
                       "wm-template": "wm"}
TEMPLATE_WORDS = {"whole-brain-template": "whole-brain", "gm-template": "grey-matter",
                  "wm-template": "white-matter"}


# --------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class Grid:
    """A voxel grid: 3D shape and 4x4 voxel-to-world affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def voxel_size(self) -> np.ndarray:
        """Voxel size (mm) along each of the three axes: the norms of the affine's
        columns."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    def image(self, data: np.ndarray | None = None) -> nib.Nifti1Image:
        """A 3D image on this grid (zeros when ``data`` is None)."""
        if data is None:
            data = np.zeros(self.shape, dtype=np.uint8)
        return nib.Nifti1Image(data, self.affine)


def _mm(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text.replace(".", "p")


def resolution_label(voxel_size: np.ndarray) -> str:
    """BIDS ``res-`` label of a grid from its voxel size: ``4mm``, ``2p5mm``,
    ``2x2x3mm`` (labels are alphanumeric, so the decimal point is written ``p``)."""
    sizes = [_mm(v) for v in voxel_size]
    if len(set(sizes)) == 1:
        return f"{sizes[0]}mm"
    return "x".join(sizes) + "mm"


def target_grid(config: Config, source: Grid) -> Grid | None:
    """The grid asked for by ``--target-resolution`` / ``--target-affine`` /
    ``--target-shape``, or None when the data stay on their own grid.

    A 3x3 affine (``--target-resolution`` gives one: the source axes scaled to the
    requested voxel size) leaves the field of view to nilearn's ``resample_img``, which
    makes the new grid cover the source grid's bounding box.

    Parameters
    ----------
    config : Config
        Its ``target_resolution`` (mm), or ``target_affine`` (3x3 or 4x4) and
        ``target_shape``.
    source : Grid
        The input BOLD's grid.

    Returns
    -------
    Grid or None

    Raises
    ------
    UserError
        When the target grid holds no data of the source grid, or is empty.
    """
    if config.target_resolution is not None:
        axes = source.affine[:3, :3] / source.voxel_size
        target_affine = axes * config.target_resolution
        target_shape = None
    elif config.target_affine is not None:
        target_affine = np.asarray(config.target_affine, dtype=float)
        target_shape = config.target_shape
    else:
        return None
    from nilearn.image import resample_img  # only when resampling (about 1 s to import)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = resample_img(source.image(), target_affine=target_affine,
                                 target_shape=target_shape, interpolation="nearest",
                                 force_resample=True, copy_header=True)
    except ValueError as exc:  # nilearn's BoundingBoxError: no data in the target grid
        raise UserError(f"--target-affine/--target-shape: {first_line(exc)}") from exc
    grid = Grid(tuple(int(n) for n in probe.shape[:3]), np.asarray(probe.affine, dtype=float))
    if min(grid.shape) < 1 or np.prod(grid.shape) < 8:
        raise UserError(f"--target-affine/--target-shape give an empty grid {grid.shape}")
    return grid


def output_res(config: Config, runs: list[Run]) -> str | None:
    """The ``res-`` label of the outputs: the target grid's (``--target-*``), else the
    input BOLD's (None when it has none).

    Parameters
    ----------
    config : Config
    runs : list of Run
        The unit's runs (the first one's ``res`` entity is used).

    Returns
    -------
    str or None
    """
    if config.target_resolution is not None:
        return resolution_label(np.full(3, config.target_resolution))
    if config.target_affine is not None:
        axes = np.asarray(config.target_affine, dtype=float)[:3, :3]
        return resolution_label(np.sqrt((axes ** 2).sum(axis=0)))
    return runs[0].entities.get("res") if runs else None


def resampling_reader(config: Config, shape: tuple[int, ...], affine: np.ndarray
                      ) -> tuple[Grid, BoldReader | None]:
    """The grid the data are analysed on, and the reader that resamples a BOLD on the
    grid ``shape``/``affine`` to it (None when there is no ``--target-*``). For stages
    that mask with a known mask (the group level's atlas timeseries).

    Parameters
    ----------
    config : Config
    shape : tuple of int
        Shape of the input BOLD grid (the first three dimensions are used).
    affine : ndarray, shape (4, 4)
        Its voxel-to-world affine.

    Returns
    -------
    grid : Grid
        The target grid, or the input grid when the data are not resampled.
    reader : BoldReader or None

    Raises
    ------
    UserError
        As :func:`target_grid`.
    """
    source = Grid(tuple(int(n) for n in shape[:3]), np.asarray(affine, dtype=float))
    target = target_grid(config, source)
    if target is None:
        return source, None
    return target, BoldReader(source, target, "fmriprep", None, None)


def resample_mask(mask: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    """A boolean mask on ``target`` (nearest neighbour, as nilearn resamples masks).

    Parameters
    ----------
    mask : ndarray of bool, 3D
        The mask on ``source``.
    source : Grid
    target : Grid

    Returns
    -------
    ndarray of bool, shape ``target.shape``
    """
    from nilearn.image import resample_img

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = resample_img(source.image(mask.astype(np.uint8)), target_affine=target.affine,
                           target_shape=target.shape, interpolation="nearest",
                           force_resample=True, copy_header=True)
    return np.asarray(out.dataobj) > 0


def resample_bold(img: nib.Nifti1Image, target: Grid) -> np.ndarray:
    """A 4D BOLD image resampled to ``target`` (nilearn ``resample_img``, continuous
    interpolation as nilearn's maskers); float32 array.

    Parameters
    ----------
    img : Nifti1Image
        The 4D BOLD.
    target : Grid

    Returns
    -------
    ndarray, shape ``target.shape + (n_volumes,)``, float32
    """
    from nilearn.image import resample_img

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = resample_img(img, target_affine=target.affine, target_shape=target.shape,
                           interpolation="continuous", force_resample=True,
                           copy_header=True)
    return np.asarray(out.dataobj, dtype=np.float32)


# --------------------------------------------------------------------------- masks
def template_mask(strategy: str, grid: Grid, mask_args: dict | None) -> np.ndarray:
    """nilearn's MNI152 template mask (``compute_brain_mask``) on ``grid``.

    Parameters
    ----------
    strategy : str
        A key of :data:`TEMPLATE_STRATEGIES` (``--mask-strategy``).
    grid : Grid
    mask_args : dict or None
        Keyword arguments of ``compute_brain_mask`` (``--mask-args``).

    Returns
    -------
    ndarray of bool, shape ``grid.shape``

    Raises
    ------
    UserError
        When nilearn refuses ``mask_args``.
    """
    from nilearn.masking import compute_brain_mask

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = compute_brain_mask(grid.image(), mask_type=TEMPLATE_STRATEGIES[strategy],
                                     **(mask_args or {}))
    except (TypeError, ValueError) as exc:
        raise UserError(f"--mask-strategy {strategy} --mask-args {value_text(mask_args)}: "
                        f"{first_line(exc)}") from exc
    return np.asarray(img.dataobj) > 0


def data_mask(strategy: str, mean_img: nib.Nifti1Image, mask_args: dict | None,
              source: Path) -> np.ndarray:
    """nilearn's ``compute_epi_mask`` / ``compute_background_mask`` of a mean image.

    Parameters
    ----------
    strategy : str
        A key of :data:`DATA_STRATEGIES` (``--mask-strategy``).
    mean_img : Nifti1Image
        A run's mean BOLD image (3D).
    mask_args : dict or None
        Keyword arguments of the nilearn function (``--mask-args``).
    source : Path
        The run's BOLD (named in the errors).

    Returns
    -------
    ndarray of bool, 3D
        The mask, on the grid of ``mean_img``.

    Raises
    ------
    UserError
        When nilearn refuses ``mask_args``.
    RunError
        When nilearn fails on the image or gives an empty mask.
    """
    from nilearn import masking

    function = getattr(masking, DATA_STRATEGIES[strategy])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = function(mean_img, **(mask_args or {}))
    except TypeError as exc:
        raise UserError(f"--mask-args {value_text(mask_args)}: {first_line(exc)}") from exc
    except ValueError as exc:  # nilearn raises ValueError on empty masks
        raise RunError(f"{source}: nilearn {function.__name__} failed "
                       f"({first_line(exc)})") from exc
    mask = np.asarray(img.dataobj) > 0
    if not mask.any():
        raise RunError(f"{source}: nilearn {function.__name__} gives an empty mask")
    return mask


def load_user_mask(path: Path, grid: Grid) -> np.ndarray:
    """``--mask``: a binary image (nilearn ``load_mask_img``) on ``grid`` (nearest).

    Parameters
    ----------
    path : Path
        The ``--mask`` image.
    grid : Grid
        The BOLD grid; the mask is resampled to it (with a warning) when on another.

    Returns
    -------
    ndarray of bool, shape ``grid.shape``

    Raises
    ------
    UserError
        When the image is not a usable mask, or no voxel is left on ``grid``.
    """
    from nilearn.masking import load_mask_img

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data, affine = load_mask_img(str(path))
    except Exception as exc:
        raise UserError(f"--mask {path}: not a usable mask image ({first_line(exc)})") \
            from exc
    own = Grid(tuple(data.shape), np.asarray(affine, dtype=float))
    if own.shape == grid.shape and np.allclose(own.affine, grid.affine, atol=1e-3):
        return np.asarray(data, dtype=bool)
    mask = resample_mask(np.asarray(data, dtype=bool), own, grid)
    LOGGER.warning("--mask %s: resampled from %s voxels of %s mm to the BOLD grid %s of "
                   "%s mm (nearest neighbour): %d voxels in the mask (%d before)",
                   path.name, "x".join(map(str, own.shape)), _sizes(own),
                   "x".join(map(str, grid.shape)), _sizes(grid), int(mask.sum()),
                   int(np.count_nonzero(data)))
    if not mask.any():
        raise UserError(f"--mask {path}: no voxel left on the BOLD grid (is it in the "
                        "BOLD's space?)")
    return mask


def _sizes(grid: Grid) -> str:
    sizes = [_mm(v).replace("p", ".") for v in grid.voxel_size]
    return sizes[0] if len(set(sizes)) == 1 else "x".join(sizes)


# --------------------------------------------------------------------------- reading
class BoldReader:
    """Reads a run's BOLD when plain masking on its own grid is not enough.

    Resamples to the target grid and, with a strategy computed from the data, computes
    the run's mask from the mean image of the (resampled) run; the masks are kept in
    :attr:`run_masks` for :func:`finish_unit_mask`. Called by
    :func:`bids_parcellate.inputs.bold.load_bold` (one read of the file).
    """

    def __init__(self, source: Grid, target: Grid | None, strategy: str,
                 mask_args: dict | None, user_mask: np.ndarray | None) -> None:
        self.source = source
        self.target = target
        self.strategy = strategy
        self.mask_args = mask_args
        self.user_mask = user_mask
        #: each run's mask as computed, and as used (intersected with ``--mask``)
        self.computed_masks: dict[Path, np.ndarray] = {}
        self.run_masks: dict[Path, np.ndarray] = {}

    @property
    def from_data(self) -> bool:
        """Whether the mask is computed from each run's BOLD (:data:`DATA_STRATEGIES`)."""
        return self.strategy in DATA_STRATEGIES

    def __call__(self, run: Run, unit_mask: UnitMask) -> tuple[np.ndarray, np.ndarray]:
        try:
            img = nib.load(run.bold)
        except Exception as exc:
            raise RunError(f"{run.bold}: cannot read NIfTI ({first_line(exc)})") from exc
        check_bold_header(run, img, self.source.shape, self.source.affine)
        try:
            data = img.get_fdata(dtype=np.float32)
        except Exception as exc:
            raise RunError(f"{run.bold}: cannot read NIfTI data ({first_line(exc)})") \
                from exc
        mean_img = data.mean(axis=3, dtype=np.float64).astype(np.float32)
        if self.from_data:
            # on the source grid, then resampled like every other mask: the continuous
            # interpolation of the BOLD rings outside the brain and would make a
            # background that is no longer homogeneous
            mask = data_mask(self.strategy, self.source.image(mean_img), self.mask_args,
                             run.bold)
            if self.target is not None:
                mask = resample_mask(mask, self.source, self.target)
            self.computed_masks[run.bold] = mask
            if self.user_mask is not None:
                mask = mask & self.user_mask
            self.run_masks[run.bold] = mask
        else:
            mask = unit_mask.mask
        if self.target is not None:
            data = resample_bold(nib.Nifti1Image(data, img.affine, img.header), self.target)
            mean_img = data.mean(axis=3, dtype=np.float64).astype(np.float32)
        series = np.ascontiguousarray(data[mask].T)
        del data
        check_series(run, series)
        return series, mean_img


# --------------------------------------------------------------------------- unit mask
def build_unit_mask(runs: list[Run], config: Config) -> UnitMask:
    """The mask and grid of a unit, from the runs' brain masks and the mask options.

    Reads only mask files (and nilearn's templates); the BOLD is read later, once, by
    :func:`bids_parcellate.denoise.clean_run` (through :class:`BoldReader` when the data
    are resampled or the mask is computed from them).

    Parameters
    ----------
    runs : list of Run
        The unit's runs, all on one grid.
    config : Config
        The mask and grid options (``mask_strategy``, ``mask_args``, ``mask``,
        ``target_*``).

    Returns
    -------
    UnitMask
        The mask, grid and description; its ``reader`` is set when the BOLD must be
        resampled or the mask is computed from it.

    Raises
    ------
    UserError
        When an option leaves no voxel (the target grid, a template mask or ``--mask``)
        or is refused by nilearn.
    RunError
        When the runs' brain masks are unusable or differ in grid.
    """
    base = load_unit_mask(runs)
    source = Grid(tuple(base.mask.shape), np.asarray(base.affine, dtype=float))
    target = target_grid(config, source)
    grid = target or source
    mask = base.mask if target is None else resample_mask(base.mask, source, target)
    if not mask.any():
        raise UserError("--target-affine/--target-shape: the brain mask of "
                        f"{runs[0].mask.name} falls outside the target grid")
    parts = ["intersection of the runs' fMRIPrep brain masks"]
    strategy = config.mask_strategy
    if strategy in TEMPLATE_STRATEGIES:
        template = template_mask(strategy, grid, config.mask_args)
        before = int(mask.sum())
        mask = mask & template
        parts = [f"MNI152 {TEMPLATE_WORDS[strategy]} template mask of nilearn "
                 f"(compute_brain_mask, {int(template.sum())} voxels) within the "
                 f"{parts[0]} ({before} voxels)"]
        if not mask.any():
            raise UserError(f"--mask-strategy {strategy}: no voxel of the template mask is "
                            f"inside the brain mask of {runs[0].mask.name}")
        if mask.sum() < 0.25 * before:
            LOGGER.warning(
                "--mask-strategy %s keeps %d of the %d brain-mask voxels (nilearn's "
                "compute_brain_mask; its default opening=2 erodes thin grey or white matter "
                "at %s mm, see --mask-args '{\"opening\": 0}')", strategy, int(mask.sum()),
                before, _sizes(grid))
    elif strategy in DATA_STRATEGIES:
        parts = [f"intersection of the masks computed by nilearn's "
                 f"{DATA_STRATEGIES[strategy]} from each run's mean "
                 "BOLD image"]
    user = None
    if config.mask is not None:
        user = load_user_mask(config.mask, grid)
        parts.append(f"restricted to --mask {config.mask.name} ({int(user.sum())} voxels)")
        if strategy not in DATA_STRATEGIES:
            before = int(mask.sum())
            mask = mask & user
            LOGGER.warning("--mask %s keeps %d of the %d brain-mask voxels", config.mask.name,
                           int(mask.sum()), before)
            if not mask.any():
                raise UserError(f"--mask {config.mask}: no voxel in common with the brain "
                                f"mask of {runs[0].mask.name} (is it in the BOLD's space?)")
    if strategy in DATA_STRATEGIES:
        mask = user if user is not None else np.ones(grid.shape, dtype=bool)
    reader = None
    if target is not None or strategy in DATA_STRATEGIES:
        reader = BoldReader(source, target, strategy, config.mask_args, user)
    grid_info = None
    if target is not None:
        grid_info = {
            "label": resolution_label(target.voxel_size),
            "description": (
                f"BOLD and masks resampled from {_sizes(source)} mm voxels "
                f"({'x'.join(map(str, source.shape))}) to {_sizes(target)} mm voxels "
                f"({'x'.join(map(str, target.shape))}) with nilearn resample_img "
                "(continuous interpolation for the BOLD, nearest neighbour for masks)"),
            "shape": list(target.shape),
            "affine": target.affine.tolist(),
        }
    return UnitMask(mask=mask, affine=grid.affine, n_voxels_per_run=base.n_voxels_per_run,
                    description=", ".join(parts), grid=grid_info, reader=reader)


