"""Assemble self-contained HTML reports from the files in OUTPUT_DIR.

A participant report (``OUTPUT_DIR/sub-<label>.html``) is built from the unit records
and figures that the participant level left under ``sub-<label>/figures/`` (see
:mod:`bids_parcellate.report.record`); the group report (``OUTPUT_DIR/group.html``)
from the group atlases under ``tpl-*/``, the group tables and the unit records. Nothing
is recomputed from BOLD data, which is what ``--reports-only`` relies on.

Pages are jinja2 templates rendered by
:func:`~bids_parcellate.report.templates.render_page` (self-contained: figures embedded
as data URIs, style and script inline, a Content-Security-Policy). This is the top
layer of :mod:`bids_parcellate.report`: it uses :mod:`~bids_parcellate.report.templates`,
:mod:`~bids_parcellate.report.figures`, :mod:`~bids_parcellate.report.connectome` and
:mod:`~bids_parcellate.report.methods`, none of which imports it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_parcellate.config import UserError
from bids_parcellate.derivatives import naming, writers
from bids_parcellate.report import figures, mosaics
from bids_parcellate.report.connectome import connectome, node_positions
from bids_parcellate.report.methods import group_context, render_methods
from bids_parcellate.report.templates import data_uri, render_page, svg_uri
from bids_parcellate.words import plural

LOGGER = logging.getLogger("bids_parcellate")

RECORD_GLOB = "sub-*/figures/sub-*_desc-summary_report.json"
#: Rows shown from a table (the file holds them all).
MAX_TABLE_ROWS = 500


# --------------------------------------------------------------------------- records
def load_unit_records(output_dir: Path, subjects: Sequence[str] = ()) -> list[dict]:
    """Unit records found in OUTPUT_DIR (all participants, or those in ``subjects``).

    Parameters
    ----------
    output_dir : Path
    subjects : sequence of str
        Participant labels (without ``sub-``); all when empty.

    Returns
    -------
    list of dict
        The records (unreadable ones skipped with a warning), by subject, session and
        ``seg``; each with ``_path``, its path relative to ``output_dir``.
    """
    found = []
    for path in sorted(Path(output_dir).glob(RECORD_GLOB)):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            LOGGER.warning("%s: unreadable report record (%s); skipped", path, exc)
            continue
        if subjects and record.get("subject") not in subjects:
            continue
        record["_path"] = path.relative_to(output_dir).as_posix()
        found.append(record)
    found.sort(key=lambda r: (r["subject"], r.get("session") or "", r.get("seg") or ""))
    return found


def _table(path: Path) -> dict:
    """A TSV as {columns, rows, n_rows} (rows capped at :data:`MAX_TABLE_ROWS`)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    columns = lines[0].split("\t") if lines else []
    rows = [line.split("\t") for line in lines[1:] if line]
    return {"name": path.name, "columns": columns, "rows": rows[:MAX_TABLE_ROWS],
            "n_rows": len(rows)}


#: Columns of quality tables that identify a row rather than measure something.
QUALITY_KEYS = ("participant_id", "session_id", "method", "scale")


def quality_slot(output_dir: Path, record: dict) -> dict:
    """QUALITY SLOT (issue 5): a unit's quality measures, when they exist.

    Reads the ``<dseg stem>_quality.tsv`` tables beside the unit's dseg files (one row
    per scale) with the column descriptions of their ``.json`` sidecars, and returns
    them as one table (rows: measures, columns: scales) plus a figure of accuracy,
    reproducibility and homogeneity against its null across scales (drawn from the
    tables, so ``--reports-only`` shows the same). ``*_desc-quality*`` figures under
    ``sub-<label>/figures/`` are shown as they are.

    Parameters
    ----------
    output_dir : Path
    record : dict
        The unit's record (:func:`load_unit_records`).

    Returns
    -------
    dict
        ``scales``, ``measures`` (name, description, a value per scale), ``chart`` (its
        data URI, or None), ``images`` (name, data URI) and ``available``.
    """
    output_dir = Path(output_dir)
    rows: list[dict] = []
    descriptions: dict[str, str] = {}
    folders = sorted({(output_dir / s["dseg"]).parent for s in record["scales"]})
    prefix = record["name"] + "_"
    for folder in folders:
        for path in sorted(folder.glob(f"{prefix}*_quality.tsv")):
            if f"_seg-{record['seg']}_" not in path.name:
                continue
            table = _table(path)
            for row in table["rows"]:
                values = dict(zip(table["columns"], row, strict=False))
                if "scale" not in values:
                    found = re.search(r"_scale-([0-9]+)_", path.name)
                    values["scale"] = found.group(1) if found else "n/a"
                rows.append(values)
            sidecar = path.with_suffix(".json")
            if sidecar.is_file():
                try:
                    meta = json.loads(sidecar.read_text(encoding="utf-8"))
                except json.JSONDecodeError:
                    meta = {}
                descriptions.update({k: str(v["Description"]) for k, v in meta.items()
                                     if isinstance(v, dict) and "Description" in v})
    rows.sort(key=lambda r: int(r["scale"]) if str(r["scale"]).isdigit() else 0)
    columns = [c for r in rows for c in r if c not in QUALITY_KEYS]
    measures = [{"name": c, "description": descriptions.get(c, ""),
                 "values": [r.get(c, "") for r in rows]} for c in dict.fromkeys(columns)]
    chart = None
    if rows:
        svg = figures.quality(rows)
        chart = {"uri": svg_uri(svg)} if svg else None
    images = []
    figures_dir = output_dir / f"sub-{record['subject']}" / "figures"
    for pattern in (f"{prefix}*desc-quality*.png", f"{prefix}*desc-quality*.svg"):
        for path in sorted(figures_dir.glob(pattern)):
            images.append({"name": path.name, "uri": data_uri(path)})
    return {"scales": [r["scale"] for r in rows], "measures": measures, "chart": chart,
            "images": images, "available": bool(rows or images)}


def _unit_view(output_dir: Path, record: dict) -> dict:
    """Template data of one unit: the record plus embedded figures and quality."""
    embedded = {}
    missing = []
    for name, entry in record.get("figures", {}).items():
        path = Path(output_dir) / entry["file"]
        if path.is_file():
            embedded[name] = {**entry, "uri": data_uri(path)}
        else:
            missing.append(entry["file"])
    runs = record["runs"]
    regressor_sets: list[dict] = []
    for run in runs:
        for item in regressor_sets:
            if item["names"] == run["confounds"]:
                item["runs"].append(run["label"])
                break
        else:
            regressor_sets.append({"names": list(run["confounds"]), "runs": [run["label"]]})
    anchor = re.sub(r"[^A-Za-z0-9_-]", "-", "unit-" + record["name"] + "-" + record["seg"])
    title = " · ".join(p for p in (
        f"sub-{record['subject']}", f"ses-{record['session']}" if record.get("session")
        else "", record["method"]) if p)
    n_kept = sum(r["n_kept"] for r in runs)
    n_volumes = sum(r["n_volumes"] for r in runs)
    timings = record.get("timings", {})
    return {"record": record, "figures": embedded, "missing_figures": missing,
            "quality": quality_slot(output_dir, record), "regressor_sets": regressor_sets,
            "anchor": anchor, "title": title, "n_kept": n_kept, "n_volumes": n_volumes,
            "timings": timings, "total_time": sum(timings.values())}


def write_participant_report(output_dir: Path, subject: str) -> Path:
    """Assemble ``OUTPUT_DIR/sub-<subject>.html`` from the unit records and figures.

    Parameters
    ----------
    output_dir : Path
    subject : str
        Participant label without ``sub-``.

    Returns
    -------
    Path
        The report written.

    Raises
    ------
    UserError
        When the participant has no unit record in OUTPUT_DIR.
    """
    tic = time.monotonic()
    records = load_unit_records(output_dir, [subject])
    if not records:
        raise UserError(f"{output_dir}: no report data for sub-{subject} (run the "
                        "participant level first)")
    units = [_unit_view(output_dir, r) for r in records]
    methods = render_methods(records, quality=any(u["quality"]["available"] for u in units))
    html = render_page("participant.html.j2", subject=subject, units=units, methods=methods,
                       n_runs=sum(len(r["runs"]) for r in records),
                       n_skipped=sum(len(r["skipped"]) for r in records))
    path = writers.write_text(naming.participant_report_path(output_dir, subject), html)
    LOGGER.info("report %s (%s, %.1f s)", path.name, plural(len(units), "unit"),
                time.monotonic() - tic)
    return path


# --------------------------------------------------------------------------- group
ATLAS_PATTERN = re.compile(
    r"^tpl-(?P<tpl>[A-Za-z0-9]+)(?:_cohort-[A-Za-z0-9]+)?_atlas-(?P<atlas>[A-Za-z0-9]+)"
    r"(?:_seg-[A-Za-z0-9]+)?(?:_scale-(?P<scale>[0-9]+))?(?:_res-(?P<res>[A-Za-z0-9]+))?"
    r"(?:_desc-[A-Za-z0-9]+)?_dseg\.nii(?:\.gz)?$")


def find_group_atlases(output_dir: Path) -> list[dict]:
    """Group atlases under ``tpl-*/``: one entry per (template, atlas, res).

    Parameters
    ----------
    output_dir : Path

    Returns
    -------
    list of dict
        ``template``, ``atlas``, ``res`` (None without ``res-``) and ``files`` (scale ->
        dseg path; 0 for a file without ``scale-``).
    """
    groups: dict[tuple, dict] = {}
    for path in sorted(Path(output_dir).glob("tpl-*/tpl-*_dseg.nii*")):
        match = ATLAS_PATTERN.match(path.name)
        if not match:
            continue
        key = (match["tpl"], match["atlas"], match["res"])
        entry = groups.setdefault(key, {"template": match["tpl"], "atlas": match["atlas"],
                                        "res": match["res"], "files": {}})
        scale = int(match["scale"]) if match["scale"] else 0
        entry["files"][scale] = path
    return [groups[k] for k in sorted(groups, key=lambda k: tuple(str(p) for p in k))]


def atlas_description(output_dir: Path, label: str) -> dict:
    """``atlas-<label>_description.json`` of a group atlas (empty when it is missing or
    unreadable).

    Parameters
    ----------
    output_dir : Path
    label : str
        The ``atlas-`` label.

    Returns
    -------
    dict
        Its fields: ``Participants`` (the units it was learned from), ``GroupMask``,
        ``Parameters``, ``Caution`` (fewer than 3 participants)...
    """
    path = Path(output_dir) / naming.build_name("atlas_description", {
        "atlas": label, "suffix": "description", "extension": ".json"})
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


#: A run's timeseries sidecar on a group atlas (the participant's figures in the group
#: report when the participant level has not run): subject, session, atlas, scale, res.
GROUP_TIMESERIES_PATTERN = re.compile(
    r"^sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?_.*_atlas-(?P<atlas>"
    r"[A-Za-z0-9]+)_scale-(?P<scale>[0-9]+)(?:_res-(?P<res>[A-Za-z0-9]+))?"
    r"_stat-mean_timeseries\.json$")


def atlas_run_figures(output_dir: Path, atlas: dict) -> dict[str, dict]:
    """Runs and volumes of each participant on a group atlas, from the sidecars of its
    timeseries (``NumberOfVolumes``, ``CensoredVolumes``) at its smallest scale.

    Parameters
    ----------
    output_dir : Path
    atlas : dict
        An entry of :func:`find_group_atlases`.

    Returns
    -------
    dict
        ``sub-<label>`` -> ``runs``, ``volumes``, ``kept``.
    """
    scale = min(atlas["files"])
    out: dict[str, dict] = {}
    for path in sorted(Path(output_dir).glob(f"sub-*/**/func/*_atlas-{atlas['atlas']}_"
                                             "*_timeseries.json")):
        match = GROUP_TIMESERIES_PATTERN.match(path.name)
        if not (match and match["atlas"] == atlas["atlas"] and match["res"] == atlas["res"]
                and int(match["scale"]) == scale):
            continue
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            n_volumes = int(meta["NumberOfVolumes"])
            n_censored = len(meta.get("CensoredVolumes", []))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        entry = out.setdefault(f"sub-{match['sub']}", {"runs": 0, "volumes": 0, "kept": 0})
        entry["runs"] += 1
        entry["volumes"] += n_volumes
        entry["kept"] += n_volumes - n_censored
    return out


def _atlas_view(output_dir: Path, atlas: dict) -> dict:
    imgs = {scale: nib.load(path) for scale, path in sorted(atlas["files"].items())}
    shown = {}
    rows = []
    for scale, img in imgs.items():
        data = np.asarray(img.dataobj)
        n = int(len(np.unique(data[data > 0])))
        label = scale or n
        shown[label] = img
        rows.append({"scale": label, "n_parcels": n,
                     "file": atlas["files"][scale].relative_to(output_dir).as_posix()})
    bg = None
    if "MNI152" in atlas["template"]:
        from nilearn.datasets import load_mni152_template
        from nilearn.image import resample_to_img

        first = shown[min(shown)]
        bg = resample_to_img(load_mni152_template(resolution=2), first,
                             interpolation="continuous", force_resample=True,
                             copy_header=True)
    description = atlas_description(output_dir, atlas["atlas"])
    units = [str(u) for u in description.get("Participants", [])]
    return {**atlas, "rows": rows, "uri": svg_uri(mosaics.atlas_maps(shown, bg)),
            "connectomes": _group_connectomes(output_dir, atlas), "units": units,
            "caution": description.get("Caution"), "description": description}


#: A group connectome table: ``group_atlas-<label>_scale-<k>[_res-<r>]_meas-<m>_relmat.tsv``.
GROUP_RELMAT_PATTERN = re.compile(
    r"^group_atlas-(?P<atlas>[A-Za-z0-9]+)_scale-(?P<scale>[0-9]+)(?:_res-(?P<res>[A-Za-z0-9]+))?"
    r"_meas-(?P<meas>[A-Za-z0-9]+)_relmat\.tsv$")


def _group_connectomes(output_dir: Path, atlas: dict) -> list[dict]:
    """The group mean connectomes of an atlas (``--connectivity`` at the group level), one
    figure per measure: the matrix and the graph on a glass brain at every scale, nodes at
    a voxel of each of the atlas's parcels (read from the files, so ``--reports-only``
    shows the same)."""
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(Path(output_dir).glob("group_atlas-*_relmat.tsv")):
        match = GROUP_RELMAT_PATTERN.match(path.name)
        if (match and match["atlas"] == atlas["atlas"] and match["res"] == atlas["res"]
                and int(match["scale"]) in atlas["files"]):
            found.setdefault(match["meas"], {})[int(match["scale"])] = path
    out = []
    for meas, paths in sorted(found.items()):
        matrices, centroids = {}, {}
        for scale, path in sorted(paths.items()):
            img = nib.load(atlas["files"][scale])
            labels = np.asarray(img.dataobj).astype(np.int64)
            n = int(labels.max())
            inside = labels > 0
            # first row: column names; first column: node names
            matrix = np.loadtxt(path, delimiter="\t", skiprows=1,
                                usecols=range(1, n + 1), ndmin=2)
            if matrix.shape != (n, n):
                LOGGER.warning("%s: %s matrix for %d parcels, not shown", path.name,
                               matrix.shape, n)
                continue
            matrices[scale] = matrix
            centroids[scale] = node_positions(labels[inside], np.argwhere(inside),
                                              img.affine)
        if matrices:
            out.append({"measure": meas, "uri": svg_uri(connectome(matrices, centroids,
                                                                    meas)),
                        "files": [paths[k].name for k in sorted(matrices)]})
    return out


def write_group_report(output_dir: Path, methods_records: Sequence[dict] | None = None
                       ) -> Path:
    """Assemble ``OUTPUT_DIR/group.html`` from whatever group outputs exist.

    Shows every group atlas (all scales, with its caution when it was learned from fewer
    than 3 participants), a participants table (every participant of the unit records
    and of the group atlases: runs, volumes kept and censored, from the participant
    records or, for a participant without one, from the sidecars of its timeseries on
    the atlas; the atlases it is part of; the agreement of each participant with the
    group atlas from the ``group*agreement*.tsv`` tables) with links to the participant
    reports, every ``group*.tsv`` table, and the methods text.

    Parameters
    ----------
    output_dir : Path
    methods_records : sequence of dict, optional
        Unit records of the methods text (default: the unit records in OUTPUT_DIR; the
        group level passes those it wrote ``logs/CITATION.*`` from).

    Returns
    -------
    Path
        The report written.

    Raises
    ------
    UserError
        When OUTPUT_DIR holds neither group atlases nor participant report data.
    """
    output_dir = Path(output_dir)
    tic = time.monotonic()
    atlases = [_atlas_view(output_dir, a) for a in find_group_atlases(output_dir)]
    records = load_unit_records(output_dir)
    if not atlases and not records:
        raise UserError(f"{output_dir}: no group atlas (tpl-*/) and no participant report "
                        "data to report on")
    # group connectomes are drawn with their atlas, not listed as tables
    tables = [_table(p) for p in sorted(output_dir.glob("group*.tsv"))
              if not p.name.endswith("_relmat.tsv")]
    extra_columns, extra = _agreement_columns(tables)
    participants = _participants(output_dir, records, atlases)
    for pid in extra:
        participants.setdefault(pid, {"atlases": []})
    rows = []
    for pid in sorted(participants):
        report = naming.participant_report_path(output_dir, pid.removeprefix("sub-"))
        rows.append({"participant_id": pid, **participants[pid],
                     "report": report.name if report.is_file() else None,
                     "extra": [" / ".join(extra.get(pid, {}).get(c, []))
                               for c in extra_columns]})
    methods_records = records if methods_records is None else methods_records
    groups = [group_context(a["atlas"], a["description"]) for a in atlases
              if a["description"]]
    methods = render_methods(methods_records, groups=groups) if methods_records else None
    html = render_page("group.html.j2", atlases=atlases, participants=rows,
                       extra_columns=extra_columns, tables=tables, methods=methods,
                       from_sidecars=any(r.get("from_sidecars") for r in rows))
    path = writers.write_text(naming.group_report_path(output_dir), html)
    LOGGER.info("report %s (%s, %s, %.1f s)", path.name, plural(len(atlases), "atlas"),
                plural(len(rows), "participant"), time.monotonic() - tic)
    return path


def _agreement_columns(tables: list[dict]) -> tuple[list[str], dict[str, dict[str, list]]]:
    """Agreement tables (one row per participant, session and scale) as columns of the
    participants table: "<measure> (<scale>)", sessions' values joined by " / "."""
    extra_columns: list[str] = []
    extra: dict[str, dict[str, list]] = {}
    n_agreement = sum("agreement" in t["name"] for t in tables)
    for table in tables:
        if "agreement" not in table["name"] or "participant_id" not in table["columns"]:
            continue
        atlas = re.search(r"atlas-([A-Za-z0-9]+)", table["name"])
        for row in table["rows"]:
            cells = dict(zip(table["columns"], row, strict=False))
            for column in table["columns"]:
                if column in ("participant_id", "session_id", "scale", "n_voxels"):
                    continue
                name = column + (f" ({cells['scale']})" if "scale" in cells else "")
                if atlas and n_agreement > 1:
                    name += f" atlas-{atlas.group(1)}"
                if name not in extra_columns:
                    extra_columns.append(name)
                extra.setdefault(cells["participant_id"], {}).setdefault(name, []).append(
                    cells[column])
    return extra_columns, extra


def _participants(output_dir: Path, records: list[dict], atlases: list[dict]
                  ) -> dict[str, dict]:
    """``sub-<label>`` -> the figures of the participants table: from the unit records,
    else (the group level ran first) from the timeseries sidecars on each atlas."""
    participants: dict[str, dict] = {}
    for record in records:
        entry = participants.setdefault(f"sub-{record['subject']}", {
            "units": 0, "runs": 0, "kept": 0, "volumes": 0, "skipped": 0, "warnings": 0,
            "atlases": []})
        entry["units"] += 1
        entry["runs"] += len(record["runs"])
        entry["kept"] += sum(r["n_kept"] for r in record["runs"])
        entry["volumes"] += sum(r["n_volumes"] for r in record["runs"])
        entry["skipped"] += len(record["skipped"])
        entry["warnings"] += len(record["warnings"])
    for atlas in atlases:
        units = Counter(unit.split("_")[0] for unit in atlas["units"])  # per participant
        figures_of = None
        for pid in sorted(units):
            if pid not in participants:
                if figures_of is None:
                    figures_of = atlas_run_figures(output_dir, atlas)
                participants[pid] = {**figures_of.get(pid, {}), "units": units[pid],
                                     "atlases": [], "from_sidecars": True}
            if f"atlas-{atlas['atlas']}" not in participants[pid]["atlases"]:
                participants[pid]["atlases"].append(f"atlas-{atlas['atlas']}")
    return participants
