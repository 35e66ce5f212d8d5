"""pytest-html extras for the suite: the burn plots as images, each failure's diagnosis as text.

Optional: with pytest-html installed (the ``html`` extra) and ``--html`` given, every test report
gets pytest-html's documented ``extras``: the ``.png`` files a check announced with a
``gpuhost.file <path>`` line on stdout (the burn's temperature and power plot), and, for a failed
check, its ``FOUND``/``CAUSE``/``FIX`` text. Without pytest-html this module registers nothing,
and importing it imports nothing but the standard library and pytest.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PLUGIN_NAME = "gpuhost-html-extras"
FILE_PREFIX = "gpuhost.file "
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # a plot larger than this is left out of the report
_DIAGNOSIS = re.compile(r"^FOUND:.*?^CAUSE:.*?^FIX:.*?(?=^\S|\Z)", re.MULTILINE | re.DOTALL)


def pytest_html_extras() -> ModuleType | None:
    """``pytest_html.extras``, or None where pytest-html is not installed."""
    import importlib

    try:
        return importlib.import_module("pytest_html.extras")
    except ImportError:
        return None


def register(config: pytest.Config) -> bool:
    """Add the extras when pytest-html is installed, active and writing a report (``--html``).

    Returns whether the plugin was registered; registering twice is a no-op.
    """
    if config.pluginmanager.has_plugin(PLUGIN_NAME):
        return True
    if not config.pluginmanager.has_plugin("html") or not config.getoption("htmlpath", default=None):
        return False
    extras = pytest_html_extras()
    if extras is None:
        return False
    config.pluginmanager.register(HtmlExtras(extras), PLUGIN_NAME)
    return True


def announced_files(stdout: str) -> Iterator[Path]:
    """The paths of ``gpuhost.file <path>`` lines, each once, in the order printed."""
    seen: set[str] = set()
    for line in stdout.splitlines():
        if line.startswith(FILE_PREFIX):
            text = line[len(FILE_PREFIX) :].strip()
            if text and text not in seen:
                seen.add(text)
                yield Path(text)


def diagnosis_text(longrepr: str) -> str | None:
    """The ``FOUND``/``CAUSE``/``FIX`` block of a failure's text, if it has one."""
    match = _DIAGNOSIS.search(longrepr)
    return match.group(0).rstrip() if match else None


class HtmlExtras:
    """Attaches the extras to each report as pytest-html reads them: ``report.extras``."""

    def __init__(self, extras: ModuleType) -> None:
        self.extras = extras

    def extras_for(self, report: pytest.TestReport) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        # Only the call phase: the teardown report repeats the call's captured output.
        stdout = report.capstdout if report.when == "call" else ""
        for path in announced_files(stdout):
            if path.suffix.lower() != ".png":
                continue
            try:
                if path.stat().st_size > MAX_IMAGE_BYTES:
                    continue
                data = path.read_bytes()
            except OSError:
                continue  # removed since, or unreadable: the report still has the line on stdout
            found.append(self.extras.png(base64.b64encode(data).decode("ascii"), name=path.name))
        if report.failed:
            text = diagnosis_text(report.longreprtext)
            if text:
                found.append(self.extras.text(text, name="diagnosis"))
        return found

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        added = self.extras_for(report)
        if added:
            report.extras = [*getattr(report, "extras", []), *added]  # type: ignore[attr-defined]
        return report
