"""Synthetic fMRIPrep-like datasets with a known ground-truth parcellation.

This module writes small but realistic BIDS datasets that look like the
output of fMRIPrep (preprocessed BOLD series in a template space, brain masks,
BOLD references and confound tables with their JSON sidecars) and whose
voxel time series are generated from a *known* parcellation.  They are used by
the test suite, by the ``--demo`` quick start and by benchmarks, and they can
be written from the command line::

    python -m bids_parcellate.demo /tmp/demo --participants 01 02 --resolution 4

Generative model
----------------
Every in-mask voxel ``v`` at volume ``t`` of a run is::

    y[t, v] = (1 + nss[t]) * (B[v] + B[v] * (0.01 * A[v] * P[t, parcel(v)]
                                             + (0.01 / snr) * E[t, v]
                                             + sum_k N[t, k] * W[k, v])
                              + spike[t, v])

* ``B`` is a smooth baseline around 1000 and ``A`` a smooth amplitude map
  around 1 (both fixed per participant).
* ``P`` holds one band-limited (0.01-0.1 Hz) unit-variance time course per
  parcel, drawn independently for every run, with a correlation between
  parcels ``i`` and ``j`` of ``exp(-d_ij / 70 mm)`` (``d_ij``: distance
  between their centroids; neighbouring parcels correlate at about 0.5).
* ``E`` is unit-variance Gaussian noise, lightly smoothed in space (Gaussian,
  sigma 0.5 voxel), so ``snr`` is the ratio of the standard deviation of the
  parcel signal to that of the noise (where ``A == 1``).
* ``N`` holds the confound sources: the six rigid-body motion parameters
  written to the confounds file (the *same* series; about 5 % of baseline per
  mm or per 20 mrad, with smooth spatial weights of both signs), a slow
  linear + quadratic scanner drift (2 %), a global band-limited fluctuation
  (1 %) and an aliased respiratory oscillation (0.6 %).  Left in the data
  they mislead clustering (Ward's ARI drops from about 0.9 to about 0.45).
* ``spike`` adds a large (about 10 % of baseline) artefact on ``n_spikes``
  volumes, on which the motion parameters jump, so that the framewise
  displacement (between 0.9 and 1.6 mm, below 0.35 mm elsewhere) and the
  standardised DVARS flag them for scrubbing.
* ``nss`` makes the first ``n_nonsteady`` volumes much brighter
  (+60 %, +30 %, +15 %, ...), the signature fMRIPrep uses to flag
  non-steady-state volumes.

Outside the brain mask (the preprocessed BOLD of fMRIPrep is not
skull-stripped) a shell of 8 mm around the brain holds low-intensity "scalp"
signal (about 200, integer valued) with temporal noise, and the rest of the
field of view is zero.

The confounds table is computed the way fMRIPrep computes it: the motion
parameters and their expansions, framewise displacement (Power), RMSD,
DVARS and standardised DVARS (nipype's algorithm, from the written data),
the global signal (from the written data), CSF / white-matter / combined
mean signals and aCompCor components (from two virtual noise regions of
interest that share the confound sources but carry no neural signal),
tCompCor components (from the 2 % most variable brain voxels), the DCT
high-pass basis (128 s), one-hot non-steady-state columns, and one-hot
``motion_outlier`` columns for volumes with FD > 0.5 mm or standardised
DVARS > 1.5 (fMRIPrep's default thresholds).

Ground truth
------------
The shared truth has ``n_true_parcels`` spatially compact parcels: k-means
on the voxel coordinates of the mask, after which every parcel is made a
single 6-connected component (stray pieces are given to the neighbouring
parcels by region growing).  Labels ``1..K`` are numbered by the first voxel
of each parcel in C order.  With ``jitter > 0`` each participant gets its
own truth: the given fraction of the boundary voxels (voxels with a
6-neighbour in another parcel) is moved to a random neighbouring parcel
(moves out of a parcel that would lose more than half of its voxels are
undone), after which the same repair as above makes every parcel exactly
6-connected again; the repair may move a few more voxels.

Everything is drawn from :class:`numpy.random.Generator` streams seeded from
``seed`` and from the entity labels (not from their position), so a given
run of a given participant is identical whatever the other participants,
and the same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import re
import struct
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["DemoTruth", "make_demo_dataset", "main"]

#: Baseline intensity of brain voxels.
BASELINE = 1000.0
#: Standard deviation of the neural signal, as a fraction of the baseline.
SIGNAL_FRACTION = 0.01
#: Framewise displacement (mm) above which a volume is a motion outlier.
FD_THRESHOLD = 0.5
#: Standardised DVARS above which a volume is a motion outlier.
DVARS_THRESHOLD = 1.5
#: Period (s) of the DCT high-pass basis written as ``cosineXX``.
HIGH_PASS_PERIOD = 128.0
#: Radius (mm) used by fMRIPrep's framewise displacement for rotations.
FD_RADIUS = 50.0

_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
_LAYOUTS = ("raw+derivatives", "derivatives")
_DTYPES = ("float32", "int16")
_CONFOUNDS_NAMES = ("timeseries", "regressors")
_N_ACOMPCOR = 6
_N_CCOMPCOR = 3
_N_WCOMPCOR = 3
_N_TCOMPCOR = 3
_NOISE_SIGMA_VOX = 0.5
_SHELL_MM = 8.0
_TIME_CHUNK = 16
#: Length scale (mm) of the correlation between parcel time courses,
#: ``corr(P_i, P_j) = exp(-distance(centroid_i, centroid_j) / length)``.
_PARCEL_CORR_MM = 70.0
# Confound weights, as fractions of the baseline per unit of the source
# (mm for translations, 1/50 rad for rotations, unit-variance series for the
# global and physiological sources, half the run for the drift).
_W_MOTION = 0.05
_W_DRIFT = 0.02
_W_GLOBAL = 0.01
_W_PHYSIO = 0.006
#: Size of the intensity spikes, as a fraction of the baseline.
_SPIKE = 0.1

# Stream tags, so that the random streams of different purposes never overlap.
_TAG_TRUTH = 1
_TAG_JITTER = 2
_TAG_SUBJECT = 3
_TAG_RUN = 4


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


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------
def _key(label: str) -> int:
    """Return a stable non-negative integer for a label (for seeding)."""
    return zlib.crc32(label.encode("utf-8"))


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """Return a generator for the stream identified by ``seed`` and ``keys``."""
    return np.random.default_rng([int(seed), *(int(k) for k in keys)])


def _clean_label(value: Any, prefix: str, what: str) -> str:
    """Strip an optional BIDS entity prefix and validate the label."""
    text = str(value)
    if text.startswith(prefix + "-"):
        text = text[len(prefix) + 1 :]
    if not _LABEL_RE.match(text):
        raise ValueError(f"invalid {what} label {value!r}: must be alphanumeric")
    return text


def _clean_labels(
    values: Sequence[Any] | None, prefix: str, what: str
) -> list[str] | None:
    """Validate a sequence of labels (``None`` stays ``None``)."""
    if values is None:
        return None
    if isinstance(values, (str, int)):
        values = [values]
    out = [_clean_label(v, prefix, what) for v in values]
    if not out:
        raise ValueError(f"at least one {what} is required (or None)")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate {what} labels: {out}")
    return out


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (deterministic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _fmt(value: float) -> str:
    """Format one confound value the way fMRIPrep does (``n/a`` for NaN)."""
    value = float(value)
    if np.isnan(value):
        return "n/a"
    return repr(value)


def _write_tsv(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Write a tab-separated table with a header row."""
    names = list(columns)
    data = np.column_stack([np.asarray(columns[n], dtype=float) for n in names])
    lines = ["\t".join(names)]
    lines.extend("\t".join(_fmt(v) for v in row) for row in data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _set_spatial_header(
    img: nib.Nifti1Image, affine: np.ndarray, space: str, tr: float | None = None
) -> None:
    """Set sform/qform codes, units and (for 4D) the TR."""
    code = 4 if space.upper().startswith("MNI") else 2
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    hdr = img.header
    if tr is not None:
        zooms = list(hdr.get_zooms()[:3]) + [float(tr)]
        hdr.set_zooms(zooms)
    hdr.set_xyzt_units("mm", "sec")


_GZIP_CHUNK = 8 << 20  # most bytes of uncompressed data per deflate chunk


def _n_threads() -> int:
    """Number of compression threads (the CPUs available, at most 8)."""
    if hasattr(os, "sched_getaffinity"):
        n_cpu = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - not Linux
        n_cpu = os.cpu_count() or 1
    return max(1, min(8, n_cpu))


def _gzip_write(path: Path, parts: Iterable[Any], level: int = 1) -> None:
    """Write the concatenation of ``parts`` as a single-member gzip file.

    ``parts`` (bytes-like objects, consumed lazily) are cut into chunks of at
    most ``_GZIP_CHUNK`` bytes that are deflated independently in threads
    (zlib releases the GIL) and joined with full flushes, as
    ``pigz --independent`` does; an empty final block ends the stream.  The
    result is an ordinary gzip file whose bytes do not depend on the number
    of threads, and the header has no file name and a zero time stamp.  The
    run-length strategy (``Z_RLE``) compresses these images (noisy floats and
    long runs of zeros) as well as the default strategy, twice as fast.
    """

    def deflate(chunk: memoryview) -> bytes:
        comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_RLE)
        return comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)

    n_workers = _n_threads()
    crc, size = 0, 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fobj, ThreadPoolExecutor(n_workers) as pool:
        fobj.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff")  # no name, mtime 0
        pending: collections.deque = collections.deque()
        for part in parts:
            view = memoryview(part).cast("B")
            for i in range(0, len(view), _GZIP_CHUNK):
                chunk = view[i : i + _GZIP_CHUNK]
                pending.append(pool.submit(deflate, chunk))
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
                while len(pending) > 2 * n_workers:
                    fobj.write(pending.popleft().result())
        while pending:
            fobj.write(pending.popleft().result())
        fobj.write(zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS).flush())
        fobj.write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))


def _write_bold(
    path: Path,
    shape: tuple[int, int, int],
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    affine: np.ndarray,
    space: str,
    tr: float,
    dtype: str,
) -> None:
    """Write a 4D NIfTI-1 ``.nii.gz`` from in-mask style data, volume by volume.

    Parameters
    ----------
    path : pathlib.Path
        Output file.
    shape : tuple of int
        Spatial shape of the grid.
    parts : sequence of (flat_index, values)
        Each ``values`` array (``(T, n)``) is written at the Fortran-order
        flat indices ``flat_index`` (``n``) of every volume; voxels not
        covered are 0.
    affine : numpy.ndarray
        Voxel-to-world affine.
    space : str
        Template space (for the sform/qform codes).
    tr : float
        Repetition time (s), stored in ``pixdim[4]``.
    dtype : {"float32", "int16"}
        On-disk type; int16 uses ``scl_slope``.

    Notes
    -----
    The header is built by nibabel and the uncompressed bytes are those that
    nibabel writes for the same image; only the compression is done here (see
    :func:`_gzip_write`), without ever holding the whole 4D array in memory.
    """
    n_t = parts[0][1].shape[0]
    img = nib.Nifti1Image(np.zeros((1, 1, 1, 1), dtype=np.float32), affine)
    hdr = img.header
    hdr.set_data_shape((*shape, n_t))
    _set_spatial_header(img, affine, space, tr=tr)
    hdr["vox_offset"] = 352
    if dtype == "int16":
        peak = max(float(np.abs(values).max()) for _, values in parts)
        slope = np.float32(peak / 32000.0 if peak > 0 else 1.0)
        hdr.set_data_dtype(np.int16)
        hdr["scl_slope"] = slope
    else:
        slope = None
        hdr.set_data_dtype(np.float32)
        hdr["scl_slope"] = 1.0  # what nibabel writes for unscaled float data
    hdr["scl_inter"] = 0.0
    if hdr.endianness != "<":  # pragma: no cover - big-endian machines
        raise RuntimeError("only little-endian machines are supported")
    n_vox = int(np.prod(shape))

    def volumes() -> Iterable[Any]:
        yield hdr.binaryblock
        yield b"\x00\x00\x00\x00"  # no extensions
        for t in range(n_t):
            vol = np.zeros(n_vox, dtype=np.float32)
            for flat_index, values in parts:
                vol[flat_index] = values[t]
            if slope is None:
                yield vol
            else:
                yield np.rint(vol / slope).astype("<i2")

    _gzip_write(Path(path), volumes())


# --------------------------------------------------------------------------
# Grid and spatial fields
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _load_grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the (read-only) MNI152 brain mask and its affine.

    Parameters
    ----------
    resolution : int
        Voxel size in mm, passed to
        :func:`nilearn.datasets.load_mni152_brain_mask`.

    Returns
    -------
    mask : numpy.ndarray of bool
        Brain mask, shape of the grid.
    affine : numpy.ndarray
        4 x 4 affine.
    """
    from nilearn.datasets import load_mni152_brain_mask

    img = load_mni152_brain_mask(resolution=resolution)
    mask = np.asarray(img.dataobj) > 0
    affine = np.array(img.affine, dtype=float)
    mask.setflags(write=False)
    affine.setflags(write=False)
    return mask, affine


def _smooth_basis(idx: tuple[np.ndarray, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Return a low-order 3D DCT basis evaluated at voxel indices ``idx``.

    The basis (orders 0-3 on each axis, constant excluded, with weights
    decreasing with the order) spans smooth fields with a spatial scale of a
    quarter of the field of view whatever the resolution.
    """
    n_order = 4
    per_axis = []
    for ax in range(3):
        k = np.arange(n_order)[None, :]
        per_axis.append(
            np.cos(np.pi * k * (idx[ax][:, None] + 0.5) / shape[ax])
        )
    cols = []
    for i in range(n_order):
        for j in range(n_order):
            for k in range(n_order):
                if i == j == k == 0:
                    continue
                weight = 1.0 / (1.0 + i * i + j * j + k * k) ** 0.5
                cols.append(weight * per_axis[0][:, i] * per_axis[1][:, j] * per_axis[2][:, k])
    return np.column_stack(cols)


def _fields(rng: np.random.Generator, basis: np.ndarray, n: int) -> np.ndarray:
    """Draw ``n`` smooth random fields (zero mean, unit std) from ``basis``.

    Returns
    -------
    numpy.ndarray
        Array of shape ``(n, n_voxels)``.
    """
    coef = rng.standard_normal((basis.shape[1], n))
    fields = (basis @ coef).T
    fields -= fields.mean(axis=1, keepdims=True)
    fields /= fields.std(axis=1, keepdims=True)
    return fields


# --------------------------------------------------------------------------
# Ground-truth parcellation
# --------------------------------------------------------------------------
_OFFSETS = ((0, -1), (0, 1), (1, -1), (1, 1), (2, -1), (2, 1))


def _neighbour_values(vol: np.ndarray, idx: tuple[np.ndarray, ...]) -> np.ndarray:
    """Return the values of the 6 face neighbours of voxels ``idx`` (0 off-grid)."""
    padded = np.pad(vol, 1)
    out = np.empty((idx[0].size, 6), dtype=vol.dtype)
    base = [i + 1 for i in idx]
    for j, (ax, step) in enumerate(_OFFSETS):
        coords = list(base)
        coords[ax] = coords[ax] + step
        out[:, j] = padded[tuple(coords)]
    return out


def _majority(neigh: np.ndarray) -> np.ndarray:
    """Most frequent non-zero value per row (ties: first column); 0 if none."""
    valid = neigh > 0
    counts = np.zeros(neigh.shape, dtype=np.int16)
    for j in range(neigh.shape[1]):
        counts[:, j] = ((neigh == neigh[:, j : j + 1]) & valid).sum(axis=1)
    counts[~valid] = -1
    best = np.argmax(counts, axis=1)
    choice = neigh[np.arange(neigh.shape[0]), best]
    choice[~valid.any(axis=1)] = 0
    return choice


def _grow(labels: np.ndarray, mask: np.ndarray) -> None:
    """Fill unlabelled mask voxels by region growing from labelled ones (in place).

    Each voxel is given the majority label of its already labelled face
    neighbours, so connected parcels stay connected.  Voxels that cannot be
    reached (disconnected mask pieces) get the label of the nearest labelled
    voxel.
    """
    while True:
        todo = mask & (labels == 0)
        if not todo.any():
            return
        idx = np.nonzero(todo)
        choice = _majority(_neighbour_values(labels, idx))
        hit = choice > 0
        if not hit.any():
            break
        labels[tuple(i[hit] for i in idx)] = choice[hit]
    # Unreachable voxels (only if the mask has several components).
    _, nearest = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    fill = mask & (labels == 0)
    labels[fill] = labels[tuple(n[fill] for n in nearest)]


def _enforce_contiguity(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Make every parcel a single 6-connected component.

    For each label the largest connected component is kept and the other
    pieces are reassigned by region growing from the neighbouring parcels.
    """
    out = labels.copy()
    structure = ndimage.generate_binary_structure(3, 1)
    for lab, sl in enumerate(ndimage.find_objects(out), start=1):
        if sl is None:
            continue
        region = out[sl]
        comp, n_comp = ndimage.label(region == lab, structure=structure)
        if n_comp > 1:
            sizes = np.bincount(comp.ravel())[1:]
            keep = int(np.argmax(sizes)) + 1
            region[(comp > 0) & (comp != keep)] = 0
    _grow(out, mask)
    return out


def _relabel_by_first_voxel(labels: np.ndarray) -> np.ndarray:
    """Renumber labels ``1..K`` in the order of their first voxel (C order)."""
    flat = labels.ravel()
    nonzero = np.flatnonzero(flat)
    uniq, first = np.unique(flat[nonzero], return_index=True)
    order = uniq[np.argsort(first, kind="stable")]
    lut = np.zeros(int(flat.max()) + 1, dtype=np.int32)
    lut[order] = np.arange(1, order.size + 1)
    return lut[labels]


def _make_parcellation(
    mask: np.ndarray, n_parcels: int, rng: np.random.Generator
) -> np.ndarray:
    """Compact, contiguous parcellation of ``mask`` with ``n_parcels`` labels.

    Parameters
    ----------
    mask : numpy.ndarray of bool
        Brain mask.
    n_parcels : int
        Number of parcels.
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    numpy.ndarray of int32
        Labels ``1..n_parcels`` inside the mask, 0 outside.
    """
    coords = np.argwhere(mask).astype(float)
    n_vox = coords.shape[0]
    if not 1 <= n_parcels <= n_vox:
        raise ValueError(
            f"n_true_parcels must be between 1 and the number of mask voxels "
            f"({n_vox}), got {n_parcels}"
        )
    # Lloyd's k-means on (a subsample of) the voxel coordinates.
    if n_vox > 20000:
        sample = coords[np.sort(rng.choice(n_vox, 20000, replace=False))]
    else:
        sample = coords
    centers = sample[rng.choice(sample.shape[0], n_parcels, replace=False)].copy()
    for _ in range(15):
        _, assign = cKDTree(centers).query(sample)
        counts = np.bincount(assign, minlength=n_parcels)
        sums = np.column_stack(
            [np.bincount(assign, weights=sample[:, d], minlength=n_parcels) for d in range(3)]
        )
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None]
        if not filled.all():  # reseed empty clusters on the farthest points
            dist, _ = cKDTree(centers).query(sample)
            far = np.argsort(-dist, kind="stable")[: int((~filled).sum())]
            centers[~filled] = sample[far]
    _, assign = cKDTree(centers).query(coords)
    counts = np.bincount(assign, minlength=n_parcels)
    for lab in np.flatnonzero(counts == 0):  # rare: give it its nearest voxel
        taken = np.bincount(assign, minlength=n_parcels)
        dist = np.linalg.norm(coords - centers[lab], axis=1)
        for cand in np.argsort(dist, kind="stable"):
            if taken[assign[cand]] > 1:
                assign[cand] = lab
                break
    labels = np.zeros(mask.shape, dtype=np.int32)
    labels[mask] = assign + 1
    labels = _enforce_contiguity(labels, mask)
    return _relabel_by_first_voxel(labels)


def _jitter_parcellation(
    labels: np.ndarray, mask: np.ndarray, jitter: float, rng: np.random.Generator
) -> np.ndarray:
    """Move a fraction ``jitter`` of boundary voxels to a neighbouring parcel.

    See the module docstring for the exact procedure; parcels stay exactly
    6-connected and keep their labels.
    """
    if jitter == 0:
        return labels.copy()
    idx = np.nonzero(mask)
    own = labels[idx]
    neigh = _neighbour_values(np.where(mask, labels, 0), idx)
    differs = (neigh > 0) & (neigh != own[:, None])
    candidates = np.flatnonzero(differs.any(axis=1))
    n_move = int(round(jitter * candidates.size))
    if n_move == 0:
        return labels.copy()
    chosen = np.sort(rng.choice(candidates, n_move, replace=False))
    pick = np.argmax(rng.random((n_move, 6)) * differs[chosen], axis=1)
    new_own = own.copy()
    new_own[chosen] = neigh[chosen, pick]
    n_lab = int(labels.max())
    before = np.bincount(own, minlength=n_lab + 1)
    after = np.bincount(new_own, minlength=n_lab + 1)
    shrunk = np.flatnonzero(after < 0.5 * before)
    undo = chosen[np.isin(own[chosen], shrunk)]
    new_own[undo] = own[undo]
    out = np.zeros_like(labels)
    out[idx] = new_own
    return _enforce_contiguity(out, mask)


# --------------------------------------------------------------------------
# Time courses
# --------------------------------------------------------------------------
def _centroids_mm(labels: np.ndarray, n_parcels: int, affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the parcel centroids, shape ``(K, 3)``."""
    idx = np.nonzero(labels)
    lab = labels[idx]
    counts = np.bincount(lab, minlength=n_parcels + 1)[1:]
    cent = np.column_stack(
        [np.bincount(lab, weights=i.astype(float), minlength=n_parcels + 1)[1:] for i in idx]
    ) / counts[:, None]
    return cent @ affine[:3, :3].T + affine[:3, 3]


def _band_limited(
    rng: np.random.Generator, n_t: int, n_series: int, tr: float,
    low: float = 0.01, high: float = 0.1,
) -> np.ndarray:
    """Band-limited Gaussian noise, zero mean and unit variance per column."""
    freqs = np.fft.rfftfreq(n_t, d=tr)
    keep = (freqs >= low) & (freqs <= high)
    if keep.sum() < 3:  # very short runs: keep the lowest non-zero frequencies
        keep = np.zeros_like(keep)
        keep[1 : min(freqs.size, 5)] = True
    spec = rng.standard_normal((freqs.size, n_series)) + 1j * rng.standard_normal(
        (freqs.size, n_series)
    )
    spec[~keep] = 0
    series = np.fft.irfft(spec, n=n_t, axis=0)
    series -= series.mean(axis=0)
    series /= series.std(axis=0)
    return series


def _cosine_basis(n_t: int, tr: float, period: float = HIGH_PASS_PERIOD) -> np.ndarray:
    """DCT high-pass regressors exactly as nipype / fMRIPrep compute them."""
    order = int(np.floor(2 * n_t * tr / period))
    times = np.arange(n_t)
    cols = [
        np.sqrt(2.0 / n_t) * np.cos(np.pi / n_t * (times + 0.5) * k)
        for k in range(1, order)
    ]
    return np.column_stack(cols) if cols else np.zeros((n_t, 0))


def _spike_positions(
    rng: np.random.Generator, n_t: int, n_nonsteady: int, n_spikes: int
) -> np.ndarray:
    """Spike volumes, away from the run edges and from each other if possible."""
    if n_spikes == 0:
        return np.zeros(0, dtype=int)
    for margin, gap in ((6, 8), (3, 4), (1, 2), (1, 1)):
        low, high = n_nonsteady + margin, n_t - margin  # candidates in [low, high)
        free = (high - low) - (n_spikes - 1) * (gap - 1)
        if free >= n_spikes:
            picks = np.sort(rng.choice(free, n_spikes, replace=False))
            return low + picks + np.arange(n_spikes) * (gap - 1)
    raise ValueError(
        f"n_volumes={n_t} is too short for n_nonsteady={n_nonsteady} and "
        f"n_spikes={n_spikes}"
    )


def _motion(
    rng: np.random.Generator, n_t: int, tr: float, spikes: np.ndarray
) -> np.ndarray:
    """Rigid-body motion (trans_x/y/z in mm, rot_x/y/z in rad), shape (T, 6).

    A smooth random walk plus a small respiratory oscillation; the framewise
    displacement stays below 0.35 mm except on ``spikes`` where the head
    jumps (FD between 0.9 and 1.6 mm).
    """
    scale = np.array([0.02, 0.02, 0.03, 3e-4, 3e-4, 3e-4])
    inc = rng.standard_normal((n_t, 6)) * scale
    inc = ndimage.uniform_filter1d(inc, 3, axis=0) * np.sqrt(3.0)
    resp_f = rng.uniform(0.2, 0.3)
    phase = rng.uniform(0, 2 * np.pi)
    resp = np.sin(2 * np.pi * resp_f * tr * np.arange(n_t) + phase)
    resp_amp = np.array([0.0, 0.03, 0.05, 2e-4, 0.0, 0.0])
    inc[1:] += np.diff(resp)[:, None] * resp_amp
    inc[0] = 0.0
    fd = np.abs(inc[:, :3]).sum(1) + FD_RADIUS * np.abs(inc[:, 3:]).sum(1)
    too_big = fd > 0.35
    inc[too_big] *= (0.35 / fd[too_big])[:, None]
    for t in spikes:
        mag = rng.uniform(0.9, 1.6)
        share = rng.dirichlet(np.ones(6))
        signs = rng.choice([-1.0, 1.0], 6)
        jump = signs * mag * share
        jump[3:] /= FD_RADIUS
        inc[t] = jump
    motion = np.cumsum(inc, axis=0)
    motion[:, :3] += rng.normal(0, 0.05, 3)  # arbitrary reference position
    motion[:, 3:] += rng.normal(0, 5e-4, 3)
    return motion


def _framewise_displacement(motion: np.ndarray) -> np.ndarray:
    """Power's framewise displacement (first value NaN)."""
    diff = np.abs(np.diff(motion, axis=0))
    fd = diff[:, :3].sum(1) + FD_RADIUS * diff[:, 3:].sum(1)
    return np.concatenate([[np.nan], fd])


def _rmsd(motion: np.ndarray, radius: float = 80.0) -> np.ndarray:
    """Relative RMS displacement between volumes (small-angle Jenkinson)."""
    diff = np.diff(motion, axis=0)
    val = np.sqrt((diff[:, :3] ** 2).sum(1) + radius**2 / 5.0 * (diff[:, 3:] ** 2).sum(1))
    return np.concatenate([[np.nan], val])


def _dvars(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS as nipype's ``compute_dvars`` (fMRIPrep).

    Parameters
    ----------
    data : numpy.ndarray
        In-mask data, shape ``(T, V)``.

    Returns
    -------
    dvars, std_dvars : numpy.ndarray
        Arrays of length ``T`` with NaN first.
    """
    func = data.astype(np.float32, copy=True)
    func *= np.float32(1000.0 / np.median(func))
    q25, q75 = np.percentile(func, [25, 75], axis=0, method="lower")
    func_sd = (q75 - q25) / 1.349
    centred = func - func.mean(axis=0)
    r0 = np.einsum("tv,tv->v", centred, centred, dtype=np.float64)
    r1 = np.einsum("tv,tv->v", centred[1:], centred[:-1], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ar1 = np.where(r0 > 0, r1 / r0, 0.0)
    diff_sd_mean = np.mean(np.sqrt(np.clip(2 * (1 - ar1), 0, None)) * func_sd)
    del centred
    diff = np.diff(func, axis=0)
    dvars = np.sqrt(np.einsum("tv,tv->t", diff, diff, dtype=np.float64) / func.shape[1])
    std = dvars / diff_sd_mean
    return np.concatenate([[np.nan], dvars]), np.concatenate([[np.nan], std])


def _compcor(
    data: np.ndarray, n_skip: int, tr: float, n_comp: int
) -> tuple[np.ndarray, np.ndarray]:
    """CompCor components as nipype computes them for fMRIPrep.

    Non-steady-state volumes are dropped, the series are high-pass filtered
    with the DCT basis (plus constant), variance normalised, and the left
    singular vectors are returned zero-padded on the dropped volumes.

    Returns
    -------
    components : numpy.ndarray
        Shape ``(T, n_comp)``.
    singular_values : numpy.ndarray
        All singular values (for the variance explained).
    """
    steady = np.asarray(data[n_skip:], dtype=np.float64)
    n_t = steady.shape[0]
    basis = np.column_stack([_cosine_basis(n_t, tr), np.ones(n_t) / np.sqrt(n_t)])
    q, _ = np.linalg.qr(basis)
    resid = steady - q @ (q.T @ steady)
    std = resid.std(axis=0)
    resid = resid[:, std > 0] / std[std > 0]
    # Left singular vectors from the (time x time) Gram matrix: exact, fast
    # when voxels outnumber volumes, and robust (LAPACK's gesdd fails to
    # converge on some of these rank-deficient matrices).
    eigval, eigvec = np.linalg.eigh(resid @ resid.T)
    order = np.argsort(eigval, kind="stable")[::-1]
    s = np.sqrt(np.clip(eigval[order], 0.0, None))
    u = eigvec[:, order]
    sign = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    sign[sign == 0] = 1.0
    u = u * sign  # deterministic sign convention
    comps = np.zeros((data.shape[0], n_comp))
    comps[n_skip:] = u[:, :n_comp]
    return comps, s


def _expand(name: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """A column plus its derivative and squared expansions (fMRIPrep style)."""
    deriv = np.concatenate([[np.nan], np.diff(values)])
    return {
        name: values,
        f"{name}_derivative1": deriv,
        f"{name}_derivative1_power2": deriv**2,
        f"{name}_power2": values**2,
    }


# --------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------
@dataclass
class _Subject:
    """Per-participant maps (internal)."""

    labels: np.ndarray  # (V,) int, 1..K
    baseline: np.ndarray  # (V,) float
    amplitude: np.ndarray  # (V,) float
    shell_baseline: np.ndarray  # (Vs,) float
    mixing: np.ndarray  # (K, K) Cholesky factor of the parcel correlation


def _simulate_run(
    rng: np.random.Generator,
    *,
    mask: np.ndarray,
    basis: np.ndarray,
    subject: _Subject,
    n_parcels: int,
    n_t: int,
    tr: float,
    n_nonsteady: int,
    n_spikes: int,
    snr: float,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Simulate one run.

    Returns
    -------
    brain : numpy.ndarray of float32
        In-mask data, shape ``(T, V)`` (C order of the mask voxels).
    scalp : numpy.ndarray of float32
        Shell data, shape ``(T, Vs)``.
    confounds : dict
        Confound columns, in fMRIPrep order.
    meta : dict
        Confounds JSON sidecar.
    """
    n_vox = subject.labels.size
    base = subject.baseline
    nss = np.zeros(n_t)
    nss[:n_nonsteady] = 0.6 * 0.5 ** np.arange(n_nonsteady)
    spikes = _spike_positions(rng, n_t, n_nonsteady, n_spikes)

    # Sources -----------------------------------------------------------
    parcel_ts = _band_limited(rng, n_t, n_parcels, tr) @ subject.mixing.T
    parcel_ts /= parcel_ts.std(axis=0)
    motion = _motion(rng, n_t, tr, spikes)
    tn = np.linspace(-1.0, 1.0, n_t)
    drift = np.column_stack([tn, tn**2 - np.mean(tn**2)])
    glob = _band_limited(rng, n_t, 1, tr)[:, 0]
    resp_f = rng.uniform(0.15, 0.24)
    physio = np.sin(2 * np.pi * resp_f * tr * np.arange(n_t) + rng.uniform(0, 2 * np.pi))
    physio += 0.3 * rng.standard_normal(n_t)
    physio = (physio - physio.mean()) / physio.std()
    motion_c = motion - motion.mean(axis=0)
    sources = np.column_stack([motion_c, drift, glob, physio])  # (T, 10)

    # Spatial weights (fractions of the baseline) -------------------------
    f = _fields(rng, basis, 11)
    weights = np.empty((10, n_vox))
    weights[0:3] = _W_MOTION * f[0:3]  # per mm
    weights[3:6] = _W_MOTION * FD_RADIUS * f[3:6]  # per rad
    weights[6:8] = _W_DRIFT * (0.5 + f[6:8])
    weights[8] = _W_GLOBAL * np.clip(1.0 + 0.3 * f[8], 0.2, None)
    weights[9] = _W_PHYSIO * np.abs(f[9])
    spike_map = _SPIKE * np.clip(1.0 + 0.3 * f[10], 0.2, None)

    # Noise: unit-variance Gaussian, lightly smoothed on the grid ----------
    bbox = ndimage.find_objects(mask.astype(np.int8))[0]
    bbox = tuple(
        slice(max(s.start - 3, 0), min(s.stop + 3, n))
        for s, n in zip(bbox, mask.shape, strict=True)
    )
    sub_mask = mask[bbox]
    impulse = np.zeros(9)
    impulse[4] = 1.0
    k1 = ndimage.gaussian_filter1d(impulse, _NOISE_SIGMA_VOX)
    norm = np.float32(np.sum(k1**2) ** 1.5) ** 0.5
    brain = np.empty((n_t, n_vox), dtype=np.float32)
    buf = np.empty((min(_TIME_CHUNK, n_t), *sub_mask.shape), dtype=np.float32)
    for t0 in range(0, n_t, _TIME_CHUNK):
        n = min(_TIME_CHUNK, n_t - t0)
        raw = rng.standard_normal((n, *sub_mask.shape), dtype=np.float32)
        out = buf[:n]
        ndimage.gaussian_filter(
            raw, sigma=(0, _NOISE_SIGMA_VOX, _NOISE_SIGMA_VOX, _NOISE_SIGMA_VOX),
            output=out,
        )
        brain[t0 : t0 + n] = out[:, sub_mask]
    brain *= (base * (SIGNAL_FRACTION / snr) / norm).astype(np.float32)

    # Signal, confounds, spikes, baseline -------------------------------
    amp = (base * SIGNAL_FRACTION * subject.amplitude).astype(np.float32)
    brain += parcel_ts.astype(np.float32)[:, subject.labels - 1] * amp
    brain += sources.astype(np.float32) @ (weights * base).astype(np.float32)
    spike_amp = rng.uniform(0.8, 1.2, spikes.size)
    for t, a in zip(spikes, spike_amp, strict=True):
        brain[t] += (a * spike_map * base).astype(np.float32)
    brain += base.astype(np.float32)
    brain *= (1.0 + nss).astype(np.float32)[:, None]

    # Scalp shell -----------------------------------------------------------
    sb = subject.shell_baseline.astype(np.float32)
    scalp = rng.standard_normal((n_t, sb.size), dtype=np.float32)
    scalp *= np.float32(0.05) * sb
    scalp += sb
    scalp *= (1.0 + nss).astype(np.float32)[:, None]
    np.rint(scalp, out=scalp)  # scanner-like integers (and fast to compress)

    # Virtual noise ROIs (CSF, WM) for csf/white_matter/aCompCor ------------
    def roi(n: int, level: float, w_scale: np.ndarray, noise: float) -> np.ndarray:
        b = level * (1.0 + 0.05 * rng.standard_normal(n))
        w = rng.standard_normal((10, n)) * w_scale[:, None]
        w[6:10] = np.abs(w[6:10])
        vals = b * (1.0 + sources @ w + noise * rng.standard_normal((n_t, n)))
        for t, a in zip(spikes, spike_amp, strict=True):
            vals[t] += a * _SPIKE * b
        return vals * (1.0 + nss)[:, None]

    csf_scale = np.array([0.03] * 3 + [0.03 * FD_RADIUS] * 3 + [0.01, 0.01, 0.008, 0.008])
    wm_scale = np.array([0.015] * 3 + [0.015 * FD_RADIUS] * 3 + [0.01, 0.01, 0.005, 0.001])
    csf_roi = roi(150, 1300.0, csf_scale, 0.02)
    wm_roi = roi(300, 850.0, wm_scale, 0.01)

    # Confound table ----------------------------------------------------------
    fd = _framewise_displacement(motion)
    dvars, std_dvars = _dvars(brain)
    global_signal = brain.mean(axis=1, dtype=np.float64)
    csf = csf_roi.mean(axis=1)
    wm = wm_roi.mean(axis=1)
    csf_wm = np.concatenate([csf_roi, wm_roi], axis=1).mean(axis=1)

    # tCompCor: 2 % most variable brain voxels after high-pass.
    # Residual variance after the DCT high-pass; the DCT columns are
    # orthonormal and orthogonal to the mean, so it is ||y_c||^2 - ||C'y_c||^2.
    steady = brain[n_nonsteady:].copy()
    steady -= steady.mean(axis=0, dtype=np.float64).astype(np.float32)
    dct = _cosine_basis(steady.shape[0], tr).astype(np.float32)
    proj = dct.T @ steady
    resid_ss = np.einsum("tv,tv->v", steady, steady, dtype=np.float64)
    resid_ss -= np.einsum("kv,kv->v", proj, proj, dtype=np.float64)
    n_top = max(int(round(0.02 * n_vox)), _N_TCOMPCOR + 1)
    top = np.sort(np.argsort(-resid_ss, kind="stable")[:n_top])
    del steady, proj
    top_data = brain[:, top]
    tcompcor_mean = top_data.mean(axis=1, dtype=np.float64)
    n_skip = n_nonsteady
    t_comp, t_s = _compcor(top_data, n_skip, tr, _N_TCOMPCOR)
    c_comp, c_s = _compcor(csf_roi, n_skip, tr, _N_CCOMPCOR)
    w_comp, w_s = _compcor(wm_roi, n_skip, tr, _N_WCOMPCOR)
    a_comp, a_s = _compcor(np.concatenate([csf_roi, wm_roi], axis=1), n_skip, tr, _N_ACOMPCOR)

    cos = _cosine_basis(n_t - n_nonsteady, tr)
    cosines = np.zeros((n_t, cos.shape[1]))
    cosines[n_nonsteady:] = cos

    outliers = np.flatnonzero(
        (np.nan_to_num(fd) > FD_THRESHOLD) | (np.nan_to_num(std_dvars) > DVARS_THRESHOLD)
    )

    cols: dict[str, np.ndarray] = {}
    cols.update(_expand("global_signal", global_signal))
    cols.update(_expand("csf", csf))
    cols.update(_expand("white_matter", wm))
    cols.update(_expand("csf_wm", csf_wm))
    cols["tcompcor"] = tcompcor_mean
    cols["std_dvars"] = std_dvars
    cols["dvars"] = dvars
    cols["framewise_displacement"] = fd
    cols["rmsd"] = _rmsd(motion)
    meta: dict[str, Any] = {
        name: {"Method": "Mean"}
        for name in ("global_signal", "csf", "white_matter", "csf_wm", "tcompcor")
    }
    for prefix, comps, svals, method, roi_name in (
        ("t_comp_cor", t_comp, t_s, "tCompCor", None),
        ("c_comp_cor", c_comp, c_s, "aCompCor", "CSF"),
        ("w_comp_cor", w_comp, w_s, "aCompCor", "WM"),
        ("a_comp_cor", a_comp, a_s, "aCompCor", "combined"),
    ):
        var = svals**2 / np.sum(svals**2)
        cum = np.cumsum(var)
        for i in range(comps.shape[1]):
            name = f"{prefix}_{i:02d}"
            cols[name] = comps[:, i]
            entry: dict[str, Any] = {
                "CumulativeVarianceExplained": round(float(cum[i]), 10),
                "Method": method,
                "Retained": True,
                "SingularValue": round(float(svals[i]), 10),
                "VarianceExplained": round(float(var[i]), 10),
            }
            if roi_name is not None:
                entry["Mask"] = roi_name
            meta[name] = dict(sorted(entry.items()))
    for i in range(cosines.shape[1]):
        cols[f"cosine{i:02d}"] = cosines[:, i]
        meta[f"cosine{i:02d}"] = {"Method": "Cosine", "CutoffPeriod": HIGH_PASS_PERIOD}
    for i in range(n_nonsteady):
        onehot = np.zeros(n_t)
        onehot[i] = 1.0
        cols[f"non_steady_state_outlier{i:02d}"] = onehot
    names = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    for k, name in enumerate(names):
        cols.update(_expand(name, motion[:, k]))
    for i, t in enumerate(outliers):
        onehot = np.zeros(n_t)
        onehot[t] = 1.0
        cols[f"motion_outlier{i:02d}"] = onehot
    return brain, scalp, cols, meta


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------
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
    subs = _clean_labels(participants, "sub", "participant")
    sess = _clean_labels(sessions, "ses", "session")
    task_list = _clean_labels(tasks, "task", "task")
    run_list = _clean_labels(runs, "run", "run")
    space = _clean_label(space, "space", "space")
    res = None if res_label is None else _clean_label(res_label, "res", "res")
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    if confounds_name not in _CONFOUNDS_NAMES:
        raise ValueError(
            f"confounds_name must be one of {_CONFOUNDS_NAMES}, got {confounds_name!r}"
        )
    if not 0.0 <= float(jitter) < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if not (float(snr) > 0 and float(tr) > 0):
        raise ValueError("snr and tr must be positive")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if int(resolution) != resolution or int(resolution) < 1:
        raise ValueError(f"resolution must be a positive integer (mm), got {resolution}")
    if int(n_nonsteady) < 0 or int(n_spikes) < 0:
        raise ValueError("n_nonsteady and n_spikes must be >= 0")
    if int(n_volumes) < int(n_nonsteady) + 10:
        raise ValueError("n_volumes must be at least n_nonsteady + 10")
    n_t, tr, n_nonsteady = int(n_volumes), float(tr), int(n_nonsteady)

    root = Path(root)
    fmriprep_dir = root / "derivatives" / "fmriprep" if layout == "raw+derivatives" else root
    mask, affine = _load_grid(resolution)

    # Ground truth ------------------------------------------------------------
    truth = _make_parcellation(mask, int(n_true_parcels), _rng(seed, _TAG_TRUTH))
    n_parcels = int(truth.max())
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    mask_img.set_data_dtype(np.uint8)
    _set_spatial_header(mask_img, affine, space)

    def label_image(vol: np.ndarray) -> nib.Nifti1Image:
        img = nib.Nifti1Image(vol.astype(np.int16), affine)
        img.set_data_dtype(np.int16)
        _set_spatial_header(img, affine, space)
        return img

    labels_img = label_image(truth)
    part_truth: dict[str, np.ndarray] = {}
    part_imgs: dict[str, nib.Nifti1Image] = {}
    for sub in subs:
        if jitter == 0:
            part_truth[sub] = truth
            part_imgs[sub] = labels_img
        else:
            jitter_rng = _rng(seed, _TAG_JITTER, _key(sub))
            vol = _jitter_parcellation(truth, mask, float(jitter), jitter_rng)
            part_truth[sub] = vol
            part_imgs[sub] = label_image(vol)

    # Shared geometry ------------------------------------------------------------
    mask_idx = np.nonzero(mask)
    dist_mm = ndimage.distance_transform_edt(~mask, sampling=np.abs(np.diag(affine)[:3]))
    shell = (~mask) & (dist_mm <= _SHELL_MM)
    shell_idx = np.nonzero(shell)
    basis = _smooth_basis(mask_idx, mask.shape)
    shell_basis = _smooth_basis(shell_idx, mask.shape)
    order_f = np.ravel_multi_index(mask_idx, mask.shape, order="F")
    shell_f = np.ravel_multi_index(shell_idx, mask.shape, order="F")

    # Top-level files ---------------------------------------------------------
    space_ent = f"_space-{space}" + (f"_res-{res}" if res is not None else "")
    _write_json(
        fmriprep_dir / "dataset_description.json",
        {
            "Name": "fMRIPrep - demo",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}],
        },
    )
    if layout == "raw+derivatives":
        _write_json(
            root / "dataset_description.json",
            {
                "Name": "bids_parcellate demo dataset",
                "BIDSVersion": "1.9.0",
                "DatasetType": "raw",
                "License": "CC0",
                "Authors": ["bids_parcellate.demo"],
            },
        )
        (root / "participants.tsv").write_text(
            "participant_id\n" + "".join(f"sub-{s}\n" for s in subs), encoding="utf-8"
        )
        (root / "README").write_text(
            "Synthetic dataset written by bids_parcellate.demo.\n\n"
            "Only the BOLD sidecars are present in the raw part; the "
            "preprocessed data are in derivatives/fmriprep and the "
            "ground-truth parcellation in sourcedata/ground_truth.\n",
            encoding="utf-8",
        )

    gt_dir = root / "sourcedata" / "ground_truth"
    gt_dir.mkdir(parents=True, exist_ok=True)
    labels_img.to_filename(gt_dir / f"{space_ent[1:]}_desc-truth_dseg.nii.gz")
    (gt_dir / "desc-truth_dseg.tsv").write_text(
        "index\tname\n" + "".join(f"{i}\tparcel{i:03d}\n" for i in range(1, n_parcels + 1)),
        encoding="utf-8",
    )
    params = {
        "confounds_name": confounds_name, "dtype": dtype, "jitter": float(jitter),
        "layout": layout, "n_nonsteady": n_nonsteady, "n_spikes": int(n_spikes),
        "n_true_parcels": n_parcels, "n_volumes": n_t, "participants": subs,
        "res_label": res, "resolution": int(resolution), "runs": run_list, "seed": int(seed),
        "sessions": sess, "snr": float(snr), "space": space, "tasks": task_list, "tr": tr,
    }
    _write_json(gt_dir / "demo_parameters.json", params)

    sessions_iter: list[str | None] = list(sess) if sess is not None else [None]
    runs_iter: list[str | None] = list(run_list) if run_list is not None else [None]
    conf_suffix = f"desc-confounds_{confounds_name}"

    for sub in subs:
        part_imgs[sub].to_filename(gt_dir / f"sub-{sub}{space_ent}_desc-truth_dseg.nii.gz")
        srng = _rng(seed, _TAG_SUBJECT, _key(sub))
        fields = _fields(srng, basis, 2)
        baseline = BASELINE * np.clip(1.0 + 0.08 * fields[0], 0.7, 1.3)
        amplitude = np.clip(1.0 + 0.15 * fields[1], 0.6, 1.4)
        amplitude /= amplitude.mean()
        shell_field = _fields(srng, shell_basis, 1)[0]
        centroids = _centroids_mm(part_truth[sub], n_parcels, affine)
        dist = np.linalg.norm(centroids[:, None, :] - centroids[None, :, :], axis=-1)
        mixing = np.linalg.cholesky(np.exp(-dist / _PARCEL_CORR_MM) + 1e-9 * np.eye(n_parcels))
        subject = _Subject(
            labels=part_truth[sub][mask_idx].astype(np.intp),
            baseline=baseline,
            amplitude=amplitude,
            shell_baseline=200.0 * np.clip(1.0 + 0.3 * shell_field, 0.3, None),
            mixing=mixing,
        )
        anat = fmriprep_dir / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-preproc_T1w.nii.gz"
        anat.parent.mkdir(parents=True, exist_ok=True)
        t1 = nib.Nifti1Image(mask.astype(np.float32), affine)
        _set_spatial_header(t1, affine, space)
        t1.to_filename(anat)

        for ses in sessions_iter:
            for task in task_list:
                for run in runs_iter:
                    source = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + f"_task-{task}"
                    source += f"_run-{run}" if run is not None else ""
                    rel = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "") / "func"
                    func_dir = fmriprep_dir / rel
                    func_dir.mkdir(parents=True, exist_ok=True)
                    rrng = _rng(
                        seed, _TAG_RUN, _key(sub), _key(ses or ""), _key(task), _key(run or "")
                    )
                    brain, scalp, cols, meta = _simulate_run(
                        rrng, mask=mask, basis=basis, subject=subject,
                        n_parcels=n_parcels, n_t=n_t, tr=tr, n_nonsteady=n_nonsteady,
                        n_spikes=int(n_spikes), snr=float(snr),
                    )
                    stem = func_dir / f"{source}{space_ent}"
                    _write_bold(
                        Path(f"{stem}_desc-preproc_bold.nii.gz"), mask.shape,
                        [(order_f, brain), (shell_f, scalp)], affine, space, tr, dtype,
                    )
                    boldref = np.zeros(mask.shape, dtype=np.float32)
                    boldref[mask_idx] = brain.mean(axis=0, dtype=np.float64)
                    boldref[shell_idx] = scalp.mean(axis=0, dtype=np.float64)
                    del brain, scalp
                    _write_json(
                        Path(f"{stem}_desc-preproc_bold.json"),
                        {"RepetitionTime": tr, "SkullStripped": False, "TaskName": task},
                    )
                    mimg = nib.Nifti1Image(mask.astype(np.uint8), affine)
                    mimg.set_data_dtype(np.uint8)
                    _set_spatial_header(mimg, affine, space)
                    mimg.to_filename(f"{stem}_desc-brain_mask.nii.gz")
                    _write_json(Path(f"{stem}_desc-brain_mask.json"), {"Type": "Brain"})
                    ref_img = nib.Nifti1Image(boldref, affine)
                    _set_spatial_header(ref_img, affine, space)
                    ref_img.to_filename(f"{stem}_boldref.nii.gz")
                    _write_tsv(func_dir / f"{source}_{conf_suffix}.tsv", cols)
                    _write_json(func_dir / f"{source}_{conf_suffix}.json", meta)
                    if layout == "raw+derivatives":
                        _write_json(
                            root / rel / f"{source}_bold.json",
                            {"RepetitionTime": tr, "TaskName": task},
                        )

    return DemoTruth(
        root=root,
        fmriprep_dir=fmriprep_dir,
        mask_img=mask_img,
        labels_img=labels_img,
        participant_labels=part_imgs,
    )


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def _build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m bids_parcellate.demo``."""
    p = argparse.ArgumentParser(
        prog="python -m bids_parcellate.demo",
        description="Write a synthetic fMRIPrep-like dataset with a known parcellation.",
    )
    p.add_argument("root", type=Path, help="output directory")
    p.add_argument("--participants", nargs="+", default=["01", "02"])
    p.add_argument("--sessions", nargs="+", default=None)
    p.add_argument("--tasks", nargs="+", default=["rest"])
    p.add_argument("--runs", nargs="+", default=["1", "2"])
    p.add_argument("--no-runs", action="store_true", help="write no run- entity")
    p.add_argument("--n-volumes", type=int, default=100)
    p.add_argument("--resolution", type=int, default=4)
    p.add_argument("--n-true-parcels", type=int, default=20)
    p.add_argument("--tr", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--layout", choices=_LAYOUTS, default="raw+derivatives")
    p.add_argument("--space", default="MNI152NLin2009cAsym")
    p.add_argument("--res-label", default=None)
    p.add_argument("--n-nonsteady", type=int, default=2)
    p.add_argument("--n-spikes", type=int, default=3)
    p.add_argument("--snr", type=float, default=0.4)
    p.add_argument("--dtype", choices=_DTYPES, default="float32")
    p.add_argument("--confounds-name", choices=_CONFOUNDS_NAMES, default="timeseries")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Parameters
    ----------
    argv : sequence of str or None, default=None
        Arguments (``sys.argv[1:]`` when ``None``).

    Returns
    -------
    int
        Exit status (0).
    """
    args = _build_parser().parse_args(argv)
    start = time.perf_counter()
    runs = None if args.no_runs else args.runs
    truth = make_demo_dataset(
        args.root,
        participants=args.participants,
        sessions=args.sessions,
        tasks=args.tasks,
        runs=runs,
        n_volumes=args.n_volumes,
        resolution=args.resolution,
        n_true_parcels=args.n_true_parcels,
        tr=args.tr,
        seed=args.seed,
        jitter=args.jitter,
        layout=args.layout,
        space=args.space,
        res_label=args.res_label,
        n_nonsteady=args.n_nonsteady,
        n_spikes=args.n_spikes,
        snr=args.snr,
        dtype=args.dtype,
        confounds_name=args.confounds_name,
    )
    n_runs = (
        len(args.participants) * len(args.sessions or [None]) * len(args.tasks)
        * (1 if runs is None else len(runs))
    )
    print(
        f"bids_parcellate.demo: wrote {n_runs} run(s) of {len(args.participants)} "
        f"participant(s) to {truth.root} (fMRIPrep: {truth.fmriprep_dir}, truth: "
        f"{truth.root / 'sourcedata' / 'ground_truth'}) in "
        f"{time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
