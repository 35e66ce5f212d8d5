"""The burn workload script on the CPU: its verification, its stops, its fault injection.

``--device cpu`` exists for these tests only; on a GPU the same code runs with CUDA streams and
events. The script is run as the plugin runs it, as a separate ``python3`` process.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuhost.burn.workload import FAULT_ENV, WorkloadLog, WorkloadResult, script_path
from pytest_gpuhost.workloads import burn, burn_engines, burn_guard, burn_numerics, burn_output

SCRIPT = script_path()
GiB = 1 << 30


def needs_torch() -> Any:
    return pytest.importorskip("torch")


RUNS = {
    "short": ("--n", "128", "--seconds", "1.5", "--gpus", "0,1", "--progress-interval", "0.3"),
    "faulty": ("--n", "128", "--seconds", "0.5", "--dtype", "bfloat16", "--inject-fault-every", "5"),
    "unverified": ("--n", "128", "--seconds", "0.5", "--no-verify"),
}


@dataclass(frozen=True)
class Finished:
    code: int
    stdout: str
    stderr: str

    @property
    def log(self) -> WorkloadLog:
        return WorkloadLog.from_lines(self.stdout.splitlines())


@pytest.fixture(scope="module")
def finished() -> dict[str, Finished]:
    """The short runs, started together: most of their time is importing PyTorch."""
    needs_torch()
    env = {**os.environ, FAULT_ENV: "1"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(SCRIPT), "--device", "cpu", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, args in RUNS.items()
    }
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=60)
        results[name] = Finished(proc.returncode, stdout, stderr)
    return results


class Running:
    """The script as a child process, read line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--device", "cpu", *args],
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.log = WorkloadLog()

    def lines(self) -> Iterator[str]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.feed(line)
            yield line

    def wait_for_progress(self) -> None:
        for line in self.lines():
            if '"t":' in line:
                return
        pytest.fail("the workload ended before reporting progress")

    def finish(self) -> float:
        """Read to the end; the seconds it took to exit."""
        started = time.monotonic()
        for _ in self.lines():
            pass
        self.proc.wait(10)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for child in started:
        child.kill()


# --- numerics and sizing, in process -------------------------------------------------------------


def test_dtype_follows_the_compute_capability() -> None:
    assert burn_numerics.pick_dtype((9, 0)) == burn_numerics.pick_dtype((8, 0)) == "bfloat16"
    assert burn_numerics.pick_dtype((7, 5)) == burn_numerics.pick_dtype((7, 0)) == "float16"
    assert burn_numerics.pick_dtype((6, 1)) == burn_numerics.pick_dtype(None) == "float32"
    assert burn_numerics.pick_dtype((9, 0), backend="cupy") == "float32"


def test_size_fits_the_budget() -> None:
    # An H100 80GB: the 20 GiB cap binds, n is the maximum, the outputs fill the rest.
    n, buffers = burn_numerics.pick_size(79 * GiB, 0.5, 20 * GiB, "bfloat16", "float32")
    assert n == burn_numerics.N_MAX and buffers == 17
    assert (2 * 2 + buffers * 4) * n * n <= 20 * GiB
    # A 1 GiB budget: n shrinks to the largest multiple of 256 that fits A, B and one output.
    n, buffers = burn_numerics.pick_size(2 * GiB, 0.5, 20 * GiB, "float16", "float16")
    assert n % 256 == 0 and n < burn_numerics.N_MAX and buffers >= 1
    assert (2 * 2 + buffers * 2) * n * n <= 1 * GiB * 0.9 < (2 * 2 + 2) * (n + 256) ** 2
    with pytest.raises(MemoryError):
        burn_numerics.pick_size(1 << 20, 0.5, 20 * GiB, "float32", "float32")


def test_tolerance_tracks_the_output_type_and_size() -> None:
    bf16, fp32 = (
        burn_numerics.tolerance_scale(16384, "bfloat16"),
        burn_numerics.tolerance_scale(16384, "float32"),
    )
    assert fp32 < bf16 / 5  # a float32 product verifies far more tightly than a bfloat16 one
    assert burn_numerics.tolerance_scale(1024, "float32") < fp32  # accumulation error grows with n
    # Accumulation over n terms, plus the float32 partial column sums over blocks of 256 rows.
    assert bf16 == pytest.approx(burn_numerics.SIGMAS * (2**-8 / math.sqrt(3) + (16384 + 256) * 2**-24 / 4))
    assert (burn_numerics.block_rows(16384), burn_numerics.block_rows(100)) == (256, 1)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_consistently_wrong_product_is_caught(dtype: str) -> None:
    """A GPU that is wrong the same way every time passes a self-comparison but not this check."""
    torch = needs_torch()
    engine = burn_engines.TorchEngine(torch, "cpu", 0)
    engine.setup(256, dtype, dtype, 2, seed=7)
    for it in range(4):
        engine.enqueue(it, verify=True, inject=False)
    clean = engine.end_batch(4)
    assert clean.errors == 0 and 0 < clean.worst < 0.5  # margin: the noise stays well inside
    engine.b[3, 5] += 4.0  # "the hardware" now computes with a wrong B, consistently
    for it in range(4, 10):
        engine.enqueue(it, verify=True, inject=False)
    faulty = engine.end_batch(10)
    assert faulty.errors == 6 and faulty.worst > 1.0
    assert torch.equal(engine.c[0], engine.c[1])  # identical wrong products: self-comparison is blind
    engine.close()


def test_injected_faults_are_each_caught_in_process() -> None:
    torch = needs_torch()
    engine = burn_engines.TorchEngine(torch, "cpu", 0)
    engine.setup(128, "bfloat16", "bfloat16", 3, seed=1)
    for it in range(30):
        engine.enqueue(it, verify=True, inject=(it + 1) % 7 == 0)
    assert engine.end_batch(30).errors == 30 // 7


def test_json_has_no_nan() -> None:
    assert burn_numerics.finite_or_none(float("nan")) is None and burn_numerics.finite_or_none(2.5) == 2.5


# --- the script, as a process --------------------------------------------------------------------


def final(log: WorkloadLog, gpu: int = 0) -> WorkloadResult:
    assert gpu in log.results, (log.errors, log.other)
    return log.results[gpu]


def test_short_run_reports_iterations_and_no_errors(finished: dict[str, Finished]) -> None:
    run = finished["short"]
    assert run.code == burn.EXIT_OK, run.stderr
    log = run.log
    for gpu in (0, 1):
        start, done = log.starts[gpu], final(log, gpu)
        assert (start.n, start.dtype, start.out_dtype, start.backend) == (128, "float32", "float32", "torch")
        assert done.iters > 50 and done.errors == 0 and done.verified and done.stopped == "time"
        assert done.seconds == pytest.approx(1.5, abs=0.3)
        assert done.tflops > 0 and done.gemm_seconds > 0 and done.verify_seconds > 0
        assert done.max_err_ratio is not None and 0 < done.max_err_ratio < 0.5
        ticks = log.progress[gpu]
        assert len(ticks) >= 2 and all(b.iters >= a.iters for a, b in itertools.pairwise(ticks))
        assert ticks[-1].iters <= done.iters
    records = [json.loads(line) for line in run.stdout.splitlines()]  # JSON lines, nothing else
    assert {"gpu", "iters", "errors", "tflops", "verify_seconds", "gemm_seconds"} <= set(records[-1])
    assert not log.other and not log.errors


def test_sigterm_stops_it_within_a_second(running: list[Running]) -> None:
    needs_torch()
    child = Running("--n", "128", "--seconds", "60", "--progress-interval", "0.2")
    running.append(child)
    child.wait_for_progress()
    child.proc.send_signal(signal.SIGTERM)
    took = child.finish()
    assert took < 1.0
    assert child.proc.returncode == burn.EXIT_OK
    done = final(child.log)
    assert done.stopped == "signal" and done.iters > 0 and done.errors == 0 and done.seconds < 30


def test_stop_file_stops_it(running: list[Running], tmp_path: Path) -> None:
    needs_torch()
    stop_file = tmp_path / "stop"
    child = Running(
        "--n", "128", "--seconds", "60", "--stop-file", str(stop_file), "--progress-interval", "0.2"
    )
    running.append(child)
    child.wait_for_progress()
    stop_file.touch()
    assert child.finish() < 1.0
    assert final(child.log).stopped == "stop-file" and child.proc.returncode == burn.EXIT_OK


def test_fault_injection_is_caught(finished: dict[str, Finished]) -> None:
    run = finished["faulty"]
    done = final(run.log)
    assert run.code == burn.EXIT_ERRORS, run.stderr
    assert done.iters >= 5 and done.errors == done.iters // 5  # every fault, and nothing else
    assert done.max_err_ratio is not None and done.max_err_ratio > 10


def test_fault_injection_needs_the_switch() -> None:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--n", "128", "--inject-fault-every", "5"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert proc.returncode == burn.EXIT_USAGE
    assert FAULT_ENV in proc.stderr and not proc.stdout


def test_no_verify_reports_no_error_count(finished: dict[str, Finished]) -> None:
    run = finished["unverified"]
    done = final(run.log)
    assert run.code == burn.EXIT_OK, run.stderr
    assert done.errors is None and not done.verified and done.verify_cost is None
    assert done.iters > 0 and done.verify_seconds == 0.0 and done.max_err_ratio is None


HANGS_IN_SETUP = """
import sys, threading
sys.path.insert(0, {folder!r})
import burn
burn.JOIN_GRACE_S = 0.2
class HangsInCudaStartup:
    def __init__(self, *args):
        threading.Event().wait()
burn.TorchEngine = HangsInCudaStartup
burn.load_backend = lambda device: ("torch", None)
sys.exit(burn.main(["--device", "cpu", "--gpus", "0", "--setup-timeout", "0.5", "--seconds", "600"]))
"""


def test_a_worker_hung_in_cuda_startup_still_ends_the_script() -> None:
    """Before its burn deadline is set, the setup deadline holds: no burn waits forever."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", HANGS_IN_SETUP.format(folder=str(SCRIPT.parent))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == burn.EXIT_WORKER
    assert time.monotonic() - started < 15
    log = WorkloadLog.from_lines(done.stdout.splitlines())
    assert log.results[0].stopped == "hung"


# --- the thermal guard inside the workload --------------------------------------------------------


def test_the_thermal_guard_trips_at_the_limit_and_says_why() -> None:
    out_lines: list[str] = []

    class Lines:
        def write(self, text: str) -> None:
            out_lines.append(text)

        def flush(self) -> None:
            pass

    stop = burn_output.StopFlag()
    temps = iter([60.0, 70.0, 84.0, 85.0, 99.0])
    guard = burn_guard.ThermalGuard(
        85.0,
        stop,
        burn_output.Output(Lines()),
        lambda: ["GPU-a"],
        lambda: {"GPU-a": next(temps)},
        period_s=0.01,
    )
    guard.start()
    guard.join(5)
    assert stop.reason == burn_guard.GUARD_STOP
    assert guard.tripped == "GPU-a reached 85 °C, at or above the limit of 85 °C"
    log = WorkloadLog.from_lines("".join(out_lines).splitlines())
    assert log.thermal_guard == guard.tripped and not log.errors


def test_the_thermal_guard_stops_a_burn_it_cannot_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(burn_guard, "GUARD_BLIND_S", 0.2)
    stop = burn_output.StopFlag()
    guard = burn_guard.ThermalGuard(
        85.0, stop, burn_output.Output(), lambda: ["GPU-a"], lambda: {"GPU-a": None}, 0.01
    )
    started = time.monotonic()
    guard.start()
    guard.join(5)
    assert stop.reason == burn_guard.GUARD_STOP and time.monotonic() - started < 2
    assert guard.tripped is not None and "unreadable" in guard.tripped


HEATS_UP = """
import sys, time
sys.path.insert(0, {folder!r})
import burn
import burn_guard
started = time.monotonic()
class HeatingNvml:
    def handles(self):
        return {{"GPU-cpu": 0}}
    def temperature(self, handle):
        return 40.0 + 20.0 * (time.monotonic() - started)
burn_guard.Nvml = HeatingNvml
sys.exit(burn.main(["--device", "cpu", "--n", "128", "--seconds", "60", "--temp-limit", "50"]))
"""


def test_the_workload_stops_itself_at_the_temperature_limit() -> None:
    """The limit passed in at start stops the burn with no help from the runner (exit 5)."""
    needs_torch()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", HEATS_UP.format(folder=str(SCRIPT.parent))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == burn.EXIT_GUARD, done.stderr
    assert time.monotonic() - started < 20
    log = WorkloadLog.from_lines(done.stdout.splitlines())
    assert log.thermal_guard is not None and "at or above the limit of 50 °C" in log.thermal_guard
    assert log.results[0].stopped == burn_guard.GUARD_STOP


def test_the_runner_passes_the_limit_and_its_guard_is_off_only_with_both_switches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pytest_gpuhost.burn import run
    from pytest_gpuhost.burn.workload import command

    argv = command(60, [0], temp_limit=83.0)
    assert argv[argv.index("--temp-limit") + 1] == "83"
    assert burn.parse_args(argv[2:]).temp_limit == 83.0
    monkeypatch.setenv(run.RUNNER_GUARD_OFF, "1")
    monkeypatch.delenv(FAULT_ENV, raising=False)
    assert not run.runner_guard_disabled()
    monkeypatch.setenv(FAULT_ENV, "1")
    assert run.runner_guard_disabled()
