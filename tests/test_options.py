"""nilearn Parcellations' parameter surface: masks, resampling, method knobs, cache."""

from __future__ import annotations

import json
import logging
import os
import warnings
from html import unescape
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nilearn.image import resample_img
from nilearn.masking import compute_brain_mask, compute_epi_mask

from bids_parcellate import denoise
from bids_parcellate.cli import build_parser, config_from_args, main
from bids_parcellate.config import Config, ConfigError, UserError
from bids_parcellate.demo import make_demo_dataset
from bids_parcellate.inputs import bold
from bids_parcellate.learn import features as learn_features
from bids_parcellate.learn import methods
from bids_parcellate.runtime import cache as cache_module

from .conftest import run_cli, sha256_tree, validate

SPACE = "space-MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One participant x two runs at 8 mm (3,666 brain voxels), 60 volumes."""
    root = tmp_path_factory.mktemp("options") / "bids"
    return make_demo_dataset(root, participants=("01",), runs=(1, 2), resolution=8,
                             n_volumes=60, n_true_parcels=20, seed=5, snr=1.0)


@pytest.fixture
def logged():
    """Messages logged by bids_parcellate during the test (its logger does not
    propagate to the root logger once the CLI has set it up, so caplog misses them)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.DEBUG)
    logger = logging.getLogger("bids_parcellate")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def func_dir(demo) -> Path:
    return demo.fmriprep_dir / "sub-01" / "func"


def bold_path(demo, run: int) -> Path:
    return func_dir(demo) / f"sub-01_task-rest_run-{run}_{SPACE}_desc-preproc_bold.nii.gz"


def mask_path(demo, run: int) -> Path:
    return func_dir(demo) / f"sub-01_task-rest_run-{run}_{SPACE}_desc-brain_mask.nii.gz"


def fmriprep_mask(demo) -> nib.Nifti1Image:
    imgs = [nib.load(mask_path(demo, r)) for r in (1, 2)]
    data = np.logical_and(*[np.asarray(i.dataobj) > 0 for i in imgs])
    return nib.Nifti1Image(data.astype(np.uint8), imgs[0].affine)


def dseg(out: Path, scale: int = 20, method: str = "ward", res: str | None = None) -> Path:
    res_part = f"_res-{res}" if res else ""
    return out / "sub-01" / "anat" / (
        f"sub-01_{SPACE}_seg-{method}_scale-{scale}{res_part}_dseg.nii.gz")


def labels_of(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())


# --------------------------------------------------------------------------- options
def parse(*argv) -> Config:
    args = build_parser().parse_args(["/tmp/in", "/tmp/out", "participant", *argv])
    return config_from_args(args, list(argv))


def test_option_parsing():
    config = parse("--target-affine", "4,0,0,-90,0,4,0,-126,0,0,4,-72,0,0,0,1",
                   "--target-shape", "[45, 54, 45]", "--mask-strategy", "epi",
                   "--mask-args", '{"lower_cutoff": 0.3}', "--method", "kmeans",
                   "--kmeans-n-init", "2")
    assert config.target_affine[0] == (4.0, 0.0, 0.0, -90.0)
    assert config.target_shape == (45, 54, 45)
    assert config.mask_args == {"lower_cutoff": 0.3}
    assert config.method_options() == {"n_init": 2, "batch_size": 1024}
    assert parse("--method", "hierarchical_kmeans").method_options() == {
        "n_init": 10, "batch_size": 1000}
    assert parse("--method", "rena", "--rena-scaling", "--rena-n-iter", "3"
                 ).method_options() == {"scaling": True, "n_iter": 3}
    assert parse("--target-affine", "[[3,0,0],[0,3,0],[0,0,3]]").target_affine[2] == (
        0.0, 0.0, 3.0)
    # the cache settings and where the user mask lives do not change the config hash
    assert parse("--no-cache").config_hash() == parse("--cache-limit-gb", "1").config_hash()


@pytest.mark.parametrize("argv, message", [
    (["--mask-args", '{"lower_cutoff": 0.3}'], "not an option of --mask-strategy fmriprep"),
    (["--mask-strategy", "gm-template", "--mask-args", '{"lower_cutoff": 0.3}'],
     "accepted: threshold, connected, opening"),
    (["--mask-strategy", "epi", "--mask-args", "[1]"], "give a JSON object"),
    (["--mask-strategy", "epi", "--mask-args", "{oops"], "not valid JSON"),
    (["--mask-strategy", "gm-template", "--space", "T1w"], "template masks are in MNI152"),
    (["--target-resolution", "4", "--target-affine", "4,0,0,0,4,0,0,0,4"],
     "--target-resolution excludes"),
    (["--target-shape", "10,10,10"], "needs a 4x4 --target-affine"),
    (["--target-affine", "1,2,3"], "give 9 (3x3) or 16 (4x4) numbers"),
    (["--target-affine", "1,0,0,0,0,0,0,0,1"], "singular"),
    (["--target-affine", "4,0,0,0,0,4,0,0,0,0,4,0,0,0,0,1", "--target-shape", "10,0,10"],
     "3 positive integers"),
    (["--rena-n-iter", "3"], "apply to --method rena, not ward"),
    (["--kmeans-n-init", "3"], "applies to --method kmeans or hierarchical_kmeans"),
    (["--method", "kmeans", "--kmeans-batch-size", "0"], "must be >= 1"),
    (["--cache-limit-gb", "-1"], "must be > 0"),
    (["--mask", "/nonexistent/mask.nii.gz"], "file not found"),
])
def test_option_errors_are_one_line(argv, message):
    with pytest.raises(UserError) as info:
        parse(*argv)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    # an invalid value is a usage error (exit code 2); a missing file is bad input (1)
    assert isinstance(info.value, ConfigError) == (argv[0] != "--mask")


def test_method_knobs_are_validated_in_config():
    with pytest.raises(ConfigError, match="--mask-strategy 'brain'"):
        Config(bids_dir=Path("/a"), output_dir=Path("/b"), mask_strategy="brain")


# --------------------------------------------------------------------------- masks
def test_epi_mask_strategy_matches_nilearn(demo, tmp_path):
    out = tmp_path / "out"
    assert run_cli(demo.root, out, "--n-parcels", "20", "--mask-strategy", "epi",
                   "--mask-args", '{"opening": 1}') == 0
    expected = np.logical_and(*[
        np.asarray(compute_epi_mask(nib.load(bold_path(demo, r)), opening=1).dataobj) > 0
        for r in (1, 2)])
    labels = labels_of(dseg(out))
    np.testing.assert_array_equal(labels > 0, expected)
    assert expected.sum() != np.asarray(fmriprep_mask(demo).dataobj).sum()
    meta = sidecar(dseg(out))
    assert meta["Parameters"]["MaskStrategy"] == "epi"
    assert meta["Parameters"]["MaskArgs"] == {"opening": 1}
    assert meta["BrainMask"].startswith("intersection of the masks computed by nilearn's "
                                        "compute_epi_mask")
    assert meta["BrainMask"].endswith(f"{int(expected.sum())} voxels")


def test_grey_matter_template_within_fmriprep_mask(demo, tmp_path):
    out = tmp_path / "out"
    assert run_cli(demo.root, out, "--n-parcels", "20", "--mask-strategy", "gm-template",
                   "--mask-args", '{"opening": 0, "threshold": 0.3}') == 0
    brain = fmriprep_mask(demo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = np.asarray(compute_brain_mask(brain, mask_type="gm", opening=0,
                                           threshold=0.3).dataobj) > 0
    expected = gm & (np.asarray(brain.dataobj) > 0)
    labels = labels_of(dseg(out))
    np.testing.assert_array_equal(labels > 0, expected)
    # grey matter is a strict subset of the brain mask
    assert 0.3 * (np.asarray(brain.dataobj) > 0).sum() < expected.sum() < (
        np.asarray(brain.dataobj) > 0).sum()
    assert sorted(np.unique(labels)) == list(range(21))
    # the report shows the mask, and the methods text says which one
    record = json.loads(next((out / "sub-01" / "figures").glob(
        "*_desc-summary_report.json")).read_text())
    assert record["grid"]["mask"].startswith("MNI152 grey-matter template mask of nilearn")
    assert record["grid"]["n_voxels"] == int(expected.sum())
    assert (out / record["figures"]["mask"]["file"]).stat().st_size > 3000
    assert "desc-brain_mask.svg" in record["figures"]["mask"]["file"]
    html = unescape((out / "sub-01.html").read_text())
    assert "Brain mask of sub-01" in html and record["grid"]["mask"] in html
    methods = (out / "logs" / "CITATION.md").read_text()
    assert "Nilearn's MNI152 grey-matter template mask (compute_brain_mask)" in methods
    assert "(parameters opening=0, threshold=0.3)" in methods


def test_template_mask_eroded_by_default_opening_warns(demo, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(demo.root, out, "--n-parcels", "5", "--mask-strategy", "wm-template") == 0
    err = capsys.readouterr().err
    assert "--mask-strategy wm-template keeps" in err and "opening" in err


def test_user_mask_on_another_grid_is_resampled_and_intersected(demo, tmp_path, capsys):
    """A left-hemisphere box given on a 4 mm grid: nearest-neighbour resampling to the
    8 mm BOLD grid, intersected with the runs' brain masks."""
    brain = fmriprep_mask(demo)
    affine4 = brain.affine.copy()
    affine4[:3, :3] /= 2
    shape4 = tuple(2 * n for n in brain.shape)
    world_x = (np.arange(shape4[0]) * affine4[0, 0] + affine4[0, 3])
    user = np.zeros(shape4, dtype=np.uint8)
    user[world_x < 0] = 1  # left of the midline
    user_path = tmp_path / "left.nii.gz"
    nib.save(nib.Nifti1Image(user, affine4), user_path)
    out = tmp_path / "out"
    assert run_cli(demo.root, out, "--n-parcels", "20", "--mask", user_path) == 0
    resampled = np.asarray(resample_img(
        nib.load(user_path), target_affine=brain.affine, target_shape=brain.shape,
        interpolation="nearest", force_resample=True, copy_header=True).dataobj) > 0
    expected = resampled & (np.asarray(brain.dataobj) > 0)
    labels = labels_of(dseg(out))
    np.testing.assert_array_equal(labels > 0, expected)
    assert 0.4 < expected.sum() / (np.asarray(brain.dataobj) > 0).sum() < 0.6
    messages = capsys.readouterr().err.splitlines()
    assert any(f"{int(resampled.sum())} voxels in the mask" in m and "nearest" in m
               for m in messages), messages
    assert any(f"keeps {int(expected.sum())} of the "
               f"{int((np.asarray(brain.dataobj) > 0).sum())} brain-mask voxels" in m
               for m in messages), messages
    meta = sidecar(dseg(out))
    assert meta["Parameters"]["Mask"] == "left.nii.gz"
    assert user_path.as_uri() in meta["Sources"]


def test_target_grid_outside_the_data_is_an_error(demo, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(demo.root, out, "--n-parcels", "20", "--target-affine",
                   "10,0,0,900,0,10,0,900,0,0,10,900,0,0,0,1", "--target-shape",
                   "5,5,5") == 1
    assert "does not contain any of the data" in capsys.readouterr().err
    assert not out.exists() or not list(out.rglob("*_dseg.nii.gz"))


def test_user_mask_errors(demo, tmp_path, capsys):
    brain = fmriprep_mask(demo)
    empty = tmp_path / "outside.nii.gz"
    far = brain.affine.copy()
    far[:3, 3] += 1000  # nowhere near the BOLD field of view
    nib.save(nib.Nifti1Image(np.ones(brain.shape, dtype=np.uint8), far), empty)
    out = tmp_path / "out"
    assert run_cli(demo.root, out, "--n-parcels", "20", "--mask", empty) == 1
    assert "no voxel left on the BOLD grid" in capsys.readouterr().err
    prob = tmp_path / "probabilities.nii.gz"
    nib.save(nib.Nifti1Image(np.linspace(0, 1, brain.dataobj.size).reshape(brain.shape),
                             brain.affine), prob)
    assert run_cli(demo.root, out, "--n-parcels", "20", "--mask", prob) == 1
    assert "--mask" in capsys.readouterr().err
    assert not list(out.rglob("*_dseg.nii.gz"))


def test_disconnected_mask_warns_once(logged):
    mask = np.zeros((10, 6, 3), dtype=bool)
    mask[:4] = True
    mask[6:] = True  # two slabs, two voxels apart
    rng = np.random.default_rng(0)
    features = rng.standard_normal((int(mask.sum()), 10)).astype(np.float32)
    labels = methods.parcellate(features, mask, "ward", [2, 5, 10], random_state=0)
    warned = [m for m in logged if "disconnected" in m]
    assert len(warned) == 1, warned
    assert "2 disconnected pieces" in warned[0] and "sizes 72, 72 voxels" in warned[0]
    assert "nilearn issue #1750" in warned[0]
    assert sorted(np.unique(labels[5])) == [1, 2, 3, 4, 5]
    logged.clear()
    methods.parcellate(features, mask, "kmeans", [5], random_state=0)
    assert not [m for m in logged if "disconnected" in m]
    np.testing.assert_array_equal(methods.mask_pieces(mask), [72, 72])


def test_disconnected_user_mask_warns_once_per_unit(demo, tmp_path, capsys):
    """The unit's fit reports the pieces; its bootstrap resamples, final cuts and the
    quality figures' half fits do not repeat it."""
    brain = fmriprep_mask(demo)
    data = np.asarray(brain.dataobj).astype(bool)
    cut = int(np.argwhere(data)[:, 1].mean())
    data[:, cut - 1:cut + 1] = False  # a 16 mm gap: two pieces
    user = tmp_path / "two_pieces.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.uint8), brain.affine), user)
    assert methods.mask_pieces(data).size == 2
    assert run_cli(demo.root, tmp_path / "out", "--n-parcels", "10", "--mask", user,
                   "--bootstrap", "2") == 0
    warned = [m for m in capsys.readouterr().err.splitlines() if "disconnected pieces" in m]
    assert len(warned) == 1, warned
    assert "2 disconnected pieces" in warned[0]


# --------------------------------------------------------------------------- resampling
def test_target_resolution_resamples_everything(demo, tmp_path):
    out = tmp_path / "out"
    assert run_cli(demo.root, out, "--n-parcels", "20", "--target-resolution", "12") == 0
    path = dseg(out, res="12mm")
    img = nib.load(path)
    brain = fmriprep_mask(demo)
    # the grid nilearn makes for a 3x3 target affine; the mask resampled nearest
    expected = resample_img(brain, target_affine=np.diag([12.0, 12.0, 12.0]),
                            interpolation="nearest", force_resample=True, copy_header=True)
    assert img.shape == expected.shape
    np.testing.assert_allclose(img.affine, expected.affine)
    np.testing.assert_array_equal(labels_of(path) > 0, np.asarray(expected.dataobj) > 0)
    np.testing.assert_allclose(img.header.get_zooms(), (12, 12, 12))
    meta = sidecar(path)
    assert meta["Resolution"].startswith("res-12mm: BOLD and masks resampled from 8 mm")
    assert ("resampled to 12 mm isotropic voxels with Nilearn's resample_img"
            in (out / "logs" / "CITATION.md").read_text())
    assert meta["Parameters"]["TargetResolution"] == 12
    ts = list((out / "sub-01" / "func").glob("*_res-12mm_stat-mean_timeseries.tsv"))
    assert len(ts) == 2
    ts_meta = json.loads(ts[0].with_suffix(".json").read_text())
    assert ts_meta["Parcellation"].endswith("_scale-20_res-12mm_dseg.nii.gz")


def test_target_affine_and_shape(demo, tmp_path):
    affine = np.array([[10.0, 0, 0, -80], [0, 10, 0, -110], [0, 0, 10, -60], [0, 0, 0, 1]])
    out = tmp_path / "out"
    assert run_cli(demo.root, out, "--n-parcels", "20", "--target-affine",
                   json.dumps(affine.tolist()), "--target-shape", "17,21,18",
                   "--mask-strategy", "background") == 0
    img = nib.load(dseg(out, res="10mm"))
    assert img.shape == (17, 21, 18)
    np.testing.assert_allclose(img.affine, affine)
    assert (labels_of(dseg(out, res="10mm")) > 0).sum() > 1000
    assert validate(out)["errors"] == []


# --------------------------------------------------------------------------- method knobs
def test_rena_n_iter_changes_cluster_counts():
    mask = np.ones((12, 12, 4), dtype=bool)
    data = np.random.default_rng(0).standard_normal((60, int(mask.sum()))).astype(np.float32)
    features = learn_features.build_features([data], mask, np.eye(4), fwhm=0, n_components=60)
    default = methods.parcellate(features, mask, "rena", [4], random_state=0)
    assert default[4].max() == 4
    # one iteration of nearest-neighbour agglomeration cannot get down to 4 clusters
    once = methods.parcellate(features, mask, "rena", [4], random_state=0, n_iter=1)
    assert once[4].max() > 4


class _Spy:
    """Records the keyword arguments an estimator class is built with."""

    def __init__(self, cls):
        self.cls = cls
        self.calls: list[dict] = []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.cls(*args, **kwargs)


def test_knobs_reach_the_estimators(demo, tmp_path, monkeypatch):
    import nilearn.regions
    import sklearn.cluster

    rena = _Spy(nilearn.regions.ReNA)
    monkeypatch.setattr(nilearn.regions, "ReNA", rena)
    out = tmp_path / "out"
    assert run_cli(demo.root, out, "--no-quality", "--n-parcels", "20", "--method", "rena",
                   "--rena-scaling", "--rena-n-iter", "7") == 0
    assert [(c["scaling"], c["n_iter"]) for c in rena.calls] == [(True, 7)]
    meta = sidecar(dseg(out, method="rena"))
    assert meta["Parameters"]["RenaScaling"] is True and meta["Parameters"]["RenaNIter"] == 7
    assert "ReNA ran 7 iterations with feature scaling." in (
        out / "logs" / "CITATION.md").read_text()

    kmeans = _Spy(sklearn.cluster.MiniBatchKMeans)
    monkeypatch.setattr(sklearn.cluster, "MiniBatchKMeans", kmeans)
    assert run_cli(demo.root, tmp_path / "k", "--no-quality", "--n-parcels", "20",
                   "--method", "kmeans",
                   "--kmeans-n-init", "2", "--kmeans-batch-size", "256") == 0
    assert [(c["n_init"], c["batch_size"]) for c in kmeans.calls] == [(2, 256)]
    hkmeans = _Spy(nilearn.regions.HierarchicalKMeans)
    monkeypatch.setattr(nilearn.regions, "HierarchicalKMeans", hkmeans)
    assert run_cli(demo.root, tmp_path / "h", "--no-quality", "--n-parcels", "20", "--method",
                   "hierarchical_kmeans") == 0
    assert [(c["n_init"], c["batch_size"]) for c in hkmeans.calls] == [(10, 1000)]


# --------------------------------------------------------------------------- cache
@pytest.fixture
def counters(monkeypatch):
    """Counts BOLD reads (a file is opened by ``open_bold`` on its own grid, or by the
    resampling / data-mask reader) and trees built (scikit-learn's, or ward's own)."""
    from bids_parcellate.inputs import grids
    from bids_parcellate.learn import ward

    counts = {"bold": 0, "tree": 0}

    def counting(function, what):
        def wrapper(*args, **kwargs):
            counts[what] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(denoise, "open_bold", counting(bold.open_bold, "bold"))
    monkeypatch.setattr(grids.BoldReader, "__call__",
                        counting(grids.BoldReader.__call__, "bold"))
    monkeypatch.setattr(methods, "_tree", counting(methods._tree, "tree"))
    monkeypatch.setattr(ward, "supervoxel_ward_tree",
                        counting(ward.supervoxel_ward_tree, "tree"))

    def take() -> dict:
        out = dict(counts)
        counts.update(bold=0, tree=0)
        return out

    return take


def test_cache_reused_for_new_scales_and_invalidated(tmp_path, counters):
    demo = make_demo_dataset(tmp_path / "bids", participants=("01",), runs=(1, 2),
                             resolution=8, n_volumes=40, seed=2)
    work, out = tmp_path / "work", tmp_path / "out"
    assert run_cli(demo.root, out, "-w", work, "--no-quality", "--n-parcels", "20") == 0
    assert counters() == {"bold": 2, "tree": 1}
    first = dseg(out).read_bytes()

    # new scale: cleaned data, features and tree come from the cache, no BOLD is read
    # (the same OUTPUT_DIR with other parameters needs --overwrite)
    assert run_cli(demo.root, out, "-w", work, "--no-quality", "--n-parcels", "20", "30",
                   "--overwrite") == 0
    assert counters() == {"bold": 0, "tree": 0}
    assert dseg(out).read_bytes() == first
    assert dseg(out, 30).is_file()
    # ... and gives the same bytes as a run without the cache
    fresh = tmp_path / "fresh"
    assert run_cli(demo.root, fresh, "--no-cache", "--no-quality", "--n-parcels", "20", "30") == 0
    assert counters() == {"bold": 2, "tree": 1}
    assert sha256_tree(fresh) == sha256_tree(out)
    # with the quality figures: cleaned data and tree from the cache too (the two
    # split-half fits build their own trees)
    assert run_cli(demo.root, tmp_path / "q", "-w", work, "--n-parcels", "20") == 0
    assert counters() == {"bold": 0, "tree": 2}
    assert dseg(tmp_path / "q").read_bytes() == first

    # another confound strategy: everything is recomputed
    assert run_cli(demo.root, tmp_path / "o2", "-w", work, "--no-quality", "--n-parcels", "30",
                   "--denoise-strategy", "scrubbing") == 0
    assert counters() == {"bold": 2, "tree": 1}
    # smoothing changes the features and the tree, not the cleaned data
    assert run_cli(demo.root, tmp_path / "o3", "-w", work, "--no-quality", "--n-parcels", "30",
                   "--smoothing-fwhm", "6") == 0
    assert counters() == {"bold": 0, "tree": 1}
    # a modified input file (new modification time) invalidates the unit
    confounds = func_dir(demo) / "sub-01_task-rest_run-2_desc-confounds_timeseries.tsv"
    stat = confounds.stat()
    os.utime(confounds, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert run_cli(demo.root, tmp_path / "o4", "-w", work, "--no-quality",
                   "--n-parcels", "30") == 0
    assert counters() == {"bold": 2, "tree": 1}
    # --no-cache neither reads nor writes the cache
    entries = sorted(p.name for p in (work / "cache").glob("*/*"))
    assert run_cli(demo.root, tmp_path / "o5", "-w", work, "--no-cache",
                   "--no-quality", "--n-parcels", "30") == 0
    assert counters() == {"bold": 2, "tree": 1}
    assert sorted(p.name for p in (work / "cache").glob("*/*")) == entries


def test_cache_with_resampling_and_data_mask(tmp_path, counters, capsys):
    """EPI masks (computed on the input grid) x a user mask, resampled to 10 mm; then a
    rerun with a new scale reads nothing."""
    demo = make_demo_dataset(tmp_path / "bids", participants=("01",), runs=(1, 2),
                             resolution=8, n_volumes=40, seed=3)
    brain = fmriprep_mask(demo)
    front = np.zeros(brain.shape, dtype=np.uint8)
    front[:, brain.shape[1] // 2:] = 1
    user_path = tmp_path / "front.nii.gz"
    nib.save(nib.Nifti1Image(front, brain.affine), user_path)
    work, out = tmp_path / "work", tmp_path / "out"
    args = ["-w", work, "--mask-strategy", "epi", "--target-resolution", "10",
            "--mask", user_path]
    assert run_cli(demo.root, out, *args, "--no-quality", "--n-parcels", "10") == 0
    assert counters() == {"bold": 2, "tree": 1}
    epi = np.logical_and(*[
        np.asarray(compute_epi_mask(nib.load(bold_path(demo, r))).dataobj) > 0
        for r in (1, 2)])
    expected = resample_img(nib.Nifti1Image((epi & (front > 0)).astype(np.uint8),
                                            brain.affine),
                            target_affine=np.diag([10.0, 10.0, 10.0]),
                            interpolation="nearest", force_resample=True, copy_header=True)
    found = nib.load(dseg(out, 10, res="10mm"))
    np.testing.assert_allclose(found.affine, expected.affine)
    np.testing.assert_array_equal(np.asarray(found.dataobj) > 0,
                                  np.asarray(expected.dataobj) > 0)
    assert "--mask keeps" in capsys.readouterr().err
    out = tmp_path / "again"
    assert run_cli(demo.root, out, *args, "--no-quality", "--n-parcels", "10", "15") == 0
    assert counters() == {"bold": 0, "tree": 0}
    meta10, meta15 = sidecar(dseg(out, 10, res="10mm")), sidecar(dseg(out, 15, res="10mm"))
    assert meta10["BrainMask"] == meta15["BrainMask"]
    assert meta10["Resolution"] == meta15["Resolution"]
    assert (labels_of(dseg(out, 10, res="10mm")) > 0).sum() == (
        labels_of(dseg(out, 15, res="10mm")) > 0).sum()
    report = validate(out)
    assert report["errors"] == [], report["errors"]


def _entry(store: cache_module.Cache, key: str, megabytes: float) -> None:
    store.store("features", key, {"value": np.zeros(int(megabytes * 2**20) // 4,
                                                     dtype=np.float32)})


def test_cache_evicts_least_recently_used(tmp_path):
    root = tmp_path / "cache"
    _entry(cache_module.Cache(root, limit_gb=1), "a", 1)
    _entry(cache_module.Cache(root, limit_gb=1), "b", 1)
    old = 1_000_000_000
    os.utime(root / "features" / "a", (old, old))
    os.utime(root / "features" / "b", (old + 10, old + 10))
    reader = cache_module.Cache(root, limit_gb=1)
    assert reader.load("features", "a") is not None  # "a" is now the most recent
    small = cache_module.Cache(root, limit_gb=2.5 / 1024)  # 2.5 MB
    _entry(small, "c", 1)
    assert sorted(p.name for p in (root / "features").iterdir()) == ["a", "c"]
    assert small.size_bytes() <= 2.5 * 2**20


def _store_same_entry(root: str, barrier) -> None:
    store = cache_module.Cache(Path(root), limit_gb=1)
    value = np.arange(2_000_000, dtype=np.float32)
    barrier.wait()  # every process writes at the same moment
    store.store("features", "same", {"value": value})
    found = store.load("features", "same")
    assert found is not None and np.array_equal(found[1]["value"], value)


def test_cache_concurrent_writers(tmp_path):
    """Processes storing the same entry at once leave one complete entry, no litter."""
    import multiprocessing

    root = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    procs = [context.Process(target=_store_same_entry, args=(str(root), barrier))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert [p.name for p in (root / "features").iterdir()] == ["same"]
    found = cache_module.Cache(root).load("features", "same")
    np.testing.assert_array_equal(found[1]["value"], np.arange(2_000_000, dtype=np.float32))


def test_cache_keys_cover_every_parameter():
    """A parameter not listed as unused by a stage is in its key (safe by default)."""
    base = Config(bids_dir=Path("/a"), output_dir=Path("/b"))
    key = cache_module.features_key(base, "x")
    for name, value in [("smoothing_fwhm", 6.0), ("n_components", 50), ("detrend", False),
                        ("mask_strategy", "epi"), ("target_resolution", 4.0),
                        ("feature_weighting", 0.5)]:
        changed = Config(bids_dir=Path("/a"), output_dir=Path("/b"), **{name: value})
        assert cache_module.features_key(changed, "x") != key, name
    for name, value in [("n_parcels", (7,)), ("random_seed", 3), ("standardize", "zscore")]:
        changed = Config(bids_dir=Path("/a"), output_dir=Path("/b"), **{name: value})
        assert cache_module.features_key(changed, "x") == key, name


def test_unwritable_cache_only_warns(tmp_path, logged):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    store = cache_module.Cache(blocker)
    assert store.array("features", "k", lambda: np.ones(3)).tolist() == [1, 1, 1]
    assert any("cache: cannot write" in m for m in logged)


def test_cache_store_loses_rename_race(tmp_path, monkeypatch, logged):
    """Another job installs the same entry between our write and our rename: our copy
    is dropped, theirs is kept and nothing else is left behind."""
    root = tmp_path / "cache"
    theirs = cache_module.Cache(root)
    rename = os.rename

    def other_job_first(src, dst):
        monkeypatch.setattr(cache_module.os, "rename", rename)
        theirs.store("features", "k", {"value": np.full(10, 2.0)})
        return rename(src, dst)  # fails: the folder exists and is not empty

    monkeypatch.setattr(cache_module.os, "rename", other_job_first)
    ours = cache_module.Cache(root)
    ours.store("features", "k", {"value": np.full(10, 1.0)})
    assert [p.name for p in (root / "features").iterdir()] == ["k"]
    assert ours.load("features", "k")[1]["value"].tolist() == [2.0] * 10
    assert any("stored by another job meanwhile" in m for m in logged)
    assert not any("cannot write" in m for m in logged)


@pytest.mark.slow
def test_real_run_resampled_epi_mask_and_cache(tmp_path, counters):
    """The real studyforrest run (4 mm): EPI mask, resampled to 6 mm, then a rerun with
    a new scale from the cache; outputs validate."""
    from .conftest import SHARED_DATA

    work, out = tmp_path / "work", tmp_path / "out"
    args = ["-w", work, "--mask-strategy", "epi", "--target-resolution", "6", "--no-quality"]
    assert run_cli(SHARED_DATA, out, *args, "--n-parcels", "100") == 0
    assert counters() == {"bold": 1, "tree": 1}
    out = tmp_path / "again"
    assert run_cli(SHARED_DATA, out, *args, "--n-parcels", "100", "200") == 0
    assert counters() == {"bold": 0, "tree": 0}
    anat = out / "sub-sf02" / "anat"
    img = nib.load(next(anat.glob("*_seg-ward_scale-200_res-6mm_dseg.nii.gz")))
    np.testing.assert_allclose(img.header.get_zooms(), (6, 6, 6))
    assert len(np.unique(np.asarray(img.dataobj))) == 201
    assert validate(out)["errors"] == []


def test_group_level_follows_mask_and_grid_options(demo8, tmp_path):
    """Both levels with --target-resolution and a template mask: summaries, atlas and
    group timeseries on the 12 mm grid; the group level computing the summaries itself
    (from the BOLD) gives the same atlas as reusing the participant level's."""
    args = ["--n-parcels", "10", "--target-resolution", "12", "--mask-strategy",
            "whole-brain-template", "--mask-args", '{"opening": 0}']
    both = tmp_path / "both"
    assert main([str(demo8.root), str(both), "participant", "group", *args]) == 0
    tpl = both / "tpl-MNI152NLin2009cAsym"
    atlas = tpl / "tpl-MNI152NLin2009cAsym_atlas-bidsWard_scale-10_res-12mm_dseg.nii.gz"
    img = nib.load(atlas)
    np.testing.assert_allclose(img.header.get_zooms(), (12, 12, 12))
    assert json.loads(atlas.with_name(atlas.name.replace(".nii.gz", ".json")).read_text())[
        "Resolution"].startswith("res-12mm: the input BOLD resampled")
    participant = nib.load(both / "sub-01" / "anat" / (
        f"sub-01_{SPACE}_seg-ward_scale-10_res-12mm_dseg.nii.gz"))
    assert participant.shape == img.shape
    summaries = sorted(both.glob("sub-*/func/*_res-12mm_desc-summary_features.npz"))
    assert len(summaries) == 2
    ts = sorted(both.glob("sub-*/func/*_atlas-bidsWard_scale-10_res-12mm_stat-mean_"
                          "timeseries.tsv"))
    assert len(ts) == 4
    assert validate(both)["errors"] == []
    alone = tmp_path / "alone"
    assert main([str(demo8.root), str(alone), "group", *args]) == 0
    assert (alone / atlas.relative_to(both)).read_bytes() == atlas.read_bytes()


def test_cache_shared_by_worker_processes(demo8, tmp_path):
    """--nprocs 2 runs the two participants in worker processes that share the cache."""
    work = tmp_path / "work"
    assert run_cli(demo8.root, tmp_path / "a", "-w", work, "--nprocs", "2",
                   "--n-parcels", "20") == 0
    assert len(list((work / "cache" / "denoised").iterdir())) == 2
    assert len(list((work / "cache" / "tree").iterdir())) == 2
    out = tmp_path / "b"
    assert run_cli(demo8.root, out, "-w", work, "--nprocs", "2", "--n-parcels", "20",
                   "30") == 0
    log = "\n".join(p.read_text() for p in (out / "logs").glob("*.log"))
    assert log.count("(cleaned data from the cache)") == 4  # 2 participants x 2 runs
    assert len(list((work / "cache" / "tree").iterdir())) == 2
    assert (dseg(tmp_path / "a").read_bytes() == dseg(out).read_bytes())


def test_cache_with_network_maps(tmp_path, counters):
    """dictlearning reuses the cleaned data of an earlier invocation (no BOLD read) and
    gives the same outputs as without the cache."""
    demo = make_demo_dataset(tmp_path / "bids", participants=("01",), runs=(1,),
                             resolution=8, n_volumes=60, seed=4)
    work = tmp_path / "work"
    args = ["--method", "canica", "--n-maps", "5"]
    assert run_cli(demo.root, tmp_path / "a", "-w", work, *args) == 0
    assert counters()["bold"] == 1
    assert run_cli(demo.root, tmp_path / "b", "-w", work, *args, "6") == 0
    assert counters()["bold"] == 0
    assert run_cli(demo.root, tmp_path / "c", *args, "6") == 0
    cached, fresh = sha256_tree(tmp_path / "b"), sha256_tree(tmp_path / "c")
    assert cached and cached == fresh


def test_feature_weighting_reaches_the_features_and_the_sidecar(demo, tmp_path):
    """--feature-weighting 0 whitens the features (every component weighs the same): the
    parcels change, the sidecar says so, and the summary is built the same way."""
    plain, whitened = tmp_path / "plain", tmp_path / "whitened"
    args = ("--n-parcels", "20", "--no-quality", "--no-cache")
    assert run_cli(demo.root, plain, *args) == 0
    assert run_cli(demo.root, whitened, *args, "--feature-weighting", "0") == 0
    assert sidecar(dseg(plain))["Parameters"]["FeatureWeighting"] == 1.0
    assert sidecar(dseg(whitened))["Parameters"]["FeatureWeighting"] == 0.0
    assert not np.array_equal(labels_of(dseg(plain)), labels_of(dseg(whitened)))
    (summary,) = (whitened / "sub-01" / "func").glob("*_desc-summary_features.npz")
    features = np.load(summary)["features"].astype(np.float64)
    norms = np.linalg.norm(features, axis=0)
    np.testing.assert_allclose(norms, norms[0], rtol=1e-3)  # U: unit columns
