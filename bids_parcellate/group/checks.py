"""Group-level checks made before anything is written: the units' complete runs
(:func:`complete_units`), one voxel grid for every run (:func:`check_grids`), enough
participants for the tangent space (:func:`check_tangent`), the atlas label
(:func:`atlas_label`), and the caution of an atlas learned from few participants
(:func:`small_group_caution`).
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np

from bids_parcellate.config import Config, UserError
from bids_parcellate.derivatives import naming
from bids_parcellate.inputs.query import Run, Selection
from bids_parcellate.results import GroupResult
from bids_parcellate.words import plural

LOGGER = logging.getLogger("bids_parcellate")

UnitKey = tuple[str, str | None]


def complete_units(selection: Selection, exclude: set[UnitKey] | frozenset,
                   result: GroupResult) -> dict[UnitKey, list[Run]]:
    """Every unit's runs with all their files, except the units in ``exclude``.

    A run missing a required file is left out and recorded in ``result.incomplete`` (the
    invocation exits non-zero), as at the participant level; a unit left with no run is
    recorded in ``result.errors``.

    Parameters
    ----------
    selection : Selection
    exclude : set of (subject, session)
        Units left out (those that failed at the participant level of this invocation).
    result : GroupResult
        Filled here: ``incomplete`` and ``errors``.

    Returns
    -------
    dict
        (subject, session) -> the unit's complete runs, in selection order.

    Raises
    ------
    UserError
        When no unit is left.
    """
    units = {}
    for key, runs in selection.units().items():
        if key in exclude:
            continue
        for run in runs:
            if run.error:
                LOGGER.error("group level: skipping run: %s", run.error)
                result.incomplete.append(run.error)
        usable = [run for run in runs if not run.error]
        if usable:
            units[key] = usable
        else:
            result.errors[naming.unit_prefix(*key)] = "no run with all its files"
    if not units:
        raise UserError("group level: no participant left to combine")
    return units


def _grid_text(shape: tuple[int, ...], affine: np.ndarray) -> str:
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    size = "x".join(f"{z:g}" for z in np.round(zooms, 2))
    return f"{'x'.join(map(str, shape))} voxels of {size} mm"


def check_grids(units: dict[UnitKey, list[Run]]) -> tuple[tuple[int, ...], np.ndarray]:
    """Check that every run of every unit is on one voxel grid (mask headers only).

    Returns
    -------
    shape, affine
        The common grid.

    Raises
    ------
    UserError
        One line naming the units whose grid differs from the most common one.
    """
    grids: list[tuple[tuple[int, ...], np.ndarray]] = []
    members: list[list[str]] = []
    by_unit: dict[str, set[int]] = {}
    for key, runs in units.items():
        name = naming.unit_prefix(*key)
        for run in runs:
            if run.error:  # no mask: reported by the level that processes it
                continue
            try:
                img = nib.load(run.mask)
            except Exception as exc:
                raise UserError(f"{run.mask}: cannot read mask ({exc})") from None
            shape, affine = tuple(int(n) for n in img.shape[:3]), img.affine
            index = next((i for i, (g_shape, g_affine) in enumerate(grids)
                          if g_shape == shape and np.allclose(g_affine, affine, atol=1e-3)),
                         None)
            if index is None:
                grids.append((shape, affine))
                members.append([])
                index = len(grids) - 1
            if name not in members[index]:
                members[index].append(name)
            by_unit.setdefault(name, set()).add(index)
    if not grids:
        raise UserError("group level: no runs selected")
    if len(grids) == 1:
        return grids[0]
    reference = max(range(len(grids)), key=lambda i: (len(members[i]), -i))
    differ = [name for name, idx in by_unit.items() if idx != {reference}]
    details = []
    for name in differ:
        other = sorted(by_unit[name] - {reference})
        details.append(f"{name} ({'; '.join(_grid_text(*grids[i]) for i in other)})")
    shown = ", ".join(details[:10]) + (f" and {len(details) - 10} more" if len(details) > 10
                                       else "")
    raise UserError(
        f"group level needs every participant on one voxel grid: {shown} differ from the "
        f"{plural(len(members[reference]), 'other unit')} "
        f"({_grid_text(*grids[reference])}); "
        "select them out with --participant-label or resample them")


def check_tangent(config: Config, units: dict[UnitKey, list[Run]]) -> None:
    """``--connectivity tangent`` needs at least two participants (raises UserError).

    Parameters
    ----------
    config : Config
        ``--connectivity``.
    units : dict
        (subject, session) -> runs: the units of the group level (sessions of one
        participant count once).

    Raises
    ------
    UserError
        When ``tangent`` is asked for with fewer than two participants.
    """
    n = len({key[0] for key in units})
    if "tangent" in config.connectivity and n < 2:
        raise UserError("--connectivity tangent needs several participants: the group level "
                        f"has {n}")


#: Fewer participants than this: the group atlas carries a caution (log, sidecars, report).
MIN_PARTICIPANTS = 3


def small_group_caution(units: list[UnitKey]) -> str | None:
    """The caution of a group atlas learned from fewer than :data:`MIN_PARTICIPANTS`
    participants (sessions of one participant count once).

    Parameters
    ----------
    units : list of (subject, session)
        The units the atlas is learned from.

    Returns
    -------
    str or None
        One sentence for the log, the atlas sidecars, the group report and the methods
        text; None from :data:`MIN_PARTICIPANTS` participants on.
    """
    subjects = sorted({key[0] for key in units})
    if len(subjects) >= MIN_PARTICIPANTS:
        return None
    who = ", ".join(f"sub-{s}" for s in subjects)
    if len(subjects) == 1:
        sessions = f" ({len(units)} sessions)" if len(units) > 1 else ""
        return (f"This group atlas was learned from a single participant ({who}{sessions}): "
                "it is that participant's own parcellation, not a group atlas, and says "
                f"nothing about other brains; use at least {MIN_PARTICIPANTS} participants "
                "for a group atlas.")
    return (f"This group atlas was learned from only {len(subjects)} participants ({who}): "
            "it reflects their data and may not generalise to other brains; use at least "
            f"{MIN_PARTICIPANTS} participants for a group atlas.")


def atlas_label(config: Config) -> str:
    """The ``atlas-`` label: ``--atlas-label``, else ``<dataset><Method>``.

    ``<dataset>`` is the alphanumeric part of BIDS_DIR's folder name (of the raw
    dataset's folder when BIDS_DIR is a derivatives dataset inside ``derivatives/``),
    e.g. ``ds000030Ward`` for ``/data/ds000030`` with ``--method ward``.
    """
    if config.atlas_label:
        return config.atlas_label
    root = config.bids_dir.resolve()
    if root.parent.name == "derivatives":
        root = root.parent.parent
    name = "".join(ch for ch in root.name if ch.isalnum()) or "dataset"
    method = naming.seg_label(config.method)
    return name + method[:1].upper() + method[1:]
