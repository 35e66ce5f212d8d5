"""The dated advisory table of guide step 4.2: read, checked against its schema, and aged.

The table ships as ``pytest_gpuhost/data/advisories.toml``; a site can point the suite at its own
copy (``--gpuhost-advisories``) to add advisories without waiting for a release. Every row must say
where its facts come from and when they were read, because a version judgement is only as good as
the table's date: the findings print the table's age, and an old table warns.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

from pytest_gpuhost.versions import Version, parse_version, release_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

SHIPPED = "data/advisories.toml"
SCHEMA = 1
LINE_STATUSES = ("maintained", "security", "unmaintained")
DESIGNATIONS = ("lts", "production", "nfb")
_CVE = re.compile(r"^CVE-\d{4}-\d{4,}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH = re.compile(r"^\d{4}-\d{2}$")


class AdvisoryTableError(ValueError):
    """The table cannot be read or breaks the schema; the message names the file and the row."""


@dataclass(frozen=True)
class Sourced:
    """Where a row's facts come from and when they were read."""

    source: str
    read: date
    confirmed: bool
    note: str


@dataclass(frozen=True)
class Setting:
    """A config.toml setting that applies an advisory's documented mitigation."""

    section: str
    key: str
    value: object


@dataclass(frozen=True)
class ToolkitAdvisory:
    cves: tuple[str, ...]
    fixed: Version
    gain: str
    bulletin: str
    mitigation: str | None
    mitigation_setting: Setting | None
    origin: Sourced


@dataclass(frozen=True)
class ReleaseLine:
    """A Docker Engine release line (``line``), or every version below ``below``."""

    line: tuple[int, ...] | None
    below: Version | None
    status: str
    until: date | None
    origin: Sourced

    @property
    def label(self) -> str:
        if self.line is not None:
            return ".".join(str(n) for n in self.line) + ".x"
        return f"before {self.below}"

    @property
    def describe(self) -> str:
        """``release line 26.1.x``, or ``the releases before 23.0``."""
        return f"release line {self.label}" if self.line is not None else f"the releases {self.label}"

    def holds(self, version: Version) -> bool:
        if self.line is not None:
            return version.starts_with(self.line)
        return self.below is not None and version < self.below

    def status_on(self, today: date) -> str:
        """The status, or ``unmaintained`` once the ``until`` day has passed."""
        if self.until is not None and today > self.until and self.status != "unmaintained":
            return "unmaintained"
        return self.status


@dataclass(frozen=True)
class CdiSupport:
    first: Version
    default: Version
    origin: Sourced
    default_source: str


@dataclass(frozen=True)
class DriverBranch:
    branch: int
    designation: str
    eol: date  # the first day after support ends
    eol_text: str
    origin: Sourced


@dataclass(frozen=True)
class AdvisoryTable:
    path: str
    reviewed: date
    toolkit: tuple[ToolkitAdvisory, ...]
    docker_lines: tuple[ReleaseLine, ...]
    cdi: CdiSupport
    driver_branches: tuple[DriverBranch, ...]
    driver_unlisted_below: int
    driver_origin: Sourced

    def age_days(self, today: date) -> int:
        return (today - self.reviewed).days

    def describe_age(self, today: date) -> str:
        """``advisory table of 2026-12-02 (3 days old, FILE)``: every finding ends with it."""
        days = self.age_days(today)
        return f"advisory table reviewed {self.reviewed.isoformat()} ({days} day{'s' if days != 1 else ''} old, {self.path})"

    def stale(self, today: date, max_age_days: float) -> bool:
        return self.age_days(today) > max_age_days

    def line_for(self, version: Version) -> ReleaseLine | None:
        """The most specific release line that holds ``version`` (``26.1`` before ``26``)."""
        matches = [line for line in self.docker_lines if line.holds(version)]
        matches.sort(key=lambda line: -(len(line.line) if line.line else 0))
        return matches[0] if matches else None

    def branch(self, number: int) -> DriverBranch | None:
        return next((b for b in self.driver_branches if b.branch == number), None)


# -- reading ------------------------------------------------------------------------------------


def shipped_table_path() -> str:
    return str(resources.files("pytest_gpuhost").joinpath(SHIPPED))


def load_table(path: str | Path | None = None) -> AdvisoryTable:
    """The shipped table, or the one at ``path``; AdvisoryTableError says what is wrong."""
    if path is None:
        label = shipped_table_path()
        text = resources.files("pytest_gpuhost").joinpath(SHIPPED).read_text(encoding="utf-8")
    else:
        label = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise AdvisoryTableError(f"{label}: cannot be read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AdvisoryTableError(f"{label}: not valid TOML: {exc}") from None
    return parse_table(data, label)


def parse_table(data: Mapping[str, Any], label: str) -> AdvisoryTable:
    where = _Where(label)
    table = _table(data, "table", where)
    schema = table.get("schema")
    if schema != SCHEMA:
        raise where.error("[table]", f"schema = {schema!r}: this suite reads schema {SCHEMA}")
    reviewed = _day(table, "reviewed", "[table]", where)
    toolkit = tuple(
        _toolkit(row, f"[[toolkit]] #{i + 1}", where) for i, row in enumerate(_rows(data, "toolkit", where))
    )
    docker = _table(data, "docker", where)
    lines = tuple(
        _line(row, f"[[docker.line]] #{i + 1}", where) for i, row in enumerate(_rows(docker, "line", where))
    )
    cdi_row = _table(docker, "cdi", where, "[docker.cdi]")
    cdi = CdiSupport(
        first=_version(cdi_row, "first", "[docker.cdi]", where),
        default=_version(cdi_row, "default", "[docker.cdi]", where),
        origin=_origin(cdi_row, "[docker.cdi]", where, source_key="first_source"),
        default_source=_url(cdi_row, "default_source", "[docker.cdi]", where),
    )
    driver = _table(data, "driver", where)
    branches = tuple(
        _branch(row, f"[[driver.branch]] #{i + 1}", where)
        for i, row in enumerate(_rows(driver, "branch", where))
    )
    unlisted = driver.get("unlisted_below")
    if not isinstance(unlisted, int):
        raise where.error("[driver]", "unlisted_below must be a driver branch number")
    return AdvisoryTable(
        path=label,
        reviewed=reviewed,
        toolkit=toolkit,
        docker_lines=lines,
        cdi=cdi,
        driver_branches=branches,
        driver_unlisted_below=unlisted,
        driver_origin=_origin(driver, "[driver]", where),
    )


class _Where:
    def __init__(self, label: str) -> None:
        self.label = label

    def error(self, row: str, message: str) -> AdvisoryTableError:
        return AdvisoryTableError(f"{self.label}: {row}: {message}")


def _table(data: Mapping[str, Any], key: str, where: _Where, row: str | None = None) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise where.error(row or f"[{key}]", "missing")
    return value


def _rows(data: Mapping[str, Any], key: str, where: _Where) -> list[Mapping[str, Any]]:
    value = data.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(r, Mapping) for r in value):
        raise where.error(f"[[{key}]]", "needs at least one row")
    return value


def _text(row: Mapping[str, Any], key: str, name: str, where: _Where, required: bool = True) -> str | None:
    value = row.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise where.error(name, f"{key} must be a non-empty string")
    return value.strip()


def _url(row: Mapping[str, Any], key: str, name: str, where: _Where) -> str:
    value = _text(row, key, name, where) or ""
    if not value.startswith("https://"):
        raise where.error(name, f"{key} must be an https:// address, got {value!r}")
    return value


def _day(row: Mapping[str, Any], key: str, name: str, where: _Where) -> date:
    value = row.get(key)
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not _DAY.match(value):
        raise where.error(name, f"{key} must be a date YYYY-MM-DD, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise where.error(name, f"{key} = {value!r} is not a date") from None


def _version(row: Mapping[str, Any], key: str, name: str, where: _Where) -> Version:
    text = _text(row, key, name, where) or ""
    version = parse_version(text)
    if version is None:
        raise where.error(name, f"{key} = {text!r} is not a version")
    return version


def _origin(row: Mapping[str, Any], name: str, where: _Where, source_key: str = "source") -> Sourced:
    confirmed = row.get("confirmed", True)
    if not isinstance(confirmed, bool):
        raise where.error(name, "confirmed must be true or false")
    note = row.get("note", "")
    if not isinstance(note, str):
        raise where.error(name, "note must be a string")
    if not confirmed and not note.strip():
        raise where.error(name, "an unconfirmed row needs a note that says what is not confirmed")
    return Sourced(
        _url(row, source_key, name, where), _day(row, "read", name, where), confirmed, note.strip()
    )


def _toolkit(row: Mapping[str, Any], name: str, where: _Where) -> ToolkitAdvisory:
    cves = row.get("cves")
    if not isinstance(cves, list) or not cves or not all(isinstance(c, str) and _CVE.match(c) for c in cves):
        raise where.error(name, f"cves must list CVE ids (CVE-YYYY-NNNN), got {cves!r}")
    setting = row.get("mitigation_setting")
    mitigation_setting = None
    if setting is not None:
        if not isinstance(setting, Mapping) or not {"section", "key", "value"} <= set(setting):
            raise where.error(name, "mitigation_setting needs section, key and value")
        mitigation_setting = Setting(str(setting["section"]), str(setting["key"]), setting["value"])
    return ToolkitAdvisory(
        cves=tuple(cves),
        fixed=_version(row, "fixed", name, where),
        gain=_text(row, "gain", name, where) or "",
        bulletin=_url(row, "bulletin", name, where),
        mitigation=_text(row, "mitigation", name, where, required=False),
        mitigation_setting=mitigation_setting,
        origin=_origin(row, name, where),
    )


def _line(row: Mapping[str, Any], name: str, where: _Where) -> ReleaseLine:
    status = row.get("status")
    if status not in LINE_STATUSES:
        raise where.error(name, f"status must be one of {', '.join(LINE_STATUSES)}, got {status!r}")
    line_text, below_text = row.get("line"), row.get("below")
    if (line_text is None) == (below_text is None):
        raise where.error(name, 'give either line (e.g. "26.1") or below (e.g. "23.0")')
    line = None
    if line_text is not None:
        try:
            line = release_line(str(line_text))
        except ValueError:
            raise where.error(name, f"line = {line_text!r} is not a release line such as 26.1") from None
    until = _day(row, "until", name, where) if row.get("until") is not None else None
    return ReleaseLine(
        line=line,
        below=_version(row, "below", name, where) if below_text is not None else None,
        status=str(status),
        until=until,
        origin=_origin(row, name, where),
    )


def _branch(row: Mapping[str, Any], name: str, where: _Where) -> DriverBranch:
    number = row.get("branch")
    if not isinstance(number, int) or number <= 0:
        raise where.error(name, f"branch must be a driver branch number such as 580, got {number!r}")
    designation = row.get("designation")
    if designation not in DESIGNATIONS:
        raise where.error(name, f"designation must be one of {', '.join(DESIGNATIONS)}, got {designation!r}")
    eol = row.get("eol")
    if not isinstance(eol, str) or not _MONTH.match(eol):
        raise where.error(name, f"eol must be a month YYYY-MM, got {eol!r}")
    year, month = (int(part) for part in eol.split("-"))
    if not 1 <= month <= 12:
        raise where.error(name, f"eol = {eol!r} is not a month")
    after = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return DriverBranch(number, str(designation), after, eol, _origin(row, name, where))
