"""The package as a whole: a newcomer reads each module and each function in one look, and the
modules import each other in one direction only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "seglib"
#: The limits the project holds itself to ("about" 450 and 80 in the issue that set them).
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports when it is imported: module-level statements only
    (imports inside functions run later, on use, and ``if TYPE_CHECKING:`` blocks never)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_modules_import_each_other_without_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "seglib.engine.trainer" in graph and graph["seglib.engine.trainer"], (
        "the import scan found nothing"
    )
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_is_at_most_450_lines(name):
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines; split it by concern"


def test_no_function_is_over_80_lines():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, "functions over 80 lines: " + "; ".join(long)


# --- layering: imports run one way, from the user-facing layer down to the settings ---------
#: What each subpackage may import from seglib. ``data`` and ``models`` sit side by side and
#: never import each other; nothing below ``app`` imports ``viz``; nothing imports ``app``.
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "models": {"core"},
    "evaluation": {"core", "data", "models"},
    "engine": {"core", "data", "models", "evaluation"},
    "studies": {"core", "data", "models", "evaluation", "engine"},
    "viz": {"core", "data", "models", "evaluation", "engine"},
    "app": {"core", "data", "models", "evaluation", "engine", "studies", "viz"},
}
#: The one seglib import inside a function: the CLI loads its handlers only once a command
#: runs, so ``python -m seglib --help`` stays fast (seglib/app/cli.py says so where it does it).
LAZY_IMPORTS = {("seglib.app.cli", "seglib.app.commands")}


def _layer(name: str) -> str:
    """``seglib.data.dataset`` -> ``data``; the package root and ``__main__`` -> ``""``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else ""


def _all_imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """Every seglib module ``name`` imports, anywhere in the file: (module, line, at top)."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                targets.append(full if full in modules else node.module)
        found += [(t, node.lineno, id(node) in top) for t in targets if t in modules and t != name]
    return found


def layering_violations(modules: dict[str, Path]) -> list[str]:
    """``file:line: a imports b`` for every import against ``ALLOWED``."""
    bad = []
    for name, path in modules.items():
        here = _layer(name)
        for target, line, _ in _all_imports(name, path, modules):
            there = _layer(target)
            if here and there and there != here and there not in ALLOWED[here]:
                bad.append(f"{name} (line {line}): {here} imports {there} ({target})")
    return bad


def test_the_layering_check_catches_an_import_against_the_order(tmp_path):
    evil = tmp_path / "dataset.py"
    evil.write_text("from seglib.models.builder import build_model\n")
    modules = {**_modules(), "seglib.data.dataset": evil}
    assert any("data imports models" in v for v in layering_violations(modules))


def test_imports_run_one_way_from_the_user_facing_layer_down_to_the_settings():
    modules = _modules()
    assert {_layer(name) for name in modules} == {"", *ALLOWED}, "a subpackage is missing"
    bad = layering_violations(modules)
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_seglib_imports_sit_at_the_top_of_each_module():
    modules = _modules()
    inside = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {target}"
        for name, path in modules.items()
        for target, line, at_top in _all_imports(name, path, modules)
        if not at_top and (name, target) not in LAZY_IMPORTS
    ]
    assert not inside, "seglib imports inside functions:\n" + "\n".join(inside)


def test_each_subpackage_lists_its_modules_and_says_what_it_may_import():
    for layer in ALLOWED:
        init = PACKAGE / layer / "__init__.py"
        tree = ast.parse(init.read_text())
        doc = ast.get_docstring(tree) or ""
        assert "Imports:" in doc, f"seglib/{layer}/__init__.py does not say what it may import"
        assert not any(isinstance(n, ast.Import | ast.ImportFrom) for n in tree.body), layer
        listed = next(
            ast.literal_eval(n.value)
            for n in tree.body
            if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "__all__"
        )
        stems = sorted(p.stem for p in (PACKAGE / layer).glob("*.py") if p.stem != "__init__")
        assert listed == stems, f"seglib/{layer}.__all__ {listed} != its modules {stems}"


def test_nothing_is_re_exported_for_old_import_paths():
    words = ("re-export", "before the split", "importable from here", "for callers from")
    found = [
        f"{path.relative_to(PACKAGE.parent)}: {word!r}"
        for path in _modules().values()
        for word in words
        if word in path.read_text().lower()
    ]
    assert not found, "compatibility re-exports: " + "; ".join(found)
