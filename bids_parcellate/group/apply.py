"""Applying the group atlas: every run's parcel timeseries on it, one unit in memory at
a time (:func:`apply_atlas`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bids_parcellate.config import Config, UserError
from bids_parcellate.denoise import SkipRun, clean_run
from bids_parcellate.derivatives import naming
from bids_parcellate.derivatives.atlas_files import write_atlas_timeseries
from bids_parcellate.extract import parcel_timeseries
from bids_parcellate.inputs.bold import UnitMask
from bids_parcellate.inputs.query import Run
from bids_parcellate.results import GroupMask, GroupResult, RunSummary
from bids_parcellate.runtime.progress import Progress

if TYPE_CHECKING:
    import numpy as np

    from bids_parcellate.inputs.grids import BoldReader

LOGGER = logging.getLogger("bids_parcellate")

UnitKey = tuple[str, str | None]


def apply_atlas(config: Config, result: GroupResult, units: dict[UnitKey, list[Run]],
                gmask: GroupMask, labels: dict[int, np.ndarray], space: str,
                res: str | None, source_dirs: list[Path], collect: list | None = None,
                reader: BoldReader | None = None) -> None:
    """Parcel timeseries of every run on the group atlas, one unit in memory at a time.

    Each run's BOLD is read once and cleaned exactly as at the participant level, on the
    group mask (cleaning is voxel-wise, so values equal those on the unit's own mask).
    ``collect``: when given, ``(unit, run, kept volumes, scale -> timeseries)`` of every
    run is appended to it (parcel timeseries only: small) for the connectomes.
    ``reader``: resamples each BOLD to the atlas grid (``--target-*``, see
    :func:`bids_parcellate.inputs.grids.resampling_reader`).

    A unit whose runs cannot be read or cleaned (a :class:`UserError`) is recorded in
    ``result.errors`` and its timeseries are not written; the other units go on.

    Parameters
    ----------
    config : Config
    result : GroupResult
        Its ``label`` names the files; filled here: ``files``, ``errors`` and ``runs``.
    units : dict
        (subject, session) -> complete runs.
    gmask : GroupMask
        The atlas's mask and grid.
    labels : dict
        scale -> int32 labels 1..n over the group mask's voxels.
    space : str
        The ``space-`` entity of the files.
    res : str or None
        The ``res-`` entity.
    source_dirs : list of Path
        The input datasets.
    collect : list, optional
        Appended to, for the group connectomes (see above).
    reader : BoldReader, optional
        Resamples each BOLD to the atlas grid.
    """
    unit_mask = UnitMask(mask=gmask.mask, affine=gmask.affine, n_voxels_per_run={},
                         reader=reader)
    progress = Progress(sum(len(r) for r in units.values()))
    for key, runs in units.items():
        name = naming.unit_prefix(*key)
        blocks = []
        try:
            for run in runs:
                start = time.monotonic()
                label = naming.source_prefix(run.entities)
                try:
                    clean = clean_run(run, unit_mask, config)
                except SkipRun as exc:
                    progress.run_done(f"{label}: skipped ({exc})")
                    continue
                series = parcel_timeseries(clean.data, labels, config.standardize_arg)
                clean.data = None  # free the voxel data; keep the run's metadata
                blocks.append((run, clean, series))
                progress.run_done(f"{label}: group atlas timeseries "
                                  f"({time.monotonic() - start:.1f} s)")
        except UserError as exc:
            LOGGER.error("%s: no group timeseries: %s", name, exc)
            result.errors[name] = str(exc)
            continue
        for run, clean, series in blocks:
            result.runs.append(RunSummary.of(clean))
            if collect is not None:
                collect.append((key, run, int(clean.sample_mask.size), series))
            result.files += write_atlas_timeseries(config, result.label, run, clean, series,
                                                   space, res, source_dirs)
