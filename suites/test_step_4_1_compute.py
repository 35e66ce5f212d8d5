"""Guide step 4.1: a matmul inside a container matches a float64 CPU reference, on every GPU."""

from __future__ import annotations

import pytest

from pytest_gpuhost.compute import numerics
from pytest_gpuhost.diagnosis import Diagnosis, fail, warn
from pytest_gpuhost.facts.model import GpuInfo, HostFacts
from pytest_gpuhost.facts.selection import select_gpus
from pytest_gpuhost.fixtures.workloads import MATMUL_DTYPES, MatmulRuns
from pytest_gpuhost.hardware import floors
from pytest_gpuhost.profiles import ProfileSet, profile_for
from pytest_gpuhost.settings import Settings

pytestmark = [pytest.mark.gpuhost_container, pytest.mark.gpuhost_needs("gpu_listing")]


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
    gpuhost_matmul: MatmulRuns,
    gpuhost_profiles: ProfileSet,
    gpuhost_facts: HostFacts,
    gpuhost_settings: Settings,
    gpu: GpuInfo,
    dtype: str,
) -> None:
    """C = A @ B on the GPU is within the dtype's rounding-error bound of a float64 CPU reference, at
    no less than the profile's floor of the dense peak and within 10 % of the host's fastest GPU."""
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
    profile, defaulted = profile_for(gpuhost_profiles, gpuhost_facts, gpu)
    expected = profile.tflops.get(dtype)
    if expected:
        print(f"gpuhost.metric matmul.expected_tflops={expected} profile={profile.key}")
        least = profile.floor_tflops(dtype)
        floored = least is not None and (result.size or 0) >= FLOOR_MIN_SIZE
        if floored and least is not None and result.tflops is not None and result.tflops < least:
            fail(
                f"{label}: {dtype} matmul computes correctly but at {result.tflops:.3g} TFLOP/s, below the floor "
                f"{least:.3g} ({profile.tflops_floor.get(dtype):.0%} of {profile.name}'s dense {expected:g})",
                "low clocks: power or thermal capping, a GPU stuck in a low performance state, or another "
                "process sharing the GPU",
                "read the throttle reasons with `nvidia-smi -q -d PERFORMANCE,CLOCK,POWER`; check cooling, the "
                "power limit and `nvidia-smi` for other processes",
            )
        slow = numerics.perf_finding(result.tflops, expected, profile.tflops_tolerance, label)
        if slow is not None:
            warn(
                slow, "low clocks: power or thermal capping, or a GPU in a low performance state", "see above"
            )
    elif defaulted:
        print(f"gpuhost.note {defaulted}")
    _cross_gpu(gpuhost_matmul, gpuhost_facts, gpuhost_settings, profile.cross_gpu_tolerance, gpu, dtype)


FLOOR_MIN_SIZE = 4096  # smaller matmuls cannot fill a data-centre GPU: below this, speed only warns


def _cross_gpu(
    runs: MatmulRuns, facts: HostFacts, settings: Settings, tolerance: float, gpu: GpuInfo, dtype: str
) -> None:
    """Every GPU within ``tolerance`` of the host's fastest for this dtype (a slow GPU among fast ones)."""
    speeds: dict[str, float] = {}
    for other in select_gpus(facts.gpus, settings.gpus):
        outcome = runs.get(other)
        if isinstance(outcome, Diagnosis) or outcome.record is None:
            continue
        try:
            found = numerics.report_from_record(outcome.record).result(dtype)
        except numerics.WorkloadOutputError:
            continue
        if found is not None and found.tflops is not None and found.status == "ok":
            speeds[f"GPU {other.index} ({other.uuid})"] = found.tflops
    label = f"GPU {gpu.index} ({gpu.uuid})"
    for name, value, best in floors.slower_than_best(speeds, tolerance):
        if name == label:
            fail(
                f"{label}: {dtype} matmul at {value:.3g} TFLOP/s, more than {tolerance:.0%} below the host's "
                f"fastest GPU ({best:.3g} TFLOP/s)",
                "one GPU slower than its identical neighbours: a power cap, low clocks or a degraded GPU",
                "compare `nvidia-smi -q -d CLOCK,POWER,PERFORMANCE` of this GPU with the others; re-run; if it "
                "repeats, drain the GPU and run `dcgmi diag -r 3`",
            )
