"""The hardware tier: each GPU's HBM and PCIe measured against floors, its memory pattern-tested.

Every check runs in a container through the chosen GPU access mode, with the workload image's
PyTorch (``workloads/memory.py``, one run per GPU shared by the three checks).
"""

from __future__ import annotations

import pytest

from pytest_gpuhost.diagnosis import Diagnosis, fail
from pytest_gpuhost.facts.health_gather import read_live
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.facts.nvml import load_pynvml
from pytest_gpuhost.fixtures.hardware import AllReduceRun, MemoryRuns, P2PRun
from pytest_gpuhost.hardware import allreduce, memory, nvlink, p2p
from pytest_gpuhost.profiles import ProfileSet, profile_for
from pytest_gpuhost.stash import SESSION_KEY
from pytest_gpuhost.timeouts import call_with_timeout

pytestmark = [pytest.mark.gpuhost_hardware, pytest.mark.gpuhost_needs("gpu_listing")]


def _label(gpu: GpuInfo) -> str:
    return f"GPU {gpu.index} ({gpu.uuid})"


def _outcome(runs: MemoryRuns, gpu: GpuInfo) -> memory.MemoryOutcome:
    outcome = runs.get(gpu)
    record = outcome.record
    if record is None or "error" in record:
        d = outcome.failure
        if d is None:
            fail(
                f"{_label(gpu)}: the memory workload printed no result",
                "the workload crashed",
                "run it by hand",
            )
        fail(d.found if _label(gpu) in d.found else f"{_label(gpu)}: {d.found}", d.cause, d.fix)
    return outcome


def _emit(metrics: list[str]) -> None:
    if metrics:
        print("gpuhost.metric " + " ".join(metrics))


def test_hbm_bandwidth(gpuhost_memory: MemoryRuns, gpuhost_profiles: ProfileSet, gpu: GpuInfo) -> None:
    """A device-to-device copy reaches the profile's floor and is within 10 % of the host's best GPU."""
    outcome = _outcome(gpuhost_memory, gpu)
    assert outcome.record is not None
    host = {
        _label(g): v for g, o in gpuhost_memory.all().items() if (v := memory.hbm_gbps(o.record)) is not None
    }
    profile, defaulted = profile_for(gpuhost_profiles, gpuhost_memory.facts, gpu)
    metrics, finding = memory.hbm_verdict(_label(gpu), outcome.record, profile, host)
    _emit([*metrics, f"profile={profile.key}"])
    if defaulted:
        print(f"gpuhost.note {defaulted}")
    if finding is not None:
        fail(finding.found, finding.cause, finding.fix)


def test_hbm_patterns(gpuhost_memory: MemoryRuns, gpu: GpuInfo) -> None:
    """Six patterns over >= 90 % of the free memory read back exactly; no ECC counter grows."""
    outcome = _outcome(gpuhost_memory, gpu)
    metrics, finding = memory.pattern_verdict(_label(gpu), outcome)
    _emit(metrics)
    if finding is not None:
        fail(finding.found, finding.cause, finding.fix)


@pytest.mark.parametrize("direction", ["h2d", "d2h"])
def test_pcie_bandwidth(
    gpuhost_memory: MemoryRuns, gpuhost_profiles: ProfileSet, gpu: GpuInfo, direction: str
) -> None:
    """Pinned host-to-device and device-to-host copies reach the floor of the link they trained to."""
    outcome = _outcome(gpuhost_memory, gpu)
    assert outcome.record is not None
    profile, _ = profile_for(gpuhost_profiles, gpuhost_memory.facts, gpu)
    fallback: tuple[int | None, int | None] = (None, None)
    if memory.link_of(outcome.record)[0] is None:  # the container could not see sysfs: ask the host
        runs = gpuhost_memory
        live = read_live(runs.host, gpu, runs.settings.timeout, use_nvml=runs.facts.nvml.ok).pcie
        fallback = (live.current_gen, live.current_width) if live is not None else fallback
    metrics, finding = memory.pcie_verdict(_label(gpu), outcome.record, direction, profile, fallback)
    _emit(metrics)
    if finding is not None:
        fail(finding.found, finding.cause, finding.fix)


def test_nccl_all_reduce(
    gpuhost_memory: MemoryRuns, gpuhost_allreduce: AllReduceRun, gpuhost_profiles: ProfileSet
) -> None:
    """An all-reduce over all selected GPUs (one process each, NCCL) is exact and meets its bus-bandwidth floor."""
    gpus = gpuhost_memory.gpus
    if len(gpus) < 2:
        pytest.skip(f"an all-reduce needs at least 2 GPUs; {len(gpus)} selected")
    record, failure = gpuhost_allreduce.get()
    if record is None or "error" in record:
        d = failure or Diagnosis("the all-reduce workload printed no result", "it crashed", "run it by hand")
        fail(
            d.found,
            d.cause + "; NCCL inside a container may also need a larger /dev/shm",
            d.fix,
        )
    profile, _ = profile_for(gpuhost_profiles, gpuhost_memory.facts, gpus[0])
    metrics, finding = allreduce.verdict(record, gpus, profile)
    _emit([*metrics, f"allreduce.ranks={len(gpus)}"])
    if finding is not None:
        fail(finding.found, finding.cause, finding.fix)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``gpu_pair``: every unordered pair of the selected GPUs (28 on an 8-GPU host)."""
    if "gpu_pair" not in metafunc.fixturenames:
        return
    session = metafunc.config.stash[SESSION_KEY]
    if session.fleet:
        params = [
            pytest.param(
                None, marks=pytest.mark.skip(reason="GPU pairs are checked one host at a time"), id="fleet"
            )
        ]
    else:
        params = p2p.pair_params(session.selected_gpus())
    metafunc.parametrize("gpu_pair", params)


def _nvlinks_up(runs: MemoryRuns, gpu: GpuInfo) -> int | None:
    """NVLinks up on ``gpu`` per NVML (the topology), or None where NVML cannot tell."""
    if not runs.facts.nvml.ok:
        return None
    try:
        nvml = load_pynvml()
        state = call_with_timeout(
            lambda: nvlink.read_nvlink(nvml, gpu.uuid), runs.settings.timeout, "NVLink read"
        )
    except Exception:  # NVML is the quick tier's subject (test_nvlink_state); here only a hint
        return None
    return None if state.unsupported else state.up


def test_gpu_pair_p2p(
    gpuhost_p2p: P2PRun, gpuhost_profiles: ProfileSet, gpu_pair: tuple[GpuInfo, GpuInfo]
) -> None:
    """Peer access works both ways and P2P copies, one way and both ways, meet the floor of the link."""
    a, b = gpu_pair
    label = f"{_label(a)} and {_label(b)}"
    record, failure = gpuhost_p2p.get()
    if record is None or "error" in record:
        d = failure or Diagnosis("the P2P workload printed no result", "it crashed", "run it by hand")
        fail(f"{label}: {d.found}", d.cause, d.fix)
    profile, _ = profile_for(gpuhost_profiles, gpuhost_p2p.runs.facts, a)
    link = p2p.pair_link(profile, _nvlinks_up(gpuhost_p2p.runs, a))
    metrics, finding = p2p.verdict(gpuhost_p2p.pair(a, b), label, link, profile)
    _emit(metrics)
    if finding is not None:
        fail(finding.found, finding.cause, finding.fix)
