"""One burn of all selected GPUs at once, watched by the sampler and its temperature guard.

The workload runs in a container (the toolkit path) or as a host process; either way the
guard, a crashed sampler, a stuck NVML read, the overall deadline, Ctrl-C and SIGTERM all end
in the same ``stop`` of the workload, and the launcher's ``finally`` removes what it started.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_gpuhost.burn import series, workload
from pytest_gpuhost.burn.criteria import Thresholds, Verdict, evaluate, summary_line
from pytest_gpuhost.burn.guard import TemperatureGuard
from pytest_gpuhost.burn.model import Sample
from pytest_gpuhost.burn.plot import plot_series
from pytest_gpuhost.burn.sampler import Sampler, SamplerError
from pytest_gpuhost.compute.runner import ARM, lifeline_path, with_lifeline
from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.docker.containers import ContainerFailure
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.hosts.host import end_process_group

# A launcher starts the workload for argv and yields (its output lines, a stop function).
Launcher = Callable[[list[str]], AbstractContextManager[tuple[Iterator[str], Callable[[], None]]]]
# Test-only (with the fault switch too): the runner's temperature limit is off, so that a device
# run can prove that the workload's own guard stops the burn. The blind guard stays on.
RUNNER_GUARD_OFF = "GPUHOST_TEST_DISABLE_RUNNER_GUARD"
SETUP_MARGIN_S = 180.0  # image start, framework import, allocation: beyond the burn's own duration
IDLE_BASELINE_S = 1.0
COOLDOWN_RECORD_S = 3.0
# After SIGTERM, the workload has this long (its own hung-worker grace is 10 s) before SIGKILL.
STOP_GRACE_S = 15.0


class _NotStarted(Exception):
    """The guard tripped before the load began."""


@dataclass
class BurnOutcome:
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # by GPU UUID
    diagnosis: Diagnosis | None = None
    guard_reason: str | None = None
    stop_to_idle_s: dict[str, float | None] = field(default_factory=dict)
    guard_to_idle_s: dict[str, float | None] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    log: workload.WorkloadLog = field(default_factory=workload.WorkloadLog)

    def summary(self) -> list[str]:
        return [summary_line(v) for v in self.verdicts.values()]


@contextlib.contextmanager
def host_process(argv: list[str]) -> Iterator[tuple[Iterator[str], Callable[[], None]]]:
    """The workload as a process group of the host; SIGTERM, then SIGKILL, on stop and at exit.
    It runs under the lifeline watchdog, whose stdin is a pipe from this process: if pytest dies,
    SIGKILL included, the pipe closes and the watchdog ends the workload within a second."""
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    proc = subprocess.Popen(
        with_lifeline(sys.executable, str(lifeline_path()), argv),
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdin is not None
    with contextlib.suppress(OSError):
        proc.stdin.write(ARM.decode())
        proc.stdin.flush()

    escalations: list[threading.Timer] = []

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop() -> None:
        """SIGTERM now, SIGKILL if the group outlives the grace: a stop always ends the load."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        escalation = threading.Timer(STOP_GRACE_S, kill)
        escalation.daemon = True
        escalation.start()
        escalations.append(escalation)

    def lines() -> Iterator[str]:
        assert proc.stdout is not None
        yield from proc.stdout

    try:
        yield lines(), stop
    finally:
        for escalation in escalations:  # the group ends here; a late SIGKILL could hit a reused pgid
            escalation.cancel()
        end_process_group(proc)
        with contextlib.suppress(OSError):
            proc.stdin.close()


def runner_guard_disabled() -> bool:
    return os.environ.get(RUNNER_GUARD_OFF) == "1" and os.environ.get(workload.FAULT_ENV) == "1"


def _back_to_idle(samples: Sequence[Sample], after: float, limit_w: float | None) -> float | None:
    """Seconds from ``after`` until the GPU's power fell below a quarter of its limit."""
    if not limit_w:
        return None
    for sample in samples:
        if sample.t >= after and sample.power_w is not None and sample.power_w < 0.25 * limit_w:
            return sample.t - after
    return None


def run_burn(
    gpus: Sequence[GpuInfo],
    seconds: float,
    temp_limit_c: float,
    launcher: Launcher,
    argv: list[str],
    report_dir: Path,
    *,
    in_container: bool,
    ramp_s: float = 15.0,
    host_label: str = "",
    telemetry: Callable[[], Any] | None = None,
) -> BurnOutcome:
    """Burn ``gpus`` for ``seconds`` and judge each one. ``argv`` addresses the GPUs as the
    workload sees them: 0..k-1 in a container, NVML indices on the host. ``telemetry`` gives the
    sampler its pynvml (a remote host's nvidia-smi stream); None is this machine's NVML."""
    outcome = BurnOutcome()
    guard = TemperatureGuard(limit_c=temp_limit_c if not runner_guard_disabled() else math.inf)
    stoppers: list[Callable[[], None]] = []
    stop_requested = threading.Event()

    def stop() -> None:
        # The sampler calls this once: remember it, so a workload still starting is stopped too.
        stop_requested.set()
        for stop_workload in stoppers:
            stop_workload()

    try:
        sampler = Sampler(
            [g.index for g in gpus], stop, guard=guard.observe, hz=10.0, loader=telemetry
        ).start()
    except SamplerError as exc:
        outcome.diagnosis = Diagnosis(
            f"the burn cannot watch the GPUs: {exc}",
            "the GPUs' telemetry (NVML, or nvidia-smi on a remote host) does not answer, so the "
            "temperature guard could not protect the GPUs",
            "run the quick tier first (`pytest --gpuhost --gpuhost-tier quick`) and fix what it reports",
        )
        return outcome
    launched = ended = time.monotonic()
    try:
        time.sleep(IDLE_BASELINE_S)
        launched = ended = time.monotonic()
        try:
            if stop_requested.is_set():  # already at the limit, or blind: never start the load
                raise _NotStarted
            with launcher(argv) as (lines, stop_workload):
                stoppers.append(stop_workload)
                if stop_requested.is_set():  # the guard tripped while the workload was starting
                    stop_workload()
                deadline = threading.Timer(seconds + SETUP_MARGIN_S, stop_workload)
                deadline.daemon = True
                deadline.start()
                try:
                    for line in lines:
                        outcome.log.feed(line)
                finally:
                    deadline.cancel()
            ended = time.monotonic()
        except ContainerFailure as exc:
            outcome.diagnosis = exc.diagnosis
            return outcome
        except _NotStarted:
            launched, ended = sampler.t0, time.monotonic()  # judge the idle baseline that tripped
        time.sleep(COOLDOWN_RECORD_S)
    finally:
        sampler.close()
    outcome.guard_reason = guard.reason
    if guard.reason is None and outcome.log.thermal_guard is not None:
        outcome.guard_reason = f"the workload's own guard: {outcome.log.thermal_guard}"
    monitor_error = None if sampler.ok else sampler.error
    by_uuid = {start.uuid: index for index, start in outcome.log.starts.items() if start.uuid}
    for position, gpu in enumerate(gpus):
        seen_as = by_uuid.get(gpu.uuid, position if in_container else gpu.index)
        samples = sampler.samples(gpu.index)
        thresholds = Thresholds.for_gpu(sampler.info[gpu.index], temp_limit_c, ramp_s=ramp_s)
        outcome.verdicts[gpu.uuid] = evaluate(
            samples,
            thresholds,
            outcome.log.results.get(seen_as),
            gpu=gpu.index,
            uuid=gpu.uuid,
            start=launched,
            end=ended,
            guard_reason=outcome.guard_reason,
            monitor_error=monitor_error,
        )
        outcome.stop_to_idle_s[gpu.uuid] = _back_to_idle(samples, ended, thresholds.power_limit_w)
        if guard.tripped_at is not None:  # the guard's promise: idle within a second of the trip
            outcome.guard_to_idle_s[gpu.uuid] = _back_to_idle(
                samples, guard.tripped_at, thresholds.power_limit_w
            )
    if not outcome.log.starts and not outcome.log.results and guard.reason is None:
        tail = (outcome.log.errors + outcome.log.other)[-3:]
        outcome.diagnosis = Diagnosis(
            "the burn workload started no GPU worker: " + (" | ".join(tail) or "no output"),
            "the workload image has no PyTorch/CuPy with CUDA, or the GPUs were not given to it",
            "run the container tier first; choose --gpuhost-workload-image with PyTorch (examples/Dockerfile)",
        )
    meta = {
        "load_start_s": launched - sampler.t0,
        "load_end_s": ended - sampler.t0,
        "temp_limit_c": temp_limit_c,
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    stem = f"burn-series-{host_label}" if host_label else "burn-series"
    recorded = series.Series.from_sampler(sampler, meta=meta)
    outcome.files += list(series.save(recorded, report_dir, stem=stem))
    plot = plot_series(recorded, report_dir / f"{stem}.png", temp_limit_c=temp_limit_c)
    if plot is not None:
        outcome.files.append(plot)
    return outcome
