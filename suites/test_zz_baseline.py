"""Guide step 4.2: a periodic re-check compares this run with the baseline saved when the host was accepted.

The module's name sorts last, so the checks that measure run before it and their figures are
already in the run's results when it compares them.
"""

from __future__ import annotations

import pytest

from pytest_gpuhost.diagnosis import fail, warn
from pytest_gpuhost.profiles import ProfileSet
from pytest_gpuhost.reporting.baseline import (
    BaselineError,
    compare,
    load_baseline,
    profile_tolerances,
    scope_profiles,
)
from pytest_gpuhost.reporting.json_report import JsonReport

pytestmark = pytest.mark.gpuhost_quick

SAVE_FIX = "record one from an accepted run: `pytest --gpuhost --gpuhost-save-baseline FILE`"


def test_baseline_regressions(gpuhost_report: JsonReport, gpuhost_profiles: ProfileSet) -> None:
    """Changed versions are warnings; figures worse than the baseline beyond the GPU profile's tolerance fail."""
    path = gpuhost_report.baseline_path
    if path is None:
        pytest.skip("no baseline to compare with: --gpuhost-baseline FILE not given")
    try:
        baseline = load_baseline(path)
    except BaselineError as exc:
        fail(str(exc), "the file was moved or truncated, or is not a baseline", SAVE_FIX)
    report = gpuhost_report.build()
    findings = compare(baseline, report, profile_tolerances(scope_profiles(report, gpuhost_profiles)))
    counts = {
        kind: sum(f.kind == kind for f in findings)
        for kind in ("regression", "version-change", "missing", "improvement")
    }
    print(
        f"gpuhost.metric baseline.file={str(path)!r} "
        + " ".join(f"baseline.{kind.replace('-', '_')}s={count}" for kind, count in counts.items())
    )
    for finding in findings:
        print(f"{finding.kind}: {finding.message}")
    changes = [f.message for f in findings if f.kind == "version-change"]
    if changes:
        warn(
            "; ".join(changes),
            "the host was upgraded or changed since the baseline was saved",
            "if the change was intended and this run passes, save a new baseline: --gpuhost-save-baseline FILE",
        )
    regressions = [f.message for f in findings if f.fails]
    if regressions:
        fail(
            "; ".join(regressions),
            "the GPU is held back (power cap, clocks, thermal throttling from airflow or a failing fan), or a "
            "driver or firmware change slowed it",
            "compare `nvidia-smi -q -d PERFORMANCE,POWER,TEMPERATURE,CLOCK` under load with the baseline host; "
            "check inlet air, power caps (`nvidia-smi -q -d POWER`) and clock locks; if the new figures are "
            "intended, save a new baseline with --gpuhost-save-baseline FILE",
        )
