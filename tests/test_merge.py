"""``python -m pytest_gpuhost.reporting.merge``: per-node JSON and JUnit reports into one fleet report."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from junitparser import JUnitXml
from pytester_support import GpuhostPytester
from report_support import node_report

from pytest_gpuhost.reporting.merge import main, merge_junit


def test_json_reports_merge_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes = [node_report(tmp_path, "node-a", "passed"), node_report(tmp_path, "node-b", "failed")]
    out = tmp_path / "out" / "fleet.json"
    assert main([str(out), *map(str, nodes)]) == 0
    document = json.loads(out.read_text())
    assert [h["host"] for h in document["hosts"]] == ["node-a", "node-b"]
    assert document["summary"]["table"]["node-b"]["test_step_2_1_driver"]["failed"] == 1
    assert "merged 2 reports" in capsys.readouterr().out


def test_cli_refuses_duplicate_hosts_without_a_traceback(tmp_path: Path) -> None:
    node = node_report(tmp_path, "node-a", "passed")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_gpuhost.reporting.merge",
            str(tmp_path / "m.json"),
            str(node),
            str(node),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "host 'node-a' is already in" in proc.stderr and "Traceback" not in proc.stderr


def test_junit_files_of_two_nodes_merge_with_host_prefixed_classnames(
    gpuhost_pytester: GpuhostPytester, tmp_path: Path
) -> None:
    inputs = []
    for capture in ("h100", "h200x2"):
        gpuhost_pytester.work = tmp_path / f"node-{capture}"  # each node its own fake tree
        gpuhost_pytester.setup(capture)
        junit = tmp_path / f"{capture}.xml"
        gpuhost_pytester.run(f"--junitxml={junit}")
        inputs.append(junit)
    out = tmp_path / "fleet.xml"
    assert main([str(out), *map(str, inputs)]) == 0
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites" and len(root.findall("testsuite")) == 2
    classnames = {case.get("classname", "").split(".", 1)[0] for case in root.iter("testcase")}
    assert classnames == {"fake-h100", "fake-h200x2"}
    per_node = [JUnitXml.fromfile(str(path)) for path in inputs]
    merged = JUnitXml.fromfile(str(out))
    assert merged.tests == sum(node.tests for node in per_node)
    assert merged.failures == sum(node.failures for node in per_node)
    # Merging an already merged file does not prefix twice.
    again = merge_junit([out])
    assert {c.get("classname") for c in again.iter("testcase")} == {
        c.get("classname") for c in root.iter("testcase")
    }


def test_junit_merge_refuses_what_is_not_junit(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<html/>")
    with pytest.raises(ValueError, match=r"bad\.xml: root element <html>"):
        merge_junit([bad])
    assert main([str(tmp_path / "m.xml"), str(bad)]) == 2
