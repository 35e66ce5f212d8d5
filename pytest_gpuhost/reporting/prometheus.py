"""The run as Prometheus metrics: ``--gpuhost-prometheus FILE`` in node_exporter's textfile format.

node_exporter's textfile collector reads ``*.prom`` files from one directory on every scrape, so
the file is written whole or not at all (a temporary file in the same directory, then a rename).
Every sample comes from the JSON report's document of the same run (``JsonReport.build``): the
two never disagree. Standard library only; the tests read the file with ``prometheus_client``.

    gpuhost_check_failed{host,check,test,gpu,outcome,action}   1 for a failure or error, else 0
    gpuhost_check_duration_seconds{host,check,test,gpu}
    gpuhost_measurement{host,check,test,gpu,name}                each numeric ``gpuhost.metric``
    gpuhost_host_action{host,action}                             the host's action, 0 (none) to 5
    gpuhost_checks{host,outcome}                                 results per outcome
    gpuhost_run_start_timestamp_seconds, gpuhost_run_duration_seconds, gpuhost_run_exit_status
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuhost.reporting.actions import ACTIONS, host_actions, rank, result_action

PLUGIN_NAME = "gpuhost-prometheus"
FAILED = ("failed", "error")
Labels = Mapping[str, object]


def escape(value: object) -> str:
    """A label value as the exposition format wants it: backslash, quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def number(value: float | int) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(int(value))


class Family:
    """One metric family: its HELP, TYPE and samples."""

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self.samples: list[tuple[Labels, float | int]] = []

    def add(self, value: float | int, **labels: object) -> None:
        self.samples.append((labels, value))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        for labels, value in self.samples:
            body = ",".join(f'{key}="{escape(text)}"' for key, text in labels.items())
            lines.append(f"{self.name}{{{body}}} {number(value)}" if body else f"{self.name} {number(value)}")
        return lines


def _timestamp(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def _measurements(metrics: Mapping[str, Any]) -> Iterable[tuple[str, float | int]]:
    for name, value in metrics.items():
        if isinstance(value, bool):
            yield name, int(value)
        elif isinstance(value, (int, float)):
            yield name, value


def render(document: Mapping[str, Any]) -> str:
    """The textfile for one report document (a run's, or merged)."""
    failed = Family("gpuhost_check_failed", "1 when the check failed or errored, 0 otherwise")
    duration = Family("gpuhost_check_duration_seconds", "seconds the check took (setup, call, teardown)")
    measured = Family("gpuhost_measurement", "a figure the check measured (its gpuhost.metric values)")
    action = Family(
        "gpuhost_host_action",
        "the strongest action of the host's findings: "
        + ", ".join(f"{i} {a}" for i, a in enumerate(ACTIONS)),
    )
    counts = Family("gpuhost_checks", "results per host and outcome")
    results = document.get("results") or []
    per_host: dict[tuple[str, str], int] = {}
    for result in results:
        gpu = result.get("gpu") or {}
        where = {
            "host": result.get("host") or "",
            "check": result.get("check") or "",
            "test": str(result.get("nodeid", "")).split("::")[-1],
            "gpu": "" if gpu.get("index") is None else gpu["index"],
        }
        outcome = str(result.get("outcome"))
        failed.add(
            int(outcome in FAILED),
            **where,
            outcome=outcome,
            action=result.get("action") or result_action(result),
        )
        duration.add(float(result.get("duration_s") or 0.0), **where)
        for name, value in _measurements(result.get("metrics") or {}):
            measured.add(value, **where, name=name)
        key = (str(where["host"]), outcome)
        per_host[key] = per_host.get(key, 0) + 1
    for host, entry in host_actions(results).items():
        action.add(rank(entry["action"]), host=host, action=entry["action"])
    for (host, outcome), count in sorted(per_host.items()):
        counts.add(count, host=host, outcome=outcome)
    run = []
    started = _timestamp(document.get("started"))
    if started is not None:
        run.append(("gpuhost_run_start_timestamp_seconds", "when the run started (Unix time)", started))
    if document.get("duration_s") is not None:
        run.append(("gpuhost_run_duration_seconds", "seconds the run took", float(document["duration_s"])))
    if document.get("exit_status") is not None:
        run.append(("gpuhost_run_exit_status", "pytest's exit status", int(document["exit_status"])))
    run.append(
        (
            "gpuhost_run_interrupted",
            "1 when the run was stopped early",
            int(bool(document.get("interrupted"))),
        )
    )
    lines: list[str] = []
    for family in (failed, duration, measured, action, counts):
        lines += family.render()
    for name, help_text, value in run:
        single = Family(name, help_text)
        single.add(value)
        lines += single.render()
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Write atomically, readable by node_exporter: a scrape never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # node_exporter reads only *.prom: the temporary name must not end so.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.chmod(0o644)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


class PrometheusReport:
    """Writes the textfile at session finish (also after Ctrl-C), in the controller only."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.written: str | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        from pytest_gpuhost.reporting.json_report import PLUGIN_NAME as JSON_PLUGIN
        from pytest_gpuhost.reporting.json_report import JsonReport

        if hasattr(session.config, "workerinput"):
            return
        report = session.config.pluginmanager.get_plugin(JSON_PLUGIN)
        if not isinstance(report, JsonReport):
            return
        interrupted = int(exitstatus) == int(pytest.ExitCode.INTERRUPTED)
        try:
            write_textfile(self.path, render(report.build(int(exitstatus), interrupted)))
        except OSError as exc:
            self.written = f"Prometheus textfile NOT written to {self.path}: {exc}"
        else:
            self.written = f"Prometheus textfile: {self.path}"

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.written:
            terminalreporter.write_line(f"gpuhost: {self.written}")
