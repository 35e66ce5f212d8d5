"""Burn telemetry of a remote host: one ``nvidia-smi --query-gpu ... -lms`` stream over SSH.

NVML answers only on the machine pytest runs on. For a remote host, one long-running
``nvidia-smi`` on that host prints every GPU's temperature, power, clock and clock-event reasons
every ``period_ms``; a reader thread keeps the latest line per GPU. ``SmiStream`` offers those
values through the few pynvml calls that the burn ``Sampler`` makes, so the sampler, its
temperature guard and its watchdog are the same code for local and remote burns.

A value older than ``stale_after_s`` (the stream stalled, the connection dropped) is a read
error, not the last known value: the guard then stops the burn as blind, as it does when NVML
fails locally.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.hosts.host import end_process_group

# pynvml's names for the values the Sampler asks for; the numbers only need to be distinct.
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_TEMPERATURE_THRESHOLD_SHUTDOWN = 0
NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
NVML_TEMPERATURE_THRESHOLD_GPU_MAX = 3
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_UNKNOWN = 999
NVML_ERROR_TIMEOUT = 10

# Clock-event reasons: the field's name since driver 535, then its older name.
EVENT_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")
STREAM_FIELDS = (
    "index",
    "temperature.gpu",
    "temperature.memory",
    "power.draw",
    "power.limit",
    "clocks.sm",
    "clocks.max.sm",
    "fan.speed",
)


class NVMLError(Exception):
    """pynvml's error type, as the Sampler catches it: ``value`` is the error code."""

    def __init__(self, value: int, message: str = "") -> None:
        super().__init__(message or f"nvidia-smi stream error {value}")
        self.value = value


@dataclass
class _Latest:
    values: dict[str, str]
    received: float


class SmiStream:
    """pynvml's shape over a stream of ``nvidia-smi`` lines from ``argv_prefix`` (``ssh ... host``)."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = NVML_CLOCK_SM
    NVML_TEMPERATURE_THRESHOLD_SHUTDOWN = NVML_TEMPERATURE_THRESHOLD_SHUTDOWN
    NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
    NVML_TEMPERATURE_THRESHOLD_GPU_MAX = NVML_TEMPERATURE_THRESHOLD_GPU_MAX

    def __init__(
        self,
        argv_prefix: Sequence[str],
        gpus: Sequence[GpuInfo],
        *,
        period_ms: int = 100,
        stale_after_s: float = 1.5,
        start_timeout_s: float = 8.0,  # within the Sampler's own start timeout (10 s)
        event_field: str = EVENT_FIELDS[0],
        max_seconds: float = 7 * 24 * 3600.0,
    ) -> None:
        self.argv_prefix = list(argv_prefix)
        self.gpus = {g.index: g for g in gpus}
        self.period_ms = period_ms
        self.stale_after_s = stale_after_s
        self.start_timeout_s = start_timeout_s
        self.fields = (*STREAM_FIELDS, event_field)
        self.max_seconds = max_seconds
        self._latest: dict[int, _Latest] = {}
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.stream_error: str | None = None

    def command(self) -> list[str]:
        """The stream: bounded by coreutils ``timeout`` on the host, so it cannot outlive a burn."""
        ids = ",".join(str(i) for i in sorted(self.gpus))
        smi = (
            f"timeout -k 5 {int(self.max_seconds)} nvidia-smi --query-gpu={','.join(self.fields)} "
            f"--format=csv,noheader,nounits -lms {self.period_ms} -i {ids}"
        )
        return [*self.argv_prefix, smi] if self.argv_prefix else ["sh", "-c", smi]

    # -- life cycle: nvmlInit / nvmlShutdown ------------------------------------------------------

    def nvmlInit(self) -> None:
        """Start the stream and wait for a first line of every GPU."""
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_lines, name="gpuhost:smi-stream", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if set(self.gpus) <= set(self._latest):
                    return
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        error = self.stream_error or self._stderr() or "no line in time"
        self.nvmlShutdown()
        raise NVMLError(NVML_ERROR_UNKNOWN, f"the nvidia-smi stream did not start: {error}")

    def nvmlShutdown(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        # ssh exits; the host's nvidia-smi dies on its next write (SIGPIPE), or at its timeout.
        end_process_group(process)

    def _stderr(self) -> str:
        process = self._process
        if process is None or process.stderr is None or process.poll() is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            return process.stderr.read().strip()
        return ""

    def _read_lines(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for line in process.stdout:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != len(self.fields) or not parts[0].isdigit():
                self.stream_error = line.strip() or self.stream_error
                continue
            values = dict(zip(self.fields, parts, strict=True))
            with self._lock:
                self._latest[int(parts[0])] = _Latest(values, time.monotonic())
        self.stream_error = self.stream_error or "the nvidia-smi stream ended"

    # -- reads --------------------------------------------------------------------------------

    def _value(self, handle: int, field: str) -> str:
        with self._lock:
            latest = self._latest.get(handle)
        if latest is None:
            raise NVMLError(NVML_ERROR_UNKNOWN, f"no nvidia-smi line for GPU {handle}")
        age = time.monotonic() - latest.received
        if age > self.stale_after_s:
            raise NVMLError(
                NVML_ERROR_TIMEOUT, f"the nvidia-smi stream is {age:.1f} s old: {self.stream_error}"
            )
        text = latest.values[field]
        if not text or text.startswith("[") or text in ("N/A", "Unknown Error"):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED, f"{field}: {text}")
        return text

    def _number(self, handle: int, field: str, scale: float = 1.0) -> int:
        return round(float(self._value(handle, field)) * scale)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index not in self.gpus:
            raise NVMLError(NVML_ERROR_UNKNOWN, f"GPU {index} is not streamed")
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        for index, gpu in self.gpus.items():
            if gpu.uuid == uuid:
                return index
        raise NVMLError(NVML_ERROR_UNKNOWN, f"GPU {uuid} is not streamed")

    def nvmlDeviceGetIndex(self, handle: int) -> int:
        return handle

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.gpus[handle].uuid

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self.gpus[handle].name

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return self._number(handle, "temperature.gpu")

    def nvmlDeviceGetFieldValues(self, handle: int, fields: Sequence[int]) -> list[Any]:
        """Only the memory temperature is asked for; it comes as pynvml's field-value record."""
        celsius = float(self._value(handle, "temperature.memory"))
        return [_FieldValue(celsius)]

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._number(handle, "power.draw", 1000.0)  # mW

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._number(handle, "power.limit", 1000.0)

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        return self._number(handle, "clocks.sm")

    def nvmlDeviceGetMaxClockInfo(self, handle: int, clock: int) -> int:
        return self._number(handle, "clocks.max.sm")

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: int) -> int:
        return int(self._value(handle, self.fields[-1]), 16)

    def nvmlDeviceGetFanSpeed(self, handle: int) -> int:
        return self._number(handle, "fan.speed")

    def nvmlDeviceGetTemperatureThreshold(self, handle: int, kind: int) -> int:
        """From the host's ``nvidia-smi -q -x`` facts; NOT_SUPPORTED where it gives none."""
        gpu = self.gpus[handle]
        value = {
            NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: gpu.temp_slowdown_c,
            NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: gpu.temp_shutdown_c,
            NVML_TEMPERATURE_THRESHOLD_GPU_MAX: gpu.temp_max_operating_c,
        }.get(kind)
        if value is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED, "threshold not reported")
        return value


class _FieldValueNumber:
    def __init__(self, value: float) -> None:
        self.dVal = value


class _FieldValue:
    """pynvml's ``nvmlFieldValue_t`` with a double value and a success code."""

    nvmlReturn = 0
    valueType = 0

    def __init__(self, value: float) -> None:
        self.value = _FieldValueNumber(value)


def event_field(run: Any, timeout: float = 15.0) -> str:
    """The clock-event field this host's nvidia-smi knows (``run`` is ``Host.run``)."""
    for field in EVENT_FIELDS:
        result = run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader", "-i", "0"], timeout=timeout
        )
        if result.ok:
            return field
    return EVENT_FIELDS[-1]
