"""The jinja2 templates of the reports (``report/templates/``) and data URIs.

The lowest layer of :mod:`bids_parcellate.report`: it imports no other report module.
Pages (:func:`render_page`) and figure documents (:func:`render`, used by
:class:`~bids_parcellate.report.canvas.Canvas`) share one environment, autoescaping on.

Pages are self-contained: the style sheet and script inline, figures as ``data:`` URIs
(:func:`data_uri`, :func:`svg_uri`), no external resource, so they open from
``file://`` and from a copy of the output folder. A Content-Security-Policy allows only
the page's own inline style and script (by hash) and ``data:`` images: an injected
script would not run even if escaping failed.
"""

from __future__ import annotations

import base64
import hashlib
import math
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import jinja2
from markupsafe import Markup

from bids_parcellate import __version__

__all__ = ["environment", "render", "render_page", "data_uri", "svg_uri", "format_number"]

#: Decimals of a non-integer value shown in a report table (ARI, R², correlations...).
DECIMALS = 3


def format_number(value: object) -> str:
    """A table cell as the reports show it: numbers rounded, everything else as it is.

    Integers (counts, scales) and values with at most :data:`DECIMALS` decimals are kept
    as written; longer decimals are rounded to :data:`DECIMALS` places (``0.1956724``
    -> ``0.196``), values under ``10**-DECIMALS`` in magnitude keep three significant
    digits in scientific notation (``0.0040429`` -> ``4.04e-03``). The files keep every
    digit; only the HTML text is rounded.

    Parameters
    ----------
    value : object
        A cell: text of a TSV, a number, None.

    Returns
    -------
    str
        The text shown (``""`` for None).
    """
    if value is None:
        return ""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return str(value)
    if not math.isfinite(number):  # nan, inf
        return text
    if "e" in text.lower():  # scientific notation: three significant digits
        return f"{number:.3g}"
    if "." not in text or len(text.split(".", 1)[1]) <= DECIMALS:
        return text
    if number != 0 and abs(number) < 10 ** -DECIMALS:
        return f"{number:.2e}"
    return f"{number:.{DECIMALS}f}"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The jinja2 environment of ``report/templates/`` (autoescaping, strict undefined).

    Returns
    -------
    jinja2.Environment
        Shared by every page and figure template; cached.
    """
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bids_parcellate.report", "templates"),
        autoescape=True,  # every value is escaped unless marked safe here
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["seconds"] = lambda v: f"{v:.1f} s" if v is not None else "n/a"
    env.filters["num"] = format_number
    return env


def render(template: str, **context) -> str:
    """Render one template of ``report/templates/`` with ``context`` as it is.

    Parameters
    ----------
    template : str
        File name under ``report/templates/`` (e.g. ``figure.svg.j2``).
    **context
        Template variables (escaped unless :class:`~markupsafe.Markup`).

    Returns
    -------
    str
        The rendered text.
    """
    return environment().get_template(template).render(**context)


@lru_cache(maxsize=1)
def _assets() -> tuple[str, str]:
    folder = resources.files("bids_parcellate.report").joinpath("templates")
    return (folder.joinpath("report.css").read_text(encoding="utf-8"),
            folder.joinpath("report.js").read_text(encoding="utf-8"))


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def render_page(template: str, **context) -> str:
    """Render a page template with the inline style, script and security policy.

    Parameters
    ----------
    template : str
        Page template under ``report/templates/`` (extends ``base.html.j2``).
    **context
        The page's own variables; ``style``, ``script``, ``csp``, ``version`` and
        ``generated`` (the UTC time, in ``<time class="generated">``) are added.

    Returns
    -------
    str
        The HTML document.
    """
    style, script = _assets()
    csp = (f"default-src 'none'; img-src data:; style-src {_csp_hash(style)}; "
           f"script-src {_csp_hash(script)}; base-uri 'none'; form-action 'none'")
    return render(template, style=Markup(style), script=Markup(script), csp=csp,
                  version=__version__,
                  generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), **context)


def data_uri(path: Path | str) -> str:
    """A figure file as a ``data:`` URI (SVG percent-encoded, other images base64).

    Parameters
    ----------
    path : Path or str
        An ``.svg``, ``.png`` or ``.jpg`` file.

    Returns
    -------
    str
        The URI.
    """
    path = Path(path)
    if path.suffix == ".svg":
        return svg_uri(path.read_bytes())
    kind = {".png": "image/png", ".jpg": "image/jpeg"}[path.suffix]
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def svg_uri(svg: bytes) -> str:
    """An SVG document as a percent-encoded ``data:`` URI.

    Our SVGs are mostly base64 rasters, which need no encoding, so this is ~25 %
    smaller than base64 of the SVG.

    Parameters
    ----------
    svg : bytes
        UTF-8 SVG document.

    Returns
    -------
    str
        The URI.
    """
    return "data:image/svg+xml;charset=utf-8," + quote(svg.decode("utf-8"),
                                                      safe=" /:;=,.-_()+*!~@?$")
