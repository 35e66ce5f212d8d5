"""The package's shape stays readable: folders by stage, modules of one idea, no import cycles.

These are rules of the repository, checked on the source with ``ast`` (nothing is imported), so
a new module that breaks one fails here with the rule it breaks instead of in review.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "pytest_gpuhost"
MAX_LINES = 600
# The package root holds the entry point and what every stage shares; everything else has a folder.
ROOT_MODULES = {
    "__init__",
    "plugin",  # the pytest11 entry point: options only, until --gpuhost
    "hookspecs",
    "options",
    "input_checks",
    "settings",
    "session",  # the plugin object of a --gpuhost session
    "stash",
    "rootdir",
    "interrupts",
    "diagnosis",
    "timeouts",
    "versions",
}
STAGES = {
    "hosts",
    "facts",
    "criteria",
    "docker",
    "runtimes",
    "workloads",
    "compute",
    "burn",
    "hardware",
    "fixtures",
    "reporting",
    "profiles",
    "data",
}


def source_files() -> Iterator[Path]:
    for folder in (ROOT / PACKAGE, ROOT / "suites", ROOT / "tools"):
        yield from sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "suites":
        parts = [PACKAGE, "suites", *parts[1:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def type_checking_nodes(tree: ast.Module) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:``: imports for annotations only, which never run."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(n) for n in ast.walk(node))
    return inside


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports at run time (at any depth, lazily or not)."""
    name = module_name(path)
    tree = ast.parse(path.read_text())
    skip = type_checking_nodes(tree)
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in known else target)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in source_files() if module_name(p).startswith(PACKAGE)}
    known = set(paths)
    return {name: imported_modules(path, known) for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles (break them: move what both need into a third module): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The rule above could fail: a two-module cycle and a three-module one are found."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(cycles(graph)) == [["a", "b"], ["c", "d", "e"]]


@pytest.mark.parametrize("path", list(source_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_the_line_limit(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{lines} lines: split it by concern (the rule is about {MAX_LINES})"


def test_the_package_root_holds_only_shared_modules_and_the_stages() -> None:
    folder = ROOT / PACKAGE
    modules = {p.stem for p in folder.glob("*.py")}
    folders = {p.name for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert modules == ROOT_MODULES, (
        f"new root modules belong in a stage folder: {sorted(modules - ROOT_MODULES)}"
    )
    assert folders == STAGES, f"unexpected or missing folders: {sorted(folders ^ STAGES)}"


def fixture_module_exports(module: str) -> dict[str, str]:
    """Top-level names of a fixture module: ``class``, ``constant`` (UPPER_CASE) or ``function``."""
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    kinds: dict[str, str] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef):
            kinds[node.name] = "class"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            kinds[node.name] = "function"
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    kinds[target.id] = "constant" if target.id.isupper() else "function"
    return kinds


def suite_imports_from_fixtures() -> list[tuple[str, str, str]]:
    """``(suite file, fixture module, name)`` for every name a suite imports from a fixture module."""
    found = []
    for path in sorted((ROOT / "suites").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(f"{PACKAGE}.fixtures"):
                        found.append((path.name, alias.name, "*"))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"{PACKAGE}.fixtures"):
                for alias in node.names:
                    found.append((path.name, node.module or "", alias.name))
    return found


def test_suites_take_only_types_and_constants_from_fixture_modules() -> None:
    """Checks judge facts with criteria; a helper a fixture module defines belongs elsewhere."""
    imports = suite_imports_from_fixtures()
    assert imports, "the suites use fixture types (the rule would check nothing)"
    wrong = [
        f"{suite}: {name} from {module} ({fixture_module_exports(module).get(name, 'a module')})"
        for suite, module, name in imports
        if name == "*" or fixture_module_exports(module).get(name) not in {"class", "constant"}
    ]
    assert not wrong, "suites import helpers from fixture modules: " + "; ".join(wrong)
