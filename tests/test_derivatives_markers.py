"""Unit tests of bids_parcellate.derivatives.markers: completion markers and the plan
of a rerun."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from bids_parcellate import __version__
from bids_parcellate.config import UserError
from bids_parcellate.derivatives import markers
from bids_parcellate.inputs import query
from tests import helpers


@pytest.fixture
def study(tmp_path):
    """Two participants with one run each, a config, and the selection of both."""
    root = helpers.derivative_dataset(tmp_path / "prep")
    runs = [helpers.make_run(helpers.add_run(root, s), subject=s) for s in ("01", "02")]
    selection = query.Selection(fmriprep_dirs=[root], runs=runs, skipped=[])
    return root, runs, selection


def unit_files(out, subject="01", session=None):
    """A unit's outputs, as files of different sizes."""
    folder = out / f"sub-{subject}" / (f"ses-{session}" if session else "")
    prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    files = {folder / "anat" / f"{prefix}_space-X_seg-ward_scale-4_dseg.nii.gz": b"\x1f\x8bdseg",
             folder / "anat" / f"{prefix}_space-X_seg-ward_scale-4_dseg.tsv": b"index\tname\n",
             folder / "func" / f"{prefix}_task-rest_timeseries.tsv": b"1\t2\n3\t4\n"}
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return sorted(files)


def complete_unit(config, selection, subject="01"):
    files = unit_files(config.output_dir, subject)
    runs = selection.units()[(subject, None)]
    marker = markers.write_marker(config, subject, None, files,
                                 markers.unit_sources(runs, selection.fmriprep_dirs))
    return files, marker


# --------------------------------------------------------------------------- markers
def test_unit_sources_are_sorted_bids_uris(study):
    root, runs, _ = study
    run = runs[0]
    no_confounds = query.Run(run.entities, run.bold, run.mask, None, run.tr)
    sources = markers.unit_sources([run, no_confounds], [root])
    rel = sorted(p.relative_to(root).as_posix() for p in (run.bold, run.mask, run.confounds))
    assert sources == [f"bids:prep:{r}" for r in rel]


def test_read_marker(tmp_path):
    assert markers.read_marker(tmp_path / "absent.json") is None
    broken = tmp_path / "broken.json"
    broken.write_text('{"ConfigHash": ')
    assert markers.read_marker(broken) is None
    listed = helpers.write_json(tmp_path / "list.json", ["a"])
    assert markers.read_marker(listed) is None
    good = helpers.write_json(tmp_path / "good.json", {"ConfigHash": "abc"})
    assert markers.read_marker(good) == {"ConfigHash": "abc"}


def test_write_marker_records_every_file(tmp_path, study):
    root, runs, selection = study
    config = helpers.make_config(tmp_path, bids_dir=root)
    files, marker = complete_unit(config, selection)
    assert marker == config.output_dir / "sub-01" / "sub-01_completed.json"
    data = json.loads(marker.read_text())
    assert data["ConfigHash"] == config.config_hash()
    assert data["Parameters"] == json.loads(json.dumps(config.hashed_parameters()))
    assert data["GeneratedBy"] == {"Name": "bids_parcellate", "Version": __version__}
    assert data["Sources"] == markers.unit_sources(runs[:1], [root])
    assert data["Files"] == {
        p.relative_to(config.output_dir).as_posix(): {
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": len(p.read_bytes())}
        for p in files}


# --------------------------------------------------------------------------- plans
def test_plan_new_incomplete_and_complete_units(tmp_path, study):
    root, _, selection = study
    config = helpers.make_config(tmp_path, bids_dir=root)
    assert markers.plan_units(config, selection) == {
        ("01", None): markers.UnitPlan("compute", "new"),
        ("02", None): markers.UnitPlan("compute", "new")}

    complete_unit(config, selection, "01")
    unit_files(config.output_dir, "02")  # killed before its marker
    plans = markers.plan_units(config, selection)
    assert plans[("01", None)] == markers.UnitPlan("skip", "complete")
    assert plans[("02", None)] == markers.UnitPlan("compute",
                                                  "left incomplete by an earlier run")


@pytest.mark.parametrize("damage, reason", [
    ("content", "has changed content"), ("size", "has changed size"), ("delete", "is missing"),
])
def test_plan_damaged_outputs(tmp_path, study, damage, reason):
    root, _, selection = study
    config = helpers.make_config(tmp_path, bids_dir=root)
    files, _ = complete_unit(config, selection)
    target = files[1]
    if damage == "content":
        content = target.read_bytes()
        target.write_bytes(bytes([content[0] ^ 1]) + content[1:])  # same size
    elif damage == "size":
        target.write_bytes(target.read_bytes() + b"\n")
    else:
        target.unlink()
    rel = target.relative_to(config.output_dir).as_posix()
    listed = tuple(sorted(p.relative_to(config.output_dir).as_posix() for p in files))
    assert markers.plan_units(config, selection)[("01", None)] == markers.UnitPlan(
        "compute", f"incomplete: {rel} {reason}", listed)


def test_plan_marker_without_files(tmp_path, study):
    root, _, selection = study
    config = helpers.make_config(tmp_path, bids_dir=root)
    _, marker = complete_unit(config, selection)
    data = json.loads(marker.read_text())
    data["Files"] = {}
    marker.write_text(json.dumps(data))
    assert markers.plan_units(config, selection)[("01", None)] == markers.UnitPlan(
        "compute", "incomplete: marker lists no files")


def test_plan_inputs_changed(tmp_path, study):
    root, runs, selection = study
    config = helpers.make_config(tmp_path, bids_dir=root)
    files, _ = complete_unit(config, selection)
    second = helpers.make_run(helpers.add_run(root, "01", run=2), run="2")
    more = query.Selection(selection.fmriprep_dirs, [runs[0], second], [])
    listed = tuple(sorted(p.relative_to(config.output_dir).as_posix() for p in files))
    assert markers.plan_units(config, more) == {
        ("01", None): markers.UnitPlan("compute", "its input files changed", listed)}


def test_plan_overwrite_recomputes_complete_units(tmp_path, study):
    root, _, selection = study
    config = helpers.make_config(tmp_path, bids_dir=root, overwrite=True)
    files, _ = complete_unit(config, selection)
    listed = tuple(sorted(p.relative_to(config.output_dir).as_posix() for p in files))
    assert markers.plan_units(config, selection)[("01", None)] == markers.UnitPlan(
        "compute", "--overwrite", listed)


def test_plan_refuses_outputs_of_other_parameters(tmp_path, study):
    root, _, selection = study
    old = helpers.make_config(tmp_path, bids_dir=root)
    complete_unit(old, selection)
    new = helpers.make_config(tmp_path, bids_dir=root, smoothing_fwhm=6.0)
    with pytest.raises(UserError) as err:
        markers.plan_units(new, selection)
    assert str(err.value) == (
        f"{new.output_dir}: holds outputs of sub-01 made with other parameters (config hash "
        f"{old.config_hash()}, now {new.config_hash()}; differing: --smoothing-fwhm (4 -> "
        "6)); use another OUTPUT_DIR, or --overwrite to replace the selected units' "
        "outputs")
    # nothing was touched
    assert (new.output_dir / "sub-01" / "sub-01_completed.json").is_file()


def test_plan_overwrite_replaces_outputs_of_other_parameters(tmp_path, study):
    root, _, selection = study
    old = helpers.make_config(tmp_path, bids_dir=root)
    files, _ = complete_unit(old, selection)
    new = helpers.make_config(tmp_path, bids_dir=root, smoothing_fwhm=6.0, overwrite=True)
    listed = tuple(sorted(p.relative_to(new.output_dir).as_posix() for p in files))
    plans = markers.plan_units(new, selection)
    assert plans[("01", None)] == markers.UnitPlan(
        "compute", f"--overwrite: made with config hash {old.config_hash()}", listed)
    assert plans[("02", None)] == markers.UnitPlan("compute", "new")


def test_plan_counts_units_outside_the_selection(tmp_path, study, caplog):
    root, runs, selection = study
    old = helpers.make_config(tmp_path, bids_dir=root)
    complete_unit(old, selection, "02")
    only_01 = query.Selection(selection.fmriprep_dirs, runs[:1], [])
    new = helpers.make_config(tmp_path, bids_dir=root, n_components=50)
    with pytest.raises(UserError) as err:
        markers.plan_units(new, only_01)
    assert str(err.value).startswith(f"{new.output_dir}: holds outputs of sub-02 made with "
                                     "other parameters")
    assert "differing: --n-components (200 -> 50)" in str(err.value)

    new = helpers.make_config(tmp_path, bids_dir=root, n_components=50, overwrite=True)
    with caplog.at_level(logging.WARNING, logger="bids_parcellate"):
        plans = markers.plan_units(new, only_01)
    assert plans == {("01", None): markers.UnitPlan("compute", "new")}
    assert [r.getMessage() for r in caplog.records] == [
        f"sub-02 keeps its outputs made with config hash {old.config_hash()} (not selected); "
        "OUTPUT_DIR now mixes parameters"]


def test_plan_names_options_the_old_outputs_did_not_record(tmp_path, study):
    """An option added since (absent from the marker) reads "not recorded", booleans
    on/off, lists as typed: no Python None, True or [..] in the message."""
    root, _, selection = study
    config = helpers.make_config(tmp_path, bids_dir=root)
    _, marker = complete_unit(config, selection)
    data = json.loads(marker.read_text())
    del data["Parameters"]["keep_flat_voxels"]  # as if made before the option existed
    data["Parameters"]["n_parcels"] = [100, 200]
    data["Parameters"]["detrend"] = False
    data["ConfigHash"] = "0123456789abcdef"
    marker.write_text(json.dumps(data))
    new = helpers.make_config(tmp_path, bids_dir=root, n_parcels=(10, 20))
    with pytest.raises(UserError) as err:
        markers.plan_units(new, selection)
    assert ("differing: --detrend (off -> on), --keep-flat-voxels (not recorded -> off), "
            "--n-parcels (100 200 -> 10 20)); use another OUTPUT_DIR") in str(err.value)
    assert not any(word in str(err.value) for word in ("None", "True", "False", "["))


def test_plan_same_parameters_other_version(tmp_path, study):
    root, _, selection = study
    config = helpers.make_config(tmp_path, bids_dir=root)
    _, marker = complete_unit(config, selection)
    data = json.loads(marker.read_text())
    data["ConfigHash"] = "0123456789abcdef"  # as if made by another major.minor version
    marker.write_text(json.dumps(data))
    with pytest.raises(UserError) as err:
        markers.plan_units(config, selection)
    assert "(config hash 0123456789abcdef, now" in str(err.value)
    assert "differing: the bids_parcellate version)" in str(err.value)


def test_plan_sessions_are_separate_units(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    runs = [helpers.make_run(helpers.add_run(root, "01", session=s), session=s)
            for s in ("1", "2")]
    selection = query.Selection([root], runs, [])
    config = helpers.make_config(tmp_path, bids_dir=root)
    files = unit_files(config.output_dir, "01", "1")
    marker = markers.write_marker(config, "01", "1", files,
                                 markers.unit_sources(runs[:1], [root]))
    assert marker == config.output_dir / "sub-01" / "ses-1" / "sub-01_ses-1_completed.json"
    assert markers.plan_units(config, selection) == {
        ("01", "1"): markers.UnitPlan("skip", "complete"),
        ("01", "2"): markers.UnitPlan("compute", "new")}
