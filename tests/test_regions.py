"""Network maps, region extraction and split parcels on data with a known structure."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bids_parcellate.learn.features import prepare_runs
from bids_parcellate.learn.regions import (
    auto_alpha,
    fit_maps,
    maps_to_regions,
    renumber_by_centroid,
    split_disconnected,
)

from .network_data import box_networks, network_runs

MIN_SIZE = 1350.0


def volume_of(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros(mask.shape, dtype=np.int32)
    out[mask] = labels
    return out


def assert_contiguous_and_large(labels, mask, affine, min_size=MIN_SIZE):
    """Every label is one face-connected piece larger than ``min_size`` mm3."""
    volume = volume_of(labels, mask)
    voxel_mm3 = abs(np.linalg.det(affine[:3, :3]))
    for lab in range(1, int(labels.max()) + 1):
        _, n_pieces = ndimage.label(volume == lab)
        assert n_pieces == 1, (lab, n_pieces)
        assert (labels == lab).sum() * voxel_mm3 > min_size, lab
    assert sorted(np.unique(labels[labels > 0])) == list(range(1, int(labels.max()) + 1))


@pytest.fixture(scope="module")
def networks():
    layout = box_networks()
    return layout, network_runs(layout, n_runs=2, n_volumes=100, noise=0.7, seed=0)


@pytest.mark.parametrize("method", ["dictlearning", "canica"])
def test_maps_and_regions_recover_known_networks(networks, method):
    layout, runs = networks
    prepared = prepare_runs(runs, layout.mask, layout.affine, fwhm=4.0)
    maps = fit_maps(prepared, layout.mask, layout.affine, method, n_maps=3, random_state=0)
    assert maps.shape == (3, layout.mask.sum()) and maps.dtype == np.float32
    # one map per network: each map correlates with exactly one network's indicator
    corr = np.array([[np.corrcoef(m, layout.networks == k)[0, 1] for k in (1, 2, 3)]
                     for m in maps])
    assert sorted(corr.argmax(axis=1)) == [0, 1, 2]
    assert corr.max(axis=1).min() > 0.8, corr
    map_of_network = {k + 1: int(np.argmax(corr[:, k])) + 1 for k in range(3)}

    for extractor in ("local_regions", "connected_components"):
        regions = maps_to_regions(maps, layout.mask, layout.affine,
                                  thresholding="ratio_n_voxels", threshold=0.5,
                                  extractor=extractor, min_region_size=MIN_SIZE)
        assert regions.n_regions == 6, (extractor, regions.origin)
        assert_contiguous_and_large(regions.labels, layout.mask, layout.affine)
        for blob in range(1, 7):
            in_blob = layout.blobs == blob
            region = np.bincount(regions.labels[in_blob]).argmax()
            # one region per blob: the whole blob, plus a rim (the 4 mm = one-voxel
            # smoothing spreads the signal; a noise voxel may attach beyond it)
            assert region > 0 and (regions.labels[in_blob] == region).all()
            rim = ndimage.binary_dilation(volume_of(in_blob, layout.mask),
                                          structure=np.ones((3, 3, 3)),
                                          iterations=2)[layout.mask]
            assert rim[regions.labels == region].all(), (blob, region)
            network = layout.network_of_blob[blob - 1]
            # each region maps to the component of its network
            assert regions.origin[region - 1] == map_of_network[network], (blob, region)
            # and lies where that component is non-zero
            inside = regions.labels == region
            assert (maps[regions.origin[region - 1] - 1][inside] != 0).all()


def test_decomposition_is_deterministic(networks):
    layout, runs = networks
    prepared = prepare_runs(runs, layout.mask, layout.affine, fwhm=4.0)
    first = fit_maps(prepared, layout.mask, layout.affine, "canica", 3, random_state=3)
    again = fit_maps(prepared, layout.mask, layout.affine, "canica", 3, random_state=3)
    np.testing.assert_array_equal(first, again)
    other = fit_maps(prepared, layout.mask, layout.affine, "canica", 3, random_state=4)
    assert not np.array_equal(first, other)  # the seed is used


def test_overlapping_regions_go_to_the_stronger_map():
    """Map 2 crosses map 1: map 1 is cut in two pieces (both keep component 1), the
    overlap goes to map 2 (larger absolute value), pieces below the size are dropped."""
    mask = np.ones((20, 6, 6), dtype=bool)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    grid = np.zeros((2,) + mask.shape, dtype=np.float32)
    grid[0, 1:18, 1:5, 1:5] = 1.0     # long bar along x
    grid[1, 8:11, :, :] = -2.0        # slab across it, negative but stronger
    grid[0, 0, 0, 0] = 0.9            # isolated voxel: below the minimum size
    maps = grid.reshape(2, -1)
    regions = maps_to_regions(maps, mask, affine, thresholding="img_value", threshold=0.5,
                              extractor="connected_components", min_region_size=MIN_SIZE)
    # img_value keeps positive values only (nilearn's two_sided=False): the slab goes,
    # the bar stays whole
    assert regions.n_regions == 1 and regions.origin.tolist() == [1]
    labels = volume_of(regions.labels, mask)
    assert (labels[1:18, 1:5, 1:5] == 1).all() and (labels > 0).sum() == 17 * 16
    assert labels[0, 0, 0] == 0

    grid[1] = np.abs(grid[1])
    regions = maps_to_regions(grid.reshape(2, -1), mask, affine, thresholding="img_value",
                              threshold=0.5, extractor="connected_components",
                              min_region_size=MIN_SIZE)
    labels = volume_of(regions.labels, mask)
    assert regions.n_regions == 3
    assert_contiguous_and_large(regions.labels, mask, affine)
    # numbered by centroid along x: left piece of the bar, slab, right piece
    assert regions.origin.tolist() == [1, 2, 1]
    assert (labels[8:11] == 2).all()  # the overlap went to the stronger map
    assert (labels[1:8, 1:5, 1:5] == 1).all() and (labels[11:18, 1:5, 1:5] == 3).all()


def test_no_region_is_a_user_error():
    from bids_parcellate.config import UserError

    mask = np.ones((10, 6, 6), dtype=bool)
    maps = np.zeros((2, mask.sum()), dtype=np.float32)
    maps[0, 0] = 1.0  # one voxel: below 1350 mm3
    with pytest.raises(UserError, match="no region larger than --min-region-size 1350"):
        maps_to_regions(maps, mask, np.diag([4.0, 4.0, 4.0, 1.0]), thresholding="img_value",
                        threshold=0.5, extractor="connected_components",
                        min_region_size=MIN_SIZE)


def test_split_disconnected_keeps_the_original_parcel():
    mask = np.ones((12, 4, 4), dtype=bool)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])  # 64 mm3 voxels
    vol = np.zeros(mask.shape, dtype=np.int32)
    vol[0:4] = 1
    vol[4:8] = 2
    vol[8:12] = 1          # parcel 1 has two pieces
    vol[6, 0, 0] = 3       # parcel 3: a single voxel inside parcel 2 (64 mm3)
    pieces = split_disconnected(vol[mask], mask, affine, min_size=100.0)
    labels = volume_of(pieces.labels, mask)
    assert pieces.n_regions == 3
    assert pieces.origin.tolist() == [1, 2, 1]  # numbered by centroid along x
    assert (labels[0:4] == 1).all() and (labels[8:12] == 3).all()
    assert labels[6, 0, 0] == 0  # piece not above the minimum size: dropped
    assert ((labels[4:8] == 2) | (vol[4:8] == 3)).all()
    assert_contiguous_and_large(pieces.labels, mask, affine, min_size=100.0)


def test_renumber_keeps_background():
    mask = np.ones((4, 1, 1), dtype=bool)
    labels, new_of_old = renumber_by_centroid(np.array([0, 5, 5, 2]), mask)
    assert labels.tolist() == [0, 1, 1, 2]
    assert new_of_old[5] == 1 and new_of_old[2] == 2 and new_of_old[0] == 0


def test_auto_alpha_matches_nilearn_on_its_example():
    assert auto_alpha(20 * 168) == pytest.approx(10.0)
    assert auto_alpha(5 * 168) == pytest.approx(5.0)
