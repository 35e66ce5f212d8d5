"""GPU facts from NVML (``nvidia-ml-py``, imported as ``pynvml``): the fast local path.

``pynvml`` is imported here and nowhere at plugin load time. The whole read runs under one
timeout, because a wedged GPU can hang any NVML call.

A hung NVML costs one timeout per session, not one per reading: after the first timeout of any
NVML call made through :func:`nvml_call`, NVML counts as dead until the session ends (8 GPUs x 5
readings x 30 s would otherwise be 20 minutes), and every later call says so at once.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from pytest_gpuhost.facts.model import GpuInfo, GpuListing, normalize_pci_bus_id
from pytest_gpuhost.timeouts import NativeCallTimeout, call_with_timeout

T = TypeVar("T")

# NVML's return codes (nvml.h) that have a diagnosis of their own.
ERROR_KINDS = {
    4: "permission",  # NVML_ERROR_NO_PERMISSION
    9: "no-driver",  # NVML_ERROR_DRIVER_NOT_LOADED
    12: "library-not-found",  # NVML_ERROR_LIBRARY_NOT_FOUND
    15: "gpu-lost",  # NVML_ERROR_GPU_IS_LOST
    18: "version-mismatch",  # NVML_ERROR_LIB_RM_VERSION_MISMATCH
}


class NvmlDead(NativeCallTimeout):
    """NVML timed out earlier in this session: it is not called again."""

    def __init__(self, first: NativeCallTimeout) -> None:
        TimeoutError.__init__(self, f"NVML counts as dead for this session: {first}")
        self.what, self.seconds = first.what, first.seconds


_dead: list[NativeCallTimeout] = []  # the session's first NVML timeout, if any


def nvml_dead() -> NativeCallTimeout | None:
    """The NVML timeout that made NVML dead for this session, or None."""
    return _dead[0] if _dead else None


def reset_nvml_dead() -> None:
    """A new session (pytest_configure, and each test of the plugin's own suite) trusts NVML again."""
    _dead.clear()


def nvml_call(fn: Callable[[], T], timeout: float, what: str) -> T:
    """``call_with_timeout`` for NVML: raises :class:`NvmlDead` without calling once NVML hung."""
    if _dead:
        raise NvmlDead(_dead[0])
    try:
        return call_with_timeout(fn, timeout, what)
    except NativeCallTimeout as exc:
        if not _dead:
            _dead.append(exc)
        raise


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def load_pynvml() -> ModuleType:
    """Import ``pynvml`` (from ``nvidia-ml-py``); a seam that tests replace with a capture."""
    import pynvml

    module: ModuleType = pynvml
    return module


def _optional(nvml: Any, fn: Callable[[], T]) -> T | None:
    """A field the GPU may not support ("Not Supported") reads as None instead of failing."""
    try:
        return fn()
    except nvml.NVMLError:
        return None


def cuda_version_string(encoded: int) -> str:
    """NVML encodes CUDA 13.0 as 13000."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


def _read_gpu(nvml: Any, index: int) -> GpuInfo:
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _str(nvml.nvmlDeviceGetUUID(handle))
        name = _str(nvml.nvmlDeviceGetName(handle))
        bus_id = normalize_pci_bus_id(_str(nvml.nvmlDeviceGetPciInfo(handle).busId))
    except nvml.NVMLError as exc:
        return GpuInfo(index=index, uuid="", name="", pci_bus_id="", error=f"NVML: {exc}")

    def threshold(kind: int) -> int | None:
        return _optional(nvml, lambda: int(nvml.nvmlDeviceGetTemperatureThreshold(handle, kind)))

    memory = _optional(nvml, lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    power_mw = _optional(nvml, lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
    persistence = _optional(nvml, lambda: nvml.nvmlDeviceGetPersistenceMode(handle))
    mig = _optional(nvml, lambda: nvml.nvmlDeviceGetMigMode(handle))
    capability = _optional(nvml, lambda: nvml.nvmlDeviceGetCudaComputeCapability(handle))
    return GpuInfo(
        index=index,
        uuid=uuid,
        name=name,
        pci_bus_id=bus_id,
        memory_total_mib=int(memory.total) // (1024 * 1024) if memory is not None else None,
        minor_number=_optional(nvml, lambda: int(nvml.nvmlDeviceGetMinorNumber(handle))),
        temperature_c=_optional(
            nvml, lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        ),
        temp_slowdown_c=threshold(nvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN),
        temp_shutdown_c=threshold(nvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN),
        temp_max_operating_c=threshold(nvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX),
        power_limit_w=power_mw / 1000.0 if power_mw is not None else None,
        persistence_mode=bool(persistence) if persistence is not None else None,
        mig_current=bool(mig[0]) if mig is not None else None,
        mig_pending=bool(mig[1]) if mig is not None else None,
        compute_capability=(int(capability[0]), int(capability[1])) if capability else None,
    )


def _read_all(nvml: Any) -> GpuListing:
    nvml.nvmlInit()
    try:
        driver = _str(nvml.nvmlSystemGetDriverVersion())
        library = _optional(nvml, lambda: _str(nvml.nvmlSystemGetNVMLVersion()))
        cuda = _optional(nvml, lambda: int(nvml.nvmlSystemGetCudaDriverVersion()))
        count = int(nvml.nvmlDeviceGetCount())
        gpus = tuple(_read_gpu(nvml, index) for index in range(count))
    finally:
        _optional(nvml, nvml.nvmlShutdown)
    return GpuListing(
        "nvml",
        ok=True,
        driver_version=driver,
        # NVML's own version is "<CUDA major>.<driver version>", e.g. 13.580.159.04.
        library_version=library.split(".", 1)[1] if library and library.count(".") >= 3 else library,
        cuda_driver_version=cuda_version_string(cuda) if cuda else None,
        gpus=gpus,
    )


def read_nvml(timeout: float, loader: Callable[[], ModuleType] | None = None) -> GpuListing:
    """Everything NVML says about the driver and GPUs; failures become a listing with an error."""
    try:
        nvml: Any = (loader or load_pynvml)()
    except ImportError as exc:
        return GpuListing("nvml", ok=False, error=f"pynvml cannot be imported: {exc}", error_kind="import")
    try:
        return nvml_call(lambda: _read_all(nvml), timeout, "NVML")
    except NativeCallTimeout as exc:
        return GpuListing("nvml", ok=False, error=str(exc), error_kind="timeout")
    except nvml.NVMLError as exc:
        code = getattr(exc, "value", None)
        kind = ERROR_KINDS.get(code, "error") if isinstance(code, int) else "error"
        return GpuListing("nvml", ok=False, error=f"NVML: {exc}", error_kind=kind)
