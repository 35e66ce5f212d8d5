"""Actions in the reports: each test case's and host's strongest action as JUnit properties, one
line per host at the end of the terminal summary, and ``HOST<TAB>ACTION<TAB>REASON`` for scripts.

The table and its matching live in ``actions`` (pure, no pytest); this module wires them into a
session and reads them back from a JSON report.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import pytest

from pytest_gpuhost.reporting.actions import action_for, annotate, host_actions, strongest, summary_line
from pytest_gpuhost.reporting.json_report import PLUGIN_NAME, JsonReport, load_report, parse_diagnosis

PROPERTY = "gpuhost.action"
# pytest writes test-case properties in these JUnit families only; xunit2's schema has none.
TESTCASE_PROPERTY_FAMILIES = ("xunit1", "legacy")

# (is a warning, FOUND, CAUSE, kind) of each finding of one test case, over its phases.
Finding = tuple[bool, str, str, "str | None"]
FINDINGS = pytest.StashKey[list[Finding]]()


class ActionReporter:
    """Gives each test case its action as the JUnit property ``gpuhost.action`` (in the process
    that runs it, so it reaches the report from pytest-xdist workers too; xunit1 and legacy
    families), each host's as a test-suite property, and prints each host's strongest action at
    the end. Registered by the session under ``--gpuhost``."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        findings = item.stash.setdefault(FINDINGS, [])
        findings.extend(_drain_warnings())
        if report.failed:
            findings.append(_failure(report.longreprtext))
        if report.when == "teardown":
            check = getattr(item, "originalname", None) or item.name
            action = strongest(
                action_for(check, found, cause, kind=kind, warning=warning)[0]
                for warning, found, cause, kind in findings
            )
            if item.config.getini("junit_family") in TESTCASE_PROPERTY_FAMILIES:
                report.user_properties.append((PROPERTY, action))
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Before the JUnit file is written: each host's action as a test-suite property, and under
        xunit2 (whose schema has no test-case properties) each test case's that is not ``none``."""
        from _pytest.junitxml import xml_key  # the LogXML instance; pytest has no public accessor

        config = session.config
        xml = config.stash.get(xml_key, None)
        plugin = config.pluginmanager.get_plugin(PLUGIN_NAME)
        if xml is None or hasattr(config, "workerinput") or not isinstance(plugin, JsonReport):
            return
        results = plugin.results()
        hosts = host_actions(results)
        for host, entry in hosts.items():
            xml.add_global_property(f"{PROPERTY}[{host}]" if len(hosts) > 1 else PROPERTY, entry["action"])
        if config.getini("junit_family") not in TESTCASE_PROPERTY_FAMILIES:
            for result in results:
                if result["action"] != "none":
                    name = str(result["nodeid"]).split("::")[-1]
                    xml.add_global_property(f"{PROPERTY}[{name}]", result["action"])

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        plugin = terminalreporter.config.pluginmanager.get_plugin(PLUGIN_NAME)
        if not isinstance(plugin, JsonReport):
            return
        hosts = host_actions(plugin.results())
        if not hosts:
            return
        terminalreporter.section("gpuhost: actions")
        for host, entry in hosts.items():
            terminalreporter.write_line(summary_line(host, entry), red=entry["action"] != "none")


def _drain_warnings() -> list[Finding]:
    from pytest_gpuhost import diagnosis

    drained = [(True, d.found, d.cause, d.kind) for d in diagnosis.recent_warnings]
    diagnosis.recent_warnings.clear()
    return drained


def _failure(text: str) -> Finding:
    parsed = parse_diagnosis(text)
    if parsed is None:
        return (False, text, "", None)
    return (False, parsed["found"], parsed["cause"], parsed.get("kind"))


# -- for scripts: ``python -m pytest_gpuhost.reporting.host_actions REPORT`` ---------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """One line per host of a JSON report: ``HOST<TAB>ACTION<TAB>REASON`` (the Slurm example's
    drain reason). Exit 0; 2 when the report cannot be read."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m pytest_gpuhost.reporting.host_actions", description=main.__doc__
    )
    parser.add_argument("report", help="a --gpuhost-json report")
    parser.add_argument("--width", type=int, default=200, help="longest reason (characters)")
    args = parser.parse_args(argv)
    try:
        document = load_report(args.report)
    except ValueError as exc:
        print(f"pytest_gpuhost.reporting.host_actions: {exc}", file=sys.stderr)
        return 2
    results = [annotate(dict(r)) if "action" not in r else r for r in document["results"]]
    for host, entry in host_actions(results).items():
        reason = summary_line(host, entry, width=args.width + len(host) + 2)[len(host) + 2 :]
        print(f"{host}\t{entry['action']}\t{reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
