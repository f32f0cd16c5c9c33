"""Ground-truth parcellations of the demo datasets.

The shared truth is k-means on the voxel coordinates of the mask made exactly
6-connected; each participant's truth may move a fraction of the boundary voxels
(see :mod:`bids_parcellate.demo`, "Ground truth").
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from bids_parcellate.demo.grid import Geometry
from bids_parcellate.demo.model import TAG_JITTER, TAG_TRUTH, stream_key, stream_rng
from bids_parcellate.demo.settings import DemoSettings
from bids_parcellate.demo.writers import spatial_image

_OFFSETS = ((0, -1), (0, 1), (1, -1), (1, 1), (2, -1), (2, 1))
_KMEANS_SAMPLE = 20000
_KMEANS_ITERATIONS = 15


def neighbour_values(vol: np.ndarray, idx: tuple[np.ndarray, ...]) -> np.ndarray:
    """Return the values of the 6 face neighbours of voxels ``idx`` (0 off-grid).

    Parameters
    ----------
    vol : numpy.ndarray
        3D volume.
    idx : tuple of numpy.ndarray
        Voxel indices (as returned by :func:`numpy.nonzero`).

    Returns
    -------
    numpy.ndarray
        Shape ``(n_voxels, 6)``, neighbours in the order -x, +x, -y, +y, -z, +z.
    """
    padded = np.pad(vol, 1)
    out = np.empty((idx[0].size, 6), dtype=vol.dtype)
    base = [i + 1 for i in idx]
    for j, (ax, step) in enumerate(_OFFSETS):
        coords = list(base)
        coords[ax] = coords[ax] + step
        out[:, j] = padded[tuple(coords)]
    return out


def _majority(neigh: np.ndarray) -> np.ndarray:
    """Most frequent non-zero value per row (ties: first column); 0 if none."""
    valid = neigh > 0
    counts = np.zeros(neigh.shape, dtype=np.int16)
    for j in range(neigh.shape[1]):
        counts[:, j] = ((neigh == neigh[:, j : j + 1]) & valid).sum(axis=1)
    counts[~valid] = -1
    best = np.argmax(counts, axis=1)
    choice = neigh[np.arange(neigh.shape[0]), best]
    choice[~valid.any(axis=1)] = 0
    return choice


def _grow(labels: np.ndarray, mask: np.ndarray) -> None:
    """Fill unlabelled mask voxels by region growing from labelled ones (in place).

    Each voxel is given the majority label of its already labelled face
    neighbours, so connected parcels stay connected.  Voxels that cannot be
    reached (disconnected mask pieces) get the label of the nearest labelled
    voxel.
    """
    while True:
        todo = mask & (labels == 0)
        if not todo.any():
            return
        idx = np.nonzero(todo)
        choice = _majority(neighbour_values(labels, idx))
        hit = choice > 0
        if not hit.any():
            break
        labels[tuple(i[hit] for i in idx)] = choice[hit]
    # Unreachable voxels (only if the mask has several components).
    _, nearest = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    fill = mask & (labels == 0)
    labels[fill] = labels[tuple(n[fill] for n in nearest)]


def enforce_contiguity(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Make every parcel a single 6-connected component.

    For each label the largest connected component is kept and the other
    pieces are reassigned by region growing from the neighbouring parcels.

    Parameters
    ----------
    labels : numpy.ndarray of int
        Labels ``1..K`` inside ``mask``, 0 outside.
    mask : numpy.ndarray of bool
        Brain mask.

    Returns
    -------
    numpy.ndarray
        New labels (same numbering).
    """
    out = labels.copy()
    structure = ndimage.generate_binary_structure(3, 1)
    for lab, sl in enumerate(ndimage.find_objects(out), start=1):
        if sl is None:
            continue
        region = out[sl]
        comp, n_comp = ndimage.label(region == lab, structure=structure)
        if n_comp > 1:
            sizes = np.bincount(comp.ravel())[1:]
            keep = int(np.argmax(sizes)) + 1
            region[(comp > 0) & (comp != keep)] = 0
    _grow(out, mask)
    return out


def _relabel_by_first_voxel(labels: np.ndarray) -> np.ndarray:
    """Renumber labels ``1..K`` in the order of their first voxel (C order)."""
    flat = labels.ravel()
    nonzero = np.flatnonzero(flat)
    uniq, first = np.unique(flat[nonzero], return_index=True)
    order = uniq[np.argsort(first, kind="stable")]
    lut = np.zeros(int(flat.max()) + 1, dtype=np.int32)
    lut[order] = np.arange(1, order.size + 1)
    return lut[labels]


def _kmeans_centers(coords: np.ndarray, n_parcels: int, rng: np.random.Generator) -> np.ndarray:
    """Lloyd's k-means on (a subsample of) the voxel coordinates; returns the centres."""
    n_vox = coords.shape[0]
    if n_vox > _KMEANS_SAMPLE:
        sample = coords[np.sort(rng.choice(n_vox, _KMEANS_SAMPLE, replace=False))]
    else:
        sample = coords
    centers = sample[rng.choice(sample.shape[0], n_parcels, replace=False)].copy()
    for _ in range(_KMEANS_ITERATIONS):
        _, assign = cKDTree(centers).query(sample)
        counts = np.bincount(assign, minlength=n_parcels)
        sums = np.column_stack(
            [np.bincount(assign, weights=sample[:, d], minlength=n_parcels) for d in range(3)]
        )
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None]
        if not filled.all():  # reseed empty clusters on the farthest points
            dist, _ = cKDTree(centers).query(sample)
            far = np.argsort(-dist, kind="stable")[: int((~filled).sum())]
            centers[~filled] = sample[far]
    return centers


def _assign_voxels(coords: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Nearest centre of every voxel; an empty cluster gets its nearest voxel."""
    n_parcels = centers.shape[0]
    _, assign = cKDTree(centers).query(coords)
    counts = np.bincount(assign, minlength=n_parcels)
    for lab in np.flatnonzero(counts == 0):  # rare: give it its nearest voxel
        taken = np.bincount(assign, minlength=n_parcels)
        dist = np.linalg.norm(coords - centers[lab], axis=1)
        for cand in np.argsort(dist, kind="stable"):
            if taken[assign[cand]] > 1:
                assign[cand] = lab
                break
    return assign


def make_parcellation(
    mask: np.ndarray, n_parcels: int, rng: np.random.Generator
) -> np.ndarray:
    """Compact, contiguous parcellation of ``mask`` with ``n_parcels`` labels.

    Parameters
    ----------
    mask : numpy.ndarray of bool
        Brain mask.
    n_parcels : int
        Number of parcels.
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    numpy.ndarray of int32
        Labels ``1..n_parcels`` inside the mask, 0 outside.
    """
    coords = np.argwhere(mask).astype(float)
    n_vox = coords.shape[0]
    if not 1 <= n_parcels <= n_vox:
        raise ValueError(
            f"n_true_parcels must be between 1 and the number of mask voxels "
            f"({n_vox}), got {n_parcels}"
        )
    assign = _assign_voxels(coords, _kmeans_centers(coords, n_parcels, rng))
    labels = np.zeros(mask.shape, dtype=np.int32)
    labels[mask] = assign + 1
    labels = enforce_contiguity(labels, mask)
    return _relabel_by_first_voxel(labels)


def jitter_parcellation(
    labels: np.ndarray, mask: np.ndarray, jitter: float, rng: np.random.Generator
) -> np.ndarray:
    """Move a fraction ``jitter`` of boundary voxels to a neighbouring parcel.

    See the docstring of :mod:`bids_parcellate.demo` for the exact procedure;
    parcels stay exactly 6-connected and keep their labels.

    Parameters
    ----------
    labels : numpy.ndarray of int
        Shared truth, labels ``1..K`` inside ``mask``.
    mask : numpy.ndarray of bool
        Brain mask.
    jitter : float
        Fraction of the boundary voxels to move.
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    numpy.ndarray
        The participant's labels (a copy of ``labels`` when nothing moves).
    """
    if jitter == 0:
        return labels.copy()
    idx = np.nonzero(mask)
    own = labels[idx]
    neigh = neighbour_values(np.where(mask, labels, 0), idx)
    differs = (neigh > 0) & (neigh != own[:, None])
    candidates = np.flatnonzero(differs.any(axis=1))
    n_move = int(round(jitter * candidates.size))
    if n_move == 0:
        return labels.copy()
    chosen = np.sort(rng.choice(candidates, n_move, replace=False))
    pick = np.argmax(rng.random((n_move, 6)) * differs[chosen], axis=1)
    new_own = own.copy()
    new_own[chosen] = neigh[chosen, pick]
    n_lab = int(labels.max())
    before = np.bincount(own, minlength=n_lab + 1)
    after = np.bincount(new_own, minlength=n_lab + 1)
    shrunk = np.flatnonzero(after < 0.5 * before)
    undo = chosen[np.isin(own[chosen], shrunk)]
    new_own[undo] = own[undo]
    out = np.zeros_like(labels)
    out[idx] = new_own
    return enforce_contiguity(out, mask)


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth of a dataset, as arrays and as images.

    Attributes
    ----------
    labels : numpy.ndarray
        Shared truth, labels ``1..n_parcels`` inside the mask.
    n_parcels : int
        Number of parcels.
    mask_img, labels_img : nibabel.Nifti1Image
        Brain mask (``uint8``) and shared truth (``int16``).
    participant_labels : dict of str to numpy.ndarray
        Each participant's truth (``labels`` itself without jitter).
    participant_imgs : dict of str to nibabel.Nifti1Image
        The same as ``int16`` images (``labels_img`` itself without jitter).
    """

    labels: np.ndarray
    n_parcels: int
    mask_img: nib.Nifti1Image
    labels_img: nib.Nifti1Image
    participant_labels: dict[str, np.ndarray]
    participant_imgs: dict[str, nib.Nifti1Image]


def make_ground_truth(geometry: Geometry, settings: DemoSettings) -> GroundTruth:
    """Draw the shared truth and each participant's truth.

    Parameters
    ----------
    geometry : Geometry
        The grid.
    settings : DemoSettings
        ``seed``, ``n_true_parcels``, ``jitter``, ``space`` and ``participants``
        are used.

    Returns
    -------
    GroundTruth
        Arrays and images.
    """
    mask, affine, space = geometry.mask, geometry.affine, settings.space
    truth = make_parcellation(
        mask, settings.n_true_parcels, stream_rng(settings.seed, TAG_TRUTH)
    )
    labels_img = spatial_image(truth, affine, space, dtype=np.int16)
    part_truth: dict[str, np.ndarray] = {}
    part_imgs: dict[str, nib.Nifti1Image] = {}
    for sub in settings.participants:
        if settings.jitter == 0:
            part_truth[sub], part_imgs[sub] = truth, labels_img
            continue
        jitter_rng = stream_rng(settings.seed, TAG_JITTER, stream_key(sub))
        vol = jitter_parcellation(truth, mask, settings.jitter, jitter_rng)
        part_truth[sub] = vol
        part_imgs[sub] = spatial_image(vol, affine, space, dtype=np.int16)
    return GroundTruth(
        labels=truth,
        n_parcels=int(truth.max()),
        mask_img=spatial_image(mask, affine, space, dtype=np.uint8),
        labels_img=labels_img,
        participant_labels=part_truth,
        participant_imgs=part_imgs,
    )
