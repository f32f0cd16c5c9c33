"""The one learner (learn/learner.py): the same procedure for a unit's runs, its
quality halves and the group's summaries."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from bids_parcellate import quality
from bids_parcellate.learn.consensus import (
    consensus_parcellation,
    volume_resampler,
    voxel_stability,
)
from bids_parcellate.learn.features import build_features, grid_connectivity, prepare_runs
from bids_parcellate.learn.learner import Training, learn, runs_training
from bids_parcellate.learn.methods import parcellate

from . import helpers


def box_grid():
    """A 12x12x4 grid cut in 8 boxes of 6x6x2 voxels, and two noisy runs of it."""
    mask = np.ones((12, 12, 4), dtype=bool)
    coords = np.argwhere(mask)
    truth = (1 + (coords[:, 0] // 6) * 4 + (coords[:, 1] // 6) * 2
             + coords[:, 2] // 2).astype(np.int32)
    rng = np.random.default_rng(3)
    runs = [(rng.standard_normal((40, 8))[:, truth - 1]
             + 1.5 * rng.standard_normal((40, truth.size))).astype(np.float32)
            for _ in range(2)]
    return mask, truth, runs


@pytest.fixture
def data():
    return box_grid()


def config(tmp_path, **kwargs):
    kwargs.setdefault("n_parcels", (8,))
    return helpers.make_config(tmp_path, smoothing_fwhm=0.0, n_components=200, **kwargs)


def test_plain_fit_is_the_method_on_the_features(tmp_path, data):
    mask, truth, runs = data
    cfg = config(tmp_path)
    learned = learn(cfg, runs_training(cfg, runs, mask, np.eye(4)))
    features = build_features(runs, mask, np.eye(4), 0.0, 200)
    np.testing.assert_array_equal(
        learned.labels[8], parcellate(features, mask, "ward", [8], cfg.random_seed)[8])
    assert learned.regions == {}
    assert adjusted_rand_score(truth, learned.labels[8]) > 0.9


def test_bootstrap_is_the_consensus_of_volume_resamples(tmp_path, data):
    mask, truth, runs = data
    cfg = config(tmp_path, method="kmeans", bootstrap=3)
    learned = learn(cfg, runs_training(cfg, runs, mask, np.eye(4)))
    prepared = prepare_runs(runs, mask, np.eye(4), 0.0)
    expected = consensus_parcellation(
        lambda: build_features([], mask, np.eye(4), 0.0, 200, prepared=prepared),
        volume_resampler(prepared, mask, np.eye(4), 200), mask, method="kmeans",
        scales=[8], n_resamples=3, random_state=cfg.random_seed,
        options=cfg.method_options())
    np.testing.assert_array_equal(learned.labels[8], expected.labels[8])
    # the stability of the final parcels over the same resamples
    np.testing.assert_array_equal(learned.stability[8],
                                  voxel_stability(expected.resamples[8], learned.labels[8]))
    assert expected.resamples[8].shape == (3, mask.sum())
    # the consensus cut is a Ward tree under the grid: every parcel is one piece
    assert (quality.pieces_per_parcel(learned.labels[8], grid_connectivity(mask)) == 1).all()


def test_split_disconnected_records_the_pieces(tmp_path, data):
    mask, _, runs = data
    cfg = config(tmp_path, method="kmeans", split_disconnected=True, min_region_size=0.0)
    learned = learn(cfg, runs_training(cfg, runs, mask, np.eye(4)))
    pieces = learned.regions[8]
    np.testing.assert_array_equal(learned.labels[8], pieces.labels)
    assert (quality.pieces_per_parcel(learned.labels[8], grid_connectivity(mask)) == 1).all()
    assert set(np.unique(pieces.origin)) <= set(range(1, 9))


def test_resamples_come_from_the_training(tmp_path, data):
    """The learner asks the training for its resamples: the group level's resampling of
    participants plugs in the same way (here: every resample is the full features)."""
    mask, truth, runs = data
    cfg = config(tmp_path, bootstrap=2)
    features = build_features(runs, mask, np.eye(4), 0.0, 200)
    drawn = []

    def resample(rng):
        drawn.append(int(rng.integers(0, 1000)))
        return features

    training = Training(mask=mask, affine=np.eye(4), features=lambda: features,
                        resampler=lambda: resample,
                        decomposition_input=lambda: ([], None))
    learned = learn(cfg, training)
    assert len(drawn) == 2 and drawn[0] != drawn[1]  # one seeded draw per resample
    assert adjusted_rand_score(truth, learned.labels[8]) > 0.9


def test_voxel_stability_by_hand():
    """Stability = mean over resamples of the share of the other voxels of the final
    parcel that shared the voxel's resample parcel (the BASC per-voxel stability)."""
    final = np.array([1, 1, 1, 2, 2, 3])
    resamples = np.array([[1, 1, 2, 3, 3, 4],    # voxel 2 leaves parcel 1
                          [5, 5, 5, 5, 6, 7]])   # parcels 1 and 2 merge, voxel 4 leaves
    got = voxel_stability(resamples, final)
    # voxel 0: 1 of 2 others, then 2 of 2 -> 0.75; voxel 2: 0/2 then 2/2 -> 0.5
    # voxel 3: 1/1 then 0/1 -> 0.5 (voxel 0's companions in the merged parcel do not count)
    expected = [0.75, 0.75, 0.5, 0.5, 0.5, 1.0]  # voxel 5: a parcel of one voxel
    np.testing.assert_allclose(got, expected)
    assert got.dtype == np.float32
    # always the same partition: stability 1 everywhere; labels 0 (outside) get 0
    np.testing.assert_array_equal(voxel_stability(np.array([[3, 3, 9, 9]] * 4),
                                                  np.array([1, 1, 2, 0])), [1, 1, 1, 0])


def test_stability_is_high_inside_boxes_and_absent_without_bootstrap(tmp_path, data):
    mask, truth, runs = data
    plain = config(tmp_path, method="kmeans")
    assert learn(plain, runs_training(plain, runs, mask, np.eye(4))).stability == {}
    cfg = config(tmp_path, method="kmeans", bootstrap=3)
    stability = learn(cfg, runs_training(cfg, runs, mask, np.eye(4))).stability[8]
    # eight clear boxes: every voxel stays with (nearly) all of its parcel
    assert stability.shape == (mask.sum(),) and stability.min() >= 0
    assert stability.mean() > 0.9
