"""Fixtures of the hardware tier (``suites/test_hardware.py``), registered only under ``--gpuhost``.

One memory workload per GPU (HBM copy, pattern test, PCIe), run once and cached: the HBM check of
one GPU compares against every selected GPU's result, so the first use runs them all.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_gpuhost.container_fixtures import GpuContainerProbe
from pytest_gpuhost.containers import ContainerFailure, Containers, GpuRequest
from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.health import HealthFacts, gather_health
from pytest_gpuhost.facts.model import GpuInfo, HostFacts, normalize_pci_bus_id
from pytest_gpuhost.hardware.memory import MemoryOutcome, parse_faults, run_with_ecc, workload_args
from pytest_gpuhost.host import Host
from pytest_gpuhost.options import FAULT_SWITCH
from pytest_gpuhost.profiles import Profile, ProfileSet
from pytest_gpuhost.session import select_gpus
from pytest_gpuhost.settings import Settings
from pytest_gpuhost.workload_runner import run_workload

MEMORY_TIMEOUT_S = 300.0


def pci_device_id(facts: HostFacts, gpu: GpuInfo) -> str | None:
    """The GPU's PCI device ID (``0x2335``) from sysfs, found by its bus address."""
    bus = normalize_pci_bus_id(gpu.pci_bus_id) if gpu.pci_bus_id else ""
    return next((p.device_id.lower() for p in facts.pci if normalize_pci_bus_id(p.address) == bus), None)


def profile_for(profiles: ProfileSet, facts: HostFacts, gpu: GpuInfo) -> tuple[Profile, str | None]:
    """The GPU's profile: by PCI device ID, else by name (``ProfileSet.for_gpu``)."""
    return profiles.for_gpu(gpu.name, pci_device_id(facts, gpu))


class MemoryRuns:
    """The memory workload's outcome per GPU, with the GPU's ECC counters read before and after."""

    def __init__(
        self,
        containers: Containers,
        settings: Settings,
        host: Host,
        facts: HostFacts,
        gpus: tuple[GpuInfo, ...],
    ) -> None:
        self.containers = containers
        self.settings = settings
        self.host = host
        self.facts = facts
        self.gpus = gpus
        self.faults = parse_faults(settings.hardware_fault)
        self._outcomes: dict[str, MemoryOutcome] = {}

    def get(self, gpu: GpuInfo) -> MemoryOutcome:
        if gpu.uuid not in self._outcomes:
            self._outcomes[gpu.uuid] = self._run(gpu)
        return self._outcomes[gpu.uuid]

    def all(self) -> dict[GpuInfo, MemoryOutcome]:
        return {gpu: self.get(gpu) for gpu in self.gpus}

    def _health(self, gpu: GpuInfo) -> HealthFacts | None:
        survey = gather_health(self.host, self.settings.timeout, use_nvml=self.facts.nvml.ok)
        return survey.for_gpu(gpu)

    def _run(self, gpu: GpuInfo) -> MemoryOutcome:
        args = workload_args(gpu.index, self.settings.hardware_passes, self.faults)
        env = {FAULT_SWITCH: "1"} if self.faults else None

        def run() -> tuple[dict[str, Any] | None, Diagnosis | None]:
            return run_hardware_workload(self, "memory.py", args, (gpu,), "test_hbm_patterns", env)

        return run_with_ecc(lambda: self._health(gpu), run)


def run_hardware_workload(
    runs: MemoryRuns,
    script: str,
    args: list[str],
    gpus: tuple[GpuInfo, ...],
    check: str,
    environment: dict[str, str] | None = None,
) -> tuple[dict[str, Any] | None, Diagnosis | None]:
    """One hardware workload in a container: its record and diagnosis, or why it could not run."""
    try:
        outcome = run_workload(
            runs.containers,
            runs.settings,
            script,
            args,
            gpus=GpuRequest(gpus),
            check=check,
            timeout=MEMORY_TIMEOUT_S,
            environment=environment,
        )
    except ContainerFailure as exc:
        return None, exc.diagnosis
    return outcome.record, outcome.diagnosis


@pytest.fixture(scope="session")
def gpuhost_memory(
    gpuhost_gpu_container: GpuContainerProbe,
    gpuhost_containers: Containers,
    gpuhost_settings: Settings,
    gpuhost_host: Host,
    gpuhost_facts: HostFacts,
) -> MemoryRuns:
    gpuhost_gpu_container.require()
    gpus = select_gpus(gpuhost_facts.gpus, gpuhost_settings.gpus)
    return MemoryRuns(gpuhost_containers, gpuhost_settings, gpuhost_host, gpuhost_facts, gpus)


class AllReduceRun:
    """One all-reduce across all selected GPUs, in one container that sees them all."""

    def __init__(self, memory_runs: MemoryRuns) -> None:
        self.runs = memory_runs
        self._outcome: tuple[dict[str, Any] | None, Diagnosis | None] | None = None

    def get(self) -> tuple[dict[str, Any] | None, Diagnosis | None]:
        if self._outcome is None:
            self._outcome = self._run()
        return self._outcome

    def _run(self) -> tuple[dict[str, Any] | None, Diagnosis | None]:
        from pytest_gpuhost.hardware import allreduce

        runs = self.runs
        wrong = next((f.target for f in runs.faults if f.kind == "allreduce"), None)
        env = {FAULT_SWITCH: "1"} if wrong is not None else None
        args = allreduce.workload_args(len(runs.gpus), wrong)
        return run_hardware_workload(runs, "allreduce.py", args, runs.gpus, "test_nccl_all_reduce", env)


@pytest.fixture(scope="session")
def gpuhost_allreduce(gpuhost_memory: MemoryRuns) -> AllReduceRun:
    return AllReduceRun(gpuhost_memory)


class P2PRun:
    """All pairs of the selected GPUs measured in one container that sees them all."""

    def __init__(self, memory_runs: MemoryRuns) -> None:
        self.runs = memory_runs
        self._outcome: tuple[dict[str, Any] | None, Diagnosis | None] | None = None

    def get(self) -> tuple[dict[str, Any] | None, Diagnosis | None]:
        if self._outcome is None:
            from pytest_gpuhost.hardware import p2p

            runs = self.runs
            self._outcome = run_hardware_workload(
                runs, "p2p.py", p2p.workload_args(runs.gpus), runs.gpus, "test_gpu_pair_p2p"
            )
        return self._outcome

    def pair(self, a: GpuInfo, b: GpuInfo) -> dict[str, Any] | None:
        record, _ = self.get()
        where = [g.uuid for g in self.runs.gpus]
        wanted = [where.index(a.uuid), where.index(b.uuid)]
        return next((p for p in (record or {}).get("pairs") or [] if p.get("pair") == wanted), None)


@pytest.fixture(scope="session")
def gpuhost_p2p(gpuhost_memory: MemoryRuns) -> P2PRun:
    return P2PRun(gpuhost_memory)
