"""Quality figures and the bootstrap consensus against known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from bids_parcellate import quality
from bids_parcellate.learn.consensus import bagged_features, block_bootstrap, block_length
from bids_parcellate.learn.features import build_features, grid_connectivity, standardize_columns
from bids_parcellate.learn.methods import parcellate


@pytest.fixture
def grid():
    """A 12x12x4 grid cut in 8 box-shaped parcels (6x6x2 voxels each)."""
    mask = np.ones((12, 12, 4), dtype=bool)
    coords = np.argwhere(mask)
    truth = 1 + (coords[:, 0] // 6) * 4 + (coords[:, 1] // 6) * 2 + coords[:, 2] // 2
    return mask, truth.astype(np.int32)


def piecewise_constant(truth, n_times, rng):
    """Every voxel carries exactly its parcel's timecourse."""
    signals = rng.standard_normal((n_times, int(truth.max())))
    return signals[:, truth - 1].astype(np.float32)


def noisy(truth, n_times, rng, noise=1.0):
    return (piecewise_constant(truth, n_times, rng)
            + noise * rng.standard_normal((n_times, truth.size))).astype(np.float32)


def ward_learner(mask, scales):
    def learn(segments, take=None):
        features = build_features(segments, mask, np.eye(4), fwhm=0, n_components=200)
        return parcellate(features, mask, "ward", scales, random_state=0)
    return learn


@pytest.mark.parametrize("n_runs", [1, 2])
def test_piecewise_constant_data_gives_r2_one_and_ari_one(grid, n_runs):
    mask, truth = grid
    rng = np.random.default_rng(0)
    runs = [piecewise_constant(truth, 60, rng) for _ in range(n_runs)]
    figures = quality.assess(runs, [np.arange(60)] * n_runs, [2.0] * n_runs, {8: truth},
                             grid_connectivity(mask), ward_learner(mask, [8]), 0)[8]
    assert figures["split"] == ("time" if n_runs == 1 else "runs")
    assert figures["accuracy"] == pytest.approx(1.0, abs=1e-6)
    assert figures["accuracy_heldout"] == pytest.approx(1.0, abs=1e-6)
    assert figures["ari"] == 1.0 and figures["nmi"] == pytest.approx(1.0)
    assert figures["homogeneity"] == pytest.approx(1.0, abs=1e-6)
    assert figures["n_parcels"] == 8 and figures["n_fragmented"] == 0
    assert figures["size_min"] == figures["size_max"] == 72 and figures["size_gini"] == 0


def test_accuracy_is_the_variance_kept_by_parcel_means(grid):
    mask, truth = grid
    rng = np.random.default_rng(1)
    data = noisy(truth, 40, rng)
    z = (data - data.mean(0)) / data.std(0, ddof=1)
    means = np.stack([z[:, truth == k].mean(1) for k in range(1, 9)], axis=1)
    expected = 1 - ((z - means[:, truth - 1]) ** 2).sum() / (z ** 2).sum()
    assert quality.accuracy([data], truth) == pytest.approx(expected, rel=1e-5)
    # homogeneity: size-weighted mean of the mean pairwise correlation in each parcel
    corr = np.corrcoef(data.T)
    per_parcel = [corr[np.ix_(truth == k, truth == k)][np.triu_indices(72, 1)].mean()
                  for k in range(1, 9)]
    assert quality.homogeneity([data], truth) == pytest.approx(np.mean(per_parcel), rel=1e-5)


def test_shuffled_parcellation_is_less_homogeneous_and_truth_beats_the_null(grid):
    mask, truth = grid
    rng = np.random.default_rng(2)
    runs = [noisy(truth, 50, rng), noisy(truth, 50, rng)]
    shuffled = rng.permutation(truth)
    scorer = quality.Scorer(runs)
    assert scorer.homogeneity(truth) > scorer.homogeneity(shuffled) + 0.2
    figures = quality.assess(runs, [np.arange(50)] * 2, [2.0] * 2, {8: truth},
                             grid_connectivity(mask), ward_learner(mask, [8]), 0)[8]
    assert figures["homogeneity_z"] > 3
    assert figures["homogeneity"] > figures["homogeneity_null_mean"]
    shuffled_figures = quality.assess(runs, [np.arange(50)] * 2, [2.0] * 2, {8: shuffled},
                                      grid_connectivity(mask), ward_learner(mask, [8]), 0)[8]
    assert shuffled_figures["homogeneity_z"] < 0
    assert shuffled_figures["accuracy"] < figures["accuracy"]
    assert shuffled_figures["n_fragmented"] == 8


def test_figures_are_deterministic_for_a_seed(grid):
    mask, truth = grid
    rng = np.random.default_rng(3)
    runs = [noisy(truth, 50, rng, noise=2.0)]
    args = ([np.arange(50)], [2.0], {8: truth, 12: ward_learner(mask, [12])(runs)[12]},
            grid_connectivity(mask), ward_learner(mask, [8, 12]))
    first = quality.assess(runs, *args, random_state=5)
    assert first == quality.assess(runs, *args, random_state=5)
    other = quality.assess(runs, *args, random_state=6)
    assert other[8]["homogeneity_null_mean"] != first[8]["homogeneity_null_mean"]
    assert other[8]["ari"] == first[8]["ari"]


def test_random_parcellations_are_contiguous_and_complete(grid):
    mask, _ = grid
    conn = grid_connectivity(mask)
    rng = np.random.default_rng(0)
    for n in (2, 8, 50):
        labels = quality.random_parcellation(conn, n, rng)
        assert sorted(np.unique(labels)) == list(range(1, n + 1))
        assert (quality.pieces_per_parcel(labels, conn) == 1).all()


def test_random_parcellation_seeds_every_piece_of_a_split_mask():
    mask = np.zeros((10, 4, 1), dtype=bool)
    mask[:4] = mask[6:] = True
    conn = grid_connectivity(mask)
    labels = quality.random_parcellation(conn, 3, np.random.default_rng(0))
    assert (quality.pieces_per_parcel(labels, conn) == 1).all()
    assert len(np.unique(labels)) == 3


def test_shape_figures_count_pieces_and_gini():
    mask = np.ones((6, 1, 1), dtype=bool)
    conn = grid_connectivity(mask)
    labels = np.array([1, 1, 2, 1, 3, 3])
    np.testing.assert_array_equal(quality.pieces_per_parcel(labels, conn), [2, 1, 1])
    shape = quality.shape_figures(labels, conn)
    assert shape == {"n_parcels": 3, "n_unassigned": 0, "size_min": 1, "size_median": 2.0,
                     "size_max": 3, "size_gini": pytest.approx(2 / 9), "n_fragmented": 1}
    assert quality.gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)
    assert quality.gini(np.array([5, 5, 5])) == 0


def test_voxels_in_no_parcel_lose_their_variance_and_the_null_keeps_to_the_rest(grid):
    mask, truth = grid
    rng = np.random.default_rng(6)
    data = noisy(truth, 50, rng)
    partial = truth.copy()
    partial[truth == 8] = 0  # region-based methods leave voxels in no region
    scorer = quality.Scorer([data])
    assert scorer.accuracy(partial) == pytest.approx(
        scorer.accuracy(truth) * 7 / 8, rel=0.05)
    assert scorer.homogeneity(partial) == pytest.approx(
        quality.Scorer([data[:, truth != 8]]).homogeneity(truth[truth != 8]), rel=1e-6)
    figures = quality.fixed_figures([data], {7: partial}, grid_connectivity(mask), 0)[7]
    assert figures["n_parcels"] == 7 and figures["n_unassigned"] == 72
    assert figures["size_min"] == 72 and figures["n_fragmented"] == 0
    assert figures["homogeneity_z"] > 3
    # the null parcellations cover the same 504 voxels
    null = quality.homogeneity_null(scorer, grid_connectivity(mask), 7, 3,
                                    np.random.default_rng(0), support=partial > 0)
    assert np.isfinite(null).all() and (null < figures["homogeneity"]).all()


def test_time_split_leaves_a_gap_and_runs_alternate():
    data = np.arange(100 * 3, dtype=np.float32).reshape(100, 3)
    kept = np.delete(np.arange(104), [0, 1, 50, 51])  # censored volumes
    halves = quality.split_halves([data], [kept], [2.0])
    gap = int(np.ceil(quality.GAP_SECONDS / 2.0))
    first, second = halves.first[0], halves.second[0]
    last_first = kept[first.shape[0] - 1]
    first_second = kept[100 - second.shape[0]]
    assert halves.kind == "time" and halves.gap == gap
    assert first_second - last_first > gap  # volumes within gap/2 of the middle dropped
    assert abs(first.shape[0] - second.shape[0]) <= 1
    np.testing.assert_array_equal(first[0], data[0])
    runs = [np.full((5, 2), i, dtype=np.float32) for i in range(5)]
    halves = quality.split_halves(runs, [np.arange(5)] * 5, [2.0] * 5)
    assert [r[0, 0] for r in halves.first] == [0, 2, 4]
    assert [r[0, 0] for r in halves.second] == [1, 3]
    assert [r[0, 0] for r in halves.take(runs, 1)] == [1, 3]


def test_halves_of_the_standardised_runs_are_the_standardised_halves():
    """What the half fits reuse from the full fit: the same half of the smoothed,
    z-scored runs equals the half z-scored on its own (z-scoring a z-scored slice is
    z-scoring the slice)."""
    rng = np.random.default_rng(0)
    raw = (rng.standard_normal((80, 30)) * rng.uniform(1, 5, 30) + 100).astype(np.float32)
    halves = quality.split_halves([raw], [np.arange(80)], [2.0])
    whole = standardize_columns(raw.copy())
    for half, segments in enumerate((halves.first, halves.second)):
        taken = halves.take([whole], half)
        assert len(taken) == 1 and taken[0].shape == segments[0].shape
        np.testing.assert_allclose(taken[0], standardize_columns(segments[0].copy()),
                                   atol=1e-5)


def test_too_short_halves_are_refused(grid):
    mask, truth = grid
    runs = [noisy(truth, 20, np.random.default_rng(0))]
    with pytest.raises(quality.TooShort, match="at least"):
        quality.assess(runs, [np.arange(20)], [2.0], {8: truth}, grid_connectivity(mask),
                       ward_learner(mask, [8]), 0)


# --------------------------------------------------------------------------- consensus
def test_block_bootstrap_keeps_blocks_and_length():
    rng = np.random.default_rng(0)
    idx = block_bootstrap(100, rng)
    assert idx.shape == (100,) and block_length(100) == 10
    steps = np.diff(idx.reshape(10, 10), axis=1) % 100
    assert (steps == 1).all()  # consecutive volumes (circular) within each block
    np.testing.assert_array_equal(idx, block_bootstrap(100, np.random.default_rng(0)))


def test_bagged_features_apply_the_normalised_coassignment():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((7, 3)).astype(np.float32)
    labels = np.array([[1, 1, 2, 2, 2, 3, 3], [1, 2, 2, 2, 3, 3, 3]])
    operator = np.zeros((7, 7))
    for lab in labels:
        same = lab[:, None] == lab[None, :]
        operator += same / same.sum(axis=1, keepdims=True)
    operator /= len(labels)
    np.testing.assert_allclose(bagged_features(features, labels), operator @ features,
                               rtol=1e-5, atol=1e-6)
    # voxels always together get identical descriptions
    np.testing.assert_array_equal(*bagged_features(features, labels)[5:7])


def test_consensus_is_deterministic_and_contiguous(grid):
    from bids_parcellate.learn.consensus import consensus_parcellation, volume_resampler
    from bids_parcellate.learn.features import build_features, prepare_runs

    mask, truth = grid
    rng = np.random.default_rng(4)
    runs = [noisy(truth, 40, rng, noise=1.5), noisy(truth, 40, rng, noise=1.5)]
    copies = [r.copy() for r in runs]
    def fit():
        prepared = prepare_runs(runs, mask, np.eye(4), 0.0)
        return consensus_parcellation(
            lambda: build_features([], mask, np.eye(4), 0.0, 200, prepared=prepared),
            volume_resampler(prepared, mask, np.eye(4), 200), mask, method="ward",
            scales=[8], n_resamples=4, random_state=0).labels[8]

    labels = fit()
    for run, copy in zip(runs, copies, strict=True):
        np.testing.assert_array_equal(run, copy)  # inputs untouched
    np.testing.assert_array_equal(labels, fit())
    assert sorted(np.unique(labels)) == list(range(1, 9))
    assert (quality.pieces_per_parcel(labels, grid_connectivity(mask)) == 1).all()
    assert adjusted_rand_score(truth, labels) > 0.9


def test_consensus_of_kmeans_resamples_is_contiguous(grid):
    from bids_parcellate.learn.consensus import consensus_parcellation, volume_resampler
    from bids_parcellate.learn.features import build_features, prepare_runs

    mask, truth = grid
    rng = np.random.default_rng(5)
    runs = [noisy(truth, 40, rng, noise=1.5)]
    prepared = prepare_runs(runs, mask, np.eye(4), 0.0)
    labels = consensus_parcellation(
        lambda: build_features([], mask, np.eye(4), 0.0, 200, prepared=prepared),
        volume_resampler(prepared, mask, np.eye(4), 200), mask, method="kmeans",
        scales=[8, 20], n_resamples=3, random_state=0).labels
    conn = grid_connectivity(mask)
    for k in (8, 20):
        assert sorted(np.unique(labels[k])) == list(range(1, k + 1))
        assert (quality.pieces_per_parcel(labels[k], conn) == 1).all()
    assert adjusted_rand_score(truth, labels[8]) > 0.9
