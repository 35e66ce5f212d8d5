"""The JUnit XML report: valid for Jenkins' xUnit plugin, one case per check and GPU, host inventory.

``tests/data/junit-10.xsd`` is the JUnit schema the Jenkins xUnit plugin validates reports against.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest
import xmlschema
from captures_support import DATA, capture_devnodes, load_nvml_dump
from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite
from pytester_support import GpuhostPytester

SCHEMA = DATA / "junit-10.xsd"
PER_GPU_CHECKS = {"test_gpu_device_node", "test_nvidia_smi_matches_nvml", "test_persistence_mode"}
HOST_CHECKS = {
    "test_nvidia_gpus_on_pci_bus",
    "test_nvidia_kernel_module_loaded",
    "test_nouveau_not_loaded",
    "test_driver_version_file_readable",
    "test_device_nodes",
    "test_nvml_initialises",
    "test_nvidia_smi_runs",
}


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(SCHEMA))


def run_with_junit(gpuhost_pytester: GpuhostPytester, *args: str) -> tuple[Path, TestSuite]:
    report = gpuhost_pytester.pytester.path / "report.xml"
    gpuhost_pytester.run(f"--junitxml={report}", *args)
    (suite,) = list(JUnitXml.fromfile(str(report)))
    return report, suite


def cases(suite: TestSuite) -> list[TestCase]:
    return list(suite)


def properties(suite: TestSuite) -> dict[str, str]:
    # junitparser's properties() is untyped.
    found: Any = cast(Any, suite).properties()
    return {str(prop.name): str(prop.value) for prop in found}


def check_name(case: TestCase) -> str:
    return str(case.name).split("[", 1)[0]


def test_schema_rejects_what_it_should(schema: xmlschema.XMLSchema) -> None:
    """The schema is strict enough to catch a broken report (a testcase without a name)."""
    assert not schema.is_valid(
        "<testsuites><testsuite name='x' tests='1' failures='0' errors='0'><testcase/></testsuite></testsuites>"
    )
    assert schema.is_valid(
        "<testsuites><testsuite name='x' tests='1' failures='0' errors='0'><testcase name='t'/></testsuite></testsuites>"
    )


def test_h100_report_is_valid_with_one_case_per_check(
    gpuhost_pytester: GpuhostPytester, schema: xmlschema.XMLSchema
) -> None:
    gpuhost_pytester.setup("h100")
    report, suite = run_with_junit(gpuhost_pytester)
    schema.validate(str(report))
    names = Counter(str(case.name) for case in cases(suite))
    assert set(names.values()) == {1}
    assert {check_name(case) for case in cases(suite)} == HOST_CHECKS | PER_GPU_CHECKS
    assert {str(case.name) for case in cases(suite) if check_name(case) in PER_GPU_CHECKS} == {
        f"{check}[gpu0-042f1913]" for check in PER_GPU_CHECKS
    }
    assert all(case.is_passed for case in cases(suite))
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (10, 0, 0, 0)
    assert {str(case.classname).rsplit(".", 1)[-1] for case in cases(suite)} == {
        "test_step_1_1_hardware",
        "test_step_2_1_driver",
    }


def test_h100_report_has_the_host_inventory(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    _, suite = run_with_junit(gpuhost_pytester)
    dump = load_nvml_dump("h100")
    gpu = dump["gpus"][0]
    assert properties(suite) == {
        "gpuhost.host": "fake-h100",
        "gpuhost.driver": dump["driver"],
        "gpuhost.cuda": "13.0",
        "gpuhost.gpu_count": "1",
        "gpuhost.gpu0": f"{gpu['name']} {gpu['uuid']} 0000:00:06.0",
        "gpuhost.action": "none",  # the host's action (docs/actions.md)
    }


def test_h200x2_report_has_two_cases_per_gpu_check(
    gpuhost_pytester: GpuhostPytester, schema: xmlschema.XMLSchema
) -> None:
    gpuhost_pytester.setup("h200x2")
    report, suite = run_with_junit(gpuhost_pytester)
    schema.validate(str(report))
    per_check = Counter(check_name(case) for case in cases(suite))
    assert per_check == {**dict.fromkeys(HOST_CHECKS, 1), **dict.fromkeys(PER_GPU_CHECKS, 2)}
    for check in PER_GPU_CHECKS:
        assert {str(c.name) for c in cases(suite) if check_name(c) == check} == {
            f"{check}[gpu0-c5fa4f09]",
            f"{check}[gpu1-1b94c864]",
        }
    props = properties(suite)
    assert props["gpuhost.gpu_count"] == "2"
    assert props["gpuhost.gpu1"] == "NVIDIA H200 GPU-1b94c864-4a5c-bea0-af8d-f4521d70170a 0000:00:07.0"


def test_failures_and_skips_are_valid_and_carry_the_diagnosis(
    gpuhost_pytester: GpuhostPytester, schema: xmlschema.XMLSchema
) -> None:
    _, modules = capture_devnodes("h100")
    gpuhost_pytester.setup("h100", modules=[*modules, "nouveau"])
    report, suite = run_with_junit(gpuhost_pytester, "--gpuhost-expect-gpus", "2")
    schema.validate(str(report))
    failed = {check_name(c): c for c in cases(suite) if c.is_failure}
    assert set(failed) == {"test_nouveau_not_loaded", "test_nvidia_gpus_on_pci_bus"}
    (result,) = failed["test_nouveau_not_loaded"].result
    assert isinstance(result, Failure)
    assert "FOUND: the open-source nouveau module is loaded" in (result.text or "")
    assert "blacklist" in (result.text or "")


def test_no_gpu_report_is_valid(gpuhost_pytester: GpuhostPytester, schema: xmlschema.XMLSchema) -> None:
    gpuhost_pytester.setup(None)
    report, suite = run_with_junit(gpuhost_pytester)
    schema.validate(str(report))
    outcomes = Counter(type(r).__name__ for case in cases(suite) for r in case.result)
    assert outcomes == {"Failure": 1, "Skipped": 9}
    skipped: list[Any] = [r for case in cases(suite) for r in case.result if isinstance(r, Skipped)]
    assert all("test_nvidia_gpus_on_pci_bus" in (r.message or "") for r in skipped)
    assert not any(isinstance(r, Error) for case in cases(suite) for r in case.result)
    assert properties(suite)["gpuhost.gpu_count"] == "0"
    assert properties(suite)["gpuhost.driver"] == "none"


def test_measured_values_are_in_each_cases_system_out(
    gpuhost_pytester: GpuhostPytester, schema: xmlschema.XMLSchema
) -> None:
    gpuhost_pytester.setup("h100")
    path, suite = run_with_junit(gpuhost_pytester)
    schema.validate(str(path))
    persistence = next(c for c in cases(suite) if check_name(c) == "test_persistence_mode")
    assert "gpuhost.metric persistence_mode=True" in (persistence.system_out or "")


def test_a_junit_logging_the_user_chose_wins(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    _, suite = run_with_junit(gpuhost_pytester, "-o", "junit_logging=no")
    assert not any(c.system_out for c in cases(suite))
