"""Generated data with a known network structure (tests of the region-extraction route).

A network is a set of spatially separate blobs sharing one time course; networks are
independent of each other; every voxel carries independent Gaussian noise. A
decomposition should find one map per network and region extraction one region per
blob.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np


@dataclass(frozen=True)
class Networks:
    """Blob layout: ``blobs`` over the in-mask voxels (0 = background, 1..n),
    ``network_of_blob[b - 1]`` the network (1..k) of blob ``b``."""

    mask: np.ndarray
    affine: np.ndarray
    blobs: np.ndarray
    network_of_blob: np.ndarray

    @property
    def networks(self) -> np.ndarray:
        """Network (1..k) of every in-mask voxel, 0 = background."""
        return np.concatenate([[0], self.network_of_blob])[self.blobs]


def make_networks(mask: np.ndarray, affine: np.ndarray,
                  centres: list[list[tuple[int, int, int]]], radius: float) -> Networks:
    """Blobs: in-mask voxels within ``radius`` voxels (Chebyshev: cubes) of each centre;
    ``centres[k]`` lists the blob centres of network ``k + 1``."""
    coords = np.argwhere(mask)
    blobs = np.zeros(len(coords), dtype=np.int32)
    network_of_blob = []
    for net, points in enumerate(centres, start=1):
        for point in points:
            inside = np.abs(coords - np.asarray(point)).max(axis=1) <= radius
            assert not blobs[inside].any(), "blobs overlap"
            blobs[inside] = len(network_of_blob) + 1
            network_of_blob.append(net)
    return Networks(mask, affine, blobs, np.asarray(network_of_blob, dtype=np.int32))


def network_runs(layout: Networks, n_runs: int, n_volumes: int, noise: float,
                 seed: int) -> list[np.ndarray]:
    """Runs (n_volumes x n_voxels, float32): network time course + Gaussian noise."""
    rng = np.random.default_rng(seed)
    nets = layout.networks
    runs = []
    for _ in range(n_runs):
        signals = rng.standard_normal((n_volumes, int(layout.network_of_blob.max())))
        data = noise * rng.standard_normal((n_volumes, len(nets)))
        data[:, nets > 0] += signals[:, nets[nets > 0] - 1]
        runs.append(data.astype(np.float32))
    return runs


def box_networks() -> Networks:
    """A 24 x 14 x 12 box at 4 mm with three networks of two 5x5x5 blobs 17 voxels apart
    in x (farther than the 10-voxel peak distance of nilearn's local_regions)."""
    mask = np.ones((24, 14, 12), dtype=bool)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    centres = [[(3, 3, 3), (20, 3, 3)], [(3, 10, 8), (20, 10, 8)], [(3, 3, 9), (20, 10, 3)]]
    return make_networks(mask, affine, centres, radius=2)


def write_network_bold(bold: Path, layout: Networks, run: np.ndarray) -> None:
    """Replace a demo BOLD file's data by ``1000 + 10 * run`` inside the mask."""
    img = nib.load(bold)
    volume = np.zeros(img.shape, dtype=np.float32)
    volume[layout.mask] = (1000.0 + 10.0 * run).T
    out = nib.Nifti1Image(volume, img.affine, img.header)
    out.set_data_dtype(np.float32)
    nib.save(out, bold)
