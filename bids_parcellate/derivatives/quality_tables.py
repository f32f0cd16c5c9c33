"""The quality tables: their columns, their sidecars, the per-unit tables beside each
dseg and the group table gathered from them (figures from :mod:`bids_parcellate.quality`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from bids_parcellate.derivatives import naming, writers
from bids_parcellate.quality import GAP_SECONDS, NULL_DRAWS

LOGGER = logging.getLogger("bids_parcellate")

#: Columns of the quality tables, with their descriptions (JSON sidecars).
COLUMNS: dict[str, str] = {
    "participant_id": "Participant (sub-<label>).",
    "session_id": "Session (ses-<label>), n/a when the runs have no session.",
    "method": "Parcellation method (--method).",
    "bootstrap": "Number of bootstrap resamples of the consensus parcellation "
                 "(--bootstrap); 0 for a plain fit.",
    "scale": "Requested number of parcels.",
    "n_parcels": "Number of parcels found (non-zero labels).",
    "n_unassigned": "Voxels of the brain mask in no parcel (label 0: region-based methods "
                    "and --split-disconnected leave some out; 0 for clustering methods).",
    "n_voxels": "Voxels in the unit's brain mask.",
    "n_volumes": "Kept (uncensored) volumes used, all runs together.",
    "split": "How the data were halved for the held-out figures: 'runs' (runs dealt "
             "alternately to the halves) or 'time' (one run split at its middle, "
             "leaving out a gap of volumes around the split).",
    "n_volumes_half1": "Kept volumes in the first half.",
    "n_volumes_half2": "Kept volumes in the second half.",
    "accuracy": "Compression R² of this parcellation on all the data it was learned "
                "from (in-sample): share of the variance of the standardised cleaned "
                "voxel signal explained by the parcel means.",
    "accuracy_heldout": "Held-out compression R²: a parcellation learned on one half "
                        "scored on the other half, mean of both directions.",
    "ari": "Adjusted Rand index between the parcellations learned on the two halves "
           "(reproducibility; 1 = identical, ~0 = chance).",
    "nmi": "Normalised mutual information between the parcellations learned on the two "
           "halves (reproducibility; 1 = identical).",
    "homogeneity": "Mean Pearson correlation between the voxel timeseries of a parcel "
                   "(all data), averaged over parcels of two or more voxels, weighted "
                   "by parcel size.",
    "homogeneity_null_mean": "Mean homogeneity of random spatially contiguous "
                             "parcellations with the same number of parcels.",
    "homogeneity_null_sd": "Standard deviation of the null homogeneity.",
    "homogeneity_z": "(homogeneity - null mean) / null standard deviation.",
    "size_min": "Voxels in the smallest parcel.",
    "size_median": "Median parcel size (voxels).",
    "size_max": "Voxels in the largest parcel.",
    "size_gini": "Gini coefficient of the parcel sizes (0 = all equal, towards 1 = "
                 "a few parcels hold most voxels).",
    "n_fragmented": "Number of parcels made of more than one 6-connected piece.",
}

#: Method notes written into every quality JSON.
METHOD_NOTES = {
    "Reference": "Thirion B, Varoquaux G, Dohmatob E, Poline JB (2014). Which fMRI "
                 "clustering gives good brain parcellations? Front. Neurosci. 8:167. "
                 "doi:10.3389/fnins.2014.00167",
    "Data": "Cleaned voxel timeseries (confounds regressed, censored volumes dropped, "
            "not smoothed), standardised per voxel within each run or half run.",
    "Accuracy": "R² = sum over parcels of n_p * |mean signal of p|² divided by the "
                "total sum of squares: the variance kept when each voxel is replaced "
                "by its parcel mean.",
    "Halves": "Two or more runs: runs dealt alternately to two halves (1, 3, ... / "
              "2, 4, ...). One run: kept volumes split at the middle, volumes within "
              f"{GAP_SECONDS / 2:g} s of the split point left out of both halves "
              "(autocorrelation of the BOLD signal). Each half is parcellated with the "
              "same method, parameters and seed as the unit. Confound regression was "
              "fitted on whole runs. Reproducibility and held-out accuracy describe "
              "parcellations learned from half of the data, so they are lower than "
              "those of the full-data parcellation would be.",
    "Homogeneity": "Mean pairwise correlation within each parcel (singletons left out), "
                   "averaged over parcels weighted by size (Schaefer et al. 2018, "
                   "Cereb. Cortex 28:3095).",
    "HomogeneityNull": f"{NULL_DRAWS} random parcellations per scale: as many seeds as "
                       "parcels drawn uniformly in the mask, every voxel given to the "
                       "seed nearest along the 6-neighbour grid with random edge lengths "
                       "(uniform 0.5-1.5), which makes contiguous parcels with irregular "
                       "borders; seeded by --random-seed.",
    "Fragmented": "Pieces are 6-connected components of a parcel within the brain mask.",
}


def unit_rows(subject: str, session: str | None, method: str, bootstrap: int,
              n_voxels: int, figures: Mapping[int, dict]) -> dict[int, list]:
    """One table row per scale, in the order of :data:`COLUMNS`.

    Parameters
    ----------
    subject : str
    session : str or None
    method : str
    bootstrap : int
        Bootstrap resamples (0 for a plain fit).
    n_voxels : int
        Voxels in the unit's brain mask.
    figures : mapping of int -> dict
        scale -> quality figures by column name; columns without a figure are n/a.

    Returns
    -------
    dict
        scale -> row (list, one cell per column of :data:`COLUMNS`; None for n/a).
    """
    rows = {}
    for scale, values in figures.items():
        record = {"participant_id": f"sub-{subject}",
                  "session_id": f"ses-{session}" if session else None,
                  "method": method, "bootstrap": bootstrap, "scale": scale,
                  "n_voxels": n_voxels, **values}
        # figures not computed (--no-split-half) are n/a
        rows[scale] = [record.get(name) for name in COLUMNS]
    return rows


#: Columns of a unit's table whose value its file name gives (``scale-<n>``): its sidecar
#: leaves them to the entity. BIDS readers such as pybids take every key of a sidecar as
#: metadata of the file, and a ``scale`` key beside a ``scale-`` entity is a conflict
#: (pybids raises ``BIDSConflictingValuesError`` while indexing the folder).
NAMED_COLUMNS = ("scale",)


def sidecar(description: str, extra: Mapping | None = None,
            named: tuple[str, ...] = ()) -> dict:
    """JSON sidecar of a quality table: column descriptions and method notes.

    Parameters
    ----------
    description : str
        The ``Description`` of the table.
    extra : mapping, optional
        Additional keys, added last.
    named : tuple of str
        Columns described by an entity of the table's file name instead
        (:data:`NAMED_COLUMNS` for a unit's table).

    Returns
    -------
    dict
    """
    return {
        "Description": description,
        **{name: {"Description": text} for name, text in COLUMNS.items()
           if name not in named},
        "Methods": {**METHOD_NOTES, "GapSeconds": GAP_SECONDS, "NullDraws": NULL_DRAWS},
        **(extra or {}),
    }


def write_unit_tables(output_dir: Path, entities: Mapping, rows: Mapping[int, list],
                      extra: Mapping[int, Mapping]) -> list[Path]:
    """Write ``<dseg stem>_quality.tsv`` and ``.json`` beside the dseg of every scale.

    Parameters
    ----------
    output_dir : Path
    entities : mapping
        ``subject``, ``session``, ``space``, ``res``, ``seg`` of the unit's dsegs.
    rows : mapping
        scale -> row (see :func:`unit_rows`).
    extra : mapping
        scale -> additional sidecar keys (parcellation path, parameters...).

    Returns
    -------
    list of Path
        The files written.
    """
    written = []
    for scale, row in sorted(rows.items()):
        ents = {**entities, "scale": scale, "suffix": "quality"}
        written.append(writers.write_tsv(
            output_dir / naming.build_name("quality", {**ents, "extension": ".tsv"}),
            list(COLUMNS), [row]))
        written.append(writers.write_json(
            output_dir / naming.build_name("quality", {**ents, "extension": ".json"}),
            sidecar("Quality figures of one parcellation (one row); see Methods. The "
                    "scale column is the file name's scale- entity (requested number of "
                    "parcels).", extra.get(scale), named=NAMED_COLUMNS)))
    return written


def _unit_tables(output_dir: Path) -> list[Path]:
    return sorted(p for p in output_dir.glob("sub-*/**/*_quality.tsv") if p.is_file())


def _signature(paths: list[Path]) -> list[tuple]:
    out = []
    for path in paths:
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        out.append((str(path), stat.st_mtime_ns, stat.st_size))
    return out


def _read_rows(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        cells = dict(zip(header, line.split("\t"), strict=False))
        rows.append([cells.get(name, "n/a") for name in COLUMNS])
    return rows


def update_group_table(output_dir: Path, attempts: int = 5) -> Path | None:
    """(Re)build ``OUTPUT_DIR/group_quality.tsv`` from every participant's quality tables.

    The table is rebuilt from the per-unit files rather than appended to, so concurrent
    processes (array jobs) never lose rows: each writes its unit tables first, then
    rebuilds the group table atomically and checks that the set of unit tables did not
    change meanwhile (rebuilding again when it did). The last process to finish therefore
    leaves a table that holds every unit written before it.

    Parameters
    ----------
    output_dir : Path
    attempts : int
        Rebuilds before giving up (with a warning) while the unit tables keep changing.

    Returns
    -------
    Path or None
        The group table, or ``None`` when there are no unit tables.
    """
    tsv = output_dir / naming.build_name("group_quality",
                                          {"suffix": "quality", "extension": ".tsv"})
    for _ in range(attempts):
        before = _signature(_unit_tables(output_dir))
        if not before:
            return None
        rows = []
        for path, _, _ in before:
            try:
                rows.extend(_read_rows(Path(path)))
            except FileNotFoundError:  # replaced meanwhile: the next round reads it
                continue
        writers.write_text(tsv, writers.format_tsv(list(COLUMNS), rows))
        writers.write_json(tsv.with_suffix(".json"), sidecar(
            "Quality figures of every participant's parcellations, one row per "
            "participant (and session), method and scale; gathered from the "
            "sub-*/anat/*_quality.tsv files."))
        if _signature(_unit_tables(output_dir)) == before:
            return tsv
    LOGGER.warning("%s: participant quality tables kept changing; the group table may "
                   "miss the latest ones (rerun to refresh it)", tsv)
    return tsv
