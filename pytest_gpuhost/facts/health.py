"""GPU health: memory errors, Xid events, the PCIe link, clock slowdowns, MIG and the NVLink fabric.

Facts are read once per session through NVML where pytest runs (the fast local path) and from
``nvidia-smi -q -x`` through the ``Host`` interface otherwise. A field the GPU does not support
("Not Supported", "N/A") is recorded as ``Unavailable(unsupported=True)`` so that its check is
skipped as not applicable instead of failing. The criteria are plain functions returning a
``Verdict``: the suite turns it into passes, warnings, skips and diagnoses, and the unit tests
call them directly with real captures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from pytest_gpuhost.facts.model import GpuInfo, normalize_pci_bus_id

T = TypeVar("T")

# -- thresholds ----------------------------------------------------------------------------------

# Xids an application causes on a healthy GPU: reported, never failed (docs/health.md).
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})


@dataclass(frozen=True)
class HealthThresholds:
    """The limits the health checks apply. Defaults suit a production GPU host; profiles override them."""

    # Volatile (since the driver loaded) correctable ECC errors: a few are normal, a stream is not.
    correctable_warn_above: int = 100
    correctable_fail_above: int = 1000
    # Lifetime (InfoROM) uncorrectable ECC errors tolerated; 0: any past DBE fails until reviewed.
    aggregate_uncorrectable_max: int = 0
    # Xid codes reported but not failed.
    informational_xids: frozenset[int] = APPLICATION_XIDS
    # A failing clock-event reason must be seen in this many samples under load (one at idle):
    # NVML may flag a slowdown for an instant while clocks change.
    clock_reason_min_samples: int = 2


# -- bits and names ------------------------------------------------------------------------------

# nvmlClocksEventReason* of nvidia-ml-py (checked against the installed module in the tests).
CLOCK_GPU_IDLE = 0x1
CLOCK_APPLICATIONS_SETTING = 0x2
CLOCK_SW_POWER_CAP = 0x4
CLOCK_HW_SLOWDOWN = 0x8
CLOCK_SYNC_BOOST = 0x10
CLOCK_SW_THERMAL = 0x20
CLOCK_HW_THERMAL = 0x40
CLOCK_HW_POWER_BRAKE = 0x80
CLOCK_DISPLAY_SETTING = 0x100
CLOCK_REASON_NAMES = {
    CLOCK_GPU_IDLE: "GPU idle",
    CLOCK_APPLICATIONS_SETTING: "applications clocks setting",
    CLOCK_SW_POWER_CAP: "software power cap",
    CLOCK_HW_SLOWDOWN: "hardware slowdown",
    CLOCK_SYNC_BOOST: "sync boost",
    CLOCK_SW_THERMAL: "software thermal slowdown",
    CLOCK_HW_THERMAL: "hardware thermal slowdown",
    CLOCK_HW_POWER_BRAKE: "hardware power brake slowdown",
    CLOCK_DISPLAY_SETTING: "display clocks setting",
}
CLOCK_FAILING = {
    CLOCK_HW_SLOWDOWN: (
        "the GPU halves its clocks or more: it is too hot, its power draw trips the fast protection, "
        "or the system asserts the external power brake"
    ),
    CLOCK_HW_THERMAL: "the GPU is above its hardware thermal limit: cooling is insufficient (fans, airflow, heatsink)",
    CLOCK_HW_POWER_BRAKE: (
        "the system asserted the power brake: the power supply or the board's power delivery cannot feed the GPU"
    ),
}
# The element names nvidia-smi uses (v13: clocks_event_reason_*, before: clocks_throttle_reason_*).
XML_CLOCK_REASONS = {
    "gpu_idle": CLOCK_GPU_IDLE,
    "applications_clocks_setting": CLOCK_APPLICATIONS_SETTING,
    "sw_power_cap": CLOCK_SW_POWER_CAP,
    "hw_slowdown": CLOCK_HW_SLOWDOWN,
    "sync_boost": CLOCK_SYNC_BOOST,
    "sw_thermal_slowdown": CLOCK_SW_THERMAL,
    "hw_thermal_slowdown": CLOCK_HW_THERMAL,
    "hw_power_brake_slowdown": CLOCK_HW_POWER_BRAKE,
    "display_clocks_setting": CLOCK_DISPLAY_SETTING,
}

# NVML's brands as libnvidia-container names them in NVIDIA_REQUIRE_CUDA (brand=tesla, ...).
NVML_BRANDS = {
    0: "unknown",
    1: "quadro",
    2: "tesla",
    3: "nvs",
    4: "grid",
    5: "geforce",
    6: "titan",
    7: "vapps",
    8: "vpc",
    9: "vcs",
    10: "vws",
    11: "cloudgaming",
    12: "quadrortx",
    13: "nvidiartx",
    14: "nvidia",
    15: "geforcertx",
    16: "titanrtx",
}
DATA_CENTRE_BRANDS = frozenset({"tesla", "nvidia"})

# nvmlGpuFabricState_t
FABRIC_STATES = {0: "not supported", 1: "not started", 2: "in progress", 3: "completed"}

# Field names, as the skip reasons and diagnoses print them.
F_ECC_MODE = "ECC mode"
F_ECC_COUNTS = "ECC error counts"
F_RETIRED = "retired pages"
F_REMAP = "row remapping"
F_PCIE = "PCIe link"
F_CLOCKS = "clock event reasons"
F_MIG = "MIG mode"
F_FABRIC = "GPU fabric"
F_BRAND = "brand"

NVML_NOT_SUPPORTED = 3
NVML_FUNCTION_NOT_FOUND = 13


# -- facts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unavailable:
    """Why a field has no value: the GPU does not support it, or reading it failed."""

    detail: str
    unsupported: bool


@dataclass(frozen=True)
class EccCounts:
    uncorrected_volatile: int | None = None
    uncorrected_aggregate: int | None = None
    corrected_volatile: int | None = None
    corrected_aggregate: int | None = None


@dataclass(frozen=True)
class PcieLink:
    """A PCIe link: ``max_gen``/``max_width`` are the most the GPU and its slot allow together."""

    current_gen: int | None
    max_gen: int | None
    current_width: int | None
    max_width: int | None
    gpu_max_gen: int | None = None
    source: str = "nvml"


@dataclass(frozen=True)
class HealthFacts:
    """One GPU's health fields. None: see ``unavailable`` under the field's name."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    source: str
    brand: str | None = None
    ecc_current: bool | None = None
    ecc_pending: bool | None = None
    ecc: EccCounts | None = None
    retired_pages_pending: bool | None = None
    remapped_corr: int | None = None
    remapped_unc: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    # nvidia-smi only: "channel repair pending", "unrepairable memory", "SRAM threshold exceeded", ...
    memory_flags: tuple[str, ...] = ()
    mig_current: bool | None = None
    mig_pending: bool | None = None
    fabric_state: str | None = None
    fabric_status: str | None = None
    unavailable: Mapping[str, Unavailable] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"GPU {self.index} ({self.pci_bus_id})"


@dataclass(frozen=True)
class LiveReading:
    """What changes with load: the PCIe link and the clock-event reasons, read now."""

    pcie: PcieLink | None
    clock_reasons: int | None
    unavailable: Mapping[str, Unavailable] = field(default_factory=dict)


@dataclass(frozen=True)
class HealthSurvey:
    """Every GPU's health facts, from one source; ``error`` says why a source was given up."""

    source: str
    gpus: tuple[HealthFacts, ...] = ()
    error: str | None = None

    def for_gpu(self, gpu: GpuInfo) -> HealthFacts | None:
        for facts in self.gpus:
            if gpu.uuid and facts.uuid == gpu.uuid:
                return facts
        bus = normalize_pci_bus_id(gpu.pci_bus_id) if gpu.pci_bus_id else ""
        return next((f for f in self.gpus if bus and f.pci_bus_id == bus), None)


def as_text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- NVML ----------------------------------------------------------------------------------------


# -- nvidia-smi -q -x ----------------------------------------------------------------------------


# -- sysfs ---------------------------------------------------------------------------------------


# -- gathering -----------------------------------------------------------------------------------


# -- measuring under load ------------------------------------------------------------------------

"""Starts a short GPU load for the ``with`` block; the GPU is busy once ``__enter__`` returns."""


# -- verdicts ------------------------------------------------------------------------------------


# -- PCIe and clocks -----------------------------------------------------------------------------


# -- Xid events ----------------------------------------------------------------------------------


# -- fabric --------------------------------------------------------------------------------------


# -- image compatibility -------------------------------------------------------------------------
