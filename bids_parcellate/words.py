"""Words of the messages a user reads: counts with their noun, lists of option values.

A leaf module (it imports nothing from the package), so that every layer that logs or
raises a message can use it: ``plural(1, "summary")`` is "1 summary" and
``plural(2, "summary")`` "2 summaries", never a noun with "s" in brackets;
``values_text([100, 200])`` is "100 200", as the values are typed on the command line,
never a Python list. ``listing`` and ``close_match`` name what is available when a
value is not found, and the value that was probably meant ("did you mean sf02?").
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable

#: How many available values an error message lists (then "and N more").
LISTED = 10


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


def listing(values: Iterable, limit: int = LISTED) -> str:
    """Values for a message, comma-separated, the first ``limit`` then "and N more".

    Parameters
    ----------
    values : iterable
        In the order to list them (see :func:`value_text`).
    limit : int
        How many to name.

    Returns
    -------
    str
        ``"01, 02, 03"``; ``"01, 02 and 8 more"``; ``"none"`` when empty.
    """
    words = [value_text(v) for v in values]
    if not words:
        return "none"
    if len(words) <= limit:
        return ", ".join(words)
    return f"{', '.join(words[:limit])} and {len(words) - limit} more"


def close_match(value, choices: Iterable, prefix: str | None = None) -> str | None:
    """The choice that a mistyped ``value`` probably meant (case-insensitive, difflib).

    Parameters
    ----------
    value : object
        What was asked for (``"sf2"``, ``"sub-sf2"``, ``"Rest"``).
    choices : iterable
        What is available.
    prefix : str, optional
        An entity prefix stripped from ``value`` first (``"sub"``: ``sub-sf2`` -> ``sf2``).

    Returns
    -------
    str or None
        The closest choice as written in ``choices``, or None when none is close.
    """
    by_lower = {value_text(c).lower(): value_text(c) for c in choices}
    word = value_text(value).lower()
    if prefix and word.startswith(f"{prefix}-"):
        word = word[len(prefix) + 1:]
    if word in by_lower:  # differs only in case, or in the prefix
        return by_lower[word]
    found = difflib.get_close_matches(word, list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None


def did_you_mean(missing: Iterable, choices: Iterable, prefix: str | None = None) -> str:
    """ "did you mean X?" for the values of ``missing`` close to one of ``choices``.

    Parameters
    ----------
    missing : iterable
        The values not found.
    choices : iterable
        What is available.
    prefix : str, optional
        Passed to :func:`close_match`.

    Returns
    -------
    str
        ``"did you mean sf02?"`` (one value not found), ``"did you mean sf02 for sf2,
        rest for rst?"`` (several), or ``""`` when nothing is close.
    """
    missing = list(missing)
    choices = list(choices)
    pairs = [(value_text(m), close_match(m, choices, prefix)) for m in missing]
    pairs = [(m, c) for m, c in pairs if c is not None and c != m]
    if not pairs:
        return ""
    if len(missing) == 1:
        return f"did you mean {pairs[0][1]}?"
    return "did you mean " + ", ".join(f"{c} for {m}" for m, c in pairs) + "?"
