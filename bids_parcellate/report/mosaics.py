"""Brain-slice figures of the report: parcellations, brain masks, compressed signal and
atlas maps as mosaics of axial cuts, each returned as SVG bytes.

Drawn on the report's own canvas (:mod:`bids_parcellate.report.canvas`), in nilearn's
conventions: axial cuts in neurological orientation (left on the left, anterior up) at
the same world z for every scale, ``cold_hot`` for signed signal; deterministic. Each
cut is marked "L" and "R" at its sides, read from the image's affine
(:attr:`Slicer.sides`), and its world z. Why
these are hand-drawn rather than nilearn's ``plot_roi`` / ``plot_stat_map`` (measured:
10 ms against 285 ms for three label maps, plus 1.6 s to import nilearn.plotting) is in
:mod:`bids_parcellate.report.figures`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import nibabel as nib
import numpy as np

from bids_parcellate.report.canvas import (
    WIDTH,
    Canvas,
    colormap,
)

#: Axial cuts per brain figure.
N_CUTS = 7


def canonical(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Data and affine of ``img`` in RAS+ voxel order (nibabel's closest canonical).

    Parameters
    ----------
    img : Nifti1Image

    Returns
    -------
    data : ndarray
        The voxels, reordered.
    affine : ndarray, shape (4, 4)
        Their affine.
    """
    img = nib.as_closest_canonical(img)
    return np.asanyarray(img.dataobj), img.affine


class Slicer:
    """Where to cut: axial planes spread over a brain mask, and its bounding box.

    Parameters
    ----------
    mask_img : Nifti1Image
        Brain mask (non-zero inside).
    n_cuts : int
        Axial cuts between the 15th and 90th percentile of the mask's extent in z.
    """

    def __init__(self, mask_img: nib.Nifti1Image, n_cuts: int = N_CUTS) -> None:
        mask, self.affine = canonical(mask_img)
        self.mask = mask > 0
        z = np.flatnonzero(self.mask.any(axis=(0, 1)))
        self.planes = [int(k) for k in
                       np.linspace(*np.percentile(z, [15, 90]), n_cuts).round()]
        xy = np.argwhere(self.mask.any(axis=2))
        self.box = (slice(xy[:, 0].min(), xy[:, 0].max() + 1),
                    slice(xy[:, 1].min(), xy[:, 1].max() + 1))
        self.gap = 2

    @property
    def cut_coords(self) -> list[float]:
        """z of the cuts in mm (world coordinates), as nilearn's ``cut_coords``."""
        world = nib.affines.apply_affine(
            self.affine, np.c_[np.zeros((len(self.planes), 2)), self.planes])[:, 2]
        return [round(float(z), 1) for z in world]

    @property
    def sides(self) -> tuple[str, str]:
        """The hemispheres at the left and right edges of each cut, ``("L", "R")`` or
        ``("R", "L")``: from the world x (affine) of the first and last voxel columns of
        the bounding box, as :meth:`strip` lays them out left to right."""
        ends = [[self.box[0].start, self.box[1].start, self.planes[0]],
                [self.box[0].stop - 1, self.box[1].start, self.planes[0]]]
        x_first, x_last = nib.affines.apply_affine(self.affine, ends)[:, 0]
        return ("L", "R") if x_first <= x_last else ("R", "L")

    @property
    def tile_width(self) -> int:
        """Width of one cut in voxels (the mask's bounding box in x)."""
        return self.box[0].stop - self.box[0].start

    def strip(self, data: np.ndarray, fill: float = 0) -> np.ndarray:
        """The cuts of a volume side by side, anterior up.

        Parameters
        ----------
        data : ndarray
            Canonical (RAS+) 3D array, or 3D x channels, on the mask's grid.
        fill : scalar
            Value of the gaps between cuts.

        Returns
        -------
        ndarray
            Shape (y extent, cuts x x extent + gaps[, channels]).
        """
        tiles = []
        for k in self.planes:
            tile = np.swapaxes(data[self.box[0], self.box[1], k], 0, 1)[::-1]
            tiles += [tile, np.full((tile.shape[0], self.gap) + tile.shape[2:], fill,
                                    dtype=tile.dtype)]
        return np.concatenate(tiles[:-1], axis=1)


def _gray(bg: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Background image scaled to [0, 1] by its 2nd-98th percentiles in the mask."""
    values = bg[inside]
    lo, hi = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
    return np.clip((bg - lo) / ((hi - lo) or 1.0), 0, 1)


@lru_cache(maxsize=8)
def label_colors(n_labels: int, random_state: int = 0) -> np.ndarray:
    """Colours of labels 0..n (0 black).

    Evenly spaced hues in a seeded random order and brightness, so that neighbouring
    parcels (close label values) differ.

    Parameters
    ----------
    n_labels : int
        Largest label.
    random_state : int
        Seed of the order.

    Returns
    -------
    ndarray
        RGB in [0, 1], shape (n_labels + 1, 3); cached, do not modify.
    """
    rng = np.random.default_rng(random_state)
    hue = np.linspace(0, 1, n_labels, endpoint=False)[rng.permutation(n_labels)]
    value = rng.uniform(0.6, 1.0, size=n_labels)
    saturation = 0.85
    # HSV to RGB (vectorised)
    i = np.floor(hue * 6).astype(int) % 6
    f = hue * 6 - np.floor(hue * 6)
    p, q, t = value * (1 - saturation), value * (1 - f * saturation), \
        value * (1 - (1 - f) * saturation)
    choices = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value),
               (value, p, q)]
    rgb = np.stack([np.choose(i, [c[channel] for c in choices]) for channel in range(3)],
                   axis=1)
    return np.vstack([np.zeros(3), rgb])


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels of a 2D label image whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge & (labels > 0)


def _mosaic(rows: Sequence[tuple[str, np.ndarray]], slicer: Slicer,
            colorbar: tuple[str, float, str] | None = None) -> bytes:
    """Strips of cuts (one per row, RGB uint8) with row titles, cut positions, the
    hemisphere at each side of every cut (:attr:`Slicer.sides`) and a colour bar
    (colour map, limit, label)."""
    gap = 5
    strip_h, strip_w = rows[0][1].shape[:2]
    bar = 70 if colorbar else 0
    scale = (WIDTH - bar - 8) / strip_w
    row_h = strip_h * scale
    height = len(rows) * row_h + (len(rows) - 1) * gap + 22
    canvas = Canvas(WIDTH, round(height, 1), background="#000000")
    gap_rows = np.zeros((gap,) + rows[0][1].shape[1:], dtype=np.uint8)
    image = np.concatenate([part for _, strip in rows for part in (strip, gap_rows)][:-1])
    total_h = len(rows) * row_h + (len(rows) - 1) * gap * scale
    canvas.image(4, 4, strip_w * scale, total_h, image)
    for row, (title, _) in enumerate(rows):
        canvas.text(8, 4 + row * (row_h + gap * scale) + 14, title, size=12, color="#ffffff",
                    box="#000000")
    left, right = slicer.sides
    for col, z in enumerate(slicer.cut_coords):
        x = 4 + col * (slicer.tile_width + slicer.gap) * scale
        w = slicer.tile_width * scale
        canvas.text(x + 2, height - 5, left, size=11, color="#ffffff")
        canvas.text(x + w / 2, height - 5, f"z = {z:g} mm", size=10, color="#d9e2ec",
                    anchor="middle")
        canvas.text(x + w - 2, height - 5, right, size=11, color="#ffffff", anchor="end")
    if colorbar:
        cmap, vmax, label = colorbar
        canvas.colorbar(WIDTH - bar + 8, 30, 12, height - 70, cmap,
                        [(0.0, f"{-vmax:.3g}"), (0.5, "0"), (1.0, f"{vmax:.3g}")],
                        label=label, color="#ffffff")
    return canvas.svg()


def label_maps(labels_imgs: Mapping[int, nib.Nifti1Image], bg_img: nib.Nifti1Image | None,
               slicer: Slicer, alpha: float = 0.7) -> bytes:
    """One row of axial cuts per scale: the parcels over the participant's mean BOLD.

    Parameters
    ----------
    labels_imgs : mapping
        scale -> label image (0 outside parcels) on the grid of ``slicer``.
    bg_img : Nifti1Image or None
        Background (black when None).
    slicer : Slicer
        Cuts and bounding box.
    alpha : float
        Opacity of the parcel colours.

    Returns
    -------
    bytes
        SVG document.
    """
    inside = slicer.mask
    gray = (_gray(canonical(bg_img)[0].astype(np.float64), inside) if bg_img is not None
            else np.zeros(inside.shape))
    base = np.repeat(slicer.strip(gray)[..., None], 3, axis=2)
    rows = []
    for scale in sorted(labels_imgs):
        labels = slicer.strip(np.asarray(canonical(labels_imgs[scale])[0]).astype(np.int64))
        colors = label_colors(int(labels.max()))[labels]
        rgb = np.where((labels > 0)[..., None], (1 - alpha) * base + alpha * colors, base)
        rgb[_boundaries(labels)] *= 0.55
        rows.append((f"{scale} parcels", np.round(rgb * 255).astype(np.uint8)))
    return _mosaic(rows, slicer)


def brain_mask(bg_img: nib.Nifti1Image | None, slicer: Slicer, title: str,
               alpha: float = 0.35) -> bytes:
    """One row of axial cuts: the brain mask that was parcellated over the mean BOLD.

    The mask (``slicer.mask``) is tinted and outlined, with what lies outside it in its
    bounding box.

    Parameters
    ----------
    bg_img : Nifti1Image or None
        Background (black when None).
    slicer : Slicer
        Built from the mask.
    title : str
        Row title.
    alpha : float
        Opacity of the tint.

    Returns
    -------
    bytes
        SVG document.
    """
    inside = slicer.mask
    gray = (_gray(canonical(bg_img)[0].astype(np.float64), inside) if bg_img is not None
            else np.zeros(inside.shape))
    base = np.repeat(slicer.strip(gray)[..., None], 3, axis=2)
    mask = slicer.strip(inside.astype(np.int64))
    tint = np.array([0.25, 0.65, 1.0])
    rgb = np.where((mask > 0)[..., None], (1 - alpha) * base + alpha * tint, base)
    rgb[_boundaries(mask)] = tint
    return _mosaic([(title, np.round(rgb * 255).astype(np.uint8))], slicer)


def compressed(original: nib.Nifti1Image, rebuilt: Mapping[int, nib.Nifti1Image],
               slicer: Slicer, titles: Mapping[int, str], original_title: str,
               unit: str = "cleaned BOLD (a.u.)") -> bytes:
    """A cleaned volume, then the same volume rebuilt from parcel means at each scale.

    Parameters
    ----------
    original : Nifti1Image
        The cleaned volume (3D).
    rebuilt : mapping
        scale -> the volume with each voxel replaced by its parcel's mean.
    slicer : Slicer
    titles : mapping
        scale -> row title.
    original_title : str
        Title of the first row.
    unit : str
        Label of the colour bar (what the values are, in which unit).

    Returns
    -------
    bytes
        SVG document (``cold_hot``, symmetric about 0 at the 98th percentile of
        ``|original|`` in the mask).
    """
    first = canonical(original)[0]
    values = first[slicer.mask]
    vmax = float(np.percentile(np.abs(values), 98)) if values.any() else 1.0
    rows = []
    for title, img in [(original_title, original)] + [(titles[s], rebuilt[s])
                                                      for s in sorted(rebuilt)]:
        strip = slicer.strip(np.where(slicer.mask, canonical(img)[0], 0.0))
        rows.append((title, colormap("cold_hot", (strip + vmax) / (2 * vmax))))
    return _mosaic(rows, slicer, colorbar=("cold_hot", vmax, unit))


def atlas_maps(labels_imgs: Mapping[int, nib.Nifti1Image],
               bg_img: nib.Nifti1Image | None) -> bytes:
    """Group atlas at every scale (rows), axial cuts over ``bg_img``.

    Parameters
    ----------
    labels_imgs : mapping
        scale -> atlas image, all on one grid.
    bg_img : Nifti1Image or None
        Background on the atlas grid (e.g. the MNI152 template), or None.

    Returns
    -------
    bytes
        SVG document.
    """
    first = labels_imgs[min(labels_imgs)]
    mask = nib.Nifti1Image((np.asarray(first.dataobj) > 0).astype(np.uint8), first.affine)
    return label_maps(labels_imgs, bg_img, Slicer(mask))
