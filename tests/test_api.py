"""A published plugin's habits: one version (pyproject's, read back from the package metadata),
a supported API that each module names in ``__all__`` and docs/api.md lists, and a package
import that stays tiny."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pytester_support import GpuhostPytester

import pytest_gpuhost
from pytest_gpuhost.options import MARKER_HELP
from pytest_gpuhost.reporting.baseline import make_baseline
from pytest_gpuhost.reporting.json_report import JsonReport

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pytest_gpuhost"
API_DOC = ROOT / "docs" / "api.md"
# The modules that hold the supported API, as docs/api.md names them.
API_MODULES = (
    "pytest_gpuhost",
    "pytest_gpuhost.hookspecs",
    "pytest_gpuhost.hosts.host",
    "pytest_gpuhost.diagnosis",
    "pytest_gpuhost.facts.model",
    "pytest_gpuhost.fixtures.containers",
    "pytest_gpuhost.fixtures.docker",
    "pytest_gpuhost.fixtures.hardware",
    "pytest_gpuhost.fixtures.health",
    "pytest_gpuhost.fixtures.host",
    "pytest_gpuhost.fixtures.report",
    "pytest_gpuhost.fixtures.runtimes",
    "pytest_gpuhost.fixtures.stray_load",
    "pytest_gpuhost.fixtures.workloads",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def declared_all(path: Path) -> list[str] | None:
    """The module's ``__all__`` as written, read without importing it."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                assert node.value is not None
                value = ast.literal_eval(node.value)
                assert isinstance(value, list), path
                return [str(name) for name in value]
    return None


def api_doc_names() -> set[str]:
    """Every identifier docs/api.md writes in code spans (``pytest_gpuhost.__version__`` gives both)."""
    spans = re.findall(r"`([^`]+)`", API_DOC.read_text(encoding="utf-8"))
    return {name for span in spans for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", span)}


# -- the version ------------------------------------------------------------------------------------


def test_version_is_the_installed_metadata() -> None:
    assert pytest_gpuhost.__version__ == importlib.metadata.version("pytest-gpuhost")


def test_version_is_written_once_in_pyproject() -> None:
    """pyproject's ``version`` is the one source: the package writes no version literal of its own."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "version" not in project.get("dynamic", [])
    assert pytest_gpuhost.__version__ == project["version"], "reinstall: the metadata is stale"
    written = [
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"^__version__\s*=", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    ]
    assert not written, written


def test_version_falls_back_when_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without metadata, a checkout reads its pyproject.toml, and anything else says it does not know."""

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert pytest_gpuhost.installed_version() == project["version"]
    assert pytest_gpuhost.checkout_version(str(tmp_path)) is None  # no pyproject.toml
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\nversion = "9.9"\n')
    assert pytest_gpuhost.checkout_version(str(tmp_path)) is None  # another project's
    monkeypatch.setattr(pytest_gpuhost, "checkout_version", lambda root=None: None)
    assert pytest_gpuhost.installed_version() == pytest_gpuhost.UNKNOWN_VERSION == "0+unknown"


def test_reports_carry_the_version(tmp_path: Path) -> None:
    document = JsonReport(tmp_path / "r.json", lambda: {"host": "h", "gpus": []}).build(exitstatus=0)
    assert document["plugin_version"] == importlib.metadata.version("pytest-gpuhost")
    assert make_baseline(document)["plugin_version"] == document["plugin_version"]


def test_package_import_stays_tiny() -> None:
    """Imported in every pytest session: the package brings no module but itself, not even the
    metadata reader, until ``__version__`` is asked for."""
    probe = (
        "import sys; before = set(sys.modules); import pytest_gpuhost; "
        "print(sorted(set(sys.modules) - before)); print('__version__' in vars(pytest_gpuhost))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split("\n")
    assert out[:2] == ["['pytest_gpuhost']", "False"], out


# -- __all__ and docs/api.md ------------------------------------------------------------------------


def test_the_api_modules_are_the_ones_with_all() -> None:
    """A new ``__all__`` is new supported API: it belongs in docs/api.md and in API_MODULES."""
    declaring = {module_name(p) for p in PACKAGE.rglob("*.py") if declared_all(p) is not None}
    assert declaring == set(API_MODULES)


@pytest.mark.parametrize("module", API_MODULES)
def test_every_name_in_all_exists_and_is_documented(module: str) -> None:
    imported = importlib.import_module(module)
    names = list(imported.__all__)
    assert names, f"{module}.__all__ is empty"
    assert len(set(names)) == len(names), names
    missing = [name for name in names if not hasattr(imported, name)]
    assert not missing, f"{module}.__all__ names what it does not define: {missing}"
    documented = api_doc_names()
    undocumented = [name for name in names if name not in documented]
    assert not undocumented, f"docs/api.md does not mention {module}'s {undocumented}"


def test_the_api_doc_lists_no_fixture_that_is_not_public() -> None:
    """The fixtures table and the fixture modules' ``__all__`` are the same set."""
    public = {
        name
        for module in API_MODULES
        if module.startswith("pytest_gpuhost.fixtures.")
        for name in importlib.import_module(module).__all__
    }
    table = set(
        re.findall(r"^\| `(gpuhost_\w+)` \|", API_DOC.read_text(encoding="utf-8"), flags=re.MULTILINE)
    )
    assert table == public


def test_the_api_doc_names_every_marker() -> None:
    documented = api_doc_names()
    assert {name.split("(")[0] for name in MARKER_HELP} <= documented


def test_public_fixtures_are_fixtures_under_gpuhost(gpuhost_pytester: GpuhostPytester) -> None:
    """Each fixture in a fixture module's ``__all__`` is one that a check can request."""
    public = [
        name
        for module in API_MODULES
        if module.startswith("pytest_gpuhost.fixtures.")
        for name in importlib.import_module(module).__all__
    ]
    gpuhost_pytester.setup("h100")
    listed = gpuhost_pytester.run_plain("--fixtures").stdout.str()
    absent = [name for name in public if not re.search(rf"^{name}\b", listed, flags=re.MULTILINE)]
    assert not absent, absent


# -- CHANGELOG.md -----------------------------------------------------------------------------------


def test_changelog_starts_with_unreleased_then_this_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    headings = re.findall(
        r"^## (.+)$", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), flags=re.MULTILINE
    )
    assert headings[0] == "Unreleased", headings
    released = [h.split(" - ")[0] for h in headings[1:]]
    assert project["version"] in released, f"CHANGELOG.md has no section for {project['version']}"


def test_changelog_names_module_paths_that_exist() -> None:
    """Each ``old`` → ``new`` import and each ``python -m`` line it names resolves today."""
    import importlib.util

    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    moved = re.findall(r"`([\w.]+)` → `([\w.]+)`", text)
    commands = re.findall(r"is now `python -m ([\w.]+)", text)
    assert len(moved) > 20 and commands, "the changelog's layout section is gone: update this test"
    missing = [new for _, new in moved if importlib.util.find_spec(f"pytest_gpuhost.{new}") is None]
    missing += [module for module in commands if importlib.util.find_spec(module) is None]
    assert not missing, missing
