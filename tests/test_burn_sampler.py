"""The burn's NVML sampler and temperature guard, against a scripted fake NVML.

The fake stands at the NVML boundary: a small object with the pynvml functions the sampler calls,
returning an H100's values over time (idle 36 °C / 70 W, a 700 W limit, slowdown at 89 °C,
SM clock 345 MHz idle and 1980 MHz max, no fan, GPU_IDLE while idle). Timings are real: the
sampler is a thread, and the guard must stop the burn within a second of the first hot sample.
"""

from __future__ import annotations

import itertools
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_gpuhost.burn import model
from pytest_gpuhost.burn.guard import TemperatureGuard
from pytest_gpuhost.burn.model import Sample
from pytest_gpuhost.burn.sampler import Sampler, SamplerError

NOT_SUPPORTED, GPU_IS_LOST, DRIVER_NOT_LOADED = 3, 15, 9


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class Reading:
    """What one GPU reports at one moment."""

    temp_c: float = 36.0
    mem_temp_c: float | None = 38.0
    power_mw: int = 70_509
    sm_clock_mhz: int = 345
    events: int = model.GPU_IDLE


def h100_idle(gpu: int, t: float) -> Reading:
    return Reading()


def h100_heating(hot_at: float, peak_c: float = 90.0) -> Callable[[int, float], Reading]:
    """Full load from t=0; the temperature climbs linearly and crosses 85 °C at ``hot_at``."""

    def profile(gpu: int, t: float) -> Reading:
        temp = min(peak_c, 60.0 + 25.0 * t / hot_at)
        return Reading(round(temp, 1), temp + 2.0, 690_000, 1755, model.SW_POWER_CAP)

    return profile


class FakeNvml:
    """The pynvml functions the sampler calls. ``profile(gpu, seconds since init)`` scripts the
    values; ``fail`` maps a function name to a callable deciding per call whether to raise."""

    NVMLError = FakeNVMLError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_THRESHOLD_SHUTDOWN = 0
    NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
    NVML_TEMPERATURE_THRESHOLD_MEM_MAX = 2
    NVML_TEMPERATURE_THRESHOLD_GPU_MAX = 3

    def __init__(self, gpus: int = 1, profile: Callable[[int, float], Reading] = h100_idle) -> None:
        self.gpus = gpus
        self.profile = profile
        self.t0 = 0.0
        self.calls: dict[str, int] = {}
        self.fail: dict[str, Callable[[int], BaseException | None]] = {}
        self.block: dict[str, threading.Event] = {}
        self.blocked_at: float | None = None
        self.power_limit_mw = 700_000
        self.first_hot_at: float | None = None  # when a temperature >= hot_c was first returned
        self.hot_c = 85.0
        self.shutdown = False
        self.init_error: int | None = None

    def _call(self, name: str, handle: Any = None) -> Reading:
        count = self.calls[name] = self.calls.get(name, 0) + 1
        gate = self.block.get(name)
        if gate is not None:
            self.blocked_at = time.monotonic()
            gate.wait()
        maker = self.fail.get(name)
        error = maker(count) if maker is not None else None
        if error is not None:
            raise error
        gpu = handle.index if handle is not None else 0
        return self.profile(gpu, time.monotonic() - self.t0)

    # init and identity
    def nvmlInit(self) -> None:
        self._call("nvmlInit")
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.t0 = time.monotonic()

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimpleNamespace:
        if not 0 <= index < self.gpus:
            raise FakeNVMLError(2)
        return SimpleNamespace(index=index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> SimpleNamespace:
        return SimpleNamespace(index=int(uuid[-1]))

    def nvmlDeviceGetIndex(self, handle: SimpleNamespace) -> int:
        return int(handle.index)

    def nvmlDeviceGetUUID(self, handle: SimpleNamespace) -> str:
        return f"GPU-042f1913-64c6-43ac-27c6-466e2d9041b{handle.index}"

    def nvmlDeviceGetName(self, handle: SimpleNamespace) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetTemperatureThreshold(self, handle: SimpleNamespace, kind: int) -> int:
        return {0: 95, 1: 89, 2: 95, 3: 87}[kind]

    def nvmlDeviceGetMaxClockInfo(self, handle: SimpleNamespace, kind: int) -> int:
        return 1980

    # sampled
    def nvmlDeviceGetTemperatureV(self, handle: SimpleNamespace, sensor: int) -> int | float:
        temp = self._call("nvmlDeviceGetTemperatureV", handle).temp_c
        if temp >= self.hot_c and self.first_hot_at is None:
            self.first_hot_at = time.monotonic()
        return temp

    def nvmlDeviceGetTemperature(self, handle: SimpleNamespace, sensor: int) -> int | float:
        return self._call("nvmlDeviceGetTemperature", handle).temp_c

    def nvmlDeviceGetFieldValues(
        self, handle: SimpleNamespace, field_ids: list[int]
    ) -> list[SimpleNamespace]:
        assert field_ids == [82]  # NVML_FI_DEV_MEMORY_TEMP
        mem = self._call("nvmlDeviceGetFieldValues", handle).mem_temp_c
        ret = NOT_SUPPORTED if mem is None else 0
        return [
            SimpleNamespace(fieldId=82, nvmlReturn=ret, valueType=1, value=SimpleNamespace(uiVal=mem or 0))
        ]

    def nvmlDeviceGetPowerUsage(self, handle: SimpleNamespace) -> int:
        return self._call("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: SimpleNamespace) -> int:
        self.calls["nvmlDeviceGetEnforcedPowerLimit"] = (
            self.calls.get("nvmlDeviceGetEnforcedPowerLimit", 0) + 1
        )
        return self.power_limit_mw

    def nvmlDeviceGetClockInfo(self, handle: SimpleNamespace, kind: int) -> int:
        assert kind == self.NVML_CLOCK_SM
        return self._call("nvmlDeviceGetClockInfo", handle).sm_clock_mhz

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: SimpleNamespace) -> int:
        return self._call("nvmlDeviceGetCurrentClocksEventReasons", handle).events

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: SimpleNamespace) -> int:
        return self._call("nvmlDeviceGetCurrentClocksThrottleReasons", handle).events

    def nvmlDeviceGetFanSpeed(self, handle: SimpleNamespace) -> int:
        self._call("nvmlDeviceGetFanSpeed", handle)
        raise FakeNVMLError(NOT_SUPPORTED)  # data-centre GPUs have no fan


class OldDriverNvml(FakeNvml):
    """An NVML without the newer calls: the deprecated twins must be used."""

    def __getattribute__(self, name: str) -> Any:
        if name in ("nvmlDeviceGetTemperatureV", "nvmlDeviceGetCurrentClocksEventReasons"):
            raise AttributeError(name)
        return super().__getattribute__(name)


class StopRecorder:
    """The ``stop`` callable: records when, and how often, it was called."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.called = threading.Event()

    def __call__(self) -> None:
        self.times.append(time.monotonic())
        self.called.set()


def make_sampler(nvml: FakeNvml, stop: StopRecorder, **kwargs: Any) -> Sampler:
    return Sampler(kwargs.pop("gpus", [0]), stop, loader=lambda: nvml, **kwargs)


def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# --- the guard as a state machine ----------------------------------------------------------------


def test_guard_trips_at_the_limit_not_below() -> None:
    guard = TemperatureGuard(limit_c=85.0)
    assert guard.observe(Sample(gpu=0, t=1.0, temp_c=84.9)) is None
    reason = guard.observe(Sample(gpu=0, t=1.1, temp_c=85.0))
    assert reason is not None and "85" in reason and "GPU 0" in reason
    assert guard.tripped and guard.tripped_at == 1.1 and guard.tripped_gpu == 0
    # Tripped once: later samples, even hotter, report nothing more.
    assert guard.observe(Sample(gpu=0, t=1.2, temp_c=91.0)) is None
    assert guard.reason == reason


def test_guard_watches_each_gpu_and_the_memory_limit() -> None:
    guard = TemperatureGuard(limit_c=85.0, memory_limit_c=95.0)
    assert guard.observe(Sample(gpu=0, t=0.0, temp_c=70.0, mem_temp_c=94.0)) is None
    reason = guard.observe(Sample(gpu=1, t=0.1, temp_c=70.0, mem_temp_c=95.0))
    assert reason is not None and "memory" in reason and guard.tripped_gpu == 1


def test_guard_trips_when_the_temperature_cannot_be_read() -> None:
    guard = TemperatureGuard(limit_c=85.0, blind_after_s=1.0)
    assert guard.observe(Sample(gpu=0, t=10.0, temp_c=70.0)) is None
    assert guard.observe(Sample(gpu=0, t=10.5)) is None  # one failed read is tolerated
    assert guard.observe(Sample(gpu=1, t=10.9, temp_c=60.0)) is None  # another GPU is not blind
    reason = guard.observe(Sample(gpu=0, t=11.0))
    assert reason is not None and "unreadable" in reason and guard.tripped_gpu == 0


def test_guard_blind_from_the_start() -> None:
    guard = TemperatureGuard(limit_c=85.0, blind_after_s=1.0)
    assert guard.observe(Sample(gpu=0, t=5.0)) is None
    assert guard.observe(Sample(gpu=0, t=5.9)) is None
    assert guard.observe(Sample(gpu=0, t=6.0)) is not None


# --- the sampler ---------------------------------------------------------------------------------


def test_samples_an_idle_h100_at_10_hz() -> None:
    nvml, stop = FakeNvml(), StopRecorder()
    with make_sampler(nvml, stop, hz=10.0) as sampler:
        time.sleep(0.75)
    samples = sampler.samples(0)
    assert 5 <= len(samples) <= 10
    gaps = [b.t - a.t for a, b in itertools.pairwise(samples)]
    assert 0.07 <= statistics.median(gaps) <= 0.14
    first = samples[0]
    assert (first.temp_c, first.mem_temp_c, first.power_w) == (36.0, 38.0, 70.509)
    assert (first.power_limit_w, first.sm_clock_mhz, first.event_reasons) == (700.0, 345.0, model.GPU_IDLE)
    assert all(s.fan_pct is None for s in samples)
    assert nvml.calls["nvmlDeviceGetFanSpeed"] == 1  # "Not Supported" is learned, not asked again
    info = sampler.info[0]
    assert (info.slowdown_c, info.shutdown_c, info.max_operating_c, info.mem_max_c) == (
        89.0,
        95.0,
        87.0,
        95.0,
    )
    assert (info.power_limit_w, info.sm_clock_max_mhz, info.name) == (700.0, 1980.0, "NVIDIA H100 80GB HBM3")
    assert sampler.state == "closed" and sampler.ok and nvml.shutdown
    assert not stop.times and sampler.stop_reason is None


def test_guard_trip_calls_stop_within_a_second_and_sampling_goes_on() -> None:
    nvml, stop = FakeNvml(profile=h100_heating(hot_at=0.4)), StopRecorder()
    guard = TemperatureGuard(limit_c=85.0)
    with make_sampler(nvml, stop, guard=guard.observe) as sampler:
        assert stop.called.wait(3.0)
        time.sleep(0.3)
    assert nvml.first_hot_at is not None
    assert stop.times[0] - nvml.first_hot_at < 1.0
    assert len(stop.times) == 1
    assert sampler.stop_reason is not None and sampler.stop_reason.startswith("guard:")
    assert guard.tripped_at is not None
    hot = [s for s in sampler.samples(0) if s.temp_c is not None and s.temp_c >= 85.0]
    assert hot and hot[0].t == guard.tripped_at
    assert any(s.t > stop.times[0] for s in sampler.samples(0))  # the cool-down is recorded too
    assert sampler.ok


def test_two_gpus_one_hot_stops_once() -> None:
    def profile(gpu: int, t: float) -> Reading:
        return h100_heating(hot_at=0.3)(gpu, t) if gpu == 1 else Reading(70.0, 72.0, 690_000, 1755, 4)

    nvml, stop = FakeNvml(gpus=2, profile=profile), StopRecorder()
    guard = TemperatureGuard(limit_c=85.0)
    with make_sampler(nvml, stop, gpus=[0, 1], guard=guard.observe) as sampler:
        assert stop.called.wait(3.0)
        time.sleep(0.2)
    assert guard.tripped_gpu == 1 and len(stop.times) == 1
    assert sampler.indices == [0, 1]
    assert sampler.samples(0) and sampler.samples(1)
    merged = sampler.samples()
    assert [s.t for s in merged] == sorted(s.t for s in merged)


def test_sampler_crash_calls_stop() -> None:
    nvml, stop = FakeNvml(), StopRecorder()
    nvml.fail["nvmlDeviceGetPowerUsage"] = lambda n: (
        RuntimeError("driver returned garbage") if n >= 3 else None
    )
    with make_sampler(nvml, stop) as sampler:
        assert stop.called.wait(2.0)
    assert sampler.state == "crashed" and not sampler.ok
    assert sampler.error is not None and "RuntimeError" in sampler.error
    assert sampler.stop_reason == sampler.error
    assert len(sampler.samples(0)) == 2


def test_guard_exception_calls_stop() -> None:
    def broken_guard(sample: Sample) -> str | None:
        raise ValueError("bug in the guard")

    nvml, stop = FakeNvml(), StopRecorder()
    with make_sampler(nvml, stop, guard=broken_guard) as sampler:
        assert stop.called.wait(2.0)
    assert sampler.state == "crashed" and "bug in the guard" in (sampler.error or "")


def test_stuck_nvml_read_is_detected_and_stops_the_burn() -> None:
    nvml, stop = FakeNvml(), StopRecorder()
    gate = threading.Event()
    sampler = make_sampler(nvml, stop, stuck_after_s=0.5)
    sampler.start()
    try:
        assert wait_for(lambda: len(sampler.samples(0)) >= 2)
        nvml.block["nvmlDeviceGetPowerUsage"] = gate
        assert stop.called.wait(3.0)
        assert nvml.blocked_at is not None
        detected = stop.times[0] - nvml.blocked_at
        assert 0.5 <= detected < 1.5
        assert sampler.state == "stuck" and not sampler.ok
        assert sampler.error is not None and "power read of GPU 0" in sampler.error
        started = time.monotonic()
        sampler.close(timeout_s=0.3)
        assert time.monotonic() - started < 2.0  # closing does not wait for the hung call
        assert not nvml.shutdown  # nor call into the hung library again
    finally:
        gate.set()
        sampler.close()


def test_a_sampler_hung_at_close_is_reported_stuck_not_clean() -> None:
    """The watchdog has not noticed yet (a long stuck_after_s): close itself must not call it clean."""
    nvml, stop = FakeNvml(), StopRecorder()
    gate = threading.Event()
    sampler = make_sampler(nvml, stop, stuck_after_s=30.0)
    sampler.start()
    try:
        assert wait_for(lambda: len(sampler.samples(0)) >= 2)
        nvml.block["nvmlDeviceGetPowerUsage"] = gate
        assert wait_for(lambda: nvml.blocked_at is not None)
        sampler.close(timeout_s=0.3)
        assert sampler.state == "stuck" and not sampler.ok
        assert sampler.error is not None and "power read of GPU 0" in sampler.error
        assert "did not return" in sampler.error
    finally:
        gate.set()
        sampler.close()


def test_the_first_failure_is_the_one_reported() -> None:
    """Crash, stuck and closed race in three threads: the state leaves running once."""
    sampler = make_sampler(FakeNvml(), StopRecorder())
    sampler.state = "running"
    assert sampler._leave_running("stuck", "first")
    assert not sampler._leave_running("crashed", "second")
    assert not sampler._leave_running("closed", None)
    assert (sampler.state, sampler.error) == ("stuck", "first")


def test_lost_gpu_blinds_the_guard_which_stops_the_burn() -> None:
    nvml, stop = FakeNvml(), StopRecorder()
    lost = threading.Event()

    def when_lost(n: int) -> BaseException | None:
        return FakeNVMLError(GPU_IS_LOST) if lost.is_set() else None

    for name in ("nvmlDeviceGetTemperatureV", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetClockInfo"):
        nvml.fail[name] = when_lost
    guard = TemperatureGuard(limit_c=85.0, blind_after_s=0.5)
    with make_sampler(nvml, stop, guard=guard.observe) as sampler:
        assert wait_for(lambda: len(sampler.samples(0)) >= 2)
        lost.set()
        lost_at = time.monotonic()
        assert stop.called.wait(3.0)
    assert 0.35 <= stop.times[0] - lost_at < 1.5  # blind since the last good read, <= 0.1 s before
    assert guard.reason is not None and "unreadable" in guard.reason
    assert sampler.read_errors > 0 and "15" in (sampler.last_read_error or "")
    assert sampler.state == "closed"  # NVML answered (with errors): the sampler itself is fine
    blind = [s for s in sampler.samples(0) if s.temp_c is None]
    assert blind and all(s.power_w is None and s.sm_clock_mhz is None for s in blind)
    assert all(s.event_reasons == model.GPU_IDLE for s in blind)  # what still answers is kept


def test_older_driver_uses_the_deprecated_calls() -> None:
    nvml, stop = OldDriverNvml(), StopRecorder()
    with make_sampler(nvml, stop) as sampler:
        assert wait_for(lambda: len(sampler.samples(0)) >= 2)
    assert nvml.calls.get("nvmlDeviceGetCurrentClocksThrottleReasons", 0) >= 2
    assert nvml.calls.get("nvmlDeviceGetTemperature", 0) >= 2
    assert all(s.event_reasons == model.GPU_IDLE and s.temp_c == 36.0 for s in sampler.samples(0))


def test_a_newer_call_that_fails_falls_back_to_the_old_one() -> None:
    nvml, stop = FakeNvml(), StopRecorder()
    nvml.fail["nvmlDeviceGetTemperatureV"] = lambda n: FakeNVMLError(NOT_SUPPORTED)
    guard = TemperatureGuard(limit_c=85.0, blind_after_s=0.3)
    with make_sampler(nvml, stop, guard=guard.observe) as sampler:
        assert wait_for(lambda: len(sampler.samples(0)) >= 5)
    assert all(s.temp_c == 36.0 for s in sampler.samples(0))  # read through the deprecated call
    assert nvml.calls["nvmlDeviceGetTemperatureV"] == 1 and not stop.times


def test_memory_temperature_not_supported_reads_none_once() -> None:
    nvml, stop = FakeNvml(profile=lambda gpu, t: Reading(mem_temp_c=None)), StopRecorder()
    with make_sampler(nvml, stop) as sampler:
        assert wait_for(lambda: len(sampler.samples(0)) >= 3)
    assert all(s.mem_temp_c is None and s.temp_c == 36.0 for s in sampler.samples(0))
    assert nvml.calls["nvmlDeviceGetFieldValues"] == 1


def test_power_limit_change_is_picked_up() -> None:
    nvml, stop = FakeNvml(), StopRecorder()
    with make_sampler(nvml, stop, hz=50.0, stuck_after_s=1.0) as sampler:
        assert wait_for(lambda: len(sampler.samples(0)) >= 2)
        nvml.power_limit_mw = 500_000
        assert wait_for(lambda: (sampler.latest(0) or Sample(0, 0.0)).power_limit_w == 500.0)
    limits = [s.power_limit_w for s in sampler.samples(0)]
    assert limits[0] == 700.0 and limits[-1] == 500.0
    # Read every 10th sample only: it is cheap to keep but not free.
    assert nvml.calls["nvmlDeviceGetEnforcedPowerLimit"] < len(limits) / 5 + 2


def test_gpus_by_uuid() -> None:
    nvml, stop = FakeNvml(gpus=2), StopRecorder()
    with make_sampler(nvml, stop, gpus=["GPU-042f1913-64c6-43ac-27c6-466e2d9041b1"]) as sampler:
        assert wait_for(lambda: bool(sampler.samples(1)))
    assert sampler.indices == [1] and sampler.info[1].uuid == "GPU-042f1913-64c6-43ac-27c6-466e2d9041b1"


def test_start_failures_raise_sampler_error() -> None:
    nvml = FakeNvml()
    nvml.init_error = DRIVER_NOT_LOADED
    with pytest.raises(SamplerError, match="NVML"):
        make_sampler(nvml, StopRecorder()).start()

    def no_pynvml() -> Any:
        raise ImportError("No module named 'pynvml'")

    with pytest.raises(SamplerError, match="pynvml"):
        Sampler([0], StopRecorder(), loader=no_pynvml).start()
    with pytest.raises(SamplerError, match="NVML"):
        make_sampler(FakeNvml(gpus=1), StopRecorder(), gpus=[3]).start()


def test_stop_errors_are_recorded_not_raised() -> None:
    def failing_stop() -> None:
        raise OSError("docker: container not found")

    nvml = FakeNvml(profile=h100_heating(hot_at=0.1))
    guard = TemperatureGuard(limit_c=85.0)
    with Sampler([0], failing_stop, guard=guard.observe, loader=lambda: nvml) as sampler:
        assert wait_for(lambda: sampler.stop_error is not None)
        count = len(sampler.samples(0))
        assert wait_for(lambda: len(sampler.samples(0)) > count)  # still sampling
    assert "container not found" in (sampler.stop_error or "")


def test_invalid_rates_are_refused() -> None:
    with pytest.raises(ValueError):
        Sampler([0], StopRecorder(), hz=0)
    with pytest.raises(ValueError):
        Sampler([0], StopRecorder(), hz=1.0, stuck_after_s=1.5)


def test_sampler_overhead_is_small() -> None:
    """Our own cost per sample, with a free NVML: far below 2 % of a core at 10 Hz."""
    nvml, stop = FakeNvml(), StopRecorder()
    with make_sampler(nvml, stop) as sampler:
        time.sleep(1.0)
    assert len(sampler.samples(0)) >= 8
    share = sampler.cpu_seconds / sampler.wall_seconds
    assert 0 < share < 0.02, share
    assert math.isclose(sampler.wall_seconds, 1.0, abs_tol=0.3)


def test_eight_gpus_at_10_hz_cost_little_and_the_guard_sees_the_hot_one() -> None:
    """An HGX board (issue 22): every GPU sampled at the rate, one hot GPU among eight stops the
    burn once, and the sampler's own CPU stays a few per cent of one core."""

    def profile(gpu: int, t: float) -> Reading:
        return h100_heating(hot_at=0.5)(gpu, t) if gpu == 6 else Reading(70.0, 72.0, 690_000, 1755, 4)

    nvml, stop = FakeNvml(gpus=8, profile=profile), StopRecorder()
    guard = TemperatureGuard(limit_c=85.0)
    with make_sampler(nvml, stop, gpus=list(range(8)), hz=10.0, guard=guard.observe) as sampler:
        assert stop.called.wait(3.0)
        time.sleep(0.3)
    assert guard.tripped_gpu == 6 and len(stop.times) == 1
    assert all(len(sampler.samples(i)) >= 5 for i in range(8)), [len(sampler.samples(i)) for i in range(8)]
    assert 0 < sampler.cpu_seconds / sampler.wall_seconds < 0.05
