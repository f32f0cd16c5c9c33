"""What a denoising strategy needs from fMRIPrep's confounds TSV, and what it lacks.

nilearn's ``load_confounds_strategy`` reads the confounds by column name; when some are
missing it raises pandas' ``KeyError("['csf'] not in index")`` or a ``ValueError`` with
Python lists. :func:`needed_columns` lists those columns beforehand, so that the error
names the file and the missing columns in words (:func:`lacks_message`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

from bids_parcellate.words import listing, value_text

#: The confound groups that nilearn reads by column name: their base columns.
NAMED_GROUPS = {"motion": ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"),
                "wm_csf": ("csf", "white_matter"), "global_signal": ("global_signal",)}
#: The columns each model of a group adds to the base columns.
SUFFIXES = {"basic": (), "derivatives": ("derivative1",), "power2": ("power2",),
            "full": ("derivative1", "power2", "derivative1_power2")}
#: nilearn's keywords for a group missing altogether, in words.
GROUP_WORDS = {"compcor": "CompCor components (a_comp_cor_* columns listed in the JSON "
                          "sidecar)",
               "wm_csf": "white matter and CSF signals", "motion": "motion parameters",
               "global_signal": "global signal"}


def needed_columns(nilearn_strategy: str | None, options: dict) -> list[str]:
    """The confounds columns that a strategy and its options read by name.

    CompCor's components (listed in the JSON sidecar) and the cosine and
    non-steady-state columns (used when present) are not among them.

    Parameters
    ----------
    nilearn_strategy : str or None
        nilearn's strategy (``simple``, ``scrubbing``, ``compcor``, ``ica_aroma``).
    options : dict
        The options given (``motion``, ``global_signal``, ...), over nilearn's defaults.

    Returns
    -------
    list of str
        In nilearn's order (motion, white matter and CSF, global signal, scrubbing).
    """
    # nilearn is imported where it is used (start-up: see runtime.helper_process)
    from nilearn.interfaces.fmriprep.load_confounds_strategy import preset_strategies

    params = {**preset_strategies.get(nilearn_strategy, {"strategy": ()}), **options}
    needed: list[str] = []
    for group, names in NAMED_GROUPS.items():
        model = params.get(group)
        if model in SUFFIXES and (group in params["strategy"] or group == "global_signal"):
            needed += [*names, *(f"{n}_{s}" for n in names for s in SUFFIXES[model])]
    if "scrub" in params["strategy"]:
        needed += ["framewise_displacement", "std_dvars"]
    return needed


def missing_in_error(exc: BaseException) -> list[str]:
    """The columns and confound groups that nilearn's error says are missing.

    Parameters
    ----------
    exc : BaseException
        From ``load_confounds_strategy``.

    Returns
    -------
    list of str
        Column names, then groups in words (:data:`GROUP_WORDS`); empty when the error
        is about something else.
    """
    # pandas, for columns nilearn found elsewhere (e.g. CompCor components listed in
    # the JSON sidecar but absent from the TSV): "['a_comp_cor_01'] not in index"
    absent = re.search(r"(\[[^\]]*\]) not in index", str(exc))
    if absent is not None:
        try:
            return [str(c) for c in ast.literal_eval(absent[1])]
        except (ValueError, SyntaxError):
            return []
    found = re.search(r"missing:\s*(\[[^\]]*\])\s*(\[[^\]]*\])", str(exc))
    if found is None:
        return []
    try:
        columns, groups = ast.literal_eval(found[1]), ast.literal_eval(found[2])
    except (ValueError, SyntaxError):
        return []
    return [str(c) for c in columns] + [GROUP_WORDS.get(str(g), f"{g} confounds")
                                        for g in groups]


def lacks_message(path: Path, missing: Iterable[str], strategy: str, options: dict) -> str:
    """``<path>: lacks confound columns csf, white_matter (needed by --denoise-strategy
    simple)``.

    Parameters
    ----------
    path : Path
        The confounds TSV.
    missing : iterable of str
        Its missing columns or groups (:func:`needed_columns`, :func:`missing_in_error`).
    strategy : str
        ``--denoise-strategy``.
    options : dict
        The options given: those that change the columns are named too.

    Returns
    -------
    str
    """
    missing = list(missing)
    columns = [m for m in missing if " " not in m]
    groups = [m for m in missing if " " in m]
    words = [f"--denoise-strategy {strategy}"] + [
        f"--{name.replace('_', '-')} {value_text(value)}"
        for name, value in options.items() if name in NAMED_GROUPS]
    parts = ([f"confound {'column' if len(columns) == 1 else 'columns'} {listing(columns)}"]
             if columns else []) + groups
    return f"{path}: lacks {' and '.join(parts)} (needed by {' '.join(words)})"
