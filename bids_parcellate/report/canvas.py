"""Drawing primitives of the report figures: an SVG canvas, axes, colour maps, PNG rasters.

A :class:`Canvas` is a list of SVG elements rendered by ``report/templates/figure.svg.j2``
(:func:`~bids_parcellate.report.templates.render`): axes, ticks, lines and text are
vector elements, and image-like panels (brain slices, carpet plots, matrices) are PNG
rasters at their native resolution (one pixel per voxel, volume or parcel pair)
embedded in the SVG and scaled up by the browser without smoothing. Why these are not
drawn with matplotlib is measured in :mod:`bids_parcellate.report.figures`.

Drawing is deterministic: the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bids_parcellate.report.templates import render

#: Width of every figure in CSS pixels.
WIDTH = 960
#: Largest correlation matrix drawn pixel for pixel; larger ones are block-averaged.
MAX_MATRIX = 500
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
INK, MUTED, GRID = "#1f2933", "#616e7c", "#d9e2ec"
#: Colours of successive scales (Okabe-Ito, distinguishable with colour blindness).
SCALE_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")

#: Colour maps as (position, RGB) anchors, interpolated linearly.
COLORMAPS = {
    # like nilearn's cold_hot: cyan-blue for negative values, black at 0, red-yellow
    "cold_hot": ((0.0, (0, 255, 255)), (0.25, (0, 0, 255)), (0.5, (0, 0, 0)),
                 (0.75, (255, 0, 0)), (1.0, (255, 255, 0))),
    # ColorBrewer RdBu, reversed (blue for negative correlations)
    "RdBu_r": ((0.0, (5, 48, 97)), (0.1, (33, 102, 172)), (0.2, (67, 147, 195)),
               (0.3, (146, 197, 222)), (0.4, (209, 229, 240)), (0.5, (247, 247, 247)),
               (0.6, (253, 219, 199)), (0.7, (244, 165, 130)), (0.8, (214, 96, 77)),
               (0.9, (178, 24, 43)), (1.0, (103, 0, 31))),
    "gray": ((0.0, (0, 0, 0)), (1.0, (255, 255, 255))),
}


def colormap(name: str, values: np.ndarray) -> np.ndarray:
    """RGB of ``values`` through a colour map of :data:`COLORMAPS`.

    Parameters
    ----------
    name : str
        A key of :data:`COLORMAPS`.
    values : ndarray
        Positions in [0, 1] (clipped; NaN is 0).

    Returns
    -------
    ndarray
        uint8, shape ``values.shape + (3,)``.
    """
    anchors = COLORMAPS[name]
    positions = [a[0] for a in anchors]
    values = np.clip(np.nan_to_num(values, nan=0.0), 0, 1)
    rgb = np.stack([np.interp(values, positions, [a[1][c] for a in anchors])
                    for c in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def png(rgb: np.ndarray) -> bytes:
    """PNG of an RGB image (Pillow, no metadata: deterministic).

    Parameters
    ----------
    rgb : ndarray
        uint8, shape (height, width, 3).

    Returns
    -------
    bytes
        The PNG file.
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").save(
        buf, format="PNG", compress_level=6)
    return buf.getvalue()


def png_indexed(index: np.ndarray, palette: np.ndarray) -> bytes:
    """PNG of a palette image (one byte per pixel).

    3-4 times smaller than RGB for the noisy carpet and correlation panels.

    Parameters
    ----------
    index : ndarray
        uint8 palette indices, shape (height, width).
    palette : ndarray
        RGB of each index, shape (n_colors, 3), n_colors <= 256.

    Returns
    -------
    bytes
        The PNG file.
    """
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(index, dtype=np.uint8), "P")
    image.putpalette(np.asarray(palette, dtype=np.uint8).ravel().tolist())
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def quantize(values: np.ndarray, cmap: str, levels: int = 64,
             nan_color: tuple[int, int, int] = (192, 57, 43)
             ) -> tuple[np.ndarray, np.ndarray]:
    """Palette image of ``values`` through a colour map, NaN in its own colour.

    Parameters
    ----------
    values : ndarray
        Positions in [0, 1] (clipped).
    cmap : str
        A key of :data:`COLORMAPS`.
    levels : int
        Colours taken from the map.
    nan_color : tuple of int
        RGB of NaN values.

    Returns
    -------
    index : ndarray
        uint8, 0..levels-1, ``levels`` for NaN.
    palette : ndarray
        uint8, shape (levels + 1, 3).
    """
    index = np.round(np.clip(np.nan_to_num(values, nan=0.0), 0, 1) * (levels - 1))
    index = np.where(np.isnan(values), levels, index).astype(np.uint8)
    palette = np.vstack([colormap(cmap, np.linspace(0, 1, levels)), nan_color])
    return index, palette


# --------------------------------------------------------------------------- drawing
@dataclass
class Canvas:
    """A figure: a list of SVG elements rendered by ``figure.svg.j2``."""

    width: float
    height: float
    background: str = "#ffffff"
    items: list[dict] = field(default_factory=list)
    gradients: list[dict] = field(default_factory=list)

    def image(self, x: float, y: float, w: float, h: float, rgb: np.ndarray | None = None,
              indexed: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """A raster scaled to the box (x, y, w, h), from ``rgb`` (:func:`png`) or from
        ``indexed`` = (index, palette) (:func:`png_indexed`).

        Parameters
        ----------
        x, y, w, h : float
            The box in pixels (top-left corner, width, height); the raster is stretched
            to it, pixelated (no smoothing).
        rgb : ndarray, optional
            uint8, shape (height, width, 3); used when ``indexed`` is None.
        indexed : (ndarray, ndarray), optional
            ``(index, palette)`` as :func:`quantize` returns them: a smaller PNG
            for colour-mapped panels.
        """
        data = png(rgb) if indexed is None else png_indexed(*indexed)
        href = "data:image/png;base64," + base64.b64encode(data).decode()
        self.items.append({"kind": "image", "x": x, "y": y, "w": w, "h": h, "href": href})

    def line(self, x1: float, y1: float, x2: float, y2: float, color: str = INK,
             width: float = 1.0, dash: str | None = None, opacity: float = 1.0) -> None:
        """A segment; ``dash`` is an SVG ``stroke-dasharray`` (e.g. ``"2,3"``).

        Parameters
        ----------
        x1, y1, x2, y2 : float
            End points in pixels.
        color : str
            SVG colour.
        width : float
            Stroke width in pixels.
        dash : str, optional
            SVG ``stroke-dasharray``; solid without it.
        opacity : float
            Stroke opacity, 0..1.
        """
        self.items.append({"kind": "line", "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                           "color": color, "width": width, "dash": dash,
                           "opacity": opacity})

    def polyline(self, xs: Sequence[float], ys: Sequence[float], color: str = INK,
                 width: float = 1.2) -> None:
        """An open line through the points (xs, ys) in pixels.

        Parameters
        ----------
        xs, ys : sequence of float
            Coordinates in pixels, of equal length.
        color : str
            SVG colour.
        width : float
            Stroke width in pixels.
        """
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
        self.items.append({"kind": "polyline", "points": points, "color": color,
                           "width": width})

    def polygon(self, xs: Sequence[float], ys: Sequence[float], fill: str,
                opacity: float = 1.0) -> None:
        """A filled polygon without outline.

        Parameters
        ----------
        xs, ys : sequence of float
            Vertices in pixels, of equal length.
        fill : str
            SVG colour.
        opacity : float
            Fill opacity, 0..1.
        """
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
        self.items.append({"kind": "polygon", "points": points, "fill": fill,
                           "opacity": opacity})

    def marker(self, x: float, y: float, color: str) -> None:
        """A dot of radius 3 px.

        Parameters
        ----------
        x, y : float
            Centre in pixels.
        color : str
            SVG fill colour.
        """
        self.items.append({"kind": "marker", "x": x, "y": y, "color": color})

    def rect(self, x: float, y: float, w: float, h: float, fill: str = "none",
             stroke: str | None = None, opacity: float = 1.0) -> None:
        """A rectangle; ``opacity`` applies to the fill.

        Parameters
        ----------
        x, y, w, h : float
            Top-left corner, width and height in pixels.
        fill : str
            SVG colour, or ``"none"``.
        stroke : str, optional
            Outline colour; no outline without it.
        opacity : float
            Fill opacity, 0..1.
        """
        self.items.append({"kind": "rect", "x": x, "y": y, "w": w, "h": h, "fill": fill,
                           "stroke": stroke, "opacity": opacity})

    def text(self, x: float, y: float, text: object, size: float = 11, color: str = INK,
             anchor: str = "start", rotate: bool = False, box: str | None = None) -> None:
        """Text at its baseline; ``anchor`` is SVG's ``text-anchor``, ``rotate`` turns
        it by -90° about (x, y), ``box`` is the colour of a translucent box behind it.

        Parameters
        ----------
        x, y : float
            Anchor point on the baseline, in pixels.
        text : object
            Drawn as ``str(text)`` (escaped by the template).
        size : float
            Font size in pixels.
        color : str
            SVG colour.
        anchor : {"start", "middle", "end"}
            SVG ``text-anchor``.
        rotate : bool
            Turn the text by -90° about (x, y) (reads bottom to top).
        box : str, optional
            Colour of a translucent box behind the text (sized from the number of
            characters, for ``anchor="start"`` unrotated text).
        """
        self.items.append({"kind": "text", "x": x, "y": y, "text": str(text), "size": size,
                           "color": color, "anchor": anchor, "rotate": rotate, "box": box})

    def colorbar(self, x: float, y: float, w: float, h: float, cmap: str,
                 ticks: Sequence[tuple[float, str]], *, label: str,
                 color: str = INK) -> None:
        """Vertical colour bar of a colour map of :data:`COLORMAPS`, always labelled.

        Parameters
        ----------
        x, y, w, h : float
            Its box in pixels.
        cmap : str
            A key of :data:`COLORMAPS`.
        ticks : sequence of (float, str)
            (position in [0, 1] from the bottom, label) pairs.
        label : str
            Rotated title on the right: what the colours show, with its unit (e.g.
            ``"Pearson r"``, ``"z-score"``, ``"cleaned BOLD (a.u.)"``); required.
        color : str
            Outline, ticks and text.
        """
        gid = f"cbar{len(self.gradients)}"
        stops = [(round(p, 3), _hex(c)) for p, c in COLORMAPS[cmap]]
        self.gradients.append({"id": gid, "stops": stops})
        self.items.append({"kind": "gradient", "x": x, "y": y, "w": w, "h": h, "id": gid})
        self.rect(x, y, w, h, stroke=color)
        for position, text in ticks:
            ty = y + h * (1 - position)
            self.line(x + w, ty, x + w + 3, ty, color=color)
            self.text(x + w + 5, ty + 3.5, text, size=9, color=color)
        if not label:
            raise ValueError("a colour bar needs a label (what it shows, with its unit)")
        self.text(x + w + 34, y + h / 2, label, size=10, color=color, anchor="middle",
                  rotate=True)

    def svg(self) -> bytes:
        """The figure as an SVG document (UTF-8 bytes)."""
        return render("figure.svg.j2", canvas=self, font=FONT).encode("utf-8")


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 x 10^k) covering [lo, hi].

    Parameters
    ----------
    lo, hi : float
        The range.
    target : int
        About how many steps.

    Returns
    -------
    list of float
        ``[lo]`` when the range is empty or not finite.
    """
    if not np.isfinite([lo, hi]).all() or hi <= lo:
        return [lo]
    raw = (hi - lo) / target
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def tick_label(value: float) -> str:
    """A tick value as text (``%g``)."""
    return f"{value:g}"


@dataclass
class Axes:
    """Data-to-pixel mapping of one plotting area of a :class:`Canvas`."""

    canvas: Canvas
    x0: float
    y0: float
    w: float
    h: float
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    xlog: bool = False

    def x(self, value: float | np.ndarray) -> np.ndarray:
        """Pixel x of data ``value`` (log10 scale when ``xlog``)."""
        lo, hi = self.xlim
        value = np.asarray(value, dtype=float)
        if self.xlog:
            value, lo, hi = np.log10(value), math.log10(lo), math.log10(hi)
        return self.x0 + (value - lo) / (hi - lo) * self.w

    def y(self, value: float | np.ndarray) -> np.ndarray:
        """Pixel y of data ``value`` (up is larger)."""
        lo, hi = self.ylim
        return self.y0 + self.h - (np.asarray(value, dtype=float) - lo) / (hi - lo) * self.h

    def frame(self, xlabel: str = "", ylabel: str = "",
              xticks: Sequence[float] | None = None, yticks: Sequence[float] | None = None,
              xtick_labels: Sequence[str] | None = None) -> None:
        """Left and bottom spines, ticks and labels.

        Parameters
        ----------
        xlabel, ylabel : str
            Axis titles (none when empty).
        xticks, yticks : sequence of float, optional
            Tick positions in data units.
        xtick_labels : sequence of str, optional
            Labels of ``xticks`` (default :func:`tick_label`).
        """
        c = self.canvas
        bottom = self.y0 + self.h
        c.line(self.x0, bottom, self.x0 + self.w, bottom, color=MUTED)
        c.line(self.x0, self.y0, self.x0, bottom, color=MUTED)
        for i, value in enumerate(xticks if xticks is not None else []):
            px = float(self.x(value))
            c.line(px, bottom, px, bottom + 4, color=MUTED)
            label = xtick_labels[i] if xtick_labels else tick_label(value)
            c.text(px, bottom + 15, label, size=10, color=MUTED, anchor="middle")
        for value in yticks if yticks is not None else []:
            py = float(self.y(value))
            c.line(self.x0 - 4, py, self.x0, py, color=MUTED)
            c.text(self.x0 - 6, py + 3.5, tick_label(value), size=10, color=MUTED,
                   anchor="end")
        if xlabel:
            c.text(self.x0 + self.w / 2, bottom + 31, xlabel, size=11, anchor="middle")
        if ylabel:
            c.text(self.x0 - 38, self.y0 + self.h / 2, ylabel, size=11, anchor="middle",
                   rotate=True)


def block_average(matrix: np.ndarray, limit: int = MAX_MATRIX) -> tuple[np.ndarray, int]:
    """A square matrix averaged over blocks so that it has at most ``limit`` rows.

    Bounds the size and cost of a raster with more parcels than pixels.

    Parameters
    ----------
    matrix : ndarray, shape (n, n)
    limit : int
        Largest matrix drawn pixel for pixel.

    Returns
    -------
    matrix : ndarray
        ``matrix`` itself when it is small enough, else the block means (trailing rows and
        columns that do not fill a block are dropped).
    block : int
        Rows per block (1: not averaged).
    """
    block = math.ceil(len(matrix) / limit)
    if block <= 1:
        return matrix, 1
    n = len(matrix) // block * block
    return matrix[:n, :n].reshape(n // block, block, n // block, block).mean(axis=(1, 3)), block
