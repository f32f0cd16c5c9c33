"""Everything a unit's report needs, saved while its cleaned data are in memory.

The participant level calls :func:`write_unit_report_data` once a unit's outputs are
written: it draws the figures (SVG files under ``sub-<label>/figures/``) and writes one
JSON record per unit (runs used and skipped, volumes kept, regressors, framewise
displacement, grid, parameters, software versions, input checksums, timings, warnings).
The HTML report (:mod:`bids_parcellate.report.assemble`) is built from these files
only, so ``--reports-only`` rebuilds the same report without touching any BOLD file.
"""

from __future__ import annotations

import importlib
import logging
import platform
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from bids_parcellate import __version__
from bids_parcellate.config import Config
from bids_parcellate.connectome import group_connectomes
from bids_parcellate.denoise import strategies, strategy_kwargs
from bids_parcellate.derivatives import naming, tables, writers
from bids_parcellate.extract import align_to_volumes
from bids_parcellate.inputs.query import InputError, read_dataset_description, sidecar_path
from bids_parcellate.learn.features import labels_to_volume
from bids_parcellate.learn.regions import auto_alpha
from bids_parcellate.report import figures, mosaics
from bids_parcellate.report.connectome import connectome, node_positions
from bids_parcellate.results import UnitResult

if TYPE_CHECKING:  # annotations only
    from bids_parcellate.denoise import CleanRun
    from bids_parcellate.inputs.bold import UnitMask
    from bids_parcellate.inputs.query import Skipped

LOGGER = logging.getLogger("bids_parcellate")

#: Version of the JSON record layout (bump when the layout changes incompatibly).
RECORD_VERSION = 1

#: Distributions whose versions are recorded (import name -> distribution name).
SOFTWARE = {
    "numpy": "numpy",
    "scipy": "scipy",
    "scikit-learn": "scikit-learn",
    "nibabel": "nibabel",
    "nilearn": "nilearn",
    "pybids": "pybids",
    "pandas": "pandas",
    "pillow": "pillow",
    "jinja2": "jinja2",
}

#: Warning categories that are library maintenance notices, not facts about the data.
_IGNORED_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def software_versions() -> dict[str, str]:
    """Versions of Python, bids_parcellate and the libraries that shape the results.

    Returns
    -------
    dict
        Name -> version (``not installed`` for a library that is not).
    """
    versions = {"python": platform.python_version(), "bids_parcellate": __version__}
    for name, dist in SOFTWARE.items():
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def display_path(path: Path | str, config: Config) -> str:
    """A path for humans: relative to BIDS_DIR when inside it, else as given.

    Parameters
    ----------
    path : Path or str
    config : Config
        Its ``bids_dir``.

    Returns
    -------
    str
        POSIX path.
    """
    path = Path(path)
    try:
        return path.resolve().relative_to(config.bids_dir.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def input_checksums(files: Sequence[Path], config: Config) -> dict[str, str]:
    """sha256 of every input file and its JSON sidecar (when present).

    Parameters
    ----------
    files : sequence of Path
    config : Config
        For the display paths (:func:`display_path`).

    Returns
    -------
    dict
        Display path -> hex digest, sorted by path.
    """
    out = {}
    for path in files:
        for candidate in (Path(path), sidecar_path(Path(path))):
            if candidate.is_file():
                out[display_path(candidate, config)] = writers.sha256_file(candidate)
    return dict(sorted(out.items()))


def fd_threshold(config: Config) -> float | None:
    """FD threshold actually used for censoring.

    Parameters
    ----------
    config : Config

    Returns
    -------
    float or None
        ``--fd-threshold``, else nilearn's preset for ``scrubbing``; None when the
        strategy does not censor.
    """
    if config.denoise_strategy != "scrubbing":
        return None
    if config.fd_threshold is not None:
        return config.fd_threshold
    # nilearn's preset for the scrubbing strategy (its documented default)
    presets = importlib.import_module(
        "nilearn.interfaces.fmriprep.load_confounds_strategy").preset_strategies
    return float(presets["scrubbing"]["fd_threshold"])


def fmriprep_versions(source_dirs: Sequence[Path]) -> list[str]:
    """Versions of fMRIPrep recorded in the derivatives' ``dataset_description.json``.

    Parameters
    ----------
    source_dirs : sequence of Path
        fMRIPrep folders (one without a readable description is left out).

    Returns
    -------
    list of str
        Distinct versions, sorted.
    """
    found = []
    for path in source_dirs:
        try:
            description = read_dataset_description(Path(path))
        except InputError:
            continue
        for item in description.get("GeneratedBy", []) or []:
            if isinstance(item, dict) and str(item.get("Name", "")).lower() == "fmriprep":
                found.append(str(item.get("Version", "unknown version")))
    return sorted(set(found))


def _entity(name: str, key: str) -> str | None:
    found = re.search(rf"(?:^|[_/\s]){key}-([a-zA-Z0-9]+)", name)
    return found.group(1) if found else None


def skipped_of_unit(skipped: Sequence[Skipped], subject: str,
                    session: str | None) -> list[Skipped]:
    """The runs skipped at selection of a unit.

    Parameters
    ----------
    skipped : sequence of Skipped
        All runs skipped at selection.
    subject : str
        Label without ``sub-``.
    session : str or None
        Label without ``ses-``; None for a unit without sessions.

    Returns
    -------
    list of Skipped
        Those whose BOLD file belongs to the unit.
    """
    return [s for s in skipped if _entity(s.bold.name, "sub") == subject
            and _entity(s.bold.name, "ses") == session]


def warnings_of_unit(messages: Sequence[str], subject: str,
                     session: str | None) -> list[str]:
    """The messages that name a file of the unit (``sub-<subject>[_ses-<session>]``).

    Parameters
    ----------
    messages : sequence of str
        Warnings logged before the units were processed.
    subject : str
        Label without ``sub-``.
    session : str or None
        Label without ``ses-``; None keeps the messages of every session.

    Returns
    -------
    list of str
    """
    return [m for m in messages if _entity(m, "sub") == subject
            and (session is None or _entity(m, "ses") == session)]


# --------------------------------------------------------------------------- warnings
class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@dataclass
class UnitLog:
    """What happens to a unit besides its data: warnings raised, runs skipped at selection.

    ``earlier`` holds warnings of the unit logged before its processing (while the
    inputs were queried). Use as a context manager around the processing; warnings logged by
    bids_parcellate and Python warnings (library notices such as deprecations excepted)
    are collected in order. Python warnings are passed on to the ``py.warnings`` logger
    as usual.
    """

    earlier: list[str] = field(default_factory=list)
    _logged: list[str] = field(default_factory=list, repr=False)
    _caught: list = field(default_factory=list, repr=False)

    def __enter__(self) -> UnitLog:
        self._handler = _ListHandler(self._logged)
        LOGGER.addHandler(self._handler)
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._catcher.__exit__(*exc)
        LOGGER.removeHandler(self._handler)
        py_logger = logging.getLogger("py.warnings")
        for item in self._caught:
            py_logger.warning("%s", warnings.formatwarning(
                item.message, item.category, item.filename, item.lineno, item.line).strip())

    @property
    def messages(self) -> list[str]:
        """Distinct warning messages so far (after ``earlier`` ones), in order."""
        found = list(self.earlier) + list(self._logged)
        for item in self._caught:
            if issubclass(item.category, _IGNORED_CATEGORIES):
                continue
            found.append(f"{item.category.__name__}: {item.message} "
                         f"({Path(item.filename).name}:{item.lineno})")
        return list(dict.fromkeys(found))


# --------------------------------------------------------------------------- figures
def _volume(values: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    data = np.zeros(mask.shape, dtype=np.float32)
    data[mask] = values
    return nib.Nifti1Image(data, affine)


def _parcel_means(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    n = int(labels.max())
    counts = np.bincount(labels, minlength=n + 1)
    sums = np.bincount(labels, weights=values, minlength=n + 1)
    return (sums / np.maximum(counts, 1))[labels]


def _zscore(block: np.ndarray) -> np.ndarray:
    std = block.std(axis=0)
    return (block - block.mean(axis=0)) / np.where(std > 0, std, 1)


def _draw_figures(config: Config, result, unit_mask, cleaned, labels: dict,
                  series: dict, threshold: float | None) -> dict[str, tuple[bytes, dict]]:
    """Every figure of a unit: name -> (SVG bytes, extra record fields)."""
    mask, affine = unit_mask.mask, unit_mask.affine
    scales = sorted(labels)
    slicer = mosaics.Slicer(unit_mask.to_img())
    mean_bold = np.mean([c.mean_img for c in cleaned], axis=0, dtype=np.float64)
    bg_img = nib.Nifti1Image(mean_bold.astype(np.float32), affine)
    labels_imgs = {s: nib.Nifti1Image(labels_to_volume(labels[s], mask), affine)
                   for s in scales}
    out: dict[str, tuple[bytes, dict]] = {}
    out["mask"] = (mosaics.brain_mask(bg_img, slicer, f"brain mask: {int(mask.sum())} "
                                                      "voxels"),
                   {"description": _mask_description(unit_mask)})
    out["labels"] = (mosaics.label_maps(labels_imgs, bg_img, slicer),
                     {"cut_coords": slicer.cut_coords})

    # compressed representation: the middle kept volume of the first run
    first = cleaned[0]
    index = first.data.shape[0] // 2
    original = first.data[index].astype(np.float64)
    spread = float(((original - original.mean()) ** 2).sum())
    rebuilt, titles, r2 = {}, {}, {}
    for s in scales:
        approx = _parcel_means(original, labels[s])
        r2[s] = 1 - float(((original - approx) ** 2).sum()) / spread if spread else 1.0
        rebuilt[s] = _volume(approx, mask, affine)
        titles[s] = f"{s} parcel means (R\N{SUPERSCRIPT TWO} {r2[s]:.2f})"
    volume = int(first.sample_mask[index])
    run_label = naming.source_prefix(first.run.entities)
    out["compressed"] = (
        mosaics.compressed(_volume(original, mask, affine), rebuilt, slicer, titles,
                           f"cleaned signal, volume {volume} of {run_label} "
                           f"({int(mask.sum())} voxels)"),
        {"run": run_label, "volume": volume, "r2": {str(s): round(r2[s], 4) for s in scales}})

    sizes = {s: np.bincount(labels[s])[1:] for s in scales}
    out["sizes"] = (figures.parcel_sizes(sizes, int(mask.sum())), {})

    run_labels = [naming.source_prefix(c.run.entities) for c in cleaned]
    matrices, orders = {}, {}
    for s in scales:
        kept = np.concatenate([_zscore(series[c.run.bold][s]) for c in cleaned])
        matrices[s] = (kept.T @ kept) / kept.shape[0]
        orders[s] = figures.cluster_order(matrices[s])
    out["correlation"] = (figures.correlation(matrices, orders), {})
    starts = np.cumsum([c.n_volumes for c in cleaned])[:-1].tolist()
    # z-scored per run for display whatever --standardize was (psc, none)
    full = {s: np.concatenate([align_to_volumes(_zscore(series[c.run.bold][s]),
                                                c.sample_mask, c.n_volumes)
                               for c in cleaned])
            for s in scales}
    out["carpet"] = (figures.carpet(full, orders, starts, run_labels, cleaned[0].run.tr), {})

    per_run = [k for k in config.connectivity if k != "tangent"]
    if per_run:
        out["connectome"] = _connectome_figure(per_run[0], labels, mask, affine,
                                               [[series[c.run.bold][s] for c in cleaned]
                                                for s in scales], scales)

    if any(c.framewise_displacement is not None for c in cleaned):
        out["fd"] = (figures.framewise_displacement(
            [c.framewise_displacement for c in cleaned],
            [sorted(set(range(c.n_volumes)) - set(c.sample_mask.tolist())) for c in cleaned],
            run_labels, threshold), {"threshold": threshold})
    return out


def _mask_description(unit_mask) -> str:
    """How the unit's mask was made (``--mask-strategy``, ``--mask``; see
    :mod:`bids_parcellate.inputs.grids`), and the voxels without signal it lost."""
    text = getattr(unit_mask, "description", "intersection of the runs' fMRIPrep brain masks")
    flat = getattr(unit_mask, "flat_voxels", None)
    if flat:
        text += (f"; {flat['Count']} voxels without signal (constant over a run) "
                 + ("kept (--keep-flat-voxels)" if flat["Kept"] else "left out"))
    return text


def _connectome_figure(kind: str, labels: dict, mask: np.ndarray, affine: np.ndarray,
                       series: list, scales: list) -> tuple[bytes, dict]:
    """The first requested per-run measure, averaged over the unit's runs (nilearn's
    ``ConnectivityMeasure.mean_``), each node at a voxel of its parcel."""
    voxels = np.argwhere(mask)
    matrices, centroids = {}, {}
    for scale, runs in zip(scales, series, strict=True):
        matrices[scale] = group_connectomes(runs, [kind])[kind][1]
        centroids[scale] = node_positions(labels[scale], voxels, affine)
    return connectome(matrices, centroids, kind), {"measure": kind,
                                                   "n_runs": len(series[0])}


#: Figure name -> BIDS ``desc`` and suffix of its file.
FIGURE_FILES = {
    "mask": ("brain", "mask"),
    "labels": ("labels", "dseg"),
    "compressed": ("compressed", "bold"),
    "sizes": ("sizes", "dseg"),
    "carpet": ("carpet", "timeseries"),
    "correlation": ("correlation", "relmat"),
    "fd": ("fd", "bold"),
    "connectome": ("connectome", "relmat"),
}


def write_unit_report_data(config: Config, result: UnitResult, unit_mask: UnitMask,
                           cleaned: list[CleanRun], labels: dict[int, np.ndarray],
                           series: dict[Path, dict[int, np.ndarray]],
                           source_dirs: Sequence[Path],
                           unit_log: UnitLog,
                           stability: dict[int, np.ndarray] | None = None
                           ) -> tuple[list[Path], dict]:
    """Draw a unit's figures and write its report record.

    Parameters
    ----------
    config : Config
    result : UnitResult
        The unit's summary so far (runs, skipped runs, timings, written files).
    unit_mask : UnitMask
    cleaned : list of CleanRun
        The unit's cleaned runs (still in memory).
    labels : dict
        scale -> labels over the mask voxels.
    series : dict
        BOLD path -> scale -> parcel timeseries of the kept volumes.
    source_dirs : sequence of Path
        fMRIPrep folders (for checksums' display paths and the fMRIPrep version).
    unit_log : UnitLog
        Warnings and selection-level skipped runs of this unit.
    stability : dict, optional
        scale -> per-voxel ``--bootstrap`` stability (its mean is shown per scale).

    Returns
    -------
    files : list of Path
        Figures and the JSON record written.
    record : dict
        The record (also used for the methods text of this invocation).
    """
    tic = time.monotonic()
    # the names the participant level gave the unit's outputs (res of the output grid)
    unit_ents = tables.unit_entities(config, result)
    space, res, seg = unit_ents["space"], unit_ents["res"], unit_ents["seg"]
    threshold = fd_threshold(config)
    # numerical notices while drawing (e.g. a constant parcel's correlation) are about
    # the figures, not the data: not in the report
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        drawn = _draw_figures(config, result, unit_mask, cleaned, labels, series, threshold)
    files: list[Path] = []
    figure_entries = {}
    for name, (svg, extra) in drawn.items():
        desc, suffix = FIGURE_FILES[name]
        rel = naming.build_name("figure", {**unit_ents, "desc": desc, "suffix": suffix,
                                            "extension": ".svg"})
        files.append(writers.write_bytes(config.output_dir / rel, svg))
        figure_entries[name] = {"file": rel, **extra}
    timings = dict(result.timings)
    timings["report_figures"] = time.monotonic() - tic

    tic = time.monotonic()
    by_bold = {c.run.bold: c for c in cleaned}
    runs = []
    for summary in result.runs:
        run = summary.run
        clean = by_bold[run.bold]
        runs.append({
            "label": naming.source_prefix(run.entities),
            "entities": run.entities,
            "task_name": run.metadata.get("TaskName"),
            "files": {k: display_path(p, config) for k, p in
                      (("bold", run.bold), ("mask", run.mask), ("confounds", run.confounds))
                      if p is not None},
            "tr": run.tr,
            "n_volumes": summary.n_volumes,
            "n_kept": int(summary.sample_mask.size),
            "censored": summary.censored,
            "confounds": summary.confounds,
            "framewise_displacement": None if clean.framewise_displacement is None
            else [round(float(v), 4) for v in clean.framewise_displacement],
            "mask_voxels": unit_mask.n_voxels_per_run.get(run.bold.name),
        })
    # the unit's runs skipped for a missing input (recorded once, by the participant
    # level, from the selection's Run.error) and those skipped while denoising
    skipped = [{"file": display_path(s.bold, config), "reason": s.reason,
                "stage": "inputs" if s.missing_input else "denoising"}
               for s in result.skipped]
    inputs = [p for r in result.runs for p in (r.run.bold, r.run.mask, r.run.confounds)
              if p is not None]
    zooms = np.sqrt((unit_mask.affine[:3, :3] ** 2).sum(axis=0))
    scales = []
    for s in sorted(labels):
        sizes = np.bincount(labels[s])[1:]
        scales.append({
            "scale": s,
            "n_parcels": int(labels[s].max()),
            "dseg": naming.build_name("dseg", {**unit_ents, "scale": s, "suffix": "dseg",
                                                "extension": ".nii.gz"}),
            "size_min": int(sizes.min()), "size_median": float(np.median(sizes)),
            "size_max": int(sizes.max()),
            "stability": (round(float(stability[s].mean()), 4)
                          if stability and s in stability else None),
        })
    record = {
        "RecordVersion": RECORD_VERSION,
        "subject": result.subject,
        "session": result.session,
        "name": result.name,
        "space": space,
        "res": res,
        "seg": seg,
        "method": config.method,
        "dictlearning_alpha": _dictlearning_alpha(config, result),
        "grid": {"shape": [int(n) for n in unit_mask.mask.shape],
                 "voxel_size_mm": [round(float(z), 3) for z in zooms],
                 "n_voxels": unit_mask.n_voxels,
                 "mask": _mask_description(unit_mask)},
        "runs": runs,
        "skipped": skipped,
        "strategy": _strategy(config),
        "fd_threshold": threshold,
        "scales": scales,
        "figures": figure_entries,
        "warnings": unit_log.messages,
        "parameters": config.as_dict(),
        "hashed_parameters": config.hashed_parameters(),
        "ConfigHash": config.config_hash(),
        "command_line": list(config.command_line),
        "software": software_versions(),
        "fmriprep_versions": fmriprep_versions(source_dirs),
        "platform": f"{platform.system()} {platform.machine()}, Python {sys.version.split()[0]}",
        "checksums": input_checksums(inputs, config),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    timings["report_record"] = time.monotonic() - tic
    record["timings"] = {k: round(v, 3) for k, v in timings.items()}
    rel = naming.build_name("report_data", {**unit_ents, "desc": "summary",
                                             "suffix": "report", "extension": ".json"})
    files.append(writers.write_json(config.output_dir / rel, record))
    result.timings.update({k: timings[k] for k in ("report_figures", "report_record")})
    return files, record


def _dictlearning_alpha(config: Config, result) -> float | None:
    """The DictLearning sparsity used for this unit (``auto`` depends on its volumes)."""
    if config.method != "dictlearning":
        return None
    return config.dictlearning_alpha or auto_alpha(
        sum(int(r.sample_mask.size) for r in result.runs))


def _strategy(config: Config) -> dict:
    return {"name": config.denoise_strategy,
            "description": strategies()[config.denoise_strategy]["description"],
            "options": strategy_kwargs(config)}
