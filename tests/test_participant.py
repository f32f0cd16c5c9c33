"""End-to-end participant level on generated data with a known ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.interfaces.fmriprep import load_confounds_strategy
from nilearn.maskers import NiftiLabelsMasker
from sklearn.metrics import adjusted_rand_score

from bids_parcellate.demo import make_demo_dataset

from .conftest import SHARED_DATA, run_cli, sha256_tree, validate

SPACE = "space-MNI152NLin2009cAsym"


def dseg_path(out: Path, sub: str, method: str, scale: int, ses: str | None = None) -> Path:
    folder = out / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    ses_part = f"_ses-{ses}" if ses else ""
    seg = method.replace("_", "")
    return folder / f"sub-{sub}{ses_part}_{SPACE}_seg-{seg}_scale-{scale}_dseg.nii.gz"


def ari_to_truth(dseg: Path, truth_img) -> float:
    truth = np.asarray(truth_img.dataobj)
    found = np.asarray(nib.load(dseg).dataobj)
    inside = truth > 0
    assert (found[inside] > 0).all(), "parcellation leaves brain voxels unlabelled"
    return adjusted_rand_score(truth[inside], found[inside])


def test_outputs_are_named_and_complete(demo8, demo8_out):
    for sub in ("01", "02"):
        for scale in (20, 50):
            img = dseg_path(demo8_out, sub, "ward", scale)
            assert img.is_file()
            labels = np.asarray(nib.load(img).dataobj)
            assert sorted(np.unique(labels)) == list(range(scale + 1))
            table = pd.read_csv(img.with_name(img.name.replace(".nii.gz", ".tsv")), sep="\t")
            assert list(table.columns[:2]) == ["index", "name"]
            assert table["index"].tolist() == list(range(1, scale + 1))
            assert table["n_voxels"].sum() == (labels > 0).sum()
            sidecar = json.loads(img.with_name(img.name.replace(".nii.gz", ".json"))
                                 .read_text())
            assert sidecar["Method"] == "ward" and sidecar["NumberOfParcels"] == scale
            assert all(s.startswith("bids:") for s in sidecar["Sources"])
            for run in (1, 2):
                ts = demo8_out / f"sub-{sub}" / "func" / (
                    f"sub-{sub}_task-rest_run-{run}_{SPACE}_seg-ward_scale-{scale}"
                    "_stat-mean_timeseries.tsv")
                frame = pd.read_csv(ts, sep="\t", na_values="n/a")
                assert frame.shape == (80, scale)
                assert list(frame.columns) == table["name"].tolist()
    description = json.loads((demo8_out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bids_parcellate"
    assert "*_timeseries.tsv" in (demo8_out / ".bidsignore").read_text()
    assert list((demo8_out / "logs").glob("participant-*.log"))


def test_ward_recovers_the_ground_truth(demo8, demo8_out):
    for sub in ("01", "02"):
        ari = ari_to_truth(dseg_path(demo8_out, sub, "ward", 20),
                           demo8.participant_labels[sub])
        # 20 true parcels of ~180 voxels at 8 mm after 4 mm smoothing: boundary voxels are
        # mixed by smoothing, so perfect recovery is impossible; 0.75 leaves a margin
        # under the ~0.9 measured while failing any systematic error (random: ~0).
        assert ari > 0.75, (sub, ari)


def test_timeseries_equal_nilearn_labels_masker(demo8, demo8_out):
    sub, run, scale = "01", 1, 20
    fmriprep = demo8.fmriprep_dir / f"sub-{sub}" / "func"
    bold = fmriprep / f"sub-{sub}_task-rest_run-{run}_{SPACE}_desc-preproc_bold.nii.gz"
    masks = [fmriprep / f"sub-{sub}_task-rest_run-{r}_{SPACE}_desc-brain_mask.nii.gz"
             for r in (1, 2)]
    mask_data = np.logical_and(*[np.asarray(nib.load(m).dataobj) > 0 for m in masks])
    mask_img = nib.Nifti1Image(mask_data.astype(np.uint8), nib.load(masks[0]).affine)
    confounds, sample_mask = load_confounds_strategy(str(bold), denoise_strategy="simple")
    tr = json.loads(bold.with_name(bold.name.replace(".nii.gz", ".json")).read_text())[
        "RepetitionTime"]
    masker = NiftiLabelsMasker(dseg_path(demo8_out, sub, "ward", scale), mask_img=mask_img,
                               standardize="zscore_sample", detrend=True, t_r=tr)
    # the reference runs in float64 (nilearn keeps the file's float32 otherwise, whose
    # rounding at intensities ~1000 is itself ~1e-5 after standardisation)
    bold_img = nib.load(bold)
    bold64 = nib.Nifti1Image(bold_img.get_fdata(dtype=np.float64), bold_img.affine,
                             bold_img.header)
    expected = masker.fit_transform(bold64, confounds=confounds, sample_mask=sample_mask)
    ts = demo8_out / f"sub-{sub}" / "func" / (
        f"sub-{sub}_task-rest_run-{run}_{SPACE}_seg-ward_scale-{scale}"
        "_stat-mean_timeseries.tsv")
    ours = pd.read_csv(ts, sep="\t", na_values="n/a").to_numpy()
    kept = ~np.isnan(ours).any(axis=1)
    if sample_mask is not None:
        np.testing.assert_array_equal(np.flatnonzero(kept), sample_mask)
    np.testing.assert_allclose(ours[kept], expected, atol=1e-5)


def test_validator_reports_no_errors(demo8_out):
    report = validate(demo8_out)
    assert report["errors"] == [], report["errors"]
    assert report["returncode"] == 0


def test_rerun_is_byte_identical(demo8, demo8_out, tmp_path):
    out = tmp_path / "again"
    assert run_cli(demo8.root, out, "--n-parcels", "20", "50") == 0
    first, second = sha256_tree(demo8_out), sha256_tree(out)
    assert first and first == second
    # dseg (nii + tsv) x 2 scales x 2 participants; timeseries x 2 runs x 2 scales x 2;
    # quality tables x 2 scales x 2 participants + the group table
    assert len(first) == 2 * 2 * 2 + 2 * 2 * 2 + 2 * 2 + 1



@pytest.mark.parametrize("standardize", ["zscore_sample", "psc", False])
def test_parcel_standardisation_is_nilearns_to_the_bit(standardize):
    from nilearn.signal import standardize_signal

    from bids_parcellate.extract import standardize_parcels

    rng = np.random.default_rng(5)
    block = 1000 + 30 * rng.standard_normal((97, 40))
    block[:, 3] = 7.0  # a constant parcel: nilearn divides it by 1, not by ~0
    ours = standardize_parcels(block.copy(), standardize)
    theirs = standardize_signal(block.copy(), detrend=False, standardize=standardize)
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
    if standardize == "zscore_sample":
        assert np.allclose(ours[:, 0].std(ddof=1), 1.0) and not ours[:, 3].any()


def test_outputs_do_not_depend_on_nprocs(demo8, demo8_out, tmp_path):
    out = tmp_path / "threads"
    assert run_cli(demo8.root, out, "--participant-label", "01", "--n-parcels", "20", "50",
                   "--nprocs", "2") == 0
    threaded = {k: v for k, v in sha256_tree(out).items() if k.startswith("sub-01/")}
    single = {k: v for k, v in sha256_tree(demo8_out).items() if k.startswith("sub-01/")}
    assert threaded and threaded == single


@pytest.mark.parametrize("method, threshold", [
    ("ward", 0.9), ("average", 0.5), ("complete", 0.5), ("kmeans", 0.7),
    ("hierarchical_kmeans", 0.6), ("rena", 0.6),
])
def test_every_method_end_to_end(demo8_clean, tmp_path, method, threshold):
    out = tmp_path / "out"
    assert run_cli(demo8_clean.root, out, "--method", method, "--n-parcels", "20") == 0
    ari = ari_to_truth(dseg_path(out, "01", method, 20), demo8_clean.participant_labels["01"])
    assert ari > threshold, (method, ari)
    seg = method.replace("_", "")
    ts = list((out / "sub-01" / "func").glob(f"*_seg-{seg}_scale-20_stat-mean_timeseries.tsv"))
    assert len(ts) == 2


def test_scrubbing_writes_censored_rows_as_na(demo8, tmp_path):
    out = tmp_path / "out"
    assert run_cli(demo8.root, out, "--participant-label", "02", "--denoise-strategy",
                   "scrubbing", "--n-parcels", "20") == 0
    ts = out / "sub-02" / "func" / (
        f"sub-02_task-rest_run-1_{SPACE}_seg-ward_scale-20_stat-mean_timeseries.tsv")
    frame = pd.read_csv(ts, sep="\t", na_values="n/a")
    sidecar = json.loads(ts.with_suffix(".json").read_text())
    censored = sidecar["CensoredVolumes"]
    assert censored, "the demo data has non-steady-state volumes and spikes"
    np.testing.assert_array_equal(np.flatnonzero(frame.isna().all(axis=1)), censored)
    assert frame.drop(index=censored).notna().all().all()
    assert 0 in censored  # non-steady-state
    assert any(c.startswith("motion_outlier") or c.startswith("trans_x")
               for c in sidecar["Confounds"])
    assert sidecar["RepetitionTime"] == pytest.approx(2.0)


def test_derivatives_only_layout_sessions_and_old_confounds_name(tmp_path):
    truth = make_demo_dataset(tmp_path / "fmriprep", participants=("a1",), sessions=("1", "2"),
                              runs=None, resolution=8, n_volumes=60, layout="derivatives",
                              confounds_name="regressors", seed=3)
    out = tmp_path / "out"
    assert run_cli(truth.root, out, "--participant-label", "sub-a1", "--n-parcels", "20") == 0
    for ses in ("1", "2"):
        assert dseg_path(out, "a1", "ward", 20, ses=ses).is_file()
        assert (out / "sub-a1" / f"ses-{ses}" / "func" / (
            f"sub-a1_ses-{ses}_task-rest_{SPACE}_seg-ward_scale-20_stat-mean_timeseries.tsv"
        )).is_file()
    assert validate(out)["errors"] == []


def test_selection_filters(demo8, tmp_path):
    out = tmp_path / "out"
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"bold": {"run": 2}}))
    assert run_cli(demo8.root, out, "--participant-label", "02", "--bids-filter-file", filt,
                   "--n-parcels", "20") == 0
    names = sorted(p.name for p in (out / "sub-02" / "func").glob("*.tsv"))
    assert names == [f"sub-02_task-rest_run-2_{SPACE}_seg-ward_scale-20_stat-mean_timeseries.tsv"]
    assert not (out / "sub-01").exists()


@pytest.mark.parametrize("make_args, message, expected", [
    (lambda root, demo: [root / "nothing", "--participant-label", "01"], "does not exist", 1),
    (lambda root, demo: [demo.root, "--participant-label", "99"],
     "--participant-label 99: not found", 1),
    (lambda root, demo: [demo.root, "--task", "nback"], "no runs left after filters", 1),
    # invalid option values: usage errors
    (lambda root, demo: [demo.root, "--participant-label", "../x"], "not a BIDS label", 2),
    (lambda root, demo: [demo.root, "--method", "spectral"], "--method 'spectral'", 2),
])
def test_errors_are_one_line_and_write_nothing(demo8, tmp_path, capsys, make_args, message,
                                               expected):
    args = make_args(tmp_path, demo8)
    out = tmp_path / "out"
    code = run_cli(args[0], out, *args[1:])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == expected
    assert err[-1].startswith("bids_parcellate: error:") and message in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()


def test_raw_dataset_without_derivatives(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "BIDSVersion": "1.9.0", "DatasetType": "raw"}))
    assert run_cli(raw, tmp_path / "out") == 1
    assert "no fMRIPrep derivatives found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_real_studyforrest_run(tmp_path):
    """A real 3T run (4 mm, 156 volumes): the pipeline runs and the outputs validate."""
    out = tmp_path / "out"
    assert run_cli(SHARED_DATA, out, "--n-parcels", "100", "400") == 0
    labels = np.asarray(nib.load(dseg_path(out, "sf02", "ward", 400)).dataobj)
    assert len(np.unique(labels)) == 401
    ts = pd.read_csv(next((out / "sub-sf02" / "func").glob("*scale-400*timeseries.tsv")),
                     sep="\t", na_values="n/a")
    assert ts.shape == (156, 400)
    # 1,538 brain-mask voxels of this run are constant in time (outside the field of
    # view): left out, so that no parcel is made of them only (one was, at 400)
    dseg = dseg_path(out, "sf02", "ward", 400)
    sidecar = json.loads(dseg.with_name(dseg.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["VoxelsWithoutSignal"]["Count"] == 1538
    values = ts.dropna().to_numpy()
    assert (values.std(axis=0) > 0).all()
    # real signal: neighbouring parcels correlate more than chance
    corr = np.corrcoef(values.T)
    assert np.mean(np.abs(corr[np.triu_indices(len(corr), 1)])) > 0.05
    assert validate(out)["errors"] == []
