"""NVML telemetry during the burn: one sampling thread, a watchdog, and a stop that always fires.

Why a watchdog: a wedged GPU can hang any NVML call, and a hung call cannot be interrupted from
Python. Wrapping every call in a thread (``timeouts.call_with_timeout``) would cost a thread per
read at 10 Hz; instead one watchdog notices that no read has completed for ``stuck_after_s`` and
stops the burn. The same holds for an exception in the sampling thread: whatever ends the
monitoring also ends the burn, so no GPU is left burning unwatched.

``stop`` runs in a thread of its own, at most once, so that a slow stop (``docker kill``) neither
delays nor interrupts the sampling of the cool-down.

The state is written by three threads (sampler, watchdog, the caller's ``close``): every change
goes through one lock and leaves ``running`` at most once, so the first failure seen is the one
reported, and a sampling thread still hung at ``close`` is reported as stuck, never as a clean stop.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal

from pytest_gpuhost.burn.model import GpuStatic, Sample
from pytest_gpuhost.facts.nvml import load_pynvml, nvml_call
from pytest_gpuhost.timeouts import call_with_timeout

State = Literal["new", "running", "closed", "crashed", "stuck"]

NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED
FUNCTION_NOT_FOUND = 13  # NVML_ERROR_FUNCTION_NOT_FOUND: an older driver
MEMORY_TEMP_FIELD = 82  # NVML_FI_DEV_MEMORY_TEMP
LIMIT_EVERY = 10  # the enforced power limit rarely changes: read it every 10th sample


class SamplerError(RuntimeError):
    """The sampler could not start: the burn must not start either."""


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field_number(entry: Any) -> float | None:
    """The value of one ``nvmlFieldValue_t``, or None where its own return code is an error."""
    if int(getattr(entry, "nvmlReturn", 0)) != 0:
        return None
    kind = int(getattr(entry, "valueType", 1))
    name = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}.get(kind)
    return float(getattr(entry.value, name)) if name else None


class _Gpu:
    """One GPU's handle and which optional reads it supports (learned on the first try)."""

    def __init__(self, index: int, handle: Any) -> None:
        self.index = index
        self.handle = handle
        self.unsupported: set[str] = set()
        self.count = 0
        self.power_limit_w: float | None = None


class Sampler:
    """Samples GPU telemetry through NVML at ``hz`` in a background thread.

    ``gpus`` are NVML indices or UUIDs. ``guard`` sees every sample and returns a reason to stop,
    or None; the first reason, a crash of the sampling thread, or an NVML read stuck for
    ``stuck_after_s`` calls ``stop`` once (from a thread of its own) and records why in
    ``stop_reason``. ``on_sample`` (optional) sees every sample too, e.g. to stream it to a file.
    """

    def __init__(
        self,
        gpus: Sequence[int | str],
        stop: Callable[[], object],
        *,
        guard: Callable[[Sample], str | None] | None = None,
        hz: float = 10.0,
        stuck_after_s: float = 2.0,
        start_timeout_s: float = 10.0,
        on_sample: Callable[[Sample], None] | None = None,
        keep: bool = True,
        loader: Callable[[], Any] | None = None,
    ) -> None:
        if hz <= 0:
            raise ValueError("hz must be positive")
        if stuck_after_s <= 2.0 / hz:
            raise ValueError("stuck_after_s must exceed two sampling periods")
        self.gpus = list(gpus)
        self.period = 1.0 / hz
        self.stuck_after_s = stuck_after_s
        self.start_timeout_s = start_timeout_s
        self._stop_fn = stop
        self._guard = guard
        self._on_sample = on_sample
        self._keep = keep
        self._loader = loader or load_pynvml
        self._nvml: Any = None
        self._handles: list[_Gpu] = []
        self._samples: dict[int, list[Sample]] = {}
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._beat = 0.0
        self._in_call: tuple[int, str] | None = None
        self._cpu_sampler = 0.0
        self._cpu_watchdog = 0.0
        self._temperature: Callable[[Any], Any] | None = None
        self._events: Callable[[Any], Any] | None = None
        self.info: dict[int, GpuStatic] = {}
        self.state: State = "new"
        self.error: str | None = None
        self.stop_reason: str | None = None
        self.stop_called_at: float | None = None
        self.stop_error: str | None = None
        self.read_errors = 0
        self.last_read_error: str | None = None
        self.t0 = 0.0
        self.t_end: float | None = None

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> Sampler:
        """Initialise NVML, read each GPU's fixed facts, start sampling. Raises SamplerError."""
        if self.state != "new":
            raise SamplerError("a Sampler starts once")
        try:
            self._nvml = self._loader()
        except ImportError as exc:
            raise SamplerError(f"pynvml cannot be imported: {exc}") from exc
        nvml = self._nvml
        # This machine's NVML shares the session's dead-after-one-timeout rule; a remote stream does not.
        opener = nvml_call if self._loader is load_pynvml else call_with_timeout
        try:
            opener(self._open, self.start_timeout_s, "NVML (burn sampler start)")
        except nvml.NVMLError as exc:
            raise SamplerError(f"NVML: {exc}") from exc
        except TimeoutError as exc:
            raise SamplerError(str(exc)) from exc
        self.t0 = self._beat = time.monotonic()
        self.state = "running"
        self._thread = threading.Thread(target=self._run, name="gpuhost:burn-sampler", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="gpuhost:burn-watchdog", daemon=True)
        self._thread.start()
        self._watchdog.start()
        return self

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop sampling and release NVML. A stuck or crashed state is kept for the report."""
        if self.state == "new":
            return
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._watchdog is not None:
            self._watchdog.join(timeout_s)
        if self.t_end is None:
            self.t_end = time.monotonic()
        hung = self._thread is not None and self._thread.is_alive()
        if hung:
            where = self._in_call
            call = f"NVML {where[1]} read of GPU {where[0]}" if where else "the sampling thread"
            self._leave_running(
                "stuck", f"{call} did not return within {timeout_s:g} s of the stop: monitoring is stuck"
            )
        else:
            self._leave_running("closed", None)
        if not hung and self._nvml is not None:  # a hung NVML would hang its shutdown too
            nvml = self._nvml
            with contextlib.suppress(TimeoutError, nvml.NVMLError):
                call_with_timeout(nvml.nvmlShutdown, timeout_s, "NVML shutdown")
            self._nvml = None

    def __enter__(self) -> Sampler:
        return self.start() if self.state == "new" else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- results ---------------------------------------------------------------------------------

    @property
    def ok(self) -> bool:
        """False once the monitoring itself failed (crashed or stuck)."""
        return self.state not in ("crashed", "stuck")

    @property
    def indices(self) -> list[int]:
        return [gpu.index for gpu in self._handles]

    def samples(self, gpu: int | None = None) -> list[Sample]:
        """A copy of the samples so far: of one GPU (NVML index), or of all in time order."""
        with self._lock:
            if gpu is not None:
                return list(self._samples.get(gpu, ()))
            merged = [s for series in self._samples.values() for s in series]
        return sorted(merged, key=lambda s: s.t)

    def latest(self, gpu: int) -> Sample | None:
        with self._lock:
            series = self._samples.get(gpu)
            return series[-1] if series else None

    @property
    def cpu_seconds(self) -> float:
        """CPU time spent by the sampling and watchdog threads."""
        return self._cpu_sampler + self._cpu_watchdog

    @property
    def wall_seconds(self) -> float:
        if self.state == "new":
            return 0.0
        return (self.t_end or time.monotonic()) - self.t0

    # --- internals -------------------------------------------------------------------------------

    def _open(self) -> None:
        nvml = self._nvml
        nvml.nvmlInit()
        for ref in self.gpus:
            if isinstance(ref, str):
                handle = nvml.nvmlDeviceGetHandleByUUID(ref)
                index = int(nvml.nvmlDeviceGetIndex(handle))
            else:
                handle = nvml.nvmlDeviceGetHandleByIndex(ref)
                index = int(ref)
            gpu = _Gpu(index, handle)
            self._handles.append(gpu)
            self._samples[index] = []
            self.info[index] = self._static(gpu)
        self._temperature = self._pick(
            lambda h: nvml.nvmlDeviceGetTemperatureV(h, nvml.NVML_TEMPERATURE_GPU),
            lambda h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
            "nvmlDeviceGetTemperatureV",
        )
        self._events = self._pick(
            lambda h: nvml.nvmlDeviceGetCurrentClocksEventReasons(h),
            lambda h: nvml.nvmlDeviceGetCurrentClocksThrottleReasons(h),
            "nvmlDeviceGetCurrentClocksEventReasons",
        )

    def _pick(self, new: Callable[[Any], Any], old: Callable[[Any], Any], name: str) -> Callable[[Any], Any]:
        """The newer NVML call where the module and driver answer it, else its deprecated twin.

        Any failure of the newer call falls back: a missing temperature would blind the guard.
        """
        if not hasattr(self._nvml, name) or not self._handles:
            return old
        try:
            new(self._handles[0].handle)
        except Exception:
            return old
        return new

    def _static(self, gpu: _Gpu) -> GpuStatic:
        nvml, handle = self._nvml, gpu.handle

        def optional(fn: Callable[[], Any]) -> float | None:
            try:
                return float(fn())
            except nvml.NVMLError:
                return None

        def threshold(name: str) -> float | None:
            kind = getattr(nvml, name, None)
            if kind is None:
                return None
            return optional(lambda: nvml.nvmlDeviceGetTemperatureThreshold(handle, kind))

        limit_mw = optional(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
        gpu.power_limit_w = limit_mw / 1000.0 if limit_mw is not None else None
        return GpuStatic(
            index=gpu.index,
            uuid=_str(nvml.nvmlDeviceGetUUID(handle)),
            name=_str(nvml.nvmlDeviceGetName(handle)),
            slowdown_c=threshold("NVML_TEMPERATURE_THRESHOLD_SLOWDOWN"),
            shutdown_c=threshold("NVML_TEMPERATURE_THRESHOLD_SHUTDOWN"),
            max_operating_c=threshold("NVML_TEMPERATURE_THRESHOLD_GPU_MAX"),
            mem_max_c=threshold("NVML_TEMPERATURE_THRESHOLD_MEM_MAX"),
            power_limit_w=gpu.power_limit_w,
            sm_clock_max_mhz=optional(lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM)),
        )

    def _read(self, gpu: _Gpu, name: str, fn: Callable[[Any], Any]) -> Any:
        """One NVML read: None if unsupported (then never tried again) or failing this time."""
        if name in gpu.unsupported:
            return None
        nvml = self._nvml
        self._in_call = (gpu.index, name)
        try:
            return fn(gpu.handle)
        except nvml.NVMLError as exc:
            if getattr(exc, "value", None) == NOT_SUPPORTED:
                gpu.unsupported.add(name)
            else:
                self.read_errors += 1
                self.last_read_error = f"GPU {gpu.index} {name}: {exc}"
            return None
        finally:
            self._in_call = None

    def _memory_temp(self, handle: Any) -> float | None:
        entries = self._nvml.nvmlDeviceGetFieldValues(handle, [MEMORY_TEMP_FIELD])
        value = _field_number(entries[0])
        if value is None and int(getattr(entries[0], "nvmlReturn", 0)) == NOT_SUPPORTED:
            raise self._nvml.NVMLError(NOT_SUPPORTED)
        return value

    def _sample(self, gpu: _Gpu) -> Sample:
        nvml = self._nvml
        assert self._temperature is not None and self._events is not None
        temp = self._read(gpu, "temperature", self._temperature)
        mem_temp = self._read(gpu, "memory temperature", self._memory_temp)
        power = self._read(gpu, "power", nvml.nvmlDeviceGetPowerUsage)
        if gpu.count % LIMIT_EVERY == 0:
            limit = self._read(gpu, "power limit", nvml.nvmlDeviceGetEnforcedPowerLimit)
            if limit is not None:
                gpu.power_limit_w = limit / 1000.0
        clock = self._read(gpu, "SM clock", lambda h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))
        events = self._read(gpu, "clock-event reasons", self._events)
        fan = self._read(gpu, "fan", nvml.nvmlDeviceGetFanSpeed)
        gpu.count += 1
        return Sample(
            gpu=gpu.index,
            t=time.monotonic(),
            temp_c=float(temp) if temp is not None else None,
            mem_temp_c=float(mem_temp) if mem_temp is not None else None,
            power_w=power / 1000.0 if power is not None else None,
            power_limit_w=gpu.power_limit_w,
            sm_clock_mhz=float(clock) if clock is not None else None,
            event_reasons=int(events) if events is not None else None,
            fan_pct=float(fan) if fan is not None else None,
        )

    def _run(self) -> None:
        try:
            next_tick = time.monotonic()
            while not self._closing.is_set():
                self._beat = time.monotonic()
                for gpu in self._handles:
                    sample = self._sample(gpu)
                    self._beat = sample.t
                    if self._keep:
                        with self._lock:
                            self._samples[gpu.index].append(sample)
                    if self._on_sample is not None:
                        self._on_sample(sample)
                    reason = self._guard(sample) if self._guard is not None else None
                    if reason:
                        self._request_stop(f"guard: {reason}")
                self._cpu_sampler = time.thread_time()
                next_tick += self.period
                now = time.monotonic()
                if next_tick < now:  # late (a slow read): skip the missed ticks, keep the rhythm
                    next_tick = now + self.period - (now - next_tick) % self.period
                self._closing.wait(next_tick - now)
        except BaseException as exc:  # any failure of the monitoring stops the burn
            self._leave_running("crashed", f"sampler crashed: {type(exc).__name__}: {exc}")
            self._request_stop(self.error or f"sampler crashed: {exc!r}")
        finally:
            self._cpu_sampler = time.thread_time()
            self.t_end = time.monotonic()

    def _watch(self) -> None:
        poll = min(0.25, self.stuck_after_s / 4)
        while not self._closing.wait(poll):
            self._cpu_watchdog = time.thread_time()
            if self.state != "running":
                return
            thread = self._thread
            if thread is not None and not thread.is_alive():
                self._leave_running("crashed", "sampler thread ended unexpectedly")
                self._request_stop(self.error or "sampler thread ended unexpectedly")
                return
            silent = time.monotonic() - self._beat
            if silent > self.stuck_after_s:
                where = self._in_call
                call = f"NVML {where[1]} read of GPU {where[0]}" if where else "the sampler"
                self._leave_running(
                    "stuck", f"{call} has not returned for {silent:.1f} s: monitoring is stuck"
                )
                self._request_stop(self.error or "monitoring is stuck")
                return
        self._cpu_watchdog = time.thread_time()

    def _leave_running(self, state: State, error: str | None) -> bool:
        """The one way out of ``running``: the first caller wins, later ones change nothing."""
        with self._state_lock:
            if self.state != "running":
                return False
            self.state = state
            if error is not None and self.error is None:
                self.error = error
            return True

    def _request_stop(self, reason: str) -> None:
        with self._lock:
            if self.stop_reason is not None:
                return
            self.stop_reason = reason
            self.stop_called_at = time.monotonic()

        def call_stop() -> None:
            try:
                self._stop_fn()
            except Exception as exc:  # reported; the caller's stop must not kill the sampler
                self.stop_error = f"{type(exc).__name__}: {exc}"

        threading.Thread(target=call_stop, name="gpuhost:burn-stop", daemon=True).start()
