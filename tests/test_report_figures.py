"""Report figures read right: hemisphere markers from the affine, labelled colour bars,
rounded numbers in the HTML text."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bids_parcellate.report import figures, mosaics
from bids_parcellate.report.canvas import Canvas
from bids_parcellate.report.templates import format_number

SVG = "{http://www.w3.org/2000/svg}"


def texts(svg: bytes) -> list[ET.Element]:
    return list(ET.fromstring(svg).iter(f"{SVG}text"))


def colorbar_labels(svg: bytes) -> list[str]:
    """The rotated title beside each colour bar (a rect filled with a gradient)."""
    root = ET.fromstring(svg)
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("fill", "").startswith("url(#cbar")]
    labels = []
    for bar in bars:
        x = float(bar.get("x")) + float(bar.get("width")) + 34
        found = [t.text for t in root.iter(f"{SVG}text")
                 if t.get("transform", "").startswith("rotate(-90")
                 and abs(float(t.get("x")) - x) < 0.11]
        assert len(found) == 1, f"colour bar at x={bar.get('x')} has {found}"
        labels.append(found[0])
    return labels


def first_raster(svg: bytes) -> np.ndarray:
    image = next(ET.fromstring(svg).iter(f"{SVG}image"))
    data = base64.b64decode(image.get("href").split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def brain(flip_x: bool) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """A box brain with a marked parcel in the left hemisphere (world x < 0), stored
    LAS (voxel i grows to the left) when ``flip_x``, else RAS: the same brain."""
    shape = (20, 16, 12)
    world_x = -38 + 4 * np.arange(shape[0])  # RAS storage: x of voxel column i
    labels = np.zeros(shape, dtype=np.int16)
    labels[2:18, 2:14, 2:10] = 2
    labels[2:7, 4:12, 2:10] = 1  # x from -30 to -14 mm: left hemisphere
    assert (world_x[2:7] < 0).all()
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-38, -30, -20]
    if flip_x:
        labels = labels[::-1]
        affine = affine @ np.array([[-1, 0, 0, shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0],
                                    [0, 0, 0, 1]], dtype=float)
    mask = nib.Nifti1Image((labels > 0).astype(np.uint8), affine)
    return nib.Nifti1Image(labels, affine), mask


@pytest.mark.parametrize("flip_x", [False, True])
def test_mosaic_marks_left_and_right_from_the_affine(flip_x):
    labels_img, mask_img = brain(flip_x)
    assert nib.aff2axcodes(labels_img.affine)[0] == ("L" if flip_x else "R")
    slicer = mosaics.Slicer(mask_img)
    assert slicer.sides == ("L", "R")  # RAS+ after reorientation: left on the left
    svg = mosaics.label_maps({2: labels_img}, None, slicer)
    found = texts(svg)
    marks = [(t.text, float(t.get("x"))) for t in found if t.text in ("L", "R")]
    cuts = [float(t.get("x")) for t in found if t.text.startswith("z = ")]
    assert len(cuts) == mosaics.N_CUTS
    assert [m for m, _ in marks] == ["L", "R"] * mosaics.N_CUTS
    for k, z_x in enumerate(cuts):  # each cut: L left of its z label, R right of it
        assert marks[2 * k][1] < z_x < marks[2 * k + 1][1]
    # the parcel in the left hemisphere is drawn on the side marked L of each cut
    rgb = first_raster(svg)
    colour = np.round(0.7 * mosaics.label_colors(2)[1] * 255)
    tile = rgb[:, :slicer.tile_width]
    columns = np.flatnonzero((np.abs(tile - colour).sum(axis=2) < 2).any(axis=0))
    assert columns.size and columns.max() < slicer.tile_width / 2
    # stored LAS or RAS, the same brain gives the same figure
    assert svg == mosaics.label_maps({2: brain(not flip_x)[0]}, None,
                                     mosaics.Slicer(brain(not flip_x)[1]))
    # the marks follow the affine: with x growing to the left, R comes first
    slicer.affine = np.diag([-1.0, 1.0, 1.0, 1.0]) @ slicer.affine
    assert slicer.sides == ("R", "L")
    assert [t.text for t in texts(mosaics.label_maps({2: labels_img}, None, slicer))
            if t.text in ("L", "R")][:2] == ["R", "L"]


def test_every_colour_bar_is_labelled():
    labels_img, mask_img = brain(False)
    slicer = mosaics.Slicer(mask_img)
    volume = nib.Nifti1Image(np.random.default_rng(0).standard_normal(
        labels_img.shape).astype(np.float32), labels_img.affine)
    compressed = mosaics.compressed(volume, {2: volume}, slicer, {2: "2 parcels"}, "signal")
    assert colorbar_labels(compressed) == ["cleaned BOLD (a.u.)"]
    rng = np.random.default_rng(1)
    series = {5: rng.standard_normal((40, 5))}
    orders = {5: np.arange(5)}
    assert colorbar_labels(figures.carpet(series, orders, [], ["run-1"], 2.0)) == [
        "z-score (per run)"]
    assert colorbar_labels(figures.correlation({5: np.corrcoef(series[5].T)}, orders)) == [
        "Pearson r"]
    with pytest.raises(ValueError, match="needs a label"):
        Canvas(100, 100).colorbar(0, 0, 10, 50, "gray", [(0.0, "0")], label="")


def test_numbers_are_rounded_for_display():
    assert format_number("0.1956724") == "0.196"
    assert format_number("-0.51892") == "-0.519"
    assert format_number("15.658257") == "15.658"
    assert format_number("177.5") == "177.5"  # already short: as written
    assert format_number("3666") == "3666"  # counts stay integers
    assert format_number("0.00004321") == "4.32e-05"
    assert format_number("1.23456789e-07") == "1.23e-07"
    assert format_number(0.123456) == "0.123"
    for text in ("n/a", "sub-01", "nan", ""):
        assert format_number(text) == text
    assert format_number(None) == ""
    for value in ("0.1956724", "15.658257", "0.00004321", "123456.7891011"):
        assert not re.search(r"\d\.\d{5,}", format_number(value))
