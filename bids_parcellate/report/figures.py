"""Report figures, drawn while a unit's cleaned data are in memory; each returns PNG bytes.

Plots are matplotlib ``Figure`` objects (Agg canvas, no pyplot state) saved as PNG
without a software stamp, so the same inputs give the same bytes.

Brain slices are drawn as one mosaic image per figure (axial cuts side by side, one row
per scale) rather than with nilearn's ``plot_roi`` / ``plot_img``: nilearn makes one
display with one axes per cut and per row, and on the 4 mm studyforrest run its import
and the label-map and compressed-representation figures cost about 0.6 s of CPU, as
much as all other report work together, while the mosaics cost under 0.1 s; the report
must stay within 20 % of the participant's processing time (``benchmarks/report_cost.py``).
The mosaics follow nilearn's conventions: neurological orientation (left on the left,
anterior up), RAS+ world coordinates for the cuts, a ``cold_hot`` colour map for
signed signal (:data:`COLD_HOT`).

PNG rather than SVG: slices are raster images either way, and the PNG data URIs of the
line plots are as small as their SVG versions and faster to draw.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless: never open a window (containers, clusters)

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

#: Resolution of every figure (pixels per inch); figures ~900 px wide.
DPI = 80
#: Axial cuts per brain figure.
N_CUTS = 7
#: Width of the brain-slice figures in inches.
SLICES_WIDTH = 11.0
#: A map like nilearn's ``cold_hot`` (cyan-blue for negative, red-yellow for positive
#: values, black at zero), defined here so that drawing does not import nilearn.plotting.
COLD_HOT = LinearSegmentedColormap.from_list(
    "cold_hot", [(0.0, (0.0, 1.0, 1.0)), (0.25, (0.0, 0.0, 1.0)), (0.5, (0.0, 0.0, 0.0)),
                 (0.75, (1.0, 0.0, 0.0)), (1.0, (1.0, 1.0, 0.0))])


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None},
                facecolor=fig.get_facecolor())
    return buf.getvalue()


# --------------------------------------------------------------------------- slices
def canonical(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Data and affine of ``img`` in RAS+ voxel order (nibabel's closest canonical)."""
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

    @property
    def cut_coords(self) -> list[float]:
        """z of the cuts in mm (world coordinates), as nilearn's ``cut_coords``."""
        world = nib.affines.apply_affine(
            self.affine, np.c_[np.zeros((len(self.planes), 2)), self.planes])[:, 2]
        return [round(float(z), 1) for z in world]

    def strip(self, data: np.ndarray, gap: int = 2, fill=0.0) -> np.ndarray:
        """The cuts of a canonical 3D (or 3D x channels) array side by side, anterior up."""
        tiles = []
        for k in self.planes:
            tile = np.swapaxes(data[self.box[0], self.box[1], k], 0, 1)[::-1]
            tiles += [tile, np.full((tile.shape[0], gap) + tile.shape[2:], fill,
                                    dtype=tile.dtype)]
        return np.concatenate(tiles[:-1], axis=1)


def _gray(bg: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Background image scaled to [0, 1] by its 2nd-98th percentiles in the mask."""
    values = bg[inside]
    lo, hi = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
    return np.clip((bg - lo) / ((hi - lo) or 1.0), 0, 1)


def label_colors(n_labels: int, random_state: int = 0) -> np.ndarray:
    """RGB of labels 0..n (0 black): distinct hues, shuffled so that neighbouring parcels
    (close label values) differ."""
    hues = matplotlib.colormaps["hsv"](np.linspace(0, 1, n_labels, endpoint=False))[:, :3]
    rng = np.random.default_rng(random_state)
    colors = hues[rng.permutation(n_labels)] * rng.uniform(0.6, 1.0, size=(n_labels, 1))
    return np.vstack([np.zeros(3), colors])


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels of a 2D label image whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge & (labels > 0)


def _mosaic_figure(rows: Sequence[tuple[str, np.ndarray]], slicer: Slicer,
                   colorbar=None) -> bytes:
    """Stack RGB strips (one per row) into one image with row titles and the cuts' z."""
    gap = np.zeros((5,) + rows[0][1].shape[1:])
    image = np.concatenate([part for _, strip in rows for part in (strip, gap)][:-1])
    height, width = image.shape[:2]
    right = 0.93 if colorbar is not None else 1.0
    fig = Figure(figsize=(SLICES_WIDTH, SLICES_WIDTH * right * height / width),
                 facecolor="black")
    ax = fig.add_axes((0.0, 0.0, right, 1.0))
    ax.imshow(image, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    step = rows[0][1].shape[0] + gap.shape[0]
    for row, (title, _) in enumerate(rows):
        ax.text(1, row * step + 1, title, color="white", fontsize=9, va="top", ha="left",
                bbox={"facecolor": "black", "alpha": 0.65, "pad": 1.5, "linewidth": 0})
    tile = slicer.box[0].stop - slicer.box[0].start + 2
    for col, z in enumerate(slicer.cut_coords):
        ax.text(col * tile + 1, height - 1, f"z={z:g}", color="white", fontsize=8,
                va="bottom", ha="left")
    if colorbar is not None:
        cmap, vmax = colorbar
        cax = fig.add_axes((0.945, 0.15, 0.012, 0.7))
        bar = fig.colorbar(matplotlib.cm.ScalarMappable(
            norm=matplotlib.colors.Normalize(-vmax, vmax), cmap=cmap), cax=cax)
        bar.ax.tick_params(colors="white", labelsize=7)
        bar.outline.set_edgecolor("white")
    return _png(fig)


def label_maps(labels_imgs: Mapping[int, nib.Nifti1Image], bg_img: nib.Nifti1Image | None,
               slicer: Slicer, alpha: float = 0.7) -> bytes:
    """One row of axial cuts per scale: the parcels over the participant's mean BOLD."""
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
        rows.append((f"{scale} parcels", rgb))
    return _mosaic_figure(rows, slicer)


def compressed(original: nib.Nifti1Image, rebuilt: Mapping[int, nib.Nifti1Image],
               slicer: Slicer, titles: Mapping[int, str], original_title: str) -> bytes:
    """A cleaned volume, then the same volume rebuilt from parcel means at each scale."""
    first = canonical(original)[0]
    values = first[slicer.mask]
    vmax = float(np.percentile(np.abs(values), 98)) if values.any() else 1.0
    rows = []
    for title, img in [(original_title, original)] + [(titles[s], rebuilt[s])
                                                      for s in sorted(rebuilt)]:
        strip = slicer.strip(np.where(slicer.mask, canonical(img)[0], 0.0))
        rows.append((title, COLD_HOT(np.clip((strip + vmax) / (2 * vmax), 0, 1))[..., :3]))
    return _mosaic_figure(rows, slicer, colorbar=(COLD_HOT, vmax))


def parcel_sizes(sizes: Mapping[int, np.ndarray], n_voxels: int) -> bytes:
    """Histogram of parcel sizes (voxels, log axis), one outline per scale."""
    fig = Figure(figsize=(7.0, 3.2))
    ax = fig.add_subplot()
    largest = max(int(s.max()) for s in sizes.values())
    smallest = min(int(s.min()) for s in sizes.values())
    bins = np.geomspace(smallest * 0.9, max(largest, smallest + 1) * 1.1, 40)
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.85, len(sizes)))
    for color, scale in zip(colors, sorted(sizes), strict=True):
        ax.hist(sizes[scale], bins=bins, histtype="step", linewidth=1.6, color=color,
                label=f"{scale} parcels")
        ax.axvline(n_voxels / scale, color=color, linestyle=":", linewidth=1)
    ax.set_xscale("log")
    # minor ticks of a log axis are many Tick objects: costly to draw, not needed here
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("parcel size (voxels, log scale); dotted: equal-size parcels")
    ax.set_ylabel("number of parcels")
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.96, bottom=0.16)
    return _png(fig)


def carpet(series: Mapping[int, np.ndarray], orders: Mapping[int, np.ndarray],
           boundaries: Sequence[int], run_labels: Sequence[str], tr: float | None) -> bytes:
    """Parcel timeseries as images (parcels x volumes), one panel per scale.

    Parameters
    ----------
    series : mapping
        scale -> (n_volumes_all_runs, n_parcels), standardised, NaN for censored volumes.
    orders : mapping
        scale -> order of the parcels (rows), e.g. :func:`cluster_order`.
    boundaries : sequence of int
        Volume index where each run after the first starts.
    run_labels : sequence of str
    tr : float or None
        Repetition time for the time axis label (volumes are plotted by index).
    """
    scales = sorted(series)
    heights = [max(1.0, min(3.0, series[s].shape[1] / 150)) for s in scales]
    total = sum(heights)
    fig = Figure(figsize=(10.0, 0.7 + total * 0.9))
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="#c0392b")
    bottom, top, gap = 0.55 / (0.7 + total * 0.9), 0.93, 0.02
    span = top - bottom - gap * (len(scales) - 1)
    y = top
    image = None
    axes = []
    for scale, height in zip(scales, heights, strict=True):
        h = span * height / total
        ax = fig.add_axes((0.06, y - h, 0.86, h))
        y -= h + gap
        image = ax.imshow(series[scale][:, orders[scale]].T, aspect="auto",
                          interpolation="nearest",
                          cmap=cmap, vmin=-2, vmax=2)
        for start in boundaries:
            ax.axvline(start - 0.5, color="#2980b9", linewidth=1.5)
        ax.set_ylabel(f"{scale}\nparcels", fontsize=8)
        ax.set_yticks([])
        ax.tick_params(labelbottom=False)
        axes.append(ax)
    axes[-1].tick_params(labelbottom=True)
    axes[-1].set_xlabel("volume (all runs in order; red columns: censored)"
                        + (f", TR {tr:g} s" if tr else ""))
    if len(run_labels) > 1:
        starts = [0, *boundaries]
        for start, label in zip(starts, run_labels, strict=True):
            axes[0].annotate(label, (start, 1.02), xycoords=("data", "axes fraction"),
                             fontsize=7, va="bottom")
    cax = fig.add_axes((0.935, bottom, 0.012, top - bottom))
    fig.colorbar(image, cax=cax, label="z")
    return _png(fig)


def cluster_order(corr: np.ndarray) -> np.ndarray:
    """Parcel order of an average-linkage clustering of a correlation matrix (1 - r)."""
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform

    distance = np.clip(1 - np.nan_to_num(corr), 0, 2)
    np.fill_diagonal(distance, 0)
    return hierarchy.leaves_list(
        hierarchy.linkage(squareform(distance, checks=False), method="average"))


def correlation(matrices: Mapping[int, np.ndarray],
                orders: Mapping[int, np.ndarray]) -> bytes:
    """Parcel correlation matrices, one panel per scale, parcels in clustering order."""
    scales = sorted(matrices)
    panel = 3.0
    fig = Figure(figsize=(panel * len(scales) + 0.9, panel + 0.35))
    width = panel / (panel * len(scales) + 0.9)
    image = None
    for i, scale in enumerate(scales):
        ax = fig.add_axes((0.01 + i * width, 0.02, width * 0.94, 0.88))
        order = orders[scale]
        image = ax.imshow(np.nan_to_num(matrices[scale])[np.ix_(order, order)],
                          cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"{scale} parcels", fontsize=9)
        ax.set_axis_off()
    cax = fig.add_axes((0.02 + len(scales) * width, 0.1, 0.012, 0.72))
    fig.colorbar(image, cax=cax, label="Pearson r")
    return _png(fig)


def framewise_displacement(fd: Sequence[np.ndarray | None], censored: Sequence[Sequence[int]],
                           run_labels: Sequence[str], threshold: float | None) -> bytes:
    """FD of every run in order, threshold line, censored volumes marked."""
    fig = Figure(figsize=(10.0, 2.4))
    ax = fig.add_subplot()
    start = 0
    for k, (values, cens, label) in enumerate(zip(fd, censored, run_labels, strict=True)):
        n = len(values) if values is not None else 0
        if values is not None:
            x = np.arange(start, start + n)
            ax.plot(x, values, color="#34495e", linewidth=1)
            cens = np.asarray(cens, dtype=int)
            if cens.size:
                ax.vlines(start + cens, 0, 1, transform=ax.get_xaxis_transform(),
                          colors="#e74c3c", alpha=0.35, linewidth=1.2,
                          label="censored volume" if k == 0 else None)
        if k:
            ax.axvline(start - 0.5, color="#2980b9", linewidth=1.5)
        if len(run_labels) > 1:
            ax.annotate(label, (start, 1.02), xycoords=("data", "axes fraction"), fontsize=7)
        start += n
    if threshold is not None:
        ax.axhline(threshold, color="#e67e22", linestyle="--", linewidth=1,
                   label=f"FD threshold {threshold:g} mm")
    ax.set_xlim(-0.5, max(start, 1) - 0.5)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("volume")
    ax.set_ylabel("FD (mm)")
    ax.spines[["top", "right"]].set_visible(False)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, fontsize=8, loc="upper right")
    fig.subplots_adjust(left=0.07, right=0.99, top=0.9, bottom=0.2)
    return _png(fig)


def atlas_maps(labels_imgs: Mapping[int, nib.Nifti1Image],
               bg_img: nib.Nifti1Image | None) -> bytes:
    """Group atlas at every scale (rows), axial cuts over ``bg_img`` (on the atlas grid)."""
    first = labels_imgs[min(labels_imgs)]
    mask = nib.Nifti1Image((np.asarray(first.dataobj) > 0).astype(np.uint8), first.affine)
    return label_maps(labels_imgs, bg_img, Slicer(mask))
