"""Clustering features from cleaned runs: spatial smoothing within the mask, column
standardisation, the reduced (voxels x components) feature matrix, and the voxel grid's
connectivity graph that the spatially constrained methods use
(:mod:`bids_parcellate.learn.methods`)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from scipy import ndimage, sparse

from bids_parcellate.runtime.parallel import for_each_block


# --------------------------------------------------------------------------- features
def smooth_masked(data: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                  fwhm: float, chunk: int | None = None, *, n_jobs: int = 1) -> np.ndarray:
    """Gaussian smoothing restricted to the mask (normalised convolution).

    Each volume is smoothed with the mask as weights and divided by the smoothed mask,
    so brain signal does not fade towards the mask edge and no out-of-brain signal
    leaks in (nilearn smooths the whole image, background included, before masking).

    Parameters
    ----------
    data : ndarray, shape (n_times, n_voxels)
    mask : ndarray of bool, 3D
    affine : ndarray (4, 4)
    fwhm : float
        Full width at half maximum in mm; 0 returns ``data`` unchanged.
    chunk : int, optional
        Volumes smoothed at once (bounds memory); default: about 8 MB of volumes, which
        stays under glibc's mmap threshold (freed blocks are reused, not page-faulted).
    n_jobs : int
        Threads smoothing blocks of volumes in parallel (scipy.ndimage releases the GIL).

    Returns
    -------
    ndarray, shape (n_times, n_voxels), float32
        A transposed view of a C-contiguous (n_voxels, n_times) array, so that
        ``result.T`` (voxel features) needs no copy.
    """
    if not fwhm:
        return data
    voxel_size = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    sigma = fwhm / (np.sqrt(8 * np.log(2)) * voxel_size)
    # crop to the mask's bounding box plus the kernel's reach
    margin = np.ceil(4 * sigma).astype(int)
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub_mask = mask[box]
    inside = np.flatnonzero(sub_mask)
    weight = ndimage.gaussian_filter(sub_mask.astype(np.float32), sigma, mode="constant")
    inv_norm = (1.0 / weight.ravel()[inside]).astype(np.float32)
    n_times = data.shape[0]
    if chunk is None:
        chunk = max(1, 2 * 2**20 // sub_mask.size)
    out = np.empty((data.shape[1], n_times), dtype=np.float32)

    buffers = threading.local()  # per thread: zeros outside the mask stay zeros

    def smooth_block(start: int) -> None:
        stop = min(start + chunk, n_times)
        if not hasattr(buffers, "source"):
            buffers.source = np.zeros((chunk, sub_mask.size), dtype=np.float32)
            buffers.result = np.empty((chunk, *sub_mask.shape), dtype=np.float32)
        source, result = buffers.source[:stop - start], buffers.result[:stop - start]
        source[:, inside] = data[start:stop]
        ndimage.gaussian_filter(source.reshape(result.shape), (0, *sigma), mode="constant",
                                output=result)
        smoothed = result.reshape(source.shape)[:, inside]
        smoothed *= inv_norm
        out[:, start:stop] = smoothed.T

    for_each_block(smooth_block, range(0, n_times, chunk), n_jobs)
    return out.T


def standardize_columns(data: np.ndarray) -> np.ndarray:
    """Z-score every column (ddof=1); constant columns become 0. In place when float32."""
    data = np.asarray(data, dtype=np.float32)
    data -= data.mean(axis=0, dtype=np.float64).astype(np.float32)
    # sum of squares without the float64 temporary copy that ``np.std`` makes
    sum_sq = np.einsum("ij,ij->j", data, data, dtype=np.float64)
    std = np.sqrt(sum_sq / max(data.shape[0] - 1, 1)).astype(np.float32)
    std[std < np.finfo(np.float32).eps] = 1.0
    data /= std
    return data


def prepare_runs(runs_data: Sequence[np.ndarray], mask: np.ndarray, affine: np.ndarray,
                 fwhm: float, *, n_jobs: int = 1) -> list[np.ndarray]:
    """Each cleaned run smoothed within the mask and z-scored per voxel (float32).

    ``runs_data`` is not modified (without smoothing the runs are copied first:
    :func:`standardize_columns` works in place, and the cleaned runs are still needed for
    the timeseries and the quality figures).

    Parameters
    ----------
    runs_data : sequence of ndarray, shape (n_kept, n_voxels)
        Cleaned runs.
    mask : ndarray of bool, 3D
    affine : ndarray, shape (4, 4)
    fwhm : float
        Smoothing (mm) within the mask; 0: none.
    n_jobs : int
        Threads for the smoothing.

    Returns
    -------
    list of ndarray, shape (n_kept, n_voxels), float32
    """
    return [standardize_columns(smooth_masked(x, mask, affine, fwhm, n_jobs=n_jobs) if fwhm
                                else np.array(x, dtype=np.float32)) for x in runs_data]


def build_features(runs_data: Sequence[np.ndarray], mask: np.ndarray, affine: np.ndarray,
                   fwhm: float, n_components: int,
                   prepared: Sequence[np.ndarray] | None = None, *,
                   n_jobs: int = 1, weighting: float = 1.0) -> np.ndarray:
    """Voxel features for clustering from the cleaned runs of one unit.

    Each run is smoothed within the mask and z-scored per voxel (:func:`prepare_runs`,
    or ``prepared`` when the caller has them already); runs are concatenated
    in time. When there are more volumes than ``n_components`` the data are reduced
    with an exact thin SVD computed from the (time x time) Gram matrix, which is exact
    and much cheaper than a randomized SVD when volumes << voxels.

    Parameters
    ----------
    runs_data : sequence of ndarray, shape (n_times, n_voxels)
        Cleaned runs (ignored when ``prepared`` is given).
    mask : ndarray of bool, 3D
    affine : ndarray (4, 4)
    fwhm : float
        Smoothing (mm) within the mask.
    n_components : int
        Components kept (at most the number of volumes).
    prepared : sequence of ndarray, optional
        The runs already smoothed and z-scored (:func:`prepare_runs`).
    n_jobs : int
        Threads for the smoothing.
    weighting : float
        Exponent ``alpha`` of the singular values: with the data ``X = U S V^T``
        (voxels x volumes), the features are ``U S^alpha``. 1 (default) gives
        ``X V = U S``, components weighted by their singular values, so Ward minimises
        the within-parcel variance of the data; 0 whitens (every component weighs the
        same, as nilearn's ``Parcellations``); values in between weigh weak components
        partially. Components whose singular value is below ``1e-6`` times the largest
        (the data's null space, e.g. the directions removed by confound regression)
        are dropped when ``alpha < 1``. With ``alpha != 1`` the SVD is computed even when there are
        no more volumes than ``n_components`` (all components are then kept).

    Returns
    -------
    ndarray, shape (n_voxels, n_features), float32
    """
    blocks = (list(prepared) if prepared is not None
              else prepare_runs(runs_data, mask, affine, fwhm, n_jobs=n_jobs))
    # (n_voxels, n_times): smoothed runs are transposed views of that C-ordered layout,
    # so the concatenation is the only copy
    columns = [b.T for b in blocks]
    del blocks
    data = np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0]
    del columns
    n_times = data.shape[1]
    if n_times <= n_components and weighting == 1.0:
        return np.ascontiguousarray(data)
    gram = np.zeros((n_times, n_times))
    for start in range(0, data.shape[0], 16384):
        part = data[start:start + 16384].astype(np.float64)
        gram += part.T @ part
    eigval, eigvec = np.linalg.eigh(gram)
    order = np.argsort(eigval)[::-1][:n_components]
    basis = eigvec[:, order]
    # deterministic sign: largest-magnitude loading positive
    signs = np.sign(basis[np.abs(basis).argmax(axis=0), np.arange(basis.shape[1])])
    signs[signs == 0] = 1
    basis = basis * signs
    if weighting != 1.0:
        # X V = U S, so X V S^(alpha - 1) = U S^alpha; the null space is dropped
        singular = np.sqrt(np.maximum(eigval[order], 0.0))
        live = singular > 1e-6 * singular[0]
        basis = basis[:, live] * singular[live] ** (weighting - 1.0)
    basis = basis.astype(np.float32)
    return np.ascontiguousarray(data @ basis)


def grid_connectivity(mask: np.ndarray) -> sparse.csr_matrix:
    """6-neighbour connectivity of the in-mask voxels (C order), with the diagonal.

    The same matrix as scikit-learn's ``grid_to_graph(*mask.shape, mask=mask)`` (tested),
    built 7x faster (0.04 instead of 0.3 s at 2 mm) from shifted index volumes.
    """
    n = int(mask.sum())
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[mask] = np.arange(n)
    rows, cols = [], []
    for axis in range(3):
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis] = slice(None, -1)
        upper[axis] = slice(1, None)
        a, b = index[tuple(lower)], index[tuple(upper)]
        both = (a >= 0) & (b >= 0)
        rows.append(a[both])
        cols.append(b[both])
    r, c = np.concatenate(rows), np.concatenate(cols)
    diagonal = np.arange(n)
    graph = sparse.csr_matrix(
        (np.ones(2 * r.size + n, dtype=np.int64),
         (np.concatenate([r, c, diagonal]), np.concatenate([c, r, diagonal]))),
        shape=(n, n))
    graph.sort_indices()
    return graph


def labels_to_volume(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Put in-mask labels back on the 3D grid (0 outside the mask), int16 when it fits.

    Parameters
    ----------
    labels : ndarray of int, shape (n_voxels,)
        Labels of the in-mask voxels (C order).
    mask : ndarray of bool, 3D

    Returns
    -------
    ndarray, 3D, int16 (int32 beyond 32,766 labels)
    """
    dtype = np.int16 if labels.max() < np.iinfo(np.int16).max else np.int32
    volume = np.zeros(mask.shape, dtype=dtype)
    volume[mask] = labels
    return volume
