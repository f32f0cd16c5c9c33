"""Methods boilerplate: what was run, as text to paste into a manuscript, with references.

The text comes from ``boilerplate/methods.md.j2`` (shipped as the resource package
``bids_parcellate.boilerplate``) rendered from unit records (see
:mod:`bids_parcellate.report.record`): the same records give ``logs/CITATION.md``,
``CITATION.html``, ``CITATION.bib`` and the methods section of the reports. Citations
are written ``[@key]`` (Pandoc style) and resolved against ``references.bib``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
from markupsafe import Markup, escape

from bids_parcellate.config import KMEANS_DEFAULTS, Config
from bids_parcellate.derivatives import dataset, naming, writers
from bids_parcellate.inputs.grids import output_res
from bids_parcellate.report.record import (
    display_path,
    fd_threshold,
    fmriprep_versions,
    skipped_of_unit,
    software_versions,
)
from bids_parcellate.report.templates import render_page

if TYPE_CHECKING:  # annotations only
    from bids_parcellate.inputs.query import Selection

TEMPLATE = "methods.md.j2"
CITATION = re.compile(r"\[(-?@[\w-]+(?:\s*;\s*-?@[\w-]+)*)\]")

#: How each ``--motion`` variant reads in the text.
MOTION_TEXT = {
    "basic": "the six head-motion parameters",
    "power2": "the six head-motion parameters and their squares",
    "derivatives": "the six head-motion parameters and their temporal derivatives",
    "full": "the six head-motion parameters, their temporal derivatives and the squares of "
            "both (24 regressors)",
}
#: Default motion variant of nilearn's strategies.
DEFAULT_MOTION = {"simple": "full", "scrubbing": "full", "compcor": "full"}
STANDARDIZE_TEXT = {
    "zscore_sample": "z-scored with the sample standard deviation",
    "zscore": "z-scored",
    "psc": "as percent signal change",
}


# --------------------------------------------------------------------------- references
@dataclass(frozen=True)
class Reference:
    """One ``references.bib`` entry."""

    key: str
    kind: str
    fields: dict
    raw: str

    @property
    def authors(self) -> list[str]:
        """The ``author`` field split on ``and``."""
        return [a.strip() for a in self.fields.get("author", "").split(" and ") if a.strip()]

    @property
    def surnames(self) -> list[str]:
        """Family names (before the comma) of :attr:`authors`."""
        return [a.split(",")[0].strip() for a in self.authors]

    @property
    def short(self) -> str:
        """``Ward, 1963``, ``Nistér and Stewénius, 2006``, ``Abraham et al., 2014``."""
        names = self.surnames
        who = (names[0] if len(names) == 1 else " and ".join(names) if len(names) == 2
               else f"{names[0]} et al.")
        return f"{who}, {self.fields.get('year', 'n.d.')}"

    def full(self) -> tuple[str, str | None]:
        """(reference text without the link, DOI or URL)."""
        people = []
        for author in self.authors[:6]:
            if "," in author:
                last, first = (p.strip() for p in author.split(",", 1))
                initials = "".join(part[0] for part in re.split(r"[\s.-]+", first) if part)
                people.append(f"{last} {initials}")
            else:
                people.append(author)
        who = ", ".join(people) + (" et al." if len(self.authors) > 6 else "")
        f = self.fields
        venue = f.get("journal") or f.get("booktitle") or f.get("publisher") or ""
        details = ", ".join(p for p in (
            f.get("volume", "") + (f"({f['number']})" if f.get("number") else ""),
            f.get("pages", "").replace("--", "–")) if p)
        title = f.get("title", "")
        title += "" if title.endswith(("?", "!", ".")) else "."
        text = f"{who} ({f.get('year', 'n.d.')}). {title} {venue}"
        text += f", {details}." if details else "."
        link = f"https://doi.org/{f['doi']}" if f.get("doi") else f.get("url")
        return text, link


def _braced(text: str, start: int) -> int:
    """Index just after the brace group opening at ``text[start] == '{'``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError("unbalanced braces in references.bib")


def parse_bib(text: str) -> dict[str, Reference]:
    """Parse the BibTeX layout of ``references.bib`` (one braced value per field).

    A dedicated BibTeX library for the dozen entries of one file we write ourselves is
    not worth a dependency; this reads exactly that layout.

    Parameters
    ----------
    text : str
        BibTeX source.

    Returns
    -------
    dict
        Citation key -> :class:`Reference`, in file order.
    """
    refs = {}
    for match in re.finditer(r"@(\w+)\s*\{\s*([^,\s]+)\s*,", text):
        end = _braced(text, text.index("{", match.start()))
        body = text[match.end():end - 1]
        fields = {}
        for fm in re.finditer(r"(\w+)\s*=\s*\{", body):
            stop = _braced(body, fm.end() - 1)
            value = body[fm.end():stop - 1]
            fields[fm.group(1).lower()] = re.sub(r"\s+", " ", value.replace("{", "")
                                                 .replace("}", "")).strip()
        refs[match.group(2)] = Reference(match.group(2), match.group(1).lower(), fields,
                                         text[match.start():end])
    return refs


@lru_cache(maxsize=1)
def references() -> dict[str, Reference]:
    """The entries of ``boilerplate/references.bib``.

    Returns
    -------
    dict
        Citation key -> :class:`Reference` (cached).
    """
    return parse_bib(resources.files("bids_parcellate.boilerplate")
                     .joinpath("references.bib").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- context
def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def group_context(label: str, description: dict) -> dict:
    """Template variables of a group atlas's paragraph, from its description file.

    Parameters
    ----------
    label : str
        The ``atlas-`` label.
    description : dict
        ``atlas-<label>_description.json``: ``Participants`` (units), ``GroupMask``,
        ``Parameters`` and, with fewer than 3 participants, ``Caution``.

    Returns
    -------
    dict
        ``label``, ``units_text``, ``n_voxels``, ``n_components``, ``caution``.
    """
    units = [str(u) for u in description.get("Participants", [])]
    listed = f" ({_join(units)})" if 0 < len(units) <= 8 else ""
    return {"label": label, "n_voxels": description.get("GroupMask", {}).get("NumberOfVoxels"),
            "units_text": f"{len(units)} participant unit{'s' if len(units) != 1 else ''}"
                          + listed,
            "n_components": description.get("Parameters", {}).get("NumberOfComponents"),
            "caution": description.get("Caution")}


def methods_context(records: Sequence[dict], quality: bool = False,
                    groups: Sequence[dict] = ()) -> dict:
    """Template variables describing the analysis of ``records`` (one per unit).

    Records of completed units carry volumes kept and regressors; records planned
    from the input query alone (``--boilerplate-only``) do not, and the text says less.

    Parameters
    ----------
    records : sequence of dict
        Unit records (:mod:`bids_parcellate.report.record`), at least one; parameters,
        space and software are those of the first.
    quality : bool
        Whether the quality measures were computed (a sentence and its citation).
    groups : sequence of dict
        Group atlases learned from these units (:func:`group_context`): a paragraph each.

    Returns
    -------
    dict
        Variables of ``boilerplate/methods.md.j2``.
    """
    first = records[0]
    params = first["parameters"]
    subjects = sorted({r["subject"] for r in records})
    runs = [run for r in records for run in r["runs"]]
    if len(subjects) == 1:
        participants_text = f"participant sub-{subjects[0]}"
    elif len(subjects) <= 8:
        participants_text = "participants " + _join([f"sub-{s}" for s in subjects])
    else:
        participants_text = f"{len(subjects)} participants"
    tasks: dict[str, set] = {}
    for run in runs:
        task = run["entities"].get("task")
        if task:
            tasks.setdefault(task, set())
            if run.get("task_name"):
                tasks[task].add(str(run["task_name"]))
    tasks_text = ("task " if len(tasks) == 1 else "tasks ") + _join(
        [t + (f" ({', '.join(sorted(names))})" if names and names != {t} else "")
         for t, names in sorted(tasks.items())]) if tasks else ""
    filters = []
    if params.get("session_label"):
        filters.append("session " + ", ".join(params["session_label"]))
    if params.get("task"):
        filters.append("task " + ", ".join(params["task"]))
    if params.get("run"):
        filters.append("run " + ", ".join(str(r) for r in params["run"]))
    if params.get("bids_filters"):
        filters.append("the PyBIDS filters " + json.dumps(params["bids_filters"],
                                                          sort_keys=True))
    grids = [r["grid"] for r in records if r.get("grid")]
    grid = ""
    if grids:
        sizes = sorted({g["n_voxels"] for g in grids})
        voxel = " × ".join(f"{v:g}" for v in grids[0]["voxel_size_mm"])
        count = (f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]}")
        grid = f"{count} voxels of {voxel} mm"
    strategy = params["denoise_strategy"]
    motion = params.get("motion") or DEFAULT_MOTION.get(strategy, "full")
    regressor_sets: list[dict] = []
    if all("confounds" in run for run in runs) and strategy != "none":
        for run in runs:
            names = list(run["confounds"])
            for item in regressor_sets:
                if item["names"] == names:
                    item["runs"].append(run["label"])
                    break
            else:
                regressor_sets.append({"names": names, "runs": [run["label"]]})
    complete = all(run.get("n_kept") is not None for run in runs)
    n_kept = sum(run["n_kept"] for run in runs) if complete else None
    n_volumes = sum(run["n_volumes"] for run in runs) if complete else None
    decomposition = params["method"] in ("dictlearning", "canica")
    scales = sorted((params.get("n_maps") or []) if decomposition else params["n_parcels"])
    # the DictLearning sparsity actually used (auto: from the kept volumes of the unit)
    alphas = sorted({r["dictlearning_alpha"] for r in records
                     if r.get("dictlearning_alpha") is not None})
    per_run = [k for k in params.get("connectivity") or [] if k != "tangent"]
    dvars = params.get("std_dvars_threshold")
    if strategy == "scrubbing" and dvars is None:
        import importlib

        dvars = importlib.import_module(
            "nilearn.interfaces.fmriprep.load_confounds_strategy"
        ).preset_strategies["scrubbing"]["std_dvars_threshold"]
    hashes = sorted({r["ConfigHash"] for r in records})
    return {
        "code_url": dataset.CODE_URL,
        "software": first["software"],
        "n_runs": len(runs),
        "participants_text": participants_text,
        "tasks": sorted(tasks),
        "tasks_text": tasks_text,
        "fmriprep_versions": sorted({v for r in records for v in r.get("fmriprep_versions",
                                                                          [])}),
        "space": first["space"],
        # the selected BOLD's res (the text says later when it was resampled); the
        # record's own res is that of the outputs
        "res": runs[0]["entities"].get("res") if runs else first.get("res"),
        "filters": filters,
        "skipped": [s for r in records for s in r.get("skipped", [])],
        "by_session": any(r.get("session") for r in records),
        "grid": grid,
        "mask_text": _mask_text(params),
        "resampling_text": _resampling_text(params),
        "knobs_text": _knobs_text(params),
        "strategy": strategy,
        "motion_text": MOTION_TEXT[motion],
        "global_signal": params.get("global_signal"),
        "fd_threshold": first.get("fd_threshold"),
        "dvars_threshold": dvars,
        "regressor_sets": regressor_sets,
        "detrend": params["detrend"],
        "high_pass": params.get("high_pass"),
        "low_pass": params.get("low_pass"),
        "min_volumes": params["min_volumes"],
        "n_kept": n_kept,
        "n_volumes": n_volumes,
        "censored_percent": (round(100 * (1 - n_kept / n_volumes), 1)
                             if n_volumes else None),
        "smoothing_fwhm": params["smoothing_fwhm"],
        "n_components": params["n_components"],
        "method": params["method"],
        "scales_text": _join([str(s) for s in scales])
        + (" network maps" if decomposition else " parcels"),
        "decomposition": decomposition,
        "n_maps_text": _join([str(s) for s in scales]),
        "dictlearning_alpha": params.get("dictlearning_alpha"),
        "alphas_text": _join([f"{a:.3g}" for a in alphas]) if alphas else "",
        "region_thresholding": params.get("region_thresholding"),
        "region_threshold": params.get("region_threshold"),
        "region_extractor": params.get("region_extractor"),
        "min_region_size": params.get("min_region_size"),
        "split_disconnected": params.get("split_disconnected", False),
        "connectivity": per_run,
        "connectivity_text": _join(per_run) if per_run else "",
        "random_seed": params["random_seed"],
        "standardize": params["standardize"],
        "standardize_text": STANDARDIZE_TEXT.get(params["standardize"], ""),
        "quality": quality,
        "groups": list(groups),
        "config_hash": ", ".join(hashes),
    }


MASK_TEXT = {
    "epi": "the intersection of brain masks computed from each run's mean image by "
           "Nilearn's compute_epi_mask",
    "background": "the intersection of brain masks computed from each run's mean image by "
                  "Nilearn's compute_background_mask",
    "whole-brain-template": "Nilearn's MNI152 whole-brain template mask "
                            "(compute_brain_mask) within the intersection of their "
                            "fMRIPrep brain masks",
    "gm-template": "Nilearn's MNI152 grey-matter template mask (compute_brain_mask) "
                   "within the intersection of their fMRIPrep brain masks",
    "wm-template": "Nilearn's MNI152 white-matter template mask (compute_brain_mask) "
                   "within the intersection of their fMRIPrep brain masks",
}


def _mask_text(params: dict) -> str:
    """Which voxels were analysed (--mask-strategy, --mask-args, --mask)."""
    text = MASK_TEXT.get(params.get("mask_strategy") or "fmriprep",
                         "the intersection of their fMRIPrep brain masks")
    if params.get("mask_args"):
        text += " (parameters " + ", ".join(
            f"{k}={v}" for k, v in sorted(params["mask_args"].items())) + ")"
    if params.get("mask"):
        name = str(params["mask"]).rsplit("/", 1)[-1]
        text += (f", restricted to a user-supplied mask ({name}, resampled to the BOLD "
                 "grid with nearest-neighbour interpolation)")
    return text


def _resampling_text(params: dict) -> str:
    """--target-resolution / --target-affine as a sentence (empty without)."""
    if params.get("target_resolution"):
        grid = f"{params['target_resolution']:g} mm isotropic voxels"
    elif params.get("target_affine"):
        grid = "the voxel grid of affine " + json.dumps(params["target_affine"])
        if params.get("target_shape"):
            grid += " and shape " + " × ".join(str(n) for n in params["target_shape"])
    else:
        return ""
    return (f"Before any other step, the BOLD series were resampled to {grid} with "
            "Nilearn's resample_img (continuous interpolation), and the masks with "
            "nearest-neighbour interpolation.")


def _knobs_text(params: dict) -> str:
    """The method's own options, as a clause (empty when none apply)."""
    method = params.get("method")
    if method == "rena":
        scaling = "with" if params.get("rena_scaling") else "without"
        return (f"ReNA ran {params.get('rena_n_iter', 10)} iterations {scaling} feature "
                "scaling.")
    if method in KMEANS_DEFAULTS:
        n_init = params.get("kmeans_n_init") or KMEANS_DEFAULTS[method]["n_init"]
        batch = params.get("kmeans_batch_size") or KMEANS_DEFAULTS[method]["batch_size"]
        return f"k-means used {n_init} k-means++ initialisations and mini-batches of {batch}."
    return ""


def planned_records(config: Config, selection: Selection) -> list[dict]:
    """Unit records from the input query alone (``--boilerplate-only``: nothing is read).

    Parameters
    ----------
    config : Config
    selection : Selection
        The selected runs, by unit, and those skipped.

    Returns
    -------
    list of dict
        One record per unit, with what :func:`methods_context` needs and no volumes
        kept, regressors or grid.
    """
    versions = software_versions()
    fmriprep = fmriprep_versions(selection.fmriprep_dirs)
    records = []
    for (subject, session), runs in selection.units().items():
        skipped = [{"file": display_path(s.bold, config), "reason": s.reason,
                    "stage": "selection"}
                   for s in skipped_of_unit(selection.skipped, subject, session)]
        records.append({
            "subject": subject,
            "session": session,
            "space": runs[0].entities.get("space", config.space),
            "res": output_res(config, runs),  # of the outputs (--target-*)
            "runs": [{"label": naming.source_prefix(r.entities), "entities": r.entities,
                      "task_name": r.metadata.get("TaskName"), "tr": r.tr,
                      "files": {"bold": display_path(r.bold, config)}} for r in runs],
            "skipped": skipped,
            "parameters": config.as_dict(),
            "ConfigHash": config.config_hash(),
            "fd_threshold": fd_threshold(config),
            "software": versions,
            "fmriprep_versions": fmriprep,
        })
    return records


# --------------------------------------------------------------------------- rendering
def _md_value(value):
    """Values in the Markdown text: characters with a Markdown or HTML meaning escaped."""
    if isinstance(value, str):
        return re.sub(r"([\\`*\[\]<>])", r"\\\1", value)
    return value


@lru_cache(maxsize=2)
def _environment(html: bool) -> jinja2.Environment:
    source = resources.files("bids_parcellate.boilerplate").joinpath(TEMPLATE).read_text(
        encoding="utf-8")
    env = jinja2.Environment(
        loader=jinja2.DictLoader({TEMPLATE: source}),
        autoescape=html,
        finalize=None if html else _md_value,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env


@dataclass
class Methods:
    """The methods text in every form it is written."""

    markdown: str
    html: Markup
    bibtex: str
    keys: list[str] = field(default_factory=list)


def _cited(text: str) -> list[str]:
    keys = []
    for match in CITATION.finditer(text):
        for part in match.group(1).split(";"):
            key = part.strip().lstrip("-@")
            if key in references() and key not in keys:
                keys.append(key)
    return keys


def _cite(match: re.Match, html: bool) -> str:
    parts = []
    for part in match.group(1).split(";"):
        part = part.strip()
        key = part.lstrip("-@")
        ref = references().get(key)
        if ref is None:
            return match.group(0)
        label = ref.fields.get("year", "") if part.startswith("-") else ref.short
        parts.append(f'<a href="#ref-{key}">{escape(label)}</a>' if html else label)
    return "(" + "; ".join(parts) + ")"


def _inline_html(text: str) -> str:
    """The Markdown of our template, in already-escaped text: code, bold, italics."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![\\*])\*(?!\*)(.+?)(?<!\\)\*", r"<em>\1</em>", text)
    return CITATION.sub(lambda m: _cite(m, html=True), text)


def render_methods(records: Sequence[dict], quality: bool = False,
                   groups: Sequence[dict] = ()) -> Methods:
    """Render the methods text of ``records`` as Markdown, HTML and BibTeX.

    Parameters
    ----------
    records : sequence of dict
        Unit records (see :func:`methods_context`).
    quality : bool
        Whether the quality measures were computed.
    groups : sequence of dict
        Group atlases (:func:`group_context`).

    Returns
    -------
    Methods
        The text in every form, with the cited keys in reference-list order.
    """
    context = methods_context(records, quality=quality, groups=groups)
    markdown_src = _environment(False).get_template(TEMPLATE).render(context)
    keys = _cited(markdown_src)
    ordered = sorted(keys, key=lambda k: (references()[k].short.lower(), k))
    body = CITATION.sub(lambda m: _cite(m, html=False), markdown_src).rstrip() + "\n"
    refs_md = []
    for key in ordered:
        text, link = references()[key].full()
        refs_md.append(f"- {_md_value(text)}" + (f" <{link}>" if link else ""))
    markdown = body + "\n### References\n\n" + "\n".join(refs_md) + "\n"

    html_src = _environment(True).get_template(TEMPLATE).render(context)
    blocks = []
    for block in re.split(r"\n\s*\n", html_src.strip()):
        block = " ".join(line.strip() for line in block.splitlines())
        if block.startswith("### "):
            blocks.append(f"<h3>{_inline_html(block[4:])}</h3>")
        elif block:
            blocks.append(f"<p>{_inline_html(block)}</p>")
    items = []
    for key in ordered:
        text, link = references()[key].full()
        anchor = (f' <a href="{escape(link)}">{escape(link)}</a>' if link else "")
        items.append(f'<li id="ref-{key}">{escape(text)}{anchor}</li>')
    html = "\n".join(blocks) + '\n<h3>References</h3>\n<ul class="references">\n' + \
        "\n".join(items) + "\n</ul>\n"
    bibtex = "\n\n".join(references()[k].raw for k in sorted(keys)) + "\n"
    # the HTML was built from autoescaped template output and escaped reference text
    return Methods(markdown=markdown, html=Markup(html), bibtex=bibtex, keys=ordered)


def write_citation(output_dir: Path, records: Sequence[dict], quality: bool = False,
                   groups: Sequence[dict] = ()) -> list[Path]:
    """Write ``logs/CITATION.md``, ``.html`` and ``.bib`` (each atomically).

    Parameters
    ----------
    output_dir : Path
    records : sequence of dict
        Unit records (see :func:`methods_context`).
    quality : bool
        Whether the quality measures were computed.
    groups : sequence of dict
        Group atlases (:func:`group_context`).

    Returns
    -------
    list of Path
        The three files.
    """
    methods = render_methods(records, quality=quality, groups=groups)
    paths = naming.citation_paths(output_dir)
    page = render_page("citation.html.j2", methods=methods)
    return [writers.write_text(paths["md"], methods.markdown),
            writers.write_text(paths["html"], page),
            writers.write_text(paths["bib"], methods.bibtex)]
