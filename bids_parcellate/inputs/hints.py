"""What to tell a user whose selection found nothing: what is there, what was meant.

Used only once a query has failed (:mod:`bids_parcellate.inputs.query`): each function
returns the end of an error message, ``""`` when it has nothing to add. Values are
listed bounded (:func:`bids_parcellate.words.listing`) with a "did you mean" when one is
close to what was asked (:func:`bids_parcellate.words.did_you_mean`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path

from bids_parcellate.config import Config
from bids_parcellate.words import did_you_mean, listing, plural_noun, values_text

#: The selection filters that a hint checks: Config field, option, BIDS entity, noun.
FILTERS = (
    ("space", "--space", "space", "space"),
    ("session_label", "--session-label", "session", "session"),
    ("task", "--task", "task", "task"),
    ("run", "--run", "run", "run index"),
    ("res", "--res", "res", "resolution"),
)


def participants_in(dirs: Iterable[Path]) -> list[str]:
    """The participant labels of the derivatives datasets (their ``sub-*`` folders).

    Parameters
    ----------
    dirs : iterable of Path
        Derivatives datasets.

    Returns
    -------
    list of str
        Sorted labels without ``sub-``.
    """
    labels = set()
    for root in dirs:
        try:
            labels.update(p.name[4:] for p in Path(root).iterdir()
                          if p.name.startswith("sub-") and p.is_dir())
        except OSError:
            continue
    return sorted(labels)


def participants_hint(missing: Sequence[str], dirs: Sequence[Path]) -> str:
    """The participants there are, and the one probably meant.

    Parameters
    ----------
    missing : sequence of str
        ``--participant-label`` values not found.
    dirs : sequence of Path
        The derivatives datasets queried.

    Returns
    -------
    str
        E.g. ``" (participants there: sf02); did you mean sf02?"``; a folder
        ``sub-<label>`` without ``func/`` files is said so.
    """
    available = participants_in(dirs)
    if not available:
        return " (no sub-* folder there)"
    guess = did_you_mean(missing, available, prefix="sub")
    empty = [f"sub-{label}" for label in missing if label in available]
    return (f" (participants there: {listing(available)})" + (f"; {guess}" if guess else "")
            + (f"; {listing(empty)} {'has' if len(empty) == 1 else 'have'} no func/ files "
               "there" if empty else ""))


def describe_filters(config: Config) -> str:
    """The selection filters in effect, for a message (``space X, task rest``).

    Parameters
    ----------
    config : Config
        ``space``, ``participant_label``, ``session_label``, ``task``, ``run``, ``res``
        and ``bids_filters``.

    Returns
    -------
    str
    """
    parts = [f"space {config.space}"]
    for name, value in (
        ("participant", config.participant_label),
        ("session", config.session_label),
        ("task", config.task),
        ("run", config.run),
    ):
        if value:
            parts.append(f"{name} {values_text(value)}")
    if config.res is not None:
        parts.append(f"res {config.res}")
    if config.bids_filters:
        parts.append("--bids-filter-file")
    return ", ".join(parts)


def filter_hints(config: Config, found: Sequence[dict], desc: str) -> str:
    """Which filter asks for something that none of the BOLD runs has, and what they have.

    Parameters
    ----------
    config : Config
        The filters (:data:`FILTERS`) and ``denoise_strategy``.
    found : sequence of dict
        The entities of every BOLD file of the requested participants with ``desc``,
        whatever their space, session, task, run and resolution.
    desc : str
        The ``desc`` of the BOLD files queried (``preproc``, ``smoothAROMAnonaggr``).

    Returns
    -------
    str
        ``""``, or ``"; "`` and one clause per such filter, e.g. ``"; --task rst: no BOLD
        run has this task (the BOLD runs have tasks movie, rest); did you mean rest?"``.
    """
    if not found:
        if config.denoise_strategy == "ica_aroma":
            return (f"; no *_desc-{desc}_bold.nii[.gz] of these participants (needed by "
                    "--denoise-strategy ica_aroma)")
        return ""
    clauses = []
    for name, option, entity, noun in FILTERS:
        asked = getattr(config, name)
        if asked is None or asked == ():
            continue
        asked = [asked] if isinstance(asked, str) else list(asked)
        have = sorted({ent[entity] for ent in found if entity in ent},
                      key=lambda v: (str(type(v)), v))
        missing = [v for v in asked if not any(v == h or str(v) == str(h) for h in have)]
        if not missing:
            continue
        default = name == "space" and asked == [_default(name)]
        clause = (f"{option} {values_text(missing)}{' (the default)' if default else ''}: "
                  f"no BOLD run has this {noun} (the BOLD runs have "
                  + (f"{noun if len(have) == 1 else plural_noun(noun)} {listing(have)})"
                     if have else f"no {plural_noun(noun)})"))
        guess = "" if default else did_you_mean(missing, have)
        if guess:
            clause += f"; {guess}"
        elif default and have:
            clause += "; choose one with --space"
        clauses.append(clause)
    return "".join(f"; {c}" for c in clauses)


def _default(name: str):
    return next(f.default for f in fields(Config) if f.name == name)


# --------------------------------------------------------------------------- BIDS_DIR
def _description(path: Path) -> dict | None:
    try:
        data = json.loads((path / "dataset_description.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _fmriprep_like(path: Path) -> bool:
    """Whether ``path`` holds fMRIPrep outputs (its description or a preprocessed BOLD)."""
    description = _description(path) or {}
    names = {str(item.get("Name", "")).lower() for item in
             description.get("GeneratedBy", []) or [] if isinstance(item, dict)}
    if "fmriprep" in names:
        return True
    for pattern in ("sub-*/func/*_desc-preproc_bold.nii*",
                    "sub-*/ses-*/func/*_desc-preproc_bold.nii*"):
        if next(iter(path.glob(pattern)), None) is not None:
            return True
    return False


def _datasets_in(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir()
                      if p.is_dir() and (p / "dataset_description.json").is_file())
    except OSError:
        return []


def folder_hint(bids_dir: Path) -> str:
    """For a BIDS_DIR without ``dataset_description.json``: the folders probably meant.

    Parameters
    ----------
    bids_dir : Path
        A folder that is not a BIDS dataset, e.g. a dataset's ``derivatives/``.

    Returns
    -------
    str
        ``"; did you mean /data/ds (the dataset it is in) or
        /data/ds/derivatives/fmriprep (fMRIPrep outputs in it)?"``: the enclosing dataset
        when it has derivatives to query, the fMRIPrep datasets inside; or ``""``.
    """
    meant = []
    for parent in list(bids_dir.resolve().parents)[:3]:
        if (parent / "dataset_description.json").is_file():
            if ((_description(parent) or {}).get("DatasetType") == "derivative"
                    or _datasets_in(parent / "derivatives")):
                meant.append(f"{parent} (the dataset it is in)")
            break
    inner = [p for p in _datasets_in(bids_dir) if _fmriprep_like(p)]
    if inner:
        meant.append(f"{listing(inner, limit=3)} (fMRIPrep outputs in it)")
    return f"; did you mean {' or '.join(meant)}?" if meant else ""


def raw_dataset_hint(bids_dir: Path) -> str:
    """For a BIDS_DIR read as a raw dataset without ``derivatives/``: whether it is
    fMRIPrep's output itself, whose description lacks ``DatasetType``.

    Parameters
    ----------
    bids_dir : Path
        The dataset given as BIDS_DIR.

    Returns
    -------
    str
        A hint, or ``""``.
    """
    if not _fmriprep_like(bids_dir):
        return ""
    return (f"; it holds fMRIPrep outputs, but its dataset_description.json lacks "
            f'"DatasetType": "derivative": add it, or pass --derivatives {bids_dir}')


def sibling_hint(dirs: Sequence[Path]) -> str:
    """For derivatives datasets without preprocessed BOLD (e.g. ``derivatives/mriqc``
    given as BIDS_DIR): the fMRIPrep datasets beside them in ``derivatives/``.

    Parameters
    ----------
    dirs : sequence of Path
        The derivatives datasets queried.

    Returns
    -------
    str
        ``"; did you mean /data/ds/derivatives/fmriprep?"``, or ``""``.
    """
    queried = {Path(d).resolve() for d in dirs}
    beside = []
    for parent in sorted({Path(d).resolve().parent for d in dirs}):
        if parent.name != "derivatives":
            continue
        beside += [p for p in _datasets_in(parent)
                   if p.resolve() not in queried and _fmriprep_like(p)]
    if not beside:
        return ""
    return f"; did you mean {listing(beside, limit=3)}?"
