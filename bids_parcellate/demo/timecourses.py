"""Time courses of a run: parcel signals, head motion and the other confound sources."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bids_parcellate.demo.model import FD_RADIUS, HIGH_PASS_PERIOD, PARCEL_CORR_MM


def centroids_mm(labels: np.ndarray, n_parcels: int, affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the parcel centroids.

    Parameters
    ----------
    labels : numpy.ndarray of int
        Labels ``1..n_parcels`` (0: background).
    n_parcels : int
        Number of parcels.
    affine : numpy.ndarray
        Voxel-to-world affine.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_parcels, 3)``.
    """
    idx = np.nonzero(labels)
    lab = labels[idx]
    counts = np.bincount(lab, minlength=n_parcels + 1)[1:]
    cent = np.column_stack(
        [np.bincount(lab, weights=i.astype(float), minlength=n_parcels + 1)[1:] for i in idx]
    ) / counts[:, None]
    return cent @ affine[:3, :3].T + affine[:3, 3]


def parcel_mixing(labels: np.ndarray, n_parcels: int, affine: np.ndarray) -> np.ndarray:
    """Cholesky factor of the correlation ``exp(-d_ij / PARCEL_CORR_MM)`` between parcels.

    Parameters
    ----------
    labels, n_parcels, affine
        As for :func:`centroids_mm` (``d_ij``: distance between centroids).

    Returns
    -------
    numpy.ndarray
        Lower-triangular matrix, shape ``(n_parcels, n_parcels)``.
    """
    centroids = centroids_mm(labels, n_parcels, affine)
    dist = np.linalg.norm(centroids[:, None, :] - centroids[None, :, :], axis=-1)
    return np.linalg.cholesky(np.exp(-dist / PARCEL_CORR_MM) + 1e-9 * np.eye(n_parcels))


def band_limited(
    rng: np.random.Generator, n_t: int, n_series: int, tr: float,
    low: float = 0.01, high: float = 0.1,
) -> np.ndarray:
    """Band-limited Gaussian noise, zero mean and unit variance per column.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    n_t : int
        Number of volumes.
    n_series : int
        Number of series.
    tr : float
        Repetition time (s).
    low, high : float, default=0.01, 0.1
        Pass band (Hz); very short runs keep their lowest non-zero frequencies.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_t, n_series)``.
    """
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


def cosine_basis(n_t: int, tr: float, period: float = HIGH_PASS_PERIOD) -> np.ndarray:
    """DCT high-pass regressors exactly as nipype / fMRIPrep compute them.

    Parameters
    ----------
    n_t : int
        Number of volumes.
    tr : float
        Repetition time (s).
    period : float, default=HIGH_PASS_PERIOD
        Cut-off period (s).

    Returns
    -------
    numpy.ndarray
        Shape ``(n_t, n_cosines)`` (possibly no column).
    """
    order = int(np.floor(2 * n_t * tr / period))
    times = np.arange(n_t)
    cols = [
        np.sqrt(2.0 / n_t) * np.cos(np.pi / n_t * (times + 0.5) * k)
        for k in range(1, order)
    ]
    return np.column_stack(cols) if cols else np.zeros((n_t, 0))


def nonsteady_profile(n_t: int, n_nonsteady: int) -> np.ndarray:
    """Relative brightening of the first volumes (+60 %, +30 %, ...), 0 elsewhere.

    Parameters
    ----------
    n_t : int
        Number of volumes.
    n_nonsteady : int
        Number of non-steady-state volumes.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_t,)``.
    """
    nss = np.zeros(n_t)
    nss[:n_nonsteady] = 0.6 * 0.5 ** np.arange(n_nonsteady)
    return nss


def spike_positions(
    rng: np.random.Generator, n_t: int, n_nonsteady: int, n_spikes: int
) -> np.ndarray:
    """Spike volumes, away from the run edges and from each other if possible.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    n_t : int
        Number of volumes.
    n_nonsteady : int
        Number of non-steady-state volumes (never spikes).
    n_spikes : int
        Number of spikes.

    Returns
    -------
    numpy.ndarray of int
        Sorted volume indices.
    """
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


def parcel_time_courses(
    rng: np.random.Generator, n_t: int, n_parcels: int, tr: float, mixing: np.ndarray
) -> np.ndarray:
    """Correlated, band-limited, unit-variance parcel time courses ``P``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    n_t, n_parcels : int
        Number of volumes and of parcels.
    tr : float
        Repetition time (s).
    mixing : numpy.ndarray
        Cholesky factor from :func:`parcel_mixing`.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_t, n_parcels)``.
    """
    parcel_ts = band_limited(rng, n_t, n_parcels, tr) @ mixing.T
    parcel_ts /= parcel_ts.std(axis=0)
    return parcel_ts


def motion_parameters(
    rng: np.random.Generator, n_t: int, tr: float, spikes: np.ndarray
) -> np.ndarray:
    """Rigid-body motion (trans_x/y/z in mm, rot_x/y/z in rad), shape (T, 6).

    A smooth random walk plus a small respiratory oscillation; the framewise
    displacement stays below 0.35 mm except on ``spikes`` where the head
    jumps (FD between 0.9 and 1.6 mm).

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    n_t : int
        Number of volumes.
    tr : float
        Repetition time (s).
    spikes : numpy.ndarray of int
        Volumes on which the head jumps.

    Returns
    -------
    numpy.ndarray
        Motion parameters, shape ``(n_t, 6)``.
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


def confound_sources(
    rng: np.random.Generator, motion: np.ndarray, n_t: int, tr: float
) -> np.ndarray:
    """The confound sources ``N``: motion, drift, global signal and respiration.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    motion : numpy.ndarray
        Motion parameters from :func:`motion_parameters`.
    n_t : int
        Number of volumes.
    tr : float
        Repetition time (s).

    Returns
    -------
    numpy.ndarray
        Shape ``(n_t, 10)``: centred motion (6), linear and quadratic drift (2),
        global fluctuation and aliased respiration (unit variance).
    """
    tn = np.linspace(-1.0, 1.0, n_t)
    drift = np.column_stack([tn, tn**2 - np.mean(tn**2)])
    glob = band_limited(rng, n_t, 1, tr)[:, 0]
    resp_f = rng.uniform(0.15, 0.24)
    physio = np.sin(2 * np.pi * resp_f * tr * np.arange(n_t) + rng.uniform(0, 2 * np.pi))
    physio += 0.3 * rng.standard_normal(n_t)
    physio = (physio - physio.mean()) / physio.std()
    motion_c = motion - motion.mean(axis=0)
    return np.column_stack([motion_c, drift, glob, physio])
