"""Group level: one parcellation learned from every unit, as a streaming map-reduce.

1. Grid check (:func:`check_grids`): every selected run's brain mask must be on one
   voxel grid, else a one-line error names the units that differ and nothing is written.
2. Map (:mod:`bids_parcellate.summary`): every unit needs a summary in OUTPUT_DIR that
   matches the parameters; the participant level leaves them, the missing or stale
   ones are computed here (the only time this step reads BOLD files).
3. Reduce (:func:`reduce_summaries`): the group mask is the intersection of the units'
   masks (voxels lost are logged and recorded); the units' features, restricted to it
   and weighted equally, are merged one summary at a time into a rank-K SVD of their
   column-wise concatenation (:class:`ComponentMerger`). Memory holds one summary and
   the (voxels x K) group state, whatever the number of units.
4. The group features are clustered by the participant level's method registry at
   every scale (a hierarchical tree is built once and cut at every scale) and written
   as a BIDS atlas (``atlas-<label>_description.json``, ``tpl-<space>/..._dseg.*``).
5. Apply (:func:`apply_atlas`): unit by unit, each run's BOLD is read once, cleaned as
   at the participant level and reduced to parcel mean timeseries on the group atlas.
6. Agreement of each unit's own parcellation (same method and scale, when the
   participant level wrote it) with the group one: ARI and NMI in a group TSV.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_parcellate import __version__
from bids_parcellate.config import Config, UserError
from bids_parcellate.denoise import SkipRun, clean_run, strategies
from bids_parcellate.derivatives import dataset, naming, writers
from bids_parcellate.derivatives.tables import (
    DSEG_COLUMNS,
    DSEG_COLUMNS_JSON,
    ORIGIN_COLUMNS,
    dseg_table,
    origin_column_name,
    parcel_names,
    processing_parameters,
    write_relmats,
)
from bids_parcellate.extract import align_to_volumes, parcel_timeseries
from bids_parcellate.inputs.bold import UnitMask
from bids_parcellate.inputs.grids import output_res, resampling_reader
from bids_parcellate.inputs.query import Run, Selection, read_dataset_description
from bids_parcellate.learn.features import labels_to_volume
from bids_parcellate.learn.methods import parcellate
from bids_parcellate.learn.regions import RegionSet, learn_regions, split_disconnected
from bids_parcellate.runtime.progress import Progress
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

LOGGER = logging.getLogger("bids_parcellate")

UnitKey = tuple[str, str | None]

AGREEMENT_COLUMNS = {
    "participant_id": "Participant (sub-<label>).",
    "session_id": "Session (ses-<label>) when the participant level ran per session, "
                  "else n/a.",
    "scale": "Number of parcels.",
    "ari": "Adjusted Rand index between the participant's own parcellation and the "
           "group atlas, over the group mask (1: identical, about 0: chance).",
    "nmi": "Normalised mutual information (arithmetic mean normalisation) between the "
           "same two parcellations (1: identical).",
    "n_voxels": "Voxels compared (the group mask).",
}


# --------------------------------------------------------------------------- grid
def _grid_text(shape: tuple[int, ...], affine: np.ndarray) -> str:
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    size = "x".join(f"{z:g}" for z in np.round(zooms, 2))
    return f"{'x'.join(map(str, shape))} voxels of {size} mm"


def check_grids(units: dict[UnitKey, list[Run]]) -> tuple[tuple[int, ...], np.ndarray]:
    """Check that every run of every unit is on one voxel grid (mask headers only).

    Returns
    -------
    shape, affine
        The common grid.

    Raises
    ------
    UserError
        One line naming the units whose grid differs from the most common one.
    """
    grids: list[tuple[tuple[int, ...], np.ndarray]] = []
    members: list[list[str]] = []
    by_unit: dict[str, set[int]] = {}
    for key, runs in units.items():
        name = naming.unit_prefix(*key)
        for run in runs:
            if run.error:  # no mask: reported by the level that processes it
                continue
            try:
                img = nib.load(run.mask)
            except Exception as exc:
                raise UserError(f"{run.mask}: cannot read mask ({exc})") from None
            shape, affine = tuple(int(n) for n in img.shape[:3]), img.affine
            index = next((i for i, (g_shape, g_affine) in enumerate(grids)
                          if g_shape == shape and np.allclose(g_affine, affine, atol=1e-3)),
                         None)
            if index is None:
                grids.append((shape, affine))
                members.append([])
                index = len(grids) - 1
            if name not in members[index]:
                members[index].append(name)
            by_unit.setdefault(name, set()).add(index)
    if not grids:
        raise UserError("group level: no runs selected")
    if len(grids) == 1:
        return grids[0]
    reference = max(range(len(grids)), key=lambda i: (len(members[i]), -i))
    differ = [name for name, idx in by_unit.items() if idx != {reference}]
    details = []
    for name in differ:
        other = sorted(by_unit[name] - {reference})
        details.append(f"{name} ({'; '.join(_grid_text(*grids[i]) for i in other)})")
    shown = ", ".join(details[:10]) + (f" and {len(details) - 10} more" if len(details) > 10
                                       else "")
    raise UserError(
        f"group level needs every participant on one voxel grid: {shown} differ from the "
        f"{len(members[reference])} other unit(s) ({_grid_text(*grids[reference])}); "
        "select them out with --participant-label or resample them")


def check_tangent(config: Config, units: dict[UnitKey, list[Run]]) -> None:
    """``--connectivity tangent`` needs at least two participants (raises UserError)."""
    n = len({key[0] for key in units})
    if "tangent" in config.connectivity and n < 2:
        raise UserError("--connectivity tangent needs several participants: the group level "
                        f"has {n}")


# --------------------------------------------------------------------------- label
def atlas_label(config: Config) -> str:
    """The ``atlas-`` label: ``--atlas-label``, else ``<dataset><Method>``.

    ``<dataset>`` is the alphanumeric part of BIDS_DIR's folder name (of the raw
    dataset's folder when BIDS_DIR is a derivatives dataset inside ``derivatives/``),
    e.g. ``ds000030Ward`` for ``/data/ds000030`` with ``--method ward``.
    """
    if config.atlas_label:
        return config.atlas_label
    root = config.bids_dir.resolve()
    if root.parent.name == "derivatives":
        root = root.parent.parent
    name = "".join(ch for ch in root.name if ch.isalnum()) or "dataset"
    method = naming.seg_label(config.method)
    return name + method[:1].upper() + method[1:]


def _dataset_name(config: Config) -> str:
    try:
        return str(read_dataset_description(config.bids_dir).get("Name", ""))
    except UserError:
        return ""


# --------------------------------------------------------------------------- reduce
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


@dataclass
class GroupMask:
    """The group mask and what it cost (voxels of the union lost to the intersection)."""

    mask: np.ndarray
    affine: np.ndarray
    n_union: int
    voxels_missing: dict[str, int]  # unit -> voxels of the union outside its mask

    @property
    def n_voxels(self) -> int:
        return int(self.mask.sum())

    @property
    def n_lost(self) -> int:
        return self.n_union - self.n_voxels

    def describe(self) -> dict:
        worst = sorted(self.voxels_missing.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "Rule": "intersection of the participants' brain masks",
            "NumberOfVoxels": self.n_voxels,
            "VoxelsInUnion": self.n_union,
            "VoxelsLost": self.n_lost,
            "VoxelsMissingPerParticipant": dict(worst),
        }


def group_mask(summaries: dict[str, SummaryHeader], affine: np.ndarray) -> GroupMask:
    """Intersection of the summaries' masks (one mask in memory at a time)."""
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
    return result


def reduce_summaries(summaries: dict[str, SummaryHeader], mask: np.ndarray,
                     n_components: int) -> np.ndarray:
    """Group features (group-mask voxels x K) from the units' summaries, streamed.

    Each unit's features are restricted to the group mask and divided by the square
    root of its number of volumes (every unit weighs the same), then merged into a
    :class:`ComponentMerger`.
    """
    merger = ComponentMerger(n_components)
    for header in summaries.values():
        features, unit_mask = read_features(header.path)
        rows = mask[unit_mask]
        merger.add(features[rows] * np.float32(1.0 / np.sqrt(max(header.n_volumes, 1))))
        del features
    assert merger.components_ is not None
    return merger.components_


# --------------------------------------------------------------------------- driver
@dataclass
class GroupResult:
    """What the group level did."""

    label: str = ""
    units: list[str] = field(default_factory=list)
    summaries: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _summaries(config: Config, units: dict[UnitKey, list[Run]], grid, source_dirs,
               result: GroupResult) -> dict[str, SummaryHeader]:
    """A valid summary for every unit: reuse, or compute (reading BOLD) and write."""
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
        LOGGER.info("%s: summary %s, computing it from %d run(s)", name, reason, len(runs))
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


def run_group_level(config: Config, selection: Selection,
                    exclude: set[UnitKey] | frozenset = frozenset()) -> GroupResult:
    """Learn the group atlas, write it, and apply it to every run.

    Parameters
    ----------
    config : Config
    selection : Selection
    exclude : set of (subject, session)
        Units left out (those that failed at the participant level of this invocation).

    Raises
    ------
    UserError
        When no unit is usable, the grids differ or the scales are too large.
    """
    result = GroupResult(label=atlas_label(config))
    units = {}
    for key, runs in selection.units().items():
        if key in exclude:
            continue
        # a run missing a required file is left out and reported (the invocation exits
        # non-zero), as at the participant level
        for run in runs:
            if run.error:
                LOGGER.error("group level: skipping run: %s", run.error)
                result.incomplete.append(run.error)
        usable = [run for run in runs if not run.error]
        if usable:
            units[key] = usable
        else:
            result.errors[naming.unit_prefix(*key)] = "no run with all its files"
    if not units:
        raise UserError("group level: no participant left to combine")
    check_tangent(config, units)
    native = check_grids(units)
    # --target-*: the participant level's summaries are on the resampled grid
    target, reader = resampling_reader(config, *native)
    grid = (target.shape, target.affine)
    source_dirs = selection.fmriprep_dirs

    tic = time.monotonic()
    paths = _summaries(config, units, grid, source_dirs, result)
    if not paths:
        raise UserError("group level: no usable participant ("
                        + "; ".join(f"{k}: {v}" for k, v in result.errors.items()) + ")")
    result.units = list(paths)
    result.summaries = [h.path for h in paths.values()]
    result.timings["summaries"] = time.monotonic() - tic

    tic = time.monotonic()
    gmask = group_mask(paths, grid[1])
    LOGGER.info("group mask: %d voxels, the intersection of %d unit(s)' masks; %d voxel(s) of "
                "their union lost%s", gmask.n_voxels, len(paths), gmask.n_lost,
                "" if not gmask.n_lost else " (most missing: " + ", ".join(
                    f"{n} {c}" for n, c in sorted(gmask.voxels_missing.items(),
                                                  key=lambda kv: (-kv[1], kv[0]))[:3] if c)
                + ")")
    features = reduce_summaries(paths, gmask.mask, config.n_components)
    result.timings["reduce"] = time.monotonic() - tic
    LOGGER.info("group features: %d voxels x %d components from %d unit(s) (%.1f s)",
                features.shape[0], features.shape[1], len(paths), result.timings["reduce"])

    tic = time.monotonic()
    n_volumes = sum(h.n_volumes for h in paths.values())
    labels, regions = _group_labels(config, features, gmask, n_volumes, len(paths))
    del features
    result.timings["parcellate"] = time.monotonic() - tic

    dataset.prepare_output_dir(config.output_dir, source_dirs)
    space, res = _space_res(units, config)
    result.files += write_atlas(config, result, gmask, labels, space, res, regions,
                                n_volumes)
    LOGGER.info("group atlas atlas-%s: scales %s from %d unit(s) written (%.1f s)",
                result.label, ", ".join(map(str, sorted(labels))), len(paths),
                result.timings["parcellate"])

    tic = time.monotonic()
    kept = {k: v for k, v in units.items() if naming.unit_prefix(*k) in paths}
    collected: list | None = [] if config.connectivity else None
    apply_atlas(config, result, kept, gmask, labels, space, res, source_dirs, collected,
                reader)
    result.timings["apply"] = time.monotonic() - tic
    if collected:
        tic = time.monotonic()
        result.files += write_group_connectomes(config, result, collected, labels, space,
                                                res)
        result.timings["connectome"] = time.monotonic() - tic
    result.files += write_agreement(config, result, kept, gmask, labels, space, res)
    return result


def _group_labels(config: Config, features: np.ndarray, gmask: GroupMask, n_volumes: int,
                  n_units: int) -> tuple[dict, dict[int, RegionSet]]:
    """Labels at every scale from the group features, and the region sets of
    region-based methods.

    dictlearning / canica decompose the group components as one pseudo-run: the
    (voxels x K) merged components, scaled so that their norm is that of
    ``n_volumes`` z-scored volumes (each unit enters the merge divided by the square
    root of its volumes), which keeps the automatic DictLearning sparsity (computed
    from ``n_volumes``) on the scale it was calibrated for.
    """
    regions: dict[int, RegionSet] = {}
    if config.is_decomposition:
        pseudo_run = np.ascontiguousarray(features.T) * np.float32(
            np.sqrt(n_volumes / max(n_units, 1)))
        regions = learn_regions([pseudo_run], gmask.mask, gmask.affine, config,
                                n_volumes=n_volumes)
        return {k: r.labels for k, r in regions.items()}, regions
    labels = parcellate(features, gmask.mask, config.method, config.n_parcels,
                        config.random_seed, **config.method_options())
    if config.split_disconnected:
        regions = {k: split_disconnected(lab, gmask.mask, gmask.affine,
                                         config.min_region_size)
                   for k, lab in labels.items()}
        labels = {k: r.labels for k, r in regions.items()}
    return labels, regions


def _space_res(units: dict[UnitKey, list[Run]], config: Config) -> tuple[str, str | None]:
    first_runs = next(iter(units.values()))
    first = first_runs[0].entities
    if config.resamples:
        return first.get("space", config.space), output_res(config, first_runs)
    resolutions = {run.entities.get("res") for runs in units.values() for run in runs}
    res = first.get("res") if len(resolutions) == 1 else None
    return first.get("space", config.space), res


# --------------------------------------------------------------------------- writing
def _atlas_entities(label: str, space: str, res: str | None, scale: int) -> dict:
    return {"atlas": label, "space": space, "res": res, "scale": scale, "suffix": "dseg"}


def atlas_dseg_name(label: str, space: str, res: str | None, scale: int,
                    extension: str = ".nii.gz") -> str:
    """Relative path of the group atlas image (or table / sidecar) at one scale."""
    return naming.build_name("atlas_dseg", {**_atlas_entities(label, space, res, scale),
                                             "extension": extension})


def write_atlas(config: Config, result: GroupResult, gmask: GroupMask, labels: dict,
                space: str, res: str | None, regions: dict[int, RegionSet] | None = None,
                n_volumes: int = 0) -> list[Path]:
    """Write ``atlas-<label>_description.json`` and the dseg files of every scale (and
    the network maps, ``_probseg``, of dictlearning / canica)."""
    out = config.output_dir
    written = []
    regions = regions or {}
    sources = [f"bids::{path.relative_to(out).as_posix()}" for path in result.summaries]
    if config.is_decomposition or config.split_disconnected:
        parameters = {**processing_parameters(config, n_volumes),
                      "NumberOfComponents": config.n_components}
    else:
        parameters = {
            "Method": config.method,
            "SmoothingFWHM": config.smoothing_fwhm,
            "NumberOfComponents": config.n_components,
            "RandomSeed": config.random_seed,
            "DenoiseStrategy": config.denoise_strategy,
            "Detrend": config.detrend,
            "HighPass": config.high_pass,
            "LowPass": config.low_pass,
        }
    origin_column = origin_column_name(config)
    columns = dict(DSEG_COLUMNS)
    if origin_column:
        columns = {"index": columns.pop("index"), "name": columns.pop("name"),
                   origin_column: ORIGIN_COLUMNS[origin_column], **columns}
    dataset_name = _dataset_name(config)
    written.append(writers.write_json(
        out / naming.build_name("atlas_description", {"atlas": result.label,
                                                       "suffix": "description",
                                                       "extension": ".json"}),
        {
            "Name": f"{result.label}: {config.method} group parcellation"
                    + (f" of {dataset_name}" if dataset_name else ""),
            "Description": f"Data-driven {config.method} parcellation learned by "
                           f"bids_parcellate from the cleaned BOLD runs of "
                           f"{len(result.units)} participant unit(s), at scales "
                           f"{', '.join(map(str, sorted(labels)))}.",
            "BIDSVersion": dataset.BIDS_VERSION,
            "SpatialReference": space,
            "DerivedFrom": "BOLD fMRI",
            "LevelType": "group",
            "ReferencesAndLinks": [dataset.CODE_URL],
            "Participants": result.units,
            "GroupMask": gmask.describe(),
            "Parameters": parameters,
            "ConfigHash": config.config_hash(),
            "GeneratedBy": [{"Name": "bids_parcellate", "Version": __version__,
                             "CodeURL": dataset.CODE_URL}],
        }))
    for scale in sorted(labels):
        ents = _atlas_entities(result.label, space, res, scale)
        img = nib.Nifti1Image(labels_to_volume(labels[scale], gmask.mask), gmask.affine)
        img.header.set_xyzt_units("mm")
        img.header.set_intent("label")
        written.append(writers.write_nifti(
            out / naming.build_name("atlas_dseg", {**ents, "extension": ".nii.gz"}), img))
        written.append(writers.write_tsv(
            out / naming.build_name("atlas_dseg", {**ents, "extension": ".tsv"}),
            list(columns), dseg_table(labels[scale], gmask.mask, gmask.affine,
                                       regions[scale].origin if origin_column else None)))
        n_parcels = int(labels[scale].max())
        what = (f"{n_parcels} regions extracted from {scale} {config.method} network maps"
                if config.is_decomposition else
                f"{config.method} group parcellation with {scale} parcels"
                + (f" split into {n_parcels} connected pieces"
                   if config.split_disconnected else ""))
        sidecar = {
            "Name": f"{result.label}, " + (f"{scale} maps" if config.is_decomposition
                                           else f"{scale} parcels"),
            "Description": f"{what}, learned from {len(result.units)} unit(s) on the "
                           "intersection of their brain masks.",
            "Method": config.method,
            "NumberOfParcels": int(labels[scale].max()),
            "SpatialReference": space,
            "Dimensions": 3,
            "CoordinateReportStrategy": "center_of_mass",
            "LevelType": "group",
            "Participants": result.units,
            "GroupMask": gmask.describe(),
            "Parameters": parameters,
            "Sources": sources,
            "ConfigHash": config.config_hash(),
            **DSEG_COLUMNS_JSON,
            **{name: {"Description": text} for name, text in columns.items()
               if name not in DSEG_COLUMNS},
        }
        if config.is_decomposition:
            sidecar["NumberOfMaps"] = scale
        if res is not None:
            sidecar["Resolution"] = (
                f"res-{res}: the input BOLD resampled to {res} voxels (nilearn "
                "resample_img: continuous interpolation for the BOLD, nearest neighbour "
                "for masks)" if config.resamples
                else f"res-{res}: the resolution of the input BOLD grid")
        written.append(writers.write_json(
            out / naming.build_name("atlas_dseg", {**ents, "extension": ".json"}), sidecar))
        maps = regions[scale].maps if scale in regions else None
        if maps is not None:
            written += _write_atlas_maps(config, result, gmask, ents, maps,
                                         regions[scale].origin, sidecar)
    return written


def _write_atlas_maps(config: Config, result: GroupResult, gmask: GroupMask, ents: dict,
                      maps: np.ndarray, origin: np.ndarray, dseg_sidecar: dict) -> list[Path]:
    """The group network maps as a 4D ``_probseg`` image next to the atlas dseg."""
    out = config.output_dir
    ents = {**ents, "suffix": "probseg"}
    volume = np.zeros(gmask.mask.shape + (maps.shape[0],), dtype=np.float32)
    volume[gmask.mask] = maps.T
    img = nib.Nifti1Image(volume, gmask.affine)
    img.header.set_xyzt_units("mm")
    counts = np.bincount(origin, minlength=maps.shape[0] + 1)[1:]
    keep = ("SpatialReference", "LevelType", "Participants", "GroupMask", "Parameters",
            "Sources", "ConfigHash", "Resolution")
    sidecar = {
        "Name": f"{result.label}, {maps.shape[0]} network maps",
        "Description": f"{maps.shape[0]} {config.method} network maps of the group: volume "
                       "k is map k (the component column of the atlas dseg table). Values "
                       "are map loadings, not probabilities.",
        "Method": config.method,
        "NumberOfMaps": int(maps.shape[0]),
        "RegionsPerMap": counts.tolist(),
        **{k: dseg_sidecar[k] for k in keep if k in dseg_sidecar},
    }
    return [writers.write_nifti(
                out / naming.build_name("atlas_probseg", {**ents, "extension": ".nii.gz"}),
                img),
            writers.write_json(
                out / naming.build_name("atlas_probseg", {**ents, "extension": ".json"}),
                sidecar)]


def _timeseries_sidecar(config: Config, run: Run, clean, parcellation: str,
                        label: str, source_dirs: list[Path]) -> dict:
    return {
        "Description": "Mean cleaned BOLD signal of each parcel of the group atlas; one row "
                       "per BOLD volume, censored volumes are n/a.",
        "RepetitionTime": run.tr,
        "SamplingFrequency": 1.0 / run.tr,
        "NumberOfVolumes": clean.n_volumes,
        "CensoredVolumes": sorted(set(range(clean.n_volumes))
                                  - set(clean.sample_mask.tolist())),
        "DenoiseStrategy": config.denoise_strategy,
        "DenoiseStrategyDescription": strategies()[config.denoise_strategy]["description"],
        "Confounds": clean.confounds,
        "Detrend": config.detrend,
        "HighPass": config.high_pass,
        "LowPass": config.low_pass,
        "Standardize": config.standardize,
        "Atlas": label,
        "Parcellation": parcellation,
        "Sources": [dataset.bids_uri(run.bold, source_dirs),
                    dataset.bids_uri(run.confounds, source_dirs) if run.confounds else None],
        "ConfigHash": config.config_hash(),
    }


def apply_atlas(config: Config, result: GroupResult, units: dict[UnitKey, list[Run]],
                gmask: GroupMask, labels: dict, space: str, res: str | None,
                source_dirs: list[Path], collect: list | None = None,
                reader=None) -> None:
    """Parcel timeseries of every run on the group atlas, one unit in memory at a time.

    Each run's BOLD is read once and cleaned exactly as at the participant level, on the
    group mask (cleaning is voxel-wise, so values equal those on the unit's own mask).
    ``collect``: when given, ``(unit, run, kept volumes, scale -> timeseries)`` of every
    run is appended to it (parcel timeseries only: small) for the connectomes.
    ``reader``: resamples each BOLD to the atlas grid (``--target-*``, see
    :func:`bids_parcellate.inputs.grids.resampling_reader`).
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
            if collect is not None:
                collect.append((key, run, int(clean.sample_mask.size), series))
            for scale in sorted(labels):
                ents = {**run.entities, "space": space, "res": res, "atlas": result.label,
                        "scale": scale, "stat": "mean", "suffix": "timeseries"}
                block = align_to_volumes(series[scale], clean.sample_mask, clean.n_volumes)
                result.files.append(writers.write_matrix_tsv(
                    config.output_dir / naming.build_name("timeseries",
                                                           {**ents, "extension": ".tsv"}),
                    parcel_names(block.shape[1]), block))
                result.files.append(writers.write_json(
                    config.output_dir / naming.build_name("timeseries",
                                                           {**ents, "extension": ".json"}),
                    _timeseries_sidecar(config, run, clean,
                                        atlas_dseg_name(result.label, space, res, scale),
                                        result.label, source_dirs)))


def write_group_connectomes(config: Config, result: GroupResult, collected: list,
                            labels: dict, space: str, res: str | None) -> list[Path]:
    """Connectomes on the group atlas: per run (``--connectivity`` measures, tangent
    included) and the group mean (nilearn ``ConnectivityMeasure.mean_``: the mean of the
    runs' matrices; for tangent the geometric mean of their covariances, the reference
    point of the tangent space). Every run counts once."""
    from bids_parcellate.connectome import connectivity, group_connectomes

    written = []
    participants = sorted({naming.unit_prefix(*key) for key, *_ in collected})
    for scale in sorted(labels):
        series = [by_scale[scale] for *_, by_scale in collected]
        names = parcel_names(series[0].shape[1])
        dseg = atlas_dseg_name(result.label, space, res, scale)
        group = group_connectomes(series, config.connectivity)
        for index, (_, run, n_kept, by_scale) in enumerate(collected):
            ents = {**run.entities, "space": space, "res": res, "atlas": result.label,
                    "scale": scale}
            per_run = {}
            for kind in config.connectivity:
                tangent_runs = group[kind][0]
                per_run[kind] = (tangent_runs[index] if tangent_runs is not None else
                                 connectivity([by_scale[scale]], kind)[0])
            written += write_relmats(
                config, ents, names, per_run,
                {"Parcellation": dseg, "Atlas": result.label,
                 "Timeseries": naming.build_name("timeseries", {
                     **ents, "stat": "mean", "suffix": "timeseries", "extension": ".tsv"}),
                 "NumberOfVolumes": n_kept})
        common = {"Parcellation": dseg, "Atlas": result.label, "NumberOfRuns": len(series),
                  "Participants": participants}
        for kind in config.connectivity:
            about = ({"Measure": "Geometric mean covariance",
                      "MeasureDescription": "Geometric (Riemannian) mean of the runs' "
                                            "Ledoit-Wolf covariances: the reference point "
                                            "of the tangent space of the per-run "
                                            "meas-tangent matrices (nilearn "
                                            "ConnectivityMeasure.mean_, kind 'tangent')."}
                     if kind == "tangent" else
                     {"Description": "Group mean: the mean of every run's matrix "
                                     "(nilearn ConnectivityMeasure.mean_)."})
            written += write_relmats(
                config, {"atlas": result.label, "scale": scale, "res": res}, names,
                {kind: group[kind][1]}, {**about, **common}, kind="group_relmat")
    return written


def write_agreement(config: Config, result: GroupResult, units: dict[UnitKey, list[Run]],
                    gmask: GroupMask, labels: dict, space: str,
                    res: str | None) -> list[Path]:
    """ARI and NMI of each unit's own parcellation (same method, scale) with the group's.

    Own parcellations are read from OUTPUT_DIR (written by the participant level); units
    and scales without one are left out, and no table is written when there is none.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rows = []
    seg = naming.seg_label(config.method)
    for key in units:
        for scale in sorted(labels):
            own_path = config.output_dir / naming.build_name("dseg", {
                "subject": key[0], "session": key[1], "space": space, "res": res, "seg": seg,
                "scale": scale, "suffix": "dseg", "extension": ".nii.gz"})
            if not own_path.is_file():
                continue
            own_img = nib.load(own_path)
            if own_img.shape[:3] != gmask.mask.shape:
                continue
            own = np.asarray(own_img.dataobj)[gmask.mask]
            group = labels[scale]
            rows.append([f"sub-{key[0]}", f"ses-{key[1]}" if key[1] else None, scale,
                         round(float(adjusted_rand_score(own, group)), 6),
                         round(float(normalized_mutual_info_score(own, group)), 6),
                         int(own.size)])
    if not rows:
        LOGGER.info("no participant-level %s parcellation at scales %s in OUTPUT_DIR: no "
                    "agreement table", config.method, ", ".join(map(str, sorted(labels))))
        return []
    columns = list(AGREEMENT_COLUMNS)
    if not any(key[1] for key in units):  # no sessions: no session_id column
        columns.remove("session_id")
        rows = [row[:1] + row[2:] for row in rows]
    ents = {"atlas": result.label, "suffix": "agreement"}
    out = config.output_dir
    written = [writers.write_tsv(out / naming.build_name("group_table",
                                                          {**ents, "extension": ".tsv"}),
                                 columns, rows)]
    written.append(writers.write_json(
        out / naming.build_name("group_table", {**ents, "extension": ".json"}),
        {
            "Description": "Agreement of each participant's own parcellation (participant "
                           "level, same method and scale) with the group atlas "
                           f"atlas-{result.label}.",
            "Atlas": result.label,
            **{name: {"Description": AGREEMENT_COLUMNS[name]} for name in columns},
        }))
    at = columns.index("scale")
    summary = {scale: [r[at + 1] for r in rows if r[at] == scale] for scale in sorted(labels)}
    for scale, values in summary.items():
        if values:
            LOGGER.info("agreement with the group atlas at scale %d: median ARI %.3f over %d "
                        "unit(s)", scale, float(np.median(values)), len(values))
    return written
