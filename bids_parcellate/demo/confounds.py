"""The confounds table of a run, computed the way fMRIPrep computes it."""

from __future__ import annotations

from typing import Any

import numpy as np

from bids_parcellate.demo.model import (
    DVARS_THRESHOLD,
    FD_RADIUS,
    FD_THRESHOLD,
    HIGH_PASS_PERIOD,
)
from bids_parcellate.demo.timecourses import cosine_basis

_N_ACOMPCOR = 6
_N_CCOMPCOR = 3
_N_WCOMPCOR = 3
_N_TCOMPCOR = 3
_MEAN_SIGNALS = ("global_signal", "csf", "white_matter", "csf_wm", "tcompcor")
_MOTION_NAMES = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def framewise_displacement(motion: np.ndarray) -> np.ndarray:
    """Power's framewise displacement (first value NaN).

    Parameters
    ----------
    motion : numpy.ndarray
        Motion parameters (mm and rad), shape ``(T, 6)``.

    Returns
    -------
    numpy.ndarray
        Shape ``(T,)``.
    """
    diff = np.abs(np.diff(motion, axis=0))
    fd = diff[:, :3].sum(1) + FD_RADIUS * diff[:, 3:].sum(1)
    return np.concatenate([[np.nan], fd])


def rmsd(motion: np.ndarray, radius: float = 80.0) -> np.ndarray:
    """Relative RMS displacement between volumes (small-angle Jenkinson).

    Parameters
    ----------
    motion : numpy.ndarray
        Motion parameters (mm and rad), shape ``(T, 6)``.
    radius : float, default=80.0
        Radius (mm) of the sphere.

    Returns
    -------
    numpy.ndarray
        Shape ``(T,)``, first value NaN.
    """
    diff = np.diff(motion, axis=0)
    val = np.sqrt((diff[:, :3] ** 2).sum(1) + radius**2 / 5.0 * (diff[:, 3:] ** 2).sum(1))
    return np.concatenate([[np.nan], val])


def dvars(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    values = np.sqrt(np.einsum("tv,tv->t", diff, diff, dtype=np.float64) / func.shape[1])
    std = values / diff_sd_mean
    return np.concatenate([[np.nan], values]), np.concatenate([[np.nan], std])


def compcor(
    data: np.ndarray, n_skip: int, tr: float, n_comp: int
) -> tuple[np.ndarray, np.ndarray]:
    """CompCor components as nipype computes them for fMRIPrep.

    Non-steady-state volumes are dropped, the series are high-pass filtered
    with the DCT basis (plus constant), variance normalised, and the left
    singular vectors are returned zero-padded on the dropped volumes.

    Parameters
    ----------
    data : numpy.ndarray
        Data of the region, shape ``(T, V)``.
    n_skip : int
        Number of initial (non-steady-state) volumes to drop.
    tr : float
        Repetition time (s).
    n_comp : int
        Number of components.

    Returns
    -------
    components : numpy.ndarray
        Shape ``(T, n_comp)``.
    singular_values : numpy.ndarray
        All singular values (for the variance explained).
    """
    steady = np.asarray(data[n_skip:], dtype=np.float64)
    n_t = steady.shape[0]
    basis = np.column_stack([cosine_basis(n_t, tr), np.ones(n_t) / np.sqrt(n_t)])
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


def expand(name: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """A column plus its derivative and squared expansions (fMRIPrep style).

    Parameters
    ----------
    name : str
        Column name.
    values : numpy.ndarray
        Column.

    Returns
    -------
    dict of str to numpy.ndarray
        ``name``, ``name_derivative1``, ``name_derivative1_power2`` and
        ``name_power2``, in that order.
    """
    deriv = np.concatenate([[np.nan], np.diff(values)])
    return {
        name: values,
        f"{name}_derivative1": deriv,
        f"{name}_derivative1_power2": deriv**2,
        f"{name}_power2": values**2,
    }


def tcompcor_voxels(brain: np.ndarray, n_nonsteady: int, tr: float) -> np.ndarray:
    """Columns of the 2 % most variable brain voxels after the DCT high-pass.

    Parameters
    ----------
    brain : numpy.ndarray of float32
        In-mask data, shape ``(T, V)``.
    n_nonsteady : int
        Number of initial volumes left out.
    tr : float
        Repetition time (s).

    Returns
    -------
    numpy.ndarray of int
        Sorted voxel (column) indices.
    """
    # Residual variance after the DCT high-pass; the DCT columns are
    # orthonormal and orthogonal to the mean, so it is ||y_c||^2 - ||C'y_c||^2.
    steady = brain[n_nonsteady:].copy()
    steady -= steady.mean(axis=0, dtype=np.float64).astype(np.float32)
    dct = cosine_basis(steady.shape[0], tr).astype(np.float32)
    proj = dct.T @ steady
    resid_ss = np.einsum("tv,tv->v", steady, steady, dtype=np.float64)
    resid_ss -= np.einsum("kv,kv->v", proj, proj, dtype=np.float64)
    n_top = max(int(round(0.02 * brain.shape[1])), _N_TCOMPCOR + 1)
    return np.sort(np.argsort(-resid_ss, kind="stable")[:n_top])


def _add_compcor(
    cols: dict[str, np.ndarray], meta: dict[str, Any], rois: dict[str, np.ndarray],
    n_skip: int, tr: float,
) -> None:
    """Add the t/c/w/a CompCor columns and their sidecar entries (in place)."""
    for prefix, roi, n_comp, method, roi_name in (
        ("t_comp_cor", "top", _N_TCOMPCOR, "tCompCor", None),
        ("c_comp_cor", "csf", _N_CCOMPCOR, "aCompCor", "CSF"),
        ("w_comp_cor", "wm", _N_WCOMPCOR, "aCompCor", "WM"),
        ("a_comp_cor", "combined", _N_ACOMPCOR, "aCompCor", "combined"),
    ):
        comps, svals = compcor(rois[roi], n_skip, tr, n_comp)
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


def _onehot(n_t: int, t: int) -> np.ndarray:
    """A column of ``n_t`` zeros with a 1 at ``t``."""
    onehot = np.zeros(n_t)
    onehot[t] = 1.0
    return onehot


def confounds_table(
    brain: np.ndarray, csf_roi: np.ndarray, wm_roi: np.ndarray, motion: np.ndarray,
    n_nonsteady: int, tr: float,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Columns and JSON sidecar of the confounds file, in fMRIPrep's order.

    Parameters
    ----------
    brain : numpy.ndarray of float32
        In-mask data as written, shape ``(T, V)``.
    csf_roi, wm_roi : numpy.ndarray
        Data of the virtual CSF and white-matter regions, shape ``(T, n)``.
    motion : numpy.ndarray
        Motion parameters, shape ``(T, 6)``.
    n_nonsteady : int
        Number of non-steady-state volumes.
    tr : float
        Repetition time (s).

    Returns
    -------
    columns : dict of str to numpy.ndarray
        Confound columns.
    meta : dict
        Confounds JSON sidecar.
    """
    n_t = brain.shape[0]
    fd = framewise_displacement(motion)
    dvars_values, std_dvars = dvars(brain)
    combined = np.concatenate([csf_roi, wm_roi], axis=1)
    top_data = brain[:, tcompcor_voxels(brain, n_nonsteady, tr)]
    means = (
        brain.mean(axis=1, dtype=np.float64), csf_roi.mean(axis=1), wm_roi.mean(axis=1),
        combined.mean(axis=1),
    )
    cols: dict[str, np.ndarray] = {}
    for name, values in zip(_MEAN_SIGNALS[:4], means, strict=True):
        cols.update(expand(name, values))
    cols["tcompcor"] = top_data.mean(axis=1, dtype=np.float64)
    cols["std_dvars"] = std_dvars
    cols["dvars"] = dvars_values
    cols["framewise_displacement"] = fd
    cols["rmsd"] = rmsd(motion)
    meta: dict[str, Any] = {name: {"Method": "Mean"} for name in _MEAN_SIGNALS}
    rois = {"top": top_data, "csf": csf_roi, "wm": wm_roi, "combined": combined}
    _add_compcor(cols, meta, rois, n_nonsteady, tr)
    cos = cosine_basis(n_t - n_nonsteady, tr)
    for i in range(cos.shape[1]):
        cols[f"cosine{i:02d}"] = np.concatenate([np.zeros(n_nonsteady), cos[:, i]])
        meta[f"cosine{i:02d}"] = {"Method": "Cosine", "CutoffPeriod": HIGH_PASS_PERIOD}
    for i in range(n_nonsteady):
        cols[f"non_steady_state_outlier{i:02d}"] = _onehot(n_t, i)
    for k, name in enumerate(_MOTION_NAMES):
        cols.update(expand(name, motion[:, k]))
    outliers = np.flatnonzero(
        (np.nan_to_num(fd) > FD_THRESHOLD) | (np.nan_to_num(std_dvars) > DVARS_THRESHOLD)
    )
    for i, t in enumerate(outliers):
        cols[f"motion_outlier{i:02d}"] = _onehot(n_t, t)
    return cols, meta
