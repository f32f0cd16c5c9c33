"""BIDS names of every output: the only place that builds output paths.

Names come from the path patterns in ``data/bids_patterns.json`` through pybids'
``build_path``; every output is documented in ``docs/outputs.md``.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

from bids_parcellate.derivatives.writers import HOST


@lru_cache(maxsize=1)
def path_patterns() -> dict[str, str]:
    """BIDS path patterns by output kind."""
    text = resources.files("bids_parcellate.data").joinpath("bids_patterns.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def build_name(kind: str, entities: dict) -> str:
    """Relative BIDS path for an output ``kind`` (``dseg``, ``timeseries``...).

    Parameters
    ----------
    kind : str
        A key of ``data/bids_patterns.json`` (:func:`path_patterns`).
    entities : dict
        Entity name (``subject``, ``suffix``, ``extension``...) -> value; None values are
        left out.

    Returns
    -------
    str
        The path, relative to the output folder.

    Raises
    ------
    ValueError
        When the pattern of ``kind`` cannot be filled from ``entities``.
    """
    from bids.layout.writing import build_path

    clean = {k: str(v) for k, v in entities.items() if v is not None}
    path = build_path(clean, [path_patterns()[kind]], strict=False)
    if path is None:
        raise ValueError(f"cannot name a {kind} output from {sorted(clean)}")
    return path


def seg_label(method: str) -> str:
    """BIDS label of a method for the ``seg-`` entity (labels are alphanumeric)."""
    return "".join(ch for ch in method if ch.isalnum())


def source_prefix(entities: dict) -> str:
    """``sub-01_ses-1_task-rest_run-1``: the source part of a run's file names."""
    order = (("subject", "sub"), ("session", "ses"), ("task", "task"),
             ("acquisition", "acq"), ("ceagent", "ce"), ("reconstruction", "rec"),
             ("direction", "dir"), ("run", "run"), ("echo", "echo"))
    return "_".join(f"{key}-{entities[name]}" for name, key in order if entities.get(name))


def unit_prefix(subject: str, session: str | None) -> str:
    """``sub-01`` or ``sub-01_ses-1``.

    Parameters
    ----------
    subject : str
        Subject label (without ``sub-``).
    session : str or None
        Session label (without ``ses-``).

    Returns
    -------
    str
    """
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def completion_marker(output_dir: Path, subject: str, session: str | None) -> Path:
    """Path of a unit's completion marker (written last; see
    :mod:`bids_parcellate.derivatives.markers`).

    Parameters
    ----------
    output_dir : Path
    subject : str
    session : str or None

    Returns
    -------
    Path
    """
    return Path(output_dir) / build_name("completed", {"subject": subject, "session": session,
                                                       "suffix": "completed",
                                                       "extension": ".json"})


def unit_dir(output_dir: Path, subject: str, session: str | None) -> Path:
    """Folder holding a unit's outputs: ``sub-<label>`` or ``sub-<label>/ses-<label>``.

    Parameters
    ----------
    output_dir : Path
    subject : str
    session : str or None

    Returns
    -------
    Path
    """
    return completion_marker(output_dir, subject, session).parent


LOGS_DIR = "logs"


def manifest_path(output_dir: Path) -> Path:
    """``OUTPUT_DIR/logs/manifest.tsv``: path, sha256 and size of every output."""
    return Path(output_dir) / LOGS_DIR / "manifest.tsv"


def log_path(output_dir: Path, levels: tuple[str, ...], stamp: str) -> Path:
    """Log file of one invocation; host and pid make it unique among array jobs.

    Parameters
    ----------
    output_dir : Path
    levels : tuple of str
        The analysis levels run (``participant``, ``group``), joined by ``-`` in the name.
    stamp : str
        Start time of the invocation, as a file-name-safe token.

    Returns
    -------
    Path
        ``OUTPUT_DIR/logs/<levels>-<stamp>-<host>-<pid>.log``.
    """
    return Path(output_dir) / LOGS_DIR / f"{'-'.join(levels)}-{stamp}-{HOST}-{os.getpid()}.log"


def is_report_file(rel: str | Path) -> bool:
    """Whether a path relative to OUTPUT_DIR is a report (``*.html`` at the root) or a
    report figure or record (``sub-<label>/figures/``). Reports show wall times and when
    they were made, so unlike the data outputs they differ between identical runs."""
    parts = Path(rel).parts
    return (len(parts) == 1 and parts[0].endswith(".html")) or (
        len(parts) >= 3 and parts[0].startswith("sub-") and parts[1] == "figures")


# --------------------------------------------------------------------------- reports
def participant_report_path(output_dir: Path, subject: str) -> Path:
    """``OUTPUT_DIR/sub-<label>.html`` (fMRIPrep's convention).

    Parameters
    ----------
    output_dir : Path
    subject : str

    Returns
    -------
    Path
    """
    return Path(output_dir) / build_name("participant_report",
                                         {"subject": subject, "extension": ".html"})


def group_report_path(output_dir: Path) -> Path:
    """``OUTPUT_DIR/group.html``."""
    return Path(output_dir) / "group.html"


def citation_paths(output_dir: Path) -> dict[str, Path]:
    """``OUTPUT_DIR/logs/CITATION.{md,html,bib}``: the methods text of the last run."""
    logs = Path(output_dir) / "logs"
    return {ext: logs / f"CITATION.{ext}" for ext in ("md", "html", "bib")}
