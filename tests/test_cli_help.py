"""The command line a new user meets: exit codes of invalid options, ``--help``, and the
words of the messages (counts pluralised, option values as typed)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from bids_parcellate.cli import main
from bids_parcellate.cli.parser import DOCS_URL
from bids_parcellate.words import (
    close_match,
    did_you_mean,
    listing,
    plural,
    plural_noun,
    value_text,
    values_text,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bids_parcellate"


def run_main(argv: list[str]) -> int:
    """The CLI in-process; argparse's own errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


# --------------------------------------------------------------------------- exit codes
#: (extra arguments, what the one-line message must contain)
INVALID = [
    (["--method", "spectral"], "--method 'spectral': choose from ward,"),
    (["--connectivity", "pearson"], "--connectivity 'pearson': choose from"),
    (["--connectivity", "correlation", "correlation"], "--connectivity correlation "
                                                       "correlation: measures repeat"),
    (["--connectivity", "tangent"], "--connectivity tangent needs several participants"),
    (["--n-parcels", "0"], "--n-parcels 0: every scale must be >= 2"),
    (["--n-parcels", "-1"], "--n-parcels -1: every scale must be >= 2"),
    (["--n-parcels", "abc"], "argument --n-parcels: invalid int value: 'abc'"),
    (["--n-parcels", "10", "10"], "--n-parcels 10 10: scales repeat"),
    (["--smoothing-fwhm", "-1"], "--smoothing-fwhm -1: must be >= 0"),
    (["--smoothing-fwhm", "nan"], "argument --smoothing-fwhm: 'nan' is not a finite number"),
    (["--denoise-strategy", "aggressive"], "--denoise-strategy 'aggressive': choose from"),
    (["--standardize", "max"], "--standardize 'max': choose from zscore_sample, zscore, "
                               "psc, none"),
    (["--motion", "all"], "argument --motion: invalid choice: 'all'"),
    (["--fd-threshold", "0.3"], "--fd-threshold has no effect with --denoise-strategy "
                                "simple"),
    (["--denoise-strategy", "scrubbing", "--fd-threshold", "-1"], "--fd-threshold -1: "
                                                                  "must be > 0"),
    (["--high-pass", "0.1", "--low-pass", "0.01"], "--high-pass 0.1 must be below "
                                                   "--low-pass 0.01"),
    (["--nprocs", "0"], "--nprocs 0: must be >= 1"),
    (["--mem-gb", "0"], "--mem-gb 0: must be > 0"),
    (["--cache-limit-gb", "-2"], "--cache-limit-gb -2: must be > 0"),
    (["--min-volumes", "1"], "--min-volumes 1: must be >= 2"),
    (["--n-components", "0"], "--n-components 0: must be >= 1"),
    (["--random-seed", "-1"], "--random-seed -1: must be in"),
    (["--bootstrap", "1"], "--bootstrap 1: give 0 (off) or at least 2"),
    (["--feature-weighting", "1.5"], "--feature-weighting 1.5: give a number from 0"),
    (["--target-resolution", "0"], "--target-resolution 0: must be > 0 mm"),
    (["--target-affine", "1,2"], "--target-affine '1,2': give 9 (3x3) or 16 (4x4)"),
    (["--mask-args", "{oops"], "--mask-args '{oops': not valid JSON"),
    (["--run", "one"], "--run 'one': not a run index"),
    (["--participant-label", "../x"], "--participant-label '../x': not a BIDS label"),
    (["--space", "MNI-152"], "--space 'MNI-152': not a BIDS label"),
    (["--atlas-label", "my_atlas"], "--atlas-label 'my_atlas': not a BIDS label"),
    (["--split-disconnected"], "--split-disconnected applies to --method kmeans"),
    (["--method", "rena", "--rena-n-iter", "0"], "--rena-n-iter 0: must be >= 1"),
    (["--method", "kmeans", "--kmeans-n-init", "0"], "--kmeans-n-init 0: must be >= 1"),
    (["--method", "canica", "--n-parcels", "10"], "--n-parcels does not apply to --method "
                                                  "canica"),
    (["--method", "canica", "--n-maps", "1"], "--n-maps 1: every scale must be >= 2"),
    (["--method", "dictlearning", "--dictlearning-alpha", "-1"], "--dictlearning-alpha -1: "
                                                                 "must be > 0"),
    (["--method", "canica", "--region-thresholding", "percentile", "--region-threshold",
      "100"], "--region-threshold 100: a percentile must be in [0, 100)"),
    (["--reports-only", "--boilerplate-only"], "argument --boilerplate-only: not allowed "
                                               "with argument --reports-only"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
]


@pytest.mark.parametrize("extra, message", INVALID,
                         ids=[" ".join(extra) for extra, _ in INVALID])
def test_invalid_option_values_are_usage_errors(tmp_path, capsys, extra, message):
    """Exit code 2, whether argparse or the Config validation catches the value, with one
    line that names the option; nothing is written. BIDS_DIR does not exist, so the
    option is judged before any input is read."""
    out = tmp_path / "out"
    code = run_main([str(tmp_path / "bids"), str(out), "participant", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("bids_parcellate: error: "), err
    assert message in err[0], err
    assert "Traceback" not in err[0] and "None" not in err[0]
    assert not re.search(r"\[[\d, ']*\]", err[0]), err  # no Python list such as [0]
    assert not out.exists()


def test_bad_input_is_not_a_usage_error(tmp_path, capsys):
    """The same command lines with valid values fail later, on the missing BIDS_DIR
    (exit 1), and a missing file named by an option is bad input too."""
    out = tmp_path / "out"
    assert run_main([str(tmp_path / "bids"), str(out), "participant",
                     "--n-parcels", "10", "--method", "ward"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert run_main([str(tmp_path / "bids"), str(out), "participant",
                     "--mask", str(tmp_path / "mask.nii.gz")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bids_parcellate: error: --mask {tmp_path / 'mask.nii.gz'}: file not "
                   "found"]


def test_readme_exit_codes_say_what_the_cli_does():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert ("2 usage error: an unknown option, or an invalid option value or combination "
            "(`--method spectral`, `--n-parcels 0`, `--n-parcels abc`") in readme
    assert "130 interrupted" in readme and "143 terminated by SIGTERM" in readme


# --------------------------------------------------------------------------- --help
@pytest.fixture
def help_blocks(monkeypatch, capsys) -> dict[str, str]:
    """``bids_parcellate --help`` (exit 0), as option -> its invocation and help text on
    one line (a wide terminal, so that argparse does not wrap inside a help text)."""
    monkeypatch.setenv("COLUMNS", "2000")
    assert run_main(["--help"]) == 0
    text = capsys.readouterr().out
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            current = line.split()[0].rstrip(",")
            blocks[current] = line.strip()
        elif current and line.startswith("    ") and line.strip():
            blocks[current] += " " + line.strip()
        else:
            current = None
    blocks["epilog"] = text.split("\n\n")[-1]
    return blocks


def test_help_shows_each_default_once_and_never_none(help_blocks):
    assert len(help_blocks) > 60  # every option was read
    for block in help_blocks.values():
        assert len(re.findall(r"\bdefault\b", block)) <= 1, block
        for raw in ("(default: None)", "(default: [])", "(default: True)",
                    "(default: False)", "[100, 200, 400]"):
            assert raw not in block, block
    assert help_blocks["--n-parcels"].endswith("(default: 100 200 400)")
    assert help_blocks["--smoothing-fwhm"].endswith("(default: 4)")
    assert help_blocks["--fd-threshold"].endswith("(default: 0.5, nilearn's)")
    assert help_blocks["--res"].endswith("when several exist")  # no default, none shown
    assert "default" not in help_blocks["--overwrite"]  # a flag: off unless given


def test_help_on_off_options_read_clearly(help_blocks):
    assert help_blocks["--detrend"].startswith("--detrend, --no-detrend ")
    assert help_blocks["--detrend"].endswith("(default: on)")
    assert help_blocks["--rena-scaling"].endswith("(default: off)")
    cache = help_blocks["--cache"]
    assert cache.startswith("--cache, --no-cache ")
    assert "(default: on with -w/--work-dir;" in cache


def test_help_nprocs_says_what_the_threads_do(help_blocks):
    """BLAS inside a participant is single-threaded (pipeline.run_unit), as the README
    says; the help must not claim N BLAS threads there."""
    nprocs = help_blocks["--nprocs"]
    assert "(with single-threaded BLAS)" in nprocs
    assert "(BLAS/OpenMP threads)" not in nprocs
    readme = (ROOT / "README.md").read_text()
    assert "BLAS stays single-threaded there" in readme
    pipeline = (PACKAGE / "pipeline.py").read_text()
    assert 'threadpool_limits(limits=1, user_api="blas")' in pipeline


def test_help_points_at_documentation_an_installed_user_can_reach(help_blocks):
    whole = " ".join(help_blocks.values())
    assert "docs/outputs.md" not in whole and "docs/quality.md" not in whole
    assert DOCS_URL in help_blocks["epilog"]
    source = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Source"]
    assert DOCS_URL == f"{source}/tree/main/docs"
    # the pages the help names are in that folder
    pages = set(re.findall(r"\b(\w+\.md) of the documentation", whole))
    assert pages == {"outputs.md", "quality.md"}
    assert all((ROOT / "docs" / page).is_file() for page in pages)


# --------------------------------------------------------------------------- words
def test_plural():
    assert plural(1, "summary") == "1 summary"
    assert plural(2, "summary") == "2 summaries"
    assert plural(0, "report") == "no reports"
    assert plural(0, "summary", zero="0") == "0 summaries"
    assert plural(1, "report") == "1 report"
    assert plural(3, "atlas") == "3 atlases"
    assert plural(2, "BLAS thread") == "2 BLAS threads"
    assert plural(2, "day") == "2 days"
    assert plural(2, "matrix", "matrices") == "2 matrices"
    assert plural_noun("process") == "processes"


def test_values_are_shown_as_typed():
    assert values_text([100, 200, 400]) == "100 200 400"
    assert values_text(()) == "none"
    assert value_text(True) == "on" and value_text(False) == "off"
    assert value_text(None) == "none"
    assert value_text(4.0) == "4" and value_text(0.25) == "0.25"
    assert value_text((0.5, 2)) == "0.5 2"
    assert value_text({"b": 1, "a": 0.3}) == '{"a": 0.3, "b": 1}'


def test_listing_is_bounded():
    assert listing(["01", "02"]) == "01, 02"
    assert listing([]) == "none"
    assert listing(range(1, 13)) == "1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 2 more"
    assert listing("abcd", limit=2) == "a, b and 2 more"


def test_close_match_and_did_you_mean():
    assert close_match("sf2", ["sf02", "sf10"]) == "sf02"
    assert close_match("sub-sf2", ["sf02"], prefix="sub") == "sf02"
    assert close_match("SF02", ["sf02"]) == "sf02"  # case only
    assert close_match("1", ["01", "02"]) == "01"
    assert close_match("nback", ["rest", "movie"]) is None
    assert did_you_mean(["rst"], ["rest", "movie"]) == "did you mean rest?"
    assert did_you_mean(["rst", "muvie", "zzz"], ["rest", "movie"]) == (
        "did you mean rest for rst, movie for muvie?")
    assert did_you_mean(["99"], ["01", "02"]) == ""


def test_no_message_of_the_package_writes_a_count_with_s_in_brackets():
    """"1 run(s)", "0 report(s)", "atlas(es)": the package says it with plural()."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and re.search(r"[A-Za-z]\((s|es)\)", node.value)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert found == []
