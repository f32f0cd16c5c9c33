"""The group level's map-reduce: each unit's summary (:func:`unit_summaries`, the map),
the group mask (:func:`group_mask`), the units' features merged one summary at a time
(:func:`reduce_summaries`, :class:`ComponentMerger`), and what the learner learns the
group atlas from (:func:`group_training`). Memory holds one summary and the (voxels x K)
group state, whatever the number of units.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from bids_parcellate.config import Config, UserError
from bids_parcellate.derivatives import dataset, naming
from bids_parcellate.inputs.grids import output_res
from bids_parcellate.inputs.query import Run
from bids_parcellate.learn.learner import Training
from bids_parcellate.results import GroupMask, GroupResult
from bids_parcellate.summary import (
    SummaryHeader,
    compute_summary,
    read_features,
    read_header,
    read_mask,
    summary_hash,
    summary_path,
    write_summary,
)
from bids_parcellate.words import plural

LOGGER = logging.getLogger("bids_parcellate")

UnitKey = tuple[str, str | None]


class ComponentMerger:
    """Rank-K SVD of a matrix that grows by blocks of columns, one block at a time.

    ``add(block)`` appends the (n_voxels x k) ``block`` to the columns seen so far and
    keeps the top ``n_components`` left singular vectors scaled by their singular
    values (``U S``), so that distances between voxels (rows) are those of the
    concatenation projected on its main components. Each update is exact for the
    kept components and the new block: the thin SVD of ``[U S | block]`` from its
    (K + k) x (K + k) Gram matrix.

    scikit-learn's ``IncrementalPCA`` centres the samples and needs every batch to hold
    at least ``n_components`` rows; here batches (one unit's components) are often
    smaller than K and must not be centred, so the update is written here.

    Parameters
    ----------
    n_components : int
        K, the number of group components kept.
    chunk : int
        Rows processed at once when forming the Gram matrix in float64.
    """

    def __init__(self, n_components: int, chunk: int = 8192) -> None:
        self.n_components = n_components
        self.chunk = chunk
        self.components_: np.ndarray | None = None
        self.eigenvalues_: np.ndarray | None = None  # squared singular values
        self.n_blocks_ = 0

    def add(self, block: np.ndarray) -> ComponentMerger:
        """Merge ``block`` (n_voxels x k) into the kept components; returns ``self``."""
        block = np.asarray(block, dtype=np.float32)
        state = self.components_
        n_rows, k = block.shape
        n_state = 0 if state is None else state.shape[1]
        # Gram matrix of [state | block]: the state's columns are orthogonal, so its own
        # block is diag(S^2); only state' block and block' block are computed (float64)
        gram = np.zeros((n_state + k, n_state + k))
        if state is not None:
            gram[:n_state, :n_state] = np.diag(self.eigenvalues_)
        for start in range(0, n_rows, self.chunk):
            part = block[start:start + self.chunk].astype(np.float64)
            gram[n_state:, n_state:] += part.T @ part
            if state is not None:
                gram[:n_state, n_state:] += state[start:start + self.chunk].T.astype(
                    np.float64) @ part
        gram[n_state:, :n_state] = gram[:n_state, n_state:].T
        eigval, eigvec = np.linalg.eigh(gram)
        order = np.argsort(eigval)[::-1][:self.n_components]
        order = order[eigval[order] > eigval.max() * 1e-10]
        weights = eigvec[:, order].astype(np.float32)
        merged = block @ weights[n_state:]
        if state is not None:
            merged += state @ weights[:n_state]
        self.components_ = merged
        self.eigenvalues_ = eigval[order]
        self.n_blocks_ += 1
        return self


def group_mask(summaries: dict[str, SummaryHeader], affine: np.ndarray) -> GroupMask:
    """Intersection of the summaries' masks (one mask in memory at a time).

    Parameters
    ----------
    summaries : dict
        unit name -> its summary header.
    affine : ndarray, shape (4, 4)
        The common grid's affine.

    Returns
    -------
    GroupMask
        The intersection, the size of the union and the voxels each unit misses.

    Raises
    ------
    UserError
        When the intersection is empty.
    """
    inter = union = None
    counts = {}
    for name, header in summaries.items():
        mask = read_mask(header.path)
        counts[name] = int(mask.sum())
        inter = mask if inter is None else inter & mask
        union = mask.copy() if union is None else union | mask
    assert inter is not None and union is not None
    n_union = int(union.sum())
    result = GroupMask(mask=inter, affine=affine, n_union=n_union,
                       voxels_missing={n: n_union - c for n, c in counts.items()})
    if not inter.any():
        raise UserError("group level: the intersection of the participants' brain masks is "
                        "empty")
    LOGGER.info("group mask: %d voxels, the intersection of %s; %s of their union lost%s",
                result.n_voxels, "the masks of " + plural(len(summaries), "unit")
                if len(summaries) != 1 else "1 unit's mask",
                plural(result.n_lost, "voxel", zero="0"),
                "" if not result.n_lost else " (most missing: " + ", ".join(
                    f"{n} {c}" for n, c in sorted(result.voxels_missing.items(),
                                                  key=lambda kv: (-kv[1], kv[0]))[:3] if c)
                + ")")
    return result


def reduce_summaries(headers: Iterable[SummaryHeader], mask: np.ndarray,
                     n_components: int) -> np.ndarray:
    """Group features (group-mask voxels x K) from the units' summaries, streamed.

    Each unit's features are restricted to the group mask and divided by the square
    root of its number of volumes (every unit weighs the same), then merged into a
    :class:`ComponentMerger`.

    Parameters
    ----------
    headers : iterable of SummaryHeader
        The units' summaries (one may come more than once: a bootstrap resample).
    mask : ndarray of bool, 3D
        The group mask.
    n_components : int
        K, the group components kept.

    Returns
    -------
    ndarray, shape (n_voxels, <= K), float32
    """
    merger = ComponentMerger(n_components)
    for header in headers:
        features, unit_mask = read_features(header.path)
        rows = mask[unit_mask]
        merger.add(features[rows] * np.float32(1.0 / np.sqrt(max(header.n_volumes, 1))))
        del features
    assert merger.components_ is not None
    return merger.components_


def group_training(config: Config, summaries: dict[str, SummaryHeader], gmask: GroupMask,
                   features: np.ndarray) -> Training:
    """The learner's :class:`~bids_parcellate.learn.learner.Training` at the group level.

    - features: the merged summaries (:func:`reduce_summaries`);
    - a ``--bootstrap`` resample draws as many units as there are, with replacement, and
      merges their summaries (participants are the group's independent samples);
    - dictlearning / canica decompose the group components as one pseudo-run: the
      (voxels x K) merged components, scaled so that their norm is that of
      ``n_volumes`` z-scored volumes (each unit enters the merge divided by the square
      root of its volumes), which keeps the automatic DictLearning sparsity (computed
      from ``n_volumes``) on the scale it was calibrated for.

    Parameters
    ----------
    config : Config
    summaries : dict
        unit name -> its summary header.
    gmask : GroupMask
    features : ndarray, shape (n_voxels, K)
        ``reduce_summaries(summaries.values(), gmask.mask, config.n_components)``.

    Returns
    -------
    Training
    """
    headers = list(summaries.values())
    n_volumes = sum(h.n_volumes for h in headers)
    if config.bootstrap and len(headers) < 2:
        LOGGER.warning("--bootstrap at the group level resamples participants: with one "
                       "participant every resample holds the same data, and only the "
                       "method's random starts differ")

    def resample(rng: np.random.Generator) -> np.ndarray:
        drawn = rng.integers(0, len(headers), size=len(headers))
        return reduce_summaries((headers[i] for i in drawn), gmask.mask,
                                config.n_components)

    def decomposition_input() -> tuple[list[np.ndarray], int]:
        pseudo_run = np.ascontiguousarray(features.T) * np.float32(
            np.sqrt(n_volumes / max(len(headers), 1)))
        return [pseudo_run], n_volumes

    return Training(mask=gmask.mask, affine=gmask.affine, features=lambda: features,
                    resampler=lambda: resample, decomposition_input=decomposition_input)


def unit_summaries(config: Config, units: dict[UnitKey, list[Run]], grid, source_dirs,
               result: GroupResult) -> dict[str, SummaryHeader]:
    """A valid summary for every unit (the map step): reuse, or compute (reading BOLD)
    and write.

    Parameters
    ----------
    config : Config
    units : dict
        (subject, session) -> the unit's complete runs.
    grid : tuple
        (shape, affine) every summary must be on.
    source_dirs : list of Path
    result : GroupResult
        Records reused, computed and failed units and the files written.

    Returns
    -------
    dict
        unit name -> header of its valid summary (failed units are left out).
    """
    paths: dict[str, SummaryHeader] = {}
    shape, affine = grid
    for key, runs in units.items():
        name = naming.unit_prefix(*key)
        first = runs[0].entities
        path = summary_path(config, key[0], key[1],
                            {"space": first.get("space", config.space),
                             "res": output_res(config, runs)})
        header = read_header(path) if path.is_file() else None
        if (header is not None and header.hash == summary_hash(config, runs)
                and header.shape == shape and np.allclose(header.affine, affine, atol=1e-3)):
            LOGGER.info("%s: reusing %s", name, path.name)
            result.reused.append(name)
            paths[name] = header
            continue
        reason = "missing" if header is None else "made with other parameters or runs"
        LOGGER.info("%s: summary %s, computing it from %s", name, reason,
                    plural(len(runs), "run"))
        try:
            summary = compute_summary(config, runs)
            if not result.computed:
                dataset.prepare_output_dir(config.output_dir, source_dirs)
            result.files += write_summary(config, summary, source_dirs, runs)
            del summary
            header = read_header(path)
            if header is None:
                raise UserError(f"{path}: summary written but unreadable")
        except UserError as exc:
            LOGGER.error("%s excluded from the group: %s", name, exc)
            result.errors[name] = str(exc)
            continue
        result.computed.append(name)
        paths[name] = header
    return paths


def space_res(units: dict[UnitKey, list[Run]], config: Config) -> tuple[str, str | None]:
    """The ``space`` and ``res`` entities of the group outputs.

    Parameters
    ----------
    units : dict
        (subject, session) -> the unit's runs.
    config : Config

    Returns
    -------
    space : str
    res : str or None
        The ``--target-*`` grid's label when the data are resampled, else the runs' own
        ``res`` when they all have the same, else None.
    """
    first_runs = next(iter(units.values()))
    first = first_runs[0].entities
    if config.resamples:
        return first.get("space", config.space), output_res(config, first_runs)
    resolutions = {run.entities.get("res") for runs in units.values() for run in runs}
    res = first.get("res") if len(resolutions) == 1 else None
    return first.get("space", config.space), res
