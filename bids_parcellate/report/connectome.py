"""Connectome figure: the matrix and the graph on a glass brain, one row per scale.

Drawn with the report's own SVG canvas (:mod:`bids_parcellate.report.canvas`): the
matrix is a raster panel like the correlation figure; the graph is nilearn's
``plot_connectome`` (nodes at the parcel centroids, the strongest edges), rendered by
matplotlib's Agg backend into an RGB raster placed in the SVG. matplotlib and
nilearn.plotting are imported only here, so they cost nothing unless connectomes are
requested (``--connectivity``).

Drawing is deterministic: the same inputs give the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bids_parcellate.report.canvas import GRID, WIDTH, Canvas, block_average, quantize

#: Height of one row (a scale) in CSS pixels.
ROW = 230
#: Edges drawn on the glass brain: the strongest, by absolute value.
EDGE_THRESHOLD = "95%"


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    shown = np.nan_to_num(np.array(matrix, dtype=np.float64))
    np.fill_diagonal(shown, 0.0)
    return shown


def _limit(values: np.ndarray) -> float:
    peak = float(np.abs(values).max()) if values.size else 0.0
    return peak if peak > 0 else 1.0


def glass_brain(matrix: np.ndarray, centroids_mm: np.ndarray, width: int, height: int,
                limit: float) -> np.ndarray:
    """RGB raster (height x width) of nilearn's ``plot_connectome``.

    Parameters
    ----------
    matrix : ndarray, shape (n, n)
        Diagonal ignored.
    centroids_mm : ndarray, shape (n, 3)
        Node positions (world mm, MNI-like space).
    width, height : int
        Raster size in pixels.
    limit : float
        Edge colour range is [-limit, limit].

    Returns
    -------
    ndarray
        uint8, shape (height, width, 3).

    Raises
    ------
    ValueError
        When there is not one centroid per node.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: never open a window
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from nilearn import plotting

    centroids_mm = np.asarray(centroids_mm, dtype=np.float64)
    if centroids_mm.shape != (matrix.shape[0], 3):
        raise ValueError(f"{centroids_mm.shape[0]} centroids for a {matrix.shape[0]}-node "
                         "matrix")
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    agg = FigureCanvasAgg(fig)
    plotting.plot_connectome(_off_diagonal(matrix), centroids_mm,
                             edge_threshold=EDGE_THRESHOLD, edge_vmin=-limit,
                             edge_vmax=limit, node_size=10, figure=fig, colorbar=False,
                             annotate=True)
    agg.draw()
    return np.asarray(agg.buffer_rgba())[..., :3].copy()


def centroids_mm(labels: np.ndarray, voxels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the centroids of parcels 1..max(labels).

    Parameters
    ----------
    labels : ndarray of int, shape (n_voxels,)
        A parcel label per voxel (0 for none).
    voxels : ndarray, shape (n_voxels, 3)
        Their voxel indices (``np.argwhere`` of the mask the labels run over).
    affine : ndarray, shape (4, 4)
        Voxel to world.

    Returns
    -------
    ndarray, shape (max(labels), 3)
        Centroids in mm (a label without voxels is put at voxel (0, 0, 0)).
    """
    import nibabel as nib

    n = int(labels.max())
    counts = np.maximum(np.bincount(labels, minlength=n + 1)[1:], 1)
    mean = np.stack([np.bincount(labels, weights=voxels[:, d].astype(np.float64),
                                 minlength=n + 1)[1:] / counts for d in range(3)], axis=1)
    return nib.affines.apply_affine(affine, mean)


def connectome(matrices: Mapping[int, np.ndarray], centroids: Mapping[int, np.ndarray],
               measure: str) -> bytes:
    """One row per scale: the matrix (diagonal blanked) and the graph on a glass brain.

    Parameters
    ----------
    matrices : mapping
        scale -> (n_parcels, n_parcels) matrix.
    centroids : mapping
        scale -> (n_parcels, 3) parcel centroids in mm (the dseg table's x, y, z).
    measure : str
        Name of the measure (titles and colour-bar label).

    Returns
    -------
    bytes
        SVG document.
    """
    scales = sorted(matrices)
    panel = ROW - 40
    brain_w = WIDTH - panel - 150
    canvas = Canvas(WIDTH, ROW * len(scales))
    for k, scale in enumerate(scales):
        top = k * ROW + 26
        shown = _off_diagonal(matrices[scale])
        limit = _limit(shown)
        title = f"scale {scale}: {len(shown)} parcels, {measure}"
        shown, block = block_average(shown)  # more parcels than pixels: block means
        if block > 1:
            title += f" ({block}×{block} blocks averaged)"
        canvas.image(10, top, panel, panel,
                     indexed=quantize((shown / limit + 1) / 2, "RdBu_r"))
        canvas.rect(10, top, panel, panel, stroke=GRID)
        canvas.text(10, top - 8, title, size=11)
        canvas.colorbar(panel + 18, top, 10, panel, "RdBu_r",
                        [(0.0, f"{-limit:.2g}"), (0.5, "0"), (1.0, f"{limit:.2g}")])
        rgb = glass_brain(matrices[scale], centroids[scale], int(brain_w), int(panel),
                          limit)
        canvas.image(panel + 70, top, brain_w, panel, rgb=rgb)
        canvas.text(panel + 70, top - 8, f"strongest {100 - int(EDGE_THRESHOLD[:-1])} % "
                                         "of edges at the parcel centroids", size=10)
    return canvas.svg()
