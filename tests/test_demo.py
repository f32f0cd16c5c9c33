"""Tests of :mod:`bids_parcellate.demo` (synthetic fMRIPrep-like datasets)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from bids_parcellate.demo import DemoTruth, main, make_demo_dataset

SPACE = "space-MNI152NLin2009cAsym"
N_VOLUMES = 80
N_NONSTEADY = 2
N_SPIKES = 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoTruth:
    """Defaults at 8 mm: 2 participants x 2 runs, raw + derivatives layout."""
    root = tmp_path_factory.mktemp("demo") / "bids"
    return make_demo_dataset(root, resolution=8, n_volumes=N_VOLUMES, seed=0)


@pytest.fixture(scope="module")
def variant(tmp_path_factory) -> DemoTruth:
    """Sessions, no run entity, derivatives-only layout, res entity, old names."""
    root = tmp_path_factory.mktemp("variant") / "fmriprep"
    return make_demo_dataset(
        root, participants=("01", "sub-02"), sessions=("pre", "post"), runs=None,
        resolution=8, n_volumes=40, layout="derivatives", res_label="2",
        confounds_name="regressors", dtype="int16", jitter=0.3, seed=3,
    )


def _data(img: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(img.dataobj)


def _func(truth: DemoTruth, sub: str, ses: str | None = None) -> Path:
    return truth.fmriprep_dir / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "func"


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _sha256_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------- layout
def test_files_and_names_with_runs(demo):
    assert demo.fmriprep_dir == demo.root / "derivatives" / "fmriprep"
    expected = {"dataset_description.json"}
    for sub in ("01", "02"):
        expected.add(f"sub-{sub}/anat/sub-{sub}_desc-preproc_T1w.nii.gz")
        for run in (1, 2):
            src = f"sub-{sub}/func/sub-{sub}_task-rest_run-{run}"
            expected |= {
                f"{src}_{SPACE}_desc-preproc_bold.nii.gz",
                f"{src}_{SPACE}_desc-preproc_bold.json",
                f"{src}_{SPACE}_desc-brain_mask.nii.gz",
                f"{src}_{SPACE}_desc-brain_mask.json",
                f"{src}_{SPACE}_boldref.nii.gz",
                f"{src}_desc-confounds_timeseries.tsv",
                f"{src}_desc-confounds_timeseries.json",
            }
    assert _files(demo.fmriprep_dir) == expected

    description = json.loads((demo.fmriprep_dir / "dataset_description.json").read_text())
    assert description == {
        "Name": "fMRIPrep - demo", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}],
    }
    raw = json.loads((demo.root / "dataset_description.json").read_text())
    assert raw["DatasetType"] == "raw"
    assert (demo.root / "participants.tsv").read_text().split() == [
        "participant_id", "sub-01", "sub-02"]
    assert (demo.root / "README").is_file()
    sidecar = json.loads(
        (demo.root / "sub-02/func/sub-02_task-rest_run-2_bold.json").read_text())
    assert sidecar == {"RepetitionTime": 2.0, "TaskName": "rest"}
    truth_dir = demo.root / "sourcedata" / "ground_truth"
    for name in (f"{SPACE}_desc-truth_dseg.nii.gz", f"sub-01_{SPACE}_desc-truth_dseg.nii.gz",
                 f"sub-02_{SPACE}_desc-truth_dseg.nii.gz", "desc-truth_dseg.tsv"):
        assert (truth_dir / name).is_file(), name


def test_files_and_names_with_sessions_and_no_runs(variant):
    assert variant.fmriprep_dir == variant.root
    assert not (variant.root / "participants.tsv").exists()  # not a raw dataset
    files = _files(variant.root)
    assert set(variant.participant_labels) == {"01", "02"}
    for sub in ("01", "02"):
        for ses in ("pre", "post"):
            src = f"sub-{sub}/ses-{ses}/func/sub-{sub}_ses-{ses}_task-rest"
            space = f"{SPACE}_res-2"
            assert f"{src}_{space}_desc-preproc_bold.nii.gz" in files
            assert f"{src}_{space}_desc-brain_mask.nii.gz" in files
            assert f"{src}_{space}_boldref.nii.gz" in files
            assert f"{src}_desc-confounds_regressors.tsv" in files
            assert f"{src}_desc-confounds_regressors.json" in files
    assert not any("run-" in f or "confounds_timeseries" in f for f in files)
    assert f"sourcedata/ground_truth/sub-02_{SPACE}_res-2_desc-truth_dseg.nii.gz" in files


def test_pybids_finds_the_derivatives(demo, variant):
    bids = pytest.importorskip("bids")
    layout = bids.BIDSLayout(demo.fmriprep_dir, validate=False)
    bolds = layout.get(desc="preproc", suffix="bold", extension=".nii.gz")
    assert sorted((b.entities["subject"], b.entities["run"]) for b in bolds) == [
        ("01", 1), ("01", 2), ("02", 1), ("02", 2)]
    for bold in bolds:
        assert bold.entities["task"] == "rest"
        assert bold.entities["space"] == "MNI152NLin2009cAsym"
        assert bold.entities["datatype"] == "func"
        assert bold.get_metadata()["RepetitionTime"] == 2.0
    masks = layout.get(desc="brain", suffix="mask", extension=".nii.gz", datatype="func")
    assert len(masks) == 4
    confounds = layout.get(desc="confounds", suffix="timeseries", extension=".tsv")
    assert sorted((c.entities["subject"], c.entities["run"]) for c in confounds) == [
        ("01", 1), ("01", 2), ("02", 1), ("02", 2)]
    assert len(layout.get(datatype="anat", suffix="T1w")) == 2
    assert layout.get(suffix="dseg") == []  # sourcedata is not indexed

    layout = bids.BIDSLayout(variant.fmriprep_dir, validate=False)
    bolds = layout.get(desc="preproc", suffix="bold", extension=".nii.gz")
    assert sorted((b.entities["subject"], b.entities["session"]) for b in bolds) == [
        ("01", "post"), ("01", "pre"), ("02", "post"), ("02", "pre")]
    assert all("run" not in b.entities and b.entities["res"] == "2" for b in bolds)
    assert len(layout.get(desc="confounds", suffix="regressors", extension=".tsv")) == 4


# --------------------------------------------------------------------------- images
def test_bold_images(demo):
    mask = _data(demo.mask_img).astype(bool)
    assert demo.mask_img.get_data_dtype() == np.uint8
    assert mask.shape == (26, 30, 25) and mask.sum() == 3666
    func = _func(demo, "01")
    img = nib.load(func / f"sub-01_task-rest_run-1_{SPACE}_desc-preproc_bold.nii.gz")
    assert img.shape == (*mask.shape, N_VOLUMES)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(img.affine, demo.mask_img.affine)
    assert img.header.get_zooms() == (8.0, 8.0, 8.0, 2.0)
    assert img.header.get_xyzt_units() == ("mm", "sec")
    sidecar = json.loads(
        (func / f"sub-01_task-rest_run-1_{SPACE}_desc-preproc_bold.json").read_text())
    assert sidecar == {"RepetitionTime": 2.0, "SkullStripped": False, "TaskName": "rest"}

    data = img.get_fdata(dtype=np.float32)
    brain, outside = data[mask], data[~mask]
    assert 800 < np.median(brain) < 1200
    # not skull-stripped: low-intensity signal outside the brain, zero far away
    assert 0 < np.median(outside[outside > 0]) < 400
    assert (outside == 0).mean() > 0.3
    # non-steady-state volumes are much brighter than the rest
    means = brain.mean(axis=0)
    assert means[0] > 1.4 * np.median(means) and means[1] > 1.2 * np.median(means)
    assert abs(means[N_NONSTEADY] / np.median(means) - 1) < 0.05

    ref = nib.load(func / f"sub-01_task-rest_run-1_{SPACE}_boldref.nii.gz")
    np.testing.assert_allclose(ref.get_fdata(), data.mean(axis=-1), rtol=1e-5, atol=1e-3)
    run_mask = nib.load(func / f"sub-01_task-rest_run-1_{SPACE}_desc-brain_mask.nii.gz")
    np.testing.assert_array_equal(_data(run_mask), _data(demo.mask_img))


def test_int16_bold_uses_scaling(variant):
    func = _func(variant, "01", "pre")
    img = nib.load(func / f"sub-01_ses-pre_task-rest_{SPACE}_res-2_desc-preproc_bold.nii.gz")
    assert img.get_data_dtype() == np.int16
    assert img.dataobj.slope != 1.0
    brain = img.get_fdata()[_data(variant.mask_img) > 0]
    assert 800 < np.median(brain) < 1200


# --------------------------------------------------------------------------- confounds
def test_confounds_table(demo):
    func = _func(demo, "02")
    path = func / "sub-02_task-rest_run-1_desc-confounds_timeseries.tsv"
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    first = dict(zip(header, lines[1].split("\t"), strict=True))
    assert len(lines) == N_VOLUMES + 1
    for name in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                 "global_signal", "csf", "white_matter", "csf_wm"):
        for suffix in ("", "_derivative1", "_power2", "_derivative1_power2"):
            assert name + suffix in header
        assert first[name + "_derivative1"] == "n/a"
        assert first[name + "_power2"] != "n/a"
    for name in ("framewise_displacement", "dvars", "std_dvars", "rmsd"):
        assert first[name] == "n/a"
    for name in [f"a_comp_cor_{i:02d}" for i in range(6)] + [
            f"t_comp_cor_{i:02d}" for i in range(3)]:
        assert name in header

    frame = pd.read_csv(path, sep="\t", na_values="n/a")
    motion = frame[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]].to_numpy()
    np.testing.assert_allclose(frame["trans_x_derivative1"][1:], np.diff(motion[:, 0]))
    np.testing.assert_allclose(frame["rot_z_power2"], motion[:, 5] ** 2)
    delta = np.abs(np.diff(motion, axis=0))
    fd = delta[:, :3].sum(axis=1) + 50 * delta[:, 3:].sum(axis=1)
    np.testing.assert_allclose(frame["framewise_displacement"][1:], fd)
    spikes = np.flatnonzero(frame["framewise_displacement"] > 0.5)
    assert len(spikes) == N_SPIKES and spikes.min() > N_NONSTEADY

    nss = frame.filter(like="non_steady_state_outlier").to_numpy()
    np.testing.assert_array_equal(nss, np.eye(N_VOLUMES)[:, :N_NONSTEADY])
    outliers = frame.filter(like="motion_outlier").to_numpy()
    assert outliers.sum(axis=0).tolist() == [1] * outliers.shape[1]
    flagged = np.flatnonzero(outliers.sum(axis=1))
    assert set(spikes) <= set(flagged)
    # fMRIPrep's rule: FD > 0.5 mm or standardised DVARS > 1.5
    rule = (frame["framewise_displacement"] > 0.5) | (frame["std_dvars"] > 1.5)
    np.testing.assert_array_equal(flagged, np.flatnonzero(rule))
    # DCT basis for a 128 s high-pass over the steady-state volumes
    n_cos = int(np.floor(2 * (N_VOLUMES - N_NONSTEADY) * 2.0 / 128)) - 1
    assert list(frame.filter(like="cosine").columns) == [f"cosine{i:02d}" for i in range(n_cos)]
    # the global signal is the mean of the written data in the brain mask
    bold = nib.load(func / f"sub-02_task-rest_run-1_{SPACE}_desc-preproc_bold.nii.gz")
    mask = _data(demo.mask_img) > 0
    np.testing.assert_allclose(frame["global_signal"],
                               bold.get_fdata()[mask].mean(axis=0), rtol=1e-6)

    meta = json.loads(path.with_suffix(".json").read_text())
    for i in range(6):
        entry = meta[f"a_comp_cor_{i:02d}"]
        assert entry["Method"] == "aCompCor" and entry["Mask"] == "combined"
        assert entry["Retained"] is True
        assert 0 < entry["VarianceExplained"] <= entry["CumulativeVarianceExplained"] <= 1
    assert meta["t_comp_cor_00"]["Method"] == "tCompCor"
    assert {meta[f"c_comp_cor_{i:02d}"]["Mask"] for i in range(3)} == {"CSF"}
    assert {meta[f"w_comp_cor_{i:02d}"]["Mask"] for i in range(3)} == {"WM"}
    compcor = [k for k in meta if "comp_cor" in k]
    assert set(compcor) <= set(header)  # nilearn reads every listed component


def test_nilearn_load_confounds_strategy(demo, variant):
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    func = _func(demo, "01")
    bold = str(func / f"sub-01_task-rest_run-2_{SPACE}_desc-preproc_bold.nii.gz")
    frame = pd.read_csv(func / "sub-01_task-rest_run-2_desc-confounds_timeseries.tsv",
                        sep="\t", na_values="n/a")
    spikes = np.flatnonzero(frame["framewise_displacement"] > 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        simple, mask_simple = load_confounds_strategy(bold, "simple")
        scrub, mask_scrub = load_confounds_strategy(bold, "scrubbing")
        compcor, mask_compcor = load_confounds_strategy(bold, "compcor")
    for confounds in (simple, scrub, compcor):
        assert confounds.shape[0] == N_VOLUMES
        assert not confounds.isna().any().any()
        assert "trans_x_derivative1_power2" in confounds and "cosine00" in confounds
    assert {"csf", "white_matter"} <= set(simple.columns)
    assert {f"a_comp_cor_{i:02d}" for i in range(6)} <= set(compcor.columns)
    assert not any(c.startswith(("c_comp", "w_comp", "t_comp")) for c in compcor.columns)
    np.testing.assert_array_equal(mask_simple, np.arange(N_NONSTEADY, N_VOLUMES))
    np.testing.assert_array_equal(mask_compcor, mask_simple)
    removed = np.setdiff1d(np.arange(N_VOLUMES), mask_scrub)
    assert set(range(N_NONSTEADY)) | set(spikes) <= set(removed)
    assert len(removed) < 20  # spikes are isolated: scrubbing keeps most of the run

    # older "regressors" names are found too
    func = _func(variant, "02", "post")
    bold = str(func / f"sub-02_ses-post_task-rest_{SPACE}_res-2_desc-preproc_bold.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        confounds, sample_mask = load_confounds_strategy(bold, "compcor")
    assert confounds.shape[0] == 40 and "a_comp_cor_05" in confounds
    np.testing.assert_array_equal(sample_mask, np.arange(N_NONSTEADY, 40))


# --------------------------------------------------------------------------- truth
def _assert_valid_parcellation(labels: np.ndarray, mask: np.ndarray, n_parcels: int):
    np.testing.assert_array_equal(labels > 0, mask)  # covers the mask exactly
    assert np.array_equal(np.unique(labels[mask]), np.arange(1, n_parcels + 1))
    structure = ndimage.generate_binary_structure(3, 1)
    for k in range(1, n_parcels + 1):
        assert ndimage.label(labels == k, structure=structure)[1] == 1, k


def test_truth_is_contiguous_and_covers_the_mask(demo, variant):
    mask = _data(demo.mask_img) > 0
    shared = _data(demo.labels_img)
    assert demo.labels_img.get_data_dtype() == np.int16
    _assert_valid_parcellation(shared, mask, 20)
    sizes = np.bincount(shared[mask])[1:]
    assert sizes.min() > 0.5 * sizes.mean()  # compact, comparable parcels
    assert all(img is demo.labels_img for img in demo.participant_labels.values())
    on_disk = nib.load(demo.root / "sourcedata" / "ground_truth"
                       / f"sub-01_{SPACE}_desc-truth_dseg.nii.gz")
    np.testing.assert_array_equal(_data(on_disk), shared)

    # jitter: own truth per participant, still valid, close to the shared one
    shared = _data(variant.labels_img)
    jittered = [_data(variant.participant_labels[s]) for s in ("01", "02")]
    for labels in jittered:
        _assert_valid_parcellation(labels, mask, 20)
        changed = (labels != shared)[mask].mean()
        assert 0.01 < changed < 0.3
    assert not np.array_equal(*jittered)
    on_disk = nib.load(variant.root / "sourcedata" / "ground_truth"
                       / f"sub-02_{SPACE}_res-2_desc-truth_dseg.nii.gz")
    np.testing.assert_array_equal(_data(on_disk), jittered[1])


def test_same_seed_gives_identical_files(tmp_path):
    kwargs = dict(participants=("01",), runs=(1,), resolution=8, n_volumes=30)
    make_demo_dataset(tmp_path / "a", seed=7, **kwargs)
    make_demo_dataset(tmp_path / "b", seed=7, **kwargs)
    make_demo_dataset(tmp_path / "c", seed=8, **kwargs)
    a, b, c = (_sha256_tree(tmp_path / x) for x in "abc")
    assert len(a) > 10 and a == b
    changed = {name for name in a if a[name] != c[name]}
    prefix = "derivatives/fmriprep/sub-01/func/sub-01_task-rest_run-1_"
    assert {f"{prefix}{SPACE}_desc-preproc_bold.nii.gz",
            f"{prefix}desc-confounds_timeseries.tsv",
            f"sourcedata/ground_truth/{SPACE}_desc-truth_dseg.nii.gz"} <= changed
    assert "derivatives/fmriprep/dataset_description.json" not in changed


# --------------------------------------------------------------------------- recovery
def _ward_ari(truth: DemoTruth, sub: str, denoise: bool) -> float:
    from nilearn.interfaces.fmriprep import load_confounds_strategy
    from nilearn.maskers import NiftiMasker
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.feature_extraction.image import grid_to_graph
    from sklearn.metrics import adjusted_rand_score

    mask = _data(truth.mask_img) > 0
    series = []
    for bold in sorted(_func(truth, sub).glob("*_desc-preproc_bold.nii.gz")):
        confounds, sample_mask = (load_confounds_strategy(str(bold), "simple")
                                  if denoise else (None, None))
        masker = NiftiMasker(truth.mask_img, smoothing_fwhm=4.0,
                             standardize="zscore_sample", t_r=2.0)
        series.append(masker.fit_transform(bold, confounds=confounds,
                                           sample_mask=sample_mask))
    features = np.concatenate(series).T
    n_parcels = int(_data(truth.labels_img).max())
    ward = AgglomerativeClustering(n_clusters=n_parcels, linkage="ward",
                                   connectivity=grid_to_graph(*mask.shape, mask=mask))
    labels = ward.fit_predict(features)
    return adjusted_rand_score(_data(truth.participant_labels[sub])[mask], labels)


def test_ward_recovers_the_truth_after_denoising(demo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean = [_ward_ari(demo, sub, denoise=True) for sub in ("01", "02")]
        raw = _ward_ari(demo, "01", denoise=False)
    # ~0.88 measured at 8 mm with 2 x 80 volumes; random labels give ~0
    assert min(clean) > 0.6, clean
    assert max(clean) < 0.99, clean  # recoverable, but not trivially
    # the injected confounds really corrupt the data when left in (~0.45)
    assert raw < clean[0] - 0.2, (raw, clean)


# --------------------------------------------------------------------------- CLI / errors
def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main([str(out), "--participants", "03", "--runs", "1", "--resolution", "8",
                 "--n-volumes", "20", "--n-spikes", "1", "--seed", "1"])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and str(out) in captured.err
    func = out / "derivatives" / "fmriprep" / "sub-03" / "func"
    bold = func / f"sub-03_task-rest_run-1_{SPACE}_desc-preproc_bold.nii.gz"
    assert nib.load(bold).shape[-1] == 20


@pytest.mark.parametrize("kwargs", [
    dict(layout="bids"), dict(jitter=1.0), dict(dtype="float64"),
    dict(confounds_name="confounds"), dict(participants=("0-1",)), dict(runs=()),
    dict(n_true_parcels=0), dict(n_volumes=5), dict(snr=0),
])
def test_invalid_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path / "x", resolution=8, **kwargs)
