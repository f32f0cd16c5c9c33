"""The only module that builds BIDS names and writes files.

Every file is written to a temporary name in its destination folder and renamed into
place (``os.replace`` is atomic on POSIX), so a crash never leaves a truncated file under
a final name, and concurrent writers of the same shared file (array jobs writing
``dataset_description.json``) each install a complete copy.

Names come from the path patterns in ``data/bids_patterns.json`` through pybids'
``build_path``; every output is documented in ``docs/outputs.md``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_parcellate import __version__
from bids_parcellate.config import UserError

CODE_URL = "https://github.com/bids-parcellate/bids_parcellate"
BIDS_VERSION = "1.11.0"
#: Files the BIDS schema does not know yet (BEP012 timeseries, BEP017 connectivity
#: matrices, our summaries, reports).
BIDSIGNORE = (
    "*_timeseries.tsv",
    "*_timeseries.json",
    "*_relmat.tsv",
    "*_relmat.json",
    "logs/",
    "*.html",
    "figures/",
)


@lru_cache(maxsize=1)
def path_patterns() -> dict[str, str]:
    """BIDS path patterns by output kind."""
    text = resources.files("bids_parcellate.data").joinpath("bids_patterns.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def build_name(kind: str, entities: dict) -> str:
    """Relative BIDS path for an output ``kind`` (``dseg``, ``timeseries``...)."""
    from bids.layout.writing import build_path

    clean = {k: str(v) for k, v in entities.items() if v is not None}
    path = build_path(clean, [path_patterns()[kind]], strict=False)
    if path is None:
        raise ValueError(f"cannot name a {kind} output from {sorted(clean)}")
    return path


def seg_label(method: str) -> str:
    """BIDS label of a method for the ``seg-`` entity (labels are alphanumeric)."""
    return "".join(ch for ch in method if ch.isalnum())


def source_prefix(entities: dict) -> str:
    """``sub-01_ses-1_task-rest_run-1``: the source part of a run's file names."""
    order = (("subject", "sub"), ("session", "ses"), ("task", "task"),
             ("acquisition", "acq"), ("ceagent", "ce"), ("reconstruction", "rec"),
             ("direction", "dir"), ("run", "run"), ("echo", "echo"))
    return "_".join(f"{key}-{entities[name]}" for name, key in order if entities.get(name))


def unit_prefix(subject: str, session: str | None) -> str:
    """``sub-01`` or ``sub-01_ses-1``."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


# --------------------------------------------------------------------------- writing
def _atomic_write(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``; clean up on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}",
                               dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` atomically."""
    return _atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: dict) -> Path:
    """Write JSON (sorted keys, indented, final newline) atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default)
                      + "\n")


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def format_tsv(columns: list[str], rows: np.ndarray | list, float_format: str = "%.8g") -> str:
    """A BIDS TSV: header, tab-separated, ``n/a`` for NaN/None, fixed float format."""
    buf = io.StringIO()
    buf.write("\t".join(columns) + "\n")
    for row in rows:
        cells = []
        for value in row:
            if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
                cells.append("n/a")
            elif isinstance(value, float | np.floating):
                cells.append(float_format % value)
            else:
                cells.append(str(value))
        buf.write("\t".join(cells) + "\n")
    return buf.getvalue()


def write_tsv(path: Path, columns: list[str], rows) -> Path:
    """Write a BIDS TSV atomically (see :func:`format_tsv`)."""
    return write_text(path, format_tsv(columns, rows))


def write_matrix_tsv(path: Path, columns: list[str], matrix: np.ndarray,
                     float_format: str = "%.8g",
                     row_names: tuple[str, list[str]] | None = None) -> Path:
    """Write a float matrix as TSV (vectorised formatting, NaN as ``n/a``).

    ``row_names``: optional ``(column name, names)`` written as a first column.
    """
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            header = ([row_names[0]] if row_names else []) + list(columns)
            fh.write("\t".join(header) + "\n")
            text = np.char.mod(float_format, matrix)
            text[np.isnan(matrix)] = "n/a"
            rows = ["\t".join(row) for row in text]
            if row_names:
                rows = [f"{name}\t{row}" for name, row in zip(row_names[1], rows,
                                                               strict=True)]
            fh.write("\n".join(rows))
            fh.write("\n")
    return _atomic_write(path, write)


def write_nifti(path: Path, img: nib.Nifti1Image) -> Path:
    """Write a NIfTI image atomically; nibabel's gzip stream has no timestamp or name."""
    return _atomic_write(path, lambda tmp: nib.save(img, tmp))


# --------------------------------------------------------------------------- dataset
def in_container() -> dict | None:
    """Container description for ``GeneratedBy`` when running inside our image."""
    image = os.environ.get("BIDS_PARCELLATE_CONTAINER_IMAGE")  # set by the Dockerfile
    if not image:
        return None
    kind = os.environ.get("BIDS_PARCELLATE_CONTAINER_TYPE", "docker")
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        kind = "singularity"  # the image converted to a SIF; Apptainer sets these
    return {"Type": kind, "Tag": image}


def dataset_description(source_dirs: list[Path]) -> dict:
    """``dataset_description.json`` content for the output dataset."""
    generated = {"Name": "bids_parcellate", "Version": __version__, "CodeURL": CODE_URL}
    container = in_container()
    if container:
        generated["Container"] = container
    links = {}
    for path in source_dirs:
        key = "".join(ch for ch in path.resolve().name if ch.isalnum()) or "source"
        while key in links:
            key += "x"
        links[key] = path.resolve().as_uri()
    return {
        "Name": "bids_parcellate: data-driven parcellations",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [{"URL": uri} for uri in links.values()],
        "DatasetLinks": links,
    }


def bids_uri(path: Path, source_dirs: list[Path]) -> str:
    """BIDS URI (``bids:<link>:<relative path>``) of an input file."""
    links = dataset_description(source_dirs)["DatasetLinks"]
    path = Path(path).resolve()
    for key, uri in links.items():
        root = Path(uri.removeprefix("file://"))
        if root in path.parents:
            return f"bids:{key}:{path.relative_to(root).as_posix()}"
    return path.as_uri()


def prepare_output_dir(output_dir: Path, source_dirs: list[Path]) -> None:
    """Create OUTPUT_DIR with ``dataset_description.json`` and ``.bidsignore``.

    Both are rewritten atomically with identical content by every concurrent process.
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{output_dir}: cannot create OUTPUT_DIR ({exc.strerror})") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise UserError(f"{output_dir}: OUTPUT_DIR is not writable")
    write_json(output_dir / "dataset_description.json", dataset_description(source_dirs))
    write_text(output_dir / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")
    write_text(output_dir / "README.md", README_TEXT)


README_TEXT = """# bids_parcellate derivatives

Data-driven brain parcellations learned from fMRIPrep outputs by bids_parcellate.

- `sub-<label>/anat/*_seg-<method>_scale-<n>_dseg.nii.gz` (+ `.tsv`, `.json`): one
  parcellation per participant (and session) and scale; labels 1..n, 0 is background.
- `sub-<label>/func/*_stat-mean_timeseries.tsv` (+ `.json`): parcel mean timeseries per
  run and scale; one row per BOLD volume, censored volumes are `n/a`.
- `sub-<label>/anat/*_seg-<dictlearning|canica>_scale-<K>_probseg.nii.gz` (+ `.json`):
  the K network maps the regions of the dseg of the same scale were extracted from.
- `sub-<label>/func/*_meas-<measure>_relmat.tsv` (+ `.json`): connectivity matrices
  between parcels per run and scale (`--connectivity`).
- `logs/`: log files of every invocation.

Every file is described in the bids_parcellate documentation (docs/outputs.md).
"""
