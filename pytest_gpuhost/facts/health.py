"""GPU health: memory errors, Xid events, the PCIe link, clock slowdowns, MIG and the NVLink fabric.

Facts are read once per session through NVML where pytest runs (the fast local path) and from
``nvidia-smi -q -x`` through the ``Host`` interface otherwise. A field the GPU does not support
("Not Supported", "N/A") is recorded as ``Unavailable(unsupported=True)`` so that its check is
skipped as not applicable instead of failing. The criteria are plain functions returning a
``Verdict``: the suite turns it into passes, warnings, skips and diagnoses, and the unit tests
call them directly with real captures.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Generic, TypeVar

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.model import GpuInfo, normalize_pci_bus_id
from pytest_gpuhost.hosts.host import CommandResult, Host
from pytest_gpuhost.timeouts import NativeCallTimeout

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


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- NVML ----------------------------------------------------------------------------------------


class _NoFunction(Exception):
    """The installed nvidia-ml-py lacks the function: the field is not supported here."""


def _function(nvml: Any, *names: str) -> Callable[..., Any]:
    for name in names:
        fn = getattr(nvml, name, None)
        if callable(fn):
            return fn  # type: ignore[no-any-return]
    raise _NoFunction(f"this nvidia-ml-py has no {names[0]}")


class _NvmlFields:
    """Reads fields of one GPU, recording each failure under the field's name."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.unavailable: dict[str, Unavailable] = {}

    def get(self, name: str, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except (_NoFunction, self.nvml.NVMLError) as exc:
            self.unavailable.setdefault(name, self.describe(exc))
        return None

    def describe(self, exc: BaseException) -> Unavailable:
        if isinstance(exc, _NoFunction):
            return Unavailable(str(exc), True)
        code = getattr(exc, "value", None)
        return Unavailable(f"NVML: {exc}", code in (NVML_NOT_SUPPORTED, NVML_FUNCTION_NOT_FOUND))


def _nvml_pcie(nvml: Any, handle: object, fields: _NvmlFields) -> PcieLink | None:
    def read() -> PcieLink:
        gpu_max = _optional_call(nvml, "nvmlDeviceGetGpuMaxPcieLinkGeneration", handle)
        return PcieLink(
            current_gen=int(_function(nvml, "nvmlDeviceGetCurrPcieLinkGeneration")(handle)),
            max_gen=int(_function(nvml, "nvmlDeviceGetMaxPcieLinkGeneration")(handle)),
            current_width=int(_function(nvml, "nvmlDeviceGetCurrPcieLinkWidth")(handle)),
            max_width=int(_function(nvml, "nvmlDeviceGetMaxPcieLinkWidth")(handle)),
            gpu_max_gen=int(gpu_max) if gpu_max is not None else None,
            source="nvml",
        )

    return fields.get(F_PCIE, read)


def _optional_call(nvml: Any, name: str, *args: object) -> Any:
    """A secondary value: None when the function is missing or not supported."""
    try:
        return _function(nvml, name)(*args)
    except (_NoFunction, nvml.NVMLError):
        return None


def _nvml_clock_reasons(nvml: Any, handle: object, fields: _NvmlFields) -> int | None:
    """The event-reasons call, or its older name (nvidia-ml-py before 12.535 calls them throttle reasons)."""
    names = ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons")
    return fields.get(F_CLOCKS, lambda: int(_function(nvml, *names)(handle)))


def _nvml_fabric(nvml: Any, handle: object) -> tuple[str, str | None]:
    """``(state, status error or None)`` of the GPU's NVLink fabric registration.

    nvidia-ml-py fills a caller-made struct: ``nvmlDeviceGetGpuFabricInfoV(handle, byref(info))``
    (the versioned call, else the deprecated one with the unversioned struct).
    """
    if hasattr(nvml, "nvmlDeviceGetGpuFabricInfoV") and hasattr(nvml, "c_nvmlGpuFabricInfoV_t"):
        info = nvml.c_nvmlGpuFabricInfoV_t()
        nvml.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(info))
    elif hasattr(nvml, "nvmlDeviceGetGpuFabricInfo") and hasattr(nvml, "c_nvmlGpuFabricInfo_t"):
        info = nvml.c_nvmlGpuFabricInfo_t()
        nvml.nvmlDeviceGetGpuFabricInfo(handle, ctypes.byref(info))
    else:
        raise _NoFunction("this nvidia-ml-py has no nvmlDeviceGetGpuFabricInfoV")
    state = FABRIC_STATES.get(int(info.state), f"state {int(info.state)}")
    status = int(info.status)
    if status == 0:
        return state, None
    try:
        message = str(nvml.NVMLError(status))
    except Exception:  # an unknown code: name it by number
        message = f"NVML error {status}"
    return state, message


_ECC_COUNTERS = {
    "uncorrected_volatile": ("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", "NVML_VOLATILE_ECC"),
    "uncorrected_aggregate": ("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", "NVML_AGGREGATE_ECC"),
    "corrected_volatile": ("NVML_MEMORY_ERROR_TYPE_CORRECTED", "NVML_VOLATILE_ECC"),
    "corrected_aggregate": ("NVML_MEMORY_ERROR_TYPE_CORRECTED", "NVML_AGGREGATE_ECC"),
}


def _nvml_ecc(nvml: Any, handle: object, fields: _NvmlFields) -> EccCounts | None:
    """The four totals (nvmlDeviceGetTotalEccErrors), each on its own: one unsupported counter
    leaves the others; all unsupported (ECC off, consumer GPU) makes the counts unavailable."""
    counts: dict[str, int] = {}
    first: BaseException | None = None
    for key, (error_type, counter) in _ECC_COUNTERS.items():
        try:
            fn = _function(nvml, "nvmlDeviceGetTotalEccErrors")
            counts[key] = int(fn(handle, getattr(nvml, error_type), getattr(nvml, counter)))
        except (_NoFunction, nvml.NVMLError) as exc:
            first = first or exc
    if not counts:
        if first is not None:
            fields.unavailable[F_ECC_COUNTS] = fields.describe(first)
        return None
    return EccCounts(**counts)


def _nvml_gpu(nvml: Any, index: int) -> HealthFacts:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    fields = _NvmlFields(nvml)
    uuid = _s(nvml.nvmlDeviceGetUUID(handle))
    name = _s(nvml.nvmlDeviceGetName(handle))
    bus = normalize_pci_bus_id(_s(nvml.nvmlDeviceGetPciInfo(handle).busId))
    brand = fields.get(F_BRAND, lambda: int(_function(nvml, "nvmlDeviceGetBrand")(handle)))
    ecc_mode = fields.get(F_ECC_MODE, lambda: _function(nvml, "nvmlDeviceGetEccMode")(handle))
    ecc = _nvml_ecc(nvml, handle, fields)
    retired = fields.get(
        F_RETIRED, lambda: int(_function(nvml, "nvmlDeviceGetRetiredPagesPendingStatus")(handle))
    )
    remap = fields.get(F_REMAP, lambda: tuple(_function(nvml, "nvmlDeviceGetRemappedRows")(handle)))
    mig = fields.get(F_MIG, lambda: tuple(_function(nvml, "nvmlDeviceGetMigMode")(handle)))
    fabric = fields.get(F_FABRIC, lambda: _nvml_fabric(nvml, handle))
    fabric_state, fabric_status = fabric if fabric is not None else (None, None)
    if fabric_state == "not supported":
        fields.unavailable[F_FABRIC] = Unavailable("NVML: fabric state Not Supported", True)
        fabric_state = None
    return HealthFacts(
        index=index,
        uuid=uuid,
        name=name,
        pci_bus_id=bus,
        source="nvml",
        brand=NVML_BRANDS.get(brand, f"brand {brand}") if brand is not None else None,
        ecc_current=bool(ecc_mode[0]) if ecc_mode is not None else None,
        ecc_pending=bool(ecc_mode[1]) if ecc_mode is not None else None,
        ecc=ecc,
        retired_pages_pending=bool(retired) if retired is not None else None,
        remapped_corr=int(remap[0]) if remap is not None else None,
        remapped_unc=int(remap[1]) if remap is not None else None,
        remap_pending=bool(remap[2]) if remap is not None else None,
        remap_failure=bool(remap[3]) if remap is not None else None,
        mig_current=bool(mig[0]) if mig is not None else None,
        mig_pending=bool(mig[1]) if mig is not None else None,
        fabric_state=fabric_state,
        fabric_status=fabric_status,
        unavailable=dict(fields.unavailable),
    )


@contextlib.contextmanager
def _nvml_session(nvml: Any) -> Iterator[Any]:
    nvml.nvmlInit()
    try:
        yield nvml
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def read_nvml_health(nvml: Any) -> tuple[HealthFacts, ...]:
    """Every GPU's health fields through NVML (call under a timeout: a wedged GPU hangs NVML)."""
    with _nvml_session(nvml):
        return tuple(_nvml_gpu(nvml, index) for index in range(int(nvml.nvmlDeviceGetCount())))


def read_nvml_live(nvml: Any, uuid: str) -> LiveReading:
    """The PCIe link and clock-event reasons of one GPU, now."""
    with _nvml_session(nvml):
        handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
        fields = _NvmlFields(nvml)
        pcie = _nvml_pcie(nvml, handle, fields)
        reasons = _nvml_clock_reasons(nvml, handle, fields)
        return LiveReading(pcie, reasons, dict(fields.unavailable))


# -- nvidia-smi -q -x ----------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d+")
_UNSUPPORTED_TEXT = frozenset({"n/a", "[n/a]", "not supported", "[not supported]", "unsupported"})


class _XmlFields:
    """Reads fields of one ``<gpu>`` element, recording each missing or unreadable one."""

    def __init__(self, node: ET.Element) -> None:
        self.node = node
        self.unavailable: dict[str, Unavailable] = {}

    def text(self, name: str, path: str) -> str | None:
        found = self.node.find(path)
        if found is None:
            self.unavailable.setdefault(name, Unavailable(f"nvidia-smi reports no <{path}>", True))
            return None
        value = " ".join((found.text or "").split())
        if not value or value.lower() in _UNSUPPORTED_TEXT:
            self.unavailable.setdefault(name, Unavailable(f"nvidia-smi: {path} is {value or 'empty'}", True))
            return None
        return value

    def number(self, name: str, path: str) -> int | None:
        value = self.text(name, path)
        if value is None:
            return None
        match = _NUMBER.search(value)
        if match is None:
            self.unavailable.setdefault(name, Unavailable(f"nvidia-smi: {path} is {value!r}", False))
            return None
        return int(match.group(0))

    def flag(self, name: str, path: str) -> bool | None:
        """``Yes``/``Enabled``/``Active`` and their negatives."""
        value = self.text(name, path)
        if value is None:
            return None
        lowered = value.lower()
        if lowered in ("yes", "enabled", "active"):
            return True
        if lowered in ("no", "disabled", "not active"):
            return False
        self.unavailable.setdefault(name, Unavailable(f"nvidia-smi: {path} is {value!r}", False))
        return None


def _xml_brand(product_brand: str | None) -> str | None:
    if product_brand is None:
        return None
    compact = product_brand.lower().replace(" ", "")
    return {"nvidiartx": "nvidiartx", "quadrortx": "quadrortx"}.get(compact, compact)


def _xml_ecc(fields: _XmlFields) -> tuple[EccCounts | None, tuple[str, ...]]:
    node = fields.node.find("ecc_errors")
    if node is None:
        fields.unavailable[F_ECC_COUNTS] = Unavailable("nvidia-smi reports no <ecc_errors>", True)
        return None, ()

    def total(section: str, uncorrectable: bool) -> int | None:
        """Sum of a section's counters: v13 names (dram_uncorrectable, sram_uncorrectable_parity, ...)
        or the older single_bit/total and double_bit/total."""
        part = node.find(section)
        if part is None:
            return None
        values: list[int] = []
        for child in part:
            tag = child.tag
            if tag in ("single_bit", "double_bit"):
                if (tag == "double_bit") == uncorrectable:
                    values.extend(_digits(child.findtext("total")))
            elif "correctable" in tag and ("uncorrectable" in tag) == uncorrectable:
                values.extend(_digits(child.text))
        return sum(values) if values else None

    counts = EccCounts(
        uncorrected_volatile=total("volatile", True),
        uncorrected_aggregate=total("aggregate", True),
        corrected_volatile=total("volatile", False),
        corrected_aggregate=total("aggregate", False),
    )
    if counts.uncorrected_volatile is None and counts.uncorrected_aggregate is None:
        fields.unavailable[F_ECC_COUNTS] = Unavailable("nvidia-smi: ECC error counts are N/A", True)
        return None, ()
    flags = []
    for path, label in (
        ("aggregate/sram_threshold_exceeded", "SRAM uncorrectable error threshold exceeded"),
        ("unrepairable_memory", "unrepairable memory"),
        ("channel_repair_pending", "channel repair pending"),
        ("tpc_repair_pending", "TPC repair pending"),
    ):
        found = node.find(path)
        if found is not None and (found.text or "").strip().lower() == "yes":
            flags.append(label)
    return counts, tuple(flags)


def _digits(text: str | None) -> list[int]:
    value = (text or "").strip()
    return [int(value)] if value.isdigit() else []


def _xml_gpu(node: ET.Element, index: int) -> HealthFacts:
    f = _XmlFields(node)
    bus = f.text("PCI address", "pci/pci_bus_id") or node.get("id") or ""
    ecc, flags = _xml_ecc(f)
    # pending_retirement since DTD v10; older ones call it pending_blacklist.
    retired_path = "retired_pages/pending_retirement"
    if node.find(retired_path) is None:
        retired_path = "retired_pages/pending_blacklist"
    retired = f.flag(F_RETIRED, retired_path)
    fabric_state = f.text(F_FABRIC, "fabric/state")
    fabric_status = " ".join((node.findtext("fabric/status") or "").split())
    if fabric_status.lower() in _UNSUPPORTED_TEXT or fabric_status.lower() == "success":
        fabric_status = ""
    return HealthFacts(
        index=index,
        uuid=f.text("UUID", "uuid") or "",
        name=f.text("name", "product_name") or "",
        pci_bus_id=normalize_pci_bus_id(bus) if bus else "",
        source="nvidia-smi",
        brand=_xml_brand(f.text(F_BRAND, "product_brand")),
        ecc_current=f.flag(F_ECC_MODE, "ecc_mode/current_ecc"),
        ecc_pending=f.flag(F_ECC_MODE, "ecc_mode/pending_ecc"),
        ecc=ecc,
        retired_pages_pending=retired,
        remapped_corr=f.number(F_REMAP, "remapped_rows/remapped_row_corr"),
        remapped_unc=f.number(F_REMAP, "remapped_rows/remapped_row_unc"),
        remap_pending=f.flag(F_REMAP, "remapped_rows/remapped_row_pending"),
        remap_failure=f.flag(F_REMAP, "remapped_rows/remapped_row_failure"),
        memory_flags=flags,
        mig_current=f.flag(F_MIG, "mig_mode/current_mig"),
        mig_pending=f.flag(F_MIG, "mig_mode/pending_mig"),
        fabric_state=fabric_state.lower() if fabric_state else None,
        fabric_status=fabric_status or None,
        unavailable=dict(f.unavailable),
    )


def _xml_pcie(node: ET.Element) -> PcieLink | None:
    f = _XmlFields(node)
    base = "pci/pci_gpu_link_info"
    link = PcieLink(
        current_gen=f.number(F_PCIE, f"{base}/pcie_gen/current_link_gen"),
        max_gen=f.number(F_PCIE, f"{base}/pcie_gen/max_link_gen"),
        current_width=f.number(F_PCIE, f"{base}/link_widths/current_link_width"),
        max_width=f.number(F_PCIE, f"{base}/link_widths/max_link_width"),
        gpu_max_gen=_XmlFields(node).number(F_PCIE, f"{base}/pcie_gen/max_device_link_gen"),
        source="nvidia-smi",
    )
    return None if f.unavailable else link


def _xml_clock_reasons(node: ET.Element) -> int | None:
    section = node.find("clocks_event_reasons")
    prefix = "clocks_event_reason_"
    if section is None:
        section, prefix = node.find("clocks_throttle_reasons"), "clocks_throttle_reason_"
    if section is None:
        return None
    mask, seen = 0, False
    for child in section:
        bit = XML_CLOCK_REASONS.get(child.tag.removeprefix(prefix))
        text = (child.text or "").strip().lower()
        if bit is None or text not in ("active", "not active"):
            continue
        seen = True
        if text == "active":
            mask |= bit
    return mask if seen else None


def _parse_xml(xml_text: str) -> ET.Element:
    try:
        return ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ValueError(f"nvidia-smi printed unreadable XML: {exc}") from None


def parse_health_xml(xml_text: str) -> tuple[HealthFacts, ...]:
    """Every GPU's health fields from ``nvidia-smi -q -x`` (DTD v12 and v13)."""
    root = _parse_xml(xml_text)
    return tuple(_xml_gpu(node, index) for index, node in enumerate(root.findall("gpu")))


def parse_live_xml(xml_text: str, pci_bus_id: str) -> LiveReading:
    """The PCIe link and clock-event reasons of the GPU at ``pci_bus_id`` from ``nvidia-smi -q -x``."""
    root = _parse_xml(xml_text)
    wanted = normalize_pci_bus_id(pci_bus_id)
    for node in root.findall("gpu"):
        bus = (node.findtext("pci/pci_bus_id") or node.get("id") or "").strip()
        if bus and normalize_pci_bus_id(bus) == wanted:
            unavailable: dict[str, Unavailable] = {}
            pcie = _xml_pcie(node)
            if pcie is None:
                unavailable[F_PCIE] = Unavailable("nvidia-smi: the PCIe link fields are N/A", True)
            reasons = _xml_clock_reasons(node)
            if reasons is None:
                unavailable[F_CLOCKS] = Unavailable("nvidia-smi: the clock event reasons are N/A", True)
            return LiveReading(pcie, reasons, unavailable)
    missing = Unavailable(f"nvidia-smi lists no GPU at {wanted}", False)
    return LiveReading(None, None, {F_PCIE: missing, F_CLOCKS: missing})


def _run_smi_xml(host: Host, timeout: float) -> str:
    result = host.run(["nvidia-smi", "-q", "-x"], timeout=timeout)
    if not result.ok:
        raise RuntimeError(result.describe())
    return result.stdout


# -- sysfs ---------------------------------------------------------------------------------------

PCI_DEVICES = "/sys/bus/pci/devices"
_GTS_TO_GEN = {2.5: 1, 5.0: 2, 8.0: 3, 16.0: 4, 32.0: 5, 64.0: 6, 128.0: 7}


def pcie_gen_from_speed(text: str | None) -> int | None:
    """``32.0 GT/s PCIe`` (sysfs ``*_link_speed``) to generation 5."""
    if not text:
        return None
    match = re.match(r"\s*(\d+(?:\.\d+)?)\s*GT/s", text)
    return _GTS_TO_GEN.get(float(match.group(1))) if match else None


def _int_file(host: Host, path: str) -> int | None:
    try:
        text = (host.read_text(path) or "").strip()
    except PermissionError:
        return None
    return int(text) if text.isdigit() else None


def read_sysfs_link(host: Host, pci_bus_id: str) -> PcieLink | None:
    """The link from ``/sys/bus/pci/devices/<address>``; the slot's limit from the upstream bridge.

    The device's ``max_link_*`` is the GPU's own capability; the link can reach only the lesser of
    that and the port above it (absent when the GPU sits on a root bus, as in most VMs).
    """
    address = normalize_pci_bus_id(pci_bus_id)
    base = f"{PCI_DEVICES}/{address}"
    try:
        current_gen = pcie_gen_from_speed(host.read_text(f"{base}/current_link_speed"))
        gpu_max_gen = pcie_gen_from_speed(host.read_text(f"{base}/max_link_speed"))
    except PermissionError:
        return None
    current_width = _int_file(host, f"{base}/current_link_width")
    gpu_max_width = _int_file(host, f"{base}/max_link_width")
    if None in (current_gen, gpu_max_gen, current_width, gpu_max_width):
        return None
    max_gen, max_width = gpu_max_gen, gpu_max_width
    target = host.readlink(f"{PCI_DEVICES}/{address}") or ""
    parent = target.rstrip("/").split("/")[-2] if target.count("/") >= 2 else ""
    if re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", parent):
        slot_gen = pcie_gen_from_speed(host.read_text(f"{PCI_DEVICES}/{parent}/max_link_speed"))
        slot_width = _int_file(host, f"{PCI_DEVICES}/{parent}/max_link_width")
        if slot_gen is not None and max_gen is not None:
            max_gen = min(max_gen, slot_gen)
        if slot_width is not None and max_width is not None:
            max_width = min(max_width, slot_width)
    return PcieLink(current_gen, max_gen, current_width, max_width, gpu_max_gen, source="sysfs")


# -- gathering -----------------------------------------------------------------------------------


def gather_health(
    host: Host,
    timeout: float,
    use_nvml: bool,
    loader: Callable[[], ModuleType] | None = None,
) -> HealthSurvey:
    """Health facts through NVML when ``use_nvml`` (pytest runs on the host), else nvidia-smi."""
    nvml_error: str | None = None
    if use_nvml:
        try:
            from pytest_gpuhost.facts.nvml import load_pynvml, nvml_call

            nvml: Any = (loader or load_pynvml)()
            gpus = nvml_call(lambda: read_nvml_health(nvml), timeout, "NVML health read")
            return HealthSurvey("nvml", gpus)
        except ImportError as exc:
            nvml_error = f"pynvml cannot be imported: {exc}"
        except NativeCallTimeout as exc:
            nvml_error = str(exc)
        except Exception as exc:  # an NVMLError of a GPU gone bad: nvidia-smi may still answer
            nvml_error = f"NVML: {exc}"
    try:
        gpus = parse_health_xml(_run_smi_xml(host, timeout))
    except (RuntimeError, ValueError) as exc:
        error = f"{exc}" + (f"; before that, {nvml_error}" if nvml_error else "")
        return HealthSurvey("nvidia-smi", (), error)
    return HealthSurvey("nvidia-smi", gpus, None)


def read_live(
    host: Host,
    gpu: GpuInfo,
    timeout: float,
    use_nvml: bool,
    loader: Callable[[], ModuleType] | None = None,
) -> LiveReading:
    """One reading of the PCIe link and clock-event reasons: NVML, else sysfs plus nvidia-smi."""
    if use_nvml:
        from pytest_gpuhost.facts.nvml import load_pynvml, nvml_call

        try:
            nvml: Any = (loader or load_pynvml)()
            return nvml_call(lambda: read_nvml_live(nvml, gpu.uuid), timeout, "NVML live read")
        except Exception as exc:  # a timeout, or an NVMLError of a GPU gone bad
            failed = Unavailable(f"NVML: {exc}", False)
            return LiveReading(None, None, {F_PCIE: failed, F_CLOCKS: failed})
    try:
        reading = parse_live_xml(_run_smi_xml(host, timeout), gpu.pci_bus_id)
    except (RuntimeError, ValueError) as exc:
        failed = Unavailable(str(exc), False)
        reading = LiveReading(None, None, {F_PCIE: failed, F_CLOCKS: failed})
    sysfs = read_sysfs_link(host, gpu.pci_bus_id)
    if sysfs is not None:
        unavailable = {k: v for k, v in reading.unavailable.items() if k != F_PCIE}
        reading = LiveReading(sysfs, reading.clock_reasons, unavailable)
    return reading


# -- measuring under load ------------------------------------------------------------------------

LoadFn = Callable[[], contextlib.AbstractContextManager[object]]
"""Starts a short GPU load for the ``with`` block; the GPU is busy once ``__enter__`` returns."""


@dataclass(frozen=True)
class Sampling:
    warmup_s: float = 0.5
    samples: int = 5
    interval_s: float = 0.2


@dataclass(frozen=True)
class Sampled(Generic[T]):
    readings: tuple[T, ...]
    loaded: bool


def sample_under_load(
    read_fn: Callable[[], T],
    load_fn: LoadFn | None,
    sampling: Sampling = Sampling(),
    sleep: Callable[[float], None] = time.sleep,
) -> Sampled[T]:
    """Read ``sampling.samples`` times while ``load_fn``'s load runs; once, at idle, without one."""
    if load_fn is None:
        return Sampled((read_fn(),), loaded=False)
    readings: list[T] = []
    with load_fn():
        sleep(sampling.warmup_s)
        for number in range(max(1, sampling.samples)):
            if number:
                sleep(sampling.interval_s)
            readings.append(read_fn())
    return Sampled(tuple(readings), loaded=True)


def _max(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def summarize_link(sampled: Sampled[PcieLink | None]) -> tuple[PcieLink | None, bool]:
    """The best link seen across the samples (the link trains up under load), and whether loaded."""
    links = [link for link in sampled.readings if link is not None]
    if not links:
        return None, sampled.loaded
    best = PcieLink(
        current_gen=_max(link.current_gen for link in links),
        max_gen=_max(link.max_gen for link in links),
        current_width=_max(link.current_width for link in links),
        max_width=_max(link.max_width for link in links),
        gpu_max_gen=_max(link.gpu_max_gen for link in links),
        source=links[0].source,
    )
    return best, sampled.loaded


def pcie_link_under_load(
    read_fn: Callable[[], PcieLink | None], load_fn: LoadFn | None, sampling: Sampling = Sampling()
) -> tuple[PcieLink | None, bool]:
    """The PCIe link measured while ``load_fn`` loads the GPU (at idle when it is None)."""
    return summarize_link(sample_under_load(read_fn, load_fn, sampling))


@dataclass(frozen=True)
class ClockSample:
    """Clock-event reasons over the samples: each bit's count, and how many samples were read."""

    counts: Mapping[int, int]
    samples: int
    loaded: bool

    @property
    def mask(self) -> int:
        combined = 0
        for bit, count in self.counts.items():
            if count:
                combined |= bit
        return combined


def summarize_clocks(sampled: Sampled[int | None]) -> ClockSample | None:
    masks = [m for m in sampled.readings if m is not None]
    if not masks:
        return None
    counts = {bit: sum(1 for m in masks if m & bit) for bit in CLOCK_REASON_NAMES}
    return ClockSample(counts, len(masks), sampled.loaded)


def clock_reasons_under_load(
    read_fn: Callable[[], int | None], load_fn: LoadFn | None, sampling: Sampling = Sampling()
) -> ClockSample | None:
    """Clock-event reasons sampled while ``load_fn`` loads the GPU (once at idle when it is None)."""
    return summarize_clocks(sample_under_load(read_fn, load_fn, sampling))


@dataclass(frozen=True)
class LiveMeasurement:
    """PCIe link and clock reasons from one sampling run; ``unavailable`` from its first reading."""

    link: PcieLink | None
    clocks: ClockSample | None
    loaded: bool
    unavailable: Mapping[str, Unavailable]


def measure_under_load(
    read_fn: Callable[[], LiveReading], load_fn: LoadFn | None, sampling: Sampling = Sampling()
) -> LiveMeasurement:
    """Both live checks from one load: the link and the clock reasons are read together."""
    sampled = sample_under_load(read_fn, load_fn, sampling)
    link, loaded = summarize_link(Sampled(tuple(r.pcie for r in sampled.readings), sampled.loaded))
    clocks = summarize_clocks(Sampled(tuple(r.clock_reasons for r in sampled.readings), sampled.loaded))
    first = sampled.readings[0].unavailable if sampled.readings else {}
    return LiveMeasurement(link, clocks, loaded, first)


# -- verdicts ------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What a check found: metrics to print, notes, warnings, failures, or why it does not apply."""

    metrics: list[tuple[str, object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[Diagnosis] = field(default_factory=list)
    failures: list[Diagnosis] = field(default_factory=list)
    skip: str | None = None

    def metric(self, key: str, value: object) -> None:
        self.metrics.append((key, value))

    def fail(self, found: str, cause: str, fix: str) -> None:
        self.failures.append(Diagnosis(found, cause, fix))

    def warn(self, found: str, cause: str, fix: str) -> None:
        self.warnings.append(Diagnosis(found, cause, fix))

    def combined_failure(self) -> Diagnosis | None:
        """All failures as one diagnosis (each part once), or None."""
        if not self.failures:
            return None

        def join(parts: Iterable[str]) -> str:
            return "; ".join(dict.fromkeys(parts))

        return Diagnosis(
            join(d.found for d in self.failures),
            join(d.cause for d in self.failures),
            join(d.fix for d in self.failures),
        )


def _unavailable(
    verdict: Verdict, gpu_name: str, label: str, why: Unavailable | None, field_name: str
) -> bool:
    """Record a field without a value: a skip when unsupported, a failure when reading it failed."""
    if why is None:
        return False
    if why.unsupported:
        verdict.skip = f"not applicable: {field_name} is not supported on {gpu_name} ({why.detail})"
    else:
        verdict.fail(
            f"{field_name} of {label} cannot be read: {why.detail}",
            "the GPU is in a bad state (fallen off the bus, needs a reset) or the driver does not answer",
            "read `sudo dmesg | grep -i -e NVRM -e Xid`; reset the GPU (`sudo nvidia-smi -r -i <index>`) or reboot",
        )
    return True


def _reset_fix(index: int) -> str:
    return (
        f"stop every process on GPU {index} (`nvidia-smi --query-compute-apps=pid --format=csv -i {index}`), "
        f"then `sudo nvidia-smi -r -i {index}`; or reboot the host"
    )


RMA_FIX = (
    "take the GPU out of service and open an RMA with the vendor; attach `sudo nvidia-bug-report.sh` output "
    "and `nvidia-smi -q -d ECC,ROW_REMAPPER,PAGE_RETIREMENT`"
)


def judge_ecc_mode(h: HealthFacts) -> Verdict:
    """ECC on is reported; off on a data-centre GPU is a warning, a pending change one too."""
    v = Verdict()
    if _unavailable(v, h.name, h.label, h.unavailable.get(F_ECC_MODE), F_ECC_MODE):
        return v
    v.metric("ecc_mode_current", "enabled" if h.ecc_current else "disabled")
    v.metric("ecc_mode_pending", "enabled" if h.ecc_pending else "disabled")
    if h.ecc_current is False and (h.brand in DATA_CENTRE_BRANDS):
        v.warn(
            f"ECC is disabled on {h.label}, a data-centre GPU ({h.name})",
            "someone turned ECC off for the extra memory or bandwidth; memory errors then go undetected",
            f"`sudo nvidia-smi -i {h.index} -e 1`, then reset the GPU or reboot",
        )
    elif h.ecc_current is False:
        v.notes.append(f"ECC is disabled on {h.label} ({h.name}, brand {h.brand or 'unknown'})")
    if h.ecc_current is not None and h.ecc_pending is not None and h.ecc_current != h.ecc_pending:
        v.warn(
            f"an ECC mode change is pending on {h.label}: "
            f"current {'on' if h.ecc_current else 'off'}, pending {'on' if h.ecc_pending else 'off'}",
            "the mode was changed but the GPU was not reset since",
            _reset_fix(h.index),
        )
    return v


def _ecc_counts_or_skip(v: Verdict, h: HealthFacts) -> EccCounts | None:
    if h.ecc_current is False:
        v.skip = f"not applicable: ECC is disabled on {h.label}, so there are no ECC error counts"
        return None
    if _unavailable(v, h.name, h.label, h.unavailable.get(F_ECC_COUNTS), F_ECC_COUNTS):
        return None
    return h.ecc


def judge_uncorrectable_ecc(h: HealthFacts, thresholds: HealthThresholds) -> Verdict:
    """No uncorrectable ECC error since the driver loaded, nor (by default) ever."""
    v = Verdict()
    counts = _ecc_counts_or_skip(v, h)
    if counts is None:
        return v
    v.metric("ecc_uncorrected_volatile", counts.uncorrected_volatile)
    v.metric("ecc_uncorrected_aggregate", counts.uncorrected_aggregate)
    if counts.uncorrected_volatile:
        v.fail(
            f"{counts.uncorrected_volatile} uncorrectable ECC error(s) on {h.label} since the driver loaded",
            "a memory cell returned data ECC could not correct: the application using it got an error "
            "and the GPU marked the row for remapping",
            _reset_fix(h.index) + " to remap the row; if errors come back after the reset, " + RMA_FIX,
        )
    elif (counts.uncorrected_aggregate or 0) > thresholds.aggregate_uncorrectable_max:
        v.fail(
            f"{counts.uncorrected_aggregate} uncorrectable ECC error(s) in the lifetime of {h.label} "
            f"(InfoROM aggregate; the limit is {thresholds.aggregate_uncorrectable_max})",
            "the memory failed uncorrectably in the past; row remapping may have repaired it",
            "check `nvidia-smi -q -d ROW_REMAPPER -i "
            f"{h.index}` (no failure, rows to spare: the repair held); if errors recur, " + RMA_FIX,
        )
    for flag in h.memory_flags:
        if flag in ("unrepairable memory", "SRAM uncorrectable error threshold exceeded"):
            v.fail(f"nvidia-smi reports {flag} on {h.label}", "the GPU's memory is beyond repair", RMA_FIX)
    return v


def judge_correctable_ecc(h: HealthFacts, thresholds: HealthThresholds) -> Verdict:
    """Correctable errors are reported; a high volatile count warns, then fails."""
    v = Verdict()
    counts = _ecc_counts_or_skip(v, h)
    if counts is None:
        return v
    volatile = counts.corrected_volatile
    v.metric("ecc_corrected_volatile", volatile)
    v.metric("ecc_corrected_aggregate", counts.corrected_aggregate)
    if volatile is None:
        return v
    if volatile > thresholds.correctable_fail_above:
        v.fail(
            f"{volatile} correctable ECC errors on {h.label} since the driver loaded "
            f"(fail above {thresholds.correctable_fail_above})",
            "a memory region is degrading: ECC still corrects it, but uncorrectable errors tend to follow",
            _reset_fix(h.index) + " so that pending rows are remapped; if the count climbs again, " + RMA_FIX,
        )
    elif volatile > thresholds.correctable_warn_above:
        v.warn(
            f"{volatile} correctable ECC errors on {h.label} since the driver loaded "
            f"(warn above {thresholds.correctable_warn_above})",
            "more single-bit errors than a healthy GPU shows",
            f"watch `nvidia-smi -q -d ECC -i {h.index}`; plan a reset and keep the count",
        )
    return v


def judge_retired_pages(h: HealthFacts) -> Verdict:
    """Older GPUs retire bad pages at the next driver load; a pending one needs a reset."""
    v = Verdict()
    if _unavailable(v, h.name, h.label, h.unavailable.get(F_RETIRED), F_RETIRED):
        return v
    v.metric("retired_pages_pending", h.retired_pages_pending)
    if h.retired_pages_pending:
        v.fail(
            f"a retired page is pending on {h.label}: it takes effect at the next GPU reset",
            "ECC errors made the driver blacklist a memory page; until the reset it stays in use",
            _reset_fix(h.index),
        )
    return v


def judge_row_remapping(h: HealthFacts) -> Verdict:
    """Ampere and later remap bad memory rows at reset: pending needs a reset, a failure an RMA."""
    v = Verdict()
    if _unavailable(v, h.name, h.label, h.unavailable.get(F_REMAP), F_REMAP):
        return v
    v.metric("remapped_rows_correctable", h.remapped_corr)
    v.metric("remapped_rows_uncorrectable", h.remapped_unc)
    v.metric("remapped_rows_pending", h.remap_pending)
    v.metric("remapped_rows_failure", h.remap_failure)
    if h.remap_failure:
        v.fail(
            f"row remapping failed on {h.label}",
            "a memory bank ran out of spare rows: the GPU can no longer repair its memory",
            RMA_FIX,
        )
    if h.remap_pending:
        v.fail(
            f"a row remapping is pending on {h.label}",
            "ECC errors marked a memory row for remapping; the remap takes effect at the next GPU reset",
            _reset_fix(h.index),
        )
    for flag in h.memory_flags:
        if flag.endswith("repair pending"):
            v.fail(
                f"nvidia-smi reports {flag} on {h.label}",
                "a hardware repair waits for the next GPU reset",
                _reset_fix(h.index),
            )
    return v


def judge_mig(h: HealthFacts, expected: str | None) -> Verdict:
    """MIG's current mode is its pending mode, and the expected one when given (--gpuhost-mig)."""
    v = Verdict()
    why = h.unavailable.get(F_MIG)
    if why is not None and why.unsupported and expected == "on":
        v.fail(
            f"MIG is expected on (--gpuhost-mig on) but {h.label} ({h.name}) does not support MIG",
            "MIG exists on A100, A30, H100, H200, B200 and later data-centre GPUs only",
            "run the MIG workloads on MIG-capable GPUs, or drop --gpuhost-mig",
        )
        return v
    if _unavailable(v, h.name, h.label, why, F_MIG):
        return v

    def word(flag: bool | None) -> str:
        return "unknown" if flag is None else ("on" if flag else "off")

    v.metric("mig_current", word(h.mig_current))
    v.metric("mig_pending", word(h.mig_pending))
    if h.mig_pending is not None and h.mig_current != h.mig_pending:
        v.fail(
            f"a MIG mode change is pending on {h.label}: current {word(h.mig_current)}, "
            f"pending {word(h.mig_pending)}",
            "the MIG mode was changed but the GPU has not been reset since; CUDA still sees the old mode",
            f"reboot or `sudo nvidia-smi -i {h.index} -r` to apply the pending MIG mode "
            "(with no process on the GPU)",
        )
    if expected in ("on", "off") and h.mig_current is not None and word(h.mig_current) != expected:
        wanted = 1 if expected == "on" else 0
        v.fail(
            f"MIG is {word(h.mig_current)} on {h.label}, --gpuhost-mig expects {expected}",
            "the GPU's MIG mode differs from the mode this host is meant to run in",
            f"`sudo nvidia-smi -i {h.index} -mig {wanted}`, then reset the GPU (`sudo nvidia-smi -i {h.index} -r`)"
            + (" and create instances (`sudo nvidia-smi mig -cgi <profiles> -C`)" if wanted else ""),
        )
    return v


# -- PCIe and clocks -----------------------------------------------------------------------------


def gpu_label(gpu: GpuInfo) -> str:
    return f"GPU {gpu.index} ({gpu.pci_bus_id})"


def judge_pcie_link(gpu: GpuInfo, link: PcieLink | None, loaded: bool, why: Unavailable | None) -> Verdict:
    """Current generation and width equal what the GPU and slot allow together.

    Measured under load, a lower generation or width fails. At idle the link may drop to a lower
    generation to save power, so a lower generation is only a note; the width does not drop at
    idle, so a narrower link fails either way.
    """
    v = Verdict()
    label = gpu_label(gpu)
    if link is None:
        if not _unavailable(v, gpu.name, label, why, F_PCIE):
            v.skip = f"not applicable: {F_PCIE} is not supported on {gpu.name}"
        return v
    v.metric("pcie_gen_current", link.current_gen)
    v.metric("pcie_gen_max", link.max_gen)
    v.metric("pcie_gen_gpu_max", link.gpu_max_gen)
    v.metric("pcie_width_current", link.current_width)
    v.metric("pcie_width_max", link.max_width)
    v.metric("pcie_measured_under_load", loaded)
    v.metric("pcie_source", link.source)
    cause = (
        "the card, riser or cable is badly seated or damaged, the slot is wired narrower than it looks, "
        "or the BIOS limits the link"
    )
    fix = (
        f"reseat the GPU and its riser; compare `sudo lspci -vv -s {gpu.pci_bus_id} | grep -e LnkCap -e LnkSta`; "
        "set the slot to Auto/the highest generation in the BIOS; move the GPU to another slot to isolate it"
    )
    if link.current_width is not None and link.max_width is not None and link.current_width < link.max_width:
        v.fail(
            f"the PCIe link of {label} is downtrained to x{link.current_width} "
            f"(the GPU and slot allow x{link.max_width})",
            cause,
            fix,
        )
    if link.current_gen is not None and link.max_gen is not None and link.current_gen < link.max_gen:
        text = f"the PCIe link of {label} runs at Gen{link.current_gen} (the GPU and slot allow Gen{link.max_gen})"
        if loaded:
            v.fail(text + " under load", cause, fix)
        else:
            v.notes.append(
                text + " at idle; idle GPUs lower the link speed to save power, so this was not judged "
                "(a load runs from the container tier on)"
            )
    if link.gpu_max_gen is not None and link.max_gen is not None and link.max_gen < link.gpu_max_gen:
        v.warn(
            f"the slot limits {label} to PCIe Gen{link.max_gen}; the GPU supports Gen{link.gpu_max_gen}",
            "an older slot, riser or PCIe switch, or a BIOS setting, caps the link below the GPU's speed",
            "use a slot of the GPU's generation, or raise the slot's PCIe speed setting in the BIOS",
        )
    return v


def _reason_names(mask: int) -> str:
    return ", ".join(name for bit, name in CLOCK_REASON_NAMES.items() if mask & bit) or "none"


def judge_clocks(
    gpu: GpuInfo, clocks: ClockSample | None, why: Unavailable | None, thresholds: HealthThresholds
) -> Verdict:
    """Hardware slowdown, thermal slowdown and power brake fail; the software power cap is reported."""
    v = Verdict()
    label = gpu_label(gpu)
    if clocks is None:
        if not _unavailable(v, gpu.name, label, why, F_CLOCKS):
            v.skip = f"not applicable: {F_CLOCKS} is not supported on {gpu.name}"
        return v
    v.metric("clock_event_reasons", f"{clocks.mask:#x}")
    v.metric("clock_event_reasons_names", _reason_names(clocks.mask).replace(" ", "_"))
    v.metric("clock_samples", clocks.samples)
    v.metric("clock_measured_under_load", clocks.loaded)
    needed = min(thresholds.clock_reason_min_samples, clocks.samples)
    when = f"in {{count}} of {clocks.samples} samples {'under load' if clocks.loaded else 'at idle'}"
    for bit, cause in CLOCK_FAILING.items():
        count = clocks.counts.get(bit, 0)
        if count >= max(needed, 1):
            v.fail(
                f"{label} reports {CLOCK_REASON_NAMES[bit]} ({bit:#x}) " + when.format(count=count),
                cause,
                "check temperatures and power draw under load (`nvidia-smi -q -d TEMPERATURE,POWER,PERFORMANCE "
                f"-i {gpu.index}`), the fans and airflow, and the power supply and cabling",
            )
        elif count:
            v.notes.append(f"{CLOCK_REASON_NAMES[bit]} seen once in {clocks.samples} samples: not judged")
    if clocks.counts.get(CLOCK_SW_THERMAL, 0):
        v.warn(
            f"{label} reports software thermal slowdown "
            + when.format(count=clocks.counts[CLOCK_SW_THERMAL]),
            "the GPU is above its target temperature and the driver lowers clocks to cool it",
            "improve cooling (airflow, inlet temperature, fan curve); `nvidia-smi -q -d TEMPERATURE`",
        )
    if clocks.counts.get(CLOCK_SW_POWER_CAP, 0):
        v.notes.append(
            f"software power cap active {when.format(count=clocks.counts[CLOCK_SW_POWER_CAP])}: the GPU "
            "draws its power limit (normal under a heavy load)"
        )
    if not clocks.loaded:
        v.notes.append("read at idle: a slowdown that appears only under load is not seen here")
    return v


# -- Xid events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class XidInfo:
    meaning: str
    kind: str  # application, memory, bus, nvlink, firmware, engine, other


XID_KINDS_FIX = {
    "memory": "{reset} to apply the row remapping; if it recurs or a remapping failed, " + RMA_FIX,
    "bus": (
        "reboot (a GPU off the bus cannot be reset in place); check the slot, riser, power cables and "
        "temperatures; if it recurs, reseat the GPU or replace it"
    ),
    "nvlink": (
        "`nvidia-smi nvlink -s -i {index}` and `nvidia-smi nvlink -e -i {index}`; {reset}; if it recurs, "
        "check the NVLink bridge or baseboard with the vendor"
    ),
    "firmware": (
        "{reset}; update to the current driver of the branch; if it recurs, collect `sudo nvidia-bug-report.sh` "
        "for NVIDIA support"
    ),
    "engine": "{reset}; if it recurs with different applications, collect `sudo nvidia-bug-report.sh`",
    "other": (
        "look the code up in NVIDIA's Xid catalog (docs.nvidia.com/deploy/xid-errors); {reset}; "
        "collect `sudo nvidia-bug-report.sh`"
    ),
}

# What each Xid means, paraphrased from NVIDIA's Xid catalog (docs/health.md lists the source).
XID_TABLE: dict[int, XidInfo] = {
    8: XidInfo("GPU stopped processing: a channel timed out", "engine"),
    13: XidInfo(
        "graphics engine exception, usually an application fault (bad address, illegal instruction)",
        "application",
    ),
    31: XidInfo(
        "GPU memory page fault, usually an application touching memory it does not own", "application"
    ),
    32: XidInfo("invalid or corrupted push buffer stream (data corrupted on PCIe, or a driver fault)", "bus"),
    38: XidInfo("driver firmware error", "firmware"),
    43: XidInfo("GPU stopped processing the channel of a faulting application", "application"),
    45: XidInfo(
        "preemptive cleanup: the driver tore down a process (killed, or after an earlier error)",
        "application",
    ),
    48: XidInfo("double-bit (uncorrectable) ECC error in GPU memory", "memory"),
    56: XidInfo("display engine error", "engine"),
    57: XidInfo("error programming the video memory interface", "memory"),
    58: XidInfo("unstable video memory interface", "memory"),
    61: XidInfo("internal micro-controller breakpoint or warning", "firmware"),
    62: XidInfo("internal micro-controller halted", "firmware"),
    63: XidInfo("ECC page retirement or row remapping recorded; a GPU reset applies it", "memory"),
    64: XidInfo("ECC page retirement or row remapping could not be recorded", "memory"),
    68: XidInfo("video decoder (NVDEC) exception, usually caused by the decoding application", "application"),
    69: XidInfo("graphics engine class error", "engine"),
    74: XidInfo("NVLink error: a link between GPUs (or to an NVSwitch) failed", "nvlink"),
    79: XidInfo("GPU has fallen off the bus: it stopped answering on PCIe", "bus"),
    81: XidInfo("VGA subsystem error", "engine"),
    92: XidInfo("high rate of single-bit (correctable) ECC errors", "memory"),
    93: XidInfo("InfoROM wear limit exceeded", "firmware"),
    94: XidInfo("contained uncorrectable ECC error: the application using the memory was stopped", "memory"),
    95: XidInfo("uncontained uncorrectable ECC error: every application on the GPU is affected", "memory"),
    109: XidInfo("context switch timeout: an application did not yield the GPU in time", "application"),
    110: XidInfo("security fault", "firmware"),
    119: XidInfo("GSP (GPU System Processor) firmware did not answer a driver call in time", "firmware"),
    120: XidInfo("GSP (GPU System Processor) firmware error", "firmware"),
    121: XidInfo("C2C (chip-to-chip) link error", "nvlink"),
    122: XidInfo("SPI flash read failure (PMU RPC)", "firmware"),
    123: XidInfo("SPI flash write failure (PMU RPC)", "firmware"),
    124: XidInfo("SPI flash erase failure (PMU RPC)", "firmware"),
    140: XidInfo("unrecovered ECC error in GPU memory", "memory"),
    143: XidInfo("GPU initialisation failure", "firmware"),
    144: XidInfo("NVLink unit error", "nvlink"),
    145: XidInfo("NVLink unit error", "nvlink"),
    146: XidInfo("NVLink unit error", "nvlink"),
    147: XidInfo("NVLink unit error", "nvlink"),
    148: XidInfo("NVLink unit error", "nvlink"),
    149: XidInfo("NVLink unit error", "nvlink"),
    150: XidInfo("NVLink unit error", "nvlink"),
    154: XidInfo("GPU recovery action changed: the driver asks for a reset, a reboot or a drain", "firmware"),
}


def xid_info(code: int) -> XidInfo:
    return XID_TABLE.get(code, XidInfo("an Xid this suite has no description for", "other"))


@dataclass(frozen=True)
class XidEvent:
    """One Xid line of the kernel log. ``pci`` is ``domain:bus:device`` as the driver prints it."""

    code: int
    pci: str
    message: str
    line: str
    pid: str | None = None
    process: str | None = None

    def on_gpu(self, pci_bus_id: str) -> bool:
        return bool(pci_bus_id) and normalize_pci_bus_id(pci_bus_id).rsplit(".", 1)[0] == self.pci


# NVRM: Xid (PCI:0000:00:06): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.
# NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, Row Remapper: New row marked for remapping, reset gpu to activate.
# NVRM: Xid (0000:01:00): 13, 0005 00000000 ...   (drivers before the PCI: prefix)
_XID = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<pci>[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:\.[0-7])?\):\s*"
    r"(?P<code>\d+),\s*(?P<rest>.*?)\s*$"
)
_PID = re.compile(r"^pid=(?P<pid>'[^']*'|[^,\s]*),\s*")
_NAME = re.compile(r"^name=(?P<name>[^,]*),\s*")
_OFF_BUS = re.compile(
    r"NVRM: The NVIDIA GPU (?P<addr>[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:\.[0-7])?"
)


def _xid_pci(text: str) -> str:
    domain, bus, device = text.lower().split(":")
    return f"{domain[-4:].rjust(4, '0')}:{bus}:{device}"


def parse_xids(text: str) -> tuple[XidEvent, ...]:
    """Every Xid in a kernel log (dmesg, journalctl -k or kern.log lines).

    A GPU that fell off the bus while the driver probed it is reported without an Xid line ("The
    NVIDIA GPU <address> ... has fallen off the bus"): that counts as Xid 79.
    """
    events: list[XidEvent] = []
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = _XID.search(line)
        if match:
            rest = match.group("rest")
            pid = name = None
            pid_match = _PID.match(rest)
            if pid_match:
                pid = pid_match.group("pid").strip("'")
                rest = rest[pid_match.end() :]
            name_match = _NAME.match(rest)
            if name_match:
                name = name_match.group("name")
                rest = rest[name_match.end() :]
            events.append(
                XidEvent(
                    int(match.group("code")), _xid_pci(match.group("pci")), rest, line.strip(), pid, name
                )
            )
            continue
        off = _OFF_BUS.search(line)
        if off and any("fallen off the bus" in later for later in lines[number : number + 4]):
            pci = _xid_pci(off.group("addr"))
            if not any(e.code == 79 and e.pci == pci for e in events):
                events.append(
                    XidEvent(
                        79, pci, "GPU has fallen off the bus (reported without an Xid line)", line.strip()
                    )
                )
    return tuple(events)


@dataclass(frozen=True)
class KernelLog:
    """The kernel log since boot, or why it could not be read."""

    text: str | None
    source: str | None
    error: str | None = None


_BOOT_MARK = re.compile(r"kernel: (?:\[\s*0\.0+\] )?Linux version ")


def _since_last_boot(text: str) -> str:
    """The part of a kern.log after the last boot's first line (the file spans several boots)."""
    lines = text.splitlines()
    starts = [n for n, line in enumerate(lines) if _BOOT_MARK.search(line)]
    return "\n".join(lines[starts[-1] :]) if starts else text


def read_kernel_log(host: Host, timeout: float) -> KernelLog:
    """``dmesg``, else ``journalctl -k -b``, else ``/var/log/kern.log``; each may be closed to this user."""
    problems: list[str] = []
    dmesg = host.run(["dmesg"], timeout=timeout)
    if dmesg.ok and dmesg.stdout.strip():
        return KernelLog(dmesg.stdout, "dmesg")
    problems.append(_describe_dmesg(dmesg))
    journal = host.run(["journalctl", "-k", "-b", "--no-pager", "-q"], timeout=timeout)
    if journal.ok and " kernel: " in journal.stdout:
        return KernelLog(journal.stdout, "journalctl -k -b")
    if not journal.missing:
        problems.append(
            journal.describe()
            if not journal.ok
            else "`journalctl -k -b` shows no kernel messages to this user"
        )
    try:
        kern = host.read_text("/var/log/kern.log")
    except PermissionError as exc:
        problems.append(f"/var/log/kern.log is not readable: {exc}")
        kern = None
    if kern and kern.strip():
        return KernelLog(_since_last_boot(kern), "/var/log/kern.log")
    return KernelLog(None, None, "; ".join(problems))


def _describe_dmesg(result: CommandResult) -> str:
    text = result.describe() if not result.ok else "`dmesg` printed nothing"
    if "operation not permitted" in (result.stderr + result.stdout).lower():
        text += " (kernel.dmesg_restrict=1 lets only root read it)"
    return text


def judge_xids(
    label: str, events: Sequence[XidEvent], log: KernelLog, thresholds: HealthThresholds, index: int
) -> Verdict:
    """Xids of one GPU since boot: application Xids are reported, every other one fails."""
    v = Verdict()
    if log.text is None:
        v.skip = (
            f"the kernel log cannot be read: {log.error}; run as root, or "
            "`sudo sysctl kernel.dmesg_restrict=0`, or add the user to the adm group"
        )
        return v
    v.metric("xid_log_source", (log.source or "").replace(" ", "_"))
    v.metric("xid_events", len(events))
    by_code: dict[int, list[XidEvent]] = {}
    for event in events:
        by_code.setdefault(event.code, []).append(event)
    for code, found in sorted(by_code.items()):
        info = xid_info(code)
        v.metric(f"xid_{code}", len(found))
        example = found[-1].line
        if code in thresholds.informational_xids:
            v.notes.append(f"Xid {code} x{len(found)} ({info.meaning}); last: {example}")
            continue
        reset = _reset_fix(index)
        v.fail(
            f"Xid {code} on {label} since boot, {len(found)} time(s): {info.meaning}; last: {example}",
            f"Xid {code}: {info.meaning}",
            XID_KINDS_FIX[info.kind].format(reset=reset, index=index),
        )
    return v


def judge_unlisted_xids(
    events: Sequence[XidEvent], known_addresses: Iterable[str], log: KernelLog
) -> Verdict:
    """Xids of PCI addresses that no listed GPU has: a GPU that fell off the bus is no longer listed."""
    v = Verdict()
    if log.text is None:
        v.skip = f"the kernel log cannot be read: {log.error}"
        return v
    known = {normalize_pci_bus_id(a).rsplit(".", 1)[0] for a in known_addresses if a}
    stray = [e for e in events if e.pci not in known]
    v.metric("xid_events_unlisted_gpus", len(stray))
    for pci in sorted({e.pci for e in stray}):
        mine = [e for e in stray if e.pci == pci]
        codes = sorted({e.code for e in mine})
        v.fail(
            f"Xid {', '.join(map(str, codes))} since boot on PCI {pci}, which no listed GPU has; "
            f"last: {mine[-1].line}",
            "; ".join(f"Xid {c}: {xid_info(c).meaning}" for c in codes),
            XID_KINDS_FIX["bus"],
        )
    return v


# -- fabric --------------------------------------------------------------------------------------

NVSWITCH_CLASS = "0x0680"
_VERSION = re.compile(r"(\d+\.\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class FabricFacts:
    """NVSwitches this machine sees, and the state and version of nv-fabricmanager."""

    nvswitches: tuple[str, ...]
    service_state: str | None = None
    process_running: bool | None = None
    version: str | None = None
    version_error: str | None = None


def scan_nvswitches(host: Host) -> tuple[str, ...]:
    """PCI addresses of NVSwitches (vendor 0x10de, class 0x0680) in ``/sys/bus/pci/devices``."""
    found = []
    for address in host.listdir(PCI_DEVICES):
        base = f"{PCI_DEVICES}/{address}"
        vendor = (host.read_text(f"{base}/vendor") or "").strip().lower()
        class_code = (host.read_text(f"{base}/class") or "").strip().lower()
        if vendor == "0x10de" and class_code.startswith(NVSWITCH_CLASS):
            found.append(address.lower())
    return tuple(found)


def parse_fabricmanager_version(output: str) -> str | None:
    """``Fabric Manager version is : 580.159.04`` to ``580.159.04``."""
    match = re.search(r"version is\s*:?\s*" + _VERSION.pattern, output, flags=re.IGNORECASE)
    if match is None:
        match = _VERSION.search(output)
    return match.group(1) if match else None


def gather_fabric(host: Host, timeout: float) -> FabricFacts:
    """Only NVSwitch systems are asked about nv-fabricmanager."""
    switches = scan_nvswitches(host)
    if not switches:
        return FabricFacts(())
    state_result = host.run(["systemctl", "is-active", "nvidia-fabricmanager"], timeout=timeout)
    state = None if state_result.missing else (state_result.stdout.strip() or None)
    process = host.run(["pgrep", "-x", "nv-fabricmanager"], timeout=timeout)
    running = None if process.missing else process.returncode == 0
    version_result = host.run(["nv-fabricmanager", "--version"], timeout=timeout)
    version = parse_fabricmanager_version(version_result.stdout + version_result.stderr)
    error = None if version else version_result.describe()
    return FabricFacts(switches, state, running, version, error)


FM_INSTALL = (
    "install Fabric Manager of exactly the driver's version (e.g. `sudo apt-get install "
    "nvidia-fabricmanager-{branch}={driver}-1`; on B200 and later also nvlsm), then "
    "`sudo systemctl enable --now nvidia-fabricmanager`; `sudo journalctl -u nvidia-fabricmanager` tells why it stops"
)


def judge_fabric_manager(fabric: FabricFacts, driver_version: str | None, fabric_gpus: int) -> Verdict:
    """NVSwitch systems need nv-fabricmanager running, of the driver's version."""
    v = Verdict()
    v.metric("nvswitches", len(fabric.nvswitches))
    if not fabric.nvswitches:
        if fabric_gpus:
            v.skip = (
                "not applicable here: no NVSwitch is visible on this machine; its "
                f"{fabric_gpus} fabric-attached GPU(s) are managed by a Fabric Manager outside it "
                "(their registration is checked per GPU by test_gpu_fabric_registered)"
            )
        else:
            v.skip = (
                "not applicable: no NVSwitch on this host (no PCI device of vendor 0x10de, class 0x0680); "
                "Fabric Manager is needed on NVSwitch systems (HGX/DGX) only"
            )
        return v
    driver = driver_version or "<driver version>"
    fix = FM_INSTALL.format(branch=driver.split(".")[0], driver=driver)
    v.metric("fabricmanager_service", fabric.service_state)
    v.metric("fabricmanager_version", fabric.version)
    active = fabric.service_state == "active" or bool(fabric.process_running)
    if not active:
        v.fail(
            f"nv-fabricmanager is not running on this NVSwitch system ({len(fabric.nvswitches)} NVSwitches; "
            f"systemctl: {fabric.service_state or 'unknown'})",
            "without Fabric Manager the NVSwitches are not programmed: GPUs stay unregistered and CUDA "
            "fails with 'system not yet initialized' (error 802)",
            fix,
        )
    if fabric.version is None:
        v.fail(
            f"the Fabric Manager version cannot be read: {fabric.version_error}",
            "nv-fabricmanager is not installed or not on PATH",
            fix,
        )
    elif driver_version and fabric.version != driver_version:
        v.fail(
            f"Fabric Manager {fabric.version} does not match driver {driver_version}",
            "Fabric Manager refuses to run with a driver of another version (often after a driver upgrade)",
            fix,
        )
    return v


def judge_gpu_fabric(h: HealthFacts, nvswitches: int) -> Verdict:
    """On a fabric (NVSwitch, HGX board) the GPU's registration completed without error."""
    v = Verdict()
    why = h.unavailable.get(F_FABRIC)
    if h.fabric_state is None and not nvswitches:
        reason = why.detail if why else "no fabric state"
        v.skip = f"not applicable: {h.label} ({h.name}) is not on an NVLink fabric ({reason})"
        return v
    if h.fabric_state is None:
        if why is not None and not why.unsupported:
            _unavailable(v, h.name, h.label, why, F_FABRIC)
        else:
            v.skip = f"not applicable: {F_FABRIC} is not supported on {h.name}"
        return v
    v.metric("fabric_state", h.fabric_state.replace(" ", "_"))
    if h.fabric_state != "completed":
        v.fail(
            f"the NVLink fabric registration of {h.label} is {h.fabric_state!r}, not completed",
            "Fabric Manager is not running, not yet done, or cannot program the NVSwitches; "
            "CUDA fails with 'system not yet initialized' until it completes",
            "`sudo systemctl status nvidia-fabricmanager`; `nvidia-smi -q -i "
            f"{h.index} | grep -A 3 Fabric`; on a VM, the provider's Fabric Manager must finish",
        )
    elif h.fabric_status:
        v.fail(
            f"the NVLink fabric registration of {h.label} completed with an error: {h.fabric_status}",
            "Fabric Manager could not attach the GPU to the fabric",
            "`sudo journalctl -u nvidia-fabricmanager`; reset the GPU or reboot, then restart Fabric Manager",
        )
    return v


# -- image compatibility -------------------------------------------------------------------------

_CONSTRAINT = re.compile(r"^(?P<key>[a-z]+)\s*(?P<op>>=|<=|==|!=|=|>|<)\s*(?P<value>\S+)$")


@dataclass(frozen=True)
class Constraint:
    key: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"


@dataclass(frozen=True)
class CudaRequirement:
    """``NVIDIA_REQUIRE_CUDA``: alternatives separated by spaces, each a comma-separated AND of constraints."""

    raw: str
    alternatives: tuple[tuple[Constraint, ...], ...]

    @property
    def cuda(self) -> str | None:
        """The image's CUDA requirement: the first ``cuda>=X.Y``."""
        for group in self.alternatives:
            for c in group:
                if c.key == "cuda" and c.op == ">=":
                    return c.value
        return None


def parse_require_cuda(text: str) -> CudaRequirement:
    groups = []
    for term in text.split():
        parts = [p for p in term.split(",") if p]
        constraints = []
        for part in parts:
            match = _CONSTRAINT.match(part.strip().lower())
            if match:
                constraints.append(Constraint(match.group("key"), match.group("op"), match.group("value")))
        if constraints:
            groups.append(tuple(constraints))
    return CudaRequirement(text, tuple(groups))


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts) if parts else None


def _compare(left: tuple[int, ...], op: str, right: tuple[int, ...]) -> bool:
    return {
        ">=": left >= right,
        "<=": left <= right,
        ">": left > right,
        "<": left < right,
        "=": left == right,
        "==": left == right,
        "!=": left != right,
    }[op]


@dataclass(frozen=True)
class GpuTraits:
    """What NVIDIA_REQUIRE_CUDA's constraints can name: the GPU's brand and compute capability."""

    brand: str | None
    arch: tuple[int, int] | None


def _holds(c: Constraint, cuda: str | None, driver: str | None, gpu: GpuTraits) -> bool | None:
    """True, False, or None when the fact the constraint needs is unknown."""
    if c.key in ("cuda", "driver", "arch"):
        value = version_tuple(c.value)
        have: tuple[int, ...] | None = {
            "cuda": version_tuple(cuda),
            "driver": version_tuple(driver),
            "arch": gpu.arch,
        }[c.key]
        if value is None or have is None:
            return None
        # A constraint names as many components as it means: driver<471 and driver<=470 both
        # hold for 470.57.02, so the fact is cut to the constraint's length before comparing.
        return _compare(have[: len(value)], c.op, value)
    if c.key == "brand":
        if gpu.brand is None:
            return None
        equal = gpu.brand == c.value
        return equal if c.op in ("=", "==") else not equal
    return None


def requirement_met(
    req: CudaRequirement, cuda: str | None, driver: str | None, gpu: GpuTraits
) -> tuple[bool | None, tuple[Constraint, ...] | None]:
    """Whether one GPU meets the requirement, and through which alternative.

    Alternatives are ORed: ``cuda>=X.Y`` for a driver whose CUDA is new enough, or one of the
    ``brand=...,driver>=N,driver<M`` groups, by which the image's forward-compatibility libraries
    let an older data-centre driver branch run it.
    """
    undecided = False
    for group in req.alternatives:
        results = [_holds(c, cuda, driver, gpu) for c in group]
        if all(r is True for r in results):
            return True, group
        if not any(r is False for r in results):
            undecided = True
    return (None if undecided else False), None


def image_env(attrs: Mapping[str, Any]) -> dict[str, str]:
    """``Config.Env`` of ``docker image inspect`` as a dict."""
    env: dict[str, str] = {}
    for entry in (attrs.get("Config") or {}).get("Env") or []:
        key, _, value = str(entry).partition("=")
        env[key] = value
    return env


def judge_image_cuda(
    image: str, env: Mapping[str, str], cuda: str | None, driver: str | None, gpus: Sequence[GpuTraits]
) -> Verdict:
    """The image's NVIDIA_REQUIRE_CUDA is met by this driver on every GPU."""
    v = Verdict()
    raw = env.get("NVIDIA_REQUIRE_CUDA", "")
    v.metric("image", image)
    v.metric("driver_cuda", cuda)
    if env.get("NVIDIA_DISABLE_REQUIRE", "").lower() in ("1", "true", "yes"):
        v.notes.append(
            f"{image} sets NVIDIA_DISABLE_REQUIRE: the toolkit does not check its CUDA requirement"
        )
        return v
    if not raw.strip():
        v.notes.append(f"{image} declares no NVIDIA_REQUIRE_CUDA: nothing to check")
        return v
    req = parse_require_cuda(raw)
    needed = req.cuda
    v.metric("image_requires_cuda", needed)
    if cuda is None:
        v.skip = "the driver's CUDA version is unknown (neither NVML nor nvidia-smi reported it)"
        return v
    traits = list(gpus) or [GpuTraits(None, None)]
    outcomes = [requirement_met(req, cuda, driver, gpu) for gpu in traits]
    if all(ok is True for ok, _ in outcomes):
        compat = sorted({",".join(map(str, g)) for _, g in outcomes if g and all(c.key != "cuda" for c in g)})
        if compat:
            v.notes.append(
                f"{image} needs CUDA {needed}; it runs through forward compatibility: {' '.join(compat)}"
            )
        return v
    shown = (
        raw if len(raw) <= 80 else raw[:60].rsplit(" ", 1)[0] + f" ... ({len(req.alternatives)} alternatives)"
    )
    if any(ok is False for ok, _ in outcomes):
        v.fail(
            f"{image} needs CUDA {needed or '?'} (NVIDIA_REQUIRE_CUDA={shown}); the driver {driver or '?'} "
            f"provides CUDA {cuda}",
            "its containers fail to start ('requirement error: unsatisfied condition: "
            f"cuda>={needed}'), or CUDA reports 'CUDA driver version is insufficient for CUDA runtime version'",
            f"upgrade the driver to a branch that provides CUDA {needed} or later, or pick an image built "
            f"for CUDA {cuda} or older",
        )
        return v
    v.warn(
        f"cannot decide whether {image} (NVIDIA_REQUIRE_CUDA={shown}) runs on this driver",
        "a constraint names a fact the suite could not read (the GPU's brand or compute capability)",
        f"run `docker run --rm --gpus all {image} nvidia-smi` to see whether the toolkit accepts it",
    )
    return v
