"""GPU health read through NVML: ECC, retired pages, row remapping, PCIe, clocks, MIG, fabric."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pytest_gpuhost.facts.health import (
    F_BRAND,
    F_CLOCKS,
    F_ECC_COUNTS,
    F_ECC_MODE,
    F_FABRIC,
    F_MIG,
    F_PCIE,
    F_REMAP,
    F_RETIRED,
    FABRIC_STATES,
    NVML_BRANDS,
    NVML_FUNCTION_NOT_FOUND,
    NVML_NOT_SUPPORTED,
    EccCounts,
    HealthFacts,
    LiveReading,
    PcieLink,
    Unavailable,
    as_text,
)
from pytest_gpuhost.facts.model import normalize_pci_bus_id

T = TypeVar("T")


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
    uuid = as_text(nvml.nvmlDeviceGetUUID(handle))
    name = as_text(nvml.nvmlDeviceGetName(handle))
    bus = normalize_pci_bus_id(as_text(nvml.nvmlDeviceGetPciInfo(handle).busId))
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
