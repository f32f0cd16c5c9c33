"""The data of one run: brain voxels, scalp shell and virtual noise regions.

See the generative model in :mod:`bids_parcellate.demo`.  The random draws are
made in a fixed order from the run's own stream, so every step below must keep
its place in :func:`simulate_run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from bids_parcellate.demo.confounds import confounds_table
from bids_parcellate.demo.grid import Geometry, random_fields
from bids_parcellate.demo.model import (
    BASELINE,
    FD_RADIUS,
    NOISE_SIGMA_VOX,
    SIGNAL_FRACTION,
    SPIKE,
    W_DRIFT,
    W_GLOBAL,
    W_MOTION,
    W_PHYSIO,
)
from bids_parcellate.demo.timecourses import (
    confound_sources,
    motion_parameters,
    nonsteady_profile,
    parcel_mixing,
    parcel_time_courses,
    spike_positions,
)

#: Volumes of voxel noise drawn and smoothed at a time.
_TIME_CHUNK = 16
# Weight scales of the confound sources in the virtual CSF and WM regions.
_CSF_SCALE = np.array([0.03] * 3 + [0.03 * FD_RADIUS] * 3 + [0.01, 0.01, 0.008, 0.008])
_WM_SCALE = np.array([0.015] * 3 + [0.015 * FD_RADIUS] * 3 + [0.01, 0.01, 0.005, 0.001])


@dataclass
class SubjectMaps:
    """Per-participant maps, fixed across the participant's runs.

    Attributes
    ----------
    labels : numpy.ndarray of int
        Truth of each brain voxel (C order of the mask), ``1..K``.
    baseline, amplitude : numpy.ndarray
        ``B`` and ``A`` of the model, per brain voxel.
    shell_baseline : numpy.ndarray
        Mean intensity of each scalp-shell voxel.
    mixing : numpy.ndarray
        ``(K, K)`` Cholesky factor of the parcel correlation.
    """

    labels: np.ndarray
    baseline: np.ndarray
    amplitude: np.ndarray
    shell_baseline: np.ndarray
    mixing: np.ndarray


def make_subject_maps(
    rng: np.random.Generator, geometry: Geometry, labels: np.ndarray, n_parcels: int
) -> SubjectMaps:
    """Draw a participant's baseline, amplitude and scalp maps.

    Parameters
    ----------
    rng : numpy.random.Generator
        The participant's stream.
    geometry : Geometry
        The grid.
    labels : numpy.ndarray of int
        The participant's truth (3D).
    n_parcels : int
        Number of parcels.

    Returns
    -------
    SubjectMaps
        The maps.
    """
    fields = random_fields(rng, geometry.basis, 2)
    baseline = BASELINE * np.clip(1.0 + 0.08 * fields[0], 0.7, 1.3)
    amplitude = np.clip(1.0 + 0.15 * fields[1], 0.6, 1.4)
    amplitude /= amplitude.mean()
    shell_field = random_fields(rng, geometry.shell_basis, 1)[0]
    return SubjectMaps(
        labels=labels[geometry.mask_idx].astype(np.intp),
        baseline=baseline,
        amplitude=amplitude,
        shell_baseline=200.0 * np.clip(1.0 + 0.3 * shell_field, 0.3, None),
        mixing=parcel_mixing(labels, n_parcels, geometry.affine),
    )


def _spatial_weights(
    rng: np.random.Generator, basis: np.ndarray, n_vox: int
) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``W`` of the 10 confound sources and the spike map (fractions of ``B``)."""
    f = random_fields(rng, basis, 11)
    weights = np.empty((10, n_vox))
    weights[0:3] = W_MOTION * f[0:3]  # per mm
    weights[3:6] = W_MOTION * FD_RADIUS * f[3:6]  # per rad
    weights[6:8] = W_DRIFT * (0.5 + f[6:8])
    weights[8] = W_GLOBAL * np.clip(1.0 + 0.3 * f[8], 0.2, None)
    weights[9] = W_PHYSIO * np.abs(f[9])
    spike_map = SPIKE * np.clip(1.0 + 0.3 * f[10], 0.2, None)
    return weights, spike_map


def _voxel_noise(
    rng: np.random.Generator, mask: np.ndarray, n_t: int, scale: np.ndarray
) -> np.ndarray:
    """Gaussian noise, lightly smoothed on the grid, with standard deviation ``scale``.

    Returns float32 in-mask data, shape ``(n_t, V)``.
    """
    bbox = ndimage.find_objects(mask.astype(np.int8))[0]
    bbox = tuple(
        slice(max(s.start - 3, 0), min(s.stop + 3, n))
        for s, n in zip(bbox, mask.shape, strict=True)
    )
    sub_mask = mask[bbox]
    impulse = np.zeros(9)
    impulse[4] = 1.0
    k1 = ndimage.gaussian_filter1d(impulse, NOISE_SIGMA_VOX)
    norm = np.float32(np.sum(k1**2) ** 1.5) ** 0.5
    brain = np.empty((n_t, scale.size), dtype=np.float32)
    buf = np.empty((min(_TIME_CHUNK, n_t), *sub_mask.shape), dtype=np.float32)
    for t0 in range(0, n_t, _TIME_CHUNK):
        n = min(_TIME_CHUNK, n_t - t0)
        raw = rng.standard_normal((n, *sub_mask.shape), dtype=np.float32)
        out = buf[:n]
        ndimage.gaussian_filter(
            raw, sigma=(0, NOISE_SIGMA_VOX, NOISE_SIGMA_VOX, NOISE_SIGMA_VOX),
            output=out,
        )
        brain[t0 : t0 + n] = out[:, sub_mask]
    brain *= (scale / norm).astype(np.float32)
    return brain


def _add_signal(
    brain: np.ndarray, subject: SubjectMaps, parcel_ts: np.ndarray, sources: np.ndarray,
    weights: np.ndarray,
) -> None:
    """Add the parcel signal and the confound sources to the noise (in place)."""
    base = subject.baseline
    amp = (base * SIGNAL_FRACTION * subject.amplitude).astype(np.float32)
    brain += parcel_ts.astype(np.float32)[:, subject.labels - 1] * amp
    brain += sources.astype(np.float32) @ (weights * base).astype(np.float32)


def _scalp(rng: np.random.Generator, subject: SubjectMaps, nss: np.ndarray) -> np.ndarray:
    """Integer-valued scalp-shell data, shape ``(T, Vs)`` (float32)."""
    sb = subject.shell_baseline.astype(np.float32)
    scalp = rng.standard_normal((nss.size, sb.size), dtype=np.float32)
    scalp *= np.float32(0.05) * sb
    scalp += sb
    scalp *= (1.0 + nss).astype(np.float32)[:, None]
    np.rint(scalp, out=scalp)  # scanner-like integers (and fast to compress)
    return scalp


def _noise_roi(
    rng: np.random.Generator, n: int, level: float, w_scale: np.ndarray, noise: float,
    sources: np.ndarray, spikes: tuple[np.ndarray, np.ndarray], nss: np.ndarray,
) -> np.ndarray:
    """A virtual noise region (CSF or WM): confound sources and spikes, no neural signal.

    ``spikes`` holds the spike volumes and their relative amplitudes.
    """
    n_t = nss.size
    b = level * (1.0 + 0.05 * rng.standard_normal(n))
    w = rng.standard_normal((10, n)) * w_scale[:, None]
    w[6:10] = np.abs(w[6:10])
    vals = b * (1.0 + sources @ w + noise * rng.standard_normal((n_t, n)))
    for t, a in zip(*spikes, strict=True):
        vals[t] += a * SPIKE * b
    return vals * (1.0 + nss)[:, None]


@dataclass(frozen=True)
class RunData:
    """The simulated data of one run.

    Attributes
    ----------
    brain : numpy.ndarray of float32
        In-mask data, shape ``(T, V)`` (C order of the mask voxels).
    scalp : numpy.ndarray of float32
        Shell data, shape ``(T, Vs)``.
    confounds : dict of str to numpy.ndarray
        Confound columns, in fMRIPrep order.
    meta : dict
        Confounds JSON sidecar.
    """

    brain: np.ndarray
    scalp: np.ndarray
    confounds: dict[str, np.ndarray]
    meta: dict[str, Any]


def simulate_run(
    rng: np.random.Generator,
    *,
    geometry: Geometry,
    subject: SubjectMaps,
    n_parcels: int,
    n_t: int,
    tr: float,
    n_nonsteady: int,
    n_spikes: int,
    snr: float,
) -> RunData:
    """Simulate one run.

    Parameters
    ----------
    rng : numpy.random.Generator
        The run's stream.
    geometry : Geometry
        The grid.
    subject : SubjectMaps
        The participant's maps.
    n_parcels, n_t : int
        Number of parcels and of volumes.
    tr : float
        Repetition time (s).
    n_nonsteady, n_spikes : int
        Number of non-steady-state volumes and of spikes.
    snr : float
        Signal-to-noise ratio.

    Returns
    -------
    RunData
        Brain and scalp data, confound columns and sidecar.
    """
    base = subject.baseline
    nss = nonsteady_profile(n_t, n_nonsteady)
    spikes = spike_positions(rng, n_t, n_nonsteady, n_spikes)
    parcel_ts = parcel_time_courses(rng, n_t, n_parcels, tr, subject.mixing)
    motion = motion_parameters(rng, n_t, tr, spikes)
    sources = confound_sources(rng, motion, n_t, tr)
    weights, spike_map = _spatial_weights(rng, geometry.basis, subject.labels.size)
    brain = _voxel_noise(rng, geometry.mask, n_t, base * (SIGNAL_FRACTION / snr))
    _add_signal(brain, subject, parcel_ts, sources, weights)
    spike_amp = rng.uniform(0.8, 1.2, spikes.size)
    for t, a in zip(spikes, spike_amp, strict=True):
        brain[t] += (a * spike_map * base).astype(np.float32)
    brain += base.astype(np.float32)
    brain *= (1.0 + nss).astype(np.float32)[:, None]
    scalp = _scalp(rng, subject, nss)
    csf_roi = _noise_roi(rng, 150, 1300.0, _CSF_SCALE, 0.02, sources, (spikes, spike_amp), nss)
    wm_roi = _noise_roi(rng, 300, 850.0, _WM_SCALE, 0.01, sources, (spikes, spike_amp), nss)
    cols, meta = confounds_table(brain, csf_roi, wm_roi, motion, n_nonsteady, tr)
    return RunData(brain=brain, scalp=scalp, confounds=cols, meta=meta)
