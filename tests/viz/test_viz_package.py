"""The viz package: its public names, its import graph, and it alone imports matplotlib."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import seglib  # noqa: E402
from seglib import viz  # noqa: E402
from seglib.viz import common

PACKAGE = Path(viz.__file__).parent
SUBMODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports (``from a import b`` gives ``a`` and ``a.b``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return names


def test_class_colors_are_fixed_and_distinct():
    assert common.class_color(1) == common.class_color(1)
    assert len({common.class_color(i) for i in range(1, 5)}) == 4
    assert common.class_color(0) == common.BACKGROUND_COLOR


def defined_names(path: Path) -> list[str]:
    """The public names a module defines at top level (functions, classes, constants)."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [n for n in names if not n.startswith("_")]


def test_the_package_lists_its_submodules_and_re_exports_nothing():
    assert SUBMODULES == [
        "charts",
        "common",
        "files",
        "galleries",
        "jupyter",
        "overlay",
        "training",
    ]
    assert viz.__all__ == SUBMODULES
    for stem in SUBMODULES:
        module = importlib.import_module(f"seglib.viz.{stem}")
        assert module.__doc__, f"viz.{stem} has no module docstring"
        for name in defined_names(PACKAGE / f"{stem}.py"):
            assert not hasattr(viz, name), f"viz.{name} re-exports viz.{stem}.{name}"


def test_submodules_never_import_the_package_and_form_no_cycle():
    graph = {}
    for stem in SUBMODULES:
        imported = imported_modules(PACKAGE / f"{stem}.py")
        assert "seglib.viz" not in imported, f"viz.{stem} imports the package: a cycle"
        graph[stem] = {s for s in SUBMODULES if f"seglib.viz.{s}" in imported}
    assert graph["jupyter"] == set(), "jupyter is the leaf: how a kernel shows a figure"
    assert graph["common"] <= {"jupyter"}, "common is shared by all, so it imports only jupyter"
    done: set[str] = set()
    while len(done) < len(graph):  # peel off modules whose imports are all done
        ready = {s for s, deps in graph.items() if s not in done and deps <= done}
        assert ready, f"import cycle among {sorted(set(graph) - done)}"
        done |= ready


def test_only_viz_imports_matplotlib_and_only_app_forms_imports_ipywidgets():
    root = Path(seglib.__file__).parent
    owners = {"matplotlib": "viz", "ipywidgets": "app/forms"}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix().removesuffix(".py")
        owner = rel if rel.startswith("app/") else rel.split("/")[0]  # viz/charts.py -> viz
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in owners:
                assert owner == owners[top], f"{path.relative_to(root)} imports {name}"
