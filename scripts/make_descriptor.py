"""Write boutiques/descriptor.json from the command-line parser.

The Boutiques descriptor (schema 0.5) describes ``bids_parcellate``'s command line for
Boutiques-based platforms (``bosh exec``, CBRAIN, ...), as bids-apps/example does. It is
generated from :func:`bids_parcellate.cli.build_parser` so that it cannot drift by hand;
``tests/test_container_files.py`` checks that every option of the parser is in the
descriptor and vice versa, and ``.ci/run`` runs ``bosh validate`` on it.

Usage, after adding or changing an option::

    python scripts/make_descriptor.py          # rewrite boutiques/descriptor.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from bids_parcellate import __version__
from bids_parcellate.cli import build_parser
from bids_parcellate.config import DENOISE_STRATEGIES, METHODS, STANDARDIZE_CHOICES

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTOR = ROOT / "boutiques" / "descriptor.json"
IMAGE = "ghcr.io/bids-parcellate/bids_parcellate"
#: Options validated in Config rather than by argparse ``choices``.
VALUE_CHOICES = {
    "denoise_strategy": DENOISE_STRATEGIES,
    "method": METHODS,
    "standardize": STANDARDIZE_CHOICES,
}
#: Paths that must exist when the tool starts (Boutiques "File"); other paths are
#: created by the tool ("String").
EXISTING_PATHS = {"bids_dir", "bids_filter_file", "derivatives", "mask"}
#: Lower bounds of integer options (the same checks as Config.__post_init__).
MINIMUM = {"nprocs": 1, "min_volumes": 2, "n_components": 1, "n_parcels": 2, "n_maps": 2,
           "random_seed": 0, "rena_n_iter": 1, "kmeans_n_init": 1, "kmeans_batch_size": 1}
#: Human-readable names where the id does not make one.
NAMES = {"bids_dir": "BIDS dataset", "output_dir": "Output folder",
         "bids_filter_file": "BIDS filter file", "bids_database_dir": "pybids database folder",
         "fd_threshold": "FD threshold", "std_dvars_threshold": "Standardised DVARS threshold",
         "smoothing_fwhm": "Smoothing FWHM", "nprocs": "CPUs", "mem_gb": "Memory (GB)",
         "res": "Resolution label", "n_parcels": "Numbers of parcels"}
#: Actions that are not inputs.
NOT_INPUTS = (argparse._HelpAction, argparse._VersionAction)


def input_id(action: argparse.Action) -> str:
    """Descriptor id of a parser action (a ``--no-x`` flag for options on by default)."""
    if isinstance(action, argparse.BooleanOptionalAction):
        return f"no_{action.dest}" if action.default else action.dest
    return action.dest


def describe_action(action: argparse.Action) -> dict:
    """The Boutiques input describing one argparse action."""
    ident = input_id(action)
    item: dict = {
        "id": ident,
        "name": NAMES.get(ident, ident.replace("_", " ").capitalize()),
        "description": " ".join((action.help or "").split()),
        "value-key": f"[{ident.upper()}]",
    }
    if isinstance(action, argparse.BooleanOptionalAction):
        flag = next(s for s in action.option_strings
                    if s.startswith("--no-") == bool(action.default))
        item.update(type="Flag", optional=True, **{"command-line-flag": flag})
        return item
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        # --overwrite, --no-cache: a bare flag
        item.update(type="Flag", optional=True,
                    **{"command-line-flag": action.option_strings[0]})
        return item
    if isinstance(action, argparse._CountAction):
        # -v / -vv: one input whose value is the repeated short flag.
        short = next(s for s in action.option_strings if len(s) == 2)
        item.update(type="String", optional=True,
                    **{"value-choices": [short, short + short[1]]})
        return item
    if action.type is int:
        item.update(type="Number", integer=True)
        if action.dest in MINIMUM:
            item["minimum"] = MINIMUM[action.dest]
    elif action.type in (float,) or getattr(action.type, "__name__", "") == "_positive_float":
        # Config requires > 0, except --smoothing-fwhm where 0 means none.
        item.update(type="Number", minimum=0)
        if action.dest != "smoothing_fwhm":
            item["exclusive-minimum"] = True
    elif action.dest in EXISTING_PATHS:
        item["type"] = "File"
    else:
        item["type"] = "String"
    # Lists: nargs + (one flag, several values). "append" options are repeatable on the
    # command line, which Boutiques cannot express: one value through Boutiques.
    if action.nargs == "+":
        item.update(list=True, **{"min-list-entries": 1})
        if action.dest == "analysis_level":
            item["max-list-entries"] = len(action.choices)
    choices = action.choices or VALUE_CHOICES.get(action.dest)
    if choices:
        item["value-choices"] = list(choices)
    if action.option_strings:
        item["optional"] = True
        item["command-line-flag"] = next(
            (s for s in action.option_strings if s.startswith("--")), action.option_strings[0])
        default = action.default
        if default not in (None, [], ()) and not isinstance(default, Path):
            item["default-value"] = list(default) if isinstance(default, list | tuple) \
                else default
    else:
        item["optional"] = False
    return item


def make_descriptor() -> dict:
    """The full descriptor for the current parser and version."""
    parser = build_parser()
    inputs, groups = [], []
    for group in parser._action_groups:
        members = [input_id(a) for a in group._group_actions if not isinstance(a, NOT_INPUTS)]
        inputs.extend(describe_action(a) for a in group._group_actions
                      if not isinstance(a, NOT_INPUTS))
        if group.title not in ("positional arguments", "options") and members:
            groups.append({"id": re.sub(r"\W+", "_", group.title).strip("_"), "name": group.title,
                           "members": members})
    for exclusive in parser._mutually_exclusive_groups:
        members = [input_id(a) for a in exclusive._group_actions]
        groups.append({"id": "exclusive_" + "_".join(members),
                       "name": " or ".join(members), "members": members,
                       "mutually-exclusive": True})
    positional = [i["value-key"] for i in inputs if not i["optional"]]
    optional = [i["value-key"] for i in inputs if i["optional"]]
    return {
        "name": "bids_parcellate",
        "tool-version": __version__,
        "schema-version": "0.5",
        "description": parser.description,
        "author": "bids_parcellate developers",
        "url": "https://github.com/bids-parcellate/bids_parcellate",
        "command-line": " ".join(["bids_parcellate", *positional, *optional]),
        "container-image": {"type": "docker", "image": f"{IMAGE}:{__version__}",
                            "entrypoint": True},
        "inputs": inputs,
        "groups": groups,
        "output-files": [
            {"id": "dataset_description",
             "name": "Dataset description",
             "description": "BIDS-Derivatives dataset_description.json (GeneratedBy "
                            "includes the container when run in the image).",
             "path-template": "[OUTPUT_DIR]/dataset_description.json",
             "optional": False},
            {"id": "parcellations",
             "name": "Parcellations",
             "description": "One dseg image (+ .tsv, .json) per participant, session and "
                            "scale (docs/outputs.md).",
             "path-template": "[OUTPUT_DIR]/sub-*/anat/*_dseg.nii.gz",
             "list": True, "optional": True},
            {"id": "timeseries",
             "name": "Parcel timeseries",
             "description": "Parcel mean timeseries per run and scale (BIDS-ignored).",
             "path-template": "[OUTPUT_DIR]/sub-*/func/*_timeseries.tsv",
             "list": True, "optional": True},
            {"id": "logs",
             "name": "Logs",
             "description": "Log file of every invocation.",
             "path-template": "[OUTPUT_DIR]/logs/*.log",
             "list": True, "optional": True},
        ],
        "suggested-resources": {"cpu-cores": 1, "ram": 8, "walltime-estimate": 3600},
        "tags": {"domain": ["neuroinformatics", "fmri", "bids-app"],
                 "toolbox": "bids_parcellate"},
        "error-codes": [
            {"code": 1, "description": "bad input, or some participants failed "
                                       "(one-line message on stderr)"},
            {"code": 2, "description": "usage error (invalid command line)"},
            {"code": 3, "description": "internal error (rerun with -v and report it)"},
        ],
    }


def main() -> int:
    DESCRIPTOR.parent.mkdir(exist_ok=True)
    DESCRIPTOR.write_text(json.dumps(make_descriptor(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {DESCRIPTOR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
