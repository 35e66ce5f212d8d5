"""What having pytest-gpuhost installed costs an unrelated pytest session.

The plugin loads in every pytest run of its environment, so without ``--gpuhost`` it must cost
next to nothing. Measured side by side in one run: alternating runs of ``python3 -m pytest -q``
on a trivial test with the plugin and with ``-p no:gpuhost``, so that drift of the machine hits
both sides alike. Also the import time of ``pytest_gpuhost.plugin`` alone (``-X importtime``).

    python3 bench/plugin_overhead.py [--runs 15] [--goal-ms 20] [--strict]

Exits 0 unless ``--strict`` and the overhead misses the goal.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRIVIAL_TEST = "def test_trivial():\n    assert 1 + 1 == 2\n"


def timed_run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run; CPU time is robust to a busy machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def import_time_us(module: str, env: dict[str, str]) -> tuple[int, list[tuple[int, str]]]:
    """Microseconds that importing ``module`` adds after pytest, and its heaviest imports."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import pytest; import {module}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows: list[tuple[int, str]] = []  # (cumulative us, name indented by depth), children first
    for line in proc.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[1].strip().isdigit():
            continue
        rows.append((int(fields[1]), fields[2][1:].rstrip()))
    # Everything after pytest's own top-level row was imported by ``import module``.
    after = len(rows) - next(i for i, (_, name) in enumerate(reversed(rows)) if name == "pytest")
    added = rows[after:]
    total = sum(cum for cum, name in added if not name.startswith(" "))
    heaviest = sorted(((cum, name.strip()) for cum, name in added), reverse=True)[:5]
    return total, heaviest


Times = dict[str, list[tuple[float, float]]]


def measure(variants: dict[str, list[str]], runs: int, cwd: Path, env: dict[str, str]) -> Times:
    """(wall, CPU) seconds of each variant's runs, alternating the order so that drift hits both."""
    for argv in variants.values():  # warm the page cache and the bytecode caches
        timed_run(argv, cwd, env)
    times: Times = {name: [] for name in variants}
    for i in range(runs):
        for name in list(variants) if i % 2 == 0 else list(reversed(variants)):
            times[name].append(timed_run(variants[name], cwd, env))
    return times


def report(title: str, times: Times) -> tuple[float, float, float]:
    """Print medians and overheads; return the wall overhead, its IQR width and the CPU overhead in ms."""
    (_, with_t), (_, without_t) = times.items()
    print(title)
    for name, t in times.items():
        wall = [w * 1000 for w, _ in t]
        cpu = [c * 1000 for _, c in t]
        print(
            f"  {name:<16} wall median {statistics.median(wall):7.1f} ms (min {min(wall):.1f}, max {max(wall):.1f}); "
            f"CPU median {statistics.median(cpu):7.1f} ms"
        )
    wall_diffs = [(a[0] - b[0]) * 1000 for a, b in zip(with_t, without_t, strict=True)]
    cpu_diffs = [(a[1] - b[1]) * 1000 for a, b in zip(with_t, without_t, strict=True)]
    q1, _, q3 = statistics.quantiles(wall_diffs, n=4)
    with_median = statistics.median(w for w, _ in with_t) * 1000
    without_median = statistics.median(w for w, _ in without_t) * 1000
    wall_overhead = with_median - without_median
    cpu_overhead = statistics.median(cpu_diffs)
    min_diff = (min(w for w, _ in with_t) - min(w for w, _ in without_t)) * 1000
    print(
        f"  overhead: wall {wall_overhead:+.1f} ms (difference of medians; ratio {with_median / without_median:.3f}; "
        f"of minimums {min_diff:+.1f}; paired differences median {statistics.median(wall_diffs):+.1f}, "
        f"IQR {q1:+.1f} .. {q3:+.1f}); CPU {cpu_overhead:+.1f} ms (paired median)"
    )
    return wall_overhead, q3 - q1, cpu_overhead


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each variant (default 15)")
    parser.add_argument(
        "--goal-ms", type=float, default=20.0, help="the most overhead that passes (default 20)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when the overhead misses the goal")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    with tempfile.TemporaryDirectory(prefix="gpuhost-bench-") as tmp:
        work = Path(tmp)
        (work / "test_trivial.py").write_text(TRIVIAL_TEST)
        base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_trivial.py"]
        # As installed: every plugin of the environment loads, gpuhost through its entry point.
        installed = measure(
            {"with plugin": base, "-p no:gpuhost": [*base, "-p", "no:gpuhost"]}, args.runs, work, env
        )
        # Alone: no other plugin's noise, gpuhost loaded by name or not at all.
        alone_env = {**env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        alone = measure(
            {"-p gpuhost only": [*base, "-p", "pytest_gpuhost.plugin"], "no plugins": base},
            args.runs,
            work,
            alone_env,
        )

    print(
        f"python3 -m pytest -q on a trivial test, {args.runs} alternating runs of each variant ({sys.executable})"
    )
    overhead, spread, cpu = report("installed (entry points autoloaded):", installed)
    alone_overhead, _, alone_cpu = report("alone (PYTEST_DISABLE_PLUGIN_AUTOLOAD=1):", alone)

    cumulative_us, heaviest = import_time_us("pytest_gpuhost.plugin", env)
    print(
        f"import pytest_gpuhost.plugin after pytest: {cumulative_us / 1000:.1f} ms (-X importtime, cumulative)"
    )
    for cum, name in heaviest:
        print(f"  {cum / 1000:6.1f} ms  {name}")

    verdict = "PASS" if overhead < args.goal_ms else "FAIL"
    print(
        f"{verdict}: overhead {overhead:.1f} ms wall installed (CPU {cpu:.1f} ms; alone {alone_overhead:.1f} ms "
        f"wall, {alone_cpu:.1f} ms CPU) vs goal < {args.goal_ms:g} ms"
    )
    if spread > args.goal_ms:
        print(
            f"note: the paired wall differences spread over {spread:.0f} ms (IQR), more than the goal: this machine "
            "is busy; trust the CPU figures, or rerun with more --runs on an idle machine"
        )
    return 1 if args.strict and verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
