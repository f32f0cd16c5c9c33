"""Unit tests of bids_parcellate.inputs.grids: grids, labels, mask strategies, user masks,
resampling and the unit mask of runs whose masks are computed from the BOLD."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
from scipy import signal

from bids_parcellate import denoise
from bids_parcellate.config import UserError
from bids_parcellate.inputs import bold as bold_io
from bids_parcellate.inputs import grids
from tests import helpers


def grid(shape=(10, 10, 10), voxel=2.0, origin=(-10.0, -12.0, -8.0)) -> grids.Grid:
    return grids.Grid(shape, helpers.affine(voxel, origin))


# --------------------------------------------------------------------------- grids
def test_grid_voxel_size_and_image():
    aff = np.array([[0.0, -3.0, 0.0, 5.0], [2.0, 0.0, 0.0, 1.0], [0.0, 0.0, 4.0, 2.0],
                    [0.0, 0.0, 0.0, 1.0]])
    g = grids.Grid((3, 4, 5), aff)
    # column norms: the size of a step along each voxel axis
    np.testing.assert_allclose(g.voxel_size, [2.0, 3.0, 4.0])
    img = g.image()
    assert img.shape == (3, 4, 5)
    assert not np.asarray(img.dataobj).any()
    np.testing.assert_array_equal(img.affine, aff)
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    np.testing.assert_array_equal(np.asarray(g.image(data).dataobj), data)


@pytest.mark.parametrize("sizes, label", [
    ((4, 4, 4), "4mm"), ((2.5, 2.5, 2.5), "2p5mm"), ((2, 2, 3), "2x2x3mm"),
    ((1.25, 1.25, 1.25), "1p25mm"), ((1.5, 2, 2), "1p5x2x2mm"),
])
def test_resolution_label(sizes, label):
    assert grids.resolution_label(np.array(sizes, dtype=float)) == label


def test_output_res(tmp_path):
    paths = helpers.add_run(tmp_path, "01")
    run = helpers.make_run(paths, res="2")
    config = helpers.make_config(tmp_path)
    assert grids.output_res(config, [run]) == "2"
    assert grids.output_res(config, [helpers.make_run(paths)]) is None
    assert grids.output_res(config, []) is None
    config = helpers.make_config(tmp_path, target_resolution=2.5)
    assert grids.output_res(config, [run]) == "2p5mm"
    config = helpers.make_config(tmp_path, target_affine=((3, 0, 0), (0, 3, 0), (0, 0, 3)))
    assert grids.output_res(config, [run]) == "3mm"


def test_target_grid_none_without_target_options(tmp_path):
    assert grids.target_grid(helpers.make_config(tmp_path), grid()) is None


def test_target_grid_from_resolution_covers_the_source(tmp_path):
    source = grid((10, 9, 7), voxel=2.0)
    target = grids.target_grid(helpers.make_config(tmp_path, target_resolution=4.0),
                                 source)
    np.testing.assert_allclose(target.voxel_size, [4.0, 4.0, 4.0])
    # same axes and first corner; the new grid covers the source's bounding box, with
    # less than one new voxel to spare
    np.testing.assert_allclose(target.affine[:3, 3], source.affine[:3, 3])
    source_extent = (np.array(source.shape) - 1) * 2.0
    target_extent = (np.array(target.shape) - 1) * 4.0
    assert np.all(target_extent >= source_extent)
    assert np.all(target_extent < source_extent + 4.0)


def test_target_grid_from_affine_and_shape(tmp_path):
    aff = helpers.affine(3.0, (-9.0, -9.0, -9.0))
    config = helpers.make_config(tmp_path, target_affine=tuple(map(tuple, aff)),
                                 target_shape=(4, 5, 6))
    target = grids.target_grid(config, grid())
    assert target.shape == (4, 5, 6)
    np.testing.assert_allclose(target.affine, aff)


def test_target_grid_too_small(tmp_path):
    config = helpers.make_config(tmp_path, target_affine=tuple(map(tuple, helpers.affine())),
                                 target_shape=(1, 1, 2))
    with pytest.raises(UserError) as err:
        grids.target_grid(config, grid())
    assert str(err.value) == "--target-affine/--target-shape give an empty grid (1, 1, 2)"


# --------------------------------------------------------------------------- resampling
def test_resample_mask_nearest_on_a_coarser_grid():
    rng = np.random.default_rng(0)
    mask = rng.random((10, 10, 10)) > 0.5
    source = grid(voxel=2.0)
    # every target voxel centre is the centre of source voxel (2i, 2j, 2k)
    target = grid((5, 5, 5), voxel=4.0)
    out = grids.resample_mask(mask, source, target)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, mask[::2, ::2, ::2])
    np.testing.assert_array_equal(grids.resample_mask(mask, source, source), mask)


def test_resample_bold_at_source_voxel_centres():
    data = helpers.bold_data((10, 10, 10), n_volumes=3)
    source = grid(voxel=2.0)
    target = grid((5, 5, 5), voxel=4.0)
    out = grids.resample_bold(source.image(data), target)
    assert out.dtype == np.float32
    assert out.shape == (5, 5, 5, 3)
    # spline interpolation reproduces the samples at the source voxel centres
    np.testing.assert_allclose(out, data[::2, ::2, ::2], rtol=0, atol=1e-3)


# --------------------------------------------------------------------------- masks
def test_template_mask_covers_the_mni_brain(tmp_path):
    # an 8 mm grid over the MNI152 field of view: voxel (i, j, k) is at
    # (-80 + 8i, -112 + 8j, -72 + 8k) mm
    mni = grids.Grid((21, 25, 20), helpers.affine(8.0, (-80.0, -112.0, -72.0)))
    # opening 0: nilearn's default opening (2) splits the hemispheres at 8 mm and keeps
    # the largest piece
    mask = grids.template_mask("whole-brain-template", mni, {"opening": 0})
    assert mask.shape == mni.shape
    assert mask.dtype == bool
    # the white matter of both centrum semiovale, (-24, -8, 32) and (24, -8, 32) mm
    assert mask[7, 13, 13] and mask[13, 13, 13]
    for corner in ((0, 0, 0), (20, 24, 19), (0, 24, 0), (20, 0, 19)):
        assert not mask[corner]
    # both hemispheres, about +-70 mm from the midline
    xs = np.flatnonzero(mask.any(axis=(1, 2)))
    assert xs.min() <= 2 and xs.max() >= 18
    # a brain: between 1 and 2 litres
    assert 1e6 < mask.sum() * 8.0**3 < 2e6


def test_template_mask_bad_arguments():
    with pytest.raises(UserError) as err:
        grids.template_mask("gm-template", grid(), {"bogus": 1})
    assert str(err.value).startswith("--mask-strategy gm-template --mask-args "
                                      '{"bogus": 1}: ')
    assert "\n" not in str(err.value)


def test_data_mask_background_is_what_differs_from_the_border(tmp_path):
    mean = np.zeros((10, 10, 10), dtype=np.float32)
    mean[2:7, 3:8, 2:6] = 50.0 + np.arange(100).reshape(5, 5, 4)
    mask = grids.data_mask("background", grid().image(mean), None, tmp_path / "b.nii.gz")
    np.testing.assert_array_equal(mask, mean != 0)


def test_data_mask_epi_separates_bright_voxels(tmp_path):
    rng = np.random.default_rng(1)
    mean = rng.uniform(0, 10, (10, 10, 10)).astype(np.float32)
    mean[1:9, 1:9, 1:6] = rng.uniform(900, 1000, (8, 8, 5))
    mask = grids.data_mask("epi", grid().image(mean), {"opening": 0},
                             tmp_path / "b.nii.gz")
    np.testing.assert_array_equal(mask, mean > 500)


def test_data_mask_errors_name_the_file(tmp_path):
    bold = tmp_path / "sub-01_bold.nii.gz"
    empty = grid().image(np.zeros((10, 10, 10), dtype=np.float32))
    with pytest.raises(bold_io.RunError) as err:
        grids.data_mask("background", empty, None, bold)
    assert str(err.value) == f"{bold}: nilearn compute_background_mask gives an empty mask"
    with pytest.raises(UserError) as err:
        grids.data_mask("epi", empty, {"bogus": 1}, bold)
    assert str(err.value).startswith('--mask-args {"bogus": 1}: ')


def test_load_user_mask_same_grid(tmp_path):
    g = grid()
    data = helpers.box_mask(g.shape, margin=3)
    path = helpers.save_nifti(tmp_path / "mask.nii.gz", data.astype(np.uint8), g.affine)
    out = grids.load_user_mask(path, g)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, data)


def test_load_user_mask_resampled_to_the_bold_grid(tmp_path):
    fine = grid((20, 20, 20), voxel=1.0)
    rng = np.random.default_rng(2)
    data = rng.random(fine.shape) > 0.3
    path = helpers.save_nifti(tmp_path / "mask.nii.gz", data.astype(np.uint8), fine.affine)
    # the 2 mm grid with the same first voxel: voxel i is the fine grid's 2i
    out = grids.load_user_mask(path, grid(voxel=2.0))
    np.testing.assert_array_equal(out, data[::2, ::2, ::2])


def test_load_user_mask_errors(tmp_path):
    missing = tmp_path / "absent.nii.gz"
    with pytest.raises(UserError) as err:
        grids.load_user_mask(missing, grid())
    assert str(err.value).startswith(f"--mask {missing}: not a usable mask image (")
    assert "\n" not in str(err.value)

    far = helpers.save_nifti(tmp_path / "far.nii.gz", np.ones((4, 4, 4), np.uint8),
                             helpers.affine(2.0, (500.0, 500.0, 500.0)))
    with pytest.raises(UserError) as err:
        grids.load_user_mask(far, grid())
    assert str(err.value) == (f"--mask {far}: no voxel left on the BOLD grid (is it in the "
                              "BOLD's space?)")


# --------------------------------------------------------------------------- unit masks
def two_runs(tmp_path, masks, shape=(10, 10, 10), n_volumes=30, data=None):
    runs = []
    for number, mask in enumerate(masks, start=1):
        paths = helpers.add_run(tmp_path, "01", run=number, shape=shape, mask=mask,
                                n_volumes=n_volumes, seed=number)
        if data is not None:
            helpers.save_nifti(paths["bold"], data[number - 1], tr=2.0)
        runs.append(helpers.make_run(paths, run=str(number)))
    return runs


def test_build_unit_mask_intersects_the_fmriprep_masks(tmp_path):
    first = helpers.box_mask((10, 10, 10), margin=1)
    second = np.zeros((10, 10, 10), dtype=bool)
    second[3:, :, :] = True
    runs = two_runs(tmp_path, [first, second])
    unit = grids.build_unit_mask(runs, helpers.make_config(tmp_path))
    np.testing.assert_array_equal(unit.mask, first & second)
    np.testing.assert_allclose(unit.affine, helpers.affine())
    assert unit.n_voxels_per_run == {runs[0].bold.name: int(first.sum()),
                                     runs[1].bold.name: int(second.sum())}
    assert unit.description == "intersection of the runs' fMRIPrep brain masks"
    assert unit.grid is None
    assert unit.reader is None


def test_build_unit_mask_with_a_user_mask(tmp_path):
    brain = helpers.box_mask((10, 10, 10), margin=1)
    runs = two_runs(tmp_path, [brain])
    user = np.zeros((10, 10, 10), dtype=bool)
    user[:5] = True
    path = helpers.save_nifti(tmp_path / "roi.nii.gz", user.astype(np.uint8))
    unit = grids.build_unit_mask(runs, helpers.make_config(tmp_path, mask=path))
    np.testing.assert_array_equal(unit.mask, brain & user)
    assert unit.description == ("intersection of the runs' fMRIPrep brain masks, restricted "
                                f"to --mask roi.nii.gz ({int(user.sum())} voxels)")

    outside = np.zeros((10, 10, 10), dtype=np.uint8)
    outside[0] = 1  # only the margin the brain mask leaves out
    path = helpers.save_nifti(tmp_path / "outside.nii.gz", outside)
    with pytest.raises(UserError) as err:
        grids.build_unit_mask(runs, helpers.make_config(tmp_path, mask=path))
    assert str(err.value) == (f"--mask {path}: no voxel in common with the brain mask of "
                              f"{runs[0].mask.name} (is it in the BOLD's space?)")


def test_build_unit_mask_template_outside_the_data(tmp_path):
    # inside the template's field of view, but outside the brain (a corner of it)
    corner = helpers.affine(2.0, (-96.0, -132.0, -70.0))
    paths = helpers.add_run(tmp_path, "01", shape=(5, 5, 5), aff=corner)
    runs = [helpers.make_run(paths)]
    config = helpers.make_config(tmp_path, mask_strategy="whole-brain-template",
                                 mask_args={"connected": False})
    with pytest.raises(UserError) as err:
        grids.build_unit_mask(runs, config)
    assert str(err.value) == ("--mask-strategy whole-brain-template: no voxel of the template "
                              f"mask is inside the brain mask of {runs[0].mask.name}")


def test_build_unit_mask_on_a_target_grid(tmp_path):
    # 9 voxels of 2 mm (16 mm) are 5 voxels of 4 mm, each on a source voxel centre
    brain = np.zeros((9, 9, 9), dtype=bool)
    brain[2:9, 1:7, 3:9] = True
    runs = two_runs(tmp_path, [brain], shape=(9, 9, 9))
    config = helpers.make_config(tmp_path, target_resolution=4.0)
    unit = grids.build_unit_mask(runs, config)
    assert unit.mask.shape == (5, 5, 5)
    np.testing.assert_array_equal(unit.mask, brain[::2, ::2, ::2])
    np.testing.assert_allclose(unit.affine, helpers.affine(4.0))
    assert unit.grid["label"] == "4mm"
    assert unit.grid["shape"] == [5, 5, 5]
    assert unit.grid["description"].startswith(
        "BOLD and masks resampled from 2 mm voxels (9x9x9) to 4 mm voxels (5x5x5)")
    assert isinstance(unit.reader, grids.BoldReader)
    assert not unit.reader.from_data


def test_resampling_reader_reads_the_bold_on_the_target_grid(tmp_path):
    brain = helpers.box_mask((9, 9, 9), margin=1)
    (run,) = two_runs(tmp_path, [brain], shape=(9, 9, 9))
    config = helpers.make_config(tmp_path, target_resolution=4.0)
    target, reader = grids.resampling_reader(config, (9, 9, 9, 30), helpers.affine())
    assert target.shape == (5, 5, 5)
    unit = grids.build_unit_mask([run], config)
    series, mean = reader(run, unit)
    data = np.asarray(nib.load(run.bold).dataobj, dtype=np.float32)
    expected = data[::2, ::2, ::2][unit.mask].T
    assert series.shape == (30, int(unit.mask.sum()))
    np.testing.assert_allclose(series, expected, atol=1e-3)
    np.testing.assert_allclose(mean, data[::2, ::2, ::2].mean(axis=3), atol=1e-3)

    assert grids.resampling_reader(helpers.make_config(tmp_path), (9, 9, 9, 30),
                                     helpers.affine())[1] is None


def bright_regions(n_volumes=30):
    """Two runs whose non-zero voxels (the brain the background strategy finds) differ."""
    rng = np.random.default_rng(3)
    data = []
    for lo in (2, 3):
        run = np.zeros((10, 10, 10, n_volumes), dtype=np.float32)
        run[lo:lo + 5, 2:7, 2:7] = 100 + rng.standard_normal((5, 5, 5, n_volumes))
        data.append(run)
    return data


def test_clean_runs_with_a_mask_from_the_data(tmp_path):
    data = bright_regions()
    runs = two_runs(tmp_path, [np.ones((10, 10, 10), bool)] * 2, data=data)
    config = helpers.make_config(tmp_path, mask_strategy="background",
                                 denoise_strategy="none")
    unit = grids.build_unit_mask(runs, config)
    assert unit.mask.all()  # decided once the runs are read
    assert unit.reader.from_data
    assert unit.description == ("intersection of the masks computed by nilearn's "
                                "compute_background_mask from each run's mean BOLD image")
    messages = []
    unit, cleaned, skipped = denoise.clean_runs(runs, unit, config, done=messages.append)

    regions = [d.mean(axis=3) != 0 for d in data]
    final = regions[0] & regions[1]
    assert skipped == []
    np.testing.assert_array_equal(unit.mask, final)
    assert unit.n_voxels_per_run == {r.bold.name: int(m.sum())
                                     for r, m in zip(runs, regions, strict=True)}
    assert len(cleaned) == 2
    for clean, values in zip(cleaned, data, strict=True):
        # --denoise-strategy none: detrending only (nilearn's linear detrend)
        expected = signal.detrend(values[final].T.astype(np.float64), axis=0)
        assert clean.data.shape == (30, int(final.sum()))
        np.testing.assert_allclose(clean.data, expected, atol=2e-4)
    assert [m.split(":")[0] for m in messages] == ["sub-01_task-rest_run-1",
                                                   "sub-01_task-rest_run-2"]
    for message in messages:
        assert re.fullmatch(r"sub-01_task-rest_run-\d: 30/30 volumes kept, 0 regressors "
                            r"\(\d+\.\d s\)", message)


def test_clean_runs_skips_short_runs(tmp_path):
    brain = helpers.box_mask((10, 10, 10), margin=2)
    long = helpers.make_run(helpers.add_run(tmp_path, "01", run=1, shape=(10, 10, 10),
                                            mask=brain, n_volumes=30), run="1")
    short = helpers.make_run(helpers.add_run(tmp_path, "01", run=2, shape=(10, 10, 10),
                                             mask=brain, n_volumes=10), run="2")
    config = helpers.make_config(tmp_path, denoise_strategy="none")
    unit = grids.build_unit_mask([long, short], config)
    messages = []
    out, cleaned, skipped = denoise.clean_runs([long, short], unit, config, messages.append)
    assert out is unit  # nothing computed from the data: unchanged
    assert [c.run for c in cleaned] == [long]
    reason = "10 of 10 volumes kept after censoring (< --min-volumes 20)"
    assert [(s.bold, s.reason, s.missing_input) for s in skipped] == [
        (short.bold, reason, False)]
    assert messages[1] == f"sub-01_task-rest_run-2: skipped ({reason})"
    data = np.asarray(nib.load(long.bold).dataobj, dtype=np.float64)
    np.testing.assert_allclose(cleaned[0].data, signal.detrend(data[brain].T, axis=0),
                               atol=2e-4)


def test_finish_unit_mask_leaves_fmriprep_masks_alone(tmp_path):
    brain = helpers.box_mask((10, 10, 10), margin=2)
    runs = two_runs(tmp_path, [brain])
    unit = grids.build_unit_mask(runs, helpers.make_config(tmp_path))
    cleaned = [object()]
    out_unit, out_cleaned = denoise.finish_unit_mask(unit, cleaned)
    assert out_unit is unit
    assert out_cleaned is cleaned


def test_finish_unit_mask_empty_intersection(tmp_path):
    rng = np.random.default_rng(4)
    data = [np.zeros((10, 10, 10, 30), dtype=np.float32) for _ in range(2)]
    data[0][2:5, 2:7, 2:7] = 100 + rng.standard_normal((3, 5, 5, 30))
    data[1][5:8, 2:7, 2:7] = 100 + rng.standard_normal((3, 5, 5, 30))  # no overlap
    runs = two_runs(tmp_path, [np.ones((10, 10, 10), bool)] * 2, data=data)
    config = helpers.make_config(tmp_path, mask_strategy="background",
                                 denoise_strategy="none")
    unit = grids.build_unit_mask(runs, config)
    with pytest.raises(bold_io.RunError) as err:
        denoise.clean_runs(runs, unit, config)
    assert str(err.value) == (f"{runs[0].bold}: the intersection of the runs' background "
                              "masks is empty")
