"""The report package reads as its data flow: imports between its modules point one way
(no cycle, also through function-level imports) and no private name crosses modules."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import bids_parcellate.report

PACKAGE = "bids_parcellate.report"
FOLDER = Path(bids_parcellate.report.__file__).parent


def report_imports() -> dict[str, list[tuple[str, str]]]:
    """module -> [(imported report module, imported name or "")] of every import."""
    found: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(FOLDER.glob("*.py")):
        module = path.stem
        edges = found.setdefault(module, [])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == PACKAGE:  # from bids_parcellate.report import figures
                    edges += [(alias.name, "") for alias in node.names]
                elif node.module.startswith(PACKAGE + "."):
                    target = node.module.removeprefix(PACKAGE + ".")
                    edges += [(target, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                edges += [(alias.name.removeprefix(PACKAGE + "."), "")
                          for alias in node.names if alias.name.startswith(PACKAGE + ".")]
    return found


def test_report_imports_point_one_way():
    graph = {module: {target for target, _ in edges if target != module}
             for module, edges in report_imports().items()}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle in {PACKAGE}: {exc.args[1]}") from None
    # the layers the package docstring describes
    assert order.index("templates") < order.index("canvas") < order.index("figures")
    assert order.index("canvas") < order.index("mosaics") < order.index("record")
    assert order.index("record") < order.index("methods") < order.index("assemble")


def test_no_private_name_is_imported_from_another_report_module():
    crossing = [f"{module} imports {target}.{name}"
                for module, edges in report_imports().items()
                for target, name in edges if name.startswith("_")]
    assert crossing == []
