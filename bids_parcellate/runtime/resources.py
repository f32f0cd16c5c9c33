"""Memory: an estimate of each unit's peak memory, checked against ``--mem-gb``.

(Threads: ``--nprocs`` caps the BLAS and OpenMP pools for the whole run, see
:func:`bids_parcellate.cli.limit_threads`; outputs do not depend on it, tested byte for
byte with 1 and 2.)

Before anything is computed, the peak resident memory of every unit is estimated
from the BOLD headers (grid x volumes, nothing is decompressed) and the brain masks
(voxels in the mask); when ``--mem-gb`` is given and a unit needs more, the run stops
with a one-line message saying how much it needs. The model, measured with
``/usr/bin/time -v`` (``benchmarks/memory_estimate.py`` re-measures it), is

``peak = held + margin + a * largest BOLD grid (float32 bytes; only when the BOLD is read
whole) + b * unit data (float32 bytes) + c * clustering features (float64 bytes)``

where ``held`` is the peak memory of the process when the estimate is made (interpreter
and libraries loaded),
the unit data are mask voxels x all volumes of the unit and the features are
mask voxels x min(volumes, ``--n-components``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bids_parcellate.config import Config, UserError
from bids_parcellate.inputs.grids import DATA_STRATEGIES
from bids_parcellate.inputs.query import Run
from bids_parcellate.runtime import helper_process

LOGGER = logging.getLogger("bids_parcellate")

GB = 1e9
# Fitted on peak RSS measured with /usr/bin/time -v (generated data at 4 mm with 1 and
# 3 runs of 150 volumes and at 2 mm with 1 run of 100 volumes, ward and kmeans, and the
# real studyforrest run); with the BOLD streamed (no 4D grid term on the plain path)
# benchmarks/memory_estimate.py puts the estimate 20-35 % above every measurement (8, 4
# and 2 mm, 1 and 3 runs, ward and kmeans; 60-70 % above at 2 mm with the quality
# figures, docs/hpc.md).
#: Margin over the memory the process already holds (interpreter and libraries,
#: measured when the estimate is made) for what the pipeline allocates besides the data.
MARGIN_BYTES = 0.1 * GB
#: Per float32 byte of the largest run's 4D image, when it is read whole (resampling to
#: a target grid, or a mask computed from the BOLD); otherwise the BOLD is streamed in
#: 16 MB blocks and only the in-mask voxels are kept (part of the unit data below).
GRID_FACTOR = 1.0
#: Per float32 byte of the unit's in-mask data (voxels x all volumes): float64 cleaning
#: copies, the cleaned runs kept for extraction, smoothed and concatenated features.
DATA_FACTOR = 5.5
#: Per float64 byte of the clustering features (voxels x min(volumes, --n-components)):
#: scikit-learn's agglomerative trees keep per-node moments.
FEATURE_FACTOR = {"ward": 1.0, "complete": 1.0, "average": 1.0}
DEFAULT_FEATURE_FACTOR = 0.3


#: Resident memory that nilearn and scikit-learn add once imported (measured: 96 MB).
#: They are not imported to measure it: importing them takes 1-2 s.
LIBRARY_BYTES = 0.1 * GB


#: Resident memory of the helper process that imports them instead, with ``--nprocs``
#: >= 2 (:mod:`bids_parcellate.runtime.helper_process`; measured 0.17 GB with multiprocessing's
#: resource tracker, the same at 4 and 2 mm: it holds only confounds and operators).
HELPER_BYTES = 0.2 * GB


def base_bytes() -> float:
    """Peak memory of this process so far, plus the pipeline's libraries not loaded yet
    (or the helper process that holds them)."""
    import resource
    import sys

    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    if helper_process.running():
        libraries = HELPER_BYTES
    else:
        libraries = 0.0 if "nilearn.signal" in sys.modules else LIBRARY_BYTES
    return kilobytes * 1024 + MARGIN_BYTES + libraries


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of one unit and what it is made of."""

    n_voxels: int
    n_volumes: int
    grid_voxels: int
    peak_bytes: float

    @property
    def gb(self) -> float:
        """The estimated peak memory in GB (10^9 bytes)."""
        return self.peak_bytes / GB


def estimate_unit_memory(runs: list[Run], config: Config,
                         base: float | None = None) -> MemoryEstimate | None:
    """Estimate a unit's peak memory from headers and masks; ``None`` when unreadable
    (the unit then fails later with the proper message).

    Parameters
    ----------
    runs : list of Run
        The unit's runs: BOLD headers (shape) and brain masks (voxels) are read.
    config : Config
        ``--method``, ``--n-components``, ``--mask-strategy`` and ``--target-*``.
    base : float, optional
        Bytes held before the unit is processed (default :func:`base_bytes`).

    Returns
    -------
    MemoryEstimate or None
        None when a header or mask cannot be read, or a BOLD is not 4D.
    """
    import nibabel as nib
    import numpy as np

    try:
        headers = [nib.load(run.bold) for run in runs]
        shapes = [img.shape for img in headers]
        mask_voxels = max(int((np.asanyarray(nib.load(run.mask).dataobj) > 0).sum())
                          for run in runs)
    except Exception:  # corrupt or missing files are reported by the unit itself
        return None
    if any(len(s) != 4 for s in shapes):
        return None
    volumes = sum(s[3] for s in shapes)
    grid = max(int(np.prod(s[:3])) * s[3] for s in shapes)
    ratio = _resampling_ratio(config, headers[0].affine)
    if ratio is not None:
        # --target-*: the masked data scale with the voxel volume; the resampled 4D
        # image is held next to the one read
        mask_voxels = int(np.ceil(mask_voxels * ratio))
        grid = int(grid * (1 + ratio))
    if ratio is None and config.mask_strategy not in DATA_STRATEGIES:
        grid = 0  # streamed (bold.read_bold)
    features = mask_voxels * min(volumes, config.n_components)
    factor = FEATURE_FACTOR.get(config.method, DEFAULT_FEATURE_FACTOR)
    base = base_bytes() if base is None else base
    peak = (base + GRID_FACTOR * 4 * grid + DATA_FACTOR * 4 * mask_voxels * volumes
            + factor * 8 * features)
    return MemoryEstimate(mask_voxels, volumes, max(int(np.prod(s[:3])) for s in shapes),
                          peak)


def _resampling_ratio(config: Config, affine) -> float | None:
    """Voxels of the target grid per voxel of the BOLD grid (``--target-*``), or None."""
    import numpy as np

    source = abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))
    if config.target_resolution is not None:
        target = config.target_resolution ** 3
    elif config.target_affine is not None:
        target = abs(np.linalg.det(np.asarray(config.target_affine, dtype=float)[:3, :3]))
    else:
        return None
    return source / target if source > 0 and target > 0 else None


def check_memory(config: Config, units: dict[tuple[str, str | None], list[Run]]
                 ) -> float | None:
    """Log each unit's estimate; raise :class:`UserError` when one is above ``--mem-gb``.

    Returns the largest estimate in GB (``None`` when none could be made), which
    :func:`bids_parcellate.runtime.parallel.plan_workers` uses to run fewer units at once.

    Parameters
    ----------
    config : Config
        ``--mem-gb`` (no check without it) and what :func:`estimate_unit_memory` uses.
    units : dict
        ``(subject, session) -> list of Run``: the units to compute.

    Returns
    -------
    float or None
        The largest estimate in GB.

    Raises
    ------
    UserError
        When the largest estimate is above ``--mem-gb``.
    """
    worst = None
    base = base_bytes()
    for key, runs in units.items():
        estimate = estimate_unit_memory(runs, config, base)
        if estimate is None:
            continue
        name = "sub-" + key[0] + (f"_ses-{key[1]}" if key[1] else "")
        LOGGER.debug("%s: estimated peak memory %.3f GB (%d voxels x %d volumes)", name,
                     estimate.gb, estimate.n_voxels, estimate.n_volumes)
        if worst is None or estimate.peak_bytes > worst[1].peak_bytes:
            worst = (name, estimate)
    if worst is None:
        return None
    if config.mem_gb is None or worst[1].gb <= config.mem_gb:
        return worst[1].gb
    name, estimate = worst
    raise UserError(
        f"--mem-gb {config.mem_gb:g}: {name} needs about {estimate.gb:.1f} GB "
        f"({estimate.n_voxels} voxels x {estimate.n_volumes} volumes, --method "
        f"{config.method}); raise --mem-gb or select fewer runs"
    )
