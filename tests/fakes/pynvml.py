"""A fake ``pynvml`` (nvidia-ml-py) that replays an NVML capture of a real GPU host.

The plugin's tests fake nothing but the driver's boundary; this module is that boundary for
NVML. It has the names, error codes and error strings of the real module (``tests/test_facts.py``
checks them against the installed nvidia-ml-py) and serves ``nvml-dump.json`` captures:

- ``GPUHOST_FAKE_NVML``: path of the capture. Unset: ``nvmlInit`` raises LIBRARY_NOT_FOUND, as
  on a host without ``libnvidia-ml.so.1``.
- ``GPUHOST_FAKE_NVML_INIT_ERROR``: an NVML return code ``nvmlInit`` raises (18: version mismatch).
- ``GPUHOST_FAKE_NVML_HANG``: ``<function>:<seconds>``, that call sleeps first (a wedged GPU).

A busy GPU is a capture edited to hold ``"utilization"`` and ``"compute_processes"``; the real
captures are of idle GPUs and hold neither.

In a capture, a field recorded as ``{"nvml_error": "Not Supported"}`` (or a code) raises that
NVMLError; so does a whole GPU entry recorded that way, from ``nvmlDeviceGetHandleByIndex``.
Fields a capture lacks raise NOT_SUPPORTED.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22
NVML_ERROR_INSUFFICIENT_RESOURCES = 23
NVML_ERROR_FREQ_NOT_SUPPORTED = 24
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_INVALID_STATE = 29
NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_TEMPERATURE_THRESHOLD_SHUTDOWN = 0
NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
NVML_TEMPERATURE_THRESHOLD_MEM_MAX = 2
NVML_TEMPERATURE_THRESHOLD_GPU_MAX = 3
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_CLOCK_VIDEO = 3
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1


class NVMLError(Exception):
    """Like the real one: ``NVMLError(code)`` builds the code's subclass; ``str`` is NVML's text."""

    _valClassMapping: dict[int, type[NVMLError]] = {}  # noqa: RUF012 (the real module's name and shape)
    # The real module's table; other codes ask libnvidia-ml, which without a library gives the fallback.
    _errcode_to_string: dict[int, str] = {  # noqa: RUF012
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
        NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_TIMEOUT: "Timeout",
        NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
        NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
        NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
        NVML_ERROR_MEMORY: "Insufficient Memory",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return self._errcode_to_string.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NVMLError) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)


def _error_class_name(constant: str) -> str:
    """``NVML_ERROR_LIB_RM_VERSION_MISMATCH`` -> ``NVMLError_LibRmVersionMismatch``, as the real module."""
    words = constant.removeprefix("NVML_ERROR_").split("_")
    return "NVMLError_" + "".join(word.capitalize() for word in words)


for _name, _code in list(globals().items()):
    if _name.startswith("NVML_ERROR_") and isinstance(_code, int):
        _cls = type(_error_class_name(_name), (NVMLError,), {})
        NVMLError._valClassMapping[_code] = _cls
        globals()[_cls.__name__] = _cls


def nvmlErrorString(result: int) -> str:
    return str(NVMLError(result))


class _Struct:
    """Stands for the ctypes structs (``c_nvmlMemory_t``, ``nvmlPciInfo_t``): fields as attributes."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__dict__})"


class c_nvmlDevice_t:
    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<fake c_nvmlDevice_t {self.index}>"


_lock = threading.Lock()
_capture: dict[str, Any] | None = None
_refcount = 0
_STRINGS = {text: code for code, text in NVMLError._errcode_to_string.items()}


def _hang(function: str) -> None:
    spec = os.environ.get("GPUHOST_FAKE_NVML_HANG", "")
    name, _, seconds = spec.partition(":")
    if name == function:
        time.sleep(float(seconds or 3600))


def _raise_recorded(value: Any) -> Any:
    """A captured value, or the NVMLError the capture recorded for it."""
    if isinstance(value, dict) and "nvml_error" in value:
        recorded = value["nvml_error"]
        code = recorded if isinstance(recorded, int) else _STRINGS.get(recorded, NVML_ERROR_UNKNOWN)
        raise NVMLError(code)
    return value


def _system(function: str) -> dict[str, Any]:
    _hang(function)
    if _capture is None:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    return _capture


def _system_field(function: str, key: str) -> Any:
    capture = _system(function)
    if key not in capture:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return _raise_recorded(capture[key])


def _gpu(function: str, handle: c_nvmlDevice_t) -> dict[str, Any]:
    capture = _system(function)
    if not isinstance(handle, c_nvmlDevice_t) or handle.index >= len(capture["gpus"]):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    gpu: dict[str, Any] = _raise_recorded(capture["gpus"][handle.index])
    return gpu


def _field(function: str, handle: c_nvmlDevice_t, key: str) -> Any:
    gpu = _gpu(function, handle)
    if key not in gpu:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return _raise_recorded(gpu[key])


# -- initialisation -----------------------------------------------------------------------------


def nvmlInitWithFlags(flags: int) -> None:
    global _capture, _refcount
    _hang("nvmlInit")
    code = os.environ.get("GPUHOST_FAKE_NVML_INIT_ERROR")
    if code:
        raise NVMLError(int(code))
    path = os.environ.get("GPUHOST_FAKE_NVML")
    if not path:
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    with _lock:
        if _refcount == 0:
            with open(path, encoding="utf-8") as handle:
                _capture = json.load(handle)
        _refcount += 1


def nvmlInit() -> None:
    nvmlInitWithFlags(0)


def nvmlShutdown() -> None:
    global _capture, _refcount
    _hang("nvmlShutdown")
    with _lock:
        if _refcount == 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        _refcount -= 1
        if _refcount == 0:
            _capture = None


# -- system -------------------------------------------------------------------------------------


def nvmlSystemGetDriverVersion() -> str:
    return str(_system_field("nvmlSystemGetDriverVersion", "driver"))


def nvmlSystemGetNVMLVersion() -> str:
    return str(_system_field("nvmlSystemGetNVMLVersion", "nvml"))


def nvmlSystemGetCudaDriverVersion() -> int:
    return int(_system_field("nvmlSystemGetCudaDriverVersion", "cuda_driver"))


def nvmlSystemGetCudaDriverVersion_v2() -> int:
    return int(_system_field("nvmlSystemGetCudaDriverVersion_v2", "cuda_driver"))


# -- devices ------------------------------------------------------------------------------------


def nvmlDeviceGetCount() -> int:
    capture = _system("nvmlDeviceGetCount")
    return int(capture.get("count", len(capture["gpus"])))


def nvmlDeviceGetHandleByIndex(index: int) -> c_nvmlDevice_t:
    handle = c_nvmlDevice_t(int(index))
    _gpu("nvmlDeviceGetHandleByIndex", handle)
    return handle


def _find(function: str, key: str, wanted: str) -> c_nvmlDevice_t:
    capture = _system(function)
    for index, gpu in enumerate(capture["gpus"]):
        if isinstance(gpu, dict) and key in gpu and _value_matches(gpu[key], wanted):
            return c_nvmlDevice_t(index)
    raise NVMLError(NVML_ERROR_NOT_FOUND)


def _value_matches(value: Any, wanted: str) -> bool:
    if isinstance(value, dict):
        return wanted.lower() in {
            str(value.get("busId", "")).lower(),
            str(value.get("busIdLegacy", "")).lower(),
        }
    return str(value) == wanted


def nvmlDeviceGetHandleByUUID(uuid: str | bytes) -> c_nvmlDevice_t:
    wanted = uuid.decode() if isinstance(uuid, bytes) else uuid
    return _find("nvmlDeviceGetHandleByUUID", "uuid", wanted)


def nvmlDeviceGetHandleByPciBusId(pciBusId: str | bytes) -> c_nvmlDevice_t:
    wanted = pciBusId.decode() if isinstance(pciBusId, bytes) else pciBusId
    return _find("nvmlDeviceGetHandleByPciBusId", "pci", wanted)


def nvmlDeviceGetIndex(handle: c_nvmlDevice_t) -> int:
    _gpu("nvmlDeviceGetIndex", handle)
    return handle.index


def nvmlDeviceGetName(handle: c_nvmlDevice_t) -> str:
    return str(_field("nvmlDeviceGetName", handle, "name"))


def nvmlDeviceGetUUID(handle: c_nvmlDevice_t) -> str:
    return str(_field("nvmlDeviceGetUUID", handle, "uuid"))


def nvmlDeviceGetSerial(handle: c_nvmlDevice_t) -> str:
    return str(_field("nvmlDeviceGetSerial", handle, "serial"))


def nvmlDeviceGetVbiosVersion(handle: c_nvmlDevice_t) -> str:
    return str(_field("nvmlDeviceGetVbiosVersion", handle, "vbios"))


def nvmlDeviceGetMinorNumber(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetMinorNumber", handle, "minor"))


def nvmlDeviceGetPciInfo_v3(handle: c_nvmlDevice_t) -> _Struct:
    return _Struct(dict(_field("nvmlDeviceGetPciInfo", handle, "pci")))


def nvmlDeviceGetPciInfo(handle: c_nvmlDevice_t) -> _Struct:
    return nvmlDeviceGetPciInfo_v3(handle)


def nvmlDeviceGetMemoryInfo(handle: c_nvmlDevice_t, version: int | None = None) -> _Struct:
    return _Struct(dict(_field("nvmlDeviceGetMemoryInfo", handle, "memory")))


def nvmlDeviceGetTemperature(handle: c_nvmlDevice_t, sensor: int) -> int:
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return int(_field("nvmlDeviceGetTemperature", handle, "temp"))


_THRESHOLDS = {
    NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: "temp_shutdown",
    NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: "temp_slowdown",
    NVML_TEMPERATURE_THRESHOLD_MEM_MAX: "temp_mem_max",
    NVML_TEMPERATURE_THRESHOLD_GPU_MAX: "temp_gpu_max",
}


def nvmlDeviceGetTemperatureThreshold(handle: c_nvmlDevice_t, threshold: int) -> int:
    key = _THRESHOLDS.get(threshold)
    if key is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return int(_field("nvmlDeviceGetTemperatureThreshold", handle, key))


def nvmlDeviceGetPowerUsage(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetPowerUsage", handle, "power_mw"))


def nvmlDeviceGetEnforcedPowerLimit(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetEnforcedPowerLimit", handle, "power_limit_mw"))


def nvmlDeviceGetPowerManagementLimit(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetPowerManagementLimit", handle, "power_limit_mw"))


def nvmlDeviceGetFanSpeed(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetFanSpeed", handle, "fan"))


def nvmlDeviceGetPersistenceMode(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetPersistenceMode", handle, "persistence"))


def nvmlDeviceGetMigMode(handle: c_nvmlDevice_t) -> list[int]:
    return [int(v) for v in _field("nvmlDeviceGetMigMode", handle, "mig")]


def nvmlDeviceGetEccMode(handle: c_nvmlDevice_t) -> list[int]:
    return [int(v) for v in _field("nvmlDeviceGetEccMode", handle, "ecc_mode")]


def nvmlDeviceGetTotalEccErrors(handle: c_nvmlDevice_t, errorType: int, counterType: int) -> int:
    kind = "uncorrected" if errorType == NVML_MEMORY_ERROR_TYPE_UNCORRECTED else "corrected"
    counter = "aggregate" if counterType == NVML_AGGREGATE_ECC else "volatile"
    return int(_field("nvmlDeviceGetTotalEccErrors", handle, f"ecc_{kind}_{counter}"))


def nvmlDeviceGetRemappedRows(handle: c_nvmlDevice_t) -> tuple[int, int, int, int]:
    corr, unc, pending, failure = (
        int(v) for v in _field("nvmlDeviceGetRemappedRows", handle, "remapped_rows")
    )
    return (corr, unc, pending, failure)


def nvmlDeviceGetRetiredPagesPendingStatus(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetRetiredPagesPendingStatus", handle, "retired_pending"))


def nvmlDeviceGetCurrPcieLinkGeneration(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetCurrPcieLinkGeneration", handle, "pcie_gen"))


def nvmlDeviceGetMaxPcieLinkGeneration(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetMaxPcieLinkGeneration", handle, "pcie_gen_max"))


def nvmlDeviceGetGpuMaxPcieLinkGeneration(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetGpuMaxPcieLinkGeneration", handle, "pcie_gen_gpu_max"))


def nvmlDeviceGetCurrPcieLinkWidth(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetCurrPcieLinkWidth", handle, "pcie_width"))


def nvmlDeviceGetMaxPcieLinkWidth(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetMaxPcieLinkWidth", handle, "pcie_width_max"))


def nvmlDeviceGetPcieReplayCounter(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetPcieReplayCounter", handle, "pcie_replay"))


def nvmlDeviceGetCurrentClocksEventReasons(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetCurrentClocksEventReasons", handle, "clocks_event_reasons"))


def nvmlDeviceGetCurrentClocksThrottleReasons(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetCurrentClocksThrottleReasons", handle, "clocks_event_reasons"))


def nvmlDeviceGetClockInfo(handle: c_nvmlDevice_t, type: int) -> int:
    if type != NVML_CLOCK_SM:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return int(_field("nvmlDeviceGetClockInfo", handle, "sm_clock"))


def nvmlDeviceGetMaxClockInfo(handle: c_nvmlDevice_t, type: int) -> int:
    if type != NVML_CLOCK_SM:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return int(_field("nvmlDeviceGetMaxClockInfo", handle, "sm_clock_max"))


def nvmlDeviceGetCudaComputeCapability(handle: c_nvmlDevice_t) -> tuple[int, int]:
    major, minor = _field("nvmlDeviceGetCudaComputeCapability", handle, "compute_cap")
    return (int(major), int(minor))


def nvmlDeviceGetArchitecture(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetArchitecture", handle, "arch"))


def nvmlDeviceGetBrand(handle: c_nvmlDevice_t) -> int:
    return int(_field("nvmlDeviceGetBrand", handle, "brand"))


def nvmlDeviceGetUtilizationRates(handle: c_nvmlDevice_t) -> _Struct:
    """A capture's ``"utilization": {"gpu": 97, "memory": 40}`` (percent, as NVML reports them)."""
    return _Struct(dict(_field("nvmlDeviceGetUtilizationRates", handle, "utilization")))


def nvmlDeviceGetComputeRunningProcesses(handle: c_nvmlDevice_t) -> list[_Struct]:
    """A capture's ``"compute_processes": [{"pid": 4242, "usedGpuMemory": bytes}]``."""
    entries = _field("nvmlDeviceGetComputeRunningProcesses", handle, "compute_processes")
    return [_Struct({"gpuInstanceId": 0xFFFFFFFF, "computeInstanceId": 0xFFFFFFFF, **e}) for e in entries]


# Field values (nvml.h's nvmlFieldValue_t). The captures hold no field reads, so every field
# answers as a GPU without that field does: the entry's own return code is NOT_SUPPORTED.
class c_nvmlFieldValue_t:
    def __init__(self, field_id: int, ret: int) -> None:
        self.fieldId = field_id
        self.nvmlReturn = ret
        self.valueType = 1
        self.value = type("c_nvmlValue_t", (), {"uiVal": 0})()


def nvmlDeviceGetFieldValues(handle: c_nvmlDevice_t, field_ids: list[int]) -> list[c_nvmlFieldValue_t]:
    _gpu("nvmlDeviceGetFieldValues", handle)
    return [c_nvmlFieldValue_t(field_id, NVML_ERROR_NOT_SUPPORTED) for field_id in field_ids]
