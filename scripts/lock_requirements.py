"""requirements/runtime.lock: the exact runtime dependencies that users, the image and CI get.

Policy (README, "Installing"): every documented install line uses the lock as pip
constraints (``pip install -c requirements/runtime.lock ...``), the image installs it with
``--no-deps``, so the versions the tests ran with are the versions users run. The lock is
only changed on purpose, by one command::

    python scripts/lock_requirements.py --upgrade   # newest versions that pyproject.toml
                                                    # allows, resolved by pip in a fresh venv
    python scripts/lock_requirements.py --check     # the installed environment equals the lock
    python scripts/lock_requirements.py --write     # the lock from the current environment

Every lock line records which packages require it and with which specifier
(``numpy==2.4.6  # via: bids-parcellate >=1.26; pandas >=1.26``), so the lock can be checked
against ``pyproject.toml`` without the network and without the packages installed
(:func:`lock_problems`, run by ``tests/test_container_files.py``): every runtime dependency
and only those, each version satisfying every recorded requirement.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "runtime.lock"
ROOT_NAME = "bids-parcellate"
HEADER = """\
# Runtime dependencies of bids_parcellate, pinned: the versions the tests run with and the
# versions users get (every install line in README.md uses this file as pip constraints;
# the Dockerfile installs it with --no-deps). Do not edit by hand: regenerate with
#     python scripts/lock_requirements.py --upgrade
# "via:" lists the packages that require each one, with their specifiers.
"""


def runtime_closure(root: str = ROOT_NAME) -> dict[str, dict]:
    """Installed runtime dependencies of ``root``, recursively.

    Parameters
    ----------
    root : str
        Distribution whose dependencies are collected (not included itself).

    Returns
    -------
    dict
        Canonical name -> ``{"version", "marker", "via"}``. ``via`` maps each requiring
        package to its specifier text. A dependency reached only through requirements with
        a ``python_version`` marker keeps that marker, so that the lock stays valid on
        newer Pythons.
    """
    found: dict[str, dict] = {}
    todo: list[tuple[str, tuple[str, ...], str | None, str, str]] = [
        (root, (), None, "", "")]
    while todo:
        name, extras, marker, parent, spec = todo.pop()
        dist = metadata.distribution(name)
        key = canonicalize_name(dist.metadata["Name"])
        if key != canonicalize_name(root):
            entry = found.setdefault(key, {"version": dist.version, "markers": set(),
                                           "via": {}})
            entry["via"][parent] = spec
            seen = marker in entry["markers"]
            entry["markers"].add(marker)
            if seen and not extras:
                continue
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": extra}) for extra in ("", *extras)
            ):
                continue
            todo.append((req.name, tuple(req.extras), _python_marker(req.marker), key,
                         str(req.specifier)))
    return {key: {"version": e["version"], "via": dict(sorted(e["via"].items())),
                  "marker": None if None in e["markers"] else
                  " or ".join(sorted(m for m in e["markers"] if m))}
            for key, e in sorted(found.items())}


def _python_marker(marker: Marker | None) -> str | None:
    """The marker text when it restricts the Python version (other markers are dropped:
    extras were evaluated already and platforms are the same in the image and in CI)."""
    if marker is None or "python_version" not in str(marker):
        return None
    return str(marker)


def lock_text() -> str:
    """The lock file content for the current environment."""
    lines = []
    for key, entry in runtime_closure().items():
        line = f"{key}=={entry['version']}"
        if entry["marker"]:
            line += f" ; {entry['marker']}"
        via = "; ".join(f"{parent} {spec}".rstrip() for parent, spec in entry["via"].items())
        lines.append(f"{line}  # via: {via}")
    return HEADER + "\n".join(lines) + "\n"


def read_lock(lock_path: Path = LOCK) -> dict[str, dict]:
    """Parse a lock file.

    Returns
    -------
    dict
        Canonical name -> ``{"version": str, "marker": Marker or None, "via": {name: spec}}``.
    """
    locked = {}
    for raw in lock_path.read_text(encoding="utf-8").splitlines():
        line, _, comment = raw.partition("#")
        if not line.strip():
            continue
        req = Requirement(line.strip())
        pins = list(req.specifier)
        if len(pins) != 1 or pins[0].operator != "==":
            raise ValueError(f"{lock_path}: {raw!r} is not pinned with ==")
        via = {}
        comment = comment.strip()
        if comment.startswith("via:"):
            for item in comment[4:].split(";"):
                parent, _, spec = item.strip().partition(" ")
                via[canonicalize_name(parent)] = spec.strip()
        locked[canonicalize_name(req.name)] = {"version": pins[0].version,
                                               "marker": req.marker, "via": via}
    return locked


def project_dependencies(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """Runtime dependencies declared in ``pyproject.toml``: canonical name -> specifier."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return {canonicalize_name(req.name): str(req.specifier)
            for req in map(Requirement, project["dependencies"])}


def lock_problems(lock_path: Path = LOCK,
                  pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """Check a lock against ``pyproject.toml`` and against itself (no network, no install).

    Holds when every runtime dependency of ``pyproject.toml`` is locked at a version its
    specifier allows, every locked package is required by the project or by another locked
    package (no leftovers), and every locked version satisfies every specifier that the
    lock records for it. The lines recorded from the project must match ``pyproject.toml``.

    Returns
    -------
    list of str
        One message per problem; empty when the lock is consistent.
    """
    locked = read_lock(lock_path)
    declared = project_dependencies(pyproject)
    problems = []
    for name, spec in declared.items():
        if name not in locked:
            problems.append(f"{name}: a runtime dependency in pyproject.toml, not locked")
            continue
        if not SpecifierSet(spec).contains(Version(locked[name]["version"]),
                                           prereleases=True):
            problems.append(f"{name}: locked {locked[name]['version']}, pyproject.toml "
                            f"asks {spec}")
        if locked[name]["via"].get(ROOT_NAME) != spec:
            problems.append(f"{name}: lock says {ROOT_NAME} asks "
                            f"{locked[name]['via'].get(ROOT_NAME)!r}, pyproject.toml {spec!r}")
    for name, entry in locked.items():
        if ROOT_NAME in entry["via"] and name not in declared:
            problems.append(f"{name}: lock says {ROOT_NAME} requires it, pyproject.toml "
                            "does not")
        parents = [p for p in entry["via"] if p != ROOT_NAME]
        if not entry["via"]:
            problems.append(f"{name}: locked but required by nothing (no via:)")
        for parent in parents:
            if parent not in locked:
                problems.append(f"{name}: required by {parent}, which is not locked")
        for parent, spec in entry["via"].items():
            if spec and not SpecifierSet(spec).contains(Version(entry["version"]),
                                                        prereleases=True):
                problems.append(f"{name}: locked {entry['version']}, {parent} asks {spec}")
    # every locked package must be reachable from the project (no orphaned cycles)
    reached, todo = set(), [n for n, e in locked.items() if ROOT_NAME in e["via"]]
    children: dict[str, list[str]] = {}
    for name, entry in locked.items():
        for parent in entry["via"]:
            children.setdefault(parent, []).append(name)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += children.get(name, [])
    problems += [f"{name}: locked but not a runtime dependency of {ROOT_NAME}"
                 for name in sorted(set(locked) - reached) if locked[name]["via"]]
    return problems


def environment_problems(lock_path: Path = LOCK) -> list[str]:
    """Differences between a lock and the runtime dependencies installed here.

    Lock lines whose marker does not apply to this Python are ignored, so one lock serves
    every supported Python version. Only meaningful in an environment installed with the
    lock as constraints (``.ci/run`` checks that it is).
    """
    installed = runtime_closure()
    locked = {name: entry["version"] for name, entry in read_lock(lock_path).items()
              if entry["marker"] is None or entry["marker"].evaluate()}
    problems = []
    for key, entry in installed.items():
        if key not in locked:
            problems.append(f"{key}: installed {entry['version']} but not locked")
        elif locked[key] != entry["version"]:
            problems.append(f"{key}: locked {locked[key]}, installed {entry['version']}")
    problems += [f"{key}: locked but not installed as a runtime dependency"
                 for key in sorted(set(locked) - set(installed))]
    return problems


def upgrade() -> int:
    """Resolve the newest allowed versions in a fresh virtual environment; write the lock."""
    with tempfile.TemporaryDirectory(prefix="bids_parcellate-lock-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = venv / "bin" / "python"
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
                       check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True)
        return subprocess.run([str(python), str(Path(__file__).resolve()), "--write"]).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--upgrade", action="store_true",
                      help="resolve the newest versions pyproject.toml allows in a new venv "
                           "and write the lock from it")
    mode.add_argument("--write", action="store_true",
                      help="write the lock from the current environment")
    mode.add_argument("--check", action="store_true",
                      help="the lock is consistent with pyproject.toml and equals the "
                           "installed runtime dependencies")
    args = parser.parse_args(argv)
    if args.upgrade:
        return upgrade()
    if args.check:
        problems = lock_problems() + environment_problems()
        for problem in problems:
            print(f"{LOCK}: {problem}", file=sys.stderr)
        if problems:
            print("install with -c requirements/runtime.lock, or rerun "
                  "scripts/lock_requirements.py --upgrade", file=sys.stderr)
            return 1
        print(f"{LOCK}: consistent with pyproject.toml and with this environment")
        return 0
    LOCK.parent.mkdir(exist_ok=True)
    LOCK.write_text(lock_text(), encoding="utf-8")
    problems = lock_problems()
    for problem in problems:
        print(f"{LOCK}: {problem}", file=sys.stderr)
    print(f"wrote {LOCK}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
