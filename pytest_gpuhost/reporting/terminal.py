"""The fleet table at the end of the terminal summary: hosts by check groups."""

from __future__ import annotations

from collections.abc import Sequence

import pytest


def fleet_table(terminalreporter: pytest.TerminalReporter, hosts: Sequence[str]) -> None:
    """Hosts by check groups, passed/failed/skipped per cell, from the JSON report's results."""
    from pytest_gpuhost.reporting.json_report import PLUGIN_NAME, JsonReport, summarize

    plugin = terminalreporter.config.pluginmanager.get_plugin(PLUGIN_NAME)
    if not isinstance(plugin, JsonReport):
        return
    table = summarize(plugin.results())["table"]
    terminalreporter.section("gpuhost: fleet (passed/failed/skipped)")
    for line in render_fleet_table(table, hosts):
        terminalreporter.write_line(line)


def render_fleet_table(table: dict[str, dict[str, dict[str, int]]], hosts: Sequence[str]) -> list[str]:
    """A text table: one row per host, one column per check group; errors count as failures."""
    groups = sorted({group for row in table.values() for group in row})
    labels = [g.removeprefix("test_").removeprefix("step_") for g in groups]

    def cell(counts: dict[str, int] | None) -> str:
        if not counts:
            return "-"
        failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("xpassed", 0)
        skipped = counts.get("skipped", 0) + counts.get("xfailed", 0)
        return f"{counts.get('passed', 0)}/{failed}/{skipped}"

    rows = [[host, *(cell(table.get(host, {}).get(g)) for g in groups)] for host in hosts]
    header = ["host", *labels]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(text.ljust(width) for text, width in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
