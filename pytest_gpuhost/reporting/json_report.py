"""The JSON report: one document per run with the host inventory, every check's outcome,
diagnosis and measured values, and a summary table; schema ``pytest-gpuhost/report/v1``.

``JsonReport`` is a plugin object: it collects results from the test reports as they arrive
(also from pytest-xdist workers), writes the document at session finish, also after Ctrl-C or
SIGTERM, and saves a baseline when asked. The schema is ``schemas/report-v1.schema.json`` and
``docs/json-report.md`` documents it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuhost import __version__
from pytest_gpuhost.options import MARKER_TIERS
from pytest_gpuhost.reporting.timestamps import now_iso

if TYPE_CHECKING:
    from pytest_gpuhost.facts.model import HostFacts

SCHEMA = "pytest-gpuhost/report/v1"
PLUGIN_NAME = "gpuhost-json-report"
OUTCOMES = ("passed", "failed", "skipped", "error", "xfailed", "xpassed", "interrupted")
MAX_MESSAGE = 8000  # characters of a failure's text kept in the report
METRIC_PREFIX = "gpuhost.metric"
# Values of these keys stay strings even when they look numeric: "12.10" is not 12.1.
_VERSION_KEY = re.compile(
    r"(^|[._])(version|driver|cuda|kernel|engine|api|sdk|containerd|runc|init|release)$"
)
_DIAGNOSIS = re.compile(
    r"FOUND:\s*(?P<found>.*?)\n\s*CAUSE:\s*(?P<cause>.*?)\n\s*FIX:\s*(?P<fix>.*?)"
    r"(?:\n\s*KIND:\s*(?P<kind>[\w.-]+)\s*)?$",
    re.DOTALL,
)

Inventory = Mapping[str, Any]


def schema_path() -> Path:
    """The JSON Schema of the report, shipped with the package."""
    return Path(__file__).resolve().parent / "schemas" / "report-v1.schema.json"


# -- parsing what a check printed or raised ----------------------------------------------------


# Without quotes or backslashes, shlex.split only splits at shlex's whitespace.
_SHELL_QUOTING = re.compile(r"""['"\\]""")
_SHELL_SPACE = re.compile(r"[ \t\r\n]+")


def parse_value(key: str, text: str) -> Any:
    """A metric value as a JSON number or boolean where it is one; versions stay strings."""
    if _VERSION_KEY.search(key):
        return text
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?", text):
        return float(text)
    return text


def parse_metrics(stdout: str) -> dict[str, Any]:
    """``gpuhost.metric key=value ...`` lines to a dict; quoted values may hold spaces.

    A word without ``=`` continues the previous value (an unquoted value with a space).
    """
    metrics: dict[str, Any] = {}
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith(METRIC_PREFIX + " "):
            continue
        body = line[len(METRIC_PREFIX) :]
        if not _SHELL_QUOTING.search(body):
            words = _SHELL_SPACE.split(body.strip(" \t\r\n"))  # shlex's words, at a tenth of the cost
        else:
            try:
                words = shlex.split(body)
            except ValueError:  # an unbalanced quote: take the words as they are
                words = body.split()
        last: str | None = None
        raw: dict[str, str] = {}
        for word in words:
            key, sep, value = word.partition("=")
            if sep and key:
                raw[key] = value
                last = key
            elif last is not None:
                raw[last] += " " + word
        for key, value in raw.items():
            metrics[key] = parse_value(key, value)
    return metrics


def parse_diagnosis(text: str) -> dict[str, str] | None:
    """FOUND / CAUSE / FIX of a failure's text, or None when it is not a diagnosis."""
    match = _DIAGNOSIS.search(text)
    if not match:
        return None
    diagnosis = {name: match.group(name).strip() for name in ("found", "cause", "fix")}
    if match.group("kind"):
        diagnosis["kind"] = match.group("kind")
    return diagnosis


def skip_reason(report: pytest.TestReport) -> str | None:
    longrepr = report.longrepr
    if isinstance(longrepr, (tuple, list)) and len(longrepr) == 3:  # a list after pytest-xdist
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr).removeprefix("Skipped: ") if longrepr else None


def group_of(nodeid: str) -> str:
    """The check group: the suite module's name, ``test_step_2_1_driver``."""
    path = nodeid.split("::", 1)[0]
    return Path(path).stem


def inventory_from_facts(facts: HostFacts) -> dict[str, Any]:
    """The report's host inventory from the facts gathered at the start of the run."""
    listing = facts.listing
    return {
        "host": facts.host,
        "driver": facts.driver_version,
        "cuda": facts.cuda_driver_version,
        "nvml": facts.nvml.library_version,
        "kernel_module": facts.kernel.module_version,
        "gpu_source": listing.source if listing.ok else None,
        "gpus": [
            {
                "index": gpu.index,
                "uuid": gpu.uuid,
                "name": gpu.name,
                "pci": gpu.pci_bus_id,
                "memory_mib": gpu.memory_total_mib,
                "power_limit_w": gpu.power_limit_w,
                "compute_capability": ".".join(map(str, gpu.compute_capability))
                if gpu.compute_capability
                else None,
            }
            for gpu in facts.gpus
        ],
    }


# -- building the document ---------------------------------------------------------------------


def summarize(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per outcome and the hosts-by-check-groups table."""
    from pytest_gpuhost.reporting.actions import host_actions

    outcomes = dict.fromkeys(OUTCOMES, 0)
    table: dict[str, dict[str, dict[str, int]]] = {}
    for result in results:
        outcome = result["outcome"]
        outcomes[outcome] += 1
        cell = table.setdefault(result["host"], {}).setdefault(result["group"], dict.fromkeys(OUTCOMES, 0))
        cell[outcome] += 1
    return {"total": len(results), "outcomes": outcomes, "table": table, "actions": host_actions(results)}


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as null (JSON has neither) and unknown objects as text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write atomically: a reader (or a run killed mid-write) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        text = json.dumps(json_safe(document), indent=2, allow_nan=False)
        temporary.write_text(text + "\n", encoding="utf-8")
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


class JsonReport:
    """Collects each check's result; writes the report and the baseline at session finish.

    ``path``: where the report goes (None: collect only, e.g. for the baseline check).
    ``inventory``: returns the host inventory; called once, at the end.
    ``save_baseline``: where to save a baseline made from this run. ``baseline``: the baseline
    file that ``test_baseline_regressions`` compares this run with. ``inventories``: in a fleet
    run, every host's inventory (the document's ``hosts``); results then name their host.
    """

    def __init__(
        self,
        path: Path | str | None,
        inventory: Callable[[], Inventory] | None = None,
        *,
        save_baseline: Path | str | None = None,
        baseline: Path | str | None = None,
        inventories: Callable[[], Sequence[Inventory]] | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.save_baseline_path = Path(save_baseline) if save_baseline is not None else None
        self.baseline_path = Path(baseline) if baseline is not None else None
        self._inventory = inventory
        self._inventory_cache: dict[str, Any] | None = None
        self._inventories = inventories
        self._results: dict[str, dict[str, Any]] = {}
        self._started = time.time()
        self._start_iso = now_iso()
        self._collected = 0
        self._exitstatus: int | None = None
        self.written: list[str] = []  # lines for the terminal summary

    # -- the inventory and the document ------------------------------------------------------

    def inventory(self) -> dict[str, Any]:
        if self._inventory_cache is None:
            try:
                inventory = dict(self._inventory()) if self._inventory is not None else {}
            except Exception as exc:  # the report must be written even when facts fail
                inventory = {"error": f"{type(exc).__name__}: {exc}"}
            inventory.setdefault("host", os.uname().nodename if hasattr(os, "uname") else "localhost")
            inventory.setdefault("gpus", [])
            self._inventory_cache = inventory
        return self._inventory_cache

    def host_inventories(self) -> list[dict[str, Any]]:
        """The document's ``hosts``: the one host, or every host of a fleet run."""
        if self._inventories is None:
            return [self.inventory()]
        try:
            return [dict(inventory) for inventory in self._inventories()]
        except Exception as exc:  # the report must be written even when facts fail
            return [{**self.inventory(), "error": f"{type(exc).__name__}: {exc}"}]

    def results(self) -> list[dict[str, Any]]:
        """The results so far, each with its host and its action (``actions.RULES``) filled in."""
        from pytest_gpuhost.reporting.actions import annotate

        host = self.inventory()["host"]
        return [annotate({**record, "host": record["host"] or host}) for record in self._results.values()]

    def build(self, exitstatus: int | None = None, interrupted: bool = False) -> dict[str, Any]:
        """The report document of what has run so far."""
        results = self.results()
        return {
            "schema": SCHEMA,
            "plugin_version": __version__,
            "pytest_version": pytest.__version__,
            "created": now_iso(),
            "started": self._start_iso,
            "duration_s": round(time.time() - self._started, 3),
            "exit_status": exitstatus,
            "interrupted": interrupted,
            "collected": self._collected,
            "hosts": self.host_inventories(),
            "results": results,
            "summary": summarize(results),
        }

    # -- hooks ------------------------------------------------------------------------------

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._collected = len(session.items)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Attach the check's name, GPU and parameters; plain attributes survive pytest-xdist."""
        report = yield
        report.gpuhost_check = getattr(item, "originalname", None) or item.name  # type: ignore[attr-defined]
        report.gpuhost_tier = next(  # type: ignore[attr-defined]
            (MARKER_TIERS[m.name] for m in item.iter_markers() if m.name in MARKER_TIERS), None
        )
        callspec = getattr(item, "callspec", None)
        params: dict[str, Any] = dict(callspec.params) if callspec is not None else {}
        gpu = params.pop("gpu", None)
        report.gpuhost_gpu = (  # type: ignore[attr-defined]
            {"index": gpu.index, "uuid": gpu.uuid, "name": gpu.name} if hasattr(gpu, "index") else None
        )
        report.gpuhost_params = {  # type: ignore[attr-defined]
            name: value for name, value in params.items() if isinstance(value, (str, int, float, bool))
        }
        return report

    def _record(self, nodeid: str) -> dict[str, Any]:
        record = self._results.get(nodeid)
        if record is None:
            record = {
                "nodeid": nodeid,
                "check": nodeid.split("::")[-1].split("[", 1)[0],
                "group": group_of(nodeid),
                "host": None,
                "gpu": None,
                "params": {},
                "tier": None,
                "outcome": "interrupted",
                "duration_s": 0.0,
                "diagnosis": None,
                "message": None,
                "skip_reason": None,
                "warnings": [],
                "metrics": {},
            }
            self._results[nodeid] = record
        return record

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = self._record(report.nodeid)
        for attribute, key in (
            ("gpuhost_check", "check"),
            ("gpuhost_gpu", "gpu"),
            ("gpuhost_params", "params"),
            ("gpuhost_tier", "tier"),
        ):
            value = getattr(report, attribute, None)
            if value is not None:
                record[key] = value
        host = getattr(report, "gpuhost_host", None)
        if host:
            record["host"] = host
        record["duration_s"] = round(record["duration_s"] + (report.duration or 0.0), 6)
        for title, content in report.sections:
            if title == f"Captured stdout {report.when}":
                record["metrics"].update(parse_metrics(content))
        self._apply_outcome(record, report)

    def _apply_outcome(self, record: dict[str, Any], report: pytest.TestReport) -> None:
        when, outcome = report.when, report.outcome
        wasxfail = hasattr(report, "wasxfail")
        if outcome == "skipped":
            if wasxfail:
                record["outcome"] = "xfailed"
                record["skip_reason"] = str(report.wasxfail) or None
            else:
                record["outcome"] = "skipped"
                record["skip_reason"] = skip_reason(report)
            return
        if outcome == "failed":
            first_failure = record["outcome"] not in ("failed", "error")
            if first_failure:
                record["outcome"] = "failed" if when == "call" else "error"
                text = report.longreprtext
                record["message"] = text[:MAX_MESSAGE]
                record["diagnosis"] = parse_diagnosis(text)
            return
        # passed
        if when == "call":
            record["outcome"] = "xpassed" if wasxfail else "passed"
        elif when == "setup":
            record["outcome"] = "interrupted"  # until the call phase reports
        # a passed teardown leaves the outcome as it is

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """A suite module that cannot be collected is a result too: an error."""
        if report.failed:
            record = self._record(report.nodeid or "<collection>")
            record["check"] = None
            record["outcome"] = "error"
            record["message"] = report.longreprtext[:MAX_MESSAGE]
            record["diagnosis"] = parse_diagnosis(report.longreprtext)

    def pytest_warning_recorded(
        self, warning_message: Any, when: str, nodeid: str, location: tuple[str, int, str] | None
    ) -> None:
        if not nodeid or when != "runtest":
            return
        text = str(warning_message.message)
        category = getattr(warning_message.category, "__name__", "Warning")
        self._record(nodeid)["warnings"].append(
            {"category": category, "message": text[:MAX_MESSAGE], "diagnosis": parse_diagnosis(text)}
        )

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if hasattr(session.config, "workerinput"):
            return  # a pytest-xdist worker: the controller writes the report
        interrupted = int(exitstatus) == int(pytest.ExitCode.INTERRUPTED)
        document = self.build(int(exitstatus), interrupted)
        if self.path is not None:
            state = "partial report (interrupted)" if interrupted else "report"
            if self._write(session, "JSON report", self.path, document):
                self.written.append(f"JSON {state}: {self.path}")
        if self.save_baseline_path is not None:
            why_not = self._baseline_refusal(int(exitstatus), document)
            if why_not:
                self.written.append(f"baseline NOT saved to {self.save_baseline_path}: {why_not}")
            else:
                from pytest_gpuhost.reporting.baseline import make_baseline

                if self._write(session, "baseline", self.save_baseline_path, make_baseline(document)):
                    self.written.append(f"baseline saved: {self.save_baseline_path}")

    def _write(self, session: pytest.Session, what: str, path: Path, document: Mapping[str, Any]) -> bool:
        """Write one file; a failure (checked writable at the start, so: a full disk, a folder
        removed meanwhile) is one line in the summary and a failing run, never a traceback."""
        try:
            write_json(path, document)
        except OSError as exc:
            self.written.append(f"{what} NOT written to {path}: {exc.strerror or exc}")
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return False
        return True

    @staticmethod
    def _baseline_refusal(exitstatus: int, document: Mapping[str, Any]) -> str | None:
        """Why this run must not replace a baseline, or None: a partial run would erase figures."""
        if document["interrupted"]:
            return "the run was interrupted"
        if exitstatus not in (int(pytest.ExitCode.OK), int(pytest.ExitCode.TESTS_FAILED)):
            return f"the run ended with exit status {exitstatus}"
        if not document["results"]:
            return "no check ran"
        return None

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        for line in self.written:
            terminalreporter.write_line(f"gpuhost: {line}")


# -- fleets: one report per node -----------------------------------------------------------------


def load_report(path: Path | str) -> dict[str, Any]:
    """A report file, checked to be a v1 report; raises ValueError naming the file."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON report: {exc}") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise ValueError(f"{path}: schema {found!r}, expected {SCHEMA!r}")
    return document


def merge_reports(paths: Iterable[Path | str]) -> dict[str, Any]:
    """One report from per-node reports (a fleet run: one ``--gpuhost-json`` per node).

    Host names are kept as the nodes wrote them; two reports from the same host name are an
    error, since their rows would merge in the summary table.
    """
    hosts: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    merged_from: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    statuses: list[int] = []
    collected = 0
    interrupted = False
    started: list[str] = []
    for path in paths:
        document = load_report(path)
        for inventory in document["hosts"]:
            name = inventory["host"]
            if name in seen:
                raise ValueError(
                    f"{path}: host {name!r} is already in {seen[name]}; give each node its own name"
                )
            seen[name] = str(path)
            hosts.append(inventory)
        from pytest_gpuhost.reporting.actions import annotate

        # A report written before actions existed gets them from the table now.
        results.extend(r if "action" in r else annotate(dict(r)) for r in document["results"])
        merged_from.append(
            {
                "source": str(path),
                "hosts": [inventory["host"] for inventory in document["hosts"]],
                "created": document["created"],
            }
        )
        if document.get("exit_status") is not None:
            statuses.append(int(document["exit_status"]))
        collected += int(document.get("collected") or 0)
        interrupted = interrupted or bool(document.get("interrupted"))
        started.append(document.get("started") or document["created"])
    if not merged_from:
        raise ValueError("no report to merge")
    return {
        "schema": SCHEMA,
        "plugin_version": __version__,
        "pytest_version": pytest.__version__,
        "created": now_iso(),
        "started": min(started),
        "duration_s": None,
        "exit_status": max(statuses) if statuses else None,
        "interrupted": interrupted,
        "collected": collected,
        "hosts": hosts,
        "results": results,
        "summary": summarize(results),
        "merged_from": merged_from,
    }
