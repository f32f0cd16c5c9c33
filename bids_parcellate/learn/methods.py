"""Learn parcellations: features from cleaned runs, then a method for every scale.

Methods registry: ``METHODS[name](features, mask, scales, random_state, **options)
-> {scale: labels}`` with ``features`` of shape (n_voxels, n_features) and ``labels``
int32 arrays 1..n over the in-mask voxels (C order of the 3D mask). ``options`` are
keyword-only knobs of the method (ReNA's ``scaling`` and ``n_iter``, k-means'
``n_init`` and ``batch_size``; hierarchical methods take ``memo``).

Hierarchical methods (ward, complete, average) build one tree and cut it at every
requested scale: the tree does not depend on the number of clusters, so it can be kept
across invocations (``memo``, see :mod:`bids_parcellate.runtime.cache`). Ward runs on
supervoxels first when the grid is large (:mod:`bids_parcellate.learn.ward`).

Spatially constrained methods on a mask made of several disconnected pieces: the
connectivity graph has one component per piece. scikit-learn completes it by linking
every pair of pieces through their closest voxels *in feature space*, so ward, complete
and average can put voxels of different pieces in one parcel (nilearn issue #1750); ReNA
never merges across pieces, so it cannot give fewer parcels than pieces.
:func:`parcellate` detects this and warns once per mask.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from bids_parcellate.config import UserError
from bids_parcellate.learn.features import grid_connectivity
from bids_parcellate.learn.ward import cut_tree, ward_labels

LOGGER = logging.getLogger("bids_parcellate")

LabelsByScale = dict[int, np.ndarray]


# --------------------------------------------------------------------------- labels
def order_labels(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Renumber cluster ids to 1..n by parcel centroid (x, then y, then z).

    The order depends only on the partition, so it is identical across reruns and
    across methods that find the same parcels.

    Parameters
    ----------
    labels : ndarray of int, shape (n_voxels,)
        Any cluster ids over the in-mask voxels (C order of ``mask``).
    mask : ndarray of bool, 3D
        Gives the voxel coordinates (voxel indices, not mm).

    Returns
    -------
    ndarray of int32, shape (n_voxels,)
        1..n, in order of the parcels' centroids.
    """
    _, inverse = np.unique(labels, return_inverse=True)
    n = int(inverse.max()) + 1
    coords = np.argwhere(mask).astype(np.float64)
    counts = np.bincount(inverse, minlength=n)
    centroids = np.stack(
        [np.bincount(inverse, weights=coords[:, d], minlength=n) / counts for d in range(3)],
        axis=1,
    )
    keys = np.round(centroids, 6)
    order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))
    rank = np.empty(n, dtype=np.int32)
    rank[order] = np.arange(1, n + 1, dtype=np.int32)
    return rank[inverse]


def check_scales(scales: Sequence[int], n_voxels: int, option: str = "--n-parcels") -> None:
    """Every scale must be below the number of voxels (raises :class:`UserError`).

    Parameters
    ----------
    scales : sequence of int
    n_voxels : int
        Voxels in the brain mask.
    option : str
        The option named in the message (``--n-maps`` for decompositions).

    Raises
    ------
    UserError
        Naming every scale that is not below ``n_voxels``.
    """
    too_big = [n for n in scales if n >= n_voxels]
    if too_big:
        raise UserError(
            f"{option} {' '.join(map(str, too_big))}: must be below the {n_voxels} "
            "voxels in the brain mask"
        )


def mask_pieces(mask: np.ndarray) -> np.ndarray:
    """Sizes (voxels, largest first) of the 6-connected pieces of a mask: the
    components of :func:`grid_connectivity`."""
    labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 1))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return np.sort(sizes)[::-1]


#: Methods whose parcels follow the voxel grid's connectivity.
SPATIAL_METHODS = ("ward", "complete", "average", "rena")


def warn_disconnected(mask: np.ndarray, method: str) -> int:
    """Warn (once) when a spatially constrained method runs on a disconnected mask;
    return the number of pieces.

    Parameters
    ----------
    mask : ndarray of bool, 3D
    method : str
        A key of :data:`METHODS`; only those of :data:`SPATIAL_METHODS` warn.

    Returns
    -------
    int
        6-connected pieces of the mask (1 when connected).
    """
    sizes = mask_pieces(mask)
    if len(sizes) > 1 and method in SPATIAL_METHODS:
        shown = ", ".join(map(str, sizes[:5])) + (", ..." if len(sizes) > 5 else "")
        consequence = (
            "ReNA never merges across pieces, so there are at least as many parcels as "
            "pieces" if method == "rena" else
            "scikit-learn links the pieces through their most similar voxels, so a parcel "
            "may span several pieces (non-contiguous; nilearn issue #1750)")
        LOGGER.warning("the brain mask has %d disconnected pieces (6-connectivity; sizes %s "
                       "voxels): %s", len(sizes), shown, consequence)
    return len(sizes)


def _tree(features: np.ndarray, mask: np.ndarray, linkage: str) -> np.ndarray:
    from sklearn.cluster import linkage_tree

    connectivity = grid_connectivity(mask)
    with warnings.catch_warnings():
        # "the number of connected components ... > 1": reported once, precisely, by
        # warn_disconnected
        warnings.filterwarnings("ignore", message=".*connected components.*")
        children = linkage_tree(features, connectivity=connectivity, linkage=linkage)[0]
    return children


def fit_ward(features: np.ndarray, mask: np.ndarray, scales: Sequence[int],
             random_state: int, *, n_jobs: int = 1,
             memo: Callable | None = None) -> LabelsByScale:
    """Ward agglomeration on the voxel grid: supervoxels, then one exact size-weighted
    Ward tree cut at every scale (:mod:`bids_parcellate.learn.ward`); ``memo`` as for
    :func:`_hierarchical`.

    Parameters
    ----------
    features : ndarray, shape (n_voxels, n_features)
    mask : ndarray of bool, 3D
        The in-mask voxels, in C order, are the rows of ``features``.
    scales : sequence of int
        Numbers of parcels, each below ``n_voxels``.
    random_state : int
        Unused (deterministic).
    n_jobs : int
        Threads computing Ward costs (the labels do not depend on it).
    memo : callable, optional
        ``memo(name, compute) -> array``: a stored tree or ``compute()``'s.

    Returns
    -------
    dict
        scale -> int32 labels 1..n over the in-mask voxels (:func:`order_labels`).
    """
    labels = ward_labels(features, grid_connectivity(mask), scales, n_jobs=n_jobs,
                         memo=memo)
    return {k: order_labels(lab, mask) for k, lab in labels.items()}


def _hierarchical(linkage: str) -> Callable:
    def fit(features: np.ndarray, mask: np.ndarray, scales: Sequence[int],
            random_state: int, *, n_jobs: int = 1,
            memo: Callable | None = None) -> LabelsByScale:
        """``memo(name, compute)``: returns ``compute()``'s tree or a stored copy."""
        def build() -> np.ndarray:
            return _tree(features, mask, linkage)

        children = memo(f"tree-{linkage}", build) if memo is not None else build()
        n = features.shape[0]
        return {k: order_labels(cut_tree(children, n, k), mask) for k in scales}

    fit.__name__ = f"fit_{linkage}"
    fit.__doc__ = (f"{linkage.title()}-linkage agglomeration on the voxel grid; "
                   "one tree, cut at every scale.")
    return fit


def fit_kmeans(features: np.ndarray, mask: np.ndarray, scales: Sequence[int],
               random_state: int, *, n_init: int = 3, batch_size: int = 1024,
               n_jobs: int = 1) -> LabelsByScale:
    """MiniBatchKMeans on voxel features (as nilearn's Parcellations; not spatially
    constrained). Defaults as nilearn's ``Parcellations``.

    Parameters
    ----------
    features : ndarray, shape (n_voxels, n_features)
    mask : ndarray of bool, 3D
        The in-mask voxels, in C order, are the rows of ``features``.
    scales : sequence of int
        Numbers of parcels, each below ``n_voxels``.
    random_state : int
        Seed of every fit.
    n_init : int
        Initialisations per scale (``--kmeans-n-init``).
    batch_size : int
        Mini-batch size (``--kmeans-batch-size``).
    n_jobs : int
        Unused (scikit-learn's OpenMP threads are capped by ``--nprocs``).

    Returns
    -------
    dict
        scale -> int32 labels 1..n over the in-mask voxels (:func:`order_labels`).
    """
    from sklearn.cluster import MiniBatchKMeans

    out = {}
    for k in scales:
        est = MiniBatchKMeans(n_clusters=k, init="k-means++", n_init=n_init,
                              batch_size=batch_size, random_state=random_state)
        out[k] = order_labels(est.fit(features).labels_, mask)
    return out


def fit_hierarchical_kmeans(features: np.ndarray, mask: np.ndarray, scales: Sequence[int],
                            random_state: int, *, n_init: int = 10,
                            batch_size: int = 1000,
                            n_jobs: int = 1) -> LabelsByScale:
    """nilearn's HierarchicalKMeans (balanced parcel sizes); defaults as nilearn's
    ``Parcellations``.

    Parameters
    ----------
    features : ndarray, shape (n_voxels, n_features)
    mask : ndarray of bool, 3D
        The in-mask voxels, in C order, are the rows of ``features``.
    scales : sequence of int
        Numbers of parcels, each below ``n_voxels``.
    random_state : int
        Seed of every fit.
    n_init : int
        Initialisations of each k-means step (``--kmeans-n-init``).
    batch_size : int
        Mini-batch size (``--kmeans-batch-size``).
    n_jobs : int
        Unused.

    Returns
    -------
    dict
        scale -> int32 labels 1..n over the in-mask voxels (:func:`order_labels`).
    """
    from nilearn.regions import HierarchicalKMeans

    out = {}
    for k in scales:
        est = HierarchicalKMeans(n_clusters=k, init="k-means++", n_init=n_init,
                                 batch_size=batch_size, random_state=random_state)
        out[k] = order_labels(est.fit(features.T).labels_, mask)
    return out


def fit_rena(features: np.ndarray, mask: np.ndarray, scales: Sequence[int],
             random_state: int, *, scaling: bool = False, n_iter: int = 10,
             n_jobs: int = 1) -> LabelsByScale:
    """nilearn's ReNA (recursive nearest agglomeration, spatially constrained);
    ``scaling`` and ``n_iter`` as nilearn's (defaults as nilearn's ``Parcellations``).

    Parameters
    ----------
    features : ndarray, shape (n_voxels, n_features)
    mask : ndarray of bool, 3D
        The in-mask voxels, in C order, are the rows of ``features``.
    scales : sequence of int
        Numbers of parcels, each below ``n_voxels``.
    random_state : int
        Unused (ReNA is deterministic).
    scaling : bool
        nilearn's ``scaling`` (``--rena-scaling``).
    n_iter : int
        nilearn's ``n_iter`` (``--rena-n-iter``).
    n_jobs : int
        Unused.

    Returns
    -------
    dict
        scale -> int32 labels 1..n over the in-mask voxels (:func:`order_labels`).
    """
    import nibabel as nib
    from nilearn.regions import ReNA

    mask_img = nib.Nifti1Image(mask.astype(np.uint8), np.eye(4))
    out = {}
    for k in scales:
        est = ReNA(mask_img=mask_img, n_clusters=k, scaling=scaling, n_iter=n_iter)
        out[k] = order_labels(est.fit(features.T).labels_, mask)
    return out


METHODS: dict[str, Callable[..., LabelsByScale]] = {
    "ward": fit_ward,
    "complete": _hierarchical("complete"),
    "average": _hierarchical("average"),
    "kmeans": fit_kmeans,
    "hierarchical_kmeans": fit_hierarchical_kmeans,
    "rena": fit_rena,
}


#: Methods that build one tree for every scale (and accept ``memo``).
HIERARCHICAL_METHODS = ("ward", "complete", "average")


def parcellate(features: np.ndarray, mask: np.ndarray, method: str,
               scales: Sequence[int], random_state: int, *, memo: Callable | None = None,
               n_jobs: int = 1, warn_pieces: bool = True, **options) -> LabelsByScale:
    """Run ``method`` on ``features`` for every scale.

    Parameters
    ----------
    features : ndarray, shape (n_voxels, n_features)
    mask : ndarray of bool, 3D
    method : str
        A key of :data:`METHODS`.
    scales : sequence of int
    random_state : int
    memo : callable, optional
        ``memo(name, compute) -> array``: returns a stored result or ``compute()``
        (hierarchical methods keep their tree with it; see :mod:`bids_parcellate.runtime.cache`).
    n_jobs : int
        Threads, where a method splits its own work (the labels do not depend on it).
    warn_pieces : bool
        Warn when the mask is disconnected (:func:`warn_disconnected`); False for the
        extra fits of one unit (resamples, split halves), which the unit's fit reports.
    **options
        Keyword knobs of the method (``scaling``, ``n_iter`` for rena; ``n_init``,
        ``batch_size`` for kmeans and hierarchical_kmeans).

    Returns
    -------
    dict
        scale -> int32 labels (1..n) over the in-mask voxels.
    """
    check_scales(scales, features.shape[0])
    if warn_pieces:
        warn_disconnected(mask, method)
    if memo is not None and method in HIERARCHICAL_METHODS:
        options["memo"] = memo
    labels = METHODS[method](features, mask, sorted(scales), random_state, n_jobs=n_jobs,
                              **options)
    for k, lab in labels.items():
        found = int(lab.max())
        if found != k:
            LOGGER.warning("%s asked for %d parcels, found %d", method, k, found)
    return labels


