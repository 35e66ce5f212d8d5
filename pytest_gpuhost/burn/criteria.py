"""Pass criteria of the burn, as pure functions: one GPU's samples and result in, a verdict out.

Each criterion yields a :class:`Finding`; a failed one carries a :class:`Diagnosis` (what was
found, the likely cause, the fix) so the plugin can fail the check with it as it stands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pytest_gpuhost.burn.model import (
    EVENT_NAMES,
    HW_POWER_BRAKE_SLOWDOWN,
    HW_SLOWDOWN,
    HW_THERMAL_SLOWDOWN,
    SW_POWER_CAP,
    SW_THERMAL_SLOWDOWN,
    GpuStatic,
    Sample,
)
from pytest_gpuhost.burn.workload import WorkloadResult
from pytest_gpuhost.diagnosis import Diagnosis

Status = Literal["pass", "fail", "skip", "info"]

COOLING_CAUSE = (
    "the cooling does not carry away the heat of a GPU at full power: blocked or recirculating "
    "airflow, failed or slow chassis fans, inlet air too warm, or a heatsink that is badly seated "
    "or has dried-out thermal interface material"
)
COOLING_FIX = (
    "Check the inlet temperature and chassis fans in the BMC (`ipmitool sdr type Temperature`, "
    "`ipmitool sdr type Fan`), clear the airflow path (blanking panels, cable clutter, dust), check "
    "the data-centre cooling; watch `nvidia-smi -q -d TEMPERATURE,PERFORMANCE` under load. If one GPU "
    "runs much hotter than its neighbours, have its heatsink reseated or the GPU serviced."
)


@dataclass(frozen=True)
class Thresholds:
    """What one GPU's burn is judged against.

    ``power_limit_w`` None: the enforced limit from the samples. ``ramp_s``: seconds after the
    load starts that the power criterion ignores (clocks and power settle in seconds, not minutes).
    """

    temp_limit_c: float = 85.0
    slowdown_c: float | None = None
    power_limit_w: float | None = None
    fan_limit_pct: float = 100.0
    min_power_fraction: float = 0.90
    expected_tflops: float | None = None
    ramp_s: float = 15.0

    @classmethod
    def for_gpu(cls, static: GpuStatic, temp_limit_c: float, **overrides: Any) -> Thresholds:
        """Thresholds from the GPU's own NVML facts (slowdown threshold, enforced power limit)."""
        values: dict[str, Any] = {
            "temp_limit_c": temp_limit_c,
            "slowdown_c": static.slowdown_c,
            "power_limit_w": static.power_limit_w,
        }
        values.update(overrides)
        return cls(**values)


# The one list of criterion names: the burn check is parametrized by it, and a Finding refuses any
# other name, so a renamed criterion fails the plugin's own tests instead of skipping on every host.
CRITERIA = ("telemetry", "temperature", "slowdown", "clock-events", "fan", "load", "verification")
NOT_JUDGED = "not judged, the GPU gave no samples (see the telemetry check)"


@dataclass(frozen=True)
class Finding:
    criterion: str
    status: Status
    summary: str
    diagnosis: Diagnosis | None = None

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown burn criterion {self.criterion!r}: add it to CRITERIA")


@dataclass(frozen=True)
class GpuStats:
    """Numbers over the load window (power: after the ramp-up only)."""

    gpu: int
    samples: int = 0
    duration_s: float = 0.0
    max_temp_c: float | None = None
    max_mem_temp_c: float | None = None
    mean_power_w: float | None = None
    power_limit_w: float | None = None
    max_fan_pct: float | None = None
    mean_sm_clock_mhz: float | None = None
    time_to_95_s: float | None = None
    events_seen: int = 0
    event_share: dict[str, float] = field(default_factory=dict)

    @property
    def power_fraction(self) -> float | None:
        if self.mean_power_w is None or not self.power_limit_w:
            return None
        return self.mean_power_w / self.power_limit_w


@dataclass(frozen=True)
class Verdict:
    gpu: int
    uuid: str
    stats: GpuStats
    workload: WorkloadResult | None
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.status == "fail")

    def finding(self, criterion: str) -> Finding:
        """The finding for ``criterion``; a skip when the GPU gave no samples to judge it by.
        A name outside CRITERIA is a programming error, never a skip."""
        if criterion not in CRITERIA:
            raise ValueError(f"unknown burn criterion {criterion!r}; the criteria are {', '.join(CRITERIA)}")
        for found in self.findings:
            if found.criterion == criterion:
                return found
        return Finding(criterion, "skip", f"{criterion}: {NOT_JUDGED}")

    def report(self) -> str:
        """The summary line, then each failure's diagnosis: the text of a failed check."""
        parts = [summary_line(self)]
        parts += [f"[{f.criterion}] {f.diagnosis}" for f in self.failures if f.diagnosis is not None]
        return "\n\n".join(parts)


# --- numbers -------------------------------------------------------------------------------------


def in_window(
    samples: Sequence[Sample], start: float | None = None, end: float | None = None
) -> list[Sample]:
    """The samples with ``start <= t <= end`` (either bound may be open)."""
    return [s for s in samples if (start is None or s.t >= start) and (end is None or s.t <= end)]


def _values(samples: Sequence[Sample], name: str) -> list[float]:
    values = (getattr(s, name) for s in samples)
    return [float(v) for v in values if v is not None]


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def time_to_fraction(
    samples: Sequence[Sample],
    limit_w: float | None = None,
    fraction: float = 0.95,
    start: float | None = None,
) -> float | None:
    """Seconds from ``start`` (default: the first sample) until power first reaches ``fraction``
    of the limit (default: each sample's enforced limit); None if it never does."""
    if not samples:
        return None
    origin = samples[0].t if start is None else start
    for s in samples:
        limit = limit_w if limit_w is not None else s.power_limit_w
        if s.t >= origin and s.power_w is not None and limit and s.power_w >= fraction * limit:
            return s.t - origin
    return None


def compute_stats(
    samples: Sequence[Sample],
    thresholds: Thresholds,
    *,
    gpu: int = 0,
    start: float | None = None,
    end: float | None = None,
) -> GpuStats:
    window = in_window(samples, start, end)
    if not window:
        return GpuStats(gpu=gpu, power_limit_w=thresholds.power_limit_w)
    origin = window[0].t if start is None else start
    steady = [s for s in window if s.t >= origin + thresholds.ramp_s]
    limits = _values(window, "power_limit_w")
    limit = (
        thresholds.power_limit_w if thresholds.power_limit_w is not None else (limits[-1] if limits else None)
    )
    masks = [s.event_reasons for s in window if s.event_reasons is not None]
    seen = 0
    for mask in masks:
        seen |= mask
    share = {
        name: sum(1 for m in masks if m & bit) / len(masks) for bit, name in EVENT_NAMES.items() if seen & bit
    }
    power = _values(steady, "power_w")
    temps, mem_temps, fans = (
        _values(window, "temp_c"),
        _values(window, "mem_temp_c"),
        _values(window, "fan_pct"),
    )
    return GpuStats(
        gpu=gpu,
        samples=len(window),
        duration_s=window[-1].t - origin,
        max_temp_c=max(temps) if temps else None,
        max_mem_temp_c=max(mem_temps) if mem_temps else None,
        mean_power_w=_mean(power) if len(power) >= 3 else None,
        power_limit_w=limit,
        max_fan_pct=max(fans) if fans else None,
        mean_sm_clock_mhz=_mean(_values(steady, "sm_clock_mhz")),
        time_to_95_s=time_to_fraction(window, limit, 0.95, origin),
        events_seen=seen,
        event_share=share,
    )


# --- criteria ------------------------------------------------------------------------------------


def _temperature(stats: GpuStats, th: Thresholds, guard_reason: str | None) -> list[Finding]:
    findings: list[Finding] = []
    top = stats.max_temp_c
    if top is None:
        return [Finding("temperature", "fail", "no temperature reading", _blind(stats.gpu))]
    if top >= th.temp_limit_c:
        stopped = " The guard stopped the burn there." if guard_reason else ""
        findings.append(
            Finding(
                "temperature",
                "fail",
                f"max {top:g} °C >= limit {th.temp_limit_c:g} °C",
                Diagnosis(
                    f"GPU {stats.gpu} reached {top:g} °C under full load; the limit is "
                    f"{th.temp_limit_c:g} °C.{stopped}",
                    COOLING_CAUSE,
                    COOLING_FIX,
                ),
            )
        )
    else:
        findings.append(Finding("temperature", "pass", f"max {top:g} °C < limit {th.temp_limit_c:g} °C"))
    if th.slowdown_c is None:
        findings.append(Finding("slowdown", "skip", "NVML reports no slowdown threshold"))
    elif top >= th.slowdown_c:
        findings.append(
            Finding(
                "slowdown",
                "fail",
                f"max {top:g} °C >= slowdown threshold {th.slowdown_c:g} °C",
                Diagnosis(
                    f"GPU {stats.gpu} reached {top:g} °C, at or above its slowdown threshold of "
                    f"{th.slowdown_c:g} °C, where it throttles itself.",
                    COOLING_CAUSE,
                    COOLING_FIX,
                ),
            )
        )
    else:
        findings.append(Finding("slowdown", "pass", f"max {top:g} °C < slowdown {th.slowdown_c:g} °C"))
    return findings


def _blind(gpu: int) -> Diagnosis:
    return Diagnosis(
        f"NVML gave no temperature for GPU {gpu} during the burn.",
        "NVML stopped answering for this GPU (a wedged driver, or the GPU fell off the bus), or the "
        "sampler failed; a burn that cannot be watched is stopped.",
        "Check that `nvidia-smi` answers and the kernel log for Xid errors (`dmesg -T | grep -i xid`); "
        "a GPU lost from the bus needs a reboot and, if it repeats, service.",
    )


def _events(stats: GpuStats) -> Finding:
    seen, share = stats.events_seen, stats.event_share
    hw = seen & (HW_SLOWDOWN | HW_THERMAL_SLOWDOWN | HW_POWER_BRAKE_SLOWDOWN)
    listed = ", ".join(f"{name} {share[name]:.0%}" for name in share) or "none"
    if not hw:
        report = seen & (SW_POWER_CAP | SW_THERMAL_SLOWDOWN)
        status: Status = "info" if report else "pass"
        return Finding("clock-events", status, f"no hardware slowdown (events: {listed})")
    if seen & HW_POWER_BRAKE_SLOWDOWN:
        name = EVENT_NAMES[HW_POWER_BRAKE_SLOWDOWN]
        cause = (
            "the system asserted the GPU's external power-brake signal: the power supplies cannot "
            "carry the load (a failed or missing redundant PSU, PSU capacity below the sum of the GPU "
            "power limits) or the BMC caps the chassis power"
        )
        fix = (
            "Check PSU health and redundancy in the BMC (`ipmitool sdr type 'Power Supply'`, "
            "`ipmitool sel list`), compare PSU capacity with the GPUs' total power limit, and look for "
            "chassis power capping; `nvidia-smi -q -d PERFORMANCE` shows the active reasons."
        )
    elif seen & HW_THERMAL_SLOWDOWN:
        name = EVENT_NAMES[HW_THERMAL_SLOWDOWN]
        cause = (
            "the GPU hit its hardware thermal protection (GPU or memory over temperature); " + COOLING_CAUSE
        )
        fix = COOLING_FIX
    else:
        name = EVENT_NAMES[HW_SLOWDOWN]
        cause = (
            "the hardware slowdown line was asserted: over-temperature, or the board or power supply "
            "signalling a problem, often a loose or missing auxiliary power cable"
        )
        fix = (
            "Check that the GPU's power cables are seated and of the right kind, the PSU health in the "
            "BMC, and the temperatures; `nvidia-smi -q -d PERFORMANCE` shows the active reasons."
        )
    return Finding(
        "clock-events",
        "fail",
        f"hardware slowdown: {listed}",
        Diagnosis(
            f"GPU {stats.gpu} ran with {name} active in {share.get(name, 0.0):.0%} of the samples "
            f"(all events: {listed}).",
            cause,
            fix,
        ),
    )


def _fan(stats: GpuStats, th: Thresholds) -> Finding:
    if stats.max_fan_pct is None:
        return Finding("fan", "skip", "not applicable: no fans (cooled by the chassis)")
    if stats.max_fan_pct >= th.fan_limit_pct:
        return Finding(
            "fan",
            "fail",
            f"fan {stats.max_fan_pct:g}% >= {th.fan_limit_pct:g}%",
            Diagnosis(
                f"GPU {stats.gpu}'s fan reached {stats.max_fan_pct:g}% (limit {th.fan_limit_pct:g}%).",
                "The fan runs flat out and has no headroom left: warmer inlet air or more load will make "
                "the GPU throttle. Blocked intakes, dust or a failing fan make it work this hard.",
                "Clean the intake and heatsink, improve airflow and inlet temperature, check the fan "
                "with `nvidia-smi -q -d TEMPERATURE,PERFORMANCE`; replace a fan that cannot keep up.",
            ),
        )
    return Finding("fan", "pass", f"fan max {stats.max_fan_pct:g}% < {th.fan_limit_pct:g}%")


def _load(stats: GpuStats, th: Thresholds, workload: WorkloadResult | None) -> Finding:
    tflops = workload.tflops if workload is not None else None
    fast = th.expected_tflops is not None and tflops is not None and tflops >= th.expected_tflops
    expected = f", expected >= {th.expected_tflops:g} TFLOP/s" if th.expected_tflops is not None else ""
    achieved = f"{tflops:g} TFLOP/s{expected}" if tflops is not None else "no TFLOP/s reported"
    if stats.mean_power_w is None:
        if fast:
            return Finding("load", "pass", f"{achieved} (burn too short to judge power)")
        return Finding("load", "skip", f"burn shorter than the {th.ramp_s:g} s ramp-up: power not judged")
    fraction = stats.power_fraction
    if fraction is None:
        if fast:
            return Finding("load", "pass", f"{achieved} (no power limit reported)")
        return Finding("load", "skip", "NVML reports no enforced power limit: power not judged")
    power = f"mean {stats.mean_power_w:.0f} W = {fraction:.0%} of {stats.power_limit_w:g} W"
    if fraction >= th.min_power_fraction:
        return Finding("load", "pass", power)
    if fast:
        return Finding("load", "pass", f"{power}, but {achieved}")
    return Finding(
        "load",
        "fail",
        f"{power} < {th.min_power_fraction:.0%}",
        Diagnosis(
            f"GPU {stats.gpu} drew a mean {stats.mean_power_w:.0f} W after the {th.ramp_s:g} s ramp-up, "
            f"{fraction:.0%} of its enforced limit of {stats.power_limit_w:g} W (needed "
            f"{th.min_power_fraction:.0%}); {achieved}.",
            "The burn did not load the GPU fully: another process shares it, its clocks are held down "
            "(locked or application clocks, a clock-event reason above), the workload took a slow path "
            "(see the dtype in its start record), or the host starved it.",
            "Look for other processes with `nvidia-smi`, check clocks and limits with "
            "`nvidia-smi -q -d PERFORMANCE,CLOCK,POWER`, reset locked clocks with `nvidia-smi -rgc` and "
            "`nvidia-smi -rac` (root), then rerun the burn.",
        ),
    )


def _verification(gpu: int, workload: WorkloadResult | None) -> Finding:
    if workload is None or workload.error:
        what = f"failed: {workload.error}" if workload is not None else "ended without a result"
        return Finding(
            "verification",
            "fail",
            f"workload {what}",
            Diagnosis(
                f"The burn workload for GPU {gpu} {what}.",
                "The burn process crashed, ran out of GPU memory, was killed (by the guard, a timeout, "
                "the OOM killer), or the GPU fell off the bus.",
                "Read the workload's output and the kernel log (`dmesg -T | grep -iE 'xid|nvrm'`); "
                "rerun with a smaller --mem-fraction if it ran out of memory.",
            ),
        )
    if workload.errors is None:
        return Finding("verification", "skip", "products not verified (--no-verify)")
    if workload.errors > 0:
        ratio = workload.max_err_ratio
        worst = f"; largest column deviation {ratio:.3g}x its tolerance" if ratio is not None else ""
        return Finding(
            "verification",
            "fail",
            f"{workload.errors} wrong products in {workload.iters} GEMMs",
            Diagnosis(
                f"GPU {gpu} returned {workload.errors} wrong products in {workload.iters} GEMMs{worst}.",
                "The GPU computes wrong results under sustained load: unstable at this temperature or "
                "clock, failing HBM/VRAM, or marginal power delivery.",
                "Check the kernel log for Xid errors (`dmesg -T | grep -i xid`) and the ECC and row "
                "remapping state (`nvidia-smi -q -d ECC,ROW_REMAPPER`), then rerun the burn; a GPU that "
                "computes wrong results again must leave service (RMA).",
            ),
        )
    if workload.iters <= 0:
        return Finding("verification", "fail", "no GEMM completed", _verification(gpu, None).diagnosis)
    return Finding("verification", "pass", f"0 errors in {workload.iters} GEMMs")


def evaluate(
    samples: Sequence[Sample],
    thresholds: Thresholds,
    workload: WorkloadResult | None,
    *,
    gpu: int | None = None,
    uuid: str = "",
    start: float | None = None,
    end: float | None = None,
    guard_reason: str | None = None,
    monitor_error: str | None = None,
) -> Verdict:
    """One GPU's verdict. ``samples`` are that GPU's; ``start``/``end`` bound the load window
    (default: all samples); ``guard_reason`` and ``monitor_error`` come from the sampler."""
    if gpu is None:
        gpu = samples[0].gpu if samples else (workload.gpu if workload is not None else 0)
    stats = compute_stats(samples, thresholds, gpu=gpu, start=start, end=end)
    findings: list[Finding] = []
    if monitor_error or (guard_reason and "unreadable" in guard_reason):
        diag = _blind(gpu)
        findings.append(
            Finding(
                "telemetry",
                "fail",
                monitor_error or guard_reason or "",
                Diagnosis(f"{diag.found} {monitor_error or guard_reason}", diag.cause, diag.fix),
            )
        )
    elif stats.samples == 0:
        findings.append(Finding("telemetry", "fail", "no samples", _blind(gpu)))
    else:
        findings.append(
            Finding("telemetry", "pass", f"{stats.samples} samples over {stats.duration_s:.0f} s")
        )
    if stats.samples:
        findings += _temperature(stats, thresholds, guard_reason)
        findings.append(_events(stats))
        findings.append(_fan(stats, thresholds))
        findings.append(_load(stats, thresholds, workload))
    findings.append(_verification(gpu, workload))
    return Verdict(gpu=gpu, uuid=uuid, stats=stats, workload=workload, findings=tuple(findings))


# --- text ----------------------------------------------------------------------------------------


def _num(value: float | None, fmt: str = "g") -> str:
    return "n/a" if value is None else format(value, fmt)


def summary_line(verdict: Verdict) -> str:
    """One line per GPU: temperatures, power against limit, ramp, TFLOP/s, errors, events."""
    s, w = verdict.stats, verdict.workload
    short = verdict.uuid.removeprefix("GPU-")[:8]
    name = f"GPU {verdict.gpu}" + (f" ({short})" if short else "")
    mem = f", mem {_num(s.max_mem_temp_c)} °C" if s.max_mem_temp_c is not None else ""
    fraction = s.power_fraction
    power = f"{_num(s.mean_power_w, '.0f')}/{_num(s.power_limit_w, 'g')} W"
    power += f" ({fraction:.0%})" if fraction is not None else ""
    ramp = f", 95% of limit after {s.time_to_95_s:.1f} s" if s.time_to_95_s is not None else ""
    if w is None:
        work = "no workload result"
    else:
        errors = "not verified" if w.errors is None else f"{w.errors} errors"
        work = f"{w.tflops:g} TFLOP/s, {errors} in {w.iters} GEMMs"
    events = ", ".join(f"{k} {v:.0%}" for k, v in s.event_share.items() if k != "GPU_IDLE") or "none"
    fan = f"{_num(s.max_fan_pct)}%" if s.max_fan_pct is not None else "n/a"
    verdict_word = "ok" if verdict.ok else "FAIL " + ",".join(f.criterion for f in verdict.failures)
    return (
        f"{name}: {verdict_word}: max {_num(s.max_temp_c)} °C{mem}, {power}{ramp}, {work}, "
        f"events: {events}, fan {fan}"
    )
