"""Reading and cleaning runs (bids_parcellate.denoise) against nibabel and nilearn."""

from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from nilearn import signal

from bids_parcellate import denoise
from bids_parcellate.inputs import bold as bold_io
from bids_parcellate.inputs.query import Run


def write_bold(path, data, dtype, slope=None):
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    img.set_data_dtype(dtype)
    if slope is not None:
        img.header.set_slope_inter(slope, 10.0)
    img.to_filename(path)
    return path


@pytest.mark.parametrize("dtype, slope, suffix", [
    (np.float32, None, ".nii.gz"), (np.int16, 0.25, ".nii.gz"), (np.float32, None, ".nii"),
])
def test_blockwise_read_equals_nibabel(tmp_path, monkeypatch, dtype, slope, suffix):
    rng = np.random.default_rng(0)
    shape = (9, 8, 7, 23)
    data = (1000 + 50 * rng.standard_normal(shape)).astype(np.float32)
    bold = write_bold(tmp_path / f"bold{suffix}", data, dtype, slope)
    mask = rng.random(shape[:3]) > 0.3
    # a few volumes per block, the last one partial
    monkeypatch.setattr(bold_io, "READ_BLOCK_BYTES", 4 * mask.size * 5)
    run = Run(entities={"subject": "01"}, bold=bold, mask=bold, confounds=None, tr=2.0)
    unit = bold_io.UnitMask(mask=mask, affine=nib.load(bold).affine, n_voxels_per_run={})
    series, mean_img = bold_io.load_bold(run, unit)
    reference = nib.load(bold).get_fdata(dtype=np.float32)
    assert series.dtype == np.float32 and series.shape == (23, mask.sum())
    np.testing.assert_allclose(series, reference[mask].T, rtol=1e-7)
    np.testing.assert_allclose(mean_img, reference.mean(axis=3), rtol=1e-6)


def test_truncated_bold_is_a_run_error(tmp_path):
    data = np.random.default_rng(1).standard_normal((6, 6, 6, 40)).astype(np.float32)
    bold = write_bold(tmp_path / "bold.nii.gz", data, np.float32)
    bold.write_bytes(bold.read_bytes()[: bold.stat().st_size // 2])
    run = Run(entities={"subject": "01"}, bold=bold, mask=bold, confounds=None, tr=2.0)
    unit = bold_io.UnitMask(mask=np.ones((6, 6, 6), bool), affine=np.diag([3.0] * 3 + [1]),
                            n_voxels_per_run={})
    with pytest.raises(bold_io.RunError, match="cannot read NIfTI data"):
        bold_io.load_bold(run, unit)


@pytest.mark.parametrize("high_pass, low_pass", [(None, None), (0.01, 0.08)])
def test_cleaning_operator_equals_nilearn_clean(high_pass, low_pass):
    rng = np.random.default_rng(2)
    n_volumes, n_voxels = 120, 3000
    drift = np.linspace(0, 1, n_volumes)[:, None]
    confounds = rng.standard_normal((n_volumes, 8))
    series = (1000 + 30 * drift + confounds @ rng.standard_normal((8, n_voxels))
              + rng.standard_normal((n_volumes, n_voxels))).astype(np.float32)
    sample_mask = np.setdiff1d(np.arange(n_volumes), [0, 1, 40, 41, 77])
    config = SimpleNamespace(detrend=True, high_pass=high_pass, low_pass=low_pass)
    operator = denoise.cleaning_operator(n_volumes, confounds, sample_mask, config, 2.0)
    ours = denoise.apply_operator(operator, series, sample_mask, n_jobs=2)
    reference = signal.clean(
        series.astype(np.float64), detrend=True, standardize=None, confounds=confounds,
        sample_mask=sample_mask, filter="butterworth" if high_pass else False,
        high_pass=high_pass, low_pass=low_pass, t_r=2.0)
    assert ours.shape == reference.shape == (sample_mask.size, n_voxels)
    np.testing.assert_allclose(ours, reference, atol=1e-4 * reference.std())
    again = denoise.apply_operator(operator, series, sample_mask, n_jobs=1)
    np.testing.assert_array_equal(ours, again)


def test_drop_flat_voxels_any_run_and_keep():
    from dataclasses import replace as dc_replace

    from bids_parcellate.inputs.bold import UnitMask
    from bids_parcellate.inputs.query import Run

    mask = np.zeros((4, 3, 2), dtype=bool)
    mask[1:3] = True  # 12 voxels
    unit = UnitMask(mask=mask, affine=np.diag([2.0, 2.0, 2.0, 1.0]), n_voxels_per_run={})
    rng = np.random.default_rng(0)
    run = Run(entities={}, bold=Path("run.nii.gz"), mask=None, confounds=None, tr=2.0)
    flat1, flat2 = np.zeros(12, bool), np.zeros(12, bool)
    flat1[0], flat2[5] = True, True  # one voxel without signal in each run
    runs = [denoise.CleanRun(run=run, data=rng.standard_normal((10, 12)).astype(np.float32),
                             sample_mask=np.arange(10), n_volumes=10, confounds=[],
                             mean_img=np.zeros(mask.shape, np.float32), flat=flat)
            for flat in (flat1, flat2)]
    kept_unit, kept = denoise.drop_flat_voxels(unit, runs, keep=True)
    assert kept_unit.mask is unit.mask and kept is runs
    assert kept_unit.flat_voxels["Count"] == 2 and kept_unit.flat_voxels["Kept"] is True
    new_unit, out = denoise.drop_flat_voxels(unit, runs)
    assert new_unit.n_voxels == 10 and new_unit.flat_voxels["Kept"] is False
    expected = np.ones(12, bool)
    expected[[0, 5]] = False
    for before, after in zip(runs, out, strict=True):
        np.testing.assert_array_equal(after.data, before.data[:, expected])
    coords = np.argwhere(mask)[[0, 5]] * 2.0
    assert new_unit.flat_voxels["BoundingBox"] == [coords.min(axis=0).tolist(),
                                                   coords.max(axis=0).tolist()]
    every = [dc_replace(c, flat=np.ones(12, bool)) for c in runs]
    with pytest.raises(denoise.RunError, match="no voxel of the brain mask has signal"):
        denoise.drop_flat_voxels(unit, every)
