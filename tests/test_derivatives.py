"""Unit tests of bids_parcellate.derivatives (naming, writers, dataset, tables): BIDS
names, atomic writers, temporary files, the output dataset's files, unit cleanup, the
manifest and the timeseries sidecar of both levels."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_parcellate import __version__
from bids_parcellate.config import UserError
from bids_parcellate.derivatives import dataset, naming, writers
from tests import helpers

SPACE = helpers.SPACE
#: the host token of temporary names, as the module documents it (file-name safe)
HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0]) or "host"


def exited_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if ".tmp-" in p.name)


# --------------------------------------------------------------------------- names
def test_build_name_follows_the_bids_patterns():
    ents = {"subject": "01", "space": SPACE, "seg": "ward", "scale": 100, "suffix": "dseg",
            "extension": ".nii.gz"}
    assert naming.build_name("dseg", ents) == (
        f"sub-01/anat/sub-01_space-{SPACE}_seg-ward_scale-100_dseg.nii.gz")
    # optional entities in BIDS order, None values left out
    ents.update(session="2", res="2", extension=".tsv", run=None)
    assert naming.build_name("dseg", ents) == (
        f"sub-01/ses-2/anat/sub-01_ses-2_space-{SPACE}_seg-ward_scale-100_res-2_dseg.tsv")
    ts = {"subject": "01", "task": "rest", "run": "1", "space": SPACE, "seg": "ward",
          "scale": 20, "stat": "mean", "suffix": "timeseries", "extension": ".tsv"}
    assert naming.build_name("timeseries", ts) == (
        f"sub-01/func/sub-01_task-rest_run-1_space-{SPACE}_seg-ward_scale-20_stat-mean"
        "_timeseries.tsv")


def test_build_name_missing_entity():
    with pytest.raises(ValueError) as err:
        naming.build_name("dseg", {"subject": "01", "suffix": "dseg",
                                    "extension": ".nii.gz"})
    assert str(err.value) == "cannot name a dseg output from ['extension', 'subject', 'suffix']"


def test_labels_and_prefixes():
    assert naming.seg_label("hierarchical_kmeans") == "hierarchicalkmeans"
    assert naming.seg_label("ward") == "ward"
    # BIDS entity order whatever the dict order; absent or empty entities skipped
    ents = {"run": "2", "echo": "1", "task": "rest", "subject": "01", "session": None,
            "acquisition": "mb", "direction": "PA", "space": SPACE}
    assert naming.source_prefix(ents) == "sub-01_task-rest_acq-mb_dir-PA_run-2_echo-1"
    assert naming.unit_prefix("01", None) == "sub-01"
    assert naming.unit_prefix("01", "b") == "sub-01_ses-b"


def test_unit_paths(tmp_path):
    assert naming.completion_marker(tmp_path, "01", None) == (
        tmp_path / "sub-01" / "sub-01_completed.json")
    assert naming.completion_marker(tmp_path, "01", "2") == (
        tmp_path / "sub-01" / "ses-2" / "sub-01_ses-2_completed.json")
    assert naming.unit_dir(tmp_path, "01", None) == tmp_path / "sub-01"
    assert naming.unit_dir(tmp_path, "01", "2") == tmp_path / "sub-01" / "ses-2"
    assert naming.manifest_path(tmp_path) == tmp_path / "logs" / "manifest.tsv"
    log = naming.log_path(tmp_path, ("participant", "group"), "20240101T000000")
    assert log == tmp_path / "logs" / (
        f"participant-group-20240101T000000-{HOST}-{os.getpid()}.log")
    assert naming.participant_report_path(tmp_path, "01") == tmp_path / "sub-01.html"
    assert naming.group_report_path(tmp_path) == tmp_path / "group.html"
    assert naming.citation_paths(tmp_path) == {
        "md": tmp_path / "logs" / "CITATION.md", "html": tmp_path / "logs" / "CITATION.html",
        "bib": tmp_path / "logs" / "CITATION.bib"}


# --------------------------------------------------------------------------- writers
def test_write_json_format_and_defaults(tmp_path):
    path = tmp_path / "new" / "folder" / "x.json"
    data = {"b": np.int64(3), "a": np.float32(0.5), "c": np.arange(3), "d": Path("/p/q")}
    assert writers.write_json(path, data) == path
    text = path.read_text()
    assert text == ('{\n  "a": 0.5,\n  "b": 3,\n  "c": [\n    0,\n    1,\n    2\n  ],\n'
                    '  "d": "/p/q"\n}\n')
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert leftovers(path.parent) == []


def test_json_default_refuses_other_objects(tmp_path):
    with pytest.raises(TypeError) as err:
        writers.write_json(tmp_path / "x.json", {"a": object()})
    assert str(err.value) == "not JSON serialisable: object"
    assert list(tmp_path.iterdir()) == []


def test_write_text_replaces_the_whole_file(tmp_path):
    path = tmp_path / "notes.txt"
    writers.write_text(path, "a long first version\n")
    writers.write_text(path, "é\n")
    assert path.read_bytes() == "é\n".encode()
    writers.write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert leftovers(tmp_path) == []


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "arrays.npz"
    # object arrays cannot be written without pickle: fails inside the writer
    with pytest.raises(ValueError):
        writers.write_npz(path, {"a": np.arange(3), "b": np.array([{}, None], dtype=object)})
    assert list(tmp_path.iterdir()) == []

    writers.write_npz(path, {"a": np.arange(3)})
    before = path.read_bytes()
    with pytest.raises(ValueError):
        writers.write_npz(path, {"b": np.array([{}], dtype=object)})
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_failed_matrix_write_after_the_header(tmp_path):
    path = tmp_path / "m.tsv"
    with pytest.raises(ValueError):  # one row name for two rows
        writers.write_matrix_tsv(path, ["a", "b"], np.ones((2, 2)), row_names=("n", ["x"]))
    assert list(tmp_path.iterdir()) == []


def test_format_tsv():
    text = writers.format_tsv(["name", "value", "count"],
                              [["a", 1 / 3, 3], ["b", float("nan"), None],
                               ["c", np.float32(2.5), np.int64(7)]])
    assert text == ("name\tvalue\tcount\n"
                    "a\t0.33333333\t3\n"
                    "b\tn/a\tn/a\n"
                    "c\t2.5\t7\n")
    assert writers.format_tsv(["x"], [[1e-12]], float_format="%.3f") == "x\n0.000\n"


def test_write_tsv_and_matrix_tsv_read_back(tmp_path):
    import pandas as pd

    path = writers.write_tsv(tmp_path / "t.tsv", ["a", "b"], [[1, 2.5], [3, float("nan")]])
    table = pd.read_csv(path, sep="\t", na_values="n/a")
    assert table["a"].tolist() == [1, 3]
    assert table["b"].iloc[0] == 2.5 and np.isnan(table["b"].iloc[1])

    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((3, 4))
    matrix[1, 2] = np.nan
    path = writers.write_matrix_tsv(tmp_path / "m.tsv", ["p1", "p2", "p3", "p4"], matrix,
                                    row_names=("parcel", ["r1", "r2", "r3"]))
    lines = path.read_text().splitlines()
    assert lines[0] == "parcel\tp1\tp2\tp3\tp4"
    assert [line.split("\t")[0] for line in lines[1:]] == ["r1", "r2", "r3"]
    assert lines[2].split("\t")[3] == "n/a"
    table = pd.read_csv(path, sep="\t", na_values="n/a", index_col=0)
    # %.8g keeps 8 significant digits
    np.testing.assert_allclose(table.to_numpy(), matrix, rtol=1e-7, equal_nan=True)
    assert path.read_text().endswith("\n")


def test_write_npz_round_trip_and_reproducible_bytes(tmp_path):
    arrays = {"b": np.arange(6, dtype=np.int16).reshape(2, 3), "a": np.eye(2),
              "s": np.array("text")}
    first = writers.write_npz(tmp_path / "one.npz", arrays)
    with np.load(first, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["a", "b", "s"]
        for name, value in arrays.items():
            np.testing.assert_array_equal(npz[name], value)
            assert npz[name].dtype == value.dtype
    second = writers.write_npz(tmp_path / "two.npz", dict(reversed(arrays.items())))
    assert first.read_bytes() == second.read_bytes()


def test_write_nifti_round_trip(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(data, helpers.affine())
    path = writers.write_nifti(tmp_path / "sub-01_dseg.nii.gz", img)
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip, from the final name's extension
    back = nib.load(path)
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)
    np.testing.assert_allclose(back.affine, helpers.affine())
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- temp files
def test_is_temp():
    assert writers.is_temp(Path(f".sub-01_dseg.nii.gz.tmp-{HOST}-123-abc.nii.gz"))
    assert writers.is_temp(Path(f".x.json.tmp-{HOST}-1-k2j3.json"))
    assert not writers.is_temp(Path("sub-01_dseg.nii.gz"))
    assert not writers.is_temp(Path(".bidsignore"))
    assert not writers.is_temp(Path(f".x.json.tmp-{HOST}-notapid-k.json"))


def test_remove_temps_only_of_dead_processes_on_this_host(tmp_path):
    dead = exited_pid()
    names = {
        "dead": f".a.tsv.tmp-{HOST}-{dead}-x1.tsv",
        "mine": f".b.tsv.tmp-{HOST}-{os.getpid()}-x2.tsv",
        "alive": f".c.tsv.tmp-{HOST}-{os.getppid()}-x3.tsv",
        "elsewhere": f".d.tsv.tmp-otherhost{HOST}-{dead}-x4.tsv",
        "data": "sub-01_dseg.tsv",
    }
    for name in names.values():
        (tmp_path / name).write_text("x")
    removed = writers.remove_temps(tmp_path)
    assert removed == [tmp_path / names["dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        v for k, v in names.items() if k != "dead")

    removed = writers.remove_temps(tmp_path, any_process=True)
    assert sorted(p.name for p in removed) == sorted(
        names[k] for k in ("mine", "alive", "elsewhere"))
    assert [p.name for p in tmp_path.iterdir()] == ["sub-01_dseg.tsv"]
    assert writers.remove_temps(tmp_path / "absent") == []


# --------------------------------------------------------------------------- dataset
def test_dataset_description(tmp_path, monkeypatch):
    for name in ("BIDS_PARCELLATE_CONTAINER_IMAGE", "BIDS_PARCELLATE_CONTAINER_TYPE",
                 "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.delenv(name, raising=False)
    one = tmp_path / "a" / "fmri-prep"
    two = tmp_path / "b" / "fmriprep"
    desc = dataset.dataset_description([one, two])
    assert desc["DatasetType"] == "derivative"
    assert desc["BIDSVersion"] == dataset.BIDS_VERSION
    assert desc["GeneratedBy"] == [{"Name": "bids_parcellate", "Version": __version__,
                                    "CodeURL": dataset.CODE_URL}]
    # keys: alphanumeric names, made unique
    assert desc["DatasetLinks"] == {"fmriprep": one.resolve().as_uri(),
                                    "fmriprepx": two.resolve().as_uri()}
    assert desc["SourceDatasets"] == [{"URL": one.resolve().as_uri()},
                                      {"URL": two.resolve().as_uri()}]

    monkeypatch.setenv("BIDS_PARCELLATE_CONTAINER_IMAGE", "org/bp:1.0")
    assert dataset.dataset_description([one])["GeneratedBy"][0]["Container"] == {
        "Type": "docker", "Tag": "org/bp:1.0"}
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/bp.sif")
    assert dataset.in_container() == {"Type": "singularity", "Tag": "org/bp:1.0"}


def test_bids_uri(tmp_path):
    source = tmp_path / "fmriprep"
    bold = source / "sub-01" / "func" / "sub-01_bold.nii.gz"
    assert dataset.bids_uri(bold, [source]) == "bids:fmriprep:sub-01/func/sub-01_bold.nii.gz"
    other = tmp_path / "elsewhere" / "x.nii.gz"
    assert dataset.bids_uri(other, [source]) == other.resolve().as_uri()


def test_bids_uri_in_a_folder_with_spaces(tmp_path):
    """A dataset path with spaces (percent-encoded in DatasetLinks) still gives bids: URIs."""
    source = tmp_path / "my study" / "fmriprep 23"
    bold = source / "sub-01" / "func" / "sub-01_bold.nii.gz"
    assert dataset.bids_uri(bold, [source]) == "bids:fmriprep23:sub-01/func/sub-01_bold.nii.gz"
    links = dataset.dataset_description([source])["DatasetLinks"]
    assert links == {"fmriprep23": source.resolve().as_uri()}
    assert "%20" in links["fmriprep23"]


def test_check_output_dir(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError) as err:
        dataset.check_output_dir(a_file)
    assert str(err.value) == f"{a_file}: OUTPUT_DIR exists and is not a folder"

    foreign = helpers.derivative_dataset(tmp_path / "foreign")
    with pytest.raises(UserError) as err:
        dataset.check_output_dir(foreign)
    assert str(err.value) == (
        f"{foreign / 'dataset_description.json'}: OUTPUT_DIR holds another dataset "
        "(GeneratedBy fMRIPrep); choose an empty folder or a previous bids_parcellate "
        "output")

    ours = helpers.derivative_dataset(tmp_path / "ours", name="bids_parcellate")
    dataset.check_output_dir(ours)
    assert sorted(p.name for p in ours.iterdir()) == ["dataset_description.json"]

    new = tmp_path / "new" / "deeper"
    dataset.check_output_dir(new)
    assert not (tmp_path / "new").exists()  # nothing created

    with pytest.raises(UserError) as err:
        dataset.check_output_dir(a_file / "below")
    assert str(err.value) == (f"{a_file / 'below'}: cannot create OUTPUT_DIR ({a_file} is "
                              "not a folder)")


def test_prepare_output_dir(tmp_path):
    out = tmp_path / "out"
    source = tmp_path / "fmriprep"
    out.mkdir()
    stale = out / f".README.md.tmp-{HOST}-{exited_pid()}-zz.md"
    stale.write_text("left by a killed run")
    dataset.prepare_output_dir(out, [source])
    assert sorted(p.name for p in out.iterdir()) == [".bidsignore", "README.md",
                                                      "dataset_description.json"]
    assert json.loads((out / "dataset_description.json").read_text()) == json.loads(
        json.dumps(dataset.dataset_description([source])))
    assert (out / ".bidsignore").read_text().splitlines() == list(dataset.BIDSIGNORE)
    assert (out / "README.md").read_text() == dataset.README_TEXT
    # the files are in place: the output dataset is now ours
    dataset.check_output_dir(out)


# --------------------------------------------------------------------------- units
def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_remove_unit_outputs(tmp_path):
    out = tmp_path / "out"
    marker = touch(naming.completion_marker(out, "01", "1"), "{}")
    mine = [touch(out / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_space-X_dseg.nii.gz"),
            touch(out / "sub-01" / "ses-1" / "func" / "sub-01_ses-1_task-rest_timeseries.tsv"),
            touch(out / "sub-01" / "ses-1" / "sub-01_ses-1_extra.json")]
    temp = touch(out / "sub-01" / "ses-1" / "anat" / f".a.tsv.tmp-{HOST}-{os.getpid()}-q.tsv")
    listed = touch(out / "sub-01" / "figures" / "sub-01_ses-1_desc-x_report.json")
    kept = [touch(out / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_space-X_dseg.nii.gz"),
            touch(out / "sub-01" / "ses-1" / "anat" / "notes.txt"),
            touch(out / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_space-X_dseg.nii.gz"),
            touch(tmp_path / "outside.txt")]

    removed = dataset.remove_unit_outputs(
        out, "01", "1",
        listed=["sub-01/figures/sub-01_ses-1_desc-x_report.json", "../outside.txt",
                "sub-01/ses-1/absent.tsv"])

    assert removed[0] == marker  # first: nothing looks complete while files go
    assert sorted(removed) == sorted([marker, listed, temp, *mine])
    assert all(not p.exists() for p in removed)
    assert all(p.exists() for p in kept)


def test_remove_unit_outputs_without_session_keeps_sessions(tmp_path):
    out = tmp_path / "out"
    mine = touch(out / "sub-01" / "anat" / "sub-01_space-X_dseg.nii.gz")
    session = touch(out / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_space-X_dseg.nii.gz")
    assert dataset.remove_unit_outputs(out, "01", None) == [mine]
    assert session.exists()


def test_sha256_file(tmp_path):
    data = os.urandom(3 * 2**20 + 5)  # more than one read block
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert writers.sha256_file(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("rel, report", [
    ("sub-01.html", True), ("group.html", True), ("sub-01/figures/a.svg", True),
    ("sub-01/figures/sub-01_desc-x_report.json", True), ("sub-01/anat/a.html", False),
    ("sub-01/anat/sub-01_dseg.nii.gz", False), ("figures/a.svg", False),
])
def test_is_report_file(rel, report):
    assert naming.is_report_file(rel) is report


def make_tree(out: Path) -> list[str]:
    """An output folder; returns the data outputs (relative, sorted as paths)."""
    data = ["dataset_description.json", "group_quality.tsv",
            "sub-01/anat/sub-01_dseg.nii.gz", "sub-01/func/sub-01_timeseries.tsv",
            "sub-01/sub-01_completed.json", "tpl-X/tpl-X_atlas-a_dseg.nii.gz"]
    for i, rel in enumerate(data):
        touch(out / rel, "content " * i)
    touch(out / ".bidsignore", "logs/\n")
    for rel in ("logs/run.log", "logs/sub/x.tsv", "sub-01.html", "sub-01/figures/a.svg",
                f"sub-01/anat/.b.tsv.tmp-{HOST}-1-x.tsv"):
        touch(out / rel)
    return sorted([*data, ".bidsignore"])


def test_list_outputs(tmp_path):
    expected = make_tree(tmp_path)
    found = dataset.list_outputs(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == expected


def test_write_manifest(tmp_path):
    expected = make_tree(tmp_path)
    path = dataset.write_manifest(tmp_path)
    assert path == tmp_path / "logs" / "manifest.tsv"
    lines = path.read_text().splitlines()
    assert lines[0] == "path\tsha256\tsize"
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == expected
    for rel, digest, size in rows:
        content = (tmp_path / rel).read_bytes()
        assert digest == hashlib.sha256(content).hexdigest()
        assert int(size) == len(content)
    assert leftovers(tmp_path / "logs") == []


def test_timeseries_sidecar_is_one_schema_for_both_levels(tmp_path):
    from types import SimpleNamespace

    from bids_parcellate.derivatives.tables import timeseries_sidecar

    paths = helpers.add_run(helpers.derivative_dataset(tmp_path / "prep"), "01")
    run = helpers.make_run(paths)
    clean = SimpleNamespace(run=run, n_volumes=6, sample_mask=np.array([0, 2, 3, 5]),
                            confounds=["trans_x"])
    config = helpers.make_config(tmp_path)
    unit = timeseries_sidecar(config, clean, "sub-01/anat/x_dseg.nii.gz", [tmp_path / "prep"])
    group = timeseries_sidecar(config, clean, "tpl-X/y_dseg.nii.gz", [tmp_path / "prep"],
                               atlas="demoWard")
    assert unit["CensoredVolumes"] == group["CensoredVolumes"] == [1, 4]
    assert unit["SamplingFrequency"] == pytest.approx(0.5)
    assert unit["Sources"] == group["Sources"] == [
        f"bids:prep:{paths['bold'].relative_to(tmp_path / 'prep').as_posix()}",
        f"bids:prep:{paths['confounds'].relative_to(tmp_path / 'prep').as_posix()}"]
    # the group's adds the atlas (before the parcellation) and says so in its description
    at = list(unit).index("Parcellation")
    assert list(group) == list(unit)[:at] + ["Atlas"] + list(unit)[at:]
    assert group["Atlas"] == "demoWard" and "Atlas" not in unit
    assert "of the group atlas" in group["Description"]
    assert "group atlas" not in unit["Description"]


def test_group_connectomes_without_tangent_when_one_run_is_left(tmp_path, caplog):
    """Runs skipped at the group level after the tangent check: the other measures are
    written, tangent is left out with a warning (it used to raise a bare ValueError)."""
    from bids_parcellate.derivatives import atlas_files
    from bids_parcellate.results import GroupResult

    config = helpers.make_config(tmp_path, analysis_levels=("group",),
                                 connectivity=("correlation", "tangent"))
    run = helpers.make_run({"bold": tmp_path / "bold.nii.gz"})
    series = np.random.default_rng(0).standard_normal((30, 4))
    collected = [(("01", None), run, 30, {4: series})]
    with caplog.at_level("WARNING", logger="bids_parcellate"):
        written = atlas_files.write_group_connectomes(
            config, GroupResult(label="testWard"), collected, {4: np.arange(10) % 4 + 1},
            "MNI152NLin2009cAsym", None)
    names = sorted(p.name for p in written)
    run_name = "sub-01_task-rest_run-1_space-MNI152NLin2009cAsym_atlas-testWard_scale-4"
    assert names == sorted([
        f"{run_name}_meas-correlation_relmat.tsv", f"{run_name}_meas-correlation_relmat.json",
        "group_atlas-testWard_scale-4_meas-correlation_relmat.tsv",
        "group_atlas-testWard_scale-4_meas-correlation_relmat.json"])
    assert "only 1 run is left at the group level" in caplog.text
