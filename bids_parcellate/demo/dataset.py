"""The dataset driver: :func:`make_demo_dataset` and its result :class:`DemoTruth`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib

from bids_parcellate.demo.files import (
    DatasetPaths,
    write_anat,
    write_descriptions,
    write_ground_truth,
    write_run,
)
from bids_parcellate.demo.grid import Geometry, make_geometry
from bids_parcellate.demo.model import TAG_RUN, TAG_SUBJECT, stream_key, stream_rng
from bids_parcellate.demo.settings import DemoSettings
from bids_parcellate.demo.simulate import make_subject_maps, simulate_run
from bids_parcellate.demo.truth import GroundTruth, make_ground_truth


@dataclass(frozen=True)
class DemoTruth:
    """Ground truth of a dataset written by :func:`make_demo_dataset`.

    Attributes
    ----------
    root : pathlib.Path
        Root of the dataset that was written.
    fmriprep_dir : pathlib.Path
        Root of the fMRIPrep-like derivatives (``root / "derivatives" /
        "fmriprep"`` for ``layout="raw+derivatives"``, ``root`` for
        ``layout="derivatives"``).
    mask_img : nibabel.Nifti1Image
        Brain mask (``uint8``) on the grid of the BOLD series.
    labels_img : nibabel.Nifti1Image
        Shared ground-truth parcellation (``int16``), labels
        ``1..n_true_parcels`` inside the mask and 0 outside.
    participant_labels : dict of str to nibabel.Nifti1Image
        Ground truth used to generate each participant's data, keyed by
        participant label (without ``sub-``).  With ``jitter == 0`` every
        value is ``labels_img`` itself.
    """

    root: Path
    fmriprep_dir: Path
    mask_img: nib.Nifti1Image
    labels_img: nib.Nifti1Image
    participant_labels: dict[str, nib.Nifti1Image]


def make_demo_dataset(
    root: str | Path,
    *,
    participants: Sequence[str] = ("01", "02"),
    sessions: Sequence[str] | None = None,
    tasks: Sequence[str] = ("rest",),
    runs: Sequence[int | str] | None = (1, 2),
    n_volumes: int = 100,
    resolution: int = 4,
    n_true_parcels: int = 20,
    tr: float = 2.0,
    seed: int = 0,
    jitter: float = 0.0,
    layout: str = "raw+derivatives",
    space: str = "MNI152NLin2009cAsym",
    res_label: str | int | None = None,
    n_nonsteady: int = 2,
    n_spikes: int = 3,
    snr: float = 0.4,
    dtype: str = "float32",
    confounds_name: str = "timeseries",
) -> DemoTruth:
    """Write a small fMRIPrep-like dataset generated from a known parcellation.

    Parameters
    ----------
    root : str or pathlib.Path
        Directory to write (created if needed; existing files are overwritten).
    participants : sequence of str, default=("01", "02")
        Participant labels (an optional ``sub-`` prefix is stripped).
    sessions : sequence of str or None, default=None
        Session labels, or ``None`` for no ``ses-`` entity.
    tasks : sequence of str, default=("rest",)
        Task labels.
    runs : sequence of int or str, or None, default=(1, 2)
        Run labels (written as given: ``1`` gives ``run-1``), or ``None`` for
        no ``run-`` entity.  Every participant x session x task x run is
        written.
    n_volumes : int, default=100
        Number of volumes per run.
    resolution : int, default=4
        Voxel size in mm of the MNI152 grid (see
        :func:`nilearn.datasets.load_mni152_brain_mask`): 4 gives a 50 x 59 x
        48 grid with 29398 brain voxels, 8 gives 3666 and 2 gives 235375.
    n_true_parcels : int, default=20
        Number of ground-truth parcels.
    tr : float, default=2.0
        Repetition time in seconds.
    seed : int, default=0
        Seed of every random draw.
    jitter : float, default=0.0
        Fraction in ``[0, 1)`` of the boundary voxels moved to a neighbouring
        parcel in each participant's own truth (0: all participants share the
        truth).
    layout : {"raw+derivatives", "derivatives"}, default="raw+derivatives"
        ``"raw+derivatives"``: ``root`` is a raw BIDS dataset (sidecars only,
        no raw images) with the fMRIPrep outputs in
        ``root/derivatives/fmriprep``.  ``"derivatives"``: ``root`` is the
        fMRIPrep dataset.
    space : str, default="MNI152NLin2009cAsym"
        Value of the ``space-`` entity.
    res_label : str or int or None, default=None
        Value of the ``res-`` entity, or ``None`` to leave it out.
    n_nonsteady : int, default=2
        Number of initial non-steady-state (bright) volumes.
    n_spikes : int, default=3
        Number of motion spikes per run (FD > 0.5 mm and an intensity spike).
    snr : float, default=0.4
        Ratio of the standard deviation of the parcel signal to that of the
        voxel noise.  The default makes the truth clearly but not perfectly
        recoverable (see Notes); 1.0 makes Ward's recovery nearly perfect.
    dtype : {"float32", "int16"}, default="float32"
        On-disk data type of the BOLD series (``int16`` uses ``scl_slope``).
    confounds_name : {"timeseries", "regressors"}, default="timeseries"
        Suffix of the confounds files (``regressors`` is the name used by
        fMRIPrep before 20.2).

    Returns
    -------
    DemoTruth
        Paths and ground-truth images.

    Notes
    -----
    With the defaults, Ward clustering (grid connectivity, 20 clusters) of
    the runs of a participant, cleaned with nilearn's ``"simple"`` confound
    strategy, smoothed (4 mm) and z-scored, recovers the truth with an
    adjusted Rand index of about 0.9 at ``resolution=8`` and about 0.95 at
    ``resolution=4`` (about 0.45 without confound regression).

    The truth is also written to ``root/sourcedata/ground_truth``
    (``space-<space>[_res-<res>]_desc-truth_dseg.nii.gz``, one
    ``sub-<label>_space-...`` file per participant, a ``desc-truth_dseg.tsv``
    look-up table and the generation parameters in ``demo_parameters.json``);
    pybids ignores ``sourcedata``.

    The confounds files follow fMRIPrep 23: anatomical CompCor components are
    ``a_comp_cor_XX`` (combined mask), ``c_comp_cor_XX`` (CSF) and
    ``w_comp_cor_XX`` (white matter), all listed in the JSON sidecar with
    ``"Retained": true`` (only the written components are listed, because
    nilearn does not read ``Retained``).
    """
    settings = DemoSettings.checked(
        participants=participants, sessions=sessions, tasks=tasks, runs=runs,
        n_volumes=n_volumes, resolution=resolution, n_true_parcels=n_true_parcels, tr=tr,
        seed=seed, jitter=jitter, layout=layout, space=space, res_label=res_label,
        n_nonsteady=n_nonsteady, n_spikes=n_spikes, snr=snr, dtype=dtype,
        confounds_name=confounds_name,
    )
    paths = DatasetPaths.for_settings(Path(root), settings)
    geometry = make_geometry(settings.resolution)
    truth = make_ground_truth(geometry, settings)
    write_descriptions(paths, settings.participants)
    write_ground_truth(paths, truth, settings.parameters(truth.n_parcels))
    for sub in settings.participants:
        _write_participant(paths, settings, geometry, truth, sub)
    return DemoTruth(
        root=paths.root,
        fmriprep_dir=paths.fmriprep_dir,
        mask_img=truth.mask_img,
        labels_img=truth.labels_img,
        participant_labels=truth.participant_imgs,
    )


def _write_participant(
    paths: DatasetPaths, settings: DemoSettings, geometry: Geometry, truth: GroundTruth,
    sub: str,
) -> None:
    """Write the anatomy and every run (session x task x run) of one participant."""
    seed = settings.seed
    subject = make_subject_maps(
        stream_rng(seed, TAG_SUBJECT, stream_key(sub)), geometry,
        truth.participant_labels[sub], truth.n_parcels,
    )
    write_anat(paths, sub, geometry, settings.space)
    sessions: list[str | None] = list(settings.sessions or [None])
    runs: list[str | None] = list(settings.runs or [None])
    for ses, task, run in itertools.product(sessions, settings.tasks, runs):
        rng = stream_rng(
            seed, TAG_RUN, stream_key(sub), stream_key(ses or ""), stream_key(task),
            stream_key(run or ""),
        )
        data = simulate_run(
            rng, geometry=geometry, subject=subject, n_parcels=truth.n_parcels,
            n_t=settings.n_volumes, tr=settings.tr, n_nonsteady=settings.n_nonsteady,
            n_spikes=settings.n_spikes, snr=settings.snr,
        )
        write_run(paths, settings, geometry, (sub, ses, task, run), data)
