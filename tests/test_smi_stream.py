"""The burn's telemetry of a remote host: an nvidia-smi stream, read through the Sampler.

The stream is replayed from captures of a real H100 (driver 580.159.04, device run 11): at idle
and at full load. The replaying ``nvidia-smi`` is the only fake, at the nvidia-smi boundary.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pytest_gpuhost.burn.guard import TemperatureGuard
from pytest_gpuhost.burn.sampler import Sampler, SamplerError
from pytest_gpuhost.burn.smi_stream import EVENT_FIELDS, NVMLError, SmiStream, event_field
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.hosts.host import CommandResult

DATA = Path(__file__).parent / "data" / "h100"
H100 = GpuInfo(0, "GPU-cd734635-2a69-f228-ce40-de4cc39e941f", "NVIDIA H100 80GB HBM3", "00000000:00:06.0")


def replaying_smi(tmp_path: Path, capture: Path, hold_s: float = 30.0, exit_code: int = 0) -> Path:
    """A folder with an ``nvidia-smi`` that prints ``capture`` a line per 20 ms, then holds the
    stream open for ``hold_s`` without a line (a stalled stream) and exits with ``exit_code``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f'while IFS= read -r line; do echo "$line"; sleep 0.02; done < "{capture}"\n'
        f"sleep {hold_s}\nexit {exit_code}\n"
    )
    script.chmod(0o755)
    return folder


def stream_on(folder: Path, **kwargs: float) -> SmiStream:
    """The stream with the replaying nvidia-smi first on PATH (``env`` runs it as a remote prefix would)."""
    return SmiStream(["env", f"PATH={folder}:/usr/bin:/bin", "sh", "-c"], [H100], **kwargs)  # type: ignore[arg-type]


def until_stopped(sampler: Sampler, stops: list[int], seconds: float) -> None:
    """Let the sampler run until it calls stop (or ``seconds`` pass), then close it."""
    try:
        deadline = time.monotonic() + seconds
        while not stops and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sampler.close()


def test_the_command_is_bounded_on_the_host_and_names_the_gpus() -> None:
    stream = SmiStream(["ssh", "-T", "gpu01"], [H100, GpuInfo(3, "GPU-x", "H100", "0:0:0.0")], period_ms=100)
    argv = stream.command()
    assert argv[:3] == ["ssh", "-T", "gpu01"]
    assert argv[3].startswith("timeout -k 5 ")
    assert "--format=csv,noheader,nounits -lms 100 -i 0,3" in argv[3]
    assert "temperature.gpu" in argv[3] and EVENT_FIELDS[0] in argv[3]


def test_a_loaded_h100_read_through_the_stream(tmp_path: Path) -> None:
    folder = replaying_smi(tmp_path, DATA / "smi-stream-load.csv")
    stops: list[int] = []
    sampler = Sampler([0], lambda: stops.append(1), hz=10.0, loader=lambda: stream_on(folder)).start()
    try:
        time.sleep(0.4)
    finally:
        sampler.close()
    info = sampler.info[0]
    assert info.uuid == H100.uuid and info.power_limit_w == 700.0 and info.sm_clock_max_mhz == 1980.0
    last = sampler.samples(0)[-1]
    assert last.temp_c is not None and 55 <= last.temp_c <= 60
    assert last.power_w is not None and last.power_w > 650
    assert last.event_reasons == 0x4  # SW power cap, as the capture says
    assert last.fan_pct is None  # "[N/A]": the H100 has no fan
    assert not stops


def test_the_guard_stops_a_burn_watched_through_the_stream(tmp_path: Path) -> None:
    folder = replaying_smi(tmp_path, DATA / "smi-stream-load.csv")
    guard = TemperatureGuard(limit_c=50.0)
    stops: list[int] = []
    sampler = Sampler(
        [0], lambda: stops.append(1), guard=guard.observe, hz=10.0, loader=lambda: stream_on(folder)
    ).start()
    until_stopped(sampler, stops, seconds=5)
    assert stops == [1]
    assert guard.reason is not None and "at or above the limit of 50" in guard.reason


def test_a_stalled_stream_blinds_the_guard_which_stops_the_burn(tmp_path: Path) -> None:
    folder = replaying_smi(tmp_path, DATA / "smi-stream-idle.csv")
    guard = TemperatureGuard(limit_c=85.0, blind_after_s=0.5)
    stops: list[int] = []
    sampler = Sampler(
        [0],
        lambda: stops.append(1),
        guard=guard.observe,
        hz=10.0,
        loader=lambda: stream_on(folder, stale_after_s=0.3),
    ).start()
    until_stopped(sampler, stops, seconds=6)
    assert stops == [1]
    assert guard.reason is not None and "temperature unreadable" in guard.reason
    assert sampler.read_errors > 0 and "stream is" in (sampler.last_read_error or "")


def test_a_stream_that_cannot_start_stops_the_burn_before_it_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text('Field "clocks_event_reasons.active" is not a valid field to query.\n')
    folder = replaying_smi(tmp_path, bad, hold_s=0, exit_code=2)
    with pytest.raises(SamplerError, match="the nvidia-smi stream did not start: Field"):
        Sampler([0], lambda: None, hz=10.0, loader=lambda: stream_on(folder)).start()


def test_unknown_gpu_and_unsupported_values_are_nvml_errors(tmp_path: Path) -> None:
    stream = SmiStream([], [H100])
    with pytest.raises(NVMLError):
        stream.nvmlDeviceGetHandleByIndex(5)
    with pytest.raises(NVMLError) as missing:
        stream.nvmlDeviceGetTemperature(0, stream.NVML_TEMPERATURE_GPU)
    assert "no nvidia-smi line" in str(missing.value)
    with pytest.raises(NVMLError) as threshold:
        stream.nvmlDeviceGetTemperatureThreshold(0, stream.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)
    assert threshold.value.value == 3  # NOT_SUPPORTED: the Sampler records no threshold


def test_the_event_field_falls_back_to_its_older_name() -> None:
    asked: list[str] = []

    def run(argv: list[str], timeout: float) -> CommandResult:
        asked.append(argv[1])
        ok = argv[1].endswith(EVENT_FIELDS[1])
        return CommandResult(
            tuple(argv), 0 if ok else 2, "0x1" if ok else "", "" if ok else "not a valid field"
        )

    assert event_field(run) == EVENT_FIELDS[1]
    assert asked == [f"--query-gpu={f}" for f in EVENT_FIELDS]
