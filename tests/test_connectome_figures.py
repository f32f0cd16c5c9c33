"""Connectome figures: valid, deterministic PNGs; inputs checked."""

import numpy as np
import pytest

from bids_parcellate.report.connectome import connectivity_matrix, connectome_graph

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def connectome():
    rng = np.random.default_rng(0)
    series = rng.standard_normal((60, 6))
    series[:, 3:] += series[:, :3]
    matrix = np.corrcoef(series.T)
    centroids = np.array([[-40, -20, 10], [-30, 20, 30], [-20, -60, 0],
                          [40, -20, 10], [30, 20, 30], [20, -60, 0]], dtype=float)
    return matrix, centroids


def test_figures_are_deterministic_pngs(connectome):
    matrix, centroids = connectome
    names = [f"parcel{i:03d}" for i in range(1, 7)]
    first = connectivity_matrix(matrix, names, "correlation")
    assert first.startswith(PNG) and first == connectivity_matrix(matrix, names,
                                                                  "correlation")
    graph = connectome_graph(matrix, centroids, "correlation")
    assert graph.startswith(PNG) and graph == connectome_graph(matrix, centroids,
                                                               "correlation")
    # the drawing depends on the edges: another matrix gives another image
    other = matrix.copy()
    other[0, 3] = other[3, 0] = -0.9
    assert connectome_graph(other, centroids, "correlation") != graph


def test_graph_needs_one_centroid_per_node(connectome):
    matrix, centroids = connectome
    with pytest.raises(ValueError, match="5 centroids for a 6-node matrix"):
        connectome_graph(matrix, centroids[:5], "correlation")
