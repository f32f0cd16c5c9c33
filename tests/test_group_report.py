"""The group level's report and methods text: the participants it used (also when it
runs before the participant level), logs/CITATION.*, and the caution of an atlas learned
from fewer than 3 participants."""

from __future__ import annotations

import json
import re
import shutil
from html import unescape
from pathlib import Path

import pytest

from bids_parcellate.group.checks import small_group_caution

from .conftest import run_cli

SPACE = "space-MNI152NLin2009cAsym"
LABEL = "bidsWard"
TPL = "tpl-MNI152NLin2009cAsym"


def description(out: Path) -> dict:
    return json.loads((out / f"atlas-{LABEL}_description.json").read_text())


def dseg_sidecar(out: Path, scale: int = 20) -> dict:
    return json.loads((out / TPL / f"{TPL}_atlas-{LABEL}_scale-{scale}_dseg.json").read_text())


def participant_rows(html: str) -> dict[str, list[str]]:
    """Cells of the group report's participants table, by participant."""
    section = re.search(r'<section id="participants">.*?</section>', html, re.S).group(0)
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", section, re.S):
        cells = [unescape(re.sub(r"<[^>]+>", "", c)).strip()
                 for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        if cells:
            rows[cells[0]] = cells[1:]
    return rows


def visible_text(html: str) -> str:
    """The text of a page, without its style sheet, scripts and tags."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return unescape(re.sub(r"<[^>]+>", " ", html))


def kept_and_volumes(out: Path, sub: str) -> tuple[int, int, int]:
    """Runs, kept volumes and volumes of a participant in its participant-level record."""
    record = json.loads(next((out / f"sub-{sub}" / "figures").glob(
        "*_desc-summary_report.json")).read_text())
    runs = record["runs"]
    return len(runs), sum(r["n_kept"] for r in runs), sum(r["n_volumes"] for r in runs)


@pytest.fixture(scope="module")
def group_first(demo8, tmp_path_factory):
    """The group level on an empty output folder: no participant level before it."""
    out = tmp_path_factory.mktemp("group_first") / "out"
    assert run_cli(demo8.root, out, "--n-parcels", "20", "50", level="group") == 0
    return out


def test_group_before_participant_lists_its_participants(demo8_out, group_first):
    out = group_first
    assert not list(out.glob("sub-*/figures"))  # no participant report data
    html = (out / "group.html").read_text()
    assert "1 group atlas, 2 participants." in html
    rows = participant_rows(html)
    assert sorted(rows) == ["sub-01", "sub-02"]
    for sub in ("01", "02"):
        # the figures the participant level reports for the same runs
        n_runs, kept, volumes = kept_and_volumes(demo8_out, sub)
        units, runs, shown_kept, censored = rows[f"sub-{sub}"][:4]
        assert (units, runs) == ("1", str(n_runs))
        assert shown_kept == f"{kept} / {volumes}" and censored == str(volumes - kept)
        assert f"atlas-{LABEL}" in rows[f"sub-{sub}"]
    assert "runs and volumes from the sidecars of their timeseries" in html


def test_group_before_participant_writes_the_methods_text(demo8_out, group_first):
    logs = group_first / "logs"
    md = (logs / "CITATION.md").read_text()
    assert "4 preprocessed BOLD runs of participants sub-01 and sub-02" in md
    kept = sum(kept_and_volumes(demo8_out, s)[1] for s in ("01", "02"))
    volumes = sum(kept_and_volumes(demo8_out, s)[2] for s in ("01", "02"))
    assert f"In total, {kept} of {volumes} volumes were kept" in md
    assert (f"**Group atlas.** The group atlas `atlas-{LABEL}` was learned from 2 "
            "participant units (sub-01 and sub-02)") in md
    assert "(3666 voxels)" in md and "(Ward, 1963)" in md and "[@" not in md
    assert "@article{ward1963," in (logs / "CITATION.bib").read_text()
    assert "Group atlas." in (logs / "CITATION.html").read_text()
    # the same text in the report
    assert "The group atlas <code>atlas-bidsWard</code> was learned from 2" in (
        group_first / "group.html").read_text()


def test_two_participants_carry_a_caution(group_first):
    caution = description(group_first)["Caution"]
    assert caution.startswith("This group atlas was learned from only 2 participants "
                              "(sub-01, sub-02)")
    assert dseg_sidecar(group_first, 20)["Caution"] == caution
    assert dseg_sidecar(group_first, 50)["Caution"] == caution
    html = unescape((group_first / "group.html").read_text())
    assert f'<p class="caution"><strong>Caution:</strong> {caution}</p>' in html
    assert f"**Caution:** {caution}" in (group_first / "logs" / "CITATION.md").read_text()


def test_single_participant_atlas_is_cautioned(demo8, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(demo8.root, out, "--n-parcels", "20", "--participant-label", "01",
                   level="group") == 0
    caution = description(out)["Caution"]
    assert caution.startswith("This group atlas was learned from a single participant "
                              "(sub-01): it is that participant's own parcellation")
    assert dseg_sidecar(out)["Caution"] == caution
    warnings = [line.split("WARNING", 1)[1].strip()
                for line in capsys.readouterr().err.splitlines() if " WARNING " in line]
    assert warnings == [f"group atlas atlas-{LABEL}: {caution}"]
    html = unescape((out / "group.html").read_text())
    assert "1 group atlas, 1 participant." in html and caution in html
    assert participant_rows(html)["sub-01"][:2] == ["1", "2"]
    assert "single participant" in (out / "logs" / "CITATION.md").read_text()


def test_caution_below_three_participants():
    assert small_group_caution([("01", None), ("02", None), ("03", None)]) is None
    assert "single participant (sub-01 (2 sessions))" in small_group_caution(
        [("01", "1"), ("01", "2")])
    assert "only 2 participants (sub-01, sub-02)" in small_group_caution(
        [("01", "1"), ("02", "1"), ("02", "2")])


def test_participant_then_group_report(demo8, demo8_out, tmp_path):
    """After the participant level: its records give the figures, numbers are rounded in
    every page, the methods text has both levels."""
    out = tmp_path / "out"
    shutil.copytree(demo8_out, out)
    assert run_cli(demo8.root, out, "--n-parcels", "20", "50", level="group") == 0
    html = (out / "group.html").read_text()
    rows = participant_rows(html)
    n_runs, kept, volumes = kept_and_volumes(out, "01")
    assert rows["sub-01"][1:3] == [str(n_runs), f"{kept} / {volumes}"]
    assert "runs and volumes from the sidecars" not in html
    # agreement values: 3 decimals in the page, every digit in the table
    table = (out / f"group_atlas-{LABEL}_agreement.tsv").read_text().splitlines()
    ari = table[1].split("\t")[2]
    assert len(ari.split(".")[1]) > 3 and f"{float(ari):.3f}" in rows["sub-01"]
    md = (out / "logs" / "CITATION.md").read_text()
    assert "**Group atlas.**" in md and "**Quality.**" in md
    # no number with more than 4 decimals in the text of any page (the quality and
    # agreement tables hold 7-8); DOIs such as 10.3389/fninf.2014.00014 are not numbers
    assert re.search(r"\d\.\d{7}", (out / "group_quality.tsv").read_text())
    for page in ("group.html", "sub-01.html", "sub-02.html", "logs/CITATION.html"):
        text = visible_text((out / page).read_text())
        assert "Methods" in text or "Data-driven brain parcellation" in text
        assert re.findall(r"(?<![\w./])\d+\.\d{5,}(?![\w.])", text) == [], page
