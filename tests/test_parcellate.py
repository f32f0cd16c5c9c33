"""Unit tests of the parcellation stage against scikit-learn and known answers."""

import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

from bids_parcellate.config import UserError
from bids_parcellate.learn.features import build_features, grid_connectivity, smooth_masked
from bids_parcellate.learn.methods import METHODS, order_labels, parcellate
from bids_parcellate.learn.ward import cut_tree


@pytest.fixture
def blocks():
    """A 12x12x4 grid split in 4 blocks with distinct timecourses plus noise."""
    rng = np.random.default_rng(0)
    mask = np.ones((12, 12, 4), dtype=bool)
    mask[0, 0, :] = False
    truth = np.zeros(mask.shape, dtype=int)
    truth[:6, :6] = 1
    truth[:6, 6:] = 2
    truth[6:, :6] = 3
    truth[6:, 6:] = 4
    signals = rng.standard_normal((60, 4))
    data = signals[:, truth[mask] - 1] + 0.3 * rng.standard_normal((60, mask.sum()))
    return mask, truth[mask], data.astype(np.float32)


def test_cut_tree_matches_sklearn_at_every_scale(blocks):
    mask, _, data = blocks
    features = data.T
    conn = grid_connectivity(mask)
    from sklearn.cluster import ward_tree

    children = ward_tree(features, connectivity=conn)[0]
    for k in (2, 4, 7, 30):
        ours = cut_tree(children, features.shape[0], k)
        ref = AgglomerativeClustering(n_clusters=k, connectivity=conn,
                                      linkage="ward").fit(features).labels_
        assert adjusted_rand_score(ref, ours) == 1.0
        assert len(np.unique(ours)) == k


def test_ward_recovers_blocks_and_labels_are_ordered(blocks):
    mask, truth, data = blocks
    features = build_features([data], mask, np.eye(4), fwhm=0, n_components=200)
    labels = parcellate(features, mask, "ward", [4, 8], random_state=0)
    assert adjusted_rand_score(truth, labels[4]) == 1.0
    assert sorted(np.unique(labels[8])) == list(range(1, 9))
    # label 1 has the smallest x centroid
    coords = np.argwhere(mask)
    cx = [coords[labels[4] == k, 0].mean() for k in range(1, 5)]
    assert cx == sorted(cx)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_finds_the_blocks(blocks, method):
    mask, truth, data = blocks
    features = build_features([data], mask, np.eye(4), fwhm=0, n_components=200)
    labels = parcellate(features, mask, method, [4], random_state=0)[4]
    assert labels.shape == truth.shape
    assert labels.min() == 1
    # complete linkage chains along the grid and ReNA's nearest-neighbour agglomeration is
    # approximate at very coarse scales (4 parcels of 572 voxels); the others are exact here
    threshold = {"complete": 0.5, "rena": 0.6}.get(method, 0.9)
    assert adjusted_rand_score(truth, labels) > threshold
    again = parcellate(features, mask, method, [4], random_state=0)[4]
    np.testing.assert_array_equal(labels, again)


def test_order_labels_is_a_relabelling():
    mask = np.ones((4, 1, 1), dtype=bool)
    labels = order_labels(np.array([7, 7, 3, 3]), mask)
    np.testing.assert_array_equal(labels, [1, 1, 2, 2])


def test_too_many_parcels_is_a_user_error(blocks):
    mask, _, data = blocks
    with pytest.raises(UserError, match="below the 572 voxels"):
        parcellate(data.T, mask, "ward", [572], random_state=0)


def test_exact_svd_reduction_preserves_distances(blocks):
    mask, _, data = blocks
    long = np.concatenate([data, data[::-1]], axis=0)  # 120 volumes
    full = build_features([long], mask, np.eye(4), fwhm=0, n_components=500)
    reduced = build_features([long], mask, np.eye(4), fwhm=0, n_components=60)
    assert reduced.shape == (mask.sum(), 60)
    # rank of the data is <= 60 distinct volumes, so the distances are preserved
    d_full = np.linalg.norm(full[:50, None] - full[None, :50], axis=2)
    d_red = np.linalg.norm(reduced[:50, None] - reduced[None, :50], axis=2)
    np.testing.assert_allclose(d_red, d_full, rtol=1e-3, atol=1e-3)


def test_masked_smoothing_keeps_constants_and_stays_in_mask():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[2:8, 2:8, 2:8] = True
    data = np.full((3, mask.sum()), 5.0, dtype=np.float32)
    smoothed = smooth_masked(data, mask, np.diag([2.0, 2.0, 2.0, 1.0]), fwhm=6.0)
    np.testing.assert_allclose(smoothed, 5.0, rtol=1e-5)
    spike = np.zeros((1, mask.sum()), dtype=np.float32)
    spike[0, 100] = 1.0
    out = smooth_masked(spike, mask, np.diag([2.0, 2.0, 2.0, 1.0]), fwhm=6.0)
    assert out[0, 100] < 1.0 and out[0].sum() > 1.0 and (out >= 0).all()


def test_masked_smoothing_threads_give_the_same_result():
    rng = np.random.default_rng(5)
    mask = rng.random((14, 12, 10)) > 0.2
    data = rng.standard_normal((37, mask.sum())).astype(np.float32)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    one = smooth_masked(data, mask, affine, fwhm=6.0, chunk=5)
    two = smooth_masked(data, mask, affine, fwhm=6.0, chunk=5, n_jobs=2)
    np.testing.assert_array_equal(one, two)
    # features need no copy: the result is a transposed view of (voxels x time) memory
    assert one.T.flags["C_CONTIGUOUS"]


def test_unsmoothed_features_leave_the_cleaned_runs_untouched(blocks):
    mask, _, data = blocks
    before = data.copy()
    build_features([data], mask, np.eye(4), fwhm=0, n_components=200)
    np.testing.assert_array_equal(data, before)


def test_grid_connectivity_is_scikit_learns_grid_to_graph():
    from sklearn.feature_extraction.image import grid_to_graph

    mask = np.random.default_rng(6).random((9, 7, 8)) > 0.3
    ours = grid_connectivity(mask)
    reference = grid_to_graph(*mask.shape, mask=mask).tocsr()
    reference.sort_indices()
    np.testing.assert_array_equal(ours.indptr, reference.indptr)
    np.testing.assert_array_equal(ours.indices, reference.indices)
    np.testing.assert_array_equal(ours.data, reference.data)
