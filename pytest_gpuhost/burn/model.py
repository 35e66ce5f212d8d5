"""The shapes of burn telemetry: one NVML sample, one GPU's fixed facts, clock-event reason bits."""

from __future__ import annotations

from dataclasses import dataclass

# nvmlClocksEventReason* bit values (nvml.h; the same in pynvml, checked by the tests).
GPU_IDLE = 0x1
APPLICATIONS_CLOCKS_SETTING = 0x2
SW_POWER_CAP = 0x4
HW_SLOWDOWN = 0x8
SYNC_BOOST = 0x10
SW_THERMAL_SLOWDOWN = 0x20
HW_THERMAL_SLOWDOWN = 0x40
HW_POWER_BRAKE_SLOWDOWN = 0x80
DISPLAY_CLOCK_SETTING = 0x100

EVENT_NAMES = {
    GPU_IDLE: "GPU_IDLE",
    APPLICATIONS_CLOCKS_SETTING: "APPLICATIONS_CLOCKS",
    SW_POWER_CAP: "SW_POWER_CAP",
    HW_SLOWDOWN: "HW_SLOWDOWN",
    SYNC_BOOST: "SYNC_BOOST",
    SW_THERMAL_SLOWDOWN: "SW_THERMAL_SLOWDOWN",
    HW_THERMAL_SLOWDOWN: "HW_THERMAL_SLOWDOWN",
    HW_POWER_BRAKE_SLOWDOWN: "HW_POWER_BRAKE_SLOWDOWN",
    DISPLAY_CLOCK_SETTING: "DISPLAY_CLOCK_SETTING",
}
# Hardware slowdowns fail the burn; the software ones are how a healthy GPU holds its limits.
HW_EVENTS = HW_SLOWDOWN | HW_THERMAL_SLOWDOWN | HW_POWER_BRAKE_SLOWDOWN


def event_names(mask: int) -> list[str]:
    """Names of the bits set in a clock-event reasons mask; unknown bits as hex."""
    names = [name for bit, name in EVENT_NAMES.items() if mask & bit]
    unknown = mask & ~sum(EVENT_NAMES)
    if unknown:
        names.append(hex(unknown))
    return names


@dataclass(frozen=True, slots=True)
class Sample:
    """One NVML reading of one GPU. ``t`` is seconds on the monotonic clock (in a saved series:
    seconds since the series began). A field the GPU does not support, or a failed read, is None."""

    gpu: int
    t: float
    temp_c: float | None = None
    mem_temp_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: float | None = None
    event_reasons: int | None = None
    fan_pct: float | None = None


SAMPLE_FIELDS = (
    "temp_c",
    "mem_temp_c",
    "power_w",
    "power_limit_w",
    "sm_clock_mhz",
    "event_reasons",
    "fan_pct",
)


@dataclass(frozen=True)
class GpuStatic:
    """What does not change during a burn: identity, thresholds, limits at the start."""

    index: int
    uuid: str = ""
    name: str = ""
    slowdown_c: float | None = None
    shutdown_c: float | None = None
    max_operating_c: float | None = None
    mem_max_c: float | None = None
    power_limit_w: float | None = None
    sm_clock_max_mhz: float | None = None
