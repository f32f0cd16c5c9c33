"""Intermediate results kept in the work directory across invocations.

The analogue of the ``memory`` parameter of nilearn's ``Parcellations``: with
``-w/--work-dir`` kept between runs, a rerun that changes only what comes after a stage
reuses that stage's result. Three stages are cached, each under a key that hashes
everything it depends on:

``denoised``
    the unit's mask and every run's cleaned data (float32 ``.npy``, memory-mapped on
    reuse, so a rerun reads no BOLD at all), kept volumes and confound names. Key:
    the input files (path, size, modification time of the BOLD, its sidecar, the masks,
    the confounds and their sidecar, ``--mask``), the library versions, a hash of our
    own code, and every output-changing parameter except those only later stages use.
``features``
    the clustering features. Key: the ``denoised`` key, smoothing and components.
``tree``
    a method's merge tree (ward, complete, average), which does not depend on the
    number of parcels. Key: the ``features`` key and the method.

Parameters that a stage does not use are listed in :data:`NOT_USED_BY`; everything else
in :meth:`Config.hashed_parameters` enters the key, so a new parameter invalidates the
cache until it is listed there (safe by default).

Layout: ``WORK_DIR/cache/<kind>/<key>/`` holding ``meta.json`` and ``*.npy``. Safe under
concurrent array jobs without locks: an entry is written into a temporary folder and
renamed into place (atomic; when two jobs compute the same entry, the second rename
fails and its copy is dropped), and removed by renaming it away first, so a reader sees
a complete entry or none (a reader that loses the race recomputes). Size is bounded by
``--cache-limit-gb``: after each store, the least recently used entries (folder
modification time, refreshed on every hit) are removed, except those this process uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from bids_parcellate import __version__
from bids_parcellate.config import Config
from bids_parcellate.denoise import CleanRun
from bids_parcellate.derivatives.writers import json_default
from bids_parcellate.inputs.bold import UnitMask
from bids_parcellate.inputs.query import Run, Skipped, sidecar_path

LOGGER = logging.getLogger("bids_parcellate")

#: Bump when the layout or the meaning of an entry changes (2: ward's tree entry packs
#: the supervoxels with the tree, see :func:`bids_parcellate.learn.ward.supervoxel_ward_tree`).
CACHE_FORMAT = 2

#: Hashed parameters that do not change a stage's result (they act later).
_AFTER_FEATURES = frozenset({
    "method", "n_parcels", "random_seed", "standardize", "rena_scaling", "rena_n_iter",
    "kmeans_n_init", "kmeans_batch_size", "split_disconnected", "min_region_size",
    "n_maps", "dictlearning_alpha", "region_threshold", "region_thresholding",
    "region_extractor", "connectivity",
    # the consensus and the quality figures are computed from the features (and the
    # denoised data); they never change them
    "bootstrap", "quality", "split_half",
})
NOT_USED_BY = {
    "denoised": _AFTER_FEATURES | {"smoothing_fwhm", "n_components", "feature_weighting"},
    "features": _AFTER_FEATURES,
}

#: Temporary folders of writers that died are removed after this many seconds.
_STALE_SECONDS = 24 * 3600


def make_key(*parts) -> str:
    """sha256 (32 hex digits) of JSON-serialisable ``parts``."""
    payload = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def file_fingerprint(path: Path | None) -> list | None:
    """``[absolute path, size, mtime_ns]`` of a file (None when absent)."""
    if path is None:
        return None
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return [str(path.absolute()), None, None]
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


@lru_cache(maxsize=1)
def _versions() -> dict:
    """Library versions, and a hash of our own code (a change of code that keeps the
    version number still invalidates the cache)."""
    from importlib.metadata import version

    import scipy

    code = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        code.update(path.read_bytes())
    return {"bids_parcellate": __version__, "code": code.hexdigest()[:16],
            "nilearn": version("nilearn"), "sklearn": version("scikit-learn"),
            "numpy": np.__version__, "scipy": scipy.__version__}


def _parameters(config: Config, stage: str) -> dict:
    return {k: v for k, v in config.hashed_parameters().items()
            if k not in NOT_USED_BY[stage]}


def denoised_key(config: Config, runs: list[Run]) -> str:
    """Key of a unit's denoised data: input files, versions and parameters.

    Parameters
    ----------
    config : Config
        Every hashed parameter except those in ``NOT_USED_BY["denoised"]``, and
        ``--mask``.
    runs : list of Run
        The unit's runs: the fingerprints (path, size, mtime) of their BOLD, sidecar,
        mask, confounds and confounds sidecar, their entities and TR.

    Returns
    -------
    str
        32 hex digits (:func:`make_key`).
    """
    files = []
    for run in runs:
        for path in (run.bold, sidecar_path(run.bold), run.mask, run.confounds,
                     sidecar_path(run.confounds) if run.confounds else None):
            files.append(file_fingerprint(path))
    runs_part = [[run.entities, run.tr] for run in runs]
    return make_key("denoised", CACHE_FORMAT, _versions(), files,
                    file_fingerprint(config.mask), runs_part, _parameters(config, "denoised"))


def features_key(config: Config, denoised: str) -> str:
    """Key of a unit's clustering features (from its :func:`denoised_key`).

    Parameters
    ----------
    config : Config
        Every hashed parameter except those in ``NOT_USED_BY["features"]``.
    denoised : str
        The unit's :func:`denoised_key`.

    Returns
    -------
    str
        32 hex digits (:func:`make_key`).
    """
    return make_key("features", denoised, _parameters(config, "features"))


# --------------------------------------------------------------------------- store
class Cache:
    """A folder of cache entries (or a disabled cache that always computes).

    Parameters
    ----------
    root : Path or None
        ``WORK_DIR/cache``; None disables the cache.
    limit_gb : float
        Size limit; least recently used entries beyond it are removed.
    """

    def __init__(self, root: Path | None, limit_gb: float = 20.0) -> None:
        self.root = root
        self.limit_bytes = int(limit_gb * 2**30)
        self.hits: dict[str, int] = {}
        self.misses: dict[str, int] = {}
        self._in_use: set[Path] = set()

    @classmethod
    def from_config(cls, config: Config) -> Cache:
        """The cache under ``config.work_dir`` (disabled by ``--no-cache``)."""
        if not config.use_cache or config.work_dir is None:
            return cls(None)
        return cls(config.work_dir / "cache", config.cache_limit_gb)

    @property
    def enabled(self) -> bool:
        """Whether entries are read and written (False: every lookup misses)."""
        return self.root is not None

    def _entry(self, kind: str, key: str) -> Path:
        assert self.root is not None
        return self.root / kind / key

    # ---------------------------------------------------------------- reading
    def load(self, kind: str, key: str) -> tuple[dict, dict[str, np.ndarray]] | None:
        """``(meta, arrays)`` of an entry (arrays memory-mapped copy-on-write), or None.

        A hit refreshes the entry's modification time (least recently used eviction) and
        protects it from eviction by this process; hits and misses are counted per kind.

        Parameters
        ----------
        kind : str
            The stage: ``"denoised"``, ``"features"`` or ``"tree"``.
        key : str
            The entry's key (:func:`make_key`).

        Returns
        -------
        tuple of (dict, dict of str to ndarray), or None
            The entry's ``meta`` as stored, and its arrays by name; None when the cache
            is disabled or the entry is absent (or removed while being read).
        """
        if not self.enabled:
            return None
        entry = self._entry(kind, key)
        try:
            meta = json.loads((entry / "meta.json").read_text())
            arrays = {name: np.load(entry / f"{name}.npy", mmap_mode="c",
                                    allow_pickle=False)
                      for name in meta["arrays"]}
        except (OSError, ValueError, KeyError):  # absent, or removed while reading
            self.misses[kind] = self.misses.get(kind, 0) + 1
            return None
        try:
            os.utime(entry)  # least recently used: the folder's mtime is its last use
        except OSError:
            pass
        self._in_use.add(entry)
        self.hits[kind] = self.hits.get(kind, 0) + 1
        LOGGER.debug("cache hit: %s %s", kind, key)
        return meta["meta"], arrays

    # ---------------------------------------------------------------- writing
    def store(self, kind: str, key: str, arrays: dict[str, np.ndarray],
              meta: dict | None = None) -> None:
        """Write an entry atomically; a failure (disk full...) only logs a warning.

        An entry that exists already is kept as it is (same key, same content). Least
        recently used entries are then evicted down to the size limit (:meth:`evict`).

        Parameters
        ----------
        kind : str
            The stage: ``"denoised"``, ``"features"`` or ``"tree"``.
        key : str
            The entry's key (:func:`make_key`).
        arrays : dict of str to ndarray
            Saved as ``<name>.npy`` (no pickles).
        meta : dict, optional
            JSON-serialisable metadata, returned by :meth:`load`.
        """
        if not self.enabled:
            return
        entry = self._entry(kind, key)
        if entry.is_dir():
            return
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=entry.parent))
        except OSError as exc:
            LOGGER.warning("cache: cannot write under %s (%s)", self.root, exc.strerror)
            return
        try:
            for name, value in arrays.items():
                np.save(tmp / f"{name}.npy", np.asarray(value), allow_pickle=False)
            (tmp / "meta.json").write_text(json.dumps(
                {"arrays": sorted(arrays), "meta": meta or {}}, sort_keys=True,
                default=json_default))
            os.rename(tmp, entry)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if not entry.is_dir():
                LOGGER.warning("cache: cannot write %s (%s)", entry, exc.strerror)
                return
            LOGGER.debug("cache: %s %s was stored by another job meanwhile", kind, key)
        self._in_use.add(entry)
        LOGGER.debug("cache store: %s %s", kind, key)
        self.evict()

    def array(self, kind: str, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array ``kind/key``, or ``compute()`` stored under it.

        Parameters
        ----------
        kind : str
            The stage: ``"features"`` or ``"tree"``.
        key : str
            The entry's key (:func:`make_key`).
        compute : callable
            ``compute() -> ndarray``, called only on a miss.

        Returns
        -------
        ndarray
            Memory-mapped (copy-on-write) on a hit, ``compute()``'s array on a miss.
        """
        found = self.load(kind, key)
        if found is not None:
            return found[1]["value"]
        value = compute()
        self.store(kind, key, {"value": value})
        return value

    # ---------------------------------------------------------------- eviction
    def size_bytes(self) -> int:
        """Bytes held by the entries."""
        return sum(size for _, size, _ in self._entries())

    def _entries(self) -> list[tuple[Path, int, float]]:
        out = []
        if self.root is None or not self.root.is_dir():
            return out
        now = time.time()
        for kind in self.root.iterdir():
            if not kind.is_dir() or kind.name.startswith("."):
                continue
            for entry in kind.iterdir():
                try:
                    if entry.name.startswith(".tmp-"):
                        if now - entry.stat().st_mtime > _STALE_SECONDS:
                            _remove(entry, self.root)
                        continue
                    size = sum(f.stat().st_size for f in entry.iterdir())
                    out.append((entry, size, entry.stat().st_mtime))
                except OSError:  # removed by a concurrent job meanwhile
                    continue
        return out

    def evict(self) -> None:
        """Remove least recently used entries until the cache fits its limit."""
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        if total <= self.limit_bytes:
            return
        for entry, size, _ in sorted(entries, key=lambda e: e[2]):
            if total <= self.limit_bytes:
                break
            if entry in self._in_use:
                continue
            _remove(entry, self.root)
            total -= size
            LOGGER.debug("cache: removed %s (least recently used)", entry)
        if total > self.limit_bytes:
            LOGGER.warning("cache: %.1f GB in use by this run exceed --cache-limit-gb %.1f",
                           total / 2**30, self.limit_bytes / 2**30)


def _remove(entry: Path, root: Path) -> None:
    """Rename away (atomic: readers see the entry whole or not at all), then delete."""
    trash = root / f".trash-{uuid.uuid4().hex}"
    try:
        os.rename(entry, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------- denoised units
def store_denoised(cache: Cache, key: str, unit_mask: UnitMask, cleaned: list[CleanRun],
                   skipped: list[Skipped]) -> None:
    """Store a unit's mask, cleaned runs and skipped runs.

    Parameters
    ----------
    cache : Cache
        Nothing is written when it is disabled.
    key : str
        The unit's :func:`denoised_key`.
    unit_mask : UnitMask
        Its mask, affine, voxels per run, description and grid are stored.
    cleaned : list of CleanRun
        Each run's cleaned data, kept volumes, mean image, framewise displacement and
        confound names (the run is identified by its resolved BOLD path).
    skipped : list of Skipped
        The runs skipped while denoising, with their reasons.
    """
    if not cache.enabled:
        return
    arrays = {"mask": unit_mask.mask, "affine": np.asarray(unit_mask.affine)}
    runs = []
    for i, clean in enumerate(cleaned):
        arrays[f"data{i}"] = clean.data
        arrays[f"sample_mask{i}"] = clean.sample_mask
        arrays[f"mean{i}"] = clean.mean_img
        if clean.framewise_displacement is not None:
            arrays[f"fd{i}"] = clean.framewise_displacement
        runs.append({"bold": str(Path(clean.run.bold).resolve()), "n_volumes": clean.n_volumes,
                     "confounds": clean.confounds,
                     "fd": clean.framewise_displacement is not None})
    meta = {"runs": runs, "skipped": [[str(s.bold), s.reason] for s in skipped],
            "n_voxels_per_run": unit_mask.n_voxels_per_run,
            "description": unit_mask.description, "grid": unit_mask.grid,
            "flat_voxels": unit_mask.flat_voxels}
    cache.store("denoised", key, arrays, meta)


def load_denoised(cache: Cache, key: str, runs: list[Run]
                  ) -> tuple[UnitMask, list[CleanRun], list[Skipped]] | None:
    """A unit's mask, cleaned runs (memory-mapped) and skipped runs, or None.

    Parameters
    ----------
    cache : Cache
    key : str
        The unit's :func:`denoised_key`.
    runs : list of Run
        The unit's runs: each stored run is matched to one of them by its resolved BOLD
        path.

    Returns
    -------
    tuple of (UnitMask, list of CleanRun, list of Skipped), or None
        None when the cache is disabled, the entry is absent, or a stored run is not
        among ``runs``.
    """
    found = cache.load("denoised", key)
    if found is None:
        return None
    meta, arrays = found
    by_bold = {str(Path(run.bold).resolve()): run for run in runs}
    unit_mask = UnitMask(mask=np.asarray(arrays["mask"]), affine=np.array(arrays["affine"]),
                         n_voxels_per_run=meta["n_voxels_per_run"],
                         description=meta["description"], grid=meta["grid"],
                         flat_voxels=meta.get("flat_voxels"))
    if any(item["bold"] not in by_bold for item in meta["runs"]):
        return None
    cleaned = [
        CleanRun(run=by_bold[item["bold"]], data=arrays[f"data{i}"],
                 sample_mask=np.array(arrays[f"sample_mask{i}"]),
                 n_volumes=int(item["n_volumes"]), confounds=list(item["confounds"]),
                 mean_img=arrays[f"mean{i}"],
                 framewise_displacement=np.array(arrays[f"fd{i}"]) if item["fd"] else None)
        for i, item in enumerate(meta["runs"])
    ]
    skipped = [Skipped(Path(bold), reason) for bold, reason in meta["skipped"]]
    return unit_mask, cleaned, skipped
