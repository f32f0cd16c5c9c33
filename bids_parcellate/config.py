"""Every parameter of a run, validated once, frozen, with a stable hash.

The :class:`Config` is built by :mod:`bids_parcellate.cli` and handed to every stage.
Parameters that change output values enter :meth:`Config.config_hash`; paths, verbosity
and resources (``nprocs``, ``mem_gb``) do not, so a rerun elsewhere with the same
parameters is recognised as the same analysis.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import numpy as np

from bids_parcellate import __version__
from bids_parcellate.words import values_text

#: Clustering methods: every voxel gets a parcel; ``--n-parcels`` are the scales.
CLUSTERING_METHODS = ("ward", "complete", "average", "kmeans", "hierarchical_kmeans", "rena")
#: Decomposition methods: network maps, then regions (``--n-maps`` are the scales).
DECOMPOSITION_METHODS = ("dictlearning", "canica")
METHODS = CLUSTERING_METHODS + DECOMPOSITION_METHODS
#: Methods whose parcels may be non-contiguous (``--split-disconnected``).
SPLITTABLE_METHODS = ("kmeans", "hierarchical_kmeans")
#: nilearn ``RegionExtractor`` choices.
REGION_THRESHOLDINGS = ("ratio_n_voxels", "img_value", "percentile")
REGION_EXTRACTORS = ("local_regions", "connected_components")
#: nilearn ``ConnectivityMeasure`` kinds.
CONNECTIVITY_MEASURES = ("correlation", "partial correlation", "tangent", "covariance",
                         "precision")
DENOISE_STRATEGIES = ("simple", "scrubbing", "compcor", "ica_aroma", "none")
STANDARDIZE_CHOICES = ("zscore_sample", "zscore", "psc", "none")
ANALYSIS_LEVELS = ("participant", "group")
#: Brain-mask strategies: fMRIPrep's masks, or nilearn's (``compute_epi_mask``,
#: ``compute_background_mask``, ``compute_brain_mask`` with its MNI152 templates).
MASK_STRATEGIES = ("fmriprep", "epi", "background", "whole-brain-template", "gm-template",
                   "wm-template")
#: ``--mask-args`` keys accepted by each strategy (the nilearn function's parameters).
MASK_ARGS = {
    "fmriprep": (),
    "epi": ("lower_cutoff", "upper_cutoff", "connected", "opening", "exclude_zeros",
            "ensure_finite"),
    "background": ("border_size", "connected", "opening"),
    "whole-brain-template": ("threshold", "connected", "opening"),
    "gm-template": ("threshold", "connected", "opening"),
    "wm-template": ("threshold", "connected", "opening"),
}
#: nilearn's ``Parcellations`` defaults for the k-means knobs, by method.
KMEANS_DEFAULTS = {
    "kmeans": {"n_init": 3, "batch_size": 1024},
    "hierarchical_kmeans": {"n_init": 10, "batch_size": 1000},
}
#: BIDS label: alphanumeric only (BIDS specification, "label" rule).
LABEL_PATTERN = re.compile(r"^[a-zA-Z0-9]+$")
#: BIDS index (run numbers): non-negative integers.
INDEX_PATTERN = re.compile(r"^[0-9]+$")

#: Parameters that do not change output values (excluded from the hash).
_NOT_HASHED = frozenset(
    {
        "bids_dir",
        "output_dir",
        "analysis_levels",
        "work_dir",
        "bids_database_dir",
        "derivatives",
        "verbosity",
        "nprocs",
        "mem_gb",
        "print_slurm",
        "command_line",
        "participant_label",
        "mask",  # hashed by content (see Config.hashed_parameters)
        "use_cache",
        "cache_limit_gb",
        "atlas_label",
        "overwrite",
        "reports_only",
        "boilerplate_only",
    }
)


class UserError(Exception):
    """An error caused by the inputs or parameters; its message is one line for the user.

    The CLI prints it without a traceback (unless ``-v``) and exits non-zero.
    """


class InputError(UserError):
    """The input dataset cannot be used as asked."""


class ConfigError(UserError):
    """A parameter is invalid: a value out of its range or choices, or options that do not
    go together. The CLI treats it as a usage error (exit code 2, as argparse's own)."""


def check_label(value: str, option: str, prefix: str | None = None) -> str:
    """Return a BIDS label with an optional ``prefix-`` stripped, or raise.

    Parameters
    ----------
    value : str
        Label as given by the user (``01`` or ``sub-01``).
    option : str
        Option name for the error message.
    prefix : str, optional
        Entity prefix that may be given (``sub``, ``ses``).

    Returns
    -------
    str
        The bare label.

    Raises
    ------
    ConfigError
        When the label contains anything but letters and digits (this rejects path
        characters such as ``/``, ``..`` and absolute paths before any path is built).
    """
    label = value
    if prefix and label.startswith(f"{prefix}-"):
        label = label[len(prefix) + 1 :]
    if not LABEL_PATTERN.match(label):
        raise ConfigError(
            f"{option} {value!r}: not a BIDS label (letters and digits only)"
        )
    return label


def file_sha256(path: Path) -> str:
    """sha256 of a file's content (``"missing"`` when it cannot be read)."""
    try:
        stat = Path(path).stat()
    except OSError:
        return "missing"
    return _content_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _content_sha256(path: str, size: int, mtime_ns: int) -> str:
    # keyed by size and mtime: read once per version of the file, not per output file
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "missing"


@dataclass(frozen=True)
class Config:
    """Validated parameters of one invocation (see ``bids_parcellate --help``)."""

    bids_dir: Path
    output_dir: Path
    analysis_levels: tuple[str, ...] = ("participant",)
    # selection
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    task: tuple[str, ...] = ()
    run: tuple[int, ...] = ()
    space: str = "MNI152NLin2009cAsym"
    res: str | None = None
    bids_filters: dict | None = None
    derivatives: tuple[Path, ...] = ()
    work_dir: Path | None = None
    bids_database_dir: Path | None = None
    # denoising
    denoise_strategy: str = "simple"
    motion: str | None = None
    global_signal: str | None = None
    fd_threshold: float | None = None
    std_dvars_threshold: float | None = None
    high_pass: float | None = None
    low_pass: float | None = None
    detrend: bool = True
    standardize: str = "zscore_sample"
    min_volumes: int = 20
    #: keep brain-mask voxels whose BOLD is constant over a run (no signal)
    keep_flat_voxels: bool = False
    # parcellation
    method: str = "ward"
    n_parcels: tuple[int, ...] = (100, 200, 400)
    smoothing_fwhm: float = 4.0
    n_components: int = 200
    #: exponent of the singular values in the clustering features (U S^alpha)
    feature_weighting: float = 1.0
    random_seed: int = 0
    bootstrap: int = 0
    # quality figures (extra outputs; they do not change the parcellation)
    quality: bool = True
    split_half: bool = True
    # brain mask and grid
    mask_strategy: str = "fmriprep"
    mask_args: dict | None = None
    mask: Path | None = None
    target_resolution: float | None = None
    target_affine: tuple[tuple[float, ...], ...] | None = None
    target_shape: tuple[int, int, int] | None = None
    # method knobs (None: nilearn's default for the method)
    rena_scaling: bool = False
    rena_n_iter: int = 10
    kmeans_n_init: int | None = None
    kmeans_batch_size: int | None = None
    # cache of intermediate results in the work directory, across invocations
    use_cache: bool = True
    cache_limit_gb: float = 20.0
    # decomposition + region extraction (dictlearning, canica)
    n_maps: tuple[int, ...] = (20,)
    dictlearning_alpha: float | None = None
    region_threshold: float = 0.5
    region_thresholding: str = "ratio_n_voxels"
    region_extractor: str = "local_regions"
    min_region_size: float = 1350.0
    split_disconnected: bool = False
    # connectomes
    connectivity: tuple[str, ...] = ()
    # group level
    atlas_label: str | None = None
    # resources and logging
    nprocs: int = 1
    mem_gb: float | None = None
    overwrite: bool = False
    print_slurm: bool = False
    verbosity: int = 0
    # what to do: everything, or only the reports / the methods text
    reports_only: bool = False
    boilerplate_only: bool = False
    command_line: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        for level in self.analysis_levels:
            if level not in ANALYSIS_LEVELS:
                raise ConfigError(f"analysis level {level!r}: choose from "
                                  f"{', '.join(ANALYSIS_LEVELS)}")
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r}: choose from {', '.join(METHODS)}")
        if self.denoise_strategy not in DENOISE_STRATEGIES:
            raise ConfigError(
                f"--denoise-strategy {self.denoise_strategy!r}: choose from "
                f"{', '.join(DENOISE_STRATEGIES)}"
            )
        if self.standardize not in STANDARDIZE_CHOICES:
            raise ConfigError(
                f"--standardize {self.standardize!r}: choose from "
                f"{', '.join(STANDARDIZE_CHOICES)}"
            )
        if self.smoothing_fwhm < 0:
            raise ConfigError(f"--smoothing-fwhm {self.smoothing_fwhm:g}: must be >= 0 "
                              "(0 = no smoothing)")
        self._check_method_options()
        self._check_connectivity()
        if self.min_volumes < 2:
            raise ConfigError(f"--min-volumes {self.min_volumes}: must be >= 2")
        for name in ("high_pass", "low_pass", "fd_threshold", "std_dvars_threshold"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} {value:g}: must be > 0")
        if self.high_pass and self.low_pass and self.high_pass >= self.low_pass:
            raise ConfigError(
                f"--high-pass {self.high_pass:g} must be below --low-pass {self.low_pass:g}"
            )
        if self.bootstrap < 0 or self.bootstrap == 1:
            raise ConfigError(f"--bootstrap {self.bootstrap}: give 0 (off) or at least 2 "
                              "resamples")
        if self.bootstrap and self.method in DECOMPOSITION_METHODS:
            raise ConfigError(f"--bootstrap is for clustering methods, not --method "
                              f"{self.method}")
        if self.nprocs < 1:
            raise ConfigError(f"--nprocs {self.nprocs}: must be >= 1")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise ConfigError(f"--mem-gb {self.mem_gb:g}: must be > 0")
        if not (0 <= self.random_seed < 2**32):
            raise ConfigError(f"--random-seed {self.random_seed}: must be in [0, 2**32)")
        if not LABEL_PATTERN.match(self.space):
            raise ConfigError(f"--space {self.space!r}: not a BIDS label")
        if self.atlas_label is not None and not LABEL_PATTERN.match(self.atlas_label):
            raise ConfigError(f"--atlas-label {self.atlas_label!r}: not a BIDS label "
                              "(letters and digits only)")
        if self.res is not None and not LABEL_PATTERN.match(self.res):
            raise ConfigError(f"--res {self.res!r}: not a BIDS label")
        if self.reports_only and self.boilerplate_only:
            raise ConfigError("--reports-only and --boilerplate-only exclude each other")
        self._check_mask_options()
        self._check_grid_options()
        self._check_method_knobs()
        if not self.cache_limit_gb > 0:
            raise ConfigError(f"--cache-limit-gb {self.cache_limit_gb:g}: must be > 0")

    def _check_mask_options(self) -> None:
        if self.mask_strategy not in MASK_STRATEGIES:
            raise ConfigError(f"--mask-strategy {self.mask_strategy!r}: choose from "
                              f"{', '.join(MASK_STRATEGIES)}")
        if self.mask_args is not None:
            if not isinstance(self.mask_args, dict):
                raise ConfigError("--mask-args: give a JSON object, e.g. "
                                  '\'{"lower_cutoff": 0.3}\'')
            allowed = MASK_ARGS[self.mask_strategy]
            unknown = sorted(set(self.mask_args) - set(allowed))
            if unknown:
                raise ConfigError(
                    f"--mask-args {', '.join(unknown)}: not an option of --mask-strategy "
                    f"{self.mask_strategy} ("
                    + (f"accepted: {', '.join(allowed)}" if allowed else "it takes none")
                    + ")")
        if self.mask_strategy.endswith("-template") and not self.space.startswith("MNI152"):
            raise ConfigError(
                f"--mask-strategy {self.mask_strategy}: the template masks are in MNI152 "
                f"space, the BOLD in --space {self.space}")

    def _check_grid_options(self) -> None:
        if self.target_resolution is not None:
            if not self.target_resolution > 0:
                raise ConfigError(f"--target-resolution {self.target_resolution:g}: must be "
                                  "> 0 mm")
            if self.target_affine is not None or self.target_shape is not None:
                raise ConfigError("--target-resolution excludes --target-affine and "
                                  "--target-shape")
        if self.target_affine is not None:
            shape = np.shape(np.asarray(self.target_affine, dtype=float))
            if shape not in ((3, 3), (4, 4)):
                raise ConfigError(f"--target-affine: give 9 (3x3) or 16 (4x4) numbers, got "
                                  f"shape {shape}")
            if abs(np.linalg.det(np.asarray(self.target_affine, dtype=float)[:3, :3])) < 1e-6:
                raise ConfigError("--target-affine: its 3x3 part is singular")
        if self.target_shape is not None:
            if len(self.target_shape) != 3 or any(int(n) < 1 for n in self.target_shape):
                raise ConfigError(f"--target-shape {values_text(self.target_shape)}: give 3 "
                                  "positive integers")
            if self.target_affine is None or np.shape(self.target_affine) != (4, 4):
                raise ConfigError("--target-shape needs a 4x4 --target-affine (as nilearn's "
                                  "target_shape)")

    def _check_method_knobs(self) -> None:
        if self.rena_n_iter < 1:
            raise ConfigError(f"--rena-n-iter {self.rena_n_iter}: must be >= 1")
        if self.method != "rena" and (self.rena_scaling or self.rena_n_iter != 10):
            raise ConfigError(f"--rena-scaling/--rena-n-iter apply to --method rena, not "
                              f"{self.method}")
        for name in ("kmeans_n_init", "kmeans_batch_size"):
            value = getattr(self, name)
            if value is None:
                continue
            option = f"--{name.replace('_', '-')}"
            if value < 1:
                raise ConfigError(f"{option} {value}: must be >= 1")
            if self.method not in KMEANS_DEFAULTS:
                raise ConfigError(f"{option} applies to --method kmeans or "
                                  f"hierarchical_kmeans, not {self.method}")

    def method_options(self) -> dict:
        """Keyword options of the method function (:data:`parcellate.METHODS`)."""
        if self.method == "rena":
            return {"scaling": self.rena_scaling, "n_iter": self.rena_n_iter}
        if self.method in KMEANS_DEFAULTS:
            defaults = KMEANS_DEFAULTS[self.method]
            return {
                "n_init": defaults["n_init"] if self.kmeans_n_init is None
                else self.kmeans_n_init,
                "batch_size": defaults["batch_size"] if self.kmeans_batch_size is None
                else self.kmeans_batch_size,
            }
        return {}

    def _check_method_options(self) -> None:
        """Scales and method-specific options; an option that does not apply to the
        method is an error when set to anything but its default."""
        decomposition = self.method in DECOMPOSITION_METHODS
        for name in sorted(self._unused_parameters()):
            if getattr(self, name) != _DEFAULTS[name]:
                option = "--" + name.replace("_", "-")
                if name == "n_parcels":
                    raise ConfigError(
                        f"--n-parcels does not apply to --method {self.method}: the number "
                        "of regions is an outcome of region extraction; give the numbers "
                        "of network maps with --n-maps")
                if name == "split_disconnected":
                    raise ConfigError(
                        f"--split-disconnected applies to --method "
                        f"{' or '.join(SPLITTABLE_METHODS)} only (the parcels of "
                        f"{self.method} are contiguous by construction)")
                if name == "dictlearning_alpha":
                    raise ConfigError("--dictlearning-alpha applies to --method "
                                      "dictlearning only")
                if name == "min_region_size":
                    raise ConfigError(
                        "--min-region-size applies to --method dictlearning or canica, or "
                        "with --split-disconnected")
                raise ConfigError(f"{option} applies to --method dictlearning or canica only")
        scales, option = ((self.n_maps, "--n-maps") if decomposition
                          else (self.n_parcels, "--n-parcels"))
        if not scales:
            raise ConfigError(f"{option}: give at least one number")
        if any(n < 2 for n in scales):
            raise ConfigError(f"{option} {values_text(scales)}: every scale must be >= 2")
        if len(set(scales)) != len(scales):
            raise ConfigError(f"{option} {values_text(scales)}: scales repeat")
        if self.n_components < 1:
            raise ConfigError(f"--n-components {self.n_components}: must be >= 1")
        if not 0.0 <= self.feature_weighting <= 1.0:
            raise ConfigError(f"--feature-weighting {self.feature_weighting:g}: give a "
                              "number from 0 (whitened) to 1 (weighted by variance)")
        if self.region_thresholding not in REGION_THRESHOLDINGS:
            raise ConfigError(f"--region-thresholding {self.region_thresholding!r}: choose "
                              f"from {', '.join(REGION_THRESHOLDINGS)}")
        if self.region_extractor not in REGION_EXTRACTORS:
            raise ConfigError(f"--region-extractor {self.region_extractor!r}: choose from "
                              f"{', '.join(REGION_EXTRACTORS)}")
        if self.region_thresholding == "ratio_n_voxels" and decomposition and not (
                0 < self.region_threshold <= min(self.n_maps)):
            raise ConfigError(
                f"--region-threshold {self.region_threshold:g}: with ratio_n_voxels it is a "
                f"ratio in (0, {min(self.n_maps)}] (at most the number of maps)")
        if self.region_thresholding == "percentile" and not (
                0 <= self.region_threshold < 100):
            raise ConfigError(f"--region-threshold {self.region_threshold:g}: a percentile "
                              "must be in [0, 100)")
        if self.dictlearning_alpha is not None and self.dictlearning_alpha <= 0:
            raise ConfigError(f"--dictlearning-alpha {self.dictlearning_alpha:g}: must be > 0")
        if self.min_region_size < 0:
            raise ConfigError(f"--min-region-size {self.min_region_size:g}: must be >= 0")

    def _check_connectivity(self) -> None:
        for kind in self.connectivity:
            if kind not in CONNECTIVITY_MEASURES:
                raise ConfigError(
                    f"--connectivity {kind!r}: choose from "
                    f"{', '.join(m.replace(' ', '_') for m in CONNECTIVITY_MEASURES)}")
        if len(set(self.connectivity)) != len(self.connectivity):
            raise ConfigError(
                "--connectivity "
                f"{' '.join(m.replace(' ', '_') for m in self.connectivity)}: measures repeat")
        if "tangent" in self.connectivity and "group" not in self.analysis_levels:
            raise ConfigError(
                "--connectivity tangent needs several participants: it is computed at the "
                "group level only (add the 'group' analysis level)")

    def _unused_parameters(self) -> set[str]:
        """Parameters that do not apply to ``method`` (not validated, not hashed)."""
        region = {"n_maps", "region_threshold", "region_thresholding", "region_extractor",
                  "dictlearning_alpha"}
        if self.method in DECOMPOSITION_METHODS:
            unused = {"n_parcels", "split_disconnected"}
            return unused | ({"dictlearning_alpha"} if self.method == "canica" else set())
        unused = region | ({"split_disconnected"} if self.method not in SPLITTABLE_METHODS
                           else set())
        if not self.split_disconnected:
            unused.add("min_region_size")
        return unused

    @property
    def scales(self) -> tuple[int, ...]:
        """The scales learned: ``n_maps`` for decompositions, else ``n_parcels``."""
        return self.n_maps if self.method in DECOMPOSITION_METHODS else self.n_parcels

    @property
    def is_decomposition(self) -> bool:
        """Whether ``method`` learns network maps and extracts regions from them."""
        return self.method in DECOMPOSITION_METHODS

    @property
    def resamples(self) -> bool:
        """Whether the data are resampled to a target grid (``--target-*``)."""
        return self.target_resolution is not None or self.target_affine is not None

    # ------------------------------------------------------------------ hashing
    def hashed_parameters(self) -> dict:
        """Parameters that determine output values, JSON-serialisable and sorted.

        Parameters that do not apply to the method (``--n-maps`` for ward,
        ``--n-parcels`` for dictlearning...) are left out.
        """
        params = {}
        unused = self._unused_parameters()
        for f in fields(self):
            if f.name in _NOT_HASHED or f.name in unused:
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            params[f.name] = value
        if self.mask is not None:
            # the user mask enters by content, so that the hash does not depend on where
            # the file lives
            params["mask"] = file_sha256(self.mask)
        return dict(sorted(params.items()))

    def config_hash(self) -> str:
        """Short stable hash of :meth:`hashed_parameters` and the major.minor version."""
        version = ".".join(__version__.split(".")[:2])
        payload = json.dumps(
            {"version": version, **self.hashed_parameters()}, sort_keys=True, default=str
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        """All parameters, JSON-serialisable (paths as strings)."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(v) if isinstance(v, Path) else v for v in value]
            out[key] = value
        return out

    @property
    def standardize_arg(self) -> str | bool:
        """The ``standardize`` argument for nilearn (``False`` for ``none``)."""
        return False if self.standardize == "none" else self.standardize


#: Default value of every field (to tell options that were set from those left alone).
_DEFAULTS = {f.name: f.default for f in fields(Config)}
