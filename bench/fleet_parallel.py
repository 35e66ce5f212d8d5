"""What checking 8 hosts in parallel costs against checking one: goal under 1.5x the wall time.

Eight real OpenSSH servers on loopback (``tests/sshd_support.py``) stand in for eight nodes;
the quick tier runs over SSH against one of them, then against all eight with
``-n 8 --dist loadgroup`` (each host's checks on one worker). Not run in CI.

    python3 bench/fleet_parallel.py [--hosts 8] [--goal 1.5] [--strict]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sshd_support import SshLab, sshd_or_skip


def timed(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 1):  # 1: checks fail on a machine without GPUs
        raise SystemExit(
            f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr}"
        )
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--goal", type=float, default=1.5)
    parser.add_argument("--strict", action="store_true", help="exit 1 when the ratio misses the goal")
    parser.add_argument("--serial", action="store_true", help="also time all hosts without xdist")
    args = parser.parse_args()
    sshd_or_skip()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))  # stop the servers on `timeout`
    with tempfile.TemporaryDirectory(prefix="gpuhost-fleet-bench-") as tmp:
        lab = SshLab(Path(tmp))
        try:
            names = [f"node{i + 1}" for i in range(args.hosts)]
            for name in names:
                lab.start(name)
            base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--gpuhost"]
            base += ["--gpuhost-tier", "quick"]
            timed([*base, *lab.args(names[0])], Path(tmp))  # warm: imports, control masters
            one = timed([*base, *lab.args(names[0])], Path(tmp))
            # xdist's fixed cost: one host on one worker (start-up, the controller's fact gathering).
            one_worker = timed([*base, *lab.args(names[0]), "-n", "1", "--dist", "loadgroup"], Path(tmp))
            fleet_args = [*lab.args(*names), "-n", str(args.hosts), "--dist", "loadgroup"]
            many = timed([*base, *fleet_args], Path(tmp))
            serial = timed([*base, *lab.args(*names)], Path(tmp)) if args.serial else None
            # The controller gathers every host's facts (in threads) before any worker starts.
            gather = timed([*base, *lab.args(*names), "--collect-only"], Path(tmp))
        finally:
            lab.stop()
    ratio = many / one
    verdict = "meets" if ratio <= args.goal else "misses"
    print(f"1 host: {one:.2f} s; {args.hosts} hosts with -n {args.hosts}: {many:.2f} s")
    print(f"ratio {ratio:.2f} ({verdict} the goal of {args.goal:g}x)")
    print(
        f"1 host with -n 1: {one_worker:.2f} s; scaling from 1 to {args.hosts} workers: {many / one_worker:.2f}x"
    )
    print(f"gathering the facts of {args.hosts} hosts (--collect-only, no xdist): {gather:.2f} s")
    if serial is not None:
        print(f"{args.hosts} hosts without xdist: {serial:.2f} s ({serial / many:.2f}x the parallel run)")
    return 1 if args.strict and ratio > args.goal else 0


if __name__ == "__main__":
    sys.exit(main())
