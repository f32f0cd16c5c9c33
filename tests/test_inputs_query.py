"""Unit tests of bids_parcellate.inputs on small generated fMRIPrep-like datasets."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_parcellate.inputs import query
from tests import helpers


# --------------------------------------------------------------------------- datasets
def test_read_dataset_description_returns_the_object(tmp_path):
    helpers.derivative_dataset(tmp_path)
    data = query.read_dataset_description(tmp_path)
    assert data["DatasetType"] == "derivative"
    assert data["GeneratedBy"] == [{"Name": "fMRIPrep"}]


def test_read_dataset_description_missing(tmp_path):
    with pytest.raises(query.InputError) as err:
        query.read_dataset_description(tmp_path)
    assert str(err.value) == f"{tmp_path}: no dataset_description.json (not a BIDS dataset)"


def test_read_dataset_description_not_json(tmp_path):
    desc = tmp_path / "dataset_description.json"
    desc.write_text("{not json")
    with pytest.raises(query.InputError) as err:
        query.read_dataset_description(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{desc}: not valid JSON (")
    assert "\n" not in message


def test_read_dataset_description_not_an_object(tmp_path):
    desc = tmp_path / "dataset_description.json"
    desc.write_text("[1, 2]")
    with pytest.raises(query.InputError) as err:
        query.read_dataset_description(tmp_path)
    assert str(err.value) == f"{desc}: not a JSON object"


def test_find_fmriprep_dirs_derivative_bids_dir(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "fmriprep")
    config = helpers.make_config(tmp_path, bids_dir=root)
    assert query.find_fmriprep_dirs(config) == [root]


def test_find_fmriprep_dirs_raw_dataset_skips_outputs_and_non_datasets(tmp_path):
    raw = helpers.raw_dataset(tmp_path / "bids")
    deriv = raw / "derivatives"
    fmriprep = helpers.derivative_dataset(deriv / "fmriprep")
    helpers.derivative_dataset(deriv / "older_parcellations", name="bids_parcellate")
    (deriv / "not_a_dataset").mkdir()
    (deriv / "notes.txt").write_text("a file, not a dataset")
    out = deriv / "parcellations"
    out.mkdir()
    config = helpers.make_config(tmp_path, bids_dir=raw, output_dir=out)
    assert query.find_fmriprep_dirs(config) == [fmriprep]


def test_find_fmriprep_dirs_raw_dataset_without_derivatives(tmp_path):
    raw = helpers.raw_dataset(tmp_path / "bids")
    config = helpers.make_config(tmp_path, bids_dir=raw)
    with pytest.raises(query.InputError) as err:
        query.find_fmriprep_dirs(config)
    assert str(err.value) == (
        f"{raw}: no fMRIPrep derivatives found (BIDS_DIR is a raw dataset without "
        "derivatives/; pass --derivatives PATH)")


def test_find_fmriprep_dirs_bids_dir_missing(tmp_path):
    config = helpers.make_config(tmp_path, bids_dir=tmp_path / "absent")
    with pytest.raises(query.InputError) as err:
        query.find_fmriprep_dirs(config)
    assert str(err.value) == f"{tmp_path / 'absent'}: BIDS_DIR does not exist or is not a folder"


def test_find_fmriprep_dirs_explicit_derivatives(tmp_path):
    raw = helpers.raw_dataset(tmp_path / "bids")
    first = helpers.derivative_dataset(tmp_path / "prep1")
    second = helpers.derivative_dataset(tmp_path / "prep2")
    config = helpers.make_config(tmp_path, bids_dir=raw, derivatives=(second, first))
    assert query.find_fmriprep_dirs(config) == [second, first]


def test_find_fmriprep_dirs_derivatives_not_a_folder(tmp_path):
    raw = helpers.raw_dataset(tmp_path / "bids")
    missing = tmp_path / "nowhere"
    config = helpers.make_config(tmp_path, bids_dir=raw, derivatives=(missing,))
    with pytest.raises(query.InputError) as err:
        query.find_fmriprep_dirs(config)
    assert str(err.value) == f"--derivatives {missing}: not a folder"


@pytest.mark.parametrize("where", ["same", "inside_input", "input_inside"])
def test_find_fmriprep_dirs_refuses_overlap_with_output(tmp_path, where):
    raw = helpers.raw_dataset(tmp_path / "bids")
    prep = helpers.derivative_dataset(tmp_path / "prep")
    out = {"same": prep, "inside_input": prep / "out", "input_inside": tmp_path}[where]
    config = helpers.make_config(tmp_path, bids_dir=raw, derivatives=(prep,), output_dir=out)
    with pytest.raises(query.InputError) as err:
        query.find_fmriprep_dirs(config)
    assert str(err.value) == (f"--derivatives {prep.resolve()}: overlaps OUTPUT_DIR "
                              f"{out.resolve()}")


# --------------------------------------------------------------------------- small helpers
def test_read_bids_filters(tmp_path):
    path = helpers.write_json(tmp_path / "filters.json", {"bold": {"session": "1"}})
    assert query.read_bids_filters(path) == {"bold": {"session": "1"}}


def test_read_bids_filters_errors(tmp_path):
    missing = tmp_path / "absent.json"
    with pytest.raises(query.InputError) as err:
        query.read_bids_filters(missing)
    assert str(err.value) == f"--bids-filter-file {missing}: file not found"

    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(query.InputError) as err:
        query.read_bids_filters(broken)
    assert str(err.value).startswith(f"--bids-filter-file {broken}: not valid JSON (")

    flat = helpers.write_json(tmp_path / "flat.json", {"session": "1"})
    with pytest.raises(query.InputError) as err:
        query.read_bids_filters(flat)
    assert str(err.value) == (f"--bids-filter-file {flat}: expected an object of query "
                              'objects, e.g. {"bold": {"session": "1"}}')


@pytest.mark.parametrize("name, sidecar", [
    ("sub-01_desc-preproc_bold.nii.gz", "sub-01_desc-preproc_bold.json"),
    ("sub-01_desc-preproc_bold.nii", "sub-01_desc-preproc_bold.json"),
    ("sub-01_desc-confounds_timeseries.tsv", "sub-01_desc-confounds_timeseries.json"),
    ("sub-01_T1w.mgz", "sub-01_T1w.json"),
])
def test_sidecar_path(tmp_path, name, sidecar):
    assert query.sidecar_path(tmp_path / "func" / name) == tmp_path / "func" / sidecar


def test_selection_units_groups_and_sorts(tmp_path):
    def run(subject, session, number):
        ents = {"subject": subject, "task": "rest", "run": str(number)}
        if session:
            ents["session"] = session
        return query.Run(entities=ents, bold=tmp_path / f"{subject}{session}{number}",
                          mask=None, confounds=None, tr=2.0)

    runs = [run("02", None, 1), run("01", "b", 1), run("01", "a", 2), run("01", "a", 1),
            run("02", None, 2), run("01", None, 1)]
    selection = query.Selection(fmriprep_dirs=[tmp_path], runs=runs, skipped=[])
    units = selection.units()
    assert list(units) == [("01", None), ("01", "a"), ("01", "b"), ("02", None)]
    # runs keep their order within a unit
    assert units[("01", "a")] == [runs[2], runs[3]]
    assert units[("02", None)] == [runs[0], runs[4]]
    assert runs[1].unit == ("01", "b")


# --------------------------------------------------------------------------- collect_runs
def test_collect_runs_pairs_each_bold_with_its_mask_and_confounds(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    written = {(s, r): helpers.add_run(root, s, run=r, tr=tr, seed=r)
               for s, tr in (("01", 2.0), ("02", 1.5)) for r in (1, 2)}
    # an anatomical file and a boldref: never paired, never a run
    helpers.save_nifti(root / "sub-01" / "anat" / "sub-01_desc-preproc_T1w.nii.gz",
                       helpers.box_mask().astype("uint8"))
    helpers.save_nifti(root / "sub-01" / "func" /
                       f"sub-01_task-rest_run-1_space-{helpers.SPACE}_boldref.nii.gz",
                       helpers.box_mask().astype("uint8"))
    config = helpers.make_config(tmp_path, bids_dir=root)

    selection = query.collect_runs(config)

    assert selection.fmriprep_dirs == [root]
    assert selection.skipped == []
    assert [(r.entities["subject"], r.entities["run"]) for r in selection.runs] == [
        ("01", "1"), ("01", "2"), ("02", "1"), ("02", "2")]
    for run in selection.runs:
        paths = written[(run.entities["subject"], int(run.entities["run"]))]
        assert run.bold == paths["bold"]
        assert run.mask == paths["mask"]
        assert run.confounds == paths["confounds"]
        assert run.error is None
        assert run.entities == {"subject": run.entities["subject"], "task": "rest",
                                "run": run.entities["run"], "space": helpers.SPACE}
    assert [r.tr for r in selection.runs] == [2.0, 2.0, 1.5, 1.5]
    assert selection.runs[2].metadata == {"RepetitionTime": 1.5, "TaskName": "rest"}
    assert list(selection.units()) == [("01", None), ("02", None)]


def test_collect_runs_selects_participants_sessions_and_filters(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    for subject in ("01", "02"):
        for session in ("a", "b"):
            helpers.add_run(root, subject, session=session)
    helpers.add_run(root, "01", session="a", task="motor")
    filters = helpers.write_json(tmp_path / "filters.json", {"bold": {"session": "b"}})
    config = helpers.make_config(tmp_path, bids_dir=root, participant_label=("02",),
                                 bids_filters=query.read_bids_filters(filters))
    selection = query.collect_runs(config)
    assert [r.bold.name for r in selection.runs] == [
        f"sub-02_ses-b_task-rest_run-1_space-{helpers.SPACE}_desc-preproc_bold.nii.gz"]
    assert list(selection.units()) == [("02", "b")]

    config = helpers.make_config(tmp_path, bids_dir=root, participant_label=("01",),
                                 task=("motor",))
    selection = query.collect_runs(config)
    assert [(r.unit, r.entities["task"]) for r in selection.runs] == [(("01", "a"), "motor")]


def test_collect_runs_records_missing_files_on_the_run(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    no_mask = helpers.add_run(root, "01", mask=False)
    no_confounds = helpers.add_run(root, "02", confounds=False)
    bad_sidecar = helpers.add_run(root, "03", sidecar="{broken")
    config = helpers.make_config(tmp_path, bids_dir=root)
    selection = query.collect_runs(config)
    runs = {r.entities["subject"]: r for r in selection.runs}
    # they stay in the selection (their unit reports them) and are counted as skipped
    assert selection.skipped == [query.Skipped(runs[s].bold, runs[s].error, missing_input=True)
                                 for s in ("01", "02", "03")]

    assert runs["01"].mask is None
    assert runs["01"].error == (f"{no_mask['bold']}: no matching "
                                "*_desc-brain_mask.nii[.gz] next to it")
    assert runs["02"].confounds is None
    assert runs["02"].mask == no_confounds["mask"]
    assert runs["02"].error == (f"{no_confounds['bold']}: no matching "
                                "*_desc-confounds_timeseries.tsv (needed by "
                                "--denoise-strategy simple)")
    sidecar = query.sidecar_path(bad_sidecar["bold"])
    assert runs["03"].error.startswith(f"{bad_sidecar['bold']}: {sidecar}: not valid JSON (")
    assert runs["03"].metadata == {}
    # the repetition time then comes from the header
    assert runs["03"].tr == pytest.approx(2.0)


@pytest.mark.parametrize("unit, pixdim", [("sec", 2.5), ("msec", 2500.0),
                                           ("usec", 2.5e6)])
def test_repetition_time_from_the_header_in_its_unit(tmp_path, unit, pixdim):
    """Without RepetitionTime in the sidecar, pixdim[4] in the header's time unit."""
    root = helpers.derivative_dataset(tmp_path / "prep")
    paths = helpers.add_run(root, "01", sidecar={"TaskName": "rest"})
    data = np.asarray(nib.load(paths["bold"]).dataobj)
    helpers.save_nifti(paths["bold"], data, tr=pixdim, time_unit=unit)
    (run,) = query.collect_runs(helpers.make_config(tmp_path, bids_dir=root)).runs
    assert run.tr == pytest.approx(2.5)


def test_collect_runs_without_confounds_for_strategy_none(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    helpers.add_run(root, "01", confounds=False)
    config = helpers.make_config(tmp_path, bids_dir=root, denoise_strategy="none")
    (run,) = query.collect_runs(config).runs
    assert run.confounds is None
    assert run.error is None


@pytest.mark.parametrize("unit, expected", [("sec", 2.5), ("msec", 2.5)])
def test_collect_runs_repetition_time_from_header(tmp_path, unit, expected):
    root = helpers.derivative_dataset(tmp_path / "prep")
    helpers.add_run(root, "01", sidecar=None, tr=2500.0 if unit == "msec" else 2.5)
    if unit == "msec":  # rewrite the header's time unit (add_run writes seconds)
        import nibabel as nib

        bold = next(root.rglob("*_bold.nii.gz"))
        img = nib.load(bold)
        img = type(img)(img.get_fdata(), img.affine, img.header)
        img.header.set_xyzt_units("mm", "msec")
        nib.save(img, bold)
    config = helpers.make_config(tmp_path, bids_dir=root)
    (run,) = query.collect_runs(config).runs
    assert run.metadata == {}
    assert run.tr == pytest.approx(expected)


def test_collect_runs_two_resolutions_need_res(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    helpers.add_run(root, "01", res="1")
    two = helpers.add_run(root, "01", res="2", shape=(3, 3, 3))
    config = helpers.make_config(tmp_path, bids_dir=root)
    with pytest.raises(query.InputError) as err:
        query.collect_runs(config)
    first = f"sub-01_task-rest_run-1_space-{helpers.SPACE}_res-1_desc-preproc_bold.nii.gz"
    assert str(err.value) == (f"{first}: several BOLD files for this run in space "
                              f"{helpers.SPACE} (res 1, 2); choose with --res")

    (run,) = query.collect_runs(helpers.make_config(tmp_path, bids_dir=root, res="2")).runs
    assert run.bold == two["bold"]
    assert run.mask == two["mask"]  # the mask of the same resolution
    assert run.entities["res"] == "2"


def test_collect_runs_errors(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    helpers.add_run(root, "01")

    config = helpers.make_config(tmp_path, bids_dir=root, participant_label=("01", "09"))
    with pytest.raises(query.InputError) as err:
        query.collect_runs(config)
    assert str(err.value) == (f"--participant-label 09: not found in {root} "
                              "(participants there: 01)")

    config = helpers.make_config(tmp_path, bids_dir=root, task=("motor",))
    with pytest.raises(query.InputError) as err:
        query.collect_runs(config)
    assert str(err.value) == (f"no runs left after filters (space {helpers.SPACE}, task "
                              "motor); --task motor: no BOLD run has this task (the BOLD "
                              "runs have task rest)")

    empty = helpers.derivative_dataset(tmp_path / "empty")
    helpers.save_nifti(empty / "sub-01" / "anat" / "sub-01_desc-preproc_T1w.nii.gz",
                       helpers.box_mask().astype("uint8"))
    with pytest.raises(query.InputError) as err:
        query.collect_runs(helpers.make_config(tmp_path, bids_dir=empty))
    assert str(err.value) == (f"{empty}: no fMRIPrep derivatives found "
                              "(no *_desc-preproc_bold.nii[.gz] under func/)")


def test_index_layout_saves_its_database_in_the_work_dir(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    helpers.add_run(root, "01")
    helpers.add_run(root, "02")
    work = tmp_path / "work"
    config = helpers.make_config(tmp_path, bids_dir=root, work_dir=work,
                                 participant_label=("02",))
    first = query.collect_runs(config)
    databases = list((work / "bids_db").glob("*/layout_index.sqlite"))
    assert len(databases) == 1
    # nothing was written into the input dataset, no temporary folder was left
    assert not list(root.rglob("*.sqlite"))
    assert [p.name for p in (work / "bids_db").iterdir()] == [databases[0].parent.name]
    stamp = databases[0].stat().st_mtime_ns

    again = query.collect_runs(config)
    assert again.runs == first.runs
    assert [r.entities["subject"] for r in again.runs] == ["02"]
    assert databases[0].stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_index_layout_keys_the_database_by_participants(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    helpers.add_run(root, "01")
    helpers.add_run(root, "02")
    work = tmp_path / "work"
    for label in ("01", "02"):
        config = helpers.make_config(tmp_path, bids_dir=root, work_dir=work,
                                     participant_label=(label,))
        (run,) = query.collect_runs(config).runs
        assert run.entities["subject"] == label
    assert len(list((work / "bids_db").glob("*/layout_index.sqlite"))) == 2


@pytest.mark.parametrize("shared", [False, True], ids=["work-dir", "bids-database-dir"])
def test_index_layout_sees_runs_added_since_the_database(tmp_path, shared):
    """A database is not reused after runs or participants were added to the dataset
    (it used to be: the new ones were "not found")."""
    root = helpers.derivative_dataset(tmp_path / "prep")
    helpers.add_run(root, "01")
    where = ({"bids_database_dir": tmp_path / "db"} if shared
             else {"work_dir": tmp_path / "work"})
    config = helpers.make_config(tmp_path, bids_dir=root, **where)
    assert [r.entities["subject"] for r in query.collect_runs(config).runs] == ["01"]
    helpers.add_run(root, "01", run=2)
    helpers.add_run(root, "02")
    runs = query.collect_runs(config).runs
    assert sorted((r.entities["subject"], r.entities.get("run")) for r in runs) == [
        ("01", "1"), ("01", "2"), ("02", "1")]
    # unchanged dataset: the database is reused
    databases = sorted((tmp_path / ("db" if shared else "work/bids_db")).glob("*/*.sqlite"))
    stamps = [p.stat().st_mtime_ns for p in databases]
    assert query.collect_runs(config).runs == runs
    assert [p.stat().st_mtime_ns for p in databases] == stamps


def test_run_is_frozen_and_compares_without_metadata(tmp_path):
    bold = Path(tmp_path / "b.nii.gz")
    one = query.Run({"subject": "01"}, bold, None, None, 2.0, metadata={"a": 1})
    two = query.Run({"subject": "01"}, bold, None, None, 2.0, metadata={"a": 2})
    assert one == two
    with pytest.raises(AttributeError):
        one.tr = 3.0  # type: ignore[misc]


# --------------------------------------------------------------------------- hints
def test_participant_not_found_names_those_there_and_the_one_meant(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    for label in ("sf02", "sf10", "01", "02", "03", "04", "05", "06", "07", "08", "09"):
        (root / f"sub-{label}").mkdir()
    helpers.add_run(root, "sf02")
    config = helpers.make_config(tmp_path, bids_dir=root, participant_label=("sf2",))
    with pytest.raises(query.InputError) as err:
        query.collect_runs(config)
    assert str(err.value) == (
        f"--participant-label sf2: not found in {root} (participants there: 01, 02, 03, "
        "04, 05, 06, 07, 08, 09, sf02 and 1 more); did you mean sf02?")
    # a participant folder without func/ files (e.g. anatomical outputs only)
    config = helpers.make_config(tmp_path, bids_dir=root, participant_label=("03", "sf02"))
    with pytest.raises(query.InputError) as err:
        query.collect_runs(config)
    assert str(err.value) == (
        f"--participant-label 03: not found in {root} (participants there: 01, 02, 03, "
        "04, 05, 06, 07, 08, 09, sf02 and 1 more); sub-03 has no func/ files there")


def test_no_runs_left_names_what_each_filter_could_be(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    helpers.add_run(root, "01", session="1", task="movie", run=1)
    helpers.add_run(root, "01", session="2", task="rest", run=2, space="T1w")

    def message(**kwargs):
        with pytest.raises(query.InputError) as err:
            query.collect_runs(helpers.make_config(tmp_path, bids_dir=root, **kwargs))
        return str(err.value)

    assert message(task=("muvie", "rest", "nback"), session_label=("3",)) == (
        f"no runs left after filters (space {helpers.SPACE}, session 3, task muvie rest "
        "nback); --session-label 3: no BOLD run has this session (the BOLD runs have "
        "sessions 1, 2); --task muvie nback: no BOLD run has this task (the BOLD runs "
        "have tasks movie, rest); did you mean movie for muvie?")
    assert message(space="T1W", run=(7,)) == (
        "no runs left after filters (space T1W, run 7); --space T1W: no BOLD run has "
        f"this space (the BOLD runs have spaces {helpers.SPACE}, T1w); did you mean "
        "T1w?; --run 7: no BOLD run has this run index (the BOLD runs have run indexes "
        "1, 2)")
    # every filter matches something, not together: nothing to add
    assert message(task=("rest",)) == (f"no runs left after filters (space {helpers.SPACE}, "
                                       "task rest)")


def test_default_space_missing_says_which_spaces_there_are(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    helpers.add_run(root, "01", space="T1w")
    helpers.add_run(root, "01", space="MNI152NLin6Asym")
    with pytest.raises(query.InputError) as err:
        query.collect_runs(helpers.make_config(tmp_path, bids_dir=root))
    assert str(err.value) == (
        f"no runs left after filters (space {helpers.SPACE}); --space {helpers.SPACE} "
        "(the default): no BOLD run has this space (the BOLD runs have spaces "
        "MNI152NLin6Asym, T1w); choose one with --space")


def test_ica_aroma_without_aroma_outputs(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    helpers.add_run(root, "01")
    with pytest.raises(query.InputError) as err:
        query.collect_runs(helpers.make_config(tmp_path, bids_dir=root,
                                               denoise_strategy="ica_aroma"))
    assert str(err.value) == (
        f"no runs left after filters (space {helpers.SPACE}); no "
        "*_desc-smoothAROMAnonaggr_bold.nii[.gz] of these participants (needed by "
        "--denoise-strategy ica_aroma)")


def test_bids_dir_at_the_derivatives_folder_points_to_the_root(tmp_path):
    raw = helpers.raw_dataset(tmp_path / "ds")
    fmriprep = helpers.derivative_dataset(raw / "derivatives" / "fmriprep")
    helpers.add_run(fmriprep, "01")
    deriv = raw / "derivatives"
    with pytest.raises(query.InputError) as err:
        query.collect_runs(helpers.make_config(tmp_path, bids_dir=deriv))
    assert str(err.value) == (
        f"{deriv}: no dataset_description.json (not a BIDS dataset); did you mean "
        f"{raw} (the dataset it is in) or {fmriprep} (fMRIPrep outputs in it)?")
    # a folder inside a participant's: the dataset it is in
    inside = raw / "sub-01"
    inside.mkdir()
    with pytest.raises(query.InputError) as err:
        query.collect_runs(helpers.make_config(tmp_path, bids_dir=inside))
    assert str(err.value) == (f"{inside}: no dataset_description.json (not a BIDS "
                              f"dataset); did you mean {raw} (the dataset it is in)?")
    # nothing to point to: no hint
    lone = tmp_path / "lone"
    lone.mkdir()
    with pytest.raises(query.InputError) as err:
        query.collect_runs(helpers.make_config(tmp_path, bids_dir=lone))
    assert str(err.value) == f"{lone}: no dataset_description.json (not a BIDS dataset)"


def test_fmriprep_outputs_without_dataset_type(tmp_path):
    """fMRIPrep's folder as BIDS_DIR is fine; without "DatasetType" it reads as raw."""
    root = tmp_path / "fmriprep"
    helpers.write_json(root / "dataset_description.json", {"Name": "x",
                                                            "BIDSVersion": "1.8.0"})
    helpers.add_run(root, "01")
    with pytest.raises(query.InputError) as err:
        query.collect_runs(helpers.make_config(tmp_path, bids_dir=root))
    assert str(err.value) == (
        f"{root}: no fMRIPrep derivatives found (BIDS_DIR is a raw dataset without "
        "derivatives/; pass --derivatives PATH); it holds fMRIPrep outputs, but its "
        'dataset_description.json lacks "DatasetType": "derivative": add it, or pass '
        f"--derivatives {root}")
    config = helpers.make_config(tmp_path, bids_dir=root, derivatives=(root,))
    assert len(query.collect_runs(config).runs) == 1  # as the hint says


def test_other_derivatives_as_bids_dir_points_to_fmriprep_beside_it(tmp_path):
    deriv = tmp_path / "ds" / "derivatives"
    fmriprep = helpers.derivative_dataset(deriv / "fmriprep")
    helpers.add_run(fmriprep, "01")
    mriqc = helpers.derivative_dataset(deriv / "mriqc", name="MRIQC")
    (mriqc / "sub-01").mkdir()
    with pytest.raises(query.InputError) as err:
        query.collect_runs(helpers.make_config(tmp_path, bids_dir=mriqc))
    assert str(err.value) == (f"{mriqc}: no fMRIPrep derivatives found (no "
                              "*_desc-preproc_bold.nii[.gz] under func/); did you mean "
                              f"{fmriprep}?")
