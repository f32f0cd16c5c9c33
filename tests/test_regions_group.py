"""Group level of the region route: group maps and regions, group connectomes."""

from __future__ import annotations

import json
import re
from urllib.parse import unquote

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.connectome import ConnectivityMeasure
from scipy import ndimage

from bids_parcellate.cli import main

from .conftest import run_cli, validate
from .network_data import SPACE, network_dataset

KINDS = {"correlation": "correlation", "covariance": "covariance", "tangent": "tangent"}


@pytest.fixture(scope="module")
def group_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("group_networks")
    demo, layout = network_dataset(root / "bids", ("01", "02"), seed=5)
    out = root / "out"
    # both levels in one invocation: tangent is computed by the group level only
    assert main([str(demo.root), str(out), "participant", "group", "--denoise-strategy",
                 "none", "--method", "canica", "--n-maps", "3", "--smoothing-fwhm", "0",
                 "--atlas-label", "nets", "--connectivity", "correlation", "covariance",
                 "tangent"]) == 0
    return out, layout


def test_group_regions_recover_known_networks(group_out):
    out, layout = group_out
    tpl = out / "tpl-MNI152NLin2009cAsym"
    dseg = tpl / "tpl-MNI152NLin2009cAsym_atlas-nets_scale-3_dseg.nii.gz"
    labels = np.asarray(nib.load(dseg).dataobj)
    maps = nib.load(tpl / "tpl-MNI152NLin2009cAsym_atlas-nets_scale-3_probseg.nii.gz")
    assert maps.shape == labels.shape + (3,)
    table = pd.read_csv(dseg.with_name(dseg.name.replace(".nii.gz", ".tsv")), sep="\t")
    assert list(table.columns[:3]) == ["index", "name", "component"]
    component = dict(zip(table["index"], table["component"], strict=True))
    for lab in range(1, int(labels.max()) + 1):
        assert ndimage.label(labels == lab)[1] == 1
        assert (labels == lab).sum() * 512 > 1350
    blobs = np.zeros(layout.mask.shape, dtype=np.int32)
    blobs[layout.mask] = layout.blobs
    by_network: dict[int, set] = {}
    regions = set()
    for blob in range(1, 7):
        region = np.bincount(labels[blobs == blob]).argmax()
        assert region > 0 and (labels[blobs == blob] == region).all()
        regions.add(region)
        by_network.setdefault(layout.network_of_blob[blob - 1], set()).add(component[region])
    assert len(regions) == 6
    assert all(len(c) == 1 for c in by_network.values())
    assert len(set().union(*by_network.values())) == 3
    sidecar = json.loads(dseg.with_name(dseg.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["NumberOfMaps"] == 3 and sidecar["Method"] == "canica"


def _written_timeseries(out, sub, run):
    path = out / f"sub-{sub}" / "func" / (
        f"sub-{sub}_task-rest_run-{run}_{SPACE}_atlas-nets_scale-3_stat-mean_timeseries.tsv")
    return pd.read_csv(path, sep="\t", na_values="n/a").dropna().to_numpy()


def test_group_connectomes_equal_nilearn_on_written_timeseries(group_out):
    out, _ = group_out
    order = [("01", 1), ("01", 2), ("02", 1), ("02", 2)]
    series = [_written_timeseries(out, sub, run) for sub, run in order]
    for kind, label in KINDS.items():
        measure = ConnectivityMeasure(kind=kind)
        per_run = measure.fit_transform(series)
        for (sub, run), expected in zip(order, per_run, strict=True):
            path = out / f"sub-{sub}" / "func" / (
                f"sub-{sub}_task-rest_run-{run}_{SPACE}_atlas-nets_scale-3_meas-{label}"
                "_relmat.tsv")
            ours = pd.read_csv(path, sep="\t", index_col="node").to_numpy()
            np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
        group = out / f"group_atlas-nets_scale-3_meas-{label}_relmat.tsv"
        ours = pd.read_csv(group, sep="\t", index_col="node").to_numpy()
        np.testing.assert_allclose(ours, measure.mean_, rtol=1e-5, atol=1e-6)
        sidecar = json.loads(group.with_suffix(".json").read_text())
        assert sidecar["NumberOfRuns"] == 4 and sidecar["Participants"] == ["sub-01",
                                                                            "sub-02"]
    # tangent is group-only: the participant level wrote no tangent matrix
    assert not list(out.glob("sub-*/func/*_seg-canica_*_meas-tangent_relmat.tsv"))
    assert list(out.glob("sub-*/func/*_seg-canica_*_meas-correlation_relmat.tsv"))


def test_group_report_draws_the_group_connectomes(group_out):
    """One figure per measure beside its atlas (matrix + glass brain at every scale),
    and the matrices are no longer dumped as tables."""
    out, _ = group_out
    html = (out / "group.html").read_text()
    figures = re.findall(r'<img src="([^"]+)" alt="Group connectome (\w+)">\s*<figcaption>'
                         r"Group \w+ connectome on atlas-nets \(([^)]+)\)", html)
    assert sorted((meas, files) for _, meas, files in figures) == sorted(
        (label, f"group_atlas-nets_scale-3_meas-{label}_relmat.tsv")
        for label in KINDS.values())
    dseg = (out / "tpl-MNI152NLin2009cAsym"
            / "tpl-MNI152NLin2009cAsym_atlas-nets_scale-3_dseg.nii.gz")
    n = int(np.asarray(nib.load(dseg).dataobj).max())
    for uri, meas, _ in figures:
        svg = unquote(uri.removeprefix("data:image/svg+xml;charset=utf-8,"))
        assert svg.startswith("<svg") and f"scale 3: {n} parcels, {meas}<" in svg
        assert svg.count("data:image/png;base64,") >= 2  # matrix and glass brain
    assert "_relmat.tsv</h3>" not in html


def test_group_outputs_validate(group_out):
    out, _ = group_out
    report = validate(out)
    assert report["errors"] == [], report["errors"]


def test_tangent_needs_several_participants(tmp_path, capsys):
    demo, _ = network_dataset(tmp_path / "bids", ("01",), seed=7)
    out = tmp_path / "out"
    code = run_cli(demo.root, out, "--participant-label", "01", "--method", "canica",
                   "--n-maps", "3", "--connectivity", "tangent", level="group")
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("bids_parcellate: error: --connectivity tangent needs several "
                       "participants: the group level has 1")


def test_tangent_with_one_participant_stops_before_the_participant_level(tmp_path, capsys):
    demo, _ = network_dataset(tmp_path / "bids", ("01",), seed=7)
    out = tmp_path / "out"
    code = main([str(demo.root), str(out), "participant", "group", "--method", "canica",
                 "--n-maps", "3", "--connectivity", "tangent"])
    assert code == 1
    assert "needs several participants: the group level has 1" in capsys.readouterr().err
    assert not list(out.glob("sub-*"))  # nothing computed
