"""Regions: network maps split into connected regions, and parcels split into pieces.

Two routes lead here (nilearn user guide, "Region Extraction for better brain
parcellations"):

* ``--method dictlearning`` / ``canica``: the cleaned runs of a unit (at the group level,
  the merged group components as one pseudo-run) are decomposed into network maps
  (nilearn ``DictLearning`` / ``CanICA``); ``RegionExtractor`` thresholds the maps and
  splits each into regions; overlapping regions are resolved into one label image
  (:func:`maps_to_regions`).
* ``--split-disconnected`` (kmeans, hierarchical_kmeans, whose parcels need not be
  contiguous): every parcel is split into its connected pieces with
  ``nilearn.regions.connected_label_regions`` (:func:`split_disconnected`).

Both return a :class:`RegionSet`: labels over the in-mask voxels (0 = in no region),
numbered by centroid like every parcellation, and for each region the map or parcel it
came from. Connectivity is face adjacency (6 neighbours), as for the spatially
constrained clustering methods and nilearn's ``connected_regions``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from bids_parcellate.config import Config, UserError
from bids_parcellate.learn.methods import order_labels

LOGGER = logging.getLogger("bids_parcellate")


@dataclass(frozen=True)
class RegionSet:
    """Regions at one scale.

    Attributes
    ----------
    labels : ndarray of int32, shape (n_voxels,)
        Region of every in-mask voxel, 1..n numbered by centroid; 0 = in no region.
    origin : ndarray of int32, shape (n_regions,)
        For region ``i + 1``: the network map (1-based, the volume of the maps image) or
        the original parcel (1..scale) it came from.
    maps : ndarray of float32, shape (n_maps, n_voxels), or None
        The network maps the regions were extracted from (decompositions only).
    """

    labels: np.ndarray
    origin: np.ndarray
    maps: np.ndarray | None = None

    @property
    def n_regions(self) -> int:
        """Regions at this scale (the length of ``origin``)."""
        return int(self.origin.size)


# --------------------------------------------------------------------------- grids
def _box(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the mask (nilearn works on full grids: cropping saves memory)."""
    idx = np.argwhere(mask)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0),
                                                          strict=True))


def _box_affine(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    out = affine.copy()
    out[:3, 3] = nib.affines.apply_affine(affine, [s.start for s in box])
    return out


def _image(values: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A 4D (or 3D for 1-D ``values``) image of in-mask ``values`` (n_volumes, n_voxels)."""
    if values.ndim == 1:
        volume = np.zeros(mask.shape, dtype=values.dtype)
        volume[mask] = values
    else:
        volume = np.zeros(mask.shape + (values.shape[0],), dtype=values.dtype)
        volume[mask] = values.T
    return nib.Nifti1Image(volume, affine)


# --------------------------------------------------------------------------- labels
def renumber_by_centroid(labels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """Renumber the non-zero labels 1..n by centroid; 0 stays 0.

    Parameters
    ----------
    labels : ndarray of int, shape (n_voxels,)
        Labels over the in-mask voxels (C order of ``mask``); 0 = none.
    mask : ndarray of bool, 3D

    Returns
    -------
    labels : ndarray of int32
    new_of_old : ndarray of int32
        ``new_of_old[old]`` is the new number of label ``old`` (0 for absent labels).
    """
    inside = labels > 0
    out = np.zeros(labels.shape, dtype=np.int32)
    new_of_old = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    if inside.any():
        labelled = np.zeros(mask.shape, dtype=bool)
        labelled[mask] = inside
        out[inside] = order_labels(labels[inside], labelled)
        new_of_old[labels[inside]] = out[inside]
    return out, new_of_old


def split_disconnected(labels: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                       min_size: float) -> RegionSet:
    """Split every labelled region into its connected pieces.

    Uses ``nilearn.regions.connected_label_regions`` (face connectivity); pieces whose
    volume is not above ``min_size`` mm³ are dropped (their voxels get label 0).

    Parameters
    ----------
    labels : ndarray of int, shape (n_voxels,)
        Labels over the in-mask voxels (0 = none).
    mask : ndarray of bool, 3D
    affine : ndarray (4, 4)
    min_size : float
        Minimum volume of a piece in mm³.

    Returns
    -------
    RegionSet
        ``origin`` holds the input label each piece came from.
    """
    from nilearn.regions import connected_label_regions

    box = _box(mask)
    sub_mask = mask[box]
    present = np.unique(labels[labels > 0])
    img = _image(labels.astype(np.int32), sub_mask, _box_affine(affine, box))
    pieces_img, names = connected_label_regions(
        img, min_size=min_size, connect_diag=False, labels=[str(v) for v in present])
    pieces = np.asarray(pieces_img.dataobj)[sub_mask].astype(np.int32)
    origin_of_piece = np.array([0, *map(int, names)], dtype=np.int32)
    ordered, new_of_old = renumber_by_centroid(pieces, mask)
    origin = np.zeros(int(ordered.max(initial=0)), dtype=np.int32)
    kept = new_of_old > 0
    origin[new_of_old[kept] - 1] = origin_of_piece[np.flatnonzero(kept)]
    return RegionSet(labels=ordered, origin=origin)


class _RunImages(Sequence):
    """The runs as nilearn images, each built when nilearn asks for it.

    A 4D image spans the mask's bounding box (background included), 2-3 times the
    in-mask data: building them one at a time keeps a single one in memory while nilearn
    reduces the runs one after the other (it drops each image once reduced).
    """

    def __init__(self, data: list[np.ndarray], mask: np.ndarray, affine: np.ndarray):
        self._data, self._mask, self._affine = data, mask, affine

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return _image(self._data[index], self._mask, self._affine)


# --------------------------------------------------------------------------- maps
#: nilearn's DictLearning ``alpha`` and the data it is calibrated on: its user-guide
#: example fits 20 participants of 168 volumes each (development_fmri).
NILEARN_ALPHA, NILEARN_VOLUMES = 10.0, 20 * 168


def auto_alpha(n_volumes: int) -> float:
    """DictLearning sparsity for ``n_volumes`` kept volumes in all.

    Each voxel's reduced data (the runs' PCA scores, concatenated) has a norm growing as
    the square root of the number of volumes, and the lasso penalty ``alpha`` compares
    with that norm. nilearn's ``alpha=10`` is calibrated on multi-participant data: on
    the 1-4 runs of one participant it empties most maps (measured on a real 156-volume
    run: 20 maps gave 3 regions; with this value, 2.15, 67 regions). Scaling alpha by
    ``sqrt(n_volumes / 3360)`` keeps the sparsity of nilearn's example.
    """
    return round(NILEARN_ALPHA * float(np.sqrt(n_volumes / NILEARN_VOLUMES)), 6)


def fit_maps(runs_data: Sequence[np.ndarray], mask: np.ndarray, affine: np.ndarray,
             method: str, n_maps: int, random_state: int, alpha: float | None = None,
             n_volumes: int | None = None) -> np.ndarray:
    """Network maps of prepared runs (nilearn ``DictLearning`` or ``CanICA``).

    The runs, smoothed within the mask and z-scored per voxel as for the clustering
    features (:func:`bids_parcellate.learn.features.prepare_runs`), are handed to nilearn as
    in-memory images on the mask's bounding box; nilearn's own masker does nothing more
    (no smoothing, detrending or standardisation). Each run counts as one "subject" of
    nilearn's multi-subject model: it is reduced to ``n_maps`` dimensions by PCA before
    the decomposition. The group level passes its merged components as one pseudo-run.

    Parameters
    ----------
    runs_data : sequence of ndarray, shape (n_times, n_voxels)
        Prepared runs (smoothed, z-scored kept volumes).
    mask : ndarray of bool, 3D
    affine : ndarray (4, 4)
    method : {"dictlearning", "canica"}
    n_maps : int
    random_state : int
    alpha : float, optional
        DictLearning sparsity; default :func:`auto_alpha` of ``n_volumes``.
    n_volumes : int, optional
        Kept volumes the data stand for (default: the rows of ``runs_data``).

    Returns
    -------
    ndarray, shape (n_maps, n_voxels), float32
        nilearn's ``components_`` (DictLearning: unit norm, sign with the larger positive
        part; CanICA: thresholded, peak positive).

    Raises
    ------
    UserError
        When ``n_maps`` is above the kept volumes or not below the mask's voxels, or
        nilearn cannot decompose the data.
    """
    from nilearn.decomposition import CanICA, DictLearning

    n_rows = sum(x.shape[0] for x in runs_data)
    if n_maps > n_rows:
        raise UserError(f"--n-maps {n_maps}: more maps than the {n_rows} kept volumes")
    n_volumes = n_rows if n_volumes is None else n_volumes
    if n_maps >= int(mask.sum()):
        raise UserError(f"--n-maps {n_maps}: must be below the {int(mask.sum())} voxels in "
                        "the brain mask")
    box = _box(mask)
    sub_mask, sub_affine = mask[box], _box_affine(affine, box)
    imgs = _RunImages(list(runs_data), sub_mask, sub_affine)
    common = dict(n_components=n_maps, mask=_image(np.ones(int(mask.sum()), np.uint8),
                                                   sub_mask, sub_affine),
                  smoothing_fwhm=None, standardize=False, detrend=False,
                  random_state=random_state, memory_level=0, verbose=0)
    if method == "dictlearning":
        estimator = DictLearning(alpha=alpha or auto_alpha(n_volumes), **common)
    else:
        estimator = CanICA(**common)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            estimator.fit(imgs)
        except ValueError as exc:
            raise UserError(f"--method {method} --n-maps {n_maps}: nilearn could not "
                            f"decompose the data ({str(exc).splitlines()[0]})") from exc
    for w in caught:
        LOGGER.debug("%s: %s", method, w.message)
    return np.asarray(estimator.components_, dtype=np.float32)


def maps_to_regions(maps: np.ndarray, mask: np.ndarray, affine: np.ndarray, *,
                    thresholding: str, threshold: float, extractor: str,
                    min_region_size: float) -> RegionSet:
    """Regions of network maps (nilearn ``RegionExtractor``) as one label image.

    ``RegionExtractor`` thresholds the maps and splits each into regions larger than
    ``min_region_size``. Regions of different maps may overlap: a voxel goes to the
    region whose map value there is largest in absolute value. The regions are then
    made contiguous and checked for size once more (:func:`split_disconnected`), since
    losing overlapping voxels can cut or shrink a region; every piece keeps the map it
    came from.

    Parameters
    ----------
    maps : ndarray, shape (n_maps, n_voxels)
    mask : ndarray of bool, 3D
    affine : ndarray (4, 4)
    thresholding : {"ratio_n_voxels", "img_value", "percentile"}
    threshold : float
    extractor : {"local_regions", "connected_components"}
    min_region_size : float
        In mm³.

    Returns
    -------
    RegionSet
        ``origin`` holds the map (1-based) of every region; ``maps`` is ``maps``.

    Raises
    ------
    UserError
        When no region is larger than ``min_region_size``, before or after resolving
        overlaps.
    """
    from nilearn.regions import RegionExtractor

    box = _box(mask)
    sub_mask, sub_affine = mask[box], _box_affine(affine, box)
    extractor_est = RegionExtractor(
        _image(maps, sub_mask, sub_affine),
        mask_img=_image(np.ones(int(mask.sum()), np.uint8), sub_mask, sub_affine),
        min_region_size=min_region_size, threshold=threshold,
        thresholding_strategy=thresholding, extractor=extractor, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            extractor_est.fit()
        except (ValueError, TypeError) as exc:
            found = getattr(extractor_est, "regions_img_", None)
            if found is not None:
                raise
            raise UserError(
                f"no region larger than --min-region-size {min_region_size:g} mm3 in the "
                f"{maps.shape[0]} maps (--region-thresholding {thresholding} "
                f"--region-threshold {threshold:g})") from exc
    for w in caught:
        LOGGER.debug("region extraction: %s", w.message)
    regions = np.asarray(extractor_est.regions_img_.dataobj)[sub_mask]  # (voxels, regions)
    strength = np.abs(regions)
    owner = np.argmax(strength, axis=1).astype(np.int32) + 1
    owner[strength.max(axis=1) == 0] = 0
    component_of_region = np.asarray(extractor_est.index_, dtype=np.int32) + 1
    pieces = split_disconnected(owner, mask, affine, min_region_size)
    if pieces.n_regions == 0:
        raise UserError(f"no region larger than --min-region-size {min_region_size:g} mm3 "
                        f"left in the {maps.shape[0]} maps after resolving overlaps")
    return RegionSet(labels=pieces.labels, origin=component_of_region[pieces.origin - 1],
                     maps=maps)


def learn_regions(prepared: Sequence[np.ndarray], mask: np.ndarray, affine: np.ndarray,
                  config: Config, n_volumes: int | None = None) -> dict[int, RegionSet]:
    """Maps and regions at every ``--n-maps`` scale (``config``: a :class:`Config`).

    ``prepared``: the smoothed, z-scored runs (or the group's merged components, with
    ``n_volumes`` the kept volumes they stand for).

    Parameters
    ----------
    prepared : sequence of ndarray, shape (n_times, n_voxels)
    mask : ndarray of bool, 3D
    affine : ndarray (4, 4)
    config : Config
        ``--method`` (dictlearning or canica), ``--n-maps``, ``--random-seed``,
        ``--dictlearning-alpha`` and the ``--region-*`` / ``--min-region-size`` options.
    n_volumes : int, optional
        Kept volumes the data stand for (default: the rows of ``prepared``).

    Returns
    -------
    dict
        ``n_maps`` -> :class:`RegionSet` (with its ``maps``).

    Raises
    ------
    UserError
        From :func:`fit_maps` and :func:`maps_to_regions`.
    """
    out = {}
    for n_maps in sorted(config.n_maps):
        maps = fit_maps(prepared, mask, affine, config.method, n_maps, config.random_seed,
                        config.dictlearning_alpha, n_volumes)
        out[n_maps] = maps_to_regions(
            maps, mask, affine, thresholding=config.region_thresholding,
            threshold=config.region_threshold, extractor=config.region_extractor,
            min_region_size=config.min_region_size)
        LOGGER.info("%s: %d maps -> %d regions", config.method, n_maps,
                    out[n_maps].n_regions)
    return out
