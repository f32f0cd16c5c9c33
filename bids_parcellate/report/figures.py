"""Report figures, drawn while a unit's cleaned data are in memory; each returns SVG bytes.

This module draws the plots (sizes, carpets, correlation matrices, motion, quality);
:mod:`bids_parcellate.report.mosaics` the brain slices. The reasons below cover both.

Every figure is an SVG document drawn on the report's own canvas
(:mod:`bids_parcellate.report.canvas`): vector axes, lines and text, with image-like
panels (brain slices, carpet plots, correlation matrices) as PNG rasters at their
native resolution (one pixel per voxel, volume or parcel pair). Brain slices keep
nilearn's conventions: axial cuts in neurological orientation (left on the left,
anterior up) at the same world z for every scale, ``cold_hot`` for signed signal.
Drawing is deterministic: the same inputs give the same bytes.

Why not matplotlib / nilearn.plotting (issue 16, point 7: prefer them where they draw
the same figure, unless a measured reason says otherwise). Measured on 2 shared cores
(median CPU time of 7 draws after a warm-up; matplotlib 3.11.2 with the ``Agg`` and
SVG backends, ``svg.fonttype = none``, no metadata, deterministic; nilearn 0.14.1), on
data of the size of the 4 mm studyforrest run: scales 100, 200 and 400, 156 volumes,
30,000-42,000 voxels. Figure: this module | matplotlib SVG | matplotlib PNG.

- ``parcel_sizes`` (histograms): 0.7 ms, 5.0 kB | 158-176 ms, 20.6 kB | 138 ms,
  26.3 kB (81 ms with fixed axes instead of ``tight_layout``);
- ``framewise_displacement`` (line, bands): 0.7 ms, 5.8 kB | 53 ms, 15.8 kB | 60 ms,
  42.5 kB (28 ms with fixed axes);
- ``quality`` (three line panels): 1.2 ms, 6.9 kB | 239-249 ms, 31.5 kB | 217 ms,
  28.9 kB;
- ``carpet`` (``imshow`` panels): 5 ms, 113 kB | 111-124 ms, 170 kB | 128 ms, 136 kB;
- ``correlation`` (``imshow`` panels): 22 ms, 146 kB | 81 ms, 227 kB | 84 ms, 200 kB;
- ``label_maps`` (3 scales) and ``brain_mask`` against nilearn's ``plot_roi`` (7 axial
  cuts, as here): 10 ms, 106 kB and 4 ms, 36 kB | 285 ms, 200 kB and 99 ms, 63 kB |
  284 ms, 132 kB and 102 ms, 39 kB (``compressed``, like ``plot_stat_map``, is the
  same mosaic).

Importing them in a fresh process (median of 5, beyond numpy, nibabel, Pillow and
jinja2, which the report imports anyway): matplotlib (``Figure`` with the Agg and SVG
backends) +0.26-0.28 s CPU, nilearn.plotting +1.63 s. The participant level would
pay one import and every draw for each unit: about +0.7 s with matplotlib for the four
plots that do not show a brain, +2.3 s more with nilearn.plotting for the three that
do, against 0.03 s for all seven here. ``benchmarks/report_cost.py`` on the
studyforrest run (same machine): processing 1.67 s, the whole report 0.34 s (figures
0.21 s, assembly 0.11 s) = 20.3 %, at the report's budget of 20 % already; matplotlib
alone would bring it to about 60 %. Every figure is also 1.3-4 times larger with them.
So every figure here stays hand-drawn; matplotlib and nilearn.plotting are used where
nothing simple replaces them: the glass-brain graph of
:mod:`bids_parcellate.report.connectome` (only with ``--connectivity``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from bids_parcellate.report.canvas import (
    GRID,
    MUTED,
    SCALE_COLORS,
    WIDTH,
    Axes,
    Canvas,
    block_average,
    nice_ticks,
    quantize,
)


# --------------------------------------------------------------------------- plots
def parcel_sizes(sizes: Mapping[int, np.ndarray], n_voxels: int) -> bytes:
    """Histogram of parcel sizes (voxels, log axis), one outline per scale.

    Parameters
    ----------
    sizes : mapping
        scale -> voxels of each parcel.
    n_voxels : int
        Voxels in the mask (a dotted line marks ``n_voxels / scale``).

    Returns
    -------
    bytes
        SVG document.
    """
    canvas = Canvas(640, 300)
    smallest = min(int(s.min()) for s in sizes.values())
    largest = max(int(s.max()) for s in sizes.values())
    lo, hi = smallest * 0.8, max(largest, smallest + 1) * 1.25
    bins = np.geomspace(lo, hi, 36)
    counts = {s: np.histogram(sizes[s], bins=bins)[0] for s in sizes}
    top = max(int(c.max()) for c in counts.values())
    yticks = nice_ticks(0, top * 1.05, 4)
    ax = Axes(canvas, 60, 15, 555, 230, (lo, hi), (0, max(yticks[-1], top * 1.05)),
              xlog=True)
    decades = [10.0 ** k for k in range(math.ceil(math.log10(lo)),
                                        math.floor(math.log10(hi)) + 1)]
    for value in decades:
        canvas.line(float(ax.x(value)), ax.y0, float(ax.x(value)), ax.y0 + ax.h, color=GRID)
    ax.frame("parcel size (voxels, log scale); dotted: size of equal parcels",
             "number of parcels", xticks=decades, yticks=yticks,
             xtick_labels=[f"{v:g}" for v in decades])
    for k, scale in enumerate(sorted(sizes)):
        color = SCALE_COLORS[k % len(SCALE_COLORS)]
        xs = np.repeat(ax.x(bins), 2)[1:-1]
        ys = np.repeat(ax.y(counts[scale]), 2)
        canvas.polyline(np.r_[xs[0], xs, xs[-1]], np.r_[ax.y(0), ys, ax.y(0)], color=color,
                        width=1.6)
        equal = float(ax.x(n_voxels / scale))
        canvas.line(equal, ax.y0, equal, ax.y0 + ax.h, color=color, dash="2,3")
        canvas.line(ax.x0 + ax.w - 110, 24 + 16 * k, ax.x0 + ax.w - 92, 24 + 16 * k,
                    color=color, width=2)
        canvas.text(ax.x0 + ax.w - 86, 28 + 16 * k, f"{scale} parcels", size=10)
    return canvas.svg()


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

    Returns
    -------
    bytes
        SVG document.
    """
    scales = sorted(series)
    heights = [max(60.0, min(180.0, series[s].shape[1] * 0.45)) for s in scales]
    top = 22 if len(run_labels) > 1 else 8
    canvas = Canvas(WIDTH, top + sum(heights) + 8 * (len(scales) - 1) + 48)
    n_volumes = series[scales[0]].shape[0]
    y = top
    ax = None
    for scale, height in zip(scales, heights, strict=True):
        block = series[scale][:, orders[scale]].T
        ax = Axes(canvas, 60, y, WIDTH - 150, height, (0, n_volumes), (0, 1))
        canvas.image(ax.x0, y, ax.w, height, indexed=quantize((block + 2) / 4, "gray"))
        for start in boundaries:
            canvas.line(float(ax.x(start)), y, float(ax.x(start)), y + height,
                        color="#2980b9", width=1.5)
        canvas.text(ax.x0 - 8, y + height / 2 + 4, f"{scale}", size=10, anchor="end")
        y += height + 8
    assert ax is not None
    canvas.text(14, top + (y - top) / 2, "parcels", size=11, anchor="middle", rotate=True)
    ticks = [t for t in nice_ticks(0, n_volumes - 1, 8) if t <= n_volumes - 1]
    ax.h = y - 8 - ax.y0
    ax.frame("volume (all runs in order; red columns: censored)"
             + (f"; TR {tr:g} s" if tr else ""),
             xticks=[t + 0.5 for t in ticks], xtick_labels=[f"{t:g}" for t in ticks])
    if len(run_labels) > 1:
        for start, label in zip([0, *boundaries], run_labels, strict=True):
            canvas.text(float(ax.x(start)) + 2, 15, label, size=9, color=MUTED)
    canvas.colorbar(WIDTH - 80, top, 12, y - 8 - top, "gray",
                    [(0.0, "-2"), (0.5, "0"), (1.0, "2")], label="z-score (per run)")
    return canvas.svg()


def cluster_order(corr: np.ndarray) -> np.ndarray:
    """Parcel order of an average-linkage clustering of a correlation matrix.

    Parameters
    ----------
    corr : ndarray, shape (n, n)
        Correlations (NaN as 0); the distance is 1 - r.

    Returns
    -------
    ndarray
        Indices 0..n-1, the leaves of the dendrogram in order.
    """
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform

    distance = np.clip(1 - np.nan_to_num(corr), 0, 2)
    np.fill_diagonal(distance, 0)
    return hierarchy.leaves_list(
        hierarchy.linkage(squareform(distance, checks=False), method="average"))


def correlation(matrices: Mapping[int, np.ndarray],
                orders: Mapping[int, np.ndarray]) -> bytes:
    """Parcel correlation matrices, one panel per scale, parcels in clustering order.

    Parameters
    ----------
    matrices : mapping
        scale -> (n_parcels, n_parcels) correlation matrix.
    orders : mapping
        scale -> order of the parcels (:func:`cluster_order`).

    Returns
    -------
    bytes
        SVG document (matrices of more than
        :data:`~bids_parcellate.report.canvas.MAX_MATRIX` parcels block-averaged).
    """
    scales = sorted(matrices)
    panel = min(260.0, (WIDTH - 110) / len(scales) - 20)
    canvas = Canvas(WIDTH, panel + 40)
    for k, scale in enumerate(scales):
        x = 10 + k * (panel + 20)
        order = orders[scale]
        matrix = np.nan_to_num(matrices[scale])[np.ix_(order, order)]
        title = f"{scale} parcels"
        matrix, block = block_average(matrix)  # bounded size and cost
        if block > 1:
            title += f" ({block}×{block} blocks averaged)"
        canvas.image(x, 26, panel, panel, indexed=quantize((matrix + 1) / 2, "RdBu_r"))
        canvas.rect(x, 26, panel, panel, stroke=GRID)
        canvas.text(x + panel / 2, 18, title, size=11, anchor="middle")
    canvas.colorbar(10 + len(scales) * (panel + 20), 26, 12, panel, "RdBu_r",
                    [(0.0, "-1"), (0.25, "-0.5"), (0.5, "0"), (0.75, "0.5"), (1.0, "1")],
                    label="Pearson r")
    return canvas.svg()


def framewise_displacement(fd: Sequence[np.ndarray | None], censored: Sequence[Sequence[int]],
                           run_labels: Sequence[str], threshold: float | None) -> bytes:
    """FD of every run in order, threshold line, censored volumes marked.

    Parameters
    ----------
    fd : sequence of ndarray or None
        Framewise displacement of each run (None: not in its confounds).
    censored : sequence of sequence of int
        Censored volume indices of each run.
    run_labels : sequence of str
        Shown above each run when there are several.
    threshold : float or None
        FD threshold of the censoring (dashed line), when there is one.

    Returns
    -------
    bytes
        SVG document.
    """
    lengths = [len(v) if v is not None else 0 for v in fd]
    total = max(sum(lengths), 1)
    values = np.concatenate([v for v in fd if v is not None]) if any(lengths) else np.zeros(1)
    top = max(float(np.nanmax(values)), threshold or 0.0) * 1.08 or 1.0
    yticks = nice_ticks(0, top, 4)
    canvas = Canvas(WIDTH, 210)
    ax = Axes(canvas, 60, 22, WIDTH - 90, 140, (-0.5, total - 0.5),
              (0, max(yticks[-1], top)))
    start = 0
    any_censored = False
    for k, (series, cens, label) in enumerate(zip(fd, censored, run_labels, strict=True)):
        n = lengths[k]
        for index in cens:
            any_censored = True
            x = float(ax.x(start + index - 0.5))
            canvas.rect(x, ax.y0, max(float(ax.x(start + index + 0.5)) - x, 1.0), ax.h,
                        fill="#e74c3c", opacity=0.3)
        if series is not None:
            canvas.polyline(ax.x(np.arange(start, start + n)), ax.y(series), color="#34495e",
                            width=1.1)
        if k:
            canvas.line(float(ax.x(start - 0.5)), ax.y0 - 14, float(ax.x(start - 0.5)),
                        ax.y0 + ax.h, color="#2980b9", width=1.5)
        if len(run_labels) > 1:
            canvas.text(float(ax.x(start)) + 2, 12, label, size=9, color=MUTED)
        start += n
    legend = []
    if threshold is not None:
        y = float(ax.y(threshold))
        canvas.line(ax.x0, y, ax.x0 + ax.w, y, color="#e67e22", width=1.2, dash="5,3")
        legend.append(("#e67e22", f"FD threshold {threshold:g} mm"))
    if any_censored:
        legend.append(("#f1a9a0", "censored volume"))
    for k, (color, text) in enumerate(legend):
        x = ax.x0 + ax.w - 190
        canvas.rect(x, ax.y0 + 4 + 15 * k, 14, 8, fill=color)
        canvas.text(x + 20, ax.y0 + 12 + 15 * k, text, size=10)
    ticks = [t for t in nice_ticks(0, total - 1, 8) if t <= total - 1]
    ax.frame("volume", "FD (mm)", xticks=ticks, yticks=yticks)
    return canvas.svg()


def _floats(rows: Sequence[Mapping], column: str) -> np.ndarray:
    out = []
    for row in rows:
        try:
            out.append(float(row.get(column, "nan")))
        except ValueError:
            out.append(np.nan)
    return np.asarray(out)


def quality(rows: Sequence[Mapping]) -> bytes | None:
    """Accuracy, reproducibility and homogeneity against its null, across scales.

    Parameters
    ----------
    rows : sequence of mapping
        One quality-table row per scale (column -> text value), with ``scale`` and any
        of ``accuracy``, ``accuracy_heldout``, ``ari``, ``nmi``, ``homogeneity``,
        ``homogeneity_null_mean``, ``homogeneity_null_sd``.

    Returns
    -------
    bytes or None
        SVG, or None when the rows have none of these measures.
    """
    scales = _floats(rows, "scale")
    panels = [
        ("accuracy (R²)", [("accuracy", "in-sample"), ("accuracy_heldout", "held-out")]),
        ("reproducibility", [("ari", "ARI"), ("nmi", "NMI")]),
        ("homogeneity", [("homogeneity", "parcels"),
                         ("homogeneity_null_mean", "random parcels")]),
    ]
    panels = [(title, [(c, label) for c, label in series
                       if np.isfinite(_floats(rows, c)).any()]) for title, series in panels]
    panels = [(title, series) for title, series in panels if series]
    if not panels or not np.isfinite(scales).all():
        return None
    canvas = Canvas(WIDTH, 250)
    lo, hi = scales.min() / 1.4, scales.max() * 1.4
    width = (WIDTH - 40) / len(panels)
    for k, (title, series) in enumerate(panels):
        values = np.concatenate([_floats(rows, c) for c, _ in series])
        if title == "homogeneity":
            mean, sd = _floats(rows, "homogeneity_null_mean"), _floats(rows,
                                                                       "homogeneity_null_sd")
            values = np.concatenate([values, mean - 2 * sd, mean + 2 * sd])
            ylim = (min(0.0, np.nanmin(values)), np.nanmax(values) * 1.1 or 1.0)
        else:
            ylim = (0.0, 1.0)
        ax = Axes(canvas, 55 + k * width, 28, width - 85, 160, (lo, hi), ylim, xlog=True)
        canvas.text(ax.x0 + ax.w / 2, 16, title, size=11, anchor="middle")
        if title == "homogeneity" and np.isfinite(sd).all():
            xs = ax.x(scales)
            canvas.polygon(np.r_[xs, xs[::-1]], np.r_[ax.y(mean + 2 * sd),
                                                     ax.y((mean - 2 * sd)[::-1])],
                           fill="#9aa5b1", opacity=0.35)
        for j, (column, label) in enumerate(series):
            color = SCALE_COLORS[j]
            ys = _floats(rows, column)
            ok = np.isfinite(ys)
            canvas.polyline(ax.x(scales[ok]), ax.y(ys[ok]), color=color, width=1.8)
            for x, y in zip(ax.x(scales[ok]), ax.y(ys[ok]), strict=True):
                canvas.marker(float(x), float(y), color)
            legend_y = ax.y0 + ax.h - 12 - 14 * (len(series) - 1 - j)
            canvas.line(ax.x0 + ax.w - 110, legend_y, ax.x0 + ax.w - 94, legend_y,
                        color=color, width=2)
            canvas.text(ax.x0 + ax.w - 90, legend_y + 4, label, size=10)
        ax.frame("parcels", xticks=list(scales), yticks=nice_ticks(*ylim, 4),
                 xtick_labels=[f"{s:g}" for s in scales])
    return canvas.svg()


