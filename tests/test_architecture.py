"""The package's layout rules (docs/architecture.md), read from the code itself:
imports between its modules form no cycle (function-level and annotation-only imports
included), no private name crosses modules, nothing reaches up into the CLI, every
package is shipped, and modules stay short."""

from __future__ import annotations

import ast
import tomllib
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import bids_parcellate

ROOT = Path(bids_parcellate.__file__).parent
#: Modules still over the size limit, to be split (issue 16); none may be added.
MAX_LINES = 600
STILL_LARGE: set[str] = set()


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports(root: Path = ROOT) -> dict[str, list[tuple[str, str]]]:
    """module -> [(imported package module, imported name or "")], every import."""
    known = modules(root)
    found: dict[str, list[tuple[str, str]]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = found.setdefault(name, [])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                if not base.startswith("bids_parcellate"):
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in known:  # a module: from bids_parcellate.learn import ward
                        edges.append((full, ""))
                    else:
                        edges.append((base, alias.name))
            elif isinstance(node, ast.Import):
                edges += [(a.name, "") for a in node.names
                          if a.name.startswith("bids_parcellate")]
    return found


def cycle(root: Path = ROOT) -> list[str] | None:
    graph = {m: {t for t, _ in edges if t != m and t != "bids_parcellate"}
             for m, edges in imports(root).items()}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        return list(exc.args[1])
    return None


def test_no_import_cycle():
    found = cycle()
    assert found is None, f"import cycle: {' -> '.join(found)}"


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    package = tmp_path / "bids_parcellate"
    (package / "learn").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "learn" / "__init__.py").write_text("")
    (package / "learn" / "ward.py").write_text("from bids_parcellate import pipeline\n")
    (package / "pipeline.py").write_text("def f():\n    from bids_parcellate.learn import ward\n")
    assert sorted(set(cycle(package))) == ["bids_parcellate.learn.ward",
                                           "bids_parcellate.pipeline"]
    (package / "learn" / "ward.py").write_text("")
    assert cycle(package) is None


def test_no_private_name_crosses_modules():
    crossing = [f"{m} imports {t}.{name}" for m, edges in imports().items()
                for t, name in edges if name.startswith("_") and not name.startswith("__")]
    assert crossing == []


def test_nothing_reaches_up_into_the_cli():
    upward = [f"{m} imports {t}" for m, edges in imports().items() if not m.startswith(
        ("bids_parcellate.cli", "bids_parcellate.__main__"))
        for t, _ in edges if t.startswith("bids_parcellate.cli")]
    assert upward == []


def test_every_package_is_shipped():
    pyproject = tomllib.loads((ROOT.parent / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    packages = {module_name(p) for p in ROOT.rglob("__init__.py")}
    assert packages - listed == set()


def test_modules_stay_short():
    large = {m for m, p in modules().items()
             if len(p.read_text(encoding="utf-8").splitlines()) > MAX_LINES}
    assert large <= STILL_LARGE, f"over {MAX_LINES} lines: {sorted(large - STILL_LARGE)}"


def test_only_the_command_line_defers_package_imports():
    """Modules import each other at their top (the flow is visible there); only cli/
    defers imports into functions so that --help and usage errors start fast."""
    deferred = []
    for name, path in modules().items():
        if name.startswith("bids_parcellate.cli"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if (isinstance(sub, ast.ImportFrom)
                            and (sub.module or "").startswith("bids_parcellate")):
                        deferred.append(f"{name}:{sub.lineno}")
    assert deferred == []


def _public_functions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield from (n for n in node.body
                        if isinstance(n, ast.FunctionDef) and not n.name.startswith("_"))


def test_public_functions_carry_numpydoc_sections():
    """Every public function has a docstring; one of two or more arguments names them in
    a Parameters section, and says what it gives back in a Returns section."""
    missing = []
    for name, path in modules().items():
        for func in _public_functions(ast.parse(path.read_text(encoding="utf-8"))):
            args = [a.arg for a in func.args.args + func.args.kwonlyargs
                    if a.arg not in ("self", "cls")]
            doc = ast.get_docstring(func) or ""
            returns = func.returns is not None and not (
                isinstance(func.returns, ast.Constant) and func.returns.value is None)
            if (not doc or (len(args) >= 2 and "Parameters" not in doc)
                    or (len(args) >= 2 and returns and "Returns" not in doc)):
                missing.append(f"{name}.{func.name}")
    assert missing == []
