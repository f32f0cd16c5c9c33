"""Group level: map-reduce of participant summaries into a BIDS atlas."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import nibabel.openers
import numpy as np
import pandas as pd
import pytest
from nilearn.interfaces.fmriprep import load_confounds_strategy
from nilearn.maskers import NiftiLabelsMasker
from sklearn.metrics import adjusted_rand_score

from bids_parcellate.cli import main
from bids_parcellate.group.reduce import ComponentMerger
from bids_parcellate.inputs.bold import UnitMask, load_bold
from bids_parcellate.inputs.query import Run

from .conftest import run_cli, sha256_tree, validate

SPACE = "space-MNI152NLin2009cAsym"
LABEL = "bidsWard"  # demo datasets live in .../bids: <folder name><Method>
TPL = "tpl-MNI152NLin2009cAsym"


def atlas_path(out: Path, scale: int, ext: str = ".nii.gz", label: str = LABEL) -> Path:
    return out / TPL / f"{TPL}_atlas-{label}_scale-{scale}_dseg{ext}"


def group_ts_path(out: Path, sub: str, run: int, scale: int, label: str = LABEL) -> Path:
    return out / f"sub-{sub}" / "func" / (
        f"sub-{sub}_task-rest_run-{run}_{SPACE}_atlas-{label}_scale-{scale}"
        "_stat-mean_timeseries.tsv")


def bold_path(demo, sub: str, run: int) -> Path:
    return demo.fmriprep_dir / f"sub-{sub}" / "func" / (
        f"sub-{sub}_task-rest_run-{run}_{SPACE}_desc-preproc_bold.nii.gz")


@contextmanager
def bold_opens(atlas: Path):
    """Record every nibabel open of a ``*_bold.nii.gz`` file (any caller: ours, nilearn),
    with whether the group atlas ``atlas`` existed at that moment."""
    events: list[tuple[str, bool]] = []
    original = nibabel.openers.Opener.__init__

    def init(self, fileish, *args, **kwargs):
        name = str(getattr(fileish, "name", fileish))
        if name.endswith("_bold.nii.gz"):
            events.append((Path(name).name, atlas.exists()))
        original(self, fileish, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nibabel.openers.Opener, "__init__", init)
        yield events


def opens_per_read(path: Path) -> int:
    """How many nibabel opens one read of ``path`` by bids_parcellate makes (the header,
    then one per block of volumes)."""
    img = nib.load(path)
    run = Run(entities={}, bold=path, mask=path, confounds=None, tr=2.0)
    unit = UnitMask(mask=np.ones(img.shape[:3], dtype=bool), affine=img.affine,
                    n_voxels_per_run={})
    with bold_opens(Path("/nonexistent")) as events:
        load_bold(run, unit)
    return len(events)


@pytest.fixture(scope="module")
def group_run(demo8, demo8_out, tmp_path_factory):
    """Group level on a copy of the participant-level outputs (summaries present)."""
    out = tmp_path_factory.mktemp("group") / "out"
    shutil.copytree(demo8_out, out)
    with bold_opens(atlas_path(out, 20)) as events:
        code = run_cli(demo8.root, out, "--n-parcels", "20", "50", level="group")
    assert code == 0
    return out, list(events)


def test_atlas_files_and_validator(demo8, group_run):
    out, _ = group_run
    description = json.loads((out / f"atlas-{LABEL}_description.json").read_text())
    assert description["LevelType"] == "group"
    assert description["Participants"] == ["sub-01", "sub-02"]
    assert description["GroupMask"]["VoxelsLost"] == 0
    mask = np.asarray(demo8.mask_img.dataobj) > 0
    for scale in (20, 50):
        labels = np.asarray(nib.load(atlas_path(out, scale)).dataobj)
        assert sorted(np.unique(labels)) == list(range(scale + 1))
        np.testing.assert_array_equal(labels > 0, mask)
        table = pd.read_csv(atlas_path(out, scale, ".tsv"), sep="\t")
        assert table["index"].tolist() == list(range(1, scale + 1))
        assert table["n_voxels"].sum() == mask.sum()
        sidecar = json.loads(atlas_path(out, scale, ".json").read_text())
        assert sidecar["NumberOfParcels"] == scale and sidecar["Method"] == "ward"
        # the same parameters as a participant's dseg (mask, standardisation, bootstrap)
        own = json.loads((out / "sub-01" / "anat" / (
            f"sub-01_{SPACE}_seg-ward_scale-{scale}_dseg.json")).read_text())
        assert sidecar["Parameters"] == description["Parameters"] == {
            **own["Parameters"], "NumberOfComponents": own["Parameters"]["NumberOfComponents"]}
        assert sidecar["Parameters"]["MaskStrategy"] == "fmriprep"
        assert sidecar["Parameters"]["Bootstrap"] == 0
        assert sidecar["Sources"] == [
            f"bids::sub-{s}/func/sub-{s}_{SPACE}_desc-summary_features.npz" for s in ("01", "02")]
        for sub in ("01", "02"):
            for run in (1, 2):
                frame = pd.read_csv(group_ts_path(out, sub, run, scale), sep="\t",
                                    na_values="n/a")
                assert frame.shape == (80, scale)
                assert list(frame.columns) == table["name"].tolist()
    # no jitter: the group atlas recovers the shared truth as well as a participant's own
    truth = np.asarray(demo8.labels_img.dataobj)
    group = np.asarray(nib.load(atlas_path(out, 20)).dataobj)
    assert adjusted_rand_score(truth[mask], group[mask]) > 0.75
    agreement = pd.read_csv(out / f"group_atlas-{LABEL}_agreement.tsv", sep="\t")
    assert list(agreement.columns) == ["participant_id", "scale", "ari", "nmi", "n_voxels"]
    assert agreement[["participant_id", "scale"]].values.tolist() == [
        ["sub-01", 20], ["sub-01", 50], ["sub-02", 20], ["sub-02", 50]]
    own = np.asarray(nib.load(out / "sub-01" / "anat" / (
        f"sub-01_{SPACE}_seg-ward_scale-20_dseg.nii.gz")).dataobj)
    assert agreement["ari"][0] == pytest.approx(
        adjusted_rand_score(own[mask], group[mask]), abs=1e-6)
    assert (agreement["ari"][agreement["scale"] == 20] > 0.7).all()
    assert "group_*" in (out / ".bidsignore").read_text()
    # the group report shows the atlas and the agreement columns
    html = (out / "group.html").read_text()
    assert LABEL in html and "ari (20)" in html
    report = validate(out)
    assert report["errors"] == [], report["errors"]


def test_group_timeseries_equal_nilearn_labels_masker(demo8, group_run):
    out, _ = group_run
    sub, run, scale = "02", 2, 50
    bold = bold_path(demo8, sub, run)
    confounds, sample_mask = load_confounds_strategy(str(bold), denoise_strategy="simple")
    masker = NiftiLabelsMasker(atlas_path(out, scale), standardize="zscore_sample",
                               detrend=True, t_r=2.0)
    img = nib.load(bold)  # float64 reference (see test_participant)
    bold64 = nib.Nifti1Image(img.get_fdata(dtype=np.float64), img.affine, img.header)
    expected = masker.fit_transform(bold64, confounds=confounds, sample_mask=sample_mask)
    ours = pd.read_csv(group_ts_path(out, sub, run, scale), sep="\t", na_values="n/a")
    ours = ours.to_numpy()
    kept = ~np.isnan(ours).any(axis=1)
    np.testing.assert_array_equal(np.flatnonzero(kept), sample_mask)
    np.testing.assert_allclose(ours[kept], expected, atol=1e-5)


def test_reduce_opens_no_bold_and_apply_reads_each_once(demo8, group_run):
    _, events = group_run
    assert events, "the apply step reads the BOLD files"
    # every open happened after the atlas was written: the reduce opened none
    assert not [name for name, atlas_written in events if not atlas_written]
    per_read = opens_per_read(bold_path(demo8, "01", 1))
    counts = Counter(name for name, _ in events)
    assert counts == {bold_path(demo8, s, r).name: per_read
                      for s in ("01", "02") for r in (1, 2)}


def test_missing_or_stale_summary_is_computed(demo8, demo8_out, group_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(demo8_out, out)
    summary = out / "sub-02" / "func" / f"sub-02_{SPACE}_desc-summary_features.npz"
    original = summary.read_bytes()
    summary.unlink()
    with bold_opens(atlas_path(out, 20)) as events:
        assert run_cli(demo8.root, out, "--n-parcels", "20", "50", level="group") == 0
    per_read = opens_per_read(bold_path(demo8, "01", 1))
    before = Counter(name for name, written in events if not written)
    assert before == {bold_path(demo8, "02", r).name: per_read for r in (1, 2)}
    # the recomputed summary is the participant level's, byte for byte
    assert summary.read_bytes() == original
    # and the group outputs are those of the run that reused every summary
    first, again = sha256_tree(group_run[0]), sha256_tree(out)
    group_files = [k for k in first if f"atlas-{LABEL}" in k]
    assert len(group_files) == 2 * 2 + 2 * 2 * 2 + 1  # atlas nii+tsv, timeseries, agreement
    assert {k: first[k] for k in group_files} == {k: again[k] for k in group_files}

    # other feature parameters: every summary is stale and recomputed
    with bold_opens(atlas_path(out, 20, label="smooth6")) as events:
        assert run_cli(demo8.root, out, "--n-parcels", "20", "--smoothing-fwhm", "6",
                       "--atlas-label", "smooth6", level="group") == 0
    before = Counter(name for name, written in events if not written)
    assert sorted(before) == sorted(bold_path(demo8, s, r).name
                                    for s in ("01", "02") for r in (1, 2))
    assert summary.read_bytes() != original


def _add_participant_on_other_grid(root: Path, source: str, new: str) -> None:
    func = root / "derivatives" / "fmriprep" / f"sub-{source}" / "func"
    target = root / "derivatives" / "fmriprep" / f"sub-{new}" / "func"
    target.mkdir(parents=True)
    for path in func.iterdir():
        dest = target / path.name.replace(f"sub-{source}", f"sub-{new}")
        if path.name.endswith(("_bold.nii.gz", "_mask.nii.gz")):
            img = nib.load(path)
            affine = img.affine.copy()
            affine[0, 3] += 4.0  # half a voxel: another grid
            nib.Nifti1Image(np.asanyarray(img.dataobj), affine, img.header).to_filename(dest)
        else:
            shutil.copy(path, dest)


def test_grid_mismatch_is_one_line_and_writes_nothing(demo8, tmp_path, capsys):
    root = tmp_path / "bids"
    shutil.copytree(demo8.root, root)
    _add_participant_on_other_grid(root, "02", "03")
    out = tmp_path / "out"
    code = run_cli(root, out, "--n-parcels", "20", level="group")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("bids_parcellate: error: group level needs every participant "
                              "on one voxel grid: sub-03 ("), err
    assert "sub-01" not in err[-1].split("differ from")[0]
    assert not out.exists()
    # the same check runs before the participant level of 'participant group' writes
    assert main([str(root), str(out), "participant", "group", "--n-parcels", "20"]) == 1
    assert "sub-03 (" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()


@pytest.fixture(scope="module")
def clean2_out(tmp_path_factory):
    """Two participants at a high signal-to-noise ratio (see conftest.demo8_clean) with
    their summaries (a first group run), for checking every method's wiring."""
    from bids_parcellate.demo import make_demo_dataset

    base = tmp_path_factory.mktemp("clean2")
    demo = make_demo_dataset(base / "bids", participants=("01", "02"), runs=(1,),
                             resolution=8, n_volumes=80, n_true_parcels=20, seed=1, snr=1.0)
    out = base / "out"
    assert run_cli(demo.root, out, "--n-parcels", "20", level="group") == 0
    return demo, out


@pytest.mark.parametrize("method, threshold", [
    ("average", 0.5),
    pytest.param("complete", 0.5, marks=pytest.mark.slow),
    pytest.param("kmeans", 0.7, marks=pytest.mark.slow),
    pytest.param("hierarchical_kmeans", 0.6, marks=pytest.mark.slow),
    pytest.param("rena", 0.6, marks=pytest.mark.slow),
])
def test_every_method_at_group_level(clean2_out, tmp_path, method, threshold):
    demo, summaries = clean2_out
    out = tmp_path / "out"
    shutil.copytree(summaries, out)
    assert run_cli(demo.root, out, "--method", method, "--n-parcels", "20",
                   level="group") == 0
    label = "bids" + method.replace("_", "").capitalize()
    labels = np.asarray(nib.load(atlas_path(out, 20, label=label)).dataobj)
    truth = np.asarray(demo.labels_img.dataobj)
    inside = truth > 0
    ari = adjusted_rand_score(truth[inside], labels[inside])
    assert ari > threshold, (method, ari)
    assert group_ts_path(out, "02", 1, 20, label=label).is_file()


def test_component_merger_matches_svd_of_the_concatenation():
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((500, 5))
    blocks = [(shared @ rng.standard_normal((5, k)) + 0.1 * rng.standard_normal((500, k)))
              .astype(np.float32) for k in (30, 12, 40, 25)]
    full = np.concatenate(blocks, axis=1).astype(np.float64)
    exact = np.linalg.svd(full, compute_uv=False)
    # K above the rank: exact
    merger = ComponentMerger(200)
    for block in blocks:
        merger.add(block)
    np.testing.assert_allclose(np.linalg.norm(merger.components_, axis=0), exact, rtol=1e-4)
    # distances between rows are those of the concatenation
    diff = merger.components_[:50, None] - merger.components_[None, :50]
    diff_full = full[:50, None] - full[None, :50]
    np.testing.assert_allclose((diff ** 2).sum(-1), (diff_full ** 2).sum(-1), rtol=1e-3)
    # K below: the leading singular values are kept (the signal is rank 5)
    merger = ComponentMerger(8)
    for block in blocks:
        merger.add(block)
    assert merger.components_.shape == (500, 8)
    np.testing.assert_allclose(np.linalg.norm(merger.components_, axis=0)[:5], exact[:5],
                               rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("snr", [0.4, 1.0])
def test_group_beats_nilearn_multi_subject_on_jittered_truth(tmp_path, snr):
    """Shared truth + subject jitter: our group atlas recovers the shared truth better than
    nilearn's multi-subject ``Parcellations.fit(list_of_imgs)`` (same method, scale,
    smoothing, confounds and censoring)."""
    from nilearn.image import index_img
    from nilearn.regions import Parcellations

    from bids_parcellate.demo import make_demo_dataset

    subjects = [f"{i:02d}" for i in range(1, 7)]
    truth = make_demo_dataset(tmp_path / "bids", participants=subjects, runs=(1,),
                              resolution=8, n_volumes=80, n_true_parcels=20, jitter=0.3,
                              seed=1, snr=snr)
    out = tmp_path / "out"
    assert run_cli(truth.root, out, "--n-parcels", "20", level="group") == 0
    shared = np.asarray(truth.labels_img.dataobj)
    inside = shared > 0
    ours = np.asarray(nib.load(atlas_path(out, 20)).dataobj)
    ari_ours = adjusted_rand_score(shared[inside], ours[inside])

    imgs, confounds = [], []
    for sub in subjects:
        bold = truth.fmriprep_dir / f"sub-{sub}" / "func" / (
            f"sub-{sub}_task-rest_run-1_{SPACE}_desc-preproc_bold.nii.gz")
        conf, sample_mask = load_confounds_strategy(str(bold), denoise_strategy="simple")
        imgs.append(index_img(nib.load(bold), sample_mask))  # nilearn has no sample_mask
        confounds.append(conf.to_numpy()[sample_mask])
    nilearn = Parcellations(method="ward", n_parcels=20, mask=truth.mask_img,
                            smoothing_fwhm=4.0, standardize="zscore_sample", detrend=True,
                            t_r=2.0, random_state=0)
    nilearn.fit(imgs, confounds=confounds)
    theirs = np.asarray(nilearn.labels_img_.dataobj)
    ari_nilearn = adjusted_rand_score(shared[inside], theirs[inside])
    print(f"snr {snr}: ARI to the shared truth: bids_parcellate group {ari_ours:.3f}, "
          f"nilearn multi-subject {ari_nilearn:.3f}")
    # measured (6 participants, jitter 0.3): snr 0.4 (the demo default) 0.74 vs 0.00,
    # snr 1.0 0.78 vs 0.22
    assert ari_ours > ari_nilearn + 0.2
    assert ari_ours > 0.65


def test_sessions_and_derivatives_only_layout(tmp_path):
    """Units are participant x session; BIDS_DIR is the fMRIPrep dataset itself."""
    from bids_parcellate.demo import make_demo_dataset

    truth = make_demo_dataset(tmp_path / "fmriprep", participants=("a1",), sessions=("1", "2"),
                              runs=None, resolution=8, n_volumes=60, layout="derivatives",
                              seed=3)
    out = tmp_path / "out"
    assert main([str(truth.root), str(out), "participant", "group", "--n-parcels", "20"]) == 0
    label = "fmriprepWard"
    assert atlas_path(out, 20, label=label).is_file()
    description = json.loads((out / f"atlas-{label}_description.json").read_text())
    assert description["Participants"] == ["sub-a1_ses-1", "sub-a1_ses-2"]
    agreement = pd.read_csv(out / f"group_atlas-{label}_agreement.tsv", sep="\t")
    assert agreement[["participant_id", "session_id", "scale"]].values.tolist() == [
        ["sub-a1", "ses-1", 20], ["sub-a1", "ses-2", 20]]
    for ses in ("1", "2"):
        assert (out / "sub-a1" / f"ses-{ses}" / "func" / (
            f"sub-a1_ses-{ses}_task-rest_{SPACE}_atlas-{label}_scale-20_stat-mean_timeseries.tsv"
        )).is_file()
    assert validate(out)["errors"] == []


def test_run_missing_a_file_is_left_out_and_reported(demo8, tmp_path, capsys):
    """As at the participant level: the run is skipped, the others are used, exit 1."""
    root = tmp_path / "bids"
    shutil.copytree(demo8.root, root)
    confounds = root / "derivatives" / "fmriprep" / "sub-02" / "func" / (
        "sub-02_task-rest_run-2_desc-confounds_timeseries.tsv")
    confounds.unlink()
    out = tmp_path / "out"
    assert run_cli(root, out, "--n-parcels", "20", level="group") == 1
    assert "group level: skipping run:" in capsys.readouterr().err
    assert atlas_path(out, 20).is_file()
    assert group_ts_path(out, "02", 1, 20).is_file()
    assert not group_ts_path(out, "02", 2, 20).exists()
    header = json.loads((out / "sub-02" / "func" / (
        f"sub-02_{SPACE}_desc-summary_features.json")).read_text())
    assert header["Sources"] == [
        f"bids:fmriprep:sub-02/func/sub-02_task-rest_run-1_{SPACE}_desc-preproc_bold.nii.gz"]


def test_unit_left_out_of_the_group_is_named_once_at_the_end(demo8, tmp_path, capsys):
    """Each run's reason is logged once; the end of the group level names the unit."""
    root = tmp_path / "bids"
    shutil.copytree(demo8.root, root)
    for path in (root / "derivatives" / "fmriprep" / "sub-02").rglob("*_desc-brain_mask.*"):
        path.unlink()
    out = tmp_path / "out"
    assert run_cli(root, out, "--n-parcels", "20", level="group") == 1
    lines = capsys.readouterr().err.splitlines()
    skipped = [line for line in lines if "group level: skipping run: " in line]
    assert len(skipped) == 2
    assert all(line.endswith("no matching *_desc-brain_mask.nii[.gz] next to it")
               for line in skipped)
    assert sum("desc-brain_mask" in line for line in lines) == 2
    assert [line.split("ERROR   ", 1)[1] for line in lines
            if "left out" in line] == ["group level: 1 unit left out: sub-02 (see above)"]
    assert atlas_path(out, 20).is_file()


def test_group_bootstrap_builds_a_consensus_atlas(demo8, demo8_out, tmp_path):
    """--bootstrap at the group level: participants drawn with replacement, one kmeans fit
    per resample, then the consensus (a Ward cut of the bagged features: every parcel is
    one connected piece, which plain kmeans does not ensure)."""
    from bids_parcellate.learn.features import grid_connectivity
    from bids_parcellate.quality import pieces_per_parcel

    out = tmp_path / "out"
    shutil.copytree(demo8_out, out)
    args = ("--method", "kmeans", "--n-parcels", "20", "--no-quality")
    assert run_cli(demo8.root, out, *args, level="group") == 0
    plain = np.asarray(nib.load(atlas_path(out, 20, label="bidsKmeans")).dataobj)
    assert run_cli(demo8.root, out, *args, "--bootstrap", "3", level="group") == 0
    consensus = np.asarray(nib.load(atlas_path(out, 20, label="bidsKmeans")).dataobj)
    sidecar = json.loads(atlas_path(out, 20, ".json", label="bidsKmeans").read_text())
    assert sidecar["Parameters"]["Bootstrap"] == 3
    assert sidecar["Parameters"]["KMeansNInit"] == 3
    mask = np.asarray(demo8.mask_img.dataobj) > 0
    assert not np.array_equal(plain, consensus)
    assert sorted(np.unique(consensus[mask])) == list(range(1, 21))
    assert (pieces_per_parcel(consensus[mask], grid_connectivity(mask)) == 1).all()
    truth = np.asarray(demo8.labels_img.dataobj)[mask]
    assert adjusted_rand_score(truth, consensus[mask]) > 0.75


def check_stability_map(path: Path, labels: np.ndarray, mask: np.ndarray,
                        n_resamples: int) -> np.ndarray:
    """A stat-stability_boldmap: 0 outside the mask, in [0, 1] inside, its sidecar's
    mean and per-parcel means computed from the map and the dseg."""
    values = np.asarray(nib.load(path).dataobj)
    meta = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert meta["NumberOfResamples"] == n_resamples
    assert (values[~mask] == 0).all()
    inside = values[mask]
    assert inside.min() >= 0 and inside.max() <= 1
    assert meta["MeanStability"] == pytest.approx(inside.mean(), abs=1e-4)
    per_parcel = [inside[labels[mask] == k].mean() for k in range(1, labels.max() + 1)]
    np.testing.assert_allclose(meta["ParcelStability"], per_parcel, atol=1e-4)
    return inside


def test_bootstrap_writes_stability_maps_at_both_levels(demo8, tmp_path):
    """--bootstrap: a stat-stability_boldmap per scale beside each dseg and atlas dseg
    (none without it); parcels more stable at the demo's true scale than at a finer one;
    the outputs stay BIDS-valid."""
    out = tmp_path / "out"
    args = ("--method", "kmeans", "--n-parcels", "20", "50", "--no-quality")
    assert run_cli(demo8.root, out, *args, level="participant") == 0
    assert not list(out.rglob("*_boldmap.*"))
    assert run_cli(demo8.root, out, *args, "--bootstrap", "3", "--overwrite",
                   level="participant") == 0
    assert run_cli(demo8.root, out, *args, "--bootstrap", "3", level="group") == 0
    mask = np.asarray(demo8.mask_img.dataobj) > 0
    means = {}
    for scale in (20, 50):
        dseg = out / "sub-01" / "anat" / f"sub-01_{SPACE}_seg-kmeans_scale-{scale}_dseg.nii.gz"
        stab = dseg.with_name(dseg.name.replace("_dseg", "_stat-stability_boldmap"))
        inside = check_stability_map(stab, np.asarray(nib.load(dseg).dataobj), mask, 3)
        means[scale] = inside.mean()
        atlas = atlas_path(out, scale, label="bidsKmeans")
        check_stability_map(atlas.with_name(atlas.name.replace("_dseg",
                                                               "_stat-stability_boldmap")),
                            np.asarray(nib.load(atlas).dataobj), mask, 3)
    assert means[20] > means[50] + 0.05  # 20 true parcels in the demo; 50 splits them
    # the participant report shows each scale's mean stability in its parcellation table
    page = (out / "sub-01.html").read_text()
    assert "bootstrap stability</th>" in page
    for scale in (20, 50):
        assert f'<td class="num">{means[scale]:.2f}</td>' in page
    assert len(list(out.rglob("*_stat-stability_boldmap.nii.gz"))) == 2 * 2 + 2
    assert validate(out)["errors"] == []
