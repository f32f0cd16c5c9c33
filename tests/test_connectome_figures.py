"""Connectome figure: deterministic SVG with the matrix and the glass-brain graph."""

import base64
import io
import xml.etree.ElementTree as ET

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bids_parcellate.report.connectome import (
    connectome,
    glass_brain,
    matrix_order,
    node_positions,
)

SVG = "{http://www.w3.org/2000/svg}"


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


def svg_texts(svg: bytes) -> list[ET.Element]:
    return list(ET.fromstring(svg).iter(f"{SVG}text"))


def test_matrix_is_ordered_by_clustering_and_labelled():
    # two modules of 4 parcels, interleaved in the file's order: 1, 3, 5, 7 and 2, 4, 6, 8
    rng = np.random.default_rng(3)
    shared = rng.standard_normal((200, 2))
    series = shared[:, np.arange(8) % 2] + 0.6 * rng.standard_normal((200, 8))
    matrix = np.corrcoef(series.T)
    order = matrix_order(matrix)
    assert sorted(order) == list(range(8))
    modules = np.arange(8)[order] % 2
    assert (modules[:4] == modules[0]).all() and (modules[4:] == modules[4]).all()
    assert (order == matrix_order(matrix)).all()  # deterministic
    centroids = np.c_[np.linspace(-40, 40, 8), np.zeros(8), np.zeros(8)]
    svg = connectome({8: matrix}, {8: centroids}, "correlation")
    found = svg_texts(svg)
    # 8 parcels: every one named on both axes, in display order (1-based indices)
    names = [str(i + 1) for i in order]
    small = [t for t in found if t.get("font-size") == "8"]
    x_axis = [t.text for t in small if t.get("text-anchor") == "middle"]
    y_axis = [t.text for t in small if t.get("text-anchor") == "end"]
    assert x_axis == names and y_axis == names
    words = [t.text for t in found]
    assert "parcel (clustering order)" in words and "parcel" in words
    assert "Pearson r" in words  # the colour bar's label
    # the raster shows the reordered matrix: its first row is the first parcel's
    image = next(ET.fromstring(svg).iter(f"{SVG}image"))
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(
        image.get("href").split(",", 1)[1]))).convert("RGB"), dtype=float)
    assert pixels.shape[:2] == (8, 8)
    reds = pixels[..., 0] - pixels[..., 2]  # positive r: red
    within = reds[:4, :4][~np.eye(4, dtype=bool)].mean()
    across = reds[:4, 4:].mean()
    assert within > across + 50


@pytest.mark.parametrize("measure, unit", [
    ("partial correlation", "partial correlation r"), ("partialcorrelation",
                                                       "partial correlation r"),
    ("tangent", "tangent-space covariance (a.u.)"), ("covariance", "covariance (a.u.)")])
def test_colour_bar_names_the_measure(network, measure, unit):
    matrix, centroids = network
    assert unit in [t.text for t in svg_texts(connectome({6: matrix}, {6: centroids},
                                                         measure))]


def test_node_of_a_split_parcel_lies_inside_it():
    # parcel 1: two distant pieces, the larger at x < 0; its centroid lies between them,
    # in parcel 2 (a slab on the midline), where the old nodes were drawn
    volume = np.zeros((30, 6, 6), dtype=np.int64)
    volume[2:9, 1:5, 1:5] = 1  # 7 columns: the larger piece
    volume[24:28, 1:5, 1:5] = 1  # 4 columns
    volume[12:18, 1:5, 1:5] = 2
    volume[9:12, 2:4, 2:4] = 3
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-45, -9, -9]
    voxels = np.argwhere(volume > 0)
    labels = volume[volume > 0]
    nodes = node_positions(labels, voxels, affine)
    assert nodes.shape == (3, 3)
    back = np.round(nib.affines.apply_affine(np.linalg.inv(affine), nodes)).astype(int)
    assert [volume[tuple(v)] for v in back] == [1, 2, 3]
    assert 2 <= back[0][0] <= 8  # in the larger piece
    assert nodes[0][0] < 0
    # its centroid is in no part of parcel 1
    centroid = np.round(voxels[labels == 1].mean(axis=0)).astype(int)
    assert volume[tuple(centroid)] != 1
    # compact parcels keep their node at (the voxel nearest) their centroid
    centre2 = nib.affines.apply_affine(affine, voxels[labels == 2].mean(axis=0))
    assert np.linalg.norm(nodes[1] - centre2) <= np.sqrt(3) * 3 / 2 + 1e-9
    # deterministic
    np.testing.assert_array_equal(nodes, node_positions(labels, voxels, affine))
