"""Unit tests of bids_parcellate.extract: parcel means against numpy and nilearn."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest

from bids_parcellate import extract
from tests import helpers


def labels_and_data(n_voxels=60, n_times=70, seed=0):
    rng = np.random.default_rng(seed)
    # every label present; voxels in random order
    coarse = rng.permutation(np.arange(n_voxels) % 3 + 1)
    fine = rng.permutation(np.arange(n_voxels) % 7 + 1)
    data = (rng.standard_normal((n_times, n_voxels)) * 3 + 10).astype(np.float32)
    return {3: coarse, 7: fine}, data


def hand_means(data, labels):
    """Parcel means with a loop over parcels (float64)."""
    return np.column_stack([data[:, labels == p].astype(np.float64).mean(axis=1)
                            for p in range(1, labels.max() + 1)])


def test_averaging_operator_is_a_block_of_means_per_scale():
    labels, data = labels_and_data()
    op = extract.averaging_operator(labels)
    assert op.shape == (60, 3 + 7)
    dense = op.toarray()
    # each column averages its parcel: weights 1/size on its voxels, zero elsewhere
    for start, scale in ((0, 3), (3, 7)):
        for parcel in range(1, scale + 1):
            column = dense[:, start + parcel - 1]
            members = labels[scale] == parcel
            np.testing.assert_allclose(column[members], 1.0 / members.sum())
            assert not column[~members].any()
    np.testing.assert_allclose(dense.sum(axis=0), 1.0)


def test_averaging_operator_ignores_background_voxels():
    labels = np.array([0, 1, 1, 0, 2, 2, 2])
    dense = extract.averaging_operator({2: labels}).toarray()
    expected = np.array([[0, 0], [0.5, 0], [0.5, 0], [0, 0], [0, 1 / 3], [0, 1 / 3],
                         [0, 1 / 3]])
    np.testing.assert_allclose(dense, expected)


def test_parcel_timeseries_without_standardisation_equals_the_means():
    # 70 volumes: the products run 32 volumes at a time, the last block is partial
    labels, data = labels_and_data(n_times=70)
    out = extract.parcel_timeseries(data, labels, standardize=False)
    assert sorted(out) == [3, 7]
    for scale in (3, 7):
        assert out[scale].dtype == np.float64
        assert out[scale].shape == (70, scale)
        np.testing.assert_allclose(out[scale], hand_means(data, labels[scale]), rtol=1e-12)


@pytest.mark.parametrize("standardize, ddof", [("zscore_sample", 1), ("zscore", 0)])
def test_parcel_timeseries_zscore(standardize, ddof):
    """``zscore_sample``: the sample std; ``zscore`` (removed from nilearn 0.14, computed
    here): the population std."""
    labels, data = labels_and_data(n_times=40, seed=1)
    out = extract.parcel_timeseries(data, labels, standardize=standardize)
    for scale in (3, 7):
        means = hand_means(data, labels[scale])
        expected = (means - means.mean(axis=0)) / means.std(axis=0, ddof=ddof)
        np.testing.assert_allclose(out[scale], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("standardize", ["zscore_sample", "psc"])
def test_standardize_parcels_equals_nilearn(standardize):
    from nilearn.signal import standardize_signal

    rng = np.random.default_rng(2)
    block = rng.standard_normal((25, 6)) * [1, 2, 3, 4, 5, 6] + 50
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = standardize_signal(block.copy(), detrend=False, standardize=standardize)
        got = extract.standardize_parcels(block.copy(), standardize)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_standardize_parcels_constant_parcel_and_off():
    block = np.column_stack([np.full(10, 5.0), np.arange(10.0)])
    out = extract.standardize_parcels(block.copy(), "zscore_sample")
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[:, 0], 0.0)  # centred, not divided by zero
    same = extract.standardize_parcels(block, False)
    assert same is block


@pytest.mark.parametrize("standardize", ["zscore_sample", False])
def test_parcel_timeseries_equals_nilearn_labels_masker(tmp_path, standardize):
    """The module's contract: the same as NiftiLabelsMasker on the same voxels."""
    from nilearn.maskers import NiftiLabelsMasker

    shape = (6, 5, 4)
    rng = np.random.default_rng(3)
    mask = helpers.box_mask(shape, margin=1)
    labels_vol = np.zeros(shape, dtype=np.int16)
    labels_vol[mask] = rng.permutation(np.arange(mask.sum()) % 5 + 1)
    data = helpers.bold_data(shape, n_volumes=20, seed=4)
    # the masker computes in the image's dtype: float64, to compare to rounding
    img = nib.Nifti1Image(data.astype(np.float64), helpers.affine())
    labels_img = nib.Nifti1Image(labels_vol, helpers.affine())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masker = NiftiLabelsMasker(labels_img, standardize=standardize or None)
        expected = masker.fit_transform(img)
    out = extract.parcel_timeseries(data[mask].T, {5: labels_vol[mask].astype(int)},
                                    standardize)
    np.testing.assert_allclose(out[5], expected, rtol=1e-9, atol=1e-9)


def test_align_to_volumes_puts_nan_on_censored_volumes():
    block = np.arange(8.0).reshape(4, 2)
    sample_mask = np.array([0, 2, 3, 5])
    full = extract.align_to_volumes(block, sample_mask, 7)
    assert full.shape == (7, 2)
    np.testing.assert_array_equal(full[sample_mask], block)
    assert np.isnan(full[[1, 4, 6]]).all()
