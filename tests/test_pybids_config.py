"""pybids reads the outputs right with the shipped configuration
(``bids_parcellate.pybids_config()``): every file name parses into its entities, every
file's metadata is its own sidecar, and queries by entity find exactly the files named so.

pybids' own ``bids`` and ``derivatives`` configurations do not know ``scale-``, ``stat-``,
``meas-`` nor ``tpl-``: with them alone the scale-20 and scale-50 dsegs look like one file,
and ``get_metadata`` of either returns the sidecar of whichever it indexed first.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from bids import BIDSLayout

import bids_parcellate
from bids_parcellate.cli import main
from bids_parcellate.derivatives import naming

SPACE = "MNI152NLin2009cAsym"

#: file-name key -> pybids entity name (``bids`` and ``derivatives`` configurations, then
#: ours); ``group_`` (the group level's tables at the root) parses as ``level-group``.
ENTITY_NAMES = {"sub": "subject", "ses": "session", "task": "task", "acq": "acquisition",
                "ce": "ceagent", "rec": "reconstruction", "dir": "direction", "run": "run",
                "echo": "echo", "space": "space", "tpl": "template", "atlas": "atlas",
                "seg": "segmentation", "scale": "scale", "res": "res", "stat": "stat",
                "meas": "meas", "desc": "desc", "level": "level"}


@pytest.fixture(scope="module")
def group_out(demo8, tmp_path_factory):
    """Both levels on :func:`demo8` at scales 20 and 50 with two connectivity measures:
    dsegs, timeseries, relmats (participant, group atlas per run, group means), quality
    tables (per unit and group), the group atlas under ``tpl-``, the agreement table."""
    out = tmp_path_factory.mktemp("pybids") / "out"
    assert main([str(demo8.root), str(out), "participant", "group", "--n-parcels", "20",
                 "50", "--connectivity", "correlation", "tangent",
                 "--atlas-label", "demo"]) == 0
    return out


@pytest.fixture(scope="module")
def layout(group_out):
    """The documented call (docs/outputs.md); indexing metadata raises nothing."""
    return BIDSLayout(group_out, validate=False,
                      config=["bids", "derivatives", bids_parcellate.pybids_config()])


def name_entities(path: Path, root: Path) -> dict[str, str]:
    """Entities of an output path read from its name, independently of pybids:
    ``key-value`` parts of the file name, and ``group_`` at the root as ``level``."""
    rel = path.relative_to(root)
    stem = rel.name.split(".")[0]
    parts = stem.split("_")
    found = {}
    if len(rel.parts) == 1 and parts[0] == "group" and len(parts) > 1:
        found["level"] = "group"
    for part in parts:
        key, sep, value = part.partition("-")
        if sep and key in ENTITY_NAMES:
            found[ENTITY_NAMES[key]] = value
    return found


def sidecar_of(path: Path) -> Path:
    """The JSON of the same name: ``x_dseg.json`` for ``x_dseg.nii.gz`` and ``x_dseg.tsv``."""
    return path.with_name(path.name.split(".")[0] + ".json")


def indexed(layout) -> list[Path]:
    return sorted(Path(f) for f in layout.get(return_type="file"))


def test_the_config_ships_inside_the_package():
    path = bids_parcellate.pybids_config()
    package = Path(bids_parcellate.__file__).resolve().parent
    assert path.is_file() and path.parent == package / "data"
    config = json.loads(path.read_text())
    assert config["name"] == "bids_parcellate"
    assert [e["name"] for e in config["entities"]] == ["template", "scale", "stat", "meas",
                                                       "level"]


def test_every_key_of_the_naming_patterns_is_an_entity(layout):
    """A new entity in the path patterns fails here until the configuration knows it."""
    keys = set()
    for pattern in naming.path_patterns().values():
        keys |= set(re.findall(r"(?:^|[_/\[])([a-z]+)-\{", pattern))
    assert {"sub", "tpl", "scale", "stat", "meas", "seg", "atlas", "desc", "res"} <= keys
    assert keys <= set(ENTITY_NAMES), keys - set(ENTITY_NAMES)
    known = {name for config in layout.config.values() for name in config.entities}
    assert set(ENTITY_NAMES.values()) <= known, set(ENTITY_NAMES.values()) - known


def test_every_output_is_indexed_and_parses_into_its_name_entities(group_out, layout):
    files = indexed(layout)
    on_disk = sorted(p for p in group_out.rglob("*") if p.is_file()
                     and not p.name.startswith("."))  # .bidsignore
    assert files == on_disk
    kinds = {"dseg", "timeseries", "relmat", "quality", "agreement", "features", "probseg"}
    seen = set()
    for path in files:
        bids_file = layout.get_file(path)
        parsed = {k: str(v) for k, v in bids_file.get_entities(metadata=False).items()
                  if k in ENTITY_NAMES.values()}
        assert parsed == name_entities(path, group_out), path
        seen.add(bids_file.entities.get("suffix"))
    assert kinds - {"probseg"} <= seen  # probseg: dictlearning/canica only


def test_metadata_of_every_file_is_its_own_sidecar(group_out, layout):
    """pybids merges every sidecar whose entities the file has: scale-20 and scale-50 must
    not share one, nor a participant's file take a root ``group_*`` sidecar. pybids
    leaves out keys whose value is null (``HighPass``/``LowPass`` without a filter)."""
    checked = {}
    for path in indexed(layout):
        if path.suffix == ".json":
            continue
        metadata = layout.get_metadata(str(path))
        sidecar = sidecar_of(path)
        if sidecar.is_file():
            expected = {k: v for k, v in json.loads(sidecar.read_text()).items()
                        if v is not None}
            assert metadata == expected, path
            checked[path.relative_to(group_out).as_posix()] = metadata
        else:  # figures, reports, README: nothing inherited from anywhere
            assert metadata == {}, path
    # per participant: 2 scales x (dseg image and table, quality table), 2 runs x 2 scales
    # x (2 timeseries, 1 relmat, 2 group-atlas relmats), the summary = 27; the atlas's 2 x
    # 2 images and tables, 4 group means, group_quality, agreement = 10
    assert len(checked) == 2 * 27 + 10
    # the wrong answers of pybids' own configurations, each a distinct file here
    for scale in (20, 50):
        dseg = f"sub-01/anat/sub-01_space-{SPACE}_seg-ward_scale-{scale}_dseg.nii.gz"
        assert checked[dseg]["NumberOfParcels"] == scale
        series = (f"sub-01/func/sub-01_task-rest_run-1_space-{SPACE}_seg-ward_"
                  f"scale-{scale}_stat-mean_timeseries.tsv")
        assert checked[series]["Parcellation"] == dseg
        atlas = f"tpl-{SPACE}/tpl-{SPACE}_atlas-demo_scale-{scale}_dseg.nii.gz"
        assert checked[atlas]["NumberOfParcels"] == scale
        run_relmat = (f"sub-01/func/sub-01_task-rest_run-1_space-{SPACE}_atlas-demo_"
                      f"scale-{scale}_meas-tangent_relmat.tsv")
        assert "NumberOfRuns" not in checked[run_relmat]  # the group mean's key
        group_relmat = f"group_atlas-demo_scale-{scale}_meas-tangent_relmat.tsv"
        assert checked[group_relmat]["NumberOfRuns"] == 4
    quality = f"sub-01/anat/sub-01_space-{SPACE}_seg-ward_scale-20_quality.tsv"
    assert checked[quality]["Parcellation"].endswith("_scale-20_dseg.nii.gz")
    assert "participant_id" in checked[quality] and "scale" not in checked[quality]
    assert "scale" in checked["group_quality.tsv"]  # no scale- in that name: no conflict


def test_queries_by_entity_find_exactly_the_files_named_so(group_out, layout):
    files = indexed(layout)
    names = {path: name_entities(path, group_out) for path in files}
    pairs = {(k, v) for ents in names.values() for k, v in ents.items()}
    assert {("scale", "20"), ("scale", "50"), ("stat", "mean"), ("meas", "correlation"),
            ("meas", "tangent"), ("atlas", "demo"), ("template", SPACE),
            ("segmentation", "ward"), ("desc", "summary"), ("level", "group")} <= pairs
    for key, value in sorted(pairs):
        found = sorted(Path(f) for f in layout.get(return_type="file", **{key: value}))
        assert found == [p for p in files if names[p].get(key) == value], (key, value)
    # the queries of the issue, as a user types them
    dsegs = layout.get(scale=50, suffix="dseg", extension=".nii.gz", return_type="file")
    assert sorted(Path(f).name for f in dsegs) == sorted(
        [f"sub-0{s}_space-{SPACE}_seg-ward_scale-50_dseg.nii.gz" for s in (1, 2)]
        + [f"tpl-{SPACE}_atlas-demo_scale-50_dseg.nii.gz"])
    assert layout.get_scale() == ["20", "50"]
    atlas = layout.get(template=SPACE, suffix="dseg", extension=".nii.gz", return_type="file")
    assert [Path(f).parent.name for f in atlas] == [f"tpl-{SPACE}"] * 2
    assert layout.get(return_type="dir", target="template") == [str(group_out / f"tpl-{SPACE}")]
    group_means = layout.get(level="group", meas="tangent", extension=".tsv")
    assert len(group_means) == 2
