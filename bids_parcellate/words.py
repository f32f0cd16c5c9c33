"""Words of the messages a user reads: counts with their noun, lists of option values.

A leaf module (it imports nothing from the package), so that every layer that logs or
raises a message can use it: ``plural(1, "summary")`` is "1 summary" and
``plural(2, "summary")`` "2 summaries", never a noun with "s" in brackets;
``values_text([100, 200])`` is "100 200", as the values are typed on the command line,
never a Python list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable


def plural_noun(noun: str) -> str:
    """The plural of an English noun of these messages (regular rules only).

    Parameters
    ----------
    noun : str
        Singular, e.g. ``"run"``, ``"summary"``, ``"atlas"``, ``"process"``.

    Returns
    -------
    str
        ``"runs"``, ``"summaries"``, ``"atlases"``, ``"processes"``.
    """
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in tuple("aeiou"):
        return noun[:-1] + "ies"
    return noun + "s"


def plural(count: int, noun: str, nouns: str | None = None, *, zero: str = "no") -> str:
    """A count and its noun, in the singular for 1: "1 summary", "2 summaries".

    Parameters
    ----------
    count : int
        How many.
    noun : str
        The noun in the singular.
    nouns : str, optional
        Its plural when the regular rules (:func:`plural_noun`) do not give it.
    zero : str
        The word for a count of 0 (``"no reports"``); ``"0"`` keeps the digit.

    Returns
    -------
    str
    """
    if count == 1:
        return f"1 {noun}"
    many = nouns or plural_noun(noun)
    return f"{zero} {many}" if count == 0 else f"{count} {many}"


def values_text(values: Iterable) -> str:
    """Option values as typed on the command line: ``[100, 200]`` -> ``"100 200"``.

    Parameters
    ----------
    values : iterable
        Numbers or strings (floats without a trailing ``.0`` when whole).

    Returns
    -------
    str
        The values separated by spaces (``"none"`` when there are none).
    """
    words = [value_text(v) for v in values]
    return " ".join(words) if words else "none"


def value_text(value) -> str:
    """One option value for a message: ``True`` -> ``"on"``, ``None`` -> ``"none"``,
    ``4.0`` -> ``"4"``, a list -> its values separated by spaces, a dict -> JSON.

    Parameters
    ----------
    value : object
        A parameter value (bool, number, string, None, list or tuple).

    Returns
    -------
    str
    """
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return values_text(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)
