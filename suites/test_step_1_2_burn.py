"""Guide step 1.2: full power on every GPU at once, every result verified, under the temperature limit."""

from __future__ import annotations

import pytest

from pytest_gpuhost.burn.criteria import CRITERIA
from pytest_gpuhost.burn.run import BurnOutcome
from pytest_gpuhost.diagnosis import fail
from pytest_gpuhost.facts.model import GpuInfo

pytestmark = [pytest.mark.gpuhost_burn, pytest.mark.gpuhost_needs("telemetry", "gpu_listing")]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_burn(gpuhost_burn: BurnOutcome, gpu: GpuInfo, criterion: str) -> None:
    """One criterion of one GPU's burn: see docs/burn.md for each."""
    burn = gpuhost_burn
    if burn.diagnosis is not None:
        fail(burn.diagnosis.found, burn.diagnosis.cause, burn.diagnosis.fix)
    verdict = burn.verdicts[gpu.uuid]
    stats = verdict.stats
    print(
        f"gpuhost.metric burn.temp_max_c={stats.max_temp_c} burn.mem_temp_max_c={stats.max_mem_temp_c} "
        f"burn.power_mean_w={stats.mean_power_w} burn.power_limit_w={stats.power_limit_w} "
        f"burn.time_to_95_s={stats.time_to_95_s} burn.stop_to_idle_s={burn.stop_to_idle_s.get(gpu.uuid)}"
    )
    if burn.guard_reason is not None:
        print(f"gpuhost.metric burn.guard_to_idle_s={burn.guard_to_idle_s.get(gpu.uuid)}")
        print(f"gpuhost.note the burn was stopped by a guard: {burn.guard_reason}")
    if verdict.workload is not None:
        w = verdict.workload
        print(f"gpuhost.metric burn.tflops={w.tflops} burn.iters={w.iters} burn.errors={w.errors}")
    print("gpuhost.summary " + verdict.report().splitlines()[0])
    for path in burn.files:
        print(f"gpuhost.file {path}")
    finding = verdict.finding(criterion)
    if finding.status == "skip":
        pytest.skip(finding.summary)
    if criterion == "verification" and burn.guard_reason is not None and verdict.workload is None:
        pytest.skip(f"not judged: the guard stopped the burn before a result ({burn.guard_reason})")
    if finding.status == "fail":
        diagnosis = finding.diagnosis
        if diagnosis is None:
            fail(finding.summary, "see the burn summary", "see docs/burn.md")
        fail(diagnosis.found, diagnosis.cause, diagnosis.fix)
    print(f"gpuhost.result {criterion}: {finding.summary}")
