"""The wheel ships the suite and the entry point, and an installed copy runs from site-packages.

Offline: the wheel is built with the installed setuptools (``--no-build-isolation``) and
installed with ``--no-deps --no-index`` into a venv that sees this environment's packages.
Deselect with ``-m "not packaging"`` when iterating.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
SHIPPED_STEPS = ("test_step_1_1_hardware.py", "test_step_2_1_driver.py")

pytestmark = pytest.mark.packaging


def run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    env["PIP_NO_INDEX"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A wheel built from a copy of the project: the build leaves nothing in the work tree."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(
        PROJECT,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            "tests",
            "bench",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".*cache",
            ".venv",
            "reports",
            ".device-carry",
            ".whl",
            ".gl",
        ),
    )
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(work / "dist"),
            str(source),
        ],
        work,
    )
    (built,) = (work / "dist").glob("pytest_gpuhost-*.whl")
    yield built


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_text = archive.read(entry_points).decode()
    for step in SHIPPED_STEPS:
        assert f"pytest_gpuhost/suites/{step}" in names
    assert "pytest_gpuhost/suites/__init__.py" in names
    assert {"pytest_gpuhost/plugin.py", "pytest_gpuhost/py.typed", "pytest_gpuhost/facts/nvml.py"} <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "suites/"))], "stray top-level files"
    lines = [line.strip() for line in entry_text.splitlines()]
    assert "[pytest11]" in lines
    assert "gpuhost = pytest_gpuhost.plugin" in lines[lines.index("[pytest11]") :]


def test_installed_wheel_collects_the_suite_from_site_packages(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    # This environment's pip, run by the venv's interpreter, installs into the venv.
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)], tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    where = run([str(python), "-c", "import pytest_gpuhost.session as s; print(s.suite_dir())"], empty)
    suite = Path(where.stdout.strip())
    assert suite.is_relative_to(venv), suite
    assert suite.parts[-2:] == ("pytest_gpuhost", "suites") and "site-packages" in suite.parts
    # --rootdir=/ makes every node id the file's full path.
    collected = run(
        [
            str(python),
            "-m",
            "pytest",
            "--gpuhost",
            "-p",
            "no:cacheprovider",
            "--collect-only",
            "-q",
            "--rootdir=/",
        ],
        empty,
    )
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    for step in SHIPPED_STEPS:
        assert any(line.startswith(f"{str(suite).lstrip('/')}/{step}::") for line in ids), (step, ids)
    assert not [line for line in ids if str(PROJECT).lstrip("/") in line], "collected from the work tree"
    assert f"{str(suite).lstrip('/')}/test_step_1_1_hardware.py::test_nvidia_gpus_on_pci_bus" in ids
