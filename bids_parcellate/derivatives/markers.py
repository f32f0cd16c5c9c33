"""Resumable runs: which units are already complete, which must be computed.

A unit (a participant, or a participant and session) is **complete** when its completion
marker ``sub-<label>[/ses-<label>]/sub-<label>[_ses-<label>]_completed.json`` exists
and records

- the config hash of the current parameters (:meth:`Config.config_hash`),
- the same input files (BIDS URIs of every BOLD, mask and confounds file used),
- every output file of the unit with its size and sha256, all still matching.

The marker is written last, after every other file of the unit, so a run killed at any
moment leaves a unit without a marker, which the next run recomputes (after removing
what the killed run left). A rerun therefore skips complete units and redoes the rest.

A parameter change never mixes old and new outputs: when OUTPUT_DIR holds units made
with another config hash, the run stops before computing anything and says which
parameters differ, unless ``--overwrite`` is given, in which case each selected unit's
old outputs are removed before its new ones are written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from bids_parcellate import __version__
from bids_parcellate.config import Config, UserError
from bids_parcellate.derivatives import dataset, naming, writers
from bids_parcellate.inputs.query import Run, Selection
from bids_parcellate.words import value_text

LOGGER = logging.getLogger("bids_parcellate")


@dataclass(frozen=True)
class UnitPlan:
    """What to do with one unit: ``skip`` (complete) or ``compute``, and why."""

    action: str
    reason: str
    listed: tuple[str, ...] = ()


def unit_sources(runs: list[Run], source_dirs: list[Path]) -> list[str]:
    """BIDS URIs of every input file of a unit (sorted).

    Parameters
    ----------
    runs : list of Run
        The unit's runs (their BOLD, mask and confounds files).
    source_dirs : list of Path
        The input datasets (:func:`bids_parcellate.derivatives.dataset.bids_uri`).

    Returns
    -------
    list of str
    """
    paths = {p for run in runs for p in (run.bold, run.mask, run.confounds) if p is not None}
    return sorted(dataset.bids_uri(p, source_dirs) for p in paths)


def read_marker(path: Path) -> dict | None:
    """A completion marker's content, or ``None`` when missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _incomplete_reason(marker: dict, output_dir: Path) -> str | None:
    files = marker.get("Files")
    if not isinstance(files, dict) or not files:
        return "marker lists no files"
    for rel, record in sorted(files.items()):
        path = output_dir / rel
        try:
            size = path.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if not isinstance(record, dict) or size != record.get("size"):
            return f"{rel} has changed size"
        if writers.sha256_file(path) != record.get("sha256"):
            return f"{rel} has changed content"
    return None


#: Parameters whose option is not named after them.
_OPTIONS = {"bids_filters": "--bids-filter-file", "session_label": "--session-label"}


def _parameter_text(key: str, params: dict, absent: str) -> str:
    """A recorded parameter as the user would type it (booleans on/off, lists spaced)."""
    if key not in params:
        return absent
    value = params[key]
    if key == "mask" and isinstance(value, str):
        return f"a file with sha256 {value[:12]}"
    if key == "connectivity" and isinstance(value, list):
        value = [str(v).replace(" ", "_") for v in value]
    return value_text(value)


def _differences(old: dict, new: dict) -> str:
    """The parameters that differ, e.g. ``--smoothing-fwhm (4 -> 6)``; a parameter the
    old marker does not record (an option added since, or one that did not apply to its
    method) reads ``not recorded``, one that does not apply now ``not used``."""
    keys = sorted(k for k in set(old) | set(new)
                  if k not in old or k not in new or old[k] != new[k])
    return ", ".join(
        f"{_OPTIONS.get(k, '--' + k.replace('_', '-'))} "
        f"({_parameter_text(k, old, 'not recorded')} -> {_parameter_text(k, new, 'not used')})"
        for k in keys) or "the bids_parcellate version"


def plan_units(config: Config, selection: Selection) -> dict[tuple[str, str | None],
                                                              UnitPlan]:
    """Decide, for every selected unit, whether it is complete or must be computed.

    Parameters
    ----------
    config : Config
        Its config hash, ``output_dir`` and ``overwrite``.
    selection : Selection
        The selected units and their runs.

    Returns
    -------
    dict of (subject, session) -> UnitPlan

    Raises
    ------
    UserError
        When OUTPUT_DIR holds outputs made with another config hash and ``--overwrite``
        is not given (nothing has been written then).
    """
    current = config.config_hash()
    plans: dict[tuple[str, str | None], UnitPlan] = {}
    conflicts: dict[str, dict] = {}
    for key, runs in selection.units().items():
        marker_path = naming.completion_marker(config.output_dir, *key)
        marker = read_marker(marker_path) if marker_path.is_file() else None
        listed = tuple(sorted(marker.get("Files", {}))) if marker and isinstance(
            marker.get("Files"), dict) else ()
        if marker is None:
            has_files = naming.unit_dir(config.output_dir, *key).is_dir()
            plans[key] = UnitPlan("compute", "left incomplete by an earlier run"
                                  if has_files else "new")
        elif marker.get("ConfigHash") != current:
            conflicts[naming.unit_prefix(*key)] = marker
            plans[key] = UnitPlan("compute", "--overwrite: made with config hash "
                                  f"{marker.get('ConfigHash')}", listed)
        elif config.overwrite:
            plans[key] = UnitPlan("compute", "--overwrite", listed)
        elif marker.get("Sources") != unit_sources(runs, selection.fmriprep_dirs):
            plans[key] = UnitPlan("compute", "its input files changed", listed)
        else:
            reason = _incomplete_reason(marker, config.output_dir)
            plans[key] = (UnitPlan("skip", "complete") if reason is None
                          else UnitPlan("compute", f"incomplete: {reason}", listed))
    # units outside this selection count too: one OUTPUT_DIR, one set of parameters
    for marker_path in sorted(config.output_dir.glob("sub-*/**/*_completed.json")):
        marker = read_marker(marker_path)
        if marker is None or marker.get("ConfigHash") in (None, current):
            continue
        name = marker_path.name.removesuffix("_completed.json")
        if name not in conflicts:
            conflicts[name] = marker
            if config.overwrite:
                LOGGER.warning("%s keeps its outputs made with config hash %s (not selected); "
                               "OUTPUT_DIR now mixes parameters", name, marker["ConfigHash"])
    if conflicts and not config.overwrite:
        names = sorted(conflicts)
        first = conflicts[names[0]]
        differ = _differences(first.get("Parameters", {}), config.hashed_parameters())
        raise UserError(
            f"{config.output_dir}: holds outputs of {', '.join(names[:5])}"
            f"{' ...' if len(names) > 5 else ''} made with other parameters (config hash "
            f"{first.get('ConfigHash')}, now {current}; differing: {differ}); use another "
            "OUTPUT_DIR, or --overwrite to replace the selected units' outputs"
        )
    return plans


def write_marker(config: Config, subject: str, session: str | None, files: list[Path],
                 sources: list[str]) -> Path:
    """Write a unit's completion marker, after all of its files (see module docstring).

    Parameters
    ----------
    config : Config
    subject : str
    session : str or None
    files : list of Path
        The unit's output files, inside ``config.output_dir`` (recorded with their size
        and sha256).
    sources : list of str
        BIDS URIs of the unit's inputs (:func:`unit_sources`).

    Returns
    -------
    Path
        The marker.
    """
    output_dir = config.output_dir
    records = {}
    for path in sorted(set(files)):
        path = Path(path)
        records[path.relative_to(output_dir).as_posix()] = {
            "sha256": writers.sha256_file(path), "size": path.stat().st_size}
    return writers.write_json(
        naming.completion_marker(output_dir, subject, session),
        {
            "Description": "bids_parcellate completion marker: the unit's outputs are "
                           "complete; written after all of them.",
            "GeneratedBy": {"Name": "bids_parcellate", "Version": __version__},
            "ConfigHash": config.config_hash(),
            "Parameters": config.hashed_parameters(),
            "Sources": sources,
            "Files": records,
        },
    )
