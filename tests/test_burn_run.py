"""The burn's wiring on CI: the real workload on the CPU, the sampler on NVML replayed from the
H100 capture (the only fake), the guard stopping the workload, and the per-GPU verdicts."""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuhost.burn import run as burn_run
from pytest_gpuhost.burn import workload
from pytest_gpuhost.burn.guard import TemperatureGuard
from pytest_gpuhost.burn.model import Sample
from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.docker.containers import ContainerFailure
from pytest_gpuhost.facts.model import GpuInfo

DATA = Path(__file__).parent / "data"
# The burn workload on the CPU needs PyTorch's CPU build, which the test extra does not install.
needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="PyTorch (CPU build) is not installed"
)
H100 = GpuInfo(
    index=0,
    uuid="GPU-042f1913-64c6-43ac-27c6-466e2d9041b0",
    name="NVIDIA H100 80GB HBM3",
    pci_bus_id="0000:00:06.0",
)


@pytest.fixture
def nvml_from_capture(monkeypatch: pytest.MonkeyPatch, fake_nvml: Any) -> None:
    """The sampler's NVML reads the real H100 capture: 36 °C, 70.5 W of a 700 W limit, no fan."""
    monkeypatch.setenv("GPUHOST_FAKE_NVML", str(DATA / "h100" / "nvml-dump.json"))
    monkeypatch.setattr("pytest_gpuhost.burn.sampler.load_pynvml", lambda: fake_nvml)


def cpu_argv(seconds: float) -> list[str]:
    return workload.command(seconds, [0], python=sys.executable, extra=["--device", "cpu", "--n", "64"])


@needs_torch
def test_a_burn_is_judged_per_criterion(tmp_path: Path, nvml_from_capture: None) -> None:
    outcome = burn_run.run_burn(
        [H100], 2.0, 85.0, burn_run.host_process, cpu_argv(2.0), tmp_path, in_container=False, ramp_s=0.0
    )
    assert outcome.diagnosis is None
    verdict = outcome.verdicts[H100.uuid]
    status = {f.criterion: f.status for f in verdict.findings}
    assert status["verification"] == "pass" and verdict.workload is not None and verdict.workload.iters > 0
    assert status["temperature"] == "pass"  # 36 °C against 85 °C
    assert status["fan"] == "skip"  # the H100 reports no fan
    # The capture idles at 70 W of 700 W: a burn that draws that little is no real load.
    assert status["load"] == "fail"
    assert outcome.guard_reason is None
    assert {p.suffix for p in outcome.files} >= {".csv", ".json"}


def test_a_gpu_already_at_the_limit_is_never_loaded(tmp_path: Path, nvml_from_capture: None) -> None:
    started = time.monotonic()
    outcome = burn_run.run_burn(
        [H100], 60.0, 30.0, burn_run.host_process, cpu_argv(60.0), tmp_path, in_container=False
    )
    assert outcome.guard_reason is not None and "36" in outcome.guard_reason  # the capture's 36 °C
    assert not outcome.log.starts  # the workload never ran
    assert time.monotonic() - started < burn_run.IDLE_BASELINE_S + burn_run.COOLDOWN_RECORD_S + 5.0
    assert outcome.verdicts[H100.uuid].finding("temperature").status == "fail"


class TripAfterStart(TemperatureGuard):
    """Trips on the first sample after the workload reported its start: a GPU heating up mid-burn."""

    armed = threading.Event()

    def observe(self, sample: Sample) -> str | None:
        if self.reason is None and self.armed.is_set():
            self.reason, self.tripped_at, self.tripped_gpu = "hot", sample.t, sample.gpu
            return self.reason
        return None


@needs_torch
def test_a_trip_mid_burn_stops_the_workload_within_a_second(
    tmp_path: Path, nvml_from_capture: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    TripAfterStart.armed.clear()
    monkeypatch.setattr(burn_run, "TemperatureGuard", lambda limit_c: TripAfterStart(limit_c=limit_c))
    seen: dict[str, float] = {}

    @contextlib.contextmanager
    def watched(argv: list[str]) -> Iterator[tuple[Iterator[str], Callable[[], None]]]:
        with burn_run.host_process(argv) as (lines, stop):

            def tap() -> Iterator[str]:
                for line in lines:
                    if '"start"' in line and not TripAfterStart.armed.is_set():
                        seen["armed"] = time.monotonic()
                        TripAfterStart.armed.set()
                    yield line
                seen["ended"] = time.monotonic()

            yield tap(), stop

    outcome = burn_run.run_burn([H100], 60.0, 85.0, watched, cpu_argv(60.0), tmp_path, in_container=False)
    assert outcome.guard_reason == "hot"
    # One 0.1 s sampling period to see the trip, then SIGTERM: the workload's output ends promptly.
    assert seen["ended"] - seen["armed"] < 2.0
    assert outcome.log.starts


def test_a_refused_container_is_a_diagnosis(tmp_path: Path, nvml_from_capture: None) -> None:
    refusal = Diagnosis("the daemon refused", "no toolkit", "install it")

    @contextlib.contextmanager
    def refusing(argv: list[str]) -> Iterator[tuple[Iterator[str], Callable[[], None]]]:
        raise ContainerFailure(refusal)
        yield iter(()), lambda: None  # pragma: no cover

    outcome = burn_run.run_burn([H100], 5.0, 85.0, refusing, ["burn"], tmp_path, in_container=True)
    assert outcome.diagnosis == refusal


@needs_torch
def test_a_runner_with_sigterm_blocked_still_stops_the_burn_at_once() -> None:
    """A signal mask is inherited across exec: a runner whose thread had SIGTERM blocked when it
    started the workload must not leave it deaf (the lifeline and the burn unblock it), and a
    group that outlives SIGTERM anyway is killed after the grace."""
    ended = threading.Event()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        process = burn_run.host_process(cpu_argv(60.0))
        lines, stop = process.__enter__()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:

        def drain() -> None:
            for line in lines:
                if '"start"' in line:
                    stop()
            ended.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        assert ended.wait(30.0), "the burn did not end after SIGTERM"
    finally:
        process.__exit__(None, None, None)


def test_a_stop_escalates_to_sigkill_after_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A workload that ignores SIGTERM still ends: the group gets SIGKILL after STOP_GRACE_S."""
    monkeypatch.setattr(burn_run, "STOP_GRACE_S", 1.0)
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(120)"
    started = time.monotonic()
    with burn_run.host_process([sys.executable, "-c", stubborn]) as (lines, stop):
        for line in lines:
            if line.startswith("up"):
                stop()
    assert time.monotonic() - started < 20
