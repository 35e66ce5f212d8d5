"""Inputs checked when the session starts, so that a bad path costs a second, not a two-hour burn.

Output files (``--gpuhost-json``, ``--gpuhost-save-baseline``, ``--junitxml``) are written at the
end of the run: each must be writable now. A write that still fails at the end (a full disk, a
folder removed meanwhile) is one line in the summary and a failing exit status, never a traceback
that hides the summary. ``--gpuhost-dockerfile`` must be a readable Dockerfile before any check
depends on it.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_gpuhost.options import UsageError

if TYPE_CHECKING:
    from pytest_gpuhost.settings import Settings

GUARD_NAME = "gpuhost-output-guard"


def output_paths(config: pytest.Config, settings: Settings) -> list[tuple[str, str]]:
    """(option, path) of every file this run writes at its end."""
    paths = [("--gpuhost-json", settings.json), ("--gpuhost-save-baseline", settings.save_baseline)]
    paths.append(("--junitxml", config.getoption("xmlpath", default=None)))
    return [(option, str(path)) for option, path in paths if path]


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_writable(option: str, text: str) -> None:
    """Raise UsageError unless ``text`` can be written as a file (its folders may be created)."""
    path = Path(text).expanduser().absolute()
    if path.is_dir():
        raise UsageError(f"{option} {text}: is a folder; give a file name")
    created: list[Path] = []
    try:
        missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        if not path.parent.is_dir():
            raise UsageError(f"{option} {text}: {path.parent} is not a folder")
        if path.exists():
            with open(path, "a", encoding="utf-8"):  # appends nothing: the file stays as it is
                pass
        else:
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
                pass
    except OSError as exc:
        raise UsageError(f"{option} {text}: cannot be written: {_reason(exc)}") from None
    finally:
        for folder in reversed(created):  # the report's writer creates them again at the end
            with contextlib.suppress(OSError):
                folder.rmdir()


def check_dockerfile(text: str) -> None:
    """Raise UsageError unless ``text`` is a readable Dockerfile whose first instruction is FROM
    (only ARG may come before it), as ``docker build`` requires."""
    option = "--gpuhost-dockerfile"
    path = Path(text).expanduser()
    if not path.exists():
        raise UsageError(f"{option} {text}: no such file")
    if not path.is_file():
        raise UsageError(f"{option} {text}: not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"{option} {text}: cannot be read: {_reason(exc)}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{option} {text}: not a text file (UTF-8)") from None
    for line in lines:
        words = line.split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        keyword = words[0].upper()
        if keyword == "FROM" and len(words) > 1:
            return
        if keyword != "ARG":
            break
    raise UsageError(
        f"{option} {text}: not a Dockerfile: its first instruction must be FROM (after ARG only)"
    )


class OutputGuard:
    """Turns a late JUnit write failure into one summary line and a failing exit status."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.session: pytest.Session | None = None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session

    def failed(self, line: str) -> None:
        self.failures.append(line)
        if self.session is not None and self.session.exitstatus == pytest.ExitCode.OK:
            self.session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        for line in self.failures:
            terminalreporter.write_line(f"gpuhost: {line}", red=True)

    def guard_junit(self, config: pytest.Config) -> None:
        """Wrap pytest's JUnit writer: its OSError would end the session with a traceback and skip
        the writers after it (the JSON report). pytest has no hook around that write."""
        from _pytest.junitxml import xml_key

        xml = config.stash.get(xml_key, None)
        if xml is None or getattr(xml, "_gpuhost_guarded", False):
            return
        write = xml.pytest_sessionfinish

        def pytest_sessionfinish() -> None:
            try:
                write()
            except OSError as exc:
                self.failed(f"JUnit report NOT written to {xml.logfile}: {_reason(exc)}")

        config.pluginmanager.unregister(xml)
        xml.pytest_sessionfinish = pytest_sessionfinish  # type: ignore[method-assign]
        xml._gpuhost_guarded = True  # type: ignore[attr-defined]
        config.pluginmanager.register(xml)


def check_inputs(config: pytest.Config, settings: Settings) -> None:
    """Every input that would fail late, checked now; installs the late-write guard."""
    if not hasattr(config, "workerinput"):  # a pytest-xdist worker writes no report
        for option, path in output_paths(config, settings):
            check_writable(option, path)
    if settings.dockerfile:
        check_dockerfile(settings.dockerfile)
    if not config.pluginmanager.has_plugin(GUARD_NAME):
        guard = OutputGuard()
        config.pluginmanager.register(guard, GUARD_NAME)
        guard.guard_junit(config)
