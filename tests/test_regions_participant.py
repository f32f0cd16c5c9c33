"""End-to-end: dictlearning / canica regions, split parcels and connectomes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.connectome import ConnectivityMeasure
from scipy import ndimage

from .conftest import run_cli, sha256_tree, validate
from .network_data import network_dataset

SPACE = "space-MNI152NLin2009cAsym"
MEASURES = {"correlation": "correlation", "partial correlation": "partialcorrelation",
            "covariance": "covariance", "precision": "precision"}


def anat(out: Path, sub: str, seg: str, scale: int, suffix: str, ext: str) -> Path:
    return out / f"sub-{sub}" / "anat" / f"sub-{sub}_{SPACE}_seg-{seg}_scale-{scale}_{suffix}{ext}"


def func(out: Path, sub: str, run: int, seg: str, scale: int, tail: str) -> Path:
    return out / f"sub-{sub}" / "func" / (
        f"sub-{sub}_task-rest_run-{run}_{SPACE}_seg-{seg}_scale-{scale}_{tail}")


def assert_contiguous_and_large(labels: np.ndarray, voxel_mm3: float, min_size: float):
    for lab in range(1, int(labels.max()) + 1):
        assert ndimage.label(labels == lab)[1] == 1, lab
        assert (labels == lab).sum() * voxel_mm3 > min_size, lab


DICT_ARGS = ("--participant-label", "01", "--method", "dictlearning", "--n-maps", "4",
             "--connectivity", "correlation", "partial_correlation", "covariance",
             "precision")


@pytest.fixture(scope="module")
def dict_out(demo8, tmp_path_factory):
    out = tmp_path_factory.mktemp("dictlearning") / "out"
    assert run_cli(demo8.root, out, *DICT_ARGS) == 0
    return out


def test_dictlearning_outputs(dict_out):
    dseg = anat(dict_out, "01", "dictlearning", 4, "dseg", ".nii.gz")
    labels = np.asarray(nib.load(dseg).dataobj)
    maps_img = nib.load(anat(dict_out, "01", "dictlearning", 4, "probseg", ".nii.gz"))
    maps = maps_img.get_fdata()
    assert maps.shape == labels.shape + (4,)
    table = pd.read_csv(dseg.with_name(dseg.name.replace(".nii.gz", ".tsv")), sep="\t")
    assert list(table.columns[:3]) == ["index", "name", "component"]
    n = int(labels.max())
    assert n >= 4 and table["index"].tolist() == list(range(1, n + 1))
    assert set(table["component"]) <= {1, 2, 3, 4}
    voxel_mm3 = abs(np.linalg.det(maps_img.affine[:3, :3]))
    assert_contiguous_and_large(labels, voxel_mm3, 1350.0)
    for row in table.itertuples():
        inside = labels == row.index
        assert row.n_voxels == inside.sum()
        # each region lies where the map it came from is non-zero
        assert (maps[..., row.component - 1][inside] != 0).all(), row
    sidecar = json.loads(dseg.with_name(dseg.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["NumberOfParcels"] == n and sidecar["NumberOfMaps"] == 4
    assert sidecar["component"]["Description"].startswith("Network map")
    # 2 runs x 78 kept volumes: alpha = 10 sqrt(156 / 3360)
    assert sidecar["Parameters"]["DictLearningAlpha"] == pytest.approx(2.1547, abs=1e-3)
    probseg = json.loads(anat(dict_out, "01", "dictlearning", 4, "probseg", ".json")
                         .read_text())
    assert probseg["NumberOfMaps"] == 4
    assert sum(probseg["RegionsPerMap"]) == n
    for run in (1, 2):
        ts = pd.read_csv(func(dict_out, "01", run, "dictlearning", 4,
                              "stat-mean_timeseries.tsv"), sep="\t", na_values="n/a")
        assert list(ts.columns) == table["name"].tolist()


def test_connectomes_equal_nilearn_on_written_timeseries(dict_out):
    for run in (1, 2):
        ts = pd.read_csv(func(dict_out, "01", run, "dictlearning", 4,
                              "stat-mean_timeseries.tsv"), sep="\t", na_values="n/a")
        kept = ts.dropna().to_numpy()
        assert 0 < len(kept) < len(ts)  # censored volumes excluded
        for kind, label in MEASURES.items():
            path = func(dict_out, "01", run, "dictlearning", 4, f"meas-{label}_relmat.tsv")
            frame = pd.read_csv(path, sep="\t", index_col="node")
            assert list(frame.columns) == list(ts.columns) == list(frame.index)
            expected = ConnectivityMeasure(kind=kind).fit_transform([kept])[0]
            # the TSVs hold 8 significant digits
            np.testing.assert_allclose(frame.to_numpy(), expected, rtol=1e-5, atol=1e-6)
            sidecar = json.loads(path.with_suffix(".json").read_text())
            for key in ("Measure", "Weighted", "Directed", "ValidDiagonal", "StorageFormat"):
                assert key in sidecar
            assert sidecar["Directed"] is False and sidecar["StorageFormat"] == "Full"
            assert sidecar["ValidDiagonal"] is (kind in ("covariance", "precision"))
            assert sidecar["NumberOfVolumes"] == len(kept)
            assert (dict_out / sidecar["Timeseries"]).is_file()
    assert "*_relmat.tsv" in (dict_out / ".bidsignore").read_text()


def test_report_shows_the_connectome(dict_out):
    figures = dict_out / "sub-01" / "figures"
    record = json.loads(next(figures.glob("*_desc-summary_report.json")).read_text())
    entry = record["figures"]["connectome"]
    assert entry["measure"] == "correlation" and entry["n_runs"] == 2
    svg = (dict_out / entry["file"]).read_bytes()
    assert svg.startswith(b"<svg") and b"scale 4:" in svg
    html = (dict_out / "sub-01.html").read_text()
    assert "Connectome of sub-01" in html
    methods = (dict_out / "logs" / "CITATION.md").read_text()
    assert "decomposed into 4 network maps by online dictionary learning (Mensch et al., " \
           "2016)" in methods
    assert "sparsity parameter 2.15" in methods and "region extractor" in methods
    assert "correlation, partial correlation, covariance and precision matrices" in methods
    assert "100, 200 and 400" not in methods  # the clustering scales do not apply


def test_dictlearning_outputs_validate_and_rerun_identically(demo8, dict_out, tmp_path):
    report = validate(dict_out)
    assert report["errors"] == [], report["errors"]
    again = tmp_path / "again"
    assert run_cli(demo8.root, again, *DICT_ARGS) == 0
    first = sha256_tree(dict_out)
    assert first == sha256_tree(again)
    # dseg (nii, tsv) + probseg + 2 runs x (timeseries + 4 relmats) + the quality table
    # of the unit and the group quality table
    assert len(first) == 3 + 2 * 5 + 2


def test_canica_regions_recover_known_networks(tmp_path):
    """BOLD with three bilateral networks of two 3x3x3 blobs written into a demo layout."""
    demo, layout = network_dataset(tmp_path / "bids", ("01",), seed=2)
    mask = layout.mask
    out = tmp_path / "out"
    assert run_cli(demo.root, out, "--denoise-strategy", "none", "--method", "canica",
                   "--n-maps", "3", "--smoothing-fwhm", "0") == 0
    labels = np.asarray(nib.load(anat(out, "01", "canica", 3, "dseg", ".nii.gz")).dataobj)
    table = pd.read_csv(anat(out, "01", "canica", 3, "dseg", ".tsv"), sep="\t")
    component = dict(zip(table["index"], table["component"], strict=True))
    assert_contiguous_and_large(labels, 512.0, 1350.0)
    blobs = np.zeros(mask.shape, dtype=np.int32)
    blobs[mask] = layout.blobs
    found = {}
    for blob in range(1, 7):
        region = np.bincount(labels[blobs == blob]).argmax()
        assert region > 0 and (labels[blobs == blob] == region).all()
        found[blob] = (region, component[region])
    # six distinct regions, the two blobs of a network share their component
    assert len({r for r, _ in found.values()}) == 6
    by_network = {}
    for blob, (_, comp) in found.items():
        by_network.setdefault(layout.network_of_blob[blob - 1], set()).add(comp)
    assert all(len(c) == 1 for c in by_network.values())
    assert len(set().union(*by_network.values())) == 3
    assert validate(out)["errors"] == []


def test_split_disconnected_pieces_map_back_to_kmeans_parcels(demo8, tmp_path):
    args = ("--participant-label", "02", "--method", "kmeans", "--n-parcels", "20")
    assert run_cli(demo8.root, tmp_path / "plain", *args) == 0
    assert run_cli(demo8.root, tmp_path / "split", *args, "--split-disconnected",
                   "--min-region-size", "1000") == 0
    plain = np.asarray(nib.load(anat(tmp_path / "plain", "02", "kmeans", 20, "dseg",
                                     ".nii.gz")).dataobj)
    split_img = nib.load(anat(tmp_path / "split", "02", "kmeans", 20, "dseg", ".nii.gz"))
    split = np.asarray(split_img.dataobj)
    table = pd.read_csv(anat(tmp_path / "split", "02", "kmeans", 20, "dseg", ".tsv"),
                        sep="\t")
    assert list(table.columns[:3]) == ["index", "name", "original_parcel"]
    assert_contiguous_and_large(split, 512.0, 1000.0)
    # k-means parcels at 8 mm are not all contiguous: some are split
    n_pieces_plain = sum(ndimage.label(plain == k)[1] for k in range(1, 21))
    assert len(table) > 20 and n_pieces_plain > 20
    # mapping every piece back to its original parcel gives the unsplit parcellation
    original = np.concatenate([[0], table["original_parcel"].to_numpy()])[split]
    kept = split > 0
    np.testing.assert_array_equal(original[kept], plain[kept])
    # only pieces of at most 1000 mm3 (one voxel here) were dropped
    dropped = (plain > 0) & ~kept
    assert dropped.sum() <= n_pieces_plain - len(table)
    timeseries = pd.read_csv(
        tmp_path / "split" / "sub-02" / "func" / (
            f"sub-02_task-rest_run-1_{SPACE}_seg-kmeans_scale-20_stat-mean_timeseries.tsv"),
        sep="\t", na_values="n/a")
    assert timeseries.shape[1] == len(table)
    assert validate(tmp_path / "split")["errors"] == []
    methods = (tmp_path / "split" / "logs" / "CITATION.md").read_text()
    assert "split into their face-connected pieces" in methods and "1000 mm³" in methods


@pytest.mark.parametrize("args, message", [
    (("--connectivity", "tangent"), "--connectivity tangent needs several participants"),
    (("--method", "canica", "--n-parcels", "10"), "--n-parcels does not apply to --method "
                                                  "canica"),
    (("--method", "ward", "--split-disconnected"), "--split-disconnected applies to"),
])
def test_option_errors_are_one_line_and_write_nothing(demo8, tmp_path, capsys, args,
                                                      message):
    out = tmp_path / "out"
    assert run_cli(demo8.root, out, *args) == 2  # a usage error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bids_parcellate: error:") and message in err[0]
    assert not out.exists()


@pytest.mark.slow
def test_real_run_dictlearning_regions(tmp_path):
    """The real 4 mm studyforrest run: 20 maps give many contiguous regions (nilearn's
    alpha=10 gave 3 here; the auto alpha about 65), validator clean."""
    from .conftest import SHARED_DATA

    out = tmp_path / "out"
    assert run_cli(SHARED_DATA, out, "--method", "dictlearning", "--n-maps", "20",
                   "--connectivity", "correlation") == 0
    dseg = next((out / "sub-sf02" / "anat").glob("*_seg-dictlearning_scale-20_dseg.nii.gz"))
    img = nib.load(dseg)
    labels = np.asarray(img.dataobj)
    assert labels.max() >= 30
    assert_contiguous_and_large(labels, abs(np.linalg.det(img.affine[:3, :3])), 1350.0)
    table = pd.read_csv(dseg.with_name(dseg.name.replace(".nii.gz", ".tsv")), sep="\t")
    assert table["component"].nunique() >= 10  # regions come from many maps
    relmat = next((out / "sub-sf02" / "func").glob("*_meas-correlation_relmat.tsv"))
    matrix = pd.read_csv(relmat, sep="\t", index_col="node").to_numpy()
    assert matrix.shape == (labels.max(), labels.max())
    assert validate(out)["errors"] == []
