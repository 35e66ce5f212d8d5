"""The burn's pass criteria, its saved series, and the workload's output, on synthetic H100 runs.

The synthetic run follows what an H100 SXM (700 W) does under a GEMM burn: idle at 36 °C and
70 W, power at the cap within seconds (SW_POWER_CAP set, SM clock down from 1980 to ~1755 MHz),
the temperature rising towards its steady state with a time constant of a few minutes. A run
recorded on real hardware can be dropped into ``tests/data/burn/`` (see ``test_recorded_series``).
"""

from __future__ import annotations

import importlib
import itertools
import math
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuhost.burn import model, series
from pytest_gpuhost.burn.criteria import (
    Thresholds,
    compute_stats,
    evaluate,
    in_window,
    summary_line,
    time_to_fraction,
)
from pytest_gpuhost.burn.model import GpuStatic, Sample, event_names
from pytest_gpuhost.burn.plot import plot_series
from pytest_gpuhost.burn.workload import (
    WorkloadLog,
    WorkloadProgress,
    WorkloadResult,
    WorkloadStart,
    command,
    parse_line,
    script_path,
)

DATA = Path(__file__).resolve().parent / "data"
T0 = 5000.0  # the load starts here (monotonic seconds)
H100 = GpuStatic(
    index=0,
    uuid="GPU-042f1913-64c6-43ac-27c6-466e2d9041b0",
    name="NVIDIA H100 80GB HBM3",
    slowdown_c=89.0,
    shutdown_c=95.0,
    max_operating_c=87.0,
    mem_max_c=95.0,
    power_limit_w=700.0,
    sm_clock_max_mhz=1980.0,
)


def h100_burn(
    seconds: float = 300.0,
    hz: float = 2.0,
    *,
    steady_c: float = 78.0,
    tau_s: float = 90.0,
    power_w: float = 690.0,
    power_tau_s: float = 1.0,
    limit_w: float = 700.0,
    load_events: int = model.SW_POWER_CAP,
    fan: float | None = None,
    gpu: int = 0,
    idle_s: float = 10.0,
) -> list[Sample]:
    """Samples from ``idle_s`` before the load (at T0) to its end, plus no cool-down."""
    samples = []
    steps = int((idle_s + seconds) * hz)
    for k in range(steps + 1):
        t = T0 - idle_s + k / hz
        x = t - T0
        if x < 0:
            samples.append(Sample(gpu, round(t, 3), 36.0, 38.0, 70.5, limit_w, 345.0, model.GPU_IDLE, fan))
            continue
        temp = 36.0 + (steady_c - 36.0) * (1 - math.exp(-x / tau_s))
        power = 70.5 + (power_w - 70.5) * (1 - math.exp(-x / power_tau_s))
        clock = 1980.0 if power < 0.97 * limit_w else 1755.0
        events = load_events if power >= 0.97 * limit_w else 0
        fan_pct = None if fan is None else min(100.0, fan + (temp - 36.0))
        samples.append(
            Sample(
                gpu,
                round(t, 3),
                round(temp),
                round(temp) + 3.0,
                round(power, 2),
                limit_w,
                clock,
                events,
                fan_pct,
            )
        )
    return samples


def result(iters: int = 41_233, errors: int | None = 0, tflops: float = 612.4, **kw: Any) -> WorkloadResult:
    return WorkloadResult(gpu=0, iters=iters, errors=errors, tflops=tflops, seconds=300.0, **kw)


def judge(samples: list[Sample], workload: WorkloadResult | None = None, **kw: Any) -> Any:
    thresholds = Thresholds.for_gpu(H100, kw.pop("temp_limit_c", 85.0), **kw.pop("overrides", {}))
    end = max(s.t for s in samples) if samples else None
    return evaluate(samples, thresholds, workload or result(), uuid=H100.uuid, start=T0, end=end, **kw)


def statuses(verdict: Any) -> dict[str, str]:
    return {f.criterion: f.status for f in verdict.findings}


# --- constants -----------------------------------------------------------------------------------


def test_event_bits_match_pynvml() -> None:
    pynvml = pytest.importorskip("pynvml")
    assert model.HW_SLOWDOWN == pynvml.nvmlClocksEventReasonHwSlowdown == 0x8
    assert model.HW_THERMAL_SLOWDOWN == pynvml.nvmlClocksEventReasonHwThermalSlowdown == 0x40
    assert model.HW_POWER_BRAKE_SLOWDOWN == pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown == 0x80
    assert model.SW_THERMAL_SLOWDOWN == pynvml.nvmlClocksEventReasonSwThermalSlowdown == 0x20
    assert model.SW_POWER_CAP == pynvml.nvmlClocksEventReasonSwPowerCap == 0x4
    assert model.GPU_IDLE == pynvml.nvmlClocksEventReasonGpuIdle == 0x1
    assert event_names(0x4 | 0x8 | 0x1000) == ["SW_POWER_CAP", "HW_SLOWDOWN", "0x1000"]


# --- criteria ------------------------------------------------------------------------------------


def test_healthy_h100_passes() -> None:
    verdict = judge(h100_burn())
    assert verdict.ok, verdict.report()
    assert statuses(verdict) == {
        "telemetry": "pass",
        "temperature": "pass",
        "slowdown": "pass",
        "clock-events": "info",  # SW_POWER_CAP: how a healthy GPU holds its limit
        "fan": "skip",
        "load": "pass",
        "verification": "pass",
    }
    assert verdict.finding("fan").summary.startswith("not applicable: no fans")
    stats = verdict.stats
    peak = round(36.0 + (78.0 - 36.0) * (1 - math.exp(-300.0 / 90.0)))  # short of the 78 °C steady state
    assert stats.max_temp_c == peak == 77.0
    assert stats.power_limit_w == 700.0 and stats.power_fraction is not None and stats.power_fraction > 0.98
    assert stats.samples == 601 and stats.duration_s == pytest.approx(300.0)
    line = summary_line(verdict)
    assert line.startswith(
        "GPU 0 (042f1913): ok: max 77 °C, mem 80 °C, 690/700 W (99%), 95% of limit after 3.5 s"
    )
    assert "612.4 TFLOP/s, 0 errors in 41233 GEMMs" in line and "SW_POWER_CAP" in line and "fan n/a" in line


def test_over_the_limit_fails_with_a_cooling_diagnosis() -> None:
    verdict = judge(h100_burn(steady_c=88.0, tau_s=60.0), guard_reason="GPU 0 reached 85 °C")
    assert statuses(verdict)["temperature"] == "fail"
    assert statuses(verdict)["slowdown"] == "pass"  # 88 < 89
    diagnosis = verdict.finding("temperature").diagnosis
    assert diagnosis is not None
    assert "reached 88 °C" in diagnosis.found and "guard stopped" in diagnosis.found
    assert "airflow" in diagnosis.cause and "ipmitool" in diagnosis.fix
    assert "FAIL temperature" in summary_line(verdict)
    assert "FOUND:" in verdict.report()


def test_at_the_slowdown_threshold_fails_even_under_a_high_limit() -> None:
    verdict = judge(h100_burn(steady_c=92.0, tau_s=30.0), temp_limit_c=95.0)
    assert statuses(verdict)["temperature"] == "pass"
    assert statuses(verdict)["slowdown"] == "fail"
    assert "89 °C" in (verdict.finding("slowdown").diagnosis or pytest.fail()).found


@pytest.mark.parametrize(
    ("bits", "named", "advice"),
    [
        (model.HW_SLOWDOWN, "HW_SLOWDOWN", "power cables"),
        (model.HW_SLOWDOWN | model.HW_THERMAL_SLOWDOWN, "HW_THERMAL_SLOWDOWN", "airflow"),
        (model.HW_SLOWDOWN | model.HW_POWER_BRAKE_SLOWDOWN, "HW_POWER_BRAKE_SLOWDOWN", "Power Supply"),
    ],
)
def test_hardware_slowdown_fails(bits: int, named: str, advice: str) -> None:
    verdict = judge(h100_burn(load_events=model.SW_POWER_CAP | bits))
    finding = verdict.finding("clock-events")
    assert finding.status == "fail" and finding.diagnosis is not None
    assert f"{named} active in 99% of the samples" in finding.diagnosis.found  # all but the first
    assert advice in finding.diagnosis.cause + finding.diagnosis.fix


def test_software_slowdowns_are_reported_not_failed() -> None:
    verdict = judge(h100_burn(load_events=model.SW_POWER_CAP | model.SW_THERMAL_SLOWDOWN))
    assert verdict.ok
    finding = verdict.finding("clock-events")
    assert finding.status == "info" and "SW_THERMAL_SLOWDOWN" in finding.summary


def test_fans_are_judged_where_there_are_fans() -> None:
    assert judge(h100_burn(fan=30.0)).finding("fan").status == "pass"
    verdict = judge(h100_burn(fan=70.0))  # 70 % + 40 °C of heating: pinned at 100 %
    assert verdict.finding("fan").status == "fail" and verdict.stats.max_fan_pct == 100.0


def test_a_weak_load_fails_unless_the_tflops_are_there() -> None:
    weak = h100_burn(power_w=420.0, load_events=0)
    verdict = judge(weak)
    finding = verdict.finding("load")
    assert finding.status == "fail" and finding.diagnosis is not None
    assert "60%" in finding.diagnosis.found and "nvidia-smi -rgc" in finding.diagnosis.fix
    assert judge(weak, overrides={"expected_tflops": 600.0}).finding("load").status == "pass"
    slow = judge(weak, result(tflops=350.0), overrides={"expected_tflops": 600.0})
    assert slow.finding("load").status == "fail"
    assert "expected >= 600 TFLOP/s" in (slow.finding("load").diagnosis or pytest.fail()).found


def test_the_ramp_up_is_excluded_from_the_power_mean() -> None:
    slow_ramp = h100_burn(seconds=120.0, power_tau_s=25.0)
    assert judge(slow_ramp, overrides={"ramp_s": 60.0}).finding("load").status == "pass"
    assert judge(slow_ramp, overrides={"ramp_s": 0.0}).finding("load").status == "fail"


def test_a_burn_shorter_than_the_ramp_is_not_judged_on_power() -> None:
    verdict = judge(h100_burn(seconds=10.0))
    assert verdict.finding("load").status == "skip" and verdict.ok


def test_verification_errors_fail() -> None:
    verdict = judge(h100_burn(), result(errors=3, max_err_ratio=41.5))
    finding = verdict.finding("verification")
    assert finding.status == "fail" and finding.diagnosis is not None
    assert "3 wrong products in 41233 GEMMs" in finding.diagnosis.found
    assert "41.5x its tolerance" in finding.diagnosis.found and "xid" in finding.diagnosis.fix.lower()


def test_unverified_run_skips_and_a_missing_result_fails() -> None:
    assert judge(h100_burn(), result(errors=None, verified=False)).finding("verification").status == "skip"
    thresholds = Thresholds.for_gpu(H100, 85.0)
    missing = evaluate(h100_burn(), thresholds, None, start=T0)
    assert missing.finding("verification").status == "fail"
    crashed = judge(h100_burn(), result(iters=12, error="RuntimeError: CUDA error: an illegal memory access"))
    assert "illegal memory access" in crashed.finding("verification").summary
    assert judge(h100_burn(), result(iters=0)).finding("verification").status == "fail"


def test_monitoring_failures_fail_the_telemetry() -> None:
    stuck = judge(h100_burn(), monitor_error="NVML power read of GPU 0 has not returned for 2.1 s")
    assert stuck.finding("telemetry").status == "fail"
    assert "has not returned" in (stuck.finding("telemetry").diagnosis or pytest.fail()).found
    blind = judge(h100_burn(), guard_reason="GPU 0 temperature unreadable for 2.0 s")
    assert blind.finding("telemetry").status == "fail"
    empty = evaluate([], Thresholds(), result(), gpu=3)
    assert empty.gpu == 3 and [f.criterion for f in empty.failures] == ["telemetry"]


def test_time_to_95_percent_of_the_limit() -> None:
    samples = h100_burn(seconds=30.0, hz=10.0, power_w=690.0, power_tau_s=1.0)
    # 70.5 + 619.5 (1 - exp(-t)) >= 665 W from t = ln(619.5 / 25) = 3.21 s; sampled every 0.1 s
    ramp = time_to_fraction(samples, 700.0, 0.95, start=T0)
    assert ramp is not None and 3.2 <= ramp <= 3.31
    assert time_to_fraction(samples, start=T0) == ramp  # the limit from the samples themselves
    assert time_to_fraction(h100_burn(seconds=30.0, power_w=600.0), 700.0, start=T0) is None
    assert compute_stats(samples, Thresholds(), start=T0).time_to_95_s == ramp
    assert time_to_fraction([], 700.0) is None


def test_window_selection() -> None:
    samples = h100_burn(seconds=20.0)
    assert all(T0 <= s.t <= T0 + 5 for s in in_window(samples, T0, T0 + 5))
    assert len(in_window(samples)) == len(samples)
    idle_included = compute_stats(samples, Thresholds(ramp_s=0.0))
    assert idle_included.event_share["GPU_IDLE"] == pytest.approx(20 / 61, abs=0.01)


# --- the workload's output -----------------------------------------------------------------------


def test_workload_lines_parse_into_records() -> None:
    lines = [
        '{"gpu":0,"start":true,"backend":"torch","device":"NVIDIA H100 80GB HBM3","uuid":"GPU-042f","n":16384,'
        '"dtype":"bfloat16","out_dtype":"float32","buffers":17,"mem_gib":18.0,"setup_seconds":2.1}',
        '{"gpu":0,"t":1.002,"iters":80,"errors":0,"tflops":703.1,"max_err_ratio":0.004}',
        "a stray warning from the framework",
        '{"gpu":0,"error":"RuntimeError: CUDA error: unspecified launch failure"}',
        '{"gpu":0,"done":true,"iters":160,"errors":1,"tflops":690.5,"seconds":2.0,"gemm_seconds":1.9,'
        '"verify_seconds":0.05,"max_err_ratio":null,"verified":true,"stopped":"signal"}',
        '{"error":"neither PyTorch nor CuPy can be imported"}',
    ]
    log = WorkloadLog.from_lines(lines)
    assert log.starts[0] == WorkloadStart(0, "torch", "NVIDIA H100 80GB HBM3", "GPU-042f", 16384, "bfloat16",
                                          "float32", 17, 18.0, 2.1)  # fmt: skip
    assert log.progress[0] == [WorkloadProgress(0, 1.002, 80, 0, 703.1, 0.004)]
    final = log.results[0]
    assert (final.iters, final.errors, final.stopped, final.max_err_ratio) == (160, 1, "signal", None)
    assert final.verify_cost == pytest.approx(0.05 / 1.9)
    assert log.errors == ["GPU 0: RuntimeError: CUDA error: unspecified launch failure",
                          "neither PyTorch nor CuPy can be imported"]  # fmt: skip
    assert log.other == ["a stray warning from the framework"]
    assert log.total_tflops() == 690.5
    assert parse_line("{not json") is None and parse_line("[1, 2]") is None


def test_workload_command() -> None:
    argv = command(7200, [0, 1], stop_file="/tmp/stop", verify=False, mem_fraction=0.25)
    assert argv[:2] == ["python3", str(script_path())]
    assert argv[2:] == ["--seconds", "7200", "--gpus", "0,1", "--stop-file", "/tmp/stop", "--no-verify",
                        "--mem-fraction", "0.25"]  # fmt: skip
    assert script_path().is_file()
    assert command(60, script="/gpuhost/workloads/burn.py")[1:5] == [
        "/gpuhost/workloads/burn.py", "--seconds", "60", "--gpus"]  # fmt: skip


# --- saved series --------------------------------------------------------------------------------


def _two_gpu_series() -> series.Series:
    samples = h100_burn(seconds=20.0) + h100_burn(seconds=20.0, gpu=1, steady_c=70.0)
    samples.append(Sample(1, T0 + 20.2, None, None, None, None, None, None, None))  # a failed read
    gpus = {
        0: H100,
        1: GpuStatic(index=1, uuid="GPU-5d2f0a77-0000-4000-8000-00000000b001", power_limit_w=700.0),
    }
    return series.Series.from_samples(
        samples, gpus, t0=T0 - 10.0, meta={"load_start_s": 10.0, "temp_limit_c": 85}
    )


def test_series_round_trips_through_csv_and_json(tmp_path: Path) -> None:
    original = _two_gpu_series()
    csv_path, json_path = series.save(original, tmp_path / "out")
    header = csv_path.read_text().splitlines()[0]
    assert header == "t_s,gpu,uuid,temp_c,mem_temp_c,power_w,power_limit_w,sm_clock_mhz,event_reasons,fan_pct"
    assert ",0x4," in csv_path.read_text()  # event reasons in hex, as nvidia-smi shows them
    for loaded in (series.load(csv_path), series.load(json_path)):
        assert loaded.indices == [0, 1]
        assert loaded.of(0) == original.of(0) and loaded.of(1) == original.of(1)
        assert loaded.of(1)[-1].temp_c is None and loaded.uuid(0) == H100.uuid
    from_json = series.read_json(json_path)
    assert from_json.gpus[0] == H100 and from_json.meta["load_start_s"] == 10.0
    assert original.of(0)[0].t == 0.0


def test_series_json_refuses_other_documents(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a"):
        series.from_json({"format": "something else"})
    with pytest.raises(ValueError, match="newer"):
        series.from_json({"format": series.FORMAT, "version": series.VERSION + 1})


def test_nvidia_smi_csv_is_read(tmp_path: Path) -> None:
    text = (
        "timestamp, index, uuid, temperature.gpu, temperature.memory, power.draw [W], "
        "enforced.power.limit [W], clocks.current.sm [MHz], clocks_event_reasons.active, fan.speed [%]\n"
        "2025/11/23 05:30:00.000, 0, GPU-042f1913-64c6-43ac-27c6-466e2d9041b0, 36, 38, 70.51 W, 700.00 W, "
        "345 MHz, 0x0000000000000001, [N/A]\n"
        "2025/11/23 05:30:00.100, 0, GPU-042f1913-64c6-43ac-27c6-466e2d9041b0, 41, 43, 688.02 W, 700.00 W, "
        "1755 MHz, 0x0000000000000004, [N/A]\n"
    )
    path = tmp_path / "smi.csv"
    path.write_text(text)
    loaded = series.load(path)
    first, second = loaded.of(0)
    assert (first.t, first.temp_c, first.power_w, first.event_reasons, first.fan_pct) == (
        0.0,
        36.0,
        70.51,
        1,
        None,
    )
    assert second.t == pytest.approx(0.1) and second.sm_clock_mhz == 1755.0 and second.event_reasons == 4
    assert loaded.uuid(0) == "GPU-042f1913-64c6-43ac-27c6-466e2d9041b0"


RECORDED = sorted(DATA.glob("burn/*.csv")) + sorted(DATA.glob("burn/*.json"))


@pytest.mark.parametrize("path", RECORDED, ids=[p.name for p in RECORDED])
def test_recorded_series(path: Path) -> None:
    """A run recorded on real hardware reads back and yields plausible statistics."""
    recorded = series.load(path)
    assert recorded.indices
    for index in recorded.indices:
        samples = recorded.of(index)
        stats = compute_stats(samples, Thresholds(ramp_s=0.0), gpu=index)
        assert stats.samples == len(samples) > 10
        assert stats.max_temp_c is not None and 15.0 <= stats.max_temp_c <= 100.0
        assert all(b.t >= a.t for a, b in itertools.pairwise(samples))
        summary_line(evaluate(samples, Thresholds(ramp_s=0.0), None, gpu=index))


def test_plot_is_skipped_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def no_matplotlib(name: str, package: str | None = None) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", no_matplotlib)
    assert plot_series(_two_gpu_series(), tmp_path / "burn.png") is None
    assert not (tmp_path / "burn.png").exists()


def test_plot_is_written_with_matplotlib(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = plot_series(_two_gpu_series(), tmp_path / "burn.png", temp_limit_c=85.0)
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
