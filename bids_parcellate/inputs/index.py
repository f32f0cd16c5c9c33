"""The pybids index of an fMRIPrep derivatives dataset (:func:`index_layout`).

Only what is queried is indexed: the requested participants' ``func/`` BOLD, brain masks
and confounds (:func:`_ignore_patterns`). The SQLite database lives under the work
directory or ``--bids-database-dir``, never inside BIDS_DIR (inputs are often
read-only), keyed by the dataset path, the participants indexed, the index version and a
fingerprint of the dataset's ``func/`` folders (:func:`dataset_fingerprint`), so that a
database is never reused after runs were added to or removed from the dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from bids_parcellate.config import Config, InputError

LOGGER = logging.getLogger("bids_parcellate")

#: Version of what :func:`_ignore_patterns` indexes; part of the database key, so that a
#: database built by an older version is not reused.
INDEX_VERSION = 2
#: The only files of ``func/`` that are queried: preprocessed BOLD (also ICA-AROMA's),
#: brain masks and confounds. Everything else there (boldrefs, transforms, surfaces,
#: CIFTI, segmentations, sidecars: about 35 files per run in fMRIPrep 23) is not indexed.
#: Sidecars are read directly for the files used (``index_metadata=False``).
USED_FUNC_FILES = (r"_desc-(?:preproc|smoothAROMAnonaggr)_bold\.nii(?:\.gz)?"
                   r"|_desc-brain_mask\.nii(?:\.gz)?"
                   r"|_desc-confounds_(?:timeseries|regressors)\.tsv")


def _ignore_patterns(participants: tuple[str, ...]) -> list[re.Pattern]:
    """pybids ignore regexes (matched against ``/<path relative to the root>``).

    A folder that matches is not walked at all; files that match are not indexed.
    """
    patterns = [
        # every datatype folder but func/ (anat, fmap, figures, log, ...)
        re.compile(r"^/sub-[^/]+/(?:ses-[^/]+/)?(?!func(?:/|$)|ses-)[^/]+/"),
        re.compile(r"^/sub-[^/]+/(?:ses-[^/]+/)?(?!func$|ses-)[^/.]+$"),
        # files in func/ that are never queried
        re.compile(rf"^/sub-[^/]+/(?:ses-[^/]+/)?func/(?![^/]*(?:{USED_FUNC_FILES})$)"),
        # top-level folders that are not participants (logs, figures, derivatives, ...)
        # and top-level files (sub-<label>.html reports, dataset_description.json, ...)
        re.compile(r"^/(?!sub-)[^/.]+/"),
        re.compile(r"^/[^/]+\.[^/]+$"),
    ]
    if participants:
        keep = "|".join(re.escape(p) for p in sorted(participants))
        patterns.append(re.compile(rf"^/sub-(?!(?:{keep})(?:/|$))[^/]+"))
    return patterns


def dataset_fingerprint(root: Path, participants: tuple[str, ...] = ()) -> str:
    """A hash of the modification times of the dataset's ``func/`` folders.

    Adding, removing or renaming a file changes its folder's modification time, so an
    index built before runs were added (or a participant) is not reused; editing a file
    in place does not (the index holds paths only). A few ``stat`` calls per participant.

    Parameters
    ----------
    root : Path
        The derivatives dataset.
    participants : tuple of str
        Only these participants (labels without ``sub-``); every one when empty.

    Returns
    -------
    str
        16 hexadecimal digits.
    """
    digest = hashlib.sha1()
    wanted = {f"sub-{p}" for p in participants}
    for sub in sorted(root.glob("sub-*")):
        if not sub.is_dir() or (wanted and sub.name not in wanted):
            continue
        digest.update(sub.name.encode())
        for folder in sorted([*sub.glob("func"), *sub.glob("ses-*/func")]):
            digest.update(f"{folder.relative_to(root)}:{folder.stat().st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _database_path(config: Config, root: Path, participants: tuple[str, ...]) -> Path | None:
    """Where pybids keeps its SQLite index for ``root``, keyed by what was indexed."""
    if config.bids_database_dir is not None:
        base = config.bids_database_dir
    elif config.work_dir is not None:
        base = config.work_dir / "bids_db"
    else:
        return None
    key = json.dumps({"root": str(root.resolve()), "participants": list(participants),
                      "index": INDEX_VERSION,
                      "files": dataset_fingerprint(root, participants)})
    return base / hashlib.sha1(key.encode()).hexdigest()[:12]


def _other_roots(db_path: Path) -> list[str]:
    """Dataset roots of the other pybids databases next to ``db_path`` (for a warning)."""
    import sqlite3

    roots = []
    for other in sorted(db_path.parent.glob("*/layout_index.sqlite")):
        if other.parent == db_path:
            continue
        try:
            with sqlite3.connect(f"file:{other}?mode=ro", uri=True) as connection:
                roots += [row[0] for row in connection.execute("SELECT root FROM layout_info")]
        except sqlite3.Error:
            continue
    return roots


def index_layout(config: Config, root: Path):
    """Build (or reuse) the pybids layout of one derivatives dataset.

    With ``--bids-database-dir`` every participant is indexed so that the database is
    reusable by every array job; otherwise only the requested participants are.
    pybids stores absolute paths: a database is reused only for the same root path
    (inside a container, bind the data at the same path as where it was built).

    Parameters
    ----------
    config : Config
        ``participant_label``, ``bids_database_dir`` and ``work_dir`` (where databases go).
    root : Path
        The derivatives dataset (an fMRIPrep output folder).

    Returns
    -------
    bids.layout.BIDSLayout

    Raises
    ------
    InputError
        When pybids cannot index ``root``.
    """
    from bids.layout import BIDSLayout, BIDSLayoutIndexer

    participants = () if config.bids_database_dir is not None else config.participant_label
    db_path = _database_path(config, root, participants)
    reuse = db_path is not None and (db_path / "layout_index.sqlite").is_file()
    indexer = BIDSLayoutIndexer(
        validate=False, ignore=_ignore_patterns(participants), index_metadata=False
    )
    if config.bids_database_dir is not None and not reuse:
        LOGGER.info("indexing every participant of %s into %s (once: later runs with the "
                    "same dataset path reuse it)", root, db_path)
        others = _other_roots(db_path)
        if others:
            LOGGER.warning("%s holds databases of %s but not of %s: the dataset path differs "
                           "(a container bind?); indexing again", config.bids_database_dir,
                           ", ".join(others), root)
    LOGGER.debug("indexing %s (database %s, reuse=%s)", root, db_path, reuse)

    def layout(path: Path | None, reset: bool):
        try:
            return BIDSLayout(root, validate=False, config=["bids", "derivatives"],
                              indexer=indexer, database_path=path, reset_database=reset)
        except Exception as exc:  # pybids raises bare ValueErrors on broken datasets
            raise InputError(f"{root}: cannot be indexed by pybids ({exc})") from exc

    if db_path is None or reuse:
        return layout(db_path, reset=not reuse)
    if config.bids_database_dir is None:
        # A private index of the selected participants (small): built in memory and
        # saved for a later invocation, so pybids sets up one layout instead of two
        # (0.3 s at start-up). Written into a private folder and renamed into place.
        built = layout(None, reset=True)
        tmp = db_path.with_name(f".{db_path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            built.save(tmp, replace_connection=False)
            os.rename(tmp, db_path)
        except Exception:  # noqa: BLE001 - the destination exists (a concurrent run) or
            # is not writable (sqlite3 errors are not OSErrors): the index in memory is
            # all this run needs
            LOGGER.debug("pybids database %s not saved", db_path, exc_info=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return built
    # Array jobs may share --bids-database-dir: index into a private folder and rename
    # it into place (atomic); when another job won the race, use its database.
    tmp = db_path.with_name(f".{db_path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        layout(tmp, reset=True)
        try:
            os.rename(tmp, db_path)
        except OSError:  # the destination exists: built by a concurrent job
            LOGGER.debug("pybids database %s was built by another process", db_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return layout(db_path, reset=False)
