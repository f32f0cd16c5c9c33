"""What each level produced: the records the pipeline hands to the writers, the reports
and the summary (:class:`UnitResult` per participant unit, no data arrays: one is kept
for every unit of an invocation; :class:`GroupResult` and :class:`GroupMask` for the
group level)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bids_parcellate.denoise import CleanRun
from bids_parcellate.derivatives import naming
from bids_parcellate.inputs.query import Run, Skipped


@dataclass(frozen=True)
class RunSummary:
    """What denoising did to one run (no data arrays: results are kept for every unit)."""

    run: Run
    n_volumes: int
    sample_mask: np.ndarray
    confounds: list[str]
    framewise_displacement: np.ndarray | None

    @classmethod
    def of(cls, clean: CleanRun) -> RunSummary:
        """The summary of a cleaned run (its arrays of volumes, not its data)."""
        return cls(clean.run, clean.n_volumes, clean.sample_mask, clean.confounds,
                   clean.framewise_displacement)

    @property
    def censored(self) -> list[int]:
        """Indices of the volumes left out (not in ``sample_mask``), in order."""
        return sorted(set(range(self.n_volumes)) - set(self.sample_mask.tolist()))


@dataclass
class UnitResult:
    """What happened to one unit (for the summary, reports and provenance)."""

    subject: str
    session: str | None
    runs: list[RunSummary] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    n_voxels: int = 0
    #: True when the unit was complete from an earlier run and was not recomputed.
    reused: bool = False
    #: The unit's report record (see :mod:`bids_parcellate.report.record`) and the
    #: report files (figures, record): not data outputs, so not in ``files`` (the
    #: completion marker and the manifest list data outputs, which are deterministic).
    report: dict | None = None
    report_files: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``sub-<label>[_ses-<label>]``, the unit's file name prefix."""
        return naming.unit_prefix(self.subject, self.session)

    @property
    def missing_inputs(self) -> list[Skipped]:
        """Runs skipped because a required file was missing or unreadable."""
        return [s for s in self.skipped if s.missing_input]


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
    #: Set when the atlas is learned from fewer than 3 participants (see
    #: :func:`bids_parcellate.group.checks.small_group_caution`).
    caution: str | None = None
    #: What cleaning did to each run reduced to timeseries on the atlas (the methods text).
    runs: list[RunSummary] = field(default_factory=list)


@dataclass
class GroupMask:
    """The group mask and what it cost (voxels of the union lost to the intersection)."""

    mask: np.ndarray
    affine: np.ndarray
    n_union: int
    voxels_missing: dict[str, int]  # unit -> voxels of the union outside its mask

    @property
    def n_voxels(self) -> int:
        """Voxels in the group mask."""
        return int(self.mask.sum())

    @property
    def n_lost(self) -> int:
        """Voxels of the union of the participants' masks outside the group mask."""
        return self.n_union - self.n_voxels

    def describe(self) -> dict:
        """The mask's description for the atlas sidecar: rule, voxels kept, in the union
        and lost, and the voxels of the union missing from each participant's mask (most
        missing first)."""
        worst = sorted(self.voxels_missing.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "Rule": "intersection of the participants' brain masks",
            "NumberOfVoxels": self.n_voxels,
            "VoxelsInUnion": self.n_union,
            "VoxelsLost": self.n_lost,
            "VoxelsMissingPerParticipant": dict(worst),
        }
