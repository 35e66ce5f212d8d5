"""NVLink state from NVML, in the quick tier: every link of the model up, no link errors."""

from __future__ import annotations

import pytest

from pytest_gpuhost.diagnosis import fail
from pytest_gpuhost.facts.model import GpuInfo, HostFacts
from pytest_gpuhost.facts.nvml import load_pynvml
from pytest_gpuhost.hardware import nvlink
from pytest_gpuhost.profiles import ProfileSet, profile_for
from pytest_gpuhost.settings import Settings
from pytest_gpuhost.timeouts import NativeCallTimeout, call_with_timeout

pytestmark = [pytest.mark.gpuhost_quick, pytest.mark.gpuhost_needs("gpu_listing")]


def test_nvlink_state(
    gpuhost_facts: HostFacts, gpuhost_settings: Settings, gpuhost_profiles: ProfileSet, gpu: GpuInfo
) -> None:
    """Links up equal the model's count (18 on H100/H200 SXM); zero replay, recovery and CRC errors."""
    label = f"GPU {gpu.index} ({gpu.uuid})"
    profile, _ = profile_for(gpuhost_profiles, gpuhost_facts, gpu)
    if not profile.nvlink_links:
        pytest.skip(f"{label}: {profile.name} has no NVLinks in its profile")
    if not gpuhost_facts.nvml.ok:
        pytest.skip(f"{label}: NVML is not available here (NVLink state is read through NVML)")
    try:
        nvml = load_pynvml()
        state = call_with_timeout(
            lambda: nvlink.read_nvlink(nvml, gpu.uuid), gpuhost_settings.timeout, "NVML NVLink read"
        )
    except (ImportError, NativeCallTimeout) as exc:
        fail(
            f"{label}: reading the NVLink state failed: {exc}",
            "NVML did not answer",
            "`nvidia-smi nvlink -s`",
        )
    except Exception as exc:  # an NVMLError of a GPU gone bad
        fail(
            f"{label}: NVML: {exc}",
            "the GPU does not answer NVML",
            "`nvidia-smi -q`; reset the GPU or reboot",
        )
    count = len(gpuhost_facts.gpus)  # the host's, not the selection: one selected GPU still has peers
    metrics, finding, skip = nvlink.verdict(state, label, profile, count)
    if metrics:
        print("gpuhost.metric " + " ".join(metrics))
    if skip is not None:
        pytest.skip(skip)
    if finding is not None:
        fail(finding.found, finding.cause, finding.fix)
