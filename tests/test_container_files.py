"""Files that describe how the app is packaged: Boutiques descriptor, lock file, CI pins,
container detection and thread limits. (The image itself is built and run by
scripts/ci_container.sh from .ci/run.)"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from threadpoolctl import threadpool_info

from bids_parcellate import __version__
from bids_parcellate.cli import build_parser
from bids_parcellate.config import DENOISE_STRATEGIES, METHODS, STANDARDIZE_CHOICES
from bids_parcellate.derivatives.dataset import dataset_description, in_container
from bids_parcellate.runtime.threads import THREAD_VARIABLES, limit_threads

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "run `python scripts/make_descriptor.py` after changing the parser"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parser_inputs() -> dict[str, argparse.Action]:
    """Parser actions keyed by the descriptor id they must have."""
    actions = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        key = action.dest
        if isinstance(action, argparse.BooleanOptionalAction) and action.default:
            key = f"no_{action.dest}"  # on by default: the descriptor offers --no-X
        actions[key] = action
    return actions


# --------------------------------------------------------------------------- Boutiques
@pytest.fixture(scope="module")
def descriptor() -> dict:
    return json.loads((ROOT / "boutiques" / "descriptor.json").read_text())


def test_descriptor_has_every_parser_option_and_nothing_else(descriptor):
    inputs = {i["id"]: i for i in descriptor["inputs"]}
    actions = _parser_inputs()
    assert sorted(set(actions) - set(inputs)) == [], f"missing in descriptor; {REGENERATE}"
    assert sorted(set(inputs) - set(actions)) == [], f"not in the parser; {REGENERATE}"
    assert {"bids_dir", "output_dir", "analysis_level", "participant_label",
            "nprocs", "no_detrend", "verbose"} <= set(inputs)
    for key, action in actions.items():
        item = inputs[key]
        assert item["value-key"] in descriptor["command-line"], key
        if not action.option_strings:  # positional
            assert item["optional"] is False, key
            assert "command-line-flag" not in item, key
        elif isinstance(action, argparse._CountAction):
            assert item["value-choices"] == ["-v", "-vv"]
            assert action.option_strings[0] == "-v"
        else:
            assert item["optional"] is True, key
            assert item["command-line-flag"] in action.option_strings, key


def test_descriptor_types_lists_choices_defaults_match_parser(descriptor):
    inputs = {i["id"]: i for i in descriptor["inputs"]}
    config_choices = {"method": METHODS, "denoise_strategy": DENOISE_STRATEGIES,
                      "standardize": STANDARDIZE_CHOICES}
    for key, action in _parser_inputs().items():
        item = inputs[key]
        if isinstance(action, argparse.BooleanOptionalAction):
            assert item["type"] == "Flag", key
            assert item["command-line-flag"] == "--" + key.replace("_", "-")
            continue
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            # --overwrite, --no-cache: bare flags (a "String" would be given a value)
            assert item["type"] == "Flag", key
            assert item["command-line-flag"] == action.option_strings[0], key
            continue
        if isinstance(action, argparse._CountAction):
            continue
        if action.type is int:
            assert item["type"] == "Number" and item.get("integer") is True, key
        elif action.type is not None and action.type.__name__ == "_positive_float":
            assert item["type"] == "Number" and not item.get("integer"), key
        else:
            assert item["type"] in ("String", "File"), key
        assert item.get("list", False) == (action.nargs == "+"), key
        choices = action.choices or config_choices.get(action.dest)
        assert item.get("value-choices") == (list(choices) if choices else None), key
        if action.option_strings and action.default not in (None, [], ()):
            default = action.default
            assert item["default-value"] == (list(default) if isinstance(default, list)
                                             else default), key
        else:
            assert "default-value" not in item, key


def test_descriptor_version_and_image_follow_package(descriptor):
    assert descriptor["tool-version"] == __version__
    image = descriptor["container-image"]
    assert image["type"] == "docker" and image["image"].endswith(f":{__version__}")
    # The descriptor's image is the one the Dockerfile labels itself with.
    dockerfile = (ROOT / "Dockerfile").read_text()
    name = re.search(r"^ARG IMAGE_NAME=(\S+)$", dockerfile, re.M).group(1)
    assert image["image"] == f"{name}:{__version__}"
    assert re.search(rf"^ARG VERSION={re.escape(__version__)}$", dockerfile, re.M)


# --------------------------------------------------------------------------- lock file
def test_runtime_lock_agrees_with_pyproject():
    """The committed lock pins every runtime dependency of pyproject.toml (at a version
    its specifier allows) and their dependencies, only those, each at a version every
    recorded requirement allows. Independent of what this environment holds, so that it
    passes today and in six months; .ci/run checks the installed versions separately."""
    lock = _load_script("lock_requirements")
    assert lock.lock_problems() == []
    locked = lock.read_lock()
    assert set(lock.project_dependencies()) <= set(locked)
    assert {"numpy", "nilearn", "pybids", "scikit-learn"} <= set(locked)


def _lock_case(tmp_path, lock, edit) -> list[str]:
    lines = lock.LOCK.read_text().splitlines()
    path = tmp_path / "runtime.lock"
    path.write_text("\n".join(edit(lines)) + "\n")
    return lock.lock_problems(path)


def test_runtime_lock_check_reports_every_kind_of_problem(tmp_path):
    lock = _load_script("lock_requirements")

    def replace(prefix, new):
        return lambda lines: [new if line.startswith(prefix) else line for line in lines]

    # a version pyproject.toml does not allow
    assert _lock_case(tmp_path, lock, replace("numpy==", "numpy==1.0  # via: bids-parcellate "
                                              ">=1.26")) == [
        "numpy: locked 1.0, pyproject.toml asks >=1.26",
        "numpy: locked 1.0, bids-parcellate asks >=1.26"]
    # a runtime dependency missing
    problems = _lock_case(tmp_path, lock,
                          lambda lines: [x for x in lines if not x.startswith("nilearn==")])
    assert "nilearn: a runtime dependency in pyproject.toml, not locked" in problems
    # a leftover that nothing requires (six was one, once)
    assert _lock_case(tmp_path, lock, lambda lines: lines + ["six==1.17.0  # via: gone"]) == [
        "six: required by gone, which is not locked",
        "six: locked but not a runtime dependency of bids-parcellate"]
    # a transitive pin that its parent's specifier rejects
    line = next(x for x in lock.LOCK.read_text().splitlines() if x.startswith("joblib=="))
    spec = line.split("scikit-learn ", 1)[1].split(";")[0].strip()
    assert _lock_case(tmp_path, lock, replace("joblib==", "joblib==0.1  # via: nilearn; "
                                              f"scikit-learn {spec}")) == [
        f"joblib: locked 0.1, scikit-learn asks {spec}"]
    # a pin that is not ==
    path = tmp_path / "bad.lock"
    path.write_text("numpy>=1\n")
    with pytest.raises(ValueError, match="not pinned with =="):
        lock.read_lock(path)


def test_lock_environment_check_reports_drift(tmp_path):
    """``--check`` (run by .ci/run after installing with the lock) compares the installed
    runtime dependencies with the lock; here, against a lock changed on purpose."""
    lock = _load_script("lock_requirements")
    installed = lock.runtime_closure()
    numpy = installed["numpy"]["version"]
    lines = [x for x in lock.lock_text().splitlines() if not x.startswith("numpy==")]
    path = tmp_path / "runtime.lock"
    path.write_text("\n".join(lines + ["numpy==0.0.1", "notapackage==1"]) + "\n")
    problems = lock.environment_problems(path)
    assert f"numpy: locked 0.0.1, installed {numpy}" in problems
    assert "notapackage: locked but not installed as a runtime dependency" in problems
    assert lock.environment_problems(_written(tmp_path, lock)) == []


def _written(tmp_path, lock) -> Path:
    path = tmp_path / "fresh.lock"
    path.write_text(lock.lock_text())
    return path


# --------------------------------------------------------------------------- CI pins
def test_workflow_actions_are_pinned_to_commits():
    uses = []
    for path in sorted((ROOT / ".github" / "workflows").glob("*.yml")):
        uses += re.findall(r"uses:\s*(\S+)(.*)", path.read_text())
    assert len(uses) >= 8
    for ref, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), ref
        assert re.match(r"\s*# v\d+\.\d+\.\d+$", comment), f"{ref}: no version comment"


# --------------------------------------------------------------------------- runtime
def test_limit_threads_caps_blas_and_openmp_and_restores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with limit_threads(1):
        pools = threadpool_info()
        assert {p["user_api"] for p in pools} >= {"blas"}
        assert [p["num_threads"] for p in pools] == [1] * len(pools)
        assert all(os.environ[name] == "1" for name in THREAD_VARIABLES)
    assert os.environ["OMP_NUM_THREADS"] == "7"
    assert "OPENBLAS_NUM_THREADS" not in os.environ


def test_limit_threads_restores_libraries_loaded_inside():
    """scikit-learn is not imported by limit_threads (1-2 s at startup): its OpenMP
    runtime, loaded inside, gets --nprocs threads, and its default back on exit."""
    script = (
        "import os\n"
        "os.environ.pop('OMP_NUM_THREADS', None)\n"
        "from threadpoolctl import threadpool_info\n"
        "from bids_parcellate.runtime.threads import limit_threads\n"
        "with limit_threads(1):\n"
        "    import sklearn.cluster\n"
        "    inside = {p['user_api']: p['num_threads'] for p in threadpool_info()}\n"
        "after = {p['user_api']: p['num_threads'] for p in threadpool_info()}\n"
        "print(inside['openmp'], inside['blas'], after['openmp'], after['blas'],"
        " os.cpu_count())\n")
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    inside_omp, inside_blas, after_omp, after_blas, cpus = map(int, out)
    assert (inside_omp, inside_blas) == (1, 1)
    assert after_omp == after_blas == cpus


def test_generated_by_names_the_container(monkeypatch, tmp_path):
    for name in ("BIDS_PARCELLATE_CONTAINER_IMAGE", "BIDS_PARCELLATE_CONTAINER_TYPE",
                 "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.delenv(name, raising=False)
    assert in_container() is None
    assert "Container" not in dataset_description([tmp_path])["GeneratedBy"][0]
    monkeypatch.setenv("BIDS_PARCELLATE_CONTAINER_IMAGE", "ghcr.io/x/bids_parcellate:1.2.3")
    monkeypatch.setenv("BIDS_PARCELLATE_CONTAINER_TYPE", "docker")
    expected = {"Type": "docker", "Tag": "ghcr.io/x/bids_parcellate:1.2.3"}
    assert dataset_description([tmp_path])["GeneratedBy"][0]["Container"] == expected
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/bids_parcellate.sif")
    assert in_container() == {"Type": "singularity", "Tag": "ghcr.io/x/bids_parcellate:1.2.3"}
