"""Connectome figure: deterministic SVG with the matrix and the glass-brain graph."""

import numpy as np
import pytest

from bids_parcellate.report.connectome import connectome, glass_brain


@pytest.fixture
def network():
    rng = np.random.default_rng(0)
    series = rng.standard_normal((60, 6))
    series[:, 3:] += series[:, :3]
    matrix = np.corrcoef(series.T)
    centroids = np.array([[-40, -20, 10], [-30, 20, 30], [-20, -60, 0],
                          [40, -20, 10], [30, 20, 30], [20, -60, 0]], dtype=float)
    return matrix, centroids


def test_connectome_figure_is_a_deterministic_svg(network):
    matrix, centroids = network
    svg = connectome({6: matrix}, {6: centroids}, "correlation")
    assert svg.startswith(b"<svg") and b"scale 6: 6 parcels, correlation" in svg
    assert svg.count(b"data:image/png;base64,") == 2  # matrix + glass brain rasters
    assert svg == connectome({6: matrix}, {6: centroids}, "correlation")


def test_glass_brain_draws_the_edges(network):
    matrix, centroids = network
    rgb = glass_brain(matrix, centroids, 420, 150, limit=1.0)
    assert rgb.shape == (150, 420, 3) and rgb.dtype == np.uint8
    empty = glass_brain(np.eye(6), centroids, 420, 150, limit=1.0)
    # the strongest edges (left-right pairs, r ~ 0.7) are drawn in dark red
    reddish = lambda img: ((img[..., 0] > 100) & (img[..., 1] < 60)  # noqa: E731
                           & (img[..., 2] < 80)).sum()
    assert reddish(rgb) > reddish(empty) + 50


def test_glass_brain_needs_one_centroid_per_node(network):
    matrix, centroids = network
    with pytest.raises(ValueError, match="5 centroids for a 6-node matrix"):
        glass_brain(matrix, centroids[:5], 420, 150, limit=1.0)
