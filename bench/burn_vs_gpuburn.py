"""Our burn against gpu-burn on one GPU, in one run: power, ramp, heat, TFLOP/s, and what we cost.

For the GPU machine, not CI. Phases, each from a cooled, idle GPU and sampled at 10 Hz by the
burn tier's own Sampler (which also guards the temperature):

1. our burn (``pytest_gpuhost/workloads/burn.py`` with the host's python and PyTorch), verifying;
2. ``gpu_burn -tc`` for the same time, if ``--gpu-burn`` is given;
3. our burn with ``--no-verify`` for a shorter time: the price of verifying every product.

Then a side-by-side table: steady power over the enforced limit (mean after the ramp), seconds to
95 % of the limit (from launch and from the load's onset), max temperature, TFLOP/s (gpu-burn's
from its "Gflop/s" output if it prints them), the ratios ours/gpu-burn, and the sampler's own CPU
time over wall time.

    python3 bench/burn_vs_gpuburn.py --gpu-burn /opt/gpu-burn/gpu_burn --seconds 60 --gpu 0 \\
        [--cooldown-to 45] [--out reports/burn-bench]

gpu-burn's command line is a template (``--gpu-burn-argv``); by default
``{binary} -tc -i {gpu} {seconds}``, run in the binary's folder (it loads compare.ptx from there).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pytest_gpuhost.burn import series
from pytest_gpuhost.burn.criteria import GpuStats, Thresholds, compute_stats, time_to_fraction
from pytest_gpuhost.burn.guard import TemperatureGuard
from pytest_gpuhost.burn.model import Sample, event_names
from pytest_gpuhost.burn.plot import plot_series
from pytest_gpuhost.burn.sampler import Sampler
from pytest_gpuhost.burn.workload import WorkloadLog, command, script_path

GFLOPS = re.compile(r"\(\s*([\d.]+)\s*Gflop/s\s*\)")
GPU_BURN_VERDICT = re.compile(r"GPU\s+\d+:\s+(OK|FAULTY)")


@dataclass
class Phase:
    name: str
    argv: list[str]
    samples: list[Sample] = field(default_factory=list)
    launched: float = 0.0
    ended: float = 0.0
    onset: float | None = None
    returncode: int | None = None
    tflops: float | None = None
    output: list[str] = field(default_factory=list)
    stats: GpuStats | None = None
    t95_launch: float | None = None
    t95_onset: float | None = None
    sampler_cpu: float = 0.0
    stop_reason: str | None = None
    verdict: str = ""
    extra: dict[str, float | None] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu-burn", help="path to the gpu_burn binary; without it only our burn runs")
    parser.add_argument("--gpu-burn-argv", default="{binary} -tc -i {gpu} {seconds}", help="template")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--gpu", type=int, default=0, help="NVML (= PCI order) index")
    parser.add_argument("--cooldown-to", type=float, default=45.0, help="°C to wait for before a phase")
    parser.add_argument("--cooldown-timeout", type=float, default=600.0)
    parser.add_argument("--no-verify-seconds", type=float, default=None, help="default: min(30, seconds/2)")
    parser.add_argument("--temp-limit", type=float, default=87.0, help="the guard's limit (°C)")
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds after onset left out of means")
    parser.add_argument("--python", default=sys.executable, help="python with PyTorch for our burn")
    parser.add_argument("--burn-arg", action="append", default=[], help="extra argument for burn.py")
    parser.add_argument("--out", type=Path, help="folder for the series (CSV, JSON, PNG) and a summary")
    return parser.parse_args(argv)


def wait_until_cool(gpu: int, target_c: float, timeout_s: float) -> tuple[float, float | None]:
    """Wait until the GPU is idle and below ``target_c``; (seconds waited, temperature then)."""
    started = time.monotonic()
    with Sampler([gpu], lambda: None, hz=2.0) as sampler:
        while True:
            time.sleep(1.0)
            latest = sampler.latest(gpu)
            temp = latest.temp_c if latest is not None else None
            limit = latest.power_limit_w if latest is not None else None
            power = latest.power_w if latest is not None else None
            idle = power is not None and limit is not None and power < 0.25 * limit
            if temp is not None and temp < target_c and idle:
                return time.monotonic() - started, temp
            if time.monotonic() - started > timeout_s:
                print(f"  cool-down: still {temp} °C after {timeout_s:g} s; going on", flush=True)
                return time.monotonic() - started, temp


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the phase's process group (gpu-burn forks per GPU), SIGKILL 3 s later."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(3.0)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_phase(phase: Phase, gpu: int, args: argparse.Namespace, cwd: Path | None, seconds: float) -> Phase:
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    guard = TemperatureGuard(limit_c=args.temp_limit)
    holder: list[subprocess.Popen[bytes]] = []

    def stop() -> None:
        if holder:
            kill_group(holder[0])

    print(f"\n== {phase.name}: {' '.join(phase.argv)}", flush=True)
    with Sampler([gpu], stop, guard=guard.observe) as sampler:
        time.sleep(2.0)  # an idle baseline
        idle = [s.power_w for s in sampler.samples(gpu) if s.power_w is not None]
        idle_w = sum(idle) / len(idle) if idle else 0.0
        phase.launched = time.monotonic()
        proc = subprocess.Popen(
            phase.argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        holder.append(proc)
        reader = threading.Thread(target=_read_output, args=(proc, phase), daemon=True)
        reader.start()
        try:
            proc.wait(seconds + 180.0)
        except subprocess.TimeoutExpired:
            print("  the phase overran its time: stopping it", flush=True)
            kill_group(proc)
        phase.ended = time.monotonic()
        reader.join(5.0)
        time.sleep(3.0)  # the start of the cool-down
    phase.returncode = proc.returncode
    phase.samples = sampler.samples(gpu)
    phase.sampler_cpu = sampler.cpu_seconds / max(sampler.wall_seconds, 1e-9)
    phase.stop_reason = sampler.stop_reason
    info = sampler.info[gpu]
    limit = info.power_limit_w
    threshold = idle_w + 0.5 * ((limit or idle_w * 4) - idle_w)
    phase.onset = next(
        (s.t for s in phase.samples if s.t >= phase.launched and (s.power_w or 0.0) >= threshold), None
    )
    start = phase.onset if phase.onset is not None else phase.launched
    phase.stats = compute_stats(
        phase.samples,
        Thresholds(power_limit_w=limit, ramp_s=args.ramp, temp_limit_c=args.temp_limit),
        gpu=gpu,
        start=start,
        end=phase.ended,
    )
    window = [s for s in phase.samples if phase.launched <= s.t <= phase.ended]
    phase.t95_launch = time_to_fraction(window, limit, 0.95, phase.launched)
    phase.t95_onset = time_to_fraction(window, limit, 0.95, start) if phase.onset is not None else None
    return phase


def _read_output(proc: subprocess.Popen[bytes], phase: Phase) -> None:
    """Collect output lines; gpu-burn redraws its progress with carriage returns."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    while chunk := os.read(fd, 4096):
        buffer += chunk
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        phase.output += [line.decode(errors="replace") for line in lines if line.strip()]
    if buffer.strip():
        phase.output.append(buffer.decode(errors="replace"))


def our_phase(name: str, args: argparse.Namespace, seconds: float, verify: bool) -> Phase:
    argv = command(seconds, [args.gpu], python=args.python, verify=verify, extra=args.burn_arg)
    phase = run_phase(Phase(name, argv), args.gpu, args, None, seconds)
    log = WorkloadLog.from_lines(phase.output)
    result = log.results.get(args.gpu)
    start = log.starts.get(args.gpu)
    if result is not None:
        phase.tflops = result.tflops
        phase.verdict = f"{result.errors} errors in {result.iters} GEMMs" if verify else "not verified"
        phase.extra["verify_cost"] = result.verify_cost
        phase.extra["max_err_ratio"] = result.max_err_ratio
    else:
        phase.verdict = "no result: " + "; ".join(log.errors or phase.output[-3:])
    if start is not None:
        phase.extra["setup_s"] = start.setup_seconds
        phase.verdict += f" (n={start.n}, {start.dtype}->{start.out_dtype}, {start.mem_gib:g} GiB)"
    return phase


def gpu_burn_phase(args: argparse.Namespace, seconds: float) -> Phase:
    binary = Path(args.gpu_burn).resolve()
    template = args.gpu_burn_argv.format(binary=binary, gpu=args.gpu, seconds=round(seconds))
    phase = run_phase(Phase("gpu-burn", template.split()), args.gpu, args, binary.parent, seconds)
    rates = [float(m) for line in phase.output for m in GFLOPS.findall(line)]
    phase.tflops = rates[-1] / 1000.0 if rates else None
    verdicts = [m for line in phase.output for m in GPU_BURN_VERDICT.findall(line)]
    phase.verdict = verdicts[-1] if verdicts else "no verdict printed"
    return phase


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _ratio(ours: float | None, theirs: float | None) -> str:
    return "n/a" if ours is None or not theirs else f"{ours / theirs:.3f}"


def report(phases: list[Phase]) -> str:
    def row(label: str, values: list[float | None], spec: str, ratio: bool = True) -> str:
        cells = [_fmt(v, spec) for v in values]
        if ratio and len(values) >= 2 and phases[1].name == "gpu-burn":
            cells.append(_ratio(values[0], values[1]))
        return f"{label:<32}" + "".join(f"{c:>18}" for c in cells)

    names = [p.name for p in phases]
    with_ratio = len(phases) >= 2 and phases[1].name == "gpu-burn"
    lines = [
        f"{'':<32}" + "".join(f"{n:>18}" for n in names) + (f"{'ours/gpu-burn':>18}" if with_ratio else "")
    ]
    stats = [p.stats or GpuStats(gpu=0) for p in phases]
    lines.append(row("steady power (W)", [s.mean_power_w for s in stats], ".1f"))
    lines.append(row("enforced limit (W)", [s.power_limit_w for s in stats], ".0f", ratio=False))
    lines.append(row("steady power / limit", [s.power_fraction for s in stats], ".3f"))
    lines.append(row("s to 95% of limit, from launch", [p.t95_launch for p in phases], ".1f"))
    lines.append(row("s to 95% of limit, from onset", [p.t95_onset for p in phases], ".1f"))
    lines.append(row("max temperature (°C)", [s.max_temp_c for s in stats], ".0f"))
    lines.append(row("max memory temperature (°C)", [s.max_mem_temp_c for s in stats], ".0f"))
    lines.append(row("mean SM clock (MHz)", [s.mean_sm_clock_mhz for s in stats], ".0f"))
    lines.append(row("TFLOP/s", [p.tflops for p in phases], ".1f"))
    lines.append(row("sampler CPU (% of a core)", [100 * p.sampler_cpu for p in phases], ".3f", ratio=False))
    lines.append("")
    for p in phases:
        events = ", ".join(event_names(p.stats.events_seen)) if p.stats else ""
        lines.append(f"{p.name}: exit {p.returncode}; {p.verdict}; clock events: {events or 'none'}")
        if p.stop_reason:
            lines.append(f"  STOPPED by the sampler: {p.stop_reason}")
    ours = {p.name: p for p in phases}
    verified, unverified = ours.get("ours"), ours.get("ours --no-verify")
    if verified is not None and unverified is not None and verified.tflops and unverified.tflops:
        cost = 1.0 - verified.tflops / unverified.tflops
        timers = verified.extra.get("verify_cost")
        lines.append(
            f"verification cost: {cost:.1%} of TFLOP/s (device timers: verify/GEMM = {_fmt(timers, '.2%')}); "
            f"largest deviation {_fmt(verified.extra.get('max_err_ratio'), '.3g')} of the tolerance"
        )
    return "\n".join(lines)


def save(phases: list[Phase], out: Path, text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for phase in phases:
        stem = phase.name.replace(" ", "").replace("--", "-")
        data = series.Series.from_samples(
            phase.samples,
            t0=phase.launched - 2.0,
            meta={
                "phase": phase.name,
                "argv": phase.argv,
                "load_start_s": 2.0,
                "load_end_s": phase.ended - phase.launched + 2.0,
            },
        )
        series.save(data, out, stem)
        plot_series(data, out / f"{stem}.png", title=phase.name)
        (out / f"{stem}.log").write_text("\n".join(phase.output) + "\n")
    (out / "summary.txt").write_text(text + "\n")
    (out / "summary.json").write_text(
        json.dumps(
            [
                {"phase": p.name, "tflops": p.tflops, "t95_launch": p.t95_launch, "t95_onset": p.t95_onset,
                 "sampler_cpu": p.sampler_cpu, "mean_power_w": p.stats.mean_power_w if p.stats else None,
                 "max_temp_c": p.stats.max_temp_c if p.stats else None, "verdict": p.verdict}
                for p in phases
            ],
            indent=1,
        )
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not script_path().is_file():
        raise SystemExit(f"the burn workload is missing: {script_path()}")
    short = args.no_verify_seconds or min(30.0, args.seconds / 2)
    plan: list[tuple[str, float]] = [("ours", args.seconds)]
    if args.gpu_burn:
        plan.append(("gpu-burn", args.seconds))
    else:
        print("no --gpu-burn given: running only our burn (no comparison)", flush=True)
    plan.append(("ours --no-verify", short))
    phases: list[Phase] = []
    for name, seconds in plan:
        waited, temp = wait_until_cool(args.gpu, args.cooldown_to, args.cooldown_timeout)
        print(f"\n-- cooled for {waited:.0f} s: {temp} °C", flush=True)
        if name == "gpu-burn":
            phases.append(gpu_burn_phase(args, seconds))
        else:
            phases.append(our_phase(name, args, seconds, verify=name == "ours"))
        if phases[-1].stop_reason:
            print(f"  the sampler stopped this phase: {phases[-1].stop_reason}", flush=True)
    text = report(phases)
    print("\n" + text, flush=True)
    if args.out:
        save(phases, args.out, text)
        print(f"\nseries and summary written to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
