"""Baselines: what is recorded, how a re-check compares with it, and the suite check that fails on
regressions, run for real in ``pytest --gpuhost`` against a fake H100 host.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytester_support import GpuhostPytester
from report_support import REGISTER, report_args, set_report_env

from pytest_gpuhost.profiles import load_profiles
from pytest_gpuhost.reporting.baseline import (
    BASELINE_SCHEMA,
    BaselineError,
    Finding,
    compare,
    figure_key,
    figure_kind,
    load_baseline,
    make_baseline,
    profile_tolerances,
    scope_profiles,
    split_key,
)

SUITE = Path(__file__).resolve().parent.parent / "suites" / "test_zz_baseline.py"
MATMUL = "gpu0/test_matmul[dtype=bfloat16]/matmul.tflops"
BURN_TEMP = "gpu0/test_burn/burn.temp_max_c"
BURN_POWER = "gpu0/test_burn/burn.power_mean_w"


def result(
    check: str,
    metrics: dict[str, Any],
    *,
    gpu: int | None = 0,
    outcome: str = "passed",
    host: str = "node-a",
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "nodeid": f"suites/test_x.py::{check}",
        "check": check,
        "group": "test_x",
        "host": host,
        "gpu": {"index": gpu, "uuid": f"GPU-{gpu}"} if gpu is not None else None,
        "params": params or {},
        "outcome": outcome,
        "metrics": metrics,
    }


def report(
    tflops: float = 700.0,
    temp: float = 70.0,
    power: float = 650.0,
    *,
    host: str = "node-a",
    driver: str = "580.159.04",
    engine: str = "28.3.3",
    uuid: str = "GPU-0",
    outcome: str = "passed",
) -> dict[str, Any]:
    inventory = {
        "host": host,
        "driver": driver,
        "cuda": "13.0",
        "nvml": "13.580.159.04",
        "gpus": [{"index": 0, "uuid": uuid, "name": "NVIDIA H100 80GB HBM3", "pci": "0000:00:06.0"}],
    }
    return {
        "schema": "pytest-gpuhost/report/v1",
        "created": "2026-11-23T10:00:00+00:00",
        "hosts": [inventory],
        "results": [
            result(
                "test_matmul",
                {"matmul.tflops": tflops, "n": 8192},
                host=host,
                params={"dtype": "bfloat16"},
                outcome=outcome,
            ),
            result("test_burn", {"burn.temp_max_c": temp, "burn.power_mean_w": power, "ok": True}, host=host),
            result(
                "test_docker_versions",
                {"docker.engine": engine, "docker.containerd": "1.7.27"},
                gpu=None,
                host=host,
            ),
            result("test_persistence_mode", {"persistence_mode": True}, host=host),
        ],
    }


def tolerance(
    performance: float = 0.1, temperature: float = 5.0, power: float = 0.1
) -> Callable[[str], float]:
    def tolerance_for(key: str) -> float:
        return {"performance": performance, "temperature": temperature, "power": power}[
            figure_kind(split_key(key)[2]) or ""
        ]

    return tolerance_for


def kinds(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.kind, f.key) for f in findings]


# -- recording -------------------------------------------------------------------------------------


def test_a_baseline_holds_versions_and_tracked_figures() -> None:
    baseline = make_baseline(report())
    assert baseline["schema"] == BASELINE_SCHEMA
    assert baseline["report_created"] == "2026-11-23T10:00:00+00:00"
    assert baseline["hosts"]["node-a"] == {
        "versions": {
            "driver": "580.159.04",
            "cuda": "13.0",
            "nvml": "13.580.159.04",
            "gpu0.name": "NVIDIA H100 80GB HBM3",
            "gpu0.uuid": "GPU-0",
            "docker.engine": "28.3.3",
            "docker.containerd": "1.7.27",
        },
        "figures": {MATMUL: 700.0, BURN_TEMP: 70.0, BURN_POWER: 650.0},
    }


def test_a_failed_checks_figures_are_not_recorded() -> None:
    figures = make_baseline(report(outcome="failed"))["hosts"]["node-a"]["figures"]
    assert MATMUL not in figures and BURN_TEMP in figures


def test_figure_names_say_how_they_compare() -> None:
    assert figure_kind("matmul.tflops") == figure_kind("nccl.bus_gb_s") == "performance"
    assert figure_kind("burn.temp_max_c") == figure_kind("Burn.Memory_Temp_C") == "temperature"
    assert figure_kind("burn.power_mean_w") == "power"
    assert figure_kind("persistence_mode") is None and figure_kind("n") is None
    key = figure_key(result("test_x", {}, params={"b": 1, "a": "x/y"}), "m.tflops")
    assert key == "gpu0/test_x[a=x/y,b=1]/m.tflops"
    assert split_key(key) == ("gpu0", "test_x[a=x/y,b=1]", "m.tflops")
    assert figure_key(result("test_y", {}, gpu=None), "q") == "host/test_y/q"


# -- comparing ---------------------------------------------------------------------------------------


def test_the_same_figures_give_no_finding() -> None:
    assert compare(make_baseline(report()), report(650.0, 74.0, 600.0), tolerance()) == []


def test_a_slower_matmul_beyond_tolerance_is_a_regression() -> None:
    findings = compare(make_baseline(report()), report(tflops=600.0), tolerance())
    assert kinds(findings) == [("regression", MATMUL)]
    (finding,) = findings
    assert (finding.old, finding.new, finding.host, finding.fails) == (700.0, 600.0, "node-a", True)
    assert finding.message == f"{MATMUL}: slower than the baseline: 700 -> 600 (-14.3%, tolerance 10%)"
    assert compare(make_baseline(report()), report(tflops=600.0), tolerance(performance=0.2)) == []


def test_a_failed_checks_figures_are_still_compared() -> None:
    findings = compare(make_baseline(report()), report(tflops=300.0, outcome="failed"), tolerance())
    assert kinds(findings) == [("regression", MATMUL)]


def test_temperatures_compare_in_degrees() -> None:
    findings = compare(make_baseline(report()), report(temp=76.0), tolerance())
    assert kinds(findings) == [("regression", BURN_TEMP)]
    assert (
        findings[0].message == f"{BURN_TEMP}: hotter than the baseline: 70 -> 76 °C (+6.0 °C, tolerance 5 °C)"
    )
    cooler = compare(make_baseline(report()), report(temp=60.0), tolerance())
    assert kinds(cooler) == [("improvement", BURN_TEMP)] and not cooler[0].fails


def test_less_power_under_load_is_a_regression_more_is_not_an_improvement() -> None:
    assert kinds(compare(make_baseline(report()), report(power=500.0), tolerance())) == [
        ("regression", BURN_POWER)
    ]
    assert compare(make_baseline(report()), report(power=700.0), tolerance()) == []


def test_a_faster_gpu_is_an_improvement() -> None:
    findings = compare(make_baseline(report()), report(tflops=800.0), tolerance())
    assert kinds(findings) == [("improvement", MATMUL)]
    assert "faster than the baseline: 700 -> 800 (+14.3%" in findings[0].message


def test_version_changes_are_reported() -> None:
    findings = compare(
        make_baseline(report()), report(driver="590.10", engine="29.0.0", uuid="GPU-new"), tolerance()
    )
    assert kinds(findings) == [
        ("version-change", "version/docker.engine"),
        ("version-change", "version/driver"),
        ("version-change", "version/gpu0.uuid"),
    ]
    assert findings[1].message == "driver changed since the baseline: 580.159.04 -> 590.10"
    assert not any(f.fails for f in findings)


def test_what_a_run_did_not_measure_is_missing_not_failing() -> None:
    partial = report()
    partial["results"] = [r for r in partial["results"] if r["check"] != "test_burn" and r["gpu"] is not None]
    findings = compare(make_baseline(report()), partial, tolerance())
    assert kinds(findings) == [("missing", BURN_POWER), ("missing", BURN_TEMP)]
    assert findings[1].message == f"{BURN_TEMP}: in the baseline (70) but not measured in this run"


def test_hosts_pair_by_name_or_as_the_only_one() -> None:
    renamed = compare(make_baseline(report()), report(host="node-a.example"), tolerance())
    assert kinds(renamed) == [("version-change", "version/host")]
    fleet = {
        "schema": BASELINE_SCHEMA,
        "hosts": {"node-a": {}, **make_baseline(report(host="node-b"))["hosts"]},
    }
    findings = compare(fleet, report(host="node-b", tflops=100.0), tolerance())
    assert kinds(findings) == [("missing", "host"), ("regression", MATMUL)]
    assert findings[1].host == "node-b"


def test_a_fleet_baseline_reports_a_node_that_is_gone() -> None:
    hosts = {**make_baseline(report())["hosts"], **make_baseline(report(host="node-b"))["hosts"]}
    baseline = {"schema": BASELINE_SCHEMA, "hosts": hosts}
    two = report()
    two["hosts"].append({**two["hosts"][0], "host": "node-c"})
    findings = compare(baseline, two, tolerance())
    assert kinds(findings) == [("missing", "host")]
    assert findings[0].message == "host node-b is in the baseline but not in this run"


def test_tolerances_come_from_the_gpus_profile(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(
        "[h100-sxm.baseline]\nperformance_tolerance = 0.5  # noisy lab\ntemperature_tolerance_c = 2  # strict\n"
    )
    current = report(tflops=600.0, temp=73.0)
    shipped = profile_tolerances(scope_profiles(current, load_profiles()))
    assert (shipped(MATMUL), shipped(BURN_TEMP), shipped(BURN_POWER)) == (0.1, 5.0, 0.1)
    assert shipped("host/test_y/docker.pull_gb_s") == 0.1  # host-wide figures use the default profile
    site_tolerance = profile_tolerances(scope_profiles(current, load_profiles([site])))
    assert kinds(compare(make_baseline(report()), current, site_tolerance)) == [("regression", BURN_TEMP)]


# -- baseline files ------------------------------------------------------------------------------


def test_a_baseline_file_is_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(make_baseline(report())))
    assert load_baseline(good)["hosts"]["node-a"]["figures"][MATMUL] == 700.0
    with pytest.raises(BaselineError, match=r"cannot read the baseline .*missing\.json"):
        load_baseline(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(BaselineError, match=r"bad\.json is not JSON"):
        load_baseline(bad)
    bad.write_text(json.dumps(report()))
    with pytest.raises(
        BaselineError, match=r"schema 'pytest-gpuhost/report/v1', expected 'pytest-gpuhost/baseline/v1'"
    ):
        load_baseline(bad)


# -- the suite check, run for real ------------------------------------------------------------------

MEASURES = """
import os

import pytest

pytestmark = pytest.mark.gpuhost_quick


def test_docker_versions():
    print(f"gpuhost.metric docker.engine={os.environ['FAKE_ENGINE']}")


def test_matmul(gpu):
    print(f"gpuhost.metric matmul.tflops={os.environ['FAKE_TFLOPS']}")


def test_burn(gpu):
    print(f"gpuhost.metric burn.temp_max_c={os.environ['FAKE_TEMP']} burn.power_mean_w=650")
"""


class BaselineRun:
    """The measuring checks and the shipped baseline check, run against a fake H100."""

    def __init__(self, gpuhost_pytester: GpuhostPytester, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gpuhost_pytester = gpuhost_pytester
        self.monkeypatch = monkeypatch
        self.file = gpuhost_pytester.pytester.path / "baselines" / "node.json"
        gpuhost_pytester.setup("h100", extra_conftest=REGISTER)
        gpuhost_pytester.pytester.makepyfile(test_measures=MEASURES, test_zz_baseline=SUITE.read_text())

    def run(self, *, save: bool = False, compare: bool = False, **values: str) -> pytest.RunResult:
        env = {"ENGINE": "28.3.3", "TFLOPS": "700.0", "TEMP": "70"} | {
            k.upper(): v for k, v in values.items()
        }
        for name, value in env.items():
            self.monkeypatch.setenv(f"FAKE_{name}", value)
        save_to = self.file if save else None
        compare_with = self.file if compare else None
        set_report_env(self.monkeypatch, None, save_baseline=save_to, baseline=compare_with)
        args = report_args(None, save_baseline=save_to, baseline=compare_with)
        return self.gpuhost_pytester.run_plain("-rs", "test_measures.py", "test_zz_baseline.py", *args)


@pytest.fixture
def baseline_run(gpuhost_pytester: GpuhostPytester, monkeypatch: pytest.MonkeyPatch) -> BaselineRun:
    return BaselineRun(gpuhost_pytester, monkeypatch)


def test_without_a_baseline_the_check_skips(baseline_run: BaselineRun) -> None:
    result = baseline_run.run()
    result.assert_outcomes(passed=3, skipped=1)
    result.stdout.fnmatch_lines(["*no baseline to compare with: --gpuhost-baseline FILE not given"])


def test_a_saved_baseline_passes_its_own_recheck(baseline_run: BaselineRun) -> None:
    saved = baseline_run.run(save=True)
    saved.assert_outcomes(passed=3, skipped=1)
    saved.stdout.fnmatch_lines([f"gpuhost: baseline saved: {baseline_run.file}"])
    baseline = load_baseline(baseline_run.file)
    host = baseline["hosts"]["fake-h100"]
    assert host["figures"] == {
        "gpu0/test_matmul/matmul.tflops": 700.0,
        "gpu0/test_burn/burn.temp_max_c": 70,
        "gpu0/test_burn/burn.power_mean_w": 650,
    }
    assert host["versions"]["driver"] == "580.159.04" and host["versions"]["docker.engine"] == "28.3.3"
    recheck = baseline_run.run(compare=True, tflops="660.0", temp="73")
    recheck.assert_outcomes(passed=4)


def test_a_regression_fails_with_both_values(baseline_run: BaselineRun) -> None:
    baseline_run.run(save=True).assert_outcomes(passed=3, skipped=1)
    result = baseline_run.run(compare=True, tflops="500.0", temp="80", engine="29.0.0")
    result.assert_outcomes(passed=3, failed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "FOUND: gpu0/test_burn/burn.temp_max_c: hotter than the baseline: 70 -> 80 °C (+10.0 °C, tolerance 5 °C); "
            "gpu0/test_matmul/matmul.tflops: slower than the baseline: 700 -> 500 (-28.6%, tolerance 10%)",
            "CAUSE: the GPU is held back*",
            "FIX:*save a new baseline with --gpuhost-save-baseline FILE",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*GpuhostWarning: FOUND: docker.engine changed since the baseline: 28.3.3 -> 29.0.0"]
    )


def test_an_unreadable_baseline_fails_the_check(baseline_run: BaselineRun) -> None:
    baseline_run.file.parent.mkdir(parents=True, exist_ok=True)
    baseline_run.file.write_text("not json")
    result = baseline_run.run(compare=True)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        ["FOUND: the baseline * is not JSON*", "FIX:   record one from an accepted run*"]
    )
