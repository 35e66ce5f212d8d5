"""The burn's criteria and guard on a real series: 20 s of our burn on an H100 80GB HBM3
(700 W limit, driver 580.159.04), recorded at 10 Hz by the sampler on the lent device."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytester_support import GpuhostPytester

from pytest_gpuhost.burn import series
from pytest_gpuhost.burn.criteria import CRITERIA, Finding, Thresholds, evaluate
from pytest_gpuhost.burn.guard import TemperatureGuard
from pytest_gpuhost.burn.workload import WorkloadResult

RECORDED = series.load(Path(__file__).parent / "data" / "burn" / "h100-host-20s.json")
SAMPLES = RECORDED.of(0)
START, END = RECORDED.meta["load_start_s"], RECORDED.meta["load_end_s"]
CLEAN = WorkloadResult(gpu=0, iters=1381, errors=0, tflops=602.6)


def judge(limit_c: float, workload: WorkloadResult | None = CLEAN) -> dict[str, str]:
    thresholds = Thresholds(temp_limit_c=limit_c, slowdown_c=89.0, power_limit_w=700.0, ramp_s=5.0)
    verdict = evaluate(SAMPLES, thresholds, workload, gpu=0, start=START, end=END)
    return {f.criterion: f.status for f in verdict.findings}


def test_the_recorded_burn_passes_every_criterion_at_85_c() -> None:
    status = judge(85.0)
    assert status == {
        "telemetry": "pass",
        "temperature": "pass",
        "slowdown": "pass",
        "clock-events": "info",  # only SW power cap: reported, not failed
        "fan": "skip",  # the H100 SXM has no fan of its own
        "load": "pass",  # held about 697 W of 700 W after the ramp
        "verification": "pass",
    }


def test_a_lower_limit_fails_the_temperature_criterion() -> None:
    assert max(s.temp_c or 0 for s in SAMPLES) == 65.0
    assert judge(60.0)["temperature"] == "fail"


def test_errors_fail_verification_whatever_the_telemetry() -> None:
    wrong = WorkloadResult(gpu=0, iters=1381, errors=3, tflops=602.6)
    assert judge(85.0, wrong)["verification"] == "fail"


def test_the_guard_replayed_trips_on_the_first_sample_at_the_limit() -> None:
    guard = TemperatureGuard(limit_c=55.0)
    trips = [s for s in SAMPLES if guard.observe(s) is not None]
    first_hot = next(s for s in SAMPLES if s.temp_c is not None and s.temp_c >= 55.0)
    assert [s.t for s in trips] == [first_hot.t]  # once, on that sample, and never again
    assert START < first_hot.t < END


RECORDED_BURN_CONFTEST = """

from pytest_gpuhost.burn import series as _series
from pytest_gpuhost.burn.criteria import Thresholds as _Thresholds, evaluate as _evaluate
from pytest_gpuhost.burn.run import BurnOutcome as _BurnOutcome
from pytest_gpuhost.burn.workload import WorkloadResult as _WorkloadResult


@pytest.fixture(scope="session")
def gpuhost_burn(gpuhost_facts):
    recorded = _series.load(Path({path!r}))
    gpu = gpuhost_facts.gpus[0]
    thresholds = _Thresholds(temp_limit_c={limit}, slowdown_c=89.0, power_limit_w=700.0, ramp_s=5.0)
    verdict = _evaluate(
        recorded.of(0), thresholds, {workload}, gpu=gpu.index, uuid=gpu.uuid,
        start=recorded.meta["load_start_s"], end=recorded.meta["load_end_s"],
    )
    return _BurnOutcome(verdicts={{gpu.uuid: verdict}})
"""


def run_shipped_burn_check(
    gpuhost_pytester: GpuhostPytester, limit: float, workload: str
) -> pytest.RunResult:
    path = Path(__file__).parent / "data" / "burn" / "h100-host-20s.json"
    conftest = "from pathlib import Path\nimport pytest\n" + RECORDED_BURN_CONFTEST.format(
        path=str(path), limit=limit, workload=workload
    )
    gpuhost_pytester.setup("h100", extra_conftest=conftest)
    return gpuhost_pytester.run_plain("--gpuhost-tier", "burn", "-k", "test_burn", "-rs")


def test_the_shipped_burn_check_judges_every_criterion_of_a_recorded_burn(
    gpuhost_pytester: GpuhostPytester,
) -> None:
    """Every criterion the check is parametrized by is judged: none skips as "not judged"."""
    result = run_shipped_burn_check(
        gpuhost_pytester, 85.0, "_WorkloadResult(gpu=0, iters=1381, errors=0, tflops=602.6)"
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == len(CRITERIA) - 1, result.stdout.str()
    assert outcomes.get("skipped") == 1  # the fan: the H100 SXM has none of its own
    result.stdout.fnmatch_lines(["SKIPPED*fan*"])
    assert "not judged" not in result.stdout.str()


def test_the_shipped_burn_check_fails_the_criteria_a_recorded_burn_breaks(
    gpuhost_pytester: GpuhostPytester,
) -> None:
    result = run_shipped_burn_check(
        gpuhost_pytester, 60.0, "_WorkloadResult(gpu=0, iters=1381, errors=3, tflops=602.6)"
    )
    result.assert_outcomes(passed=len(CRITERIA) - 3, failed=2, skipped=1)
    result.stdout.fnmatch_lines(["*FAILED*test_burn*temperature*", "*FAILED*test_burn*verification*"])


def test_a_criterion_name_outside_the_one_list_is_an_error_not_a_skip() -> None:
    verdict = evaluate([], Thresholds(temp_limit_c=85.0), None, gpu=0)
    assert verdict.finding("temperature").status == "skip"  # no samples: not judged, said so
    with pytest.raises(ValueError, match="unknown burn criterion 'temprature'"):
        verdict.finding("temprature")
    with pytest.raises(ValueError, match="add it to CRITERIA"):
        Finding("temprature", "pass", "")
