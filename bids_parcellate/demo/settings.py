"""Validation of the arguments of :func:`bids_parcellate.demo.make_demo_dataset`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Accepted values of ``layout``.
LAYOUTS = ("raw+derivatives", "derivatives")
#: Accepted values of ``dtype``.
DTYPES = ("float32", "int16")
#: Accepted values of ``confounds_name``.
CONFOUNDS_NAMES = ("timeseries", "regressors")

_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


def clean_label(value: Any, prefix: str, what: str) -> str:
    """Strip an optional BIDS entity prefix and validate the label.

    Parameters
    ----------
    value : object
        Label, with or without ``<prefix>-`` (converted with :class:`str`).
    prefix : str
        Entity name (``"sub"``, ``"ses"``, ...).
    what : str
        Name of the label in error messages.

    Returns
    -------
    str
        The alphanumeric label.
    """
    text = str(value)
    if text.startswith(prefix + "-"):
        text = text[len(prefix) + 1 :]
    if not _LABEL_RE.match(text):
        raise ValueError(f"invalid {what} label {value!r}: must be alphanumeric")
    return text


def clean_labels(values: Sequence[Any] | None, prefix: str, what: str) -> list[str] | None:
    """Validate a sequence of labels (``None`` stays ``None``).

    Parameters
    ----------
    values : sequence or str or int or None
        Labels (a single ``str`` or ``int`` is one label).
    prefix : str
        Entity name.
    what : str
        Name of the labels in error messages.

    Returns
    -------
    list of str or None
        Distinct labels, see :func:`clean_label`.
    """
    if values is None:
        return None
    if isinstance(values, (str, int)):
        values = [values]
    out = [clean_label(v, prefix, what) for v in values]
    if not out:
        raise ValueError(f"at least one {what} is required (or None)")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate {what} labels: {out}")
    return out


@dataclass(frozen=True)
class DemoSettings:
    """Validated arguments of :func:`bids_parcellate.demo.make_demo_dataset`.

    The attributes are those arguments, with the labels cleaned (lists of str,
    without entity prefixes) and the numbers converted to int or float.
    """

    participants: list[str]
    sessions: list[str] | None
    tasks: list[str]
    runs: list[str] | None
    n_volumes: int
    resolution: int
    n_true_parcels: int
    tr: float
    seed: int
    jitter: float
    layout: str
    space: str
    res_label: str | None
    n_nonsteady: int
    n_spikes: int
    snr: float
    dtype: str
    confounds_name: str

    @classmethod
    def checked(cls, **kwargs: Any) -> DemoSettings:
        """Validate the keyword arguments of ``make_demo_dataset`` (all but ``root``).

        Parameters
        ----------
        **kwargs
            The arguments, by name.

        Returns
        -------
        DemoSettings
            The validated settings; invalid values raise :class:`ValueError`.
        """
        kw = dict(kwargs)
        labels = {
            "participants": clean_labels(kw["participants"], "sub", "participant"),
            "sessions": clean_labels(kw["sessions"], "ses", "session"),
            "tasks": clean_labels(kw["tasks"], "task", "task"),
            "runs": clean_labels(kw["runs"], "run", "run"),
            "space": clean_label(kw["space"], "space", "space"),
            "res_label": (
                None if kw["res_label"] is None else clean_label(kw["res_label"], "res", "res")
            ),
        }
        _check_choices(kw)
        _check_numbers(kw)
        numbers = {
            "n_volumes": int(kw["n_volumes"]), "resolution": int(kw["resolution"]),
            "n_true_parcels": int(kw["n_true_parcels"]), "tr": float(kw["tr"]),
            "seed": int(kw["seed"]), "jitter": float(kw["jitter"]),
            "n_nonsteady": int(kw["n_nonsteady"]), "n_spikes": int(kw["n_spikes"]),
            "snr": float(kw["snr"]),
        }
        choices = {k: kw[k] for k in ("layout", "dtype", "confounds_name")}
        return cls(**labels, **numbers, **choices)

    def parameters(self, n_parcels: int) -> dict[str, Any]:
        """Generation parameters, as written to ``demo_parameters.json``.

        Parameters
        ----------
        n_parcels : int
            Number of ground-truth parcels actually made.

        Returns
        -------
        dict
            The settings, keys in alphabetical order.
        """
        return {
            "confounds_name": self.confounds_name, "dtype": self.dtype,
            "jitter": self.jitter, "layout": self.layout, "n_nonsteady": self.n_nonsteady,
            "n_spikes": self.n_spikes, "n_true_parcels": n_parcels,
            "n_volumes": self.n_volumes, "participants": self.participants,
            "res_label": self.res_label, "resolution": self.resolution, "runs": self.runs,
            "seed": self.seed, "sessions": self.sessions, "snr": self.snr,
            "space": self.space, "tasks": self.tasks, "tr": self.tr,
        }


def _check_choices(kw: dict[str, Any]) -> None:
    """Check ``layout``, ``dtype`` and ``confounds_name``."""
    if kw["layout"] not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {kw['layout']!r}")
    if kw["dtype"] not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {kw['dtype']!r}")
    if kw["confounds_name"] not in CONFOUNDS_NAMES:
        raise ValueError(
            f"confounds_name must be one of {CONFOUNDS_NAMES}, "
            f"got {kw['confounds_name']!r}"
        )


def _check_numbers(kw: dict[str, Any]) -> None:
    """Check the numeric arguments (``n_true_parcels`` is checked against the mask)."""
    jitter, resolution, seed = kw["jitter"], kw["resolution"], kw["seed"]
    if not 0.0 <= float(jitter) < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if not (float(kw["snr"]) > 0 and float(kw["tr"]) > 0):
        raise ValueError("snr and tr must be positive")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if int(resolution) != resolution or int(resolution) < 1:
        raise ValueError(f"resolution must be a positive integer (mm), got {resolution}")
    if int(kw["n_nonsteady"]) < 0 or int(kw["n_spikes"]) < 0:
        raise ValueError("n_nonsteady and n_spikes must be >= 0")
    if int(kw["n_volumes"]) < int(kw["n_nonsteady"]) + 10:
        raise ValueError("n_volumes must be at least n_nonsteady + 10")
