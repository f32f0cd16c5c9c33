"""Connectome figure: the matrix and the graph on a glass brain, one row per scale.

Drawn with the report's own SVG canvas (:mod:`bids_parcellate.report.canvas`): the
matrix is a raster panel like the correlation figure, its parcels in the order of
:func:`matrix_order` (average-linkage clustering of the matrix rows) with ticks naming
parcels by their index in the dseg table, and a colour bar in the measure's unit
(:data:`MEASURE_UNITS`); the graph is nilearn's ``plot_connectome`` (the strongest
edges), rendered by matplotlib's Agg backend into an RGB raster placed in the SVG, each
node at a voxel of its parcel (:func:`node_positions`: a parcel split into distant
pieces, as k-means makes, would otherwise have its node between them, often on the
midline). matplotlib and nilearn.plotting are imported only here, so they cost nothing
unless connectomes are requested (``--connectivity``).

Drawing is deterministic: the same inputs give the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

import nibabel as nib
import numpy as np

from bids_parcellate.report.canvas import (
    GRID,
    MUTED,
    WIDTH,
    Canvas,
    block_average,
    quantize,
)
from bids_parcellate.report.figures import cluster_order

#: Height of one row (a scale) in CSS pixels.
ROW = 270
#: Side of the matrix panel in CSS pixels.
PANEL = 190
#: Edges drawn on the glass brain: the strongest, by absolute value.
EDGE_THRESHOLD = "95%"
#: Most parcels named along each axis of the matrix.
MAX_TICKS = 10
#: Colour-bar label of each measure (``--connectivity`` kinds and ``meas-`` labels).
MEASURE_UNITS = {
    "correlation": "Pearson r",
    "partial correlation": "partial correlation r",
    "partialcorrelation": "partial correlation r",
    "tangent": "tangent-space covariance (a.u.)",
    "covariance": "covariance (a.u.)",
    "precision": "precision (a.u.)",
}


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


def node_positions(labels: np.ndarray, voxels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A point inside each parcel 1..max(labels), in world coordinates (mm).

    The voxel of the parcel's largest face-connected piece that is nearest that piece's
    centroid (world distances; ties: the first voxel in C order, the first largest
    piece). For a compact parcel that is about its centroid; a parcel made of distant
    pieces (k-means, regions) gets its node in its largest piece, not between the pieces
    where its centroid lies (often in no parcel, or on the midline).

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
        Positions in mm (a label without voxels is put at voxel (0, 0, 0)).
    """
    from scipy import ndimage

    labels = np.asarray(labels, dtype=np.int64)
    voxels = np.asarray(voxels, dtype=np.int64)
    n = int(labels.max()) if labels.size else 0
    positions = np.zeros((n, 3))
    if not n:
        return positions
    volume = np.zeros(tuple(voxels.max(axis=0) + 1), dtype=np.int64)
    volume[tuple(voxels.T)] = labels
    for index, box in enumerate(ndimage.find_objects(volume, max_label=n), start=1):
        if box is None:
            continue
        pieces, count = ndimage.label(volume[box] == index)  # face-connected
        largest = int(np.argmax(np.bincount(pieces.ravel())[1:])) + 1 if count > 1 else 1
        inside = np.argwhere(pieces == largest) + [s.start for s in box]
        world = nib.affines.apply_affine(affine, inside)
        nearest = np.argmin(((world - world.mean(axis=0)) ** 2).sum(axis=1))
        positions[index - 1] = inside[nearest]
    return nib.affines.apply_affine(affine, positions)


def matrix_order(matrix: np.ndarray) -> np.ndarray:
    """The order of the parcels of a connectivity matrix in the figure.

    The leaves of an average-linkage hierarchical clustering of its rows (diagonal set
    to 0), the distance between two parcels being 1 - the Pearson correlation of their
    rows (:func:`bids_parcellate.report.figures.cluster_order`, scipy): parcels
    connected alike end up side by side, whatever the measure. Deterministic.

    Parameters
    ----------
    matrix : ndarray, shape (n, n)

    Returns
    -------
    ndarray
        Indices 0..n-1 in display order.
    """
    rows = _off_diagonal(matrix)
    if len(rows) < 3:
        return np.arange(len(rows))
    with np.errstate(invalid="ignore", divide="ignore"):
        similarity = np.corrcoef(rows)
    return cluster_order(similarity)


def _ticks(order: np.ndarray, n_shown: int) -> list[tuple[int, str]]:
    """(position in display order, parcel index 1..n) of the parcels named on an axis."""
    step = int(np.ceil(n_shown / MAX_TICKS))
    return [(i, str(int(order[i]) + 1)) for i in range(0, n_shown, step)]


def connectome(matrices: Mapping[int, np.ndarray], centroids: Mapping[int, np.ndarray],
               measure: str) -> bytes:
    """One row per scale: the matrix (diagonal blanked) and the graph on a glass brain.

    The matrix shows its parcels in the order of :func:`matrix_order`, with up to
    :data:`MAX_TICKS` ticks per axis naming parcels by their index (1-based, the
    ``index`` of the dseg table and the ``parcelNNN`` of the ``_relmat.tsv`` files), and
    a colour bar labelled with the measure's unit (:data:`MEASURE_UNITS`).

    Parameters
    ----------
    matrices : mapping
        scale -> (n_parcels, n_parcels) matrix.
    centroids : mapping
        scale -> (n_parcels, 3) node positions in mm (:func:`node_positions`).
    measure : str
        Name of the measure (titles and colour-bar label).

    Returns
    -------
    bytes
        SVG document.
    """
    scales = sorted(matrices)
    left = 46  # room for the y ticks
    brain_x = left + PANEL + 100
    brain_w = WIDTH - brain_x - 10
    canvas = Canvas(WIDTH, ROW * len(scales))
    unit = MEASURE_UNITS.get(measure, f"{measure} (a.u.)")
    for k, scale in enumerate(scales):
        top = k * ROW + 26
        shown = _off_diagonal(matrices[scale])
        limit = _limit(shown)
        order = matrix_order(shown)
        title = f"scale {scale}: {len(shown)} parcels, {measure}"
        shown, block = block_average(shown[np.ix_(order, order)])  # bounded size and cost
        if block > 1:
            title += f" ({block}×{block} blocks averaged)"
        n_shown = len(shown) * block
        canvas.image(left, top, PANEL, PANEL,
                     indexed=quantize((shown / limit + 1) / 2, "RdBu_r"))
        canvas.rect(left, top, PANEL, PANEL, stroke=GRID)
        canvas.text(left, top - 8, title, size=11)
        for position, name in _ticks(order, n_shown):
            at = (position + 0.5) * PANEL / n_shown
            canvas.line(left + at, top + PANEL, left + at, top + PANEL + 3, color=MUTED)
            canvas.text(left + at, top + PANEL + 12, name, size=8, color=MUTED,
                        anchor="middle")
            canvas.line(left - 3, top + at, left, top + at, color=MUTED)
            canvas.text(left - 5, top + at + 3, name, size=8, color=MUTED, anchor="end")
        canvas.text(left + PANEL / 2, top + PANEL + 26, "parcel (clustering order)",
                    size=10, anchor="middle")
        canvas.text(12, top + PANEL / 2, "parcel", size=10, anchor="middle", rotate=True)
        canvas.colorbar(left + PANEL + 8, top, 10, PANEL, "RdBu_r",
                        [(0.0, f"{-limit:.2g}"), (0.5, "0"), (1.0, f"{limit:.2g}")],
                        label=unit)
        rgb = glass_brain(matrices[scale], centroids[scale], int(brain_w), PANEL, limit)
        canvas.image(brain_x, top, brain_w, PANEL, rgb=rgb)
        canvas.text(brain_x, top - 8, f"strongest {100 - int(EDGE_THRESHOLD[:-1])} % "
                                      "of edges; each node at a voxel of its parcel",
                    size=10)
    return canvas.svg()
