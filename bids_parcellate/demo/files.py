"""The BIDS files of a demo dataset: descriptions, ground truth, anatomy and runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_parcellate.demo.grid import Geometry
from bids_parcellate.demo.settings import DemoSettings
from bids_parcellate.demo.simulate import RunData
from bids_parcellate.demo.truth import GroundTruth
from bids_parcellate.demo.writers import (
    spatial_image,
    write_bold,
    write_json,
    write_tsv,
)

_FMRIPREP_DESCRIPTION = {
    "Name": "fMRIPrep - demo",
    "BIDSVersion": "1.9.0",
    "DatasetType": "derivative",
    "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}],
}
_RAW_DESCRIPTION = {
    "Name": "bids_parcellate demo dataset",
    "BIDSVersion": "1.9.0",
    "DatasetType": "raw",
    "License": "CC0",
    "Authors": ["bids_parcellate.demo"],
}
_README = (
    "Synthetic dataset written by bids_parcellate.demo.\n\n"
    "Only the BOLD sidecars are present in the raw part; the "
    "preprocessed data are in derivatives/fmriprep and the "
    "ground-truth parcellation in sourcedata/ground_truth.\n"
)


@dataclass(frozen=True)
class DatasetPaths:
    """Where the files of a dataset go.

    Attributes
    ----------
    root : pathlib.Path
        Root of the dataset.
    fmriprep_dir : pathlib.Path
        Root of the fMRIPrep-like derivatives.
    raw : bool
        Whether ``root`` is a raw dataset (``layout="raw+derivatives"``).
    space_ent : str
        ``_space-<space>[_res-<res>]``.
    """

    root: Path
    fmriprep_dir: Path
    raw: bool
    space_ent: str

    @classmethod
    def for_settings(cls, root: Path, settings: DemoSettings) -> DatasetPaths:
        """Paths of a dataset written at ``root`` with ``settings``.

        Parameters
        ----------
        root : pathlib.Path
            Root of the dataset.
        settings : DemoSettings
            ``layout``, ``space`` and ``res_label`` are used.

        Returns
        -------
        DatasetPaths
            The paths.
        """
        raw = settings.layout == "raw+derivatives"
        res = settings.res_label
        return cls(
            root=root,
            fmriprep_dir=root / "derivatives" / "fmriprep" if raw else root,
            raw=raw,
            space_ent=f"_space-{settings.space}" + (f"_res-{res}" if res is not None else ""),
        )

    @property
    def truth_dir(self) -> Path:
        """``root/sourcedata/ground_truth``."""
        return self.root / "sourcedata" / "ground_truth"


def write_descriptions(paths: DatasetPaths, participants: list[str]) -> None:
    """Write ``dataset_description.json`` files, and the raw ``participants.tsv`` and README.

    Parameters
    ----------
    paths : DatasetPaths
        Paths of the dataset.
    participants : list of str
        Participant labels.
    """
    write_json(paths.fmriprep_dir / "dataset_description.json", _FMRIPREP_DESCRIPTION)
    if not paths.raw:
        return
    write_json(paths.root / "dataset_description.json", _RAW_DESCRIPTION)
    (paths.root / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{s}\n" for s in participants), encoding="utf-8"
    )
    (paths.root / "README").write_text(_README, encoding="utf-8")


def write_ground_truth(
    paths: DatasetPaths, truth: GroundTruth, parameters: dict[str, Any]
) -> None:
    """Write the truth images, the look-up table and the generation parameters.

    Parameters
    ----------
    paths : DatasetPaths
        Paths of the dataset.
    truth : GroundTruth
        The shared and the participants' truth.
    parameters : dict
        Contents of ``demo_parameters.json``.
    """
    gt_dir = paths.truth_dir
    gt_dir.mkdir(parents=True, exist_ok=True)
    truth.labels_img.to_filename(gt_dir / f"{paths.space_ent[1:]}_desc-truth_dseg.nii.gz")
    (gt_dir / "desc-truth_dseg.tsv").write_text(
        "index\tname\n"
        + "".join(f"{i}\tparcel{i:03d}\n" for i in range(1, truth.n_parcels + 1)),
        encoding="utf-8",
    )
    write_json(gt_dir / "demo_parameters.json", parameters)
    for sub, img in truth.participant_imgs.items():
        img.to_filename(gt_dir / f"sub-{sub}{paths.space_ent}_desc-truth_dseg.nii.gz")


def write_anat(paths: DatasetPaths, sub: str, geometry: Geometry, space: str) -> None:
    """Write the participant's ``desc-preproc_T1w`` (the brain mask as float32).

    Parameters
    ----------
    paths : DatasetPaths
        Paths of the dataset.
    sub : str
        Participant label.
    geometry : Geometry
        The grid.
    space : str
        Template space.
    """
    anat = paths.fmriprep_dir / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-preproc_T1w.nii.gz"
    anat.parent.mkdir(parents=True, exist_ok=True)
    spatial_image(geometry.mask.astype(np.float32), geometry.affine, space).to_filename(anat)


def run_source(sub: str, ses: str | None, task: str, run: str | None) -> tuple[str, Path]:
    """File-name prefix of a run and its directory relative to the dataset root.

    Parameters
    ----------
    sub, ses, task, run : str or None
        Entity labels (``None``: entity absent).

    Returns
    -------
    source : str
        ``sub-<sub>[_ses-<ses>]_task-<task>[_run-<run>]``.
    rel : pathlib.Path
        ``sub-<sub>[/ses-<ses>]/func``.
    """
    source = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + f"_task-{task}"
    source += f"_run-{run}" if run is not None else ""
    rel = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "") / "func"
    return source, rel


def write_run(
    paths: DatasetPaths, settings: DemoSettings, geometry: Geometry,
    entities: tuple[str, str | None, str, str | None], data: RunData,
) -> None:
    """Write the files of one run: BOLD, sidecars, mask, reference and confounds.

    Parameters
    ----------
    paths : DatasetPaths
        Paths of the dataset.
    settings : DemoSettings
        ``tr``, ``space``, ``dtype`` and ``confounds_name`` are used.
    geometry : Geometry
        The grid.
    entities : tuple
        ``(sub, ses, task, run)`` labels (``ses`` and ``run`` may be ``None``).
    data : RunData
        The run, from :func:`bids_parcellate.demo.simulate.simulate_run`.
    """
    task = entities[2]
    source, rel = run_source(*entities)
    func_dir = paths.fmriprep_dir / rel
    func_dir.mkdir(parents=True, exist_ok=True)
    stem = func_dir / f"{source}{paths.space_ent}"
    _write_images(stem, settings, geometry, data.brain, data.scalp)
    tr = settings.tr
    write_json(
        Path(f"{stem}_desc-preproc_bold.json"),
        {"RepetitionTime": tr, "SkullStripped": False, "TaskName": task},
    )
    write_json(Path(f"{stem}_desc-brain_mask.json"), {"Type": "Brain"})
    conf_suffix = f"desc-confounds_{settings.confounds_name}"
    write_tsv(func_dir / f"{source}_{conf_suffix}.tsv", data.confounds)
    write_json(func_dir / f"{source}_{conf_suffix}.json", data.meta)
    if paths.raw:
        write_json(
            paths.root / rel / f"{source}_bold.json", {"RepetitionTime": tr, "TaskName": task}
        )


def _write_images(
    stem: Path, settings: DemoSettings, geometry: Geometry, brain: np.ndarray,
    scalp: np.ndarray,
) -> None:
    """Write the preprocessed BOLD series, its brain mask and its reference image."""
    space, affine, mask = settings.space, geometry.affine, geometry.mask
    write_bold(
        Path(f"{stem}_desc-preproc_bold.nii.gz"), mask.shape,
        [(geometry.order_f, brain), (geometry.shell_f, scalp)], affine, space,
        settings.tr, settings.dtype,
    )
    boldref = np.zeros(mask.shape, dtype=np.float32)
    boldref[geometry.mask_idx] = brain.mean(axis=0, dtype=np.float64)
    boldref[geometry.shell_idx] = scalp.mean(axis=0, dtype=np.float64)
    spatial_image(mask, affine, space, dtype=np.uint8).to_filename(
        f"{stem}_desc-brain_mask.nii.gz"
    )
    spatial_image(boldref, affine, space).to_filename(f"{stem}_boldref.nii.gz")
