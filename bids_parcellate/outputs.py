"""The only module that builds BIDS names and writes files.

Every file is written to a temporary name in its destination folder and renamed into
place (``os.replace`` is atomic on POSIX), so a crash never leaves a truncated file under
a final name, and concurrent writers of the same shared file (array jobs writing
``dataset_description.json``) each install a complete copy.

Names come from the path patterns in ``data/bids_patterns.json`` through pybids'
``build_path``; every output is documented in ``docs/outputs.md``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import socket
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
    "*_quality.tsv",
    "*_quality.json",
    "*_relmat.tsv",
    "*_relmat.json",
    "*_completed.json",
    "logs/",
    "*.html",
    # report figures and records under sub-<label>/figures/ (the validator does not
    # match "figures/" below the root: "figures" does)
    "figures",
    "*_features.npz",
    "*_features.json",
    "group_*",
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


def completion_marker(output_dir: Path, subject: str, session: str | None) -> Path:
    """Path of a unit's completion marker (written last; see :mod:`bids_parcellate.resume`)."""
    return Path(output_dir) / build_name("completed", {"subject": subject, "session": session,
                                                       "suffix": "completed",
                                                       "extension": ".json"})


def unit_dir(output_dir: Path, subject: str, session: str | None) -> Path:
    """Folder holding a unit's outputs: ``sub-<label>`` or ``sub-<label>/ses-<label>``."""
    return completion_marker(output_dir, subject, session).parent


LOGS_DIR = "logs"


def manifest_path(output_dir: Path) -> Path:
    """``OUTPUT_DIR/logs/manifest.tsv``: path, sha256 and size of every output."""
    return Path(output_dir) / LOGS_DIR / "manifest.tsv"


def log_path(output_dir: Path, levels: tuple[str, ...], stamp: str) -> Path:
    """Log file of one invocation; host and pid make it unique among array jobs."""
    return Path(output_dir) / LOGS_DIR / f"{'-'.join(levels)}-{stamp}-{_HOST}-{os.getpid()}.log"


# --------------------------------------------------------------------------- writing
#: Host name as a file-name-safe token (temporary and log names carry it).
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0]) or "host"
#: Temporary files: ``.<final name>.tmp-<host>-<pid>-<random><extension>`` (hidden, so
#: BIDS tools skip them; never listed in the manifest).
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[^.]*(?:\..*)?$")


def is_temp(path: Path) -> bool:
    """Whether ``path`` is a temporary file of :func:`_atomic_write`."""
    return _TEMP.match(Path(path).name) is not None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_temps(folder: Path, any_process: bool = False) -> list[Path]:
    """Remove leftover temporary files in ``folder`` (not recursive).

    By default only those of processes on this host that no longer run (a killed run);
    with ``any_process`` all of them (for folders that only one process writes).
    """
    removed = []
    if not Path(folder).is_dir():
        return removed
    for path in sorted(Path(folder).iterdir()):
        match = _TEMP.match(path.name)
        if match is None or not path.is_file():
            continue
        if any_process or (match["host"] == _HOST and int(match["pid"]) != os.getpid()
                           and not _pid_alive(int(match["pid"]))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _atomic_write(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``; clean up on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{_HOST}-{os.getpid()}-",
                               suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _fsync(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fsync(path: str) -> None:
    """Flush a file's data to disk before it is renamed into place (a rename that
    reaches the disk before the data would leave an empty file after a power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` atomically."""
    return _atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: dict) -> Path:
    """Write JSON (sorted keys, indented, final newline) atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=json_default)
                      + "\n")


def json_default(value):
    """``json.dumps`` default for paths and numpy scalars and arrays."""
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
            # Python's % on lists: 2.6x faster than np.char.mod, the same text
            fmt = float_format.__mod__
            rows = ["\t".join([fmt(v) if v == v else "n/a" for v in row])
                    for row in np.asarray(matrix, dtype=float).tolist()]
            if row_names:
                rows = [f"{name}\t{row}" for name, row in zip(row_names[1], rows,
                                                               strict=True)]
            fh.write("\n".join(rows))
            fh.write("\n")
    return _atomic_write(path, write)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays as an uncompressed ``.npz`` atomically and reproducibly.

    ``numpy.savez`` stamps every member with the current time; members are written
    here with a fixed timestamp so that the same arrays give the same bytes.
    """
    import zipfile

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(arrays[name]),
                                              allow_pickle=False)
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


def check_output_dir(output_dir: Path) -> None:
    """Fail early when OUTPUT_DIR cannot be written or holds another pipeline's dataset.

    Nothing is created: an existing folder is probed with a temporary file that is removed
    at once; for a new folder, its nearest existing parent must be writable.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"{output_dir}: OUTPUT_DIR exists and is not a folder")
    if output_dir.is_dir():
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=output_dir)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise UserError(f"{output_dir}: OUTPUT_DIR is not writable ({exc.strerror})"
                            ) from None
        description = output_dir / "dataset_description.json"
        if description.is_file():
            try:
                names = [str(g.get("Name", "")) for g in
                         json.loads(description.read_text()).get("GeneratedBy", [])]
            except (ValueError, AttributeError, TypeError):
                names = ["?"]
            if "bids_parcellate" not in names:
                raise UserError(f"{description}: OUTPUT_DIR holds another dataset "
                                f"(GeneratedBy {', '.join(names) or 'nothing'}); choose an "
                                "empty folder or a previous bids_parcellate output")
        return
    parent = output_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{output_dir}: cannot create OUTPUT_DIR ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{output_dir}: cannot create OUTPUT_DIR ({parent} is not writable)")


def prepare_output_dir(output_dir: Path, source_dirs: list[Path]) -> None:
    """Create OUTPUT_DIR with ``dataset_description.json``, ``.bidsignore`` and README.

    They are rewritten atomically with identical content by every concurrent process
    (array jobs), so a reader always sees one complete copy.
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{output_dir}: cannot create OUTPUT_DIR ({exc.strerror})") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise UserError(f"{output_dir}: OUTPUT_DIR is not writable")
    remove_temps(output_dir)
    write_json(output_dir / "dataset_description.json", dataset_description(source_dirs))
    write_text(output_dir / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")
    write_text(output_dir / "README.md", README_TEXT)


README_TEXT = """# bids_parcellate derivatives

Data-driven brain parcellations learned from fMRIPrep outputs by bids_parcellate.

- `sub-<label>/anat/*_seg-<method>_scale-<n>_dseg.nii.gz` (+ `.tsv`, `.json`): one
  parcellation per participant (and session) and scale; labels 1..n, 0 is background.
- `sub-<label>/func/*_stat-mean_timeseries.tsv` (+ `.json`): parcel mean timeseries per
  run and scale; one row per BOLD volume, censored volumes are `n/a`.
- `sub-<label>/anat/*_seg-<method>_scale-<n>_quality.tsv` (+ `.json`): quality figures of
  each parcellation (accuracy, split-half reproducibility, homogeneity against a null,
  parcel shape); `group_quality.tsv` (+ `.json`) gathers them for all participants.
- `sub-<label>/anat/*_seg-<dictlearning|canica>_scale-<K>_probseg.nii.gz` (+ `.json`):
  the K network maps the regions of the dseg of the same scale were extracted from.
- `sub-<label>/func/*_meas-<measure>_relmat.tsv` (+ `.json`): connectivity matrices
  between parcels per run and scale (`--connectivity`).
- `sub-<label>/func/*_desc-summary_features.npz` (+ `.json`): the unit's compact
  summary read by the group level (BIDS-ignored).
- `atlas-<label>_description.json` and `tpl-<space>/*_atlas-<label>_scale-<n>_dseg.*`:
  the group parcellation (group level), as a BIDS atlas; the parcel timeseries of every
  run on it are `sub-<label>/func/*_atlas-<label>_scale-<n>_stat-mean_timeseries.tsv`.
- `group_atlas-<label>_agreement.tsv` (+ `.json`): agreement (ARI, NMI) of each
  participant's own parcellation with the group one.
- `tpl-<space>/*_atlas-<label>_scale-<K>_probseg.nii.gz`: the group network maps
  (dictlearning, canica); `group_atlas-<label>_scale-<n>_meas-<measure>_relmat.tsv`: group
  mean connectomes (`--connectivity`).
- `sub-<label>.html`, `group.html`: HTML reports; `sub-<label>/figures/`: their figures
  and data.
- `logs/`: log files of every invocation; `logs/CITATION.md` (`.html`, `.bib`): methods
  text of the last run, with references.

Every file is described in the bids_parcellate documentation (docs/outputs.md).
"""


# --------------------------------------------------------------------------- units
def remove_unit_outputs(output_dir: Path, subject: str, session: str | None,
                        listed: list[str] = ()) -> list[Path]:
    """Remove a unit's outputs before it is recomputed; return what was removed.

    Removes, in this order, the completion marker (so that nothing looks complete while
    files change), the files ``listed`` in an earlier marker (relative paths), every file
    in the unit's folders whose name starts with the unit's prefix, and temporary files.
    Other sessions' folders are left alone.
    """
    output_dir = Path(output_dir)
    marker = completion_marker(output_dir, subject, session)
    removed = []
    if marker.is_file():
        marker.unlink()
        removed.append(marker)
    root = output_dir.resolve()
    for rel in listed:
        path = (output_dir / rel)
        # only inside OUTPUT_DIR, whatever a (possibly edited) marker says
        if root in path.resolve().parents and path.is_file():
            path.unlink()
            removed.append(path)
    folder = unit_dir(output_dir, subject, session)
    prefix = unit_prefix(subject, session) + "_"
    if folder.is_dir():
        for sub in [folder, *sorted(p for p in folder.iterdir()
                                    if p.is_dir() and not p.name.startswith("ses-"))]:
            removed += remove_temps(sub, any_process=True)
            for path in sorted(sub.iterdir()):
                if path.is_file() and path.name.startswith(prefix):
                    path.unlink()
                    removed.append(path)
    return removed


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_report_file(rel: str | Path) -> bool:
    """Whether a path relative to OUTPUT_DIR is a report (``*.html`` at the root) or a
    report figure or record (``sub-<label>/figures/``). Reports show wall times and when
    they were made, so unlike the data outputs they differ between identical runs."""
    parts = Path(rel).parts
    return (len(parts) == 1 and parts[0].endswith(".html")) or (
        len(parts) >= 3 and parts[0].startswith("sub-") and parts[1] == "figures")


def list_outputs(output_dir: Path) -> list[Path]:
    """Every data output under OUTPUT_DIR (sorted), without ``logs/``, temporary files
    and reports (:func:`is_report_file`)."""
    output_dir = Path(output_dir)
    found = []
    for folder, dirs, files in os.walk(output_dir):
        rel = Path(folder).relative_to(output_dir)
        if rel.parts[:1] == (LOGS_DIR,):
            dirs[:] = []
            continue
        dirs.sort()
        found += [Path(folder) / f for f in files
                  if not _TEMP.match(f) and not is_report_file(rel / f)]
    return sorted(found, key=lambda p: p.relative_to(output_dir).as_posix())


def write_manifest(output_dir: Path) -> Path:
    """Write ``logs/manifest.tsv`` (path, sha256, size of every output, sorted by path).

    Built from the files present, under an exclusive lock, so that concurrent processes
    (array jobs) serialise: the last one to finish lists every file.
    """
    output_dir = Path(output_dir)
    path = manifest_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".manifest.lock", "a") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. a file system without locks: still atomic
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        rows = []
        for file in list_outputs(output_dir):
            try:
                rows.append([file.relative_to(output_dir).as_posix(), sha256_file(file),
                             file.stat().st_size])
            except FileNotFoundError:  # removed meanwhile by a concurrent rerun
                continue
        return write_tsv(path, ["path", "sha256", "size"], rows)


# --------------------------------------------------------------------------- reports
def participant_report_path(output_dir: Path, subject: str) -> Path:
    """``OUTPUT_DIR/sub-<label>.html`` (fMRIPrep's convention)."""
    return Path(output_dir) / build_name("participant_report",
                                         {"subject": subject, "extension": ".html"})


def group_report_path(output_dir: Path) -> Path:
    """``OUTPUT_DIR/group.html``."""
    return Path(output_dir) / "group.html"


def citation_paths(output_dir: Path) -> dict[str, Path]:
    """``OUTPUT_DIR/logs/CITATION.{md,html,bib}``: the methods text of the last run."""
    logs = Path(output_dir) / "logs"
    return {ext: logs / f"CITATION.{ext}" for ext in ("md", "html", "bib")}
