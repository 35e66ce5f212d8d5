"""Fleet operations: an action for every finding (one table), in the JSON report, JUnit and the
terminal, and the same run as a Prometheus textfile read back with ``prometheus_client``.

The run under test is a fake H100 whose NVML capture says a row remapping failed and whose
kernel log has an Xid 79: the strongest action of the host is ``replace-gpu``.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from health_support import XID_79, health_host, healthy_log
from prometheus_client.parser import text_string_to_metric_families
from pytester_support import GpuhostPytester
from report_support import validate

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.reporting.actions import (
    ACTIONS,
    DEFAULT_FAILURE,
    DEFAULT_WARNING,
    RULES,
    action_for,
    annotate,
    check_rules,
    host_actions,
    render_markdown,
    strongest,
    summary_line,
    xid_codes,
)
from pytest_gpuhost.reporting.json_report import parse_diagnosis
from pytest_gpuhost.reporting.prometheus import render, write_textfile
from tools.checkdocs import collect_checks

ROOT = Path(__file__).resolve().parent.parent
CHECKS = collect_checks()


# -- the table --------------------------------------------------------------------------------


@pytest.mark.parametrize("check", CHECKS, ids=[c.name for c in CHECKS])
def test_every_check_of_the_suite_has_a_row_and_every_diagnosis_an_action(check: Any) -> None:
    """Walks the shipped suite: a check added without a row in actions.RULES fails here."""
    assert check_rules(check.name), f"no row for {check.name} in pytest_gpuhost.reporting.actions.RULES"
    for diagnosis in check.diagnoses:
        warning = diagnosis.level == "warn"
        action, rule = action_for(check.name, diagnosis.found, diagnosis.cause, warning=warning)
        assert action in ACTIONS
        if not warning:
            assert rule is not None, f"{check.name}: {diagnosis.found!r} falls to the default"


def test_every_row_names_a_known_action_and_a_check_of_the_suite() -> None:
    names = {c.name for c in CHECKS}
    for rule in RULES:
        assert rule.action in ACTIONS and rule.warning in ACTIONS, rule
        assert rule.check is None or rule.check in names, f"{rule.check} is not a check of the suite"
        assert sum(x is not None for x in (rule.check or rule.found, rule.xid, rule.kind)) >= 1, rule


def test_findings_of_the_issue_get_theirs() -> None:
    """Uncorrectable ECC, failed row remapping, a PCIe link below its maximum, a missing GPU, Xids."""
    label = "GPU 5 (0000:9b:00.0)"
    assert action_for("test_row_remapping", f"row remapping failed on {label}")[0] == "replace-gpu"
    assert action_for("test_row_remapping", f"a row remapping is pending on {label}")[0] == "reset-gpu"
    ecc = f"2 uncorrectable ECC error(s) on {label} since the driver loaded"
    assert action_for("test_no_uncorrectable_ecc_errors", ecc)[0] == "reset-gpu"
    link = f"the PCIe link of {label} is downtrained to x8"
    assert action_for("test_pcie_link", link)[0] == "drain-and-investigate"
    missing = "7 GPU(s) found, 8 expected (--gpuhost-expect-gpus 8); PCI addresses on the bus: ..."
    assert action_for("test_nvidia_gpus_on_pci_bus", missing)[0] == "drain-and-investigate"
    xid = "Xid {code} on GPU 0 since boot, 1 time(s): ..."
    expected = {48: "reset-gpu", 63: "reset-gpu", 64: "replace-gpu", 74: "reset-gpu", 79: "reboot"}
    expected |= {94: "reset-gpu", 95: "reset-gpu", 119: "reset-gpu", 120: "reset-gpu", 8: "reset-gpu"}
    for code, action in expected.items():
        assert action_for("test_no_xid_errors", xid.format(code=code))[0] == action, code
    # Several Xids in one finding: the strongest wins.
    assert action_for("test_no_xid_on_unlisted_gpus", "Xid 63, 64, 79 since boot on PCI 0000:9b:00")[0] == (
        "replace-gpu"
    )


def test_kind_then_pattern_then_xid_then_check_then_default() -> None:
    assert action_for("test_burn", "anything", kind="row-remap-failed")[0] == "replace-gpu"
    assert action_for("test_no_xid_errors", "Xid 79 on GPU 0")[0] == "reboot"  # Xid over the check's row
    assert action_for("test_docker_versions", "Docker Engine 18.09 is older than 19.03")[0] == "reconfigure"
    assert action_for("test_added_by_someone_else", "something broke") == (DEFAULT_FAILURE, None)
    assert action_for("test_added_by_someone_else", "a note", warning=True) == (DEFAULT_WARNING, None)
    assert action_for("test_correctable_ecc_errors", "150 correctable ECC errors", warning=True)[0] == "none"
    assert strongest(["reboot", "none", "replace-gpu", "reset-gpu"]) == "replace-gpu"
    assert strongest([]) == "none"
    assert ACTIONS.index("reconfigure") < ACTIONS.index("reset-gpu") < ACTIONS.index("reboot")


def test_xid_codes_are_read_from_found_and_cause() -> None:
    assert xid_codes("Xid 79 on GPU 0", "Xid 79: fallen off") == (79,)
    assert xid_codes("Xid 48, 63 since boot on PCI 0000:9b:00") == (48, 63)
    assert xid_codes("no xid here", "") == ()


def test_three_argument_diagnoses_are_unchanged_and_a_kind_travels_in_the_text() -> None:
    plain = Diagnosis("found", "cause", "fix")
    assert str(plain) == "FOUND: found\nCAUSE: cause\nFIX:   fix"
    assert parse_diagnosis(str(plain)) == {"found": "found", "cause": "cause", "fix": "fix"}
    kinded = Diagnosis("found", "cause", "fix\nsecond line", kind="floor-missed")
    assert parse_diagnosis(str(kinded)) == {
        "found": "found",
        "cause": "cause",
        "fix": "fix\nsecond line",
        "kind": "floor-missed",
    }


def test_a_host_takes_its_strongest_action_and_old_results_get_one() -> None:
    results = [
        {"host": "gpu03", "check": "test_docker_versions", "outcome": "failed", "nodeid": "a::x",
         "diagnosis": {"found": "Docker Engine 18.09 is older", "cause": "", "fix": ""}, "gpu": None},
        {"host": "gpu03", "check": "test_row_remapping", "outcome": "failed", "nodeid": "a::y",
         "diagnosis": {"found": "row remapping failed on GPU 5 (0000:9b:00.0)", "cause": "", "fix": ""},
         "gpu": {"index": 5, "uuid": "GPU-x"}},
        {"host": "gpu04", "check": "test_row_remapping", "outcome": "passed", "nodeid": "a::y", "gpu": None},
    ]  # fmt: skip
    hosts = host_actions([annotate(dict(r)) for r in results])  # type: ignore[call-overload]
    assert hosts["gpu03"]["action"] == "replace-gpu" and hosts["gpu04"]["action"] == "none"
    assert summary_line("gpu03", hosts["gpu03"]) == (
        "gpu03: replace-gpu GPU 5: row remapping failed on GPU 5 (0000:9b:00.0)"
    )
    assert summary_line("gpu04", hosts["gpu04"]) == "gpu04: none"


def test_docs_list_the_table() -> None:
    page = (ROOT / "docs" / "actions.md").read_text()
    assert render_markdown() in page, "docs/actions.md is stale: paste actions.render_markdown() into it"


# -- a run: JSON, JUnit, terminal and Prometheus ---------------------------------------------------


@pytest.fixture
def broken_run(gpuhost_pytester: GpuhostPytester, tmp_path: Path) -> tuple[pytest.RunResult, Path]:
    def remap_failed(dump: dict[str, Any]) -> None:
        dump["gpus"][0].update(remapped_rows=[0, 1, 0, 1])

    health_host(gpuhost_pytester, healthy_log("h100") + "\n" + XID_79 + "\n", nvml_edit=remap_failed)
    out = tmp_path / "out"
    # As test_health runs the suite, without -s: the measured figures come from captured output.
    result = gpuhost_pytester.run_plain(
        "-p",
        "pytest_gpuhost.fixtures.health",
        "--gpuhost-tier",
        "quick",
        "-k",
        "test_health",
        "--gpuhost-image",
        "gpuhost-test-health-absent:0",
        f"--gpuhost-json={out / 'report.json'}",
        f"--junitxml={out / 'junit.xml'}",
        "-o",
        "junit_family=xunit1",
        f"--gpuhost-prometheus={out / 'textfile' / 'gpuhost.prom'}",
    )
    return result, out


def test_a_run_carries_the_action_everywhere(broken_run: tuple[pytest.RunResult, Path]) -> None:
    result, out = broken_run
    document = json.loads((out / "report.json").read_text())
    by_check = {r["check"]: r for r in document["results"]}
    assert by_check["test_row_remapping"]["outcome"] == "failed"
    assert by_check["test_row_remapping"]["action"] == "replace-gpu"
    assert by_check["test_no_xid_errors"]["action"] == "reboot"
    assert by_check["test_ecc_mode"]["action"] == "none"
    host = document["hosts"][0]["host"]
    assert document["summary"]["actions"][host]["action"] == "replace-gpu"
    validate(document)  # the schema, also its exact result keys
    # JUnit (xunit1): one gpuhost.action property per test case, the same action as the JSON report's.
    cases = ET.parse(out / "junit.xml").getroot().iter("testcase")
    junit = {}
    for case in cases:
        values = [p.get("value") for p in case.iter("property") if p.get("name") == "gpuhost.action"]
        assert len(values) == 1, case.get("name")
        junit[case.get("name", "").split("[")[0]] = values[0]
    assert junit["test_row_remapping"] == "replace-gpu" and junit["test_no_xid_errors"] == "reboot"
    assert junit == {c: r["action"] for c, r in by_check.items()}
    suite = {
        p.get("name"): p.get("value")
        for p in ET.parse(out / "junit.xml").getroot().iterfind("testsuite/properties/property")
        if p.get("name", "").startswith("gpuhost.action")
    }
    assert suite == {"gpuhost.action": "replace-gpu"}
    # The terminal: one line per host.
    result.stdout.fnmatch_lines(
        ["*gpuhost: actions*", f"{host}: replace-gpu GPU 0: row remapping failed on GPU 0*"]
    )


def test_the_prometheus_textfile_matches_the_json_report(broken_run: tuple[pytest.RunResult, Path]) -> None:
    _, out = broken_run
    textfile = out / "textfile" / "gpuhost.prom"
    assert not [p.name for p in textfile.parent.iterdir() if p != textfile], "a temporary file was left"
    assert textfile.stat().st_mode & 0o644 == 0o644
    document = json.loads((out / "report.json").read_text())
    families = {f.name: f for f in text_string_to_metric_families(textfile.read_text())}
    failed = {s.labels["test"]: s for s in families["gpuhost_check_failed"].samples}
    assert len(failed) == len(document["results"])
    for r in document["results"]:
        sample = failed[r["nodeid"].split("::")[-1]]
        assert sample.labels["check"] == r["check"] and sample.labels["action"] == r["action"]
        assert sample.labels["outcome"] == r["outcome"]
        assert sample.value == (1 if r["outcome"] in ("failed", "error") else 0)
        gpu = r["gpu"]["index"] if r["gpu"] else ""
        assert sample.labels["gpu"] == str(gpu)
    measured = {
        (s.labels["test"], s.labels["name"]): s.value for s in families["gpuhost_measurement"].samples
    }
    expected = {
        (r["nodeid"].split("::")[-1], name): float(value)
        for r in document["results"]
        for name, value in r["metrics"].items()
        if isinstance(value, (int, float))
    }
    assert measured == expected and expected
    (action,) = families["gpuhost_host_action"].samples
    assert action.labels["action"] == "replace-gpu" and action.value == ACTIONS.index("replace-gpu")
    (start,) = families["gpuhost_run_start_timestamp_seconds"].samples
    (duration,) = families["gpuhost_run_duration_seconds"].samples
    assert start.value > 1.6e9 and 0 < duration.value < 300
    counts = {s.labels["outcome"]: s.value for s in families["gpuhost_checks"].samples}
    assert counts == {k: v for k, v in document["summary"]["outcomes"].items() if v}


def test_label_values_are_escaped_and_the_write_is_atomic(tmp_path: Path) -> None:
    document = {
        "started": "2026-12-02T01:00:00+00:00",
        "duration_s": 1.5,
        "exit_status": 1,
        "results": [
            {"host": 'we"ird\\host', "check": "test_x", "nodeid": "s.py::test_x[a\nb]", "outcome": "failed",
             "gpu": None, "metrics": {"flag": True, "text": "v1", "bw_gbps": 12.5}, "duration_s": 0.1,
             "diagnosis": {"found": "x", "cause": "", "fix": ""}},
        ],
    }  # fmt: skip
    target = tmp_path / "gpuhost.prom"
    target.write_text("old\n")
    write_textfile(target, render(document))
    families = {f.name: f for f in text_string_to_metric_families(target.read_text())}
    (sample,) = families["gpuhost_check_failed"].samples
    assert sample.labels["host"] == 'we"ird\\host' and sample.labels["test"] == "test_x[a\nb]"
    assert sample.labels["action"] == "drain-and-investigate"  # an unmapped failure: the default
    names = {s.labels["name"]: s.value for s in families["gpuhost_measurement"].samples}
    assert names == {"flag": 1.0, "bw_gbps": 12.5}
    assert [p.name for p in tmp_path.iterdir()] == ["gpuhost.prom"]


def test_xunit2_keeps_the_jenkins_schema_and_names_actions_in_the_suite(
    gpuhost_pytester: GpuhostPytester, tmp_path: Path
) -> None:
    """pytest's default family: no test-case properties (its schema has none), the suite lists them."""
    import xmlschema
    from captures_support import DATA

    def remap_failed(dump: dict[str, Any]) -> None:
        dump["gpus"][0].update(remapped_rows=[0, 1, 0, 1])

    health_host(gpuhost_pytester, healthy_log("h100"), nvml_edit=remap_failed)
    junit = tmp_path / "junit.xml"
    gpuhost_pytester.run_plain(
        "-p", "pytest_gpuhost.fixtures.health", "--gpuhost-tier", "quick", "-k", "test_health",
        "--gpuhost-image", "gpuhost-test-health-absent:0", f"--junitxml={junit}",
    )  # fmt: skip
    xmlschema.XMLSchema(str(DATA / "junit-10.xsd")).validate(str(junit))
    root = ET.parse(junit).getroot()
    assert not [p for case in root.iter("testcase") for p in case.iter("property")]
    suite = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert suite["gpuhost.action"] == "replace-gpu"
    assert suite["gpuhost.action[test_row_remapping[gpu0-042f1913]]"] == "replace-gpu"
    assert not [n for n, v in suite.items() if str(n).startswith("gpuhost.action[") and v == "none"]
