"""The derivatives dataset as a whole: ``dataset_description.json``, README,
``.bidsignore``, the output folder's checks, a unit's outputs removed, the manifest."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

from bids_parcellate import __version__
from bids_parcellate.config import UserError
from bids_parcellate.derivatives.naming import (
    LOGS_DIR,
    completion_marker,
    is_report_file,
    manifest_path,
    unit_dir,
    unit_prefix,
)
from bids_parcellate.derivatives.writers import (
    is_temp,
    remove_temps,
    sha256_file,
    write_json,
    write_text,
    write_tsv,
)

CODE_URL = "https://github.com/bids-parcellate/bids_parcellate"
BIDS_VERSION = "1.11.0"
#: Files the BIDS schema does not know yet (BEP012 timeseries, BEP017 connectivity
#: matrices, our summaries, reports).
BIDSIGNORE = (
    "*_timeseries.tsv",
    "*_timeseries.json",
    "*_quality.tsv",
    "*_quality.json",
    "*_boldmap.nii.gz",
    "*_boldmap.json",
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


def _dataset_links(source_dirs: list[Path]) -> dict[str, Path]:
    """``DatasetLinks`` keys (the folder name's letters and digits) -> resolved folders."""
    links: dict[str, Path] = {}
    for path in source_dirs:
        key = "".join(ch for ch in Path(path).resolve().name if ch.isalnum()) or "source"
        while key in links:
            key += "x"
        links[key] = Path(path).resolve()
    return links


def dataset_description(source_dirs: list[Path]) -> dict:
    """``dataset_description.json`` content for the output dataset."""
    generated = {"Name": "bids_parcellate", "Version": __version__, "CodeURL": CODE_URL}
    container = in_container()
    if container:
        generated["Container"] = container
    links = {key: root.as_uri() for key, root in _dataset_links(source_dirs).items()}
    return {
        "Name": "bids_parcellate: data-driven parcellations",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [{"URL": uri} for uri in links.values()],
        "DatasetLinks": links,
    }


def bids_uri(path: Path, source_dirs: list[Path]) -> str:
    """BIDS URI (``bids:<link>:<relative path>``) of an input file.

    Parameters
    ----------
    path : Path
        An input file.
    source_dirs : list of Path
        The input datasets (the ``DatasetLinks`` of :func:`dataset_description`).

    Returns
    -------
    str
        The BIDS URI, or a ``file://`` URI when ``path`` is in no source dataset.
    """
    path = Path(path).resolve()
    for key, root in _dataset_links(source_dirs).items():
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

    Parameters
    ----------
    output_dir : Path
    source_dirs : list of Path
        The input datasets (``SourceDatasets`` and ``DatasetLinks``).

    Raises
    ------
    UserError
        When OUTPUT_DIR cannot be created or written.
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

    Parameters
    ----------
    output_dir : Path
    subject : str
    session : str or None
    listed : sequence of str
        Paths relative to ``output_dir`` (an earlier marker's files); those outside it
        are left alone.

    Returns
    -------
    list of Path
        The files removed.
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
                  if not is_temp(Path(f)) and not is_report_file(rel / f)]
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


