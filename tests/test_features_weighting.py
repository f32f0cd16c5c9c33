"""``build_features(weighting=alpha)``: features U·S^alpha of the smoothed, z-scored runs."""

import numpy as np
import pytest

from bids_parcellate.learn.features import build_features, prepare_runs


def runs_and_mask(seed=0, n_times=(40, 35), shape=(9, 8, 6)):
    rng = np.random.default_rng(seed)
    mask = np.ones(shape, dtype=bool)
    mask[0, 0, :] = False
    n_voxels = int(mask.sum())
    # a few shared signals with unequal variance plus noise: unequal singular values
    runs = []
    for n in n_times:
        signals = rng.standard_normal((n, 5)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5])
        loadings = rng.standard_normal((5, n_voxels))
        runs.append((signals @ loadings + rng.standard_normal((n, n_voxels)))
                    .astype(np.float32))
    return runs, mask


def features_before_weighting(runs, mask, affine, fwhm, n_components):
    """``build_features`` as it was before ``weighting`` (U·S), for comparison."""
    blocks = prepare_runs(runs, mask, affine, fwhm)
    data = np.concatenate([b.T for b in blocks], axis=1)
    n_times = data.shape[1]
    if n_times <= n_components:
        return np.ascontiguousarray(data)
    gram = np.zeros((n_times, n_times))
    for start in range(0, data.shape[0], 16384):
        part = data[start:start + 16384].astype(np.float64)
        gram += part.T @ part
    eigval, eigvec = np.linalg.eigh(gram)
    order = np.argsort(eigval)[::-1][:n_components]
    basis = eigvec[:, order]
    signs = np.sign(basis[np.abs(basis).argmax(axis=0), np.arange(basis.shape[1])])
    signs[signs == 0] = 1
    basis = (basis * signs).astype(np.float32)
    return np.ascontiguousarray(data @ basis)


@pytest.mark.parametrize("n_components", [20, 200])  # reduced, and all volumes kept
@pytest.mark.parametrize("fwhm", [0.0, 6.0])
def test_weighting_one_is_todays_result_exactly(n_components, fwhm):
    runs, mask = runs_and_mask()
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    ours = build_features(runs, mask, affine, fwhm, n_components, weighting=1.0)
    default = build_features(runs, mask, affine, fwhm, n_components)
    before = features_before_weighting(runs, mask, affine, fwhm, n_components)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    assert ours.tobytes() == before.tobytes() == default.tobytes()


def column_norms(features):
    return np.linalg.norm(features.astype(np.float64), axis=0)


def test_weighting_zero_whitens_and_half_takes_the_square_root():
    runs, mask = runs_and_mask()
    affine = np.eye(4)
    n_components = 20
    full = build_features(runs, mask, affine, 0.0, n_components, weighting=1.0)
    half = build_features(runs, mask, affine, 0.0, n_components, weighting=0.5)
    white = build_features(runs, mask, affine, 0.0, n_components, weighting=0.0)
    for features in (half, white):
        assert features.dtype == np.float32 and features.shape == full.shape
    # U·S: column norms are the singular values, decreasing and unequal
    singular = column_norms(full)
    assert np.all(np.diff(singular) <= 1e-3 * singular[0])
    assert singular[0] > 3 * singular[-1]
    np.testing.assert_allclose(column_norms(white), 1.0, rtol=1e-4)
    np.testing.assert_allclose(column_norms(half), np.sqrt(singular), rtol=1e-4)
    # same directions: every column is today's column rescaled
    np.testing.assert_allclose(half * np.sqrt(singular).astype(np.float32), full,
                               rtol=1e-3, atol=1e-3 * np.abs(full).max())


def test_weighting_is_deterministic_and_computes_the_svd_for_few_volumes():
    runs, mask = runs_and_mask(n_times=(30,))
    a = build_features(runs, mask, np.eye(4), 0.0, 200, weighting=0.5)
    b = build_features(runs, mask, np.eye(4), 0.0, 200, weighting=0.5)
    assert a.tobytes() == b.tobytes()
    # the 30 volumes give 29 components: the centring direction (null space) is dropped
    assert a.shape == (int(mask.sum()), 29)
    norms = column_norms(a)
    assert np.all(norms > 0.1 * norms[0])
