"""Find the fMRIPrep runs to process with pybids.

Only the fMRIPrep derivatives are indexed (raw datasets are not needed: the preprocessed
BOLD sidecar carries ``RepetitionTime``). The indexer ignores participants that were not
requested and every datatype but ``func`` (:mod:`bids_parcellate.inputs.index`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from bids_parcellate.config import Config, InputError
from bids_parcellate.inputs import hints
from bids_parcellate.inputs.index import index_layout

LOGGER = logging.getLogger("bids_parcellate")

#: Entities that identify the acquisition a preprocessed run came from (BIDS order).
SOURCE_ENTITIES = (
    "subject",
    "session",
    "task",
    "acquisition",
    "ceagent",
    "reconstruction",
    "direction",
    "run",
    "echo",
)


@dataclass(frozen=True)
class Run:
    """One preprocessed BOLD run with everything needed to denoise it.

    Attributes
    ----------
    entities : dict
        Source entities (``subject``, ``session``, ``task``, ``run``, ...), strings.
    bold, mask, confounds : Path
        fMRIPrep files (``confounds`` is ``None`` with ``--denoise-strategy none``;
        ``mask`` or ``confounds`` is ``None`` when missing, then ``error`` says so).
    tr : float
        Repetition time in seconds.
    metadata : dict
        The BOLD sidecar.
    error : str, optional
        Why the run cannot be used (a missing mask or confounds file, an unreadable
        sidecar). Such a run makes its unit fail, not the whole selection, so that the
        other participants still run.
    """

    entities: dict
    bold: Path
    mask: Path | None
    confounds: Path | None
    tr: float | None
    metadata: dict = field(default_factory=dict, compare=False)
    error: str | None = None

    @property
    def unit(self) -> tuple[str, str | None]:
        """The (participant, session) this run belongs to."""
        return self.entities["subject"], self.entities.get("session")


@dataclass(frozen=True)
class Skipped:
    """A run that cannot be used, with the reason (recorded in logs and reports).

    ``missing_input``: a required file is missing or unreadable (the invocation then
    exits non-zero); otherwise the run was left out by design (too few volumes kept).
    """

    bold: Path
    reason: str
    missing_input: bool = False


@dataclass
class Selection:
    """The runs found, grouped into processing units, and the runs skipped.

    ``skipped``: the runs that miss a required file (mask, confounds, readable sidecar).
    They stay in ``runs`` with their ``error``, so that their unit records and reports
    them (:func:`bids_parcellate.participant.complete_runs`).
    """

    fmriprep_dirs: list[Path]
    runs: list[Run]
    skipped: list[Skipped]

    def units(self) -> dict[tuple[str, str | None], list[Run]]:
        """Runs grouped by (participant, session), in sorted order.

        One parcellation is learned per unit: per participant, or per participant and
        session when the selected runs carry a ``ses-`` entity.
        """
        out: dict[tuple[str, str | None], list[Run]] = {}
        for run in self.runs:
            out.setdefault(run.unit, []).append(run)
        return dict(sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")))


# --------------------------------------------------------------------------- datasets
def read_dataset_description(path: Path) -> dict:
    """Read ``dataset_description.json`` of a dataset root, or raise :class:`InputError`."""
    desc = path / "dataset_description.json"
    if not desc.is_file():
        raise InputError(f"{path}: no dataset_description.json (not a BIDS dataset)")
    try:
        data = json.loads(desc.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{desc}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{desc}: not a JSON object")
    return data


def _generated_by(description: dict) -> set[str]:
    return {
        str(item.get("Name", "")).lower()
        for item in description.get("GeneratedBy", []) or []
        if isinstance(item, dict)
    }


def find_fmriprep_dirs(config: Config) -> list[Path]:
    """Locate the derivatives datasets to query.

    BIDS_DIR itself when it is a derivative dataset; otherwise ``--derivatives`` paths,
    or the datasets under ``BIDS_DIR/derivatives/`` (our own output folder excluded).
    """
    bids_dir = config.bids_dir
    if not bids_dir.is_dir():
        raise InputError(f"{bids_dir}: BIDS_DIR does not exist or is not a folder")
    if not (bids_dir / "dataset_description.json").is_file():  # e.g. its derivatives/
        raise InputError(f"{bids_dir}: no dataset_description.json (not a BIDS dataset)"
                         + hints.folder_hint(bids_dir))
    description = read_dataset_description(bids_dir)
    if config.derivatives:
        dirs = []
        for path in config.derivatives:
            if not path.is_dir():
                raise InputError(f"--derivatives {path}: not a folder")
            read_dataset_description(path)
            _check_not_output(path, config.output_dir, "--derivatives")
            dirs.append(path)
        return dirs
    if description.get("DatasetType") == "derivative":
        return [bids_dir]
    candidates = []
    deriv_root = bids_dir / "derivatives"
    if deriv_root.is_dir():
        output = config.output_dir.resolve()
        for sub in sorted(deriv_root.iterdir()):
            if not sub.is_dir() or sub.resolve() == output:
                continue
            if not (sub / "dataset_description.json").is_file():
                continue
            if "bids_parcellate" in _generated_by(read_dataset_description(sub)):
                continue
            candidates.append(sub)
    if not candidates:
        raise InputError(
            f"{bids_dir}: no fMRIPrep derivatives found (BIDS_DIR is a raw dataset without "
            "derivatives/; pass --derivatives PATH)" + hints.raw_dataset_hint(bids_dir)
        )
    for path in candidates:
        _check_not_output(path, config.output_dir, "derivatives dataset")
    return candidates


def _check_not_output(source: Path, output_dir: Path, option: str) -> None:
    """An input dataset and OUTPUT_DIR must not overlap (outputs would be indexed as
    inputs, and a rerun's cleanup could remove input files)."""
    source, output = source.resolve(), output_dir.resolve()
    if source == output or output in source.parents or source in output.parents:
        raise InputError(f"{option} {source}: overlaps OUTPUT_DIR {output}")


# --------------------------------------------------------------------------- queries
def read_bids_filters(path: Path) -> dict:
    """Read an fMRIPrep-style ``--bids-filter-file`` and return its ``bold`` filters."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"--bids-filter-file {path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"--bids-filter-file {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise InputError(
            f"--bids-filter-file {path}: expected an object of query objects, "
            'e.g. {"bold": {"session": "1"}}'
        )
    return data


def _bold_filters(config: Config) -> dict:
    filters = dict((config.bids_filters or {}).get("bold", {}))
    for key in ("datatype", "suffix", "desc", "extension", "space", "scope"):
        filters.pop(key, None)
    return filters


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar of a BIDS data file (``.nii.gz``, ``.nii`` or ``.tsv``)."""
    path = Path(path)
    for ext in (".nii.gz", ".nii", ".tsv"):
        if path.name.endswith(ext):
            return path.with_name(path.name[: -len(ext)] + ".json")
    return path.with_suffix(".json")


def _sidecar(path: Path) -> dict:
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return {}
    try:
        data = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{sidecar}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _repetition_time(bold: Path, metadata: dict) -> float | None:
    """RepetitionTime from the sidecar, or from the NIfTI header (pixdim[4])."""
    tr = metadata.get("RepetitionTime")
    if tr is None:
        import nibabel as nib

        try:
            header = nib.load(bold).header
            zooms = header.get_zooms()
            units = header.get_xyzt_units()[1]
        except Exception:
            return None
        if len(zooms) < 4 or not zooms[3]:
            return None
        tr = float(zooms[3]) / {"msec": 1e3, "usec": 1e6}.get(units, 1.0)
        LOGGER.warning("%s: RepetitionTime missing from the sidecar, %.3f s from the header",
                       bold.name, tr)
    try:
        return float(tr)
    except (TypeError, ValueError):
        return None


def _source_key(entities: dict) -> tuple:
    """The acquisition a file comes from: source entities, ``None`` where absent."""
    return tuple(str(entities[k]) if k in entities else None for k in SOURCE_ENTITIES)


def _entity_parser(layout):
    """``path -> entities`` with pybids' ``parse_file_entities`` and the layout's entity
    definitions (the same regexes the index was built with), without a database query."""
    from bids.layout import parse_file_entities

    definitions: dict = {}
    for cfg in layout.config.values():
        definitions.update(cfg.entities)
    entities = list(definitions.values())
    return lambda path: parse_file_entities(path, entities=entities)


class _Found:
    """Files from one pybids query, with their entities, grouped by :func:`_source_key`.

    Runs are paired with their mask and confounds by looking them up here rather than
    with one ``layout.get`` per run: pybids builds an SQL query per call (about 35 ms
    on this machine), which made pairing 2,000 runs take over two minutes. Entities are
    parsed from the file names (:func:`_entity_parser`): ``BIDSFile.get_entities`` would
    cost one more query per file.
    """

    def __init__(self, layout, parse, **query) -> None:
        self.by_source: dict[tuple, list[tuple[dict, Path]]] = {}
        for path in layout.get(return_type="file", **query):
            ents = parse(path)
            self.by_source.setdefault(_source_key(ents), []).append((ents, Path(path)))

    def items(self):
        return self.by_source.items()

    def match(self, source: tuple, **required) -> Path | None:
        """First path (sorted) from ``source`` whose entities equal ``required``
        (``None``: the entity must be absent)."""
        found = sorted(
            path for ents, path in self.by_source.get(source, [])
            if all((k not in ents) if v is None else (str(ents.get(k)) == str(v))
                   for k, v in required.items()))
        return found[0] if found else None


def collect_runs(config: Config) -> Selection:
    """Query the derivatives for the selected runs and pair each with mask and confounds.

    Raises
    ------
    InputError
        When no derivatives are found, a requested participant is absent, or no run is
        left after the filters.
    """
    fmriprep_dirs = find_fmriprep_dirs(config)
    runs: list[Run] = []
    skipped: list[Skipped] = []
    seen_subjects: set[str] = set()
    any_bold = False
    empty: list = []  # the layouts where nothing matched (the hints look there)
    # ICA-AROMA denoising works on fMRIPrep's non-aggressively denoised BOLD
    desc = "smoothAROMAnonaggr" if config.denoise_strategy == "ica_aroma" else "preproc"
    for root in fmriprep_dirs:
        layout = index_layout(config, root)
        parse = _entity_parser(layout)
        # pybids' return_type="id" (and get_subjects) loads every matching file and its
        # tags one query at a time, after scanning every tag: minutes on 1,000
        # participants. Ask only about the requested participants' files, and about all
        # BOLD files only when nothing matched.
        if config.participant_label:
            seen_subjects.update(
                str(parse(path).get("subject"))
                for path in layout.get(subject=list(config.participant_label),
                                       return_type="file"))
        query: dict = {
            "datatype": "func",
            "desc": desc,
            "suffix": "bold",
            "extension": [".nii.gz", ".nii"],
            "space": config.space,
        }
        if config.participant_label:
            query["subject"] = list(config.participant_label)
        if config.session_label:
            query["session"] = list(config.session_label)
        if config.task:
            query["task"] = list(config.task)
        if config.run:
            query["run"] = list(config.run)
        if config.res is not None:
            query["res"] = config.res
        query.update(_bold_filters(config))
        bolds = _Found(layout, parse, **query)
        if bolds.by_source or layout.get(datatype="func", desc="preproc", suffix="bold",
                                         extension=[".nii.gz", ".nii"], return_type="file"):
            any_bold = True
        narrow = {"subject": query["subject"]} if "subject" in query else {}
        if not bolds.by_source:
            empty.append((layout, parse, narrow))
            continue
        masks = _Found(layout, parse, **narrow, datatype="func", desc="brain", suffix="mask",
                       extension=[".nii.gz", ".nii"], space=config.space)
        confounds = (None if config.denoise_strategy == "none" else
                     _Found(layout, parse, **narrow, datatype="func", desc="confounds",
                            suffix=["timeseries", "regressors"], extension=".tsv"))
        for _, candidates in sorted(bolds.items(),
                                    key=lambda kv: tuple(v or "" for v in kv[0])):
            if len(candidates) > 1:
                resolutions = sorted({str(ents.get("res")) for ents, _ in candidates})
                raise InputError(
                    f"{candidates[0][1].name}: several BOLD files for this run in "
                    f"space {config.space} (res {', '.join(resolutions)}); choose with --res"
                )
            ents, bold = candidates[0]
            runs.append(_pair_run(bold, ents, masks, confounds, config))
    # runs missing a required file stay in ``runs`` (their unit reports them and exits
    # non-zero) and are counted here
    skipped.extend(Skipped(run.bold, run.error, missing_input=True)
                   for run in runs if run.error)
    missing = sorted(set(config.participant_label) - seen_subjects)
    if missing:
        raise InputError(
            f"--participant-label {' '.join(missing)}: not found in "
            f"{', '.join(str(d) for d in fmriprep_dirs)}"
            + hints.participants_hint(missing, fmriprep_dirs)
        )
    if not any_bold:
        raise InputError(
            f"{', '.join(str(d) for d in fmriprep_dirs)}: no fMRIPrep derivatives found "
            "(no *_desc-preproc_bold.nii[.gz] under func/)"
            + ("" if config.derivatives else hints.sibling_hint(fmriprep_dirs))
        )
    if not runs:  # (runs missing a file stay in ``runs``: none was skipped here)
        present = [parse(path) for layout, parse, narrow in empty
                   for path in layout.get(datatype="func", desc=desc, suffix="bold",
                                          extension=[".nii.gz", ".nii"],
                                          return_type="file", **narrow)]
        raise InputError(f"no runs left after filters ({hints.describe_filters(config)})"
                         + hints.filter_hints(config, present, desc))
    return Selection(fmriprep_dirs=fmriprep_dirs, runs=runs, skipped=skipped)


def _pair_run(bold: Path, ents: dict, masks: _Found, confounds_found: _Found | None,
              config: Config) -> Run:
    source_key = _source_key(ents)
    source = {k: ents[k] for k in SOURCE_ENTITIES if k in ents}
    spatial = {k: ents[k] for k in ("space", "res", "den") if k in ents}
    mask = masks.match(source_key, **spatial)
    problems = []
    if mask is None:
        problems.append("no matching *_desc-brain_mask.nii[.gz] next to it")
    confounds = None
    if confounds_found is not None:
        confounds = confounds_found.match(source_key, space=None, res=None)
        if confounds is None:
            problems.append("no matching *_desc-confounds_timeseries.tsv (needed by "
                            f"--denoise-strategy {config.denoise_strategy})")
    try:
        metadata = _sidecar(bold)
    except InputError as exc:
        metadata = {}
        problems.append(str(exc))
    tr = _repetition_time(bold, metadata)
    entities = {k: str(v) for k, v in source.items()}
    for k in ("space", "res"):
        if k in ents:
            entities[k] = str(ents[k])
    error = f"{bold}: {'; '.join(problems)}" if problems else None
    return Run(entities=entities, bold=bold, mask=mask, confounds=confounds, tr=tr,
               metadata=metadata, error=error)
