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


#: Blob centres (voxels of the 8 mm demo grid, inside its brain mask with a one-voxel
#: margin): three bilateral networks, pairs more than 10 voxels apart (nilearn's
#: local_regions keeps one peak per 21-voxel window).
DEMO8_CENTRES = [[(6, 10, 8), (18, 10, 8)], [(7, 18, 12), (18, 18, 12)],
                 [(6, 14, 12), (18, 14, 12)]]
SPACE = "space-MNI152NLin2009cAsym"


def network_dataset(root: Path, participants: tuple[str, ...], seed: int):
    """An 8 mm demo layout whose BOLD carries the :data:`DEMO8_CENTRES` networks.

    Every participant has two runs of 100 volumes with its own network time courses
    and noise; the brain mask is the demo's. Returns (demo truth, Networks).
    """
    from bids_parcellate.demo import make_demo_dataset

    demo = make_demo_dataset(root, participants=participants, runs=(1, 2), resolution=8,
                             n_volumes=100, seed=1)
    layout = None
    for k, sub in enumerate(participants):
        func = demo.fmriprep_dir / f"sub-{sub}" / "func"
        masks = [nib.load(func / f"sub-{sub}_task-rest_run-{r}_{SPACE}_desc-brain_mask.nii.gz")
                 for r in (1, 2)]
        mask = np.logical_and(*[np.asarray(m.dataobj) > 0 for m in masks])
        layout = make_networks(mask, masks[0].affine, DEMO8_CENTRES, radius=1)
        assert np.bincount(layout.blobs)[1:].tolist() == [27] * 6, "blobs outside the brain"
        runs = network_runs(layout, n_runs=2, n_volumes=100, noise=0.7, seed=seed + k)
        for r, data in zip((1, 2), runs, strict=True):
            bold = func / f"sub-{sub}_task-rest_run-{r}_{SPACE}_desc-preproc_bold.nii.gz"
            write_network_bold(bold, layout, data)
    return demo, layout
