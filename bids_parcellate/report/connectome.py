"""Connectome figures: the matrix and the graph on a glass brain (PNG bytes).

Called by the report with data already in memory: a ``_relmat`` matrix, the parcel
names and the parcel centroids of the dseg table (``x``, ``y``, ``z`` columns, mm).
Figures are built on ``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot state)
and saved without a software stamp, so the same inputs give the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: never open a window (containers, clusters)

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

#: Resolution of the figures (pixels per inch).
DPI = 90
#: Above this many parcels the matrix has no tick labels (they would overlap).
MAX_LABELLED = 40


def _figure(size: tuple[float, float]) -> Figure:
    """A figure with an Agg canvas (nilearn asks the canvas for a renderer)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    shown = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(shown, 0.0)
    return shown


def _limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def connectivity_matrix(matrix: np.ndarray, names: Sequence[str], title: str) -> bytes:
    """The matrix with nilearn's ``plot_matrix`` (diagonal blanked, symmetric colours).

    Parameters
    ----------
    matrix : ndarray, shape (n_parcels, n_parcels)
    names : sequence of str
        Parcel names (tick labels up to :data:`MAX_LABELLED` parcels).
    title : str

    Returns
    -------
    bytes
        PNG image.
    """
    from nilearn import plotting

    shown = _off_diagonal(matrix)
    limit = _limit(shown)
    fig = _figure((5.2, 4.6))
    ax = fig.add_subplot()
    labels = list(names) if len(names) <= MAX_LABELLED else None
    plotting.plot_matrix(shown, labels=labels, axes=ax, vmin=-limit,
                         vmax=limit, title=title, auto_fit=labels is not None)
    return _png(fig)


def connectome_graph(matrix: np.ndarray, centroids_mm: np.ndarray, title: str,
                     edge_threshold: str = "95%") -> bytes:
    """The connectome on a glass brain with nilearn's ``plot_connectome``.

    Nodes are the parcel centroids; only the strongest edges are drawn
    (``edge_threshold``, a percentile of the absolute off-diagonal values).

    Parameters
    ----------
    matrix : ndarray, shape (n_parcels, n_parcels)
    centroids_mm : ndarray, shape (n_parcels, 3)
        World coordinates of the nodes (the dseg table's ``x``, ``y``, ``z``).
    title : str
    edge_threshold : str

    Returns
    -------
    bytes
        PNG image.
    """
    from nilearn import plotting

    centroids_mm = np.asarray(centroids_mm, dtype=np.float64)
    if centroids_mm.shape != (matrix.shape[0], 3):
        raise ValueError(f"{centroids_mm.shape[0]} centroids for a {matrix.shape[0]}-node "
                         "matrix")
    shown = _off_diagonal(matrix)
    limit = _limit(shown)
    fig = _figure((8.0, 3.0))
    plotting.plot_connectome(shown, centroids_mm, edge_threshold=edge_threshold,
                             edge_vmin=-limit, edge_vmax=limit, node_size=12,
                             figure=fig, title=title, colorbar=True)
    return _png(fig)
