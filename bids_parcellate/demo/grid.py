"""The MNI152 grid of the demo datasets, its scalp shell and smooth random fields."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bids_parcellate.demo.model import SHELL_MM


@functools.lru_cache(maxsize=8)
def load_grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the (read-only) MNI152 brain mask and its affine.

    Parameters
    ----------
    resolution : int
        Voxel size in mm, passed to
        :func:`nilearn.datasets.load_mni152_brain_mask`.

    Returns
    -------
    mask : numpy.ndarray of bool
        Brain mask, shape of the grid.
    affine : numpy.ndarray
        4 x 4 affine.
    """
    from nilearn.datasets import load_mni152_brain_mask

    img = load_mni152_brain_mask(resolution=resolution)
    mask = np.asarray(img.dataobj) > 0
    affine = np.array(img.affine, dtype=float)
    mask.setflags(write=False)
    affine.setflags(write=False)
    return mask, affine


def smooth_basis(idx: tuple[np.ndarray, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Return a low-order 3D DCT basis evaluated at voxel indices ``idx``.

    The basis (orders 0-3 on each axis, constant excluded, with weights
    decreasing with the order) spans smooth fields with a spatial scale of a
    quarter of the field of view whatever the resolution.

    Parameters
    ----------
    idx : tuple of numpy.ndarray
        Voxel indices (as returned by :func:`numpy.nonzero`).
    shape : tuple of int
        Shape of the grid.

    Returns
    -------
    numpy.ndarray
        Basis, shape ``(n_voxels, 63)``.
    """
    n_order = 4
    per_axis = []
    for ax in range(3):
        k = np.arange(n_order)[None, :]
        per_axis.append(
            np.cos(np.pi * k * (idx[ax][:, None] + 0.5) / shape[ax])
        )
    cols = []
    for i in range(n_order):
        for j in range(n_order):
            for k in range(n_order):
                if i == j == k == 0:
                    continue
                weight = 1.0 / (1.0 + i * i + j * j + k * k) ** 0.5
                cols.append(weight * per_axis[0][:, i] * per_axis[1][:, j] * per_axis[2][:, k])
    return np.column_stack(cols)


def random_fields(rng: np.random.Generator, basis: np.ndarray, n: int) -> np.ndarray:
    """Draw ``n`` smooth random fields (zero mean, unit std) from ``basis``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    basis : numpy.ndarray
        Basis from :func:`smooth_basis`, shape ``(n_voxels, n_basis)``.
    n : int
        Number of fields.

    Returns
    -------
    numpy.ndarray
        Array of shape ``(n, n_voxels)``.
    """
    coef = rng.standard_normal((basis.shape[1], n))
    fields = (basis @ coef).T
    fields -= fields.mean(axis=1, keepdims=True)
    fields /= fields.std(axis=1, keepdims=True)
    return fields


@dataclass(frozen=True)
class Geometry:
    """The grid shared by every participant and run of a dataset.

    Attributes
    ----------
    mask : numpy.ndarray of bool
        Brain mask.
    affine : numpy.ndarray
        4 x 4 voxel-to-world affine.
    mask_idx, shell_idx : tuple of numpy.ndarray
        Indices of the brain voxels and of the scalp shell (C order).
    basis, shell_basis : numpy.ndarray
        :func:`smooth_basis` on the brain voxels and on the shell.
    order_f, shell_f : numpy.ndarray
        Fortran-order flat indices of the brain and shell voxels.
    """

    mask: np.ndarray
    affine: np.ndarray
    mask_idx: tuple[np.ndarray, ...]
    shell_idx: tuple[np.ndarray, ...]
    basis: np.ndarray
    shell_basis: np.ndarray
    order_f: np.ndarray
    shell_f: np.ndarray


def make_geometry(resolution: int) -> Geometry:
    """Brain mask, scalp shell (``SHELL_MM`` around the brain) and smooth bases.

    Parameters
    ----------
    resolution : int
        Voxel size in mm (see :func:`load_grid`).

    Returns
    -------
    Geometry
        The grid and its index sets.
    """
    mask, affine = load_grid(resolution)
    mask_idx = np.nonzero(mask)
    dist_mm = ndimage.distance_transform_edt(~mask, sampling=np.abs(np.diag(affine)[:3]))
    shell = (~mask) & (dist_mm <= SHELL_MM)
    shell_idx = np.nonzero(shell)
    return Geometry(
        mask=mask,
        affine=affine,
        mask_idx=mask_idx,
        shell_idx=shell_idx,
        basis=smooth_basis(mask_idx, mask.shape),
        shell_basis=smooth_basis(shell_idx, mask.shape),
        order_f=np.ravel_multi_index(mask_idx, mask.shape, order="F"),
        shell_f=np.ravel_multi_index(shell_idx, mask.shape, order="F"),
    )
