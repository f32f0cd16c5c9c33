"""Bad input: a one-line error naming the file or option, a non-zero exit code, no
traceback (unless -v), and nothing new in OUTPUT_DIR for the failing unit.

Every case breaks a fresh copy of a generated dataset (two participants, one run each,
8 mm). Dataset-level problems stop the run before OUTPUT_DIR is touched; problems of one
participant's files make that participant fail while the other one completes.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_parcellate.demo import make_demo_dataset

from .conftest import run_cli

SPACE = "space-MNI152NLin2009cAsym"


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    """Two participants, one 40-volume run each, 8 mm (3,666 voxels in the mask)."""
    root = tmp_path_factory.mktemp("small") / "bids"
    return make_demo_dataset(root, participants=("01", "02"), runs=(1,), resolution=8,
                             n_volumes=40, n_true_parcels=10, seed=1)


@pytest.fixture
def copy(small, tmp_path) -> Path:
    """A fresh copy of :func:`small` to break."""
    dst = tmp_path / "bids"
    shutil.copytree(small.root, dst)
    return dst


def func_dir(root: Path, sub: str = "01") -> Path:
    return root / "derivatives" / "fmriprep" / f"sub-{sub}" / "func"


def bold(root: Path, sub: str = "01") -> Path:
    return func_dir(root, sub) / f"sub-{sub}_task-rest_run-1_{SPACE}_desc-preproc_bold.nii.gz"


def mask(root: Path, sub: str = "01") -> Path:
    return func_dir(root, sub) / f"sub-{sub}_task-rest_run-1_{SPACE}_desc-brain_mask.nii.gz"


def confounds(root: Path, sub: str = "01") -> Path:
    return func_dir(root, sub) / f"sub-{sub}_task-rest_run-1_desc-confounds_timeseries.tsv"


def sidecar(root: Path, sub: str = "01") -> Path:
    return func_dir(root, sub) / f"sub-{sub}_task-rest_run-1_{SPACE}_desc-preproc_bold.json"


def snapshot(path: Path) -> list[str] | None:
    """Every file under ``path`` (None when it does not exist)."""
    if not path.exists():
        return None
    if path.is_file():
        return [path.name]
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


def stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# --------------------------------------------------------------------------- breakers
def rewrite_bold(root: Path, data: np.ndarray, affine=None, zooms=None) -> None:
    img = nib.load(bold(root))
    new = nib.Nifti1Image(data.astype(np.float32), img.affine if affine is None else affine)
    if zooms is not None:
        new.header.set_zooms(zooms)
    nib.save(new, bold(root))


def bold_data(root: Path) -> np.ndarray:
    return nib.load(bold(root)).get_fdata(dtype=np.float32)


def inside(root: Path) -> tuple:
    """Index of one voxel inside the brain mask."""
    return tuple(np.argwhere(np.asarray(nib.load(mask(root)).dataobj) > 0)[100])


def make_3d(root):
    rewrite_bold(root, bold_data(root)[..., 0])


def make_5d(root):
    data = bold_data(root)
    rewrite_bold(root, data.reshape(*data.shape[:3], 20, 2))


def mask_other_shape(root):
    img = nib.load(mask(root))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-1], img.affine), mask(root))


def mask_other_affine(root):
    img = nib.load(mask(root))
    affine = img.affine.copy()
    affine[0, 3] += 8.0
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), mask(root))


def mask_empty(root):
    img = nib.load(mask(root))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), mask(root))


def put_value(value):
    def breaker(root):
        data = bold_data(root)
        data[(*inside(root), 7)] = value
        rewrite_bold(root, data)
    return breaker


def drop_confound_rows(root):
    table = pd.read_csv(confounds(root), sep="\t")
    table.iloc[:-5].to_csv(confounds(root), sep="\t", index=False, na_rep="n/a")


def delete(path_of):
    return lambda root: path_of(root).unlink()


def empty_file(path_of):
    return lambda root: path_of(root).write_bytes(b"")


def header_only(root):
    first = confounds(root).read_text().splitlines()[0]
    confounds(root).write_text(first + "\n")


def drop_confound_column(root):
    table = pd.read_csv(confounds(root), sep="\t")
    table.drop(columns=["trans_x"]).to_csv(confounds(root), sep="\t", index=False,
                                           na_rep="n/a")


def drop_columns(*names):
    def breaker(root):
        table = pd.read_csv(confounds(root), sep="\t")
        table.drop(columns=list(names)).to_csv(confounds(root), sep="\t", index=False,
                                               na_rep="n/a")
    return breaker


def set_tr(value):
    def breaker(root):
        meta = json.loads(sidecar(root).read_text())
        if value is None:
            del meta["RepetitionTime"]
            data = bold_data(root)
            rewrite_bold(root, data, zooms=(8.0, 8.0, 8.0, 0.0))
        else:
            meta["RepetitionTime"] = value
        sidecar(root).write_text(json.dumps(meta))
    return breaker


def truncate(path_of):
    def breaker(root):
        raw = path_of(root).read_bytes()
        path_of(root).write_bytes(raw[: len(raw) // 2])
    return breaker


def garbage(path_of):
    return lambda root: path_of(root).write_bytes(gzip.compress(b"not a nifti" * 100))


def corrupt_json(path_of):
    return lambda root: path_of(root).write_text('{"RepetitionTime": 2.0,')


def all_high_motion(root):
    table = pd.read_csv(confounds(root), sep="\t")
    table["framewise_displacement"] = 5.0
    table.to_csv(confounds(root), sep="\t", index=False, na_rep="n/a")


#: (id, breaker of sub-01's files, extra CLI arguments, fragments of the message)
UNIT_CASES = [
    ("bold-3d", make_3d, [], ["desc-preproc_bold.nii.gz", "BOLD must be 4D, got 3D"]),
    ("bold-5d", make_5d, [], ["desc-preproc_bold.nii.gz", "BOLD must be 4D, got 5D"]),
    ("grid-shape", mask_other_shape, [], ["desc-preproc_bold.nii.gz", "differs from its "
                                          "brain mask"]),
    ("grid-affine", mask_other_affine, [], ["desc-preproc_bold.nii.gz", "differs from its "
                                            "brain mask"]),
    ("mask-empty", mask_empty, [], ["desc-brain_mask.nii.gz", "mask is empty"]),
    ("mask-missing", delete(mask), [], ["desc-preproc_bold.nii.gz", "no matching "
                                        "*_desc-brain_mask"]),
    ("mask-truncated", truncate(mask), [], ["desc-brain_mask.nii.gz", "cannot read mask"]),
    ("nan", put_value(np.nan), [], ["desc-preproc_bold.nii.gz", "1 voxels inside the brain "
                                    "mask hold NaN or Inf"]),
    ("inf", put_value(np.inf), [], ["desc-preproc_bold.nii.gz", "NaN or Inf"]),
    ("confounds-rows", drop_confound_rows, [], ["desc-confounds_timeseries.tsv",
                                                "35 rows but the BOLD has 40 volumes"]),
    ("confounds-missing", delete(confounds), [], ["desc-preproc_bold.nii.gz", "no matching "
                                                  "*_desc-confounds_timeseries.tsv"]),
    ("confounds-empty", empty_file(confounds), [], ["desc-confounds_timeseries.tsv",
                                                    "confounds TSV is empty"]),
    ("confounds-header-only", header_only, [], ["desc-confounds_timeseries.tsv",
                                                "confounds TSV is empty"]),
    ("confounds-column", drop_confound_column, [], [
        "desc-confounds_timeseries.tsv: lacks confound column trans_x (needed by "
        "--denoise-strategy simple)"]),
    # nilearn would say "['csf'] not in index" (pandas' KeyError)
    ("confounds-csf", drop_columns("csf"), [], [
        "desc-confounds_timeseries.tsv: lacks confound column csf (needed by "
        "--denoise-strategy simple)"]),
    ("confounds-wm-csf", drop_columns("csf", "white_matter"), [], [
        "desc-confounds_timeseries.tsv: lacks confound columns csf, white_matter (needed "
        "by --denoise-strategy simple)"]),
    ("confounds-global-signal", drop_columns("global_signal"),
     ["--global-signal", "basic"], [
         "desc-confounds_timeseries.tsv: lacks confound column global_signal (needed by "
         "--denoise-strategy simple --global-signal basic)"]),
    ("confounds-std-dvars", drop_columns("std_dvars"), ["--denoise-strategy", "scrubbing"], [
        "desc-confounds_timeseries.tsv: lacks confound column std_dvars (needed by "
        "--denoise-strategy scrubbing)"]),
    ("confounds-compcor", drop_columns(*(f"a_comp_cor_{i:02d}" for i in range(6))),
     ["--denoise-strategy", "compcor"], [
         "desc-confounds_timeseries.tsv: lacks CompCor components (a_comp_cor_* columns "
         "listed in the JSON sidecar) (needed by --denoise-strategy compcor)"]),
    # one component listed in the sidecar but absent from the TSV: pandas' KeyError
    ("confounds-compcor-one", drop_columns("a_comp_cor_01"),
     ["--denoise-strategy", "compcor"], [
         "desc-confounds_timeseries.tsv: lacks confound column a_comp_cor_01 (needed by "
         "--denoise-strategy compcor)"]),
    ("tr-missing", set_tr(None), [], ["desc-preproc_bold.nii.gz", "RepetitionTime missing"]),
    ("tr-zero", set_tr(0), [], ["desc-preproc_bold.nii.gz", "RepetitionTime missing or <= 0"]),
    ("tr-negative", set_tr(-2.0), [], ["desc-preproc_bold.nii.gz", "<= 0"]),
    ("bold-truncated", truncate(bold), [], ["desc-preproc_bold.nii.gz", "cannot read NIfTI"]),
    ("bold-garbage", garbage(bold), [], ["desc-preproc_bold.nii.gz", "cannot read NIfTI"]),
    ("sidecar-corrupt", corrupt_json(sidecar), [], ["desc-preproc_bold.json",
                                                    "not valid JSON"]),
    ("all-censored", all_high_motion, ["--denoise-strategy", "scrubbing"],
     ["desc-preproc_bold.nii.gz", "all 40 volumes are censored"]),
]


@pytest.mark.parametrize("breaker, extra, fragments",
                         [c[1:] for c in UNIT_CASES], ids=[c[0] for c in UNIT_CASES])
def test_bad_participant_fails_alone(copy, tmp_path, capsys, breaker, extra, fragments):
    breaker(copy)
    out = tmp_path / "out"
    code = run_cli(copy, out, "--n-parcels", "10", *extra)
    lines = stderr_lines(capsys)
    assert code == 1, lines
    assert not any("Traceback" in line for line in lines)
    failed = [line for line in lines if "sub-01 failed:" in line]
    assert len(failed) == 1, lines
    assert all(f in failed[0] for f in fragments), (failed[0], fragments)
    # the reason once, where it happened; the summary at the end names the unit only
    reason = failed[0].split("sub-01 failed: ", 1)[1]
    assert sum(reason in line for line in lines) == 1, lines
    (log,) = (out / "logs").glob("participant-*.log")
    assert log.read_text().count(reason) == 1
    assert lines[-1].endswith("ERROR   1 unit failed: sub-01 (see above)"), lines
    assert "not in index" not in failed[0]
    # nothing for the failing participant, a complete result for the other one
    assert not (out / "sub-01").exists()
    assert (out / "sub-02" / "sub-02_completed.json").is_file()
    assert len(list((out / "sub-02" / "func").glob("*_timeseries.tsv"))) == 1
    assert "sub-01" not in (out / "logs" / "manifest.tsv").read_text()


def test_traceback_only_with_verbose(copy, tmp_path, capsys):
    make_3d(copy)
    assert run_cli(copy, tmp_path / "out", "--n-parcels", "10", "-v") == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "BOLD must be 4D" in err


@pytest.mark.parametrize("keep", [False, True])
def test_voxels_without_signal_are_left_out_and_recorded(copy, tmp_path, capsys, keep):
    """Brain-mask voxels constant over a run (no signal, e.g. outside the field of view)
    are left out of the parcellation and recorded; --keep-flat-voxels keeps them."""
    data = bold_data(copy)
    brain = np.asarray(nib.load(mask(copy)).dataobj) > 0
    constant = np.argwhere(brain)[:25]
    for index in constant:
        data[tuple(index)] = 1000.0  # the same value in every volume of run 1
    rewrite_bold(copy, data)
    out = tmp_path / "out"
    extra = ("--keep-flat-voxels",) if keep else ()
    assert run_cli(copy, out, "--n-parcels", "10", "--participant-label", "01", *extra) == 0
    err = capsys.readouterr().err
    assert "25 of 3666 voxels inside the brain mask are constant in time" in err
    assert "25 brain-mask voxels have no signal in some run" in err
    ts = next((out / "sub-01" / "func").glob("*_timeseries.tsv"))
    values = pd.read_csv(ts, sep="\t", na_values="n/a").dropna().to_numpy()
    assert values.shape == (38, 10) and np.isfinite(values).all()
    dseg = next((out / "sub-01" / "anat").glob("*_dseg.nii.gz"))
    labels = np.asarray(nib.load(dseg).dataobj)
    flat = np.zeros_like(brain)
    flat[tuple(constant.T)] = True
    assert (labels[brain & ~flat] > 0).all()
    assert (labels[flat] > 0).all() if keep else not labels[flat].any()
    sidecar = json.loads(dseg.with_name(dseg.name.replace(".nii.gz", ".json")).read_text())
    record = sidecar["VoxelsWithoutSignal"]
    assert record["Count"] == 25 and record["Kept"] is keep
    corners = nib.affines.apply_affine(nib.load(dseg).affine, constant)
    np.testing.assert_allclose(record["BoundingBox"],
                               [corners.min(axis=0), corners.max(axis=0)], atol=0.01)
    assert sidecar["Parameters"]["KeepFlatVoxels"] is keep
    assert sidecar["BrainMask"].endswith(f": {int(brain.sum()) - (0 if keep else 25)} voxels")


# --------------------------------------------------------------------------- dataset level
def _no_description(root, tmp):
    (root / "dataset_description.json").unlink()
    return root, tmp / "out", []


def _raw_without_derivatives(root, tmp):
    shutil.rmtree(root / "derivatives")
    return root, tmp / "out", []


def _derivative_without_bold(root, tmp):
    fmriprep = root / "derivatives" / "fmriprep"
    for path in fmriprep.rglob("*_bold.nii.gz"):
        path.unlink()
    return fmriprep, tmp / "out", []


def _without_dataset_type(root, tmp):
    fmriprep = root / "derivatives" / "fmriprep"
    description = json.loads((fmriprep / "dataset_description.json").read_text())
    del description["DatasetType"]
    (fmriprep / "dataset_description.json").write_text(json.dumps(description))
    return fmriprep, tmp / "out", []


def _other_derivatives(root, tmp):
    mriqc = root / "derivatives" / "mriqc"
    mriqc.mkdir()
    (mriqc / "dataset_description.json").write_text(json.dumps(
        {"Name": "MRIQC", "BIDSVersion": "1.8.0", "DatasetType": "derivative"}))
    return mriqc, tmp / "out", []


def _space_t1w(root, tmp):
    for path in (root / "derivatives").rglob(f"*_{SPACE}_*"):
        path.rename(path.with_name(path.name.replace(SPACE, "space-T1w")))
    return root, tmp / "out", []


def _bad_description(root, tmp):
    (root / "dataset_description.json").write_text("{")
    return root, tmp / "out", []


def _filter_file(text):
    def setup(root, tmp):
        path = tmp / "filter.json"
        path.write_text(text)
        return root, tmp / "out", ["--bids-filter-file", path]
    return setup


def _args(*args, out="out"):
    return lambda root, tmp: (root, tmp / out, list(args))


def _out_file(root, tmp):
    (tmp / "file").write_text("x")
    return root, tmp / "file", []


def _out_under_file(root, tmp):
    (tmp / "file").write_text("x")
    return root, tmp / "file" / "out", []


#: (id, setup(bids copy, tmp) -> (BIDS_DIR, OUTPUT_DIR, args), fragments of the message)
DATASET_CASES = [
    ("bids-dir-missing", lambda root, tmp: (tmp / "nothing", tmp / "out", []),
     ["nothing", "BIDS_DIR does not exist"]),
    ("no-dataset-description", _no_description, ["no dataset_description.json"]),
    ("bad-dataset-description", _bad_description, ["dataset_description.json",
                                                   "not valid JSON"]),
    ("raw-without-derivatives", _raw_without_derivatives, ["no fMRIPrep derivatives found"]),
    ("derivatives-without-bold", _derivative_without_bold, ["no fMRIPrep derivatives found"]),
    ("participant-not-found", _args("--participant-label", "99"),
     ["--participant-label 99: not found", "fmriprep (participants there: 01, 02)"]),
    ("participant-typo", _args("--participant-label", "sub-1"),
     ["--participant-label 1: not found", "fmriprep (participants there: 01, 02); did you "
      "mean 01?"]),
    ("bids-dir-is-derivatives", lambda root, tmp: (root / "derivatives", tmp / "out", []),
     ["bids/derivatives: no dataset_description.json (not a BIDS dataset); did you mean ",
      "/bids (the dataset it is in) or ", "/bids/derivatives/fmriprep (fMRIPrep outputs "
      "in it)?"]),
    ("fmriprep-without-dataset-type", _without_dataset_type,
     ["fmriprep: no fMRIPrep derivatives found (BIDS_DIR is a raw dataset without "
      "derivatives/; pass --derivatives PATH); it holds fMRIPrep outputs, but its "
      'dataset_description.json lacks "DatasetType": "derivative": add it, or pass '
      "--derivatives ", "/bids/derivatives/fmriprep"]),
    ("bids-dir-is-other-derivatives", _other_derivatives,
     ["mriqc: no fMRIPrep derivatives found (no *_desc-preproc_bold.nii[.gz] under "
      "func/); did you mean ", "/bids/derivatives/fmriprep?"]),
    ("no-runs-after-filters", _args("--task", "nback"),
     ["no runs left after filters (space MNI152NLin2009cAsym, task nback); --task nback: "
      "no BOLD run has this task (the BOLD runs have task rest)"]),
    ("task-typo", _args("--task", "rets"),
     ["--task rets: no BOLD run has this task (the BOLD runs have task rest); did you "
      "mean rest?"]),
    ("space-absent", _args("--space", "T1w"),
     ["no runs left after filters (space T1w); --space T1w: no BOLD run has this space "
      "(the BOLD runs have space MNI152NLin2009cAsym)"]),
    ("default-space-absent", _space_t1w,
     ["--space MNI152NLin2009cAsym (the default): no BOLD run has this space (the BOLD "
      "runs have space T1w); choose one with --space"]),
    ("session-absent", _args("--session-label", "2"),
     ["--session-label 2: no BOLD run has this session (the BOLD runs have no sessions)"]),
    ("label-dotdot", _args("--participant-label", "../x"),
     ["--participant-label '../x': not a BIDS label"]),
    ("label-trailing-dotdot", _args("--participant-label", "sub-01/.."),
     ["--participant-label 'sub-01/..': not a BIDS label"]),
    ("label-absolute", _args("--participant-label", "/etc/passwd"),
     ["--participant-label '/etc/passwd': not a BIDS label"]),
    ("label-underscore", _args("--participant-label", "0_1"),
     ["--participant-label '0_1': not a BIDS label"]),
    ("session-label-path", _args("--session-label", "../1"),
     ["--session-label '../1': not a BIDS label"]),
    ("task-label-path", _args("--task", "rest/.."), ["--task 'rest/..': not a BIDS label"]),
    ("run-not-index", _args("--run", "1;2"), ["--run '1;2': not a run index"]),
    ("filter-leaves-no-run", _filter_file('{"bold": {"run": 7}}'),
     ["no runs left after filters", "--bids-filter-file"]),
    ("filter-not-json", _filter_file('{"bold": '), ["--bids-filter-file", "not valid JSON"]),
    ("filter-not-queries", _filter_file('{"bold": 3}'),
     ["--bids-filter-file", "expected an object of query objects"]),
    ("filter-missing", lambda root, tmp: (root, tmp / "out", ["--bids-filter-file",
                                                             tmp / "nope.json"]),
     ["--bids-filter-file", "nope.json: file not found"]),
    ("output-is-bids-dir", lambda root, tmp: (root, root, []),
     ["OUTPUT_DIR must not be BIDS_DIR or one of its parents"]),
    ("output-is-parent", lambda root, tmp: (root, root.parent, []),
     ["OUTPUT_DIR must not be BIDS_DIR or one of its parents"]),
    ("output-inside-bids", lambda root, tmp: (root, root / "out", []),
     ["OUTPUT_DIR inside BIDS_DIR must be under BIDS_DIR/derivatives/"]),
    ("output-is-fmriprep", lambda root, tmp: (root, root / "derivatives" / "fmriprep", []),
     ["OUTPUT_DIR holds another dataset (GeneratedBy fMRIPrep)"]),
    ("output-inside-derivatives-input",
     lambda root, tmp: (root, root / "derivatives" / "fmriprep" / "x",
                        ["--derivatives", root / "derivatives" / "fmriprep"]),
     ["--derivatives", "overlaps OUTPUT_DIR"]),
    ("output-is-derivatives-root", lambda root, tmp: (root, root / "derivatives", []),
     ["derivatives dataset", "fmriprep: overlaps OUTPUT_DIR"]),
    ("work-dir-inside-bids", _args("-w", "WORK"), ["work directory must not be inside "
                                                   "BIDS_DIR"]),
    ("output-is-a-file", _out_file, ["OUTPUT_DIR exists and is not a folder"]),
    ("output-under-a-file", _out_under_file, ["cannot create OUTPUT_DIR", "is not a folder"]),
    ("unknown-method", _args("--method", "spectral"), ["--method 'spectral': choose from"]),
    ("unknown-strategy", _args("--denoise-strategy", "magic"),
     ["--denoise-strategy 'magic': choose from"]),
    ("option-unused-by-strategy", _args("--fd-threshold", "0.3"),
     ["--fd-threshold has no effect with --denoise-strategy simple"]),
    ("n-parcels-below-2", _args("--n-parcels", "1"), ["--n-parcels 1: every scale must "
                                                      "be >= 2"]),
    ("n-parcels-above-voxels", _args("--n-parcels", "10", "5000"),
     ["--n-parcels 5000: must be below the 3666 voxels in the brain mask"]),
    ("mem-gb-too-low", _args("--mem-gb", "0.05"), ["--mem-gb 0.05: sub-01 needs about",
                                                   "GB"]),
]


#: messages of the cases above that are usage errors (exit 2): an option value that is
#: invalid whatever the dataset
USAGE_ERRORS = ("--participant-label '", "--session-label '", "--task '", "--run '",
                "--method '", "--denoise-strategy '", "--fd-threshold has no effect",
                "--n-parcels 1:")


@pytest.mark.parametrize("setup, fragments", [c[1:] for c in DATASET_CASES],
                         ids=[c[0] for c in DATASET_CASES])
def test_bad_dataset_or_option(copy, tmp_path, capsys, setup, fragments):
    bids_dir, out, args = setup(copy, tmp_path)
    args = [copy / "work" if a == "WORK" else a for a in args]
    if "--n-parcels" not in args:
        args += ["--n-parcels", "10"]
    before_out, before_bids = snapshot(out), snapshot(copy)
    code = run_cli(bids_dir, out, *args)
    lines = stderr_lines(capsys)
    # an invalid option value is a usage error (2); a dataset that does not fit, 1
    assert code == (2 if fragments[0].startswith(USAGE_ERRORS) else 1), lines
    assert not any("Traceback" in line for line in lines)
    message = [line for line in lines if "error" in line.lower()]
    assert message, lines
    if "5000" not in str(fragments):
        # dataset-level: exactly one line, the last one
        assert lines[-1].startswith("bids_parcellate: error: "), lines
        assert len(message) == 1, lines
        assert all(f in lines[-1] for f in fragments), (lines[-1], fragments)
        assert snapshot(out) == before_out
    else:
        # per participant (each has the same too-small mask): both fail, nothing written
        failed = [line for line in lines if " failed: --n-parcels" in line]
        assert len(failed) == 2 and all(all(f in line for f in fragments) for line in failed)
        assert lines[-1].endswith("2 units failed: sub-01, sub-02 (see above)"), lines
        assert not list(out.glob("sub-*"))
    if out != copy and copy not in out.parents:
        assert snapshot(copy) == before_bids


def test_one_unit_failure_is_summarised(copy, tmp_path, capsys):
    """A summary at the end lists the failures; the exit code says some failed."""
    make_3d(copy)
    assert run_cli(copy, tmp_path / "out", "--n-parcels", "10") == 1
    lines = stderr_lines(capsys)
    done = [i for i, line in enumerate(lines) if "1 unit succeeded" in line]
    assert done and "1 failed" in lines[done[0]]
    assert lines[done[0] + 1:] == [lines[-1]]
    assert lines[-1].endswith(" ERROR   1 unit failed: sub-01 (see above)")


def test_run_missing_a_piece_is_skipped_and_recorded(tmp_path, capsys):
    """Issue 2: a run missing a required file is skipped with the reason logged; the
    participant goes on with its complete runs, and the exit code says something was
    missing (issue 8: never a silent pass)."""
    truth = make_demo_dataset(tmp_path / "bids", participants=("01",), runs=(1, 2),
                              resolution=8, n_volumes=40, seed=2)
    func = truth.fmriprep_dir / "sub-01" / "func"
    missing = func / "sub-01_task-rest_run-2_desc-confounds_timeseries.tsv"
    missing.unlink()
    out = tmp_path / "out"
    assert run_cli(truth.root, out, "--n-parcels", "10") == 1
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if "sub-01: skipping run: " in line]
    assert len(skipped) == 1
    assert "sub-01_task-rest_run-2" in skipped[0]
    assert skipped[0].endswith("no matching *_desc-confounds_timeseries.tsv (needed by "
                               "--denoise-strategy simple)")
    assert err.count("desc-confounds_timeseries.tsv") == 1
    assert err.rstrip().endswith("ERROR   1 unit incomplete: sub-01 (runs skipped for a "
                                 "missing input, see above)")
    names = sorted(p.name for p in (out / "sub-01" / "func").glob("*_timeseries.tsv"))
    assert len(names) == 1 and "run-1" in names[0]
    assert not (out / "sub-01" / "sub-01_completed.json").exists()
