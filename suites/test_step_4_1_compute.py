"""Guide step 4.1: a matmul inside a container matches a float64 CPU reference, on every GPU."""

from __future__ import annotations

import pytest

from pytest_gpuhost import numerics
from pytest_gpuhost.diagnosis import Diagnosis, fail, warn
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.profiles import ProfileSet
from pytest_gpuhost.workload_fixtures import MATMUL_DTYPES, MatmulRuns

pytestmark = [pytest.mark.container, pytest.mark.gpuhost_needs("gpu_listing")]


def _report(runs: MatmulRuns, gpu: GpuInfo) -> numerics.WorkloadReport:
    outcome = runs.get(gpu)
    if isinstance(outcome, Diagnosis):
        fail(outcome.found, outcome.cause, outcome.fix)
    if outcome.diagnosis is not None and outcome.record is None:
        fail(outcome.diagnosis.found, outcome.diagnosis.cause, outcome.diagnosis.fix)
    if outcome.record is None:
        tail = outcome.result.stdout.strip()[-300:]
        fail(f"the matmul workload printed no result: {tail!r}", "the workload crashed", "run it by hand")
    try:
        report = numerics.report_from_record(outcome.record)
    except numerics.WorkloadOutputError as exc:
        fail(
            f"the matmul workload printed an unreadable result: {exc}",
            "the workload crashed",
            "run it by hand",
        )
    label = f"GPU {gpu.index} ({gpu.uuid})"
    whole = numerics.report_finding(report, label)
    if whole is not None:
        fail(whole.found, whole.cause, whole.fix)
    if report.device is not None and report.device.uuid and report.device.uuid != gpu.uuid:
        fail(
            f"the container asked for {label} but computed on {report.device.uuid}",
            "the runtime gave the container another GPU than requested",
            "check NVIDIA_VISIBLE_DEVICES and the GPU request of the container runtime",
        )
    return report


@pytest.mark.parametrize("dtype", MATMUL_DTYPES)
def test_matmul_matches_cpu_reference(
    gpuhost_matmul: MatmulRuns, gpuhost_profiles: ProfileSet, gpu: GpuInfo, dtype: str
) -> None:
    """C = A @ B on the GPU is within the dtype's rounding-error bound of a float64 CPU reference."""
    report = _report(gpuhost_matmul, gpu)
    result = report.result(dtype)
    if result is None:
        fail(f"the workload reported nothing for {dtype}", "an old or modified workload script", "reinstall")
    label = f"GPU {gpu.index} ({gpu.uuid})"
    if result.status == "skipped":
        pytest.skip(f"{dtype} on {label}: {result.reason}")
    print(
        f"gpuhost.metric matmul.max_abs_err={result.max_abs_err} matmul.bound={result.bound} "
        f"matmul.error_to_bound={result.error_to_bound} matmul.tflops={result.tflops} n={result.size}"
    )
    finding = numerics.diagnose(result, label)
    if finding is not None:
        fail(finding.found, finding.cause, finding.fix)
    profile, defaulted = gpuhost_profiles.for_gpu(gpu.name)
    expected = profile.tflops.get(dtype)
    if expected:
        slow = numerics.perf_finding(result.tflops, expected, profile.tflops_tolerance, label)
        print(f"gpuhost.metric matmul.expected_tflops={expected} profile={profile.key}")
        if slow is not None:
            warn(
                slow, "low clocks: power or thermal capping, or a GPU in a low performance state", "see above"
            )
    elif defaulted:
        print(f"gpuhost.note {defaulted}")
