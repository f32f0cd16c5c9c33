"""Reports and methods boilerplate.

Modules, each importing only those listed before it (imports point one way):

- :mod:`~bids_parcellate.report.templates`: the jinja2 environment of
  ``report/templates/``, page rendering, ``data:`` URIs;
- :mod:`~bids_parcellate.report.canvas`: drawing primitives (SVG canvas, axes, colour
  maps, PNG rasters);
- :mod:`~bids_parcellate.report.figures`: the figures of a unit and of a group atlas;
- :mod:`~bids_parcellate.report.connectome`: the connectome figure (matplotlib and
  nilearn.plotting, imported only when it is drawn);
- :mod:`~bids_parcellate.report.record`: during the participant level, the figures and
  a JSON record of each unit (under ``sub-<label>/figures/``);
- :mod:`~bids_parcellate.report.methods`: the methods text (``logs/CITATION.*`` and the
  reports' methods section) from ``boilerplate/``;
- :mod:`~bids_parcellate.report.assemble`: self-contained HTML reports built from those
  files (``sub-<label>.html``, ``group.html``), also for ``--reports-only``.

:func:`finish_participant_level`, :func:`finish_group_level`, :func:`reports_only` and
:func:`boilerplate_only` are what the command line calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bids_parcellate.config import Config, UserError
from bids_parcellate.derivatives import naming
from bids_parcellate.report.assemble import (
    atlas_description,
    load_unit_records,
    write_group_report,
    write_participant_report,
)
from bids_parcellate.report.methods import group_context, planned_records, write_citation
from bids_parcellate.report.record import UnitLog, write_unit_report_data
from bids_parcellate.results import GroupResult, UnitResult
from bids_parcellate.words import plural

if TYPE_CHECKING:  # annotations only
    from bids_parcellate.inputs.query import Selection

LOGGER = logging.getLogger("bids_parcellate")

__all__ = [
    "UnitLog",
    "write_unit_report_data",
    "finish_participant_level",
    "finish_group_level",
    "reports_only",
    "boilerplate_only",
]


def finish_participant_level(config: Config, results: Sequence[UnitResult]) -> None:
    """After the participant level: each participant's report and ``logs/CITATION.*``.

    Parameters
    ----------
    config : Config
    results : sequence of UnitResult
        Units of this invocation; those that failed have no report record.
    """
    records = [r.report for r in results if getattr(r, "report", None)]
    subjects = sorted({r["subject"] for r in records})
    # units complete from an earlier run (not recomputed) keep their reports; their
    # records still belong to this invocation's methods text
    reused = {(r.subject, r.session) for r in results if getattr(r, "reused", False)}
    if reused:
        seg = naming.seg_label(config.method)
        records += [r for r in load_unit_records(config.output_dir,
                                                 sorted({s for s, _ in reused}))
                    if (r["subject"], r.get("session")) in reused and r.get("seg") == seg]
    if not records:
        return
    tic = time.monotonic()
    for subject in subjects:
        write_participant_report(config.output_dir, subject)
    write_citation(config.output_dir, records, quality=config.quality)
    LOGGER.info("%s assembled in %.2f s", f"{plural(len(subjects), 'report')} and "
                "logs/CITATION.*" if subjects else "logs/CITATION.*", time.monotonic() - tic)


def finish_group_level(config: Config, selection: Selection, result: GroupResult
                       ) -> list[Path]:
    """After the group level: ``logs/CITATION.*`` and ``group.html``.

    The methods text describes the units the atlas was learned from, with a paragraph on
    the group atlas (and its caution under 3 participants): from their participant
    records when the participant level left them with the same parameters, else from
    the input query and what cleaning did to each run at the group level (so a group
    level run before the participant level writes them too).

    Parameters
    ----------
    config : Config
    selection : Selection
        The runs selected by the input query.
    result : GroupResult
        What the group level did (its units and runs).

    Returns
    -------
    list of Path
        ``logs/CITATION.md``, ``.html``, ``.bib`` and ``group.html``.
    """
    tic = time.monotonic()
    used = set(result.units)
    seg, config_hash = naming.seg_label(config.method), config.config_hash()
    own = {r["name"]: r for r in load_unit_records(config.output_dir)
           if r["name"] in used and r.get("seg") == seg and r.get("ConfigHash") == config_hash}
    cleaned = {naming.source_prefix(r.run.entities): r for r in result.runs}
    records = list(own.values())
    for record in planned_records(config, selection):
        name = naming.unit_prefix(record["subject"], record["session"])
        if name not in used or name in own:
            continue
        runs = [run for run in record["runs"] if run["label"] in cleaned]
        for run in runs:  # the runs the group level cleaned: volumes kept, regressors
            summary = cleaned[run["label"]]
            run.update(n_volumes=summary.n_volumes, n_kept=int(summary.sample_mask.size),
                       censored=summary.censored, confounds=list(summary.confounds))
        records.append({**record, "name": name, "runs": runs})
    records.sort(key=lambda r: (r["subject"], r.get("session") or ""))
    groups = [group_context(result.label, atlas_description(config.output_dir,
                                                             result.label))]
    written = write_citation(config.output_dir, records,
                             quality=config.quality and bool(own), groups=groups)
    written.append(write_group_report(config.output_dir, records))
    LOGGER.info("group.html and logs/CITATION.* assembled in %.2f s",
                time.monotonic() - tic)
    return written


def reports_only(config: Config) -> list[Path]:
    """``--reports-only``: rebuild reports from OUTPUT_DIR without reading any input.

    Participant reports for the selected participants (all with report data when none
    is selected) when the participant level is requested; ``group.html`` when the group
    level is.

    Parameters
    ----------
    config : Config

    Returns
    -------
    list of Path
        The reports written.

    Raises
    ------
    UserError
        When OUTPUT_DIR does not exist or has no report data for the selection.
    """
    if not config.output_dir.is_dir():
        raise UserError(f"{config.output_dir}: OUTPUT_DIR does not exist (nothing to "
                        "report on)")
    written = []
    if "participant" in config.analysis_levels:
        records = load_unit_records(config.output_dir, config.participant_label)
        if not records:
            selected = (" for " + ", ".join(f"sub-{p}" for p in config.participant_label)
                        if config.participant_label else "")
            raise UserError(f"{config.output_dir}: no participant report data{selected} "
                            "(run the participant level first)")
        for subject in sorted({r["subject"] for r in records}):
            written.append(write_participant_report(config.output_dir, subject))
    if "group" in config.analysis_levels:
        written.append(write_group_report(config.output_dir))
    return written


def boilerplate_only(config: Config, selection: Selection) -> list[Path]:
    """``--boilerplate-only``: write ``logs/CITATION.*`` from the input query alone.

    Parameters
    ----------
    config : Config
    selection : Selection
        The runs selected by the input query (nothing is read from them).

    Returns
    -------
    list of Path
        ``logs/CITATION.md``, ``.html`` and ``.bib``.
    """
    return write_citation(config.output_dir, planned_records(config, selection))
