"""Nothing else runs on the GPUs before the suite measures them: no load left by a killed run, no other job.

Read once per session before the first measuring check: the suite's containers of dead sessions
are removed first, then each GPU's utilisation, power and compute processes are read. A busy GPU
fails here, naming what runs there, and the checks that would measure it are skipped.
"""

from __future__ import annotations

import pytest

from pytest_gpuhost.diagnosis import fail
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.fixtures.stray_load import StraySurvey

pytestmark = [pytest.mark.gpuhost_quick, pytest.mark.gpuhost_needs("gpu_listing")]


def test_no_stray_load(gpu: GpuInfo, gpuhost_stray_load: StraySurvey) -> None:
    """The GPU is idle: no compute process, low utilisation and power, before any load of ours."""
    survey = gpuhost_stray_load
    if survey.removed:
        print(f"gpuhost.note removed containers of dead sessions: {', '.join(survey.removed)}")
    if survey.error is not None:
        pytest.skip(f"the GPUs' activity could not be read: {survey.error}")
    seen = survey.activity.get(gpu.uuid)
    if seen is None:
        pytest.skip(f"GPU {gpu.index} ({gpu.uuid}) was not in the activity read")
    print(
        f"gpuhost.metric stray.utilization_pct={seen.utilization_pct} stray.power_w={seen.power_w} "
        f"stray.processes={len(seen.processes)}"
    )
    diagnosis = survey.diagnosis(gpu)
    if diagnosis is not None:
        fail(diagnosis.found, diagnosis.cause, diagnosis.fix)
