"""The shapes of host facts. Plain frozen dataclasses: cheap to build from captures in tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# The supported API (docs/api.md); everything else here is private and may change.
__all__ = ["GpuInfo", "GpuListing", "HostFacts", "KernelFacts", "ListingSource", "PciGpu", "Precondition"]

ListingSource = Literal["nvml", "nvidia-smi"]


def normalize_pci_bus_id(bus_id: str) -> str:
    """``00000000:00:06.0`` (NVML, nvidia-smi) and ``0000:00:06.0`` (sysfs) to the sysfs form."""
    bus_id = bus_id.strip().lower()
    parts = bus_id.split(":")
    if len(parts) == 3:
        domain = parts[0][-4:].rjust(4, "0")
        return f"{domain}:{parts[1]}:{parts[2]}"
    if len(parts) == 2:  # no domain given
        return f"0000:{bus_id}"
    return bus_id


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML or nvidia-smi reports it. Fields a source cannot give are None."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    memory_total_mib: int | None = None
    minor_number: int | None = None
    temperature_c: int | None = None
    temp_slowdown_c: int | None = None
    temp_shutdown_c: int | None = None
    temp_max_operating_c: int | None = None
    power_limit_w: float | None = None
    persistence_mode: bool | None = None
    mig_current: bool | None = None
    mig_pending: bool | None = None
    compute_capability: tuple[int, int] | None = None
    error: str | None = None

    @property
    def short_uuid(self) -> str:
        return self.uuid.removeprefix("GPU-")[:8]

    @property
    def test_id(self) -> str:
        """The readable id of this GPU's test cases: ``gpu0-042f1913``."""
        return f"gpu{self.index}-{self.short_uuid}" if self.uuid else f"gpu{self.index}"


@dataclass(frozen=True)
class GpuListing:
    """What one source (NVML or nvidia-smi) says about the driver and its GPUs."""

    source: ListingSource
    ok: bool
    error: str | None = None
    error_kind: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    library_version: str | None = None
    gpus: tuple[GpuInfo, ...] = ()


@dataclass(frozen=True)
class PciGpu:
    """An NVIDIA display or 3D controller found in ``/sys/bus/pci/devices``."""

    address: str
    device_id: str
    class_code: str
    driver: str | None


@dataclass(frozen=True)
class KernelFacts:
    """The driver's footprint in the kernel: modules, ``/proc/driver/nvidia``, ``/dev`` nodes."""

    modules: frozenset[str]
    version_text: str | None
    version_error: str | None
    module_version: str | None
    device_nodes: frozenset[str]
    proc_gpus: tuple[str, ...] = ()


@dataclass(frozen=True)
class Precondition:
    """Whether something later checks need holds, and which check reports it when it does not."""

    name: str
    ok: bool
    check: str
    reason: str = ""


@dataclass(frozen=True)
class HostFacts:
    host: str
    pci: tuple[PciGpu, ...]
    kernel: KernelFacts
    nvml: GpuListing
    smi: GpuListing
    preconditions: dict[str, Precondition] = field(default_factory=dict)

    @property
    def listing(self) -> GpuListing:
        """The source that per-GPU checks use: NVML when it works, else nvidia-smi."""
        return self.nvml if self.nvml.ok or not self.smi.ok else self.smi

    @property
    def gpus(self) -> tuple[GpuInfo, ...]:
        return self.listing.gpus

    @property
    def driver_version(self) -> str | None:
        return self.nvml.driver_version or self.smi.driver_version or self.kernel.module_version

    @property
    def cuda_driver_version(self) -> str | None:
        return self.nvml.cuda_driver_version or self.smi.cuda_driver_version
