"""Reports and methods text: real reports rendered in headless Chromium, --reports-only,
--boilerplate-only, escaping of hostile metadata, the group report."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import shutil
import subprocess
import tempfile
import warnings
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bids_parcellate.demo import make_demo_dataset
from bids_parcellate.report.assemble import write_group_report
from bids_parcellate.report.methods import parse_bib, references, render_methods
from bids_parcellate.report.record import UnitLog

from .conftest import SHARED_DATA, run_cli

SPACE = "space-MNI152NLin2009cAsym"
FIGURES = ("mask", "labels", "compressed", "sizes", "carpet", "correlation", "fd")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")
HOSTILE = "<script>alert(1)</script>"
SVG = "http://www.w3.org/2000/svg"


# --------------------------------------------------------------------------- helpers
def chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    """Open ``page`` in headless Chromium (Debian's ``chromium``, which .ci/run installs;
    GitHub's Ubuntu runners have Google Chrome, the same engine)."""
    exe = (shutil.which("chromium") or shutil.which("chromium-browser")
           or shutil.which("google-chrome"))
    assert exe, "chromium is not installed (apt-get install chromium)"
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr",
             "--v=0", *args, page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)


def load_page(page: Path) -> tuple[str, str]:
    """The DOM after the page's scripts ran, and Chromium's console lines."""
    proc = chromium(page, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, "\n".join(console)


class Elements(HTMLParser):
    """Collects <img> sources, <script> contents, <a> targets and the visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.scripts: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self.root: dict = {}
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "html":
            self.root = attrs
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)


def parse(html: str) -> Elements:
    parser = Elements()
    parser.feed(html)
    return parser


def raster(data: bytes) -> np.ndarray:
    """Pixels (RGB) of PNG bytes; they must not all be the same."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=float)
    assert pixels.reshape(-1, 3).std(axis=0).max() > 5, "uniform raster"
    return pixels


def decode_figure(uri: str) -> ET.Element:
    """Decode a figure's data URI (SVG) and check it draws something: every raster it
    embeds decodes and is not uniform, and it has rasters or a line of many points."""
    assert uri.startswith("data:image/svg+xml;charset=utf-8,"), uri[:40]
    svg = ET.fromstring(unquote(uri.split(",", 1)[1]))
    assert svg.tag == f"{{{SVG}}}svg" and float(svg.get("width")) > 300
    assert not list(svg.iter(f"{{{SVG}}}script"))
    images = list(svg.iter(f"{{{SVG}}}image"))
    for image in images:
        href = image.get("href")
        assert href.startswith("data:image/png;base64,")
        raster(base64.b64decode(href.split(",", 1)[1], validate=True))
    lines = [p for p in svg.iter(f"{{{SVG}}}polyline") if len(p.get("points").split()) > 1]
    assert images or lines, "empty figure"
    return svg


def without_timestamp(html: str) -> str:
    return re.sub(r'<time class="generated">[^<]*</time>', "", html)


def record_of(out: Path, sub: str) -> dict:
    return json.loads((out / f"sub-{sub}" / "figures" / (
        f"sub-{sub}_{SPACE}_seg-ward_desc-summary_report.json")).read_text())


# --------------------------------------------------------------------------- outputs
def test_report_record_and_files(demo8, demo8_out):
    for sub in ("01", "02"):
        assert (demo8_out / f"sub-{sub}.html").is_file()
        record = record_of(demo8_out, sub)
        assert [r["label"] for r in record["runs"]] == [
            f"sub-{sub}_task-rest_run-1", f"sub-{sub}_task-rest_run-2"]
        for run in record["runs"]:
            assert run["n_volumes"] == 80
            assert run["n_kept"] == 80 - len(run["censored"])
            assert run["confounds"] and run["tr"] == pytest.approx(2.0)
            assert len(run["framewise_displacement"]) == 80
            assert not Path(run["files"]["bold"]).is_absolute()  # relative to BIDS_DIR
        assert [s["scale"] for s in record["scales"]] == [20, 50]
        assert sorted(record["figures"]) == sorted(FIGURES)
        for entry in record["figures"].values():
            assert (demo8_out / entry["file"]).stat().st_size > 3000
        # checksums are those of the input files
        for rel, digest in record["checksums"].items():
            assert hashlib.sha256((demo8.root / rel).read_bytes()).hexdigest() == digest
        bold = record["runs"][0]["files"]["bold"]
        assert bold in record["checksums"]
        assert {"denoise", "parcellate", "report_figures"} <= set(record["timings"])
        assert record["parameters"]["n_parcels"] == [20, 50]
        sidecar = next((demo8_out / f"sub-{sub}" / "anat").glob("*_dseg.json"))
        assert record["ConfigHash"] == json.loads(sidecar.read_text())["ConfigHash"]
        assert record["software"]["nilearn"]
    citation = demo8_out / "logs"
    md = (citation / "CITATION.md").read_text()
    assert "4 preprocessed BOLD runs of participants sub-01 and sub-02" in md
    assert "(Ward, 1963)" in md and "[@" not in md
    bib = parse_bib((citation / "CITATION.bib").read_text())
    assert {"ward1963", "esteban2019", "yarkoni2019", "abraham2014", "pedregosa2011",
            "thirion2014", "fox2005", "wang2024"} <= set(bib)
    html = parse((citation / "CITATION.html").read_text())
    assert "#ref-ward1963" in html.links


def test_participant_report_in_chromium(demo8_out, tmp_path):
    # a copy of the output folder elsewhere: the report needs nothing beside itself
    copy = tmp_path / "moved"
    shutil.copytree(demo8_out, copy)
    page = copy / "sub-01.html"
    source = page.read_text()
    # no external resource: every src and <link> is a data: URI, the style sheet is inline;
    # one image per figure of the record, plus the chart of the quality tables
    n_images = len(FIGURES) + 1
    assert re.findall(r'src="([a-z]+):', source) == ["data"] * n_images
    assert "href=%22http" not in source  # nor inside the figures' SVG
    assert re.findall(r'<link [^>]*href="([a-z]+):', source) == ["data"]
    assert not re.findall(r"url\((?!%23)", source) and "@import" not in source
    dom, console = load_page(page)
    assert console == "", console
    elements = parse(dom)
    assert json.loads(elements.root["data-report-errors"]) == []
    assert elements.root["data-report-images"] == f"{n_images} {n_images}"
    assert len(elements.images) == n_images
    for image in elements.images:
        decode_figure(image["src"])
    text = "".join(elements.text)
    for heading in ("Summary", "Denoising", "Parcellation", "Quality", "Warnings",
                    "Methods", "Provenance", "Runs used", "Regressors used"):
        assert heading in text, heading
    assert "sub-01_task-rest_run-2" in text and "(Ward, 1963)" in text
    shot = tmp_path / "shot.png"
    proc = chromium(page, f"--screenshot={shot}", "--window-size=1280,2400",
                    "--hide-scrollbars")
    assert proc.returncode == 0, proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float) / 255
    assert pixels.shape == (2400, 1280)
    # a real page: dark header, white body, figures and text in between
    assert pixels[:20].mean() < 0.35 and 0.6 < pixels.mean() < 0.99


def test_reports_only_rebuilds_the_same_report(demo8_out, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(demo8_out, out)
    before = {sub: (out / f"sub-{sub}.html").read_text() for sub in ("01", "02")}
    for sub in before:
        (out / f"sub-{sub}.html").unlink()
    others = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()
              and p.parent.name != "logs"}
    # BIDS_DIR no longer exists: nothing is read from the inputs, nothing recomputed
    assert run_cli(tmp_path / "gone", out, "--reports-only") == 0
    for sub, html in before.items():
        rebuilt = (out / f"sub-{sub}.html").read_text()
        assert without_timestamp(rebuilt) == without_timestamp(html)
        assert rebuilt != without_timestamp(rebuilt)  # the timestamp is there
    assert {p: p.read_bytes() for p in others} == others
    (out / "sub-01.html").unlink()
    assert run_cli(tmp_path / "gone", out, "--participant-label", "02",
                   "--reports-only") == 0
    assert not (out / "sub-01.html").exists()
    capsys.readouterr()
    assert run_cli(tmp_path / "gone", tmp_path / "empty", "--reports-only") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bids_parcellate: error:") and "does not exist" in err[-1]


def test_boilerplate_only_writes_only_the_methods_text(demo8, tmp_path):
    out = tmp_path / "out"
    assert run_cli(demo8.root, out, "--participant-label", "01", "--method", "rena",
                   "--denoise-strategy", "compcor", "--n-parcels", "20", "40",
                   "--boilerplate-only") == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "logs/CITATION.bib", "logs/CITATION.html", "logs/CITATION.md"]
    md = (out / "logs" / "CITATION.md").read_text()
    assert "2 preprocessed BOLD runs of participant sub-01 (task rest)" in md
    assert "ReNA" in md and "(Hoyos-Idrobo et al., 2019)" in md
    assert "CompCor" in md and "(Behzadi et al., 2007)" in md
    assert "20 and 40 parcels" in md
    assert "volumes were kept" not in md  # nothing was processed
    bib = (out / "logs" / "CITATION.bib").read_text()
    assert "@article{hoyosidrobo2019," in bib and "@article{ward1963," not in bib


def test_quality_tables_appear_in_the_report(demo8_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(demo8_out, out)
    columns = ["participant_id", "method", "scale", "accuracy", "ari", "homogeneity",
               "homogeneity_null_mean", "homogeneity_null_sd"]
    values = {20: ["sub-01", "ward", "20", "0.61", "0.72", "0.41", "0.30", "0.01"],
              50: ["sub-01", "ward", "50", "0.70", "0.61", "0.47", "0.36", "0.012"]}
    for scale, row in values.items():
        stem = out / "sub-01" / "anat" / f"sub-01_{SPACE}_seg-ward_scale-{scale}_quality"
        stem.with_suffix(".tsv").write_text("\t".join(columns) + "\n" + "\t".join(row) + "\n")
        stem.with_suffix(".json").write_text(json.dumps(
            {"ari": {"Description": "split-half adjusted Rand index"}}))
    assert run_cli(tmp_path / "gone", out, "--participant-label", "01",
                   "--reports-only") == 0
    page = out / "sub-01.html"
    dom, console = load_page(page)
    assert console == "", console
    elements = parse(dom)
    assert json.loads(elements.root["data-report-errors"]) == []
    assert len(elements.images) == len(FIGURES) + 1  # the quality chart
    chart = decode_figure(elements.images[-1]["src"])
    assert {"accuracy (R²)", "reproducibility", "homogeneity"} <= {
        t.text for t in chart.iter(f"{{{SVG}}}text")}
    text = "".join(elements.text)
    assert "split-half adjusted Rand index" in text and "0.72" in text and "0.61" in text
    assert "No quality measures" not in text
    assert "Each parcellation was evaluated with the criteria of Thirion" in text



def test_record_names_the_files_written_with_target_resolution(demo8, tmp_path):
    """With --target-resolution the outputs are named res-<label> of the new grid: the
    record says so and every file it names exists (the record used to name the BOLD's
    res, i.e. none, and dseg files that were never written)."""
    out = tmp_path / "out"
    assert run_cli(demo8.root, out, "--participant-label", "01", "--n-parcels", "10",
                   "--target-resolution", "10") == 0
    (path,) = (out / "sub-01" / "figures").glob("*_desc-summary_report.json")
    record = json.loads(path.read_text())
    written = sorted(p.name for p in (out / "sub-01" / "anat").glob("*_dseg.nii.gz"))
    (res,) = {re.search(r"_res-([A-Za-z0-9]+)_", name).group(1) for name in written}
    assert record["res"] == res == "10mm"
    assert "_res-10mm_" in path.name
    named = [s["dseg"] for s in record["scales"]] + [
        f["file"] for f in record["figures"].values()]
    assert named and [n for n in named if not (out / n).is_file()] == []
    assert [Path(s["dseg"]).name for s in record["scales"]] == written
    assert record["grid"]["voxel_size_mm"] == [10.0, 10.0, 10.0]
    # the methods text: the BOLD selected as it was, then resampled to 10 mm
    md = (out / "logs" / "CITATION.md").read_text()
    assert "res-10mm" not in md and "resampled to 10 mm isotropic voxels" in md
    assert "(res-10mm)" in (out / "sub-01.html").read_text()

# --------------------------------------------------------------------------- escaping
@pytest.fixture(scope="module")
def hostile_out(tmp_path_factory):
    """One participant whose BOLD sidecar has a TaskName with a script and no
    RepetitionTime; run 2 has no confounds (skipped at selection, with its reason)."""
    root = tmp_path_factory.mktemp("hostile")
    demo = make_demo_dataset(root / "bids", participants=("01",), runs=(1, 2),
                             resolution=8, n_volumes=60, n_true_parcels=10, seed=5)
    func = demo.fmriprep_dir / "sub-01" / "func"
    for sidecar in func.glob("*_desc-preproc_bold.json"):
        meta = json.loads(sidecar.read_text())
        meta["TaskName"] = HOSTILE
        del meta["RepetitionTime"]  # read from the header instead, with a warning
        sidecar.write_text(json.dumps(meta))
    next(func.glob("*run-2_desc-confounds_timeseries.tsv")).unlink()
    out = root / "out"
    # exit 1: a run with a missing input file is reported as incomplete (issue 8)
    assert run_cli(demo.root, out, "--n-parcels", "10") == 1
    return out


def test_hostile_task_name_is_escaped_and_never_runs(hostile_out):
    page = hostile_out / "sub-01.html"
    source = page.read_text()
    assert HOSTILE not in source
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in source
    dom, console = load_page(page)
    assert console == "", console
    elements = parse(dom)
    assert json.loads(elements.root["data-report-errors"]) == []  # no alert() recorded
    assert len(elements.scripts) == 1 and "alert(1)" not in elements.scripts[0]
    assert HOSTILE in "".join(elements.text)  # shown as text
    for name in ("CITATION.html", "CITATION.md"):
        assert HOSTILE not in (hostile_out / "logs" / name).read_text()
    assert "\\<script\\>alert(1)\\</script\\>" in (hostile_out / "logs" /
                                                 "CITATION.md").read_text()


def test_skipped_run_and_reason_are_reported(hostile_out):
    record = record_of(hostile_out, "01")
    assert [r["label"] for r in record["runs"]] == ["sub-01_task-rest_run-1"]
    (skipped,) = record["skipped"]
    assert skipped["file"] == ("derivatives/fmriprep/sub-01/func/"
                               f"sub-01_task-rest_run-2_{SPACE}_desc-preproc_bold.nii.gz")
    assert skipped["stage"] == "inputs"
    assert "no matching *_desc-confounds_timeseries.tsv" in skipped["reason"]
    text = "".join(parse((hostile_out / "sub-01.html").read_text()).text)
    assert "no matching *_desc-confounds_timeseries.tsv" in text
    # warnings logged while the inputs were queried reach the unit's report
    assert any("RepetitionTime missing from the sidecar" in w for w in record["warnings"])
    assert any("run-2" in w and "skipping" in w for w in record["warnings"])
    assert "RepetitionTime missing from the sidecar" in text
    assert "1 run was not used" in (hostile_out / "logs" / "CITATION.md").read_text()


# --------------------------------------------------------------------------- units
def test_unit_log_collects_warnings():
    logger = logging.getLogger("bids_parcellate")
    with UnitLog() as log:
        logger.warning("run %s has few volumes", "x")
        warnings.warn("odd value", UserWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
        logger.info("not a warning")
        logger.warning("run %s has few volumes", "x")
    assert log.messages[0] == "run x has few volumes"
    assert len(log.messages) == 2 and log.messages[1].startswith("UserWarning: odd value")


def _record(method: str, strategy: str, **params) -> dict:
    return {
        "subject": "01", "session": None, "space": "MNI152NLin2009cAsym", "res": None,
        "runs": [{"label": "sub-01_task-rest", "entities": {"task": "rest"},
                  "task_name": "rest", "n_volumes": 100, "n_kept": 90,
                  "confounds": ["trans_x", "csf"]}],
        "skipped": [], "grid": {"n_voxels": 1000, "voxel_size_mm": [4.0, 4.0, 4.0]},
        "parameters": {"denoise_strategy": strategy, "method": method, "n_parcels": [100],
                       "detrend": True, "min_volumes": 20, "smoothing_fwhm": 4.0,
                       "n_components": 200, "random_seed": 0,
                       "standardize": "zscore_sample", **params},
        "fd_threshold": 0.5 if strategy == "scrubbing" else None,
        "ConfigHash": "abc", "fmriprep_versions": ["24.1.0"],
        "software": {k: "1.0" for k in ("python", "bids_parcellate", "numpy", "scipy",
                                        "scikit-learn", "nibabel", "nilearn", "pybids",
                                        "pandas")},
    }


@pytest.mark.parametrize("method, key", [
    ("ward", "ward1963"), ("complete", "pedregosa2011"), ("average", "pedregosa2011"),
    ("kmeans", "sculley2010"), ("hierarchical_kmeans", "nister2006"),
    ("rena", "hoyosidrobo2019")])
@pytest.mark.parametrize("strategy, strategy_key", [
    ("simple", "fox2005"), ("scrubbing", "power2012"), ("compcor", "behzadi2007"),
    ("ica_aroma", "pruim2015"), ("none", None)])
def test_methods_text_cites_what_was_run(method, key, strategy, strategy_key):
    methods = render_methods([_record(method, strategy)])
    assert {key, "thirion2014", "esteban2019", "yarkoni2019", "abraham2014"} <= set(
        methods.keys)
    if strategy_key:
        assert strategy_key in methods.keys
    assert "90 of 100 volumes were kept (10.0 % censored)" in methods.markdown
    assert "[@" not in methods.markdown and "[@" not in methods.html
    assert set(parse_bib(methods.bibtex)) == set(methods.keys)
    assert set(methods.keys) <= set(references())


def test_every_reference_is_complete():
    for key, ref in references().items():
        assert ref.authors and ref.fields.get("year") and ref.fields.get("title"), key
        text, link = ref.full()
        assert link and link.startswith("https://"), key


# --------------------------------------------------------------------------- group
def test_group_report_from_group_outputs(demo8_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(demo8_out, out)
    tpl = out / "tpl-MNI152NLin2009cAsym"
    tpl.mkdir()
    for scale in (20, 50):
        src = out / "sub-01" / "anat" / f"sub-01_{SPACE}_seg-ward_scale-{scale}_dseg.nii.gz"
        shutil.copy(src, tpl / f"tpl-MNI152NLin2009cAsym_atlas-demoward_scale-{scale}"
                               "_dseg.nii.gz")
    (out / "group_atlas-demoward_agreement.tsv").write_text(
        "participant_id\tscale\tari\tnmi\tn_voxels\n"
        "sub-01\t20\t0.812\t0.901\t3666\nsub-02\t20\t0.775\t0.880\t3666\n"
        "sub-01\t50\t0.613\t0.850\t3666\nsub-02\t50\t0.598\t0.842\t3666\n")
    (out / "group_quality.tsv").write_text("participant_id\tscale\taccuracy\n"
                                           "sub-01\t20\t0.5\n")
    path = write_group_report(out)
    assert path == out / "group.html"
    dom, console = load_page(path)
    assert console == "", console
    elements = parse(dom)
    assert json.loads(elements.root["data-report-errors"]) == []
    assert elements.root["data-report-images"] == "1 1"
    svg = decode_figure(elements.images[0]["src"])
    assert [t.text for t in svg.iter(f"{{{SVG}}}text")][:2] == ["20 parcels", "50 parcels"]
    assert "sub-01.html" in elements.links and "sub-02.html" in elements.links
    text = "".join(elements.text)
    assert "atlas-demoward" in text and "0.812" in text and "0.775" in text
    # agreement per scale in the participants table; other group tables only as tables
    header = re.search(r"<h2>Participants</h2>.*?</thead>", path.read_text(), re.S).group(0)
    assert [c for c in ("ari (20)", "nmi (20)", "ari (50)", "nmi (50)") if c in header] == [
        "ari (20)", "nmi (20)", "ari (50)", "nmi (50)"]
    assert "accuracy" not in header and "n_voxels" not in header
    assert "group_quality.tsv" in text
    labels = np.asarray(nib.load(tpl / "tpl-MNI152NLin2009cAsym_atlas-demoward_scale-50"
                                       "_dseg.nii.gz").dataobj)
    assert f">{len(np.unique(labels)) - 1}<" in path.read_text()  # parcels counted
    first = path.read_text()
    path.unlink()
    assert run_cli(tmp_path / "gone", out, "--reports-only", level="group") == 0
    assert without_timestamp(path.read_text()) == without_timestamp(first)


@pytest.mark.slow
def test_real_studyforrest_report(tmp_path):
    """The report of a real 3T run (4 mm, 156 volumes) renders with every figure."""
    out = tmp_path / "out"
    assert run_cli(SHARED_DATA, out, "--n-parcels", "100", "400") == 0
    record = record_of(out, "sf02")
    (run,) = record["runs"]
    assert run["n_volumes"] == run["n_kept"] == 156 and len(run["confounds"]) == 30
    assert run["files"]["bold"].startswith("derivatives/fmriprep/sub-sf02/func/")
    assert record["grid"]["shape"] == [50, 59, 50]
    # real signal: parcel means keep a sizeable share of a cleaned volume's variance,
    # more with more parcels
    r2 = record["figures"]["compressed"]["r2"]
    assert 0.1 < r2["100"] < r2["400"] < 1
    dom, console = load_page(out / "sub-sf02.html")
    assert console == "", console
    elements = parse(dom)
    assert json.loads(elements.root["data-report-errors"]) == []
    # every figure of the record and the chart of the quality tables
    assert elements.root["data-report-images"] == f"{len(FIGURES) + 1} {len(FIGURES) + 1}"
    for image in elements.images:
        decode_figure(image["src"])
