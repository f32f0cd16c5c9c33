"""The argument parser (BIDS-Apps interface) and its conversion into a frozen Config.

``bids_parcellate BIDS_DIR OUTPUT_DIR LEVEL [options]``: :func:`build_parser` defines
every option; :func:`config_from_args` turns the parsed arguments into one validated,
frozen :class:`~bids_parcellate.config.Config` (paths checked, files read).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from bids_parcellate import __version__
from bids_parcellate.config import (
    CONNECTIVITY_MEASURES,
    DENOISE_STRATEGIES,
    KMEANS_DEFAULTS,
    MASK_STRATEGIES,
    METHODS,
    REGION_EXTRACTORS,
    REGION_THRESHOLDINGS,
    STANDARDIZE_CHOICES,
    Config,
    ConfigError,
    UserError,
    check_label,
)
from bids_parcellate.words import value_text

PROG = "bids_parcellate"
#: The documentation (docs/ of the source repository): an installed package has no docs/.
DOCS_URL = "https://github.com/bids-parcellate/bids_parcellate/tree/main/docs"


class _Parser(argparse.ArgumentParser):
    """argparse's parser with a one-line usage error (exit code 2): the full usage of
    this many options would bury the message; ``--help`` shows it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Each option's default shown once, as it is typed: "(default: 100 200 400)", "on"
    or "off" for a ``--x/--no-x`` pair. Nothing for flags, for options without a default
    value and for help texts that state their default themselves."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").removesuffix(" (default: %(default)s)")
        if (not action.option_strings or "default" in text
                or isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction
                              | argparse._CountAction)
                or action.default in (None, [], (), argparse.SUPPRESS)):
            return text
        default = value_text(action.default).replace("%", "%%")
        return f"{text} (default: {default})"


def _positive_float(text: str) -> float:
    """A finite number (the ranges are checked by :class:`Config`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _numbers(text: str, option: str) -> list:
    """A JSON array (possibly nested) or a comma/space separated list of numbers."""
    import json

    text = text.strip()
    try:
        value = json.loads(text) if text.startswith("[") else [
            float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give a JSON array or comma-separated "
                          "numbers") from None
    return value


def parse_target_affine(text: str | None) -> tuple | None:
    """``--target-affine``: 9 or 16 numbers (row-major), or a nested JSON array."""
    if text is None:
        return None
    import numpy as np

    try:
        values = np.asarray(_numbers(text, "--target-affine"), dtype=float)
    except ValueError:
        raise ConfigError(f"--target-affine {text!r}: not an array of numbers") from None
    if values.ndim == 1 and values.size in (9, 16):
        side = 3 if values.size == 9 else 4
        values = values.reshape(side, side)
    if values.shape not in ((3, 3), (4, 4)):
        raise ConfigError(f"--target-affine {text!r}: give 9 (3x3) or 16 (4x4) numbers")
    return tuple(tuple(float(v) for v in row) for row in values)


def parse_target_shape(text: str | None) -> tuple | None:
    """``--target-shape``: three positive integers."""
    if text is None:
        return None
    values = _numbers(text, "--target-shape")
    if (not isinstance(values, list) or len(values) != 3
            or not all(isinstance(v, int | float) and float(v).is_integer() and v > 0
                       for v in values)):
        raise ConfigError(f"--target-shape {text!r}: give 3 positive integers")
    return tuple(int(v) for v in values)


def parse_mask_args(text: str | None) -> dict | None:
    """``--mask-args``: a JSON object passed to nilearn's mask function."""
    if text is None:
        return None
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--mask-args {text!r}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--mask-args {text!r}: give a JSON object, e.g. "
                          '\'{"lower_cutoff": 0.3}\'')
    return value


def _auto_or_float(text: str) -> float | None:
    return None if text == "auto" else _positive_float(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to generate the Boutiques descriptor and docs)."""
    parser = _Parser(
        prog=PROG,
        description="Data-driven brain parcellations from fMRIPrep derivatives "
                    "(a BIDS-App).",
        formatter_class=_HelpFormatter,
        epilog=f"Quick demo: {PROG} --demo OUT. Documentation (the outputs, quality "
               f"figures, clusters, containers): the docs/ folder of the source "
               f"repository, {DOCS_URL}. Exit codes: 0 success; 1 bad input (a missing "
               f"or unusable file or folder) or a participant failed; 2 usage error (an "
               f"unknown option, or an invalid option value or combination); 3 internal "
               f"error; 130 interrupted; 143 terminated (SIGTERM).",
    )
    parser.add_argument("bids_dir", type=Path,
                        help="fMRIPrep derivatives dataset, or a raw BIDS dataset whose "
                             "derivatives are under derivatives/ or given with --derivatives")
    parser.add_argument("output_dir", type=Path, help="where the outputs are written")
    parser.add_argument("analysis_level", nargs="+", choices=["participant", "group"],
                        help="'participant', 'group', or both in that order")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more output: -v debug messages and tracebacks, -vv also "
                             "from pybids and nilearn")

    sel = parser.add_argument_group("selection of inputs")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", default=[],
                     metavar="LABEL", help="participants to process (with or without sub-)")
    sel.add_argument("--session-label", nargs="+", default=[], metavar="LABEL",
                     help="sessions to process (with or without ses-)")
    sel.add_argument("--task", nargs="+", default=[], metavar="LABEL", help="tasks")
    sel.add_argument("--run", nargs="+", default=[], metavar="INDEX", help="run indices")
    sel.add_argument("--space", default="MNI152NLin2009cAsym",
                     help="output space of the fMRIPrep BOLD (a volumetric template)")
    sel.add_argument("--res", default=None, metavar="LABEL",
                     help="resolution label of the BOLD (res- entity), when several exist")
    sel.add_argument("--bids-filter-file", type=Path, default=None, metavar="FILE",
                     help="JSON with pybids queries in fMRIPrep's format; its 'bold' "
                          "entry restricts the BOLD runs")
    sel.add_argument("--derivatives", type=Path, action="append", default=[], metavar="PATH",
                     help="fMRIPrep derivatives folder (repeatable) (default: BIDS_DIR "
                          "itself when it is a derivative dataset, else "
                          "BIDS_DIR/derivatives/*)")
    sel.add_argument("-w", "--work-dir", type=Path, default=None, metavar="PATH",
                     help="work directory (pybids database, caches) (default: a temporary "
                          "folder removed at exit)")
    sel.add_argument("--bids-database-dir", type=Path, default=None, metavar="PATH",
                     help="reusable pybids database folder (indexes all participants, so "
                          "that array jobs can share it)")

    den = parser.add_argument_group("denoising")
    den.add_argument("--denoise-strategy", default="simple",
                     help=f"nilearn confound strategy: {', '.join(DENOISE_STRATEGIES)}")
    den.add_argument("--motion", choices=["basic", "power2", "derivatives", "full"],
                     default=None, help="motion regressors (default: the strategy's)")
    den.add_argument("--global-signal", choices=["basic", "power2", "derivatives", "full"],
                     default=None, help="add global signal regressors")
    den.add_argument("--fd-threshold", type=_positive_float, default=None, metavar="MM",
                     help="scrubbing: framewise displacement threshold (default: 0.5, "
                          "nilearn's)")
    den.add_argument("--std-dvars-threshold", type=_positive_float, default=None,
                     metavar="VALUE", help="scrubbing: standardised DVARS threshold "
                                           "(default: 1.5, nilearn's)")
    den.add_argument("--high-pass", type=_positive_float, default=None, metavar="HZ",
                     help="Butterworth high-pass cut-off (the strategies already regress "
                          "fMRIPrep's cosine drift terms)")
    den.add_argument("--low-pass", type=_positive_float, default=None, metavar="HZ",
                     help="Butterworth low-pass cut-off")
    den.add_argument("--detrend", action=argparse.BooleanOptionalAction, default=True,
                     help="remove linear trends")
    den.add_argument("--standardize", default="zscore_sample",
                     help=f"standardisation of voxel and parcel signals: "
                          f"{', '.join(STANDARDIZE_CHOICES)}")
    den.add_argument("--min-volumes", type=int, default=20, metavar="N",
                     help="skip runs with fewer volumes left after censoring")
    den.add_argument("--keep-flat-voxels", action="store_true",
                     help="parcellate brain-mask voxels whose BOLD is constant over a run "
                          "(no signal, e.g. outside the field of view); by default they "
                          "are left out, counted and located in the dseg sidecars")

    par = parser.add_argument_group("parcellation")
    par.add_argument("--method", default="ward",
                     help=f"one of {', '.join(METHODS)}; dictlearning and canica learn "
                          "network maps, then split them into regions")
    par.add_argument("--n-parcels", type=int, nargs="+", default=[100, 200, 400],
                     metavar="N", help="numbers of parcels (scales), learned in one run "
                                       "(clustering methods)")
    par.add_argument("--smoothing-fwhm", type=_positive_float, default=4.0, metavar="MM",
                     help="spatial smoothing within the brain mask of the data the "
                          "parcellation is learned from (0 = none)")
    par.add_argument("--n-components", type=int, default=200, metavar="K",
                     help="temporal dimensions kept for clustering and in the summaries "
                          "the group level reads (exact SVD when the runs have more "
                          "volumes)")
    par.add_argument("--feature-weighting", type=_positive_float, default=1.0, metavar="ALPHA",
                     help="clustering features U S^ALPHA of the SVD of the smoothed runs: "
                          "1 weighs each component by its variance (within-parcel "
                          "variance of the data minimised: more accurate parcels), 0 "
                          "whitens them as nilearn does (smoother, more reproducible "
                          "parcels); measurements in quality.md of the documentation "
                          "(link below)")
    par.add_argument("--split-disconnected", action="store_true",
                     help="kmeans, hierarchical_kmeans: split every parcel into its "
                          "connected pieces (pieces up to --min-region-size are dropped)")
    par.add_argument("--random-seed", type=int, default=0, metavar="SEED",
                     help="seed of every random step")
    par.add_argument("--bootstrap", type=int, default=0, metavar="B",
                     help="consensus parcellation over B block-bootstrap resamples of the "
                          "volumes (0 = off; about B+1 times the cost of one fit, and the "
                          "quality figures repeat it on each half)")

    qual = parser.add_argument_group("quality figures")
    qual.add_argument("--quality", action=argparse.BooleanOptionalAction, default=True,
                      help="compute the quality figures (accuracy, split-half "
                           "reproducibility, homogeneity against a null, shape) and write "
                           "their tables; --no-quality skips them")
    qual.add_argument("--split-half",
                      action=argparse.BooleanOptionalAction, default=True,
                      help="learn the parcellation again on two halves of the data for "
                           "held-out accuracy, ARI and NMI (~90%% of the cost of the "
                           "figures); with --no-split-half these columns are n/a")
    par.add_argument("--rena-scaling", action=argparse.BooleanOptionalAction, default=False,
                     help="rena: scale features by the square root of cluster sizes "
                          "(nilearn ReNA scaling)")
    par.add_argument("--rena-n-iter", type=int, default=10, metavar="N",
                     help="rena: iterations of nearest-neighbour agglomeration (nilearn "
                          "ReNA n_iter)")
    par.add_argument("--kmeans-n-init", type=int, default=None, metavar="N",
                     help="kmeans / hierarchical_kmeans: k-means++ initialisations "
                          "(default: nilearn Parcellations', "
                          + ", ".join(f"{m} {d['n_init']}" for m, d in KMEANS_DEFAULTS.items())
                          + ")")
    par.add_argument("--kmeans-batch-size", type=int, default=None, metavar="N",
                     help="kmeans / hierarchical_kmeans: MiniBatchKMeans batch size "
                          "(default: nilearn Parcellations', "
                          + ", ".join(f"{m} {d['batch_size']}"
                                      for m, d in KMEANS_DEFAULTS.items()) + ")")

    msk = parser.add_argument_group("brain mask and voxel grid")
    msk.add_argument("--mask-strategy", choices=MASK_STRATEGIES, default="fmriprep",
                     help="brain mask: fMRIPrep's (intersection of the runs' desc-brain "
                          "masks), nilearn's compute_epi_mask / compute_background_mask of "
                          "each run's mean image, or nilearn's MNI152 template masks "
                          "(whole brain, grey or white matter; intersected with fMRIPrep's)")
    msk.add_argument("--mask-args", default=None, metavar="JSON",
                     help="JSON object of options for the nilearn mask function, e.g. "
                          '\'{"threshold": 0.3}\' for gm-template')
    msk.add_argument("--mask", type=Path, default=None, metavar="PATH",
                     help="a mask image in the BOLD space, resampled to the BOLD grid "
                          "(nearest neighbour) and intersected with the brain mask")
    msk.add_argument("--target-resolution", type=_positive_float, default=None,
                     metavar="MM", help="resample BOLD and masks to isotropic voxels of MM "
                                        "before anything else (e.g. 4 for 2 mm data)")
    msk.add_argument("--target-affine", default=None, metavar="NUMBERS",
                     help="expert: nilearn's target_affine, 9 or 16 numbers (row-major, "
                          "comma-separated or a JSON array)")
    msk.add_argument("--target-shape", default=None, metavar="NUMBERS",
                     help="expert: nilearn's target_shape (3 integers; needs a 4x4 "
                          "--target-affine)")

    reg = parser.add_argument_group(
        "network maps and regions (--method dictlearning, canica)",
        "The number of regions is an outcome: --n-maps sets the number of maps (the "
        "scale- entity of the outputs); every map is thresholded and split into "
        "connected regions (nilearn RegionExtractor).")
    reg.add_argument("--n-maps", type=int, nargs="+", default=[20], metavar="K",
                     help="numbers of network maps (scales), each decomposed separately")
    reg.add_argument("--dictlearning-alpha", type=_auto_or_float, default=None,
                     metavar="ALPHA",
                     help="sparsity of the dictlearning maps (nilearn's alpha), or 'auto': "
                          "10 x sqrt(kept volumes / 3360), which matches nilearn's alpha=10 "
                          "on its 20-participant example whatever the number of volumes "
                          "(outputs.md of the documentation, link below) (default: auto)")
    reg.add_argument("--region-thresholding", choices=REGION_THRESHOLDINGS,
                     default="ratio_n_voxels",
                     help="how the maps are thresholded before region extraction")
    reg.add_argument("--region-threshold", type=_positive_float, default=0.5, metavar="VALUE",
                     help="ratio_n_voxels: voxels kept across all maps as a ratio of the "
                          "brain voxels; img_value: map value; percentile: percentile")
    reg.add_argument("--region-extractor", choices=REGION_EXTRACTORS,
                     default="local_regions",
                     help="local_regions: random-walker split around the maps' peaks; "
                          "connected_components: connected pieces of the thresholded maps")
    reg.add_argument("--min-region-size", type=_positive_float, default=1350.0,
                     metavar="MM3", help="regions (and --split-disconnected pieces) must be "
                                         "larger than this volume")

    con = parser.add_argument_group("connectomes")
    con.add_argument("--connectivity", nargs="+", default=[], metavar="MEASURE",
                     type=lambda text: text.replace("_", " "),
                     help=f"connectivity matrices per run and scale (nilearn "
                          f"ConnectivityMeasure, censored volumes excluded): "
                          f"{', '.join(m.replace(' ', '_') for m in CONNECTIVITY_MEASURES)}"
                          f"; tangent is computed at the group level only")
    grp = parser.add_argument_group("group level")
    grp.add_argument("--atlas-label", default=None, metavar="LABEL",
                     help="atlas- label of the group parcellation (default: the dataset "
                          "folder name followed by the method, e.g. ds000030Ward)")

    rep = parser.add_argument_group("reports and methods text")
    only = rep.add_mutually_exclusive_group()
    only.add_argument("--reports-only", action="store_true",
                      help="only rebuild the HTML reports from the outputs already in "
                           "OUTPUT_DIR (nothing is recomputed and BIDS_DIR is not read)")
    only.add_argument("--boilerplate-only", action="store_true",
                      help="only write the methods text (OUTPUT_DIR/logs/CITATION.md, "
                           ".html, .bib) for the selected inputs; no data are processed")

    res = parser.add_argument_group("resources and reruns")
    res.add_argument("--nprocs", "--n-cpus", type=int, default=1, metavar="N",
                     help="CPUs to use: up to N participants at once in worker processes, "
                          "each splitting its share of the N CPUs into threads for "
                          "reading, cleaning, smoothing and Ward (with single-threaded "
                          "BLAS); scikit-learn's OpenMP loops (k-means) and the group "
                          "level's BLAS are capped at N. Outputs do not depend on it")
    res.add_argument("--mem-gb", type=_positive_float, default=None, metavar="GB",
                     help="memory limit in GB: the run stops before computing anything "
                          "when its estimated peak memory is above it; with --nprocs, "
                          "fewer participants run at once when they would not fit")
    res.add_argument("--overwrite", action="store_true",
                     help="recompute participants whose outputs are complete, and replace "
                          "outputs made with other parameters (without it, complete "
                          "outputs are skipped and a parameter change is refused)")
    res.add_argument("--cache", dest="cache", action=argparse.BooleanOptionalAction,
                     default=True,
                     help="store intermediate results (cleaned data, features, trees) in "
                          "the work directory and reuse them: with -w/--work-dir kept "
                          "between runs, a rerun that changes only --n-parcels reuses "
                          "them; --no-cache neither reads nor writes them (default: on "
                          "with -w/--work-dir; without it the work directory is temporary "
                          "and there is no cache)")
    res.add_argument("--cache-limit-gb", type=_positive_float, default=20.0, metavar="GB",
                     help="size limit of the cache in the work directory (least recently "
                          "used entries are removed)")
    res.add_argument("--print-slurm", action="store_true",
                     help="print a SLURM batch script (array over the selected participants, "
                          "then the group level) with these options and exit; with "
                          "--bids-database-dir the database is built once here")
    return parser


def config_from_args(args: argparse.Namespace, argv: list[str]) -> Config:
    """Validate parsed arguments into a :class:`Config`.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`build_parser`'s parser.
    argv : list of str
        The command line (program name first), kept as ``Config.command_line`` for the
        provenance and ``--print-slurm``.

    Returns
    -------
    Config
        Paths absolute, labels checked and sorted, ``--bids-filter-file`` read,
        ``--mask`` checked, ``--mask-args`` and ``--target-*`` parsed.

    Raises
    ------
    ConfigError
        On an invalid label, run index or option value, or options that do not go
        together (a usage error).
    UserError
        On a missing or unreadable file, or OUTPUT_DIR or the work directory at a
        forbidden place relative to BIDS_DIR.
    """
    from bids_parcellate.inputs.query import read_bids_filters

    bids_dir = args.bids_dir.absolute()
    output_dir = args.output_dir.absolute()
    participants = tuple(sorted({check_label(p, "--participant-label", "sub")
                                 for p in args.participant_label}))
    sessions = tuple(sorted({check_label(s, "--session-label", "ses")
                             for s in args.session_label}))
    tasks = tuple(sorted({check_label(t, "--task", "task") for t in args.task}))
    runs = []
    for r in args.run:
        text = r.removeprefix("run-")
        if not text.isdigit():
            raise ConfigError(f"--run {r!r}: not a run index (digits only)")
        runs.append(int(text))
    filters = read_bids_filters(args.bids_filter_file) if args.bids_filter_file else None
    work_dir = args.work_dir.absolute() if args.work_dir else None
    _check_locations(bids_dir, output_dir, work_dir)
    return Config(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_levels=tuple(dict.fromkeys(args.analysis_level)),
        participant_label=participants,
        session_label=sessions,
        task=tasks,
        run=tuple(sorted(set(runs))),
        space=args.space,
        res=args.res.removeprefix("res-") if args.res else None,
        bids_filters=filters,
        derivatives=tuple(p.absolute() for p in args.derivatives),
        work_dir=work_dir,
        bids_database_dir=args.bids_database_dir.absolute() if args.bids_database_dir
        else None,
        denoise_strategy=args.denoise_strategy,
        motion=args.motion,
        global_signal=args.global_signal,
        fd_threshold=args.fd_threshold,
        std_dvars_threshold=args.std_dvars_threshold,
        high_pass=args.high_pass,
        low_pass=args.low_pass,
        detrend=args.detrend,
        standardize=args.standardize,
        min_volumes=args.min_volumes,
        method=args.method,
        n_parcels=tuple(args.n_parcels),
        smoothing_fwhm=args.smoothing_fwhm,
        n_components=args.n_components,
        keep_flat_voxels=args.keep_flat_voxels,
        feature_weighting=args.feature_weighting,
        random_seed=args.random_seed,
        bootstrap=args.bootstrap,
        quality=args.quality,
        split_half=args.split_half,
        mask_strategy=args.mask_strategy,
        mask_args=parse_mask_args(args.mask_args),
        mask=_user_mask(args.mask),
        target_resolution=args.target_resolution,
        target_affine=parse_target_affine(args.target_affine),
        target_shape=parse_target_shape(args.target_shape),
        rena_scaling=args.rena_scaling,
        rena_n_iter=args.rena_n_iter,
        kmeans_n_init=args.kmeans_n_init,
        kmeans_batch_size=args.kmeans_batch_size,
        use_cache=args.cache,
        cache_limit_gb=args.cache_limit_gb,
        n_maps=tuple(args.n_maps),
        dictlearning_alpha=args.dictlearning_alpha,
        region_threshold=args.region_threshold,
        region_thresholding=args.region_thresholding,
        region_extractor=args.region_extractor,
        min_region_size=args.min_region_size,
        split_disconnected=args.split_disconnected,
        connectivity=tuple(args.connectivity),
        atlas_label=args.atlas_label.removeprefix("atlas-") if args.atlas_label else None,
        nprocs=args.nprocs,
        mem_gb=args.mem_gb,
        overwrite=args.overwrite,
        print_slurm=args.print_slurm,
        verbosity=args.verbose,
        reports_only=args.reports_only,
        boilerplate_only=args.boilerplate_only,
        command_line=tuple(argv),
    )


def _user_mask(path: Path | None) -> Path | None:
    if path is None:
        return None
    if not path.is_file():
        raise UserError(f"--mask {path}: file not found")
    return path.absolute()


def _is_within(path: Path, parent: Path) -> bool:
    path, parent = path.resolve(), parent.resolve()
    return path == parent or parent in path.parents


def _check_locations(bids_dir: Path, output_dir: Path, work_dir: Path | None) -> None:
    """OUTPUT_DIR must not be BIDS_DIR or contain it; outputs under BIDS_DIR/derivatives/
    are fine (BIDS convention); nothing else may be written inside BIDS_DIR."""
    if _is_within(bids_dir, output_dir):
        raise UserError(f"{output_dir}: OUTPUT_DIR must not be BIDS_DIR or one of its parents")
    if _is_within(output_dir, bids_dir) and not _is_within(output_dir,
                                                             bids_dir / "derivatives"):
        raise UserError(
            f"{output_dir}: OUTPUT_DIR inside BIDS_DIR must be under BIDS_DIR/derivatives/")
    if work_dir is not None and _is_within(work_dir, bids_dir):
        raise UserError(f"{work_dir}: the work directory must not be inside BIDS_DIR")
