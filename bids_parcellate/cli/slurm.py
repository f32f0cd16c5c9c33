"""``--print-slurm``: a ready SLURM batch script for the selected dataset.

One script serves both levels: submitted with ``--array`` each task runs the participant
level for one participant, submitted without it runs the group level::

    jid=$(sbatch --parsable --array=0-99 bids_parcellate.sbatch)
    sbatch --dependency=afterok:"$jid" bids_parcellate.sbatch

The processing options are those of the command that printed the script; paths are
absolute. Inside the bids_parcellate container image the script runs the image with
Apptainer, every path bound at the same location (so that a ``--bids-database-dir``
built here is valid in every task); elsewhere it runs the Python that printed it.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from bids_parcellate import __version__
from bids_parcellate.config import Config
from bids_parcellate.words import plural

#: Options the script sets per job, or that make no sense in it.
_PER_JOB = {"bids_dir", "output_dir", "analysis_level", "participant_label", "nprocs",
            "print_slurm", "help", "version"}


def _long_flag(action: argparse.Action) -> str:
    return next((s for s in action.option_strings if s.startswith("--")),
                action.option_strings[0])


def _word(value) -> str:
    return str(Path(value).absolute()) if isinstance(value, Path) else str(value)


def processing_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """Options of ``args`` that differ from the parser's defaults, as command-line words.

    The options the script sets per job, or that make no sense in it (positional
    arguments, ``--participant-label``, ``--nprocs``, ``--print-slurm``...), are left out.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by ``parser``.
    parser : argparse.ArgumentParser
        :func:`bids_parcellate.cli.parser.build_parser`'s: its actions give the flags and
        the defaults.

    Returns
    -------
    list of str
        Flags (long form) and their values, in the parser's order; paths absolute.
    """
    words: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in _PER_JOB:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default or value is None:
            continue
        flag = _long_flag(action)
        if isinstance(action, argparse.BooleanOptionalAction):
            words.append(flag if value else "--no-" + flag.removeprefix("--"))
        elif isinstance(action, argparse._CountAction):
            words.append("-" + "v" * value if action.dest == "verbose" else flag)
        elif isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            words.append(flag)  # --overwrite, --no-cache
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                words += [flag, _word(item)]
        elif isinstance(value, list | tuple):
            words += [flag, *map(_word, value)]
        else:
            words += [flag, _word(value)]
    return words


def _runner(args: argparse.Namespace, container: dict | None) -> list[str]:
    """How a compute node starts bids_parcellate."""
    if container is None:
        return [sys.executable, "-m", "bids_parcellate"]
    binds = [f"{args.bids_dir.absolute()}:{args.bids_dir.absolute()}:ro",
             f"{args.output_dir.absolute()}:{args.output_dir.absolute()}"]
    for path in args.derivatives:
        binds.append(f"{path.absolute()}:{path.absolute()}:ro")
    if args.bids_filter_file:
        folder = args.bids_filter_file.absolute().parent
        binds.append(f"{folder}:{folder}:ro")
    for path in (args.bids_database_dir, args.work_dir):
        if path is not None:
            binds.append(f"{path.absolute()}:{path.absolute()}")
    words = ["apptainer", "run", "--cleanenv"]
    for bind in binds:
        words += ["-B", bind]
    return [*words, "-B", "${TMPDIR:-/tmp}:/tmp", "${SIF:?set SIF to the image file}"]


def _bash_array(words: list[str]) -> str:
    """Words of a bash array; those with a ``${...}`` expansion are double-quoted."""
    return " ".join(f'"{w}"' if "${" in w else shlex.quote(w) for w in words)


def batch_script(config: Config, labels: list[str], container: dict | None = None) -> str:
    """The SLURM batch script for ``labels`` with the options of ``config.command_line``.

    Parameters
    ----------
    config : Config
        The validated configuration; its ``command_line`` gives the options to repeat.
    labels : list of str
        Participants, one array task each (task ``i`` runs ``labels[i]``).
    container : dict, optional
        ``GeneratedBy.Container`` when running inside the image (then the script runs
        the image with Apptainer; set ``SIF`` to the image file when submitting).

    Returns
    -------
    str
        A bash script with ``#SBATCH`` directives.
    """
    from bids_parcellate.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(list(config.command_line[1:]))
    options = processing_options(args, parser)
    n = len(labels)
    memory = (f"#SBATCH --mem={math.ceil(config.mem_gb)}G\n" if config.mem_gb else
              "# #SBATCH --mem=8G   (peak memory per participant: see docs/hpc.md)\n")
    database = ("" if config.bids_database_dir else
                "# Tip: print the script with --bids-database-dir DIR to index the dataset "
                "once for all tasks.\n")
    sif = ("# In the container image: submit with SIF=/path/to/image.sif exported "
           "(sbatch passes the environment).\n" if container else "")
    return f"""#!/bin/bash
# bids_parcellate {__version__}: {plural(n, 'participant')} of {config.bids_dir}
# Written by `bids_parcellate ... --print-slurm`. One script, two uses:
#   participant level, one array task per participant:
#     jid=$(sbatch --parsable --array=0-{n - 1} THIS_SCRIPT)
#   group level, once every task has succeeded:
#     sbatch --dependency=afterok:"$jid" THIS_SCRIPT
#   rerun failed tasks only (task i is LABELS[i]; `sacct -j JOBID` lists their states):
#     sbatch --array=3,17 THIS_SCRIPT
{database}{sif}#SBATCH --job-name=bids_parcellate
#SBATCH --cpus-per-task={config.nprocs}
{memory}#SBATCH --output=bids_parcellate-%A_%a.out
set -euo pipefail
RUN=({_bash_array(_runner(args, container))})
BIDS_DIR={shlex.quote(str(config.bids_dir))}
OUTPUT_DIR={shlex.quote(str(config.output_dir))}
LABELS=({_bash_array(labels)})
OPTIONS=({_bash_array(options)})
mkdir -p "$OUTPUT_DIR"
if [ -n "${{SLURM_ARRAY_TASK_ID:-}}" ]; then
    LABEL=${{LABELS[$SLURM_ARRAY_TASK_ID]}}
    exec "${{RUN[@]}}" "$BIDS_DIR" "$OUTPUT_DIR" participant --participant-label "$LABEL" \\
        --nprocs "${{SLURM_CPUS_PER_TASK:-1}}" "${{OPTIONS[@]}}"
else
    exec "${{RUN[@]}}" "$BIDS_DIR" "$OUTPUT_DIR" group --participant-label "${{LABELS[@]}}" \\
        --nprocs "${{SLURM_CPUS_PER_TASK:-1}}" "${{OPTIONS[@]}}"
fi
"""
