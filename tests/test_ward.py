"""Ward on supervoxels (bids_parcellate.learn.ward) against scikit-learn and known answers."""

import numpy as np
import pytest
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import AgglomerativeClustering, ward_tree
from sklearn.feature_extraction.image import grid_to_graph
from sklearn.metrics import adjusted_rand_score

from bids_parcellate.learn import ward
from bids_parcellate.learn.features import grid_connectivity
from bids_parcellate.learn.methods import parcellate


def grid(shape, holes=True, seed=0, n_features=6):
    rng = np.random.default_rng(seed)
    mask = np.ones(shape, dtype=bool)
    if holes:
        mask[2:5, 3:6, :] = False  # a hole, the grid stays connected
    features = rng.standard_normal((int(mask.sum()), n_features))
    return mask, features, grid_connectivity(mask)


def test_unit_weights_give_scikit_learns_tree():
    mask, features, conn = grid((10, 12, 9))
    reference = ward_tree(features, connectivity=conn)[0]
    ours = ward.weighted_ward_tree(features, np.ones(len(features)), conn)
    np.testing.assert_array_equal(ours, reference)


def test_disconnected_pieces_are_linked_as_scikit_learn_does():
    rng = np.random.default_rng(1)
    mask = np.zeros((9, 10, 8), dtype=bool)
    mask[:3] = mask[6:] = True  # two slabs
    mask[4, 5, 5] = True  # and an isolated voxel
    features = rng.standard_normal((int(mask.sum()), 5))
    conn = grid_to_graph(*mask.shape, mask=mask)
    linked, n_pieces = ward.link_components(features, conn)
    assert n_pieces == connected_components(conn, directed=False)[0] == 3
    assert connected_components(linked, directed=False)[0] == 1
    with pytest.warns(UserWarning, match="connected components"):
        reference = ward_tree(features, connectivity=conn)[0]
    ours = ward.weighted_ward_tree(features, np.ones(len(features)), linked)
    np.testing.assert_array_equal(ours, reference)


def test_size_weighted_ward_on_supervoxels_is_ward_on_their_voxels():
    """Supervoxels = 2x2x1 blocks of identical voxels: plain Ward on the voxels first
    merges every block at zero cost, then must follow weighted Ward on the blocks."""
    rng = np.random.default_rng(2)
    shape = (12, 10, 3)
    block_id = (np.arange(shape[0])[:, None, None] // 2 * (shape[1] // 2)
                + np.arange(shape[1])[None, :, None] // 2) * shape[2] \
        + np.arange(shape[2])[None, None, :]
    block_id = np.broadcast_to(block_id, shape).ravel()
    n_blocks = block_id.max() + 1
    block_features = rng.standard_normal((n_blocks, 4))
    mask = np.ones(shape, dtype=bool)
    voxel_features = block_features[block_id]
    voxel_tree = ward_tree(voxel_features, connectivity=grid_connectivity(mask))[0]

    incidence = sparse.csr_matrix((np.ones(block_id.size), (np.arange(block_id.size),
                                                            block_id)))
    block_conn = (incidence.T @ grid_connectivity(mask) @ incidence).tocsr()
    block_conn.setdiag(0)
    block_conn.eliminate_zeros()
    sizes = np.bincount(block_id).astype(float)
    block_tree = ward.weighted_ward_tree(block_features, sizes, block_conn)
    for k in (2, 3, 7, 20, 50, n_blocks):
        on_voxels = ward.cut_tree(voxel_tree, block_id.size, k)
        on_blocks = ward.cut_tree(block_tree, n_blocks, k)[block_id]
        assert adjusted_rand_score(on_voxels, on_blocks) == 1.0, k


def test_reciprocal_rounds_merge_only_mutual_nearest_pairs():
    # a chain 0-1-2-3-4-5: pairs (0,1) and (3,4) are each other's nearest; 2 and 5 are not
    features = np.array([[0.0], [0.1], [0.5], [5.0], [5.2], [20.0]])
    chain = sparse.diags([np.ones(5), np.ones(5)], [-1, 1], shape=(6, 6)).tocsr()
    labels, centroids, weights, conn = ward.reciprocal_agglomeration(features, chain, 4)
    np.testing.assert_array_equal(labels, [0, 0, 1, 2, 2, 3])
    np.testing.assert_allclose(centroids[:, 0], [0.05, 0.5, 5.1, 20.0], rtol=1e-6)
    np.testing.assert_array_equal(weights, [2, 1, 2, 1])
    np.testing.assert_array_equal(conn.toarray(), [[0, 1, 0, 0], [1, 0, 1, 0],
                                                   [0, 1, 0, 1], [0, 0, 1, 0]])
    # a target between rounds keeps the cheapest pair of the last round
    labels, *_ = ward.reciprocal_agglomeration(features, chain, 5)
    np.testing.assert_array_equal(labels, [0, 0, 1, 2, 3, 4])


def test_supervoxels_are_contiguous_and_summarise_their_voxels():
    mask, features, conn = grid((16, 14, 10), n_features=8, seed=3)
    features = features.astype(np.float32)
    labels, centroids, weights, sv_conn = ward.reciprocal_agglomeration(features, conn, 300)
    assert centroids.shape[0] == 300 and labels.max() == 299
    np.testing.assert_array_equal(weights, np.bincount(labels))
    for k in range(300):
        members = np.flatnonzero(labels == k)
        sub = conn[members][:, members]
        assert connected_components(sub, directed=False)[0] == 1, k
        np.testing.assert_allclose(centroids[k], features[members].mean(axis=0), atol=1e-5)
    incidence = sparse.csr_matrix((np.ones(labels.size), (np.arange(labels.size), labels)))
    expected = (incidence.T @ conn @ incidence).tocsr()
    expected.setdiag(0)
    expected.eliminate_zeros()
    assert (sv_conn.astype(bool) != expected.astype(bool)).nnz == 0


def test_ward_method_is_exact_below_the_supervoxel_threshold():
    mask, features, conn = grid((11, 10, 8))
    assert len(features) <= ward.EXACT_UP_TO
    labels = parcellate(features.astype(np.float32), mask, "ward", [5, 40], random_state=0)
    for k in (5, 40):
        reference = AgglomerativeClustering(n_clusters=k, connectivity=conn,
                                            linkage="ward").fit(features).labels_
        assert adjusted_rand_score(reference, labels[k]) == 1.0


def test_supervoxel_path_stays_close_to_exact_ward(monkeypatch):
    rng = np.random.default_rng(4)
    mask = np.ones((24, 24, 12), dtype=bool)
    truth = (np.arange(24)[:, None, None] // 6 * 4 + np.arange(24)[None, :, None] // 6
             + 16 * (np.arange(12)[None, None, :] // 6))
    truth = np.broadcast_to(truth, mask.shape)[mask]
    signals = rng.standard_normal((40, truth.max() + 1))
    features = (signals[:, truth] + 0.8 * rng.standard_normal((40, truth.size))).T
    features = features.astype(np.float32)
    conn = grid_connectivity(mask)
    exact = ward.ward_labels(features, conn, [32])[32]
    monkeypatch.setattr(ward, "EXACT_UP_TO", 10)
    monkeypatch.setattr(ward, "MIN_SUPERVOXELS", 10)
    monkeypatch.setattr(ward, "SUPERVOXELS_PER_PARCEL", 5)
    assert ward.n_supervoxels(truth.size, [32]) == 160
    approx = ward.ward_labels(features, conn, [8, 32], n_jobs=2)
    assert adjusted_rand_score(truth, exact) > 0.95
    assert adjusted_rand_score(truth, approx[32]) > 0.95
    assert adjusted_rand_score(exact, approx[32]) > 0.95
    assert len(np.unique(approx[8])) == 8
    # threads do not change the result
    again = ward.ward_labels(features, conn, [8, 32], n_jobs=1)
    for k in (8, 32):
        np.testing.assert_array_equal(again[k], approx[k])
