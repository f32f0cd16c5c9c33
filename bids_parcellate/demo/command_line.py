"""Command line of ``python -m bids_parcellate.demo``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bids_parcellate.demo.dataset import make_demo_dataset
from bids_parcellate.demo.settings import CONFOUNDS_NAMES, DTYPES, LAYOUTS
from bids_parcellate.words import plural


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m bids_parcellate.demo``.

    Returns
    -------
    argparse.ArgumentParser
        The parser; its defaults are those of
        :func:`~bids_parcellate.demo.make_demo_dataset`.
    """
    p = argparse.ArgumentParser(
        prog="python -m bids_parcellate.demo",
        description="Write a synthetic fMRIPrep-like dataset with a known parcellation.",
    )
    p.add_argument("root", type=Path, help="output directory")
    p.add_argument("--participants", nargs="+", default=["01", "02"])
    p.add_argument("--sessions", nargs="+", default=None)
    p.add_argument("--tasks", nargs="+", default=["rest"])
    p.add_argument("--runs", nargs="+", default=["1", "2"])
    p.add_argument("--no-runs", action="store_true", help="write no run- entity")
    p.add_argument("--n-volumes", type=int, default=100)
    p.add_argument("--resolution", type=int, default=4)
    p.add_argument("--n-true-parcels", type=int, default=20)
    p.add_argument("--tr", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--layout", choices=LAYOUTS, default="raw+derivatives")
    p.add_argument("--space", default="MNI152NLin2009cAsym")
    p.add_argument("--res-label", default=None)
    p.add_argument("--n-nonsteady", type=int, default=2)
    p.add_argument("--n-spikes", type=int, default=3)
    p.add_argument("--snr", type=float, default=0.4)
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--confounds-name", choices=CONFOUNDS_NAMES, default="timeseries")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Parameters
    ----------
    argv : sequence of str or None, default=None
        Arguments (``sys.argv[1:]`` when ``None``).

    Returns
    -------
    int
        Exit status (0).
    """
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    runs = None if args.no_runs else args.runs
    truth = make_demo_dataset(
        args.root,
        participants=args.participants,
        sessions=args.sessions,
        tasks=args.tasks,
        runs=runs,
        n_volumes=args.n_volumes,
        resolution=args.resolution,
        n_true_parcels=args.n_true_parcels,
        tr=args.tr,
        seed=args.seed,
        jitter=args.jitter,
        layout=args.layout,
        space=args.space,
        res_label=args.res_label,
        n_nonsteady=args.n_nonsteady,
        n_spikes=args.n_spikes,
        snr=args.snr,
        dtype=args.dtype,
        confounds_name=args.confounds_name,
    )
    n_runs = (
        len(args.participants) * len(args.sessions or [None]) * len(args.tasks)
        * (1 if runs is None else len(runs))
    )
    print(
        f"bids_parcellate.demo: wrote {plural(n_runs, 'run')} of "
        f"{plural(len(args.participants), 'participant')} to {truth.root} (fMRIPrep: "
        f"{truth.fmriprep_dir}, truth: "
        f"{truth.root / 'sourcedata' / 'ground_truth'}) in "
        f"{time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    return 0
