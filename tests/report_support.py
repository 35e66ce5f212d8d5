"""Helpers of the report and baseline tests: the JSON report plugin in pytester runs, the schema check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuhost.options import OPTIONS
from pytest_gpuhost.reporting.json_report import JsonReport, schema_path

OPTION_FLAGS = {spec.flag for spec in OPTIONS}
RESULT_KEYS = {
    "nodeid",
    "check",
    "group",
    "host",
    "gpu",
    "params",
    "tier",
    "outcome",
    "action",
    "duration_s",
    "diagnosis",
    "message",
    "skip_reason",
    "warnings",
    "metrics",
}
TOP_KEYS = {
    "schema",
    "plugin_version",
    "pytest_version",
    "created",
    "started",
    "duration_s",
    "exit_status",
    "interrupted",
    "collected",
    "hosts",
    "results",
    "summary",
}

# Until the session registers the report itself, the pytester conftest does, reading its paths
# from the environment; once --gpuhost-json exists the session's own registration is used.
REGISTER = """

def pytest_sessionstart(session):
    from pytest_gpuhost.fixtures import report as report_fixtures
    from pytest_gpuhost.reporting.json_report import PLUGIN_NAME, JsonReport, inventory_from_facts
    from pytest_gpuhost.stash import SESSION_KEY

    config = session.config
    manager = config.pluginmanager
    if not manager.has_plugin(PLUGIN_NAME):
        env = os.environ
        report = JsonReport(
            env.get("GPUHOST_TEST_JSON"),
            lambda: inventory_from_facts(config.stash[SESSION_KEY].facts),
            save_baseline=env.get("GPUHOST_TEST_SAVE_BASELINE"),
            baseline=env.get("GPUHOST_TEST_BASELINE"),
        )
        manager.register(report, PLUGIN_NAME)
    if not manager.is_registered(report_fixtures):
        manager.register(report_fixtures, "gpuhost-report-fixtures")
"""


def report_args(
    path: Path | None, *, save_baseline: Path | None = None, baseline: Path | None = None
) -> list[str]:
    """The options that ask for a report (and baselines), as the session will take them."""
    args: list[str] = []
    wanted = (
        ("--gpuhost-json", path),
        ("--gpuhost-save-baseline", save_baseline),
        ("--gpuhost-baseline", baseline),
    )
    for flag, value in wanted:
        if value is not None and flag in OPTION_FLAGS:
            args += [flag, str(value)]
    return args


def set_report_env(
    monkeypatch: pytest.MonkeyPatch,
    path: Path | None,
    save_baseline: Path | None = None,
    baseline: Path | None = None,
) -> None:
    for name, value in (("JSON", path), ("SAVE_BASELINE", save_baseline), ("BASELINE", baseline)):
        if value is None:
            monkeypatch.delenv(f"GPUHOST_TEST_{name}", raising=False)
        else:
            monkeypatch.setenv(f"GPUHOST_TEST_{name}", str(value))


def validate(document: dict[str, Any]) -> None:
    """The schema holds, and the report has exactly its keys: a key the schema lacks fails here."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(schema_path().read_text())
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(document)
    assert set(document) - {"merged_from"} == TOP_KEYS
    for result in document["results"]:
        assert set(result) == RESULT_KEYS


def node_report(tmp_path: Path, host: str, outcome: str) -> Path:
    """One node's JSON report with a single check of ``outcome``, as a fleet merge reads it."""
    report = JsonReport(None, lambda: {"host": host, "gpus": [], "driver": "580.159.04"})
    record = report._record("suites/test_step_2_1_driver.py::test_nvidia_smi_runs")
    record["outcome"] = outcome
    report._collected = 1
    path = tmp_path / f"{host}.json"
    path.write_text(json.dumps(report.build(exitstatus=0 if outcome == "passed" else 1)))
    return path
