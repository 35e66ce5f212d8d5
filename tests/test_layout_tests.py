"""The tests' own layout: helpers come from ``*_support`` modules, never from ``conftest`` or a test module.

Under ``--import-mode=importlib`` pytest imports ``conftest.py`` under a name of its own and puts
no test folder on ``sys.path``: ``from conftest import ...`` then finds another ``conftest`` (the
checkout's) or none. A test module imported by another may run twice, under two names. Fixtures
reach tests by name; everything else a test imports lives in a support module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def imported_modules(source: str) -> list[tuple[int, str]]:
    """Each module ``source`` imports, by its last dotted part, with its line (also inside functions)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[-1]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.append((node.lineno, node.module.split(".")[-1]))
        elif isinstance(node, ast.ImportFrom):  # from . import x
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def conftest_imports(source: str) -> list[int]:
    """The lines of ``source`` that import ``conftest``, in any spelling."""
    return [line for line, name in imported_modules(source) if name == "conftest"]


def imports_of_test_modules(source: str) -> list[int]:
    """The lines of ``source`` that import a test module (``test_*``)."""
    return [line for line, name in imported_modules(source) if name.startswith("test_")]


def offenders(scan: str) -> list[str]:
    """``path:line`` of each import that ``scan`` finds in the modules under ``tests/``."""
    check = {"conftest": conftest_imports, "test modules": imports_of_test_modules}[scan]
    modules = sorted(TESTS.rglob("*.py"))
    assert len(modules) > 10  # the scan found the tests at all
    return [f"{path.relative_to(TESTS)}:{line}" for path in modules for line in check(path.read_text())]


@pytest.mark.parametrize(
    "source",
    [
        "from conftest import GpuhostPytester\n",
        "import conftest\n",
        "from tests.conftest import DATA\n",
        "from . import conftest\n",
        "def f():\n    from conftest import DATA\n",
    ],
)
def test_the_scan_sees_every_spelling_of_a_conftest_import(source: str) -> None:
    assert conftest_imports(source) != []


def test_the_scans_pass_support_imports_and_see_test_modules() -> None:
    source = "from pytester_support import GpuhostPytester\nimport conftest_like\nfrom pytest import mark\n"
    assert conftest_imports(source) == [] and imports_of_test_modules(source) == []
    assert imports_of_test_modules("import os\nfrom test_health import XID_79\n") == [2]


def test_no_module_under_tests_imports_conftest() -> None:
    found = offenders("conftest")
    assert found == [], "import these from a tests/*_support.py module instead: " + ", ".join(found)


def test_no_module_under_tests_imports_a_test_module() -> None:
    found = offenders("test modules")
    assert found == [], "move the helpers these import into a tests/*_support.py module: " + ", ".join(found)
